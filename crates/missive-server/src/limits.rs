//! Every bound the relay enforces, in one place (documented in
//! `docs/PROTOCOL.md` and `docs/LAWFUL_ACCESS.md`).

use std::time::Duration;

/// Largest envelope ciphertext (Signal's cap): 96 KiB.
pub const MAX_ENVELOPE_BYTES: usize = 96 * 1024;
/// Envelopes per `Send` call (one per recipient device).
pub const MAX_ENVELOPES_PER_SEND: usize = 16;
/// Length of a sender-chosen message id.
pub const MESSAGE_ID_LEN: usize = 16;
/// Length of a franking commitment.
pub const FRANKING_COMMITMENT_LEN: usize = 32;
/// Envelope ids per `Acknowledge` call.
pub const MAX_ACKS_PER_CALL: usize = 1000;
/// One-time prekeys of each kind per upload (Signal allows 100).
pub const MAX_PREKEYS_PER_CALL: usize = 100;
/// One-time prekeys of each kind stored per device.
pub const MAX_PREKEYS_STORED: u32 = 1000;
/// Reported plaintext, bytes.
pub const MAX_REPORT_PLAINTEXT_BYTES: usize = missive_crypto::franking::MAX_REPORTABLE_BYTES;
/// Report reason, characters.
pub const MAX_REPORT_REASON_CHARS: usize = 1000;
/// Registration ids are chosen in `1..=16380`.
pub const MAX_REGISTRATION_ID: u32 = 16380;
/// Longest username, bytes (`service::normalize_username`).
pub const MAX_USERNAME_BYTES: usize = 32;
/// Largest `SignedDeviceList` encoding a valid list can have: its fields for
/// [`missive_crypto::consts::MAX_DEVICES`] devices and a username of
/// [`MAX_USERNAME_BYTES`] (docs/PROTOCOL.md, "Device lists (protocol v2)"):
/// 914 bytes. A larger `PublishDeviceList` is refused before it is parsed.
pub const MAX_DEVICE_LIST_BYTES: usize = {
    // A length-prefixed field: u64 length, then the bytes.
    const FIELD: usize = 8;
    const LABEL: usize = b"Missive device list v2".len();
    const KEY: usize = 32;
    const SIGNATURE: usize = 64;
    const DEVICE: usize = 4 + FIELD + KEY + 4 + FIELD + SIGNATURE;
    FIELD
        + LABEL
        + FIELD
        + MAX_USERNAME_BYTES
        + FIELD
        + KEY
        + 8
        + 8
        + 4
        + missive_crypto::consts::MAX_DEVICES * DEVICE
        + SIGNATURE
};
/// Highest device list version the server stores (its databases keep signed
/// 64-bit integers); a client counting up from 1 never gets near it.
pub const MAX_DEVICE_LIST_VERSION: u64 = i64::MAX as u64;

/// Largest decoded request of `MessageService`: 16 envelopes of 96 KiB plus framing.
pub const MAX_MESSAGE_REQUEST_BYTES: usize =
    MAX_ENVELOPES_PER_SEND * (MAX_ENVELOPE_BYTES + 512) + 4096;
/// Largest decoded request of `AccountService` / `KeyService` (100 ML-KEM keys
/// of 1184 bytes with signatures, 100 X25519 keys, identity and framing).
pub const MAX_KEY_REQUEST_BYTES: usize = 256 * 1024;
/// Largest decoded request of `ReportService`.
pub const MAX_REPORT_REQUEST_BYTES: usize = 80 * 1024;
/// Largest encoded response (one envelope with metadata, or 16 bundles).
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024;

/// Challenge validity.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// A bearer token is valid until the start of this many UTC days after the
/// day of login (24 to 48 hours): only the expiry day is stored.
pub const TOKEN_VALID_DAYS: i64 = 2;
/// Default retention of undelivered envelopes.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Default pending envelopes per device before `RESOURCE_EXHAUSTED`.
pub const DEFAULT_MAILBOX_LIMIT: u32 = 10_000;

