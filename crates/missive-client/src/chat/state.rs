//! Everything the chat screen shows, updated by plain method calls so it is
//! tested without a terminal: [`ChatState::handle_key`],
//! [`ChatState::handle_paste`], [`ChatState::apply`], ...

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tui_textarea::TextArea;

use crate::client::{RecvEvent, Verification};
use crate::conversation::{
    ConversationEvent, ConversationItem, OwnDeviceChange, ReceiptState, format_timer,
};
use crate::store::HistoryEntry;

/// How long a typing indicator lasts without a refresh (Signal: 15 s).
pub const TYPING_SHOWN_MS: u64 = 15_000;
/// How often a started indicator is re-sent while the user keeps typing.
pub const TYPING_RESEND_MS: u64 = 10_000;
/// Characters of a quoted message shown above a reply.
const QUOTE_CHARS: usize = 60;

/// Which conversation: with one contact, or a group (`missive chat
/// --group NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConversationId {
    /// A one-to-one conversation with this username.
    Direct(String),
    /// A group conversation, by its name on this device.
    Group(String),
}

impl ConversationId {
    /// The name shown in the list and the title: a group's starts with
    /// `#`, which no username does, so the two never look alike.
    pub fn label(&self) -> String {
        match self {
            ConversationId::Direct(u) => u.clone(),
            ConversationId::Group(name) => format!("#{}", crate::display::sanitize_line(name)),
        }
    }

    /// The conversation a stored entry belongs to: its group's, or the
    /// contact's.
    pub fn of_entry(e: &HistoryEntry) -> Self {
        match &e.group {
            Some(g) => ConversationId::Group(g.name.clone()),
            None => ConversationId::Direct(e.contact.clone()),
        }
    }
}

/// What a group conversation does not offer yet (only text is sent there).
const NOT_IN_GROUPS: &str = "is not available in group conversations yet; only text is";

/// Delivery state of one of our messages: sent, delivered or read.
pub type DeliveryState = ReceiptState;

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
    /// The disappearing-message timer was set (`secs` 0: turned off).
    Timer {
        /// Who set it (as shown).
        by: String,
        /// New timer, seconds.
        secs: u64,
    },
    /// A group's membership changed ("alice added carol", "carol's new
    /// device joined"), as the group's history says it (escaped).
    Membership(String),
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
            InlineEvent::Timer { by, secs: 0 } => {
                format!("{by} turned disappearing messages off")
            }
            InlineEvent::Timer { by, secs } => {
                format!("{by} set disappearing messages to {}", format_timer(*secs))
            }
            InlineEvent::Membership(text) => text.clone(),
        }
    }
}

/// One message line.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MessageItem {
    /// The sender's message id (empty while sending).
    pub message_id: Vec<u8>,
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
    /// The message this one replies to, one escaped line: `author: text`.
    pub reply_to: Option<String>,
    /// Reactions, one per person: (who, emoji), both escaped.
    pub reactions: Vec<(String, String)>,
    /// Edited by its author (the text is the newest version).
    pub edited: bool,
    /// Deleted for everyone: the text is gone.
    pub unsent: bool,
    /// For our messages: sent, delivered or read.
    pub receipt: Option<ReceiptState>,
    /// Its disappearing timer, seconds (0: none).
    pub expire_after_secs: u64,
    /// When it disappears, ms.
    pub expires_at_ms: Option<u64>,
    /// The file it carries, if any.
    pub file: Option<FileItem>,
}

/// A file carried by a message, as the chat shows it (every text escaped).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileItem {
    /// Its name as sent.
    pub name: String,
    /// Its length, bytes.
    pub size: u64,
    /// Where it is on this machine: saved (theirs) or sent from (ours).
    pub saved: Option<String>,
    /// Why it was refused (it did not verify); it is not saved.
    pub refused: Option<String>,
}

