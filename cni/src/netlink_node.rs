//! The netlink operations of node routing (the daemon's, not the plugin's):
//! routes to other nodes' pod ranges, the VXLAN device of the overlay, and
//! its neighbour and forwarding entries. Everything is marked (routes by
//! protocol [`RTPROT_SLUICE_NODES`], entries by living on our own VXLAN
//! device) so a reconcile can tell what is ours and remove only that.

use crate::netlink::{address_message, family, route_ip, route_message, Netlink, NlError, Op};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

/// Routes to other nodes' pod ranges carry this protocol number
/// (`ip route show proto 0x5d`): apart from the plugin's pod routes
/// (0x5c), so the daemon's reconcile never touches those.
pub const RTPROT_SLUICE_NODES: u8 = 0x5d;

/// A route to another node's pod range, as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub dst: IpNetwork,
    pub gateway: IpAddr,
    pub oif: u32,
    /// The gateway is taken as on the link without a covering route (the
    /// overlay's next hops are the other nodes' tunnel addresses).
    pub onlink: bool,
    pub mtu: Option<u32>,
}

/// A neighbour or forwarding entry on one device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NeighbourEntry {
    /// The IP (neighbour: the peer's tunnel address; forwarding entry: the
    /// peer node's underlay address).
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// What a VXLAN device is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay address packets leave from.
    pub local: IpAddr,
    /// The underlay device.
    pub link: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// What the kernel reports of an existing VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub index: u32,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub link: Option<u32>,
    pub learning: Option<bool>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

impl VxlanInfo {
    /// Whether the device is the one `spec` describes (the MTU and MAC are
    /// set on a live device; the rest needs a new one).
    pub fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vni == Some(spec.vni)
            && self.port == Some(spec.port)
            && self.local == Some(spec.local)
            && self.link == Some(spec.link)
            && self.learning == Some(false)
    }
}

