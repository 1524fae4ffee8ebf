//! The data dirs' files: the state, the token, the agent's id and the task logs (whose specs'
//! `env` may carry secrets) are this user's alone. Directories are 0700, files 0600, set on
//! creation and tightened on every start, so a data dir made by an older version is fixed too.
//! Secrets (the cluster token, the agent's id) are random, made once and read ever after.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// 10 s: how long a start waits for its own file's lock to be let go. A process killed while it
/// was starting a task leaves a forked child that holds a copy of every descriptor, and with it
/// the lock, until it execs. That takes milliseconds, but the child first moves itself into the
/// task's cgroups, and those writes wait on the kernel's cgroup lock, which a loaded machine can
/// hold far longer. A second server or agent really using the file holds it past this, and is
/// refused.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// 20 ms between attempts: the lock goes as soon as the child execs.
const LOCK_POLL: Duration = Duration::from_millis(20);

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Runs `open` until it gives anything but an error that `locked` recognises, or `patience` has
/// passed; then returns what it gave last. `waiting` is told of the first lock met, once.
pub fn open_when_unlocked<T, E>(
    patience: Duration,
    locked: impl Fn(&E) -> bool,
    waiting: impl FnOnce(&E),
    mut open: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + patience;
    let mut waiting = Some(waiting);
    loop {
        match open() {
            Err(e) if locked(&e) && Instant::now() < deadline => {
                if let Some(tell) = waiting.take() {
                    tell(&e);
                }
                std::thread::sleep(LOCK_POLL);
            }
            other => return other,
        }
    }
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens it to 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Sets an existing file's mode to 0600.
pub fn private_file(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// Writes `data` to a file that must not exist yet, created with mode 0600.
pub fn write_new_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.write_all(data)
}

/// Replaces `path`'s content with `data`; the file ends up with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // Written beside it and renamed over it: a reader (a CLI reading `api` or `token`) sees
    // the old content or the new, never an empty or half-written file.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    private_file(&tmp)?;
    file.write_all(data)?;
    std::fs::rename(&tmp, path)
}

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file is there but empty: it may be a secret that was meant to be there, so a new one
    /// is not made in its place.
    #[error("{path} is empty")]
    Empty { path: std::path::PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Reads the secret in `path`, or makes one of `bytes` random bytes (written hex-encoded, mode
/// 0600) when the file does not exist yet. An existing file is tightened to 0600.
pub fn read_or_create_secret(path: &Path, bytes: usize) -> Result<String, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => {
            return Err(SecretError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(text) => {
            private_file(path).map_err(io)?;
            return Ok(text.trim().to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let secret = random_hex(bytes).map_err(io)?;
    write_new_private(path, secret.as_bytes()).map_err(io)?;
    Ok(secret)
}

/// `bytes` random bytes from the kernel, hex-encoded.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut random = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_made_private_and_existing_ones_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing dir is tightened");

        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"y").unwrap();
        assert_eq!(mode(&file), 0o600, "an existing file is tightened");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "y");
        // Replaced whole: a reader holding the old file still reads all of the old content.
        let mut held = std::fs::File::open(&file).unwrap();
        write_private(&file, b"zz").unwrap();
        let mut old = String::new();
        std::io::Read::read_to_string(&mut held, &mut old).unwrap();
        assert_eq!(
            (
                old.as_str(),
                std::fs::read_to_string(&file).unwrap().as_str()
            ),
            ("y", "zz")
        );
        assert!(!dir.join("f.tmp").exists(), "nothing left beside it");

        let new = dir.join("new");
        write_new_private(&new, b"z").unwrap();
        assert_eq!(mode(&new), 0o600);
        assert!(write_new_private(&new, b"z").is_err(), "never overwritten");
    }

    #[test]
    fn a_secret_is_made_once_then_read_and_an_empty_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("token");
        let made = read_or_create_secret(&path, 24).unwrap();
        assert_eq!(made.len(), 48, "hex of 24 bytes");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_or_create_secret(&path, 24).unwrap(), made);
        std::fs::write(&path, "\n").unwrap();
        let err = read_or_create_secret(&path, 24).unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");
    }
}
