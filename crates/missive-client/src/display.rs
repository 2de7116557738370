//! Everything peer or server text goes through before it reaches a terminal.
//!
//! A peer chooses its message text and the server chooses its error
//! messages; either could carry ANSI/OSC sequences that clear the screen,
//! rewrite earlier lines (hiding an identity-change warning), set the
//! window title or write the clipboard, or bidirectional-override
//! characters that make a line read differently from its bytes. Every C0
//! and C1 control character, DEL and the Unicode bidi controls are shown as
//! visible `\u{..}` escapes instead; newlines in message text become an
//! indented continuation so no message can fake the start of another line.

/// Whether `c` must not reach a terminal raw.
fn is_hostile(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}' | '\u{2029}')
}

fn push_escaped(out: &mut String, c: char) {
    use std::fmt::Write as _;
    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
}

/// One line of untrusted text: every hostile character escaped, newlines too.
pub fn sanitize_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hostile(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Message text for a line-oriented display: hostile characters escaped,
/// each newline followed by `indent` so continuation lines are visibly part
/// of the message above (a `\r\n` counts as one newline).
pub fn sanitize_text(s: &str, indent: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.push('\n');
                out.push_str(indent);
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            c if is_hostile(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// A JSON text with the hostile characters JSON leaves raw (DEL, C1, bidi
/// controls) written as `\uXXXX` escapes: still the same JSON value.
pub fn json_inert(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_hostile(c) {
            use std::fmt::Write as _;
            // All hostile characters are in the Basic Multilingual Plane.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A byte count as people read it: 0 B, 1 B, 64.0 KiB, 50.0 MiB.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_and_bidi() {
        let s = sanitize_line("a\x1b[2Jb\x07c\u{9b}31m\u{202e}d\re\nf\u{7f}");
        assert_eq!(
            s,
            "a\\u{1b}[2Jb\\u{7}c\\u{9b}31m\\u{202e}d\\u{d}e\\u{a}f\\u{7f}"
        );
        assert!(!s.chars().any(is_hostile));
    }

    #[test]
    fn continuation_lines_are_indented() {
        let s = sanitize_text("hi\r\n[2026] alice: fake\nthird", "    ");
        assert_eq!(s, "hi\n    [2026] alice: fake\n    third");
        assert!(s.lines().skip(1).all(|l| l.starts_with("    ")));
    }

    #[test]
    fn json_stays_the_same_value_without_raw_controls() {
        let v = serde_json::json!({"text": "a\u{9b}b\u{202e}c\u{7f}\u{1b}"});
        let out = json_inert(&v.to_string());
        assert!(!out.chars().any(is_hostile), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(sanitize_line("héllo wörld 👋"), "héllo wörld 👋");
    }
}
