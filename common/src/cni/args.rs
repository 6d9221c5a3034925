use super::{codes, CniError};
use serde::{Deserialize, Serialize};

/// `CNI_ARGS`: `K=V` pairs separated by `;`, in any order.
///
/// As in the reference plugins, a key we do not know is an error unless the
/// runtime also sent `IgnoreUnknown=1` (or `true`); known keys are always kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_pod_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_pod_infra_container_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_unknown: bool,
    /// Keys we do not interpret, kept in the record for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut out = CniArgs::default();
        for pair in raw.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::new(
                    codes::INVALID_ENV,
                    format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
                    "CNI_ARGS must be KEY=VALUE pairs separated by ';'",
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "K8S_POD_NAMESPACE" => out.k8s_pod_namespace = Some(v.into()),
                "K8S_POD_NAME" => out.k8s_pod_name = Some(v.into()),
                "K8S_POD_UID" => out.k8s_pod_uid = Some(v.into()),
                "K8S_POD_INFRA_CONTAINER_ID" => out.k8s_pod_infra_container_id = Some(v.into()),
                "IgnoreUnknown" => {
                    out.ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(CniError::new(
                                codes::INVALID_ENV,
                                format!("CNI_ARGS IgnoreUnknown={v:?} is not a boolean"),
                                "use IgnoreUnknown=1 or IgnoreUnknown=true",
                            ))
                        }
                    }
                }
                _ => out.other.push((k.into(), v.into())),
            }
        }
        if !out.ignore_unknown {
            if let Some((k, _)) = out.other.first() {
                return Err(CniError::new(
                    codes::INVALID_ENV,
                    format!("CNI_ARGS has unknown key {k:?}"),
                    "known keys are K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, \
                     K8S_POD_INFRA_CONTAINER_ID; add IgnoreUnknown=1 to pass others",
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_args_in_any_order() {
        let a = CniArgs::parse(
            "K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=prod;\
             K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .unwrap();
        assert_eq!(a.k8s_pod_namespace.as_deref(), Some("prod"));
        assert_eq!(a.k8s_pod_name.as_deref(), Some("web-0"));
        assert_eq!(a.k8s_pod_uid.as_deref(), Some("u-1"));
        assert_eq!(a.k8s_pod_infra_container_id.as_deref(), Some("abc"));
        assert!(a.ignore_unknown);
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let e = CniArgs::parse("FOO=bar").unwrap_err();
        assert_eq!(e.code, codes::INVALID_ENV);
        let a = CniArgs::parse("FOO=bar;IgnoreUnknown=true").unwrap();
        assert_eq!(a.other, vec![("FOO".into(), "bar".into())]);
    }

    #[test]
    fn malformed_pairs_are_rejected() {
        assert_eq!(
            CniArgs::parse("NOEQUALS").unwrap_err().code,
            codes::INVALID_ENV
        );
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=maybe").unwrap_err().code,
            codes::INVALID_ENV
        );
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse(";;").unwrap(), CniArgs::default());
    }
}
