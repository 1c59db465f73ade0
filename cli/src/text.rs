//! Text from files reaching the terminal: names and messages with their control characters
//! escaped and their length capped, so that a layer name holding a newline and an ANSI escape
//! cannot forge a line of output or recolour the terminal.

/// Names longer than this many characters are cut (with `...`) where they are echoed.
pub const MAX_ECHOED_NAME: usize = 200;

/// `s` with every control character (C0, DEL, C1: line breaks, escapes, bells) written as a Rust
/// escape (`\n`, `\u{1b}`), and cut after `max_chars` characters with `...`. Printable text,
/// non-ASCII included, is unchanged.
pub fn escape(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_add(3)));
    for (n, c) in s.chars().enumerate() {
        if n == max_chars {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A name from a file, for display: [`escape`] with [`MAX_ECHOED_NAME`].
pub fn name(s: &str) -> String {
    escape(s, MAX_ECHOED_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(
            escape("a\nb\u{1b}[31mc\u{85}", 100),
            "a\\nb\\u{1b}[31mc\\u{85}"
        );
        assert_eq!(escape("caf\u{e9} \u{3bb}", 100), "caf\u{e9} \u{3bb}");
        assert_eq!(escape("abcdef", 3), "abc...");
        assert_eq!(escape("abc", 3), "abc");
    }
}
