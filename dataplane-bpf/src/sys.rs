//! The bpf(2) commands aya 0.14 does not expose: reading a link's target
//! (which ifindex a tcx link sits on, 0 once its device is gone), replacing a
//! link's program in place, opening a pin as a raw fd, and running a program
//! on a crafted packet (BPF_PROG_TEST_RUN).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_F_REPLACE: u32 = 1 << 2;

/// `bpf_link_type` values we look at.
pub const LINK_TYPE_CGROUP: u32 = 3;
pub const LINK_TYPE_TCX: u32 = 11;
/// fentry/fexit and BPF LSM links.
pub const LINK_TYPE_TRACING: u32 = 2;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a fully initialised bpf_attr prefix for `cmd`, and the
    // kernel reads/writes at most size_of::<T>() bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned object (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path with a NUL byte"))?;
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// tcx: the device the link is attached to; 0 once the device is gone.
    pub tcx_ifindex: u32,
    /// cgroup links: the cgroup's id (its inode number).
    pub cgroup_id: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD into `buf` (the kernel fills at most its length).
fn obj_info(fd: BorrowedFd<'_>, buf: &mut [u64]) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(buf) as u32,
        info: buf.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then an 8-byte aligned union.
    let mut buf = [0u64; 16];
    obj_info(fd, &mut buf)?;
    let word = |i: usize| buf[i / 2].to_ne_bytes()[(i % 2) * 4..(i % 2) * 4 + 4].to_vec();
    let u32_at = |i: usize| u32::from_ne_bytes(word(i).try_into().unwrap());
    let link_type = u32_at(0);
    Ok(LinkInfo {
        link_type,
        id: u32_at(1),
        prog_id: u32_at(2),
        tcx_ifindex: if link_type == LINK_TYPE_TCX {
            u32_at(4)
        } else {
            0
        },
        cgroup_id: if link_type == LINK_TYPE_CGROUP {
            buf[2]
        } else {
            0
        },
    })
}

/// Reads a pinned link's info.
pub fn pinned_link_info(path: &Path) -> io::Result<LinkInfo> {
    let fd = obj_get(path)?;
    use std::os::fd::AsFd;
    link_info(fd.as_fd())
}

/// Swaps the program behind a link (BPF_LINK_UPDATE), only if it still runs
/// `old_prog`: the link, its ID and its attachment stay, so traffic never
/// sees a moment without a program.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: BorrowedFd<'_>,
) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        flags: BPF_F_REPLACE,
        old_prog_fd: old_prog.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Runs a tc/XDP program once on `frame` (BPF_PROG_TEST_RUN) and returns its
/// verdict. tc programs run on an skb of the loopback device (ifindex 1).
pub fn prog_test_run(prog: BorrowedFd<'_>, frame: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    prog_test_run_out(prog, frame, &mut out)
}

/// Like [`prog_test_run`], and `out` receives the packet as the program
/// left it.
pub fn prog_test_run_out(prog: BorrowedFd<'_>, frame: &[u8], out: &mut [u8]) -> io::Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// Opens a loaded program by its ID.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_PROG_GET_FD_BY_ID, id)
}

