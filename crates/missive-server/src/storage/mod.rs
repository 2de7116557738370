//! Storage behind one object-safe trait, one module per backend.
//!
//! Services hold an `Arc<dyn Storage>` and never see SQL. A backend:
//! - commits every write durably before returning (SQLite: WAL with
//!   `synchronous=FULL`; PostgreSQL: synchronous commit);
//! - assigns envelope ids that increase per recipient device **in commit
//!   order** (receive streams resume "after the last id they delivered"; the
//!   SQLite backend uses `AUTOINCREMENT` under its single writer, a PostgreSQL
//!   backend must serialise inserts per device, e.g. by locking the device row);
//! - maps its driver errors to [`StorageError`] in one function.
//!
//! The backend-independent test suite is [`suite`]; every backend runs it.

mod groups;
pub mod postgres;
mod reserve;
pub mod sqlite;
mod sqlite_hot;
#[doc(hidden)]
pub mod suite;

use std::sync::Arc;

use async_trait::async_trait;

/// Database id of an account.
pub type AccountId = i64;

/// One device of one account: the unit of delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceAddress {
    /// The account.
    pub account: AccountId,
    /// Device id within the account (1 for the first device).
    pub device: u32,
}

/// Who an authenticated call comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The caller's device.
    pub address: DeviceAddress,
    /// The caller's username.
    pub username: String,
    /// When the caller's token expires (receive streams end then).
    pub expires_at_ms: u64,
}

/// Milliseconds in a day: tokens expire at the start of a UTC day.
pub const DAY_MS: u64 = 86_400_000;

/// What a challenge may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// Registration.
    Register,
    /// Login.
    Login,
    /// A linked device joining its account (protocol v2).
    AddDevice,
}

impl ChallengePurpose {
    /// Stored representation.
    pub fn code(self) -> i64 {
        match self {
            Self::Register => 1,
            Self::Login => 2,
            Self::AddDevice => 3,
        }
    }
}

/// A signed X25519 prekey as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPrekeyRecord {
    /// Client-chosen id.
    pub id: u32,
    /// 32 bytes.
    pub public_key: Vec<u8>,
    /// 64 bytes.
    pub signature: Vec<u8>,
}

/// A signed ML-KEM prekey as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KemPrekeyRecord {
    /// Client-chosen id.
    pub id: u32,
    /// 1184 bytes.
    pub public_key: Vec<u8>,
    /// 64 bytes.
    pub signature: Vec<u8>,
}

/// A one-time X25519 prekey as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTimePrekeyRecord {
    /// Client-chosen id.
    pub id: u32,
    /// 32 bytes.
    pub public_key: Vec<u8>,
}

/// Everything a registration stores. Signatures are verified before.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Case-folded, validated username.
    pub username: String,
    /// The account key, `PublicIdentity::to_bytes()` (the 32-byte Ed25519 key).
    pub identity: Vec<u8>,
    /// Device 1's own key (protocol v2), `PublicIdentity::to_bytes()`.
    pub device_identity: Vec<u8>,
    /// The account's first signed device list (version 1, naming device 1),
    /// stored in the same transaction as the account.
    pub signed_device_list: Vec<u8>,
    /// Registration id of device 1.
    pub registration_id: u32,
    /// Signed prekey of device 1.
    pub signed_prekey: SignedPrekeyRecord,
    /// Last-resort KEM prekey of device 1.
    pub last_resort_kem_prekey: KemPrekeyRecord,
    /// One-time X25519 prekeys of device 1.
    pub one_time_prekeys: Vec<OneTimePrekeyRecord>,
    /// One-time KEM prekeys of device 1.
    pub one_time_kem_prekeys: Vec<KemPrekeyRecord>,
    /// Days since the Unix epoch (creation and last-seen day).
    pub today: i64,
}

/// A linked device joining an existing account (protocol v2). Its key and
/// registration id come from the account's verified device list; its prekey
/// signatures are verified before.
#[derive(Clone, Debug)]
pub struct NewDevice {
    /// The device's address (its account and listed device id).
    pub address: DeviceAddress,
    /// The device key, `PublicIdentity::to_bytes()`.
    pub identity: Vec<u8>,
    /// Registration id.
    pub registration_id: u32,
    /// Signed prekey.
    pub signed_prekey: SignedPrekeyRecord,
    /// Last-resort KEM prekey.
    pub last_resort_kem_prekey: KemPrekeyRecord,
    /// One-time X25519 prekeys.
    pub one_time_prekeys: Vec<OneTimePrekeyRecord>,
    /// One-time KEM prekeys.
    pub one_time_kem_prekeys: Vec<KemPrekeyRecord>,
    /// Days since the Unix epoch (creation day).
    pub today: i64,
}

/// A device as senders must address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Device id.
    pub device_id: u32,
    /// Current registration id.
    pub registration_id: u32,
}

/// One device's bundle, with the one-time keys already consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRecord {
    /// Device id.
    pub device_id: u32,
    /// Registration id.
    pub registration_id: u32,
    /// The device's own key (protocol v2), `PublicIdentity::to_bytes()`.
    pub identity: Vec<u8>,
    /// Current signed prekey.
    pub signed_prekey: SignedPrekeyRecord,
    /// A one-time KEM prekey, else the last-resort one.
    pub kem_prekey: KemPrekeyRecord,
    /// Whether `kem_prekey` is the last-resort key.
    pub kem_prekey_is_last_resort: bool,
    /// A one-time X25519 prekey if one was left.
    pub one_time_prekey: Option<OneTimePrekeyRecord>,
}

