//! Offline and delta bundles: images carried to a node as one file, with no registry.
//!
//! A bundle is a tar, zstd-compressed, that is also an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`), led by two entries of its own:
//! - `outpost-bundle.json` ([`BundleManifest`]): the images (`name:tag` → manifest digest) and
//!   every blob they need, each with its digest and size: those carried (`blobs`) and those left
//!   out because the target has them already (`omitted`, the base layers of a delta);
//! - `outpost-bundle.sig` ([`BundleSignature`]): an ed25519 signature of those exact bytes.
//!
//! Loading ([`Store::load_bundle`]) checks the signature against the trusted keys before it
//! reads a blob, stages every blob aside while hashing it, checks that every blob an image
//! reaches is staged or already stored, and only then moves the blobs into the store and tags
//! the images, all tags in one write. Anything wrong refuses the whole bundle and leaves the
//! store as it was. `docker save` archives load the same way, unsigned, only when asked.
//!
//! What is refused, always naming the entry or blob: a wrong signature or an unknown key; a blob
//! whose bytes or size differ from the manifest's; a truncated archive; entries that are not
//! plain files (links, devices), paths with `..` or `/` in front, names the format does not
//! have; more decompressed bytes than the manifest declares (a decompression bomb); an image
//! whose blobs are neither carried nor stored; a manifest over [`MAX_MANIFEST`].

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Digest, ImageError, MAX_MANIFEST, Store, refs};

/// The bundle's own entries.
pub const MANIFEST_ENTRY: &str = "outpost-bundle.json";
pub const SIGNATURE_ENTRY: &str = "outpost-bundle.sig";

/// The format this binary writes; it reads this one and every older one.
pub const FORMAT: u32 = 1;

/// Decompressed bytes allowed beyond the blobs a manifest declares: the tar headers and the
/// layout's small files.
const METADATA_ALLOWANCE: u64 = 4 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// What a bundle holds: the table of every blob, carried or left out, by digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format: u32,
    /// When it was made, in milliseconds since the epoch.
    pub created_ms: u64,
    pub images: Vec<BundleImage>,
    /// The blobs in the bundle.
    pub blobs: Vec<BundleBlob>,
    /// Blobs the images need that the bundle leaves out: the target holds them already.
    #[serde(default)]
    pub omitted: Vec<BundleBlob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleImage {
    /// `name:tag` as the store names it.
    pub image: String,
    pub digest: Digest,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BundleBlob {
    pub digest: Digest,
    pub size: u64,
}

/// The signature of a bundle's manifest bytes, by the key `key` names ([`key_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSignature {
    pub key: String,
    /// The ed25519 signature, in hex.
    pub signature: String,
}

/// The ed25519 public keys whose bundles a node accepts, by [`key_id`].
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(BTreeMap<String, Vec<u8>>);

impl TrustedKeys {
    /// Trusts `public_key` (32 bytes); its id.
    pub fn add(&mut self, public_key: &[u8]) -> String {
        let id = key_id(public_key);
        self.0.insert(id.clone(), public_key.to_vec());
        id
    }

    /// Refuses unless `signature` is a trusted key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &BundleSignature) -> Result<(), ImageError> {
        let key = self.0.get(&signature.key).ok_or_else(|| {
            bad(format!(
                "it is signed by key {}, which this cluster does not trust \
                 (`outpost image keys` lists the trusted ones; `outpost image keys add` adds one)",
                signature.key
            ))
        })?;
        let sig = unhex(&signature.signature)
            .ok_or_else(|| bad(format!("{SIGNATURE_ENTRY}: the signature is not hex")))?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(message, &sig)
            .map_err(|_| {
                bad(format!(
                    "the signature by key {} does not match its manifest: the bundle was \
                     changed after it was signed",
                    signature.key
                ))
            })
    }
}

/// An ed25519 public key from its 64 hex digits.
pub fn public_key(hex: &str) -> Option<[u8; 32]> {
    unhex(hex.trim())?.try_into().ok()
}

