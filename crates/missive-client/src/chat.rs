//! `missive chat`: a ratatui terminal chat.
//!
//! [`ChatState`] holds everything the screen shows and is updated by plain
//! method calls ([`ChatState::handle_key`], [`ChatState::push`], ...), so it is
//! tested without a terminal; [`render`] draws it on any ratatui backend and
//! [`run`] wires it to crossterm and the live receive stream.

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use crate::client::{Client, RecvEvent, Verification, rfc3339};
use crate::error::{ClientError, Result};
use crate::limits::MAX_TEXT_BYTES;
use crate::store::HistoryEntry;

/// A key press, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Backspace.
    Backspace,
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Ctrl-C.
    CtrlC,
    /// Page up (scroll back).
    PageUp,
    /// Page down.
    PageDown,
}

/// What the chat loop must do after a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this text.
    Send(String),
    /// Leave the chat.
    Quit,
}

/// One line of the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatLine {
    /// Who wrote it (`None` for a notice from the client itself).
    pub author: Option<String>,
    /// Text.
    pub text: String,
    /// When, RFC 3339.
    pub at: String,
    /// Not yet accepted by the server.
    pub pending: bool,
}

/// Everything the chat screen shows.
#[derive(Clone, Debug)]
pub struct ChatState {
    me: String,
    contact: String,
    verification: Verification,
    lines: Vec<ChatLine>,
    input: String,
    scroll_back: u16,
    status: Option<String>,
}

impl ChatState {
    /// A chat of `me` with `contact`, starting from `history`.
    pub fn new(
        me: &str,
        contact: &str,
        verification: Verification,
        history: &[HistoryEntry],
    ) -> Self {
        let mut s = ChatState {
            me: me.to_owned(),
            contact: contact.to_owned(),
            verification,
            lines: Vec::new(),
            input: String::new(),
            scroll_back: 0,
            status: None,
        };
        for e in history {
            s.push(e);
        }
        if verification == Verification::Changed {
            s.notice(&format!(
                "{contact}'s identity key changed. Sending is blocked until you compare safety numbers (`missive safety-number {contact}`) and accept it (`missive trust {contact}`)."
            ));
        }
        s
    }

    /// Adds a stored message (incoming or outgoing).
    pub fn push(&mut self, e: &HistoryEntry) {
        let author = if e.outgoing {
            self.me.clone()
        } else if e.quarantined {
            format!("an unverified new key of {}", e.contact)
        } else {
            e.contact.clone()
        };
        self.lines.push(ChatLine {
            author: Some(author),
            text: crate::display::sanitize_text(&e.text, "  "),
            at: rfc3339(e.server_ts_ms),
            pending: false,
        });
    }

    /// Adds a notice line from the client.
    pub fn notice(&mut self, text: &str) {
        self.lines.push(ChatLine {
            author: None,
            text: text.to_owned(),
            at: String::new(),
            pending: false,
        });
    }

    /// Applies a receive event; events about other contacts only set the
    /// status line.
    pub fn apply(&mut self, ev: &RecvEvent) {
        match ev {
            RecvEvent::Message(e) if e.contact == self.contact => self.push(e),
            RecvEvent::Message(e) => {
                self.status = Some(format!("new message from {}", e.contact));
            }
            RecvEvent::IdentityChanged { username } if *username == self.contact => {
                self.verification = Verification::Changed;
                self.notice(&format!(
                    "{username}'s identity key changed. Compare safety numbers before trusting it."
                ));
            }
            RecvEvent::IdentityChanged { username } => {
                self.status = Some(format!("identity of {username} changed"));
            }
            RecvEvent::Dropped { sender, reason } => {
                self.notice(&format!(
                    "dropped a message from {}: {}",
                    crate::display::sanitize_line(sender),
                    crate::display::sanitize_line(reason)
                ));
            }
            RecvEvent::RolledBack => self.notice(
                "this store is older than its last use (restored from a backup?); sessions were archived and start afresh",
            ),
            RecvEvent::Warning(w) => self.status = Some(crate::display::sanitize_line(w)),
        }
    }

    /// Handles a key; returns what the loop must do.
    pub fn handle_key(&mut self, key: Key) -> Option<Action> {
        match key {
            Key::Char(c) => {
                if self.input.len() + c.len_utf8() <= MAX_TEXT_BYTES {
                    self.input.push(c);
                }
                None
            }
            Key::Backspace => {
                self.input.pop();
                None
            }
            Key::Enter => {
                let text = self.input.trim().to_owned();
                if text.is_empty() {
                    return None;
                }
                if text == "/quit" {
                    return Some(Action::Quit);
                }
                if self.verification == Verification::Changed {
                    self.status = Some(format!(
                        "not sent: {}'s identity changed; run `missive trust {}` after comparing safety numbers",
                        self.contact, self.contact
                    ));
                    return None;
                }
                self.input.clear();
                self.lines.push(ChatLine {
                    author: Some(self.me.clone()),
                    text: text.clone(),
                    at: String::new(),
                    pending: true,
                });
                self.scroll_back = 0;
                Some(Action::Send(text))
            }
            Key::Esc | Key::CtrlC => Some(Action::Quit),
            Key::PageUp => {
                self.scroll_back = self.scroll_back.saturating_add(5);
                None
            }
            Key::PageDown => {
                self.scroll_back = self.scroll_back.saturating_sub(5);
                None
            }
        }
    }

