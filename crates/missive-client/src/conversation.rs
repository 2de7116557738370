//! Conversation features: delivery and read receipts, typing indicators,
//! replies, reactions, edits, delete for everyone (`unsend`) and
//! disappearing messages (docs/PROTOCOL.md, "Conversation content").
//!
//! Everything travels inside the franked [`v1::Content`]: the franking
//! commitment covers each body's [`franked_plaintext`], so a reaction, an
//! edit or a timer change a recipient is shown can be reported with proof.
//! A message names another by its sender-chosen 16-byte message id (and
//! author), which is only inside the encryption: the server sees that a
//! message went by, never which message it reacts to, edits or unsends.
//!
//! Receiving ([`receive_content`]) runs inside the receive transaction of
//! `client.rs`; sending goes through `Client::send_content`.

use std::collections::HashMap;

use missive_crypto::PublicIdentity;
use missive_crypto::franking::{self, FrankingKey};
use missive_proto::v1::{self, content::Body};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::client::{Client, Refusal, Sent, clamp_sender_clock, normalize_username};
use crate::error::{ClientError, Result};
use crate::limits::MAX_TEXT_BYTES;
use crate::store::{
    AttachmentRecord, Db, HistoryEntry, MessageRecord, NewIncoming, SealedMessage, Store, now_ms,
};

/// First line of every franked plaintext that is not a bare text.
pub const FRANKED_V2_PREFIX: &str = "missive content v2\n";
/// How long after sending a message its author may still delete it for
/// everyone (by the server's timestamps, which franking binds), as Signal.
pub const UNSEND_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How long after sending a message its author may still edit it.
pub const EDIT_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Most message ids in one receipt.
pub const MAX_RECEIPT_IDS: usize = 256;
/// Longest reaction, bytes of UTF-8 (one emoji, with modifiers and joiners).
pub const MAX_EMOJI_BYTES: usize = 64;
/// A typing indicator older than this (server time) is not shown.
pub const TYPING_FRESH_MS: u64 = 30_000;
/// Longest disappearing timer, seconds (about 100 years).
pub const MAX_TIMER_SECS: u64 = 3_155_760_000;
/// Message ids are 16 bytes.
pub const MESSAGE_ID_LEN: usize = 16;

const META_READ_RECEIPTS: &str = "read_receipts";

// ---- franked plaintext ------------------------------------------------

#[derive(Serialize)]
struct RefJson<'a> {
    author: &'a str,
    id: String,
}

/// The canonical JSON of a non-bare body: `kind` first, then the other keys
/// in the order written here (alphabetical), serde_json's compact form.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Franked<'a> {
    Edit {
        target: String,
        text: &'a str,
    },
    Reaction {
        emoji: &'a str,
        target: RefJson<'a>,
    },
    Receipt {
        message_ids: Vec<String>,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    Text {
        expire_after_secs: u64,
        quote: Option<RefJson<'a>>,
        text: &'a str,
    },
    Timer {
        expire_after_secs: u64,
    },
    Typing {
        started: bool,
    },
    Unsend {
        target: String,
    },
}

fn receipt_kind(t: i32) -> Option<&'static str> {
    match v1::receipt_message::Type::try_from(t).ok()? {
        v1::receipt_message::Type::Delivery => Some("delivery"),
        v1::receipt_message::Type::Read => Some("read"),
        v1::receipt_message::Type::Unspecified => None,
    }
}

/// How the server is asked to treat a send of `body` (issue 16):
/// `(online_only, retention_secs)`. A typing indicator is online-only (the
/// server hands it to open streams and never stores it); a message under a
/// disappearing timer may not stay on the server longer than the timer.
pub(crate) fn send_options(body: &Body) -> (bool, u64) {
    match body {
        Body::Typing(_) => (true, 0),
        Body::Text(t) => (false, t.expire_after_secs),
        _ => (false, 0),
    }
}

/// The string the franking commitment of `body` is computed over
/// (docs/PROTOCOL.md, "Conversation content"): a text without quote or
/// timer whose body does not start with [`FRANKED_V2_PREFIX`] is its body,
/// exactly as before; anything else is the prefix followed by a canonical
/// JSON object. Errors on a body that cannot be franked (an unknown receipt
/// type).
pub fn franked_plaintext(body: &Body) -> std::result::Result<String, String> {
    fn r(m: &v1::MessageRef) -> RefJson<'_> {
        RefJson {
            author: &m.author,
            id: hex::encode(&m.message_id),
        }
    }
    let f = match body {
        Body::Text(t) => {
            if t.quote.is_none()
                && t.expire_after_secs == 0
                && !t.body.starts_with(FRANKED_V2_PREFIX)
            {
                return Ok(t.body.clone());
            }
            Franked::Text {
                expire_after_secs: t.expire_after_secs,
                quote: t.quote.as_ref().map(r),
                text: &t.body,
            }
        }
        Body::Receipt(m) => Franked::Receipt {
            message_ids: m.message_ids.iter().map(hex::encode).collect(),
            kind: receipt_kind(m.r#type).ok_or("it is a receipt of an unknown type")?,
        },
        Body::Typing(m) => Franked::Typing { started: m.started },
        Body::Reaction(m) => Franked::Reaction {
            emoji: &m.emoji,
            target: m
                .target
                .as_ref()
                .map(r)
                .ok_or("it is a reaction without a target")?,
        },
        Body::Edit(m) => Franked::Edit {
            target: hex::encode(&m.target_message_id),
            text: &m.body,
        },
        Body::Unsend(m) => Franked::Unsend {
            target: hex::encode(&m.target_message_id),
        },
        Body::Timer(m) => Franked::Timer {
            expire_after_secs: m.expire_after_secs,
        },
    };
    let json = serde_json::to_string(&f).map_err(|e| e.to_string())?;
    Ok(format!("{FRANKED_V2_PREFIX}{json}"))
}

/// Decodes a decrypted payload of any kind and checks its franking
/// commitment over [`franked_plaintext`]. Returns the body, the franking
/// key and the franked plaintext (what a report carries).
pub fn check_conversation_content(
    plaintext: &[u8],
    message_id: &[u8],
    commitment: &[u8],
) -> std::result::Result<(Body, FrankingKey, String), String> {
    checked_content(plaintext, message_id, commitment).map(|(b, k, f, _)| (b, k, f))
}

/// [`check_conversation_content`], and the attachment pointer the message
/// carries: checked as a pointer (`attachments::check_pointer`, key
/// commitment included) and covered by the commitment
/// (`missive_crypto::attachment::franking_commit`). Only a text may carry one.
#[allow(clippy::type_complexity)]
pub fn checked_content(
    plaintext: &[u8],
    message_id: &[u8],
    commitment: &[u8],
) -> std::result::Result<(Body, FrankingKey, String, Option<v1::AttachmentPointer>), String> {
    let content =
        v1::Content::decode(plaintext).map_err(|_| "its content is malformed".to_owned())?;
    let body = content
        .body
        .ok_or_else(|| "it holds no content this version understands".to_owned())?;
    let franked = franked_plaintext(&body)?;
    if franked.len() > franking::MAX_REPORTABLE_BYTES {
        return Err(format!(
            "its content is {} bytes, longer than a report can carry ({} bytes), so it could not be reported",
            franked.len(),
            franking::MAX_REPORTABLE_BYTES
        ));
    }
    let franking_key = FrankingKey::from_bytes(&content.franking_key)
        .map_err(|_| "it carries no valid franking key".to_owned())?;
    let committed = match &content.attachment {
        None => {
            franking::verify_commitment(&franking_key, message_id, franked.as_bytes(), commitment)
        }
        Some(p) => {
            if !matches!(body, Body::Text(_)) {
                return Err("it attaches a file to something that is not a text message".into());
            }
            crate::attachments::check_pointer(p)
                .map_err(|why| format!("its attachment pointer is malformed: {why}"))?;
            missive_crypto::attachment::verify_franking_commitment(
                &franking_key,
                message_id,
                franked.as_bytes(),
                &crate::attachments::binding(p),
                commitment,
            )
        }
    };
    if !committed {
        return Err("its franking commitment does not match its content".into());
    }
    Ok((body, franking_key, franked, content.attachment))
}

/// Checks a reaction: one emoji-like cluster, no letters, digits, spaces or
/// control characters, at most [`MAX_EMOJI_BYTES`].
pub fn valid_emoji(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= MAX_EMOJI_BYTES
        && e.chars().all(|c| {
            !c.is_control() && !c.is_whitespace() && !c.is_ascii_alphanumeric() && c != '\u{fffd}'
        })
        && !e.is_ascii()
}

