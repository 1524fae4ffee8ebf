//! The node's image content store: OCI blobs (layers, configs, manifests, indexes) kept by
//! their sha256 digest, as an OCI image layout keeps them (`blobs/sha256/<hex>`).
//!
//! - **Verified on write.** A blob is written under `ingest/` and becomes visible, by a rename
//!   into `blobs/`, only once its bytes hash to the digest it was asked for and have the size
//!   it was announced with; anything else is refused and the partial file removed. A reader
//!   therefore never sees a blob that does not match its name.
//! - **Resumable.** An interrupted write leaves its bytes under `ingest/<hex>`; the next writer
//!   of that digest goes on from their end (re-hashing what is there), never from zero.
//! - **Collected.** [`Store::prune`] removes the tags of images not kept, every blob no kept
//!   tag reaches and stale partial writes, sparing what is being written.
//!
//! - **Bundled.** [`Store::plan_bundle`], [`Store::write_bundle`] and [`Store::load_bundle`]
//!   carry images as one signed file (see the `bundle` module).
//!
//! Nothing here speaks to a network: pulling, serving and bundling use this store.

mod bundle;
mod digest;
mod prune;
mod refs;
mod store;
mod tags;
mod uploads;

pub use bundle::{
    BundleBlob, BundleImage, BundleManifest, BundleSignature, LoadLimits, Loaded, TrustedKeys, hex,
    key_id, public_key, read_manifest,
};
pub use digest::Digest;
pub use prune::{Keep, Pruned};
pub use refs::{MAX_MANIFEST, References, references};
pub use store::{Ingest, Store};
pub use tags::{Listed, Tagged, check_name, check_tag, split_tag, store_name};

/// What went wrong with the store, naming the blob or file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0:?} is not a sha256 digest (`sha256:` and 64 lowercase hex digits)")]
    BadDigest(String),
    #[error("blob {expected}: its bytes hash to {actual}; the copy was dropped, fetch it again")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: {actual} bytes where {expected} were announced; the copy was dropped")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in this node's store")]
    Missing(Digest),
    #[error(
        "{0:?} is not a repository name (lowercase letters, digits, `.`, `_`, `-`, parts separated by `/`)"
    )]
    BadName(String),
    #[error(
        "{0:?} is not a tag (letters, digits, `_`, `.`, `-`, up to 128, not starting with `.` or `-`)"
    )]
    BadTag(String),
    #[error("no upload {0:?} is in progress here: start it again")]
    UnknownUpload(String),
    #[error("manifest {digest}: {why}")]
    BadManifest { digest: Digest, why: String },
    /// A bundle refused, and why (which entry, blob or key).
    #[error("bundle refused, nothing was loaded: {0}")]
    Bundle(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl ImageError {
    fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io { what, path, source }
    }
}
