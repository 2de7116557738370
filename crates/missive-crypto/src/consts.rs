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
/// are evicted first. A full store is 2,000 × 68 bytes ≈ 136 KB of session
/// state, written on every message, so it stays well under a megabyte; it can
/// only be filled by messages that authenticated. libsignal keeps 2,000 per
/// chain (5 chains), vodozemac 40 per chain.
pub const MAX_SKIPPED_KEYS: usize = 2_000;

/// Most previous remote ratchet keys remembered so that a late message on an
/// old chain whose key is gone reports [`crate::DecryptError::Replay`] rather
/// than an authentication failure. Matches libsignal's `MAX_RECEIVER_CHAINS`.
pub const MAX_PREVIOUS_RATCHET_KEYS: usize = 5;
