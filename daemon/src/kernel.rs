//! The kernel this daemon needs, probed at start: every hook, helper and
//! kernel facility the datapath uses is tried (a minimal program loaded, a
//! socket option read, a map created), and each feature of Sluice that
//! needs one that is missing is turned off with the reason, instead of the
//! daemon failing on a verifier message. `sluicectl status` shows the
//! result; docs/daemon.md lists it.

use serde::{Deserialize, Serialize};
use sluice_dataplane::sys::{self, PROG_TYPE_CGROUP_SOCK, PROG_TYPE_CGROUP_SOCK_ADDR};

/// `enum bpf_attach_type` values the socket programs use.
const INET4_CONNECT: u32 = 10;
const INET6_CONNECT: u32 = 11;
const UDP4_SENDMSG: u32 = 14;
const UDP6_SENDMSG: u32 = 15;
const UDP4_RECVMSG: u32 = 19;
const UDP6_RECVMSG: u32 = 20;
const INET4_GETPEERNAME: u32 = 29;
const INET6_GETPEERNAME: u32 = 30;
const INET_SOCK_RELEASE: u32 = 34;

/// Helper ids (`enum bpf_func_id`).
const GET_SOCKET_COOKIE: i32 = 46;
const SK_STORAGE_GET: i32 = 107;
const GET_NETNS_COOKIE: i32 = 122;
const SET_RETVAL: i32 = 187;

/// One thing the kernel has or lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    /// The first Linux release that has it.
    pub since: String,
    /// `None`: present; otherwise what the kernel said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// A feature of Sluice and whether this kernel can give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub on: bool,
    /// Why it is off: the probes it lacks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why_off: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    pub release: String,
    pub probes: Vec<Probe>,
    pub features: Vec<Feature>,
}

/// What Sluice needs from the kernel, by feature: (feature, probe names).
/// The pod edge (a tc program on the host veth, clsact) needs nothing a
/// supported kernel lacks; the daemon cannot run without
/// `SO_NETNS_COOKIE`.
pub const NEEDS: [(&str, &[&str]); 5] = [
    (
        SOCKET_LB,
        &[
            "cgroup connect4/6 hooks",
            "cgroup sendmsg4/6 hooks",
            "cgroup recvmsg4/6 hooks",
            "cgroup getpeername4/6 hooks",
            "bpf_get_socket_cookie in socket programs",
            "bpf_get_netns_cookie in socket programs",
            "bpf_sk_storage_get in socket programs",
            "bpf_set_retval in connect and sendmsg",
            "atomic compare-and-exchange",
            "inner maps of any size (BPF_F_INNER_MAP)",
            "cgroup sock_release hook",
        ],
    ),
    (
        UDP_TERMINATION,
        &["cgroup sock_release hook", "SOCK_DESTROY on UDP sockets"],
    ),
    (TCX, &["tcx"]),
    (
        ACCEL,
        &[
            "SOCKHASH maps with sockops and sk_msg",
            "kernel BTF (CO-RE)",
            "redirected data charged to the receiver",
            "bpf_get_netns_cookie in socket programs",
            "bpf_sk_storage_get in socket programs",
        ],
    ),
    (
        PER_PACKET,
        &[
            "tcx",
            "atomic compare-and-exchange",
            "inner maps of any size (BPF_F_INNER_MAP)",
        ],
    ),
];

pub const SOCKET_LB: &str = "socket load balancing (Services)";
pub const UDP_TERMINATION: &str = "ending UDP sockets of a backend that left";
pub const TCX: &str = "tcx attach mode";
/// Services for pods that opted out of socket load balancing: translated
/// per packet on the host veth, replies on a tcx egress link.
pub const PER_PACKET: &str = "per-packet service translation (opted-out pods)";

/// The same-node TCP shortcut (sockmap): docs/sockmap.md.
pub const ACCEL: &str = "same-node TCP acceleration (sockmap)";

/// The minimum Linux release for every feature: what the README states.
pub const MINIMUM: &str = "6.1";

fn probe(name: &str, since: &str, r: Result<(), String>) -> Probe {
    Probe {
        name: name.into(),
        since: since.into(),
        missing: r.err(),
    }
}

