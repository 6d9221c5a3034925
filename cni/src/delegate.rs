//! Running another IPAM plugin the way the spec says: exec `<CNI_PATH>/<type>`
//! with our environment, the same network config on stdin, and read its
//! result or error from stdout.

use sluice_common::cni::{codes, CniError, CniResult, Command, Env};
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
    let input = stdin_file(stdin).map_err(|e| {
        CniError::new(
            codes::DELEGATE_FAILED,
            format!("cannot pass the config to IPAM plugin {}", path.display()),
            e.to_string(),
        )
    })?;
    let child = std::process::Command::new(&path)
        .env("CNI_COMMAND", command.as_str())
        .stdin(input)
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

/// `data` as a child's stdin: an in-memory file, read from its start. Not
/// a pipe: this binary has no Rust runtime to ignore SIGPIPE (its C
/// `main`), so writing to a pipe whose reader exited without reading (a
/// plugin answering VERSION at once) killed the whole plugin.
pub fn stdin_file(data: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: a valid NUL-terminated name; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(c"cni-stdin".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data)?;
    f.rewind()?;
    Ok(f)
}
