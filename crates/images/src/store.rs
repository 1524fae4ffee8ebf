//! Blobs on disk: `blobs/sha256/<hex>` (complete, verified) and `ingest/<hex>` (being written).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::{Digest, ImageError};

/// Blob files are this user's alone, like every file of a data dir.
const FILE_MODE: u32 = 0o600;

/// The content store under one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Held across a change of the tags file (read, change, write).
    tags: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Store {
    /// The store under `root`, made (0700) if missing.
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let store = Store {
            root: root.to_path_buf(),
            tags: Default::default(),
        };
        for dir in [root.to_path_buf(), store.blobs_dir(), store.ingest_dir()] {
            std::fs::create_dir_all(&dir).map_err(ImageError::io("cannot make", &dir))?;
            seal::files::private_dir(&dir).map_err(ImageError::io("cannot make private", &dir))?;
        }
        Ok(store)
    }

    /// The directory the store keeps everything in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tags_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.tags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where the complete blob `digest` is (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// The size of blob `digest`, if the store has it.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// The whole of blob `digest` (manifests and configs; stream layers with [`Store::open_blob`]).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(ImageError::io("cannot read", &self.path(digest)))?;
        Ok(bytes)
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, ImageError> {
        File::open(self.path(digest)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::Missing(digest.clone()),
            _ => ImageError::io("cannot open", &self.path(digest))(e),
        })
    }

    /// Writes `bytes` as blob `digest`, refused unless they hash to it.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        if self.size(digest).is_some() {
            return Ok(());
        }
        let mut ingest = self.ingest(digest, Some(bytes.len() as u64))?;
        // A partial copy of the same bytes may be there already.
        let have = usize::try_from(ingest.offset())
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        ingest.write(&bytes[have..])?;
        ingest.commit()
    }

    /// A writer of blob `digest` (`size` bytes, when known), going on from what an interrupted
    /// write left: [`Ingest::offset`] tells how much is there already.
    pub fn ingest(&self, digest: &Digest, size: Option<u64>) -> Result<Ingest, ImageError> {
        let path = self.ingest_dir().join(digest.hex());
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(ImageError::io("cannot open", &path))?;
        let (hasher, written) = hash_rest(&mut file, &path)?;
        let mut ingest = Ingest {
            store: self.clone(),
            digest: digest.clone(),
            size,
            path,
            file,
            hasher,
            written,
        };
        if size.is_some_and(|size| written > size) {
            // More than the blob has: not a prefix of it. Start over.
            ingest.restart()?;
        }
        Ok(ingest)
    }

    /// Every complete blob and its size.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64)>, ImageError> {
        let dir = self.blobs_dir();
        let entries = std::fs::read_dir(&dir).map_err(ImageError::io("cannot list", &dir))?;
        let mut blobs = Vec::new();
        for entry in entries.flatten() {
            let name = format!("sha256:{}", entry.file_name().to_string_lossy());
            if let (Ok(digest), Ok(meta)) = (name.parse::<Digest>(), entry.metadata()) {
                blobs.push((digest, meta.len()));
            }
        }
        blobs.sort();
        Ok(blobs)
    }
}

/// The hash of what is left to read in `file` (at `path`), and how many bytes that was.
pub(crate) fn hash_rest(file: &mut File, path: &Path) -> Result<(Sha256, u64), ImageError> {
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(ImageError::io("cannot read", path))?;
        if n == 0 {
            return Ok((hasher, read));
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
}

/// A blob being written: bytes are hashed as they come and the blob becomes visible on
/// [`Ingest::commit`] only if they match. Dropped without a commit, it leaves its bytes for the
/// next writer of the digest to go on from.
#[derive(Debug)]
pub struct Ingest {
    store: Store,
    digest: Digest,
    size: Option<u64>,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    /// Bytes already written: where a resumed download asks to go on (an HTTP range start).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Appends the next bytes; refused past the announced size (the copy is dropped).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let after = self.written + bytes.len() as u64;
        if let Some(size) = self.size
            && after > size
        {
            self.discard();
            return Err(ImageError::SizeMismatch {
                digest: self.digest.clone(),
                expected: size,
                actual: after,
            });
        }
        self.file
            .write_all(bytes)
            .map_err(ImageError::io("cannot write", &self.path))?;
        self.hasher.update(bytes);
        self.written = after;
        Ok(())
    }

    /// Drops what was written and starts the blob from zero (a source that does not resume).
    pub fn restart(&mut self) -> Result<(), ImageError> {
        self.file
            .set_len(0)
            .map_err(ImageError::io("cannot truncate", &self.path))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Checks size and digest, then makes the blob visible (fsynced, renamed into `blobs/`).
    /// On a mismatch the bytes are dropped and nothing becomes visible.
    pub fn commit(mut self) -> Result<(), ImageError> {
        if let Some(expected) = self.size
            && expected != self.written
        {
            let actual = self.written;
            self.discard();
            return Err(ImageError::SizeMismatch {
                digest: self.digest.clone(),
                expected,
                actual,
            });
        }
        let actual = Digest::from_hash(std::mem::take(&mut self.hasher).finalize().as_slice());
        if actual != self.digest {
            self.discard();
            return Err(ImageError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.file
            .sync_all()
            .map_err(ImageError::io("cannot sync", &self.path))?;
        let to = self.store.path(&self.digest);
        std::fs::rename(&self.path, &to).map_err(ImageError::io("cannot store", &to))?;
        Ok(())
    }

    fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        self.written = 0;
        self.hasher = Sha256::new();
    }
}

#[cfg(test)]
mod tests;
