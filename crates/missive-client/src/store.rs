//! The local store: one SQLite file under the home directory.
//!
//! Everything in it is sealed with [`missive_crypto::seal`] under a
//! [`StorageKey`] that lives in `storage.key` beside the database (0600), or
//! is derived with Argon2id from a passphrase (then nothing secret is on disk
//! in the clear). Since schema 2 the database holds no name and no time in the
//! clear either: rows are found through *keyed tags* (HMAC-SHA256 under a key
//! derived from the storage key) of contact names, message ids and envelope
//! ids, and each sealed value's associated data names the row it belongs to,
//! so a blob moved to another row (another contact, another device) does not
//! open. docs/PROTOCOL.md, "Local storage", specifies every construction.
//!
//! Every read-modify-write of a session runs in one `BEGIN IMMEDIATE`
//! transaction ([`Store::write`]): two processes on one home serialise
//! instead of encrypting twice under one message key. Each such transaction
//! also advances a *generation* counter kept both in the database and in a
//! file beside it; a database older than the file was restored from a copy
//! and its sessions are archived before anything is sent (see
//! [`Store::was_rolled_back`]).

use std::cell::Cell;
use std::fs;
use std::io::{IsTerminal as _, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use missive_crypto::{PublicIdentity, Session, SignedDeviceList, StorageKey};
use rand::RngCore;
use rand::rngs::OsRng;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{ClientError, Result};

/// File name of the database inside the home directory.
pub const DB_FILE: &str = "missive.db";
/// File name of the storage key inside the home directory.
pub const KEY_FILE: &str = "storage.key";
/// File name of the passphrase parameters (Argon2id parameters and salt).
pub const SALT_FILE: &str = "passphrase.salt";
/// File name of the generation counter kept outside the database.
pub const GENERATION_FILE: &str = "missive.generation";
/// File name of the CA remembered at registration.
pub const CA_FILE: &str = "ca.pem";
/// Environment variable holding the optional passphrase.
pub const PASSPHRASE_ENV: &str = "MISSIVE_PASSPHRASE";

/// Argon2id memory cost for new passphrase stores, KiB (64 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 65_536;
/// Argon2id passes for new passphrase stores.
pub const ARGON2_PASSES: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_LANES: u32 = 1;

/// Acknowledged `processed` entries kept after their acknowledgement, newest
/// first: a benign server never re-delivers an acknowledged envelope, but a
/// second process's stream may still hold one it read before the ack.
pub const PROCESSED_KEEP_ACKED: i64 = 512;

const KEY_CHECK: &[u8] = b"missive storage key check v1";
const INDEX_KEY_LABEL: &[u8] = b"Missive store index key v2";
/// Sealed history records are padded to a multiple of this many bytes so the
/// file does not tell message lengths.
const MESSAGE_PAD: usize = 256;
const SCHEMA_VERSION: i64 = 4;
const DAY_MS: u64 = 86_400_000;

/// Schema 2: no names, times or lengths in the clear (see the module docs).
const SCHEMA_V2: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE prekeys (
    kind INTEGER NOT NULL,
    id INTEGER NOT NULL,
    secret BLOB NOT NULL,
    created_day INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE seen_base_keys (
    tag BLOB PRIMARY KEY,
    signed_prekey_id INTEGER NOT NULL
);
CREATE TABLE contacts (
    tag BLOB PRIMARY KEY,
    sealed BLOB NOT NULL
);
CREATE TABLE sessions (
    tag BLOB NOT NULL,
    device_id INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (tag, device_id, slot)
);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_tag BLOB NOT NULL,
    id_tag BLOB NOT NULL,
    sealed BLOB NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_by_contact ON messages (contact_tag, seq);
CREATE INDEX messages_by_id ON messages (id_tag);
CREATE TABLE processed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tag BLOB NOT NULL UNIQUE,
    acked INTEGER NOT NULL DEFAULT 0
);
"#;

/// Schema 3 adds to schema 2 (docs/PROTOCOL.md, "Client store"): the flag of
/// disappearing messages (their expiry time stays sealed) and the sealed
/// per-conversation state (the disappearing timer).
const SCHEMA_V3_DELTA: &str = r#"
ALTER TABLE messages ADD COLUMN expiring INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_expiring ON messages (expiring) WHERE expiring = 1;
CREATE TABLE conversations (
    tag BLOB PRIMARY KEY,
    sealed BLOB NOT NULL
);
"#;

/// Schema 4 adds groups (docs/PROTOCOL.md, "Client store"): openmls's state,
/// one sealed row per value under a keyed tag (`client/mls_storage.rs`), and
/// one sealed row per group this device is in.
const SCHEMA_V4_DELTA: &str = r#"
CREATE TABLE mls (
    tag BLOB PRIMARY KEY,
    sealed BLOB NOT NULL
);
CREATE TABLE groups (
    tag BLOB PRIMARY KEY,
    sealed BLOB NOT NULL
);
"#;

/// Kinds of private prekeys kept locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrekeyKind {
    /// Signed X25519 prekey.
    Signed = 1,
    /// Last-resort ML-KEM prekey.
    KemLastResort = 2,
    /// One-time X25519 prekey.
    OneTime = 3,
    /// One-time ML-KEM prekey.
    KemOneTime = 4,
}

/// Which of a device's sessions a row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The session messages to this device are encrypted with.
    Current = 0,
    /// A session with a *changed* identity, kept apart until the user decides
    /// (`missive trust` or `missive reject`); its messages are quarantined.
    Pending = 1,
    /// A session from before a restored backup was detected: it may still
    /// decrypt late messages but never encrypts again.
    Archived = 2,
}

/// A contact as stored.
#[derive(Clone, Debug)]
pub struct Contact {
    /// Username.
    pub username: String,
    /// The pinned account key (protocol v2: it signs the device list; the
    /// safety number is computed from it).
    pub identity: PublicIdentity,
    /// Whether the user compared safety numbers for the pinned identity.
    pub verified: bool,
    /// The latest different identity seen since pinning, awaiting a decision.
    pub changed_identity: Option<PublicIdentity>,
    /// The newest device list seen signed by `identity` (verified when stored).
    pub device_list: Option<SignedDeviceList>,
    /// The newest device list seen signed by `changed_identity`.
    pub changed_device_list: Option<SignedDeviceList>,
}

impl Contact {
    /// Whether the pinned account's newest seen list names `device` with `key`.
    pub fn lists_device(&self, device: u32, key: &PublicIdentity) -> bool {
        lists(self.device_list.as_ref(), device, key)
    }

    /// Whether the changed account's newest seen list names `device` with `key`.
    pub fn changed_lists_device(&self, device: u32, key: &PublicIdentity) -> bool {
        lists(self.changed_device_list.as_ref(), device, key)
    }
}

/// Whether `list` names `device` with `key`.
pub(crate) fn lists(list: Option<&SignedDeviceList>, device: u32, key: &PublicIdentity) -> bool {
    list.is_some_and(|l| {
        l.unverified_list()
            .devices
            .iter()
            .any(|d| d.device_id == device && &d.identity == key)
    })
}

/// A session row.
pub struct SessionRow {
    /// Peer device.
    pub device_id: u32,
    /// Registration id the peer device announced (0 when unknown).
    pub registration_id: u32,
    /// The ratchet state.
    pub session: Session,
}

/// The sealed content of a history row.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct SealedMessage {
    /// Text.
    pub text: String,
    /// Franking key, hex (incoming only).
    #[serde(default)]
    pub franking_key: String,
    /// Franking commitment, hex.
    #[serde(default)]
    pub commitment: String,
    /// Server franking tag, hex (incoming only).
    #[serde(default)]
    pub tag: String,
    /// Sender device (incoming only).
    #[serde(default)]
    pub sender_device: u32,
}

impl Drop for SealedMessage {
    fn drop(&mut self) {
        self.text.zeroize();
        self.franking_key.zeroize();
    }
}

/// One history row as sealed (schema 2): the message and everything about it.
#[derive(Clone, Serialize, Deserialize, Default)]
pub(crate) struct MessageRecord {
    pub(crate) contact: String,
    pub(crate) message_id: String,
    pub(crate) outgoing: bool,
    pub(crate) sender_clock_ms: u64,
    #[serde(default)]
    pub(crate) sender_clock_clamped: bool,
    pub(crate) server_ts_ms: u64,
    /// Hex of the changed identity a quarantined message came from.
    #[serde(default)]
    pub(crate) quarantine_identity: Option<String>,
    pub(crate) body: SealedMessage,
    /// Conversation features (schema 3): quote, reactions, edits, unsend,
    /// receipts, disappearing timer; absent for a plain message.
    #[serde(
        default,
        skip_serializing_if = "crate::conversation::ConvRecord::is_empty"
    )]
    pub(crate) conv: crate::conversation::ConvRecord,
    /// The file sent with the message (docs/PROTOCOL.md, "Attachments"):
    /// its pointer, key included, lives only inside this sealed record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attachment: Option<AttachmentRecord>,
    /// A message of a group conversation (schema 4): `contact` is then the
    /// group's conversation key ([`group_conversation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<GroupRef>,
    #[serde(default)]
    pad: String,
}

/// What makes a history record a group's (sealed inside the record).
#[derive(Clone, Serialize, Deserialize, Default)]
pub(crate) struct GroupRef {
    /// The MLS group id, hex.
    pub(crate) id: String,
    /// Who wrote it (for an event: who did it).
    pub(crate) author: String,
    /// A membership event ("alice added carol"), not a message.
    #[serde(default)]
    pub(crate) event: bool,
}

/// A group this device is (or was) in, as stored (sealed, in `groups`).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    /// The MLS group id, hex.
    pub(crate) id: String,
    /// Its name on this device: the name its creator gave it, made unique
    /// among this device's groups.
    pub(crate) name: String,
    /// When this device created or joined it, ms.
    pub(crate) joined_ms: u64,
    pub(crate) status: GroupStatus,
    /// A commit this device made that the server has not yet answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pending_commit: Option<crate::client::OutgoingCommit>,
    /// The highest group seq this device processed.
    #[serde(default)]
    pub(crate) last_seq: u64,
}

/// Where this device stands in a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum GroupStatus {
    Active,
    /// This device left.
    Left,
    /// A member removed this device.
    Removed,
    /// This device refused a change of the group (a device no account
    /// vouches for, or a change withheld from it); it follows the group no
    /// further. The reason names what was refused.
    Stopped(String),
}

/// The conversation key of a group in the history table: `#` and the hex
/// group id (no username starts with `#`).
pub(crate) fn group_conversation(id: &[u8]) -> String {
    format!("#{}", hex::encode(id))
}

