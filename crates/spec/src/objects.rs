//! Secrets and configs in specs: a service's references (`secrets: [db-password]`, or the long
//! form), Compose's top-level definitions (`secrets: { db-password: { file: ./pw.txt } }`),
//! and the rules both obey. Values never pass through here: a definition names the file the
//! caller reads.

use std::collections::BTreeSet;

use crate::decode::{Decoder, Path};
use crate::types::{DriverKind, FileRef, ObjectKind, ServiceSpec};
use crate::yaml::Yaml;

/// The longest name of a secret or config, as Swarm's.
pub const MAX_OBJECT_NAME_LEN: usize = 64;
/// The largest value of a secret or config: 500 KiB, as Swarm's.
pub const MAX_OBJECT_SIZE: usize = 500 * 1024;

const REF_KEYS: &[&str] = &["source", "target", "uid", "gid", "mode"];
const DEFINITION_KEYS: &[&str] = &["file", "external"];

/// A secret or config a Compose file defines from a file, to be read at deploy and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSource {
    pub kind: ObjectKind,
    pub name: String,
    /// As written in the file: relative to the Compose file's directory unless absolute.
    pub file: String,
}

/// A name as Swarm takes them: letters, digits, `-`, `_` and `.`, starting with a letter or a
/// digit, at most [`MAX_OBJECT_NAME_LEN`] long.
pub fn check_object_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_OBJECT_NAME_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_OBJECT_NAME_LEN} characters"
        ));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{name:?} is not a valid name: use letters, digits, '-', '_' and '.', starting with a letter or a digit"
        ));
    }
    Ok(())
}

