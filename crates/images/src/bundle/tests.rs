//! The bundle format against hostile input: each refusal leaves the store as it was, and what
//! loads is what was saved.

use ring::signature::KeyPair as _;

use super::*;

const SEED: [u8; 32] = [7; 32];

fn signer() -> ring::signature::Ed25519KeyPair {
    ring::signature::Ed25519KeyPair::from_seed_unchecked(&SEED).unwrap()
}

fn trusted() -> TrustedKeys {
    let mut keys = TrustedKeys::default();
    keys.add(signer().public_key().as_ref());
    keys
}

fn sign(manifest: &[u8]) -> BundleSignature {
    let key = signer();
    BundleSignature {
        key: key_id(key.public_key().as_ref()),
        signature: hex(key.sign(manifest).as_ref()),
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

/// Stores image `name:tag` of these layers (and a config naming it); its manifest digest.
fn put_image(store: &Store, image: &str, layers: &[&[u8]]) -> Digest {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","image":"{image}"}}"#);
    store
        .put(&Digest::of(config.as_bytes()), config.as_bytes())
        .unwrap();
    let layers: Vec<serde_json::Value> = (layers.iter())
        .map(|l| {
            store.put(&Digest::of(l), l).unwrap();
            serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of(l).to_string(), "size": l.len() })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": Digest::of(config.as_bytes()).to_string(), "size": config.len() },
        "layers": layers,
    }))
    .unwrap();
    let digest = Digest::of(&manifest);
    store.put(&digest, &manifest).unwrap();
    let (name, tag) = crate::split_tag(image);
    store.tag(name, tag, &digest, OCI_MANIFEST).unwrap();
    digest
}

fn layer(fill: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect()
}

/// A signed bundle of `images` from `store` for a target holding `have`.
fn bundle(store: &Store, images: &[&str], have: &BTreeSet<Digest>) -> Vec<u8> {
    let images: Vec<String> = images.iter().map(|s| s.to_string()).collect();
    let plan = store.plan_bundle(&images, have, 1_700_000_000_000).unwrap();
    let manifest = serde_json::to_vec(&plan).unwrap();
    let mut out = Vec::new();
    store
        .write_bundle(&manifest, &sign(&manifest), &mut out)
        .unwrap();
    out
}

/// What a store holds, to compare before and after a refused load.
fn contents(store: &Store) -> (Vec<(Digest, u64)>, Vec<String>) {
    let tags = store.tags().unwrap().into_keys().collect();
    (store.blobs().unwrap(), tags)
}

fn load(store: &Store, bytes: &[u8]) -> Result<Loaded, ImageError> {
    store.load_bundle(bytes, &trusted(), LoadLimits::default())
}

/// Loading `bytes` is refused with a message holding `why`, and changes nothing.
fn refused(store: &Store, bytes: &[u8], limits: LoadLimits, why: &str) {
    let before = contents(store);
    let err = store.load_bundle(bytes, &trusted(), limits).unwrap_err();
    assert!(err.to_string().contains(why), "{err}");
    assert_eq!(contents(store), before, "a refused load changed the store");
    let staging = store.root().join("staging");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "a refused load left staged files");
}

/// The entries of a bundle: path, type and bytes.
fn unpack(bundle: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let tar = zstd::decode_all(bundle).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    (archive.entries().unwrap())
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let kind = e.header().entry_type();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (path, kind, bytes)
        })
        .collect()
}