/// Parses a disappearing timer as typed: `off` (or `0`), or a duration of
/// at least one second such as `3s`, `5m`, `1d`, `1h30m`.
pub fn parse_timer(s: &str) -> Result<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Ok(0);
    }
    let bad = |why: &str| {
        ClientError::Conversation(format!(
            "{:?} is not a timer: {why}. Write `off` or a duration of 1 s or more, such as 30s, 5m, 1h or 1d.",
            crate::display::sanitize_line(s)
        ))
    };
    let d = humantime::parse_duration(s).map_err(|e| bad(&e.to_string()))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(bad("it must be a whole number of seconds, at least 1"));
    }
    if d.as_secs() > MAX_TIMER_SECS {
        return Err(bad("it is longer than 100 years"));
    }
    Ok(d.as_secs())
}

/// A timer in seconds as people write it (`5m`, `1d`, `off`).
pub fn format_timer(secs: u64) -> String {
    if secs == 0 {
        "off".to_owned()
    } else {
        humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
    }
}

// ---- what is sealed with each history row ---------------------------

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// A message named by another (sealed in its row).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, Debug)]
pub(crate) struct RefRecord {
    pub(crate) message_id: String,
    pub(crate) author: String,
}

/// A reaction as stored: one per person.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq, Debug)]
pub(crate) struct ReactionRecord {
    pub(crate) by: String,
    pub(crate) emoji: String,
    pub(crate) at_ms: u64,
}

/// One edit of a message, with what a report of it needs.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct EditRecord {
    pub(crate) message_id: String,
    pub(crate) text: String,
    pub(crate) server_ts_ms: u64,
    #[serde(default)]
    pub(crate) franking_key: String,
    #[serde(default)]
    pub(crate) commitment: String,
    #[serde(default)]
    pub(crate) tag: String,
    #[serde(default)]
    pub(crate) sender_device: u32,
}

impl Drop for EditRecord {
    fn drop(&mut self) {
        self.text.zeroize();
        self.franking_key.zeroize();
    }
}

/// Conversation data sealed inside a history row (schema 3).
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConvRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) quote: Option<RefRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) reactions: Vec<ReactionRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) edits: Vec<EditRecord>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) unsent: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) expire_after_secs: u64,
    /// When this copy is deleted, ms (0: never).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) expires_at_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) delivered_at_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) read_at_ms: u64,
    /// This row is not a message but a timer change to this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timer_event: Option<u64>,
}

impl ConvRecord {
    /// Nothing beyond a plain message (kept out of the sealed JSON).
    pub(crate) fn is_empty(&self) -> bool {
        self.quote.is_none()
            && self.reactions.is_empty()
            && self.edits.is_empty()
            && !self.unsent
            && self.expire_after_secs == 0
            && self.expires_at_ms == 0
            && self.delivered_at_ms == 0
            && self.read_at_ms == 0
            && self.timer_event.is_none()
    }

    /// A conversation event row rather than a message.
    pub(crate) fn is_event(&self) -> bool {
        self.timer_event.is_some()
    }

    /// The text shown: the latest edit's, or the original.
    pub(crate) fn current_text<'a>(&'a self, original: &'a str) -> &'a str {
        if self.unsent {
            return "";
        }
        self.edits.last().map_or(original, |e| e.text.as_str())
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now
    }
}

#[derive(Serialize, Deserialize, Default)]
struct ConversationStateRecord {
    username: String,
    expire_after_secs: u64,
    changed_at_ms: u64,
}

fn timer_of(db: &Db<'_>, contact: &str) -> Result<u64> {
    Ok(match db.conversation_state(contact)? {
        Some(json) => serde_json::from_slice::<ConversationStateRecord>(&json)
            .map(|s| s.expire_after_secs)
            .unwrap_or(0),
        None => 0,
    })
}

fn set_timer_in(db: &Db<'_>, contact: &str, secs: u64) -> Result<()> {
    let rec = ConversationStateRecord {
        username: contact.to_owned(),
        expire_after_secs: secs,
        changed_at_ms: now_ms(),
    };
    let json = serde_json::to_vec(&rec).map_err(|e| ClientError::Protocol(e.to_string()))?;
    db.put_conversation_state(contact, &json)
}

fn read_receipts_on(db: &Db<'_>) -> Result<bool> {
    Ok(db.get_meta_str(META_READ_RECEIPTS)?.as_deref() != Some("off"))
}

// ---- events and views -------------------------------------------------

/// Delivery state of one of our messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptState {
    /// Accepted by the server; no receipt yet.
    Sent,
    /// A device of the recipient has it.
    Delivered,
    /// The recipient was shown it.
    Read,
}

impl ReceiptState {
    /// Lower-case name (`sent`, `delivered`, `read`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Sent => "sent",
            ReceiptState::Delivered => "delivered",
            ReceiptState::Read => "read",
        }
    }
}

/// Something a contact did to the conversation, reported as it arrives
/// (see [`Client::set_conversation_hook`]). Typing indicators exist only
/// as these events: nothing of them is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationEvent {
    /// A receipt for our messages (only those whose state it advanced).
    Receipt {
        /// Who sent it.
        from: String,
        /// Delivered or read.
        state: ReceiptState,
        /// Our message ids.
        message_ids: Vec<Vec<u8>>,
    },
    /// A contact started or stopped typing.
    Typing {
        /// Who.
        from: String,
        /// Started (true) or stopped.
        started: bool,
    },
    /// A reaction was set (Some) or removed (None).
    Reaction {
        /// Who reacted.
        from: String,
        /// The message.
        target: Vec<u8>,
        /// The emoji, or None when removed.
        emoji: Option<String>,
    },
    /// A contact edited one of their messages.
    Edited {
        /// Who.
        from: String,
        /// The message edited.
        target: Vec<u8>,
        /// Its new text.
        text: String,
    },
    /// A contact deleted one of their messages for everyone.
    Unsent {
        /// Who.
        from: String,
        /// The message.
        target: Vec<u8>,
    },
    /// A contact changed the conversation's disappearing timer.
    TimerChanged {
        /// Who.
        from: String,
        /// New timer, seconds (0: off).
        expire_after_secs: u64,
    },
    /// A received message carries a reply or a timer (said before the
    /// message itself is shown).
    MessageDetails {
        /// Sender.
        from: String,
        /// The message.
        message_id: Vec<u8>,
        /// The message it replies to.
        reply_to: Option<Quoted>,
        /// Its disappearing timer, seconds (0: none).
        expire_after_secs: u64,
    },
    /// Disappearing messages reached their time and were deleted.
    Expired {
        /// Contact.
        contact: String,
        /// Their ids.
        message_ids: Vec<Vec<u8>>,
    },
    /// Another device of this account changed the conversation with
    /// `contact` (its copy, protocol v2 fan-out).
    FromOwnDevice {
        /// The conversation.
        contact: String,
        /// What that device did.
        change: OwnDeviceChange,
    },
}

/// What another device of this account did in a conversation, as its copy
/// says (`Content.sent_to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnDeviceChange {
    /// Set (Some) or removed (None) this account's reaction to a message.
    Reaction {
        /// The message.
        target: Vec<u8>,
        /// The emoji, or None when removed.
        emoji: Option<String>,
    },
    /// Edited one of this account's messages.
    Edited {
        /// The message edited.
        target: Vec<u8>,
        /// Its new text.
        text: String,
    },
    /// Deleted one of this account's messages for everyone.
    Unsent {
        /// The message.
        target: Vec<u8>,
    },
    /// Changed the conversation's disappearing timer.
    TimerChanged {
        /// New timer, seconds (0: off).
        expire_after_secs: u64,
    },
    /// Was shown the contact's messages: they are read on this account.
    Read {
        /// The contact's message ids (only those not read before).
        message_ids: Vec<Vec<u8>>,
    },
}

/// A message another one replies to, as this device has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted {
    /// Its id.
    pub message_id: Vec<u8>,
    /// Its author.
    pub author: String,
    /// Its current text, None when this device does not have it (never
    /// received, disappeared or deleted).
    pub text: Option<String>,
}

/// One version of an edited message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// Id of the message that carried this version (the original's for the
    /// first).
    pub message_id: Vec<u8>,
    /// Text.
    pub text: String,
    /// Server time of that message, ms.
    pub server_ts_ms: u64,
}

/// One item of a conversation with everything about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationItem {
    /// The message (for a timer change: empty text, `outgoing` tells who).
    pub entry: HistoryEntry,
    /// Set when this item is a timer change rather than a message.
    pub timer_change: Option<u64>,
    /// The message it replies to.
    pub reply_to: Option<Quoted>,
    /// Reactions, one per person: (who, emoji).
    pub reactions: Vec<(String, String)>,
    /// Every version, oldest first, when the message was edited (empty
    /// otherwise).
    pub edit_history: Vec<Version>,
    /// Deleted for everyone: its text is gone.
    pub unsent: bool,
    /// For our messages: sent, delivered or read.
    pub receipt: Option<ReceiptState>,
    /// For their messages: read on this account, here or on another of
    /// its devices.
    pub read: bool,
    /// When this copy disappears, ms.
    pub expires_at_ms: Option<u64>,
    /// Its disappearing timer, seconds (0: none).
    pub expire_after_secs: u64,
}

