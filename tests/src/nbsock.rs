//! Non-blocking TCP sockets used the way event-loop runtimes (Go, tokio,
//! Netty, nginx) use them: made with SOCK_NONBLOCK, and an operation that
//! would block waits in poll(2) and tries again. The same-node TCP
//! acceleration applies to such sockets only (docs/sockmap.md); tests and
//! benchmarks drive it through these.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;

/// A TCP socket in non-blocking mode, read and written as an event-loop
/// runtime (Go, tokio, Netty, nginx) does: an operation that would block
/// waits in poll(2) and tries again. The acceleration applies only to
/// non-blocking sockets (docs/sockmap.md).
#[derive(Debug)]
pub struct Nb(pub TcpStream);

pub fn wait_fd(fd: i32, events: i16) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll on one fd the caller owns.
    let n = unsafe { libc::poll(&mut p, 1, 30_000) };
    assert_eq!(n, 1, "poll: nothing in 30 s");
}

/// Runs `op` on `fd` until it does not report EAGAIN, waiting in poll(2)
/// for `events` in between: an event loop's read or write.
fn retry<T>(
    fd: i32,
    events: i16,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait_fd(fd, events),
            r => return r,
        }
    }
}

/// Read and Write for a non-blocking socket type wrapping a stream in
/// `.0`: an operation that would block waits in poll(2) and tries again.
macro_rules! event_loop_io {
    ($t:ty) => {
        impl Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                retry(self.0.as_raw_fd(), libc::POLLIN, || self.0.read(buf))
            }
        }

        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                retry(self.0.as_raw_fd(), libc::POLLOUT, || self.0.write(buf))
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}

event_loop_io!(Nb);

impl Nb {
    pub fn try_clone(&self) -> Nb {
        Nb(self.0.try_clone().unwrap())
    }

    pub fn shutdown(&self, how: Shutdown) {
        self.0.shutdown(how).unwrap();
    }

    pub fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }
}

/// A Unix-domain stream socket driven like [`Nb`]: non-blocking, an
/// operation that would block waits in poll(2). The benchmark's ladder
/// compares TCP, a Unix socketpair and the sockmap shortcut driven alike.
#[derive(Debug)]
pub struct NbUnix(pub UnixStream);

impl NbUnix {
    /// A connected pair, both ends non-blocking.
    pub fn pair() -> (NbUnix, NbUnix) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (NbUnix(a), NbUnix(b))
    }
}

event_loop_io!(NbUnix);

/// connect(2) on a socket made non-blocking first (SOCK_NONBLOCK), as
/// event-loop runtimes do.
pub fn connect_nb(to: SocketAddr) -> Nb {
    let fam = if to.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: a new socket; its fd is owned by the TcpStream below.
    let fd = unsafe {
        libc::socket(
            fam,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(fd >= 0);
    // SAFETY: fd is ours.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let (sa, len) = sockaddr(to);
    // SAFETY: connect with a sockaddr of `len` bytes.
    let rc = unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINPROGRESS),
            "connect {to}: {e}"
        );
        wait_fd(fd, libc::POLLOUT);
        assert!(s.take_error().unwrap().is_none(), "connect {to}");
    }
    Nb(s)
}

pub fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            (ss, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (ss, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// A listener on `addr` in non-blocking mode (call in the pod's netns).
pub fn listen_nb(addr: SocketAddr) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// accept4(2) with SOCK_NONBLOCK, as Go and tokio accept, waiting for a
/// connection in poll(2).
pub fn accept_nb(l: &TcpListener) -> Nb {
    let fd = loop {
        // SAFETY: accept4 on our listener; the new fd is owned below.
        let fd = unsafe {
            libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock {
            wait_fd(l.as_raw_fd(), libc::POLLIN);
            continue;
        }
        break fd;
    };
    assert!(fd >= 0, "accept4: {}", std::io::Error::last_os_error());
    // SAFETY: fd is ours.
    Nb(unsafe { TcpStream::from_raw_fd(fd) })
}

impl AsRawFd for Nb {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
