//! The pod edge with the real plugin and daemon and real frames from pods:
//! protected the instant ADD returns whatever the daemon's state, default
//! deny on the packet's real protocol, kernel backstops, repair of a check
//! that was removed or overtaken, upgrade of an older program in both
//! attach modes, isolation where the daemon never ran, and chained
//! reference plugins (portmap, bandwidth).

use serde_json::Value;
use sluice_tests::daemon::{eventually, pinned_edge_stats, Daemon};
use sluice_tests::frames::{self, in_netns, Mac, PacketSocket};
use sluice_tests::{require_root, spawn_cni, unique, Cni, Node, Ns, Pod};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::time::Duration;

fn mac(s: &str) -> Mac {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// What ADD told the runtime: host veth name and MAC, pod MAC, addresses
/// and gateways by family.
#[derive(Debug, Clone)]
struct Added {
    host_if: String,
    host_mac: Mac,
    pod_mac: Mac,
    addrs: Vec<IpAddr>,
    gateways: Vec<IpAddr>,
}

impl Added {
    fn of(result: &Value) -> Self {
        let ifs = result["interfaces"].as_array().unwrap();
        let ips = result["ips"].as_array().unwrap();
        let ip = |i: &Value, k: &str| -> IpAddr {
            i[k].as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        Added {
            host_if: ifs[0]["name"].as_str().unwrap().into(),
            host_mac: mac(ifs[0]["mac"].as_str().unwrap()),
            pod_mac: mac(ifs[1]["mac"].as_str().unwrap()),
            addrs: ips.iter().map(|i| ip(i, "address")).collect(),
            gateways: ips.iter().map(|i| ip(i, "gateway")).collect(),
        }
    }

    fn v4(&self) -> (Ipv4Addr, Ipv4Addr) {
        match (self.addrs[0], self.gateways[0]) {
            (IpAddr::V4(a), IpAddr::V4(g)) => (a, g),
            _ => panic!("no IPv4 first"),
        }
    }

    fn v6(&self) -> (Ipv6Addr, Ipv6Addr) {
        match (self.addrs[1], self.gateways[1]) {
            (IpAddr::V6(a), IpAddr::V6(g)) => (a, g),
            _ => panic!("no IPv6 second"),
        }
    }

    /// A UDP datagram from `src` to the node (this pod's gateway of the
    /// same family) on `port`.
    fn udp_from(&self, src: IpAddr, port: u16, payload: &str) -> Vec<u8> {
        let gw = match src {
            IpAddr::V4(_) => self.gateways[0],
            IpAddr::V6(_) => self.gateways[1],
        };
        frames::udp_any(
            self.host_mac,
            self.pod_mac,
            src,
            gw,
            port,
            payload.as_bytes(),
        )
    }
}

fn ifindex_in(ns: &Ns, ifname: &str) -> u32 {
    let name = ifname.to_string();
    in_netns(&ns.path(), move || frames::ifindex_of(&name))
}

/// Sends `frames` from the pod's eth0.
fn send_from(pod: &Ns, frames: Vec<Vec<u8>>) {
    in_netns(&pod.path(), move || {
        let s = PacketSocket::open("eth0");
        for f in &frames {
            s.send(f);
        }
    });
}

/// A UDP sink in the node's netns for `secs`, running while the test goes
/// on; joining it gives what arrived.
fn sink(node: &Ns, port: u16, window: Duration) -> std::thread::JoinHandle<Vec<String>> {
    let path = node.path();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        in_netns(&path, move || {
            let s = frames::udp_sink(port);
            tx.send(()).unwrap();
            frames::drain(&s, window)
                .into_iter()
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .collect()
        })
    });
    rx.recv().unwrap();
    h
}

const DUAL_WIDE: &str = r#"[[{"subnet":"10.215.0.0/16"}],[{"subnet":"fd00:215::/64"}]]"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DaemonState {
    Up,
    Down,
    Hung,
}

