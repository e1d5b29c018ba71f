//! What counts as one client address wherever the server keys something by address (the
//! failed-login limits, the security log's sources): [`address_key`]. Everything keyed by
//! a client's address goes through it, so no place masks addresses its own way.
//!
//! An IPv6 client is given a /64 at least (SLAAC, privacy addresses: RFC 4941 hands a
//! host a fresh address whenever it likes), so a limit per IPv6 address is a limit per
//! guess: one /64 is one address here. An IPv4 client reaching a dual-stack socket shows up
//! as `::ffff:a.b.c.d`: it is its IPv4 address, not part of the one /64 (`::/64`) every
//! IPv4 client would otherwise share.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One client address as limits count it: an IPv4 address, or an IPv6 /64 (its network
/// part; the host bits are zero). Shown as `192.0.2.7` or `2001:db8:1:2::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressKey {
    /// An IPv4 address (also one that came IPv4-mapped).
    V4(Ipv4Addr),
    /// An IPv6 /64, host bits cleared.
    V6Net(Ipv6Addr),
}

/// The [`AddressKey`] of a client at `ip`: IPv4 as it is; IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`) as that IPv4 address; any other IPv6 address as its /64.
pub fn address_key(ip: IpAddr) -> AddressKey {
    match ip {
        IpAddr::V4(v4) => AddressKey::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AddressKey::V4(v4),
            None => AddressKey::V6Net(Ipv6Addr::from_bits(v6.to_bits() & !0u128 << 64)),
        },
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressKey::V4(v4) => write!(f, "{v4}"),
            AddressKey::V6Net(net) => write!(f, "{net}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> AddressKey {
        address_key(text.parse().unwrap())
    }

    #[test]
    fn an_ipv6_64_is_one_address_and_a_mapped_ipv4_address_is_itself() {
        // One /64, however the host bits are chosen.
        let net = key("2001:db8:1:2::1");
        for same in [
            "2001:db8:1:2::",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:a1b2:c3d4:e5f6:789",
        ] {
            assert_eq!(key(same), net, "{same}");
        }
        // Its neighbours are other addresses.
        for other in [
            "2001:db8:1:3::1",
            "2001:db8:1:1:ffff:ffff:ffff:ffff",
            "2001:db8::1",
        ] {
            assert_ne!(key(other), net, "{other}");
        }
        assert_eq!(net.to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("::1").to_string(), "::/64");
        // IPv4, and IPv4 arriving mapped on a dual-stack socket, are the same address,
        // each its own: not one /64 (::ffff:0:0/96 lies in ::/64) for every IPv4 client.
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("::ffff:192.0.2.7").to_string(), "192.0.2.7");
        assert_ne!(key("::ffff:192.0.2.7"), key("::ffff:192.0.2.8"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        // A mapped address is not confused with ::/64 (where ::1 is).
        assert_ne!(key("::ffff:127.0.0.1"), key("::1"));
    }
}
