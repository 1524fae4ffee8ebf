//! How a service's traffic is spread over its ready replicas: `load_balancer:` in native specs,
//! `x-outpost-load-balancer:` in Compose. The node's load balancer (crate `lb`) does the
//! spreading; this is only what the user asks for.
//!
//! ```yaml
//! load_balancer:
//!   algorithm: consistent_hash     # round_robin (default), weighted_round_robin,
//!                                  # least_connections, consistent_hash, p2c
//!   hash_on: header:X-User         # client_ip (default), header:NAME, cookie:NAME
//!   node_weights: { edge-1: 3 }    # weighted_round_robin: share per node (default 1)
//!   revision_weights: { 4: 9 }     # … or per revision of the service
//!   proxy_protocol: true           # tcp ports: a PROXY protocol v2 header to each replica
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, Path};
use crate::yaml::Yaml;

/// The largest weight: shares are relative, and a small range keeps a weighted schedule small.
pub const MAX_BALANCE_WEIGHT: u32 = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerSpec {
    #[serde(default)]
    pub algorithm: BalanceAlgorithm,
    /// What `consistent_hash` keeps sticky.
    #[serde(default, skip_serializing_if = "HashOn::is_default")]
    pub hash_on: HashOn,
    /// `weighted_round_robin`: each replica's share by the node it runs on (1 when unnamed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_weights: BTreeMap<String, u32>,
    /// `weighted_round_robin`: each replica's share by the revision it runs (1 when unnamed);
    /// multiplied by its node's weight when both are given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revision_weights: BTreeMap<u64, u32>,
    /// TCP ports: each connection to a replica starts with a PROXY protocol v2 header naming
    /// the client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

impl LoadBalancerSpec {
    pub fn is_default(&self) -> bool {
        *self == LoadBalancerSpec::default()
    }

    /// A replica's share under `weighted_round_robin`.
    pub fn weight(&self, node: &str, revision: u64) -> u32 {
        let by_node = self.node_weights.get(node).copied().unwrap_or(1);
        let by_revision = self.revision_weights.get(&revision).copied().unwrap_or(1);
        by_node.saturating_mul(by_revision).min(MAX_BALANCE_WEIGHT)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalanceAlgorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    ConsistentHash,
    P2c,
}

const ALGORITHMS: &[(&str, BalanceAlgorithm)] = &[
    ("round_robin", BalanceAlgorithm::RoundRobin),
    ("weighted_round_robin", BalanceAlgorithm::WeightedRoundRobin),
    ("least_connections", BalanceAlgorithm::LeastConnections),
    ("consistent_hash", BalanceAlgorithm::ConsistentHash),
    ("p2c", BalanceAlgorithm::P2c),
];

/// The key of a consistent hash: `client_ip`, `header:NAME` or `cookie:NAME`. A request
/// without the header or cookie, and every TCP connection, hashes by client IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    ClientIp,
    Header(String),
    Cookie(String),
}

impl HashOn {
    pub fn is_default(&self) -> bool {
        *self == HashOn::ClientIp
    }

    fn parse(text: &str) -> Result<HashOn, String> {
        let named = |kind: &str, name: &str| {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b));
            if token {
                Ok(name.to_string())
            } else {
                Err(format!(
                    "{name:?} is not a {kind} name (letters, digits and -_. only)"
                ))
            }
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashOn::ClientIp),
            Some(("header", name)) => Ok(HashOn::Header(named("header", name)?.to_lowercase())),
            Some(("cookie", name)) => Ok(HashOn::Cookie(named("cookie", name)?)),
            _ => Err(format!(
                "{text:?} is not `client_ip`, `header:NAME` or `cookie:NAME`"
            )),
        }
    }
}

const KEYS: &[&str] = &[
    "algorithm",
    "hash_on",
    "node_weights",
    "revision_weights",
    "proxy_protocol",
];

