//! Keeping every pod's edge in place: the plugin attaches the check during
//! ADD; this module checks, on every pass, that the check is still there,
//! runs first and is this daemon's program, and puts back what is missing,
//! older, isolating or overtaken, in the pod's own attach mode. It also
//! puts back the kernel backstops when something changed them.
//!
//! Each pass runs on one OS thread of its own, outside the state lock, so
//! registrations and API reads never wait behind it; a tcx attach holds
//! RTNL for an RCU grace period and must not sit on anyone's path.

use serde::{Deserialize, Serialize};
use sluice_cni::edge::{self, EdgeError, EdgeProg, Observed};
use sluice_cni::netlink::Netlink;
use sluice_common::endpoint::{EdgeMode, EdgeProgram, EdgeRecord};
use sluice_dataplane::pins::Pins;

/// Who attached the edge that is in place now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachedBy {
    Plugin,
    Daemon,
}

/// What the daemon knows of one pod's edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeState {
    pub mode: EdgeMode,
    pub program: EdgeProgram,
    pub prog_id: u32,
    /// When the attachment in place now was made (ms since the epoch).
    pub since_unix_ms: u64,
    pub by: AttachedBy,
    /// When a pass last found it in place (0: not checked yet).
    pub verified_unix_ms: u64,
    /// How often a pass had to put it back or replace it.
    pub repairs: u32,
    /// What the last repair found, or why the last pass could not repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    /// For a pod whose services are translated per packet: when the
    /// reverse translation of its replies was attached (ms since the
    /// epoch; 0: not attached yet, or not such a pod).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_since_unix_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl EdgeState {
    /// What the plugin said it attached, not yet checked.
    pub fn from_record(r: &EdgeRecord) -> Self {
        EdgeState {
            mode: r.mode,
            program: r.program,
            prog_id: r.prog_id,
            since_unix_ms: r.since_unix_ms,
            by: AttachedBy::Plugin,
            verified_unix_ms: 0,
            repairs: 0,
            last_problem: None,
            reply_since_unix_ms: 0,
        }
    }

    /// Attached, checked, and the pod's own traffic passes.
    pub fn protecting(&self) -> bool {
        self.verified_unix_ms > 0 && self.program == EdgeProgram::Check
    }
}

/// What one check of one pod did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In place and current.
    Kept,
    /// Put back or replaced; the text says what was wrong.
    Repaired(String),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Makes sure `prog` guards the ingress of `ifindex` in `mode` and runs
/// first, and that the backstops hold. `known` is what the daemon last
/// knew; the returned state replaces it.
/// The pod interface an edge pass checks.
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    pub ifindex: u32,
    pub ifname: &'a str,
    /// The pod has an IPv6 address (its veth keeps a link-local one).
    pub ipv6: bool,
    /// For a pod whose services are translated per packet: the reverse
    /// translation its replies need on the veth's tcx egress.
    pub reply: Option<&'a EdgeProg>,
}

