//! Every protocol bound in one place (docs/PROTOCOL.md, "Bounds").

/// Most message keys a single incoming message may make the receiver skip in
/// one chain. Each skipped key costs two HMAC-SHA256 calls (≈ 1 µs), so a
/// forged header can cost the receiver at most ≈ 2 ms before the AEAD rejects
/// it (decryption runs on a copy: nothing is kept). 2,000 unread messages in a
/// single sending chain is far beyond what a person types while the peer is
/// offline; libsignal allows 25,000 (≈ 25 ms of work per forged message),
/// vodozemac 2,000.
pub const MAX_MESSAGE_GAP: u32 = 2_000;

/// Most skipped message keys kept per session, across all chains; the oldest
/// are evicted first (see also [`MAX_PREVIOUS_RATCHET_KEYS`] and
/// [`MAX_SKIPPED_KEY_AGE_MS`]). A full store is 2,000 × ≈ 80 bytes ≈ 160 KB of session
/// state, written on every message, so it stays well under a megabyte; it can
/// only be filled by messages that authenticated. libsignal keeps 2,000 per
/// chain (5 chains), vodozemac 40 per chain.
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// Most previous remote ratchet keys remembered so that a late message on an
/// old chain whose key is gone reports [`crate::DecryptError::Replay`] rather
/// than an authentication failure. Matches libsignal's `MAX_RECEIVER_CHAINS`.
///
/// Evicting a ratchet key also drops every skipped key of its chain, in the
/// same step: skipped keys are kept for at most this many previous chains
/// (plus the current one). A message on a chain older than that is
/// indistinguishable from a forgery and reports
/// [`crate::DecryptError::AuthenticationFailed`].
pub const MAX_PREVIOUS_RATCHET_KEYS: usize = 5;

/// Oldest a skipped message key may be before it is dropped: 40 days, in
/// milliseconds of the caller's clock ([`crate::Session::decrypt_at`],
/// [`crate::Session::expire_skipped_keys`]).
///
/// A key is skipped when a later message of the same sender arrives. The
/// message it opens was uploaded before that later one (the client encrypts
/// and uploads one message at a time), and the server deletes an undelivered
/// envelope 30 days after accepting it (`missive-server` `DEFAULT_RETENTION`,
/// purged every minute). So after 30 days a skipped key can only open a
/// message the server has already deleted; the 10 more days are a margin for
/// the receiver's clock jumping forward between the two arrivals. Past the bound a key is only a
/// liability: whoever later reads the session state could open that message if
/// they kept its ciphertext. The bound must stay at least the server's
/// retention (an operator raising `--retention` past 40 days would lose late
/// messages). The Double Ratchet specification (§8, "deletion of skipped
/// message keys") recommends deleting skipped keys after some interval;
/// libsignal and vodozemac bound them by count only.
pub const MAX_SKIPPED_KEY_AGE_MS: u64 = 40 * 24 * 60 * 60 * 1000;

/// Plaintext bytes per attachment chunk: 64 KiB, as age's STREAM. Each chunk
/// costs a 16-byte tag (0.02 %) and one gRPC message; a resumed transfer
/// repeats at most one chunk. Larger chunks bought nothing measurable in
/// `missive-bench --attachment-size` (docs/BENCHMARKS.md, "Issue 15").
pub const ATTACHMENT_CHUNK_LEN: usize = 64 * 1024;

/// Smallest padded attachment size (Signal's 541-byte floor): every file of
/// up to 541 bytes, including an empty one, looks the same to the server.
pub const ATTACHMENT_MIN_PADDED_LEN: u64 = 541;

/// Largest attachment: 4 GiB. Far below STREAM's 2^32 chunks (256 TiB); a
/// server's per-account quota is usually the tighter bound.
pub const MAX_ATTACHMENT_LEN: u64 = 4 * 1024 * 1024 * 1024;

/// Most devices in one account's signed device list: a primary plus five
/// linked devices (WhatsApp allows a phone plus four companions). A sender
/// encrypts each message once per device of the recipient and of itself, so
/// the bound caps that fan-out; it is also the most entries a device-list
/// parser allocates for (docs/PROTOCOL.md, "Device lists (protocol v2)").
pub const MAX_DEVICES: usize = 6;