/// An attachment pointer as stored, sealed inside its history row, with
/// where the file was saved. No schema change: sealed records are JSON and
/// older ones simply have none.
#[derive(Clone, Serialize, Deserialize, Default)]
pub(crate) struct AttachmentRecord {
    /// Blob id, hex.
    pub(crate) blob_id: String,
    /// The file key, hex (zeroized on drop).
    pub(crate) key: String,
    /// Key commitment, hex.
    pub(crate) key_commitment: String,
    /// Ciphertext hash, hex.
    pub(crate) ciphertext_hash: String,
    /// File length in bytes.
    pub(crate) size: u64,
    /// MIME type as sent (never trusted).
    pub(crate) mime_type: String,
    /// File name as sent (sanitized before any use on disk).
    pub(crate) file_name: String,
    /// Where the verified file was saved (incoming), or the file sent (outgoing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) saved_path: Option<String>,
    /// Why it could not be saved (a verification failure; not retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// A process saving it now: (pid, since ms); see `attachments.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) claim: Option<(u32, u64)>,
}

impl Drop for AttachmentRecord {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl AttachmentRecord {
    /// The pointer as stored.
    pub(crate) fn from_pointer(p: &missive_proto::v1::AttachmentPointer) -> Self {
        AttachmentRecord {
            blob_id: hex::encode(&p.blob_id),
            key: hex::encode(&p.key),
            key_commitment: hex::encode(&p.key_commitment),
            ciphertext_hash: hex::encode(&p.ciphertext_hash),
            size: p.size,
            mime_type: p.mime_type.clone(),
            file_name: p.file_name.clone(),
            saved_path: None,
            error: None,
            claim: None,
        }
    }

    /// Back to the pointer (for a download or a report).
    pub(crate) fn pointer(&self) -> Result<missive_proto::v1::AttachmentPointer> {
        let d = |h: &str| {
            hex::decode(h)
                .map_err(|_| ClientError::Attachment("a stored attachment is malformed".into()))
        };
        Ok(missive_proto::v1::AttachmentPointer {
            blob_id: d(&self.blob_id)?,
            key: d(&self.key)?,
            key_commitment: d(&self.key_commitment)?,
            ciphertext_hash: d(&self.ciphertext_hash)?,
            size: self.size,
            mime_type: self.mime_type.clone(),
            file_name: self.file_name.clone(),
            thumbnail: Vec::new(),
        })
    }

    /// Neither saved nor refused yet.
    pub(crate) fn pending(&self) -> bool {
        self.saved_path.is_none() && self.error.is_none()
    }

    fn info(&self) -> AttachmentInfo {
        AttachmentInfo {
            file_name: self.file_name.clone(),
            mime_type: self.mime_type.clone(),
            size: self.size,
            saved_path: self.saved_path.as_ref().map(PathBuf::from),
            error: self.error.clone(),
        }
    }
}

/// What a history entry shows of its attachment (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The file name as sent (pass it through `attachments::safe_file_name`
    /// or `display::sanitize_line` before showing or using it).
    pub file_name: String,
    /// The MIME type as sent (a claim of the sender, never trusted).
    pub mime_type: String,
    /// File length in bytes.
    pub size: u64,
    /// Incoming: where the verified file was saved (`None` while it is not,
    /// or if it failed verification). Outgoing: the file that was sent.
    pub saved_path: Option<PathBuf>,
    /// Why an incoming file was refused (key commitment, a chunk or the
    /// hash did not verify); the file was not saved.
    pub error: Option<String>,
}

/// One history entry, decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Local sequence number (order of arrival).
    pub seq: i64,
    /// Sender's message id, 16 bytes.
    pub message_id: Vec<u8>,
    /// The other party.
    pub contact: String,
    /// Sent by us.
    pub outgoing: bool,
    /// Text.
    pub text: String,
    /// The sender's own clock, ms since the epoch, as it claims (not covered
    /// by franking; clamped into a sane window on receipt).
    pub sender_clock_ms: u64,
    /// The sender's clock was outside the sane window and was clamped.
    pub sender_clock_clamped: bool,
    /// Server's acceptance time, ms since the epoch (0 if unknown); the
    /// server's franking tag binds it.
    pub server_ts_ms: u64,
    /// From a changed identity of `contact` that the user has not accepted.
    pub quarantined: bool,
    /// The file sent with the message, if any.
    pub attachment: Option<AttachmentInfo>,
    /// Set for a message or event of a group conversation; `contact` is
    /// then the author (ours for an outgoing message).
    pub group: Option<Box<HistoryGroup>>,
}

/// The group a history entry belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryGroup {
    /// The group's name on this device.
    pub name: String,
    /// The MLS group id, hex.
    pub id: String,
    /// A membership event ("alice added carol"): `text` says it.
    pub event: bool,
}

/// Which stored state of a group a copy in memory is (see
/// [`Db::mls_stamp`]): random values, so that a rolled-back write can never
/// be mistaken for a later one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MlsStamp {
    generation: Option<Vec<u8>>,
    version: Option<Vec<u8>>,
}

fn fresh_version() -> [u8; 16] {
    let mut v = [0u8; 16];
    OsRng.fill_bytes(&mut v);
    v
}

/// Everything needed to report an incoming message.
pub struct ReportMaterial {
    /// Sender.
    pub sender: String,
    /// Server timestamp.
    pub server_ts_ms: u64,
    /// Message id.
    pub message_id: Vec<u8>,
    /// Sealed content.
    pub sealed: SealedMessage,
    /// The attachment pointer the message carried (its commitment covers it).
    pub attachment: Option<missive_proto::v1::AttachmentPointer>,
    /// The group of a group message (its MLS group id); empty for 1:1.
    pub group_id: Vec<u8>,
}

/// A received message to store (see [`Db::add_incoming`]).
pub struct NewIncoming<'a> {
    /// Sender username.
    pub sender: &'a str,
    /// Sender's message id.
    pub message_id: &'a [u8],
    /// Content.
    pub sealed: SealedMessage,
    /// Sender's clock (already clamped).
    pub sender_clock_ms: u64,
    /// Whether it was clamped.
    pub sender_clock_clamped: bool,
    /// Server time.
    pub server_ts_ms: u64,
    /// The changed identity it came from, if quarantined.
    pub quarantine_identity: Option<&'a PublicIdentity>,
}

/// The record of a message this account sent.
#[allow(clippy::too_many_arguments)]
fn outgoing_record(
    contact: &str,
    message_id: &[u8],
    sealed: SealedMessage,
    sent_at_ms: u64,
    server_ts_ms: u64,
    conv: crate::conversation::ConvRecord,
    attachment: Option<AttachmentRecord>,
) -> MessageRecord {
    MessageRecord {
        group: None,
        contact: contact.to_owned(),
        message_id: hex::encode(message_id),
        outgoing: true,
        sender_clock_ms: sent_at_ms,
        sender_clock_clamped: false,
        server_ts_ms,
        quarantine_identity: None,
        body: sealed,
        conv,
        attachment,
        pad: String::new(),
    }
}

/// Current time, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Creates `dir` (and parents) with mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| ClientError::io(format!("cannot create {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| ClientError::io(format!("cannot restrict {}", dir.display()), e))
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ClientError::io(format!("cannot create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), e))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), 0600.
pub(crate) fn replace_private(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ClientError::io(format!("cannot write {}", path.display()), e)
    })
}

/// Argon2id parameters and salt of a passphrase store.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PassphraseParams {
    memory_kib: u32,
    passes: u32,
    lanes: u32,
    salt: Vec<u8>,
}

impl PassphraseParams {
    fn fresh() -> Self {
        let mut salt = vec![0u8; 16];
        OsRng.fill_bytes(&mut salt);
        PassphraseParams {
            memory_kib: ARGON2_MEMORY_KIB,
            passes: ARGON2_PASSES,
            lanes: ARGON2_LANES,
            salt,
        }
    }

    /// `argon2id m=KIB t=PASSES p=LANES salt=HEX\n`; a bare 16-byte file is
    /// the salt of a store made before parameters were recorded, which used
    /// the argon2 crate's defaults (19 MiB, t=2, p=1).
    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() == 16 && !bytes.starts_with(b"argon2id") {
            return Some(PassphraseParams {
                memory_kib: argon2::Params::DEFAULT_M_COST,
                passes: argon2::Params::DEFAULT_T_COST,
                lanes: argon2::Params::DEFAULT_P_COST,
                salt: bytes.to_vec(),
            });
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split_whitespace();
        if fields.next()? != "argon2id" {
            return None;
        }
        let (mut m, mut t, mut p, mut salt) = (None, None, None, None);
        for f in fields {
            let (k, v) = f.split_once('=')?;
            match k {
                "m" => m = v.parse().ok(),
                "t" => t = v.parse().ok(),
                "p" => p = v.parse().ok(),
                "salt" => salt = hex::decode(v).ok(),
                _ => return None,
            }
        }
        Some(PassphraseParams {
            memory_kib: m?,
            passes: t?,
            lanes: p?,
            salt: salt?,
        })
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "argon2id m={} t={} p={} salt={}\n",
            self.memory_kib,
            self.passes,
            self.lanes,
            hex::encode(&self.salt)
        )
        .into_bytes()
    }

    fn is_current(&self) -> bool {
        self.memory_kib >= ARGON2_MEMORY_KIB && self.passes >= ARGON2_PASSES
    }

    fn derive(&self, pass: &str) -> Result<StorageKey> {
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| ClientError::Crypto(format!("passphrase parameters: {e}")))?;
        let mut out = Zeroizing::new([0u8; 32]);
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(pass.as_bytes(), &self.salt, out.as_mut())
            .map_err(|e| ClientError::Crypto(format!("passphrase key derivation: {e}")))?;
        Ok(StorageKey::from_bytes(*out))
    }
}

/// Where the storage key comes from.
pub enum KeySource {
    /// A random key in `HOME/storage.key` (0600).
    KeyFile,
    /// Argon2id of a passphrase; parameters and salt in `HOME/passphrase.salt`.
    Passphrase(Zeroizing<String>),
}

impl KeySource {
    /// `Passphrase` when `MISSIVE_PASSPHRASE` is set, else `KeyFile`.
    pub fn from_env() -> Self {
        match std::env::var(PASSPHRASE_ENV) {
            Ok(p) => KeySource::Passphrase(Zeroizing::new(p)),
            Err(_) => KeySource::KeyFile,
        }
    }
}

/// The storage key and what it keys.
struct Keys {
    storage: StorageKey,
    index: Zeroizing<[u8; 32]>,
}

impl Keys {
    fn new(storage: StorageKey) -> Self {
        let index = Zeroizing::new(hmac(storage.as_bytes(), &[INDEX_KEY_LABEL]));
        Keys { storage, index }
    }