/// A public key's id: `ed25519:` and the first 16 hex digits of its sha256.
pub fn key_id(public_key: &[u8]) -> String {
    format!("ed25519:{}", &hex(&Sha256::digest(public_key))[..16])
}

/// What a load added.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    pub images: Vec<BundleImage>,
    /// Blobs new to the store, and their bytes.
    pub blobs_added: usize,
    pub bytes_added: u64,
    /// The key that signed it; `None` for an unsigned `docker save` archive.
    pub signed_by: Option<String>,
}

/// How much a load may take in.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Decompressed bytes of an archive whose manifest declares no sizes (`docker save`).
    pub max_unsigned_bytes: u64,
    /// Accept `docker save` archives, which carry no signature.
    pub allow_unsigned: bool,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_unsigned_bytes: 16 << 30,
            allow_unsigned: false,
        }
    }
}

fn bad(why: String) -> ImageError {
    ImageError::Bundle(why)
}

impl Store {
    /// The manifest of a bundle of `images` (`name:tag`, as stored) for a target that holds
    /// `have` already: every blob the images reach, carried unless in `have`.
    pub fn plan_bundle(
        &self,
        images: &[String],
        have: &BTreeSet<Digest>,
        created_ms: u64,
    ) -> Result<BundleManifest, ImageError> {
        let mut plan = BundleManifest {
            format: FORMAT,
            created_ms,
            images: Vec::new(),
            blobs: Vec::new(),
            omitted: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for image in images {
            let (name, tag) = crate::split_tag(image);
            let (digest, media_type) = self.resolve(name, tag)?.ok_or_else(|| {
                bad(format!(
                    "{image} is not in this node's store (`outpost images` lists it)"
                ))
            })?;
            for blob in self.blobs_of(&digest)? {
                if !seen.insert(blob.clone()) {
                    continue;
                }
                let size = self.size(&blob).ok_or(ImageError::Missing(blob.clone()))?;
                let entry = BundleBlob { digest: blob, size };
                match have.contains(&entry.digest) {
                    true => plan.omitted.push(entry),
                    false => plan.blobs.push(entry),
                }
            }
            plan.images.push(BundleImage {
                image: format!("{name}:{tag}"),
                digest,
                media_type,
            });
        }
        Ok(plan)
    }

    /// Every blob manifest or index `root` reaches, itself first; an error for one missing.
    pub fn blobs_of(&self, root: &Digest) -> Result<Vec<Digest>, ImageError> {
        let mut reached = Vec::new();
        let mut manifests = vec![root.clone()];
        while let Some(digest) = manifests.pop() {
            let refs = refs::references(&digest, &self.read(&digest)?)?;
            reached.push(digest);
            manifests.extend(refs.manifests);
            for blob in refs.blobs {
                self.size(&blob).ok_or(ImageError::Missing(blob.clone()))?;
                reached.push(blob);
            }
        }
        Ok(reached)
    }

    /// Writes the bundle `manifest` (its exact bytes, as signed) describes to `out`, as a
    /// zstd-compressed tar. Bytes of compressed output written.
    pub fn write_bundle<W: Write>(
        &self,
        manifest: &[u8],
        signature: &BundleSignature,
        out: W,
    ) -> Result<u64, ImageError> {
        let plan: BundleManifest =
            serde_json::from_slice(manifest).map_err(|e| bad(format!("{MANIFEST_ENTRY}: {e}")))?;
        let counted = Counted { inner: out, n: 0 };
        let zstd = zstd::Encoder::new(counted, 3).map_err(write_error)?;
        let mut tar = tar::Builder::new(zstd);
        let mtime = plan.created_ms / 1000;
        let signature = serde_json::to_vec(signature).expect("a signature encodes");
        append(&mut tar, MANIFEST_ENTRY, manifest, mtime)?;
        append(&mut tar, SIGNATURE_ENTRY, &signature, mtime)?;
        append(
            &mut tar,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            mtime,
        )?;
        append(&mut tar, "index.json", &layout_index(&plan), mtime)?;
        for blob in &plan.blobs {
            let file = self.open_blob(&blob.digest)?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if size != blob.size {
                return Err(ImageError::SizeMismatch {
                    digest: blob.digest.clone(),
                    expected: blob.size,
                    actual: size,
                });
            }
            let mut header = header(size, mtime);
            let path = format!("blobs/sha256/{}", blob.digest.hex());
            tar.append_data(&mut header, path, file)
                .map_err(write_error)?;
        }
        let zstd = tar.into_inner().map_err(write_error)?;
        let counted = zstd.finish().map_err(write_error)?;
        Ok(counted.n)
    }

    /// Reads a bundle (or, with `limits.allow_unsigned`, a `docker save` archive) from
    /// `input`, checks all of it, then adds its blobs and tags to the store. Nothing is added
    /// unless all of it is right.
    pub fn load_bundle<R: Read>(
        &self,
        input: R,
        trusted: &TrustedKeys,
        limits: LoadLimits,
    ) -> Result<Loaded, ImageError> {
        self.load_checked(input, trusted, limits)
            .map_err(|e| match e {
                ImageError::Bundle(_) | ImageError::Io { .. } => e,
                // A name, tag or manifest of the bundle that is not one.
                other => bad(other.to_string()),
            })
    }

    fn load_checked<R: Read>(
        &self,
        input: R,
        trusted: &TrustedKeys,
        limits: LoadLimits,
    ) -> Result<Loaded, ImageError> {
        let staging = Staging::new(self)?;
        // Until a signed manifest declares its sizes, only what comes before it may be read.
        let budget = Rc::new(Cell::new(match limits.allow_unsigned {
            true => limits.max_unsigned_bytes,
            false => METADATA_ALLOWANCE + 2 * MAX_MANIFEST as u64,
        }));
        let archive = decompress(input, budget.clone())?;
        let mut reader = Reader {
            trusted,
            limits,
            budget,
            staging: &staging,
            manifest: None,
            signed_by: None,
            files: BTreeMap::new(),
            carried: BTreeSet::new(),
        };
        reader.read_all(archive)?;
        let plan = match reader.manifest.take() {
            Some(plan) => reader.check_carried(plan)?,
            None => reader.docker_save()?,
        };
        let signed_by = reader.signed_by.take();
        self.check_complete(&plan, &staging)?;
        let (blobs_added, bytes_added) = staging.commit(self, &plan.blobs)?;
        let tags: Vec<(String, Digest, String)> = (plan.images.iter())
            .map(|i| (i.image.clone(), i.digest.clone(), i.media_type.clone()))
            .collect();
        self.tag_all(&tags)?;
        Ok(Loaded {
            images: plan.images,
            blobs_added,
            bytes_added,
            signed_by,
        })
    }

    /// Refuses a plan with an image that reaches a blob neither staged nor stored.
    fn check_complete(&self, plan: &BundleManifest, staging: &Staging) -> Result<(), ImageError> {
        let carried: BTreeSet<&Digest> = plan.blobs.iter().map(|b| &b.digest).collect();
        let has = |d: &Digest| carried.contains(d) || self.size(d).is_some();
        for image in &plan.images {
            let mut manifests = vec![image.digest.clone()];
            while let Some(digest) = manifests.pop() {
                let bytes = match carried.contains(&digest) {
                    true => staging.read(&digest)?,
                    false if self.size(&digest).is_some() => self.read(&digest)?,
                    false => return Err(missing(&image.image, &digest)),
                };
                let refs = refs::references(&digest, &bytes)?;
                if let Some(lacking) = refs.blobs.iter().find(|b| !has(b)) {
                    return Err(missing(&image.image, lacking));
                }
                manifests.extend(refs.manifests);
            }
        }
        Ok(())
    }
}

fn missing(image: &str, digest: &Digest) -> ImageError {
    bad(format!(
        "{image} needs blob {digest}, which neither the bundle nor this node's store holds: \
         make the bundle again for this node (`outpost image save --have NODE`) or whole"
    ))
}

/// The manifest of a bundle file (its first entry), unchecked: what an earlier bundle carried,
/// for a delta to leave out.
pub fn read_manifest<R: Read>(input: R) -> Result<BundleManifest, ImageError> {
    let budget = Rc::new(Cell::new(METADATA_ALLOWANCE + 2 * MAX_MANIFEST as u64));
    let mut archive = tar::Archive::new(decompress(input, budget)?);
    let mut entries = archive.entries().map_err(read_error)?;
    let first = entries.next().transpose().map_err(read_error)?;
    let mut first = first.ok_or_else(|| bad("it holds no entries".into()))?;
    if entry_path(&first)? != MANIFEST_ENTRY {
        return Err(bad(format!(
            "it does not start with {MANIFEST_ENTRY}: it is not an Outpost bundle"
        )));
    }
    let bytes = small(&mut first, MANIFEST_ENTRY)?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("{MANIFEST_ENTRY}: {e}")))
}

