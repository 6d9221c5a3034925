//! A plugin under test and the pods it is run for. Every run goes through
//! the harness's `spawn_cni`, so both plugins are exec'd exactly the same way.

use crate::cleanup::Track;
use sluice_tests::{spawn_cni, unique, Ns};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Output};
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
    node: &'a Ns,
    ns: Ns,
    _track: Track,
    cid: String,
    attached: bool,
    /// From the last ADD result: the pod's address and gateway.
    pub address: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

impl<'a> Pod<'a> {
    pub fn new(plugin: &'a Plugin, node: &'a Ns) -> Self {
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

    /// Starts `cmd` (ADD or DEL) for this pod without waiting.
    pub fn spawn(&mut self, cmd: &str) -> Child {
        if cmd == "ADD" {
            // A failed ADD may leave parts behind; DEL cleans those too.
            self.attached = true;
        }
        spawn_cni(
            self.node,
            &self.plugin.path,
            cmd,
            &self.cid,
            Some(&self.ns.path()),
            IFNAME,
            &self.plugin.conf,
            &[],
        )
    }

    /// Checks the outcome of a run started with [`Pod::spawn`].
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
        let start = Instant::now();
        let out = self.spawn(cmd).wait_with_output();
        let took = start.elapsed();
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
            let _ = self.spawn("DEL").wait_with_output();
        }
    }
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
    let start = Instant::now();
    let children: Vec<Child> = pods.iter_mut().map(|p| p.spawn(cmd)).collect();
    let outs: Vec<_> = children.into_iter().map(Child::wait_with_output).collect();
    let wall = start.elapsed();
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
