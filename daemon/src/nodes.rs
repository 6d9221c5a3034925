//! The cluster's nodes as routing needs them: name, addresses and pod
//! ranges, read from Node objects (the manifests directory today; the
//! Kubernetes API source feeds the same model), and the plan of which
//! nodes this one routes to.
//!
//! A node that cannot be routed to safely is left out with a reason, and
//! nothing else is: a pod range that overlaps this node's own, another
//! accepted node's or a service range; an address that is missing or not
//! an IP.

use crate::services::model::Rejection;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterNode {
    pub name: String,
    /// `InternalIP` addresses in the object's order (`ExternalIP` ones when
    /// it has none): what other nodes reach it at.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or the older `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
}

impl ClusterNode {
    /// Its first address of a family.
    pub fn address(&self, v6: bool) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| a.is_ipv6() == v6)
    }
}

/// Reads a Node object; `Err` says why it cannot be used.
pub fn parse(n: &Node) -> Result<ClusterNode, String> {
    let name = n
        .metadata
        .name
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or("metadata.name is missing")?;
    let spec = n.spec.clone().unwrap_or_default();
    let cidrs: Vec<String> = match (spec.pod_cidrs, spec.pod_cidr) {
        (Some(v), _) if !v.is_empty() => v,
        (_, Some(c)) => vec![c],
        _ => Vec::new(),
    };
    let mut pod_cidrs = Vec::new();
    for c in cidrs {
        let net: IpNetwork = c
            .parse()
            .map_err(|e| format!("spec.podCIDRs: {c:?} is not a CIDR: {e}"))?;
        if net.network() != net.ip() {
            return Err(format!(
                "spec.podCIDRs: {c} has host bits set (the range is {}/{})",
                net.network(),
                net.prefix()
            ));
        }
        if pod_cidrs
            .iter()
            .any(|p: &IpNetwork| p.is_ipv4() == net.is_ipv4())
        {
            return Err(format!(
                "spec.podCIDRs: more than one {} range",
                crate::services::model::family_of(net.ip())
            ));
        }
        pod_cidrs.push(net);
    }
    let addrs = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let of_type = |t: &str| -> Result<Vec<IpAddr>, String> {
        addrs
            .iter()
            .filter(|a| a.type_ == t)
            .map(|a| {
                a.address
                    .parse()
                    .map_err(|_| format!("status.addresses: {t} {:?} is not an IP", a.address))
            })
            .collect()
    };
    let mut addresses = of_type("InternalIP")?;
    if addresses.is_empty() {
        addresses = of_type("ExternalIP")?;
    }
    if addresses.is_empty() && !pod_cidrs.is_empty() {
        return Err(
            "status.addresses has no InternalIP or ExternalIP to route its pods through".into(),
        );
    }
    Ok(ClusterNode {
        name,
        addresses,
        pod_cidrs,
    })
}