/// The layout's `index.json`: each image by its `name:tag`, so OCI tools read the bundle too.
fn layout_index(plan: &BundleManifest) -> Vec<u8> {
    let size = |d: &Digest| {
        (plan.blobs.iter().chain(&plan.omitted))
            .find(|b| &b.digest == d)
            .map_or(0, |b| b.size)
    };
    let manifests: Vec<serde_json::Value> = (plan.images.iter())
        .map(|i| {
            serde_json::json!({
                "mediaType": i.media_type,
                "digest": i.digest.to_string(),
                "size": size(&i.digest),
                "annotations": { "org.opencontainers.image.ref.name": i.image },
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec(&index).expect("an index encodes")
}

fn header(size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mtime: u64,
) -> Result<(), ImageError> {
    let mut header = header(bytes.len() as u64, mtime);
    tar.append_data(&mut header, path, bytes)
        .map_err(write_error)
}

fn write_error(e: std::io::Error) -> ImageError {
    ImageError::Io {
        what: "cannot write the bundle",
        path: PathBuf::from("-"),
        source: e,
    }
}

/// A writer that counts what passes.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The archive's bytes: zstd-decompressed when they start with zstd's magic, else as they are
/// (a plain `docker save` tar), never more than `budget` of them.
fn decompress<'r, R: Read + 'r>(
    input: R,
    budget: Rc<Cell<u64>>,
) -> Result<Budgeted<Box<dyn Read + 'r>>, ImageError> {
    let mut input = std::io::BufReader::new(input);
    let head = std::io::BufRead::fill_buf(&mut input).map_err(read_error)?;
    let reader: Box<dyn Read + 'r> = match head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        true => Box::new(zstd::Decoder::with_buffer(input).map_err(read_error)?),
        false => Box::new(input),
    };
    Ok(Budgeted {
        inner: reader,
        budget,
    })
}

fn read_error(e: std::io::Error) -> ImageError {
    let why = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "it ends early: the file is truncated".to_string(),
        _ => format!("it cannot be read: {e}"),
    };
    bad(why)
}

/// A reader that fails once more than `budget` bytes came through: a decompression bomb stops
/// at the size the bundle declared.
struct Budgeted<R> {
    inner: R,
    budget: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.budget.get().checked_sub(n as u64) {
            Some(left) => {
                self.budget.set(left);
                Ok(n)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "it expands to more bytes than it declares (a decompression bomb?)",
            )),
        }
    }
}

