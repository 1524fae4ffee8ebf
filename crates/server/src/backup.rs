//! Backups of the cluster state (`GET /v1/backup`, `outpost server backup FILE`) and the
//! restore of a lost server from one (`outpost server restore FILE`).
//!
//! A backup is the state machine's own Raft snapshot — the format a leader sends a follower, so
//! a newer binary restores an older backup — taken on the leader after a read-index check, at
//! or after the index applied when the request came: it holds every write acknowledged before
//! it. Beside it, the backup carries what a server's data dir holds that the replicated state
//! does not, and without which the restored state is of no use:
//!
//! - the cluster CA's certificate and key: agents trust the servers through the CA, join tokens
//!   are derived from its key, and the key that seals `outpost secret` values is derived from it
//!   too, so a cluster restored with another CA could not open its own secrets;
//! - the admin token, so the CLI and scripts keep working.
//!
//! The file is therefore as secret as a server's data dir (the admin token can read all of it
//! already, through `outpost token show server` and a join): the CLI writes it 0600. A server's
//! own certificate is not carried: a restore issues a new one for the restored server's address.
//!
//! The file: [`MAGIC`], the format as two big-endian bytes, then one sealed record (a CRC32 over
//! the rest, `seal`), which holds the length of a JSON [`Head`] as four big-endian bytes, the
//! head, and the snapshot's bytes. A file that is cut short or changed fails the seal and is
//! refused whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::Timestamp;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use store::raft::{Node, SnapshotMeta};

use crate::answer::Fail;
use crate::{Server, ServerError, cluster, now};

/// The first bytes of every backup.
pub const MAGIC: &[u8; 14] = b"outpost-backup";
/// The format this version writes; it reads every format up to this one.
pub const BACKUP_FORMAT: u16 = 1;

/// 20 s: how long a backup waits for the state machine to write its snapshot; a state of
/// 10,000 tasks takes well under a second, and the route's own limit is 30 s.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(20);

/// How many of each thing a backup holds: what the CLI prints once it is written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub services: usize,
    pub tasks: usize,
    pub nodes: usize,
    pub secrets: usize,
    pub configs: usize,
    pub events: usize,
}

/// What precedes the snapshot in a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Head {
    /// The outpost version that took it.
    pub version: String,
    pub taken_at: Timestamp,
    /// The Raft id of the server that took it (the leader).
    pub taken_by: u64,
    /// The snapshot's last log id and membership.
    pub meta: SnapshotMeta,
    pub counts: Counts,
    /// The cluster CA, certificate and key (PEM); `None` from a server without TLS.
    pub ca_cert: Option<String>,
    pub ca_key: Option<String>,
    pub admin_token: String,
}

impl Head {
    /// The applied index the backup stands at.
    pub fn index(&self) -> u64 {
        self.meta.last_log_id.map_or(0, |id| id.index)
    }
}

/// A backup read and checked whole.
#[derive(Debug)]
pub struct Backup {
    pub head: Head,
    pub snapshot: Vec<u8>,
}