/// 100 parallel ADDs; each pod sends, the moment its ADD returns, one
/// spoofed and one genuine datagram per family to the node. Before the
/// plugin attached the check itself, most spoofs got through (the daemon
/// attached it some milliseconds after ADD returned, or never while it
/// was down).
fn spoofs_the_instant_add_returns(state: DaemonState) {
    const PODS: usize = 100;
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let pid = d.pid().unwrap() as i32;
    match state {
        DaemonState::Up => {}
        DaemonState::Down => d.kill9(),
        // SAFETY: signalling our own child.
        DaemonState::Hung => unsafe {
            libc::kill(pid, libc::SIGSTOP);
        },
    }
    let conf = node
        .conf("1.0.0", DUAL_WIDE)
        .replace("\"daemonTimeoutMs\":2000", "\"daemonTimeoutMs\":200");
    let port = fastrand::u16(20000..60000);
    let arrived = sink(&node.ns, port, Duration::from_secs(20));
    let pods: Vec<Ns> = (0..PODS).map(|_| Ns::new("p")).collect();
    let spoof4: IpAddr = "10.215.255.250".parse().unwrap();
    let spoof6: IpAddr = "fd00:215::fffa".parse().unwrap();
    let started = std::time::Instant::now();
    let sluice = sluice_tests::bin("sluice");
    let results: Vec<(Cni, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf, sluice) = (&node, &conf, &sluice);
                s.spawn(move || {
                    let child = spawn_cni(
                        &node.ns,
                        sluice,
                        "ADD",
                        &format!("edge{i}"),
                        Some(&p.path()),
                        "eth0",
                        conf,
                        &[],
                    );
                    let out = Cni::wait(child);
                    let returned = started.elapsed();
                    if out.code == Some(0) {
                        let a = Added::of(&out.json());
                        let frames = vec![
                            a.udp_from(spoof4, port, &format!("spoof4-{i}")),
                            a.udp_from(spoof6, port, &format!("spoof6-{i}")),
                            a.udp_from(a.addrs[0], port, &format!("own4-{i}")),
                            a.udp_from(a.addrs[1], port, &format!("own6-{i}")),
                        ];
                        send_from(p, frames);
                    }
                    (out, returned)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, _) in &results {
        assert_eq!(r.code, Some(0), "ADD failed: {} {}", r.stdout, r.stderr);
    }
    let warned: Vec<&str> = results
        .iter()
        .map(|(r, _)| r.stderr.trim())
        .filter(|e| !e.is_empty())
        .collect();
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    std::thread::sleep(Duration::from_millis(300));
    // The sink drains for its whole window; nothing more comes.
    let got = arrived.join().unwrap();
    let spoofs: Vec<&String> = got.iter().filter(|p| p.starts_with("spoof")).collect();
    let own = got.iter().filter(|p| p.starts_with("own")).count();
    assert_eq!(
        spoofs.len(),
        0,
        "daemon {state:?}: spoofed datagrams delivered: {spoofs:?}"
    );
    let stats: Vec<_> = node
        .records()
        .iter()
        .map(|path| {
            let r: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            assert_eq!(r["edge"]["program"], "check", "{r}");
            pinned_edge_stats(&node.pin_path, r["host_ifindex"].as_u64().unwrap() as u32)
        })
        .collect();
    let mut dropped = std::collections::BTreeMap::new();
    for (reason, n) in stats.iter().flat_map(|s| s.by_reason()) {
        *dropped.entry(reason).or_insert(0u64) += n;
    }
    let missing: Vec<String> = (0..PODS)
        .flat_map(|i| [format!("own4-{i}"), format!("own6-{i}")])
        .filter(|p| !got.contains(p))
        .collect();
    assert_eq!(
        own,
        2 * PODS,
        "daemon {state:?}: every genuine datagram arrives; missing {missing:?}; \
         the checks dropped {dropped:?}; the node's UDP counters: {}; \
         host veths that dropped on receive: {}; the last ADD returned after {slowest:?}; \
         what ADDs said on stderr: {warned:?}",
        shell_line(&node.ns, DROP_COUNTERS),
        shell_line(&node.ns, RX_DROPPED),
    );
    let stats_spoofed: u64 = stats.iter().map(|s| s.spoofed()).sum();
    assert_eq!(stats_spoofed, 2 * PODS as u64, "every spoof counted");
    if state == DaemonState::Hung {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let dels: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            spawn_cni(
                &node.ns,
                &sluice,
                "DEL",
                &format!("edge{i}"),
                Some(&p.path()),
                "eth0",
                &conf,
                &[],
            )
        })
        .collect();
    for c in dels {
        Cni::wait(c).ok();
    }
}

