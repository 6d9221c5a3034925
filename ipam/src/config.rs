//! The `ipam` object of a CNI network configuration, in host-local's schema.
//!
//! ```json
//! {"type": "sluice-ipam",
//!  "ranges": [[{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.10",
//!               "rangeEnd": "10.244.0.200", "gateway": "10.244.0.1"}],
//!             [{"subnet": "fd00:244::/64"}]],
//!  "routes": [{"dst": "0.0.0.0/0"}],
//!  "dataDir": "/var/run/sluice/ipam"}
//! ```
//!
//! Each inner list of `ranges` is a range set: a pod gets one address from
//! each set, so a v4 set and a v6 set make a dual-stack pod. host-local's
//! legacy top-level `subnet`/`rangeStart`/`rangeEnd`/`gateway` form is read
//! as one more set, placed first (as host-local does).
//!
//! Everything is validated here, once, so the allocator can rely on ranges
//! that are non-empty, of one family per set and disjoint. Every rejection is
//! code 7 and names the range (`ranges[i][j]`) and the value at fault.

use crate::addr::{self, Family};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_common::cni::{CniError, CniResult, NetConf, Route};
use std::net::IpAddr;
use std::path::PathBuf;

/// Where reservations live when the config sets no `dataDir`. Under
/// `/var/run` (a tmpfs) on purpose: reservations must not outlive a reboot,
/// which also ends every pod holding them.
pub const DEFAULT_DATA_DIR: &str = "/var/run/sluice/ipam";

/// A parsed, validated `ipam` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// One address is allocated from each set, in this order. With the
    /// legacy top-level range present it is set 0, so set `i` is then
    /// `ranges[i-1]` of the JSON; [`RangeSet::label`] names the JSON place.
    pub range_sets: Vec<RangeSet>,
    /// Returned as-is in the result of the standalone plugin.
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
}

/// Ranges of one family, tried in order; one address comes from the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
    /// Where the set came from in the config (`ranges[1]`), for messages.
    pub label: String,
}

/// `rangeStart..=rangeEnd` inside `subnet`, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet with its host bits clear; its prefix is the one pods get.
    pub subnet: IpNetwork,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    /// Never allocated, even when inside `range_start..=range_end`.
    pub gateway: IpAddr,
    /// Where the range came from in the config (`ranges[1][0]`), for messages.
    pub label: String,
}

impl Range {
    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// Whether `ip` lies in `range_start..=range_end` (gateway included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family()
            && (addr::to_u128(self.range_start)..=addr::to_u128(self.range_end))
                .contains(&addr::to_u128(ip))
    }

    /// Addresses in `range_start..=range_end`, gateways included. Saturates
    /// at `u128::MAX`, which only a v6 `::/0` range starting at `::` reaches.
    pub fn size(&self) -> u128 {
        let (start, end) = (
            addr::to_u128(self.range_start),
            addr::to_u128(self.range_end),
        );
        if end < start {
            return 0;
        }
        (end - start).saturating_add(1)
    }

    /// Addresses that can be handed out: the range minus the `gateways`
    /// inside it. `gateways` must hold no duplicates.
    pub fn allocatable(&self, gateways: &[IpAddr]) -> u128 {
        let inside = gateways.iter().filter(|g| self.contains(**g)).count() as u128;
        self.size().saturating_sub(inside)
    }

    pub(crate) fn family(&self) -> Family {
        Family::of(self.subnet.ip())
    }

    /// `10.244.0.10-10.244.0.200 in 10.244.0.0/24`, for messages.
    pub fn describe(&self) -> String {
        format!("{}-{} in {}", self.range_start, self.range_end, self.subnet)
    }
}

impl RangeSet {
    pub fn is_ipv4(&self) -> bool {
        self.ranges.first().is_some_and(Range::is_ipv4)
    }