/// A zstd tar of these entries, written raw (paths as given, any entry type).
fn pack(entries: &[(String, tar::EntryType, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, kind, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_gnu_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        if kind.is_symlink() || kind.is_hard_link() {
            header.set_link_name("../../etc/passwd").unwrap();
        }
        header.set_cksum();
        tar.append(&header, bytes.as_slice()).unwrap();
    }
    zstd::encode_all(tar.into_inner().unwrap().as_slice(), 3).unwrap()
}

/// A bundle whose manifest was changed by `edit`, then signed again by the trusted key.
fn resigned(bundle: &[u8], edit: impl FnOnce(&mut BundleManifest)) -> Vec<u8> {
    let mut entries = unpack(bundle);
    let mut plan: BundleManifest = serde_json::from_slice(&entries[0].2).unwrap();
    edit(&mut plan);
    let manifest = serde_json::to_vec(&plan).unwrap();
    entries[1].2 = serde_json::to_vec(&sign(&manifest)).unwrap();
    entries[0].2 = manifest;
    pack(&entries)
}

#[test]
fn a_bundle_carries_its_images_to_an_empty_store() {
    let (_a, from) = store();
    let digest = put_image(&from, "demo:1", &[&layer(1, 5000), &layer(2, 7000)]);
    let bytes = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();
    let loaded = load(&to, &bytes).unwrap();
    assert_eq!(loaded.images.len(), 1);
    assert_eq!(loaded.images[0].image, "demo:1");
    assert_eq!(loaded.blobs_added, 4, "manifest, config and two layers");
    assert_eq!(
        loaded.signed_by,
        Some(key_id(signer().public_key().as_ref()))
    );
    assert_eq!(to.resolve("demo", "1").unwrap().unwrap().0, digest);
    assert_eq!(to.blobs().unwrap(), from.blobs().unwrap());
    // The same bundle again adds nothing and still succeeds.
    assert_eq!(load(&to, &bytes).unwrap().blobs_added, 0);
}

#[test]
fn a_bundle_is_an_oci_layout_too() {
    let (_a, from) = store();
    let digest = put_image(&from, "demo:1", &[&layer(1, 100)]);
    let entries = unpack(&bundle(&from, &["demo:1"], &BTreeSet::new()));
    let paths: Vec<&str> = entries.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        &paths[..4],
        [MANIFEST_ENTRY, SIGNATURE_ENTRY, "oci-layout", "index.json"]
    );
    let index: serde_json::Value = serde_json::from_slice(&entries[3].2).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.to_string());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "demo:1"
    );
    assert!(paths.contains(&format!("blobs/sha256/{}", digest.hex()).as_str()));
}

#[test]
fn a_delta_carries_only_the_blobs_the_target_lacks() {
    let (base, changed_v1, changed_v2) = (layer(1, 20_000), layer(2, 3000), layer(3, 3000));
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&base, &changed_v1]);
    put_image(&from, "demo:2", &[&base, &changed_v2]);
    let (_b, target) = store();
    load(&target, &bundle(&from, &["demo:1"], &BTreeSet::new())).unwrap();
    let have: BTreeSet<Digest> = target
        .blobs()
        .unwrap()
        .into_iter()
        .map(|(d, _)| d)
        .collect();

    let delta = bundle(&from, &["demo:2"], &have);
    let entries = unpack(&delta);
    let plan: BundleManifest = serde_json::from_slice(&entries[0].2).unwrap();
    let carried: Vec<&Digest> = plan.blobs.iter().map(|b| &b.digest).collect();
    assert!(carried.contains(&&Digest::of(&changed_v2)));
    assert!(
        !carried.contains(&&Digest::of(&base)),
        "the base layer is left out"
    );
    assert_eq!(
        plan.omitted,
        [BundleBlob {
            digest: Digest::of(&base),
            size: 20_000
        }]
    );
    assert_eq!(plan.blobs.len(), 3, "manifest, config, the changed layer");

    // What a delta for the target leaves out can come from the bundle it was given before.
    let before = read_manifest(bundle(&from, &["demo:1"], &BTreeSet::new()).as_slice()).unwrap();
    let had: BTreeSet<Digest> = before.blobs.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(had, have);

    // An empty store cannot take the delta: it lacks the base layer, and says so.
    let (_c, empty) = store();
    refused(
        &empty,
        &delta,
        LoadLimits::default(),
        &Digest::of(&base).to_string(),
    );
    // The target can, and then holds the whole new image.
    let loaded = load(&target, &delta).unwrap();
    assert_eq!(loaded.blobs_added, 3);
    let digest = target.resolve("demo", "2").unwrap().unwrap().0;
    assert_eq!(target.blobs_of(&digest).unwrap().len(), 4);
}

#[test]
fn a_bundle_changed_after_signing_is_refused() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 100)]);
    let good = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();

    let mut entries = unpack(&good);
    let mut plan: BundleManifest = serde_json::from_slice(&entries[0].2).unwrap();
    plan.images[0].image = "evil:1".into();
    entries[0].2 = serde_json::to_vec(&plan).unwrap();
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "does not match its manifest",
    );

    // A key this store does not trust.
    let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
    let mut entries = unpack(&good);
    let sig = BundleSignature {
        key: key_id(other.public_key().as_ref()),
        signature: hex(other.sign(&entries[0].2).as_ref()),
    };
    entries[1].2 = serde_json::to_vec(&sig).unwrap();
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "does not trust",
    );

    // No signature at all.
    let mut entries = unpack(&good);
    entries.remove(1);
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "not followed by its signature",
    );
    // Nothing of a bundle's own, even when unsigned archives are allowed.
    let entries: Vec<_> = unpack(&good).into_iter().skip(2).collect();
    let unsigned = LoadLimits {
        allow_unsigned: true,
        ..LoadLimits::default()
    };
    refused(&to, &pack(&entries), unsigned, "no manifest.json");
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "not an Outpost bundle",
    );
}

