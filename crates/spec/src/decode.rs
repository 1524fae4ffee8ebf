//! Hand decoding of a [`Yaml`] tree into typed values. Unlike serde's derive, which stops at the
//! first mismatch, every helper here records a [`Problem`] with the field's path and carries on,
//! so one run reports everything wrong with a file. Helpers return `None` after recording.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::container;
use crate::error::{Problem, did_you_mean};
use crate::quantity::{Cpu, Memory};
use crate::words;
use crate::yaml::Yaml;

/// A field path being built while walking a document: `web.liveness.http.port`, `web.ports[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root(name: impl Into<String>) -> Path {
        Path(name.into())
    }

    pub(crate) fn key(&self, key: &str) -> Path {
        Path(format!("{}.{key}", self.0))
    }

    pub(crate) fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    /// Whether `path` is this path or lies under it, e.g. `web.ports[0].name` under `web.ports`.
    pub(crate) fn covers(&self, path: &str) -> bool {
        path.strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects problems while decoding.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    pub(crate) problems: Vec<Problem>,
    /// Compose interpolates `${VAR}` into text, so `replicas: ${N}` arrives as the string "3";
    /// docker compose casts such strings to the field's type and so do we. Native specs, which
    /// are not interpolated, want real numbers and booleans.
    pub(crate) scalars_from_text: bool,
    /// Things a parse could not honour but that do not stop it (Compose keys Outpost ignores).
    pub(crate) warnings: Vec<String>,
    /// What warnings start with, e.g. `compose.yaml: service "db"`.
    pub(crate) scope: String,
    /// The path of the service being decoded, so warnings can name keys relative to it.
    pub(crate) scope_root: String,
}

/// The entries of a mapping, with the mapping's path. A key whose value is null counts as
/// absent, so `liveness:` with nothing after it means "no liveness probe".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    path: &'a Path,
    entries: &'a [(String, Yaml)],
}

