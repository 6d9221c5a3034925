//! Loading the embedded objects with their maps pinned by name under one
//! directory. A map already pinned there is reused (that is how a restarted
//! daemon keeps the datapath's state), but only if it is exactly the map
//! this build expects: type, key and value size, size, flags and, for a map
//! of maps, the inner-map template. aya reuses any pin of the right name,
//! so the check is here.
//!
//! A pinned map that differs only in size, flags or inner template (an
//! upgrade that sizes a map differently, or adds `BPF_F_NO_PREALLOC`) is
//! carried over instead of refused: set aside under `reshaping_<name>`,
//! created anew by the loader, its entries copied in, then unpinned. A
//! daemon killed in the middle finds the aside pin at its next start and
//! finishes the copy. A different type or key/value layout under the same
//! name is a build that forgot to version the map's name (see
//! [`crate::maps::MapSpec`]) and is refused.

use crate::maps::{InnerSpec, MapSpec, MergeValue, ObsoleteMap};
use crate::sys;
use aya::maps::{Map, MapData};
use aya::programs::{Program, ProgramError};
use aya::{Ebpf, EbpfLoader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot create the map pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pinned map {path} does not have this build's layout ({detail}); it was pinned by an \
         incompatible sluiced. Stop every daemon using this pin path, remove {path} (that map's \
         entries are rebuilt from the endpoint records) and start again"
    )]
    MapMismatch { path: PathBuf, detail: String },
    #[error("cannot inspect pinned map {path}: {source}")]
    MapInfo {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("cannot inspect pinned map {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set pinned map {path} aside to carry its entries over ({why}): {source}")]
    SetAside {
        path: PathBuf,
        why: String,
        source: std::io::Error,
    },
    #[error("cannot load BPF object {object} (maps pinned under {pin_dir}): {source}")]
    Object {
        object: &'static str,
        pin_dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("BPF object {object} has no program {program}")]
    NoProgram {
        object: &'static str,
        program: &'static str,
    },
    /// Carries the verifier log when the kernel rejects the program.
    #[error("the kernel rejected program {program} of {object}: {source}")]
    Program {
        object: &'static str,
        program: &'static str,
        source: ProgramError,
    },
}

/// How a pinned map compares with this build's [`MapSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    Absent,
    Matches,
    /// Same type, key and value; size, flags or inner template differ: its
    /// entries can be carried over into a new map.
    Reshape(String),
    /// Another type or key/value layout under the same name.
    Incompatible(String),
}

/// Compares the map pinned at `pin_dir/<spec.name>` with `spec`.
pub fn pinned_state(pin_dir: &Path, spec: &MapSpec) -> Result<Pinned, LoadError> {
    let path = pin_dir.join(spec.name);
    let inspect = |source| LoadError::Inspect {
        path: path.clone(),
        source,
    };
    let fd = match sys::obj_get(&path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pinned::Absent),
        Err(e) => return Err(inspect(e)),
    };
    let info = sys::map_info(fd.as_fd()).map_err(inspect)?;
    let (found, want) = (
        (info.map_type, info.key_size, info.value_size),
        (spec.map_type, spec.key_size, spec.value_size),
    );
    if found != want {
        return Ok(Pinned::Incompatible(format!(
            "pinned type/key/value {}/{}/{}, this build {}/{}/{}",
            found.0, found.1, found.2, want.0, want.1, want.2
        )));
    }
    let mut diffs = Vec::new();
    if info.max_entries != spec.max_entries {
        diffs.push(format!(
            "max_entries {} (this build {})",
            info.max_entries, spec.max_entries
        ));
    }
    if info.map_flags != spec.flags {
        diffs.push(format!(
            "flags {:#x} (this build {:#x})",
            info.map_flags, spec.flags
        ));
    }
    if let Some(inner) = spec.inner {
        if !inner_template_fits(fd.as_fd(), &inner).map_err(inspect)? {
            diffs.push(format!(
                "inner-map template is not type/key/value/flags {}/{}/{}/{:#x}",
                inner.map_type, inner.key_size, inner.value_size, inner.flags
            ));
        }
    }
    Ok(if diffs.is_empty() {
        Pinned::Matches
    } else {
        Pinned::Reshape(diffs.join(", "))
    })
}