/// What receiving one envelope produced besides its history row.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) events: Vec<ConversationEvent>,
    /// (contact, message id) to acknowledge with a delivery receipt.
    pub(crate) delivery: Vec<(String, Vec<u8>)>,
    /// (sender, version, hash) of the sender's device list as its message
    /// names it (checked by `Client::check_list_hints`).
    pub(crate) sender_devices: Option<(String, u64, [u8; 32])>,
}

/// Where conversation events go (see `Client::set_conversation_hook`).
type Hook = Box<dyn FnMut(&ConversationEvent) + Send>;

/// Per-client conversation state that is not stored.
#[derive(Default)]
pub(crate) struct ConvState {
    pub(crate) events: Vec<ConversationEvent>,
    pub(crate) delivery: Vec<(String, Vec<u8>)>,
    pub(crate) read: Vec<(String, Vec<u8>)>,
    /// `recv` is taking a stream's backlog: receipts wait for its end.
    pub(crate) hold_receipts: bool,
    hook: Option<Hook>,
}

impl ConvState {
    pub(crate) fn absorb(&mut self, r: Received) {
        self.events.extend(r.events);
        self.delivery.extend(r.delivery);
    }

    /// Notes messages just shown to the user (read receipts follow).
    pub(crate) fn note_shown(&mut self, entries: &[HistoryEntry]) {
        for e in entries {
            if !e.outgoing && !e.quarantined {
                self.read.push((e.contact.clone(), e.message_id.clone()));
            }
        }
    }

    fn emit(&mut self) {
        let events = std::mem::take(&mut self.events);
        if let Some(h) = self.hook.as_mut() {
            for e in &events {
                h(e);
            }
        }
    }
}

// ---- receiving ----------------------------------------------------------

fn id16(bytes: &[u8], what: &str) -> std::result::Result<(), Refusal> {
    if bytes.len() == MESSAGE_ID_LEN {
        Ok(())
    } else {
        Err(Refusal::Drop(format!(
            "its {what} is not a 16-byte message id"
        )))
    }
}

fn within(window: u64, target_ts: u64, now_ts: u64) -> bool {
    target_ts == 0 || now_ts.saturating_sub(target_ts) <= window
}

/// The one incoming record of `from` with id `id`, if any.
fn their_message(
    db: &Db<'_>,
    from: &str,
    id: &[u8],
) -> std::result::Result<Option<(i64, MessageRecord)>, Refusal> {
    Ok(db
        .find_messages(from, id)?
        .into_iter()
        .find(|(_, r)| !r.outgoing && !r.conv.is_event()))
}

/// The one outgoing record (a message, not an event) with id `id` in the
/// conversation with `contact`, if any.
fn our_message(
    db: &Db<'_>,
    contact: &str,
    id: &[u8],
) -> std::result::Result<Option<(i64, MessageRecord)>, Refusal> {
    Ok(db
        .find_messages(contact, id)?
        .into_iter()
        .find(|(_, r)| r.outgoing && !r.conv.is_event()))
}

/// Applies the copy another device of this account sent of what it sent
/// to `sent_to` (protocol v2 fan-out), inside the caller's receive
/// transaction: a text is stored as sent by us, to be shown once; a
/// reaction, edit, deletion or timer change is applied as this account's
/// own; a read receipt marks the contact's messages read here. Every copy
/// is applied at most once.
pub(crate) fn receive_own_copy(
    db: &Db<'_>,
    me: &str,
    env: &v1::Envelope,
    plaintext: &[u8],
    sent_to: &str,
    out: &mut Received,
) -> std::result::Result<(), Refusal> {
    let commitment = env.franking_commitment.as_slice();
    let (body, _, _, attachment) = checked_content(plaintext, &env.message_id, commitment)?;
    let peer = normalize_username(sent_to)
        .ok()
        .filter(|p| p == sent_to && p != me)
        .ok_or("it comes from another device of this account but names no conversation")?;
    id16(&env.message_id, "message")?;
    let t = match body {
        Body::Text(t) => t,
        other => {
            if let Some(change) = apply_own_change(db, me, &peer, env, other)? {
                out.events.push(ConversationEvent::FromOwnDevice {
                    contact: peer,
                    change,
                });
            }
            return Ok(());
        }
    };
    if t.body.len() > MAX_TEXT_BYTES || t.expire_after_secs > MAX_TIMER_SECS {
        return Err("its text or timer is out of bounds".into());
    }
    if !db.find_messages(&peer, &env.message_id)?.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut conv = ConvRecord::default();
    if let Some(q) = &t.quote {
        id16(&q.message_id, "quote")?;
        conv.quote = Some(RefRecord {
            message_id: hex::encode(&q.message_id),
            author: normalize_username(&q.author)
                .map_err(|_| Refusal::Drop("its quote names no valid author".into()))?,
        });
    }
    if t.expire_after_secs > 0 {
        conv.expire_after_secs = t.expire_after_secs;
        conv.expires_at_ms = now.saturating_add(t.expire_after_secs.saturating_mul(1000));
    }
    let sealed = SealedMessage {
        text: t.body,
        franking_key: String::new(),
        commitment: hex::encode(commitment),
        tag: String::new(),
        sender_device: env.sender_device,
    };
    let (sender_clock_ms, _) = clamp_sender_clock(t.sent_at_ms, env.server_timestamp_ms);
    db.add_outgoing_copy(
        &peer,
        &env.message_id,
        sealed,
        sender_clock_ms,
        env.server_timestamp_ms.min(crate::client::MAX_RFC3339_MS),
        conv,
        attachment.as_ref().map(AttachmentRecord::from_pointer),
    )?;
    Ok(())
}

/// A reaction, edit, deletion, timer change or read receipt another device
/// of this account sent in the conversation with `peer`, applied here as
/// that device applied it; None when there was nothing (left) to change.
fn apply_own_change(
    db: &Db<'_>,
    me: &str,
    peer: &str,
    env: &v1::Envelope,
    body: Body,
) -> std::result::Result<Option<OwnDeviceChange>, Refusal> {
    let server_ts = env.server_timestamp_ms.min(crate::client::MAX_RFC3339_MS);
    let commitment = env.franking_commitment.as_slice();
    match body {
        Body::Reaction(r) => {
            let target = r
                .target
                .as_ref()
                .ok_or("it is a reaction without a target")?;
            id16(&target.message_id, "reaction target")?;
            if !r.emoji.is_empty() && !valid_emoji(&r.emoji) {
                return Err("its reaction is not one emoji".into());
            }
            let ours = target.author == me;
            if !ours && target.author != peer {
                return Err("it reacts to a message of someone outside this conversation".into());
            }
            let found = db
                .find_messages(peer, &target.message_id)?
                .into_iter()
                .find(|(_, rec)| rec.outgoing == ours && !rec.conv.is_event());
            let Some((seq, mut rec)) = found.filter(|(_, rec)| !rec.conv.unsent) else {
                return Ok(None);
            };
            let emoji = set_reaction(&mut rec.conv, me, &r.emoji, server_ts);
            db.reseal_message(seq, &rec)?;
            Ok(Some(OwnDeviceChange::Reaction {
                target: target.message_id.clone(),
                emoji,
            }))
        }
        Body::Edit(e) => {
            id16(&e.target_message_id, "edit target")?;
            if e.body.trim().is_empty() || e.body.len() > MAX_TEXT_BYTES {
                return Err("its edited text is empty or too long".into());
            }
            let found = our_message(db, peer, &e.target_message_id)?;
            let Some((seq, mut rec)) = found.filter(|(_, rec)| !rec.conv.unsent) else {
                return Ok(None);
            };
            if !within(EDIT_WINDOW_MS, rec.server_ts_ms, server_ts) {
                return Err("it edits a message older than 24 hours".into());
            }
            let id = hex::encode(&env.message_id);
            if rec.conv.edits.iter().any(|x| x.message_id == id) {
                return Ok(None);
            }
            rec.conv.edits.push(EditRecord {
                message_id: id,
                text: e.body.clone(),
                server_ts_ms: server_ts,
                franking_key: String::new(),
                commitment: hex::encode(commitment),
                tag: String::new(),
                sender_device: env.sender_device,
            });
            db.reseal_message(seq, &rec)?;
            Ok(Some(OwnDeviceChange::Edited {
                target: e.target_message_id,
                text: e.body,
            }))
        }
        Body::Unsend(u) => {
            id16(&u.target_message_id, "unsend target")?;
            let found = our_message(db, peer, &u.target_message_id)?;
            let Some((seq, mut rec)) = found.filter(|(_, rec)| !rec.conv.unsent) else {
                return Ok(None);
            };
            if !within(UNSEND_WINDOW_MS, rec.server_ts_ms, server_ts) {
                return Err("it deletes a message older than 24 hours".into());
            }
            tombstone(&mut rec);
            db.reseal_message(seq, &rec)?;
            Ok(Some(OwnDeviceChange::Unsent {
                target: u.target_message_id,
            }))
        }
        Body::Timer(t) => {
            if t.expire_after_secs > MAX_TIMER_SECS {
                return Err("its disappearing timer is longer than 100 years".into());
            }
            if !db.find_messages(peer, &env.message_id)?.is_empty() {
                return Ok(None);
            }
            set_timer_in(db, peer, t.expire_after_secs)?;
            let (sender_clock_ms, _) = clamp_sender_clock(t.sent_at_ms, env.server_timestamp_ms);
            let sealed = SealedMessage {
                text: String::new(),
                franking_key: String::new(),
                commitment: hex::encode(commitment),
                tag: String::new(),
                sender_device: env.sender_device,
            };
            db.add_outgoing_with(
                peer,
                &env.message_id,
                sealed,
                sender_clock_ms,
                server_ts,
                ConvRecord {
                    timer_event: Some(t.expire_after_secs),
                    ..ConvRecord::default()
                },
                None,
            )?;
            Ok(Some(OwnDeviceChange::TimerChanged {
                expire_after_secs: t.expire_after_secs,
            }))
        }
        Body::Receipt(r) if receipt_kind(r.r#type) == Some("read") => {
            if r.message_ids.len() > MAX_RECEIPT_IDS {
                return Err(format!("it acknowledges more than {MAX_RECEIPT_IDS} messages").into());
            }
            let mut newly_read = Vec::new();
            for id in r.message_ids {
                id16(&id, "receipt")?;
                if let Some((seq, mut rec)) = their_message(db, peer, &id)?
                    && rec.conv.read_at_ms == 0
                {
                    rec.conv.read_at_ms = server_ts.max(1);
                    db.reseal_message(seq, &rec)?;
                    newly_read.push(id);
                }
            }
            Ok((!newly_read.is_empty()).then_some(OwnDeviceChange::Read {
                message_ids: newly_read,
            }))
        }
        Body::Text(_) | Body::Receipt(_) | Body::Typing(_) => Err(
            "another device of this account copied a delivery receipt or a typing indicator, which are never copied"
                .into(),
        ),
    }
}

