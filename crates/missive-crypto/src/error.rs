//! Per-operation error types.

use thiserror::Error;

/// A key, public identity or signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key or signature had the wrong size.
    #[error("{what} must be {expected} bytes, got {actual}")]
    InvalidLength {
        /// What was being read.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The bytes are not a valid public key of the expected kind.
    #[error("{0} is not a valid public key")]
    InvalidPublicKey(&'static str),
    /// A signature did not verify.
    #[error(
        "signature does not verify: the key or message was altered, or signed by another identity"
    )]
    BadSignature,
    /// Stored secret key bytes have a format version this build does not know.
    #[error("unsupported secret key format version {0}; was it written by a newer Missive?")]
    UnsupportedVersion(u8),
    /// A pre-release identity (separate X25519 key) that this build no longer reads.
    #[error(
        "this identity was saved by a pre-release Missive whose identity format is retired; register a new identity"
    )]
    RetiredIdentityFormat,
    /// Bytes given to [`crate::IdentityKeyPair::sign_mls`] that are not an MLS
    /// `SignContent`.
    #[error("refusing to sign: not an MLS SignContent")]
    NotMlsContent,
}

/// A protocol message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is empty.
    #[error("message is empty")]
    Empty,
    /// The first byte names no known message type or version.
    #[error("unknown message type 0x{0:02x}; the sender may run a newer Missive")]
    UnknownType(u8),
    /// A protocol v1 message (type byte 0x01 or 0x02): v2 has no v1 sessions.
    #[error("a protocol v1 message (type 0x{0:02x}): the sender runs an old Missive")]
    RetiredVersion(u8),
    /// The message ended before a field was complete.
    #[error("message is truncated in {0}")]
    Truncated(&'static str),
    /// A field has a value the format forbids.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A key carried in the message is invalid.
    #[error("message carries an invalid key: {0}")]
    Key(#[from] KeyError),
}

/// Starting a session from a prekey bundle failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// A prekey signature or key in the bundle is invalid; do not use this bundle.
    #[error("prekey bundle rejected: {0}")]
    Key(#[from] KeyError),
    /// An X25519 agreement gave a low-order (all-zero) result: a peer key is malicious.
    #[error("key agreement rejected: a public key in the bundle has low order")]
    NonContributory,
}

/// Encrypting a message failed; the session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// The sending chain reached 2^32 - 1 messages; a reply is needed to ratchet.
    #[error("sending chain exhausted; wait for a reply from the peer")]
    ChainExhausted,
    /// The peer's ratchet key gave a low-order (all-zero) X25519 result.
    #[error("the peer's ratchet key has low order")]
    NonContributory,
    /// The plaintext is larger than the AEAD can process.
    #[error("plaintext too large to encrypt")]
    TooLarge,
    /// The session has no peer ratchet key to send to (a corrupt or foreign state).
    #[error("session cannot send yet: it has not received the peer's ratchet key")]
    NotReady,
}

/// Decrypting a message failed; the session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The message could not be parsed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The ciphertext, header or associated data was altered, or it is for another session.
    #[error(
        "message authentication failed: altered in transit, wrong associated data or not for this session"
    )]
    AuthenticationFailed,
    /// The message was already decrypted, or its skipped key was discarded: evicted
    /// by [`crate::consts::MAX_SKIPPED_KEYS`] or older than
    /// [`crate::consts::MAX_SKIPPED_KEY_AGE_MS`].
    #[error("message already received (replay), or its key was discarded")]
    Replay,
    /// The message is further ahead in its chain than the gap allowed.
    #[error("message skips {gap} messages, more than the allowed {max}")]
    GapTooLarge {
        /// How many message keys would have to be skipped.
        gap: u64,
        /// The bound, [`crate::consts::MAX_MESSAGE_GAP`].
        max: u32,
    },
    /// An X25519 agreement gave a low-order (all-zero) result.
    #[error("key agreement rejected: the sender's key has low order")]
    NonContributory,
    /// The private prekeys supplied do not match the ids named in the message.
    #[error("prekeys do not match the message: {0}")]
    PrekeyMismatch(&'static str),
    /// The message names a sender identity other than this session's peer.
    #[error("message comes from a different identity than this session's peer")]
    IdentityMismatch,
    /// A prekey message that starts another session; accept it as a new session.
    #[error("prekey message belongs to a different session; accept it as a new session")]
    SessionMismatch,
}

