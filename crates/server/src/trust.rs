//! The cluster's trust as this server holds it in its data dir: the CA certificate and key
//! (`ca.pem`, `ca-key.pem`), its own certificate (`node.pem`, `node-key.pem`), the admin
//! credential (`token`) and the join tokens it made (`join-server`, `join-agent`), all 0600.
//!
//! The replicated state holds only digests of the secrets and the fingerprints of issued
//! certificates ([`Trust::wanted`] says what a founding server commits of its own files).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pki::files::{CA, CA_KEY, CERT, KEY};
use pki::{Ca, Identity, JoinToken, NodeRole, Role};
use store::Command;

use crate::{ServerError, now};

/// The file that holds the token of `role`, in a server's data dir.
pub fn token_file(dir: &Path, role: Role) -> PathBuf {
    dir.join(match role {
        Role::Admin => crate::MARKER,
        Role::Server => "join-server",
        Role::Agent => "join-agent",
    })
}

/// This server's CA, certificate and data dir.
pub struct Trust {
    pub ca: Ca,
    pub me: Identity,
    pub dir: PathBuf,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trust({})", self.dir.display())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

fn pki_err(path: &Path) -> impl FnOnce(pki::PkiError) -> ServerError + '_ {
    move |e| ServerError::Trust(format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, ServerError> {
    seal::files::private_file(path).map_err(io_err(path))?;
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Whether the data dir holds a cluster CA.
pub fn initialized(dir: &Path) -> bool {
    dir.join(CA).exists()
}

/// `outpost server init`: a new cluster's CA, this server's certificate for `hosts`, the admin
/// credential and a join token each for servers and agents. Refused where a CA already is.
pub fn init(dir: &Path, hosts: &[IpAddr]) -> Result<Trust, ServerError> {
    seal::files::private_dir(dir).map_err(io_err(dir))?;
    if initialized(dir) {
        return Err(ServerError::Trust(format!(
            "{} already holds a cluster (its {CA}): run `outpost server --data-dir {}` to start it, or init another, empty data dir",
            dir.display(),
            dir.display()
        )));
    }
    let ca = Ca::generate().map_err(pki_err(dir))?;
    let me = ca
        .issue(NodeRole::Server, "server-1", hosts)
        .map_err(pki_err(dir))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        seal::files::write_new_private(&path, text.as_bytes()).map_err(io_err(&path))
    };
    // The key first: a data dir with a CA certificate but no key would look initialized.
    write(CA_KEY, &ca.identity().key_pem)?;
    write(KEY, &me.key_pem)?;
    write(CERT, &me.cert_pem)?;
    let digest = ca.digest().map_err(pki_err(dir))?;
    for role in [Role::Server, Role::Agent] {
        let token = JoinToken::generate(&digest).map_err(io_err(dir))?;
        let path = token_file(dir, role);
        if !path.exists() {
            seal::files::write_new_private(&path, token.to_string().as_bytes())
                .map_err(io_err(&path))?;
        }
    }
    crate::load_or_create_token(dir)?;
    write(CA, ca.cert_pem())?;
    Ok(Trust {
        ca,
        me,
        dir: dir.to_path_buf(),
    })
}

/// The trust of a data dir, made first when it has none (a data dir of an older version, or a
/// first start without `server init`).
pub fn load_or_init(dir: &Path, hosts: &[IpAddr]) -> Result<Trust, ServerError> {
    if !initialized(dir) {
        return init(dir, hosts);
    }
    let ca = Ca::from_pem(Identity {
        cert_pem: read(&dir.join(CA))?,
        key_pem: read(&dir.join(CA_KEY))?,
    })
    .map_err(pki_err(dir))?;
    let me = Identity {
        cert_pem: read(&dir.join(CERT))?,
        key_pem: read(&dir.join(KEY))?,
    };
    Ok(Trust {
        ca,
        me,
        dir: dir.to_path_buf(),
    })
}

/// The certificate step of `outpost server join`: asks the server at `addr` for a server
/// certificate with the server join token `token` (its CA checked against the token's digest
/// before the secret is sent), and keeps what comes back in `dir`: the CA with its key (this
/// server signs node certificates in its turn) and its own certificate for `hosts`.
pub async fn join(
    dir: &Path,
    addr: &str,
    token: &str,
    name: &str,
    hosts: &[IpAddr],
) -> Result<Trust, ServerError> {
    seal::files::private_dir(dir).map_err(io_err(dir))?;
    if initialized(dir) {
        return Err(ServerError::Trust(format!(
            "{} already holds a cluster's CA: join with an empty data dir",
            dir.display()
        )));
    }
    let token = JoinToken::parse(token).map_err(|e| ServerError::Trust(e.to_string()))?;
    let request = api::JoinRequest {
        role: Role::Server.as_str().into(),
        name: name.into(),
        secret: String::new(),
        hosts: hosts.to_vec(),
    };
    // A server founded a moment ago answers 503 until it leads and its tokens are committed.
    let joined = client::join_patiently(addr, &token, request, client::JOIN_PATIENCE)
        .await
        .map_err(|e| ServerError::Trust(e.to_string()))?;
    let ca_key = joined.ca_key.ok_or_else(|| {
        ServerError::Trust(format!("the server at {addr} sent no CA key for a server"))
    })?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        seal::files::write_new_private(&path, text.as_bytes()).map_err(io_err(&path))
    };
    if let Some(admin) = &joined.admin_token {
        crate::write_token(dir, admin)?;
    }
    write(CA_KEY, &ca_key)?;
    write(KEY, &joined.key)?;
    write(CERT, &joined.cert)?;
    write(CA, &joined.ca)?;
    load_or_init(dir, hosts)
}

impl Trust {
    /// What this server serves its API with: client certificates optional (the CLI has none).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        pki::tls::server_config(self.ca.cert_pem(), &self.me, pki::ClientAuth::Optional)
            .map(Arc::new)
            .map_err(pki_err(&self.dir))
    }

