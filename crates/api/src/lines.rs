//! Log text cut into lines as it streams.

/// Prefixes every complete line in `partial + chunk` with `prefix`, and keeps an unfinished last
/// line in `partial` for the next chunk: a stream cut anywhere comes out whole lines.
pub fn prefix_lines(prefix: &str, partial: &mut Vec<u8>, chunk: &[u8]) -> Vec<u8> {
    partial.extend_from_slice(chunk);
    let Some(last_newline) = partial.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let rest = partial.split_off(last_newline + 1);
    let complete = std::mem::replace(partial, rest);
    let mut out = Vec::with_capacity(complete.len() + prefix.len() * 4);
    for line in complete.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::prefix_lines;

    #[test]
    fn prefixes_whole_lines_and_keeps_the_rest() {
        let mut partial = Vec::new();
        assert_eq!(prefix_lines("t | ", &mut partial, b"a\nb"), b"t | a\n");
        assert_eq!(partial, b"b");
        assert_eq!(
            prefix_lines("t | ", &mut partial, b"c\nd\n"),
            b"t | bc\nt | d\n"
        );
        assert!(partial.is_empty());
    }
}
