//! Stable names and MAC addresses derived from (container ID, ifname), so DEL
//! finds the host-side link without any state, even after the record is lost.

/// Host-side veth names start with this; `sl` + 11 hex digits = 13 bytes,
/// within the kernel's 15.
pub const HOST_PREFIX: &str = "sl";

/// FNV-1a, 64-bit: stable across versions and platforms (unlike std's
/// `DefaultHasher`), which matters because names must survive upgrades.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(&[container_id, ifname]);
    format!("{HOST_PREFIX}{:011x}", h & 0x0fff_ffff_ffff)
}

/// The name a host-side link takes while it is being deleted in the
/// background: `sx` + the same 11 hex digits, so an ADD of the same
/// attachment right after its DEL does not collide with it.
pub fn tombstone_ifname(host_ifname: &str) -> String {
    format!("{TOMBSTONE_PREFIX}{}", &host_ifname[HOST_PREFIX.len()..])
}

pub const TOMBSTONE_PREFIX: &str = "sx";

/// Whether `name` has the shape of a tombstone.
pub fn is_tombstone(name: &str) -> bool {
    name.starts_with(TOMBSTONE_PREFIX)
        && is_host_ifname(&format!("{HOST_PREFIX}{}", &name[TOMBSTONE_PREFIX.len()..]))
}

/// Whether `name` has the shape of [`host_ifname`]'s output.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 11
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Locally administered unicast MACs: `02:5c:…` on the node side, `02:5d:…`
/// in the pod. Fixed MACs let each side get a permanent neighbour entry for
/// the other at ADD time, so the first packet waits for no ARP/ND.
pub fn macs(container_id: &str, ifname: &str) -> ([u8; 6], [u8; 6]) {
    let h = fnv1a(&[container_id, ifname, "mac"]).to_be_bytes();
    (
        [0x02, 0x5c, h[0], h[1], h[2], h[3]],
        [0x02, 0x5d, h[0], h[1], h[2], h[3]],
    )
}

/// The alias set on the host-side link: lets GC recognise our links even
/// when their endpoint record is gone. None when it would not fit (128 bytes).
pub fn host_alias(network: &str, container_id: &str, ifname: &str) -> Option<String> {
    let a = format!("sluice:{network}:{container_id}:{ifname}");
    (a.len() < 128).then_some(a)
}

/// Parses an alias back into (network, container ID, ifname).
pub fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let rest = alias.strip_prefix("sluice:")?;
    let mut it = rest.splitn(3, ':');
    Some((it.next()?, it.next()?, it.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: &str = "sl93a6975b88d";

    #[test]
    fn names_are_stable_and_short() {
        let n = host_ifname("abc", "eth0");
        assert_eq!(n, host_ifname("abc", "eth0"));
        assert_eq!(n.len(), 13);
        assert!(n.starts_with("sl"));
        assert_ne!(n, host_ifname("abc", "eth1"));
        assert_ne!(host_ifname("ab", "ceth0"), host_ifname("abc", "eth0"));
        // Pinned: changing the hash would orphan links across an upgrade.
        assert_eq!(host_ifname("abc", "eth0"), PINNED);
        assert!(is_host_ifname(&n));
        assert!(!is_host_ifname("sl12345"));
        assert!(!is_host_ifname("eth0"));
    }

    #[test]
    fn macs_are_local_unicast_and_differ() {
        let (h, p) = macs("abc", "eth0");
        assert_eq!(h[0] & 0x03, 0x02);
        assert_eq!(p[0] & 0x03, 0x02);
        assert_ne!(h, p);
    }

    #[test]
    fn alias_round_trips() {
        let a = host_alias("k8s-pod-network", "abc", "eth0").unwrap();
        assert_eq!(parse_alias(&a), Some(("k8s-pod-network", "abc", "eth0")));
        assert_eq!(parse_alias("other"), None);
        assert!(host_alias(&"n".repeat(200), "abc", "eth0").is_none());
    }
}
