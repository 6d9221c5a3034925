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

/// Writes `keys[i] -> values[i]` in one BPF_MAP_UPDATE_BATCH call (arrays
/// and hashes of plain values; a Maglev table is one call, not 16381).
pub fn map_update_batch(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = Attr {
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