/// The answer to a bundle fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundles {
    /// `PublicIdentity::to_bytes()` of the account key.
    pub identity: Vec<u8>,
    /// One per selected device, each with its own device key.
    pub bundles: Vec<BundleRecord>,
}

/// One-time prekeys left for a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrekeyCounts {
    /// One-time X25519 prekeys.
    pub one_time: u32,
    /// One-time ML-KEM prekeys.
    pub one_time_kem: u32,
}

/// One envelope to store for one recipient device.
#[derive(Clone, Debug)]
pub struct NewEnvelope {
    /// Recipient device id.
    pub recipient_device: u32,
    /// `EnvelopeType` as its integer.
    pub kind: i32,
    /// Ciphertext.
    pub content: Vec<u8>,
    /// Franking commitment.
    pub franking_commitment: Vec<u8>,
    /// Server franking tag.
    pub franking_tag: Vec<u8>,
}

/// One `Send` call, stored atomically (all its envelopes or none).
#[derive(Clone, Debug)]
pub struct SendItem {
    /// Sender username (delivered in `Envelope.sender`).
    pub sender: String,
    /// Sender device.
    pub sender_device: u32,
    /// Recipient account.
    pub recipient: AccountId,
    /// Sender-chosen idempotency key.
    pub message_id: Vec<u8>,
    /// Timestamp the tags were computed with.
    pub server_timestamp_ms: u64,
    /// When the envelopes expire, ms since the epoch: acceptance plus the
    /// shorter of the sender's `retention_secs` and the server's retention.
    /// They are never delivered after it and purged at it.
    pub expires_at_ms: u64,
    /// One per recipient device.
    pub envelopes: Vec<NewEnvelope>,
    /// Pending envelopes per device at which the mailbox is full.
    pub mailbox_limit: u32,
}

/// Result of one [`SendItem`] inside a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored now.
    Stored {
        /// The timestamp of the stored envelopes.
        server_timestamp_ms: u64,
    },
    /// Already stored by an earlier call with the same message id; nothing new.
    Duplicate {
        /// The timestamp of the first call.
        server_timestamp_ms: u64,
    },
    /// A recipient device's mailbox is full; nothing stored.
    MailboxFull {
        /// The full device.
        device: u32,
    },
    /// The recipient account or device no longer exists; nothing stored.
    RecipientGone,
}

/// A pending envelope as delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Server id, increasing per recipient device.
    pub id: u64,
    /// Sender username.
    pub sender: String,
    /// Sender device.
    pub sender_device: u32,
    /// `EnvelopeType`.
    pub kind: i32,
    /// Ciphertext.
    pub content: Vec<u8>,
    /// Sender's message id.
    pub message_id: Vec<u8>,
    /// Acceptance time.
    pub server_timestamp_ms: u64,
    /// When it expires (ms since the epoch); `None` for envelopes stored
    /// before per-envelope expiry (only the server's retention applies),
    /// and for online-only envelopes, which are never stored.
    pub expires_at_ms: Option<u64>,
    /// Franking commitment.
    pub franking_commitment: Vec<u8>,
    /// Server franking tag.
    pub franking_tag: Vec<u8>,
}

impl StoredEnvelope {
    /// Whether it has expired at `now_ms` (a purge may not have run yet).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// What a purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    /// Expired envelopes.
    pub envelopes: u64,
    /// Expired tokens and challenges.
    pub credentials: u64,
    /// Expired link mailboxes.
    pub links: u64,
    /// Group messages and Welcomes past their retention or acknowledged by
    /// every device that gets them.
    pub group_messages: u64,
}

/// A slot of a link mailbox (`LinkService`), in the order slots are posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSlot {
    /// Primary to new device; posted with a token, records its account.
    Hello,
    /// New device to primary; unauthenticated.
    Reply,
    /// Primary to new device; only from the account that posted HELLO.
    Finish,
}

/// One message to post into a link mailbox. The payload is opaque sealed
/// bytes: its `Debug` shows only its length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LinkMessage<'a> {
    /// HELLO, posted by `account`.
    Hello {
        /// The poster's account, recorded with the HELLO.
        account: AccountId,
        /// Sealed bytes.
        payload: &'a [u8],
    },
    /// REPLY (unauthenticated).
    Reply {
        /// Sealed bytes.
        payload: &'a [u8],
    },
    /// FINISH, posted by `account`, which must be the HELLO's.
    Finish {
        /// The poster's account.
        account: AccountId,
        /// Sealed bytes.
        payload: &'a [u8],
    },
}

impl LinkMessage<'_> {
    /// The slot this message goes into.
    pub fn slot(&self) -> LinkSlot {
        match self {
            Self::Hello { .. } => LinkSlot::Hello,
            Self::Reply { .. } => LinkSlot::Reply,
            Self::Finish { .. } => LinkSlot::Finish,
        }
    }

    /// The sealed bytes.
    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Hello { payload, .. }
            | Self::Reply { payload }
            | Self::Finish { payload, .. } => payload,
        }
    }
}

