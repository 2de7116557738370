//! Everything the chat screen shows, updated by plain method calls so it is
//! tested without a terminal: [`ChatState::handle_key`],
//! [`ChatState::handle_paste`], [`ChatState::apply`], ...

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tui_textarea::TextArea;

use crate::client::{RecvEvent, Verification};
use crate::store::HistoryEntry;

/// Which conversation. Groups will be a second variant (`missive chat
/// --group NAME`); everything keyed by conversation already goes through
/// this type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConversationId {
    /// A one-to-one conversation with this username.
    Direct(String),
}

impl ConversationId {
    /// The name shown in the list and the title.
    pub fn label(&self) -> &str {
        match self {
            ConversationId::Direct(u) => u,
        }
    }
}

/// Delivery state of one of our messages (filled in by receipts, issue 16
/// "Conversation features"; nothing produces it yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Reached at least one of the recipient's devices.
    Delivered,
    /// Read by the recipient.
    Read,
}

/// The server connection as shown in the top bar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Opening the receive stream.
    Connecting,
    /// Receiving live.
    Connected,
    /// Lost; the next attempt is in `retry_in_s` seconds.
    Offline {
        /// What happened, one sentence.
        reason: String,
        /// Seconds until the next attempt.
        retry_in_s: u64,
    },
}

/// Something that happened in a conversation, shown inline between messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InlineEvent {
    /// A notice from the client (dropped message, rollback, ...).
    Notice(String),
    /// The contact's verification state changed (here or in another shell).
    Verification {
        /// Before.
        from: Verification,
        /// Now.
        to: Verification,
    },
    /// The contact's identity key changed.
    IdentityChanged,
    /// The contact has a new device (hook: produced once device lists are
    /// tracked per contact).
    NewDevice,
    /// The connection was lost or came back.
    Connection(String),
    /// Delivery or read state of one of our messages (hook for receipts).
    Delivery {
        /// Our message's id.
        message_id: Vec<u8>,
        /// Its new state.
        state: DeliveryState,
    },
    /// A group's membership changed (hook for groups).
    Membership {
        /// Who.
        member: String,
        /// Joined (`true`) or left.
        joined: bool,
    },
}

impl InlineEvent {
    /// The text shown for this event in the conversation of `label`.
    pub fn text(&self, label: &str) -> String {
        match self {
            InlineEvent::Notice(t) | InlineEvent::Connection(t) => t.clone(),
            InlineEvent::Verification { from, to } => {
                format!("{label} is now {to} (was {from})")
            }
            InlineEvent::IdentityChanged => format!(
                "{label}'s identity key changed. Sending is blocked until you compare safety numbers (`missive safety-number {label}`) and accept it (`missive trust {label} SAFETY_NUMBER`)."
            ),
            InlineEvent::NewDevice => format!("{label} added a new device"),
            InlineEvent::Delivery { state, .. } => match state {
                DeliveryState::Delivered => "delivered".to_owned(),
                DeliveryState::Read => "read".to_owned(),
            },
            InlineEvent::Membership { member, joined } => {
                if *joined {
                    format!("{member} joined")
                } else {
                    format!("{member} left")
                }
            }
        }
    }
}

/// One message line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageItem {
    /// Who wrote it, as shown.
    pub author: String,
    /// Sent by us.
    pub outgoing: bool,
    /// Text, hostile characters escaped; `\n` separates lines.
    pub text: String,
    /// Server time, ms (0 while sending).
    pub at_ms: u64,
    /// Not yet accepted by the server.
    pub pending: bool,
}

/// One item of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A message.
    Message(MessageItem),
    /// An inline event.
    Event(InlineEvent),
}

/// One conversation.
#[derive(Clone, Debug)]
pub struct Conversation {
    /// Which.
    pub id: ConversationId,
    /// The contact's verification state.
    pub verification: Verification,
    /// Messages and events, oldest first.
    pub items: Vec<Item>,
    /// Messages that arrived while it was not on screen.
    pub unread: usize,
    /// Time of the last message, ms (0: none).
    pub last_activity_ms: u64,
    /// Scroll offset in rendered rows up from the newest.
    pub from_bottom: usize,
}

impl Conversation {
    /// An empty conversation.
    pub fn new(id: ConversationId, verification: Verification) -> Self {
        Conversation {
            id,
            verification,
            items: Vec::new(),
            unread: 0,
            last_activity_ms: 0,
            from_bottom: 0,
        }
    }
}

/// Where the keys go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list: Up/Down select, Enter opens.
    List,
    /// The open conversation's input line.
    Conversation,
}

/// What the chat loop must do after an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this text to this conversation.
    Send(ConversationId, String),
    /// Leave the chat.
    Quit,
}

