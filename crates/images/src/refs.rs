//! What a manifest or an index refers to, read with `oci-spec`'s types. Docker's schema 2
//! manifests and manifest lists have the same shape and parse the same way.

use oci_spec::image::{ImageIndex, ImageManifest};

use crate::{Digest, ImageError};

/// The largest manifest or index read, as registries bound them (4 MiB): a bigger one is
/// refused before it is parsed.
pub const MAX_MANIFEST: usize = 4 << 20;

/// What a manifest or index points at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Manifests of an index (each one to be read in turn).
    pub manifests: Vec<Digest>,
    /// A manifest's config and layers: blobs with nothing inside to follow.
    pub blobs: Vec<Digest>,
}

/// The blobs manifest or index `digest` (its `bytes`) refers to; an error naming it for
/// anything else (too large, not JSON, neither shape, a malformed digest).
pub fn references(digest: &Digest, bytes: &[u8]) -> Result<References, ImageError> {
    let bad = |why: String| ImageError::BadManifest {
        digest: digest.clone(),
        why,
    };
    if bytes.len() > MAX_MANIFEST {
        return Err(bad(format!(
            "{} bytes, over the {MAX_MANIFEST} a manifest may have",
            bytes.len()
        )));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let parse = |d: &oci_spec::image::Digest| {
        d.to_string()
            .parse::<Digest>()
            .map_err(|e| bad(e.to_string()))
    };
    let mut refs = References::default();
    if value.get("manifests").is_some() {
        let index: ImageIndex =
            serde_json::from_value(value).map_err(|e| bad(format!("not an image index: {e}")))?;
        for m in index.manifests() {
            refs.manifests.push(parse(m.digest())?);
        }
    } else if value.get("layers").is_some() {
        let manifest: ImageManifest = serde_json::from_value(value)
            .map_err(|e| bad(format!("not an image manifest: {e}")))?;
        refs.blobs.push(parse(manifest.config().digest())?);
        for layer in manifest.layers() {
            refs.blobs.push(parse(layer.digest())?);
        }
    } else {
        return Err(bad("neither an image manifest nor an index".into()));
    }
    Ok(refs)
}