impl std::fmt::Debug for LinkMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("LinkMessage");
        out.field("slot", &self.slot());
        if let Self::Hello { account, .. } | Self::Finish { account, .. } = self {
            out.field("account", account);
        }
        out.field("payload_len", &self.payload().len()).finish()
    }
}

/// A link mailbox as stored (unexpired). Every payload is opaque sealed
/// bytes: `Debug` shows only which slots are written.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkMailbox {
    /// The new device's offer (public keys), exactly
    /// [`crate::limits::LINK_OFFER_LEN`] bytes.
    pub offer: Vec<u8>,
    /// HELLO, once posted.
    pub hello: Option<Vec<u8>>,
    /// The account that posted HELLO.
    pub hello_account: Option<AccountId>,
    /// REPLY, once posted.
    pub reply: Option<Vec<u8>>,
    /// FINISH, once posted.
    pub finish: Option<Vec<u8>>,
    /// When it is deleted, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for LinkMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            offer,
            hello,
            hello_account,
            reply,
            finish,
            expires_at_ms,
        } = self;
        f.debug_struct("LinkMailbox")
            .field("offer_len", &offer.len())
            .field("hello", &hello.is_some())
            .field("hello_account", hello_account)
            .field("reply", &reply.is_some())
            .field("finish", &finish.is_some())
            .field("expires_at_ms", expires_at_ms)
            .finish()
    }
}

/// What [`Storage::post_link`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPost {
    /// Stored in its slot.
    Posted,
    /// No mailbox with that rendezvous id, or it has expired.
    NotFound,
    /// The slot is written already (by this or another caller); nothing
    /// changed.
    AlreadyWritten,
    /// The slot before it is not written yet; nothing changed.
    NotYet,
    /// A FINISH from another account than the one that posted HELLO;
    /// nothing changed.
    OtherAccount,
}

/// Which slots of an unexpired mailbox are written, for [`link_post_failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkSlots {
    pub(crate) hello: bool,
    pub(crate) hello_account: Option<AccountId>,
    pub(crate) reply: bool,
    pub(crate) finish: bool,
}

/// Why a conditional slot write changed nothing, from the mailbox's slots
/// read after it (`None`: no unexpired mailbox). A state in which the write
/// would have succeeded means the mailbox appeared after the write looked
/// (closed and opened again in between): [`LinkPost::NotFound`], as the
/// write saw it.
pub(crate) fn link_post_failure(slots: Option<LinkSlots>, message: &LinkMessage<'_>) -> LinkPost {
    let Some(slots) = slots else {
        return LinkPost::NotFound;
    };
    match message {
        LinkMessage::Hello { .. } if slots.hello => LinkPost::AlreadyWritten,
        LinkMessage::Reply { .. } if slots.reply => LinkPost::AlreadyWritten,
        LinkMessage::Reply { .. } if !slots.hello => LinkPost::NotYet,
        LinkMessage::Finish { .. } if !slots.hello => LinkPost::NotYet,
        LinkMessage::Finish { account, .. } if slots.hello_account != Some(*account) => {
            LinkPost::OtherAccount
        }
        LinkMessage::Finish { .. } if slots.finish => LinkPost::AlreadyWritten,
        LinkMessage::Finish { .. } if !slots.reply => LinkPost::NotYet,
        _ => LinkPost::NotFound,
    }
}

/// A link mailbox whose HELLO an account posted, in its export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkExport {
    /// When it is (or was, if the purge has not run yet) deleted.
    pub expires_at_ms: u64,
    /// The last slot written.
    pub step: LinkSlot,
}

/// A verified abuse report to store.
#[derive(Clone, Debug)]
pub struct NewReport {
    /// Reporting account (the recipient of the message).
    pub reporter_account: AccountId,
    /// Its username at the time.
    pub reporter: String,
    /// Reported sender's account, as bound by the franking tag; `None` when
    /// it cannot be known (a tag from before key ids whose name now belongs
    /// to a newer account).
    pub sender_account: Option<AccountId>,
    /// Reported sender's username at the time.
    pub sender: String,
    /// The sender's identity (`PublicIdentity::to_bytes()`) at the time;
    /// `None` when the account is unknown or was deleted before the report.
    pub sender_identity: Option<Vec<u8>>,
    /// Franking key that verified the tag.
    pub franking_key_id: u32,
    /// Reported message id.
    pub message_id: Vec<u8>,
    /// Server timestamp of the reported message.
    pub server_timestamp_ms: u64,
    /// The reported text (verified against the commitment).
    pub plaintext: String,
    /// Reporter's reason.
    pub reason: String,
    /// When the report arrived.
    pub created_at_ms: u64,
    /// The attachment pointer of a message with a file, protobuf-encoded as
    /// reported (its key included: the reporter disclosed the file).
    pub attachment: Option<Vec<u8>>,
}

