use super::{codes, CniError, CniResult, CniVersion};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The network configuration a runtime writes to a plugin's stdin: the keys
/// every plugin shares, plus the rest for the plugin to read
/// ([`NetConf::plugin`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(flatten)]
    pub plugin: Map<String, Value>,
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parses stdin. Malformed JSON is code 6; a config that is JSON but not
    /// an object, or lacks `name`/`type`, is code 7; an unknown version is 1.
    pub fn parse(bytes: &[u8]) -> Result<(Self, CniVersion), CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                codes::DECODE_FAILURE,
                "the network configuration on stdin is not valid JSON",
                format!("{e}; the runtime must pass the network config as a JSON object"),
            )
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                codes::DECODE_FAILURE,
                "the network configuration on stdin is not a JSON object",
                format!("got {}", short_kind(&value)),
            ));
        }
        let conf: NetConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                codes::DECODE_FAILURE,
                "the network configuration has a field of the wrong type",
                e.to_string(),
            )
        })?;
        let version = CniVersion::parse(&conf.cni_version)?;
        Ok((conf, version))
    }

    /// Checks the keys every ADD/DEL/CHECK needs.
    pub fn require_name(&self) -> Result<(), CniError> {
        if self.name.is_empty() {
            return Err(CniError::config(
                "the network configuration has no \"name\"",
                "give the network a name, unique on the node",
            ));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(CniError::config(
                format!(
                    "network name {:?} has characters outside [A-Za-z0-9_.-]",
                    self.name
                ),
                "the name is used as a directory name; use letters, digits, '_', '.' or '-'",
            ));
        }
        Ok(())
    }

    /// The `prevResult`, parsed whatever version it was written in.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|v| {
                CniResult::from_json(v).map_err(|e| {
                    CniError::new(
                        codes::DECODE_FAILURE,
                        "prevResult is not a CNI result",
                        e.to_string(),
                    )
                })
            })
            .transpose()
    }

    /// GC's `cni.dev/valid-attachments`, when the runtime sent it.
    pub fn valid_attachments(&self) -> Result<Option<Vec<ValidAttachment>>, CniError> {
        match self.plugin.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                CniError::new(
                    codes::DECODE_FAILURE,
                    "cni.dev/valid-attachments is not a list of {containerID, ifname}",
                    e.to_string(),
                )
            }),
        }
    }

    /// A typed view of the plugin-specific keys.
    pub fn plugin_config<T: serde::de::DeserializeOwned>(&self) -> Result<T, CniError> {
        serde_json::from_value(Value::Object(self.plugin.clone())).map_err(|e| {
            CniError::config(
                format!("network \"{}\": invalid plugin configuration", self.name),
                e.to_string(),
            )
        })
    }
}

fn short_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_sluice_config() {
        let (c, v) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"sluice",
                 "mtu":1400,"ipam":{"type":"sluice-ipam"},
                 "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(v, CniVersion::V1_1_0);
        assert_eq!(c.plugin_type, "sluice");
        assert_eq!(c.plugin["mtu"], 1400);
        assert_eq!(
            c.valid_attachments().unwrap().unwrap(),
            vec![ValidAttachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn decode_errors_are_code_6() {
        for bad in [
            &b"{"[..],
            b"",
            b"[1,2]",
            b"\"str\"",
            br#"{"cniVersion": 3}"#,
        ] {
            assert_eq!(NetConf::parse(bad).unwrap_err().code, codes::DECODE_FAILURE);
        }
    }

    #[test]
    fn version_errors_are_code_1() {
        for bad in [
            &br#"{"name":"n","type":"sluice"}"#[..],
            br#"{"cniVersion":"0.2.0"}"#,
        ] {
            assert_eq!(
                NetConf::parse(bad).unwrap_err().code,
                codes::INCOMPATIBLE_VERSION
            );
        }
    }

    #[test]
    fn names_are_checked() {
        let (c, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","type":"sluice"}"#).unwrap();
        assert_eq!(c.require_name().unwrap_err().code, codes::INVALID_CONFIG);
        let (c, _) =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"../x","type":"sluice"}"#).unwrap();
        assert_eq!(c.require_name().unwrap_err().code, codes::INVALID_CONFIG);
    }
}
