//! The standalone `sluice-ipam` CNI IPAM plugin, which any plugin (the
//! reference `bridge`, for one) can delegate to exactly like host-local.
//!
//! The binary only calls [`main`]; [`run`] is the whole protocol, pure in its
//! inputs (environment and stdin) apart from the store, so tests drive it
//! without spawning a process.

use crate::allocator::Allocator;
use crate::config::{ipam_object, IpamConfig};
use crate::store::DiskStore;
use serde_json::Value;
use sluice_common::cni::{
    codes, dispatch, main_with, CniError, CniResult, CniVersion, Command, Dns, Env, IpConfig,
    NetConf, Request,
};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

pub use sluice_common::cni::Outcome;

/// The plugin's entry point: reads the process environment and stdin,
/// answers on stdout, and returns the exit code.
pub fn main() -> i32 {
    main_with(handle)
}

/// Answers one CNI request.
pub fn run(env: Result<Env, CniError>, stdin: &[u8]) -> Outcome {
    dispatch(env, stdin, handle)
}

fn handle(req: Request<'_>) -> Result<Option<Value>, CniError> {
    let (env, conf, version) = (&req.env, &req.conf, req.version);
    match env.command {
        Command::Add => add(env, conf, version).map(Some),
        Command::Del => del(env, conf).map(|_| None),
        Command::Check => check(env, conf, version).map(|_| None),
        Command::Status => status(conf, version).map(|_| None),
        Command::Gc => gc(conf, version).map(|_| None),
        Command::Version => unreachable!("dispatch answers VERSION"),
    }
}

fn add(env: &Env, conf: &NetConf, version: CniVersion) -> Result<Value, CniError> {
    conf.require_name()?;
    let config = IpamConfig::from_netconf(conf)?;
    let dns = dns(conf)?;
    let store = DiskStore::open(&config.data_dir, &conf.name)?;
    let allocations = Allocator::new(&config, store).allocate(&env.container_id, &env.ifname)?;
    let result = CniResult {
        interfaces: Vec::new(),
        ips: allocations
            .into_iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: Some(a.gateway),
                interface: None,
            })
            .collect(),
        routes: config.routes,
        dns,
    };
    Ok(result.to_json(version))
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    conf.require_name()?;
    // Only dataDir matters to release; see `IpamConfig::data_dir_of`.
    let data_dir = IpamConfig::data_dir_of(ipam_object(conf)?)?;
    if let Some(store) = DiskStore::open_existing(&data_dir, &conf.name)? {
        Allocator::without_ranges(store).release(&env.container_id, &env.ifname)?;
    }
    Ok(())
}

