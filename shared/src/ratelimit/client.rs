//! Who the client is: its address, from the socket, or from `X-Forwarded-For` only when
//! the socket's peer is a proxy the operator trusts (`trusted_proxies`).
//!
//! `X-Forwarded-For` is a list each proxy appends its own peer to, so only its right end
//! is trustworthy: everything left of what the first trusted proxy appended was written
//! by the client. The client address is therefore the right-most entry that is not itself
//! a trusted proxy, and a header that cannot be read there is no evidence at all (the
//! peer is used).

use std::fmt;
use std::net::IpAddr;

/// One trusted network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `v6/n`; a bare address is
    /// one host. The address is masked to its prefix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?
            .to_canonical();
        let bits = bits_of(address);
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self {
            network: mask(address, prefix),
            prefix,
        })
    }

    /// Whether `address` lies in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits_of(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}

/// The address with every bit past `prefix` cleared.
pub(crate) fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed (setting `trusted_proxies`: addresses
/// and CIDRs, comma-separated); empty: none, the socket's peer is the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses the setting; an empty string trusts no proxy.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(Cidr::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `address` is a trusted proxy.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|cidr| cidr.contains(address))
    }
}

/// The setting's form, which [`TrustedProxies::parse`] reads back.
impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cidr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cidr}")?;
        }
        Ok(())
    }
}

/// The client's address: `peer` (the socket's, or on Spin the host's `spin-client-addr`),
/// unless `peer` is a trusted proxy; then the right-most address of `forwarded_for` (the
/// `X-Forwarded-For` values in the order received) that is not a trusted proxy. If every
/// entry is a trusted proxy, the left-most; if the entry reached is unreadable, or there is
/// none, the peer. `None` only when the runtime gave no peer.
pub fn client_address<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let mut leftmost = None;
    for value in forwarded_for.rev() {
        for entry in value.rsplit(',') {
            let Some(hop) = parse_hop(entry) else {
                return Some(peer);
            };
            if !trusted.contains(hop) {
                return Some(hop);
            }
            leftmost = Some(hop);
        }
    }
    Some(leftmost.unwrap_or(peer))
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn resolve(peer: &str, xff: &[&str], trusted: &str) -> IpAddr {
        client_address(
            Some(ip(peer)),
            xff.iter().copied(),
            &TrustedProxies::parse(trusted).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn cidrs_parse_mask_and_match() {
        let net = Cidr::parse(" 10.1.2.3/8 ").unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.200.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.9")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::a00:1")));
        let host = Cidr::parse("::1").unwrap();
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0",
            "host",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::default());
        assert!(TrustedProxies::parse("10.0.0.1, nonsense").is_err());
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(resolve("203.0.113.9", &["1.1.1.1"], ""), ip("203.0.113.9"));
        assert_eq!(
            resolve("203.0.113.9", &["1.1.1.1"], "10.0.0.0/8"),
            ip("203.0.113.9")
        );
        assert_eq!(resolve("::ffff:203.0.113.9", &[], ""), ip("203.0.113.9"));
        assert_eq!(
            client_address(None, [].into_iter(), &TrustedProxies::default()),
            None
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = "10.0.0.0/8, 192.0.2.1";
        // The client forged the left part; the proxies appended the rest.
        assert_eq!(
            resolve("10.0.0.2", &["6.6.6.6, 198.51.100.7, 192.0.2.1"], trusted),
            ip("198.51.100.7")
        );
        // Repeated headers are one list, in order.
        assert_eq!(
            resolve("10.0.0.2", &["6.6.6.6", "198.51.100.7:4711"], trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve("10.0.0.2", &["[2001:db8::5]:443"], trusted),
            ip("2001:db8::5")
        );
        // No header: the proxy itself is the client; only proxies: the left-most.
        assert_eq!(resolve("10.0.0.2", &[], trusted), ip("10.0.0.2"));
        assert_eq!(
            resolve("10.0.0.2", &["10.9.9.9, 192.0.2.1"], trusted),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn unreadable_forwarding_falls_back_to_the_peer() {
        let trusted = "10.0.0.0/8";
        assert_eq!(resolve("10.0.0.2", &["not-an-ip"], trusted), ip("10.0.0.2"));
        assert_eq!(resolve("10.0.0.2", &["1.2.3.4, "], trusted), ip("10.0.0.2"));
        // Garbage the client wrote left of a readable hop does not matter.
        assert_eq!(resolve("10.0.0.2", &["junk, 1.2.3.4"], trusted), ip("1.2.3.4"));
    }
}
