//! Any bytes as a bundle (or, when the first byte is odd, as an unsigned `docker save`
//! archive): a load never panics, and a refused one leaves the store as it was.
#![no_main]

use std::sync::OnceLock;

use images::{LoadLimits, Store, TrustedKeys};
use libfuzzer_sys::fuzz_target;
use ring::signature::KeyPair as _;

/// The key the seed corpus is signed with (`images`' tests sign with the same).
const SEED_KEY: [u8; 32] = [7; 32];

fn store() -> &'static (tempfile::TempDir, Store) {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    })
}

fn trusted() -> TrustedKeys {
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&SEED_KEY).unwrap();
    let mut keys = TrustedKeys::default();
    keys.add(key.public_key().as_ref());
    keys
}

fuzz_target!(|data: &[u8]| {
    let (_, store) = store();
    let limits = LoadLimits {
        allow_unsigned: data.first().is_some_and(|b| b & 1 == 1),
        max_unsigned_bytes: 64 << 20,
    };
    let before = (store.blobs().unwrap(), store.tags().unwrap());
    if store.load_bundle(data, &trusted(), limits).is_err() {
        assert_eq!((store.blobs().unwrap(), store.tags().unwrap()), before);
    }
});