/// Blobs read from an archive, kept aside by digest until all of it checks out; removed with
/// whatever is left when dropped.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn new(store: &Store) -> Result<Staging, ImageError> {
        let id = seal::files::random_hex(8).map_err(ImageError::io("cannot make", store.root()))?;
        let dir = store.root().join("staging").join(id);
        std::fs::create_dir_all(&dir).map_err(ImageError::io("cannot make", &dir))?;
        Ok(Staging { dir })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    fn read(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest);
        let file = std::fs::File::open(&path).map_err(ImageError::io("cannot read", &path))?;
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io("cannot read", &path))?;
        Ok(bytes)
    }

    /// Copies `entry` aside, hashing it: its digest and size.
    fn take(&self, entry: &mut impl Read) -> Result<(Digest, u64), ImageError> {
        let part = self.dir.join("part");
        let mut file =
            std::fs::File::create(&part).map_err(ImageError::io("cannot make", &part))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(read_error)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(ImageError::io("cannot write", &part))?;
            size += n as u64;
        }
        file.sync_all()
            .map_err(ImageError::io("cannot sync", &part))?;
        let digest = Digest::from_hash(hasher.finalize().as_slice());
        let to = self.path(&digest);
        std::fs::rename(&part, &to).map_err(ImageError::io("cannot stage", &to))?;
        Ok((digest, size))
    }

    /// Moves the staged `blobs` into the store: how many were new, and their bytes.
    fn commit(&self, store: &Store, blobs: &[BundleBlob]) -> Result<(usize, u64), ImageError> {
        let (mut added, mut bytes) = (0, 0);
        for blob in blobs {
            if store.size(&blob.digest).is_some() {
                continue;
            }
            let to = store.path(&blob.digest);
            std::fs::rename(self.path(&blob.digest), &to)
                .map_err(ImageError::io("cannot store", &to))?;
            added += 1;
            bytes += blob.size;
        }
        Ok((added, bytes))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One pass over an archive's entries.
struct Reader<'a> {
    trusted: &'a TrustedKeys,
    limits: LoadLimits,
    budget: Rc<Cell<u64>>,
    staging: &'a Staging,
    /// The bundle's manifest, once read and its signature checked.
    manifest: Option<BundleManifest>,
    signed_by: Option<String>,
    /// Every other file: its path and what it staged as.
    files: BTreeMap<String, (Digest, u64)>,
    carried: BTreeSet<Digest>,
}