/// A stored report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReportRecord {
    /// Report id.
    pub id: u64,
    /// Reporting account id (`None`: a report from before account ids whose
    /// reporter could not be attributed).
    pub reporter_account: Option<AccountId>,
    /// Reporting username at the time.
    pub reporter: String,
    /// Reported sender's account id (`None`: unknown).
    pub sender_account: Option<AccountId>,
    /// Reported sender username at the time.
    pub sender: String,
    /// SHA-256 fingerprint of the sender's identity at the time (`None`:
    /// unknown).
    pub sender_identity_fingerprint: Option<String>,
    /// Franking key that verified the tag (`None`: before key ids).
    pub franking_key_id: Option<u32>,
    /// Hex of the message id.
    pub message_id: String,
    /// Server timestamp of the reported message.
    pub message_server_timestamp_ms: u64,
    /// Reported text.
    pub text: String,
    /// Reporter's reason.
    pub reason: String,
    /// When the report arrived.
    pub created_at_ms: u64,
    /// Both MACs verified (only verified reports are stored).
    pub verified: bool,
    /// The file the reported message carried, if any.
    pub file: Option<ReportedFile>,
}

/// The file of a reported message, as its pointer describes it.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportedFile {
    /// Hex of the blob id.
    pub blob_id: String,
    /// File name as the sender gave it.
    pub file_name: String,
    /// MIME type as the sender gave it.
    pub mime_type: String,
    /// Plaintext length, bytes.
    pub size: u64,
    /// Hex of the key commitment (checked against the key when reported).
    pub key_commitment: String,
    /// Hex of the ciphertext hash the franking commitment binds.
    pub ciphertext_hash: String,
    /// The whole pointer, key included: never printed (`save-file` uses it).
    #[serde(skip)]
    pub pointer: Vec<u8>,
}

impl std::fmt::Debug for ReportedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportedFile")
            .field("blob_id", &self.blob_id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The reported file of a stored pointer (`None`: none, or not decodable).
pub(crate) fn reported_file(pointer: Option<Vec<u8>>) -> Option<ReportedFile> {
    use prost::Message as _;
    let bytes = pointer?;
    let p = missive_proto::v1::AttachmentPointer::decode(bytes.as_slice()).ok()?;
    Some(ReportedFile {
        blob_id: hex::encode(&p.blob_id),
        file_name: p.file_name.clone(),
        mime_type: p.mime_type.clone(),
        size: p.size,
        key_commitment: hex::encode(&p.key_commitment),
        ciphertext_hash: hex::encode(&p.ciphertext_hash),
        pointer: bytes,
    })
}

/// One device in an account export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceExport {
    /// Device id.
    pub device_id: u32,
    /// Day the device registered (days since the epoch).
    pub created_day: i64,
    /// Day the device last logged in or opened its stream (days since the
    /// epoch; 0: not seen since the server began recording it).
    pub last_seen_day: i64,
    /// The device key, `PublicIdentity::to_bytes()` (public).
    pub identity: Vec<u8>,
    /// Pending envelopes (a count only).
    pub pending_envelopes: u64,
    /// One-time prekeys left.
    pub prekeys: PrekeyCounts,
    /// KeyPackages held for the device.
    pub key_packages: KeyPackageCounts,
}

/// Everything stored about an account (see `docs/LAWFUL_ACCESS.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountExport {
    /// Username.
    pub username: String,
    /// `PublicIdentity::to_bytes()`.
    pub identity: Vec<u8>,
    /// Creation day.
    pub created_day: i64,
    /// Last-seen day.
    pub last_seen_day: i64,
    /// Devices.
    pub devices: Vec<DeviceExport>,
    /// Reports naming the account as sender.
    pub reports_against: Vec<ReportRecord>,
    /// Number of reports the account filed.
    pub reports_filed: u64,
    /// Version of the stored signed device list (`None`: never published).
    pub device_list_version: Option<u64>,
    /// Device ids the stored list names, ascending (empty without a list).
    pub device_list_devices: Vec<u32>,
    /// Link mailboxes whose HELLO the account posted, by expiry.
    pub pending_links: Vec<LinkExport>,
    /// Groups a device of the account receives, by group id.
    pub groups: Vec<GroupExport>,
}

/// KeyPackages held for one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyPackageCounts {
    /// One-time KeyPackages left.
    pub one_time: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub has_last_resort: bool,
}

/// One device's KeyPackage as handed out.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKeyPackage {
    /// Device id.
    pub device_id: u32,
    /// As uploaded (opaque).
    pub key_package: Vec<u8>,
    /// The device's last-resort KeyPackage (not consumed).
    pub is_last_resort: bool,
}

impl std::fmt::Debug for DeviceKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeyPackage")
            .field("device_id", &self.device_id)
            .field("len", &self.key_package.len())
            .field("is_last_resort", &self.is_last_resort)
            .finish()
    }
}

/// The answer to a KeyPackage fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPackages {
    /// One per device that has a KeyPackage, by device id.
    pub key_packages: Vec<DeviceKeyPackage>,
    /// Devices with none, ascending.
    pub missing_devices: Vec<u32>,
    /// The account's signed device list as published (empty: none).
    pub signed_device_list: Vec<u8>,
}

/// What [`Storage::create_group`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupCreate {
    /// Registered now.
    Created {
        /// Its creation time, ms since the epoch.
        created_at_ms: u64,
    },
    /// The same device created it before (a retry); nothing changed.
    Retried {
        /// The first creation time.
        created_at_ms: u64,
    },
    /// Another device holds the id.
    Taken,
}