/// Tries everything on this kernel.
pub fn probe_all() -> Vec<Probe> {
    let hook = |a: u32, b: u32| {
        sys::probe_hook(PROG_TYPE_CGROUP_SOCK_ADDR, a)
            .and(sys::probe_hook(PROG_TYPE_CGROUP_SOCK_ADDR, b))
    };
    let helper = |id: i32| sys::probe_helper(PROG_TYPE_CGROUP_SOCK_ADDR, INET4_CONNECT, id);
    vec![
        probe(
            "SO_NETNS_COOKIE",
            "5.14",
            crate::netns::current_cookie()
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        probe(
            "cgroup connect4/6 hooks",
            "4.17",
            hook(INET4_CONNECT, INET6_CONNECT),
        ),
        probe(
            "cgroup sendmsg4/6 hooks",
            "4.18",
            hook(UDP4_SENDMSG, UDP6_SENDMSG),
        ),
        probe(
            "cgroup recvmsg4/6 hooks",
            "5.2",
            hook(UDP4_RECVMSG, UDP6_RECVMSG),
        ),
        probe(
            "cgroup getpeername4/6 hooks",
            "5.8",
            hook(INET4_GETPEERNAME, INET6_GETPEERNAME),
        ),
        probe(
            "cgroup sock_release hook",
            "5.9",
            sys::probe_hook(PROG_TYPE_CGROUP_SOCK, INET_SOCK_RELEASE),
        ),
        probe(
            "bpf_get_socket_cookie in socket programs",
            "4.18",
            helper(GET_SOCKET_COOKIE),
        ),
        probe(
            "bpf_get_netns_cookie in socket programs",
            "5.7",
            helper(GET_NETNS_COOKIE),
        ),
        probe(
            "bpf_sk_storage_get in socket programs",
            "5.3",
            helper(SK_STORAGE_GET),
        ),
        probe(
            "bpf_set_retval in connect and sendmsg",
            "6.1",
            helper(SET_RETVAL),
        ),
        probe("atomic compare-and-exchange", "5.12", sys::probe_cmpxchg()),
        probe(
            "inner maps of any size (BPF_F_INNER_MAP)",
            "5.10",
            sys::map_create(
                2,
                4,
                4,
                1,
                sluice_dataplane::maps::BPF_F_INNER_MAP,
                "sluice_probe",
            )
            .map(drop)
            .map_err(|e| e.to_string()),
        ),
        probe(
            "SOCK_DESTROY on UDP sockets",
            "4.6 (CONFIG_INET_DIAG_DESTROY)",
            crate::sockterm::probe(),
        ),
        probe(
            "SOCKHASH maps with sockops and sk_msg",
            "5.6",
            sys::map_create(BPF_MAP_TYPE_SOCKHASH, 8, 8, 1, 0, "sluice_probe")
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        probe(
            "kernel BTF (CO-RE)",
            "5.4 (CONFIG_DEBUG_INFO_BTF)",
            if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
                Ok(())
            } else {
                Err("no /sys/kernel/btf/vmlinux".into())
            },
        ),
        probe(
            "redirected data charged to the receiver",
            "6.13",
            release_at_least(&release(), (6, 13)),
        ),
        probe(
            "tcx",
            "6.6",
            if sluice_cni::edge::tcx_supported() {
                Ok(())
            } else {
                Err("no tcx before Linux 6.6".into())
            },
        ),
    ]
}

/// `BPF_MAP_TYPE_SOCKHASH`.
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;

fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a release string ("6.18.44-foo") is at least `want`: the
/// receive-memory charge of redirected messages (tcp_bpf, Linux 6.13) has
/// no probe of its own, and without it the sender's flow control reads
/// nothing.
fn release_at_least(release: &str, want: (u32, u32)) -> Result<(), String> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if have >= want {
        Ok(())
    } else {
        Err(format!(
            "Linux {}.{} does not charge redirected messages to the receiving socket \
             (needs {}.{})",
            have.0, have.1, want.0, want.1
        ))
    }
}

/// Which features the probes allow.
pub fn features(probes: &[Probe]) -> Vec<Feature> {
    NEEDS
        .iter()
        .map(|(name, needs)| {
            let missing: Vec<String> = needs
                .iter()
                .filter_map(|n| {
                    let p = probes.iter().find(|p| p.name == *n)?;
                    p.missing
                        .as_ref()
                        .map(|why| format!("{} (Linux {}): {why}", p.name, p.since))
                })
                .collect();
            Feature {
                name: (*name).into(),
                on: missing.is_empty(),
                why_off: missing.join("; "),
            }
        })
        .collect()
}

