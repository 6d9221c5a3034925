//! Kubernetes manifests as the standalone service source: YAML files, each
//! with any number of documents, of which Services, EndpointSlices and
//! Nodes are used and other kinds are passed over.

use super::model::Rejection;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// The objects of one file.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// Documents that are a Service, EndpointSlice or Node but not a valid
    /// one.
    pub rejected: Vec<Rejection>,
}

/// Parses one file. `Err` means the file as a whole is not YAML (for
/// instance half-written): the caller keeps what it had from that file.
/// A document that is YAML but not a valid object is rejected alone.
pub fn parse(file: &str, text: &str) -> Result<Objects, String> {
    let mut docs = Vec::new();
    for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(d)
            .map_err(|e| format!("{file}: document {} is not YAML: {e}", i + 1))?;
        docs.push(v);
    }
    let mut out = Objects::default();
    let mut pending: std::collections::VecDeque<(usize, serde_yaml::Value)> =
        docs.into_iter().enumerate().collect();
    while let Some((i, v)) = pending.pop_front() {
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let api = v.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("");
        let name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        let object = format!("{file}: document {} ({kind} {name})", i + 1);
        match (kind, api) {
            ("List", "v1") => {
                if let Some(items) = v.get("items").and_then(|x| x.as_sequence()) {
                    for x in items.iter().rev() {
                        pending.push_front((i, x.clone()));
                    }
                }
            }
            ("Service", "v1") => match serde_yaml::from_value::<Service>(v) {
                Ok(s) => out.services.push(s),
                Err(e) => out.rejected.push(Rejection {
                    object,
                    reason: e.to_string(),
                    service: None,
                }),
            },
            ("Node", "v1") => match serde_yaml::from_value::<Node>(v) {
                Ok(n) => out.nodes.push(n),
                Err(e) => out.rejected.push(Rejection {
                    object,
                    reason: e.to_string(),
                    service: None,
                }),
            },
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                match serde_yaml::from_value::<EndpointSlice>(v) {
                    Ok(s) => out.slices.push(s),
                    Err(e) => out.rejected.push(Rejection {
                        object,
                        reason: e.to_string(),
                        service: None,
                    }),
                }
            }
            ("Service", _) | ("EndpointSlice", _) | ("Node", _) => out.rejected.push(Rejection {
                object,
                reason: format!(
                    "apiVersion {api:?} is not served (Service and Node: v1, EndpointSlice: \
                     discovery.k8s.io/v1)"
                ),
                service: None,
            }),
            // Deployments, ConfigMaps, …: not ours.
            _ => {}
        }
    }
    Ok(out)
}