    /// `HMAC-SHA256(index key, domain || 0x00 || (u32 length || part)*)`.
    fn tag(&self, domain: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut input = Vec::with_capacity(64);
        input.extend_from_slice(domain.as_bytes());
        input.push(0);
        for p in parts {
            input.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
            input.extend_from_slice(p);
        }
        hmac(self.index.as_ref(), &[&input]).to_vec()
    }

    fn contact_tag(&self, username: &str) -> Vec<u8> {
        self.tag("contact", &[username.as_bytes()])
    }

    fn message_tag(&self, message_id: &[u8]) -> Vec<u8> {
        self.tag("message", &[message_id])
    }

    fn seal(&self, plaintext: &[u8], ad: &[u8]) -> Vec<u8> {
        missive_crypto::seal(&mut OsRng, &self.storage, plaintext, ad)
    }

    fn open(&self, sealed: &[u8], ad: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
        missive_crypto::open(&self.storage, sealed, ad).map_err(|e| e.to_string())
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn ad(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = label.as_bytes().to_vec();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

fn session_ad(tag: &[u8], device_id: u32, slot: Slot) -> Vec<u8> {
    ad("session", &[tag, &device_id.to_be_bytes(), &[slot as u8]])
}

fn prekey_ad(kind: PrekeyKind, id: u32) -> Vec<u8> {
    format!("prekey/{}/{id}", kind as i64).into_bytes()
}

#[derive(Serialize, Deserialize)]
struct ContactRecord {
    username: String,
    identity: String,
    verified: bool,
    #[serde(default)]
    changed_identity: Option<String>,
    /// `SignedDeviceList::to_bytes`, hex.
    #[serde(default)]
    device_list: Option<String>,
    #[serde(default)]
    changed_device_list: Option<String>,
}

/// The local store.
pub struct Store {
    conn: Connection,
    keys: Keys,
    path: PathBuf,
    home: PathBuf,
    rolled_back: bool,
    /// Groups' MLS state kept in memory between transactions (see
    /// [`crate::client::group_state::GroupCache`]).
    groups: crate::client::group_state::GroupCache,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn rekey_path(home: &Path) -> PathBuf {
    home.join(format!("{SALT_FILE}.new"))
}

/// A re-key to new passphrase parameters writes them beside the old ones
/// before its transaction commits: if the schema is already migrated the
/// commit happened and the new parameters are the store's; if not, they are
/// a leftover.
fn finish_rekey(home: &Path, conn: &Connection, path: &Path) -> Result<()> {
    let new = rekey_path(home);
    if !new.exists() {
        return Ok(());
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| ClientError::store(path, e))?;
    // Re-keys happen in the schema-1 migration only: any later schema means
    // it committed.
    if version >= 2 {
        fs::rename(&new, home.join(SALT_FILE))
            .map_err(|e| ClientError::io(format!("cannot replace {}", new.display()), e))
    } else {
        fs::remove_file(&new)
            .map_err(|e| ClientError::io(format!("cannot remove {}", new.display()), e))
    }
}

/// The storage key, the path to name in a wrong-key error, and the
/// parameters (and key) to re-key to.
type OpenedKey = (StorageKey, PathBuf, Option<(PassphraseParams, StorageKey)>);

/// Loads or creates the storage key for `home`. Returns the key, the path
/// to name in a wrong-key error, and the parameters to re-key to when the
/// store's passphrase parameters are older than today's.
fn storage_key(home: &Path, fresh: bool, source: &KeySource) -> Result<OpenedKey> {
    if let KeySource::Passphrase(pass) = source {
        let salt_path = home.join(SALT_FILE);
        if fresh && !salt_path.exists() {
            if pass.trim().is_empty() {
                return Err(ClientError::EmptyPassphrase);
            }
            write_new_private(&salt_path, &PassphraseParams::fresh().encode())?;
        }
        if !salt_path.exists() {
            return Err(ClientError::NoPassphraseHere(home.to_path_buf()));
        }
        let bytes = fs::read(&salt_path)
            .map_err(|e| ClientError::io(format!("cannot read {}", salt_path.display()), e))?;
        let params = PassphraseParams::parse(&bytes).ok_or_else(|| {
            ClientError::store(&salt_path, "the passphrase parameters are unreadable")
        })?;
        let key = params.derive(pass)?;
        let rekey = if params.is_current() {
            None
        } else {
            let new = PassphraseParams::fresh();
            let new_key = new.derive(pass)?;
            Some((new, new_key))
        };
        return Ok((key, salt_path, rekey));
    }
    let key_path = home.join(KEY_FILE);
    if !key_path.exists() && home.join(SALT_FILE).exists() {
        return Err(ClientError::PassphraseRequired(home.to_path_buf()));
    }
    if fresh && !key_path.exists() {
        let key = StorageKey::generate(&mut OsRng);
        write_new_private(&key_path, key.as_bytes())?;
    }
    let bytes = Zeroizing::new(
        fs::read(&key_path)
            .map_err(|e| ClientError::io(format!("cannot read {}", key_path.display()), e))?,
    );
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ClientError::WrongKey(key_path.clone()))?;
    Ok((StorageKey::from_bytes(arr), key_path, None))
}

/// Whether the database at `path` is 0 bytes with nothing in its WAL either
/// (a truncated or half-copied store, not a new one).
fn store_file_is_empty(path: &Path) -> bool {
    let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    len(path) == 0 && len(Path::new(&wal)) == 0
}

impl Store {
    /// Whether `home` holds a store.
    pub fn exists(home: &Path) -> bool {
        home.join(DB_FILE).exists()
    }

    /// Whether `home`'s store is protected by a passphrase.
    pub fn uses_passphrase(home: &Path) -> bool {
        home.join(SALT_FILE).exists() && !home.join(KEY_FILE).exists()
    }

    /// Opens the store in `home`, creating it (and its key) if `create`,
    /// with the key source named by the environment — or, for a passphrase
    /// store opened without `MISSIVE_PASSPHRASE` from a terminal, the
    /// passphrase typed at a prompt (not echoed).
    pub fn open(home: &Path, create: bool) -> Result<Self> {
        let source = match KeySource::from_env() {
            KeySource::KeyFile if Self::uses_passphrase(home) && std::io::stdin().is_terminal() => {
                let typed = rpassword::prompt_password(format!(
                    "passphrase for the account in {}: ",
                    home.display()
                ))
                .map_err(|e| ClientError::io("cannot read the passphrase", e))?;
                KeySource::Passphrase(Zeroizing::new(typed))
            }
            other => other,
        };
        Self::open_with(home, create, &source)
    }

    /// Opens the store in `home` with an explicit key source.
    pub fn open_with(home: &Path, create: bool, source: &KeySource) -> Result<Self> {
        let path = home.join(DB_FILE);
        let exists = path.exists();
        if !exists && !create {
            return Err(ClientError::NotRegistered(home.to_path_buf()));
        }
        if exists && store_file_is_empty(&path) {
            // SQLite would take a 0-byte file for a new database and a
            // fresh account would silently replace the lost one.
            return Err(ClientError::EmptyStore(path));
        }
        if !exists {
            ensure_private_dir(home)?;
        }
        let conn = Connection::open(&path).map_err(|e| ClientError::store(&path, e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| ClientError::io(format!("cannot restrict {}", path.display()), e))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| ClientError::store(&path, e))?;
        // WAL: a long-running `recv --wait` or `chat` reads while one-shot
        // commands write. secure_delete: deleted rows (consumed prekeys,
        // discarded sessions) are overwritten, not left in free pages.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| ClientError::store(&path, e))?;
        finish_rekey(home, &conn, &path)?;
        let (key, key_path, rekey) = storage_key(home, !exists, source)?;
        let mut store = Store {
            conn,
            keys: Keys::new(key),
            path,
            home: home.to_path_buf(),
            rolled_back: false,
            groups: Default::default(),
        };
        let rekeyed = store.migrate(&key_path, rekey)?;
        if rekeyed {
            // Committed: the store is sealed under the new parameters' key.
            let new = rekey_path(home);
            fs::rename(&new, home.join(SALT_FILE))
                .map_err(|e| ClientError::io(format!("cannot replace {}", new.display()), e))?;
        }
        store.check_key(&key_path)?;
        store.check_generation()?;
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::store(&self.path, e)
    }

    /// Brings the schema to [`SCHEMA_VERSION`]. Schema 1 (names and times in
    /// the clear, sessions sealed without their row) is rewritten in one
    /// transaction, re-keyed to today's passphrase parameters if needed.
    fn migrate(
        &mut self,
        key_path: &Path,
        rekey: Option<(PassphraseParams, StorageKey)>,
    ) -> Result<bool> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| ClientError::store(&path, e))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| ClientError::store(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(ClientError::store(
                &path,
                format!(
                    "schema version {version} is newer than this missive understands ({SCHEMA_VERSION}); upgrade missive"
                ),
            ));
        }
        let tables: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| ClientError::store(&path, e))?;
        let mut rekeyed = false;
        if version == SCHEMA_VERSION {
            // Up to date; a passphrase re-key is done by the v1 migration only.
        } else if version == 0 && tables == 0 {
            tx.execute_batch(SCHEMA_V2)
                .and_then(|()| tx.execute_batch(SCHEMA_V3_DELTA))
                .and_then(|()| tx.execute_batch(SCHEMA_V4_DELTA))
                .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")))
                .map_err(|e| ClientError::store(&path, e))?;
        } else if version == 2 || version == 3 {
            // Schemas 2 and 3 to 4: additive (a column and tables), rows
            // untouched.
            if version == 2 {
                tx.execute_batch(SCHEMA_V3_DELTA)
                    .map_err(|e| ClientError::store(&path, e))?;
            }
            tx.execute_batch(SCHEMA_V4_DELTA)
                .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}")))
                .map_err(|e| ClientError::store(&path, e))?;
        } else {
            let old = std::mem::replace(&mut self.keys, Keys::new(StorageKey::from_bytes([0; 32])));
            let new = match rekey {
                Some((params, key)) => {
                    // Written before the commit; `finish_rekey` settles a
                    // crash in between by the schema version it finds.
                    replace_private(&rekey_path(&self.home), &params.encode(), true)?;
                    rekeyed = true;
                    Keys::new(key)
                }
                None => Keys::new(StorageKey::from_bytes(*old.storage.as_bytes())),
            };
            let result = migrate_v1(&tx, &old, &new, &path, key_path);
            self.keys = match result {
                Ok(()) => new,
                Err(e) => {
                    self.keys = old;
                    return Err(e);
                }
            };
        }
        tx.commit().map_err(|e| ClientError::store(&path, e))?;
        if version != SCHEMA_VERSION && version != 2 && version != 3 && tables > 0 {
            // Schema-1 pages held names and times: rewrite the file without them.
            self.conn
                .execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(|e| ClientError::store(&path, e))?;
        }
        Ok(rekeyed)
    }

    fn check_key(&mut self, key_path: &Path) -> Result<()> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        match sealed {
            Some(sealed) => self
                .keys
                .open(&sealed, KEY_CHECK)
                .map(|_| ())
                .map_err(|_| ClientError::WrongKey(key_path.to_path_buf())),
            None => {
                let sealed = self.keys.seal(KEY_CHECK, KEY_CHECK);
                self.conn
                    .execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('key_check', ?1)",
                        [sealed],
                    )
                    .map(|_| ())
                    .map_err(|e| self.err(e))
            }
        }
    }

    /// Compares the database's generation with the file beside it, under the
    /// write lock (so no commit is half done). A database behind the file
    /// was restored from an older copy: its sending chains may have been
    /// used already, so every current session is archived and the next send
    /// runs a fresh PQXDH.
    fn check_generation(&mut self) -> Result<()> {
        let file = self.home.join(GENERATION_FILE);
        let rolled_back = self.write(|db| {
            let in_db = db.generation()?;
            let on_disk = match fs::read_to_string(&file) {
                Ok(s) => Some(s.trim().parse::<u64>().unwrap_or(u64::MAX)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(ClientError::io(
                        format!("cannot read {}", file.display()),
                        e,
                    ));
                }
            };
            let rolled_back = match on_disk {
                None => in_db > 0,
                Some(f) => f > in_db,
            };
            if rolled_back {
                db.archive_all_sessions()?;
            }
            if rolled_back || on_disk != Some(in_db) {
                db.touch_sessions();
            }
            Ok(rolled_back)
        })?;
        self.rolled_back = rolled_back;
        Ok(())
    }

    /// Whether opening found the database older than its generation file
    /// (restored from a backup) and archived its sessions.
    pub fn was_rolled_back(&self) -> bool {
        self.rolled_back
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Read access outside a transaction (each statement sees committed data).
    pub fn db(&self) -> Db<'_> {
        Db {
            conn: &self.conn,
            keys: &self.keys,
            path: &self.path,
            home: &self.home,
            sessions_written: Cell::new(false),
            mls: MlsWrites::new(Some(&self.groups)),
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: no other process on
    /// this home writes in between, and nothing of it is kept if `f` fails.
    /// A transaction that wrote a session advances the generation.
    pub fn write<T>(&mut self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| ClientError::store(&path, e))?;
        let db = Db {
            conn: &tx,
            keys: &self.keys,
            path: &self.path,
            home: &self.home,
            sessions_written: Cell::new(false),
            mls: MlsWrites::new(Some(&self.groups)),
        };
        let out = f(&db)?;
        if db.sessions_written.get() {
            db.bump_generation()?;
        }
        tx.commit().map_err(|e| ClientError::store(&path, e))?;
        Ok(out)
    }

    // ---- conveniences: one statement, one transaction ------------------

    /// Reads a meta value.
    pub fn get_meta(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.db().get_meta(key)
    }

    /// Writes a meta value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.db().set_meta(key, value)
    }

    /// Reads a meta value as text.
    pub fn get_meta_str(&self, key: &str) -> Result<Option<String>> {
        self.db().get_meta_str(key)
    }

    /// Reads a meta value as an integer.
    pub fn get_meta_u64(&self, key: &str) -> Result<Option<u64>> {
        self.db().get_meta_u64(key)
    }

    /// Writes an integer meta value.
    pub fn set_meta_u64(&self, key: &str, v: u64) -> Result<()> {
        self.db().set_meta_u64(key, v)
    }

    /// Deletes a meta value.
    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.db().delete_meta(key)
    }

    /// Loads a contact.
    pub fn contact(&self, username: &str) -> Result<Option<Contact>> {
        self.db().contact(username)
    }

    /// All contacts, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        self.db().contacts()
    }

    /// The current sessions with `username`'s devices.
    pub fn sessions(&self, username: &str) -> Result<Vec<SessionRow>> {
        self.db().sessions(username, Slot::Current)
    }

    /// The conversation with `contact` (quarantined messages excluded), oldest first.
    pub fn history(&self, contact: &str) -> Result<Vec<HistoryEntry>> {
        self.db().history(contact)
    }

    /// Counts rows of a table (tests and diagnostics).
    pub fn count(&self, table: &str) -> Result<u64> {
        self.db().count(table)
    }
}

