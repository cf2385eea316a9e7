//! Text that comes from the guest (agent error messages, process names,
//! the VMM's log) before it reaches a terminal, a log file or containerd:
//! control characters escaped, so it cannot move the cursor, fake log lines
//! or rewrite what an operator sees, and length capped.

use std::fmt::Write;

/// Longest guest-supplied text we print or log, in characters.
pub const MAX_TEXT: usize = 1024;

/// `s` with control characters (C0, DEL, C1) and bidirectional overrides
/// escaped as `\n`, `\t`, `\x1b`, `\u{202e}`..., cut to `max` characters.
pub fn escape(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 32));
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            let _ = write!(out, "...({} bytes)", s.len());
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_bidi(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// [`escape`] with the default cap.
pub fn text(s: &str) -> String {
    escape(s, MAX_TEXT)
}

/// A guest value's `Debug` form (already escaped by `Debug`), capped.
pub fn debug(v: &impl std::fmt::Debug) -> String {
    text(&format!("{v:?}"))
}

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(text("plain ünïcode ok"), "plain ünïcode ok");
        assert_eq!(
            text("a\nb\r\x1b[2Jc\x07\u{9b}d\u{202e}e\\"),
            "a\\nb\\r\\x1b[2Jc\\x07\\u{9b}d\\u{202e}e\\\\"
        );
        assert!(!text("x\ny\x1b").chars().any(|c| c.is_control()));
    }

    #[test]
    fn length_is_capped() {
        let long = "é".repeat(10_000);
        let out = escape(&long, 100);
        assert_eq!(out, format!("{}...(20000 bytes)", "é".repeat(100)));
        assert!(debug(&vec![0u8; 100_000]).chars().count() < MAX_TEXT + 32);
    }
}
