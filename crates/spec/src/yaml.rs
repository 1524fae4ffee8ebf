//! A small YAML tree that keeps what the decoders need and serde's data model would lose: key
//! order (so problems and Compose services come out in file order) and the difference between
//! `"3"` and `3`. serde-saphyr does the parsing; this file only turns its output into [`Yaml`]
//! and its errors into [`Problem`]s that name the file, line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::Problem;

/// One YAML node. Mappings keep their keys in file order; keys are always text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Yaml {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// The value under `key` when `self` is a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The scalar as the text a user would have written; `None` for null and collections.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match self {
            Yaml::Bool(b) => Some(b.to_string()),
            Yaml::Int(n) => Some(n.to_string()),
            Yaml::Float(x) => Some(x.to_string()),
            Yaml::Str(s) => Some(s.clone()),
            Yaml::Null | Yaml::Seq(_) | Yaml::Map(_) => None,
        }
    }

    /// How a problem message names what was found: `"three"`, `3.5`, `a list`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Yaml::Null => "nothing".to_string(),
            Yaml::Str(s) => format!("{s:?}"),
            Yaml::Seq(_) => "a list".to_string(),
            Yaml::Map(_) => "a mapping".to_string(),
            other => other.scalar_text().unwrap_or_default(),
        }
    }
}

/// Parses every document in `text`. Empty documents are skipped, as serde-saphyr does.
pub(crate) fn load(source: &str, text: &str) -> Result<Vec<Yaml>, Problem> {
    let options = serde_saphyr::options! {
        // YAML 1.2 booleans only: `restart: no` must stay the word "no" (the Norway problem).
        strict_booleans: true,
        // We print our own one-line `file:line:column: message`.
        with_snippet: false,
    };
    serde_saphyr::from_multiple_with_options(text, options).map_err(|e| syntax_problem(source, &e))
}

fn syntax_problem(source: &str, error: &serde_saphyr::Error) -> Problem {
    let text = error.without_snippet().to_string();
    match error.location().filter(|l| l.line() > 0) {
        Some(at) => {
            let suffix = format!(" at line {}, column {}", at.line(), at.column());
            let message = text.strip_suffix(&suffix).unwrap_or(&text);
            Problem::new(
                format!("{source}:{}:{}", at.line(), at.column()),
                tidy(message),
            )
        }
        None => Problem::new(source, tidy(&text)),
    }
}

/// serde-saphyr words some messages for the programmer who calls it; reword those for the user.
fn tidy(message: &str) -> String {
    if message.starts_with("recursive references") {
        return "an alias refers to the node that contains it; recursive YAML is not allowed"
            .to_string();
    }
    match message.strip_prefix("duplicate mapping key: ") {
        Some(rest) => {
            let key = rest
                .split(", set DuplicateKeyPolicy")
                .next()
                .unwrap_or(rest);
            format!("key {key:?} appears twice in the same mapping")
        }
        None => message.to_string(),
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Yaml, D::Error> {
        deserializer.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

const KEY_MESSAGE: &str = "a mapping key must be a plain word, not a list, a mapping or nothing";

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }

    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Yaml, E> {
        i128::try_from(v)
            .map(Yaml::Int)
            .map_err(|_| E::custom("integer is too large"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Yaml::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Yaml>()? {
            let Some(key) = key.scalar_text() else {
                return Err(de::Error::custom(KEY_MESSAGE));
            };
            entries.push((key, map.next_value()?));
        }
        Ok(Yaml::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: Result<Vec<Yaml>, Problem>) {
        assert_eq!(load("f.yaml", text), expect, "{text:?}");
    }

    fn map(entries: &[(&str, Yaml)]) -> Yaml {
        Yaml::Map(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn keeps_key_order_and_scalar_types() {
        let doc = map(&[
            ("z", Yaml::Int(3)),
            ("a", Yaml::Str("3".into())),
            ("m", Yaml::Float(0.5)),
            ("no", Yaml::Str("no".into())),
            ("t", Yaml::Bool(true)),
            ("n", Yaml::Null),
            ("8080", Yaml::Seq(vec![Yaml::Str("x".into())])),
        ]);
        check(
            "z: 3\na: \"3\"\nm: 0.5\nno: no\nt: true\nn:\n8080: [x]\n",
            Ok(vec![doc]),
        );
    }

    #[test]
    fn reads_every_document_and_skips_empty_ones() {
        let docs = vec![map(&[("a", Yaml::Int(1))]), map(&[("b", Yaml::Int(2))])];
        check("---\n---\na: 1\n---\nb: 2\n", Ok(docs));
    }

    #[test]
    fn errors_carry_file_line_and_column() {
        check(
            "a: 1\n  b: 2\n",
            Err(Problem::new(
                "f.yaml:2:4",
                "mapping values are not allowed in this context",
            )),
        );
        check("? [a]\n: 1\n", Err(Problem::new("f.yaml", KEY_MESSAGE)));
        let recursive =
            "an alias refers to the node that contains it; recursive YAML is not allowed";
        check("a: &x [*x]\n", Err(Problem::new("f.yaml:1:8", recursive)));
    }
}
