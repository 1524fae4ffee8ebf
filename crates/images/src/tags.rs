//! Image names and tags: which manifest `name:tag` is. One small JSON file, rewritten whole on
//! a change (written aside and renamed, so a reader sees the old map or the new).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Digest, ImageError, Store};

/// What a tag points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    pub digest: String,
    pub media_type: String,
}

/// Checks a repository name as the distribution spec has it: lowercase path components of
/// letters and digits joined by `.`, `_`, `__` or `-`, separated by `/`.
pub fn check_name(name: &str) -> Result<(), ImageError> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
            && !c.contains("..")
    };
    match name.len() <= 255 && name.split('/').all(component_ok) {
        true => Ok(()),
        false => Err(ImageError::BadName(name.to_string())),
    }
}

/// Checks a tag: a letter, digit or `_`, then up to 127 of those, `.` and `-`.
pub fn check_tag(tag: &str) -> Result<(), ImageError> {
    let ok = tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    match ok {
        true => Ok(()),
        false => Err(ImageError::BadTag(tag.to_string())),
    }
}

/// A spec's image (`registry.example.com/team/app:1.4`) as the store names it: its repository
/// without a registry host (`team/app`) and its tag (`latest` when none). A first part with a
/// `.` or a `:`, or `localhost`, is a registry host; a `:` before the last `/` is its port.
pub fn store_name(image: &str) -> (&str, &str) {
    let (repo, tag) = split_tag(image);
    let repo = match repo.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            rest
        }
        _ => repo,
    };
    (repo, tag)
}

/// `repo:tag` as (repo, tag), `latest` when no tag is given; a digest (`@sha256:…`) is left off.
pub fn split_tag(image: &str) -> (&str, &str) {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// An image the store holds, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub tag: String,
    pub digest: Digest,
    /// Bytes of its manifests, configs and layers in the store (shared layers counted in each
    /// image that has them).
    pub bytes: u64,
    /// Blobs it refers to that the store lacks (0 for an image that can be pulled whole).
    pub missing: usize,
}

impl Store {
    /// Every tagged image with its size, sorted by name and tag.
    pub fn images(&self) -> Result<Vec<Listed>, ImageError> {
        let mut out = Vec::new();
        for (key, tagged) in self.tags()? {
            let Some((name, tag)) = key.rsplit_once(':') else {
                continue;
            };
            let Ok(digest) = tagged.digest.parse::<Digest>() else {
                continue;
            };
            let (bytes, missing) = self.weigh(&digest)?;
            out.push(Listed {
                name: name.to_string(),
                tag: tag.to_string(),
                digest,
                bytes,
                missing,
            });
        }
        Ok(out)
    }

    /// The bytes of what manifest (or index) `digest` reaches, and how many of its blobs are
    /// missing.
    fn weigh(&self, digest: &Digest) -> Result<(u64, usize), ImageError> {
        let (mut bytes, mut missing) = (0, 0);
        let mut seen = std::collections::BTreeSet::new();
        let mut manifests = vec![digest.clone()];
        while let Some(manifest) = manifests.pop() {
            if !seen.insert(manifest.clone()) {
                continue;
            }
            let Some(size) = self.size(&manifest) else {
                missing += 1;
                continue;
            };
            bytes += size;
            let Ok(refs) = crate::references(&manifest, &self.read(&manifest)?) else {
                continue;
            };
            manifests.extend(refs.manifests);
            for blob in refs.blobs {
                if seen.insert(blob.clone()) {
                    match self.size(&blob) {
                        Some(size) => bytes += size,
                        None => missing += 1,
                    }
                }
            }
        }
        Ok((bytes, missing))
    }

    fn tags_file(&self) -> std::path::PathBuf {
        self.root().join("tags.json")
    }

    /// Every `name:tag` and what it points at.
    pub fn tags(&self) -> Result<BTreeMap<String, Tagged>, ImageError> {
        let path = self.tags_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
                what: "cannot parse",
                path,
                source: std::io::Error::other(e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ImageError::io("cannot read", &path)(e)),
        }
    }

    /// Points `name:tag` at manifest `digest` (already stored).
    pub fn tag(
        &self,
        name: &str,
        tag: &str,
        digest: &Digest,
        media_type: &str,
    ) -> Result<(), ImageError> {
        let image = format!("{name}:{tag}");
        self.tag_all(&[(image, digest.clone(), media_type.to_string())])
    }

    /// Points each `name:tag` at its manifest (already stored), all in one write: a reader
    /// sees all of them or none.
    pub fn tag_all(&self, images: &[(String, Digest, String)]) -> Result<(), ImageError> {
        for (image, _, _) in images {
            let (name, tag) = split_tag(image);
            check_name(name)?;
            check_tag(tag)?;
        }
        let _guard = self.tags_lock();
        let mut tags = self.tags()?;
        for (image, digest, media_type) in images {
            let (name, tag) = split_tag(image);
            tags.insert(
                format!("{name}:{tag}"),
                Tagged {
                    digest: digest.to_string(),
                    media_type: media_type.clone(),
                },
            );
        }
        let bytes = serde_json::to_vec_pretty(&tags).map_err(|e| ImageError::Io {
            what: "cannot encode",
            path: self.tags_file(),
            source: std::io::Error::other(e),
        })?;
        seal::files::write_private(&self.tags_file(), &bytes)
            .map_err(ImageError::io("cannot write", &self.tags_file()))
    }

    /// The manifest `name:tag` points at.
    pub fn resolve(&self, name: &str, tag: &str) -> Result<Option<(Digest, String)>, ImageError> {
        let tags = self.tags()?;
        let Some(tagged) = tags.get(&format!("{name}:{tag}")) else {
            return Ok(None);
        };
        Ok(Some((tagged.digest.parse()?, tagged.media_type.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_follow_the_distribution_grammar() {
        for good in ["demo", "library/nginx", "edge.site/app_1", "a-b/c.d/e__f"] {
            check_name(good).unwrap();
        }
        for bad in [
            "", "Demo", "a//b", "../etc", "a/..", "-a", "a-", "a/b/", "a b",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["latest", "1.2.3", "_x", "v1-rc.2"] {
            check_tag(good).unwrap();
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_images_are_named_without_their_registry_host() {
        assert_eq!(store_name("demo"), ("demo", "latest"));
        assert_eq!(store_name("team/app:1.4"), ("team/app", "1.4"));
        assert_eq!(store_name("localhost:5000/app"), ("app", "latest"));
        assert_eq!(store_name("reg.io:5000/app:2@sha256:ab"), ("app", "2"));
        assert_eq!(
            store_name("registry.example.com/team/app:1"),
            ("team/app", "1")
        );
        assert_eq!(store_name("library/nginx:1.25"), ("library/nginx", "1.25"));
    }

    #[test]
    fn a_tag_points_at_its_manifest_and_can_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (one, two) = (Digest::of(b"1"), Digest::of(b"2"));
        let kind = "application/vnd.oci.image.manifest.v1+json";
        assert_eq!(store.resolve("demo", "1").unwrap(), None);
        store.tag("demo", "1", &one, kind).unwrap();
        store.tag("demo", "1", &two, kind).unwrap();
        store.tag("other/app", "latest", &one, kind).unwrap();
        assert_eq!(
            store.resolve("demo", "1").unwrap(),
            Some((two, kind.into()))
        );
        assert_eq!(store.tags().unwrap().len(), 2);
        assert!(store.tag("Bad", "1", &one, kind).is_err());
    }
}
