//! `outpost server backup FILE` (a client command: the running cluster's state, written
//! atomically) and `outpost server restore FILE` (offline: a data dir for a server that starts
//! alone from the backup). The format and what a backup carries: `server::backup`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use server::backup::{Backup, Head};

use crate::commands::connect;
use crate::{Connection, Format};

/// `outpost server backup FILE`.
pub async fn backup(conn: &Connection, file: &Path, force: bool) -> Result<()> {
    refuse_existing(file, force)?;
    let bytes = connect(conn).await?.backup().await?;
    // Read back as a restore would: a backup that could not be restored is not written.
    let backup = Backup::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("the server's backup cannot be read back: {e}"))?;
    write_atomically(file, &bytes, force)?;
    report(
        conn.output,
        "backup written to",
        file,
        bytes.len(),
        &backup.head,
    )
}

/// Refuses an existing FILE unless `force`: a backup never replaces one by surprise.
fn refuse_existing(file: &Path, force: bool) -> Result<()> {
    if !force && file.symlink_metadata().is_ok() {
        bail!(
            "{} exists already: give another file, or --force to replace it",
            file.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `file` as a whole or not at all: into a file beside it (0600: a backup
/// holds the cluster's CA key), flushed to disk, then put in place; the directory is synced so
/// the new name survives a crash.
fn write_atomically(file: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(name);
    let written = write_and_place(&tmp, file, bytes, force);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn write_and_place(tmp: &Path, file: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    out.write_all(bytes)
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if force {
        std::fs::rename(tmp, file)
            .with_context(|| format!("cannot put the backup in place as {}", file.display()))?;
        return Ok(());
    }
    // A link fails if the name was taken meanwhile, where a rename would replace it.
    match std::fs::hard_link(tmp, file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists already: give another file, or --force to replace it",
            file.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot put the backup in place as {}", file.display()));
        }
    }
    std::fs::remove_file(tmp).with_context(|| format!("cannot remove {}", tmp.display()))
}

/// What a backup or restore says it did: a line for people, or the head's figures as data.
fn report(output: Format, did: &str, file: &Path, bytes: usize, head: &Head) -> Result<()> {
    let c = &head.counts;
    match output {
        Format::Json | Format::Yaml => crate::commands::print_data(
            output,
            &serde_json::json!({
                "file": file,
                "bytes": bytes,
                "index": head.index(),
                "taken_at": head.taken_at,
                "taken_by": head.taken_by,
                "version": head.version,
                "counts": c,
            }),
        ),
        Format::Table => {
            println!(
                "{did} {}: {bytes} bytes, applied index {}, {} services, {} tasks, {} nodes, {} \
                 secrets, {} configs, {} events (taken by server {} at {}, outpost {})",
                file.display(),
                head.index(),
                c.services,
                c.tasks,
                c.nodes,
                c.secrets,
                c.configs,
                c.events,
                head.taken_by,
                head.taken_at,
                head.version
            );
            Ok(())
        }
    }
}

/// `outpost server restore FILE --data-dir DIR`.
pub async fn restore(
    conn: &Connection,
    file: &Path,
    addr: &crate::ServerAddr,
    name: Option<&str>,
) -> Result<()> {
    let dir = conn.data_dir.clone().context(
        "server restore needs --data-dir DIR (or OUTPOST_DATA_DIR): the data dir to make",
    )?;
    let bytes =
        std::fs::read(file).with_context(|| format!("cannot read backup {}", file.display()))?;
    let (listen, advertise) = crate::roles::server_addrs(conn, addr)?;
    let config = server::ServerConfig {
        advertise: advertise.map(|a| a.to_string()),
        ..server::ServerConfig::new(dir.clone(), listen)
    };
    let advertised = advertise.unwrap_or(listen).to_string();
    let restored = server::backup::restore(
        &bytes,
        &dir,
        &advertised,
        name.unwrap_or_default(),
        &config.hosts(),
    )
    .await
    .with_context(|| format!("backup {}", file.display()))?;
    let restored_into = format!("restored {} into", file.display());
    report(
        conn.output,
        &restored_into,
        &dir,
        restored.bytes,
        &restored.head,
    )?;
    if conn.output == Format::Table {
        let dir = dir.display();
        println!(
            "  start it:  outpost --data-dir {dir} server --listen {listen} --advertise {advertised}"
        );
    }
    Ok(())
}