pub(crate) fn receive_content(
    db: &Db<'_>,
    me: &str,
    env: &v1::Envelope,
    plaintext: &[u8],
    quarantine: Option<&PublicIdentity>,
    out: &mut Received,
) -> std::result::Result<(), Refusal> {
    let commitment = env.franking_commitment.as_slice();
    let (body, franking_key, _, attachment) =
        checked_content(plaintext, &env.message_id, commitment)?;
    let sender = env.sender.as_str();
    let server_ts = env.server_timestamp_ms.min(crate::client::MAX_RFC3339_MS);
    let now = now_ms();
    let sealed = |text: String| SealedMessage {
        text,
        franking_key: hex::encode(franking_key.as_bytes()),
        commitment: hex::encode(commitment),
        tag: hex::encode(&env.franking_tag),
        sender_device: env.sender_device,
    };
    if quarantine.is_some() && !matches!(body, Body::Text(_)) {
        return Err(Refusal::Drop(
            "it comes from a changed identity key you have not accepted, and only its text messages are kept apart for you to see".into(),
        ));
    }
    match body {
        Body::Text(t) => {
            if t.body.len() > MAX_TEXT_BYTES {
                return Err(Refusal::Drop(format!(
                    "its text is {} bytes, more than {MAX_TEXT_BYTES}",
                    t.body.len()
                )));
            }
            if t.expire_after_secs > MAX_TIMER_SECS {
                return Err("its disappearing timer is longer than 100 years".into());
            }
            let (sender_clock_ms, sender_clock_clamped) =
                clamp_sender_clock(t.sent_at_ms, env.server_timestamp_ms);
            let mut conv = ConvRecord::default();
            if let Some(q) = &t.quote {
                id16(&q.message_id, "quote")?;
                let author = normalize_username(&q.author)
                    .map_err(|_| Refusal::Drop("its quote names no valid author".into()))?;
                conv.quote = Some(RefRecord {
                    message_id: hex::encode(&q.message_id),
                    author,
                });
            }
            if t.expire_after_secs > 0 {
                conv.expire_after_secs = t.expire_after_secs;
                // The recipient's copy lives this long from its arrival.
                conv.expires_at_ms = now.saturating_add(t.expire_after_secs.saturating_mul(1000));
            }
            if quarantine.is_none() && (conv.quote.is_some() || t.expire_after_secs > 0) {
                out.events.push(ConversationEvent::MessageDetails {
                    from: sender.to_owned(),
                    message_id: env.message_id.clone(),
                    reply_to: conv
                        .quote
                        .as_ref()
                        .map(|q| quoted(db, sender, me, q))
                        .transpose()?,
                    expire_after_secs: t.expire_after_secs,
                });
            }
            db.add_incoming_with(
                NewIncoming {
                    sender,
                    message_id: &env.message_id,
                    sealed: sealed(t.body.clone()),
                    sender_clock_ms,
                    sender_clock_clamped,
                    server_ts_ms: server_ts,
                    quarantine_identity: quarantine,
                },
                conv,
                false,
                attachment.as_ref().map(AttachmentRecord::from_pointer),
            )?;
            if quarantine.is_none() {
                out.delivery
                    .push((sender.to_owned(), env.message_id.clone()));
            }
        }
        Body::Receipt(r) => {
            let state = match receipt_kind(r.r#type) {
                Some("read") => ReceiptState::Read,
                _ => ReceiptState::Delivered,
            };
            if r.message_ids.len() > MAX_RECEIPT_IDS {
                return Err(format!("it acknowledges more than {MAX_RECEIPT_IDS} messages").into());
            }
            // Reciprocity, as Signal: with read receipts off, none are shown.
            if state == ReceiptState::Read && !read_receipts_on(db)? {
                return Ok(());
            }
            let mut advanced = Vec::new();
            for id in &r.message_ids {
                id16(id, "receipt")?;
                for (seq, mut rec) in db.find_messages(sender, id)? {
                    if !rec.outgoing || rec.conv.is_event() {
                        continue;
                    }
                    let mut changed = false;
                    if rec.conv.delivered_at_ms == 0 {
                        rec.conv.delivered_at_ms = server_ts.max(1);
                        changed = true;
                    }
                    if state == ReceiptState::Read && rec.conv.read_at_ms == 0 {
                        rec.conv.read_at_ms = server_ts.max(1);
                        changed = true;
                    }
                    if changed {
                        db.reseal_message(seq, &rec)?;
                        advanced.push(id.clone());
                    }
                }
            }
            if !advanced.is_empty() {
                out.events.push(ConversationEvent::Receipt {
                    from: sender.to_owned(),
                    state,
                    message_ids: advanced,
                });
            }
        }
        Body::Typing(t) => {
            // Never stored: only said, and only while it still means something.
            if server_ts.saturating_add(TYPING_FRESH_MS) >= now {
                out.events.push(ConversationEvent::Typing {
                    from: sender.to_owned(),
                    started: t.started,
                });
            }
        }
        Body::Reaction(r) => {
            let target = r
                .target
                .as_ref()
                .ok_or("it is a reaction without a target")?;
            id16(&target.message_id, "reaction target")?;
            if !r.emoji.is_empty() && !valid_emoji(&r.emoji) {
                return Err("its reaction is not one emoji".into());
            }
            let ours = target.author == me;
            if !ours && target.author != sender {
                return Err("it reacts to a message of someone outside this conversation".into());
            }
            let found = db
                .find_messages(sender, &target.message_id)?
                .into_iter()
                .find(|(_, rec)| rec.outgoing == ours && !rec.conv.is_event());
            // A message that disappeared or was deleted: nothing to react to.
            let Some((seq, mut rec)) = found else {
                return Ok(());
            };
            if rec.conv.unsent {
                return Ok(());
            }
            let emoji = set_reaction(&mut rec.conv, sender, &r.emoji, server_ts);
            db.reseal_message(seq, &rec)?;
            out.events.push(ConversationEvent::Reaction {
                from: sender.to_owned(),
                target: target.message_id.clone(),
                emoji,
            });
        }
        Body::Edit(e) => {
            id16(&e.target_message_id, "edit target")?;
            if e.body.trim().is_empty() {
                return Err("it edits a message into an empty one".into());
            }
            if e.body.len() > MAX_TEXT_BYTES {
                return Err(format!("its text is more than {MAX_TEXT_BYTES} bytes").into());
            }
            let Some((seq, mut rec)) = their_message(db, sender, &e.target_message_id)? else {
                return Ok(());
            };
            if rec.conv.unsent {
                return Ok(());
            }
            if !within(EDIT_WINDOW_MS, rec.server_ts_ms, server_ts) {
                return Err("it edits a message older than 24 hours".into());
            }
            let id = hex::encode(&env.message_id);
            if rec.conv.edits.iter().any(|x| x.message_id == id) {
                return Ok(());
            }
            rec.conv.edits.push(EditRecord {
                message_id: id,
                text: e.body.clone(),
                server_ts_ms: server_ts,
                franking_key: hex::encode(franking_key.as_bytes()),
                commitment: hex::encode(commitment),
                tag: hex::encode(&env.franking_tag),
                sender_device: env.sender_device,
            });
            db.reseal_message(seq, &rec)?;
            out.events.push(ConversationEvent::Edited {
                from: sender.to_owned(),
                target: e.target_message_id.clone(),
                text: e.body.clone(),
            });
        }
        Body::Unsend(u) => {
            id16(&u.target_message_id, "unsend target")?;
            let Some((seq, mut rec)) = their_message(db, sender, &u.target_message_id)? else {
                return Ok(());
            };
            if rec.conv.unsent {
                return Ok(());
            }
            if !within(UNSEND_WINDOW_MS, rec.server_ts_ms, server_ts) {
                return Err("it deletes a message older than 24 hours".into());
            }
            tombstone(&mut rec);
            db.reseal_message(seq, &rec)?;
            out.events.push(ConversationEvent::Unsent {
                from: sender.to_owned(),
                target: u.target_message_id.clone(),
            });
        }
        Body::Timer(t) => {
            if t.expire_after_secs > MAX_TIMER_SECS {
                return Err("its disappearing timer is longer than 100 years".into());
            }
            set_timer_in(db, sender, t.expire_after_secs)?;
            let (sender_clock_ms, sender_clock_clamped) =
                clamp_sender_clock(t.sent_at_ms, env.server_timestamp_ms);
            db.add_incoming_with(
                NewIncoming {
                    sender,
                    message_id: &env.message_id,
                    sealed: sealed(String::new()),
                    sender_clock_ms,
                    sender_clock_clamped,
                    server_ts_ms: server_ts,
                    quarantine_identity: None,
                },
                ConvRecord {
                    timer_event: Some(t.expire_after_secs),
                    ..ConvRecord::default()
                },
                true,
                None,
            )?;
            out.events.push(ConversationEvent::TimerChanged {
                from: sender.to_owned(),
                expire_after_secs: t.expire_after_secs,
            });
        }
    }
    Ok(())
}

