//! The agent's credentials in its data dir: the cluster CA (`ca.pem`), its own certificate and
//! key (`node.pem`, `node-key.pem`) and the server it joined (`server`), all 0600.
//!
//! The first start joins with a token: the server's chain is checked against the CA digest in
//! the token before the secret is sent ([`client::join`]), and what comes back is kept. Every
//! later start reconnects with the certificate and needs no token.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pki::files::{CA, CERT, KEY};
use pki::{ClientAuth, Identity, JoinToken};

/// The file naming the server the agent joined, so a restart needs no `--join`.
const SERVER: &str = "server";

/// This node's certificate and the CA it trusts.
#[derive(Clone)]
pub struct AgentTls {
    pub ca_pem: String,
    pub identity: Identity,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentTls(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir} holds no certificate yet: join the cluster once with --join ADDR --token TOKEN (`outpost token show agent` on a server prints the token)"
    )]
    NoToken { dir: PathBuf },
    #[error("no server to connect to: give --join ADDR (the data dir {dir} names none)")]
    NoServer { dir: PathBuf },
    #[error(transparent)]
    Token(#[from] pki::TokenError),
    #[error("cannot join the cluster at {addr}: {source}")]
    Join {
        addr: String,
        source: client::ClientError,
    },
    #[error("the certificates in {dir}: {source}")]
    Pki { dir: PathBuf, source: pki::PkiError },
}

impl AgentTls {
    /// What the agent serves its API with (client certificates required), and connects with.
    pub fn configs(
        &self,
    ) -> Result<(Arc<rustls::ServerConfig>, rustls::ClientConfig), CredentialsError> {
        let err = |source| CredentialsError::Pki {
            dir: PathBuf::from("the agent's data dir"),
            source,
        };
        let serve = pki::tls::server_config(&self.ca_pem, &self.identity, ClientAuth::Required)
            .map_err(err)?;
        let connect = pki::tls::client_config(&self.ca_pem, Some(&self.identity)).map_err(err)?;
        Ok((Arc::new(serve), connect))
    }
}

/// How the agent finds the cluster: where, and a join token for a first start.
#[derive(Debug, Clone, Default)]
pub struct Join {
    pub server: Option<String>,
    pub token: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialsError + '_ {
    move |source| CredentialsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CredentialsError> {
    seal::files::private_file(path).map_err(io(path))?;
    std::fs::read_to_string(path).map_err(io(path))
}

fn write(path: &Path, text: &str) -> Result<(), CredentialsError> {
    seal::files::write_private(path, text.as_bytes()).map_err(io(path))
}

/// The server's address and this node's credentials: kept ones, or got by joining as `name`
/// with a certificate for `hosts`.
pub async fn load_or_join(
    dir: &Path,
    join: &Join,
    name: &str,
    hosts: &[IpAddr],
) -> Result<(String, AgentTls), CredentialsError> {
    seal::files::private_dir(dir).map_err(io(dir))?;
    let server_file = dir.join(SERVER);
    let server = match &join.server {
        Some(s) => s.clone(),
        None if server_file.exists() => read(&server_file)?.trim().to_string(),
        None => {
            return Err(CredentialsError::NoServer {
                dir: dir.to_path_buf(),
            });
        }
    };
    if dir.join(CERT).exists() {
        let tls = AgentTls {
            ca_pem: read(&dir.join(CA))?,
            identity: Identity {
                cert_pem: read(&dir.join(CERT))?,
                key_pem: read(&dir.join(KEY))?,
            },
        };
        write(&server_file, &server)?;
        return Ok((server, tls));
    }
    let Some(token) = &join.token else {
        return Err(CredentialsError::NoToken {
            dir: dir.to_path_buf(),
        });
    };
    let token = JoinToken::parse(token)?;
    let request = api::JoinRequest {
        role: "agent".into(),
        name: name.into(),
        secret: String::new(),
        hosts: hosts.to_vec(),
    };
    let joined = join_patiently(&server, &token, request).await?;
    let tls = keep(dir, joined.ca, joined.cert, joined.key)?;
    write(&server_file, &server)?;
    Ok((server, tls))
}

/// Joins, trying again while the server cannot be reached or cannot answer yet.
async fn join_patiently(
    server: &str,
    token: &JoinToken,
    request: api::JoinRequest,
) -> Result<api::JoinResponse, CredentialsError> {
    client::join_patiently(server, token, request, client::JOIN_PATIENCE)
        .await
        .map_err(|source| CredentialsError::Join {
            addr: server.to_string(),
            source,
        })
}

/// Writes credentials into the data dir, the certificate last: it is what marks them as there.
pub fn keep(
    dir: &Path,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
) -> Result<AgentTls, CredentialsError> {
    seal::files::private_dir(dir).map_err(io(dir))?;
    write(&dir.join(CA), &ca_pem)?;
    write(&dir.join(KEY), &key_pem)?;
    write(&dir.join(CERT), &cert_pem)?;
    Ok(AgentTls {
        ca_pem,
        identity: Identity { cert_pem, key_pem },
    })
}

/// Whether the data dir holds a certificate already.
pub fn joined(dir: &Path) -> bool {
    dir.join(CERT).exists()
}
