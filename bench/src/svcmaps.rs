//! What the benchmarks read of the pinned service maps (is a backend in a
//! frontend's table yet?), and kube-proxy's iptables layout for the same
//! services, the baseline they are compared with.

use aya::maps::{HashMap, MapData};
use sluice_dataplane::load::open_pinned;
use sluice_dataplane::maps::{self, Backend, LbSlotKey, SvcKey, SvcValue};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

pub struct Maps {
    pub svc: HashMap<MapData, SvcKey, SvcValue>,
    backends: HashMap<MapData, u32, Backend>,
    tables: std::os::fd::OwnedFd,
    slots: HashMap<MapData, LbSlotKey, u32>,
}

impl Maps {
    /// The maps a daemon pinned under `pin_path`.
    pub fn open(pin_path: &Path) -> Self {
        let dir = pin_path.join("maps");
        let open = |m: &maps::MapSpec| open_pinned(&dir, m).unwrap_or_else(|e| panic!("{e}"));
        Maps {
            svc: HashMap::try_from(open(&maps::SVC)).unwrap(),
            backends: HashMap::try_from(open(&maps::BACKENDS)).unwrap(),
            tables: sluice_dataplane::sys::obj_get(&dir.join(maps::LB_TABLES.name)).unwrap(),
            slots: HashMap::try_from(open(&maps::LB_SLOTS)).unwrap(),
        }
    }

    /// How many programmed frontends select through a Maglev table.
    #[allow(dead_code)]
    pub fn maglev_frontends(&self) -> usize {
        self.svc
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.flags & maps::SVC_F_MAGLEV != 0)
            .count()
    }

    /// Whether `backend` is in the table of TCP frontend `frontend`.
    pub fn in_table(&self, frontend: SocketAddr, backend: SocketAddr) -> bool {
        use std::os::fd::AsFd;
        let k = SvcKey::new(frontend, 6);
        let Ok(v) = self.svc.get(&k, 0) else {
            return false;
        };
        let ids: Vec<u32> = if v.flags & maps::SVC_F_MAGLEV != 0 {
            sluice_dataplane::sys::lb_table_ids(self.tables.as_fd(), v.svc_id)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            (0..v.count)
                .filter_map(|slot| {
                    let key = LbSlotKey {
                        svc_id: v.svc_id,
                        gen: v.gen,
                        slot,
                    };
                    self.slots.get(&key, 0).ok()
                })
                .collect()
        };
        ids.iter()
            .any(|id| self.backends.get(id, 0).ok().and_then(|b| b.socket_addr()) == Some(backend))
    }
}

/// kube-proxy's iptables layout (KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-*
/// with random-probability rules) for `services` (cluster IP, endpoints),
/// TCP `port` → `backend_port`, as one `iptables-restore` file. `client`:
/// only its connections enter KUBE-SERVICES (so other samples do not pay
/// for the chains); `None`: no PREROUTING jump.
pub fn kube_proxy_rules(
    services: &[(Ipv4Addr, Vec<Ipv4Addr>)],
    port: u16,
    backend_port: u16,
    client: Option<Ipv4Addr>,
) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    for (i, (ip, eps)) in services.iter().enumerate() {
        let svc = format!("KUBE-SVC-{i:012X}");
        chains.push_str(&format!(":{svc} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"bench/svc-{i}:http cluster IP\" -m tcp --dport {port} -j {svc}\n"
        ));
        for (e, ep) in eps.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:08X}{e:04X}");
            chains.push_str(&format!(":{sep} - [0:0]\n"));
            let left = eps.len() - e;
            if left > 1 {
                rules.push_str(&format!(
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http\" -m statistic --mode random --probability {:.10} -j {sep}\n",
                    1.0 / left as f64
                ));
            } else {
                rules.push_str(&format!(
                    "-A {svc} -m comment --comment \"bench/svc-{i}:http\" -j {sep}\n"
                ));
            }
            rules.push_str(&format!(
                "-A {sep} -p tcp -m comment --comment \"bench/svc-{i}:http\" -m tcp -j DNAT --to-destination {ep}:{backend_port}\n"
            ));
        }
    }
    if let Some(client) = client {
        rules.push_str(&format!(
            "-A PREROUTING -s {client}/32 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
    }
    format!("{chains}{rules}COMMIT\n")
}