/// Why bytes are not a backup this outpost can restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("it is not an outpost backup (it does not begin with \"outpost-backup\")")]
    NotABackup,
    #[error("it ends before its format version")]
    Short,
    #[error(
        "it is of backup format {found}, newer than this outpost reads ({BACKUP_FORMAT}): restore it with the outpost version that took it, or a newer one"
    )]
    NewerFormat { found: u16 },
    #[error("it is damaged (cut short or changed since it was written: {0})")]
    Damaged(#[from] seal::Damage),
    #[error("it is damaged: {0}")]
    Malformed(String),
    #[error("its cluster state cannot be read: {0}")]
    Snapshot(#[from] store::BadSnapshot),
}

impl Backup {
    /// The bytes of the backup file.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let head = serde_json::to_vec(&self.head)?;
        let mut body = Vec::with_capacity(4 + head.len() + self.snapshot.len());
        let len = u32::try_from(head.len()).unwrap_or(u32::MAX);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&head);
        body.extend_from_slice(&self.snapshot);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&BACKUP_FORMAT.to_be_bytes());
        out.extend_from_slice(&seal::seal(&body));
        Ok(out)
    }

    /// Reads a backup file's bytes, checking its seal and reading its whole state: a backup
    /// that passes can be restored.
    pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or(BackupError::NotABackup)?;
        let (format, sealed) = rest.split_first_chunk::<2>().ok_or(BackupError::Short)?;
        let found = u16::from_be_bytes(*format);
        if found > BACKUP_FORMAT {
            return Err(BackupError::NewerFormat { found });
        }
        let body = seal::open(sealed)?;
        let (len, rest) = body
            .split_first_chunk::<4>()
            .ok_or_else(|| BackupError::Malformed("it has no head".into()))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if len > rest.len() {
            return Err(BackupError::Malformed("its head is cut short".into()));
        }
        let (head, snapshot) = rest.split_at(len);
        let head: Head = serde_json::from_slice(head)
            .map_err(|e| BackupError::Malformed(format!("its head cannot be read: {e}")))?;
        store::read_snapshot(snapshot)?;
        Ok(Backup {
            head,
            snapshot: snapshot.to_vec(),
        })
    }
}

/// What a state holds, counted.
fn counts(state: &store::State) -> Counts {
    let objects = |kind| state.objects.values().filter(|o| o.kind == kind).count();
    Counts {
        services: state.services.len(),
        tasks: state.tasks.len(),
        nodes: state.nodes.len(),
        secrets: objects(api::ObjectKind::Secret),
        configs: objects(api::ObjectKind::Config),
        events: state.events.len(),
    }
}

/// A backup of the cluster: its state as a Raft snapshot at or after the index applied when the
/// request came (after the leader's read-index check), the cluster CA and the admin token. The
/// file is as secret as a server's data dir. Admin token only: agents are refused.
#[utoipa::path(get, path = "/v1/backup", tag = "cluster",
    responses(
        (status = 200, description = "The backup file (see `server::backup` for its layout)",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 500, description = "The snapshot could not be read back", body = api::ApiError)))]