/// Sets (or with an empty emoji removes) `by`'s reaction; returns the new one.
fn set_reaction(conv: &mut ConvRecord, by: &str, emoji: &str, at_ms: u64) -> Option<String> {
    conv.reactions.retain(|r| r.by != by);
    if emoji.is_empty() {
        return None;
    }
    conv.reactions.push(ReactionRecord {
        by: by.to_owned(),
        emoji: emoji.to_owned(),
        at_ms,
    });
    Some(emoji.to_owned())
}

/// Deletes a message's content, keeping a tombstone.
fn tombstone(rec: &mut MessageRecord) {
    rec.body.text.zeroize();
    rec.body.text.clear();
    rec.conv.edits.clear();
    rec.conv.reactions.clear();
    rec.conv.quote = None;
    rec.conv.unsent = true;
}

fn quoted(
    db: &Db<'_>,
    contact: &str,
    me: &str,
    q: &RefRecord,
) -> std::result::Result<Quoted, Refusal> {
    let id = hex::decode(&q.message_id).unwrap_or_default();
    let ours = q.author == me;
    let text = db
        .find_messages(contact, &id)?
        .into_iter()
        .find(|(_, r)| r.outgoing == ours && !r.conv.is_event() && !r.conv.unsent)
        .filter(|(_, r)| !r.conv.expired(now_ms()))
        .map(|(_, r)| r.conv.current_text(&r.body.text).to_owned());
    Ok(Quoted {
        message_id: id,
        author: q.author.clone(),
        text,
    })
}

/// Deletes every disappearing message whose time has come (in one write
/// transaction; `secure_delete` overwrites the rows), then checkpoints the
/// WAL so the overwritten pages reach the database file.
pub(crate) fn purge_expired(store: &mut Store) -> Result<Vec<ConversationEvent>> {
    let now = now_ms();
    // Read first: most calls find nothing to delete and write nothing.
    let due = store
        .db()
        .expiring_records()?
        .into_iter()
        .any(|(_, r)| r.conv.expired(now));
    if !due {
        return Ok(Vec::new());
    }
    let events = store.write(|db| {
        let mut by_contact: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for (seq, rec) in db.expiring_records()? {
            if rec.conv.expired(now) {
                db.delete_message(seq)?;
                by_contact
                    .entry(rec.contact.clone())
                    .or_default()
                    .push(hex::decode(&rec.message_id).unwrap_or_default());
            }
        }
        let mut events: Vec<ConversationEvent> = by_contact
            .into_iter()
            .map(|(contact, message_ids)| ConversationEvent::Expired {
                contact,
                message_ids,
            })
            .collect();
        events.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        Ok(events)
    })?;
    store.db().checkpoint()?;
    Ok(events)
}

/// The franked plaintext of a stored incoming text (its body rebuilt from
/// the record: text, quote, timer).
fn franked_of_record(rec: &MessageRecord) -> std::result::Result<String, String> {
    franked_plaintext(&Body::Text(v1::TextMessage {
        body: rec.body.text.clone(),
        sent_at_ms: 0,
        quote: rec.conv.quote.as_ref().map(|q| v1::MessageRef {
            message_id: hex::decode(&q.message_id).unwrap_or_default(),
            author: q.author.clone(),
        }),
        expire_after_secs: rec.conv.expire_after_secs,
    }))
}

/// What is needed to report the incoming message `message_id` (from
/// `sender` when given): per sender, the original then each of its edits,
/// every one with the exact franked plaintext its commitment covers.
pub(crate) fn report_material(
    db: &Db<'_>,
    message_id: &[u8],
    sender: Option<&str>,
) -> Result<Vec<Vec<crate::store::ReportMaterial>>> {
    let mut out: Vec<Vec<crate::store::ReportMaterial>> = Vec::new();
    let now = now_ms();
    for (_, rec) in db.records_by_id(message_id)? {
        // A group message's sender is its author; its events are not
        // messages anyone sent.
        let author = rec.group.as_ref().map_or(&rec.contact, |g| &g.author);
        if rec.outgoing
            || rec.conv.is_event()
            || rec.group.as_ref().is_some_and(|g| g.event)
            || rec.conv.unsent
            || rec.conv.expired(now)
            || sender.is_some_and(|s| s != author)
        {
            continue;
        }
        if out
            .iter()
            .any(|v| v.first().is_some_and(|m| &m.sender == author))
        {
            continue;
        }
        let group_id = match &rec.group {
            Some(g) => hex::decode(&g.id).map_err(|e| ClientError::Group(e.to_string()))?,
            None => Vec::new(),
        };
        let mut sealed = rec.body.clone();
        sealed.text = franked_of_record(&rec).map_err(ClientError::Conversation)?;
        let mut versions = vec![crate::store::ReportMaterial {
            group_id,
            sender: author.clone(),
            server_ts_ms: rec.server_ts_ms,
            message_id: message_id.to_vec(),
            sealed,
            attachment: rec
                .attachment
                .as_ref()
                .map(AttachmentRecord::pointer)
                .transpose()?,
        }];
        for e in &rec.conv.edits {
            let edit_id = hex::decode(&e.message_id).unwrap_or_default();
            let franked = franked_plaintext(&Body::Edit(v1::EditMessage {
                target_message_id: message_id.to_vec(),
                body: e.text.clone(),
                sent_at_ms: 0,
            }))
            .map_err(ClientError::Conversation)?;
            versions.push(crate::store::ReportMaterial {
                sender: rec.contact.clone(),
                server_ts_ms: e.server_ts_ms,
                message_id: edit_id,
                sealed: SealedMessage {
                    text: franked,
                    franking_key: e.franking_key.clone(),
                    commitment: e.commitment.clone(),
                    tag: e.tag.clone(),
                    sender_device: e.sender_device,
                },
                attachment: None,
                group_id: Vec::new(),
            });
        }
        out.push(versions);
    }
    Ok(out)
}

// ---- the client's conversation API --------------------------------------

/// What [`Client::resolve`] found.
struct Target {
    message_id: Vec<u8>,
    ours: bool,
    seq: i64,
    rec: MessageRecord,
}

impl Client {
    /// Calls `hook` with every conversation event as it arrives (receipts,
    /// typing, reactions, edits, deletions, timer changes, expiries),
    /// during `recv` or the chat's receive loop.
    pub fn set_conversation_hook(&mut self, hook: impl FnMut(&ConversationEvent) + Send + 'static) {
        self.conv_state().hook = Some(Box::new(hook));
    }

    /// Whether this account sends read receipts (and shows others').
    pub fn read_receipts(&self) -> Result<bool> {
        read_receipts_on(&self.store().db())
    }

