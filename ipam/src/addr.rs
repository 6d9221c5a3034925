//! Address arithmetic on `u128`, so one code path serves both families and
//! IPv6 sizes never overflow a narrower integer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address family of an address or subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`]. Callers only pass values that came from an
/// address of `family`, so the v4 truncation never drops set bits.
pub fn from_u128(v: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The host-part mask of a prefix: the bits that vary inside the subnet.
pub fn host_mask(family: Family, prefix: u8) -> u128 {
    let host_bits = u32::from(family.bits() - prefix);
    if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// First and last address of the subnet holding `ip`, as integers.
pub fn bounds(ip: IpAddr, prefix: u8) -> (u128, u128) {
    let hm = host_mask(Family::of(ip), prefix);
    let v = to_u128(ip);
    (v & !hm, v | hm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_cover_both_families_and_extremes() {
        let ip: IpAddr = "10.244.3.7".parse().unwrap();
        let (lo, hi) = bounds(ip, 16);
        assert_eq!(
            from_u128(lo, Family::V4),
            "10.244.0.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            from_u128(hi, Family::V4),
            "10.244.255.255".parse::<IpAddr>().unwrap()
        );
        let (lo, hi) = bounds("::5".parse().unwrap(), 0);
        assert_eq!((lo, hi), (0, u128::MAX));
        let (lo, hi) = bounds("1.2.3.4".parse().unwrap(), 0);
        assert_eq!((lo, hi), (0, u32::MAX as u128));
        let (lo, hi) = bounds("1.2.3.4".parse().unwrap(), 32);
        assert_eq!(lo, hi);
    }
}