/// Decodes `load_balancer:` (native) or `x-outpost-load-balancer:` (Compose).
pub(crate) fn decode(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<LoadBalancerSpec> {
    let f = d.fields(path, node, KEYS)?;
    let mut spec = LoadBalancerSpec {
        algorithm: f
            .take(d, "algorithm", |d, p, n| d.choice(p, n, ALGORITHMS))
            .unwrap_or_default(),
        hash_on: f
            .take(d, "hash_on", |d, p, n| d.parsed(p, n, HashOn::parse))
            .unwrap_or_default(),
        proxy_protocol: f
            .take(d, "proxy_protocol", Decoder::boolean)
            .unwrap_or(false),
        ..LoadBalancerSpec::default()
    };
    if let Some((p, n)) = f.get("node_weights")
        && let Some(weights) = d.any_fields(&p, n)
    {
        for (key_path, key, value) in weights.entries() {
            if let Some(w) = weight(d, &key_path, value) {
                spec.node_weights.insert(key.to_string(), w);
            }
        }
    }
    if let Some((p, n)) = f.get("revision_weights")
        && let Some(weights) = d.any_fields(&p, n)
    {
        for (key_path, key, value) in weights.entries() {
            let Ok(revision) = key.parse::<u64>() else {
                d.error(&key_path, format!("{key:?} is not a revision number"));
                continue;
            };
            if let Some(w) = weight(d, &key_path, value) {
                spec.revision_weights.insert(revision, w);
            }
        }
    }
    Some(spec)
}

fn weight(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<u32> {
    let w: u32 = d.number(path, node)?;
    if w == 0 || w > MAX_BALANCE_WEIGHT {
        d.error(
            path,
            format!("weight {w} is out of range (1 to {MAX_BALANCE_WEIGHT})"),
        );
        return None;
    }
    Some(w)
}

/// The rules for a spec that arrives as JSON (the API): each problem's field, under
/// `load_balancer`, and message.
pub(crate) fn check(spec: &LoadBalancerSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let nodes = (spec.node_weights.iter()).map(|(k, w)| (format!("node_weights.{k}"), *w));
    let revisions =
        (spec.revision_weights.iter()).map(|(k, w)| (format!("revision_weights.{k}"), *w));
    for (field, w) in nodes.chain(revisions) {
        if w == 0 || w > MAX_BALANCE_WEIGHT {
            let message = format!("weight {w} is out of range (1 to {MAX_BALANCE_WEIGHT})");
            problems.push((field, message));
        }
    }
    let written = match &spec.hash_on {
        HashOn::ClientIp => None,
        HashOn::Header(name) => Some(format!("header:{name}")),
        HashOn::Cookie(name) => Some(format!("cookie:{name}")),
    };
    if let Some(Err(message)) = written.map(|w| HashOn::parse(&w)) {
        problems.push(("hash_on".to_string(), message));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_read_as_written() {
        assert_eq!(HashOn::parse("client_ip"), Ok(HashOn::ClientIp));
        assert_eq!(
            HashOn::parse("header:X-User"),
            Ok(HashOn::Header("x-user".into()))
        );
        assert_eq!(
            HashOn::parse("cookie:session"),
            Ok(HashOn::Cookie("session".into()))
        );
        assert!(HashOn::parse("header:").is_err());
        assert!(HashOn::parse("header:a b").is_err());
        assert!(HashOn::parse("url").unwrap_err().contains("client_ip"));
    }

    #[test]
    fn a_spec_arriving_as_json_is_checked_as_the_yaml_is() {
        let spec = LoadBalancerSpec {
            hash_on: HashOn::Cookie("a b".into()),
            node_weights: BTreeMap::from([("edge-1".into(), 0)]),
            ..LoadBalancerSpec::default()
        };
        let problems = check(&spec);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["node_weights.edge-1", "hash_on"]);
        assert!(problems[1].1.contains("cookie name"), "{:?}", problems[1]);
    }

    #[test]
    fn weights_multiply_by_node_and_revision_within_the_bound() {
        let spec = LoadBalancerSpec {
            node_weights: BTreeMap::from([("a".into(), 3)]),
            revision_weights: BTreeMap::from([(2, 500)]),
            ..LoadBalancerSpec::default()
        };
        assert_eq!(spec.weight("a", 1), 3);
        assert_eq!(spec.weight("b", 1), 1);
        assert_eq!(spec.weight("b", 2), 500);
        assert_eq!(spec.weight("a", 2), MAX_BALANCE_WEIGHT);
    }
}