#[test]
fn spoofs_sent_the_instant_add_returns_are_dropped_with_the_daemon_up() {
    if !require_root() {
        return;
    }
    spoofs_the_instant_add_returns(DaemonState::Up);
}

#[test]
fn spoofs_sent_the_instant_add_returns_are_dropped_with_the_daemon_down() {
    if !require_root() {
        return;
    }
    spoofs_the_instant_add_returns(DaemonState::Down);
}

#[test]
fn spoofs_sent_the_instant_add_returns_are_dropped_with_the_daemon_hung() {
    if !require_root() {
        return;
    }
    spoofs_the_instant_add_returns(DaemonState::Hung);
}

/// The drop counters of a pod's edge, by reason name.
fn drops(node: &Node, host_if: &str) -> std::collections::BTreeMap<&'static str, u64> {
    let ifindex = ifindex_in(&node.ns, host_if);
    let s = pinned_edge_stats(&node.pin_path, ifindex);
    s.by_reason().into_iter().collect()
}

/// Where in the node's stack a missing datagram could have died: its UDP
/// error counters (IPv4 and IPv6), dropped by the receiving socket; its
/// IPv6 input counters, before that, in the routing (`Ip6InNoRoutes` gave
/// away a gateway not yet routed locally when ADD returned).
const DROP_COUNTERS: &str = "grep '^Udp:' /proc/net/snmp; grep '^Udp6' /proc/net/snmp6; \
                            grep -E '^Ip6(InReceives|InDelivers|InDiscards|InNoRoutes|InAddrErrors|InHdrErrors)' /proc/net/snmp6";

/// The node's devices whose receive-drop counter is not zero (`-H`: each
/// line `file:count`), and the kernel's per-CPU backlog drops
/// (softnet_stat's second column): whether a missing frame was lost before
/// the stack.
const RX_DROPPED: &str = "grep -H -v '^0$' /sys/class/net/*/statistics/rx_dropped; \
                          cut -d' ' -f2 /proc/net/softnet_stat";

/// What `script` prints in `ns`, on one line: for a failure message.
fn shell_line(ns: &Ns, script: &str) -> String {
    let out = ns.exec(&["sh", "-c", script]);
    String::from_utf8_lossy(&out.stdout).replace('\n', "; ")
}

