//! The client address a request is attributed to.

use std::net::IpAddr;

/// The address to throttle and log: the peer, or — only when the peer is a
/// configured trusted proxy — the last address of `X-Forwarded-For` that is
/// not itself a trusted proxy (the rightmost untrusted hop; anything left
/// of it was written by the client and can be forged).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let hops: Vec<IpAddr> = header.split(',').filter_map(|h| h.trim().parse().ok()).collect();
    hops.into_iter().rev().find(|hop| !trusted.contains(hop)).unwrap_or(peer)
}

/// The unit failures and connections are counted by: an IPv4 address, or
/// the /64 of an IPv6 address (one host usually holds a whole /64, so
/// counting single v6 addresses would let it rotate through them).
pub fn client_bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [ip("10.0.0.1")];
        assert_eq!(client_address(ip("127.0.0.9"), Some("1.2.3.4"), &trusted), ip("127.0.0.9"));
        assert_eq!(client_address(ip("10.0.0.1"), Some("1.2.3.4"), &trusted), ip("1.2.3.4"));
        // The client wrote the left part; the proxy appended the right one.
        assert_eq!(client_address(ip("10.0.0.1"), Some("6.6.6.6, 1.2.3.4"), &trusted), ip("1.2.3.4"));
        assert_eq!(client_address(ip("10.0.0.1"), Some("1.2.3.4, 10.0.0.1"), &trusted), ip("1.2.3.4"));
        assert_eq!(client_address(ip("10.0.0.1"), Some("garbage"), &trusted), ip("10.0.0.1"));
        assert_eq!(client_address(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(client_bucket(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_bucket(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
        assert_eq!(client_bucket(ip("127.0.0.2")), ip("127.0.0.2"));
    }
}