/// The store's operations, on a transaction ([`Store::write`]) or on the
/// connection ([`Store::db`]).
pub struct Db<'a> {
    conn: &'a Connection,
    keys: &'a Keys,
    path: &'a Path,
    home: &'a Path,
    sessions_written: Cell<bool>,
    mls: MlsWrites<'a>,
}

/// What a transaction wrote of openmls's state, so that a group kept in
/// memory is used only while the store still holds exactly its state.
struct MlsWrites<'a> {
    cache: Option<&'a crate::client::group_state::GroupCache>,
    /// Values written or deleted so far.
    count: Cell<u64>,
    /// Inside [`Db::with_group_scope`]: the writes are that group's.
    scoped: Cell<bool>,
    /// A write outside any group's scope already renewed the generation.
    renewed: Cell<bool>,
}

impl<'a> MlsWrites<'a> {
    fn new(cache: Option<&'a crate::client::group_state::GroupCache>) -> Self {
        MlsWrites {
            cache,
            count: Cell::new(0),
            scoped: Cell::new(false),
            renewed: Cell::new(false),
        }
    }
}

/// Meta key of the MLS generation: renewed by every write of openmls state
/// that is not one group's own (a join, a KeyPackage, forgetting a group).
const META_MLS_GENERATION: &str = "mls_generation";
/// Key (in the `mls` table, beside openmls's own) of a group's version:
/// renewed by every write of that group's state.
const MLS_GROUP_VERSION: &[u8] = b"MissiveGroupVersion";

