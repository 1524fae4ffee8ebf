//! Makes the service range local to this host: one `local` route (`ip route replace local
//! 10.96.0.0/16 dev lo table local`, the "AnyIP" trick), so the load balancer can listen on any
//! service's virtual IP without an address per service, and traffic to one — from a process on
//! the host or from a container behind a Docker bridge — is delivered here. Sent over rtnetlink
//! directly: an agent in a `FROM scratch` image has no `ip` to run. Needs `CAP_NET_ADMIN`.

use std::os::fd::AsRawFd;

use api::ServiceRange;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

// From <linux/netlink.h> and <linux/rtnetlink.h>: stable kernel ABI.
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot make the service range {range} local to this host ({detail}): service names and \
     virtual IPs need the agent to run as root (CAP_NET_ADMIN); published ports still work"
)]
pub struct RouteError {
    pub range: ServiceRange,
    pub detail: String,
}

/// Adds (or replaces) the local route of `range` on the loopback device.
pub fn make_local(range: ServiceRange) -> Result<(), RouteError> {
    let fail = |detail: String| RouteError { range, detail };
    let lo = nix::net::if_::if_nametoindex("lo").map_err(|e| fail(format!("no lo: {e}")))?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| fail(format!("netlink socket: {e}")))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| fail(format!("netlink: {e}")))?;
    let message = new_route(range, lo);
    send(fd.as_raw_fd(), &message, MsgFlags::empty())
        .map_err(|e| fail(format!("netlink send: {e}")))?;
    let mut answer = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())
        .map_err(|e| fail(format!("netlink recv: {e}")))?;
    match ack_error(&answer[..n]) {
        Some(0) => Ok(()),
        Some(errno) => Err(fail(nix::errno::Errno::from_raw(-errno).desc().to_string())),
        None => Err(fail(
            "the kernel's answer was not an acknowledgement".into(),
        )),
    }
}

/// An `RTM_NEWROUTE` request: header, `rtmsg`, then the destination and the device.
fn new_route(range: ServiceRange, device: u32) -> Vec<u8> {
    let mut body = vec![
        AF_INET,
        range.prefix(),
        0, // source length
        0, // tos
        RT_TABLE_LOCAL,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes()); // flags
    attribute(&mut body, RTA_DST, &range.network().octets());
    attribute(&mut body, RTA_OIF, &device.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let len = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut message = Vec::with_capacity(16 + body.len());
    message.extend_from_slice(&len.to_ne_bytes());
    message.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    message.extend(body);
    message
}

/// A route attribute: length, type, value, padded to 4 bytes.
fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The error code of an `NLMSG_ERROR` answer (0 is an acknowledgement).
fn ack_error(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    Some(i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_laid_out_as_rtnetlink_reads_it() {
        let range: ServiceRange = "10.96.0.0/16".parse().unwrap();
        let message = new_route(range, 1);
        assert_eq!(message.len(), 16 + 12 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 44);
        assert_eq!(&message[16..24], &[2, 16, 0, 0, 255, 4, 254, 2]);
        assert_eq!(&message[32..36], &[10, 96, 0, 0], "the destination");
        assert_eq!(u32::from_ne_bytes(message[40..44].try_into().unwrap()), 1);
    }

    #[test]
    fn an_answer_that_is_not_an_ack_is_not_taken_for_one() {
        assert_eq!(ack_error(&[]), None);
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_error(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(ack_error(&ack), Some(-1));
    }
}