impl FileItem {
    fn from_info(a: &crate::store::AttachmentInfo) -> Self {
        FileItem {
            name: crate::display::sanitize_line(&a.file_name),
            size: a.size,
            saved: a
                .saved_path
                .as_ref()
                .map(|p| crate::display::sanitize_line(&p.display().to_string())),
            refused: a.error.as_deref().map(crate::display::sanitize_line),
        }
    }

    /// The line shown under the message.
    pub fn line(&self, outgoing: bool) -> String {
        let state = match (&self.saved, &self.refused) {
            (Some(p), _) if outgoing => format!("sent from {p}"),
            (Some(p), _) => format!("saved to {p}"),
            (None, Some(why)) => format!("REFUSED: {why}"),
            (None, None) if outgoing => "sent".to_owned(),
            (None, None) => "/save downloads it".to_owned(),
        };
        format!(
            "📎 {} ({}), {state}",
            self.name,
            crate::display::human_size(self.size)
        )
    }
}

/// One item of a conversation.
// Nearly every item is a message: boxing them would cost an allocation each
// to save a few bytes on the rare event.
#[allow(clippy::large_enum_variant)]
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
    /// The contact is typing until this time, ms (0: not typing).
    pub typing_until_ms: u64,
    /// Their messages not yet covered by a read receipt.
    unread_ids: Vec<Vec<u8>>,
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
            typing_until_ms: 0,
            unread_ids: Vec::new(),
        }
    }

    fn message_mut(&mut self, id: &[u8], outgoing: Option<bool>) -> Option<&mut MessageItem> {
        self.items.iter_mut().rev().find_map(|i| match i {
            Item::Message(m) if m.message_id == id && outgoing.is_none_or(|o| o == m.outgoing) => {
                Some(m)
            }
            _ => None,
        })
    }

    /// The newest message that is ours (`outgoing`) or theirs, not deleted.
    fn newest(&self, outgoing: bool) -> Option<&MessageItem> {
        self.items.iter().rev().find_map(|i| match i {
            Item::Message(m) if m.outgoing == outgoing && !m.pending && !m.unsent => Some(m),
            _ => None,
        })
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

/// What the chat loop must do after an input. Message ids are hex, as
/// the CLI takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this text to this conversation.
    Send(ConversationId, String),
    /// `/reply TEXT`: send `text` quoting message `target`.
    Reply {
        /// Conversation.
        to: ConversationId,
        /// The message replied to.
        target: String,
        /// Text.
        text: String,
    },
    /// `/react EMOJI` (or `/unreact`: `None`).
    React {
        /// Conversation.
        to: ConversationId,
        /// The message.
        target: String,
        /// The emoji, or none to remove ours.
        emoji: Option<String>,
    },
    /// `/edit TEXT`: our newest message gets a new text.
    Edit {
        /// Conversation.
        to: ConversationId,
        /// Our message.
        target: String,
        /// Its new text.
        text: String,
    },
    /// `/unsend`: our newest message is deleted for everyone.
    Unsend {
        /// Conversation.
        to: ConversationId,
        /// Our message.
        target: String,
    },
    /// `/timer DURATION|off`.
    Timer(ConversationId, u64),
    /// `/save`: download, verify and save the newest file received here
    /// that is not saved yet.
    Save {
        /// Conversation.
        to: ConversationId,
        /// Their message carrying it.
        target: String,
    },
    /// `/file PATH`: send this file.
    SendFile {
        /// Conversation.
        to: ConversationId,
        /// The file, as typed.
        path: String,
    },
    /// Tell the contact we started (or stopped) typing.
    Typing(ConversationId, bool),
    /// Leave the chat.
    Quit,
}