/// One group message to store (commit, proposal or application message).
/// Content is opaque: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct NewGroupMessage {
    /// The 16-byte group id.
    pub group_id: Vec<u8>,
    /// The epoch it names.
    pub epoch: u64,
    /// `GroupMessageKind` as its integer.
    pub kind: i32,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender's username (delivered in `GroupMessage.sender`).
    pub sender_name: String,
    /// Sender-chosen idempotency key, 16 bytes.
    pub message_id: Vec<u8>,
    /// The `MLSMessage`.
    pub content: Vec<u8>,
    /// Acceptance time (bound into the franking tag).
    pub server_timestamp_ms: u64,
    /// When the server's retention ends (a commit's Welcome is kept until
    /// then); a group message itself is deleted after the retention counted
    /// from `server_timestamp_ms`.
    pub expires_at_ms: u64,
    /// Set when its sender asked for less than the retention: when it is
    /// deleted, delivered or not.
    pub disappears_at_ms: Option<u64>,
}

impl std::fmt::Debug for NewGroupMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewGroupMessage")
            .field("kind", &self.kind)
            .field("epoch", &self.epoch)
            .field("sender", &self.sender)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

/// A commit to store, with its Welcome and the membership it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCommit {
    /// The commit itself (kind COMMIT, `epoch` the one it was made in).
    pub message: NewGroupMessage,
    /// The Welcome for `added` (empty when `added` is).
    pub welcome: Vec<u8>,
    /// Devices the commit adds: they get the Welcome, then every later
    /// group message.
    pub added: Vec<DeviceAddress>,
    /// Devices the commit removes: they get this commit and nothing after.
    pub removed: Vec<DeviceAddress>,
    /// Days since the epoch (the added devices' join day).
    pub today: i64,
}

/// What a group write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupWrite {
    /// Stored now.
    Stored {
        /// Its position in the group.
        seq: u64,
        /// Acceptance time.
        server_timestamp_ms: u64,
        /// The group's epoch after the write.
        epoch: u64,
        /// The devices to wake (every device that gets it but the sender).
        wake: Vec<DeviceAddress>,
    },
    /// Stored before by the same device with the same message id.
    Duplicate {
        /// Its position in the group.
        seq: u64,
        /// The first acceptance time.
        server_timestamp_ms: u64,
        /// For a commit the epoch after it; else the epoch it named.
        epoch: u64,
    },
    /// The message names another epoch than the group's; nothing stored.
    WrongEpoch {
        /// The epoch the server holds.
        current_epoch: u64,
    },
    /// No such group, or the sender's device does not receive it.
    NotFound,
}

/// A pending group message or Welcome as delivered. Content is opaque:
/// `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredGroupMessage {
    /// The group id.
    pub group_id: Vec<u8>,
    /// Position in the group (a Welcome: its commit's).
    pub seq: u64,
    /// `GroupMessageKind`.
    pub kind: i32,
    /// The epoch it names.
    pub epoch: u64,
    /// Sender username.
    pub sender: String,
    /// Sender account (the franking tag binds it).
    pub sender_account: AccountId,
    /// Sender device.
    pub sender_device: u32,
    /// The `MLSMessage`.
    pub content: Vec<u8>,
    /// Sender's message id.
    pub message_id: Vec<u8>,
    /// Acceptance time.
    pub server_timestamp_ms: u64,
}

impl std::fmt::Debug for StoredGroupMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredGroupMessage")
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .field("epoch", &self.epoch)
            .field("sender_device", &self.sender_device)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

/// `GroupMessageKind::Commit` as stored.
pub const COMMIT_KIND: i32 = 1;

/// `GroupMessageKind::Welcome` as stored (welcomes live in their own table).
pub const WELCOME_KIND: i32 = 4;

/// One group in an account export: what delivery needs, no content, no
/// other member named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupExport {
    /// The group id.
    pub group_id: Vec<u8>,
    /// The day the group was created (days since the epoch).
    pub created_day: i64,
    /// The account's devices receiving it, with the day each joined.
    pub devices: Vec<(u32, i64)>,
    /// How many devices receive it in all.
    pub receiving_devices: u64,
    /// Group messages and Welcomes stored for it (pending for some device).
    pub pending_messages: u64,
    /// Their total content size, bytes.
    pub pending_bytes: u64,
}

/// What [`Storage::put_device_list`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The list is stored now (the first, or a higher version).
    Stored,
    /// The stored list is byte for byte this one; nothing changed.
    Unchanged,
    /// A list with this version or a higher one, and other bytes, is stored;
    /// nothing changed.
    Stale {
        /// The stored list's version.
        stored_version: u64,
    },
}

/// The device ids a stored signed device list names, for the export. The
/// list was verified when it was published; one that no longer parses is a
/// storage failure.
pub(crate) fn listed_device_ids(signed_list: &[u8]) -> Result<Vec<u32>> {
    let signed = missive_crypto::SignedDeviceList::from_bytes(signed_list)
        .map_err(|_| StorageError::Backend("a stored device list does not parse".into()))?;
    Ok(signed
        .unverified_list()
        .devices
        .iter()
        .map(|d| d.device_id)
        .collect())
}