/// Which nodes this one routes to, and which it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// This node's own object; `None` if the list does not have it (then
    /// nothing programmed is changed: a list without us is not trusted).
    pub own: Option<ClusterNode>,
    /// The other nodes, by name.
    pub peers: Vec<ClusterNode>,
    pub rejected: Vec<Rejection>,
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// The plan for node `own_name` from every node of the source: this node
/// first, then the others by name; a node whose pod range overlaps one
/// taken before it (or a service range) is rejected whole, as is a node
/// defined twice (the first kept).
pub fn plan(own_name: &str, nodes: &[ClusterNode], service_cidrs: &[IpNetwork]) -> Plan {
    let mut sorted: Vec<&ClusterNode> = nodes.iter().collect();
    sorted.sort_by(|a, b| (a.name != own_name, &a.name).cmp(&(b.name != own_name, &b.name)));
    let mut out = Plan::default();
    let mut taken: Vec<(IpNetwork, &str)> = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for n in sorted {
        let object = format!("Node {}", n.name);
        let mut reject = |reason: String| {
            out.rejected.push(Rejection {
                object: object.clone(),
                reason,
                service: None,
            })
        };
        if !names.insert(n.name.as_str()) {
            reject("defined twice; the first definition is kept".into());
            continue;
        }
        let clash = n.pod_cidrs.iter().find_map(|c| {
            taken
                .iter()
                .find(|(t, _)| overlaps(c, t))
                .map(|(t, who)| format!("its pod range {c} overlaps node {who}'s {t}"))
                .or_else(|| {
                    service_cidrs
                        .iter()
                        .find(|s| overlaps(c, s))
                        .map(|s| format!("its pod range {c} overlaps the service range {s}"))
                })
        });
        if let Some(why) = clash {
            reject(format!("{why}; no route to it is installed"));
            continue;
        }
        taken.extend(n.pod_cidrs.iter().map(|c| (*c, n.name.as_str())));
        if n.name == own_name {
            out.own = Some(n.clone());
        } else {
            out.peers.push(n.clone());
        }
    }
    out.rejected.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn n(name: &str, addr: &str, cidrs: &[&str]) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            addresses: vec![addr.parse().unwrap()],
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_node_object_gives_its_addresses_and_ranges() {
        let x = parse(&node(
            "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nspec: {podCIDRs: [10.1.0.0/24, 'fd00:1::/64']}\nstatus: {addresses: [{type: Hostname, address: a}, {type: ExternalIP, address: 203.0.113.1}, {type: InternalIP, address: 192.168.0.1}, {type: InternalIP, address: 'fd00::1'}]}",
        ))
        .unwrap();
        assert_eq!(x.name, "a");
        assert_eq!(
            x.addresses,
            vec![
                "192.168.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(x.pod_cidrs.len(), 2);
        assert_eq!(x.address(true), Some("fd00::1".parse().unwrap()));
        // The older single field.
        let y = parse(&node(
            "apiVersion: v1\nkind: Node\nmetadata: {name: b}\nspec: {podCIDR: 10.2.0.0/24}\nstatus: {addresses: [{type: ExternalIP, address: 203.0.113.2}]}",
        ))
        .unwrap();
        assert_eq!(y.pod_cidrs, vec!["10.2.0.0/24".parse().unwrap()]);
        assert_eq!(y.addresses, vec!["203.0.113.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn bad_node_objects_say_why() {
        for (yaml, why) in [
            ("metadata: {name: a}\nspec: {podCIDRs: [10.1.0.5/24]}\nstatus: {addresses: [{type: InternalIP, address: 1.1.1.1}]}", "host bits"),
            ("metadata: {name: a}\nspec: {podCIDRs: [nope]}\nstatus: {addresses: [{type: InternalIP, address: 1.1.1.1}]}", "not a CIDR"),
            ("metadata: {name: a}\nspec: {podCIDRs: [10.1.0.0/24, 10.2.0.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 1.1.1.1}]}", "more than one IPv4"),
            ("metadata: {name: a}\nspec: {podCIDRs: [10.1.0.0/24]}\nstatus: {addresses: [{type: InternalIP, address: x}]}", "not an IP"),
            ("metadata: {name: a}\nspec: {podCIDRs: [10.1.0.0/24]}", "no InternalIP"),
            ("metadata: {}\nspec: {}", "name is missing"),
        ] {
            let e = parse(&node(yaml)).unwrap_err();
            assert!(e.contains(why), "{yaml}: {e}");
        }
    }

    #[test]
    fn overlapping_ranges_are_rejected_and_nothing_else() {
        let svc: Vec<IpNetwork> = vec!["10.96.0.0/12".parse().unwrap()];
        let nodes = vec![
            n("b", "192.168.0.2", &["10.1.1.0/24"]),
            n("me", "192.168.0.1", &["10.1.0.0/24"]),
            n("a-clash-with-me", "192.168.0.3", &["10.1.0.128/25"]),
            n("c-clash-with-b", "192.168.0.4", &["10.1.0.0/16"]),
            n("d", "192.168.0.5", &["10.1.2.0/24"]),
            n("e-service", "192.168.0.6", &["10.96.0.0/24"]),
            n("b", "192.168.0.9", &["10.1.9.0/24"]),
        ];
        let p = plan("me", &nodes, &svc);
        assert_eq!(p.own.as_ref().unwrap().name, "me");
        let peers: Vec<&str> = p.peers.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(peers, vec!["b", "d"]);
        let why: Vec<String> = p.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(
            why.iter()
                .any(|w| w.contains("a-clash-with-me") && w.contains("node me's 10.1.0.0/24")),
            "{why:?}"
        );
        assert!(why.iter().any(|w| w.contains("c-clash-with-b")), "{why:?}");
        assert!(
            why.iter()
                .any(|w| w.contains("e-service") && w.contains("service range")),
            "{why:?}"
        );
        assert!(
            why.iter()
                .any(|w| w.contains("Node b") && w.contains("twice")),
            "{why:?}"
        );
    }

    #[test]
    fn a_list_without_this_node_has_no_own_entry() {
        let p = plan("me", &[n("b", "192.168.0.2", &["10.1.1.0/24"])], &[]);
        assert!(p.own.is_none());
        assert_eq!(p.peers.len(), 1);
    }
}
