use super::CniVersion;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// A CNI result, independent of version. [`CniResult::to_json`] renders it in
/// the version the config asked for; [`CniResult::from_json`] reads any of
/// the versions we speak (a `prevResult`, or a delegated IPAM's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the sandbox; none for host ones.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// Why a result could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ResultParseError(String);

impl CniResult {
    pub fn to_json(&self, version: CniVersion) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("name".into(), json!(i.name));
                    if let Some(mac) = &i.mac {
                        m.insert("mac".into(), json!(mac));
                    }
                    if let (Some(mtu), true) = (i.mtu, version.has_extended_fields()) {
                        m.insert("mtu".into(), json!(mtu));
                    }
                    if let Some(s) = &i.sandbox {
                        m.insert("sandbox".into(), json!(s));
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version.ips_carry_version() {
                    let v = if ip.address.is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), json!(v));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        out.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    m.insert("dst".into(), json!(r.dst.to_string()));
                    if let Some(gw) = r.gw {
                        m.insert("gw".into(), json!(gw.to_string()));
                    }
                    if version.has_extended_fields() {
                        for (k, v) in [
                            ("mtu", r.mtu),
                            ("advmss", r.advmss),
                            ("priority", r.priority),
                            ("table", r.table),
                            ("scope", r.scope),
                        ] {
                            if let Some(v) = v {
                                m.insert(k.into(), json!(v));
                            }
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).unwrap_or_default(),
            );
        }
        Value::Object(out)
    }

    pub fn from_json(v: &Value) -> Result<Self, ResultParseError> {
        let err = |m: String| ResultParseError(m);
        let obj = v
            .as_object()
            .ok_or_else(|| err("a result must be a JSON object".into()))?;
        let mut res = CniResult::default();
        if let Some(ifs) = obj.get("interfaces") {
            for i in ifs
                .as_array()
                .ok_or_else(|| err("\"interfaces\" must be a list".into()))?
            {
                res.interfaces.push(Interface {
                    name: str_field(i, "name")?
                        .ok_or_else(|| err("an interface has no \"name\"".into()))?,
                    mac: str_field(i, "mac")?,
                    mtu: u32_field(i, "mtu")?,
                    sandbox: str_field(i, "sandbox")?,
                });
            }
        }
        if let Some(ips) = obj.get("ips") {
            for ip in ips
                .as_array()
                .ok_or_else(|| err("\"ips\" must be a list".into()))?
            {
                let address = str_field(ip, "address")?
                    .ok_or_else(|| err("an ips entry has no \"address\"".into()))?;
                let address: IpNetwork = address
                    .parse()
                    .map_err(|e| err(format!("ips address {address:?}: {e}")))?;
                let gateway = str_field(ip, "gateway")?
                    .map(|g| {
                        g.parse::<IpAddr>()
                            .map_err(|e| err(format!("ips gateway {g:?}: {e}")))
                    })
                    .transpose()?;
                let interface = match ip.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(i) => Some(
                        i.as_u64()
                            .ok_or_else(|| err("ips \"interface\" must be an index".into()))?
                            as usize,
                    ),
                };
                res.ips.push(IpConfig {
                    address,
                    gateway,
                    interface,
                });
            }
        }
        if let Some(routes) = obj.get("routes") {
            for r in routes
                .as_array()
                .ok_or_else(|| err("\"routes\" must be a list".into()))?
            {
                let dst =
                    str_field(r, "dst")?.ok_or_else(|| err("a route has no \"dst\"".into()))?;
                let dst: IpNetwork = dst
                    .parse()
                    .map_err(|e| err(format!("route dst {dst:?}: {e}")))?;
                let gw = str_field(r, "gw")?
                    .map(|g| {
                        g.parse::<IpAddr>()
                            .map_err(|e| err(format!("route gw {g:?}: {e}")))
                    })
                    .transpose()?;
                res.routes.push(Route {
                    dst,
                    gw,
                    mtu: u32_field(r, "mtu")?,
                    advmss: u32_field(r, "advmss")?,
                    priority: u32_field(r, "priority")?,
                    table: u32_field(r, "table")?,
                    scope: u32_field(r, "scope")?,
                });
            }
        }
        if let Some(dns) = obj.get("dns") {
            res.dns =
                serde_json::from_value(dns.clone()).map_err(|e| err(format!("\"dns\": {e}")))?;
        }
        Ok(res)
    }
}

fn str_field(v: &Value, k: &str) -> Result<Option<String>, ResultParseError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ResultParseError(format!("\"{k}\" must be a string"))),
    }
}

fn u32_field(v: &Value, k: &str) -> Result<Option<u32>, ResultParseError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ResultParseError(format!("\"{k}\" must be a 32-bit unsigned number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::SUPPORTED_VERSIONS;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "sl0123456789a".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.0.5/32".parse().unwrap(),
                    gateway: Some("10.244.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.244.0.1".parse().unwrap()),
                )
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn pre_1_0_results_carry_ip_versions() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = sample().to_json(CniVersion::parse(v).unwrap());
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
            assert!(j["interfaces"][0].get("mtu").is_none());
            assert!(j["routes"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn v1_results_have_no_ip_versions() {
        let j = sample().to_json(CniVersion::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][1].get("mtu").is_none());
        let j = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(j["interfaces"][1]["mtu"], 1500);
        assert_eq!(j["routes"][0]["mtu"], 1400);
        assert_eq!(j["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(j["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn every_version_parses_back() {
        for v in SUPPORTED_VERSIONS {
            let version = CniVersion::parse(v).unwrap();
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.interfaces.len(), 2);
            assert_eq!(back.routes[0].dst, sample().routes[0].dst);
        }
    }

    #[test]
    fn garbage_results_are_rejected() {
        for bad in [
            json!([]),
            json!({"ips": {}}),
            json!({"ips": [{"address": "not-an-ip"}]}),
            json!({"ips": [{}]}),
            json!({"routes": [{"dst": "10.0.0.0/8", "gw": 5}]}),
            json!({"interfaces": [{"mac": "x"}]}),
        ] {
            assert!(CniResult::from_json(&bad).is_err(), "{bad}");
        }
    }
}