    /// Turns read receipts on or off for this account (as Signal: with them
    /// off, others' read receipts are not shown either). Delivery receipts
    /// are always sent.
    pub fn set_read_receipts(&mut self, on: bool) -> Result<()> {
        self.store_mut()
            .write(|db| db.set_meta(META_READ_RECEIPTS, if on { b"on" } else { b"off" }))
    }

    /// The disappearing timer of the conversation with `contact`, seconds.
    pub fn conversation_timer(&self, contact: &str) -> Result<u64> {
        let contact = normalize_username(contact)?;
        timer_of(&self.store().db(), &contact)
    }

    /// The conversation with `contact`, oldest first, with replies,
    /// reactions, edit histories, tombstones, receipt states and timer
    /// changes. Disappeared messages are deleted first.
    pub fn conversation(&mut self, contact: &str) -> Result<Vec<ConversationItem>> {
        let contact = normalize_username(contact)?;
        if self.store().contact(&contact)?.is_none() {
            return Err(ClientError::UnknownContact(contact));
        }
        let expired = purge_expired(self.store_mut())?;
        self.conv_state().events.extend(expired);
        let me = self.username().to_owned();
        let db = self.store().db();
        let records = db.conversation_records(&contact)?;
        let now = now_ms();
        let mut texts: HashMap<(String, bool), Option<String>> = HashMap::new();
        for (_, r) in &records {
            if !r.conv.is_event() && !r.conv.expired(now) {
                let text = (!r.conv.unsent).then(|| r.conv.current_text(&r.body.text).to_owned());
                texts.insert((r.message_id.clone(), r.outgoing), text);
            }
        }
        let mut out = Vec::with_capacity(records.len());
        for (seq, r) in records {
            if r.conv.expired(now) {
                continue;
            }
            let entry = db.entry(seq, &r)?;
            let reply_to = r.conv.quote.as_ref().map(|q| Quoted {
                message_id: hex::decode(&q.message_id).unwrap_or_default(),
                author: q.author.clone(),
                text: texts
                    .get(&(q.message_id.clone(), q.author == me))
                    .cloned()
                    .flatten(),
            });
            let edit_history = if r.conv.edits.is_empty() {
                Vec::new()
            } else {
                let mut v = vec![Version {
                    message_id: entry.message_id.clone(),
                    text: r.body.text.clone(),
                    server_ts_ms: r.server_ts_ms,
                }];
                v.extend(r.conv.edits.iter().map(|e| Version {
                    message_id: hex::decode(&e.message_id).unwrap_or_default(),
                    text: e.text.clone(),
                    server_ts_ms: e.server_ts_ms,
                }));
                v
            };
            let state = if r.conv.read_at_ms > 0 {
                ReceiptState::Read
            } else if r.conv.delivered_at_ms > 0 {
                ReceiptState::Delivered
            } else {
                ReceiptState::Sent
            };
            let receipt = (r.outgoing && r.conv.timer_event.is_none()).then_some(state);
            out.push(ConversationItem {
                entry,
                timer_change: r.conv.timer_event,
                reply_to,
                reactions: r
                    .conv
                    .reactions
                    .iter()
                    .map(|x| (x.by.clone(), x.emoji.clone()))
                    .collect(),
                edit_history,
                unsent: r.conv.unsent,
                receipt,
                read: !r.outgoing && r.conv.read_at_ms > 0,
                expires_at_ms: (r.conv.expires_at_ms > 0).then_some(r.conv.expires_at_ms),
                expire_after_secs: r.conv.expire_after_secs,
            });
        }
        Ok(out)
    }

    /// Finds the message `id` (full hex, or an unambiguous prefix of at
    /// least 4 hex digits) in the conversation with `contact`.
    fn resolve(&self, contact: &str, id: &str) -> Result<Target> {
        let id = id.trim().to_ascii_lowercase();
        let unknown = || {
            ClientError::Conversation(format!(
                "no message with id {} in your conversation with {contact}; `missive history {contact} --json` lists ids",
                crate::display::sanitize_line(&id)
            ))
        };
        if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let now = now_ms();
        let mut found: Vec<(i64, MessageRecord)> = self
            .store()
            .db()
            .conversation_records(contact)?
            .into_iter()
            .filter(|(_, r)| {
                !r.conv.is_event() && !r.conv.expired(now) && r.message_id.starts_with(&id)
            })
            .collect();
        if found.len() > 1 {
            return Err(ClientError::Conversation(format!(
                "{} messages with {contact} have ids starting with {id}; give more digits",
                found.len()
            )));
        }
        let (seq, rec) = found.pop().ok_or_else(unknown)?;
        Ok(Target {
            message_id: hex::decode(&rec.message_id).map_err(|_| unknown())?,
            ours: rec.outgoing,
            seq,
            rec,
        })
    }

    fn known(&self, contact: &str) -> Result<String> {
        let contact = normalize_username(contact)?;
        if contact == self.username() {
            return Err(ClientError::SendToSelf);
        }
        if self.store().contact(&contact)?.is_none() {
            return Err(ClientError::UnknownContact(contact));
        }
        Ok(contact)
    }

    /// Sends `text` to `recipient` (replying to `reply_to`, a message id of
    /// the conversation, when given), under the conversation's timer.
    pub async fn send_text(
        &mut self,
        recipient: &str,
        text: &str,
        reply_to: Option<&str>,
    ) -> Result<Sent> {
        self.send_text_with(recipient, text, reply_to, None).await
    }

