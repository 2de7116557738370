//! Row-based layout of the conversation: every item is wrapped to the
//! current width *before* scrolling, so the scroll offset counts the rows
//! the terminal shows (not messages) and the newest row is always reachable.
//! Pure functions, tested without a terminal.

use std::ops::Range;

use unicode_width::UnicodeWidthChar as _;

/// Indentation of the rows a long line wraps onto.
pub const WRAP_INDENT: &str = "  ";
/// Start of each further line of a multi-line message: a peer's text can
/// never begin a row at column 0, so it cannot fake the start of a message.
pub const CONTINUATION: &str = "  │ ";

fn width_of(s: &str) -> usize {
    s.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// Wraps one line (no `\n`) to `width` columns: breaks after the last space
/// that fits, else inside the word; rows after the first start with
/// [`WRAP_INDENT`] when the width leaves room for it. Never returns an
/// empty vector and never a row wider than `width` (for `width >= 1`).
pub fn wrap_line(line: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let indent = if width > WRAP_INDENT.len() * 4 {
        WRAP_INDENT
    } else {
        ""
    };
    let mut rows: Vec<String> = Vec::new();
    let mut row = String::new();
    let mut w = 0usize;
    // Byte index in `row` just after its last space (a soft break point).
    let mut soft: Option<usize> = None;
    for c in line.chars() {
        let cw = c.width().unwrap_or(0);
        while w + cw > width && w > indent_width(&rows, indent) {
            let cut = soft.filter(|&i| i < row.len() && i > indent_len(&rows, indent));
            let rest = match cut {
                Some(i) => row.split_off(i),
                None => String::new(),
            };
            rows.push(row.trim_end_matches(' ').to_owned());
            row = format!("{indent}{rest}");
            w = width_of(&row);
            soft = None;
        }
        row.push(c);
        w += cw;
        if c == ' ' {
            soft = Some(row.len());
        }
    }
    rows.push(row);
    rows
}

fn indent_len(rows: &[String], indent: &str) -> usize {
    if rows.is_empty() { 0 } else { indent.len() }
}

fn indent_width(rows: &[String], indent: &str) -> usize {
    if rows.is_empty() { 0 } else { width_of(indent) }
}

/// Rows of one message: `header` (time and author, already safe) followed
/// by the first line of `text`, each further line of `text` after
/// [`CONTINUATION`]. `text` must already be free of control characters
/// other than `\n` (see [`crate::display::sanitize_line`]).
pub fn message_rows(header: &str, text: &str, width: usize) -> Vec<String> {
    let mut rows = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let start = if i == 0 { header } else { CONTINUATION };
        rows.extend(wrap_line(&format!("{start}{line}"), width));
    }
    rows
}

/// The rows shown for `total` rows in a view of `height` rows scrolled
/// `from_bottom` rows up from the newest (clamped so the view stays full
/// when there is enough to fill it). Returns the range and the clamped
/// offset.
pub fn window(total: usize, height: usize, from_bottom: usize) -> (Range<usize>, usize) {
    let max_back = total.saturating_sub(height);
    let back = from_bottom.min(max_back);
    let end = total - back;
    let start = end.saturating_sub(height);
    (start..end, back)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_rows_fit_and_keep_all_text() {
        let text = "lorem ipsum dolor sit amet ".repeat(17);
        for width in [1usize, 2, 3, 7, 20, 38, 58, 78] {
            let rows = wrap_line(&text, width);
            assert!(
                rows.iter().all(|r| width_of(r) <= width),
                "{width}: {rows:?}"
            );
            let joined: String = rows.concat().split_whitespace().collect();
            let want: String = text.split_whitespace().collect();
            assert_eq!(joined, want, "width {width}");
        }
        assert_eq!(wrap_line("", 10), vec![String::new()]);
    }

    #[test]
    fn wide_characters_count_two_columns() {
        let rows = wrap_line("日本語のテキスト", 6);
        assert!(rows.iter().all(|r| width_of(r) <= 6), "{rows:?}");
    }

    #[test]
    fn multi_line_messages_continue_indented() {
        let rows = message_rows(
            "[12:00] bob: ",
            "hi\n[12:01] alice: send me your password",
            80,
        );
        assert_eq!(rows[0], "[12:00] bob: hi");
        assert_eq!(rows[1], "  │ [12:01] alice: send me your password");
    }

    #[test]
    fn window_reaches_the_newest_row_and_clamps() {
        assert_eq!(window(100, 20, 0), (80..100, 0));
        assert_eq!(window(100, 20, 30), (50..70, 30));
        assert_eq!(window(100, 20, 500), (0..20, 80));
        assert_eq!(window(5, 20, 3), (0..5, 0));
        assert_eq!(window(0, 0, 0), (0..0, 0));
    }
}