/// The route to `dst` through `gateway` on `oif`, ours (added or replaced).
pub fn node_route_op(r: &NodeRoute) -> Op {
    let mut msg = route_message(r.dst, RouteType::Unicast);
    msg.header.protocol = RouteProtocol::from(RTPROT_SLUICE_NODES);
    msg.header.scope = RouteScope::Universe;
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    msg.attributes.push(RouteAttribute::Oif(r.oif));
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::from(r.gateway)));
    if let Some(mtu) = r.mtu {
        msg.attributes.push(RouteAttribute::Metrics(vec![
            netlink_packet_route::route::RouteMetric::Mtu(mtu),
        ]));
    }
    Op::new(
        format!("adding route {} via {} dev #{}", r.dst, r.gateway, r.oif),
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Deletes one of our node routes; one already gone is no error.
pub fn delete_node_route_op(dst: IpNetwork) -> Op {
    let mut msg = route_message(dst, RouteType::Unicast);
    msg.header.protocol = RouteProtocol::from(RTPROT_SLUICE_NODES);
    msg.header.scope = RouteScope::NoWhere;
    Op::new(
        format!("deleting route {dst}"),
        RouteNetlinkMessage::DelRoute(msg),
        0,
    )
    .ok_if(&[libc::ESRCH, libc::ENOENT])
}

fn neighbour_message(family: AddressFamily, index: u32, e: &NeighbourEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(NeighbourAttribute::Destination(match e.ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    msg
}

/// The peer's tunnel address resolves to the peer's VXLAN MAC.
pub fn tunnel_neighbour_op(index: u32, e: &NeighbourEntry, delete: bool) -> Op {
    let msg = neighbour_message(family(e.ip), index, e);
    if delete {
        Op::new(
            format!("deleting neighbour {} on #{index}", e.ip),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
        .ok_if(&[libc::ENOENT, libc::ESRCH])
    } else {
        Op::new(
            format!("adding neighbour {} on #{index}", e.ip),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

/// Frames for the peer's VXLAN MAC go to the peer node's underlay address
/// (`bridge fdb append <mac> dev vx dst <ip> self permanent`).
pub fn fdb_op(index: u32, e: &NeighbourEntry, delete: bool) -> Op {
    let mut msg = neighbour_message(AddressFamily::Bridge, index, e);
    // NTF_SELF: the entry is the VXLAN device's own (keyed by the MAC; the
    // destination is the remote underlay address).
    msg.header.flags = NeighbourFlags::Own;
    if delete {
        Op::new(
            format!("deleting forwarding entry {} on #{index}", e.ip),
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
        )
        .ok_if(&[libc::ENOENT, libc::ESRCH])
    } else {
        Op::new(
            format!(
                "adding forwarding entry {} -> {} on #{index}",
                crate::netlink::format_mac(e.mac),
                e.ip
            ),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

impl Netlink {
    /// Our node routes (protocol [`RTPROT_SLUICE_NODES`]) of both families.
    pub fn node_routes(&mut self) -> Result<Vec<NodeRoute>, NlError> {
        let mut out = Vec::new();
        for af in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = af;
            let replies = self.request(
                || "listing routes".into(),
                RouteNetlinkMessage::GetRoute(msg),
                NLM_F_DUMP,
            )?;
            for r in replies {
                let RouteNetlinkMessage::NewRoute(m) = r else {
                    continue;
                };
                if u8::from(m.header.protocol) != RTPROT_SLUICE_NODES {
                    continue;
                }
                let (mut dst, mut gateway, mut oif, mut mtu) = (None, None, None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => dst = route_ip(d),
                        RouteAttribute::Gateway(g) => gateway = route_ip(g),
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        RouteAttribute::Metrics(ms) => {
                            for x in ms {
                                if let netlink_packet_route::route::RouteMetric::Mtu(v) = x {
                                    mtu = Some(*v);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let (Some(dst), Some(gateway), Some(oif)) = (dst, gateway, oif) else {
                    // Ours but not of the shape we make (a hand edit):
                    // reported with no gateway so the reconcile replaces it.
                    if let Some(d) =
                        dst.and_then(|d| IpNetwork::new(d, m.header.destination_prefix_length).ok())
                    {
                        out.push(NodeRoute {
                            dst: d,
                            gateway: d.ip(),
                            oif: 0,
                            onlink: false,
                            mtu,
                        });
                    }
                    continue;
                };
                if let Ok(dst) = IpNetwork::new(dst, m.header.destination_prefix_length) {
                    out.push(NodeRoute {
                        dst,
                        gateway,
                        oif,
                        onlink: m.header.flags.contains(RouteFlags::Onlink),
                        mtu,
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The route the kernel would take to `ip`: (device, gateway if the
    /// destination is not on the link). `None` when there is none.
    pub fn route_to(&mut self, ip: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, NlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(ip);
        msg.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        let replies = match self.request(
            || format!("looking up the route to {ip}"),
            RouteNetlinkMessage::GetRoute(msg),
            0,
        ) {
            Ok(r) => r,
            Err(e) if e.is(libc::ENETUNREACH) || e.is(libc::EHOSTUNREACH) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(RouteNetlinkMessage::NewRoute(m)) = replies.into_iter().next() else {
            return Ok(None);
        };
        if m.header.kind != RouteType::Unicast {
            return Ok(None);
        }
        let (mut oif, mut gw) = (None, None);
        for a in &m.attributes {
            match a {
                RouteAttribute::Oif(o) => oif = Some(*o),
                RouteAttribute::Gateway(g) => gw = route_ip(g),
                _ => {}
            }
        }
        Ok(oif.map(|o| (o, gw)))
    }

    /// The device that holds `ip` as one of its addresses (one dump of
    /// the addresses, whatever the number of links).
    pub fn device_with_address(&mut self, ip: IpAddr) -> Result<Option<u32>, NlError> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(ip);
        let replies = self.request(
            || format!("looking for the link that holds {ip}"),
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
        )?;
        Ok(replies.into_iter().find_map(|r| {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                return None;
            };
            a.attributes
                .iter()
                .any(|at| matches!(at, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == ip))
                .then_some(a.header.index)
        }))
    }

    /// The VXLAN device `name`, if there is a link of that name (`Err`
    /// carries nothing special: a link of another kind is reported with
    /// every field `None`, which matches no spec).
    pub fn vxlan(&mut self, name: &str) -> Result<Option<VxlanInfo>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let replies = match self.request(
            || format!("looking up link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(r) => r,
            Err(e) if e.is(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(RouteNetlinkMessage::NewLink(l)) = replies.into_iter().next() else {
            return Ok(None);
        };
        let mut info = VxlanInfo {
            index: l.header.index,
            vni: None,
            port: None,
            local: None,
            link: None,
            learning: None,
            mac: None,
            mtu: None,
        };
        for a in l.attributes {
            match a {
                LinkAttribute::Mtu(m) => info.mtu = Some(m),
                LinkAttribute::Address(mac) if mac.len() == 6 => {
                    let mut m = [0; 6];
                    m.copy_from_slice(&mac);
                    info.mac = Some(m);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(xs)) = i {
                            for x in xs {
                                match x {
                                    InfoVxlan::Id(v) => info.vni = Some(v),
                                    InfoVxlan::Port(p) => info.port = Some(p),
                                    InfoVxlan::Local(a) => info.local = Some(a.into()),
                                    InfoVxlan::Local6(a) => info.local = Some(a.into()),
                                    InfoVxlan::Link(i) => info.link = Some(i),
                                    InfoVxlan::Learning(b) => info.learning = Some(b),
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(info))
    }

    /// Creates the VXLAN device (down; the caller sets it up once its
    /// address is on).
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<u32, NlError> {
        let local = match spec.local {
            IpAddr::V4(a) => InfoVxlan::Local(a),
            IpAddr::V6(a) => InfoVxlan::Local6(a),
        };
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(spec.name.clone()),
            LinkAttribute::Address(spec.mac.to_vec()),
            LinkAttribute::Mtu(spec.mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(spec.vni),
                    local,
                    InfoVxlan::Link(spec.link),
                    InfoVxlan::Port(spec.port),
                    InfoVxlan::Learning(false),
                ])),
            ]),
        ];
        self.request(
            || format!("creating VXLAN device {} (VNI {})", spec.name, spec.vni),
            RouteNetlinkMessage::NewLink(msg),
            netlink_packet_core::NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        self.link_by_name(&spec.name)?
            .map(|l| l.index)
            .ok_or_else(|| NlError::Kernel {
                op: format!("creating VXLAN device {}", spec.name),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })
    }

    /// Removes an address from a link; one already gone is no error.
    pub fn delete_address(&mut self, index: u32, addr: IpNetwork) -> Result<(), NlError> {
        self.batch(vec![Op::new(
            format!("removing address {addr} from link #{index}"),
            RouteNetlinkMessage::DelAddress(address_message(index, addr)),
            0,
        )
        .ok_if(&[libc::EADDRNOTAVAIL, libc::ENOENT])])
    }

    /// Sets a live link's MTU and MAC address.
    pub fn set_mtu_mac(&mut self, index: u32, mtu: u32, mac: [u8; 6]) -> Result<(), NlError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes = vec![
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Address(mac.to_vec()),
        ];
        self.batch(vec![Op::new(
            format!("setting MTU {mtu} on link #{index}"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )])
    }

    /// Neighbour entries (IPv4 and IPv6) of one device, or with `fdb` its
    /// forwarding entries that have a remote destination.
    pub fn neighbours(&mut self, index: u32, fdb: bool) -> Result<Vec<NeighbourEntry>, NlError> {
        let families: &[AddressFamily] = if fdb {
            &[AddressFamily::Bridge]
        } else {
            &[AddressFamily::Inet, AddressFamily::Inet6]
        };
        let mut out = Vec::new();
        for af in families {
            let mut msg = NeighbourMessage::default();
            msg.header.family = *af;
            msg.header.ifindex = index;
            let replies = self.request(
                || format!("listing neighbours of link #{index}"),
                RouteNetlinkMessage::GetNeighbour(msg),
                NLM_F_DUMP,
            )?;
            for r in replies {
                let RouteNetlinkMessage::NewNeighbour(m) = r else {
                    continue;
                };
                if m.header.ifindex != index {
                    continue;
                }
                let (mut ip, mut mac) = (None, None);
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(IpAddr::V4(*v4))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            ip = Some(IpAddr::V6(*v6))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            let mut m = [0; 6];
                            m.copy_from_slice(l);
                            mac = Some(m);
                        }
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.push(NeighbourEntry { ip, mac });
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