#[test]
fn blobs_that_differ_from_their_manifest_are_refused() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 100)]);
    let good = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();
    let layer_path = format!("blobs/sha256/{}", Digest::of(&layer(1, 100)).hex());

    // Same size, other bytes.
    let mut entries = unpack(&good);
    let entry = entries.iter_mut().find(|e| e.0 == layer_path).unwrap();
    entry.2[10] ^= 1;
    refused(&to, &pack(&entries), LoadLimits::default(), "hash to");

    // Other size than the manifest lists.
    let mut entries = unpack(&good);
    let entry = entries.iter_mut().find(|e| e.0 == layer_path).unwrap();
    entry.2.push(0);
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "bytes where outpost-bundle.json lists",
    );

    // A blob the manifest does not list.
    let mut entries = unpack(&good);
    entries.push((
        format!("blobs/sha256/{}", Digest::of(b"extra").hex()),
        tar::EntryType::Regular,
        b"extra".to_vec(),
    ));
    refused(&to, &pack(&entries), LoadLimits::default(), "not listed");

    // A listed blob left out of the archive.
    let mut entries = unpack(&good);
    entries.retain(|e| e.0 != layer_path);
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "listed but not in the archive",
    );
}

#[test]
fn a_truncated_bundle_is_refused_wherever_it_is_cut() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 300_000), &layer(5, 200_000)]);
    let good = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();
    for cut in [1, 10, good.len() / 3, good.len() / 2, good.len() - 1] {
        let before = contents(&to);
        let err = load(&to, &good[..cut]).unwrap_err();
        assert!(matches!(err, ImageError::Bundle(_)), "cut at {cut}: {err}");
        assert_eq!(contents(&to), before, "cut at {cut}");
    }
    load(&to, &good).unwrap();
}

#[test]
fn entries_that_are_not_plain_files_inside_the_archive_are_refused() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 100)]);
    let good = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();
    let with = |path: &str, kind: tar::EntryType| {
        let mut entries = unpack(&good);
        entries.insert(2, (path.to_string(), kind, Vec::new()));
        pack(&entries)
    };
    let unsigned = LoadLimits {
        allow_unsigned: true,
        ..LoadLimits::default()
    };
    for limits in [LoadLimits::default(), unsigned] {
        refused(
            &to,
            &with("../../etc/passwd", tar::EntryType::Regular),
            limits,
            "outside the archive",
        );
        refused(
            &to,
            &with("blobs/../../x", tar::EntryType::Regular),
            limits,
            "outside the archive",
        );
        refused(
            &to,
            &with("/etc/passwd", tar::EntryType::Regular),
            limits,
            "outside the archive",
        );
        refused(
            &to,
            &with("blobs/sha256/dev", tar::EntryType::Char),
            limits,
            "not a plain file",
        );
        refused(
            &to,
            &with("blobs/sha256/blk", tar::EntryType::Block),
            limits,
            "not a plain file",
        );
        refused(
            &to,
            &with("blobs/sha256/fifo", tar::EntryType::Fifo),
            limits,
            "not a plain file",
        );
        refused(
            &to,
            &with("blobs/sha256/up", tar::EntryType::Symlink),
            limits,
            "not a plain file",
        );
        refused(
            &to,
            &with("blobs/sha256/hard", tar::EntryType::Link),
            limits,
            "not a plain file",
        );
    }
    refused(
        &to,
        &with("notes.txt", tar::EntryType::Regular),
        LoadLimits::default(),
        "not part of a bundle",
    );
}

#[test]
fn an_archive_that_expands_past_its_limit_is_cut_off() {
    let (_b, to) = store();
    // 64 MiB of zeros compress to a few KB: an unsigned archive may expand to 1 MiB here.
    let bomb = vec![(
        String::from("manifest.json"),
        tar::EntryType::Regular,
        vec![0u8; 64 << 20],
    )];
    let bomb = pack(&bomb);
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let limits = LoadLimits {
        allow_unsigned: true,
        max_unsigned_bytes: 1 << 20,
    };
    refused(&to, &bomb, limits, "expands to more bytes than it declares");

    // A signed bundle may expand only to the sizes it declares: an oversized layout file
    // is refused before it is read.
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 100)]);
    let mut entries = unpack(&bundle(&from, &["demo:1"], &BTreeSet::new()));
    entries[3].2 = vec![b' '; MAX_MANIFEST + 1];
    refused(&to, &pack(&entries), LoadLimits::default(), "index.json is");
}