/// The key the inner-template probe uses; never a real svc_id.
const PROBE_KEY: u32 = u32::MAX;

/// Whether an inner map built to `inner` (two entries, so a template that
/// fixes the size shows too) goes into the outer map: the kernel's own
/// compatibility check, which `bpf_map_info` does not expose.
fn inner_template_fits(outer: BorrowedFd<'_>, inner: &InnerSpec) -> std::io::Result<bool> {
    let probe = sys::map_create(
        inner.map_type,
        inner.key_size,
        inner.value_size,
        2,
        inner.flags,
        "sluice_probe",
    )?;
    const BPF_NOEXIST: u64 = 1;
    let key = PROBE_KEY.to_ne_bytes();
    match sys::map_update(
        outer,
        &key,
        &(probe.as_raw_fd() as u32).to_ne_bytes(),
        BPF_NOEXIST,
    ) {
        Ok(()) => {
            sys::map_delete(outer, &key)?;
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Refuses pinned maps that are not exactly `specs` (see [`pinned_state`]).
pub fn check_pinned_maps(pin_dir: &Path, specs: &[MapSpec]) -> Result<(), LoadError> {
    for spec in specs {
        match pinned_state(pin_dir, spec)? {
            Pinned::Absent | Pinned::Matches => {}
            Pinned::Reshape(detail) | Pinned::Incompatible(detail) => {
                return Err(LoadError::MapMismatch {
                    path: pin_dir.join(spec.name),
                    detail,
                })
            }
        }
    }
    Ok(())
}

/// Where a map being carried over waits (bpffs names take no '.').
pub fn aside_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("reshaping_{name}"))
}

/// A map carried over into a new shape, or an older build's map migrated
/// into its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub name: &'static str,
    pub into: &'static str,
    pub why: String,
    pub copied: usize,
    /// Entries that did not fit (a smaller map, an incompatible inner map,
    /// or a conversion that drops them).
    pub dropped: usize,
}

/// Sets aside every pinned map of `specs` that only needs a new shape, so
/// the loader creates it anew; refuses incompatible ones. Returns why each
/// was set aside.
pub fn prepare_pins(
    pin_dir: &Path,
    specs: &[MapSpec],
) -> Result<Vec<(&'static str, String)>, LoadError> {
    let mut out = Vec::new();
    for spec in specs {
        match pinned_state(pin_dir, spec)? {
            Pinned::Absent | Pinned::Matches => {}
            Pinned::Incompatible(detail) => {
                return Err(LoadError::MapMismatch {
                    path: pin_dir.join(spec.name),
                    detail,
                })
            }
            Pinned::Reshape(why) => {
                let path = pin_dir.join(spec.name);
                let aside = aside_path(pin_dir, spec.name);
                // An older carry-over that never finished, of a shape that
                // has changed again since: its remaining entries are lost.
                let _ = std::fs::remove_file(&aside);
                std::fs::rename(&path, &aside).map_err(|source| LoadError::SetAside {
                    path: path.clone(),
                    why: why.clone(),
                    source,
                })?;
                out.push((spec.name, why));
            }
        }
    }
    Ok(out)
}

/// Copies every map set aside by [`prepare_pins`] whose new map now exists
/// into it (entries already in the new map win), then unpins the old one.
pub fn finish_reshapes(pin_dir: &Path, specs: &[MapSpec]) -> Result<Vec<Carried>, LoadError> {
    let mut out = Vec::new();
    for spec in specs {
        let aside = aside_path(pin_dir, spec.name);
        let path = pin_dir.join(spec.name);
        if !aside.exists() || !path.exists() {
            continue;
        }
        let inspect = |p: &Path| {
            let p = p.to_path_buf();
            move |source| LoadError::Inspect { path: p, source }
        };
        let old = sys::obj_get(&aside).map_err(inspect(&aside))?;
        let new = sys::obj_get(&path).map_err(inspect(&path))?;
        let info = sys::map_info(old.as_fd()).map_err(inspect(&aside))?;
        let (copied, dropped) = copy_entries(
            old.as_fd(),
            new.as_fd(),
            spec,
            |k, v| Some((k.to_vec(), v.to_vec())),
            None,
        )
        .map_err(inspect(&aside))?;
        std::fs::remove_file(&aside).map_err(inspect(&aside))?;
        out.push(Carried {
            name: spec.name,
            into: spec.name,
            why: format!(
                "max_entries {} flags {:#x} → max_entries {} flags {:#x}",
                info.max_entries, info.map_flags, spec.max_entries, spec.flags
            ),
            copied,
            dropped,
        });
    }
    Ok(out)
}

