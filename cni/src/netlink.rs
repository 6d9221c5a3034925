//! A small synchronous rtnetlink client: the handful of link, address, route
//! and neighbour operations the plugin needs, each one request and its ACK.
//!
//! Synchronous on purpose: the plugin is a short-lived process on the pod
//! start path, and an async runtime would only add start-up time. A socket is
//! bound to the netns it was opened in, which is how we reach into a pod's
//! netns without moving the process ([`Netlink::open_in`]).

use crate::netns::Netns;
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// Routes we install carry this protocol number so they are recognisable
/// (`ip route show proto 0x5c`) and never confused with an operator's.
pub const RTPROT_SLUICE: u8 = 0x5c;

#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: cannot decode the kernel's answer: {reason}")]
    Decode { op: String, reason: String },
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { source, .. } | NlError::Socket(source) => source.raw_os_error(),
            NlError::Decode { .. } => None,
        }
    }
    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

/// What we need to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// The kernel reports the link operationally up (carrier, qdisc attached).
    pub oper_up: bool,
    pub kind: Option<String>,
}

/// One route, as far as CHECK and GC care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub kind: RouteType,
    pub protocol: u8,
}

/// One request of a [`Netlink::batch`]: what it does (named in errors),
/// the message, its extra flags, and errnos that count as success.
#[derive(Debug)]
pub struct Op {
    pub what: String,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
    pub ok: &'static [i32],
}

impl Op {
    pub fn new(what: impl Into<String>, msg: RouteNetlinkMessage, flags: u16) -> Self {
        Op {
            what: what.into(),
            msg,
            flags,
            ok: &[],
        }
    }

    /// Also succeeds when the kernel answers one of `errnos`.
    pub fn ok_if(mut self, errnos: &'static [i32]) -> Self {
        self.ok = errnos;
        self
    }
}

/// A bpf filter on a device's ingress filter list (clsact or ingress qdisc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub prio: u16,
    pub handle: u32,
    pub prog_id: Option<u32>,
    pub name: Option<String>,
}

/// Where a filter lives: a device's own ingress list, or a shared block
/// that the ingress qdiscs of many devices are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterList {
    Ingress(u32),
    Block(u32),
}

impl FilterList {
    fn header(self, msg: &mut TcMessage) {
        match self {
            FilterList::Ingress(ifindex) => {
                msg.header.index = ifindex as i32;
                msg.header.parent = INGRESS_FILTERS;
            }
            FilterList::Block(block) => {
                msg.header.index = TcHeader::TCM_IFINDEX_MAGIC_BLOCK as i32;
                msg.header.parent = TcHandle::from(block);
            }
        }
    }
}

impl std::fmt::Display for FilterList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterList::Ingress(i) => write!(f, "the ingress of link #{i}"),
            FilterList::Block(b) => write!(f, "shared block {b}"),
        }
    }
}

/// A device's ingress qdisc (clsact or ingress), as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressQdisc {
    pub kind: String,
    /// The shared block its ingress filters come from, if bound to one.
    pub block: Option<u32>,
}

const TCA_INGRESS_BLOCK: u16 = 13;
const TCA_EGRESS_BLOCK: u16 = 14;

/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the ingress filter list of a
/// clsact qdisc, which an `ingress` qdisc answers to as well.
const INGRESS_FILTERS: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};
const ETH_P_ALL: u16 = 0x0003;
/// Room for one netlink datagram: dumps fill at most 32 KiB a datagram.
const RECV_BUF: usize = 64 * 1024;

/// Queues each end of a pod's veth is created with. Without the
/// attribute the kernel allocates one per possible CPU, then cuts the
/// active count to 1 once each end is registered; cutting it waits for an
/// expedited RCU grace period under RTNL, twice per veth (~180 µs of an
/// ADD on this 2-vCPU node, and every other RTNL user waits too). Asking
/// for one queue gives the same device (one active queue is veth's
/// default either way) without the wait; `ethtool -L` cannot raise it.
const VETH_QUEUES: u32 = 1;

