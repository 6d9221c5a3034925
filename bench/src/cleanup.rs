//! Removal of everything the bench made when it cannot unwind: the release
//! profile aborts on panic (so no guard drops), and SIGINT/SIGTERM/SIGHUP
//! would end the process before them too.
//!
//! The bench tracks each netns and directory it creates; the panic hook and
//! a signal thread delete whatever is still tracked. On the normal path the
//! harness guards delete them and the [`Track`] guard forgets them.

use nix::sys::signal::{SigSet, Signal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug)]
struct Tracked {
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
    pids: Vec<u32>,
}

/// Set once a signal started the removal: a panic the main thread hits
/// after that (its netns vanished) is only a consequence, not news.
static STOPPING: AtomicBool = AtomicBool::new(false);

static TRACKED: Mutex<Tracked> = Mutex::new(Tracked {
    netns: Vec::new(),
    dirs: Vec::new(),
    pids: Vec::new(),
});

fn tracked() -> MutexGuard<'static, Tracked> {
    TRACKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the panic hook and the signal thread. Call before any other
/// thread starts, so they all inherit the blocked signal mask.
pub fn install() -> Result<(), String> {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !STOPPING.load(Ordering::SeqCst) {
            default(info);
        }
        remove_all();
    }));
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    std::thread::Builder::new()
        .name("cleanup".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                STOPPING.store(true, Ordering::SeqCst);
                eprintln!("bench: {sig}, removing what it created");
                remove_all();
                std::process::exit(128 + sig as i32);
            }
        })
        .map_err(|e| format!("starting the signal thread: {e}"))?;
    Ok(())
}

/// Deletes every tracked netns (which takes the veths in it along) and
/// directory. Keeps the lock until the process ends, so nothing new is
/// tracked behind its back.
fn remove_all() {
    let mut t = tracked();
    for pid in t.pids.drain(..) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    for name in t.netns.drain(..) {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for dir in t.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Keeps a netns, directories and a process on the removal list until
/// dropped.
#[derive(Debug)]
pub struct Track {
    netns: Option<String>,
    dirs: Vec<PathBuf>,
    pid: Option<u32>,
}

impl Track {
    pub fn new(netns: Option<&str>, dirs: &[&Path]) -> Self {
        let track = Track {
            netns: netns.map(str::to_string),
            dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            pid: None,
        };
        let mut t = tracked();
        t.netns.extend(track.netns.iter().cloned());
        t.dirs.extend(track.dirs.iter().cloned());
        track
    }
}

impl Track {
    /// A process (a daemon the bench started) to kill if the bench dies.
    #[allow(dead_code)] // cni-bench starts no process
    pub fn process(pid: u32) -> Self {
        tracked().pids.push(pid);
        Track {
            netns: None,
            dirs: Vec::new(),
            pid: Some(pid),
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let mut t = tracked();
        if let Some(p) = self.pid {
            t.pids.retain(|x| *x != p);
        }
        if let Some(n) = &self.netns {
            t.netns.retain(|x| x != n);
        }
        t.dirs.retain(|d| !self.dirs.contains(d));
    }
}

/// Tracks what the test harness reports it made ([`sluice_tests::Event`]):
/// netns of pods a benchmark creates by the hundred, daemons restarted
/// from another thread. Register with `sluice_tests::set_observer`.
#[allow(dead_code)] // only the soak creates pods and daemons that way
pub fn observe(e: sluice_tests::Event<'_>) {
    use sluice_tests::Event;
    let mut t = tracked();
    match e {
        Event::NetnsAdded(n) => t.netns.push(n.to_string()),
        Event::NetnsDeleted(n) => t.netns.retain(|x| x != n),
        Event::ProcessStarted(p) => t.pids.push(p),
        Event::ProcessEnded(p) => t.pids.retain(|x| *x != p),
    }
}
