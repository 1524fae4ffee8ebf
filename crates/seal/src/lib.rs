//! Damage-proof storage for the project's redb files (the server's `state.redb`, the agent's
//! `agent.redb`): checksummed records, and [`unpanicked`] for opening a file that may be damaged.
//!
//! Records: Every value is stored [`seal`]ed — a version byte and a CRC32 of the payload in
//! front of it — and [`open`]ed on read, so a byte changed on disk (a failing SD card, a careless
//! edit) is refused instead of being used as if it were true.
//!
//! redb checksums its own pages, but only verifies them when it repairs a file after a crash; a
//! value that reads back fine but was changed underneath would be served as is. The seal is a
//! small wrapper over bytes, not a table type, so any table (and any future layout) can use it.
//!
//! Files ([`files`]): private modes for the data dirs and their files, and secrets made once.
//!
//! The records part does no I/O. **Invariant:** `open(&seal(x)) == Ok(x)` for every `x`.

pub mod files;

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

/// Marks a sealed record, version 1. Never the first byte of JSON (`{`, `[`, `"`, a digit, `-`,
/// `n`, `t`, `f`), so a record written before records were sealed is told apart from damage.
const SEALED_V1: u8 = 0xC5;

/// The version byte and the CRC32 in front of the payload.
const HEADER: usize = 5;

/// Why a stored record cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("the record is {len} bytes, too short to hold its checksum")]
    Short { len: usize },
    #[error(
        "its checksum does not match its content (stored {stored:08x}, computed {computed:08x})"
    )]
    Mismatch { stored: u32, computed: u32 },
    #[error("it has no checksum: it was written by an older outpost, before records were sealed")]
    Unsealed,
    #[error("it starts with byte {0:#04x}, which no outpost writes")]
    Unknown(u8),
}

/// The record to store for `payload`.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.push(SEALED_V1);
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The payload of a stored record, once its checksum matches. A record without a seal is refused
/// too, even one that looks like the JSON older versions wrote: accepting it would let a single
/// changed first byte turn a sealed record into an unchecked one.
pub fn open(record: &[u8]) -> Result<&[u8], Damage> {
    match record.first() {
        Some(&SEALED_V1) => {}
        Some(b'{' | b'[' | b'"' | b'0'..=b'9' | b'-' | b'n' | b't' | b'f') => {
            return Err(Damage::Unsealed);
        }
        Some(&other) => return Err(Damage::Unknown(other)),
        None => return Err(Damage::Short { len: 0 }),
    }
    if record.len() < HEADER {
        return Err(Damage::Short { len: record.len() });
    }
    let (header, payload) = record.split_at(HEADER);
    let stored = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(Damage::Mismatch { stored, computed });
    }
    Ok(payload)
}

thread_local! {
    /// Set while [`unpanicked`] runs on this thread: the panic hook keeps quiet and leaves the
    /// panic's message here instead of printing it with a backtrace.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic inside it into `Err` with the panic's message. redb
/// asserts on some damaged files (one truncated to half, say) instead of returning an error; a
/// store that cannot be opened must say which file and what to do, not print a backtrace.
///
/// The hook is process-wide but quiet only on the thread running `f`, so panics elsewhere are
/// reported as before. This needs `panic = "unwind"`, which the release profile keeps for it.
pub fn unpanicked<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.get() {
                PANIC.set(Some(describe(info)));
            } else {
                previous(info);
            }
        }));
    });
    QUIET.set(true);
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.set(false);
    result.map_err(|_| PANIC.take().unwrap_or_else(|| "it panicked".to_string()))
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "it panicked".to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn every_payload_survives_seal_then_open(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let record = seal(&payload);
            prop_assert_eq!(open(&record), Ok(payload.as_slice()));
        }

        /// A CRC32 catches every single-byte change, so no flipped byte goes unnoticed.
        #[test]
        fn any_changed_byte_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 1..512),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut record = seal(&payload);
            let i = at.index(record.len());
            record[i] ^= flip;
            prop_assert!(open(&record).is_err(), "byte {} changed by {:#04x}", i, flip);
        }
    }

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(unpanicked(|| 7), Ok(7));
        let caught = unpanicked(|| -> u32 { panic!("assertion failed: len >= layout") });
        assert_eq!(caught, Err("assertion failed: len >= layout".to_string()));
        let formatted = unpanicked(|| -> u32 { panic!("{} of {}", 1, 2) });
        assert_eq!(formatted, Err("1 of 2".to_string()));
    }

    #[test]
    fn a_changed_value_in_stored_json_is_refused() {
        let mut record = seal(br#"{"replicas":4}"#);
        let at = record.iter().position(|&b| b == b'4').unwrap();
        record[at] = b'9';
        assert!(matches!(open(&record), Err(Damage::Mismatch { .. })));
    }

    #[test]
    fn unsealed_or_short_records_are_refused_with_the_reason() {
        for legacy in [&br#"{"a":1}"#[..], b"[1]", b"null", b"42", b"\"x\""] {
            assert_eq!(open(legacy), Err(Damage::Unsealed));
        }
        assert_eq!(open(&[]), Err(Damage::Short { len: 0 }));
        assert_eq!(open(&[SEALED_V1, 1, 2]), Err(Damage::Short { len: 3 }));
        assert_eq!(open(&[0x00, 1]), Err(Damage::Unknown(0)));
    }
}
