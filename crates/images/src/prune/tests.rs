//! Collection through the store's API: what each kind of keep spares, and a dry run's word.

use std::time::{Duration, SystemTime};

use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

/// Stores a manifest of `config` and `layers` and tags it `name:tag`.
fn image(store: &Store, name: &str, tag: &str, config: &[u8], layers: &[&[u8]]) -> Digest {
    let descriptor = |media: &str, bytes: &[u8]| {
        store.put(&Digest::of(bytes), bytes).unwrap();
        serde_json::json!({ "mediaType": media, "digest": Digest::of(bytes).to_string(), "size": bytes.len() })
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = Digest::of(&bytes);
    store.put(&digest, &bytes).unwrap();
    let kind = "application/vnd.oci.image.manifest.v1+json";
    store.tag(name, tag, &digest, kind).unwrap();
    digest
}

fn keep(images: &[(&str, &str)]) -> Keep {
    Keep {
        images: images
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect(),
        fresh: HOUR,
        spare_fresh_tags: false,
    }
}

/// An hour and a bit from now: everything written by the test is old then.
fn later() -> SystemTime {
    SystemTime::now() + HOUR + Duration::from_secs(60)
}

fn tags(store: &Store) -> Vec<String> {
    store.tags().unwrap().into_keys().collect()
}

#[test]
fn images_not_kept_go_with_their_own_blobs_and_shared_layers_stay() {
    let (_dir, store) = store();
    let base: &[u8] = b"base layer shared by both";
    let old = image(
        &store,
        "edge/app",
        "1",
        b"{\"v\":1}",
        &[base, b"layer of 1"],
    );
    let new = image(
        &store,
        "edge/app",
        "2",
        b"{\"v\":2}",
        &[base, b"layer of 2"],
    );

    let pruned = store
        .prune(&keep(&[("edge/app", "2")]), later(), false)
        .unwrap();
    assert_eq!(tags(&store), ["edge/app:2"]);
    let names: Vec<_> = pruned.images.iter().map(|i| (&i.name, &i.tag)).collect();
    assert_eq!(names, [(&"edge/app".to_string(), &"1".to_string())]);
    assert_eq!(pruned.images[0].digest, old);
    let gone: BTreeSet<Digest> = [
        old.clone(),
        Digest::of(b"{\"v\":1}"),
        Digest::of(b"layer of 1"),
    ]
    .into();
    assert_eq!(pruned.blobs.iter().cloned().collect::<BTreeSet<_>>(), gone);
    let freed: u64 = (pruned.images[0].bytes) - (base.len() as u64);
    assert_eq!(
        pruned.bytes, freed,
        "the shared layer is not counted as freed"
    );
    for digest in &gone {
        assert_eq!(store.size(digest), None, "{digest} removed");
    }
    assert_eq!(store.size(&Digest::of(base)), Some(base.len() as u64));
    let left = store.images().unwrap();
    assert_eq!((left.len(), left[0].digest.clone()), (1, new));
    assert_eq!(left[0].missing, 0, "the kept image is whole");
    assert_eq!(pruned.kept, 4);
}

#[test]
fn a_dry_run_removes_nothing_and_says_what_a_real_one_removes() {
    let (_dir, store) = store();
    image(&store, "edge/app", "1", b"{}", &[b"one"]);
    image(&store, "edge/other", "1", b"{\"o\":1}", &[b"two"]);
    let before = store.blobs().unwrap();

    let dry = store.prune(&keep(&[]), later(), true).unwrap();
    assert_eq!(store.blobs().unwrap(), before, "nothing removed");
    assert_eq!(tags(&store).len(), 2);
    let real = store.prune(&keep(&[]), later(), false).unwrap();
    assert_eq!(dry, real);
    assert_eq!(real.blobs.len(), before.len());
    assert!(store.blobs().unwrap().is_empty() && tags(&store).is_empty());
}

#[test]
fn writes_under_way_are_spared_until_they_are_an_hour_old() {
    let (_dir, store) = store();
    let upload = store.begin_upload().unwrap();
    store.append_upload(&upload, b"half a layer").unwrap();
    let mut ingest = store.ingest(&Digest::of(b"whole layer"), None).unwrap();
    ingest.write(b"whole").unwrap();
    drop(ingest);
    // A push's blob that no manifest names yet.
    store
        .put(&Digest::of(b"pushed first"), b"pushed first")
        .unwrap();
    // What a load killed halfway leaves: its staging directory, with a blob in it.
    let staged = store.root().join("staging").join("0123456789abcdef");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("part"), b"half a bundle").unwrap();

    let now = store.prune(&keep(&[]), SystemTime::now(), false).unwrap();
    assert_eq!((now.partial, now.blobs.len()), (0, 0), "{now:?}");
    assert!(
        staged.join("part").is_file(),
        "a load under way keeps its blobs"
    );
    assert_eq!(store.upload_size(&upload).unwrap(), 12);
    assert_eq!(
        store
            .ingest(&Digest::of(b"whole layer"), None)
            .unwrap()
            .offset(),
        5
    );

    let late = store.prune(&keep(&[]), later(), false).unwrap();
    assert_eq!((late.partial, late.blobs.len()), (3, 1), "{late:?}");
    assert!(!staged.exists(), "the killed load's staging is gone");
    assert!(store.upload_size(&upload).is_err());
    assert!(store.blobs().unwrap().is_empty());
}

#[test]
fn a_young_image_not_kept_goes_unless_fresh_tags_are_spared() {
    let (_dir, store) = store();
    image(&store, "edge/next", "1", b"{}", &[b"the next release"]);
    let mut timer = keep(&[]);
    timer.spare_fresh_tags = true;

    let spared = store.prune(&timer, SystemTime::now(), false).unwrap();
    assert_eq!((spared.images.len(), spared.blobs.len()), (0, 0));
    assert_eq!(tags(&store), ["edge/next:1"]);

    // Asked for now, its blobs go even though they are young: a tag named them.
    let asked = store.prune(&keep(&[]), SystemTime::now(), false).unwrap();
    assert_eq!((asked.images.len(), asked.blobs.len()), (1, 3));
    assert!(tags(&store).is_empty() && store.blobs().unwrap().is_empty());
}

#[test]
fn a_tag_moved_by_a_push_during_a_collection_stays() {
    let (_dir, store) = store();
    let first = image(&store, "edge/app", "1", b"{}", &[b"one"]);
    let moved = Digest::of(b"another manifest");
    store
        .tag(
            "edge/app",
            "1",
            &moved,
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
    store.untag("edge/app", "1", &first).unwrap();
    assert_eq!(store.resolve("edge/app", "1").unwrap().unwrap().0, moved);
}