/// BPF_PROG_GET_FD_BY_ID / BPF_MAP_GET_FD_BY_ID.
fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        id,
        next_id: 0,
        open_flags: 0,
        _pad: 0,
    };
    let fd = bpf(cmd, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program's tag: a hash of its instructions with map references
/// blanked, so the same program loaded twice has the same tag.
pub fn prog_tag(prog: BorrowedFd<'_>) -> io::Result<[u8; 8]> {
    // struct bpf_prog_info starts with type, id, tag[8].
    let mut buf = [0u64; 2];
    obj_info(prog, &mut buf)?;
    Ok(buf[1].to_ne_bytes())
}

/// The maps a loaded program references, by id, sorted.
pub fn prog_map_ids(prog: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // struct bpf_prog_info up to map_ids: nr_map_ids is the u32 at byte 52,
    // map_ids the u64 pointer at byte 56. The kernel copies up to
    // nr_map_ids ids and sets it to the program's count.
    let mut ids = vec![0u32; 64];
    let mut buf = [0u64; 8];
    buf[6] = u64::from_ne_bytes({
        let mut b = [0u8; 8];
        b[4..].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
        b
    });
    buf[7] = ids.as_mut_ptr() as u64;
    obj_info(prog, &mut buf)?;
    let n = u32::from_ne_bytes(buf[6].to_ne_bytes()[4..].try_into().unwrap()) as usize;
    if n > ids.len() {
        return Err(io::Error::other(format!("a program with {n} maps")));
    }
    ids.truncate(n);
    ids.sort_unstable();
    Ok(ids)
}

/// Whether two loaded programs are the same program: the same tag (their
/// instructions, map references blanked) and the same maps. A program
/// still bound to a map the loader has since replaced (a pinned map
/// carried into a new size or flags) has the tag of the new one but not
/// its maps: it must be replaced, or it reads a map nobody writes.
pub fn same_program(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(prog_tag(a)? == prog_tag(b)? && prog_map_ids(a)? == prog_map_ids(b)?)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Creates a map that belongs to nobody but its fd (for selection tables,
/// which live on as values of an outer map once inserted there).
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut attr = Attr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
        ..Default::default()
    };
    for (d, s) in attr.map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Creates a map of maps whose inner maps must match `inner` (a map used
/// only as the template).
pub fn map_create_of_maps(
    map_type: u32,
    key_size: u32,
    max_entries: u32,
    inner: BorrowedFd<'_>,
    name: &str,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut attr = Attr {
        map_type,
        key_size,
        value_size: 4,
        max_entries,
        inner_map_fd: inner.as_raw_fd() as u32,
        ..Default::default()
    };
    for (d, s) in attr.map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// BPF_MAP_UPDATE_ELEM with raw key and value bytes (for an outer map the
/// value is the inner map's fd as a u32).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// BPF_MAP_DELETE_ELEM; a missing key is not an error.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Builds a selection table: slot 0 = `ids.len()`, then the ids.
pub fn lb_table(ids: &[u32], name: &str) -> io::Result<OwnedFd> {
    use crate::maps::{BPF_F_INNER_MAP, LB_TABLE_HEADER, LB_TABLE_TYPE};
    let n = ids.len() as u32;
    let fd = map_create(
        LB_TABLE_TYPE,
        4,
        4,
        n + LB_TABLE_HEADER,
        BPF_F_INNER_MAP,
        name,
    )?;
    use std::os::fd::AsFd;
    let keys: Vec<u32> = (0..n + LB_TABLE_HEADER).collect();
    let mut values = Vec::with_capacity(keys.len());
    values.push(n);
    values.extend_from_slice(ids);
    map_update_batch(fd.as_fd(), &keys, &values)?;
    Ok(fd)
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `bpf_attr` of the BPF_MAP_*_BATCH commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` in one BPF_MAP_UPDATE_BATCH call (arrays
/// and hashes of plain values; a Maglev table is one call, not 16381).
pub fn map_update_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    if attr.count as usize != keys.len() {
        return Err(io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

/// BPF_MAP_LOOKUP_ELEM with raw bytes; `Ok(false)` if the key is absent.
/// For a map of maps the value is the inner map's id.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens a map by id (an inner map found through its outer map).
pub fn map_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    fd_by_id(BPF_MAP_GET_FD_BY_ID, id)
}

/// The backend ids in service `svc_id`'s selection table, read through the
/// outer map `tables` (`None`: the service has no table).
pub fn lb_table_ids(tables: BorrowedFd<'_>, svc_id: u32) -> io::Result<Option<Vec<u32>>> {
    use crate::maps::LB_TABLE_HEADER;
    use std::os::fd::AsFd;
    let mut id = [0u8; 4];
    if !map_lookup(tables, &svc_id.to_ne_bytes(), &mut id)? {
        return Ok(None);
    }
    let inner = map_fd_by_id(u32::from_ne_bytes(id))?;
    let mut n = [0u8; 4];
    if !map_lookup(inner.as_fd(), &0u32.to_ne_bytes(), &mut n)? {
        return Ok(Some(Vec::new()));
    }
    let n = u32::from_ne_bytes(n);
    let mut out = Vec::with_capacity(n as usize);
    for slot in LB_TABLE_HEADER..LB_TABLE_HEADER + n {
        let mut v = [0u8; 4];
        if map_lookup(inner.as_fd(), &slot.to_ne_bytes(), &mut v)? {
            out.push(u32::from_ne_bytes(v));
        }
    }
    Ok(Some(out))
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Counts the keys of a hash-type map by walking them (BPF_MAP_GET_NEXT_KEY).
pub fn count_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<usize> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0;
    let mut first = true;
    loop {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {
                n += 1;
                first = false;
                std::mem::swap(&mut key, &mut next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

/// Every key of a map, walked with BPF_MAP_GET_NEXT_KEY (a key deleted
/// meanwhile may end the walk early; the callers copy or convert, and the
/// map's owner has stopped writing it).
pub fn map_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut next = vec![0u8; key_size];
    loop {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: keys.last().map_or(0, |k: &Vec<u8>| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => keys.push(next.clone()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
    }
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`): a
/// per-CPU map's value, read from userspace, holds one slot per possible
/// CPU.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        let bad = || io::Error::other(format!("cannot parse possible CPUs {text:?}"));
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                b + 1 - a
            }
            None => {
                part.parse::<usize>().map_err(|_| bad())?;
                1
            }
        };
    }
    Ok(n)
}

