//! Fixed host ports as a placement constraint: a node can give a port (per protocol and
//! address) to one task only, so two tasks that both ask for it never share a node.

use std::fmt;
use std::net::IpAddr;

use api::{Service, Task};
use spec::{Protocol, ServiceSpec};

/// A host port a task binds on its node: `host_port` of one of its spec's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub port: u16,
    pub protocol: Protocol,
    /// The address it is bound to; `None` for every address (also `0.0.0.0` and `::`).
    pub ip: Option<IpAddr>,
}

impl HostPort {
    /// Whether two bindings cannot both hold on one node: the same port and protocol on
    /// addresses that overlap (every address overlaps each one).
    pub fn clashes(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol.is_udp() == other.protocol.is_udp()
            && (self.ip.is_none() || other.ip.is_none() || self.ip == other.ip)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = if self.protocol.is_udp() { "udp" } else { "tcp" };
        match self.ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}/{protocol}", self.port),
            Some(ip) => write!(f, "{ip}:{}/{protocol}", self.port),
            None => write!(f, "{}/{protocol}", self.port),
        }
    }
}

/// The fixed host ports of a spec; the agent picks the others from its own range, where they
/// never clash.
pub(crate) fn fixed(spec: &ServiceSpec) -> impl Iterator<Item = HostPort> + '_ {
    spec.ports.iter().filter_map(|p| {
        let ip = (p.host_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        Some(HostPort {
            port: p.host_port?,
            protocol: p.protocol,
            ip,
        })
    })
}

/// The spec a task runs: its own version's, while a revision of it is kept; the current one
/// otherwise.
pub(crate) fn spec_of<'a>(service: &'a Service, task: &Task) -> &'a ServiceSpec {
    if task.version == service.version {
        return &service.spec;
    }
    (service.revisions.iter())
        .find(|r| r.version == task.version)
        .map_or(&service.spec, |r| &r.spec)
}

/// Whether `wanted` can be bound beside everything `claimed`.
pub(crate) fn free(claimed: &[HostPort], wanted: &[HostPort]) -> bool {
    !claimed.iter().any(|c| wanted.iter().any(|w| w.clashes(c)))
}

/// The ports of `wanted` that some of `claimed` holds, each once, for a reason.
pub(crate) fn taken(claimed: &[HostPort], wanted: &[HostPort]) -> Vec<HostPort> {
    let mut out: Vec<HostPort> = Vec::new();
    for w in wanted
        .iter()
        .filter(|w| claimed.iter().any(|c| w.clashes(c)))
    {
        if !out.contains(w) {
            out.push(*w);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u16, protocol: Protocol, ip: Option<&str>) -> HostPort {
        HostPort {
            port,
            protocol,
            ip: ip.map(|ip| ip.parse().unwrap()),
        }
    }

    #[test]
    fn ports_clash_on_the_same_number_protocol_and_an_overlapping_address() {
        let any = port(8080, Protocol::Tcp, None);
        assert!(any.clashes(&port(8080, Protocol::Tcp, None)));
        assert!(any.clashes(&port(8080, Protocol::Tcp, Some("127.0.0.1"))));
        assert!(
            !any.clashes(&port(8080, Protocol::Udp, None)),
            "udp beside tcp"
        );
        assert!(!any.clashes(&port(8081, Protocol::Tcp, None)));
        let one = port(8080, Protocol::Tcp, Some("10.0.0.1"));
        assert!(!one.clashes(&port(8080, Protocol::Tcp, Some("10.0.0.2"))));
        assert!(one.clashes(&port(8080, Protocol::Tcp, Some("10.0.0.1"))));
    }

    #[test]
    fn unspecified_addresses_mean_every_address() {
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.ports = vec![spec::PortSpec::named("http"), spec::PortSpec::named("dns")];
        spec.ports[0].host_port = Some(8080);
        spec.ports[0].host_ip = Some("0.0.0.0".into());
        assert_eq!(
            fixed(&spec).collect::<Vec<_>>(),
            [port(8080, Protocol::Tcp, None)],
            "a port without host_port is the agent's to pick"
        );
        assert_eq!(
            port(53, Protocol::Udp, Some("::1")).to_string(),
            "[::1]:53/udp"
        );
        assert_eq!(port(8080, Protocol::Tcp, None).to_string(), "8080/tcp");
    }
}
