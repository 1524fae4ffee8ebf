//! The cluster CA and the node certificates it signs (ECDSA P-256, by rcgen).
//!
//! A node certificate names its role with a marker DNS name (`outpost-server` or
//! `outpost-agent`) beside the IP addresses it serves on; a joiner may ask only for IP
//! addresses, so it can never claim a marker. Which node a certificate belongs to is kept by
//! the servers (its fingerprint in the replicated state), which is also what `node rm` revokes.
//! Certificates do not expire (rcgen's default validity runs to the year 4096): revocation is
//! how one is withdrawn.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::PkiError;
use crate::token::{JoinToken, Role, derived_secret, sha256_hex};

/// The role a node certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Server,
    Agent,
}

impl NodeRole {
    /// The DNS name every certificate of this role carries, and a peer checks for.
    pub fn marker(self) -> &'static str {
        match self {
            NodeRole::Server => "outpost-server",
            NodeRole::Agent => "outpost-agent",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Server => "server",
            NodeRole::Agent => "agent",
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

impl Identity {
    /// sha256 of the certificate's DER: what the servers know the certificate by.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(sha256_hex(crate::tls::first_cert(&self.cert_pem)?.as_ref()))
    }
}

/// The cluster CA: its certificate and the key that signs node certificates.
pub struct Ca {
    identity: Identity,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(..)")
    }
}

/// The CA's parameters. An issuer is rebuilt from them and the key, so the subject it writes
/// into every node certificate is byte for byte the CA certificate's own.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Outpost cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn rcgen_err(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

impl Ca {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = ca_params().self_signed(&key).map_err(rcgen_err)?;
        Ok(Ca {
            identity: Identity {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            key,
        })
    }

    /// The CA kept in files (`ca.pem`, `ca-key.pem`).
    pub fn from_pem(identity: Identity) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(&identity.key_pem)
            .map_err(|e| PkiError::Pem(format!("the CA key: {e}")))?;
        crate::tls::first_cert(&identity.cert_pem)?;
        Ok(Ca { identity, key })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn cert_pem(&self) -> &str {
        &self.identity.cert_pem
    }

    /// sha256 of the CA certificate's DER: what join tokens carry.
    pub fn digest(&self) -> Result<String, PkiError> {
        ca_digest(&self.identity.cert_pem)
    }

    /// The join token of `role` at `generation`: this CA's digest and the secret derived from
    /// its key ([`crate::token::derived_secret`]), the same on every server holding the key.
    pub fn join_token(&self, role: Role, generation: u64) -> Result<JoinToken, PkiError> {
        Ok(JoinToken {
            ca_digest: self.digest()?,
            secret: derived_secret(&self.key.serialize_der(), role, generation),
        })
    }

    /// The cluster key that seals secrets, derived from this CA's key.
    pub fn vault(&self) -> crate::Vault {
        crate::Vault::from_key_material(&self.key.serialize_der())
    }

    /// The cluster's key that signs image bundles at `generation` ([`bundle_key`] of this CA's
    /// key): the same on every server, a new one after each revocation.
    pub fn bundle_key(&self, generation: u64) -> ring::signature::Ed25519KeyPair {
        bundle_key(&self.key.serialize_der(), generation)
    }

    /// A certificate for node `name` in `role`, valid for the addresses `ips`.
    pub fn issue(&self, role: NodeRole, name: &str, ips: &[IpAddr]) -> Result<Identity, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = dn;
        let marker = role.marker().try_into().map_err(rcgen_err)?;
        params.subject_alt_names = std::iter::once(SanType::DnsName(marker))
            .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The ed25519 key whose seed is HMAC-SHA256(`material`, `outpost bundle key <generation>`):
/// derived, so every server that holds the material signs alike and none has to be stored.
pub fn bundle_key(material: &[u8], generation: u64) -> ring::signature::Ed25519KeyPair {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, material);
    let seed = ring::hmac::sign(&key, format!("outpost bundle key {generation}").as_bytes());
    ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
        .expect("a 32-byte seed makes an ed25519 key")
}

/// sha256 of the DER of the (first) certificate in `ca_pem`.
pub fn ca_digest(ca_pem: &str) -> Result<String, PkiError> {
    Ok(sha256_hex(crate::tls::first_cert(ca_pem)?.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_read_back_from_its_files_derives_the_same_join_tokens_and_another_ca_others() {
        let ca = Ca::generate().unwrap();
        // What a joined server holds: the founder's PEM files, parsed again.
        let copy = Ca::from_pem(ca.identity().clone()).unwrap();
        let token = ca.join_token(Role::Agent, 3).unwrap();
        assert_eq!(copy.join_token(Role::Agent, 3).unwrap(), token);
        assert_eq!(token.ca_digest, ca.digest().unwrap());
        assert_ne!(ca.join_token(Role::Agent, 4).unwrap(), token);
        assert_ne!(ca.join_token(Role::Server, 3).unwrap().secret, token.secret);
        let other = Ca::generate().unwrap();
        assert_ne!(
            other.join_token(Role::Agent, 3).unwrap().secret,
            token.secret
        );
    }
}