fn sysctl(ns: &Ns, path: &str, value: &str) {
    let out = ns.exec(&["sh", "-c", &format!("echo {value} > /proc/sys/{path}")]);
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_sysctl(ns: &Ns, path: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/{path}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Each frame a pod has no business sending, sent for real from its eth0
/// (the kernel untags VLAN frames only after tc, which BPF_PROG_TEST_RUN
/// cannot show), is dropped and counted by its reason; what a pod needs
/// (its own traffic, ARP and ND with its own or link-local source) passes.
#[test]
fn frames_a_pod_may_not_send_are_dropped_and_counted() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.216.0.0/24"}],[{"subnet":"fd00:216::/64"}]]"#,
    );
    let p = Pod::add(&node, &conf);
    d.wait_edge(&p.cid);
    let a = Added::of(&p.result);
    let (own4, gw4) = a.v4();
    let (own6, gw6) = a.v6();
    let spoof4: Ipv4Addr = "10.216.0.250".parse().unwrap();
    let spoof6: Ipv6Addr = "fd00:216::fa".parse().unwrap();
    let ll: Ipv6Addr = "fe80::5d:1".parse().unwrap();
    let port = fastrand::u16(20000..60000);

    // UDP to the node: only the untagged datagram from the pod's own
    // address arrives; VLAN tags (one VID 0 tag around the pod's own
    // address, two around a spoofed one, which the kernel strips after tc
    // and would route) never do.
    let arrived = sink(&node.ns, port, Duration::from_secs(2));
    let plain = a.udp_from(IpAddr::V4(own4), port, "own");
    let spoofed = a.udp_from(IpAddr::V4(spoof4), port, "spoofed");
    send_from(
        &p.ns,
        vec![
            plain.clone(),
            spoofed.clone(),
            frames::tagged(&plain, 0x8100, 0),
            frames::tagged(&frames::tagged(&spoofed, 0x8100, 0), 0x8100, 0),
            frames::udp_any(
                a.host_mac,
                a.pod_mac,
                IpAddr::V6(ll),
                IpAddr::V6(gw6),
                port,
                b"link-local",
            ),
            frames::other_protocol(a.host_mac, a.pod_mac, 0x88b5),
        ],
    );
    let got = arrived.join().unwrap();
    assert_eq!(
        got,
        vec!["own".to_string()],
        "only the pod's own, untagged datagram"
    );

    // ARP: the node answers for the gateway when the pod asks from its own
    // address, and hears nothing when it claims another.
    let (host_mac, pod_mac) = (a.host_mac, a.pod_mac);
    let _ = host_mac;
    let answered = |sender: Ipv4Addr| {
        in_netns(&p.ns.path(), move || {
            let s = PacketSocket::open("eth0");
            s.send(&frames::arp_request(pod_mac, sender, gw4));
            s.recv_matching(Duration::from_millis(700), |f| {
                frames::is_arp_reply_for(f, gw4)
            })
        })
    };
    assert!(answered(own4), "ARP from the pod's own address is answered");
    assert!(
        !answered(spoof4),
        "ARP claiming another address gets no answer"
    );

    // Neighbour discovery: answered from link-local and from the pod's own
    // address, not from a spoofed one.
    let solicit = |src: Ipv6Addr| {
        in_netns(&p.ns.path(), move || {
            let s = PacketSocket::open("eth0");
            s.send(&frames::neighbour_solicitation(pod_mac, src, gw6));
            s.recv_matching(Duration::from_millis(700), |f| {
                frames::is_neighbour_advert_for(f, gw6)
            })
        })
    };
    assert!(solicit(ll), "NS from link-local is answered");
    assert!(solicit(own6), "NS from the pod's own address is answered");
    assert!(!solicit(spoof6), "NS from a spoofed address is not");

    // Router messages: none taken, even where the node would take them.
    sysctl(
        &node.ns,
        &format!("net/ipv6/conf/{}/accept_ra", a.host_if),
        "2",
    );
    send_from(
        &p.ns,
        vec![
            frames::router_advertisement(pod_mac, ll, "2001:db8:5c::".parse().unwrap()),
            frames::redirect(
                a.host_mac,
                pod_mac,
                ll,
                gw6,
                ll,
                "2001:db8:5d::1".parse().unwrap(),
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let routes = node.ns.ip(&["-6", "route", "show", "dev", &a.host_if]);
    assert!(
        !routes.contains("default"),
        "the pod's RA installed a route: {routes}"
    );

    let want: std::collections::BTreeMap<&str, u64> = [
        ("spoofed_source", 2),
        ("vlan", 2),
        ("protocol", 1),
        ("arp", 1),
        ("router", 2),
        ("link_local", 1),
    ]
    .into();
    let got = drops(&node, &a.host_if);
    assert_eq!(got, want, "drops by reason");
    // The daemon shows the same.
    assert!(eventually(3, || {
        let e = d.endpoints()[&p.cid].clone();
        e["edge"]["drops"].as_array().map(|v| v.len()) == Some(want.len())
    }));
    let table = String::from_utf8(d.ctl(&["endpoints"]).stdout).unwrap();
    assert!(
        table.contains("clsact check") && table.contains("vlan 2"),
        "{table}"
    );
}

/// A pod's router advertisement changes no route on the node: the edge
/// program drops it, and the kernel backstop (`accept_ra=0` on the host
/// veth, set by ADD) refuses it even without the program. With neither,
/// the same RA does install a route: the test can fail.
#[test]
fn a_pods_router_advertisement_changes_no_route_on_the_node() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.217.0.0/24"}],[{"subnet":"fd00:217::/64"}]]"#,
    );
    let p = Pod::add(&node, &conf);
    let a = Added::of(&p.result);
    let ll: Ipv6Addr = "fe80::5d:2".parse().unwrap();
    let ra = frames::router_advertisement(a.pod_mac, ll, "2001:db8:5e::".parse().unwrap());
    let accept_ra = format!("net/ipv6/conf/{}/accept_ra", a.host_if);
    let learned = || {
        send_from(&p.ns, vec![ra.clone()]);
        std::thread::sleep(Duration::from_millis(300));
        node.ns
            .ip(&["-6", "route", "show", "dev", &a.host_if])
            .contains("default")
    };
    assert_eq!(
        read_sysctl(&node.ns, &accept_ra),
        "0",
        "ADD set the backstop"
    );
    assert_eq!(
        read_sysctl(&node.ns, &format!("net/ipv4/conf/{}/rp_filter", a.host_if)),
        "1"
    );
    // Program and backstop.
    assert!(!learned());
    // The program alone (backstop lifted).
    sysctl(&node.ns, &accept_ra, "2");
    assert!(!learned());
    // The backstop alone (program removed).
    sysctl(&node.ns, &accept_ra, "0");
    node.ns
        .exec(&["tc", "qdisc", "del", "dev", &a.host_if, "clsact"]);
    assert!(!learned());
    // Neither: the RA takes effect, so the two checks above are real.
    sysctl(&node.ns, &accept_ra, "2");
    assert!(
        learned(),
        "without program and backstop the RA installs a route"
    );
}

/// Where sluiced has never run, nothing is pinned: the pod is isolated
/// (sends nothing) and its record says so; the daemon, once started,
/// replaces the isolating program with the check.
#[test]
fn a_pod_added_where_the_daemon_never_ran_is_isolated_until_it_starts() {
    if !require_root() {
        return;
    }
    let node = Node::bare();
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.218.0.0/24","gateway":"10.218.0.1"}]]"#,
    );
    let p = Pod::add(&node, &conf);
    let rec: Value = serde_json::from_slice(&std::fs::read(&node.records()[0]).unwrap()).unwrap();
    assert_eq!(rec["edge"]["program"], "isolate", "{rec}");
    assert!(!p.ns.ping("10.218.0.1"), "an isolated pod sends nothing");
    let d = Daemon::start(&node);
    let ep = d.wait_edge(&p.cid);
    assert_eq!(ep["edge"]["program"], "check");
    assert_eq!(ep["edge"]["by"], "daemon");
    assert_eq!(
        ep["edge"]["repairs"], 0,
        "an expected upgrade, not a repair"
    );
    assert!(
        p.ns.ping("10.218.0.1"),
        "the check passes the pod's own traffic"
    );
    p.ns.ip(&["addr", "add", "10.218.0.250/32", "dev", "eth0"]);
    assert!(!p
        .ns
        .exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "10.218.0.250",
            "10.218.0.1"
        ])
        .status
        .success());
}