/// HTTP/2 streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams the server may reset for protocol errors before closing the connection.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// Streams a client may reset before being accepted (rapid-reset defence).
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 64;
/// HTTP/2 keep-alive ping interval and ack timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Oldest a connection may become before it is asked to reconnect.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(6 * 60 * 60);
/// Grace for in-flight calls after the connection age is reached.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(60);
/// Time a unary call may take before `DEADLINE_EXCEEDED`/`CANCELLED`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest HTTP/2 header list accepted.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Envelopes read from storage per page on a receive stream.
pub const RECEIVE_PAGE: u32 = 128;
/// Buffered items per receive stream.
pub const RECEIVE_BUFFER: usize = 64;
/// Envelopes handed over to one local receive stream and not yet taken; past
/// this (or [`HANDOFF_MAX_BYTES`]) the stream re-reads the store instead.
pub const HANDOFF_MAX_ENVELOPES: usize = 256;
/// Content bytes handed over to one local receive stream and not yet taken.
pub const HANDOFF_MAX_BYTES: usize = 512 * 1024;
/// Receive streams poll storage at least this often even without a wake-up.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(15);
/// Concurrent sends committed in one transaction at most.
pub const GROUP_COMMIT_MAX: usize = 512;
/// How often expired envelopes, challenges and tokens are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The purge also runs when a per-envelope expiry (a disappearing message's
/// retention) is due, but at most this often: envelopes outlive their expiry
/// on disk by at most this much (they are never delivered after it).
pub const MIN_EXPIRY_PURGE_GAP: Duration = Duration::from_secs(1);
/// The window over which handed-out one-time prekeys are counted for the
/// owner (`PrekeyCount.one_time_prekeys_taken_last_hour`, `drained_recently`).
pub const DRAIN_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Disk space kept free next to a SQLite database so acknowledgements
/// succeed on a full disk (`--storage-reserve`).
pub const DEFAULT_STORAGE_RESERVE: u64 = 16 * 1024 * 1024;

/// How long a link mailbox (`LinkService`, docs/PROTOCOL.md "Linking a
/// device") lives after `OpenLink`: it and everything in it is deleted then,
/// and never served after it even before the purge runs.
pub const LINK_TTL: Duration = Duration::from_secs(10 * 60);
/// Length of a link rendezvous id (SHA-256 over the link code's secret).
pub const LINK_RENDEZVOUS_LEN: usize = 32;
/// Length of a link offer: an X25519 public key (32 bytes) and an ML-KEM-768
/// encapsulation key (1184 bytes).
pub const LINK_OFFER_LEN: usize = 32 + 1184;
/// Largest HELLO payload of a link, bytes.
pub const MAX_LINK_HELLO_BYTES: usize = 64 * 1024;
/// Largest REPLY payload of a link, bytes.
pub const MAX_LINK_REPLY_BYTES: usize = 64 * 1024;
/// Largest FINISH payload of a link (the sealed device list and contacts),
/// bytes.
pub const MAX_LINK_FINISH_BYTES: usize = 1024 * 1024;
/// Largest decoded request of `LinkService`: a FINISH payload with its
/// rendezvous id and framing (a larger payload still decodes, and is refused
/// with `INVALID_ARGUMENT` by the handler up to this).
pub const MAX_LINK_REQUEST_BYTES: usize = MAX_LINK_FINISH_BYTES + 4096;
/// Largest encoded response of `LinkService`: a mailbox with every slot full.
pub const MAX_LINK_RESPONSE_BYTES: usize =
    LINK_OFFER_LEN + MAX_LINK_HELLO_BYTES + MAX_LINK_REPLY_BYTES + MAX_LINK_FINISH_BYTES + 4096;

/// Groups (`GroupService`, docs/PROTOCOL.md "Groups"): one KeyPackage, bytes.
pub const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;
/// KeyPackages per `UploadKeyPackages` call.
pub const MAX_KEY_PACKAGES_PER_CALL: usize = 100;
/// One-time KeyPackages stored per device.
pub const MAX_KEY_PACKAGES_STORED: u32 = 200;
/// Length of an MLS group id as the server accepts it.
pub const GROUP_ID_LEN: usize = 16;
/// One commit, bytes.
pub const MAX_COMMIT_BYTES: usize = 1024 * 1024;
/// One Welcome (it carries the ratchet tree), bytes.
pub const MAX_WELCOME_BYTES: usize = 8 * 1024 * 1024;
/// One application message or proposal, bytes (as an envelope).
pub const MAX_GROUP_MESSAGE_BYTES: usize = MAX_ENVELOPE_BYTES;
/// Devices a commit adds, and devices it removes.
pub const MAX_COMMIT_DEVICES: usize = 1000;
/// Group acknowledgements per `Acknowledge` call.
pub const MAX_GROUP_ACKS_PER_CALL: usize = 1000;
/// A `GroupService` request: a commit with its largest Welcome and 2000
/// device addresses (each at most ~45 bytes on the wire).
pub const MAX_GROUP_REQUEST_BYTES: usize = MAX_WELCOME_BYTES + MAX_COMMIT_BYTES + 256 * 1024;
/// A `GroupService` answer: KeyPackages of every device of a user.
pub const MAX_GROUP_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// One `ReceiveResponse`: a Welcome with its group message fields.
pub const MAX_RECEIVE_ITEM_BYTES: usize = MAX_WELCOME_BYTES + 64 * 1024;