    /// [`Client::send_text`] with a file already uploaded
    /// (`Client::upload_attachment`): its pointer goes inside the franked
    /// `Content`, `sent_path` is remembered in our history. With a file the
    /// text (its caption) may be empty.
    pub async fn send_text_with(
        &mut self,
        recipient: &str,
        text: &str,
        reply_to: Option<&str>,
        attachment: Option<(&v1::AttachmentPointer, &std::path::Path)>,
    ) -> Result<Sent> {
        let recipient = normalize_username(recipient)?;
        if text.trim().is_empty() && attachment.is_none() {
            return Err(ClientError::EmptyMessage);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::MessageTooLong(text.len()));
        }
        let quote = match reply_to {
            Some(id) => {
                let recipient = self.known(&recipient)?;
                let t = self.resolve(&recipient, id)?;
                if t.rec.conv.unsent {
                    return Err(ClientError::Conversation(
                        "that message was deleted; there is nothing to reply to".into(),
                    ));
                }
                Some(v1::MessageRef {
                    message_id: t.message_id,
                    author: if t.ours {
                        self.username().to_owned()
                    } else {
                        recipient.clone()
                    },
                })
            }
            None => None,
        };
        let timer = timer_of(&self.store().db(), &recipient)?;
        let sent_at_ms = now_ms();
        let body = Body::Text(v1::TextMessage {
            body: text.to_owned(),
            sent_at_ms,
            quote: quote.clone(),
            expire_after_secs: timer,
        });
        let franked_len = franked_plaintext(&body)
            .map_err(ClientError::Conversation)?
            .len();
        if franked_len > franking::MAX_REPORTABLE_BYTES {
            return Err(ClientError::MessageTooLong(franked_len));
        }
        let sent = self
            .send_content_with(&recipient, body, attachment.map(|(p, _)| p))
            .await?;
        let attachment = attachment.map(|(p, path)| {
            let mut rec = AttachmentRecord::from_pointer(p);
            rec.saved_path = Some(path.to_string_lossy().into_owned());
            rec
        });
        let conv = ConvRecord {
            quote: quote.map(|q| RefRecord {
                message_id: hex::encode(&q.message_id),
                author: q.author,
            }),
            expire_after_secs: timer,
            expires_at_ms: if timer > 0 {
                sent_at_ms.saturating_add(timer.saturating_mul(1000))
            } else {
                0
            },
            ..ConvRecord::default()
        };
        let sealed = SealedMessage {
            text: text.to_owned(),
            franking_key: String::new(),
            commitment: sent.commitment_hex.clone(),
            tag: String::new(),
            sender_device: self.device(),
        };
        self.store_mut().write(|db| {
            db.add_outgoing_with(
                &recipient,
                &sent.message_id,
                sealed,
                sent_at_ms,
                sent.server_timestamp_ms,
                conv,
                attachment,
            )
        })?;
        Ok(sent.public())
    }

    /// Reacts to message `id` of the conversation with `contact` with
    /// `emoji`, or removes this account's reaction (`None`).
    pub async fn react(&mut self, contact: &str, id: &str, emoji: Option<&str>) -> Result<Sent> {
        let contact = self.known(contact)?;
        let emoji = emoji.map(str::trim).unwrap_or("");
        if !emoji.is_empty() && !valid_emoji(emoji) {
            return Err(ClientError::Conversation(format!(
                "{:?} is not one emoji; react with a single emoji such as 👍",
                crate::display::sanitize_line(emoji)
            )));
        }
        let t = self.resolve(&contact, id)?;
        if t.rec.conv.unsent {
            return Err(ClientError::Conversation(
                "that message was deleted; there is nothing to react to".into(),
            ));
        }
        let me = self.username().to_owned();
        let body = Body::Reaction(v1::ReactionMessage {
            target: Some(v1::MessageRef {
                message_id: t.message_id.clone(),
                author: if t.ours { me.clone() } else { contact.clone() },
            }),
            emoji: emoji.to_owned(),
            sent_at_ms: now_ms(),
        });
        let sent = self.send_content(&contact, body).await?;
        let (seq, target_id) = (t.seq, t.message_id.clone());
        self.store_mut().write(|db| {
            // Re-read inside the write: another process may have changed it.
            if let Some((s, mut rec)) = db
                .find_messages(&contact, &target_id)?
                .into_iter()
                .find(|(s, _)| *s == seq)
            {
                set_reaction(&mut rec.conv, &me, emoji, sent.server_timestamp_ms);
                db.reseal_message(s, &rec)?;
            }
            Ok(())
        })?;
        Ok(sent.public())
    }

    /// Replaces the text of our message `id` to `contact` (within 24 h).
    pub async fn edit(&mut self, contact: &str, id: &str, text: &str) -> Result<Sent> {
        let contact = self.known(contact)?;
        if text.trim().is_empty() {
            return Err(ClientError::EmptyMessage);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::MessageTooLong(text.len()));
        }
        let t = self.resolve(&contact, id)?;
        if !t.ours {
            return Err(ClientError::Conversation(
                "you can only edit your own messages".into(),
            ));
        }
        if t.rec.conv.unsent {
            return Err(ClientError::Conversation(
                "that message was deleted for everyone; it cannot be edited".into(),
            ));
        }
        if !within(EDIT_WINDOW_MS, t.rec.server_ts_ms, now_ms()) {
            return Err(ClientError::Conversation(
                "that message is more than 24 hours old; it can no longer be edited".into(),
            ));
        }
        let body = Body::Edit(v1::EditMessage {
            target_message_id: t.message_id.clone(),
            body: text.to_owned(),
            sent_at_ms: now_ms(),
        });
        let sent = self.send_content(&contact, body).await?;
        let seq = t.seq;
        let target_id = t.message_id.clone();
        let device = self.device();
        self.store_mut().write(|db| {
            if let Some((s, mut rec)) = db
                .find_messages(&contact, &target_id)?
                .into_iter()
                .find(|(s, _)| *s == seq)
            {
                rec.conv.edits.push(EditRecord {
                    message_id: hex::encode(sent.message_id),
                    text: text.to_owned(),
                    server_ts_ms: sent.server_timestamp_ms,
                    franking_key: String::new(),
                    commitment: sent.commitment_hex.clone(),
                    tag: String::new(),
                    sender_device: device,
                });
                db.reseal_message(s, &rec)?;
            }
            Ok(())
        })?;
        Ok(sent.public())
    }

    /// Deletes our message `id` to `contact` for everyone (within 24 h).
    pub async fn unsend(&mut self, contact: &str, id: &str) -> Result<Sent> {
        let contact = self.known(contact)?;
        let t = self.resolve(&contact, id)?;
        if !t.ours {
            return Err(ClientError::Conversation(
                "you can only delete your own messages for everyone".into(),
            ));
        }
        if t.rec.conv.unsent {
            return Err(ClientError::Conversation(
                "that message was already deleted for everyone".into(),
            ));
        }
        if !within(UNSEND_WINDOW_MS, t.rec.server_ts_ms, now_ms()) {
            return Err(ClientError::Conversation(
                "that message is more than 24 hours old; it can no longer be deleted for everyone"
                    .into(),
            ));
        }
        let body = Body::Unsend(v1::UnsendMessage {
            target_message_id: t.message_id.clone(),
            sent_at_ms: now_ms(),
        });
        let sent = self.send_content(&contact, body).await?;
        let seq = t.seq;
        self.store_mut().write(|db| {
            if let Some((s, mut rec)) = db
                .find_messages(&contact, &t.message_id)?
                .into_iter()
                .find(|(s, _)| *s == seq)
            {
                tombstone(&mut rec);
                db.reseal_message(s, &rec)?;
            }
            Ok(())
        })?;
        self.store().db().checkpoint()?;
        Ok(sent.public())
    }

    /// Sets the disappearing timer of the conversation with `contact`
    /// (seconds, 0 for off) and tells them.
    pub async fn set_timer(&mut self, contact: &str, secs: u64) -> Result<Sent> {
        let contact = self.known(contact)?;
        if secs > MAX_TIMER_SECS {
            return Err(ClientError::Conversation(
                "a disappearing timer can be at most 100 years".into(),
            ));
        }
        let sent_at_ms = now_ms();
        let body = Body::Timer(v1::TimerUpdate {
            expire_after_secs: secs,
            sent_at_ms,
        });
        let sent = self.send_content(&contact, body).await?;
        let sealed = SealedMessage {
            text: String::new(),
            franking_key: String::new(),
            commitment: sent.commitment_hex.clone(),
            tag: String::new(),
            sender_device: self.device(),
        };
        self.store_mut().write(|db| {
            set_timer_in(db, &contact, secs)?;
            db.add_outgoing_with(
                &contact,
                &sent.message_id,
                sealed,
                sent_at_ms,
                sent.server_timestamp_ms,
                ConvRecord {
                    timer_event: Some(secs),
                    ..ConvRecord::default()
                },
                None,
            )
        })?;
        Ok(sent.public())
    }

    /// Tells `contact` that we started or stopped typing. Nothing is stored:
    /// it goes online-only (`SendRequest.online_only`), so only the
    /// contact's devices with an open receive stream get it, and the server
    /// never writes it down.
    pub async fn send_typing(&mut self, contact: &str, started: bool) -> Result<()> {
        let contact = self.known(contact)?;
        let body = Body::Typing(v1::TypingMessage {
            started,
            sent_at_ms: now_ms(),
        });
        self.send_content(&contact, body).await.map(|_| ())
    }

    /// Sends the receipts due: delivery receipts for messages stored since
    /// the last call, read receipts (when on) for messages shown. Returns
    /// warnings (a receipt that could not be sent is not retried).
    pub async fn send_pending_receipts(&mut self) -> Vec<String> {
        let delivery = std::mem::take(&mut self.conv_state().delivery);
        let shown = std::mem::take(&mut self.conv_state().read);
        let read_on = self.read_receipts().unwrap_or(true);
        let read_ids: std::collections::HashSet<&(String, Vec<u8>)> = shown.iter().collect();
        let mut warnings = Vec::new();
        let marked = if shown.is_empty() {
            Ok(Vec::new())
        } else {
            self.store_mut().write(|db| newly_read(db, &shown))
        };
        let read = match marked {
            Ok(r) => r,
            Err(e) => {
                warnings.push(format!("could not note messages as read: {e}"));
                shown.clone()
            }
        };
        let mut batches: Vec<(String, v1::receipt_message::Type, Vec<Vec<u8>>)> = Vec::new();
        let mut push = |c: &str, t: v1::receipt_message::Type, id: &[u8]| match batches
            .iter_mut()
            .find(|(bc, bt, ids)| bc == c && *bt == t && ids.len() < MAX_RECEIPT_IDS)
        {
            Some((_, _, ids)) => ids.push(id.to_vec()),
            None => batches.push((c.to_owned(), t, vec![id.to_vec()])),
        };
        for (c, id) in &delivery {
            // A read receipt sent now also says delivered.
            if !(read_on && read_ids.contains(&(c.clone(), id.clone()))) {
                push(c, v1::receipt_message::Type::Delivery, id);
            }
        }
        for (c, id) in &read {
            push(c, v1::receipt_message::Type::Read, id);
        }
        for (contact, t, ids) in batches {
            let body = Body::Receipt(v1::ReceiptMessage {
                r#type: t as i32,
                message_ids: ids,
                sent_at_ms: now_ms(),
            });
            // With read receipts off the contact learns nothing, but this
            // account's other devices still learn what was read here.
            let result = if read_on || t != v1::receipt_message::Type::Read {
                self.send_content(&contact, body).await.map(|_| ())
            } else {
                self.send_to_own_devices(&contact, body).await
            };
            if let Err(e) = result {
                warnings.push(format!("could not send a receipt to {contact}: {e}"));
            }
        }
        warnings
    }

    /// After an envelope was stored and acknowledged: delivery receipts,
    /// expiries, and the conversation events to the hook.
    pub(crate) async fn after_envelope(&mut self) -> Vec<String> {
        let warnings = if self.conv_state().hold_receipts {
            Vec::new()
        } else {
            self.send_pending_receipts().await
        };
        match purge_expired(self.store_mut()) {
            Ok(ev) => self.conv_state().events.extend(ev),
            Err(e) => {
                let mut w = warnings;
                w.push(format!("could not delete disappeared messages: {e}"));
                self.conv_state().emit();
                return w;
            }
        }
        self.conv_state().emit();
        warnings
    }

    /// Says the conversation events gathered so far to the hook.
    pub fn emit_conversation_events(&mut self) {
        self.conv_state().emit();
    }

    /// Notes that `contact`'s messages `message_ids` were shown to the user:
    /// read receipts for them go with the next
    /// [`Client::send_pending_receipts`] (when read receipts are on).
    pub fn mark_read(&mut self, contact: &str, message_ids: &[Vec<u8>]) {
        let read = &mut self.conv_state().read;
        for id in message_ids {
            read.push((contact.to_owned(), id.clone()));
        }
    }

    /// Deletes the disappearing messages whose time has come (history, and
    /// disk with `secure_delete`) and says them to the hook as `Expired`.
    pub fn expire_disappeared(&mut self) -> Result<()> {
        let expired = purge_expired(self.store_mut())?;
        self.conv_state().events.extend(expired);
        self.conv_state().emit();
        Ok(())
    }
}