/// Storage failures, backend-independent.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A unique value already exists (username, prekey id).
    #[error("the value already exists")]
    Conflict,
    /// A per-device quota would be exceeded.
    #[error("the storage quota is exceeded")]
    QuotaExceeded,
    /// The row the write refers to does not exist.
    #[error("the record does not exist")]
    NotFound,
    /// The database is not reachable or busy beyond its timeout.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database holds no Missive schema (read-only commands on a fresh path).
    #[error("no Missive database at this location")]
    NoDatabase,
    /// The disk (or the database's quota) is full.
    #[error("the server's storage is full")]
    Full,
    /// Any other driver error.
    #[error("database error: {0}")]
    Backend(String),
}

/// The account a username names now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRecord {
    /// Account id.
    pub id: AccountId,
    /// `PublicIdentity::to_bytes()`.
    pub identity: Vec<u8>,
    /// Creation day.
    pub created_day: i64,
}

/// Shorthand.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The groups' share of a store (the KeyPackage directory and the MLS
/// Delivery Service); every backend implements it with the same SQL
/// (`storage/groups.rs`).
#[async_trait]
pub trait GroupStorage: Send + Sync {
    /// Adds one-time KeyPackages for a device and, when given, replaces its
    /// last-resort one. [`StorageError::QuotaExceeded`] beyond `max_stored`
    /// one-time KeyPackages; nothing is stored then.
    async fn upload_key_packages(
        &self,
        device: DeviceAddress,
        key_packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        max_stored: u32,
    ) -> Result<KeyPackageCounts>;
    /// KeyPackages held for a device.
    async fn key_package_count(&self, device: DeviceAddress) -> Result<KeyPackageCounts>;
    /// One KeyPackage per device of `username`, atomically consuming a
    /// one-time KeyPackage of each device where one is left (unless
    /// `consume` is false), else its last-resort one; devices with neither
    /// are listed missing. `None` for an unknown user.
    async fn take_key_packages(
        &self,
        username: &str,
        consume: bool,
    ) -> Result<Option<(AccountId, KeyPackages)>>;