/// A list of references, each `name` or a mapping of [`REF_KEYS`]. Compose writes `uid` and
/// `gid` as strings; both forms read as numbers.
pub(crate) fn file_refs(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<Vec<FileRef>> {
    d.list(path, node, file_ref)
}

fn file_ref(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<FileRef> {
    match node {
        Yaml::Str(name) => Some(FileRef::named(name)),
        Yaml::Map(_) => {
            let f = d.fields(path, node, REF_KEYS)?;
            let target = f.take(d, "target", Decoder::string);
            let uid = f.take(d, "uid", id);
            let gid = f.take(d, "gid", id);
            let mode = f.take(d, "mode", mode);
            let source = f.require(d, "source", Decoder::string)?;
            Some(FileRef {
                source,
                target,
                uid,
                gid,
                mode,
            })
        }
        other => d.wrong_type(path, "a name, or a mapping with `source`", other),
    }
}

/// A user or group id: a number, or digits in a string (`uid: "103"`, as Compose writes it).
fn id(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<u32> {
    let text = node.scalar_text();
    match text.as_deref().map(str::trim).map(str::parse::<u32>) {
        Some(Ok(n)) => Some(n),
        _ => d.wrong_type(path, "a numeric id", node),
    }
}

/// A file mode. Written with a leading zero (`0440`, `"0440"`) or `0o` it is octal, as
/// `chmod` reads it; a plain number is the value itself (Compose's `mode: 288`). The YAML
/// reader gives an unquoted `0440` as the float 440.0 (YAML 1.2 has no such integer), so an
/// integral float is read back as the octal digits it was written with.
fn mode(d: &mut Decoder, path: &Path, node: &Yaml) -> Option<u32> {
    let value = match node {
        Yaml::Int(n) => u32::try_from(*n).ok(),
        Yaml::Float(x) if x.fract() == 0.0 && *x >= 0.0 => parse_mode(&format!("0{x}")),
        Yaml::Str(text) => parse_mode(text.trim()),
        _ => None,
    };
    match value {
        Some(mode) if mode <= 0o777 => Some(mode),
        Some(mode) => {
            d.error(
                path,
                format!("{mode:o} (octal) is not a file mode: write 0400 to 0777"),
            );
            None
        }
        None => d.wrong_type(path, "an octal file mode like 0440", node),
    }
}

fn parse_mode(text: &str) -> Option<u32> {
    let octal = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix('0').filter(|rest| !rest.is_empty()));
    match octal {
        Some(digits) => u32::from_str_radix(digits, 8).ok(),
        None if text == "0" => Some(0),
        None => text.parse().ok(),
    }
}

/// Compose's top-level `secrets:` or `configs:`: each `name: { file: PATH }` is read at
/// deploy; `name: { external: true }` must already be in the cluster. Returns every name
/// defined and the definitions with a file.
pub(crate) fn definitions(
    d: &mut Decoder,
    kind: ObjectKind,
    path: &Path,
    node: &Yaml,
) -> (BTreeSet<String>, Vec<ObjectSource>) {
    let mut names = BTreeSet::new();
    let mut sources = Vec::new();
    let Some(f) = d.any_fields(path, node) else {
        return (names, sources);
    };
    for (at, name, body) in f.entries() {
        if let Err(why) = check_object_name(name) {
            d.error(&at, format!("the {kind} name {why}"));
            continue;
        }
        names.insert(name.to_string());
        let Some(def) = d.fields(&at, body, DEFINITION_KEYS) else {
            continue;
        };
        let external = def.take(d, "external", Decoder::boolean).unwrap_or(false);
        let file = def.take(d, "file", Decoder::string);
        match (file, external) {
            (Some(_), true) => d.error(&at, "`file` and `external: true` exclude each other"),
            (Some(file), false) => sources.push(ObjectSource {
                kind,
                name: name.to_string(),
                file,
            }),
            (None, true) => {}
            (None, false) => d.error(
                &at,
                format!(
                    "a {kind} needs `file: PATH` (read at deploy), or `external: true` for one \
                     made with `outpost {kind} create`"
                ),
            ),
        }
    }
    (names, sources)
}

/// Every problem of a service's references, each as (path, message).
pub(crate) fn check(spec: &ServiceSpec, root: &Path) -> Vec<(Path, String)> {
    let mut problems = Vec::new();
    for kind in ObjectKind::ALL {
        let mut targets = BTreeSet::new();
        for (i, r) in spec.file_refs(kind).iter().enumerate() {
            let at = root.key(kind.field()).index(i);
            if let Err(why) = check_object_name(&r.source) {
                problems.push((at.key("source"), why));
            }
            if let Err(why) = check_target(spec.driver, r.target()) {
                problems.push((at.key("target"), why));
            }
            if !targets.insert(r.target()) {
                let message = format!("{:?} is the target of two {}", r.target(), kind.field());
                problems.push((at.key("target"), message));
            }
            if let Some(mode) = r.mode.filter(|m| *m > 0o777) {
                let message = format!("{mode:o} (octal) is not a file mode: write 0400 to 0777");
                problems.push((at.key("mode"), message));
            }
        }
    }
    if let Some(name) = &spec.pull_secret
        && let Err(why) = check_object_name(name)
    {
        problems.push((root.key("pull_secret"), why));
    }
    problems
}

/// A target is a file name or relative path without `..`, or, for a container, an absolute
/// path; a process task has no filesystem of its own to put an absolute path in.
fn check_target(driver: DriverKind, target: &str) -> Result<(), String> {
    let absolute = target.starts_with('/');
    if absolute && driver == DriverKind::Process {
        return Err(format!(
            "{target:?} is absolute: a process task reads its files in $OUTPOST_SECRETS_DIR or \
             $OUTPOST_CONFIGS_DIR, so give a relative target"
        ));
    }
    let parts: Vec<&str> = target.trim_start_matches('/').split('/').collect();
    if target.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!(
            "{target:?} is not a file path: use names separated by '/', without '.' or '..'"
        ));
    }
    if target.contains('\0') || target.contains(':') && driver == DriverKind::Docker {
        return Err(format!(
            "{target:?} contains a character a mount cannot name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_chmod_reads_them() {
        for (text, mode) in [("0440", 0o440), ("0o400", 0o400), ("288", 288), ("0", 0)] {
            assert_eq!(parse_mode(text), Some(mode), "{text}");
        }
        let docs = crate::yaml::load("t", "a: 0440\nb: 0o440\nc: 288\nd: '0400'\n").unwrap();
        let mut d = Decoder::default();
        for (key, want) in [("a", 0o440), ("b", 0o440), ("c", 288), ("d", 0o400)] {
            let node = docs[0].get(key).unwrap();
            assert_eq!(mode(&mut d, &Path::root(key), node), Some(want), "{key}");
        }
        assert!(d.problems.is_empty());
    }

    #[test]
    fn names_and_targets() {
        assert!(check_object_name("db-password").is_ok());
        assert!(check_object_name("db_password.txt").is_ok());
        assert!(check_object_name("-x").is_err());
        assert!(check_object_name("a/b").is_err());
        assert!(check_object_name(&"a".repeat(65)).is_err());
        assert!(check_target(DriverKind::Process, "pw").is_ok());
        assert!(check_target(DriverKind::Process, "sub/pw").is_ok());
        assert!(check_target(DriverKind::Process, "/etc/pw").is_err());
        assert!(check_target(DriverKind::Docker, "/etc/nginx.conf").is_ok());
        assert!(check_target(DriverKind::Docker, "../pw").is_err());
        assert!(check_target(DriverKind::Docker, "a//b").is_err());
    }
}