/// Stored state could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StateError {
    /// The stored bytes end too early.
    #[error("stored state is truncated")]
    Truncated,
    /// The stored bytes use a format version this build does not know.
    #[error("stored state has unsupported format version {0}; was it written by a newer Missive?")]
    UnsupportedVersion(u32),
    /// A protocol v1 session (state formats 1 and 2): it binds no addresses,
    /// so protocol v2 cannot continue it.
    #[error(
        "stored state is a protocol v1 session (format {0}), which protocol v2 cannot continue"
    )]
    RetiredVersion(u32),
    /// Sealed state does not authenticate: wrong key, wrong associated data or tampered.
    #[error("stored state does not authenticate: wrong storage key or the data was altered")]
    AuthenticationFailed,
    /// The state decodes but is not internally consistent.
    #[error("stored state is malformed: {0}")]
    Malformed(&'static str),
}

/// A signed device list (protocol v2) was refused: it could not be parsed,
/// does not verify, breaks a list invariant, or goes back in time.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The encoding could not be parsed (truncated, trailing bytes, a wrong
    /// label or field length, an invalid key).
    #[error("device list cannot be parsed: {0}")]
    Decode(#[from] DecodeError),
    /// The list names another account key than the one pinned for this account.
    #[error(
        "device list is signed for a different account key than the one pinned for this account"
    )]
    AccountMismatch,
    /// The account signature over the list does not verify.
    #[error("device list signature does not verify under the account key: the list was altered")]
    BadSignature,
    /// The list is for another username than the one asked for.
    #[error("device list is for user {actual:?}, not {expected:?}")]
    UsernameMismatch {
        /// The username the caller asked for.
        expected: String,
        /// The username the list names.
        actual: String,
    },
    /// The list has no device.
    #[error("device list has no devices")]
    Empty,
    /// The list has more devices than [`crate::consts::MAX_DEVICES`].
    #[error("device list has {count} devices, more than the allowed {max}")]
    TooManyDevices {
        /// How many devices the list has (or claims to have).
        count: usize,
        /// The bound, [`crate::consts::MAX_DEVICES`].
        max: usize,
    },
    /// The list's version is 0; versions start at 1.
    #[error("device list version must be at least 1")]
    VersionZero,
    /// A device id appears twice.
    #[error("device {device_id} is listed twice")]
    DuplicateDeviceId {
        /// The repeated id.
        device_id: u32,
    },
    /// The devices are not in strictly ascending id order.
    #[error("device {device_id} is out of order: device ids must be strictly ascending")]
    DevicesOutOfOrder {
        /// The first device whose id is below its predecessor's.
        device_id: u32,
    },
    /// A device's identity key is the account key, which signs only device lists.
    #[error("device {device_id} uses the account key as its identity key")]
    DeviceIsAccountKey {
        /// The offending device.
        device_id: u32,
    },
    /// Two devices share one identity key.
    #[error("device {device_id} has the same identity key as device {other_device_id}")]
    DuplicateDeviceKey {
        /// The later of the two devices.
        device_id: u32,
        /// The earlier device with the same key.
        other_device_id: u32,
    },
    /// A device's link signature does not verify under its own identity key.
    #[error(
        "device {device_id}'s link signature does not verify: that device did not agree to be listed with this account, username, id and registration id"
    )]
    BadLinkSignature {
        /// The device whose link signature failed.
        device_id: u32,
    },
    /// The offered list is older than one already seen.
    #[error(
        "device list version {offered} is older than version {seen} already seen: the server is rolling the list back"
    )]
    Rollback {
        /// The version seen before.
        seen: u64,
        /// The version offered now.
        offered: u64,
    },
    /// The offered list has the version of one already seen but other contents.
    #[error(
        "two different device lists carry version {version}: the server or the account key is equivocating"
    )]
    Equivocation {
        /// The version both lists carry.
        version: u64,
    },
}
