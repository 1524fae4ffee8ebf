//! The cluster's trust: its CA and the node certificates it signs ([`ca`]), join tokens and
//! secret digests ([`token`]), the rustls configurations built on them ([`tls`]), and the
//! cluster key that seals secrets at rest ([`vault`]).
//!
//! No network, files or clock (the one I/O is the kernel's randomness for new keys): callers
//! bring the bytes and keep them. Join secrets are derived from the CA key; secrets are
//! compared in constant time, and only their digests are meant to be stored by servers.

pub mod ca;
pub mod tls;
pub mod token;
pub mod vault;

pub use ca::{Ca, Identity, NodeRole, bundle_key, ca_digest};
pub use tls::{ClientAuth, install_default};
pub use token::{JoinToken, Role, TokenError, derived_secret, secret_digest, secret_matches};
pub use vault::Vault;

/// Files of the cluster's trust in a data dir, each 0600.
pub mod files {
    /// The CA certificate, in every node's data dir and the CLI's.
    pub const CA: &str = "ca.pem";
    /// The CA's key: on servers only, which sign node certificates.
    pub const CA_KEY: &str = "ca-key.pem";
    /// This node's certificate and key.
    pub const CERT: &str = "node.pem";
    pub const KEY: &str = "node-key.pem";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a key or certificate: {0}")]
    Generate(String),
    #[error("cannot read {0}")]
    Pem(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Seal(String),
}

#[cfg(test)]
mod tests;
