//! [`TrackedMap`]: a map that remembers which keys changed, so that the store writes only the
//! rows an applied batch touched instead of the whole state.
//!
//! Reads go through `Deref` to the inner `BTreeMap`, so code that only reads a map of `State`
//! (`get`, `values`, `iter`, `len`, …) reads it as before. Every way to change it is a method here
//! that records the key; there is no `DerefMut`, so a change cannot slip past the record.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `BTreeMap` that records the keys inserted, changed or removed since the store last took
/// them (`take_changes`). It serializes as the plain map; equality
/// compares the contents only.
#[derive(Clone)]
pub struct TrackedMap<K, V> {
    rows: BTreeMap<K, V>,
    changed: BTreeSet<K>,
}

impl<K: Ord + Clone, V> TrackedMap<K, V> {
    pub fn new() -> TrackedMap<K, V> {
        TrackedMap {
            rows: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.changed.insert(key.clone());
        self.rows.insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (key, value) = self.rows.remove_entry(key)?;
        self.changed.insert(key);
        Some(value)
    }

    /// The value under `key` to change in place; the key is recorded as changed whether or not
    /// the caller changes it, so look with `get` first when a change is unlikely.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if !self.changed.contains(key) {
            let (owned, _) = self.rows.get_key_value(key)?;
            self.changed.insert(owned.clone());
        }
        self.rows.get_mut(key)
    }

    /// The value under `key`, inserted with `default` first if missing; recorded as changed.
    pub fn get_or_insert_with(&mut self, key: K, default: impl FnOnce() -> V) -> &mut V {
        self.changed.insert(key.clone());
        self.rows.entry(key).or_insert_with(default)
    }

    /// Every value to change in place. Every key is recorded as changed, so the next write
    /// rewrites the whole map: meant for rare whole-map changes, never for one row.
    pub fn values_mut(&mut self) -> btree_map::ValuesMut<'_, K, V> {
        self.changed.extend(self.rows.keys().cloned());
        self.rows.values_mut()
    }

    /// Makes the contents equal to `rows`, recording only the keys whose value differs.
    pub fn replace_with(&mut self, rows: BTreeMap<K, V>)
    where
        V: PartialEq,
    {
        let gone: Vec<K> = self
            .rows
            .keys()
            .filter(|k| !rows.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for (key, value) in rows {
            if self.rows.get(&key) != Some(&value) {
                self.insert(key, value);
            }
        }
    }

    /// The keys changed since the last call, each with its value now (`None`: removed), and
    /// forgets them.
    pub(crate) fn take_changes(&mut self) -> impl Iterator<Item = (K, Option<&V>)> {
        let changed = std::mem::take(&mut self.changed);
        let rows = &self.rows;
        changed.into_iter().map(move |key| {
            let value = rows.get(&key);
            (key, value)
        })
    }

    /// The keys changed since the store last took them.
    pub(crate) fn changed(&self) -> &BTreeSet<K> {
        &self.changed
    }

    /// Records every key as changed: the next write rewrites the whole map.
    pub(crate) fn mark_all_changed(&mut self) {
        self.changed = self.rows.keys().cloned().collect();
    }

    /// Forgets the changes recorded so far: what the map holds is what is stored.
    pub(crate) fn forget_changes(&mut self) {
        self.changed.clear();
    }
}

impl<K: Ord + Clone, V> Default for TrackedMap<K, V> {
    fn default() -> Self {
        TrackedMap::new()
    }
}

impl<K, V> Deref for TrackedMap<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &BTreeMap<K, V> {
        &self.rows
    }
}

impl<'a, K, V> IntoIterator for &'a TrackedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = btree_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

/// A map built from rows that were never stored: every key counts as changed.
impl<K: Ord + Clone, V> From<BTreeMap<K, V>> for TrackedMap<K, V> {
    fn from(rows: BTreeMap<K, V>) -> Self {
        let changed = rows.keys().cloned().collect();
        TrackedMap { rows, changed }
    }
}

impl<K: Ord + Clone, V> FromIterator<(K, V)> for TrackedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        TrackedMap::from(iter.into_iter().collect::<BTreeMap<K, V>>())
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for TrackedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.rows == other.rows
    }
}

impl<K: Eq, V: Eq> Eq for TrackedMap<K, V> {}

// Readers compare a map of the state with one they built themselves.
impl<K: PartialEq, V: PartialEq> PartialEq<BTreeMap<K, V>> for TrackedMap<K, V> {
    fn eq(&self, other: &BTreeMap<K, V>) -> bool {
        self.rows == *other
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq<TrackedMap<K, V>> for BTreeMap<K, V> {
    fn eq(&self, other: &TrackedMap<K, V>) -> bool {
        *self == other.rows
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for TrackedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.rows.fmt(f)
    }
}

impl<K: Serialize, V: Serialize> Serialize for TrackedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.rows.serialize(s)
    }
}

/// A map read back from storage: nothing has changed yet.
impl<'de, K, V> Deserialize<'de> for TrackedMap<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TrackedMap {
            rows: BTreeMap::deserialize(d)?,
            changed: BTreeSet::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(map: &mut TrackedMap<String, u32>) -> Vec<(String, Option<u32>)> {
        map.take_changes().map(|(k, v)| (k, v.copied())).collect()
    }

    #[test]
    fn records_each_changed_key_once_with_its_final_value() {
        let mut map = TrackedMap::new();
        map.insert("a".to_string(), 1);
        map.insert("b".to_string(), 2);
        *map.get_mut("a").unwrap() += 10;
        map.remove("b");
        map.remove("never");
        assert_eq!(
            changes(&mut map),
            [("a".to_string(), Some(11)), ("b".to_string(), None)]
        );
        assert_eq!(changes(&mut map), [], "taken once");
        assert_eq!(map.get("a"), Some(&11), "reads go through to the map");
    }

    #[test]
    fn looking_and_missing_keys_record_nothing() {
        let mut map: TrackedMap<String, u32> = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert!(map.get_mut("missing").is_none());
        assert_eq!(map.values().sum::<u32>(), 1);
        assert_eq!(changes(&mut map), [], "a loaded map starts unchanged");
    }

    #[test]
    fn replace_with_records_only_the_differences() {
        let mut map: TrackedMap<String, u32> =
            serde_json::from_str(r#"{"same":1,"moved":2,"gone":3}"#).unwrap();
        let next = BTreeMap::from([
            ("same".to_string(), 1),
            ("moved".to_string(), 20),
            ("new".to_string(), 4),
        ]);
        map.replace_with(next.clone());
        assert_eq!(*map, next);
        assert_eq!(
            changes(&mut map),
            [
                ("gone".to_string(), None),
                ("moved".to_string(), Some(20)),
                ("new".to_string(), Some(4)),
            ]
        );
    }

    #[test]
    fn equality_and_json_ignore_the_record_of_changes() {
        let mut changed = TrackedMap::new();
        changed.insert("a".to_string(), 1);
        let loaded: TrackedMap<String, u32> = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(changed, loaded);
        assert_eq!(serde_json::to_string(&changed).unwrap(), r#"{"a":1}"#);
    }
}
