//! Garbage collection of the store: given the images to keep (by store name and tag), the tags
//! of every other image go, then every blob no kept tag reaches, then partial writes left
//! behind. What is being written is never removed:
//!
//! - an upload, an interrupted ingest or a load's staging younger than [`Keep::fresh`] (a push,
//!   a pull or a load going on);
//! - a blob younger than that which no tag reaches yet (a push sends its blobs before the
//!   manifest that names them, a fetch from a peer its blobs before the tag);
//! - with [`Keep::spare_fresh_tags`], a tag whose manifest arrived within that time: an image
//!   pushed ahead of the deploy that will use it (the agent's timer sets it; `outpost image
//!   prune`, asked for now, does not).
//!
//! Tags go before blobs, so a reader never meets a tag whose manifest is gone.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::{Digest, ImageError, Listed, Store, refs};

/// What a collection keeps.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    /// The images kept, as the store names them: (repository without a registry host, tag).
    pub images: BTreeSet<(String, String)>,
    /// How young a write (or, with `spare_fresh_tags`, a tag's manifest) must be to be spared.
    pub fresh: Duration,
    pub spare_fresh_tags: bool,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The tags removed, each with the bytes its image held (shared layers in each).
    pub images: Vec<Listed>,
    pub blobs: Vec<Digest>,
    /// Bytes of the blobs removed, each counted once.
    pub bytes: u64,
    /// Blobs left.
    pub kept: usize,
    /// Partial writes (uploads, ingests, loads' staging) removed: older than [`Keep::fresh`].
    pub partial: usize,
}

impl Store {
    /// Removes (or with `dry_run` only lists) what `keep` does not keep, as of `now`.
    pub fn prune(&self, keep: &Keep, now: SystemTime, dry_run: bool) -> Result<Pruned, ImageError> {
        let young = |path: &Path| is_young(path, now, keep.fresh);
        let listed = self.images()?;
        let (kept, dropped): (Vec<Listed>, Vec<Listed>) = listed.into_iter().partition(|i| {
            keep.images.contains(&(i.name.clone(), i.tag.clone()))
                || (keep.spare_fresh_tags && young(&self.path(&i.digest)))
        });
        let reached = self.reach(kept.iter().map(|i| i.digest.clone()))?;
        let tagged = self.reach(dropped.iter().map(|i| i.digest.clone()))?;
        let mut pruned = Pruned::default();
        for (digest, size) in self.blobs()? {
            let on_its_way = !tagged.contains(&digest) && young(&self.path(&digest));
            if reached.contains(&digest) || on_its_way {
                pruned.kept += 1;
                continue;
            }
            pruned.bytes += size;
            pruned.blobs.push(digest);
        }
        let partial = self.partial_writes()?;
        // A staging directory is young while any file in it is: a big blob is written long
        // after its directory was made.
        let under_way = |p: &Path| {
            young(p)
                || (std::fs::read_dir(p).into_iter().flatten().flatten()).any(|e| young(&e.path()))
        };
        let stale: Vec<_> = partial.into_iter().filter(|p| !under_way(p)).collect();
        pruned.partial = stale.len();
        if !dry_run {
            for image in &dropped {
                self.untag(&image.name, &image.tag, &image.digest)?;
            }
            for digest in &pruned.blobs {
                let path = self.path(digest);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(ImageError::io("cannot remove", &path)(e));
                    }
                    _ => {}
                }
            }
            for path in &stale {
                let _ = match path.is_dir() {
                    true => std::fs::remove_dir_all(path),
                    false => std::fs::remove_file(path),
                };
            }
        }
        pruned.images = dropped;
        Ok(pruned)
    }

    /// Every manifest and blob the manifests (or indexes) `roots` reach.
    fn reach(&self, roots: impl Iterator<Item = Digest>) -> Result<BTreeSet<Digest>, ImageError> {
        let mut reached = BTreeSet::new();
        let mut manifests: Vec<Digest> = roots.collect();
        while let Some(digest) = manifests.pop() {
            if !reached.insert(digest.clone()) || self.size(&digest).is_none() {
                continue;
            }
            // A damaged manifest keeps itself but nothing else: its image is broken anyway.
            if let Ok(refs) = refs::references(&digest, &self.read(&digest)?) {
                manifests.extend(refs.manifests);
                reached.extend(refs.blobs);
            }
        }
        Ok(reached)
    }

    /// The files of uploads and interrupted ingests, and the staging directories of loads
    /// (one a killed load left behind ages like the rest: nothing writes to it any more).
    fn partial_writes(&self) -> Result<Vec<std::path::PathBuf>, ImageError> {
        let mut found = Vec::new();
        let dirs = ["ingest", "uploads", "staging"].map(|d| self.root().join(d));
        for dir in dirs {
            match std::fs::read_dir(&dir) {
                Ok(entries) => found.extend(entries.flatten().map(|e| e.path())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("cannot list", &dir)(e)),
            }
        }
        Ok(found)
    }

    /// Removes `name:tag` if it still points at `digest` (a push may have moved it since).
    fn untag(&self, name: &str, tag: &str, digest: &Digest) -> Result<(), ImageError> {
        let _guard = self.tags_lock();
        let mut tags = self.tags()?;
        let key = format!("{name}:{tag}");
        if tags
            .get(&key)
            .is_none_or(|t| t.digest != digest.to_string())
        {
            return Ok(());
        }
        tags.remove(&key);
        let path = self.root().join("tags.json");
        let bytes = serde_json::to_vec_pretty(&tags).map_err(|e| ImageError::Io {
            what: "cannot encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        seal::files::write_private(&path, &bytes).map_err(ImageError::io("cannot write", &path))
    }
}

/// Whether the file at `path` was last written within `fresh` of `now` (a file whose time
/// cannot be read counts as young: never remove on uncertainty).
fn is_young(path: &Path, now: SystemTime, fresh: Duration) -> bool {
    match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(written) => now.duration_since(written).map_or(true, |age| age < fresh),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests;