/// The size of a value as userspace reads or writes it: `value_size`, or
/// for a per-CPU map one 8-byte aligned slot per possible CPU.
pub fn user_value_size(map_type: u32, value_size: u32) -> io::Result<usize> {
    const PERCPU_HASH: u32 = 5;
    const PERCPU_ARRAY: u32 = 6;
    const LRU_PERCPU_HASH: u32 = 10;
    Ok(match map_type {
        PERCPU_HASH | PERCPU_ARRAY | LRU_PERCPU_HASH => {
            (value_size as usize).div_ceil(8) * 8 * possible_cpus()?
        }
        _ => value_size as usize,
    })
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every (key, value) of a map, read with BPF_MAP_LOOKUP_BATCH, 256 entries
/// a call (a walk with BPF_MAP_GET_NEXT_KEY plus a lookup is two calls per
/// entry); falls back to that walk where the map type has no batch
/// lookup, and hands each entry to `each`. Values are as userspace reads
/// them (one slot per possible CPU for a per-CPU map; the inner map's id
/// for a map of maps).
fn map_batches(map: BorrowedFd<'_>, mut each: impl FnMut(&[u8], &[u8])) -> io::Result<usize> {
    const CHUNK: usize = 256;
    let info = map_info(map)?;
    let ksz = info.key_size as usize;
    let vsz = user_value_size(info.map_type, info.value_size)?;
    let mut keys = vec![0u8; CHUNK * ksz];
    let mut values = vec![0u8; CHUNK * vsz];
    // Batch tokens: a bucket index for hash maps, a key for arrays.
    let token = ksz.max(8);
    let (mut tin, mut tout) = (vec![0u8; token], vec![0u8; token]);
    let mut first = true;
    let mut n = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { tin.as_mut_ptr() as u64 },
            out_batch: tout.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if first && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524)) => {
                // 524: ENOTSUPP, no batch ops for this map type: walk it.
                let mut v = vec![0u8; vsz];
                let mut m = 0;
                for k in map_keys(map, ksz)? {
                    if map_lookup(map, &k, &mut v)? {
                        each(&k, &v);
                        m += 1;
                    }
                }
                return Ok(m);
            }
            Err(e) => return Err(e),
        };
        let got = attr.count as usize;
        for i in 0..got {
            each(
                &keys[i * ksz..(i + 1) * ksz],
                &values[i * vsz..(i + 1) * vsz],
            );
        }
        n += got;
        if done {
            return Ok(n);
        }
        first = false;
        std::mem::swap(&mut tin, &mut tout);
    }
}

/// Counts a map's entries in batches (a walk key by key is one call per
/// entry: at 300,000 slots, a quarter of a second of CPU).
pub fn count_entries(map: BorrowedFd<'_>) -> io::Result<usize> {
    map_batches(map, |_, _| {})
}