/// Whether a spoofed datagram from `a`'s pod reaches the node now.
fn spoof_reaches(node: &Node, p: &Ns, a: &Added, spoof: IpAddr) -> bool {
    let port = fastrand::u16(20000..60000);
    let arrived = sink(&node.ns, port, Duration::from_millis(400));
    send_from(p, vec![a.udp_from(spoof, port, "spoof")]);
    !arrived.join().unwrap().is_empty()
}

fn tcx_conf(conf: &str) -> String {
    conf.replace("\"pinPath\"", "\"tcAttach\":\"tcx\",\"pinPath\"")
}

/// A check removed by hand comes back within the edge interval, in both
/// modes and whichever way it was removed; one overtaken by another tool's
/// tcx program is put first again. The daemon counts and shows each repair.
#[test]
fn a_removed_or_overtaken_check_comes_back_within_the_interval() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start_with(&node, "edge_check_interval_seconds = 1\n");
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.219.0.0/24"}],[{"subnet":"fd00:219::/64"}]]"#,
    );
    // IPv6: an IPv4 spoof would meet the kernel's rp_filter backstop too,
    // and this test is about the program.
    let spoof: IpAddr = "fd00:219::fa".parse().unwrap();
    let pins = sluice_dataplane::pins::Pins::new(&node.pin_path);
    let repairs = |cid: &str| d.endpoints()[cid]["edge"]["repairs"].as_u64().unwrap();
    let comes_back = |p: &Pod, a: &Added, what: &str, before: u64| {
        assert!(
            spoof_reaches(&node, &p.ns, a, spoof),
            "{what}: the spoof passes while the check is gone (the test can fail)"
        );
        assert!(
            eventually(4, || repairs(&p.cid) > before),
            "{what}: not repaired: {}",
            d.endpoints()[&p.cid]
        );
        assert!(
            !spoof_reaches(&node, &p.ns, a, spoof),
            "{what}: dropped again"
        );
    };

    // clsact: the filter deleted, then the whole qdisc.
    let c = Pod::add(&node, &conf);
    d.wait_edge(&c.cid);
    let ca = Added::of(&c.result);
    node.ns.delete_edge_filter(&ca.host_if);
    comes_back(&c, &ca, "clsact filter deleted", 0);
    node.ns
        .exec(&["tc", "qdisc", "del", "dev", &ca.host_if, "clsact"]);
    comes_back(&c, &ca, "clsact qdisc deleted", 1);

    // tcx: the link unpinned, the link detached, another program first.
    let t = Pod::add(&node, &tcx_conf(&conf));
    let te = d.wait_edge(&t.cid);
    assert_eq!(te["edge"]["mode"], "tcx");
    let ta = Added::of(&t.result);
    let ifindex = ifindex_in(&node.ns, &ta.host_if);
    std::fs::remove_file(pins.tc_link(ifindex)).unwrap();
    comes_back(&t, &ta, "tcx link unpinned", 0);
    let link = sluice_dataplane::sys::obj_get(&pins.tc_link(ifindex)).unwrap();
    sluice_dataplane::sys::link_detach(link.as_fd()).unwrap();
    comes_back(&t, &ta, "tcx link detached", 1);
    // Another tool's program that passes everything, attached ahead of ours.
    let foreign_pins = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", unique("f")));
    let mut old = sluice_dataplane::load::load_object(
        "test_pod_old",
        sluice_dataplane::TEST_POD_OLD,
        &foreign_pins,
        &[],
    )
    .unwrap();
    let prog: &mut aya::programs::SchedClassifier = sluice_dataplane::load::load_program(
        &mut old,
        "test_pod_old",
        sluice_dataplane::TC_POD_INGRESS,
    )
    .unwrap();
    let foreign = sluice_tests::frames::in_netns(&node.ns.path(), {
        let fd = prog.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
        move || sluice_dataplane::sys::tcx_link_create(fd.as_fd(), ifindex).unwrap()
    });
    comes_back(&t, &ta, "another tcx program first", 2);
    // In clsact mode, a tcx program anywhere runs before every filter: the
    // check goes on tcx, first, too.
    let cifindex = ifindex_in(&node.ns, &ca.host_if);
    let foreign_c = sluice_tests::frames::in_netns(&node.ns.path(), {
        let fd = prog.fd().unwrap().as_fd().try_clone_to_owned().unwrap();
        move || sluice_dataplane::sys::tcx_link_create(fd.as_fd(), cifindex).unwrap()
    });
    comes_back(&c, &ca, "a tcx program ahead of the clsact filter", 2);
    assert_eq!(d.endpoints()[&c.cid]["edge"]["mode"], "tcx");
    drop((foreign, foreign_c, old));
    let _ = std::fs::remove_dir_all(&foreign_pins);
    let m = d.status();
    assert_eq!(m["endpoints"], 2);
}

