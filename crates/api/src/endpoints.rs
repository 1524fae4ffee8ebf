//! What every node's load balancer and DNS server serve: each service's virtual IP, ports and
//! balancing, and the endpoints its traffic may go to (`GET /v1/endpoints`, a blocking query
//! agents hold). Also the cluster's service range, the block virtual IPs come from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The endpoint list, or what changed in it since the index asked with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointList {
    /// Changes when the list does: pass it back as `?index=` to wait for the next change.
    pub index: u64,
    /// The block virtual IPs come from, as `10.96.0.0/16`.
    #[schema(value_type = String)]
    pub service_range: ServiceRange,
    /// `services` is every service; otherwise it holds only those that changed since the index
    /// asked with, and `removed` those that went: a change of one service costs each of
    /// thousands of nodes that service, not the whole list.
    pub full: bool,
    pub services: Vec<ServiceEndpoints>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// One service as the load balancer serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceEndpoints {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Its virtual IP; `None` for a service stored before virtual IPs were given, or past the
    /// end of the service range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<spec::PortSpec>,
    #[serde(default, skip_serializing_if = "spec::LoadBalancerSpec::is_default")]
    pub load_balancer: spec::LoadBalancerSpec,
    /// How long a draining endpoint keeps its requests in flight: the service's `stop_grace`.
    pub drain_ms: u64,
    pub endpoints: Vec<TaskEndpoint>,
}

/// A task the service's traffic may go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskEndpoint {
    pub task: String,
    pub node: String,
    /// The node's address, as the agent advertises it.
    #[schema(value_type = String)]
    pub host: IpAddr,
    /// Port name → the host port the task answers on there.
    pub ports: BTreeMap<String, u16>,
    pub version: u64,
    /// `draining`: the task is being stopped; it gets no new requests and those in flight
    /// finish within `drain_ms`.
    pub draining: bool,
}

/// One service's traffic as the nodes' load balancers see it (`GET /v1/services/{name}/traffic`):
/// its endpoints from the control plane, and each node's listeners with their counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceTraffic {
    pub service: ServiceEndpoints,
    pub listeners: Vec<ListenerTraffic>,
    /// Nodes whose agents did not answer, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// One listener of one node: a port of a service on its virtual IP or published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListenerTraffic {
    pub node: String,
    pub service: String,
    pub port: String,
    /// Where it listens, as `10.96.0.2:80` or `0.0.0.0:8080`.
    pub listen: String,
    pub counters: Counters,
    pub endpoints: Vec<EndpointTraffic>,
}

/// How one endpoint stands in one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointTraffic {
    pub task: String,
    pub addr: String,
    /// `ready`, `ejected` (failed and kept out for a while) or `draining`.
    pub health: String,
    pub counters: Counters,
}

/// Counts since the listener started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    pub ejections: u64,
    pub in_flight: u64,
}

/// An IPv4 block: where services' virtual IPs come from. Offsets count from its network
/// address; offset 1 is the nodes' DNS server ([`crate::DNS_VIP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceRange {
    network: Ipv4Addr,
    prefix: u8,
}

impl ServiceRange {
    /// 10.96.0.0/16, Kubernetes' default service range: private, and one operators know to
    /// keep clear of their sites' own addressing. 65,533 services.
    pub const DEFAULT: ServiceRange = ServiceRange {
        network: Ipv4Addr::new(10, 96, 0, 0),
        prefix: 16,
    };

    /// The address at `offset`, if it is inside the block and not its broadcast address.
    pub fn addr(&self, offset: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        (u64::from(offset) + 1 < size).then(|| Ipv4Addr::from(u32::from(self.network) + offset))
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }
}

impl fmt::Display for ServiceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for ServiceRange {
    type Err = String;

    /// `A.B.C.D/N` with N from 8 to 28 (at least 14 addresses) and no host bits set.
    fn from_str(text: &str) -> Result<ServiceRange, String> {
        let wrong = || format!("{text:?} is not an IPv4 block like 10.96.0.0/16");
        let (ip, prefix) = text.split_once('/').ok_or_else(wrong)?;
        let network: Ipv4Addr = ip.parse().map_err(|_| wrong())?;
        let prefix: u8 = prefix.parse().map_err(|_| wrong())?;
        if !(8..=28).contains(&prefix) {
            return Err(format!(
                "{text:?}: the prefix must be 8 to 28 (a /28 holds 13 services)"
            ));
        }
        let range = ServiceRange { network, prefix };
        if u32::from(network) & !range.mask() != 0 {
            return Err(format!(
                "{text:?} has host bits set: write its network address, {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & range.mask())
            ));
        }
        Ok(range)
    }
}

impl TryFrom<String> for ServiceRange {
    type Error = String;
    fn try_from(text: String) -> Result<ServiceRange, String> {
        text.parse()
    }
}

impl From<ServiceRange> for String {
    fn from(range: ServiceRange) -> String {
        range.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_gives_addresses_inside_it_only() {
        let range: ServiceRange = "10.96.3.0/24".parse().unwrap();
        assert_eq!(range.addr(1), Some(Ipv4Addr::new(10, 96, 3, 1)));
        assert_eq!(range.addr(254), Some(Ipv4Addr::new(10, 96, 3, 254)));
        assert_eq!(range.addr(255), None, "the broadcast address");
        assert!(range.contains(Ipv4Addr::new(10, 96, 3, 77)));
        assert!(!range.contains(Ipv4Addr::new(10, 96, 4, 1)));
        assert_eq!(range.to_string(), "10.96.3.0/24");
        assert_eq!(
            ServiceRange::DEFAULT.addr(65_534),
            Some(Ipv4Addr::new(10, 96, 255, 254))
        );
        assert_eq!(ServiceRange::DEFAULT.addr(65_535), None);
    }

    #[test]
    fn a_malformed_range_is_refused_saying_why() {
        let err = "10.96.0.1/16".parse::<ServiceRange>().unwrap_err();
        assert!(err.contains("10.96.0.0/16"), "{err}");
        assert!("10.96.0.0/30".parse::<ServiceRange>().is_err());
        assert!("10.96.0.0".parse::<ServiceRange>().is_err());
        assert!("fd00::/64".parse::<ServiceRange>().is_err());
    }
}