fn check(env: &Env, conf: &NetConf, version: CniVersion) -> Result<(), CniError> {
    if !version.has_check() {
        return Err(unsupported("CHECK", version, "0.4.0"));
    }
    conf.require_name()?;
    let config = IpamConfig::from_netconf(conf)?;
    let held: Vec<IpAddr> = match DiskStore::open_existing(&config.data_dir, &conf.name)? {
        Some(store) => Allocator::new(&config, store).get(&env.container_id, &env.ifname)?,
        None => Vec::new(),
    };
    let who = format!(
        "container {} ifname {} in network \"{}\"",
        env.container_id, env.ifname, conf.name
    );
    if held.is_empty() {
        return Err(CniError::new(
            codes::CHECK_FAILED,
            format!("ipam: {who} holds no address"),
            format!(
                "its reservation under {} was released (by DEL or GC) or removed; \
                 delete and recreate the pod",
                config.data_dir.display()
            ),
        ));
    }
    let Some(prev) = conf.prev_result()? else {
        return Ok(());
    };
    if prev.ips.is_empty() {
        return Ok(());
    }
    let held: BTreeSet<IpAddr> = held.into_iter().collect();
    let listed: BTreeSet<IpAddr> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
    let list = |s: &BTreeSet<IpAddr>| {
        s.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(ip) = listed.difference(&held).next() {
        return Err(CniError::new(
            codes::CHECK_FAILED,
            format!("ipam: prevResult address {ip} is not reserved for {who}"),
            format!(
                "the reservation holds {}; another pod may receive {ip}: \
                 delete and recreate the pod",
                list(&held)
            ),
        ));
    }
    if let Some(ip) = held.difference(&listed).next() {
        return Err(CniError::new(
            codes::CHECK_FAILED,
            format!("ipam: {who} holds {ip}, which prevResult does not list"),
            format!(
                "prevResult lists {}; the pod's result and the reservation disagree: \
                 delete and recreate the pod",
                list(&listed)
            ),
        ));
    }
    Ok(())
}

fn status(conf: &NetConf, version: CniVersion) -> Result<(), CniError> {
    if !version.has_status_and_gc() {
        return Err(unsupported("STATUS", version, "1.1.0"));
    }
    conf.require_name()?;
    let config = IpamConfig::from_netconf(conf)?;
    // Any store failure means ADD would fail too: that is what code 50 says.
    let unavailable = |e: CniError| CniError::new(codes::PLUGIN_NOT_AVAILABLE, e.msg, e.details);
    let store =
        DiskStore::open(&config.data_dir, &conf.name).map_err(|e| unavailable(e.to_cni()))?;
    let status = Allocator::new(&config, store)
        .status()
        .map_err(|e| unavailable(e.to_cni()))?;
    if let Err(e) = &status.writable {
        return Err(unavailable(e.to_cni()));
    }
    if let Some(full) = status.sets.iter().find(|s| s.exhausted()) {
        return Err(CniError::new(
            codes::PLUGIN_NOT_AVAILABLE,
            format!(
                "ipam: range set {} is exhausted: {} of {} allocatable addresses of {} are reserved",
                full.label, full.used, full.capacity, full.ranges
            ),
            "release addresses (delete pods that are gone, or let the runtime run GC) \
             or widen the range: a larger subnet, a wider rangeStart..rangeEnd, \
             or another range in this set",
        ));
    }
    Ok(())
}

fn gc(conf: &NetConf, version: CniVersion) -> Result<(), CniError> {
    if !version.has_status_and_gc() {
        return Err(unsupported("GC", version, "1.1.0"));
    }
    conf.require_name()?;
    // Without the list we cannot tell live attachments from leaks; the spec
    // makes it optional, so doing nothing is the only safe reading.
    let Some(valid) = conf.valid_attachments()? else {
        return Ok(());
    };
    let data_dir = IpamConfig::data_dir_of(ipam_object(conf)?)?;
    let Some(store) = DiskStore::open_existing(&data_dir, &conf.name)? else {
        return Ok(());
    };
    let valid: HashSet<(String, String)> = valid
        .into_iter()
        .map(|a| (a.container_id, a.ifname))
        .collect();
    Allocator::without_ranges(store).gc(&valid)?;
    Ok(())
}

fn unsupported(command: &str, version: CniVersion, since: &str) -> CniError {
    CniError::new(
        codes::INCOMPATIBLE_VERSION,
        format!("{command} is not part of CNI version {version}"),
        format!(
            "{command} exists from cniVersion {since}; raise the config's cniVersion to use it"
        ),
    )
}

fn dns(conf: &NetConf) -> Result<Dns, CniError> {
    match conf.plugin.get("dns") {
        None | Some(Value::Null) => Ok(Dns::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            CniError::config(
                format!(
                    "network \"{}\": \"dns\" is not a DNS object: {e}",
                    conf.name
                ),
                "\"dns\" is {\"nameservers\": [...], \"domain\": \"...\", \"search\": [...], \
                 \"options\": [...]}, every key optional",
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_common::cni::SUPPORTED_VERSIONS;
    use std::collections::HashMap;

    struct Net {
        dir: tempfile::TempDir,
    }

    impl Net {
        fn new() -> Self {
            Net {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn conf(&self, version: &str, extra: Value) -> Vec<u8> {
            let mut c = json!({
                "cniVersion": version,
                "name": "testnet",
                "type": "bridge",
                "ipam": {
                    "type": "sluice-ipam",
                    "ranges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:244::/64"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.dir.path(),
                },
            });
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            serde_json::to_vec(&c).unwrap()
        }
    }

    fn env(command: &str, cid: &str) -> Result<Env, CniError> {
        let m: HashMap<&str, String> = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", "/var/run/netns/x".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
        .into_iter()
        .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    fn code(o: &Outcome) -> Option<u32> {
        match o {
            Outcome::Fail { error, .. } => Some(error.code),
            _ => None,
        }
    }

    #[test]
    fn add_check_del_round_trip() {
        let net = Net::new();
        let conf = net.conf("1.1.0", json!({"dns": {"nameservers": ["10.96.0.10"]}}));
        let Outcome::Print(res) = run(env("ADD", "c1"), &conf) else {
            panic!("ADD failed");
        };
        assert_eq!(res["cniVersion"], "1.1.0");
        assert_eq!(res["ips"][0]["address"], "10.244.0.2/24");
        assert_eq!(res["ips"][0]["gateway"], "10.244.0.1");
        assert_eq!(res["ips"][1]["address"], "fd00:244::2/64");
        assert!(res["ips"][0].get("interface").is_none());
        assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(res["dns"]["nameservers"][0], "10.96.0.10");

        let check = net.conf("1.1.0", json!({"prevResult": res}));
        assert_eq!(run(env("CHECK", "c1"), &check), Outcome::Silent);
        assert_eq!(
            code(&run(env("ADD", "c1"), &conf)),
            Some(codes::ALREADY_ALLOCATED)
        );
        assert_eq!(run(env("DEL", "c1"), &conf), Outcome::Silent);
        assert_eq!(run(env("DEL", "c1"), &conf), Outcome::Silent);
        assert_eq!(
            code(&run(env("CHECK", "c1"), &check)),
            Some(codes::CHECK_FAILED)
        );
    }

    #[test]
    fn check_reports_drift_by_address() {
        let net = Net::new();
        let conf = net.conf("1.0.0", json!({}));
        let Outcome::Print(mut res) = run(env("ADD", "c1"), &conf) else {
            panic!("ADD failed");
        };
        res["ips"][0]["address"] = json!("10.244.0.77/24");
        let out = run(
            env("CHECK", "c1"),
            &net.conf("1.0.0", json!({"prevResult": res})),
        );
        let Outcome::Fail { error, version } = out else {
            panic!("CHECK passed");
        };
        assert_eq!(error.code, codes::CHECK_FAILED);
        assert!(error.msg.contains("10.244.0.77"), "{error}");
        assert_eq!(version, "1.0.0");
    }

    #[test]
    fn old_versions_lack_check_status_and_gc() {
        let net = Net::new();
        let c = net.conf("0.3.1", json!({}));
        assert_eq!(
            code(&run(env("CHECK", "c1"), &c)),
            Some(codes::INCOMPATIBLE_VERSION)
        );
        let c = net.conf("1.0.0", json!({}));
        assert_eq!(
            code(&run(env("STATUS", ""), &c)),
            Some(codes::INCOMPATIBLE_VERSION)
        );
        assert_eq!(
            code(&run(env("GC", ""), &c)),
            Some(codes::INCOMPATIBLE_VERSION)
        );
    }

    #[test]
    fn pre_1_0_results_carry_ip_versions() {
        let net = Net::new();
        let Outcome::Print(res) = run(env("ADD", "c1"), &net.conf("0.3.1", json!({}))) else {
            panic!("ADD failed");
        };
        assert_eq!(res["ips"][0]["version"], "4");
        assert_eq!(res["ips"][1]["version"], "6");
    }

    #[test]
    fn version_answers_with_or_without_config() {
        let Outcome::Print(v) = run(env("VERSION", ""), b"") else {
            panic!()
        };
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"], json!(SUPPORTED_VERSIONS));
        let Outcome::Print(v) = run(env("VERSION", ""), br#"{"cniVersion":"0.4.0"}"#) else {
            panic!()
        };
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn status_reports_exhaustion_as_50() {
        let net = Net::new();
        let conf = |extra| {
            let mut c: Value = serde_json::from_slice(&net.conf("1.1.0", extra)).unwrap();
            c["ipam"]["ranges"] = json!([[{"subnet": "10.9.0.0/30"}]]);
            serde_json::to_vec(&c).unwrap()
        };
        assert_eq!(run(env("STATUS", ""), &conf(json!({}))), Outcome::Silent);
        // A /30 holds .1 (gateway) and .2: one pod fills it.
        assert!(matches!(
            run(env("ADD", "c1"), &conf(json!({}))),
            Outcome::Print(_)
        ));
        let out = run(env("STATUS", ""), &conf(json!({})));
        let Outcome::Fail { error, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(error.code, codes::PLUGIN_NOT_AVAILABLE);
        assert!(error.msg.contains("exhausted"), "{error}");
        assert_eq!(
            code(&run(env("ADD", "c2"), &conf(json!({})))),
            Some(codes::POOL_EXHAUSTED)
        );
    }

    #[test]
    fn gc_releases_all_but_the_valid_and_needs_the_list() {
        let net = Net::new();
        let add = net.conf("1.1.0", json!({}));
        for c in ["keep", "drop"] {
            assert!(matches!(run(env("ADD", c), &add), Outcome::Print(_)));
        }
        assert_eq!(run(env("GC", ""), &add), Outcome::Silent);
        let gc = net.conf(
            "1.1.0",
            json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
        );
        assert_eq!(run(env("GC", ""), &gc), Outcome::Silent);
        let held = |cid: &str| {
            let store = DiskStore::open(net.dir.path(), "testnet").unwrap();
            Allocator::without_ranges(store)
                .get(cid, "eth0")
                .unwrap()
                .len()
        };
        assert_eq!(held("keep"), 2);
        assert_eq!(held("drop"), 0);
    }

    #[test]
    fn bad_input_is_an_error_object() {
        assert_eq!(
            code(&run(env("ADD", "c1"), b"{")),
            Some(codes::DECODE_FAILURE)
        );
        let net = Net::new();
        let mut c: Value = serde_json::from_slice(&net.conf("1.1.0", json!({}))).unwrap();
        c["ipam"]["ranges"] = json!([[{"subnet": "10.0.0.5/24"}]]);
        let out = run(env("ADD", "c1"), &serde_json::to_vec(&c).unwrap());
        assert_eq!(code(&out), Some(codes::INVALID_CONFIG));
        // DEL still works: it needs only dataDir.
        assert_eq!(
            run(env("DEL", "c1"), &serde_json::to_vec(&c).unwrap()),
            Outcome::Silent
        );
        c.as_object_mut().unwrap().remove("ipam");
        assert_eq!(
            code(&run(env("ADD", "c1"), &serde_json::to_vec(&c).unwrap())),
            Some(codes::INVALID_CONFIG)
        );
        let out = run(env("FROB", "c1"), &net.conf("0.4.0", json!({})));
        assert_eq!(
            out,
            Outcome::Fail {
                error: env("FROB", "c1").unwrap_err(),
                version: "0.4.0".into()
            }
        );
    }

    #[test]
    fn unwritable_data_dir_is_code_5_on_add_and_50_on_status() {
        let net = Net::new();
        let blocker = net.dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let mut c: Value = serde_json::from_slice(&net.conf("1.1.0", json!({}))).unwrap();
        c["ipam"]["dataDir"] = json!(blocker);
        let c = serde_json::to_vec(&c).unwrap();
        let out = run(env("ADD", "c1"), &c);
        let Outcome::Fail { error, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(error.code, codes::IO_FAILURE);
        assert!(error.msg.contains("file/testnet"), "{error}");
        assert_eq!(
            code(&run(env("STATUS", ""), &c)),
            Some(codes::PLUGIN_NOT_AVAILABLE)
        );
        // Nothing was ever allocated there, so there is nothing to release.
        assert_eq!(run(env("DEL", "c1"), &c), Outcome::Silent);
    }
}
