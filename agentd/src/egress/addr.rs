//! What kind of address a DNS answer holds, which decides whether a host rule may pin it.
//!
//! A public name that suddenly answers with `127.0.0.1`, `10.0.0.5` or the cloud metadata
//! endpoint is the classic DNS-rebinding move: it turns "may reach api.example.com" into "may
//! reach whatever the name's owner points it at inside our network". So addresses are sorted
//! into three classes and a host rule pins only what its class allows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address in a DNS answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Globally routable (or at least not known to be local): pinned for any host rule.
    Public,
    /// Loopback, RFC 1918, CGNAT, unique-local and similar: pinned only for a host rule with
    /// `allow_private = true` (an internal name).
    Private,
    /// Link-local (including the cloud metadata endpoints 169.254.169.254 and fd00:ec2::254),
    /// unspecified, multicast and broadcast: never pinned through a name; only a CIDR rule can
    /// allow them.
    Forbidden,
}

impl AddrClass {
    /// The name in records.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Private => "private",
            AddrClass::Forbidden => "link_local_or_special",
        }
    }
}

/// Classifies an address (IPv4-mapped IPv6 addresses as their IPv4 address).
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, ..] = ip.octets();
    if ip.is_link_local() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || a == 0
    {
        return AddrClass::Forbidden;
    }
    let private = ip.is_loopback()
        || ip.is_private()
        // 100.64.0.0/10: carrier-grade NAT, used inside clouds and by Tailscale.
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24: IETF protocol assignments; 198.18.0.0/15: benchmarking; 240/4: reserved.
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240;
    if private {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// AWS's IPv6 instance metadata endpoint.
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let first = ip.segments()[0];
    if ip == EC2_METADATA_V6
        || ip.is_unspecified()
        || ip.is_multicast()
        // fe80::/10: link-local.
        || (first & 0xffc0) == 0xfe80
    {
        return AddrClass::Forbidden;
    }
    // fc00::/7: unique local; fec0::/10: deprecated site-local.
    if ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0 {
        return AddrClass::Private;
    }
    AddrClass::Public
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> AddrClass {
        classify(text.parse().unwrap())
    }

    #[test]
    fn classes() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "203.0.113.5",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(class(public), AddrClass::Public, "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(class(private), AddrClass::Private, "{private}");
        }
        for forbidden in [
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fd00:ec2::254",
            "fe80::1",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(class(forbidden), AddrClass::Forbidden, "{forbidden}");
        }
    }
}