/// Probes this kernel and decides the features.
pub fn detect() -> Kernel {
    let probes = probe_all();
    Kernel {
        release: release(),
        features: features(&probes),
        probes,
    }
}

impl Kernel {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f.name == feature && f.on)
    }

    /// What the daemon cannot run without, if this kernel lacks it.
    pub fn fatal(&self) -> Option<String> {
        let p = self.probes.iter().find(|p| p.name == "SO_NETNS_COOKIE")?;
        p.missing.as_ref().map(|why| {
            format!(
                "this kernel ({}) lacks SO_NETNS_COOKIE ({why}): sluiced needs Linux {} or newer \
                 (every feature: {MINIMUM})",
                self.release, p.since
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_comparison() {
        assert!(release_at_least("6.18.44-fc-v973", (6, 13)).is_ok());
        assert!(release_at_least("6.13.0", (6, 13)).is_ok());
        assert!(release_at_least("7.0-rc1", (6, 13)).is_ok());
        let e = release_at_least("6.12.9-amd64", (6, 13)).unwrap_err();
        assert!(e.contains("6.12") && e.contains("6.13"), "{e}");
        assert!(release_at_least("", (6, 13)).is_err());
    }

    fn all_present() -> Vec<Probe> {
        NEEDS
            .iter()
            .flat_map(|(_, n)| n.iter())
            .chain(["SO_NETNS_COOKIE"].iter())
            .map(|n| probe(n, "x", Ok(())))
            .collect()
    }

    #[test]
    fn every_feature_is_on_with_every_probe() {
        assert!(features(&all_present()).iter().all(|f| f.on));
    }

    /// An older kernel: Linux 5.15 has every hook but not bpf_set_retval
    /// in connect, and no tcx; a kernel without CONFIG_INET_DIAG_DESTROY
    /// cannot end UDP sockets. Each turns off exactly its features, with
    /// the reason.
    #[test]
    fn a_missing_probe_turns_off_only_its_features() {
        let mut p = all_present();
        for x in p.iter_mut() {
            if x.name == "bpf_set_retval in connect and sendmsg" {
                x.since = "6.1".into();
                x.missing = Some("invalid func unknown#187".into());
            }
            if x.name == "tcx" {
                x.missing = Some("no tcx before Linux 6.6".into());
            }
        }
        let f = features(&p);
        let by = |n: &str| f.iter().find(|x| x.name == n).unwrap().clone();
        assert!(!by(SOCKET_LB).on);
        assert!(by(SOCKET_LB)
            .why_off
            .contains("bpf_set_retval in connect and sendmsg (Linux 6.1)"));
        assert!(by(UDP_TERMINATION).on);
        assert!(!by(TCX).on);
        assert!(!by(PER_PACKET).on);
        assert!(by(PER_PACKET).why_off.contains("tcx"));

        let mut p = all_present();
        p.iter_mut()
            .find(|x| x.name == "SOCK_DESTROY on UDP sockets")
            .unwrap()
            .missing = Some("CONFIG_INET_DIAG_DESTROY is off".into());
        let f = features(&p);
        assert!(f.iter().find(|x| x.name == SOCKET_LB).unwrap().on);
        assert!(!f.iter().find(|x| x.name == UDP_TERMINATION).unwrap().on);
    }

    /// This kernel, probed for real: whatever it lacks is named, and what
    /// this build's tests rely on is there.
    #[test]
    fn this_kernel_is_probed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let k = detect();
        assert!(k.fatal().is_none(), "{k:?}");
        assert!(k.has(SOCKET_LB), "{k:?}");
        for p in &k.probes {
            assert!(p.missing.is_none() || p.name == "tcx", "{p:?}");
        }
        // And the probe can say no: a packet helper in a socket program.
        let skb_load_bytes = 26;
        let no = sys::probe_helper(PROG_TYPE_CGROUP_SOCK_ADDR, INET4_CONNECT, skb_load_bytes);
        assert!(no.is_err(), "{no:?}");
    }
}