impl<'a> Fields<'a> {
    /// The mapping's own path.
    pub(crate) fn path(&self) -> &'a Path {
        self.path
    }

    pub(crate) fn get(&self, key: &str) -> Option<(Path, &'a Yaml)> {
        self.entries
            .iter()
            .find(|(k, v)| k == key && *v != Yaml::Null)
            .map(|(k, v)| (self.path.key(k), v))
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Decodes `key` with `decode` when it is present.
    pub(crate) fn take<T>(
        &self,
        d: &mut Decoder,
        key: &str,
        decode: impl FnOnce(&mut Decoder, &Path, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        let (path, node) = self.get(key)?;
        decode(d, &path, node)
    }

    /// Like [`Fields::take`], but a missing key is a problem.
    pub(crate) fn require<T>(
        &self,
        d: &mut Decoder,
        key: &str,
        decode: impl FnOnce(&mut Decoder, &Path, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        if !self.has(key) {
            d.error(&self.path.key(key), "missing");
            return None;
        }
        self.take(d, key, decode)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (Path, &'a str, &'a Yaml)> + '_ {
        self.entries
            .iter()
            .map(|(k, v)| (self.path.key(k), k.as_str(), v))
    }
}

impl Decoder {
    pub(crate) fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem::new(path.to_string(), message));
    }

    pub(crate) fn warn(&mut self, message: impl fmt::Display) {
        self.warnings.push(format!("{}: {message}", self.scope));
    }

    /// Warns that the key at `path` was ignored, naming it relative to the service.
    pub(crate) fn ignored(&mut self, path: &Path) {
        let full = path.to_string();
        let key = full
            .strip_prefix(&self.scope_root)
            .and_then(|k| k.strip_prefix('.'));
        let key = key.unwrap_or(&full).to_string();
        self.warn(format_args!(
            "key {key:?} is not supported yet and was ignored"
        ));
    }

    /// Records "expected X, got Y" and returns `None`, for the common mismatch.
    pub(crate) fn wrong_type<T>(&mut self, path: &Path, expected: &str, node: &Yaml) -> Option<T> {
        self.error(
            path,
            format!("expected {expected}, got {}", node.describe()),
        );
        None
    }

    /// A mapping's fields, after reporting any key not in `known`. Null reads as an empty mapping.
    pub(crate) fn fields<'a>(
        &mut self,
        path: &'a Path,
        node: &'a Yaml,
        known: &[&str],
    ) -> Option<Fields<'a>> {
        let fields = self.any_fields(path, node)?;
        for (key_path, key, _) in fields.entries() {
            if !known.contains(&key) {
                self.error(&key_path, unknown_key(key, known));
            }
        }
        Some(fields)
    }

    /// A mapping's fields without checking keys, for callers that sort keys themselves.
    pub(crate) fn any_fields<'a>(&mut self, path: &'a Path, node: &'a Yaml) -> Option<Fields<'a>> {
        match node {
            Yaml::Map(entries) => Some(Fields { path, entries }),
            Yaml::Null => Some(Fields { path, entries: &[] }),
            other => self.wrong_type(path, "a mapping", other),
        }
    }

    /// Text; numbers and booleans are taken as written (`user: 1000`).
    pub(crate) fn string(&mut self, path: &Path, node: &Yaml) -> Option<String> {
        match node.scalar_text() {
            Some(text) => Some(text),
            None => self.wrong_type(path, "a string", node),
        }
    }

    /// argv: a list of strings, or one string split into words like a shell would.
    pub(crate) fn argv(&mut self, path: &Path, node: &Yaml) -> Option<Vec<String>> {
        match node {
            Yaml::Str(text) => match words::split(text) {
                Ok(words) => Some(words),
                Err(message) => {
                    self.error(path, message);
                    None
                }
            },
            Yaml::Seq(_) => self.list(path, node, Decoder::string),
            other => self.wrong_type(path, "a list of strings", other),
        }
    }

    /// A list whose items are decoded by `item`. Every item is tried, so all their problems are
    /// reported, but one failure fails the list: a partial list would shift the indices that
    /// later problems about it name.
    pub(crate) fn list<T>(
        &mut self,
        path: &Path,
        node: &Yaml,
        mut item: impl FnMut(&mut Decoder, &Path, &Yaml) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Yaml::Seq(items) = node else {
            return self.wrong_type(path, "a list", node);
        };
        let decoded: Vec<Option<T>> = items
            .iter()
            .enumerate()
            .map(|(i, node)| item(self, &path.index(i), node))
            .collect();
        decoded.into_iter().collect()
    }

    /// A whole number that fits `T`; the message names the range when it does not.
    pub(crate) fn number<T>(&mut self, path: &Path, node: &Yaml) -> Option<T>
    where
        T: TryFrom<i128> + Bounded,
    {
        let value = match node {
            Yaml::Int(n) => Some(*n),
            Yaml::Str(s) if self.scalars_from_text => s.trim().parse::<i128>().ok(),
            _ => None,
        };
        let Some(value) = value else {
            return self.wrong_type(path, "a whole number", node);
        };
        match T::try_from(value) {
            Ok(n) => Some(n),
            Err(_) => {
                let (min, max) = (T::MIN_I128, T::MAX_I128);
                self.error(
                    path,
                    format!("{value} is out of range (expected {min} to {max})"),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, path: &Path, node: &Yaml) -> Option<bool> {
        match node {
            Yaml::Bool(b) => Some(*b),
            Yaml::Str(s) if self.scalars_from_text && s == "true" => Some(true),
            Yaml::Str(s) if self.scalars_from_text && s == "false" => Some(false),
            other => self.wrong_type(path, "true or false", other),
        }
    }

    /// A share from 0 to 1 (`0.25`, `0`, `1`).
    pub(crate) fn ratio(&mut self, path: &Path, node: &Yaml) -> Option<crate::Ratio> {
        let value = match node {
            Yaml::Int(n) => Some(*n as f64),
            Yaml::Float(x) => Some(*x),
            Yaml::Str(s) if self.scalars_from_text => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(value) = value else {
            return self.wrong_type(path, "a number from 0 to 1", node);
        };
        let ratio = crate::Ratio::new(value);
        if ratio.is_none() {
            self.error(path, format!("{value} is not between 0 and 1"));
        }
        ratio
    }

    /// A duration as Outpost writes them everywhere: `500ms`, `10s`, `1m 30s`.
    pub(crate) fn duration(&mut self, path: &Path, node: &Yaml) -> Option<Duration> {
        self.parsed(path, node, |text| {
            humantime::parse_duration(text).map_err(|_| {
                format!("{text:?} is not a duration (write a number and a unit, like \"500ms\", \"10s\" or \"1m\")")
            })
        })
    }

    /// A list of capability names, normalised (`cap_net_admin` becomes `NET_ADMIN`); whether
    /// each is a real capability is validation's call.
    pub(crate) fn capabilities(&mut self, path: &Path, node: &Yaml) -> Option<Vec<String>> {
        self.list(path, node, |d, p, n| {
            let name = d.string(p, n)?;
            Some(container::normalize_capability(&name))
        })
    }

    /// A signal name or number, normalised (`term` becomes `SIGTERM`); validation checks it.
    pub(crate) fn signal(&mut self, path: &Path, node: &Yaml) -> Option<String> {
        self.string(path, node)
            .map(|s| container::normalize_signal(&s))
    }

    pub(crate) fn cpu(&mut self, path: &Path, node: &Yaml) -> Option<Cpu> {
        self.parsed(path, node, Cpu::from_str)
    }

    pub(crate) fn memory(&mut self, path: &Path, node: &Yaml) -> Option<Memory> {
        self.parsed(path, node, Memory::from_str)
    }

    /// A scalar run through `parse`, whose error message becomes the problem.
    pub(crate) fn parsed<T>(
        &mut self,
        path: &Path,
        node: &Yaml,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(path, node)?;
        match parse(&text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    /// `KEY: value` pairs with scalar values, e.g. `env`.
    pub(crate) fn string_map(&mut self, path: &Path, node: &Yaml) -> BTreeMap<String, String> {
        let Some(fields) = self.any_fields(path, node) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (key_path, key, value) in fields.entries() {
            if let Some(value) = self.string(&key_path, value) {
                out.insert(key.to_string(), value);
            }
        }
        out
    }

    /// One of a fixed set of words, e.g. `driver: process | docker`.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        path: &Path,
        node: &Yaml,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let text = self.string(path, node)?;
        if let Some((_, value)) = choices.iter().find(|(word, _)| *word == text) {
            return Some(*value);
        }
        let words: Vec<String> = choices.iter().map(|(w, _)| format!("`{w}`")).collect();
        self.error(path, format!("{text:?} is not one of {}", words.join(", ")));
        None
    }
}

/// Integer types `Decoder::number` can produce, with their range for messages.
pub(crate) trait Bounded {
    const MIN_I128: i128;
    const MAX_I128: i128;
}

macro_rules! bounded {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            const MIN_I128: i128 = <$t>::MIN as i128;
            const MAX_I128: i128 = <$t>::MAX as i128;
        }
    )*};
}
bounded!(u16, u32, u64);

/// The longest list of keys an error prints: room for a native service's, far below Compose's.
const MAX_LISTED_KEYS: usize = 40;

/// "unknown key; did you mean `readiness`?", or the list of keys when none is close. Long lists
/// (Compose has ~90 keys) are not printed: they would bury the message.
pub(crate) fn unknown_key(key: &str, known: &[&str]) -> String {
    match did_you_mean(key, known) {
        Some(guess) => format!("unknown key; did you mean `{guess}`?"),
        None if known.len() <= MAX_LISTED_KEYS => {
            let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            format!("unknown key; expected one of {}", list.join(", "))
        }
        None => "unknown key".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let known = ["name", "replicas", "readiness", "liveness", "image"];
        assert_eq!(did_you_mean("readyness", &known), Some("readiness"));
        assert_eq!(did_you_mean("replica", &known), Some("replicas"));
        assert_eq!(did_you_mean("zzz", &known), None);
        assert_eq!(
            unknown_key("zzz", &["a", "b"]),
            "unknown key; expected one of `a`, `b`"
        );
    }

    #[test]
    fn paths_cover_their_children() {
        let ports = Path::root("web").key("ports");
        assert!(ports.covers("web.ports"));
        assert!(ports.covers("web.ports[0].name"));
        assert!(!ports.covers("web.portsx"));
        assert!(!ports.covers("web"));
    }
}