/// An upgrade: pods attached to an older build's program (here one that
/// passes everything) get this build's check when the new daemon starts,
/// in both modes: the filter's program replaced in place, the tcx link's
/// program swapped on the same link.
#[test]
fn an_older_program_is_replaced_on_upgrade_in_both_modes() {
    if !require_root() {
        return;
    }
    let node = Node::bare();
    node.pin_pod_program(sluice_dataplane::TEST_POD_OLD, "test_pod_old");
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.220.0.0/24"}],[{"subnet":"fd00:220::/64"}]]"#,
    );
    // IPv6: no rp_filter backstop, so only the program decides.
    let spoof: IpAddr = "fd00:220::fa".parse().unwrap();
    let c = Pod::add(&node, &conf);
    let t = Pod::add(&node, &tcx_conf(&conf));
    let (ca, ta) = (Added::of(&c.result), Added::of(&t.result));
    assert!(
        spoof_reaches(&node, &c.ns, &ca, spoof),
        "the old program passes spoofs"
    );
    assert!(spoof_reaches(&node, &t.ns, &ta, spoof));
    let pins = sluice_dataplane::pins::Pins::new(&node.pin_path);
    let tifindex = ifindex_in(&node.ns, &ta.host_if);
    let link_before = sluice_dataplane::sys::pinned_link_info(&pins.tc_link(tifindex)).unwrap();

    let d = Daemon::start(&node);
    let st = d.status();
    assert_eq!(st["edge_program"], "updated", "{st}");
    let new_id = st["edge_program_id"].as_u64().unwrap();
    for p in [&c, &t] {
        let ep = d.wait_edge(&p.cid);
        assert_eq!(ep["edge"]["prog_id"], new_id, "{ep}");
    }
    assert!(!spoof_reaches(&node, &c.ns, &ca, spoof), "clsact: replaced");
    assert!(!spoof_reaches(&node, &t.ns, &ta, spoof), "tcx: replaced");
    let link_after = sluice_dataplane::sys::pinned_link_info(&pins.tc_link(tifindex)).unwrap();
    assert_eq!(link_after.id, link_before.id, "the same tcx link");
    assert_eq!(link_after.prog_id as u64, new_id);
    let filters = node.ns.edge_filters(&ca.host_if);
    assert_eq!(
        filters.matches("sluice_pod_ingress").count(),
        1,
        "{filters}"
    );
    assert!(filters.contains(&format!(" id {new_id} ")), "{filters}");
}