/// The chat's commands, shown by `/help`.
pub const COMMANDS_HELP: &str = "/reply TEXT · /react EMOJI · /unreact · /edit TEXT · /unsend · /timer 5m|off · /file PATH · /save · /quit · //text sends /text";

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
    /// Details of received messages said before the message is shown.
    details: Vec<(String, Vec<u8>, Option<String>, u64)>,
    /// (contact, their message ids) due a read receipt.
    read_due: Vec<(String, Vec<Vec<u8>>)>,
    /// Our typing indicator: to whom, and when it was last sent (ms).
    typing_sent: Option<(ConversationId, u64)>,
    /// The time as the loop last said it, ms.
    pub(crate) now_ms: u64,
    /// Each conversation's disappearing timer, seconds, as last known.
    timers: std::collections::HashMap<ConversationId, u64>,
}

/// Heading of the help line.
pub const HELP_CONVERSATION: &str =
    "Enter send · Alt-Enter newline · Tab next · Esc list · PgUp/PgDn · /help · Ctrl-C quit";
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
            details: Vec::new(),
            read_due: Vec::new(),
            typing_sent: None,
            now_ms: 0,
            timers: std::collections::HashMap::new(),
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

    /// Adds a conversation with everything about its messages (replies,
    /// reactions, edits, deletions, receipts, timers), as
    /// [`crate::Client::conversation`] returns it.
    pub fn add_conversation_items(
        &mut self,
        id: ConversationId,
        verification: Verification,
        items: &[ConversationItem],
    ) {
        let me = self.me.clone();
        let c = self.conversation_mut(&id);
        c.verification = verification;
        for ci in items {
            let by = if ci.entry.outgoing {
                me.clone()
            } else {
                crate::display::sanitize_line(&ci.entry.contact)
            };
            match ci.timer_change {
                Some(secs) => c.items.push(Item::Event(InlineEvent::Timer { by, secs })),
                None => {
                    push_entry(c, &me, &ci.entry);
                    if let Some(Item::Message(m)) = c.items.last_mut() {
                        item_details(m, ci);
                    }
                }
            }
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
            self.note_read(i);
        }
    }

    /// The contact's messages in conversation `i` are on screen: due a
    /// read receipt.
    fn note_read(&mut self, i: usize) {
        if let Some(c) = self.conversations.get_mut(i)
            && !c.unread_ids.is_empty()
        {
            let ids = std::mem::take(&mut c.unread_ids);
            if let ConversationId::Direct(name) = &c.id {
                self.read_due.push((name.clone(), ids));
            }
        }
    }

    /// The messages shown since the last call, per contact, for read
    /// receipts ([`crate::Client::mark_read`]).
    pub fn take_read_due(&mut self) -> Vec<(String, Vec<Vec<u8>>)> {
        std::mem::take(&mut self.read_due)
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
        let id = ConversationId::of_entry(e);
        let watched = self.is_watched(&id);
        let me = self.me.clone();
        let details = if e.group.is_some() {
            None
        } else {
            self.details
                .iter()
                .position(|(from, mid, ..)| from == &e.contact && mid == &e.message_id)
                .map(|i| self.details.remove(i))
        };
        let now = self.now_ms;
        let c = self.conversation_mut(&id);
        push_entry(c, &me, e);
        if let (Some((_, _, reply_to, secs)), Some(Item::Message(m))) =
            (details, c.items.last_mut())
        {
            m.reply_to = reply_to;
            m.expire_after_secs = secs;
            if secs > 0 {
                m.expires_at_ms = Some(now.saturating_add(secs.saturating_mul(1000)));
            }
        }
        let event = e.group.as_ref().is_some_and(|g| g.event);
        let theirs = !e.outgoing && !event;
        if theirs {
            // A message ends the sender's typing indicator.
            c.typing_until_ms = 0;
            // Groups have no read receipts (yet): nothing is due for them.
            if !e.quarantined && e.group.is_none() {
                c.unread_ids.push(e.message_id.clone());
            }
        }
        if !watched && theirs {
            c.unread += 1;
        }
        if !watched && theirs && self.bell {
            self.ring = true;
        }
        if watched && let Some(i) = self.index_of(&id) {
            self.note_read(i);
        }
        self.sort();
    }

    /// Adds a live message with everything known about it (a message that
    /// arrived while the chat was closed).
    pub fn push_live_item(&mut self, ci: &ConversationItem) {
        self.push_live(&ci.entry);
        let c = self.conversation_mut(&ConversationId::of_entry(&ci.entry));
        if let Some(Item::Message(m)) = c.items.last_mut() {
            item_details(m, ci);
        }
    }

    /// Applies a conversation event (receipts, typing, reactions, edits,
    /// deletions, timers, expiries) to the conversation it belongs to.
    pub fn apply_conversation(&mut self, ev: &ConversationEvent) {
        let now = self.now_ms;
        let esc = crate::display::sanitize_line;
        match ev {
            ConversationEvent::Receipt {
                from,
                state,
                message_ids,
            } => {
                let c = self.conversation_mut(&ConversationId::Direct(from.clone()));
                for id in message_ids {
                    if let Some(m) = c.message_mut(id, Some(true))
                        && m.receipt.is_none_or(|r| rank(r) < rank(*state))
                    {
                        m.receipt = Some(*state);
                    }
                }
            }
            ConversationEvent::Typing { from, started } => {
                let c = self.conversation_mut(&ConversationId::Direct(from.clone()));
                c.typing_until_ms = if *started {
                    now.saturating_add(TYPING_SHOWN_MS)
                } else {
                    0
                };
            }
            ConversationEvent::Reaction {
                from,
                target,
                emoji,
            } => {
                let who = esc(from);
                let c = self.conversation_mut(&ConversationId::Direct(from.clone()));
                if let Some(m) = c.message_mut(target, None) {
                    m.reactions.retain(|(w, _)| w != &who);
                    if let Some(e) = emoji {
                        m.reactions.push((who, esc(e)));
                    }
                }
            }
            ConversationEvent::Edited { from, target, text } => {
                let c = self.conversation_mut(&ConversationId::Direct(from.clone()));
                if let Some(m) = c.message_mut(target, Some(false)) {
                    m.text = crate::display::sanitize_text(text, "");
                    m.edited = true;
                }
            }
            ConversationEvent::Unsent { from, target } => {
                let c = self.conversation_mut(&ConversationId::Direct(from.clone()));
                if let Some(m) = c.message_mut(target, Some(false)) {
                    m.unsent = true;
                    m.text.clear();
                    m.reactions.clear();
                }
            }
            ConversationEvent::TimerChanged {
                from,
                expire_after_secs,
            } => {
                let by = esc(from);
                self.timers
                    .insert(ConversationId::Direct(from.clone()), *expire_after_secs);
                self.push_event(
                    &ConversationId::Direct(from.clone()),
                    InlineEvent::Timer {
                        by,
                        secs: *expire_after_secs,
                    },
                );
            }
            ConversationEvent::MessageDetails {
                from,
                message_id,
                reply_to,
                expire_after_secs,
            } => {
                let reply = reply_to
                    .as_ref()
                    .map(|q| quote_line(&q.author, q.text.as_deref()));
                self.details
                    .push((from.clone(), message_id.clone(), reply, *expire_after_secs));
            }
            ConversationEvent::Expired {
                contact,
                message_ids,
            } => {
                let c = self.conversation_mut(&ConversationId::Direct(contact.clone()));
                c.items.retain(
                    |i| !matches!(i, Item::Message(m) if message_ids.contains(&m.message_id)),
                );
            }
            ConversationEvent::FromOwnDevice { contact, change } => {
                self.apply_own_device(contact, change);
            }
        }
    }

    /// What another device of this account did in the conversation with
    /// `contact`, shown as this account's own.
    fn apply_own_device(&mut self, contact: &str, change: &OwnDeviceChange) {
        let id = ConversationId::Direct(contact.to_owned());
        let me = crate::display::sanitize_line(&self.me);
        match change {
            OwnDeviceChange::Reaction { target, emoji } => {
                let c = self.conversation_mut(&id);
                if let Some(m) = c.message_mut(target, None) {
                    m.reactions.retain(|(w, _)| w != &me);
                    if let Some(e) = emoji {
                        m.reactions.push((me, crate::display::sanitize_line(e)));
                    }
                }
            }
            OwnDeviceChange::Edited { target, text } => {
                let c = self.conversation_mut(&id);
                if let Some(m) = c.message_mut(target, Some(true)) {
                    m.text = crate::display::sanitize_text(text, "");
                    m.edited = true;
                }
            }
            OwnDeviceChange::Unsent { target } => {
                let c = self.conversation_mut(&id);
                if let Some(m) = c.message_mut(target, Some(true)) {
                    m.unsent = true;
                    m.text.clear();
                    m.reactions.clear();
                }
            }
            OwnDeviceChange::TimerChanged { expire_after_secs } => {
                self.timers.insert(id.clone(), *expire_after_secs);
                self.push_event(
                    &id,
                    InlineEvent::Timer {
                        by: me,
                        secs: *expire_after_secs,
                    },
                );
            }
            OwnDeviceChange::Read { message_ids } => {
                // Read on another device: no longer unread here, and no
                // read receipt is due from this one.
                let c = self.conversation_mut(&id);
                let before = c.unread_ids.len();
                c.unread_ids.retain(|m| !message_ids.contains(m));
                let cleared = before - c.unread_ids.len();
                c.unread = c.unread.saturating_sub(cleared);
            }
        }
    }

    /// Records the disappearing timer of `id` (our messages sent there get
    /// it).
    pub fn set_timer(&mut self, id: &ConversationId, secs: u64) {
        self.timers.insert(id.clone(), secs);
    }

    /// Advances the clock: typing indicators and disappearing messages past
    /// their time go (the store deletes the messages on its own schedule;
    /// the screen does not wait for it).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        for c in &mut self.conversations {
            if c.typing_until_ms != 0 && c.typing_until_ms <= now_ms {
                c.typing_until_ms = 0;
            }
            c.items.retain(
                |i| !matches!(i, Item::Message(m) if m.expires_at_ms.is_some_and(|t| t <= now_ms)),
            );
        }
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
                if self.input.input(key) {
                    return self.typing_action();
                }
            }
        }
        None
    }

    /// After the input changed: tells the contact we are typing (once per
    /// [`TYPING_RESEND_MS`]), or that we stopped when the input is empty
    /// again. Commands are not typing.
    fn typing_action(&mut self) -> Option<Action> {
        let c = self.current()?;
        // Typing indicators go to one contact; groups have none yet.
        if c.verification == Verification::Changed || matches!(c.id, ConversationId::Group(_)) {
            return None;
        }
        let id = c.id.clone();
        let text = self.input_text();
        let typing = !text.trim().is_empty() && !text.starts_with('/');
        let now = self.now_ms;
        match (&self.typing_sent, typing) {
            (Some((to, at)), true) if to == &id && now.saturating_sub(*at) < TYPING_RESEND_MS => {
                None
            }
            (_, true) => {
                self.typing_sent = Some((id.clone(), now));
                Some(Action::Typing(id, true))
            }
            (Some(_), false) => self.stop_typing(),
            (None, false) => None,
        }
    }

    /// Our typing indicator ends (the message was sent or the input
    /// cleared); the sent message itself ends it at the other side.
    fn stop_typing(&mut self) -> Option<Action> {
        self.typing_sent
            .take()
            .map(|(to, _)| Action::Typing(to, false))
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
        let text = text.to_owned();
        if let Some(cmd) = text.strip_prefix('/')
            && !cmd.starts_with('/')
        {
            let action = self.command(cmd);
            if action.is_some() || cmd.trim() == "help" {
                self.history.push(text);
                self.history_pos = None;
                self.input = new_input();
                self.typing_sent = None;
            }
            return action;
        }
        // `//text` sends `/text`.
        let text = match text.strip_prefix('/') {
            Some(rest) => rest.to_owned(),
            None => text,
        };
        if !self.can_send() {
            return None;
        }
        let me = self.me.clone();
        let c = self.current_mut()?;
        c.items.push(Item::Message(MessageItem {
            author: me,
            outgoing: true,
            text: crate::display::sanitize_text(&text, ""),
            pending: true,
            ..MessageItem::default()
        }));
        c.from_bottom = 0;
        let id = c.id.clone();
        self.history.push(text.clone());
        self.history_pos = None;
        self.input = new_input();
        self.status = None;
        self.typing_sent = None;
        Some(Action::Send(id, text))
    }

    /// Whether the open conversation takes messages; says why not.
    fn can_send(&mut self) -> bool {
        match self.current() {
            Some(c) if c.verification == Verification::Changed => {
                let who = c.id.label().to_owned();
                self.status = Some(format!(
                    "not sent: {who}'s identity changed; run `missive trust {who} SAFETY_NUMBER` after comparing safety numbers"
                ));
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// A `/command` typed in the input. `None` with a status line when it
    /// cannot be done (the input is kept).
    fn command(&mut self, cmd: &str) -> Option<Action> {
        let (name, arg) = match cmd.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (cmd, ""),
        };
        self.status = None;
        let to = self.current()?.id.clone();
        if matches!(to, ConversationId::Group(_)) && !matches!(name, "quit" | "q" | "help") {
            self.status = Some(format!(
                "/{} {NOT_IN_GROUPS}",
                crate::display::sanitize_line(name)
            ));
            return None;
        }
        let need = |what: &str, s: &mut Option<String>| {
            *s = Some(format!("/{name} needs {what}; /help lists the commands"));
        };
        let target = |st: &Self, ours: bool| {
            st.current()
                .and_then(|c| c.newest(ours))
                .map(|m| hex::encode(&m.message_id))
        };
        match name {
            "quit" | "q" => Some(Action::Quit),
            "help" => {
                self.status = Some(COMMANDS_HELP.to_owned());
                None
            }
            "reply" | "react" | "unreact" => {
                if name != "unreact" && arg.is_empty() {
                    need(
                        if name == "reply" {
                            "a text"
                        } else {
                            "an emoji"
                        },
                        &mut self.status,
                    );
                    return None;
                }
                if !self.can_send() {
                    return None;
                }
                let Some(target) = target(self, false) else {
                    self.status = Some(format!(
                        "/{name}: {} has sent nothing here to {name} to",
                        to.label()
                    ));
                    return None;
                };
                Some(match name {
                    "reply" => Action::Reply {
                        to,
                        target,
                        text: arg.to_owned(),
                    },
                    "react" => Action::React {
                        to,
                        target,
                        emoji: Some(arg.to_owned()),
                    },
                    _ => Action::React {
                        to,
                        target,
                        emoji: None,
                    },
                })
            }
            "edit" | "unsend" => {
                if name == "edit" && arg.is_empty() {
                    need("the new text", &mut self.status);
                    return None;
                }
                if !self.can_send() {
                    return None;
                }
                let Some(target) = target(self, true) else {
                    self.status = Some(format!("/{name}: you have sent nothing here yet"));
                    return None;
                };
                Some(if name == "edit" {
                    Action::Edit {
                        to,
                        target,
                        text: arg.to_owned(),
                    }
                } else {
                    Action::Unsend { to, target }
                })
            }
            "file" => {
                if arg.is_empty() {
                    need("the path of a file", &mut self.status);
                    return None;
                }
                if !self.can_send() {
                    return None;
                }
                Some(Action::SendFile {
                    to,
                    path: arg.to_owned(),
                })
            }
            "save" => {
                let newest = self.current().and_then(|c| {
                    c.items.iter().rev().find_map(|i| match i {
                        Item::Message(m)
                            if !m.outgoing
                                && !m.unsent
                                && m.file.as_ref().is_some_and(|f| f.saved.is_none()) =>
                        {
                            Some(m)
                        }
                        _ => None,
                    })
                });
                match newest {
                    Some(m) if m.file.as_ref().is_some_and(|f| f.refused.is_some()) => {
                        self.status = Some(
                            "/save: the newest file here was refused (it did not verify)".into(),
                        );
                        None
                    }
                    Some(m) => {
                        let target = hex::encode(&m.message_id);
                        self.status = Some("saving the file…".into());
                        Some(Action::Save { to, target })
                    }
                    None => {
                        self.status = Some("/save: no file here waits to be saved".into());
                        None
                    }
                }
            }
            "timer" => {
                if arg.is_empty() {
                    need("a duration such as 30s, 5m, 1d, or off", &mut self.status);
                    return None;
                }
                match crate::conversation::parse_timer(arg) {
                    Ok(secs) if self.can_send() => Some(Action::Timer(to, secs)),
                    Ok(_) => None,
                    Err(e) => {
                        self.status = Some(format!("/timer: {e}"));
                        None
                    }
                }
            }
            _ => {
                self.status = Some(format!(
                    "unknown command /{}; /help lists them (//text sends /text)",
                    crate::display::sanitize_line(name)
                ));
                None
            }
        }
    }

    /// Records the outcome of [`Action::Save`]: where the file was saved,
    /// or why not (a verification failure marks it refused for good).
    pub fn file_saved(
        &mut self,
        to: &ConversationId,
        target: &str,
        outcome: std::result::Result<std::path::PathBuf, crate::ClientError>,
    ) {
        let id = hex::decode(target).unwrap_or_default();
        let m = self.conversation_mut(to).message_mut(&id, Some(false));
        let file = m.and_then(|m| m.file.as_mut());
        match outcome {
            Ok(path) => {
                let shown = crate::display::sanitize_line(&path.display().to_string());
                if let Some(f) = file {
                    f.saved = Some(shown.clone());
                }
                self.status = Some(format!("saved to {shown}"));
            }
            Err(crate::ClientError::Attachment(why)) => {
                let why = crate::display::sanitize_line(&why);
                if let Some(f) = file {
                    f.refused = Some(why.clone());
                }
                self.status = Some(format!("not saved: {why}"));
            }
            Err(e) => self.status = Some(format!("not saved yet: {}", e.brief())),
        }
    }

    /// Shows what a command did, or why it failed (an edit or unsend also
    /// updates our own line).
    pub fn done(&mut self, action: &Action, outcome: std::result::Result<(), String>) {
        match (action, outcome) {
            (_, Err(e)) => self.status = Some(format!("not done: {e}")),
            (Action::Edit { to, target, text }, Ok(())) => {
                let id = hex::decode(target).unwrap_or_default();
                if let Some(m) = self.conversation_mut(to).message_mut(&id, Some(true)) {
                    m.text = crate::display::sanitize_text(text, "");
                    m.edited = true;
                }
            }
            (Action::Unsend { to, target }, Ok(())) => {
                let id = hex::decode(target).unwrap_or_default();
                if let Some(m) = self.conversation_mut(to).message_mut(&id, Some(true)) {
                    m.unsent = true;
                    m.text.clear();
                    m.reactions.clear();
                }
            }
            (Action::React { to, target, emoji }, Ok(())) => {
                let me = self.me.clone();
                let id = hex::decode(target).unwrap_or_default();
                if let Some(m) = self.conversation_mut(to).message_mut(&id, None) {
                    m.reactions.retain(|(w, _)| w != &me);
                    if let Some(e) = emoji {
                        m.reactions.push((me, crate::display::sanitize_line(e)));
                    }
                }
            }
            (Action::SendFile { path, .. }, Ok(())) => {
                self.status = Some(format!("sent {}", crate::display::sanitize_line(path)));
            }
            (Action::Timer(to, secs), Ok(())) => {
                let by = self.me.clone();
                self.timers.insert(to.clone(), *secs);
                self.push_event(to, InlineEvent::Timer { by, secs: *secs });
            }
            _ => {}
        }
    }

    /// Records the outcome of the last [`Action::Send`] to `id`: the
    /// pending line gets the server's time, or is removed and the reason
    /// shown (the text goes back into the input so nothing is lost).
    pub fn sent(&mut self, id: &ConversationId, outcome: std::result::Result<crate::Sent, String>) {
        let timer = self.timers.get(id).copied().unwrap_or(0);
        let c = self.conversation_mut(id);
        let idx = c
            .items
            .iter()
            .rposition(|i| matches!(i, Item::Message(m) if m.pending));
        match (outcome, idx) {
            (Ok(sent), Some(i)) => {
                let ts = sent.server_timestamp_ms;
                if let Some(Item::Message(m)) = c.items.get_mut(i) {
                    m.pending = false;
                    m.at_ms = ts;
                    m.message_id = hex::decode(&sent.id).unwrap_or_default();
                    m.receipt = Some(ReceiptState::Sent);
                    m.expire_after_secs = timer;
                    if timer > 0 {
                        m.expires_at_ms = Some(ts.saturating_add(timer.saturating_mul(1000)));
                    }
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
    if e.group.as_ref().is_some_and(|g| g.event) {
        let text = crate::display::sanitize_line(&e.text);
        c.items.push(Item::Event(InlineEvent::Membership(text)));
        c.last_activity_ms = c.last_activity_ms.max(e.server_ts_ms);
        return;
    }
    let author = if e.outgoing {
        me.to_owned()
    } else if e.quarantined {
        format!("an unverified new key of {}", e.contact)
    } else {
        e.contact.clone()
    };
    c.items.push(Item::Message(MessageItem {
        message_id: e.message_id.clone(),
        author: crate::display::sanitize_line(&author),
        outgoing: e.outgoing,
        text: crate::display::sanitize_text(&e.text, ""),
        at_ms: e.server_ts_ms,
        receipt: e.outgoing.then_some(ReceiptState::Sent),
        file: e.attachment.as_ref().map(FileItem::from_info),
        ..MessageItem::default()
    }));
    c.last_activity_ms = c.last_activity_ms.max(e.server_ts_ms);
}

/// Copies what `ci` knows beyond its history entry into `m`.
fn item_details(m: &mut MessageItem, ci: &ConversationItem) {
    m.reply_to = ci
        .reply_to
        .as_ref()
        .map(|q| quote_line(&q.author, q.text.as_deref()));
    m.reactions = ci
        .reactions
        .iter()
        .map(|(w, e)| {
            (
                crate::display::sanitize_line(w),
                crate::display::sanitize_line(e),
            )
        })
        .collect();
    m.edited = !ci.edit_history.is_empty();
    if ci.unsent {
        m.unsent = true;
        m.text.clear();
    }
    if ci.entry.outgoing {
        m.receipt = ci.receipt;
    }
    m.expire_after_secs = ci.expire_after_secs;
    m.expires_at_ms = ci.expires_at_ms;
}

/// One escaped line for a quoted message: `author: text…`.
fn quote_line(author: &str, text: Option<&str>) -> String {
    let author = crate::display::sanitize_line(author);
    match text {
        Some(t) => {
            let flat = crate::display::sanitize_line(&t.replace('\n', " "));
            let mut short: String = flat.chars().take(QUOTE_CHARS).collect();
            if flat.chars().count() > QUOTE_CHARS {
                short.push('…');
            }
            format!("{author}: {short}")
        }
        None => format!("{author}: (message not available)"),
    }
}

/// Order of receipt states: a later receipt never lowers one.
fn rank(r: ReceiptState) -> u8 {
    match r {
        ReceiptState::Sent => 0,
        ReceiptState::Delivered => 1,
        ReceiptState::Read => 2,
    }
}
