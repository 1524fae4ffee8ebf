//! The files through which tasks read their secrets and configs. Values are fetched from the
//! control plane (`GET /v1/nodes/{node}/secrets/{name}`, which answers only this node's agent
//! and only while a task here uses it) and written only to a tmpfs: nothing of them reaches
//! the agent's disk, its local store or its logs.
//!
//! Each task has `<root>/<task id>/secrets/<target>` and `.../configs/<target>`; a process
//! task finds them through `OUTPOST_SECRETS_DIR` and `OUTPOST_CONFIGS_DIR`, a container gets
//! each file bind-mounted read-only (`/run/secrets/<target>`, configs `/<target>`). The root is
//! `/run/outpost-<agent id>` where `/run` is a tmpfs, else `/dev/shm/outpost-<agent id>`; a
//! task's directory goes when the task is forgotten.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use api::{Assignment, ObjectKind};
use client::Client;
use spec::{FileRef, ServiceSpec};

/// Where a task's files live; cheap to clone.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

/// The variables naming a process task's directories.
pub const SECRETS_VAR: &str = "OUTPOST_SECRETS_DIR";
pub const CONFIGS_VAR: &str = "OUTPOST_CONFIGS_DIR";

/// Candidate parents of the root, in order: both are tmpfs on a usual Linux host.
const TMPFS_PARENTS: [&str; 2] = ["/run", "/dev/shm"];

/// Whether `path` is on a tmpfs, so what is written there never touches a disk.
pub fn is_tmpfs(path: &Path) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    statfs(path).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

impl Files {
    /// The root for this agent: under the first tmpfs of [`TMPFS_PARENTS`]; `None` when there
    /// is none, and then a task that uses a secret or config is refused, saying so.
    pub fn for_agent(agent_id: &str) -> Option<Files> {
        TMPFS_PARENTS
            .iter()
            .map(Path::new)
            .find(|p| is_tmpfs(p))
            .map(|p| Files {
                root: p.join(format!("outpost-{agent_id}")),
            })
    }

    /// The directory of one kind of a task's files.
    pub fn dir(&self, task: &str, kind: ObjectKind) -> PathBuf {
        self.root.join(task).join(kind.field())
    }

    /// Where the value of a task's pull secret is kept: beside its files, never mounted.
    pub fn pull_secret(&self, task: &str) -> PathBuf {
        self.root.join(task).join("pull-secret")
    }

    /// Whether every file the task's spec names is in place (after an agent restart they
    /// are; after a reboot the tmpfs is empty and they must be fetched again).
    pub fn complete(&self, task: &str, spec: &ServiceSpec) -> bool {
        let pull = spec.pull_secret.is_none() || self.pull_secret(task).is_file();
        pull && ObjectKind::ALL.iter().all(|&kind| {
            spec.file_refs(kind)
                .iter()
                .all(|r| self.dir(task, kind).join(r.target()).is_file())
        })
    }

    /// Fetches every value the assignment's spec uses and writes its files.
    pub async fn fetch(&self, client: &Client, node: &str, a: &Assignment) -> Result<(), String> {
        for kind in ObjectKind::ALL {
            for r in a.spec.file_refs(kind) {
                let value = client
                    .node_object(node, kind, &r.source)
                    .await
                    .map_err(|e| format!("cannot read {kind} {}: {e}", r.source))?;
                let mode = r.mode.unwrap_or(default_mode(kind, a.spec.driver));
                self.write(&a.task, kind, r, mode, &value.data)
                    .map_err(|e| format!("cannot write the file of {kind} {}: {e}", r.source))?;
            }
        }
        if let Some(name) = &a.spec.pull_secret {
            let value = (client.node_object(node, ObjectKind::Secret, name).await)
                .map_err(|e| format!("cannot read pull secret {name}: {e}"))?;
            let path = self.pull_secret(&a.task);
            write_private(&self.root, &path, (None, None), 0o600, &value.data)
                .map_err(|e| format!("cannot keep pull secret {name}: {e}"))?;
        }
        Ok(())
    }

    /// Writes the file of one reference.
    fn write(
        &self,
        task: &str,
        kind: ObjectKind,
        r: &FileRef,
        mode: u32,
        data: &[u8],
    ) -> std::io::Result<()> {
        let path = self.dir(task, kind).join(r.target());
        write_private(&self.root, &path, (r.uid, r.gid), mode, data)
    }