/// Everything the chat screen shows.
pub struct ChatState {
    pub(crate) me: String,
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) selected: usize,
    pub(crate) open: Option<usize>,
    pub(crate) focus: Focus,
    pub(crate) input: TextArea<'static>,
    history: Vec<String>,
    history_pos: Option<usize>,
    pub(crate) connection: Connection,
    pub(crate) status: Option<String>,
    bell: bool,
    ring: bool,
    /// Rows of the conversation view at the last draw (for paging).
    pub(crate) page_rows: usize,
}

/// Heading of the help line.
pub const HELP_CONVERSATION: &str =
    "Enter send · Alt-Enter newline · Tab next · Esc list · PgUp/PgDn · Ctrl-C quit";
/// Help in the list.
pub const HELP_LIST: &str = "↑/↓ select · Enter open · q quit";

fn new_input() -> TextArea<'static> {
    let mut t = TextArea::default();
    t.set_cursor_line_style(ratatui::style::Style::default());
    t.set_max_histories(200);
    t
}

impl ChatState {
    /// The chat of `me`, with no conversation yet.
    pub fn new(me: &str, bell: bool) -> Self {
        ChatState {
            me: me.to_owned(),
            conversations: Vec::new(),
            selected: 0,
            open: None,
            focus: Focus::List,
            input: new_input(),
            history: Vec::new(),
            history_pos: None,
            connection: Connection::Connecting,
            status: None,
            bell,
            ring: false,
            page_rows: 10,
        }
    }

    fn index_of(&self, id: &ConversationId) -> Option<usize> {
        self.conversations.iter().position(|c| &c.id == id)
    }

    /// The conversation `id`, created (unverified, empty) if missing.
    pub fn conversation_mut(&mut self, id: &ConversationId) -> &mut Conversation {
        let i = match self.index_of(id) {
            Some(i) => i,
            None => {
                self.conversations
                    .push(Conversation::new(id.clone(), Verification::Unverified));
                self.conversations.len() - 1
            }
        };
        &mut self.conversations[i]
    }

    /// Adds a conversation with its stored history (already shown
    /// elsewhere: not unread).
    pub fn add_conversation(
        &mut self,
        id: ConversationId,
        verification: Verification,
        history: &[HistoryEntry],
    ) {
        let me = self.me.clone();
        let c = self.conversation_mut(&id);
        c.verification = verification;
        for e in history {
            push_entry(c, &me, e);
        }
        if verification == Verification::Changed {
            c.items.push(Item::Event(InlineEvent::IdentityChanged));
        }
        self.sort();
    }

    /// Keeps the list ordered by last activity, newest first, without
    /// moving the selection or the open conversation.
    fn sort(&mut self) {
        let sel = self.conversations.get(self.selected).map(|c| c.id.clone());
        let open = self
            .open
            .and_then(|i| self.conversations.get(i))
            .map(|c| c.id.clone());
        self.conversations
            .sort_by_key(|c| std::cmp::Reverse(c.last_activity_ms));
        if let Some(s) = sel.and_then(|id| self.index_of(&id)) {
            self.selected = s;
        }
        self.open = open.and_then(|id| self.index_of(&id));
    }

    /// Opens `id` (created if new) and moves the keys to its input.
    pub fn open(&mut self, id: &ConversationId) {
        self.conversation_mut(id);
        if let Some(i) = self.index_of(id) {
            self.open = Some(i);
            self.selected = i;
            self.focus = Focus::Conversation;
            if let Some(c) = self.conversations.get_mut(i) {
                c.unread = 0;
                c.from_bottom = 0;
            }
        }
    }

    fn open_index(&mut self, i: usize) {
        if let Some(id) = self.conversations.get(i).map(|c| c.id.clone()) {
            self.open(&id);
        }
    }

    /// The open conversation.
    pub fn current(&self) -> Option<&Conversation> {
        self.open.and_then(|i| self.conversations.get(i))
    }

    fn current_mut(&mut self) -> Option<&mut Conversation> {
        self.open.and_then(|i| self.conversations.get_mut(i))
    }

    /// All conversations, newest activity first.
    pub fn conversations(&self) -> &[Conversation] {
        &self.conversations
    }

    /// The conversation `id`.
    pub fn conversation(&self, id: &ConversationId) -> Option<&Conversation> {
        self.index_of(id).and_then(|i| self.conversations.get(i))
    }

    /// Whether `id` is on screen with the keys in it.
    fn is_watched(&self, id: &ConversationId) -> bool {
        self.focus == Focus::Conversation && self.current().is_some_and(|c| &c.id == id)
    }

    /// Adds a live message: to its conversation, counted unread (and the
    /// bell armed) unless that conversation is the one on screen.
    pub fn push_live(&mut self, e: &HistoryEntry) {
        let id = ConversationId::Direct(e.contact.clone());
        let watched = self.is_watched(&id);
        let me = self.me.clone();
        let c = self.conversation_mut(&id);
        push_entry(c, &me, e);
        if !watched && !e.outgoing {
            c.unread += 1;
        }
        if !watched && !e.outgoing && self.bell {
            self.ring = true;
        }
        self.sort();
    }

