//! Compose variable interpolation, as `docker compose` does it: `$VAR`, `${VAR}`,
//! `${VAR:-default}` / `${VAR-default}` (unset-or-empty / unset), `${VAR:?message}` /
//! `${VAR?message}` (required), `${VAR:+other}` / `${VAR+other}` (replacement when set), and
//! `$$` for a literal `$`. Defaults may nest (`${A:-${B}}`). Any other `$` is an error rather than
//! a guess, because a silently mangled password is worse than a refused deploy.

/// Expands `text`. `lookup` returns a variable's value; the names of unset variables used without
/// a default are appended to `unset` (compose warns about those and uses an empty string).
pub(crate) fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end =
                closing_brace(inner).ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
            out.push_str(&braced(&inner[..end], lookup, unset)?);
            rest = &inner[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "{text:?} has a \"$\" that starts no variable (write \"$$\" for a literal \"$\")"
                ));
            }
            out.push_str(&plain(&after[..len], lookup, unset));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The body of `${...}`: a name, then optionally an operator and a word.
fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let len = name_len(body);
    let (name, op) = body.split_at(len);
    if name.is_empty() {
        return Err(format!(
            "\"${{{body}}}\" does not start with a variable name"
        ));
    }
    if op.is_empty() {
        return Ok(plain(name, lookup, unset));
    }
    let value = lookup(name);
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let mut word = |w: &str| interpolate(w, lookup, unset);
    if let Some(default) = op.strip_prefix(":-") {
        return if non_empty {
            Ok(value.unwrap_or_default())
        } else {
            word(default)
        };
    }
    if let Some(message) = op.strip_prefix(":?") {
        return if non_empty {
            Ok(value.unwrap_or_default())
        } else {
            Err(required(name, &word(message)?))
        };
    }
    if let Some(other) = op.strip_prefix(":+") {
        return if non_empty {
            word(other)
        } else {
            Ok(String::new())
        };
    }
    if let Some(default) = op.strip_prefix('-') {
        return value.map_or_else(|| word(default), Ok);
    }
    if let Some(message) = op.strip_prefix('?') {
        return value.ok_or_else(|| word(message).map_or_else(|e| e, |m| required(name, &m)));
    }
    if let Some(other) = op.strip_prefix('+') {
        return if value.is_some() {
            word(other)
        } else {
            Ok(String::new())
        };
    }
    Err(format!(
        "\"${{{body}}}\" is not a valid substitution (use :-, -, :?, ?, :+ or +)"
    ))
}

fn plain(name: &str, lookup: &dyn Fn(&str) -> Option<String>, unset: &mut Vec<String>) -> String {
    lookup(name).unwrap_or_else(|| {
        unset.push(name.to_string());
        String::new()
    })
}

fn required(name: &str, message: &str) -> String {
    match message {
        "" => format!("required variable {name:?} is not set"),
        message => format!("required variable {name:?} is not set: {message}"),
    }
}

/// Length of the variable name at the start of `text`: a letter or `_`, then alphanumerics or `_`.
fn name_len(text: &str) -> usize {
    let mut len = 0;
    for (i, c) in text.char_indices() {
        let ok = c == '_'
            || if i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric()
            };
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// Index of the `}` closing a `${` whose body starts `text`, skipping nested `${...}` and `$$`.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'$', Some(b'$')) => i += 2,
            (b'$', Some(b'{')) => {
                depth += 1;
                i += 2;
            }
            (b'}', _) if depth == 0 => return Some(i),
            (b'}', _) => {
                depth -= 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Expands `text` with `FULL=value` and `EMPTY=` set; returns the result and unset names.
    fn expand(text: &str) -> Result<(String, Vec<String>), String> {
        let vars = BTreeMap::from([("FULL", "value"), ("EMPTY", "")]);
        let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
        let mut unset = Vec::new();
        interpolate(text, &lookup, &mut unset).map(|s| (s, unset))
    }

    fn check(text: &str, expect: &str) {
        assert_eq!(
            expand(text).map(|(s, _)| s),
            Ok(expect.to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn every_form_expands_as_docker_compose_does() {
        check("no variables", "no variables");
        check("${FULL} and $FULL!", "value and value!");
        check(
            "${MISSING:-fallback} ${EMPTY:-fallback} ${FULL:-fallback}",
            "fallback fallback value",
        );
        check("${MISSING-fallback} [${EMPTY-fallback}]", "fallback []");
        check("${FULL:+yes} [${EMPTY:+yes}] ${EMPTY+yes}", "yes [] yes");
        check("${MISSING:-${FULL}-x}", "value-x");
        check("${MISSING:-}", "");
        check("cost: $$5 and $${FULL}", "cost: $5 and ${FULL}");
        check("${FULL:?must be set}", "value");
    }

    #[test]
    fn unset_variables_are_empty_and_reported() {
        assert_eq!(
            expand("[${NOPE}] [$ALSO_NOPE]"),
            Ok(("[] []".to_string(), vec!["NOPE".into(), "ALSO_NOPE".into()]))
        );
        assert_eq!(expand("${NOPE:-ok}"), Ok(("ok".to_string(), vec![])));
    }

    #[test]
    fn required_and_malformed_references_are_errors() {
        assert_eq!(
            expand("${MISSING:?set the password}"),
            Err(r#"required variable "MISSING" is not set: set the password"#.into())
        );
        assert_eq!(
            expand("${EMPTY:?}"),
            Err(r#"required variable "EMPTY" is not set"#.into())
        );
        assert_eq!(
            expand("${MISSING?}"),
            Err(r#"required variable "MISSING" is not set"#.into())
        );
        assert_eq!(expand("${EMPTY?}"), Ok((String::new(), vec![])));
        assert_eq!(
            expand("pa$"),
            Err(r#""pa$" has a "$" that starts no variable (write "$$" for a literal "$")"#.into())
        );
        assert_eq!(
            expand("$5"),
            Err(r#""$5" has a "$" that starts no variable (write "$$" for a literal "$")"#.into())
        );
        assert_eq!(expand("${FULL"), Err(r#"unclosed "${" in "${FULL""#.into()));
        assert_eq!(
            expand("${}"),
            Err(r#""${}" does not start with a variable name"#.into())
        );
        assert_eq!(
            expand("${FULL/x/y}"),
            Err(r#""${FULL/x/y}" is not a valid substitution (use :-, -, :?, ?, :+ or +)"#.into())
        );
    }
}
