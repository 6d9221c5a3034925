//! Network namespace handles.
//!
//! The plugin is single-threaded, so it can enter a pod's netns on its one
//! thread; [`Netns::run_in`] always comes back, even if the closure panics.

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

/// `NS_GET_NSTYPE` from `linux/nsfs.h`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace ({why})")]
    NotNetns { path: PathBuf, why: String },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: io::Error },
}

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens and checks that `path` really is a network namespace, so a wrong
    /// path fails with a clear message instead of configuring the wrong netns.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                NetnsError::NotFound { path: path.into() }
            } else {
                NetnsError::Open {
                    path: path.into(),
                    source,
                }
            }
        })?;
        // SAFETY: ioctl on a valid fd with no argument.
        let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if t < 0 {
            let e = io::Error::last_os_error();
            return Err(NetnsError::NotNetns {
                path: path.into(),
                why: format!("not a namespace file: {e}"),
            });
        }
        if t != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns {
                path: path.into(),
                why: "a namespace of another type".into(),
            });
        }
        Ok(Self {
            file,
            path: path.into(),
        })
    }

    /// The calling thread's current netns.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The inode identifies a netns; two handles with the same inode (and
    /// device) are the same namespace.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// Runs `f` inside this netns on the calling thread, then returns to the
    /// netns the thread was in.
    pub fn run_in<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let original = Self::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
            path: self.path.clone(),
            source: io::Error::from(e),
        })?;
        struct Back(Netns);
        impl Drop for Back {
            fn drop(&mut self) {
                if let Err(e) = setns(self.0.file.as_fd(), CloneFlags::CLONE_NEWNET) {
                    // Carrying on in the wrong netns would configure the wrong
                    // node; stopping is the only safe answer.
                    eprintln!("sluice: cannot return to the node's netns: {e}");
                    std::process::abort();
                }
            }
        }
        let back = Back(original);
        let out = f();
        drop(back);
        Ok(out)
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
