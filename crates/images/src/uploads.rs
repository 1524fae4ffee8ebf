//! Pushes through the distribution API: a blob's bytes arrive under an upload id, in one
//! request or several, and its digest comes with the last. They are hashed then, and become a
//! blob only if they match.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use sha2::Digest as _;

use crate::{Digest, ImageError, Store};

impl Store {
    fn upload_path(&self, id: &str) -> Result<PathBuf, ImageError> {
        // Ids are ours (random hex); anything else is not an upload of this store.
        match id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => Ok(self.root().join("uploads").join(id)),
            false => Err(ImageError::UnknownUpload(id.to_string())),
        }
    }

    /// Starts an upload; its id names it in the next requests.
    pub fn begin_upload(&self) -> Result<String, ImageError> {
        let dir = self.root().join("uploads");
        std::fs::create_dir_all(&dir).map_err(ImageError::io("cannot make", &dir))?;
        let id = seal::files::random_hex(16)
            .map_err(ImageError::io("cannot read", "/dev/urandom".as_ref()))?;
        let path = self.upload_path(&id)?;
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(ImageError::io("cannot create", &path))?;
        Ok(id)
    }

    /// The bytes upload `id` has so far.
    pub fn upload_size(&self, id: &str) -> Result<u64, ImageError> {
        let path = self.upload_path(id)?;
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|_| ImageError::UnknownUpload(id.to_string()))
    }

    /// Appends `bytes` to upload `id`; returns its size after.
    pub fn append_upload(&self, id: &str, bytes: &[u8]) -> Result<u64, ImageError> {
        let path = self.upload_path(id)?;
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|_| ImageError::UnknownUpload(id.to_string()))?;
        file.write_all(bytes)
            .map_err(ImageError::io("cannot write", &path))?;
        self.upload_size(id)
    }

    /// Ends upload `id` as blob `digest`: refused, and the bytes dropped, unless they hash to it.
    /// Returns the blob's size.
    pub fn finish_upload(&self, id: &str, digest: &Digest) -> Result<u64, ImageError> {
        let path = self.upload_path(id)?;
        let mut file =
            std::fs::File::open(&path).map_err(|_| ImageError::UnknownUpload(id.to_string()))?;
        let (hasher, size) = crate::store::hash_rest(&mut file, &path)?;
        let actual = Digest::from_hash(hasher.finalize().as_slice());
        if &actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(ImageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        file.sync_all()
            .map_err(ImageError::io("cannot sync", &path))?;
        let to = self.path(digest);
        std::fs::rename(&path, &to).map_err(ImageError::io("cannot store", &to))?;
        Ok(size)
    }

    /// Drops upload `id`.
    pub fn cancel_upload(&self, id: &str) -> Result<(), ImageError> {
        let path = self.upload_path(id)?;
        std::fs::remove_file(&path).map_err(|_| ImageError::UnknownUpload(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_becomes_a_blob_only_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.begin_upload().unwrap();
        assert_eq!(store.append_upload(&id, b"hello ").unwrap(), 6);
        assert_eq!(store.append_upload(&id, b"world").unwrap(), 11);
        let wrong = Digest::of(b"hello");
        let err = store.finish_upload(&id, &wrong).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.size(&wrong), None);
        assert!(
            matches!(store.upload_size(&id), Err(ImageError::UnknownUpload(_))),
            "dropped"
        );

        let id = store.begin_upload().unwrap();
        store.append_upload(&id, b"hello world").unwrap();
        let right = Digest::of(b"hello world");
        assert_eq!(store.finish_upload(&id, &right).unwrap(), 11);
        assert_eq!(store.read(&right).unwrap(), b"hello world");
        for bad in ["../../etc/passwd", "abc", &"g".repeat(32)] {
            assert!(matches!(
                store.upload_size(bad),
                Err(ImageError::UnknownUpload(_))
            ));
        }
    }
}
