//! Drawing the chat on any ratatui backend.

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

use super::rows::{WRAP_INDENT, message_rows, window, wrap_line};
use super::state::{
    ChatState, Connection, Conversation, Focus, HELP_CONVERSATION, HELP_LIST, Item,
};
use crate::client::{Verification, rfc3339};
use crate::conversation::{ReceiptState, format_timer};

/// The list pane is shown beside the conversation from this width on.
const LIST_BESIDE_FROM: u16 = 50;

fn clock(ms: u64) -> String {
    if ms == 0 {
        return "--:--".to_owned();
    }
    rfc3339(ms).get(11..16).unwrap_or("--:--").to_owned()
}

/// One rendered row and its style.
pub(crate) struct Row {
    pub(crate) text: String,
    pub(crate) style: Style,
}

/// Every row of `c` at `width` columns, oldest first.
pub(crate) fn conversation_rows(c: &Conversation, width: usize) -> Vec<Row> {
    let mut out = Vec::new();
    for item in &c.items {
        match item {
            Item::Message(m) => {
                let style = if m.unsent {
                    Style::default().fg(Color::DarkGray)
                } else if m.outgoing {
                    Style::default().fg(Color::Cyan)
                } else {
                    Style::default()
                };
                let dim = Style::default().fg(Color::DarkGray);
                if let Some(q) = &m.reply_to {
                    for text in wrap_line(&format!("  ┌ reply to {q}"), width) {
                        out.push(Row { text, style: dim });
                    }
                }
                let timer = if m.expire_after_secs > 0 {
                    format!(" ⏱{}", format_timer(m.expire_after_secs))
                } else {
                    String::new()
                };
                let header = if m.pending {
                    format!("[sending] {}: ", m.author)
                } else {
                    format!("[{}{timer}] {}: ", clock(m.at_ms), m.author)
                };
                let mut text = if m.unsent {
                    "(deleted)".to_owned()
                } else {
                    m.text.clone()
                };
                if m.edited && !m.unsent {
                    text.push_str(" (edited)");
                }
                if let Some(r) = m.receipt.filter(|_| m.outgoing && !m.pending) {
                    text.push_str(match r {
                        ReceiptState::Sent => "  ✓",
                        ReceiptState::Delivered => "  ✓✓ delivered",
                        ReceiptState::Read => "  ✓✓ read",
                    });
                }
                for text in message_rows(&header, &text, width) {
                    out.push(Row { text, style });
                }
                if let Some(f) = m.file.as_ref().filter(|_| !m.unsent) {
                    let file_style = if f.refused.is_some() {
                        Style::default().fg(Color::Red)
                    } else {
                        Style::default().fg(Color::Yellow)
                    };
                    for text in wrap_line(&format!("{WRAP_INDENT}{}", f.line(m.outgoing)), width) {
                        out.push(Row {
                            text,
                            style: file_style,
                        });
                    }
                }
                if !m.reactions.is_empty() {
                    let line = m
                        .reactions
                        .iter()
                        .map(|(who, e)| format!("{e} {who}"))
                        .collect::<Vec<_>>()
                        .join(" · ");
                    for text in wrap_line(&format!("{WRAP_INDENT}{line}"), width) {
                        out.push(Row { text, style: dim });
                    }
                }
            }
            Item::Event(ev) => {
                let style = Style::default().fg(Color::Magenta);
                for text in wrap_line(&format!("* {}", ev.text(&c.id.label())), width) {
                    out.push(Row { text, style });
                }
            }
        }
    }
    out
}

