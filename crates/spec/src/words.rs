//! Splits a command written as one string (`command: ./app --name "my app"`) into argv the way a
//! POSIX shell would split words, without running a shell: quotes group, backslashes escape, and
//! nothing else (`$`, `|`, `>`) is special. Compose does the same for its string commands.

/// The words of `text`, or what is wrong with its quoting.
pub(crate) fn split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let quoted = single_quoted(&mut chars)
                    .ok_or_else(|| format!("unclosed single quote in {text:?}"))?;
                word.get_or_insert_with(String::new).push_str(&quoted);
            }
            '"' => {
                let quoted = double_quoted(&mut chars)
                    .ok_or_else(|| format!("unclosed double quote in {text:?}"))?;
                word.get_or_insert_with(String::new).push_str(&quoted);
            }
            '\\' => {
                let escaped = chars
                    .next()
                    .ok_or_else(|| format!("{text:?} ends with a lone backslash"))?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Everything up to the closing `'`, verbatim; `None` if it never closes.
fn single_quoted(chars: &mut std::str::Chars<'_>) -> Option<String> {
    let mut out = String::new();
    for c in chars.by_ref() {
        if c == '\'' {
            return Some(out);
        }
        out.push(c);
    }
    None
}

/// Up to the closing `"`; a backslash escapes only `"`, `\`, `$` and `` ` ``, as in sh.
fn double_quoted(chars: &mut std::str::Chars<'_>) -> Option<String> {
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                e @ ('"' | '\\' | '$' | '`') => out.push(e),
                e => {
                    out.push('\\');
                    out.push(e);
                }
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &[&str]) {
        assert_eq!(
            split(input),
            Ok(expect.iter().map(|s| s.to_string()).collect()),
            "{input:?}"
        );
    }

    #[test]
    fn splits_like_a_shell() {
        check("./app --port 8080", &["./app", "--port", "8080"]);
        check("  spaced   out  ", &["spaced", "out"]);
        check(
            r#"echo "hello world" 'it''s'"#,
            &["echo", "hello world", "its"],
        );
        check(
            r#"sh -c "echo \"hi\" \$HOME \n""#,
            &["sh", "-c", r#"echo "hi" $HOME \n"#],
        );
        check(r"a\ b c", &["a b", "c"]);
        check(r#"--name="" x"#, &["--name=", "x"]);
        check("", &[]);
    }

    #[test]
    fn reports_bad_quoting() {
        assert_eq!(
            split("echo 'oops"),
            Err(r#"unclosed single quote in "echo 'oops""#.to_string())
        );
        assert_eq!(
            split("echo \"oops"),
            Err(r#"unclosed double quote in "echo \"oops""#.to_string())
        );
        assert_eq!(
            split("trailing\\"),
            Err(r#""trailing\\" ends with a lone backslash"#.to_string())
        );
    }
}