impl Reader<'_> {
    fn read_all<R: Read>(&mut self, archive: R) -> Result<(), ImageError> {
        let mut archive = tar::Archive::new(archive);
        let entries = archive.entries().map_err(read_error)?;
        let mut unsigned_manifest: Option<Vec<u8>> = None;
        let mut first = true;
        for entry in entries {
            let mut entry = entry.map_err(read_error)?;
            let path = entry_path(&entry)?;
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                other => {
                    return Err(bad(format!(
                        "entry {path:?} is a {other:?}, not a plain file: refused"
                    )));
                }
            }
            if first && path != MANIFEST_ENTRY && !self.limits.allow_unsigned {
                return Err(bad(format!(
                    "it does not start with {MANIFEST_ENTRY}: it is not an Outpost bundle (a \
                     `docker save` archive, which has no signature, loads with --unsigned)"
                )));
            }
            first = false;
            match path.as_str() {
                MANIFEST_ENTRY if self.manifest.is_some() || unsigned_manifest.is_some() => {
                    return Err(bad(format!("{MANIFEST_ENTRY} appears twice")));
                }
                MANIFEST_ENTRY => unsigned_manifest = Some(small(&mut entry, &path)?),
                SIGNATURE_ENTRY => {
                    let bytes = unsigned_manifest.take().ok_or_else(|| {
                        bad(format!("{SIGNATURE_ENTRY} comes before {MANIFEST_ENTRY}"))
                    })?;
                    let signature = small(&mut entry, &path)?;
                    self.accept_manifest(&bytes, &signature)?;
                }
                _ if unsigned_manifest.is_some() => {
                    return Err(bad(format!(
                        "{MANIFEST_ENTRY} is not followed by its signature"
                    )));
                }
                _ => self.take_file(path, &mut entry)?,
            }
        }
        if first {
            return Err(bad("it holds no entries".into()));
        }
        Ok(())
    }

    /// Checks the signature, then sets the budget to what the manifest declares.
    fn accept_manifest(&mut self, bytes: &[u8], signature: &[u8]) -> Result<(), ImageError> {
        let signature: BundleSignature = serde_json::from_slice(signature)
            .map_err(|e| bad(format!("{SIGNATURE_ENTRY}: {e}")))?;
        self.trusted.verify(bytes, &signature)?;
        let manifest: BundleManifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{MANIFEST_ENTRY}: {e}")))?;
        if manifest.format > FORMAT {
            return Err(bad(format!(
                "it is of bundle format {}, newer than this binary reads ({FORMAT}): upgrade \
                 this node's outpost",
                manifest.format
            )));
        }
        let declared = (manifest.blobs.iter()).try_fold(0u64, |sum, b| sum.checked_add(b.size));
        let declared = declared.ok_or_else(|| bad("its blob sizes overflow".into()))?;
        self.budget.set(declared.saturating_add(METADATA_ALLOWANCE));
        self.signed_by = Some(signature.key);
        self.manifest = Some(manifest);
        Ok(())
    }

    fn take_file(
        &mut self,
        path: String,
        entry: &mut tar::Entry<impl Read>,
    ) -> Result<(), ImageError> {
        if self.files.contains_key(&path) {
            return Err(bad(format!("entry {path:?} appears twice")));
        }
        let size = entry.header().size().map_err(read_error)?;
        if let Some(manifest) = &self.manifest {
            self.check_bundle_entry(manifest, &path, size)?;
        }
        let (digest, actual) = self.staging.take(entry)?;
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let named: Digest = format!("sha256:{hex}")
                .parse()
                .map_err(|_| bad(format!("entry {path:?} is not named by a sha256 digest")))?;
            if named != digest {
                return Err(bad(format!(
                    "blob {named}: its bytes hash to {digest}: the file was damaged"
                )));
            }
            self.carried.insert(digest.clone());
        }
        self.files.insert(path, (digest, actual));
        Ok(())
    }

    /// An entry of a signed bundle: the layout's two files, or a blob the manifest lists.
    fn check_bundle_entry(
        &self,
        manifest: &BundleManifest,
        path: &str,
        size: u64,
    ) -> Result<(), ImageError> {
        if path == "oci-layout" || path == "index.json" {
            return match size <= MAX_MANIFEST as u64 {
                true => Ok(()),
                false => Err(bad(format!("{path} is {size} bytes, over {MAX_MANIFEST}"))),
            };
        }
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            return Err(bad(format!("entry {path:?} is not part of a bundle")));
        };
        let listed = manifest.blobs.iter().find(|b| b.digest.hex() == hex);
        match listed {
            None => Err(bad(format!(
                "blob {path:?} is not listed in {MANIFEST_ENTRY}"
            ))),
            Some(b) if b.size != size => Err(bad(format!(
                "blob {}: {size} bytes where {MANIFEST_ENTRY} lists {}",
                b.digest, b.size
            ))),
            Some(_) => Ok(()),
        }
    }

    /// A signed bundle's plan, once every blob it lists was read.
    fn check_carried(&self, plan: BundleManifest) -> Result<BundleManifest, ImageError> {
        if let Some(lacking) = plan
            .blobs
            .iter()
            .find(|b| !self.carried.contains(&b.digest))
        {
            return Err(bad(format!(
                "blob {} is listed but not in the archive: the file is truncated",
                lacking.digest
            )));
        }
        for image in &plan.images {
            let (name, tag) = crate::split_tag(&image.image);
            crate::check_name(name)?;
            crate::check_tag(tag)?;
        }
        Ok(plan)
    }

    /// A `docker save` archive's images as a plan: each one's config and layers, staged, under
    /// an OCI manifest made for it.
    fn docker_save(&mut self) -> Result<BundleManifest, ImageError> {
        let (listing, _) = self.files.get("manifest.json").cloned().ok_or_else(|| {
            bad(
                "it is neither an Outpost bundle nor a `docker save` archive (no manifest.json)"
                    .into(),
            )
        })?;
        let listing: Vec<SavedImage> = serde_json::from_slice(&self.staging.read(&listing)?)
            .map_err(|e| bad(format!("manifest.json: {e}")))?;
        let mut plan = BundleManifest {
            format: FORMAT,
            created_ms: 0,
            images: Vec::new(),
            blobs: Vec::new(),
            omitted: Vec::new(),
        };
        for saved in listing {
            let manifest = self.oci_manifest(&saved)?;
            let (digest, size) = self.staging.take(&mut manifest.as_slice())?;
            let mut blobs = vec![BundleBlob {
                digest: digest.clone(),
                size,
            }];
            for path in std::iter::once(&saved.config).chain(&saved.layers) {
                let (digest, size) = self.file(path)?;
                blobs.push(BundleBlob { digest, size });
            }
            if saved.repo_tags.is_empty() {
                return Err(bad(format!(
                    "image {} has no tag in the archive: tag it before `docker save`",
                    saved.config
                )));
            }
            for repo_tag in &saved.repo_tags {
                let (name, tag) = crate::store_name(repo_tag);
                crate::check_name(name)?;
                crate::check_tag(tag)?;
                plan.images.push(BundleImage {
                    image: format!("{name}:{tag}"),
                    digest: digest.clone(),
                    media_type: OCI_MANIFEST.into(),
                });
            }
            for blob in blobs {
                if !plan.blobs.contains(&blob) {
                    plan.blobs.push(blob);
                }
            }
        }
        Ok(plan)
    }

    fn file(&self, path: &str) -> Result<(Digest, u64), ImageError> {
        self.files.get(path).cloned().ok_or_else(|| {
            bad(format!(
                "manifest.json names {path:?}, which the archive lacks"
            ))
        })
    }

    /// The OCI manifest of one `docker save` image: its layers as the archive holds them
    /// (uncompressed tars, or gzip ones).
    fn oci_manifest(&self, saved: &SavedImage) -> Result<Vec<u8>, ImageError> {
        let (config, config_size) = self.file(&saved.config)?;
        let mut layers = Vec::new();
        for path in &saved.layers {
            let (digest, size) = self.file(path)?;
            let mut magic = [0u8; 2];
            let mut file = std::fs::File::open(self.staging.path(&digest))
                .map_err(ImageError::io("cannot read", &self.staging.path(&digest)))?;
            let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
            let media_type = match gzip {
                true => "application/vnd.oci.image.layer.v1.tar+gzip",
                false => "application/vnd.oci.image.layer.v1.tar",
            };
            layers.push(serde_json::json!({
                "mediaType": media_type, "digest": digest.to_string(), "size": size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config.to_string(), "size": config_size },
            "layers": layers,
        });
        Ok(serde_json::to_vec(&manifest).expect("a manifest encodes"))
    }
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Deserialize)]
struct SavedImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An entry's path, refused when absolute, with `..`, or not UTF-8; `./` in front is dropped.
fn entry_path(entry: &tar::Entry<impl Read>) -> Result<String, ImageError> {
    let raw = entry.path_bytes();
    let path = std::str::from_utf8(&raw).map_err(|_| {
        bad(format!(
            "entry {:?} has a path that is not UTF-8",
            String::from_utf8_lossy(&raw)
        ))
    })?;
    let path = path.trim_start_matches("./").trim_end_matches('/');
    let escapes = path.starts_with('/')
        || Path::new(path).components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::RootDir
            )
        });
    match escapes || path.is_empty() || path.contains('\0') {
        true => Err(bad(format!(
            "entry {path:?} points outside the archive: refused"
        ))),
        false => Ok(path.to_string()),
    }
}

/// A small entry's bytes (a manifest, a signature), refused over [`MAX_MANIFEST`].
fn small(entry: &mut impl Read, path: &str) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    match bytes.len() > MAX_MANIFEST {
        true => Err(bad(format!("{path} is over {MAX_MANIFEST} bytes"))),
        false => Ok(bytes),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests;