fn verification_style(v: Verification) -> Style {
    match v {
        Verification::Verified => Style::default().fg(Color::Green),
        Verification::Unverified => Style::default().fg(Color::Yellow),
        Verification::Changed => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn top_bar(state: &ChatState) -> Line<'static> {
    let (text, style) = match &state.connection {
        Connection::Connecting => ("connecting…".to_owned(), Style::default().fg(Color::Yellow)),
        Connection::Connected => ("● connected".to_owned(), Style::default().fg(Color::Green)),
        Connection::Offline { reason, retry_in_s } => (
            format!("offline, retrying in {retry_in_s} s: {reason}"),
            Style::default().fg(Color::Red),
        ),
    };
    Line::from(vec![
        Span::styled(
            format!(" missive · {} · ", state.me),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(text, style),
    ])
}

fn draw_list(state: &ChatState, frame: &mut Frame<'_>, area: Rect) {
    let inner_w = usize::from(area.width.saturating_sub(2));
    let mut lines = Vec::new();
    for (i, c) in state.conversations.iter().enumerate() {
        let mark = match c.verification {
            Verification::Verified => "✓",
            Verification::Unverified => " ",
            Verification::Changed => "!",
        };
        let unread = if c.unread > 0 {
            format!(" ({})", c.unread)
        } else {
            String::new()
        };
        let when = if c.last_activity_ms > 0 {
            clock(c.last_activity_ms)
        } else {
            String::new()
        };
        let name: String =
            c.id.label()
                .chars()
                .take(inner_w.saturating_sub(8 + unread.len()))
                .collect();
        let left = format!("{mark}{name}{unread}");
        let pad = inner_w.saturating_sub(left.chars().count() + when.len());
        let mut style = if c.unread > 0 {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        if i == state.selected {
            style = style.add_modifier(Modifier::REVERSED);
        }
        lines.push(Line::styled(
            format!("{left}{}{when}", " ".repeat(pad)),
            style,
        ));
    }
    if lines.is_empty() {
        lines.push(Line::raw("no conversations yet"));
        lines.push(Line::raw("`missive chat NAME`"));
    }
    let border = if state.focus == Focus::List {
        Style::default().fg(Color::Cyan)
    } else {
        Style::default()
    };
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(border)
                .title(" conversations "),
        ),
        area,
    );
}

fn draw_conversation(state: &mut ChatState, frame: &mut Frame<'_>, area: Rect) {
    let inner_w = usize::from(area.width.saturating_sub(2)).max(1);
    let inner_h = usize::from(area.height.saturating_sub(2));
    state.page_rows = inner_h.max(1);
    let Some(i) = state.open else {
        let p = Paragraph::new(vec![Line::raw("Select a conversation with ↑/↓ and Enter.")])
            .block(Block::default().borders(Borders::ALL));
        frame.render_widget(p, area);
        return;
    };
    let Some(c) = state.conversations.get_mut(i) else {
        return;
    };
    let rows = conversation_rows(c, inner_w);
    let (range, back) = window(rows.len(), inner_h, c.from_bottom);
    c.from_bottom = back;
    let more = if back > 0 {
        format!(" ↓ {back} more rows (PgDn) ")
    } else {
        String::new()
    };
    let lines: Vec<Line<'_>> = rows
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .map(|r| Line::styled(r.text, r.style))
        .collect();
    let typing = if c.typing_until_ms > 0 {
        format!("{} is typing… ", c.id.label())
    } else {
        String::new()
    };
    let title = Line::from(vec![
        Span::raw(format!(" {} ", c.id.label())),
        Span::styled(
            format!("[{}]", c.verification),
            verification_style(c.verification),
        ),
        Span::raw(" "),
        Span::styled(typing, Style::default().fg(Color::Green)),
        Span::styled(more, Style::default().fg(Color::Yellow)),
    ]);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// Draws the chat (and records the page height for PgUp/PgDn).
pub fn render(state: &mut ChatState, frame: &mut Frame<'_>) {
    let input_rows = u16::try_from(state.input.lines().len().clamp(1, 4)).unwrap_or(1) + 2;
    let [top, middle, status, input] = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(input_rows),
        ])
        .areas(frame.area());
    frame.render_widget(Paragraph::new(top_bar(state)), top);
    let wide = middle.width >= LIST_BESIDE_FROM;
    if wide {
        let list_w = (middle.width / 4).clamp(16, 28);
        let [list, conv] = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Length(list_w), Constraint::Min(10)])
            .areas(middle);
        draw_list(state, frame, list);
        draw_conversation(state, frame, conv);
    } else if state.focus == Focus::List || state.open.is_none() {
        draw_list(state, frame, middle);
    } else {
        draw_conversation(state, frame, middle);
    }
    let help = match state.focus {
        Focus::List => HELP_LIST,
        Focus::Conversation => HELP_CONVERSATION,
    };
    let status_text = state.status.clone().unwrap_or_else(|| help.to_owned());
    frame.render_widget(
        Paragraph::new(status_text).style(Style::default().fg(Color::DarkGray)),
        status,
    );
    let title = match state.current() {
        Some(c) if state.focus == Focus::Conversation => format!(" to {} ", c.id.label()),
        _ => " message ".to_owned(),
    };
    state
        .input
        .set_block(Block::default().borders(Borders::ALL).title(title));
    if state.focus == Focus::Conversation {
        state
            .input
            .set_cursor_style(Style::default().add_modifier(Modifier::REVERSED));
    } else {
        state.input.set_cursor_style(Style::default());
    }
    // tui-textarea draws its own cursor (and scrolls sideways to keep it in
    // view); the terminal's cursor stays hidden so there is only one.
    frame.render_widget(&state.input, input);
}
