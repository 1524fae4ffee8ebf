//! Any bytes as an image manifest or index, and as the head of a bundle file: parsing never
//! panics, whatever it answers.
#![no_main]

use images::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = images::references(&Digest::of(data), data);
    let _ = images::read_manifest(data);
});