    /// Adds an inline event to `id`.
    pub fn push_event(&mut self, id: &ConversationId, ev: InlineEvent) {
        self.conversation_mut(id).items.push(Item::Event(ev));
    }

    /// Applies a receive event.
    pub fn apply(&mut self, ev: &RecvEvent) {
        match ev {
            RecvEvent::Message(e) => self.push_live(e),
            RecvEvent::IdentityChanged { username } => {
                let id = ConversationId::Direct(username.clone());
                let c = self.conversation_mut(&id);
                if c.verification != Verification::Changed {
                    c.verification = Verification::Changed;
                    c.items.push(Item::Event(InlineEvent::IdentityChanged));
                }
            }
            RecvEvent::Dropped { sender, reason } => {
                let text = format!(
                    "dropped a message from {}: {}",
                    crate::display::sanitize_line(sender),
                    crate::display::sanitize_line(reason)
                );
                let id = ConversationId::Direct(sender.clone());
                if self.index_of(&id).is_some() {
                    self.push_event(&id, InlineEvent::Notice(text));
                } else {
                    self.status = Some(text);
                }
            }
            RecvEvent::RolledBack => {
                self.status = Some(
                    "this store is older than its last use (restored from a backup?); sessions were archived and start afresh".to_owned(),
                );
            }
            RecvEvent::Warning(w) => self.status = Some(crate::display::sanitize_line(w)),
        }
    }

    /// Records a verification state read from the store (changed here or
    /// by `missive verify` / `trust` in another shell); a change is shown.
    pub fn set_verification(&mut self, id: &ConversationId, v: Verification) {
        let c = self.conversation_mut(id);
        if c.verification != v {
            let from = c.verification;
            c.verification = v;
            c.items
                .push(Item::Event(InlineEvent::Verification { from, to: v }));
        }
    }

    /// Sets the connection state; losing or regaining it is also noted in
    /// the open conversation.
    pub fn set_connection(&mut self, conn: Connection) {
        let note = match (&self.connection, &conn) {
            (Connection::Connected, Connection::Offline { reason, .. }) => Some(format!(
                "connection to the server lost ({reason}); reconnecting…"
            )),
            (Connection::Offline { .. }, Connection::Connected) => {
                Some("connected to the server again".to_owned())
            }
            _ => None,
        };
        self.connection = conn;
        if let (Some(note), Some(c)) = (note, self.current_mut()) {
            c.items.push(Item::Event(InlineEvent::Connection(note)));
        }
    }

    /// The connection state.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether the terminal bell should ring now (and disarms it).
    pub fn take_bell(&mut self) -> bool {
        std::mem::take(&mut self.ring)
    }

    /// The status line, if any.
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// Where the keys go.
    pub fn focus(&self) -> Focus {
        self.focus
    }

    /// The input text (lines joined by `\n`).
    pub fn input_text(&self) -> String {
        self.input.lines().join("\n")
    }

    fn set_input(&mut self, text: &str) {
        self.input = new_input();
        self.input.insert_str(text);
    }

    /// Handles a bracketed paste: inserted as is (newlines included) into
    /// the input, sent as one message by Enter.
    pub fn handle_paste(&mut self, text: &str) {
        if self.focus != Focus::Conversation {
            return;
        }
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        self.input.insert_str(text);
    }