    /// Registers a group at epoch 0 with `creator` as its only receiving
    /// device.
    async fn create_group(
        &self,
        group_id: &[u8],
        creator: DeviceAddress,
        now_ms: u64,
        today: i64,
    ) -> Result<GroupCreate>;
    /// Stores a commit atomically, compare-and-set on the epoch: only if
    /// the group's epoch is the commit's (then epoch + 1), with a fresh seq,
    /// its Welcome for the added devices and the membership changes. Of two
    /// concurrent commits for one epoch exactly one is stored. Idempotent on
    /// (sender device, message id). [`StorageError::NotFound`] when an added
    /// device does not exist.
    async fn commit_group(&self, commit: &NewCommit) -> Result<GroupWrite>;
    /// Stores an application message or proposal for the current epoch
    /// once, with a fresh seq. Idempotent on (sender device, message id).
    async fn store_group_message(&self, message: &NewGroupMessage) -> Result<GroupWrite>;
    /// Stores the sender's self-remove proposal (any epoch) and stops
    /// delivering the group to its device, in one transaction. Idempotent.
    async fn leave_group(&self, message: &NewGroupMessage) -> Result<GroupWrite>;
    /// The groups `device` receives (removed devices until they acknowledged
    /// their removal), by id.
    async fn receiving_groups(&self, device: DeviceAddress) -> Result<Vec<Vec<u8>>>;
    /// The pending messages of one group for `device` with seq above
    /// `after_seq`, in seq order, its Welcome first, at most `limit`, none
    /// expired at `now_ms` and none it sent itself.
    async fn pending_group_messages(
        &self,
        device: DeviceAddress,
        group_id: &[u8],
        after_seq: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Vec<StoredGroupMessage>>;
    /// Moves the device's cursor of each group to max(cursor, min(seq, the
    /// group's last seq)); groups it does not receive are ignored. A removed
    /// device's row goes once it acknowledged its removal; messages every
    /// device that gets them acknowledged are deleted.
    async fn acknowledge_group(&self, device: DeviceAddress, acks: &[(Vec<u8>, u64)])
    -> Result<()>;
}

/// Everything the services need from a store.
#[async_trait]
pub trait Storage: GroupStorage + Send + Sync + 'static {
    /// Records a fresh single-use challenge by its hash (see
    /// [`challenge_hash`]; the row names no one).
    async fn put_challenge(&self, challenge_hash: &[u8; 32], expires_at_ms: u64) -> Result<()>;
    /// Deletes the challenge and says whether it existed and had not expired.
    async fn take_challenge(&self, challenge_hash: &[u8; 32], now_ms: u64) -> Result<bool>;
    /// Creates an account with device 1 and its first device list, in one
    /// transaction. [`StorageError::Conflict`] when the username is taken.
    async fn create_account(&self, account: &NewAccount) -> Result<AccountId>;
    /// Adds a linked device to an existing account (protocol v2), with its
    /// prekeys, in one transaction. [`StorageError::Conflict`] when the
    /// device id is registered already (or a prekey id repeats),
    /// [`StorageError::NotFound`] when the account does not exist.
    async fn add_device(&self, device: &NewDevice) -> Result<()>;
    /// The account id and the DEVICE key (`devices.identity`) for a login.
    async fn device_identity(
        &self,
        username: &str,
        device_id: u32,
    ) -> Result<Option<(AccountId, Vec<u8>)>>;
    /// The key of one registered device (to verify its prekey signatures).
    async fn device_key(&self, device: DeviceAddress) -> Result<Option<Vec<u8>>>;
    /// The account key of an account (to verify device lists).
    async fn account_identity(&self, account: AccountId) -> Result<Option<Vec<u8>>>;
    /// The account `username` names now.
    async fn account_named(&self, username: &str) -> Result<Option<AccountRecord>>;
    /// Stores a token hash valid until the start of `expires_day` and marks
    /// the account seen today.
    async fn insert_token(
        &self,
        token_hash: &[u8; 32],
        device: DeviceAddress,
        expires_day: i64,
        today: i64,
    ) -> Result<()>;
    /// The principal of an unexpired token hash.
    async fn authenticate(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Option<Principal>>;
    /// Marks the device and its account seen on `today` (day granularity).
    async fn touch_last_seen(&self, device: DeviceAddress, today: i64) -> Result<()>;
    /// Deletes the account, its devices, keys, tokens, pending envelopes,
    /// device list and the link mailboxes whose HELLO it posted.
    async fn delete_account(&self, account: AccountId) -> Result<()>;

    /// Stores `signed_list` (verified by the caller; its version is
    /// `version`) as the account's device list, atomically compare-and-set:
    /// only if no list is stored or the stored one has a lower version. The
    /// same bytes as the stored list are [`PutOutcome::Unchanged`]; a stored
    /// version at or above `version` with other bytes is
    /// [`PutOutcome::Stale`]. Of two concurrent calls with one version and
    /// different bytes exactly one stores. [`StorageError::NotFound`] when the
    /// account does not exist.
    ///
    /// When the list is [`PutOutcome::Stored`], every registered device of
    /// the account that the list does not name is deleted in the same
    /// transaction: its row, prekeys, tokens and pending envelopes (the
    /// caller then drops its caches for the account). A list that does not
    /// parse is a [`StorageError::Backend`] (the caller verified it).
    async fn put_device_list(
        &self,
        account: AccountId,
        version: u64,
        signed_list: &[u8],
    ) -> Result<PutOutcome>;
    /// The account's stored device list: its version and bytes as published.
    async fn device_list(&self, account: AccountId) -> Result<Option<(u64, Vec<u8>)>>;

    /// Adds one-time prekeys. [`StorageError::Conflict`] on a reused id,
    /// [`StorageError::QuotaExceeded`] beyond `max_stored` of a kind; nothing
    /// is stored in either case.
    async fn upload_prekeys(
        &self,
        device: DeviceAddress,
        one_time: &[OneTimePrekeyRecord],
        kem: &[KemPrekeyRecord],
        max_stored: u32,
    ) -> Result<PrekeyCounts>;
    /// One-time prekeys left.
    async fn prekey_counts(&self, device: DeviceAddress) -> Result<PrekeyCounts>;
    /// Replaces the signed prekey and/or last-resort KEM prekey.
    async fn replace_signed_prekeys(
        &self,
        device: DeviceAddress,
        signed_prekey: Option<&SignedPrekeyRecord>,
        last_resort_kem_prekey: Option<&KemPrekeyRecord>,
    ) -> Result<()>;
    /// The account and bundles for every device (or one), atomically
    /// consuming at most one one-time prekey of each kind per device (none
    /// unless `consume`: then bundles carry no one-time X25519 key and the
    /// last-resort KEM key). `None` for an unknown user.
    async fn take_bundles(
        &self,
        username: &str,
        device_id: Option<u32>,
        consume: bool,
    ) -> Result<Option<(AccountId, Bundles)>>;

    /// The account and its devices, for the device-list check.
    async fn devices(&self, username: &str) -> Result<Option<(AccountId, Vec<DeviceRecord>)>>;
    /// Stores a batch of sends in one durable transaction (group commit).
    /// Returns one outcome per item, in order; an `Err` means nothing was stored.
    async fn store_envelopes(&self, batch: &[SendItem]) -> Result<Vec<SendOutcome>>;
    /// [`Storage::store_envelopes`], also returning for each stored item the
    /// id of its first envelope (the others follow consecutively, in
    /// `envelopes` order) when the backend knows it; `None` when it does not.
    /// The batch is shared so a backend can work on it on another thread
    /// without a copy; it drops its reference before answering, so the
    /// caller can take the items back.
    async fn store_envelopes_with_ids(
        &self,
        batch: Arc<Vec<SendItem>>,
    ) -> Result<Vec<(SendOutcome, Option<u64>)>> {
        Ok(self
            .store_envelopes(&batch)
            .await?
            .into_iter()
            .map(|outcome| (outcome, None))
            .collect())
    }
    /// Pending envelopes of a device with id greater than `after_id`, oldest
    /// first, at most `limit`, expired ones included (the caller skips them,
    /// see [`StoredEnvelope::expired`]).
    async fn pending_envelopes(
        &self,
        device: DeviceAddress,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<StoredEnvelope>>;
    /// Deletes those of `ids` that are pending for `device`; returns how many.
    async fn acknowledge(&self, device: DeviceAddress, ids: &[u64]) -> Result<u64>;
    /// Deletes envelopes accepted before `envelope_cutoff_ms` or whose
    /// expiry ([`SendItem::expires_at_ms`]) is at or before `now_ms`, expired
    /// tokens, challenges and link mailboxes, and returns free space to the file system
    /// where the backend can.
    async fn purge_expired(&self, now_ms: u64, envelope_cutoff_ms: u64) -> Result<PurgeCounts>;
    /// The earliest per-envelope expiry still stored, if any (the purge
    /// loop wakes then, not only once a purge interval).
    async fn next_envelope_expiry(&self) -> Result<Option<u64>>;

    /// A secret an earlier version stored under `name` (`server_secrets`).
    async fn server_secret_get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Deletes that secret irrevocably: no copy left in the database's files
    /// where the backend can ensure it (SQLite: overwritten, WAL truncated;
    /// PostgreSQL: vacuumed, though its WAL may keep it until recycled).
    async fn delete_server_secret(&self, name: &str) -> Result<()>;
    /// Records the check value of franking key `id` unless one is recorded,
    /// and returns the recorded one.
    async fn record_franking_key(&self, id: u32, check_value: &[u8]) -> Result<Vec<u8>>;
    /// Franking key ids with a recorded check value.
    async fn franking_key_ids(&self) -> Result<Vec<u32>>;

    /// Stores a verified report; returns its id.
    async fn insert_report(&self, report: &NewReport) -> Result<u64>;
    /// Every report, oldest first.
    async fn reports(&self) -> Result<Vec<ReportRecord>>;
    /// One report.
    async fn report(&self, id: u64) -> Result<Option<ReportRecord>>;

    /// Opens a link mailbox holding `offer`, expiring at `expires_at_ms`,
    /// unless an unexpired one has this rendezvous id: `false` then, and
    /// nothing changes (of two concurrent opens exactly one succeeds). An
    /// expired one with this id is replaced.
    async fn open_link(
        &self,
        rendezvous: &[u8; 32],
        offer: &[u8],
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<bool>;
    /// The mailbox, unless it is unknown or expired at `now_ms`.
    async fn link(&self, rendezvous: &[u8; 32], now_ms: u64) -> Result<Option<LinkMailbox>>;
    /// Writes `message` into its slot of the unexpired mailbox, atomically
    /// compare-and-set in one statement: only if that slot is empty, the
    /// slot before it is written and, for FINISH, `account` posted HELLO. Of
    /// two concurrent posts into one slot (also through two nodes) exactly
    /// one is [`LinkPost::Posted`]. [`StorageError::NotFound`] when a HELLO's
    /// account does not exist.
    async fn post_link(
        &self,
        rendezvous: &[u8; 32],
        message: LinkMessage<'_>,
        now_ms: u64,
    ) -> Result<LinkPost>;
    /// Deletes the mailbox, if any (idempotent).
    async fn close_link(&self, rendezvous: &[u8; 32]) -> Result<()>;

    /// Everything stored about the account `username` names now (reports by
    /// account id, never by name).
    async fn export_account(&self, username: &str) -> Result<Option<AccountExport>>;

    /// The day each registered device of `username` joined and the day it
    /// was last seen (days since the epoch: device id, joined, last seen),
    /// for the account's own `missive devices`. Rarely called: read from
    /// the export, which every backend implements.
    async fn device_days(&self, username: &str) -> Result<Vec<(u32, i64, i64)>> {
        Ok(self
            .export_account(username)
            .await?
            .map(|e| {
                e.devices
                    .iter()
                    .map(|d| (d.device_id, d.created_day, d.last_seen_day))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Flushes and closes the store (graceful shutdown).
    async fn close(&self) {}
}

/// What a challenge row is keyed by: `SHA-256(field("missive challenge v1")
/// || u64(purpose) || field(username) || field(challenge))`, with
/// `field(x) = u64_be(len(x)) || x`. Only the client knows the challenge, so
/// the row cannot be traced to a username.
pub fn challenge_hash(challenge: &[u8], username: &str, purpose: ChallengePurpose) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let field = |hash: &mut Sha256, part: &[u8]| {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    };
    let mut hash = Sha256::new();
    field(&mut hash, b"missive challenge v1");
    hash.update(purpose.code().to_be_bytes());
    field(&mut hash, username.as_bytes());
    field(&mut hash, challenge);
    hash.finalize().into()
}

/// How a store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the database if missing and run migrations (`serve`).
    Serve,
    /// Open an existing database without changing its schema (CLI commands).
    Existing,
}

/// Opens the backend named by `url`.
///
/// `sqlite://PATH` and `postgres://…` (or `postgresql://…`) are built in;
/// other schemes are refused with a sentence.
pub async fn open(url: &str, mode: OpenMode) -> Result<Arc<dyn Storage>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStorage::open(url, mode).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStorage::open(url, mode).await?))
    } else {
        Err(StorageError::Backend(format!(
            "unsupported database URL scheme in {:?}; this build supports sqlite://PATH and postgres://…",
            redact_url(url)
        )))
    }
}

/// Opens the backend named by `url` for serving; a SQLite store keeps
/// `reserve` bytes of disk for acknowledgements on a full disk.
pub async fn open_serving(url: &str, reserve: u64) -> Result<Arc<dyn Storage>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStorage::open_with_reserve(url, OpenMode::Serve, reserve).await?,
        ))
    } else {
        open(url, OpenMode::Serve).await
    }
}

/// A database URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
