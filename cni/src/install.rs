//! `sluice install`: what the DaemonSet's init container runs to put the
//! plugin on the host, atomically and idempotently.
//!
//! - the plugin binaries (`sluice`, `sluice-ipam`) are copied into the
//!   host's CNI bin dir through a temp file and a rename (a running plugin
//!   keeps its old inode; kubelet never sees half a binary); an identical
//!   one is left alone;
//! - the conflist chains the reference `portmap` and `bandwidth` plugins
//!   after `sluice`, and names only CNI versions **every** plugin of the
//!   list speaks (each chained plugin is asked with VERSION): a runtime
//!   that picks the highest of `cniVersions` never picks one a chained
//!   plugin refuses;
//! - the conflist is written to a temp file, synced and renamed over the
//!   old one, so kubelet reads the old list or the new one, never a mix;
//!   an existing file is replaced only when `sluice install` wrote it (it
//!   carries `sluiceInstall`), or with `--force`;
//! - runs are serialised by a lock file in the conf dir; temp files a
//!   killed run left are removed by the next.

use serde_json::{json, Value};
use sluice_common::cni::SUPPORTED_VERSIONS;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The shipped conflist, the template when none is given.
pub const DEFAULT_CONFLIST: &str = include_str!("../../conf/10-sluice.conflist");
/// The binaries installed.
pub const BINARIES: [&str; 2] = ["sluice", "sluice-ipam"];
/// The key marking a conflist `sluice install` wrote.
pub const MARKER: &str = "sluiceInstall";

const USAGE: &str = "\
usage: sluice install [--bin-src DIR] [--bin-dir DIR] [--conf-dir DIR] [--name FILE]
                      [--template FILE] [--chain TYPE,TYPE|none] [--force]

  --bin-src DIR    where the binaries to install are (default: this binary's directory)
  --bin-dir DIR    the host's CNI bin dir (default /host/opt/cni/bin)
  --conf-dir DIR   the host's CNI conf dir (default /host/etc/cni/net.d)
  --name FILE      the conflist's file name (default 10-sluice.conflist)
  --template FILE  the conflist to install (default: the shipped one); its first
                   plugin must be sluice; chained plugins it lacks are appended
  --chain LIST     plugins chained after sluice (default portmap,bandwidth)
  --force          replace a conflist sluice install did not write";

#[derive(Debug, Clone)]
pub struct Opts {
    pub bin_src: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub name: String,
    pub template: Option<PathBuf>,
    pub chain: Vec<String>,
    pub force: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let mut o = Opts {
        bin_src: exe_dir,
        bin_dir: "/host/opt/cni/bin".into(),
        conf_dir: "/host/etc/cni/net.d".into(),
        name: "10-sluice.conflist".into(),
        template: None,
        chain: vec!["portmap".into(), "bandwidth".into()],
        force: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |n: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{n} needs a value"))
        };
        match a.as_str() {
            "--bin-src" => o.bin_src = val(a)?.into(),
            "--bin-dir" => o.bin_dir = val(a)?.into(),
            "--conf-dir" => o.conf_dir = val(a)?.into(),
            "--name" => o.name = val(a)?,
            "--template" => o.template = Some(val(a)?.into()),
            "--chain" => {
                let v = val(a)?;
                o.chain = if v == "none" {
                    Vec::new()
                } else {
                    v.split(',').map(str::to_string).collect()
                }
            }
            "--force" => o.force = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !o.name.ends_with(".conflist") || o.name.contains('/') {
        return Err(format!(
            "--name {:?} must be a file name ending in .conflist",
            o.name
        ));
    }
    Ok(o)
}

/// `sluice install ARGS`: returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("sluice install: {e}");
            }
            eprintln!("{USAGE}");
            return 2;
        }
    };
    match install(&o) {
        Ok(lines) => {
            for l in lines {
                println!("sluice install: {l}");
            }
            0
        }
        Err(e) => {
            eprintln!("sluice install: {e}");
            1
        }
    }
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Writes `data` to `dir/name` through `dir/.name.tmp-<pid>`, synced, then
/// renamed; the directory synced too.
fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dst = dir.join(name);
    let r = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, &dst)?;
        File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    ctx(r, || format!("writing {}", dst.display()))
}