    /// Handles a key; returns what the loop must do.
    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            return Some(Action::Quit);
        }
        match self.focus {
            Focus::List => self.list_key(key),
            Focus::Conversation => self.conversation_key(key, ctrl, alt),
        }
    }

    fn list_key(&mut self, key: KeyEvent) -> Option<Action> {
        let n = self.conversations.len();
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Some(Action::Quit),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') if n > 0 => {
                self.selected = (self.selected + 1).min(n - 1);
            }
            KeyCode::Enter | KeyCode::Right => self.open_index(self.selected),
            _ => {}
        }
        None
    }

    fn switch(&mut self, forward: bool) {
        let n = self.conversations.len();
        if n == 0 {
            return;
        }
        let cur = self.open.unwrap_or(self.selected);
        let next = if forward {
            (cur + 1) % n
        } else {
            (cur + n - 1) % n
        };
        self.open_index(next);
    }

    fn scroll(&mut self, up: bool, rows: usize) {
        if let Some(c) = self.current_mut() {
            c.from_bottom = if up {
                c.from_bottom.saturating_add(rows)
            } else {
                c.from_bottom.saturating_sub(rows)
            };
        }
    }

    fn conversation_key(&mut self, key: KeyEvent, ctrl: bool, alt: bool) -> Option<Action> {
        let page = self.page_rows.saturating_sub(1).max(1);
        let single_line = self.input.lines().len() <= 1;
        match key.code {
            KeyCode::Esc => {
                self.focus = Focus::List;
            }
            KeyCode::Tab => self.switch(true),
            KeyCode::BackTab => self.switch(false),
            KeyCode::Char('n') if ctrl => self.switch(true),
            KeyCode::Char('p') if ctrl => self.switch(false),
            KeyCode::PageUp => self.scroll(true, page),
            KeyCode::PageDown => self.scroll(false, page),
            KeyCode::Up if key.modifiers.contains(KeyModifiers::SHIFT) => self.scroll(true, 1),
            KeyCode::Down if key.modifiers.contains(KeyModifiers::SHIFT) => self.scroll(false, 1),
            KeyCode::End if ctrl => self.scroll(false, usize::MAX),
            KeyCode::Enter if alt || key.modifiers.contains(KeyModifiers::SHIFT) => {
                self.input.insert_newline();
            }
            KeyCode::Enter => return self.submit(),
            // Shell meaning, not the text area's undo.
            KeyCode::Char('u') if ctrl => {
                self.input.delete_line_by_head();
            }
            KeyCode::Up if single_line => self.history_step(true),
            KeyCode::Down if single_line => self.history_step(false),
            _ => {
                self.input.input(key);
            }
        }
        None
    }

    fn history_step(&mut self, back: bool) {
        if self.history.is_empty() {
            return;
        }
        let last = self.history.len() - 1;
        let pos = match (self.history_pos, back) {
            (None, true) => Some(last),
            (None, false) => None,
            (Some(p), true) => Some(p.saturating_sub(1)),
            (Some(p), false) if p >= last => None,
            (Some(p), false) => Some(p + 1),
        };
        self.history_pos = pos;
        let text = pos
            .and_then(|p| self.history.get(p))
            .cloned()
            .unwrap_or_default();
        self.set_input(&text);
    }

    fn submit(&mut self) -> Option<Action> {
        let raw = self.input_text();
        let text = raw.trim();
        if text.is_empty() {
            return None;
        }
        if text == "/quit" {
            return Some(Action::Quit);
        }
        let me = self.me.clone();
        let c = self.current_mut()?;
        if c.verification == Verification::Changed {
            let who = c.id.label().to_owned();
            self.status = Some(format!(
                "not sent: {who}'s identity changed; run `missive trust {who} SAFETY_NUMBER` after comparing safety numbers"
            ));
            return None;
        }
        let text = text.to_owned();
        c.items.push(Item::Message(MessageItem {
            author: me,
            outgoing: true,
            text: crate::display::sanitize_text(&text, ""),
            at_ms: 0,
            pending: true,
        }));
        c.from_bottom = 0;
        let id = c.id.clone();
        self.history.push(text.clone());
        self.history_pos = None;
        self.input = new_input();
        self.status = None;
        Some(Action::Send(id, text))
    }

    /// Records the outcome of the last [`Action::Send`] to `id`: the
    /// pending line gets the server's time, or is removed and the reason
    /// shown (the text goes back into the input so nothing is lost).
    pub fn sent(&mut self, id: &ConversationId, outcome: std::result::Result<u64, String>) {
        let c = self.conversation_mut(id);
        let idx = c
            .items
            .iter()
            .rposition(|i| matches!(i, Item::Message(m) if m.pending));
        match (outcome, idx) {
            (Ok(ts), Some(i)) => {
                if let Some(Item::Message(m)) = c.items.get_mut(i) {
                    m.pending = false;
                    m.at_ms = ts;
                }
                c.last_activity_ms = c.last_activity_ms.max(ts);
                self.sort();
            }
            (Err(e), Some(i)) => {
                c.items.remove(i);
                self.status = Some(format!("not sent: {e}"));
                if self.input.is_empty()
                    && let Some(t) = self.history.last().cloned()
                {
                    self.set_input(&t);
                }
            }
            (Err(e), None) => self.status = Some(format!("not sent: {e}")),
            (Ok(_), None) => {}
        }
    }
}

fn push_entry(c: &mut Conversation, me: &str, e: &HistoryEntry) {
    let author = if e.outgoing {
        me.to_owned()
    } else if e.quarantined {
        format!("an unverified new key of {}", e.contact)
    } else {
        e.contact.clone()
    };
    c.items.push(Item::Message(MessageItem {
        author: crate::display::sanitize_line(&author),
        outgoing: e.outgoing,
        text: crate::display::sanitize_text(&e.text, ""),
        at_ms: e.server_ts_ms,
        pending: false,
    }));
    c.last_activity_ms = c.last_activity_ms.max(e.server_ts_ms);
}
