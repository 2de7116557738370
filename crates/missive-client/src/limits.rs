//! Client-side bounds and schedules, in one place.

use std::time::Duration;

/// Longest message text sent or shown (`TextMessage.body`), bytes: exactly
/// what a report can carry, so every message shown can be reported.
pub const MAX_TEXT_BYTES: usize = missive_crypto::franking::MAX_REPORTABLE_BYTES;
/// One-time prekeys of each kind uploaded at registration and topped up to.
pub const ONE_TIME_PREKEY_TARGET: u32 = 100;
/// Refill when the server holds fewer than this many of either kind.
pub const ONE_TIME_PREKEY_REFILL_BELOW: u32 = 20;
/// The signed X25519 prekey and last-resort KEM prekey rotate this often.
pub const SIGNED_PREKEY_ROTATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Replaced signed prekeys are kept this long for messages still in flight.
pub const SIGNED_PREKEY_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// A cached bearer token is renewed this long before it expires.
pub const TOKEN_RENEW_MARGIN_MS: u64 = 5 * 60 * 1000;
/// Attempts at a send whose device list the server says is out of date.
pub const SEND_ATTEMPTS: usize = 3;
/// Time allowed to establish a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one unary call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Envelope ids acknowledged per call (server limit: 1000).
pub const MAX_ACK_BATCH: usize = 1000;
/// Largest gRPC message of the group service and of the receive stream:
/// a Welcome carries the ratchet tree (8 MiB, the server's limit) plus its
/// framing.
pub const MAX_GROUP_MESSAGE_BYTES: usize = 9 * 1024 * 1024;
