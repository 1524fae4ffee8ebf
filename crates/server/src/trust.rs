//! The cluster's trust as this server holds it in its data dir: the CA certificate and key
//! (`ca.pem`, `ca-key.pem`), its own certificate (`node.pem`, `node-key.pem`), the admin
//! credential (`token`) and, on the server that founded the cluster, the first join tokens
//! (`join-server`, `join-agent`), all 0600.
//!
//! A join secret is derived from the CA key, which every server holds, and a generation
//! ([`pki::Ca::join_token`]); a rotation is the next generation. The replicated state holds
//! only digests of the secrets, their generations and the fingerprints of issued certificates
//! ([`Trust::wanted`] says what a founding server commits of its own files), and whichever
//! server leads makes the current token again from them ([`Trust::current_token`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pki::files::{CA, CA_KEY, CERT, KEY};
use pki::{Ca, Identity, JoinToken, NodeRole, Role};
use store::Command;

use crate::{ServerError, now};

/// The generation of a new cluster's join tokens; each rotation commits the next one.
pub const FIRST_GENERATION: u64 = 1;

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
    for role in [Role::Server, Role::Agent] {
        // Kept for the operator of this server; any server can make it again from the CA key.
        let token = ca
            .join_token(role, FIRST_GENERATION)
            .map_err(pki_err(dir))?;
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
    /// Refuses `token` (a join token) when it names another cluster's CA than this one.
    pub fn check_cluster(&self, token: &str) -> Result<(), ServerError> {
        let named = JoinToken::parse(token)
            .map_err(|e| ServerError::Trust(e.to_string()))?
            .ca_digest;
        let held = self.ca.digest().map_err(pki_err(&self.dir))?;
        if named == held {
            return Ok(());
        }
        Err(ServerError::OtherCluster {
            dir: self.dir.clone(),
            held,
            named,
        })
    }

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

    /// The token of `role` as this server keeps it in its data dir.
    pub fn token(&self, role: Role) -> Result<String, ServerError> {
        Ok(read(&token_file(&self.dir, role))?.trim().to_string())
    }

    /// The join token of `role` at `generation`, made from the CA key.
    pub fn join_token(&self, role: Role, generation: u64) -> Result<JoinToken, ServerError> {
        self.ca
            .join_token(role, generation)
            .map_err(pki_err(&self.dir))
    }

    /// The join token of `role` whose secret has the committed `digest`: the one derived at the
    /// committed `generation`, else the one in this server's data dir (a token made before
    /// secrets were derived, which only the server that made it keeps). `None` when this server
    /// can make neither. While no digest is committed (a new cluster's first moments), the one
    /// this server commits once it leads.
    pub fn current_token(
        &self,
        role: Role,
        digest: Option<&str>,
        generation: Option<u64>,
    ) -> Result<Option<String>, ServerError> {
        let Some(digest) = digest else {
            return Ok(Some(self.first_join_token(role)?.0.to_string()));
        };
        if let Some(generation) = generation {
            let token = self.join_token(role, generation)?;
            if pki::secret_matches(&token.secret, digest) {
                return Ok(Some(token.to_string()));
            }
        }
        if !token_file(&self.dir, role).exists() {
            return Ok(None);
        }
        let kept = self.token(role)?;
        let matches = JoinToken::parse(&kept).is_ok_and(|t| pki::secret_matches(&t.secret, digest));
        Ok(matches.then_some(kept))
    }

    /// The commands that make the replicated trust hold this server's own: the digest of each
    /// token it keeps, and its certificate (as server `id`). `state` says which are there.
    pub fn wanted(&self, state: &store::State, id: u64) -> Result<Vec<Command>, ServerError> {
        let mut wanted = Vec::new();
        for role in [Role::Admin, Role::Server, Role::Agent] {
            if state.token_digest(role.as_str()).is_some() {
                continue;
            }
            if let Some(command) = self.first_token(role)? {
                wanted.push(command);
            }
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

    /// The commit of the first token of `role`: the admin credential from its file, a join
    /// token as [`Trust::first_join_token`] gives it.
    fn first_token(&self, role: Role) -> Result<Option<Command>, ServerError> {
        let (secret, generation) = match role {
            Role::Admin if !token_file(&self.dir, role).exists() => return Ok(None),
            // The admin credential is a bare secret.
            Role::Admin => (self.token(role)?, None),
            _ => {
                let (token, generation) = self.first_join_token(role)?;
                (token.secret, generation)
            }
        };
        Ok(Some(Command::SetToken {
            role: role.as_str().into(),
            digest: pki::secret_digest(&secret),
            replace: false,
            generation,
            time: now(),
        }))
    }

    /// The join token of `role` a founding server commits first, and its generation when it
    /// is derived: the one in its file (derived at [`FIRST_GENERATION`] when `server init`
    /// made it, random when an older version did) or, without one, derived afresh.
    pub fn first_join_token(&self, role: Role) -> Result<(JoinToken, Option<u64>), ServerError> {
        let first = self.join_token(role, FIRST_GENERATION)?;
        let path = token_file(&self.dir, role);
        if !path.exists() {
            return Ok((first, Some(FIRST_GENERATION)));
        }
        let kept = JoinToken::parse(&self.token(role)?)
            .map_err(|e| ServerError::Trust(format!("{}: {e}", path.display())))?;
        let derived = kept.secret == first.secret;
        Ok((kept, derived.then_some(FIRST_GENERATION)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];

    fn apply(state: &mut store::State, commands: &[Command]) {
        for command in commands {
            state.apply(state.index + 1, command);
        }
    }

    fn shown(trust: &Trust, state: &store::State, role: Role) -> Option<String> {
        let digest = state.token_digest(role.as_str());
        (trust.current_token(role, digest, state.token_generation(role.as_str()))).unwrap()
    }

    /// A server that joined: the founder's CA files, a certificate of its own, no tokens.
    fn joined(founder: &Trust, dir: &Path) -> Trust {
        let me = founder.ca.issue(NodeRole::Server, "s2", &LOOPBACK).unwrap();
        let files = [
            (CA, founder.ca.cert_pem()),
            (CA_KEY, founder.ca.identity().key_pem.as_str()),
            (CERT, me.cert_pem.as_str()),
            (KEY, me.key_pem.as_str()),
        ];
        for (name, text) in files {
            seal::files::write_new_private(&dir.join(name), text.as_bytes()).unwrap();
        }
        load_or_init(dir, &LOOPBACK).unwrap()
    }

    #[test]
    fn any_server_holding_the_ca_key_shows_the_committed_join_token_and_a_rotated_one() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let founder = init(a.path(), &LOOPBACK).unwrap();
        let other = joined(&founder, b.path());
        let mut state = store::State::default();
        let kept = founder.token(Role::Agent).unwrap();
        assert_eq!(shown(&founder, &state, Role::Agent), Some(kept.clone()));
        let first = founder.wanted(&state, 1).unwrap();
        let secret = JoinToken::parse(&kept).unwrap().secret;
        let entries = serde_json::to_string(&first).unwrap();
        assert!(!entries.contains(&secret), "an entry holds a secret");
        apply(&mut state, &first);
        assert_eq!(state.token_generation("agent"), Some(FIRST_GENERATION));
        for role in [Role::Server, Role::Agent] {
            let made = founder.token(role).unwrap();
            assert_eq!(shown(&founder, &state, role).as_ref(), Some(&made));
            assert_eq!(shown(&other, &state, role), Some(made));
        }

        // A rotation commits the next generation: both make the new token, the founder's
        // file (the first token) is shown no more.
        let next = other.join_token(Role::Agent, 2).unwrap();
        apply(
            &mut state,
            &[Command::SetToken {
                role: "agent".into(),
                digest: pki::secret_digest(&next.secret),
                replace: true,
                generation: Some(2),
                time: now(),
            }],
        );
        assert_eq!(shown(&founder, &state, Role::Agent), Some(next.to_string()));
        assert_eq!(shown(&other, &state, Role::Agent), Some(next.to_string()));
    }

    #[test]
    fn a_random_token_of_an_older_version_is_shown_only_by_the_server_that_keeps_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let founder = init(a.path(), &LOOPBACK).unwrap();
        let other = joined(&founder, b.path());
        let old = JoinToken {
            ca_digest: founder.ca.digest().unwrap(),
            secret: "ab".repeat(pki::token::SECRET_BYTES),
        };
        let path = token_file(a.path(), Role::Agent);
        seal::files::write_private(&path, format!("{old}\n").as_bytes()).unwrap();
        let mut state = store::State::default();
        let first = founder.wanted(&state, 1).unwrap();
        apply(&mut state, &first);
        assert_eq!(state.token_generation("agent"), None);
        assert_eq!(shown(&founder, &state, Role::Agent), Some(old.to_string()));
        assert_eq!(shown(&other, &state, Role::Agent), None);
        // The server token, made by `init`, is derived: every server shows it.
        assert!(shown(&other, &state, Role::Server).is_some());
    }
}