    /// The range holding `ip`, if any.
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_of(ip).is_some()
    }

    /// Addresses that can be handed out, over all ranges of the set.
    pub fn allocatable(&self, gateways: &[IpAddr]) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.allocatable(gateways)))
    }

    /// `10.244.0.10-10.244.0.200 in 10.244.0.0/24, ...`, for messages.
    pub fn describe(&self) -> String {
        self.ranges
            .iter()
            .map(Range::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    routes: Option<Value>,
    #[serde(default)]
    data_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

impl IpamConfig {
    /// Reads the `ipam` object of `conf`; a config without one is code 7.
    pub fn from_netconf(conf: &NetConf) -> Result<Self, CniError> {
        Self::parse(ipam_object(conf)?)
    }

    /// Parses and validates an `ipam` object.
    pub fn parse(ipam: &Value) -> Result<Self, CniError> {
        let raw = raw_ipam(ipam)?;
        let data_dir = data_dir(raw.data_dir.as_deref())?;

        let mut range_sets = Vec::new();
        let legacy = &raw.legacy;
        if legacy.subnet.is_some() {
            let label = "top-level range".to_string();
            let range = parse_range(legacy, &label)?;
            range_sets.push(RangeSet {
                ranges: vec![range],
                label,
            });
        } else if let Some(key) = [
            ("rangeStart", &legacy.range_start),
            ("rangeEnd", &legacy.range_end),
            ("gateway", &legacy.gateway),
        ]
        .iter()
        .find_map(|(k, v)| v.as_ref().map(|_| *k))
        {
            return Err(CniError::config(
                format!("ipam: top-level \"{key}\" is set without a top-level \"subnet\""),
                "the legacy single-range form needs \"subnet\" next to it; \
                 or move the range into \"ranges\": [[{\"subnet\": ...}]]",
            ));
        }
        for (i, raw_set) in raw.ranges.iter().flatten().enumerate() {
            let label = format!("ranges[{i}]");
            if raw_set.is_empty() {
                return Err(CniError::config(
                    format!("ipam {label} is an empty range set"),
                    "list at least one range in it, such as [{\"subnet\": \"10.244.0.0/24\"}], \
                     or remove it",
                ));
            }
            let ranges = raw_set
                .iter()
                .enumerate()
                .map(|(j, r)| parse_range(r, &format!("ranges[{i}][{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            range_sets.push(RangeSet { ranges, label });
        }
        if range_sets.is_empty() {
            return Err(CniError::config(
                "ipam has no ranges",
                "set \"ranges\": [[{\"subnet\": \"10.244.0.0/24\"}]] \
                 (one inner list per address family), or the legacy top-level \"subnet\"",
            ));
        }

        check_families(&range_sets)?;
        check_overlaps(&range_sets)?;
        let config = IpamConfig {
            range_sets,
            routes: parse_routes(raw.routes.as_ref())?,
            data_dir,
        };
        config.check_allocatable()?;
        Ok(config)
    }

    /// Only `dataDir`, for DEL and GC: releasing needs no ranges, and a pod
    /// must stay deletable after its network's ranges were edited into
    /// something invalid.
    pub fn data_dir_of(ipam: &Value) -> Result<PathBuf, CniError> {
        data_dir(raw_ipam(ipam)?.data_dir.as_deref())
    }

    /// Every gateway of every range, without duplicates. None is ever
    /// allocated, whichever range it falls in.
    pub fn gateways(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for r in self.range_sets.iter().flat_map(|s| &s.ranges) {
            if !out.contains(&r.gateway) {
                out.push(r.gateway);
            }
        }
        out
    }

    fn check_allocatable(&self) -> Result<(), CniError> {
        let gateways = self.gateways();
        for r in self.range_sets.iter().flat_map(|s| &s.ranges) {
            if r.allocatable(&gateways) == 0 {
                let gws: Vec<String> = gateways
                    .iter()
                    .filter(|g| r.contains(**g))
                    .map(|g| g.to_string())
                    .collect();
                return Err(CniError::config(
                    format!(
                        "ipam {}: range {} has no allocatable address",
                        r.label,
                        r.describe()
                    ),
                    format!(
                        "its only address is the gateway {}, which is never handed out; \
                         widen rangeStart..rangeEnd or move the gateway out of it",
                        gws.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The `ipam` object of `conf`, or code 7.
pub fn ipam_object(conf: &NetConf) -> Result<&Value, CniError> {
    conf.ipam.as_ref().ok_or_else(|| {
        CniError::config(
            format!("network \"{}\" has no \"ipam\" configuration", conf.name),
            "add \"ipam\": {\"type\": \"sluice-ipam\", \"ranges\": [[{\"subnet\": ...}]]}",
        )
    })
}

fn raw_ipam(ipam: &Value) -> Result<RawIpam, CniError> {
    if !ipam.is_object() {
        return Err(CniError::config(
            "the ipam configuration is not a JSON object",
            format!("got {ipam}; write \"ipam\": {{\"type\": \"sluice-ipam\", \"ranges\": ...}}"),
        ));
    }
    serde_json::from_value(ipam.clone()).map_err(|e| {
        CniError::config(
            "the ipam configuration has a field of the wrong type",
            format!(
                "{e}; \"ranges\" is a list of lists of {{\"subnet\", \"rangeStart\", \
                 \"rangeEnd\", \"gateway\"}} strings and \"dataDir\" a string"
            ),
        )
    })
}

fn data_dir(raw: Option<&str>) -> Result<PathBuf, CniError> {
    match raw {
        None => Ok(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(d) if d.starts_with('/') => Ok(PathBuf::from(d)),
        Some(d) => Err(CniError::config(
            format!("ipam dataDir {d:?} is not an absolute path"),
            format!(
                "set ipam.dataDir to an absolute directory, or omit it to use {DEFAULT_DATA_DIR}"
            ),
        )),
    }
}

fn parse_routes(raw: Option<&Value>) -> Result<Vec<Route>, CniError> {
    let Some(routes) = raw else {
        return Ok(Vec::new());
    };
    CniResult::from_json(&json!({ "routes": routes }))
        .map(|r| r.routes)
        .map_err(|e| {
            CniError::config(
                format!("ipam routes are invalid: {e}"),
                "\"routes\" is a list of {\"dst\": \"<CIDR>\", \"gw\": \"<address>\"} \
                 with \"gw\" optional",
            )
        })
}

fn parse_range(raw: &RawRange, label: &str) -> Result<Range, CniError> {
    let Some(subnet_str) = raw.subnet.as_deref() else {
        return Err(CniError::config(
            format!("ipam {label} has no \"subnet\""),
            "every range needs a subnet in CIDR form, such as \"subnet\": \"10.244.0.0/24\"",
        ));
    };
    let subnet = parse_subnet(subnet_str, label)?;
    let family = Family::of(subnet.ip());
    let prefix = subnet.prefix();
    let (first, last) = addr::bounds(subnet.ip(), prefix);
    let host_bits = family.bits() - prefix;
    // With 2 addresses (v4 /31, v6 /127) both are host addresses
    // (RFC 3021, RFC 6164); otherwise the first address is the network
    // (v6: subnet-router anycast) and the last v4 one is broadcast.
    let point_to_point = host_bits == 1;
    let usable_first = if point_to_point { first } else { first + 1 };
    let usable_last = if family == Family::V4 && !point_to_point {
        last - 1
    } else {
        last
    };

    let field = |name: &str, value: &Option<String>| -> Result<Option<u128>, CniError> {
        let Some(s) = value.as_deref() else {
            return Ok(None);
        };
        let ip = parse_ip(s, name, label)?;
        check_in_subnet(ip, name, &subnet, label)?;
        let v = addr::to_u128(ip);
        if !point_to_point && v == first {
            return Err(CniError::config(
                format!("ipam {label}: {name} {ip} is the network address of {subnet}"),
                format!(
                    "hosts cannot use it; the first usable address is {}",
                    addr::from_u128(usable_first, family)
                ),
            ));
        }
        if family == Family::V4 && !point_to_point && v == last {
            return Err(CniError::config(
                format!("ipam {label}: {name} {ip} is the broadcast address of {subnet}"),
                format!(
                    "hosts cannot use it; the last usable address is {}",
                    addr::from_u128(usable_last, family)
                ),
            ));
        }
        Ok(Some(v))
    };
    let start = field("rangeStart", &raw.range_start)?.unwrap_or(usable_first);
    let end = field("rangeEnd", &raw.range_end)?.unwrap_or(usable_last);
    let gateway = field("gateway", &raw.gateway)?.unwrap_or(first + 1);
    if start > end {
        return Err(CniError::config(
            format!(
                "ipam {label}: rangeStart {} is after rangeEnd {}",
                addr::from_u128(start, family),
                addr::from_u128(end, family)
            ),
            "rangeStart must be lower than or equal to rangeEnd; swap them or fix the typo",
        ));
    }
    Ok(Range {
        subnet,
        range_start: addr::from_u128(start, family),
        range_end: addr::from_u128(end, family),
        gateway: addr::from_u128(gateway, family),
        label: label.to_string(),
    })
}

fn parse_subnet(s: &str, label: &str) -> Result<IpNetwork, CniError> {
    // IpNetwork reads a bare address as a /32 or /128; for a pod subnet that
    // is always a mistake, and one that would surface far from its cause.
    if !s.contains('/') {
        return Err(CniError::config(
            format!("ipam {label}: subnet {s:?} has no prefix length"),
            "write the subnet in CIDR form, such as \"10.244.0.0/24\" or \"fd00:244::/64\"",
        ));
    }
    let net: IpNetwork = s.parse().map_err(|e| {
        CniError::config(
            format!("ipam {label}: subnet {s:?} is not a CIDR subnet: {e}"),
            "write the subnet in CIDR form, such as \"10.244.0.0/24\" or \"fd00:244::/64\"",
        )
    })?;
    let family = Family::of(net.ip());
    let (first, _) = addr::bounds(net.ip(), net.prefix());
    if addr::to_u128(net.ip()) != first {
        let network = addr::from_u128(first, family);
        return Err(CniError::config(
            format!("ipam {label}: subnet {s} has host bits set"),
            format!(
                "its network address is {network}; write \"subnet\": \"{network}/{}\", and use \
                 rangeStart/rangeEnd to restrict the addresses handed out",
                net.prefix()
            ),
        ));
    }
    if net.prefix() == family.bits() {
        let wider = if family == Family::V4 { "/24" } else { "/64" };
        return Err(CniError::config(
            format!("ipam {label}: subnet {s} has no allocatable address"),
            format!(
                "a /{} holds a single address, leaving nothing to give pods; \
                 use a shorter prefix such as {wider}",
                net.prefix()
            ),
        ));
    }
    Ok(net)
}

fn parse_ip(s: &str, field: &str, label: &str) -> Result<IpAddr, CniError> {
    s.parse().map_err(|_| {
        CniError::config(
            format!("ipam {label}: {field} {s:?} is not an IP address"),
            format!(
                "write {field} as a plain address without prefix length, \
                 such as \"10.244.0.10\" or \"fd00:244::10\""
            ),
        )
    })
}

fn check_in_subnet(
    ip: IpAddr,
    field: &str,
    subnet: &IpNetwork,
    label: &str,
) -> Result<(), CniError> {
    let family = Family::of(subnet.ip());
    if Family::of(ip) != family {
        return Err(CniError::config(
            format!(
                "ipam {label}: {field} {ip} is {} but subnet {subnet} is {}",
                Family::of(ip).name(),
                family.name()
            ),
            format!(
                "{field} must be an address of subnet {subnet}; \
                 put {} addresses in a range of their own",
                Family::of(ip).name()
            ),
        ));
    }
    if !subnet.contains(ip) {
        let (first, last) = addr::bounds(subnet.ip(), subnet.prefix());
        return Err(CniError::config(
            format!("ipam {label}: {field} {ip} is outside subnet {subnet}"),
            format!(
                "{field} must lie in {subnet} ({} to {}); change {field} or the subnet",
                addr::from_u128(first, family),
                addr::from_u128(last, family)
            ),
        ));
    }
    Ok(())
}

fn check_families(sets: &[RangeSet]) -> Result<(), CniError> {
    for set in sets {
        let first = &set.ranges[0];
        if let Some(other) = set.ranges.iter().find(|r| r.family() != first.family()) {
            return Err(CniError::config(
                format!(
                    "ipam {} mixes address families: {} ({}) is {} but {} ({}) is {}",
                    set.label,
                    first.label,
                    first.subnet,
                    first.family().name(),
                    other.label,
                    other.subnet,
                    other.family().name()
                ),
                "a range set yields one address per pod, so its ranges must all be of one \
                 family; for dual stack put the IPv4 and IPv6 ranges in separate sets, \
                 such as \"ranges\": [[{\"subnet\": \"10.244.0.0/24\"}], [{\"subnet\": \"fd00::/64\"}]]",
            ));
        }
    }
    Ok(())
}

fn check_overlaps(sets: &[RangeSet]) -> Result<(), CniError> {
    let all: Vec<&Range> = sets.iter().flat_map(|s| &s.ranges).collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.family() != b.family() {
                continue;
            }
            let (a0, a1) = (addr::to_u128(a.range_start), addr::to_u128(a.range_end));
            let (b0, b1) = (addr::to_u128(b.range_start), addr::to_u128(b.range_end));
            if a0 <= b1 && b0 <= a1 {
                return Err(CniError::config(
                    format!(
                        "ipam {}: range {} overlaps {} ({})",
                        a.label,
                        a.describe(),
                        b.label,
                        b.describe()
                    ),
                    "an address must belong to one range only; make the rangeStart..rangeEnd \
                     intervals disjoint, or drop one of the ranges",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::cni::codes;

    fn parse(v: Value) -> Result<IpamConfig, CniError> {
        IpamConfig::parse(&v)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Asserts a code-7 rejection whose message mentions every `needles`.
    fn rejects(v: Value, needles: &[&str]) -> CniError {
        let e = parse(v.clone()).expect_err(&format!("{v} should be rejected"));
        assert_eq!(e.code, codes::INVALID_CONFIG, "{e}");
        assert!(!e.details.is_empty(), "no details for {v}: {e}");
        for n in needles {
            assert!(e.msg.contains(n), "{e} does not mention {n:?}");
        }
        e
    }

    #[test]
    fn full_config_is_read() {
        let c = parse(json!({
            "type": "sluice-ipam",
            "ranges": [
                [{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.10",
                  "rangeEnd": "10.244.0.200", "gateway": "10.244.0.254"}],
                [{"subnet": "fd00:244::/64"}]
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.254"}, {"dst": "::/0"}],
            "dataDir": "/tmp/ipam",
            "someFutureKey": true
        }))
        .unwrap();
        assert_eq!(c.range_sets.len(), 2);
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.range_start, ip("10.244.0.10"));
        assert_eq!(r.range_end, ip("10.244.0.200"));
        assert_eq!(r.gateway, ip("10.244.0.254"));
        assert_eq!(r.label, "ranges[0][0]");
        assert_eq!(c.range_sets[1].label, "ranges[1]");
        assert!(!c.range_sets[1].is_ipv4());
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].gw, Some(ip("10.244.0.254")));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/ipam"));
    }

    #[test]
    fn v4_defaults_follow_host_local() {
        let c = parse(json!({"ranges": [[{"subnet": "10.244.0.0/24"}]]})).unwrap();
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.range_start, ip("10.244.0.1"));
        assert_eq!(r.range_end, ip("10.244.0.254"));
        assert_eq!(r.gateway, ip("10.244.0.1"));
        assert_eq!(c.range_sets[0].allocatable(&c.gateways()), 253);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(c.routes.is_empty());
    }

    #[test]
    fn v6_defaults_run_to_the_last_address() {
        let c = parse(json!({"ranges": [[{"subnet": "fd00:244::/64"}]]})).unwrap();
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.range_start, ip("fd00:244::1"));
        assert_eq!(r.range_end, ip("fd00:244::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway, ip("fd00:244::1"));
        assert_eq!(
            c.range_sets[0].allocatable(&c.gateways()),
            (1u128 << 64) - 2
        );
    }

    #[test]
    fn huge_v6_sizes_do_not_overflow() {
        let c = parse(json!({"ranges": [[{"subnet": "::/0"}]]})).unwrap();
        assert_eq!(c.range_sets[0].allocatable(&c.gateways()), u128::MAX - 1);
    }

    #[test]
    fn point_to_point_prefixes_use_both_addresses() {
        let c =
            parse(json!({"ranges": [[{"subnet": "192.0.2.0/31"}], [{"subnet": "fd00::/127"}]]}))
                .unwrap();
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.range_start, ip("192.0.2.0"));
        assert_eq!(r.range_end, ip("192.0.2.1"));
        assert_eq!(r.gateway, ip("192.0.2.1"));
        assert_eq!(c.range_sets[0].allocatable(&c.gateways()), 1);
        assert_eq!(c.range_sets[1].ranges[0].range_start, ip("fd00::"));
        assert_eq!(c.range_sets[1].allocatable(&c.gateways()), 1);
    }

    #[test]
    fn legacy_form_is_the_first_set() {
        let c = parse(json!({
            "subnet": "10.1.0.0/16", "rangeStart": "10.1.2.0", "gateway": "10.1.0.1",
            "ranges": [[{"subnet": "fd00::/64"}]]
        }))
        .unwrap();
        assert_eq!(c.range_sets.len(), 2);
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(r.range_start, ip("10.1.2.0"));
        assert_eq!(r.range_end, ip("10.1.255.254"));
        assert_eq!(r.label, "top-level range");
        assert!(!c.range_sets[1].is_ipv4());
    }

    #[test]
    fn a_set_may_hold_several_ranges_of_one_family() {
        let c = parse(json!({"ranges": [[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"},
            {"subnet": "10.9.0.0/30"}
        ]]}))
        .unwrap();
        // 10 + 10 + (.1, .2 minus gateway .1)
        assert_eq!(c.range_sets[0].allocatable(&c.gateways()), 21);
    }

    #[test]
    fn data_dir_alone_survives_bad_ranges() {
        let v = json!({"ranges": [[{"subnet": "bogus"}]], "dataDir": "/srv/ipam"});
        assert!(parse(v.clone()).is_err());
        assert_eq!(
            IpamConfig::data_dir_of(&v).unwrap(),
            PathBuf::from("/srv/ipam")
        );
    }

    #[test]
    fn rejects_no_ranges() {
        rejects(json!({"type": "sluice-ipam"}), &["no ranges"]);
        rejects(json!({"ranges": []}), &["no ranges"]);
    }

    #[test]
    fn rejects_an_empty_set() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], []]}),
            &["ranges[1]", "empty"],
        );
    }

    #[test]
    fn rejects_a_range_without_subnet() {
        rejects(
            json!({"ranges": [[{"rangeStart": "10.0.0.1"}]]}),
            &["ranges[0][0]", "subnet"],
        );
        rejects(json!({"rangeStart": "10.0.0.1"}), &["rangeStart", "subnet"]);
    }

    #[test]
    fn rejects_unparsable_subnets() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}),
            &["ranges[0][0]", "10.0.0.0/33"],
        );
        rejects(json!({"ranges": [[{"subnet": "banana/8"}]]}), &["banana/8"]);
        let e = rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0"}]]}),
            &["no prefix length"],
        );
        assert!(e.details.contains("CIDR"));
    }

    #[test]
    fn rejects_unparsable_addresses() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.x"}]]}),
            &["rangeStart", "10.0.0.x"],
        );
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1/24"}]]}),
            &["gateway", "10.0.0.1/24"],
        );
    }

    #[test]
    fn rejects_wrong_json_types() {
        rejects(json!({"ranges": [[{"subnet": 10}]]}), &["wrong type"]);
        rejects(json!({"ranges": "10.0.0.0/24"}), &["wrong type"]);
        rejects(json!("10.0.0.0/24"), &["not a JSON object"]);
    }

    #[test]
    fn rejects_host_bits_and_names_the_network() {
        let e = rejects(
            json!({"ranges": [[{"subnet": "10.244.0.5/24"}]]}),
            &["10.244.0.5/24", "host bits", "ranges[0][0]"],
        );
        assert!(e.details.contains("10.244.0.0/24"), "{e}");
        let e = rejects(
            json!({"ranges": [[{"subnet": "fd00::5/64"}]]}),
            &["host bits"],
        );
        assert!(e.details.contains("fd00::/64"), "{e}");
    }

    #[test]
    fn rejects_single_address_subnets() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.5/32"}]]}),
            &["no allocatable"],
        );
        rejects(
            json!({"ranges": [[{"subnet": "fd00::5/128"}]]}),
            &["no allocatable"],
        );
    }

    #[test]
    fn rejects_addresses_outside_the_subnet() {
        for field in ["rangeStart", "rangeEnd", "gateway"] {
            rejects(
                json!({"ranges": [[{"subnet": "10.0.0.0/24", field: "10.0.1.5"}]]}),
                &[field, "10.0.1.5", "outside", "10.0.0.0/24"],
            );
        }
    }

    #[test]
    fn rejects_family_mismatches() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::9"}]]}),
            &["rangeEnd", "fd00::9", "IPv6", "IPv4"],
        );
        rejects(
            json!({"ranges": [[{"subnet": "fd00::/64", "gateway": "10.0.0.1"}]]}),
            &["gateway", "IPv4"],
        );
    }

    #[test]
    fn rejects_network_and_broadcast_addresses() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0"}]]}),
            &["rangeStart", "network address"],
        );
        let e = rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.255"}]]}),
            &["rangeEnd", "broadcast"],
        );
        assert!(e.details.contains("10.0.0.254"));
    }

    #[test]
    fn rejects_start_after_end() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50",
                                 "rangeEnd": "10.0.0.40"}]]}),
            &["ranges[0][0]", "10.0.0.50", "10.0.0.40"],
        );
    }

    #[test]
    fn rejects_overlaps_within_a_set() {
        rejects(
            json!({"ranges": [[
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.30"},
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.30", "rangeEnd": "10.0.0.40"}
            ]]}),
            &["ranges[0][0]", "overlaps", "ranges[0][1]"],
        );
    }

    #[test]
    fn rejects_overlaps_across_sets() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.3.0/24"}]]}),
            &["ranges[0][0]", "overlaps", "ranges[1][0]"],
        );
        rejects(
            json!({"subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.0/24"}]]}),
            &["top-level range", "overlaps", "ranges[0][0]"],
        );
    }

    #[test]
    fn rejects_a_set_mixing_families() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            &["ranges[0]", "mixes", "ranges[0][1]"],
        );
    }

    #[test]
    fn rejects_ranges_holding_only_the_gateway() {
        let e = rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.1",
                                 "rangeEnd": "10.0.0.1"}]]}),
            &["ranges[0][0]", "no allocatable"],
        );
        assert!(e.details.contains("10.0.0.1"));
        // The default gateway of a /31 is its second address, so one is left.
        assert!(parse(json!({"ranges": [[{"subnet": "10.0.0.0/31"}]]})).is_ok());
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/31", "rangeStart": "10.0.0.1"}]]}),
            &["no allocatable"],
        );
    }

    #[test]
    fn rejects_relative_data_dirs() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": "var/ipam"}),
            &["dataDir", "var/ipam"],
        );
    }

    #[test]
    fn rejects_bad_routes() {
        rejects(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "nope"}]}),
            &["routes"],
        );
    }
}