    /// Records the outcome of the last [`Action::Send`].
    pub fn sent(&mut self, outcome: std::result::Result<u64, String>) {
        let idx = self.lines.iter().rposition(|l| l.pending);
        match (outcome, idx) {
            (Ok(ts), Some(i)) => {
                if let Some(l) = self.lines.get_mut(i) {
                    l.pending = false;
                    l.at = rfc3339(ts);
                }
            }
            (Err(e), Some(i)) => {
                self.lines.remove(i);
                self.status = Some(format!("not sent: {e}"));
            }
            (Err(e), None) => self.status = Some(format!("not sent: {e}")),
            (Ok(_), None) => {}
        }
    }

    /// The conversation lines.
    pub fn lines(&self) -> &[ChatLine] {
        &self.lines
    }

    /// The input line.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The contact's verification state.
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// The status line.
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// The header text.
    pub fn title(&self) -> String {
        format!(" {} → {} [{}] ", self.me, self.contact, self.verification)
    }
}

/// Draws the chat.
pub fn render(state: &ChatState, frame: &mut Frame<'_>) {
    let chunks = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(3),
        ])
        .split(frame.area());
    let title_style = match state.verification {
        Verification::Verified => Style::default().fg(Color::Green),
        Verification::Unverified => Style::default().fg(Color::Yellow),
        Verification::Changed => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    };
    let lines: Vec<Line<'_>> = state
        .lines
        .iter()
        .map(|l| match &l.author {
            Some(a) => Line::from(vec![
                Span::styled(
                    format!("{a}: "),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(l.text.clone()),
                Span::styled(
                    if l.pending {
                        "  (sending…)".to_owned()
                    } else {
                        String::new()
                    },
                    Style::default().fg(Color::DarkGray),
                ),
            ]),
            None => Line::from(Span::styled(
                format!("* {}", l.text),
                Style::default().fg(Color::Magenta),
            )),
        })
        .collect();
    let area = chunks.first().copied().unwrap_or_default();
    let visible = area.height.saturating_sub(2);
    let total = u16::try_from(lines.len()).unwrap_or(u16::MAX);
    let scroll = total
        .saturating_sub(visible)
        .saturating_sub(state.scroll_back);
    let history = Paragraph::new(lines)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(Span::styled(state.title(), title_style)),
        )
        .wrap(Wrap { trim: false })
        .scroll((scroll, 0));
    frame.render_widget(history, area);
    let status = Paragraph::new(
        state
            .status
            .clone()
            .unwrap_or_else(|| "Enter: send · Esc: quit · PgUp/PgDn: scroll".to_owned()),
    )
    .style(Style::default().fg(Color::DarkGray));
    frame.render_widget(status, chunks.get(1).copied().unwrap_or_default());
    let input = Paragraph::new(state.input.as_str())
        .block(Block::default().borders(Borders::ALL).title(" message "));
    frame.render_widget(input, chunks.get(2).copied().unwrap_or_default());
}

fn map_key(ev: &crossterm::event::KeyEvent) -> Option<Key> {
    use crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    match ev.code {
        KeyCode::Char('c') if ev.modifiers.contains(KeyModifiers::CONTROL) => Some(Key::CtrlC),
        KeyCode::Char(c) => Some(Key::Char(c)),
        KeyCode::Backspace => Some(Key::Backspace),
        KeyCode::Enter => Some(Key::Enter),
        KeyCode::Esc => Some(Key::Esc),
        KeyCode::PageUp => Some(Key::PageUp),
        KeyCode::PageDown => Some(Key::PageDown),
        _ => None,
    }
}

fn term_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Terminal(e.to_string())
}

/// Runs the interactive chat with `contact` until the user quits.
pub async fn run(client: &mut Client, contact: &str) -> Result<()> {
    let contact = crate::client::normalize_username(contact)?;
    let verification = client
        .verification(&contact)?
        .unwrap_or(Verification::Unverified);
    // Messages already stored but not shown belong to this conversation now.
    let _ = client.take_unshown(Some(&contact))?;
    let history = client.history(&contact)?;
    let mut state = ChatState::new(client.username(), &contact, verification, &history);
    let mut stream = client.open_stream().await?;

    let (key_tx, mut key_rx) = tokio::sync::mpsc::unbounded_channel::<Key>();
    std::thread::spawn(move || {
        loop {
            match crossterm::event::read() {
                Ok(crossterm::event::Event::Key(k)) => {
                    if let Some(key) = map_key(&k)
                        && key_tx.send(key).is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });

    let mut terminal = ratatui::try_init().map_err(term_err)?;
    let result = async {
        loop {
            terminal
                .draw(|f| render(&state, f))
                .map_err(term_err)?;
            tokio::select! {
                key = key_rx.recv() => {
                    let Some(key) = key else { return Ok(()) };
                    match state.handle_key(key) {
                        Some(Action::Quit) => return Ok(()),
                        Some(Action::Send(text)) => {
                            terminal.draw(|f| render(&state, f)).map_err(term_err)?;
                            let outcome = client
                                .send(&contact, &text)
                                .await
                                .map(|s| s.server_timestamp_ms)
                                .map_err(|e| e.to_string());
                            state.sent(outcome);
                        }
                        None => {}
                    }
                }
                msg = stream.message() => {
                    match msg {
                        Ok(Some(resp)) => {
                            if let Some(missive_proto::v1::receive_response::Item::Envelope(env)) = resp.item {
                                for ev in client.process_envelope(env).await? {
                                    state.apply(&ev);
                                }
                                for e in client.take_unshown(Some(&contact))? {
                                    state.apply(&RecvEvent::Message(e));
                                }
                            }
                        }
                        Ok(None) | Err(_) => {
                            state.notice("connection to the server lost; reconnecting…");
                            terminal.draw(|f| render(&state, f)).map_err(term_err)?;
                            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                            stream = client.open_stream().await?;
                        }
                    }
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result
}