    /// Removes a task's files.
    pub fn remove(&self, task: &str) {
        let dir = self.root.join(task);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(task, "cannot remove {}: {e}", dir.display());
        }
    }
}

/// Writes one file under `root`, on a tmpfs only: aside, then renamed, so a task never reads
/// half a value; owned by `uid` and `gid` where they are given.
fn write_private(
    root: &Path,
    path: &Path,
    (uid, gid): (Option<u32>, Option<u32>),
    mode: u32,
    data: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    let parent = path.parent().unwrap_or(root);
    // 0700 from the root down: on the host, the files are the agent's user's alone (a
    // container sees its bind-mounted file with the file's own mode).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    if !is_tmpfs(parent) {
        return Err(std::io::Error::other(format!(
            "{} is not on a tmpfs; refusing to write a value there",
            parent.display()
        )));
    }
    let aside = parent.join(format!(".{}.new", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)?;
    file.write_all(data)?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&file, uid, gid)?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    drop(file);
    std::fs::rename(&aside, path)
}

/// A file's mode when its reference sets none: a process task runs as the agent's user, so a
/// secret is 0400; a container's user is the image's, so it is 0444 there, as in Swarm (on
/// the host it sits in the agent's 0700 directory). Configs are 0444.
pub fn default_mode(kind: ObjectKind, driver: spec::DriverKind) -> u32 {
    match (kind, driver) {
        (ObjectKind::Secret, spec::DriverKind::Process) => 0o400,
        _ => 0o444,
    }
}

/// Whether the spec uses any secret or config, a pull secret included.
pub fn uses_files(spec: &ServiceSpec) -> bool {
    !spec.secrets.is_empty() || !spec.configs.is_empty() || spec.pull_secret.is_some()
}

/// Where a container sees a file: an absolute target as is; else `/run/secrets/<target>` for
/// a secret and `/<target>` for a config, as Swarm does.
pub fn container_path(kind: ObjectKind, r: &FileRef) -> String {
    let target = r.target();
    match (target.starts_with('/'), kind) {
        (true, _) => target.to_string(),
        (false, ObjectKind::Secret) => format!("/run/secrets/{target}"),
        (false, ObjectKind::Config) => format!("/{target}"),
    }
}

/// The read-only bind mounts of a container's files, as the Engine takes them.
pub fn container_binds(dirs: &[(ObjectKind, PathBuf)], spec: &ServiceSpec) -> Vec<String> {
    let mut binds = Vec::new();
    for (kind, dir) in dirs {
        for r in spec.file_refs(*kind) {
            let host = dir.join(r.target());
            binds.push(format!(
                "{}:{}:ro",
                host.display(),
                container_path(*kind, r)
            ));
        }
    }
    binds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_go_to_a_tmpfs_with_their_modes_and_are_removed() {
        let Some(files) = Files::for_agent(&format!("test-{}", std::process::id())) else {
            return; // no tmpfs on this host: nothing to write to
        };
        let mut r = FileRef::named("pw");
        files
            .write("t1", ObjectKind::Secret, &r, 0o400, b"hunter2")
            .unwrap();
        r.target = Some("sub/key".into());
        r.mode = Some(0o440);
        files
            .write("t1", ObjectKind::Secret, &r, 0o440, b"k")
            .unwrap();
        let dir = files.dir("t1", ObjectKind::Secret);
        assert_eq!(std::fs::read(dir.join("pw")).unwrap(), b"hunter2");
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.join("pw")), 0o400);
        assert_eq!(mode(dir.join("sub/key")), 0o440);
        let mut spec = ServiceSpec::process("w", &["x"]);
        spec.secrets = vec![FileRef::named("pw"), r];
        assert!(files.complete("t1", &spec));
        spec.configs = vec![FileRef::named("c")];
        assert!(!files.complete("t1", &spec));
        files.remove("t1");
        assert!(!dir.exists());
        let _ = std::fs::remove_dir(&files.root);
    }

    #[test]
    fn containers_see_secrets_under_run_secrets_and_configs_at_the_root() {
        let mut r = FileRef::named("db-password");
        assert_eq!(
            container_path(ObjectKind::Secret, &r),
            "/run/secrets/db-password"
        );
        assert_eq!(container_path(ObjectKind::Config, &r), "/db-password");
        r.target = Some("/etc/app.conf".into());
        assert_eq!(container_path(ObjectKind::Config, &r), "/etc/app.conf");
    }
}
