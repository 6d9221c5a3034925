//! The daemon's API on its unix socket: one JSON request per line, one JSON
//! response per line, versioned by [`API_VERSION`].
//!
//! The client here is what the CNI plugin uses: every step (connect, write,
//! read) is bounded by one deadline, because a slow or dead daemon must never
//! stall a pod's ADD or DEL.

use crate::endpoint::EndpointRecord;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub const API_VERSION: u32 = 1;

/// Largest request line the daemon accepts.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Largest response line the client reads: a list of 10,000 services with
/// their backends is a few MiB.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A pod interface was added; the record is already on disk.
    Register {
        endpoint: Box<EndpointRecord>,
    },
    /// A pod interface was removed; its record is already gone.
    Unregister {
        container_id: String,
        ifname: String,
    },
    ListEndpoints,
    /// Programmed service frontends with their backends and counters, and
    /// the objects the service source rejected.
    ListServices,
    /// The service source's state alone (passes, rejections, warnings,
    /// map fill), without the frontends: cheap at any number of services.
    ServiceSource,
    /// Lets a service removal the source's guard held back go through.
    AllowServiceRemoval,
    Status,
    /// The same-node TCP acceleration: its state and counters; with
    /// `enabled`, first switches it on or off for the whole node.
    Accel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enabled: Option<bool>,
    },
    /// Node routing: the other nodes, how each is reached, what was
    /// rejected.
    Nodes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("daemon at {path} did not answer within {timeout:?}")]
    Timeout { path: String, timeout: Duration },
    #[error("talking to the daemon at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("daemon at {path} sent an answer that is not a response: {reason}")]
    BadResponse { path: String, reason: String },
    #[error("daemon at {path} refused the request: {message}")]
    Refused { path: String, message: String },
}

/// Connects and writes one request line, both before `timeout` runs out;
/// returns the stream (for the answer) and the bounded error mapper.
fn send(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<(UnixStream, Instant), ClientError> {
    let path = socket.display().to_string();
    let deadline = Instant::now() + timeout;
    let stream = connect_bounded(socket, deadline).map_err(|source| {
        if source.kind() == io::ErrorKind::TimedOut {
            ClientError::Timeout {
                path: path.clone(),
                timeout,
            }
        } else {
            ClientError::Connect {
                path: path.clone(),
                source,
            }
        }
    })?;
    let mut line = serde_json::to_vec(&RequestEnvelope {
        version: API_VERSION,
        request,
    })
    .expect("requests always serialize");
    line.push(b'\n');
    let io_err = bounded_err(&path, timeout);
    stream
        .set_write_timeout(Some(remaining(deadline).map_err(&io_err)?))
        .map_err(&io_err)?;
    (&stream).write_all(&line).map_err(&io_err)?;
    Ok((stream, deadline))
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(io::Error::from(io::ErrorKind::TimedOut))
}

/// Maps an I/O error of a bounded exchange: running out of time is a
/// timeout, anything else an I/O failure.
fn bounded_err(path: &str, timeout: Duration) -> impl Fn(io::Error) -> ClientError + '_ {
    move |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout {
                path: path.to_string(),
                timeout,
            }
        } else {
            ClientError::Io {
                path: path.to_string(),
                source,
            }
        }
    }
}

/// Sends one request without waiting for its answer: the plugin tells the
/// daemon of an ADD or DEL it has already carried out in full, so nothing
/// on the pod's path waits on the daemon's work. Connect and write are
/// bounded by `timeout`.
pub fn notify(socket: &Path, request: Request, timeout: Duration) -> Result<(), ClientError> {
    send(socket, request, timeout).map(drop)
}

/// Sends one request and waits for its response, all within `timeout`.
pub fn call(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<ResponseEnvelope, ClientError> {
    let path = socket.display().to_string();
    let (stream, deadline) = send(socket, request, timeout)?;
    let io_err = bounded_err(&path, timeout);
    stream
        .set_read_timeout(Some(remaining(deadline).map_err(&io_err)?))
        .map_err(&io_err)?;
    let mut reader = BufReader::new((&stream).take_bounded());
    let mut resp = Vec::new();
    reader.read_until(b'\n', &mut resp).map_err(&io_err)?;
    let resp: ResponseEnvelope =
        serde_json::from_slice(&resp).map_err(|e| ClientError::BadResponse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if !resp.ok {
        return Err(ClientError::Refused {
            path: path.clone(),
            message: resp.error.unwrap_or_default(),
        });
    }
    Ok(resp)
}

trait TakeBounded: io::Read + Sized {
    fn take_bounded(self) -> io::Take<Self> {
        self.take(MAX_RESPONSE_BYTES as u64)
    }
}
impl<R: io::Read> TakeBounded for R {}

/// A non-blocking connect, so a daemon whose backlog is full fails at once
/// instead of blocking ADD.
fn connect_bounded(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path longer than 107 bytes",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: addr is a valid sockaddr_un of the given length.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The listener's backlog is full: retry briefly until the deadline.
            Some(libc::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(libc::EAGAIN) => return Err(io::Error::from(io::ErrorKind::TimedOut)),
            _ => return Err(err),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn requests_serialize_with_version_and_op() {
        let v = serde_json::to_value(RequestEnvelope {
            version: API_VERSION,
            request: Request::Unregister {
                container_id: "c".into(),
                ifname: "eth0".into(),
            },
        })
        .unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["op"], "unregister");
        assert_eq!(v["container_id"], "c");
    }

    #[test]
    fn missing_daemon_fails_fast() {
        let d = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let e = call(
            &d.path().join("none.sock"),
            Request::Status,
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn silent_daemon_times_out_within_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.sock");
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let (_s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
        });
        let t = Instant::now();
        let e = call(&p, Request::Status, Duration::from_millis(150)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_millis(400));
        h.join().unwrap();
    }

    #[test]
    fn a_response_is_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.sock");
        let l = UnixListener::bind(&p).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            let req: RequestEnvelope = serde_json::from_str(&line).unwrap();
            assert_eq!(req.request, Request::Status);
            (&s).write_all(b"{\"version\":1,\"ok\":true,\"data\":{\"x\":1}}\n")
                .unwrap();
        });
        let r = call(&p, Request::Status, Duration::from_secs(2)).unwrap();
        assert_eq!(r.data["x"], 1);
        h.join().unwrap();
    }
}