type Convert<'a> = dyn Fn(&[u8], &[u8]) -> Option<(Vec<u8>, Vec<u8>)> + 'a;

/// Copies (converted) entries of `from` into `to`, whose spec is `spec`:
/// an entry `to` already holds is kept, or folded with `merge`. For a map
/// of maps the inner maps themselves move (where they fit the template).
/// Returns (copied, dropped).
fn copy_entries(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    spec: &MapSpec,
    convert: impl Fn(&[u8], &[u8]) -> Option<(Vec<u8>, Vec<u8>)>,
    merge: Option<MergeValue>,
) -> std::io::Result<(usize, usize)> {
    const BPF_ANY: u64 = 0;
    const BPF_NOEXIST: u64 = 1;
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    const HASH_OF_MAPS: u32 = 13;
    let from_info = sys::map_info(from)?;
    const SK_STORAGE: u32 = crate::maps::BPF_MAP_TYPE_SK_STORAGE;
    if from_info.map_type == SK_STORAGE {
        // Its values live in the sockets and cannot be listed or moved.
        return Ok((0, 0));
    }
    let old_value = sys::user_value_size(from_info.map_type, from_info.value_size)?;
    let new_value = sys::user_value_size(spec.map_type, spec.value_size)?;
    let convert: &Convert<'_> = &convert;
    let (mut copied, mut dropped) = (0, 0);
    for key in sys::map_keys(from, from_info.key_size as usize)? {
        let mut value = vec![0u8; old_value];
        if !sys::map_lookup(from, &key, &mut value)? {
            continue;
        }
        if spec.map_type == HASH_OF_MAPS {
            let id = u32::from_ne_bytes(value[..4].try_into().expect("4-byte map id"));
            let moved = sys::map_fd_by_id(id).and_then(|inner| {
                sys::map_update(
                    to,
                    &key,
                    &(inner.as_raw_fd() as u32).to_ne_bytes(),
                    BPF_NOEXIST,
                )
            });
            match moved {
                Ok(()) => copied += 1,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(_) => dropped += 1,
            }
            continue;
        }
        let Some((k, v)) = convert(&key, &value) else {
            dropped += 1;
            continue;
        };
        if k.len() != spec.key_size as usize || v.len() != new_value {
            dropped += 1;
            continue;
        }
        let array = matches!(spec.map_type, ARRAY | PERCPU_ARRAY);
        let flags = if array { BPF_ANY } else { BPF_NOEXIST };
        match sys::map_update(to, &k, &v, flags) {
            Ok(()) => copied += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if let Some(merge) = merge {
                    let mut held = vec![0u8; new_value];
                    if sys::map_lookup(to, &k, &mut held)? {
                        merge(&mut held, &v);
                        sys::map_update(to, &k, &held, BPF_ANY)?;
                        copied += 1;
                    }
                }
            }
            Err(_) => dropped += 1,
        }
    }
    Ok((copied, dropped))
}

/// Migrates each map an older build pinned under a name this build no
/// longer uses into its successor (which must be pinned already), then
/// unpins it.
pub fn migrate_obsolete(
    pin_dir: &Path,
    obsolete: &[ObsoleteMap],
    specs: &[MapSpec],
) -> Result<Vec<Carried>, LoadError> {
    let mut out = Vec::new();
    for old in obsolete {
        let path = pin_dir.join(old.spec.name);
        if !path.exists() {
            continue;
        }
        let Some(spec) = specs.iter().find(|s| s.name == old.successor) else {
            continue;
        };
        let succ = pin_dir.join(spec.name);
        let inspect = |p: &Path| {
            let p = p.to_path_buf();
            move |source| LoadError::Inspect { path: p, source }
        };
        let from = sys::obj_get(&path).map_err(inspect(&path))?;
        let to = sys::obj_get(&succ).map_err(inspect(&succ))?;
        let (copied, dropped) =
            copy_entries(from.as_fd(), to.as_fd(), spec, old.convert, old.merge)
                .map_err(inspect(&path))?;
        std::fs::remove_file(&path).map_err(inspect(&path))?;
        out.push(Carried {
            name: old.spec.name,
            into: spec.name,
            why: old.spec.what.to_string(),
            copied,
            dropped,
        });
    }
    Ok(out)
}

