//! Wall-clock instants on the wire. Stored as milliseconds since the Unix epoch (cheap to compare
//! in the state machine) and written as RFC 3339 (readable in `-o json`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Time elapsed from `self` to `now`, zero if `now` is earlier.
    pub fn elapsed_at(self, now: Timestamp) -> Duration {
        Duration::from_millis(now.0.saturating_sub(self.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp::from_system_time)
            .map_err(serde::de::Error::custom)
    }
}

/// `since` (of events, of log lines) as an instant: a duration back from `now` (`10m`, `2h`),
/// or an RFC 3339 time. The error says what was given and what would do.
pub fn parse_since(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        return Ok(Timestamp(now.0.saturating_sub(ago)));
    }
    humantime::parse_rfc3339_weak(text)
        .map(Timestamp::from_system_time)
        .map_err(|_| {
            format!(
                "{text:?} is neither a duration (`10m`, `2h`) nor an RFC 3339 time \
                 (`2026-05-01T12:00:00Z`)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_back_from_now_or_an_rfc3339_time() {
        let now = Timestamp(600_005);
        assert_eq!(parse_since("10m", now).unwrap(), Timestamp(5));
        assert_eq!(parse_since("1d", now).unwrap(), Timestamp(0));
        assert_eq!(
            parse_since("1970-01-01T00:00:01Z", now).unwrap(),
            Timestamp(1000)
        );
        assert!(
            parse_since("yesterday", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }

    #[test]
    fn round_trips_as_rfc3339() {
        let t = Timestamp(1_700_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    }
}