/// Removes the temp files a killed run left of `names` (under the lock,
/// every one is stale); other tools' files are not ours to touch.
fn sweep(dir: &Path, names: &[&str]) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if names.iter().any(|x| n.starts_with(&format!(".{x}.tmp-"))) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The versions a chained plugin speaks (its VERSION answer).
fn plugin_versions(bin: &Path) -> Result<Vec<String>, String> {
    let input = crate::delegate::stdin_file(br#"{"cniVersion":"0.4.0"}"#)
        .map_err(|e| format!("running {} VERSION: {e}", bin.display()))?;
    let c = Command::new(bin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {} VERSION: {e}", bin.display()))?;
    let out = c
        .wait_with_output()
        .map_err(|e| format!("running {} VERSION: {e}", bin.display()))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{} VERSION answered no JSON ({e}): {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(v["supportedVersions"]
        .as_array()
        .ok_or_else(|| format!("{} VERSION lists no supportedVersions: {v}", bin.display()))?
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect())
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The conflist for `template` with the chain appended and the versions
/// every plugin speaks.
pub fn conflist(template: &str, chain: &[(String, Vec<String>)]) -> Result<Value, String> {
    let mut v: Value =
        serde_json::from_str(template).map_err(|e| format!("the template is not JSON: {e}"))?;
    let plugins = v["plugins"]
        .as_array_mut()
        .ok_or("the template has no \"plugins\" list")?;
    if plugins.first().and_then(|p| p["type"].as_str()) != Some("sluice") {
        return Err("the template's first plugin must be of type \"sluice\"".into());
    }
    for (t, _) in chain {
        if !plugins.iter().any(|p| p["type"] == t.as_str()) {
            plugins.push(match t.as_str() {
                "portmap" => {
                    json!({"type": "portmap", "snat": true, "capabilities": {"portMappings": true}})
                }
                "bandwidth" => json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
                other => json!({"type": other}),
            });
        }
    }
    let mut common: Vec<String> = SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect();
    for (t, vs) in chain {
        common.retain(|c| vs.contains(c));
        if common.is_empty() {
            return Err(format!(
                "no CNI version that sluice ({}) and {t} ({}) both speak",
                SUPPORTED_VERSIONS.join(", "),
                vs.join(", ")
            ));
        }
    }
    common.sort_by_key(|c| version_key(c));
    let top = common.last().cloned().expect("not empty");
    v["cniVersion"] = json!(top);
    // libcni 1.2+ picks the highest of cniVersions it supports: only
    // versions every plugin speaks, from 1.0.0 on (the field's era).
    let listed: Vec<&String> = common
        .iter()
        .filter(|c| version_key(c) >= vec![1, 0, 0])
        .collect();
    match v.as_object_mut() {
        Some(o) if listed.is_empty() => {
            o.remove("cniVersions");
        }
        Some(o) => {
            o.insert("cniVersions".into(), json!(listed));
        }
        None => return Err("the template is not a JSON object".into()),
    }
    v[MARKER] = json!({ "version": env!("CARGO_PKG_VERSION") });
    Ok(v)
}

pub fn install(o: &Opts) -> Result<Vec<String>, String> {
    let mut said = Vec::new();
    for d in [&o.bin_dir, &o.conf_dir] {
        ctx(fs::create_dir_all(d), || {
            format!("creating {}", d.display())
        })?;
    }
    let lock_path = o.conf_dir.join(".sluice-install.lock");
    let lock = ctx(
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path),
        || format!("opening {}", lock_path.display()),
    )?;
    // Held until this function returns.
    let _lock = ctx(
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e)),
        || format!("locking {}", lock_path.display()),
    )?;
    sweep(&o.bin_dir, &BINARIES);
    sweep(&o.conf_dir, &[o.name.as_str()]);
    for b in BINARIES {
        let src = o.bin_src.join(b);
        let data = ctx(fs::read(&src), || format!("reading {}", src.display()))?;
        let dst = o.bin_dir.join(b);
        if fs::read(&dst).is_ok_and(|have| have == data) {
            said.push(format!("{} is current", dst.display()));
            continue;
        }
        write_atomic(&o.bin_dir, b, &data, 0o755)?;
        said.push(format!("installed {}", dst.display()));
    }
    let mut chain = Vec::new();
    for t in &o.chain {
        let bin = o.bin_dir.join(t);
        if !bin.is_file() {
            return Err(format!(
                "chained plugin {t} is not in {} (install the reference CNI plugins there, or \
                 pass --chain without it)",
                o.bin_dir.display()
            ));
        }
        chain.push((t.clone(), plugin_versions(&bin)?));
    }
    let template = match &o.template {
        Some(p) => ctx(fs::read_to_string(p), || format!("reading {}", p.display()))?,
        None => DEFAULT_CONFLIST.to_string(),
    };
    let list = conflist(&template, &chain)?;
    let text = serde_json::to_string_pretty(&list).expect("JSON of JSON") + "\n";
    let dst = o.conf_dir.join(&o.name);
    match fs::read_to_string(&dst) {
        Ok(have) if have == text => {
            said.push(format!("{} is current", dst.display()));
            return Ok(said);
        }
        Ok(have) => {
            let ours = serde_json::from_str::<Value>(&have)
                .ok()
                .is_some_and(|v| v.get(MARKER).is_some());
            if !ours && !o.force {
                return Err(format!(
                    "{} exists and sluice install did not write it: left as it is (pass \
                     --force to replace it)",
                    dst.display()
                ));
            }
        }
        Err(_) => {}
    }
    write_atomic(&o.conf_dir, &o.name, text.as_bytes(), 0o644)?;
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x["type"].as_str()).collect())
        .unwrap_or_default();
    said.push(format!(
        "wrote {} (cniVersion {}, chain {})",
        dst.display(),
        list["cniVersion"].as_str().unwrap_or("?"),
        types.join(" -> ")
    ));
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_those_every_plugin_speaks() {
        let reference: Vec<String> = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let v = conflist(
            DEFAULT_CONFLIST,
            &[
                ("portmap".into(), reference.clone()),
                ("bandwidth".into(), reference),
            ],
        )
        .unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["cniVersions"], json!(["1.0.0"]));
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["sluice", "portmap", "bandwidth"]);
        assert!(v.get(MARKER).is_some());
        // Alone, sluice speaks up to 1.1.0.
        let v = conflist(DEFAULT_CONFLIST, &[]).unwrap();
        assert_eq!(v["cniVersions"], json!(["1.0.0", "1.1.0"]));
        // A plugin speaking nothing in common is an error that names it.
        let e = conflist(DEFAULT_CONFLIST, &[("old".into(), vec!["0.2.0".into()])]).unwrap_err();
        assert!(e.contains("old"), "{e}");
        let e = conflist(r#"{"plugins":[{"type":"bridge"}]}"#, &[]).unwrap_err();
        assert!(e.contains("first plugin"), "{e}");
    }
}
