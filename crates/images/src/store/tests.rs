//! The content store through its API: what becomes visible, resumed writes, collection.

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

fn digest_of(text: &str) -> Digest {
    Digest::of(text.as_bytes())
}

#[test]
fn a_blob_is_visible_only_once_its_bytes_match_its_digest() {
    let (_dir, store) = store();
    let good = digest_of("layer bytes");
    store.put(&good, b"layer bytes").unwrap();
    assert_eq!(store.read(&good).unwrap(), b"layer bytes");
    assert_eq!(store.size(&good), Some(11));

    let claimed = digest_of("what was asked for");
    let err = store.put(&claimed, b"something else").unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&claimed.to_string()), "{err}");
    assert_eq!(store.size(&claimed), None, "a wrong blob is never visible");
    assert!(matches!(store.read(&claimed), Err(ImageError::Missing(_))));

    let mut short = store.ingest(&good_other(), Some(10)).unwrap();
    short.write(b"12345").unwrap();
    let err = short.commit().unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::SizeMismatch {
                expected: 10,
                actual: 5,
                ..
            }
        ),
        "{err}"
    );
    let mut long = store.ingest(&good_other(), Some(3)).unwrap();
    assert!(matches!(
        long.write(b"12345"),
        Err(ImageError::SizeMismatch { .. })
    ));
    assert_eq!(store.blobs().unwrap(), vec![(good, 11)]);
}

fn good_other() -> Digest {
    digest_of("1234567890")
}

#[test]
fn an_interrupted_write_goes_on_from_the_bytes_already_there() {
    let (_dir, store) = store();
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let digest = Digest::of(&data);
    let mut first = store.ingest(&digest, Some(data.len() as u64)).unwrap();
    first.write(&data[..150_000]).unwrap();
    drop(first); // the transfer is cut off
    assert_eq!(store.size(&digest), None);

    let mut again = store.ingest(&digest, Some(data.len() as u64)).unwrap();
    assert_eq!(again.offset(), 150_000, "resumes where it stopped");
    again.write(&data[150_000..]).unwrap();
    again.commit().unwrap();
    assert_eq!(store.read(&digest).unwrap(), data);

    // A source that cannot resume starts over.
    let other = digest_of("abc");
    let mut cut = store.ingest(&other, None).unwrap();
    cut.write(b"xx").unwrap();
    drop(cut);
    let mut fresh = store.ingest(&other, None).unwrap();
    fresh.restart().unwrap();
    fresh.write(b"abc").unwrap();
    fresh.commit().unwrap();
    assert_eq!(store.read(&other).unwrap(), b"abc");
}

#[test]
fn a_partial_copy_longer_than_the_blob_is_started_over() {
    let (_dir, store) = store();
    let digest = digest_of("abc");
    let mut cut = store.ingest(&digest, None).unwrap();
    cut.write(b"not this at all").unwrap();
    drop(cut);
    let again = store.ingest(&digest, Some(3)).unwrap();
    assert_eq!(again.offset(), 0);
    store.put(&digest, b"abc").unwrap();
    assert_eq!(store.read(&digest).unwrap(), b"abc");
}

#[test]
fn manifests_that_are_not_manifests_are_refused_naming_them() {
    let d = digest_of("x");
    for (bytes, why) in [
        (b"not json".to_vec(), "not JSON"),
        (b"{\"layers\": 3}".to_vec(), "not an image manifest"),
        (b"{\"schemaVersion\": 2}".to_vec(), "neither"),
        (vec![b' '; crate::MAX_MANIFEST + 1], "over the"),
    ] {
        let err = crate::references(&d, &bytes).unwrap_err().to_string();
        assert!(err.contains(why) && err.contains(&d.to_string()), "{err}");
    }
}

#[test]
fn blob_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, store) = store();
    let d = digest_of("secret layer");
    store.put(&d, b"secret layer").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store.path(&d)), 0o600);
    assert_eq!(mode(&store.blobs_dir()), 0o700);
}

proptest::proptest! {
    /// Whatever the cut points, a resumed write stores exactly the bytes.
    #[test]
    fn writes_cut_anywhere_store_the_same_bytes(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(0usize..4096, 0..4),
    ) {
        let (_dir, store) = store();
        let digest = Digest::of(&data);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort();
        let mut from = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            let mut ingest = store.ingest(&digest, Some(data.len() as u64)).unwrap();
            proptest::prop_assert_eq!(ingest.offset() as usize, from);
            ingest.write(&data[from..cut]).unwrap();
            from = cut;
            if cut == data.len() {
                ingest.commit().unwrap();
                break;
            }
        }
        proptest::prop_assert_eq!(store.read(&digest).unwrap(), data);
    }
}