pub async fn backup(State(ctx): State<Server>) -> Result<Response, Fail> {
    let target = ctx.state.applied_index();
    let snapshot = snapshot_at(&ctx, target).await?;
    let meta = snapshot.meta.clone();
    let data = snapshot.snapshot.into_inner();
    let (ca_cert, ca_key) = match &ctx.trust {
        Some(trust) => (
            Some(trust.ca.cert_pem().to_string()),
            Some(trust.ca.identity().key_pem.clone()),
        ),
        None => (None, None),
    };
    let (taken_by, admin_token) = (ctx.id, ctx.token.clone());
    let bytes = tokio::task::spawn_blocking(move || {
        let state = store::read_snapshot(&data).map_err(|e| e.to_string())?;
        let backup = Backup {
            head: Head {
                version: env!("CARGO_PKG_VERSION").to_string(),
                taken_at: now(),
                taken_by,
                meta,
                counts: counts(&state),
                ca_cert,
                ca_key,
                admin_token,
            },
            snapshot: data,
        };
        backup.encode().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|encoded| encoded)
    .map_err(|e| {
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot make the backup from the snapshot: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// The state machine's snapshot at `target` or later: one is built (writing what waits to
/// the tables first) unless the last one is recent enough.
async fn snapshot_at(ctx: &Server, target: u64) -> Result<store::raft::Snapshot, Fail> {
    let gone = |e: &dyn std::fmt::Display| {
        Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot take the snapshot: {e}; retry shortly"),
        )
    };
    let recent = |m: &store::raft::RaftMetrics| m.snapshot.is_some_and(|s| s.index >= target);
    if !recent(&ctx.raft.metrics().borrow()) {
        ctx.raft.trigger().snapshot().await.map_err(|e| gone(&e))?;
        ctx.raft
            .wait(Some(SNAPSHOT_WAIT))
            .metrics(recent, "a snapshot at the applied index")
            .await
            .map_err(|e| gone(&e))?;
    }
    let snapshot = ctx.raft.get_snapshot().await.map_err(|e| gone(&e))?;
    snapshot
        .filter(|s| s.meta.last_log_id.is_some_and(|id| id.index >= target))
        .ok_or_else(|| gone(&"the snapshot built is older than the applied state"))
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    pub head: Head,
    pub bytes: usize,
}

/// `outpost server restore FILE`: makes data dir `dir` (absent, or an empty directory) from
/// the backup `bytes`, for a server that starts alone from it (`outpost server --data-dir DIR`)
/// as server 1 at `advertise`, named `name` (or `server-1`): the state, the CA and the admin
/// token of the backup, and a new certificate for this server for `hosts`. The backup is read
/// and checked whole first, and the data dir is made aside and renamed into place: a refusal
/// or a failure leaves `dir` as it was.
pub async fn restore(
    bytes: &[u8],
    dir: &Path,
    advertise: &str,
    name: &str,
    hosts: &[std::net::IpAddr],
) -> Result<Restored, ServerError> {
    let backup = Backup::decode(bytes).map_err(|e| ServerError::Restore(e.to_string()))?;
    let (Some(ca_cert), Some(ca_key)) = (&backup.head.ca_cert, &backup.head.ca_key) else {
        return Err(ServerError::Restore(
            "it holds no cluster CA (it was taken from a server without TLS), so agents could \
             not trust a server restored from it"
                .into(),
        ));
    };
    check_empty(dir)?;
    let aside = aside_of(dir);
    let made = make_dir(&backup, &aside, ca_cert, ca_key, advertise, name, hosts).await;
    let placed = made.and_then(|()| {
        std::fs::rename(&aside, dir).map_err(|source| ServerError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_dir_all(&aside);
        return Err(e);
    }
    Ok(Restored {
        head: backup.head,
        bytes: bytes.len(),
    })
}

/// Refuses a data dir that exists and holds anything: a restore never mixes with a state.
fn check_empty(dir: &Path) -> Result<(), ServerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::DataDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    Err(ServerError::Restore(format!(
        "data dir {} is not empty (it holds {}): a restore makes a new data dir; give an absent \
         or empty one, or move this one away first (stop its server) if it is to be replaced",
        dir.display(),
        names.join(", ")
    )))
}

/// A sibling of `dir` to make the restored data dir in.
fn aside_of(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".restoring-{}", std::process::id()));
    dir.with_file_name(name)
}

async fn make_dir(
    backup: &Backup,
    aside: &Path,
    ca_cert: &str,
    ca_key: &str,
    advertise: &str,
    name: &str,
    hosts: &[std::net::IpAddr],
) -> Result<(), ServerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::DataDir { path, source }
    };
    if aside.exists() {
        std::fs::remove_dir_all(aside).map_err(io(aside))?;
    }
    seal::files::private_dir(aside).map_err(io(aside))?;
    let ca = pki::Ca::from_pem(pki::Identity {
        cert_pem: ca_cert.to_string(),
        key_pem: ca_key.to_string(),
    })
    .map_err(|e| ServerError::Restore(format!("its cluster CA cannot be read: {e}")))?;
    let id = 1;
    let name = cluster::name_or_default(name, id);
    let me = ca
        .issue(pki::NodeRole::Server, &name, hosts)
        .map_err(|e| ServerError::Trust(e.to_string()))?;
    let files = [
        (pki::files::CA_KEY, ca_key),
        (pki::files::KEY, me.key_pem.as_str()),
        (pki::files::CERT, me.cert_pem.as_str()),
        (pki::files::CA, ca_cert),
    ];
    for (file, text) in files {
        let path = aside.join(file);
        seal::files::write_new_private(&path, text.as_bytes()).map_err(io(&path))?;
    }
    crate::write_token(aside, &backup.head.admin_token)?;
    let state_file = aside.join("state.redb");
    let node = Node {
        addr: advertise.to_string(),
        name,
    };
    store::restore(
        &state_file,
        &backup.head.meta,
        backup.snapshot.clone(),
        id,
        node,
    )
    .await?;
    seal::files::private_file(&state_file).map_err(io(&state_file))?;
    Ok(())
}