#[test]
fn an_image_whose_blobs_are_nowhere_is_refused() {
    let (_a, from) = store();
    let (kept, lost) = (layer(1, 100), layer(2, 100));
    put_image(&from, "demo:1", &[&kept, &lost]);
    let good = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();
    // The signer left a layer out without saying the target has it.
    let mut entries = unpack(&resigned(&good, |plan| {
        plan.blobs.retain(|b| b.digest != Digest::of(&lost))
    }));
    entries.retain(|e| !e.0.ends_with(Digest::of(&lost).hex()));
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        &Digest::of(&lost).to_string(),
    );
}

#[test]
fn oversized_manifests_are_refused() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 100)]);
    let good = bundle(&from, &["demo:1"], &BTreeSet::new());
    let (_b, to) = store();
    let mut entries = unpack(&good);
    entries[0].2 = vec![b' '; MAX_MANIFEST + 1];
    refused(
        &to,
        &pack(&entries),
        LoadLimits::default(),
        "outpost-bundle.json is over",
    );

    // An image manifest past the limit, carried and signed, is refused when checked.
    let (_c, big) = store();
    let huge = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": Digest::of(b"{}").to_string(), "size": 2 },
        "layers": [], "annotations": { "pad": "x".repeat(MAX_MANIFEST) },
    }))
    .unwrap();
    big.put(&Digest::of(b"{}"), b"{}").unwrap();
    big.put(&Digest::of(&huge), &huge).unwrap();
    let plan = BundleManifest {
        format: FORMAT,
        created_ms: 0,
        images: vec![BundleImage {
            image: "big:1".into(),
            digest: Digest::of(&huge),
            media_type: OCI_MANIFEST.into(),
        }],
        blobs: vec![
            BundleBlob {
                digest: Digest::of(&huge),
                size: huge.len() as u64,
            },
            BundleBlob {
                digest: Digest::of(b"{}"),
                size: 2,
            },
        ],
        omitted: Vec::new(),
    };
    let manifest = serde_json::to_vec(&plan).unwrap();
    let mut bytes = Vec::new();
    big.write_bundle(&manifest, &sign(&manifest), &mut bytes)
        .unwrap();
    refused(&to, &bytes, LoadLimits::default(), "a manifest may have");
}

#[test]
fn a_newer_format_is_refused_with_what_to_do() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 100)]);
    let newer = resigned(&bundle(&from, &["demo:1"], &BTreeSet::new()), |plan| {
        plan.format = FORMAT + 1
    });
    let (_b, to) = store();
    refused(&to, &newer, LoadLimits::default(), "upgrade");
}

/// A `docker save` archive as Docker Engines before 25 write it.
fn docker_save(layers: &[&[u8]], tags: &[&str]) -> (Vec<u8>, Digest) {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}"#.to_vec();
    let id = Digest::of(&config).hex().to_string();
    let mut entries = vec![(
        format!("{id}.json"),
        tar::EntryType::Regular,
        config.clone(),
    )];
    let mut paths = Vec::new();
    for l in layers {
        let dir = Digest::of(l).hex().to_string();
        entries.push((format!("{dir}/"), tar::EntryType::Directory, Vec::new()));
        entries.push((
            format!("{dir}/layer.tar"),
            tar::EntryType::Regular,
            l.to_vec(),
        ));
        paths.push(format!("{dir}/layer.tar"));
    }
    let listing =
        serde_json::json!([{ "Config": format!("{id}.json"), "RepoTags": tags, "Layers": paths }]);
    entries.push((
        "manifest.json".into(),
        tar::EntryType::Regular,
        serde_json::to_vec(&listing).unwrap(),
    ));
    let tar = zstd::decode_all(pack(&entries).as_slice()).unwrap();
    (tar, Digest::of(&config))
}

