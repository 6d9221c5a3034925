//! Loading the embedded objects with their maps pinned by name under one
//! directory. A map already pinned there is reused (that is how a restarted
//! daemon keeps the datapath's state), but only if its layout is the one this
//! build expects: aya reuses any pin of the right name, so the check is here.

use crate::maps::MapSpec;
use aya::maps::{Map, MapData, MapInfo};
use aya::programs::{Program, ProgramError};
use aya::{Ebpf, EbpfLoader};
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

/// Refuses pinned maps whose type, key, value or size differ from `specs`.
pub fn check_pinned_maps(pin_dir: &Path, specs: &[MapSpec]) -> Result<(), LoadError> {
    for spec in specs {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| LoadError::MapInfo {
            path: path.clone(),
            source,
        })?;
        // The map type is compared as a number: aya's MapType has no
        // conversion back to bpf_map_type.
        let found = (
            map_type_number(&info),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let want = (
            Some(spec.map_type),
            spec.key_size,
            spec.value_size,
            spec.max_entries,
        );
        if found != want {
            return Err(LoadError::MapMismatch {
                path,
                detail: format!(
                    "pinned type/key/value/max_entries {:?}/{}/{}/{}, expected {}/{}/{}/{}",
                    found.0,
                    found.1,
                    found.2,
                    found.3,
                    spec.map_type,
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries
                ),
            });
        }
    }
    Ok(())
}

fn map_type_number(info: &MapInfo) -> Option<u32> {
    use aya::maps::MapType;
    match info.map_type().ok()? {
        MapType::Hash => Some(1),
        MapType::Array => Some(2),
        MapType::PerCpuHash => Some(5),
        MapType::PerCpuArray => Some(6),
        MapType::LruHash => Some(9),
        MapType::HashOfMaps => Some(13),
        _ => None,
    }
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
    std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDir {
        path: pin_dir.into(),
        source,
    })?;
    check_pinned_maps(pin_dir, specs)?;
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(bytes)
        .map_err(|source| LoadError::Object {
            object,
            pin_dir: pin_dir.into(),
            source: Box::new(source),
        })
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

impl Loadable for aya::programs::CgroupSockAddr {
    fn load_into_kernel(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

/// Opens one pinned map for reading or writing without loading anything
/// (sluicectl with the daemon down, tests).
pub fn open_pinned(pin_dir: &Path, spec: &MapSpec) -> Result<Map, LoadError> {
    let path = pin_dir.join(spec.name);
    check_pinned_maps(pin_dir, std::slice::from_ref(spec))?;
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