    /// What this server connects to agents and peers with: its own certificate, the CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, ServerError> {
        pki::tls::client_config(self.ca.cert_pem(), Some(&self.me)).map_err(pki_err(&self.dir))
    }

    /// The token of `role` as this server keeps it.
    pub fn token(&self, role: Role) -> Result<String, ServerError> {
        Ok(read(&token_file(&self.dir, role))?.trim().to_string())
    }

    /// Keeps a new join token of `role` (after its digest committed).
    pub fn save_token(&self, role: Role, token: &JoinToken) -> Result<(), ServerError> {
        let path = token_file(&self.dir, role);
        seal::files::write_private(&path, format!("{token}\n").as_bytes()).map_err(io_err(&path))
    }

    /// A fresh join token of `role` for this CA.
    pub fn new_token(&self) -> Result<JoinToken, ServerError> {
        let digest = self.ca.digest().map_err(pki_err(&self.dir))?;
        JoinToken::generate(&digest).map_err(io_err(&self.dir))
    }

    /// The commands that make the replicated trust hold this server's own: the digest of each
    /// token it keeps, and its certificate (as server `id`). `state` says which are there.
    pub fn wanted(&self, state: &store::State, id: u64) -> Result<Vec<Command>, ServerError> {
        let mut wanted = Vec::new();
        for role in [Role::Admin, Role::Server, Role::Agent] {
            // A server that joined keeps no join tokens of its own.
            if state.token_digest(role.as_str()).is_some() || !token_file(&self.dir, role).exists()
            {
                continue;
            }
            let token = self.token(role)?;
            // A join token's secret is its last part; the admin credential is a bare secret.
            let secret = match role {
                Role::Admin => token,
                _ => {
                    JoinToken::parse(&token)
                        .map_err(|e| {
                            ServerError::Trust(format!(
                                "{}: {e}",
                                token_file(&self.dir, role).display()
                            ))
                        })?
                        .secret
                }
            };
            wanted.push(Command::SetToken {
                role: role.as_str().into(),
                digest: pki::secret_digest(&secret),
                replace: false,
                time: now(),
            });
        }
        let fingerprint = self.me.fingerprint().map_err(pki_err(&self.dir))?;
        if state.certificate(&fingerprint).is_none() {
            wanted.push(Command::AddCertificate {
                fingerprint,
                role: NodeRole::Server.as_str().into(),
                node: format!("server-{id}"),
                time: now(),
            });
        }
        Ok(wanted)
    }
}