#[test]
fn docker_save_archives_load_only_when_asked_and_become_oci_images() {
    let (l1, l2) = (layer(1, 2000), layer(2, 3000));
    let (archive, config) = docker_save(
        &[&l1, &l2],
        &["registry.example.com/team/app:1.4", "app:latest"],
    );
    let (_b, to) = store();
    refused(&to, &archive, LoadLimits::default(), "--unsigned");
    let unsigned = LoadLimits {
        allow_unsigned: true,
        ..LoadLimits::default()
    };
    let loaded = to
        .load_bundle(archive.as_slice(), &trusted(), unsigned)
        .unwrap();
    assert_eq!(loaded.signed_by, None);
    let names: Vec<&str> = loaded.images.iter().map(|i| i.image.as_str()).collect();
    assert_eq!(names, ["team/app:1.4", "app:latest"]);
    let digest = to.resolve("team/app", "1.4").unwrap().unwrap().0;
    let reached = to.blobs_of(&digest).unwrap();
    assert_eq!(
        reached,
        [digest.clone(), config, Digest::of(&l1), Digest::of(&l2)]
    );
    // Re-bundled from here, it goes on as a signed bundle.
    let again = bundle(&to, &["team/app:1.4"], &BTreeSet::new());
    let (_c, other) = store();
    load(&other, &again).unwrap();
    assert_eq!(other.resolve("team/app", "1.4").unwrap().unwrap().0, digest);

    let (untagged, _) = docker_save(&[&l1], &[]);
    refused(&other, &untagged, unsigned, "has no tag");
}

#[test]
fn hex_round_trips_and_refuses_odd_text() {
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
    assert_eq!(unhex("abc"), None);
    assert_eq!(unhex("zz"), None);
}

/// `fuzz/corpus/`: seeds for the fuzz targets, signed with [`SEED`] as the bundle target
/// trusts. `ok-*` must load into an empty store, `bad-*` must be refused; an odd first byte
/// asks for unsigned archives to be accepted, as the target does.
fn corpus_dir(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn seed_limits(bytes: &[u8]) -> LoadLimits {
    LoadLimits {
        allow_unsigned: bytes.first().is_some_and(|b| b & 1 == 1),
        max_unsigned_bytes: 64 << 20,
    }
}

/// Writes the seed corpus again: `cargo test -p images write_fuzz_corpus -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_corpus() {
    let (_a, from) = store();
    put_image(&from, "demo:1", &[&layer(1, 3000), &layer(2, 2000)]);
    put_image(&from, "demo:2", &[&layer(1, 3000), &layer(3, 1000)]);
    let whole = bundle(&from, &["demo:1"], &BTreeSet::new());
    let have: BTreeSet<Digest> = (from.blobs_of(&from.resolve("demo", "1").unwrap().unwrap().0))
        .unwrap()
        .into_iter()
        .collect();
    let delta = bundle(&from, &["demo:2"], &have);
    let mut linked = unpack(&whole);
    linked.insert(
        2,
        (
            "blobs/sha256/up".into(),
            tar::EntryType::Symlink,
            Vec::new(),
        ),
    );
    let (saved, _) = docker_save(&[&layer(4, 1500)], &["saved:1"]);
    // `manifest.json` first, so the archive starts with an odd `m`.
    let mut entries = unpack(&zstd::encode_all(saved.as_slice(), 1).unwrap());
    entries.rotate_right(1);
    assert_eq!(entries[0].0, "manifest.json");
    let saved = zstd::decode_all(pack(&entries).as_slice()).unwrap();
    let dir = corpus_dir("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds: [(&str, Vec<u8>); 5] = [
        ("ok-whole.bundle", whole.clone()),
        ("bad-delta-without-base.bundle", delta),
        ("bad-symlink.bundle", pack(&linked)),
        ("bad-truncated.bundle", whole[..whole.len() / 2].to_vec()),
        // A leading `m` (odd): the target accepts it unsigned.
        ("ok-docker-save.tar", saved),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let dir = corpus_dir("manifest");
    std::fs::create_dir_all(&dir).unwrap();
    let digest = from.resolve("demo", "1").unwrap().unwrap().0;
    std::fs::write(dir.join("image-manifest.json"), from.read(&digest).unwrap()).unwrap();
    std::fs::write(dir.join("bundle-head.bundle"), whole).unwrap();
}

#[test]
fn the_fuzz_seed_corpus_loads_or_is_refused_as_named() {
    let entries =
        std::fs::read_dir(corpus_dir("bundle")).expect("fuzz/corpus/bundle is checked in");
    let mut seen = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let (_dir, target) = store();
        let loaded = target.load_bundle(bytes.as_slice(), &trusted(), seed_limits(&bytes));
        match name.starts_with("ok-") {
            true => assert!(loaded.is_ok(), "{name}: {loaded:?}"),
            false => assert!(loaded.is_err(), "{name} loaded"),
        }
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} seeds");
}
