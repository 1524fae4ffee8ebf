//! The PROXY protocol's version 2 header (HAProxy's `proxy-protocol.txt`, section 2.2), sent to
//! an endpoint before a TCP connection's bytes so it learns the client's address.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// The longest header: 16 bytes, then two IPv6 addresses and two ports.
pub const MAX_LEN: usize = 16 + 36;

/// The header for a connection from `source` to `destination` (the proxy's own address that the
/// client reached), in `out`; returns its length. When one address is IPv4 and the other IPv6,
/// both are sent as IPv6.
pub fn header(source: SocketAddr, destination: SocketAddr, out: &mut [u8; MAX_LEN]) -> usize {
    out[..12].copy_from_slice(&SIGNATURE);
    out[12] = VERSION_PROXY;
    let (source_ip, destination_ip) = (
        crate::pick::client_ip(source.ip()),
        crate::pick::client_ip(destination.ip()),
    );
    let addresses = &mut out[16..];
    let len = match (source_ip, destination_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses[..4].copy_from_slice(&s.octets());
            addresses[4..8].copy_from_slice(&d.octets());
            addresses[8..10].copy_from_slice(&source.port().to_be_bytes());
            addresses[10..12].copy_from_slice(&destination.port().to_be_bytes());
            out[13] = TCP_OVER_IPV4;
            12u16
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            addresses[..16].copy_from_slice(&v6(s).octets());
            addresses[16..32].copy_from_slice(&v6(d).octets());
            addresses[32..34].copy_from_slice(&source.port().to_be_bytes());
            addresses[34..36].copy_from_slice(&destination.port().to_be_bytes());
            out[13] = TCP_OVER_IPV6;
            36u16
        }
    };
    out[14..16].copy_from_slice(&len.to_be_bytes());
    16 + usize::from(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_as_the_spec_lays_it_out() {
        let mut out = [0; MAX_LEN];
        let n = header(
            "192.0.2.1:56324".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
            &mut out,
        );
        assert_eq!(n, 28);
        let mut expected = SIGNATURE.to_vec();
        expected.extend([0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        expected.extend(56324u16.to_be_bytes());
        expected.extend(443u16.to_be_bytes());
        assert_eq!(&out[..n], &expected[..]);
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let mut out = [0; MAX_LEN];
        let n = header(
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
            &mut out,
        );
        assert_eq!(n, 52);
        assert_eq!(out[13], TCP_OVER_IPV6);
        assert_eq!(&out[14..16], &[0, 36]);
        assert_eq!(
            &out[16..32],
            &"::ffff:192.0.2.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn mapped_ipv4_clients_are_sent_as_ipv4() {
        let mut out = [0; MAX_LEN];
        let n = header(
            "[::ffff:10.0.0.1]:1".parse().unwrap(),
            "[::ffff:10.0.0.2]:2".parse().unwrap(),
            &mut out,
        );
        assert_eq!(n, 28);
        assert_eq!(&out[16..20], &[10, 0, 0, 1]);
    }
}