pub fn ensure(
    nl: &mut Netlink,
    pins: &Pins,
    prog: &EdgeProg,
    veth: Veth<'_>,
    mode: EdgeMode,
    known: Option<&EdgeState>,
) -> Result<(EdgeState, Outcome), EdgeError> {
    let Veth {
        ifindex,
        ifname,
        ipv6,
        reply,
    } = veth;
    let obs = edge::inspect(nl, pins, ifindex)?;
    let mut problems = Vec::new();
    let mut mode = mode;
    let mut attached = None;
    match (mode, obs.guard(mode, ifindex)) {
        (_, Some(id)) if id == prog.id => {}
        (EdgeMode::Clsact, _) if !obs.tcx.is_empty() => {
            // A tcx program runs before every filter and could pass a
            // packet on before our filter sees it: our check goes first
            // on tcx too (the filter stays, harmless behind it).
            problems.push(format!(
                "{} tcx program(s) ran ahead of the clsact filter",
                obs.tcx.len()
            ));
            if obs.filter.as_ref().and_then(|f| f.prog_id) != Some(prog.id) {
                edge::attach(
                    nl,
                    pins,
                    ifindex,
                    EdgeMode::Clsact,
                    prog,
                    obs.filter.is_none(),
                )?;
            }
            mode = EdgeMode::Tcx;
            attached = Some(edge::attach(nl, pins, ifindex, mode, prog, false)?);
        }
        (EdgeMode::Clsact, Some(old)) => {
            problems.push(format!("the filter ran program {old}"));
            attached = Some(edge::attach(nl, pins, ifindex, mode, prog, false)?);
        }
        (EdgeMode::Clsact, None) => {
            problems.push(match &obs.qdisc {
                None => "the ingress qdisc was missing".into(),
                Some(q) => match q.block {
                    Some(b) => format!("the filter of shared block {b} was missing"),
                    None => format!("the filter on the device's {} qdisc was missing", q.kind),
                },
            });
            attached = Some(edge::attach(nl, pins, ifindex, mode, prog, false)?);
        }
        (EdgeMode::Tcx, Some(old)) => {
            problems.push(format!("the tcx link ran program {old}"));
            edge::update_tcx_program(pins, ifindex, old, prog)?;
            attached = Some(EdgeRecord {
                mode,
                program: prog.program,
                prog_id: prog.id,
                since_unix_ms: now_ms(),
            });
        }
        (EdgeMode::Tcx, None) => {
            problems.push(tcx_problem(&obs, ifindex));
            attached = Some(edge::attach(nl, pins, ifindex, mode, prog, false)?);
        }
    }
    // The first attach of a pod's reply translation is expected, not a
    // repair (the plugin attaches only the edge).
    let reply_since = known.map_or(0, |k| k.reply_since_unix_ms);
    let reply_changed = match ensure_reply(pins, ifindex, reply)? {
        Some(_) if reply.is_some() && reply_since == 0 => true,
        Some(why) => {
            problems.push(why);
            true
        }
        None => false,
    };
    let drift = edge::backstop_drift(ifname, ipv6);
    if !drift.is_empty() {
        problems.push(format!("host veth settings changed ({})", drift.join(", ")));
        edge::set_backstops(ifname, ipv6)?;
    }
    let now = now_ms();
    let mut st = match (attached, known) {
        (Some(r), _) => {
            let mut s = EdgeState::from_record(&r);
            s.by = AttachedBy::Daemon;
            s.repairs = known.map_or(0, |k| k.repairs);
            s
        }
        (None, Some(k)) => k.clone(),
        (None, None) => EdgeState {
            mode,
            program: prog.program,
            prog_id: prog.id,
            // Found in place without a record of when: from now on.
            since_unix_ms: now,
            by: AttachedBy::Plugin,
            verified_unix_ms: 0,
            repairs: 0,
            last_problem: None,
            reply_since_unix_ms: 0,
        },
    };
    st.mode = mode;
    st.program = prog.program;
    st.prog_id = prog.id;
    st.verified_unix_ms = now;
    st.reply_since_unix_ms = match (reply.is_some(), reply_changed) {
        (false, _) => 0,
        (true, true) => now,
        (true, false) => reply_since,
    };
    if problems.is_empty() {
        Ok((st, Outcome::Kept))
    } else {
        let why = problems.join("; ");
        // A first check after the plugin's isolating program, or after a
        // record without an edge, is the expected upgrade, not a repair.
        let expected = known.is_none_or(|k| k.program == EdgeProgram::Isolate);
        if !expected {
            st.repairs += 1;
        }
        st.last_problem = Some(why.clone());
        Ok((st, Outcome::Repaired(why)))
    }
}

/// Makes sure the pod's replies are translated back when it wants that
/// (`reply`): our link on the veth's tcx egress, running `reply`. A pod
/// that does not want it has no such link. Returns what had to change.
fn ensure_reply(
    pins: &Pins,
    ifindex: u32,
    reply: Option<&EdgeProg>,
) -> Result<Option<String>, EdgeError> {
    let path = pins.tc_egress_link(ifindex);
    let Some(prog) = reply else {
        if !path.exists() {
            return Ok(None);
        }
        std::fs::remove_file(&path).map_err(|source| EdgeError::Pin {
            what: "remove",
            path: path.clone(),
            source,
        })?;
        return Ok(Some(
            "a reply translation link it does not need was removed".into(),
        ));
    };
    let why = match sluice_dataplane::sys::pinned_link_info(&path).ok() {
        Some(info) if info.tcx_ifindex == ifindex && info.prog_id == prog.id => return Ok(None),
        Some(info) if info.tcx_ifindex == ifindex => {
            edge::update_reply_program(pins, ifindex, info.prog_id, prog)?;
            return Ok(Some(format!(
                "the reply translation ran program {}",
                info.prog_id
            )));
        }
        Some(_) => "the reply translation link was detached",
        None => "the reply translation link was missing",
    };
    edge::attach_reply(pins, ifindex, prog)?;
    Ok(Some(why.into()))
}

fn tcx_problem(obs: &Observed, ifindex: u32) -> String {
    match obs.pinned_link {
        None => "the tcx link's pin was missing".into(),
        Some((_, _, on)) if on != ifindex => "the tcx link was detached".into(),
        Some(_) => format!(
            "another tcx program ran first (order: {:?})",
            obs.tcx.iter().map(|t| t.prog_id).collect::<Vec<_>>()
        ),
    }
}
