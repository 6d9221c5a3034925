//! Health-check node ports, as kube-proxy serves them: for each service of
//! type LoadBalancer with `externalTrafficPolicy: Local`, an HTTP server on
//! its `healthCheckNodePort` that answers 200 while this node has a backend
//! of the service taking new connections and 503 when it has none, so a
//! cloud load balancer sends only to nodes that will not drop the traffic.
//! The body is kube-proxy's: the service, `localEndpoints` and
//! `serviceProxyHealthy`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// port → (service `namespace/name`, local backends taking connections).
pub type Checks = BTreeMap<u16, (String, usize)>;

#[derive(Debug, Default)]
pub struct HealthChecks {
    want: Mutex<Checks>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HealthChecks {
    /// Starts the server thread (in the daemon's netns: the node's).
    pub fn start() -> std::io::Result<Arc<Self>> {
        let h = Arc::new(HealthChecks::default());
        let h2 = h.clone();
        std::thread::Builder::new()
            .name("sluiced-healthz".into())
            .spawn(move || h2.run())?;
        Ok(h)
    }

    /// What to serve now.
    pub fn set(&self, checks: Checks) {
        *lock(&self.want) = checks;
    }

    fn run(&self) {
        let mut listeners: BTreeMap<u16, TcpListener> = BTreeMap::new();
        let mut failed: BTreeMap<u16, String> = BTreeMap::new();
        loop {
            let want = lock(&self.want).clone();
            listeners.retain(|p, _| {
                let keep = want.contains_key(p);
                if !keep {
                    info!(port = p, "health-check node port closed");
                }
                keep
            });
            failed.retain(|p, _| want.contains_key(p));
            for (port, (svc, _)) in &want {
                if listeners.contains_key(port) {
                    continue;
                }
                match bind(*port) {
                    Ok(l) => {
                        info!(port, service = %svc, "health-check node port open");
                        failed.remove(port);
                        listeners.insert(*port, l);
                    }
                    Err(e) => {
                        let why = e.to_string();
                        if failed.get(port) != Some(&why) {
                            warn!(
                                port,
                                service = %svc,
                                "cannot open the health-check node port: {why}; retried every second"
                            );
                            failed.insert(*port, why);
                        }
                    }
                }
            }
            let mut fds: Vec<nix::poll::PollFd<'_>> = listeners
                .values()
                .map(|l| nix::poll::PollFd::new(l.as_fd(), nix::poll::PollFlags::POLLIN))
                .collect();
            let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
            if !matches!(ready, Ok(n) if n > 0) {
                continue;
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| {
                    f.revents()
                        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
                })
                .collect();
            drop(fds);
            for ((port, l), r) in listeners.iter().zip(ready) {
                if !r {
                    continue;
                }
                while let Ok((s, _)) = l.accept() {
                    let (svc, n) = want.get(port).cloned().unwrap_or_default();
                    // Each on its own thread: a slow client never makes
                    // another load balancer's probe wait.
                    let _ = std::thread::Builder::new()
                        .name("sluiced-healthz-conn".into())
                        .spawn(move || answer(s, &svc, n));
                }
            }
        }
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// One HTTP exchange: whatever was asked, the state of the service here.
fn answer(mut s: TcpStream, svc: &str, local: usize) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf);
    let (ns, name) = svc.split_once('/').unwrap_or(("", svc));
    let body = serde_json::json!({
        "service": { "namespace": ns, "name": name },
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if local > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
