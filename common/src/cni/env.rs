use super::{CniArgs, CniError};
use std::path::PathBuf;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "" => {
                return Err(CniError::env(
                    "CNI_COMMAND is not set",
                    "this program is a CNI plugin: run it through a container runtime \
                     with CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC",
                ))
            }
            other => {
                return Err(CniError::env(
                    format!("CNI_COMMAND {other:?} is not a CNI command"),
                    "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// The `CNI_*` environment, validated for the command it carries.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime sent none (a DEL after the sandbox is gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Result<Self, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads and validates through `get`, so tests need not touch the real
    /// environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = Command::parse(get("CNI_COMMAND").as_deref().unwrap_or(""))?;
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let args = CniArgs::parse(get("CNI_ARGS").as_deref().unwrap_or(""))?;
        let env = Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        };
        env.validate()?;
        Ok(env)
    }

    fn validate(&self) -> Result<(), CniError> {
        match self.command {
            Command::Add | Command::Check | Command::Del => {
                validate_container_id(&self.container_id)?;
                validate_ifname(&self.ifname)?;
                if self.command != Command::Del && self.netns.is_none() {
                    return Err(CniError::env(
                        format!("CNI_NETNS is not set for {}", self.command.as_str()),
                        "the runtime must pass the path of the pod's network namespace",
                    ));
                }
                if let Some(ns) = &self.netns {
                    if !ns.is_absolute() {
                        return Err(CniError::env(
                            format!("CNI_NETNS {:?} is not an absolute path", ns),
                            "pass the netns as an absolute path such as /var/run/netns/<name>",
                        ));
                    }
                }
                Ok(())
            }
            Command::Version | Command::Status | Command::Gc => Ok(()),
        }
    }
}

/// The spec: at least one character, alphanumerics plus `_`, `.` and `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::env(
            "CNI_CONTAINERID is not set",
            "the runtime must pass a container ID",
        ));
    }
    if id.starts_with(['.', '-'])
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(CniError::env(
            format!("CNI_CONTAINERID {id:?} is not a valid container ID"),
            "container IDs are letters, digits, '_', '.' and '-', not starting with '.' or '-'",
        ));
    }
    Ok(())
}

/// The kernel's rules for interface names.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |why: &str| {
        Err(CniError::env(
            format!("CNI_IFNAME {name:?} is not a valid interface name: {why}"),
            "use a name of 1 to 15 characters without '/', ':' or whitespace, such as eth0",
        ))
    };
    if name.is_empty() {
        return Err(CniError::env(
            "CNI_IFNAME is not set",
            "the runtime must pass the interface name to create in the pod, such as eth0",
        ));
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("forbidden character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::codes;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ABCdef_0.1-x"),
        ("CNI_NETNS", "/var/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn a_runtime_add_parses() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "ABCdef_0.1-x");
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn bad_variables_are_code_4() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![("CNI_COMMAND", "")],
            vec![("CNI_COMMAND", "FROB")],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a b"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "a-very-long-interface-name"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth/0"),
                ("CNI_NETNS", "/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "relative/ns"),
            ],
        ];
        for c in cases {
            assert_eq!(env(&c).unwrap_err().code, codes::INVALID_ENV, "{c:?}");
        }
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn status_and_gc_need_no_container() {
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }
}