/// Marks the contacts' messages just shown here as read on this account and
/// returns those not read before: one another device already read was
/// receipted by that device.
fn newly_read(db: &Db<'_>, shown: &[(String, Vec<u8>)]) -> Result<Vec<(String, Vec<u8>)>> {
    let now = now_ms();
    let mut out = Vec::with_capacity(shown.len());
    for (contact, id) in shown {
        let found = db
            .find_messages(contact, id)?
            .into_iter()
            .find(|(_, r)| !r.outgoing && !r.conv.is_event());
        match found {
            Some((_, rec)) if rec.conv.read_at_ms > 0 => {}
            Some((seq, mut rec)) => {
                rec.conv.read_at_ms = now.max(1);
                db.reseal_message(seq, &rec)?;
                out.push((contact.clone(), id.clone()));
            }
            None => out.push((contact.clone(), id.clone())),
        }
    }
    Ok(out)
}

/// A franked body sent by `Client::send_content`.
pub(crate) struct SentContent {
    pub(crate) message_id: [u8; 16],
    pub(crate) commitment_hex: String,
    pub(crate) server_timestamp_ms: u64,
}

impl SentContent {
    pub(crate) fn public(&self) -> Sent {
        Sent {
            id: hex::encode(self.message_id),
            server_timestamp_ms: self.server_timestamp_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bare_text_is_franked_as_before() {
        let t = |body: &str| {
            Body::Text(v1::TextMessage {
                body: body.into(),
                sent_at_ms: 5,
                quote: None,
                expire_after_secs: 0,
            })
        };
        assert_eq!(franked_plaintext(&t("bonjour")).unwrap(), "bonjour");
        // A text that looks like a v2 rendering is rendered as v2, so no
        // string is the franked form of two different bodies.
        let tricky = format!("{FRANKED_V2_PREFIX}{{\"kind\":\"unsend\"}}");
        let f = franked_plaintext(&t(&tricky)).unwrap();
        assert_ne!(f, tricky);
        assert!(f.starts_with(&format!("{FRANKED_V2_PREFIX}{{\"kind\":\"text\"")));
    }

    /// Frozen vectors (docs/PROTOCOL.md, "Conversation content"): each body,
    /// its franked plaintext, and the commitment under key 05 * 32 with
    /// message id "message-id-1".
    #[test]
    fn franked_plaintext_vectors() {
        let id = vec![0xab; 16];
        let r = v1::MessageRef {
            message_id: id.clone(),
            author: "bob".into(),
        };
        let cases: Vec<(Body, &str, &str)> = vec![
            (
                Body::Text(v1::TextMessage {
                    body: "yes \"really\"\n".into(),
                    sent_at_ms: 1,
                    quote: Some(r.clone()),
                    expire_after_secs: 300,
                }),
                "missive content v2\n{\"kind\":\"text\",\"expire_after_secs\":300,\"quote\":{\"author\":\"bob\",\"id\":\"abababababababababababababababab\"},\"text\":\"yes \\\"really\\\"\\n\"}",
                "b38f234149c53e5d37c23b32a49508f1078ba7836bc7c5af60af0e64d1d4e21a",
            ),
            (
                Body::Reaction(v1::ReactionMessage {
                    target: Some(r.clone()),
                    emoji: "👍".into(),
                    sent_at_ms: 2,
                }),
                "missive content v2\n{\"kind\":\"reaction\",\"emoji\":\"👍\",\"target\":{\"author\":\"bob\",\"id\":\"abababababababababababababababab\"}}",
                "2cf9c207557e5a9432ea8af13e9c9e9b56dffba46a55166e40c2ea58176bd617",
            ),
            (
                Body::Edit(v1::EditMessage {
                    target_message_id: id.clone(),
                    body: "fixed".into(),
                    sent_at_ms: 3,
                }),
                "missive content v2\n{\"kind\":\"edit\",\"target\":\"abababababababababababababababab\",\"text\":\"fixed\"}",
                "bc7dbc38ef30d384b76fa6bcb8a2155b9d56809ff1b823acaeb28830ab36b994",
            ),
            (
                Body::Unsend(v1::UnsendMessage {
                    target_message_id: id.clone(),
                    sent_at_ms: 4,
                }),
                "missive content v2\n{\"kind\":\"unsend\",\"target\":\"abababababababababababababababab\"}",
                "263b6e63e17ecfc369c9068893694795dda73b961af25c02e4b65ba07707c36d",
            ),
            (
                Body::Receipt(v1::ReceiptMessage {
                    r#type: v1::receipt_message::Type::Read as i32,
                    message_ids: vec![id.clone()],
                    sent_at_ms: 5,
                }),
                "missive content v2\n{\"kind\":\"receipt\",\"message_ids\":[\"abababababababababababababababab\"],\"type\":\"read\"}",
                "284a91b129aefb90170748a4344c736123503d42864efdcc88d69df5124f164d",
            ),
            (
                Body::Typing(v1::TypingMessage {
                    started: true,
                    sent_at_ms: 6,
                }),
                "missive content v2\n{\"kind\":\"typing\",\"started\":true}",
                "7f5fd62273892dec96a1e875e7c1ec3d27612e01a368db2fb45f86559a8da322",
            ),
            (
                Body::Timer(v1::TimerUpdate {
                    expire_after_secs: 0,
                    sent_at_ms: 7,
                }),
                "missive content v2\n{\"kind\":\"timer\",\"expire_after_secs\":0}",
                "6b0038ea11fb88889c02afa795aea2507f8046a22302ff75ef21ea0bb20539a9",
            ),
        ];
        let key = FrankingKey::from_bytes(&[5u8; 32]).unwrap();
        let mut computed = Vec::new();
        for (body, franked, _) in &cases {
            assert_eq!(franked_plaintext(body).unwrap(), *franked);
            let c = franking::commit(&key, b"message-id-1", franked.as_bytes());
            computed.push(hex::encode(c));
            // Round trip through the recipient's check.
            let content = v1::Content {
                body: Some(body.clone()),
                franking_key: vec![5u8; 32],
                sender_devices: None,
                sent_to: String::new(),
                attachment: None,
            }
            .encode_to_vec();
            let (b, _, f) = check_conversation_content(&content, b"message-id-1", &c).unwrap();
            assert_eq!(&b, body);
            assert_eq!(f, *franked);
            // Another id or another body does not verify.
            assert!(check_conversation_content(&content, b"message-id-2", &c).is_err());
        }
        let expected: Vec<&str> = cases.iter().map(|c| c.2).collect();
        assert_eq!(computed, expected);
    }

    #[test]
    fn receipt_of_unknown_type_is_refused() {
        let b = Body::Receipt(v1::ReceiptMessage {
            r#type: 9,
            message_ids: vec![],
            sent_at_ms: 0,
        });
        assert!(franked_plaintext(&b).is_err());
    }

    #[test]
    fn timers_parse_as_people_write_them() {
        assert_eq!(parse_timer("3s").unwrap(), 3);
        assert_eq!(parse_timer("5m").unwrap(), 300);
        assert_eq!(parse_timer("1d").unwrap(), 86_400);
        assert_eq!(parse_timer("1h 30m").unwrap(), 5_400);
        assert_eq!(parse_timer("off").unwrap(), 0);
        assert_eq!(parse_timer("OFF").unwrap(), 0);
        for bad in ["", "500ms", "1.5s", "soon", "-3s", "200years"] {
            let e = parse_timer(bad).unwrap_err().to_string();
            assert!(e.contains("is not a timer"), "{bad}: {e}");
        }
        assert_eq!(format_timer(300), "5m");
        assert_eq!(format_timer(0), "off");
    }

    #[test]
    fn emoji_check() {
        for ok in ["👍", "❤️", "👩‍👩‍👧", "🇫🇷", "😂"] {
            assert!(valid_emoji(ok), "{ok}");
        }
        for bad in ["", "a", "ok", "👍 👍", "\u{1b}[31m", "1", &"😂".repeat(20)] {
            assert!(!valid_emoji(bad), "{bad}");
        }
    }
}