/// Every (key, value) of a map, read in batches.
pub fn map_dump(map: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    map_batches(map, |k, v| out.push((k.to_vec(), v.to_vec())))?;
    Ok(out)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_TCX_INGRESS` attach type (Linux 6.6).
pub const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_TCX_EGRESS`.
pub const BPF_TCX_EGRESS: u32 = 47;
/// Attach before every other program of the hook (with no relative one).
pub const BPF_F_BEFORE: u32 = 1 << 3;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Pins an object (map, program or link) at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path with a NUL byte"))?;
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Pins `fd` at `path`, replacing whatever is pinned there in one step
/// (pinned under a temporary name, then renamed over it), so a reader of
/// `path` always finds either the old object or the new one.
pub fn obj_pin_replace(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pin path without a name"))?;
    // bpffs refuses names with a '.'.
    let tmp = path.with_file_name(format!(
        "tmp_{}_{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    obj_pin(fd, &tmp)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Attaches `prog` to the tcx ingress hook of `ifindex` through a new link,
/// ahead of every program already there (`BPF_F_BEFORE`). Each tcx attach
/// waits for an RCU grace period in the kernel (with RTNL held).
pub fn tcx_link_create(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    tcx_link_create_at(prog, ifindex, TcxHook::Ingress)
}

/// A tcx hook of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcxHook {
    Ingress,
    Egress,
}

impl TcxHook {
    fn attach_type(self) -> u32 {
        match self {
            TcxHook::Ingress => BPF_TCX_INGRESS,
            TcxHook::Egress => BPF_TCX_EGRESS,
        }
    }
}

/// [`tcx_link_create`] on either hook.
pub fn tcx_link_create_at(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    hook: TcxHook,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        relative_fd: u32,
        _pad: u32,
        expected_revision: u64,
    }
    let mut attr = Attr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: hook.attach_type(),
        flags: BPF_F_BEFORE,
        relative_fd: 0,
        _pad: 0,
        expected_revision: 0,
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One program on a tcx hook, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcxEntry {
    pub prog_id: u32,
    /// 0 for a program attached without a link.
    pub link_id: u32,
}

/// The programs on the tcx ingress hook of `ifindex`, first to run first.
/// A device without any is an empty list.
pub fn tcx_query(ifindex: u32) -> io::Result<Vec<TcxEntry>> {
    #[repr(C)]
    struct Attr {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        count: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const MAX: usize = 64;
    let mut progs = [0u32; MAX];
    let mut links = [0u32; MAX];
    let mut attr = Attr {
        target_ifindex: ifindex,
        attach_type: BPF_TCX_INGRESS,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: progs.as_mut_ptr() as u64,
        count: MAX as u32,
        _pad: 0,
        prog_attach_flags: 0,
        link_ids: links.as_mut_ptr() as u64,
        link_attach_flags: 0,
        revision: 0,
    };
    match bpf(BPF_PROG_QUERY, &mut attr) {
        Ok(_) => {}
        // No tcx entry on the device at all.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let n = (attr.count as usize).min(MAX);
    Ok((0..n)
        .map(|i| TcxEntry {
            prog_id: progs[i],
            link_id: links[i],
        })
        .collect())
}

/// What the kernel says about a loaded program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub prog_type: u32,
    pub id: u32,
    pub tag: [u8; 8],
    pub name: String,
}

pub fn prog_info(prog: BorrowedFd<'_>) -> io::Result<ProgInfo> {
    // struct bpf_prog_info: type, id, tag[8] ... name[16] at byte 64.
    let mut buf = [0u64; 12];
    obj_info(prog, &mut buf)?;
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
    let name = &bytes[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(ProgInfo {
        prog_type: u32_at(0),
        id: u32_at(4),
        tag: bytes[8..16].try_into().unwrap(),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
    })
}

/// What the kernel says about a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapInfoRaw {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

pub fn map_info(map: BorrowedFd<'_>) -> io::Result<MapInfoRaw> {
    let mut buf = [0u64; 4];
    obj_info(map, &mut buf)?;
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
    Ok(MapInfoRaw {
        map_type: u32_at(0),
        id: u32_at(4),
        key_size: u32_at(8),
        value_size: u32_at(12),
        max_entries: u32_at(16),
        map_flags: u32_at(20),
    })
}

/// The name the isolating program is loaded under.
pub const ISOLATE_PROG_NAME: &str = "sluice_isolate";

/// Loads a tc program that drops every frame (`TC_ACT_SHOT`): what a pod
/// gets on the node side when no edge check has been pinned yet (the
/// daemon has never run on this node), so it sends nothing unchecked
/// until the daemon replaces it. Two instructions, no maps, built here
/// rather than from an object so a plugin can load it without a loader.
pub fn load_isolate_program() -> io::Result<OwnedFd> {
    // r0 = 2 (TC_ACT_SHOT); exit
    let insns: [u64; 2] = [insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)];
    prog_load(BPF_PROG_TYPE_SCHED_CLS, 0, &insns, ISOLATE_PROG_NAME, None)
}

/// BPF_PROG_LOAD of raw instructions; `log`, if given, receives the
/// verifier's log (level 1).
fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[u64],
    name: &str,
    log: Option<&mut Vec<u8>>,
) -> io::Result<OwnedFd> {
    let license = c"Dual BSD/GPL";
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let mut attr = Attr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        ..Default::default()
    };
    if let Some(buf) = log {
        buf.resize(64 * 1024, 0);
        attr.log_level = 1;
        attr.log_size = buf.len() as u32;
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` and `BPF_PROG_TYPE_CGROUP_SOCK`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const PROG_TYPE_CGROUP_SOCK: u32 = 9;

/// Whether this kernel loads a program of `prog_type` for
/// `expected_attach_type` (the hook exists): `r0 = 1; exit`.
pub fn probe_hook(prog_type: u32, expected_attach_type: u32) -> Result<(), String> {
    let insns = [insn(0xb7, 0, 0, 0, 1), insn(0x95, 0, 0, 0, 0)];
    prog_load(
        prog_type,
        expected_attach_type,
        &insns,
        "sluice_probe",
        None,
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// Whether a program of `prog_type`/`expected_attach_type` may call
/// helper `id`, as bpftool decides it: a program that only calls it is
/// loaded, and only a verifier that does not know the helper, or refuses it
/// to this program type, means no (an argument it dislikes means yes).
pub fn probe_helper(prog_type: u32, expected_attach_type: u32, id: i32) -> Result<(), String> {
    // r1 = ctx (already); call id; r0 = 1; exit
    let insns = [
        insn(0x85, 0, 0, 0, id),
        insn(0xb7, 0, 0, 0, 1),
        insn(0x95, 0, 0, 0, 0),
    ];
    let mut log = Vec::new();
    match prog_load(
        prog_type,
        expected_attach_type,
        &insns,
        "sluice_probe",
        Some(&mut log),
    ) {
        Ok(_) => Ok(()),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let refused = ["invalid func", "unknown func", "cannot use helper"];
            match text.lines().find(|l| refused.iter().any(|m| l.contains(m))) {
                Some(line) => Err(line.trim().to_string()),
                // Refused for something else (its arguments): the helper
                // itself is there.
                None if !text.is_empty() => Ok(()),
                None => Err(format!("the probe program did not load: {e}")),
            }
        }
    }
}

/// Whether the verifier takes an atomic compare-and-exchange (Linux 5.12;
/// the affinity word relies on it), tried on the stack.
pub fn probe_cmpxchg() -> Result<(), String> {
    let insns = [
        insn(0xb7, 1, 0, 0, 0),      // r1 = 0
        insn(0x7b, 10, 1, -8, 0),    // *(u64 *)(r10 - 8) = r1
        insn(0xb7, 0, 0, 0, 0),      // r0 = 0
        insn(0xb7, 2, 0, 0, 1),      // r2 = 1
        insn(0xdb, 10, 2, -8, 0xf1), // r0 = cmpxchg(r10 - 8, r0, r2)
        insn(0xb7, 0, 0, 0, 1),      // r0 = 1
        insn(0x95, 0, 0, 0, 0),      // exit
    ];
    prog_load(
        PROG_TYPE_CGROUP_SOCK_ADDR,
        10, // BPF_CGROUP_INET4_CONNECT
        &insns,
        "sluice_probe",
        None,
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// One BPF instruction as the kernel reads it (little-endian hosts).
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_ne_bytes(b)
}

const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches a link from its hook (`BPF_LINK_DETACH`): the link object
/// stays (and its pins), attached to nothing.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_CGROUP_SOCK_OPS`: a sockops program on a cgroup.
pub const BPF_CGROUP_SOCK_OPS: u32 = 3;
/// `BPF_SK_MSG_VERDICT`: an sk_msg program on a sockmap or sockhash.
pub const BPF_SK_MSG_VERDICT: u32 = 7;

/// Attaches `prog` to the cgroup `cgroup` at `attach_type` through a new
/// link (`BPF_LINK_CREATE`; a cgroup link is multi-attach by nature).
pub fn cgroup_link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _pad: [u64; 4],
    }
    let mut attr = Attr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _pad: [0; 4],
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches `prog` to `target` (a map, for sk_msg) with `BPF_PROG_ATTACH`.
/// The attachment belongs to the target, not to any descriptor: for a
/// sockhash it lasts as long as the map (its pin), and attaching again
/// replaces the program in place.
pub fn prog_attach(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
        replace_bpf_fd: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: 0,
        replace_bpf_fd: 0,
        _pad: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// Pops the oldest value of a queue map into `value`; false when empty.
pub fn map_pop(map: BorrowedFd<'_>, value: &mut [u8]) -> io::Result<bool> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = Attr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: 0,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
