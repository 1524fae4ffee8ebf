//! `.env` files as docker compose reads them: `KEY=value` lines, `export` prefixes, `#` comments,
//! single quotes (literal), double quotes (escapes and interpolation) and unquoted values (inline
//! ` #` comments, interpolation). Values may refer to the environment and to earlier lines.

use std::collections::BTreeMap;

use crate::error::Problem;
use crate::interpolate::interpolate;
use crate::validate::is_identifier;

/// The variables in `text`; `source` names the file in problems, which carry its line numbers.
pub(crate) fn parse(
    source: &str,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Vec<Problem>> {
    let mut vars = BTreeMap::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match assignment(line, env, &vars) {
            Ok((key, value)) => {
                vars.insert(key, value);
            }
            Err(message) => problems.push(Problem::new(format!("{source}:{}", i + 1), message)),
        }
    }
    if problems.is_empty() {
        Ok(vars)
    } else {
        Err(problems)
    }
}

fn assignment(
    line: &str,
    env: &BTreeMap<String, String>,
    earlier: &BTreeMap<String, String>,
) -> Result<(String, String), String> {
    let line = line.strip_prefix("export ").map_or(line, str::trim_start);
    let Some((key, raw)) = line.split_once('=') else {
        return Err(format!("expected KEY=value, got {line:?}"));
    };
    let key = key.trim();
    if !is_identifier(key) {
        return Err(format!("{key:?} is not a valid variable name"));
    }
    // The process environment wins over the file, as it does for the Compose file itself.
    let lookup = |name: &str| env.get(name).or_else(|| earlier.get(name)).cloned();
    let value = value(raw.trim(), &lookup)?;
    Ok((key.to_string(), value))
}

fn value(raw: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if let Some(body) = raw.strip_prefix('\'') {
        let (inner, _) = body.split_once('\'').ok_or("unclosed single quote")?;
        return Ok(inner.to_string());
    }
    if let Some(body) = raw.strip_prefix('"') {
        let inner = double_quoted(body).ok_or("unclosed double quote")?;
        return interpolate(&inner, lookup, &mut Vec::new());
    }
    // An unquoted value ends at a ` #` comment.
    let value = raw.find(" #").map_or(raw, |at| &raw[..at]).trim_end();
    interpolate(value, lookup, &mut Vec::new())
}

/// The text up to the closing `"`, with `\n`, `\t`, `\"` and `\\` unescaped. `\$` is kept as `$$`
/// so interpolation turns it into a literal `$`.
fn double_quoted(body: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                '$' => out.push_str("$$"),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: &[(&str, &str)]) {
        let env = BTreeMap::from([("HOME".to_string(), "/home/op".to_string())]);
        let want = expect
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(parse(".env", text, &env), Ok(want));
    }

    #[test]
    fn reads_the_forms_compose_reads() {
        check(
            "# comment\n\nTAG=1.2\nexport MODE = prod \nQUOTED=\"a b\\n\" \nLITERAL='${TAG} $x'\n\
             INLINE=v1 # note\nREF=${TAG}-${HOME}\nEMPTY=\n",
            &[
                ("EMPTY", ""),
                ("INLINE", "v1"),
                ("LITERAL", "${TAG} $x"),
                ("MODE", "prod"),
                ("QUOTED", "a b\n"),
                ("REF", "1.2-/home/op"),
                ("TAG", "1.2"),
            ],
        );
    }

    #[test]
    fn reports_bad_lines_with_their_numbers() {
        let problems = parse(
            ".env",
            "OK=1\nnot an assignment\n1BAD=x\nQ='open\n",
            &BTreeMap::new(),
        );
        let lines: Vec<String> = problems
            .unwrap_err()
            .iter()
            .map(Problem::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                r#".env:2: expected KEY=value, got "not an assignment""#,
                r#".env:3: "1BAD" is not a valid variable name"#,
                ".env:4: unclosed single quote",
            ]
        );
    }
}
