//! A plugin under test and the pods it is run for. Every run is spawned
//! from one thread inside the node's netns (the harness's `NsRunner`), with
//! `posix_spawn`, as a Go container runtime starts plugins, so both plugins
//! are exec'd exactly the same way; each sample is taken on that thread,
//! from spawn to exit, the config written to stdin included.

use crate::cleanup::Track;
use sluice_tests::{cni_command, unique, Ns, NsRunner};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const IFNAME: &str = "eth0";

#[derive(Debug)]
pub struct Plugin {
    pub label: &'static str,
    pub path: PathBuf,
    pub conf: String,
}

/// A pod netns (made untimed, when the pod is created) that one plugin
/// attaches. Dropping it DELs a pod still attached before its netns goes.
#[derive(Debug)]
pub struct Pod<'a> {
    plugin: &'a Plugin,
    node: &'a NsRunner,
    ns: Ns,
    _track: Track,
    cid: String,
    attached: bool,
    /// From the last ADD result: the pod's address and gateway.
    pub address: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

impl<'a> Pod<'a> {
    pub fn new(plugin: &'a Plugin, node: &'a NsRunner) -> Self {
        let ns = Ns::new("bp");
        let track = Track::new(Some(&ns.name), &[]);
        Pod {
            plugin,
            node,
            ns,
            _track: track,
            cid: unique("c"),
            attached: false,
            address: None,
            gateway: None,
        }
    }

    /// The process a runtime starts for `cmd` (ADD or DEL) of this pod.
    fn command(&mut self, cmd: &str) -> (Command, String) {
        if cmd == "ADD" {
            // A failed ADD may leave parts behind; DEL cleans those too.
            self.attached = true;
        }
        (
            cni_command(
                &self.plugin.path,
                cmd,
                &self.cid,
                Some(&self.ns.path()),
                IFNAME,
            ),
            self.plugin.conf.clone(),
        )
    }

    /// Checks the outcome of a run.
    pub fn finish(&mut self, cmd: &str, out: std::io::Result<Output>) -> Result<(), String> {
        let out =
            out.map_err(|e| format!("{} {cmd}: waiting for the plugin: {e}", self.plugin.label))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let fail = |why: String| {
            format!(
                "{} {cmd} of container {} failed: {why} ({})\nstdout: {}\nstderr: {}",
                self.plugin.label,
                self.cid,
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        };
        if !out.status.success() {
            return Err(fail("non-zero exit".into()));
        }
        if cmd == "ADD" {
            let (address, gateway) = parse_result(&stdout).map_err(fail)?;
            self.address = Some(address);
            self.gateway = gateway;
        } else {
            self.attached = false;
        }
        Ok(())
    }

    /// Runs `cmd` and returns how long the plugin process took, from spawn
    /// to exit.
    pub fn timed(&mut self, cmd: &str) -> Result<Duration, String> {
        let job = self.command(cmd);
        let (out, took) = self.node.run(move || {
            let start = Instant::now();
            let out = run(job);
            (out, start.elapsed())
        });
        self.finish(cmd, out)?;
        Ok(took)
    }

    /// Pings the gateway from the ADD result inside the pod.
    pub fn reaches_gateway(&self) -> Result<(), String> {
        let gw = self
            .gateway
            .ok_or_else(|| format!("{}: ADD result has no gateway", self.plugin.label))?;
        if self.ns.ping(&gw.to_string()) {
            Ok(())
        } else {
            Err(format!(
                "{}: pod {} cannot ping its gateway {gw} after ADD",
                self.plugin.label,
                self.address.map(|a| a.to_string()).unwrap_or_default()
            ))
        }
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.attached {
            let job = self.command("DEL");
            let _ = self.node.run(move || run(job));
        }
    }
}

/// Starts the plugin, writes its config to stdin and waits for it.
fn start((mut c, conf): (Command, String)) -> std::io::Result<std::process::Child> {
    let mut child = c.spawn()?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(conf.as_bytes());
    }
    Ok(child)
}

fn run(job: (Command, String)) -> std::io::Result<Output> {
    start(job)?.wait_with_output()
}

/// The first address (and its gateway) of an ADD result.
fn parse_result(stdout: &str) -> Result<(IpAddr, Option<IpAddr>), String> {
    let v: serde_json::Value =
        serde_json::from_str(stdout).map_err(|e| format!("result is not JSON: {e}"))?;
    let ip = v["ips"]
        .as_array()
        .and_then(|ips| ips.first())
        .ok_or("result has no ips")?;
    let cidr = ip["address"].as_str().ok_or("result ip has no address")?;
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("address {cidr:?} has no prefix"))?;
    prefix
        .parse::<u8>()
        .map_err(|_| format!("address {cidr:?} has a bad prefix"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("address {cidr:?} is not an IP"))?;
    let gateway = match ip["gateway"].as_str() {
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("gateway {g:?} is not an IP"))?,
        ),
        None => None,
    };
    Ok((addr, gateway))
}

/// Runs `cmd` for all `pods` at once: spawns every process, then waits for
/// all. Returns the wall time from the first spawn to the last exit.
pub fn parallel(pods: &mut [Pod<'_>], cmd: &str) -> Result<Duration, String> {
    let Some(runner) = pods.first().map(|p| p.node) else {
        return Ok(Duration::ZERO);
    };
    let jobs: Vec<_> = pods.iter_mut().map(|p| p.command(cmd)).collect();
    let (outs, wall) = runner.run(move || {
        let t = Instant::now();
        let children: Vec<_> = jobs.into_iter().map(start).collect();
        let outs: Vec<std::io::Result<Output>> = children
            .into_iter()
            .map(|c| c.and_then(|c| c.wait_with_output()))
            .collect();
        (outs, t.elapsed())
    });
    let errors: Vec<String> = pods
        .iter_mut()
        .zip(outs)
        .filter_map(|(p, out)| p.finish(cmd, out).err())
        .collect();
    match errors.first() {
        None => Ok(wall),
        Some(first) => Err(format!(
            "{} of {} parallel {cmd}s failed; the first:\n{first}",
            errors.len(),
            pods.len()
        )),
    }
}