#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's current netns.
    pub fn open() -> Result<Self, NlError> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NlError::Socket)?;
        // Bound by the kernel on first send (no bind or getsockname: we
        // never need our port id); connected so plain send reaches it.
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NlError::Socket)?;
        // Extended ACKs give the kernel's reason text; best effort.
        let _ = socket.set_ext_ack(true);
        Ok(Self {
            socket,
            seq: 1,
            // Never zeroed: the kernel writes each reply into the spare
            // capacity, so a reply touches only the pages it fills (zeroing
            // 64 KiB cost each socket 16 page faults, ~30 µs of every ADD).
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Receives one datagram into `buf` (replacing what it held) and
    /// returns its length.
    fn recv(&mut self) -> io::Result<usize> {
        self.buf.clear();
        self.socket.recv(&mut self.buf, 0)?;
        Ok(self.buf.len())
    }

    /// A socket bound to `ns`: the thread enters `ns` only for the socket(2)
    /// call and comes back before returning.
    pub fn open_in(ns: &Netns) -> Result<Self, NlError> {
        ns.run_in(Self::open)
            .map_err(|e| NlError::Socket(io::Error::other(e.to_string())))?
    }

    pub(crate) fn request(
        &mut self,
        op: impl Fn() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let out = self.serialize(msg, flags);
        self.socket
            .send(&out, 0)
            .map_err(|source| NlError::Kernel { op: op(), source })?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = self
                .recv()
                .map_err(|source| NlError::Kernel { op: op(), source })?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NlError::Decode {
                            op: op(),
                            reason: e.to_string(),
                        }
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NlError::Decode {
                        op: op(),
                        reason: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(NlError::Kernel {
                                op: op(),
                                source: e.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn serialize(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        // Messages in one buffer start on 4-byte boundaries.
        let mut out = vec![0u8; (packet.buffer_len() + 3) & !3];
        packet.serialize(&mut out[..packet.buffer_len()]);
        out
    }

    /// Sends every request in one `sendmsg` and collects their ACKs: one
    /// round trip instead of one per request. The kernel carries out each
    /// request in order whatever happened to the one before, so a caller
    /// undoes a failed batch as a whole (ADD deletes the veth, which takes
    /// every address, route and neighbour on it along). Returns the first
    /// request's failure, by position.
    pub fn batch(&mut self, ops: Vec<Op>) -> Result<(), NlError> {
        if ops.is_empty() {
            return Ok(());
        }
        let first = self.seq.wrapping_add(1);
        let mut buf = Vec::new();
        let mut meta = Vec::with_capacity(ops.len());
        for op in ops {
            buf.extend(self.serialize(op.msg, NLM_F_ACK | op.flags));
            meta.push((op.what, op.ok));
        }
        let what = |i: usize| meta.get(i).map(|m| m.0.clone()).unwrap_or_default();
        self.socket
            .send(&buf, 0)
            .map_err(|source| NlError::Kernel {
                op: what(0),
                source,
            })?;
        let mut pending = meta.len();
        let mut failed: Option<(usize, io::Error)> = None;
        while pending > 0 {
            let n = self.recv().map_err(|source| NlError::Kernel {
                op: what(0),
                source,
            })?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| NlError::Decode {
                        op: what(0),
                        reason: e.to_string(),
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NlError::Decode {
                        op: what(0),
                        reason: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                let i = msg.header.sequence_number.wrapping_sub(first) as usize;
                if i >= meta.len() {
                    continue;
                }
                if let NetlinkPayload::Error(e) = msg.payload {
                    pending -= 1;
                    if let Some(code) = e.code {
                        let errno = -code.get();
                        let err = io::Error::from_raw_os_error(errno);
                        if !meta[i].1.contains(&errno)
                            && failed.as_ref().is_none_or(|(j, _)| i < *j)
                        {
                            failed = Some((i, err));
                        }
                    }
                }
            }
        }
        match failed {
            Some((i, source)) => Err(NlError::Kernel {
                op: what(i),
                source,
            }),
            None => Ok(()),
        }
    }

    /// The netns cookie of the namespace this socket was opened in
    /// (`SO_NETNS_COOKIE`, Linux 5.14).
    pub fn netns_cookie(&self) -> Result<u64, NlError> {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(NlError::Socket(io::Error::last_os_error()));
        }
        Ok(cookie)
    }

    /// Creates a veth pair: `host` here and `peer` directly inside `peer_ns`,
    /// so the pod's end never exists in the node's netns, even for a moment.
    /// Returns the host end's ifindex, and its peer's in the pod's netns,
    /// when the kernel echoes the new link (`NLM_F_ECHO`, Linux 6.2; a
    /// veth's `IFLA_LINK` is its peer's ifindex); `None` on older kernels.
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        peer_ns: &Netns,
        mtu: u32,
    ) -> Result<Option<(u32, u32)>, NlError> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.into()),
            LinkAttribute::Address(peer_mac.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(peer_ns.as_raw_fd()),
            LinkAttribute::NumTxQueues(VETH_QUEUES),
            LinkAttribute::NumRxQueues(VETH_QUEUES),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(host.into()),
            LinkAttribute::Address(host_mac.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NumTxQueues(VETH_QUEUES),
            LinkAttribute::NumRxQueues(VETH_QUEUES),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        let replies = self.request(
            || format!("creating veth {host} <-> {peer}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        )?;
        Ok(replies.into_iter().find_map(|m| {
            let RouteNetlinkMessage::NewLink(l) = m else {
                return None;
            };
            let mut name_ok = false;
            let mut peer = None;
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name_ok = n == host,
                    LinkAttribute::Link(p) => peer = Some(*p),
                    _ => {}
                }
            }
            Some((l.header.index, peer?)).filter(|_| name_ok)
        }))
    }

    /// Sets a link up, and its alias when given, in one request.
    pub fn set_up(&mut self, index: u32, alias: Option<&str>) -> Result<(), NlError> {
        self.batch(vec![set_up_op(index, alias)])
    }

    /// Sets a link down.
    pub fn set_down(&mut self, index: u32) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.request(
            || format!("setting link {index} down"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// Renames a link (it must be down).
    pub fn rename(&mut self, index: u32, name: &str) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        self.request(
            || format!("renaming link {index} to {name}"),
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )
        .map(drop)
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        self.get_link(msg, || format!("looking up link {name}"))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || format!("looking up link #{index}"))
    }

    /// One RTM_GETLINK; a link that does not exist is `None`, not an error.
    fn get_link(
        &mut self,
        msg: LinkMessage,
        op: impl Fn() -> String,
    ) -> Result<Option<Link>, NlError> {
        match self.request(op, RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(r) => Ok(r.into_iter().find_map(to_link)),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the link is operationally up. A veth that was just set
    /// up drops every packet until the kernel's link watcher has attached
    /// its qdisc; returning ADD before that would lose the pod's first
    /// packets.
    pub fn wait_oper_up(
        &mut self,
        index: u32,
        timeout: std::time::Duration,
    ) -> Result<bool, NlError> {
        poll(timeout, || {
            Ok(match self.link_by_index(index)? {
                Some(l) if l.oper_up => Some(true),
                None => Some(false),
                Some(_) => None,
            })
        })
    }

    /// Whether `ip` is an address of this node, as routing sees it: the
    /// kernel's route for it is of type `local`. The route lookup
    /// (`RTM_GETROUTE` without a dump, as `ip route get`) finds the local
    /// table's entry, not the address list: an IPv6 address is listed the
    /// moment it is added, while its local route comes later, from the
    /// kernel's address worker (see [`Netlink::wait_local`]).
    pub fn is_local(&mut self, ip: IpAddr) -> Result<bool, NlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(ip);
        msg.header.destination_prefix_length = if ip.is_ipv6() { 128 } else { 32 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        match self.request(
            || format!("looking up the route to {ip}"),
            RouteNetlinkMessage::GetRoute(msg),
            0,
        ) {
            Ok(replies) => Ok(replies.iter().any(|r| {
                matches!(r, RouteNetlinkMessage::NewRoute(m) if m.header.kind == RouteType::Local)
            })),
            // A reject route (the unreachable pod range, or the kernel's
            // prefix route of an address on the loopback) answers the
            // lookup with its error: not local yet.
            Err(e)
                if e.is(libc::ENETUNREACH) || e.is(libc::EHOSTUNREACH) || e.is(libc::EACCES) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until `ip` is local (see [`Netlink::is_local`]); `false` if it is
    /// not after `timeout`. An IPv6 address added with `nodad` is in the
    /// address list at once, but the kernel installs its local route from
    /// its address worker (`addrconf_dad_work`), which needs the RTNL lock:
    /// with many ADDs at once on a busy node it came up to 180 ms after
    /// the address, and until then whatever a pod sent to that address
    /// died on the routing (`Ip6InNoRoutes`). IPv4 installs it with the
    /// address.
    pub fn wait_local(
        &mut self,
        ip: IpAddr,
        timeout: std::time::Duration,
    ) -> Result<bool, NlError> {
        poll(timeout, || Ok(self.is_local(ip)?.then_some(true)))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        Ok(self
            .request(
                || "listing links".into(),
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(to_link)
            .collect())
    }

    /// Deletes a link by name; `false` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        match self.request(
            || format!("deleting link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            NLM_F_ACK,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds an address with its exact prefix (see [`address_op`]).
    pub fn add_address(&mut self, index: u32, addr: IpNetwork) -> Result<(), NlError> {
        self.batch(vec![address_op(index, addr)])
    }

    /// The addresses of one link (all families).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNetwork>, NlError> {
        let replies = self.request(
            || format!("listing addresses of link #{index}"),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            if let RouteNetlinkMessage::NewAddress(a) = r {
                if a.header.index != index {
                    continue;
                }
                let ip = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(ip) = ip {
                    if let Ok(n) = IpNetwork::new(ip, a.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a unicast route in the main table.
    pub fn add_route(
        &mut self,
        dst: IpNetwork,
        gateway: Option<IpAddr>,
        oif: u32,
        scope: RouteScope,
    ) -> Result<(), NlError> {
        self.batch(vec![route_op(dst, gateway, oif, scope)])
    }

    /// Makes sure an `unreachable` route covers `dst`; an existing one is kept.
    pub fn ensure_unreachable(&mut self, dst: IpNetwork) -> Result<(), NlError> {
        self.batch(vec![unreachable_op(dst)])
    }

    /// Routes of the main table of one family.
    pub fn routes(&mut self, v6: bool) -> Result<Vec<RouteEntry>, NlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.request(
            || "listing routes".into(),
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewRoute(m) = r else {
                continue;
            };
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(m.header.table as u32);
            if table != RouteHeader::RT_TABLE_MAIN as u32 {
                continue;
            }
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gateway = route_ip(g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            });
            if let Ok(dst) = IpNetwork::new(dst, m.header.destination_prefix_length) {
                out.push(RouteEntry {
                    dst,
                    gateway,
                    oif,
                    kind: m.header.kind,
                    protocol: u8::from(m.header.protocol),
                });
            }
        }
        Ok(out)
    }

    /// A permanent neighbour entry (see [`neighbour_op`]).
    pub fn add_permanent_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NlError> {
        self.batch(vec![neighbour_op(index, ip, mac)])
    }

    /// The MTU of the link that carries the default route, if there is one.
    /// The kernel is asked which route it would use for an address off the
    /// node (`RTM_F_FIB_MATCH`), one request per family, so the cost does
    /// not grow with the routes the node holds (one per pod); only a
    /// covering route more specific than the default falls back to reading
    /// the table.
    pub fn default_route_mtu(&mut self) -> Result<Option<u32>, NlError> {
        const PROBES: [IpAddr; 2] = [
            IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ];
        for probe in PROBES {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family(probe);
            msg.header.destination_prefix_length = if probe.is_ipv4() { 32 } else { 128 };
            msg.header.flags = RouteFlags::FibMatch;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(probe)));
            let replies = match self.request(
                || format!("looking up the route to {probe}"),
                RouteNetlinkMessage::GetRoute(msg),
                0,
            ) {
                Ok(r) => r,
                // No route for this family at all.
                Err(e) if e.is(libc::ENETUNREACH) || e.is(libc::EHOSTUNREACH) => continue,
                Err(e) => return Err(e),
            };
            let Some(RouteNetlinkMessage::NewRoute(m)) = replies.into_iter().next() else {
                continue;
            };
            if m.header.kind != RouteType::Unicast {
                continue;
            }
            if m.header.destination_prefix_length != 0 {
                return self.default_route_mtu_from_table();
            }
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(o) => Some(*o),
                _ => None,
            });
            if let Some(l) = oif.map(|o| self.link_by_index(o)).transpose()?.flatten() {
                return Ok(l.mtu);
            }
        }
        Ok(None)
    }

    fn default_route_mtu_from_table(&mut self) -> Result<Option<u32>, NlError> {
        for v6 in [false, true] {
            let routes = self.routes(v6)?;
            if let Some(oif) = routes
                .iter()
                .filter(|r| r.dst.prefix() == 0 && r.kind == RouteType::Unicast)
                .find_map(|r| r.oif)
            {
                if let Some(l) = self.link_by_index(oif)? {
                    return Ok(l.mtu);
                }
            }
        }
        Ok(None)
    }

    /// The bpf filters of a filter list, in priority order.
    pub fn bpf_filters(&mut self, list: FilterList) -> Result<Vec<BpfFilter>, NlError> {
        let mut msg = TcMessage::default();
        list.header(&mut msg);
        let replies = match self.request(
            || format!("listing the filters of {list}"),
            RouteNetlinkMessage::GetTrafficFilter(msg),
            NLM_F_DUMP,
        ) {
            Ok(r) => r,
            // No qdisc with an ingress filter list on the device, or no
            // such block.
            Err(e) if e.is(libc::EINVAL) || e.is(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewTrafficFilter(m) = r else {
                continue;
            };
            let mut kind_bpf = false;
            let mut f = BpfFilter {
                prio: (m.header.info >> 16) as u16,
                handle: u32::from(m.header.handle),
                prog_id: None,
                name: None,
            };
            for a in m.attributes {
                match a {
                    TcAttribute::Kind(k) => kind_bpf = k == "bpf",
                    TcAttribute::Options(opts) => {
                        for o in opts {
                            match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => {
                                    f.prog_id = Some(id)
                                }
                                TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.name = Some(n),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            // A dump lists each filter list's head (handle 0) too.
            if kind_bpf && f.handle != 0 {
                out.push(f);
            }
        }
        out.sort_by_key(|f| f.prio);
        Ok(out)
    }

    /// A device's ingress qdisc; `None` when it has none.
    pub fn ingress_qdisc(&mut self, ifindex: u32) -> Result<Option<IngressQdisc>, NlError> {
        let mut msg = TcMessage::default();
        msg.header.index = ifindex as i32;
        msg.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        // The kernel answers a qdisc GET as a notification, to the asker
        // only with NLM_F_ECHO.
        let replies = match self.request(
            || format!("reading the ingress qdisc of link #{ifindex}"),
            RouteNetlinkMessage::GetQueueDiscipline(msg),
            NLM_F_ECHO,
        ) {
            Ok(r) => r,
            Err(e) if e.is(libc::ENOENT) || e.is(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(replies.into_iter().find_map(|r| {
            let RouteNetlinkMessage::NewQueueDiscipline(m) = r else {
                return None;
            };
            let mut q = IngressQdisc {
                kind: String::new(),
                block: None,
            };
            for a in m.attributes {
                match a {
                    TcAttribute::Kind(k) => q.kind = k,
                    TcAttribute::Other(n) if n.kind() == TCA_INGRESS_BLOCK => {
                        let mut v = [0u8; 4];
                        n.emit_value(&mut v);
                        q.block = Some(u32::from_ne_bytes(v)).filter(|b| *b != 0);
                    }
                    _ => {}
                }
            }
            Some(q)
        }))
    }

    /// Removes one bpf filter of a filter list; a filter that is not there
    /// is not an error.
    pub fn delete_filter(
        &mut self,
        list: FilterList,
        prio: u16,
        handle: u32,
    ) -> Result<(), NlError> {
        let mut msg = TcMessage::default();
        list.header(&mut msg);
        msg.header.handle = TcHandle::from(handle);
        msg.header.info = filter_info(prio);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        self.batch(vec![Op::new(
            format!("deleting filter {prio}:{handle:#x} of {list}"),
            RouteNetlinkMessage::DelTrafficFilter(msg),
            0,
        )
        .ok_if(&[libc::ENOENT])])
    }
}

/// Asks `step` every 200 µs until it answers (`Some`), fails, or `timeout`
/// has passed (`false`).
fn poll(
    timeout: std::time::Duration,
    mut step: impl FnMut() -> Result<Option<bool>, NlError>,
) -> Result<bool, NlError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(answer) = step()? {
            return Ok(answer);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// `up` for a link, and its alias when given, in one request.
pub fn set_up_op(index: u32, alias: Option<&str>) -> Op {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    if let Some(a) = alias {
        msg.attributes.push(LinkAttribute::IfAlias(a.into()));
    }
    Op::new(
        format!("setting link #{index} up"),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
}

/// Address `addr` (with its prefix) on link `index`: the message both
/// adding and removing it start from.
pub(crate) fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr.ip());
    msg.header.prefix_len = addr.prefix();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.ip()));
    msg.attributes.push(AddressAttribute::Address(addr.ip()));
    msg
}

/// An address with its exact prefix. IPv6 addresses skip duplicate address
/// detection: IPAM already guarantees uniqueness, and DAD would keep the
/// address unusable for a second or more after ADD returns.
pub fn address_op(index: u32, addr: IpNetwork) -> Op {
    let mut msg = address_message(index, addr);
    if addr.is_ipv6() {
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    Op::new(
        format!("adding address {addr} to link #{index}"),
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// A unicast route in the main table (added or replaced).
pub fn route_op(dst: IpNetwork, gateway: Option<IpAddr>, oif: u32, scope: RouteScope) -> Op {
    let mut msg = route_message(dst, RouteType::Unicast);
    msg.header.scope = scope;
    msg.attributes.push(RouteAttribute::Oif(oif));
    if let Some(gw) = gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    Op::new(
        match gateway {
            Some(gw) => format!("adding route {dst} via {gw} dev #{oif}"),
            None => format!("adding route {dst} dev #{oif}"),
        },
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// A route to a pod's address through its host veth, with the node's
/// address for the pod (its gateway) as the preferred source.
pub fn pod_route_op(dst: IpNetwork, oif: u32, src: IpAddr) -> Op {
    let mut op = route_op(dst, None, oif, RouteScope::Link);
    if let RouteNetlinkMessage::NewRoute(m) = &mut op.msg {
        m.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    op
}

/// An `unreachable` route for `dst`; one already there is kept.
pub fn unreachable_op(dst: IpNetwork) -> Op {
    let mut msg = route_message(dst, RouteType::Unreachable);
    msg.header.scope = RouteScope::Universe;
    Op::new(
        format!("adding unreachable route {dst}"),
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .ok_if(&[libc::EEXIST])
}

/// A permanent neighbour entry, so the first packet needs no ARP/ND.
pub fn neighbour_op(index: u32, ip: IpAddr, mac: [u8; 6]) -> Op {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(ip);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    Op::new(
        format!("adding neighbour {ip} on link #{index}"),
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// A proxy neighbour entry: the node answers neighbour solicitations for
/// `ip` arriving on link `index` (with `proxy_ndp` on the link).
pub fn proxy_neighbour_op(index: u32, ip: IpAddr) -> Op {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family(ip);
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = netlink_packet_route::neighbour::NeighbourFlags::Proxy;
    msg.attributes
        .push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    Op::new(
        format!("adding proxy neighbour {ip} on link #{index}"),
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Shared tc blocks a clsact qdisc takes its filter lists from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedBlocks {
    pub ingress: u32,
    pub egress: u32,
}

/// A clsact qdisc on a device, its filter lists those of the shared
/// `blocks` when given; one already there (clsact, or the `ingress` qdisc a
/// chained plugin added, which carries the same ingress filter list) is
/// kept.
pub fn clsact_op(ifindex: u32, blocks: Option<SharedBlocks>) -> Op {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.header.parent = TcHandle::CLSACT;
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    if let Some(b) = blocks {
        for (kind, index) in [(TCA_INGRESS_BLOCK, b.ingress), (TCA_EGRESS_BLOCK, b.egress)] {
            msg.attributes
                .push(TcAttribute::Other(netlink_packet_core::DefaultNla::new(
                    kind,
                    index.to_ne_bytes().to_vec(),
                )));
        }
    }
    Op::new(
        format!("adding a clsact qdisc to link #{ifindex}"),
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .ok_if(&[libc::EEXIST])
}

/// `tcm_info` of a filter: priority and protocol (all).
fn filter_info(prio: u16) -> u32 {
    ((prio as u32) << 16) | ETH_P_ALL.to_be() as u32
}

/// A direct-action bpf filter running `prog_fd` in a filter list at
/// (`prio`, `handle`); `replace` swaps the program of the filter already
/// there in one step, otherwise an existing one is an error.
pub fn bpf_filter_op(
    list: FilterList,
    prio: u16,
    handle: u32,
    prog_fd: std::os::fd::BorrowedFd<'_>,
    name: &str,
    replace: bool,
) -> Op {
    let mut msg = TcMessage::default();
    list.header(&mut msg);
    msg.header.handle = TcHandle::from(handle);
    msg.header.info = filter_info(prio);
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    Op::new(
        format!("attaching {name} to {list}"),
        RouteNetlinkMessage::NewTrafficFilter(msg),
        NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL },
    )
}

pub(crate) fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

pub(crate) fn route_message(dst: IpNetwork, kind: RouteType) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(dst.ip());
    msg.header.destination_prefix_length = dst.prefix();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(RTPROT_SLUICE);
    msg.header.kind = kind;
    msg.header.flags = RouteFlags::empty();
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            dst.network(),
        )));
    msg
}

pub(crate) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub(crate) fn to_link(m: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(l) = m else {
        return None;
    };
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        alias: None,
        mac: None,
        mtu: None,
        up: l.header.flags.contains(LinkFlags::Up),
        oper_up: false,
        kind: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::IfAlias(a) => link.alias = Some(a),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::OperState(s) => link.oper_up = s == State::Up,
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                let mut m = [0; 6];
                m.copy_from_slice(&mac);
                link.mac = Some(m);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