/// Runs a plugin list as libcni does: each entry with the list's name and
/// version, the runtime's values for the capabilities it declares in
/// `runtimeConfig`, and the previous plugin's result as `prevResult`.
/// Returns each plugin's result.
fn chain(
    node: &Node,
    cmd: &str,
    cid: &str,
    pod: &Ns,
    plugins: &[Value],
    runtime: &Value,
    prev: Option<&Value>,
) -> Result<Value, String> {
    let order: Vec<&Value> = if cmd == "DEL" {
        plugins.iter().rev().collect()
    } else {
        plugins.iter().collect()
    };
    let mut prev = prev.cloned();
    for p in order {
        let mut conf = p.clone();
        conf["name"] = node.network.clone().into();
        conf["cniVersion"] = "1.0.0".into();
        if let Some(caps) = p["capabilities"].as_object() {
            let mut rc = serde_json::Map::new();
            for (k, on) in caps {
                if on == true && !runtime[k].is_null() {
                    rc.insert(k.clone(), runtime[k].clone());
                }
            }
            conf["runtimeConfig"] = rc.into();
        }
        if let Some(pr) = &prev {
            conf["prevResult"] = pr.clone();
        }
        let ty = p["type"].as_str().unwrap();
        let bin = if ty == "sluice" {
            sluice_tests::bin("sluice")
        } else {
            std::path::PathBuf::from(format!("/usr/lib/cni/{ty}"))
        };
        let out = sluice_tests::cni_in(
            &node.ns,
            &bin,
            cmd,
            cid,
            Some(&pod.path()),
            "eth0",
            &conf.to_string(),
            &[],
        );
        if out.code != Some(0) {
            return Err(format!("{ty} {cmd}: {} {}", out.stdout, out.stderr));
        }
        if cmd == "ADD" {
            prev = Some(out.json());
        }
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// Bytes the bandwidth plugin's ifb device (in the node) has sent: what
/// its egress shaping has seen of the pod's traffic.
fn ifb_sent(node: &Ns) -> u64 {
    let links = node.ip_json(&["-d", "link", "show", "type", "ifb"]);
    let ifb = links.as_array().unwrap().first().expect("an ifb device")["ifname"]
        .as_str()
        .unwrap()
        .to_string();
    let out = node.exec(&["tc", "-s", "qdisc", "show", "dev", &ifb]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "Sent")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends `n` datagrams of 1,000 bytes from the pod's own address to
/// `dst`.
fn bulk(pod: &Ns, dst: std::net::SocketAddr, n: usize) {
    in_netns(&pod.path(), move || {
        let s =
            std::net::UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        for _ in 0..n {
            let _ = s.send_to(&[0x5c; 1000], dst);
        }
    });
}

/// The reference `portmap` (hostPort) and `bandwidth` chained after
/// sluice keep working, and so does the check: a pod whose egress
/// bandwidth shapes gets its check on a tcx link (bandwidth needs the
/// device's ingress qdisc for itself), which runs first and hands
/// bandwidth's redirect every packet it passes; a pod shaped on ingress
/// only keeps the clsact filter beside bandwidth's root qdisc. Both
/// orders of arrival: the check first (ADD), and bandwidth's qdisc first
/// with the check put back after it (the daemon's repair).
#[test]
fn chained_portmap_and_bandwidth_keep_working_with_the_check() {
    if !require_root() {
        return;
    }
    if !sluice_cni::edge::tcx_supported() {
        eprintln!("skipped: bandwidth's ingress qdisc and a clsact check cannot share a device before Linux 6.6 (tcx)");
        return;
    }
    let node = Node::new();
    let d = Daemon::start_with(&node, "edge_check_interval_seconds = 1\n");
    let mut sluice: Value = serde_json::from_str(&node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.221.0.0/24"}],[{"subnet":"fd00:221::/64"}]]"#,
    ))
    .unwrap();
    sluice["capabilities"] = serde_json::json!({"bandwidth": true});
    let plugins = vec![
        sluice,
        serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
    ];
    let shaped_egress = serde_json::json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"egressRate": 8_000_000, "egressBurst": 800_000},
    });
    let shaped_ingress = serde_json::json!({
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 800_000},
    });
    let server = Ns::new("p");
    let client = Ns::new("p");
    let (scid, ccid) = (unique("c"), unique("c"));
    let sres = chain(&node, "ADD", &scid, &server, &plugins, &shaped_egress, None).unwrap();
    let cres = chain(
        &node,
        "ADD",
        &ccid,
        &client,
        &plugins,
        &shaped_ingress,
        None,
    )
    .unwrap();
    let (sa, ca) = (Added::of(&sres), Added::of(&cres));
    let se = d.wait_edge(&scid);
    let ce = d.wait_edge(&ccid);
    assert_eq!(se["edge"]["mode"], "tcx", "egress-shaped pod: {se}");
    assert_eq!(ce["edge"]["mode"], "clsact", "ingress-shaped pod: {ce}");

    // portmap: the client reaches the server through the node's hostPort.
    let _srv = sluice_tests::Server::start(&server, "tcp", 80, "server");
    let (_, gw4) = ca.v4();
    let hostport = format!("{gw4}:18080");
    assert!(
        eventually(5, || {
            let out = client.exec(&[
                sluice_tests::bin("sluice-probe").to_str().unwrap(),
                "tcp",
                &hostport,
            ]);
            String::from_utf8_lossy(&out.stdout).contains("\"reply\":\"server\"")
        }),
        "hostPort 18080 does not reach the server"
    );

    // bandwidth: the shaped pod's traffic goes through its ifb after the
    // check passed it; spoofs are still dropped.
    let spoof: IpAddr = "fd00:221::fa".parse().unwrap();
    let (_, sgw6) = sa.v6();
    let sent = |n| {
        let before = ifb_sent(&node.ns);
        bulk(&server, std::net::SocketAddr::new(IpAddr::V6(sgw6), 9), n);
        std::thread::sleep(Duration::from_millis(200));
        ifb_sent(&node.ns) - before
    };
    assert!(
        sent(200) >= 100_000,
        "bandwidth's ifb sees the pod's traffic"
    );
    assert!(
        !spoof_reaches(&node, &server, &sa, spoof),
        "the check runs before bandwidth"
    );
    assert!(!spoof_reaches(
        &node,
        &client,
        &ca,
        "fd00:221::fb".parse().unwrap()
    ));

    // The other order: bandwidth's qdisc is there first, the check comes
    // back after it (here: removed, then repaired by the daemon).
    let pins = sluice_dataplane::pins::Pins::new(&node.pin_path);
    let sif = ifindex_in(&node.ns, &sa.host_if);
    std::fs::remove_file(pins.tc_link(sif)).unwrap();
    node.ns.delete_edge_filter(&ca.host_if);
    assert!(eventually(4, || {
        let eps = d.endpoints();
        eps[&scid]["edge"]["repairs"] == 1 && eps[&ccid]["edge"]["repairs"] == 1
    }));
    assert!(
        !spoof_reaches(&node, &server, &sa, spoof),
        "repaired behind bandwidth"
    );
    assert!(!spoof_reaches(
        &node,
        &client,
        &ca,
        "fd00:221::fb".parse().unwrap()
    ));
    assert!(
        sent(200) >= 100_000,
        "shaping still applies after the repair"
    );

    chain(
        &node,
        "DEL",
        &scid,
        &server,
        &plugins,
        &shaped_egress,
        Some(&sres),
    )
    .unwrap();
    chain(
        &node,
        "DEL",
        &ccid,
        &client,
        &plugins,
        &shaped_ingress,
        Some(&cres),
    )
    .unwrap();
    assert!(node
        .ns
        .ip_json(&["link", "show", "type", "ifb"])
        .as_array()
        .unwrap()
        .is_empty());
}