impl Db<'_> {
    fn err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::store(self.path, e)
    }

    /// Starts a nested scope that [`Db::rollback_to_savepoint`] can undo.
    pub fn savepoint(&self) -> Result<()> {
        self.conn
            .execute_batch("SAVEPOINT scope")
            .map_err(|e| self.err(e))
    }

    /// Keeps what the scope wrote.
    pub fn release_savepoint(&self) -> Result<()> {
        self.conn
            .execute_batch("RELEASE scope")
            .map_err(|e| self.err(e))
    }

    /// Undoes what the scope wrote.
    pub fn rollback_to_savepoint(&self) -> Result<()> {
        // The generation a write in the scope renewed is undone with it.
        self.mls.renewed.set(false);
        self.conn
            .execute_batch("ROLLBACK TO scope; RELEASE scope")
            .map_err(|e| self.err(e))
    }

    /// Marks this transaction as one that changed ratchet state.
    fn touch_sessions(&self) {
        self.sessions_written.set(true);
    }

    fn generation(&self) -> Result<u64> {
        Ok(self.get_meta_u64("generation")?.unwrap_or(0))
    }

    fn bump_generation(&self) -> Result<()> {
        let next = self.generation()?.saturating_add(1);
        self.set_meta_u64("generation", next)?;
        // Written before the commit: a crash in between leaves the file
        // ahead, which reads as a restore and only costs new sessions.
        replace_private(
            &self.home.join(GENERATION_FILE),
            next.to_string().as_bytes(),
            false,
        )
    }

    // ---- groups (schema 4) ---------------------------------------------

    fn group_tag(&self, id: &[u8]) -> Vec<u8> {
        self.keys.tag("group", &[id])
    }

    /// Stores a group's record.
    pub(crate) fn put_group(&self, rec: &GroupRecord) -> Result<()> {
        let id = hex::decode(&rec.id).map_err(|e| self.err(e))?;
        let tag = self.group_tag(&id);
        let json = Zeroizing::new(serde_json::to_vec(rec).map_err(|e| self.err(e))?);
        let sealed = self.keys.seal(&json, &ad("group", &[&tag]));
        self.conn
            .execute(
                "INSERT INTO groups (tag, sealed) VALUES (?1, ?2) ON CONFLICT (tag) DO UPDATE SET sealed = excluded.sealed",
                params![tag, sealed],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn open_group(&self, tag: &[u8], sealed: &[u8]) -> Result<GroupRecord> {
        let json = self
            .keys
            .open(sealed, &ad("group", &[tag]))
            .map_err(|e| self.err(format!("a stored group does not open: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| self.err(format!("a stored group does not parse: {e}")))
    }

    /// The record of the group with this id.
    pub(crate) fn group(&self, id: &[u8]) -> Result<Option<GroupRecord>> {
        let tag = self.group_tag(id);
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT sealed FROM groups WHERE tag = ?1", [&tag], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        sealed.map(|s| self.open_group(&tag, &s)).transpose()
    }

    /// Every group record, by name.
    pub(crate) fn groups(&self) -> Result<Vec<GroupRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT tag, sealed FROM groups")
            .map_err(|e| self.err(e))?;
        let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let mut out = rows
            .iter()
            .map(|(t, s)| self.open_group(t, s))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stores a message or event of a group conversation; `shown` for what
    /// this device itself did.
    // Each argument is one field of the record; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_group_record(
        &self,
        group: GroupRef,
        message_id: &[u8],
        sealed: SealedMessage,
        outgoing: bool,
        sender_clock_ms: u64,
        server_ts_ms: u64,
        shown: bool,
    ) -> Result<()> {
        let id = hex::decode(&group.id).map_err(|e| self.err(e))?;
        let mut rec = MessageRecord {
            group: Some(group),
            contact: group_conversation(&id),
            message_id: hex::encode(message_id),
            outgoing,
            sender_clock_ms,
            sender_clock_clamped: false,
            server_ts_ms,
            quarantine_identity: None,
            body: sealed,
            conv: crate::conversation::ConvRecord::default(),
            attachment: None,
            pad: String::new(),
        };
        self.insert_record(&mut rec, shown)
    }

    /// The name of the group with this hex id, if this device knows it.
    fn group_name_of(&self, id_hex: &str) -> Result<Option<String>> {
        let Ok(id) = hex::decode(id_hex) else {
            return Ok(None);
        };
        Ok(self.group(&id)?.map(|g| g.name))
    }

    // ---- MLS state (schema 4; client/mls_storage.rs) -------------------

    /// Reads and opens one value of openmls's state.
    pub(crate) fn mls_get(&self, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let tag = self.keys.tag("mls", &[key]);
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT sealed FROM mls WHERE tag = ?1", [&tag], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        match sealed {
            None => Ok(None),
            Some(s) => self
                .keys
                .open(&s, &ad("mls", &[&tag]))
                .map(Some)
                .map_err(|e| self.err(format!("a stored group value does not open: {e}"))),
        }
    }

    /// Seals and writes one value of openmls's state.
    pub(crate) fn mls_put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.note_mls_write()?;
        self.mls_put_raw(key, value)
    }

    fn mls_put_raw(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let tag = self.keys.tag("mls", &[key]);
        let sealed = self.keys.seal(value, &ad("mls", &[&tag]));
        self.conn
            .execute(
                "INSERT INTO mls (tag, sealed) VALUES (?1, ?2) ON CONFLICT (tag) DO UPDATE SET sealed = excluded.sealed",
                params![tag, sealed],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Deletes one value of openmls's state (overwritten on disk:
    /// `secure_delete`).
    pub(crate) fn mls_delete(&self, key: &[u8]) -> Result<()> {
        self.note_mls_write()?;
        let tag = self.keys.tag("mls", &[key]);
        self.conn
            .execute("DELETE FROM mls WHERE tag = ?1", [&tag])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Counts a write of openmls state; one outside a group's scope renews
    /// the generation at once, so every group kept in memory (by this
    /// process or another) is read again from the store.
    fn note_mls_write(&self) -> Result<()> {
        self.mls.count.set(self.mls.count.get() + 1);
        if !self.mls.scoped.get() && !self.mls.renewed.get() {
            self.set_meta(META_MLS_GENERATION, &fresh_version())?;
            self.mls.renewed.set(true);
        }
        Ok(())
    }

    /// What the store holds of group `id` now: (generation, version). A
    /// group kept in memory under the same stamp is the stored state.
    pub(crate) fn mls_stamp(&self, id: &[u8]) -> Result<MlsStamp> {
        let generation = self.get_meta(META_MLS_GENERATION)?.map(|v| v.to_vec());
        let version = self
            .mls_get(&[MLS_GROUP_VERSION, id].concat())?
            .map(|v| v.to_vec());
        Ok(MlsStamp {
            generation,
            version,
        })
    }

    /// The stamp to keep a group under that was just written outside any
    /// group's scope (a join): a later such write renews the generation
    /// again.
    pub(crate) fn mls_stamp_to_keep(&self, id: &[u8]) -> Result<MlsStamp> {
        // Renewed here, not only at the first such write of the
        // transaction: a savepoint rolled back after this point must undo
        // the stamp the copy is kept under.
        self.set_meta(META_MLS_GENERATION, &fresh_version())?;
        self.mls.renewed.set(false);
        self.mls_stamp(id)
    }

    /// Deletes a forgotten group's version row (the delete renews the
    /// generation, like every write outside a group's scope).
    pub(crate) fn forget_mls_version(&self, id: &[u8]) -> Result<()> {
        self.mls_delete(&[MLS_GROUP_VERSION, id].concat())
    }

    /// The process's groups kept in memory (none while migrating).
    pub(crate) fn group_cache(&self) -> Option<&crate::client::group_state::GroupCache> {
        self.mls.cache
    }

    /// Runs `f`, which works on group `id` alone, and renews that group's
    /// version if `f` wrote any of openmls's state — whether or not it
    /// succeeded. Returns `f`'s result and the stamp after it.
    pub(crate) fn with_group_scope<T>(
        &self,
        id: &[u8],
        mut stamp: MlsStamp,
        f: impl FnOnce() -> T,
    ) -> Result<(T, MlsStamp)> {
        let before = self.mls.count.get();
        let outer = self.mls.scoped.replace(true);
        let out = f();
        self.mls.scoped.set(outer);
        // A later write outside the scope must renew the generation again:
        // the copy kept now is stamped with the current one.
        self.mls.renewed.set(false);
        if self.mls.count.get() != before {
            let version = fresh_version();
            self.mls_put_raw(&[MLS_GROUP_VERSION, id].concat(), &version)?;
            stamp.version = Some(version.to_vec());
        }
        Ok((out, stamp))
    }

    // ---- meta ---------------------------------------------------------

    /// Reads and opens a meta value.
    pub fn get_meta(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        match sealed {
            None => Ok(None),
            Some(s) => self
                .keys
                .open(&s, &ad("meta", &[key.as_bytes()]))
                .map(Some)
                .map_err(|e| self.err(format!("the stored value {key} does not open: {e}"))),
        }
    }

    /// Seals and writes a meta value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        let sealed = self.keys.seal(value, &ad("meta", &[key.as_bytes()]));
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, sealed],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Reads a meta value as text.
    pub fn get_meta_str(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .get_meta(key)?
            .and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    /// Reads a meta value as an integer.
    pub fn get_meta_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.get_meta_str(key)?.and_then(|s| s.parse().ok()))
    }

    /// Writes an integer meta value.
    pub fn set_meta_u64(&self, key: &str, v: u64) -> Result<()> {
        self.set_meta(key, v.to_string().as_bytes())
    }

    /// Deletes a meta value.
    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Returns the next id of a counter and advances it by `n`.
    pub fn take_ids(&self, counter: &str, n: u32) -> Result<u32> {
        let first = self
            .get_meta_u64(counter)?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1);
        let next = first
            .checked_add(n)
            .ok_or_else(|| self.err("prekey ids exhausted"))?;
        self.set_meta_u64(counter, u64::from(next))?;
        Ok(first)
    }

    // ---- prekeys ------------------------------------------------------

    /// Stores a private prekey.
    pub fn put_prekey(&self, kind: PrekeyKind, id: u32, secret: &[u8]) -> Result<()> {
        let sealed = self.keys.seal(secret, &prekey_ad(kind, id));
        self.conn
            .execute(
                "INSERT OR REPLACE INTO prekeys (kind, id, secret, created_day) VALUES (?1, ?2, ?3, ?4)",
                params![kind as i64, id, sealed, to_i64(now_ms() / DAY_MS)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Loads a private prekey.
    pub fn get_prekey(&self, kind: PrekeyKind, id: u32) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT secret FROM prekeys WHERE kind = ?1 AND id = ?2",
                params![kind as i64, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match sealed {
            None => Ok(None),
            Some(s) => self
                .keys
                .open(&s, &prekey_ad(kind, id))
                .map(Some)
                .map_err(|e| self.err(format!("prekey does not open: {e}"))),
        }
    }

    /// Deletes a prekey (irrevocably: `secure_delete`).
    pub fn delete_prekey(&self, kind: PrekeyKind, id: u32) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM prekeys WHERE kind = ?1 AND id = ?2",
                params![kind as i64, id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Deletes replaced signed prekeys made before `cutoff_ms`, except `keep`,
    /// with the record of the PQXDH base keys accepted under them.
    pub fn prune_signed(&self, kind: PrekeyKind, keep: u32, cutoff_ms: u64) -> Result<()> {
        let cutoff_day = to_i64(cutoff_ms / DAY_MS);
        if kind == PrekeyKind::Signed {
            self.conn
                .execute(
                    "DELETE FROM seen_base_keys WHERE signed_prekey_id IN (SELECT id FROM prekeys WHERE kind = ?1 AND id != ?2 AND created_day < ?3)",
                    params![kind as i64, keep, cutoff_day],
                )
                .map_err(|e| self.err(e))?;
        }
        self.conn
            .execute(
                "DELETE FROM prekeys WHERE kind = ?1 AND id != ?2 AND created_day < ?3",
                params![kind as i64, keep, cutoff_day],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn base_key_tag(&self, base_key: &[u8]) -> Vec<u8> {
        self.keys.tag("base key", &[base_key])
    }

    /// Whether a prekey message with this PQXDH base key was accepted before.
    pub fn base_key_seen(&self, base_key: &[u8]) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM seen_base_keys WHERE tag = ?1",
                [self.base_key_tag(base_key)],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    /// Remembers an accepted base key until its signed prekey is pruned.
    pub fn remember_base_key(&self, base_key: &[u8], signed_prekey_id: u32) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO seen_base_keys (tag, signed_prekey_id) VALUES (?1, ?2)",
                params![self.base_key_tag(base_key), signed_prekey_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    // ---- contacts -----------------------------------------------------

    fn open_contact(&self, tag: &[u8], sealed: &[u8]) -> Result<Contact> {
        let plain = self
            .keys
            .open(sealed, &ad("contact", &[tag]))
            .map_err(|e| self.err(format!("a contact record does not open: {e}")))?;
        let rec: ContactRecord = serde_json::from_slice(&plain).map_err(|e| self.err(e))?;
        if self.keys.contact_tag(&rec.username) != tag {
            return Err(self.err("a contact record sits under another contact's name"));
        }
        let key = |h: &str| -> Result<PublicIdentity> {
            let b = hex::decode(h).map_err(|e| self.err(format!("contact key: {e}")))?;
            PublicIdentity::from_bytes(&b).map_err(|e| self.err(format!("contact key: {e}")))
        };
        let list = |h: &str| -> Result<SignedDeviceList> {
            let b = hex::decode(h).map_err(|e| self.err(format!("contact device list: {e}")))?;
            SignedDeviceList::from_bytes(&b)
                .map_err(|e| self.err(format!("contact device list: {e}")))
        };
        Ok(Contact {
            username: rec.username.clone(),
            identity: key(&rec.identity)?,
            verified: rec.verified,
            changed_identity: rec.changed_identity.as_deref().map(key).transpose()?,
            device_list: rec.device_list.as_deref().map(list).transpose()?,
            changed_device_list: rec.changed_device_list.as_deref().map(list).transpose()?,
        })
    }

    /// Loads a contact.
    pub fn contact(&self, username: &str) -> Result<Option<Contact>> {
        let tag = self.keys.contact_tag(username);
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT sealed FROM contacts WHERE tag = ?1", [&tag], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        sealed.map(|s| self.open_contact(&tag, &s)).transpose()
    }

    /// All contacts, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT tag, sealed FROM contacts")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        let mut out = rows
            .iter()
            .map(|(t, s)| self.open_contact(t, s))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    /// Writes a contact (insert or replace).
    pub fn put_contact(&self, c: &Contact) -> Result<()> {
        let tag = self.keys.contact_tag(&c.username);
        let rec = ContactRecord {
            username: c.username.clone(),
            identity: hex::encode(c.identity.to_bytes()),
            verified: c.verified,
            changed_identity: c
                .changed_identity
                .as_ref()
                .map(|i| hex::encode(i.to_bytes())),
            device_list: c.device_list.as_ref().map(|l| hex::encode(l.to_bytes())),
            changed_device_list: c
                .changed_device_list
                .as_ref()
                .map(|l| hex::encode(l.to_bytes())),
        };
        let json = serde_json::to_vec(&rec).map_err(|e| self.err(e))?;
        let sealed = self.keys.seal(&json, &ad("contact", &[&tag]));
        self.conn
            .execute(
                "INSERT INTO contacts (tag, sealed) VALUES (?1, ?2) ON CONFLICT (tag) DO UPDATE SET sealed = excluded.sealed",
                params![tag, sealed],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Pins `identity` for a new contact (no-op if the contact exists).
    pub fn pin_contact(&self, username: &str, identity: &PublicIdentity) -> Result<()> {
        if self.contact(username)?.is_some() {
            return Ok(());
        }
        self.put_contact(&Contact {
            username: username.to_owned(),
            identity: identity.clone(),
            verified: false,
            changed_identity: None,
            device_list: None,
            changed_device_list: None,
        })
    }

    /// Keeps `list` (already verified by the caller, and not older than the
    /// one kept) as the newest list of whichever of `username`'s pinned or
    /// changed account keys signed it. Returns whether it was kept.
    pub fn set_device_list(&self, username: &str, list: &SignedDeviceList) -> Result<bool> {
        let Some(mut c) = self.contact(username)? else {
            return Ok(false);
        };
        if list.account() == &c.identity {
            c.device_list = Some(list.clone());
        } else if c.changed_identity.as_ref() == Some(list.account()) {
            c.changed_device_list = Some(list.clone());
        } else {
            return Ok(false);
        }
        self.put_contact(&c)?;
        Ok(true)
    }

    /// Records `identity` as `username`'s changed identity. Returns whether
    /// it is news (a different key than the one already awaiting a decision),
    /// so that every further change warns again.
    pub fn mark_identity_changed(&self, username: &str, identity: &PublicIdentity) -> Result<bool> {
        let Some(mut c) = self.contact(username)? else {
            return Ok(false);
        };
        if &c.identity == identity || c.changed_identity.as_ref() == Some(identity) {
            return Ok(false);
        }
        c.changed_identity = Some(identity.clone());
        c.changed_device_list = None;
        self.put_contact(&c)?;
        Ok(true)
    }

    /// Accepts `identity` (the pending changed one): pins it, clears the
    /// verified flag, drops sessions with other identities, promotes its
    /// pending sessions and releases its quarantined messages into the
    /// history (those of other changed identities are deleted).
    pub fn accept_changed_identity(&self, username: &str, identity: &PublicIdentity) -> Result<()> {
        let Some(mut c) = self.contact(username)? else {
            return Err(ClientError::UnknownContact(username.to_owned()));
        };
        let new_list = if c.changed_identity.as_ref() == Some(identity) {
            c.changed_device_list.take()
        } else {
            None
        };
        c.identity = identity.clone();
        c.verified = false;
        c.changed_identity = None;
        c.device_list = new_list;
        self.put_contact(&c)?;
        let tag = self.keys.contact_tag(username);
        // Sessions belong to the account whose list names their device key.
        for row in self.sessions(username, Slot::Current)? {
            if !c.lists_device(row.device_id, row.session.remote_identity()) {
                self.delete_session(&tag, row.device_id, Slot::Current)?;
            }
        }
        for row in self.sessions(username, Slot::Pending)? {
            if c.lists_device(row.device_id, row.session.remote_identity()) {
                self.put_session(username, &row, Slot::Current)?;
            }
            self.delete_session(&tag, row.device_id, Slot::Pending)?;
        }
        let wanted = hex::encode(identity.to_bytes());
        for (seq, rec) in self.quarantined(username)? {
            if rec.quarantine_identity.as_deref() == Some(wanted.as_str()) {
                self.conn
                    .execute("UPDATE messages SET quarantined = 0 WHERE seq = ?1", [seq])
                    .map_err(|e| self.err(e))?;
                let mut rec = rec;
                rec.quarantine_identity = None;
                self.reseal_message(seq, &rec)?;
            } else {
                self.delete_message(seq)?;
            }
        }
        Ok(())
    }

    /// Discards `username`'s changed identity: its pending sessions and its
    /// quarantined messages. The pinned identity stays as it was.
    pub fn reject_changed_identity(&self, username: &str) -> Result<bool> {
        let Some(mut c) = self.contact(username)? else {
            return Err(ClientError::UnknownContact(username.to_owned()));
        };
        let tag = self.keys.contact_tag(username);
        let pending = self.sessions(username, Slot::Pending)?;
        let quarantined = self.quarantined(username)?;
        let had = c.changed_identity.is_some() || !pending.is_empty() || !quarantined.is_empty();
        c.changed_identity = None;
        c.changed_device_list = None;
        self.put_contact(&c)?;
        for row in pending {
            self.delete_session(&tag, row.device_id, Slot::Pending)?;
        }
        for (seq, _) in quarantined {
            self.delete_message(seq)?;
        }
        Ok(had)
    }

    /// Sets the verified flag.
    pub fn set_verified(&self, username: &str, verified: bool) -> Result<()> {
        let Some(mut c) = self.contact(username)? else {
            return Err(ClientError::UnknownContact(username.to_owned()));
        };
        c.verified = verified;
        self.put_contact(&c)
    }

    // ---- sessions -----------------------------------------------------

    fn open_session(
        &self,
        tag: &[u8],
        device_id: u32,
        slot: Slot,
        sealed: &[u8],
    ) -> Result<SessionRow> {
        let plain = self
            .keys
            .open(sealed, &session_ad(tag, device_id, slot))
            .map_err(|e| self.err(format!("a session does not open (moved or damaged): {e}")))?;
        let (reg, state) = plain
            .split_first_chunk::<4>()
            .ok_or_else(|| self.err("a session record is truncated"))?;
        let session = Session::from_bytes(state)
            .map_err(|e| self.err(format!("a session does not load: {e}")))?;
        Ok(SessionRow {
            device_id,
            registration_id: u32::from_be_bytes(*reg),
            session,
        })
    }

    /// The sessions of one slot with `username`'s devices.
    pub fn sessions(&self, username: &str, slot: Slot) -> Result<Vec<SessionRow>> {
        let tag = self.keys.contact_tag(username);
        let rows: Vec<(u32, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT device_id, sealed FROM sessions WHERE tag = ?1 AND slot = ?2 ORDER BY device_id",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![tag, slot as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        rows.iter()
            .map(|(d, s)| self.open_session(&tag, *d, slot, s))
            .collect()
    }

    /// One session.
    pub fn session(
        &self,
        username: &str,
        device_id: u32,
        slot: Slot,
    ) -> Result<Option<SessionRow>> {
        let tag = self.keys.contact_tag(username);
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT sealed FROM sessions WHERE tag = ?1 AND device_id = ?2 AND slot = ?3",
                params![tag, device_id, slot as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        sealed
            .map(|s| self.open_session(&tag, device_id, slot, &s))
            .transpose()
    }

    /// Writes one session (insert or replace), bound to its row.
    pub fn put_session(&self, username: &str, row: &SessionRow, slot: Slot) -> Result<()> {
        let tag = self.keys.contact_tag(username);
        let mut plain = Zeroizing::new(row.registration_id.to_be_bytes().to_vec());
        plain.extend_from_slice(&row.session.to_bytes());
        let sealed = self
            .keys
            .seal(&plain, &session_ad(&tag, row.device_id, slot));
        self.conn
            .execute(
                "INSERT INTO sessions (tag, device_id, slot, sealed) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tag, device_id, slot) DO UPDATE SET sealed = excluded.sealed",
                params![tag, row.device_id, slot as i64, sealed],
            )
            .map_err(|e| self.err(e))?;
        self.touch_sessions();
        Ok(())
    }

    fn delete_session(&self, tag: &[u8], device_id: u32, slot: Slot) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM sessions WHERE tag = ?1 AND device_id = ?2 AND slot = ?3",
                params![tag, device_id, slot as i64],
            )
            .map_err(|e| self.err(e))?;
        self.touch_sessions();
        Ok(())
    }

    /// Writes current sessions and deletes those of `remove` devices.
    pub fn save_sessions(&self, username: &str, rows: &[SessionRow], remove: &[u32]) -> Result<()> {
        for r in rows {
            self.put_session(username, r, Slot::Current)?;
        }
        let tag = self.keys.contact_tag(username);
        for d in remove {
            self.delete_session(&tag, *d, Slot::Current)?;
        }
        Ok(())
    }

    /// Moves every current session to the archive (replacing older archives).
    fn archive_all_sessions(&self) -> Result<()> {
        let rows: Vec<(Vec<u8>, u32, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT tag, device_id, sealed FROM sessions WHERE slot = ?1")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([Slot::Current as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        for (tag, device, sealed) in rows {
            let plain = self
                .keys
                .open(&sealed, &session_ad(&tag, device, Slot::Current))
                .map_err(|e| {
                    self.err(format!("a session does not open (moved or damaged): {e}"))
                })?;
            let archived = self
                .keys
                .seal(&plain, &session_ad(&tag, device, Slot::Archived));
            self.conn
                .execute(
                    "INSERT INTO sessions (tag, device_id, slot, sealed) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tag, device_id, slot) DO UPDATE SET sealed = excluded.sealed",
                    params![tag, device, Slot::Archived as i64, archived],
                )
                .map_err(|e| self.err(e))?;
        }
        self.conn
            .execute(
                "DELETE FROM sessions WHERE slot = ?1",
                [Slot::Current as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    // ---- messages -----------------------------------------------------

    fn message_ad(contact_tag: &[u8], id_tag: &[u8]) -> Vec<u8> {
        ad("message", &[contact_tag, id_tag])
    }

    fn seal_record(
        &self,
        contact_tag: &[u8],
        id_tag: &[u8],
        rec: &mut MessageRecord,
    ) -> Result<Vec<u8>> {
        rec.pad.clear();
        let len = serde_json::to_vec(&*rec).map_err(|e| self.err(e))?.len();
        // `"pad":""` grows by one byte per pad character.
        let target = len.div_ceil(MESSAGE_PAD).max(1) * MESSAGE_PAD;
        rec.pad = " ".repeat(target - len);
        let json = Zeroizing::new(serde_json::to_vec(&*rec).map_err(|e| self.err(e))?);
        Ok(self
            .keys
            .seal(&json, &Self::message_ad(contact_tag, id_tag)))
    }

    fn open_record(
        &self,
        contact_tag: &[u8],
        id_tag: &[u8],
        sealed: &[u8],
    ) -> Result<MessageRecord> {
        let json = self
            .keys
            .open(sealed, &Self::message_ad(contact_tag, id_tag))
            .map_err(|e| self.err(format!("a message does not open: {e}")))?;
        let rec: MessageRecord = serde_json::from_slice(&json).map_err(|e| self.err(e))?;
        let id = hex::decode(&rec.message_id).map_err(|e| self.err(e))?;
        if self.keys.contact_tag(&rec.contact) != contact_tag
            || self.keys.message_tag(&id) != id_tag
        {
            return Err(self.err("a message record sits under another message's row"));
        }
        Ok(rec)
    }

    pub(crate) fn insert_record(&self, rec: &mut MessageRecord, shown: bool) -> Result<()> {
        let id = hex::decode(&rec.message_id).map_err(|e| self.err(e))?;
        let contact_tag = self.keys.contact_tag(&rec.contact);
        let id_tag = self.keys.message_tag(&id);
        let quarantined = rec.quarantine_identity.is_some();
        let expiring = rec.conv.expires_at_ms > 0;
        let sealed = self.seal_record(&contact_tag, &id_tag, rec)?;
        self.conn
            .execute(
                "INSERT INTO messages (contact_tag, id_tag, sealed, shown, quarantined, expiring) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![contact_tag, id_tag, sealed, shown, quarantined, expiring],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub(crate) fn reseal_message(&self, seq: i64, rec: &MessageRecord) -> Result<()> {
        let id = hex::decode(&rec.message_id).map_err(|e| self.err(e))?;
        let contact_tag = self.keys.contact_tag(&rec.contact);
        let id_tag = self.keys.message_tag(&id);
        let mut copy = rec.clone();
        let expiring = rec.conv.expires_at_ms > 0;
        let sealed = self.seal_record(&contact_tag, &id_tag, &mut copy)?;
        self.conn
            .execute(
                "UPDATE messages SET sealed = ?2, expiring = ?3 WHERE seq = ?1",
                params![seq, sealed, expiring],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub(crate) fn delete_message(&self, seq: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM messages WHERE seq = ?1", [seq])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Stores an outgoing message (already sent).
    pub fn add_outgoing(
        &self,
        contact: &str,
        message_id: &[u8],
        sealed: SealedMessage,
        sent_at_ms: u64,
        server_ts_ms: u64,
    ) -> Result<()> {
        let mut rec = MessageRecord {
            group: None,
            contact: contact.to_owned(),
            message_id: hex::encode(message_id),
            outgoing: true,
            sender_clock_ms: sent_at_ms,
            sender_clock_clamped: false,
            server_ts_ms,
            quarantine_identity: None,
            body: sealed,
            conv: Default::default(),
            attachment: None,
            pad: String::new(),
        };
        self.insert_record(&mut rec, true)
    }

    /// Stores a received message, not yet shown.
    pub fn add_incoming(&self, m: NewIncoming<'_>) -> Result<()> {
        let mut rec = MessageRecord {
            group: None,
            contact: m.sender.to_owned(),
            message_id: hex::encode(m.message_id),
            outgoing: false,
            sender_clock_ms: m.sender_clock_ms,
            sender_clock_clamped: m.sender_clock_clamped,
            server_ts_ms: m.server_ts_ms,
            quarantine_identity: m.quarantine_identity.map(|i| hex::encode(i.to_bytes())),
            body: m.sealed,
            conv: Default::default(),
            attachment: None,
            pad: String::new(),
        };
        self.insert_record(&mut rec, false)
    }

    fn processed_tag(&self, sender: &str, sender_device: u32, message_id: &[u8]) -> Vec<u8> {
        self.keys.tag(
            "processed",
            &[sender.as_bytes(), &sender_device.to_be_bytes(), message_id],
        )
    }

    /// Whether an envelope was already processed.
    pub fn is_processed(
        &self,
        sender: &str,
        sender_device: u32,
        message_id: &[u8],
    ) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM processed WHERE tag = ?1",
                [self.processed_tag(sender, sender_device, message_id)],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    /// Records an envelope as processed.
    pub fn mark_processed(
        &self,
        sender: &str,
        sender_device: u32,
        message_id: &[u8],
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO processed (tag) VALUES (?1)",
                [self.processed_tag(sender, sender_device, message_id)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Notes that the server took the acknowledgement of these envelopes, and
    /// prunes acknowledged entries beyond the newest [`PROCESSED_KEEP_ACKED`].
    pub fn mark_acked(&self, envelopes: &[(String, u32, Vec<u8>)]) -> Result<()> {
        for (sender, device, id) in envelopes {
            self.conn
                .execute(
                    "UPDATE processed SET acked = 1 WHERE tag = ?1",
                    [self.processed_tag(sender, *device, id)],
                )
                .map_err(|e| self.err(e))?;
        }
        self.conn
            .execute(
                "DELETE FROM processed WHERE acked = 1 AND seq <= (SELECT MAX(seq) FROM processed WHERE acked = 1) - ?1",
                [PROCESSED_KEEP_ACKED],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub(crate) fn records(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<(i64, MessageRecord)>> {
        type Row = (i64, Vec<u8>, Vec<u8>, Vec<u8>);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        rows.into_iter()
            .map(|(seq, ct, it, sealed)| Ok((seq, self.open_record(&ct, &it, &sealed)?)))
            .collect()
    }

    fn quarantined(&self, username: &str) -> Result<Vec<(i64, MessageRecord)>> {
        let tag = self.keys.contact_tag(username);
        self.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE contact_tag = ?1 AND quarantined = 1 ORDER BY seq",
            &[&tag],
        )
    }

    fn entries(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<HistoryEntry>> {
        self.records(sql, args)?
            .into_iter()
            // Conversation events (timer changes) are not messages: they
            // are read through `conversation::Conversation`.
            .filter(|(_, rec)| !rec.conv.is_event())
            .map(|(seq, rec)| self.entry(seq, &rec))
            .collect()
    }

    /// The history entry of one record: its text is the latest edit's.
    pub(crate) fn entry(&self, seq: i64, rec: &MessageRecord) -> Result<HistoryEntry> {
        {
            {
                let group = match &rec.group {
                    Some(g) => Some(Box::new(HistoryGroup {
                        name: self
                            .group_name_of(&g.id)?
                            .unwrap_or_else(|| "(a group this device left)".to_owned()),
                        id: g.id.clone(),
                        event: g.event,
                    })),
                    None => None,
                };
                Ok(HistoryEntry {
                    seq,
                    message_id: hex::decode(&rec.message_id).map_err(|e| self.err(e))?,
                    contact: match &rec.group {
                        Some(g) => g.author.clone(),
                        None => rec.contact.clone(),
                    },
                    group,
                    outgoing: rec.outgoing,
                    text: rec.conv.current_text(&rec.body.text).to_owned(),
                    sender_clock_ms: rec.sender_clock_ms,
                    sender_clock_clamped: rec.sender_clock_clamped,
                    server_ts_ms: rec.server_ts_ms,
                    quarantined: rec.quarantine_identity.is_some(),
                    attachment: rec.attachment.as_ref().map(AttachmentRecord::info),
                })
            }
        }
    }

    /// The conversation with `contact` (quarantined messages excluded), oldest first.
    pub fn history(&self, contact: &str) -> Result<Vec<HistoryEntry>> {
        let tag = self.keys.contact_tag(contact);
        self.entries(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE contact_tag = ?1 AND quarantined = 0 ORDER BY seq",
            &[&tag],
        )
    }

    /// Incoming messages not yet shown (optionally only from `from`), in order
    /// of arrival, marked shown as they are returned: run it in
    /// [`Store::write`] so that two processes never show one message twice.
    pub fn take_unshown(&self, from: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let entries = match from {
            Some(f) => {
                let tag = self.keys.contact_tag(f);
                self.entries(
                    "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE shown = 0 AND contact_tag = ?1 ORDER BY seq",
                    &[&tag],
                )?
            }
            None => self.entries(
                "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE shown = 0 ORDER BY seq",
                &[],
            )?,
        };
        for e in &entries {
            self.conn
                .execute("UPDATE messages SET shown = 1 WHERE seq = ?1", [e.seq])
                .map_err(|e| self.err(e))?;
        }
        Ok(entries)
    }

    /// What is needed to report incoming messages with id `message_id`
    /// (from `sender` when given): one entry per sender.
    pub fn report_material(
        &self,
        message_id: &[u8],
        sender: Option<&str>,
    ) -> Result<Vec<ReportMaterial>> {
        let id_tag = self.keys.message_tag(message_id);
        let mut out: Vec<ReportMaterial> = Vec::new();
        for (_, rec) in self.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE id_tag = ?1 ORDER BY seq",
            &[&id_tag],
        )? {
            // A group message's sender is its author.
            let author = rec.group.as_ref().map_or(&rec.contact, |g| &g.author);
            if rec.outgoing
                || rec.group.as_ref().is_some_and(|g| g.event)
                || sender.is_some_and(|s| s != author)
            {
                continue;
            }
            if out.iter().any(|m| &m.sender == author) {
                continue;
            }
            let group_id = match &rec.group {
                Some(g) => hex::decode(&g.id).map_err(|e| self.err(e))?,
                None => Vec::new(),
            };
            out.push(ReportMaterial {
                sender: author.clone(),
                group_id,
                server_ts_ms: rec.server_ts_ms,
                message_id: message_id.to_vec(),
                sealed: rec.body.clone(),
                attachment: rec
                    .attachment
                    .as_ref()
                    .map(AttachmentRecord::pointer)
                    .transpose()?,
            });
        }
        Ok(out)
    }

    // ---- conversation features (schema 3; logic in crate::conversation) --

    /// Stores a received message with its conversation data, not yet shown.
    pub(crate) fn add_incoming_with(
        &self,
        m: NewIncoming<'_>,
        conv: crate::conversation::ConvRecord,
        shown: bool,
        attachment: Option<AttachmentRecord>,
    ) -> Result<()> {
        let mut rec = MessageRecord {
            group: None,
            contact: m.sender.to_owned(),
            message_id: hex::encode(m.message_id),
            outgoing: false,
            sender_clock_ms: m.sender_clock_ms,
            sender_clock_clamped: m.sender_clock_clamped,
            server_ts_ms: m.server_ts_ms,
            quarantine_identity: m.quarantine_identity.map(|i| hex::encode(i.to_bytes())),
            body: m.sealed,
            conv,
            attachment,
            pad: String::new(),
        };
        self.insert_record(&mut rec, shown)
    }

    /// Stores an outgoing message (already sent) with its conversation data.
    // Each argument is one field of the record; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_outgoing_with(
        &self,
        contact: &str,
        message_id: &[u8],
        sealed: SealedMessage,
        sent_at_ms: u64,
        server_ts_ms: u64,
        conv: crate::conversation::ConvRecord,
        attachment: Option<AttachmentRecord>,
    ) -> Result<()> {
        let mut rec = outgoing_record(
            contact,
            message_id,
            sealed,
            sent_at_ms,
            server_ts_ms,
            conv,
            attachment,
        );
        self.insert_record(&mut rec, true)
    }

    /// Stores a message another device of this account sent (its copy),
    /// not yet shown here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_outgoing_copy(
        &self,
        contact: &str,
        message_id: &[u8],
        sealed: SealedMessage,
        sent_at_ms: u64,
        server_ts_ms: u64,
        conv: crate::conversation::ConvRecord,
        attachment: Option<AttachmentRecord>,
    ) -> Result<()> {
        let mut rec = outgoing_record(
            contact,
            message_id,
            sealed,
            sent_at_ms,
            server_ts_ms,
            conv,
            attachment,
        );
        self.insert_record(&mut rec, false)
    }

    /// Every record of the conversation with `contact` (quarantined ones
    /// excluded), oldest first, events included.
    pub(crate) fn conversation_records(&self, contact: &str) -> Result<Vec<(i64, MessageRecord)>> {
        let tag = self.keys.contact_tag(contact);
        self.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE contact_tag = ?1 AND quarantined = 0 ORDER BY seq",
            &[&tag],
        )
    }

    /// The records of the conversation with `contact` whose message id is
    /// `message_id` (ours and theirs may share an id), quarantined excluded.
    pub(crate) fn find_messages(
        &self,
        contact: &str,
        message_id: &[u8],
    ) -> Result<Vec<(i64, MessageRecord)>> {
        let tag = self.keys.contact_tag(contact);
        let id_tag = self.keys.message_tag(message_id);
        self.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE contact_tag = ?1 AND id_tag = ?2 AND quarantined = 0 ORDER BY seq",
            &[&tag, &id_tag],
        )
    }

    /// Every record whose message id is `message_id`, any conversation.
    pub(crate) fn records_by_id(&self, message_id: &[u8]) -> Result<Vec<(i64, MessageRecord)>> {
        let id_tag = self.keys.message_tag(message_id);
        self.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE id_tag = ?1 ORDER BY seq",
            &[&id_tag],
        )
    }

    /// Records of disappearing messages (their expiry is inside the seal).
    pub(crate) fn expiring_records(&self) -> Result<Vec<(i64, MessageRecord)>> {
        self.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE expiring = 1 ORDER BY seq",
            &[],
        )
    }

    fn conversation_ad(tag: &[u8]) -> Vec<u8> {
        ad("conversation", &[tag])
    }

    /// The sealed per-conversation state of `contact` (JSON), if any.
    pub(crate) fn conversation_state(&self, contact: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let tag = self.keys.contact_tag(contact);
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT sealed FROM conversations WHERE tag = ?1",
                [&tag],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match sealed {
            None => Ok(None),
            Some(s) => self
                .keys
                .open(&s, &Self::conversation_ad(&tag))
                .map(Some)
                .map_err(|e| self.err(format!("a conversation's settings do not open: {e}"))),
        }
    }

    /// Seals and writes the per-conversation state of `contact`.
    pub(crate) fn put_conversation_state(&self, contact: &str, json: &[u8]) -> Result<()> {
        let tag = self.keys.contact_tag(contact);
        let sealed = self.keys.seal(json, &Self::conversation_ad(&tag));
        self.conn
            .execute(
                "INSERT INTO conversations (tag, sealed) VALUES (?1, ?2) ON CONFLICT (tag) DO UPDATE SET sealed = excluded.sealed",
                params![tag, sealed],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Copies every page of the WAL into the database file and truncates the
    /// WAL, so `secure_delete`'s overwrite reaches the main file too.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }

    /// Counts rows of a table (tests and diagnostics).
    pub fn count(&self, table: &str) -> Result<u64> {
        let sql = match table {
            "messages" | "processed" | "sessions" | "contacts" | "prekeys" | "seen_base_keys" => {
                format!("SELECT COUNT(*) FROM {table}")
            }
            _ => return Err(self.err(format!("unknown table {table}"))),
        };
        self.conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .map(to_u64)
            .map_err(|e| self.err(e))
    }
}

/// Rewrites a schema-1 database as schema 2 inside `tx`: reads every row
/// under `old`, seals it under `new` with its row bound in, drops the old
/// tables.
fn migrate_v1(tx: &Connection, old: &Keys, new: &Keys, path: &Path, key_path: &Path) -> Result<()> {
    let e = |err: rusqlite::Error| ClientError::store(path, err);
    let bad = |what: &str| ClientError::store(path, format!("migrating the store: {what}"));
    // Schema 1 sealed the key check, the identity and the token; the rest of
    // `meta` was plain.
    let meta: Vec<(String, Vec<u8>)> = {
        let mut stmt = tx.prepare("SELECT key, value FROM meta").map_err(e)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(e)?;
        rows.collect::<std::result::Result<_, _>>().map_err(e)?
    };
    let mut meta_plain: Vec<(String, Zeroizing<Vec<u8>>)> = Vec::new();
    for (k, v) in meta {
        match k.as_str() {
            "key_check" => {
                old.open(&v, KEY_CHECK)
                    .map_err(|_| ClientError::WrongKey(key_path.to_path_buf()))?;
            }
            "identity" | "token" => {
                let plain = old
                    .open(&v, k.as_bytes())
                    .map_err(|_| ClientError::WrongKey(key_path.to_path_buf()))?;
                meta_plain.push((k, plain));
            }
            _ => meta_plain.push((k, Zeroizing::new(v))),
        }
    }
    type PrekeyRow = (i64, u32, Vec<u8>, i64);
    let prekeys: Vec<PrekeyRow> = {
        let mut stmt = tx
            .prepare("SELECT kind, id, secret, created_at_ms FROM prekeys")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(e)?;
        rows.collect::<std::result::Result<_, _>>().map_err(e)?
    };
    type ContactRow = (String, Vec<u8>, bool, Option<Vec<u8>>);
    let contacts: Vec<ContactRow> = {
        let mut stmt = tx
            .prepare("SELECT username, identity, verified, changed_identity FROM contacts")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(e)?;
        rows.collect::<std::result::Result<_, _>>().map_err(e)?
    };
    let sessions: Vec<(String, u32, u32, Vec<u8>)> = {
        let mut stmt = tx
            .prepare("SELECT username, device_id, registration_id, state FROM sessions")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(e)?;
        rows.collect::<std::result::Result<_, _>>().map_err(e)?
    };
    type MessageRow = (Vec<u8>, String, bool, Vec<u8>, i64, i64, bool);
    let messages: Vec<MessageRow> = {
        let mut stmt = tx
            .prepare("SELECT message_id, contact, outgoing, sealed, sent_at_ms, server_ts_ms, shown FROM messages ORDER BY seq")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(e)?;
        rows.collect::<std::result::Result<_, _>>().map_err(e)?
    };
    let processed: Vec<(String, u32, Vec<u8>)> = {
        let mut stmt = tx
            .prepare("SELECT sender, sender_device, message_id FROM processed")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(e)?;
        rows.collect::<std::result::Result<_, _>>().map_err(e)?
    };

    tx.execute_batch(
        "DROP TABLE meta; DROP TABLE prekeys; DROP TABLE sessions; DROP TABLE contacts; DROP TABLE messages; DROP TABLE processed;",
    )
    .map_err(e)?;
    tx.execute_batch(SCHEMA_V2).map_err(e)?;
    tx.execute_batch(SCHEMA_V3_DELTA).map_err(e)?;
    tx.execute_batch(SCHEMA_V4_DELTA).map_err(e)?;
    let db = Db {
        conn: tx,
        keys: new,
        path,
        home: path.parent().unwrap_or(path),
        sessions_written: Cell::new(false),
        mls: MlsWrites::new(None),
    };
    for (k, v) in &meta_plain {
        db.set_meta(k, v)?;
    }
    for (kind, id, sealed, created) in prekeys {
        let kind = match kind {
            1 => PrekeyKind::Signed,
            2 => PrekeyKind::KemLastResort,
            3 => PrekeyKind::OneTime,
            4 => PrekeyKind::KemOneTime,
            _ => return Err(bad("unknown prekey kind")),
        };
        let secret = old
            .open(&sealed, &prekey_ad(kind, id))
            .map_err(|_| bad("a prekey does not open"))?;
        let resealed = new.seal(&secret, &prekey_ad(kind, id));
        tx.execute(
            "INSERT INTO prekeys (kind, id, secret, created_day) VALUES (?1, ?2, ?3, ?4)",
            params![kind as i64, id, resealed, created / to_i64(DAY_MS)],
        )
        .map_err(e)?;
    }
    for (username, identity, verified, changed) in contacts {
        let key = |b: &[u8]| PublicIdentity::from_bytes(b).map_err(|_| bad("a contact key"));
        db.put_contact(&Contact {
            username,
            identity: key(&identity)?,
            verified,
            changed_identity: changed.as_deref().map(key).transpose()?,
            device_list: None,
            changed_device_list: None,
        })?;
    }
    for (username, device_id, registration_id, state) in sessions {
        let session =
            Session::unseal(&old.storage, &state).map_err(|_| bad("a session does not open"))?;
        db.put_session(
            &username,
            &SessionRow {
                device_id,
                registration_id,
                session,
            },
            Slot::Current,
        )?;
    }
    for (message_id, contact, outgoing, sealed, sent, server, shown) in messages {
        let mut v1_ad = b"message/".to_vec();
        v1_ad.extend_from_slice(&message_id);
        v1_ad.extend_from_slice(contact.as_bytes());
        let json = old
            .open(&sealed, &v1_ad)
            .map_err(|_| bad("a message does not open"))?;
        let body: SealedMessage =
            serde_json::from_slice(&json).map_err(|_| bad("a message is malformed"))?;
        let mut rec = MessageRecord {
            group: None,
            contact,
            message_id: hex::encode(&message_id),
            outgoing,
            sender_clock_ms: to_u64(sent),
            sender_clock_clamped: false,
            server_ts_ms: to_u64(server),
            quarantine_identity: None,
            body,
            conv: Default::default(),
            attachment: None,
            pad: String::new(),
        };
        db.insert_record(&mut rec, shown)?;
    }
    for (sender, device, id) in processed {
        db.mark_processed(&sender, device, &id)?;
    }
    tx.execute("UPDATE processed SET acked = 1", [])
        .map_err(e)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .map_err(e)?;
    let sealed = new.seal(KEY_CHECK, KEY_CHECK);
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('key_check', ?1)",
        [sealed],
    )
    .map_err(e)?;
    Ok(())
}
