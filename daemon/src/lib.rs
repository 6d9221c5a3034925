//! The Sluice node daemon: loads, attaches and pins the BPF datapath, keeps
//! the endpoint map from pod registrations and endpoint records, serves the
//! API on a unix socket, and exposes metrics. `sluicectl` reads the same
//! config to find the daemon, or its pins when the daemon is down.

pub mod accel;
pub mod caps;
pub mod config;
pub mod datapath;
pub mod edge;
pub mod external;
pub mod healthcheck;
pub mod kernel;
pub mod maglev;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod nodes;
pub mod routing;
pub mod server;
pub mod services;
pub mod sockterm;
pub mod state;
pub mod views;

/// Lowers the calling thread's CPU priority (nice 10): housekeeping
/// (service passes, the map walks of `status`, ending stale sockets) then
/// yields the CPU to the threads that answer a pod's register, so no pod
/// waits on it on a busy node.
pub fn housekeeping_priority() {
    // SAFETY: gettid and setpriority on our own thread; no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