/// Parses one embedded object, reusing (after [`check_pinned_maps`]) or
/// creating and pinning its maps under `pin_dir`. Programs are not loaded
/// yet; see [`load_program`].
pub fn load_object(
    object: &'static str,
    bytes: &[u8],
    pin_dir: &Path,
    specs: &[MapSpec],
) -> Result<Ebpf, LoadError> {
    load_object_carrying(object, bytes, pin_dir, specs).map(|(ebpf, _)| ebpf)
}

/// [`load_object`], carrying over pinned maps whose size, flags or inner
/// template changed (see the module docs) instead of refusing them; says
/// which it carried over.
pub fn load_object_carrying(
    object: &'static str,
    bytes: &[u8],
    pin_dir: &Path,
    specs: &[MapSpec],
) -> Result<(Ebpf, Vec<Carried>), LoadError> {
    std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDir {
        path: pin_dir.into(),
        source,
    })?;
    let set_aside = prepare_pins(pin_dir, specs)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    // Sizes come from the specs (the service maps from the configured
    // capacity), not from the object's defaults.
    for spec in specs {
        loader.map_max_entries(spec.name, spec.max_entries);
    }
    let ebpf = loader.load(bytes).map_err(|source| LoadError::Object {
        object,
        pin_dir: pin_dir.into(),
        source: Box::new(source),
    })?;
    let mut carried = finish_reshapes(pin_dir, specs)?;
    for c in &mut carried {
        if let Some((_, why)) = set_aside.iter().find(|(n, _)| *n == c.name) {
            c.why = why.clone();
        }
    }
    Ok((ebpf, carried))
}

/// Finds `program` in `ebpf` as type `T` and loads it into the kernel; a
/// verifier rejection comes back with the verifier's log.
pub fn load_program<'a, T>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    program: &'static str,
) -> Result<&'a mut T, LoadError>
where
    T: Loadable,
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p: &mut T = ebpf
        .program_mut(program)
        .ok_or(LoadError::NoProgram { object, program })?
        .try_into()
        .map_err(|source| LoadError::Program {
            object,
            program,
            source,
        })?;
    p.load_into_kernel().map_err(|source| LoadError::Program {
        object,
        program,
        source,
    })?;
    Ok(p)
}

/// The program types Sluice loads, with their (differently typed) `load`.
pub trait Loadable {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError>;
}

impl Loadable for aya::programs::SchedClassifier {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for aya::programs::SockOps {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for aya::programs::SkMsg {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for aya::programs::CgroupSockAddr {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

/// Opens one pinned map for reading or writing without loading anything
/// (sluicectl with the daemon down, tests). Its size may differ from the
/// spec's (the service maps are sized by the daemon's configuration); its
/// type, layout, flags and inner template may not.
pub fn open_pinned(pin_dir: &Path, spec: &MapSpec) -> Result<Map, LoadError> {
    let path = pin_dir.join(spec.name);
    if let Ok(fd) = sys::obj_get(&path) {
        if let Ok(info) = sys::map_info(fd.as_fd()) {
            let any_size = MapSpec {
                max_entries: info.max_entries,
                ..*spec
            };
            check_pinned_maps(pin_dir, std::slice::from_ref(&any_size))?;
        }
    }
    let data = MapData::from_pin(&path).map_err(|source| LoadError::MapInfo {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| LoadError::MapInfo { path, source })
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `mount_point` is a bpffs, mounting one there if it is not.
/// Returns whether it mounted.
pub fn ensure_bpffs(mount_point: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    if is_bpffs(mount_point) {
        return Ok(false);
    }
    std::fs::create_dir_all(mount_point)?;
    let target = std::ffi::CString::new(mount_point.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: all arguments are valid C strings; no data argument pointer
    // beyond the options string.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

impl Loadable for aya::programs::Xdp {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for aya::programs::CgroupSock {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}
