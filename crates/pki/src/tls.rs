//! rustls configurations on the cluster CA: what servers and agents serve with, what nodes and
//! the CLI connect with, and the one a joiner uses before it holds the CA, which trusts a server
//! only if its chain holds the CA whose digest the token names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::PkiError;
use crate::ca::{Identity, NodeRole};
use crate::token::sha256_hex;

/// The crypto provider every configuration here is built with (ring: no C toolchain needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process default; call once at start-up. A second call is harmless.
pub fn install_default() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(format!("a certificate: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate in it".into()));
    }
    Ok(certs)
}

/// The first certificate of a PEM text.
pub fn first_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    certs(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Pem("no certificate in it".into()))
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Pem(format!("a private key: {e}")))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::Pem(format!("the CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

/// Whether a client must present a certificate of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A server's API: nodes present theirs; the CLI and joiners present none.
    Optional,
    /// An agent's API: only nodes of the cluster connect (and the agent checks for servers).
    Required,
}

/// What a node serves with: its certificate and the CA's (so a joiner can check the CA
/// against its token), client certificates checked against the CA.
pub fn server_config(
    ca_pem: &str,
    me: &Identity,
    auth: ClientAuth,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone());
    let verifier = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
        ClientAuth::Required => builder.build(),
    }
    .map_err(tls_err)?;
    let mut chain = certs(&me.cert_pem)?;
    chain.push(first_cert(ca_pem)?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key(&me.key_pem)?)
        .map_err(tls_err)?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// HTTP/2 first, so that a node's concurrent calls (its heartbeat, its report, its watch) share
/// one connection instead of holding one each; HTTP/1.1 for clients that speak only that.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// What a node or the CLI connects with: the other end's certificate checked against the CA
/// and for a node's role ([`NodeByRole`]), and the node's own certificate when it has one.
pub fn client_config(ca_pem: &str, me: Option<&Identity>) -> Result<ClientConfig, PkiError> {
    let provider = provider();
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(ca_pem)?,
        provider.clone(),
    )
    .build()
    .map_err(tls_err)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeByRole { inner }));
    let mut config = match me {
        None => builder.with_no_client_auth(),
        Some(me) => builder
            .with_client_auth_cert(certs(&me.cert_pem)?, key(&me.key_pem)?)
            .map_err(tls_err)?,
    };
    config.alpn_protocols = alpn();
    Ok(config)
}

/// What a joiner connects with before it has the CA: the server's chain must hold a CA
/// certificate whose sha256 is `ca_digest`, and the server's certificate must be signed by it
/// for the address dialled. Nothing is sent before that holds.
pub fn pinned_client_config(ca_digest: &str) -> Result<ClientConfig, PkiError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa {
        digest: ca_digest.to_string(),
        provider: provider.clone(),
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Whether `cert` is a node certificate of `role` (it carries the role's marker name). Whether
/// it chains to the CA is the TLS handshake's business.
pub fn has_role(cert: &CertificateDer<'_>, role: NodeRole) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(role.marker()) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// sha256 of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    sha256_hex(cert.as_ref())
}

/// The check of the node at the other end of a connection: its certificate chains to the
/// cluster CA and names a node's role (server or agent), whatever address was dialled. The CA
/// signs only the cluster's own nodes, so the role is the identity: a server stays the same
/// server behind a proxy, a NAT or a changed address, as Nomad checks `server.<region>.nomad`
/// rather than an IP. What a caller may do is then decided by its certificate, not its address.
#[derive(Debug)]
struct NodeByRole {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeByRole {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = None;
        for role in [NodeRole::Server, NodeRole::Agent] {
            let name = ServerName::try_from(role.marker())
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            match (self.inner).verify_server_cert(
                end_entity,
                intermediates,
                &name,
                ocsp_response,
                now,
            ) {
                Ok(verified) => return Ok(verified),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no role to check".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The joiner's check: see [`pinned_client_config`].
#[derive(Debug)]
struct PinnedCa {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.digest)
        else {
            return Err(rustls::Error::General(format!(
                "the server's CA is not the one the token names (digest {}): the token is of \
                 another cluster, or the address is not this cluster's server; the secret was \
                 not sent",
                self.digest
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        NodeByRole { inner: verifier }.verify_server_cert(
            end_entity,
            &[],
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
