//! Reading a network namespace's cookie. There is no way to ask for it by
//! path: a socket must be opened inside the netns and asked with
//! `SO_NETNS_COOKIE` (Linux 5.14). Entering a netns changes the calling
//! thread, so this happens on one dedicated OS thread, never on a tokio
//! worker, and the thread returns to the daemon's netns after each request.

use sluice_cni::netns::{Netns, NetnsError};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

/// `SO_NETNS_COOKIE` from `asm-generic/socket.h`.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot read the cookie of netns {path}: {source} (SO_NETNS_COOKIE needs Linux 5.14)")]
    Cookie { path: PathBuf, source: io::Error },
    #[error("the netns thread has stopped")]
    WorkerGone,
}

impl CookieError {
    /// The netns is no longer there (its pod is gone).
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            CookieError::Netns(NetnsError::NotFound { .. })
                | CookieError::Netns(NetnsError::NotNetns { .. })
        )
    }
}

/// The cookie of the calling thread's current netns.
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

type Job = (PathBuf, mpsc::Sender<Result<u64, CookieError>>);

/// Handle to the netns thread; cheap to share.
#[derive(Debug)]
pub struct CookieReader {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl CookieReader {
    pub fn spawn() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sluiced-netns".into())
            .spawn(move || {
                for (path, reply) in rx {
                    let _ = reply.send(cookie_of(&path));
                }
            })?;
        Ok(CookieReader { tx: Mutex::new(tx) })
    }

    /// Blocks until the netns thread answers; call from a blocking context.
    pub fn cookie(&self, path: &Path) -> Result<u64, CookieError> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((path.into(), reply))
            .map_err(|_| CookieError::WorkerGone)?;
        answer.recv().map_err(|_| CookieError::WorkerGone)?
    }
}

fn cookie_of(path: &Path) -> Result<u64, CookieError> {
    let ns = Netns::open(path)?;
    ns.run_in(current_cookie)?
        .map_err(|source| CookieError::Cookie {
            path: path.into(),
            source,
        })
}
