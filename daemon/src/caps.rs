//! The daemon's capabilities: it keeps only those it uses for the rest of
//! its life and drops every other one, from its effective, permitted,
//! inheritable, ambient and bounding sets, before it starts any thread
//! (capabilities are per thread; each new thread copies its creator's, so
//! dropping on the main thread first covers every thread the daemon ever
//! has). `no_new_privs` is set too: nothing it could exec regains a
//! capability. docs/reliability.md lists what remains and why.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// What the daemon keeps, and why (docs/reliability.md says the same).
pub const KEPT: &[(u32, &str, &str)] = &[
    (
        CAP_BPF,
        "CAP_BPF",
        "loading the datapath's programs, reading and writing its pinned maps",
    ),
    (
        CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "netlink (links, routes, tc filters), attaching tc, tcx and cgroup programs, \
         SOCK_DESTROY of sockets left on a removed backend",
    ),
    (
        CAP_SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "setns into a pod's netns (to end its stale sockets), bpf(2) lookups of programs and \
         links by id (adopting what the plugin attached), mounting bpffs or cgroup2 if absent; \
         the kernel also takes it for CAP_PERFMON (the acceleration's CO-RE reads of sockets)",
    ),
];

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> io::Result<u64> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and two data words, as capget(2) wants for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(d[0].permitted) | (u64::from(d[1].permitted) << 32))
}

fn capset(keep: u64) -> io::Result<()> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |i: u32| Data {
        effective: (keep >> (32 * i)) as u32,
        permitted: (keep >> (32 * i)) as u32,
        inheritable: 0,
    };
    let d = [word(0), word(1)];
    // SAFETY: as capget; the kernel only reads `d`.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// What was kept and how many were dropped, for the start-up log.
#[derive(Debug)]
pub struct Dropped {
    pub kept: Vec<&'static str>,
    pub dropped: u32,
}

/// Drops every capability but [`KEPT`] (and `CAP_NET_BIND_SERVICE` when
/// `low_ports`: a port below 1024 is configured for the daemon to bind).
/// Call before any thread starts. A capability the daemon was not given
/// stays absent; it is not an error here (start-up says what fails).
pub fn drop_unneeded(low_ports: bool) -> io::Result<Dropped> {
    let had = capget()?;
    let mut want: u64 = KEPT.iter().map(|(c, _, _)| 1u64 << c).sum();
    if low_ports {
        want |= 1 << CAP_NET_BIND_SERVICE;
    }
    let keep = had & want;
    let mut dropped = 0;
    for cap in 0..=last_cap() {
        if keep & (1 << cap) != 0 {
            continue;
        }
        if had & (1 << cap) != 0 {
            dropped += 1;
        }
        // Needs CAP_SETPCAP, dropped below only after this loop; EPERM
        // (not given it) or EINVAL (past the kernel's last) leave the bound
        // as it was.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    capset(keep)?;
    let kept = KEPT
        .iter()
        .filter(|(c, _, _)| keep & (1 << c) != 0)
        .map(|(_, n, _)| *n)
        .chain((keep & (1 << CAP_NET_BIND_SERVICE) != 0).then_some("CAP_NET_BIND_SERVICE"))
        .collect();
    Ok(Dropped { kept, dropped })
}
