//! The names the server answers for: a [`Zone`] maps each name to its [`Record`]s, built whole
//! by the caller and handed to [`super::Dns::update`]. Lookups tell a name that has records (of
//! some type) from one that does not exist, which is what NOERROR-with-no-answers (NODATA)
//! versus NXDOMAIN rests on.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::wire::Name;

/// One resource record; its owner is the name it is inserted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// A service's location (RFC 2782): lower priorities first, then spread by weight. The
    /// target is a dotted name, e.g. "web-1.app.outpost"; "" or "." says the service is not
    /// offered.
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// Why a name cannot be in a zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a DNS name: {problem}")]
pub struct ZoneError {
    pub name: String,
    pub problem: &'static str,
}

/// Names (lowercase, dotted, without the trailing dot, e.g. "web.outpost",
/// "_http._tcp.web.outpost") and their records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    records: HashMap<String, Vec<Record>>,
    /// Names with no record of their own but names below them ("_tcp.web.outpost" when
    /// "_http._tcp.web.outpost" is in the zone): they exist, so they answer NODATA, not
    /// NXDOMAIN (RFC 8020).
    between: HashSet<String>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds `record` to `name`'s (a record it already has is not added twice). Names are taken
    /// case-insensitively, with or without a trailing dot. A name or SRV target that is not a
    /// DNS name (an empty or over-long label, a byte outside visible ASCII, over 255 bytes) is
    /// left out with a warning: see [`Zone::try_insert`].
    pub fn insert(&mut self, name: &str, record: Record) {
        if let Err(e) = self.try_insert(name, record) {
            tracing::warn!("DNS record left out of the zone: {e}");
        }
    }

    /// [`Zone::insert`], saying why a record was left out.
    pub fn try_insert(&mut self, name: &str, record: Record) -> Result<(), ZoneError> {
        let key = key(name)?;
        if let Record::Srv { target, .. } = &record {
            let target = target.trim_end_matches('.');
            if !target.is_empty() {
                self::key(target)?;
            }
        }
        let mut above = key.as_str();
        while let Some((_, parent)) = above.split_once('.') {
            self.between.insert(parent.to_owned());
            above = parent;
        }
        let records = self.records.entry(key).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
        Ok(())
    }

    /// Names that have records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// `key`'s records (`key` lowercase, dotted, without the trailing dot); empty for a name that
    /// exists only because names below it do; `None` for a name that does not exist.
    pub fn lookup(&self, key: &str) -> Option<&[Record]> {
        match self.records.get(key) {
            Some(records) => Some(records),
            None => self.between.contains(key).then_some(&[]),
        }
    }
}

/// `name` as zones are keyed, checked to be a DNS name.
fn key(name: &str) -> Result<String, ZoneError> {
    let problem = |problem| ZoneError {
        name: name.to_owned(),
        problem,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(problem("empty"));
    }
    let parsed = Name::from_dotted(trimmed).ok_or_else(|| {
        problem("labels must be 1 to 63 visible ASCII bytes, 255 bytes in all at most")
    })?;
    parsed
        .key()
        .ok_or_else(|| problem("labels must be visible ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_keyed_lowercase_without_the_trailing_dot() {
        let mut zone = Zone::new();
        zone.insert("Web.Outpost.", Record::A(Ipv4Addr::new(10, 0, 0, 1)));
        zone.insert("web.outpost", Record::A(Ipv4Addr::new(10, 0, 0, 1)));
        zone.insert("web.outpost", Record::A(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(zone.len(), 1);
        assert_eq!(
            zone.lookup("web.outpost").unwrap(),
            [
                Record::A(Ipv4Addr::new(10, 0, 0, 1)),
                Record::A(Ipv4Addr::new(10, 0, 0, 2))
            ]
        );
    }

    #[test]
    fn names_above_a_record_exist_with_no_records() {
        let mut zone = Zone::new();
        let srv = Record::Srv {
            priority: 0,
            weight: 1,
            port: 80,
            target: "web.outpost.".to_owned(),
        };
        zone.insert("_http._tcp.web.outpost", srv.clone());
        assert_eq!(zone.lookup("_http._tcp.web.outpost").unwrap(), [srv]);
        assert_eq!(zone.lookup("_tcp.web.outpost"), Some(&[][..]));
        assert_eq!(zone.lookup("web.outpost"), Some(&[][..]));
        assert_eq!(zone.lookup("outpost"), Some(&[][..]));
        assert_eq!(zone.lookup("db.outpost"), None);
        assert_eq!(zone.lookup("x._http._tcp.web.outpost"), None);
    }

    #[test]
    fn invalid_names_and_targets_are_refused() {
        let mut zone = Zone::new();
        let a = Record::A(Ipv4Addr::LOCALHOST);
        for bad in ["", ".", "a..outpost", "sp ace.outpost", "é.outpost"] {
            assert!(zone.try_insert(bad, a.clone()).is_err(), "{bad:?}");
        }
        let long = format!("{}.outpost", "a".repeat(64));
        let e = zone.try_insert(&long, a.clone()).unwrap_err();
        assert_eq!(e.name, long);
        assert!(e.to_string().contains("is not a DNS name"), "{e}");
        let srv = |target: &str| Record::Srv {
            priority: 0,
            weight: 0,
            port: 1,
            target: target.to_owned(),
        };
        assert!(
            zone.try_insert("_x._tcp.outpost", srv("bad..name"))
                .is_err()
        );
        assert!(zone.is_empty());
        zone.try_insert("_x._tcp.outpost", srv(".")).unwrap();
        zone.try_insert("_y._tcp.outpost", srv("")).unwrap();
        zone.insert("bad..name", a);
        assert_eq!(zone.len(), 2);
    }
}
