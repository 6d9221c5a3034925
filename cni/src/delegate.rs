//! Running another IPAM plugin the way the spec says: exec `<CNI_PATH>/<type>`
//! with our environment, the same network config on stdin, and read its
//! result or error from stdout.

use sluice_common::cni::{codes, CniError, CniResult, Command, Env};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

pub fn find_plugin(env: &Env, plugin_type: &str) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return Err(CniError::config(
            format!("ipam type {plugin_type:?} is not a plugin name"),
            "set ipam.type to a plugin binary name such as sluice-ipam or host-local",
        ));
    }
    for dir in &env.path {
        let p = dir.join(plugin_type);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(CniError::config(
        format!("IPAM plugin {plugin_type:?} was not found in CNI_PATH"),
        format!(
            "searched {}; install the plugin there or set ipam.type to sluice-ipam",
            env.path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ),
    ))
}

/// Runs the delegate for `command`; returns its parsed result for ADD and
/// its raw stdout otherwise.
pub fn run(
    env: &Env,
    plugin_type: &str,
    command: Command,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let path = find_plugin(env, plugin_type)?;
    let mut child = std::process::Command::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                codes::DELEGATE_FAILED,
                format!("cannot run IPAM plugin {}", path.display()),
                e.to_string(),
            )
        })?;
    if let Some(mut i) = child.stdin.take() {
        // A delegate that exits without reading gives EPIPE; its exit status
        // and output below tell the real story.
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            codes::DELEGATE_FAILED,
            format!("waiting for IPAM plugin {}", path.display()),
            e.to_string(),
        )
    })?;
    let value: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        if let Some(err) = value.as_ref().and_then(CniError::from_json) {
            return Err(err.context(format!("IPAM plugin {plugin_type}")));
        }
        return Err(CniError::new(
            codes::DELEGATE_FAILED,
            format!("IPAM plugin {plugin_type} failed ({})", out.status),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    if command != Command::Add {
        return Ok(None);
    }
    let value = value.ok_or_else(|| {
        CniError::new(
            codes::DELEGATE_FAILED,
            format!("IPAM plugin {plugin_type} printed no JSON result"),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    })?;
    CniResult::from_json(&value).map(Some).map_err(|e| {
        CniError::new(
            codes::DELEGATE_FAILED,
            format!("IPAM plugin {plugin_type} printed an invalid result"),
            e.to_string(),
        )
    })
}
