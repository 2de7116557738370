//! Reading the Double Ratchet header of captured ciphertext, to check from
//! the outside that no message key is ever used twice.
//!
//! `missive-crypto` exposes [`missive_crypto::message_kind`] and
//! [`missive_crypto::PrekeyMessage::parse`] (which yields the base key) but
//! not the parsed normal header, so the ratchet key and counter are read here
//! from the layout documented in `docs/PROTOCOL.md` ("Messages") and
//! `crates/missive-crypto/src/wire.rs`:
//!
//! ```text
//! normal  = 0x03 || ratchet_key (32) || counter (u32) || previous_counter (u32) || aead
//! prekey  = 0x04 || sender_identity (32) || base_key (32) || signed_prekey_id (u32)
//!                || kem_prekey_id (u32) || has_one_time (u8) || one_time_prekey_id (u32)
//!                || kem_ciphertext (1088) || normal
//! ```
//!
//! A (ratchet key, counter) pair names exactly one message key of a
//! session, so two envelopes carrying the same pair reuse a key (and, with
//! a deterministic nonce, a nonce).

use std::collections::HashMap;

use missive_crypto::{KEM_CIPHERTEXT_LEN, MessageKind, PrekeyMessage, message_kind};

use crate::HarnessError;
use crate::herr;
use crate::liar::CapturedSend;

/// Length of the PQXDH header in front of the embedded normal message.
pub const PREKEY_HEADER_LEN: usize = 1 + 32 + 32 + 4 + 4 + 1 + 4 + KEM_CIPHERTEXT_LEN;
/// Length of the normal message header.
pub const NORMAL_HEADER_LEN: usize = 1 + 32 + 4 + 4;

/// The ratchet header of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatchetHeader {
    /// Prekey (PQXDH) or normal message.
    pub kind: MessageKind,
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Message number in the sending chain.
    pub counter: u32,
    /// Length of the previous sending chain.
    pub previous_counter: u32,
    /// The PQXDH base key (prekey messages only).
    pub base_key: Option<[u8; 32]>,
}

fn normal_header(bytes: &[u8]) -> Result<([u8; 32], u32, u32), HarnessError> {
    let header = bytes
        .get(..NORMAL_HEADER_LEN)
        .ok_or_else(|| herr("message shorter than a ratchet header"))?;
    // Protocol v2's type byte of a normal message.
    if header[0] != 0x03 {
        return Err(herr(format!("not a normal message (type {})", header[0])));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&header[1..33]);
    let u32_at =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    Ok((key, u32_at(33), u32_at(37)))
}

/// Parses the ratchet header of an envelope's `content`.
pub fn ratchet_header(content: &[u8]) -> Result<RatchetHeader, HarnessError> {
    let kind = message_kind(content).map_err(|e| herr(format!("envelope content: {e}")))?;
    match kind {
        MessageKind::Normal => {
            let (ratchet_key, counter, previous_counter) = normal_header(content)?;
            Ok(RatchetHeader {
                kind,
                ratchet_key,
                counter,
                previous_counter,
                base_key: None,
            })
        }
        MessageKind::Prekey => {
            let parsed =
                PrekeyMessage::parse(content).map_err(|e| herr(format!("prekey message: {e}")))?;
            let inner = content
                .get(PREKEY_HEADER_LEN..)
                .ok_or_else(|| herr("prekey message shorter than its header"))?;
            let (ratchet_key, counter, previous_counter) = normal_header(inner)?;
            Ok(RatchetHeader {
                kind,
                ratchet_key,
                counter,
                previous_counter,
                base_key: Some(parsed.base_key()),
            })
        }
    }
}

/// One use of a message key: which send, which envelope of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUse {
    /// Index into the captured sends.
    pub send: usize,
    /// Hex of the send's message id.
    pub message_id: String,
    /// Recipient username.
    pub recipient: String,
    /// Recipient device of the envelope.
    pub device_id: u32,
    /// The header.
    pub header: RatchetHeader,
}

/// Every (sender, recipient, device, ratchet key, counter) that occurs in
/// more than one captured envelope with *different* ciphertext, with all its
/// uses. (The very same bytes sent twice, as an idempotent retry does, reuse
/// nothing.) Empty when no message key was reused. Envelopes whose content
/// does not parse are reported as an error.
pub fn reused_message_keys(sends: &[CapturedSend]) -> Result<Vec<Vec<KeyUse>>, HarnessError> {
    type Key = (Option<String>, String, u32, [u8; 32], u32);
    let mut seen: HashMap<Key, Vec<(KeyUse, &[u8])>> = HashMap::new();
    for (i, send) in sends.iter().enumerate() {
        for env in &send.request.envelopes {
            let header = ratchet_header(&env.content)?;
            let key = (
                send.sender.clone(),
                send.request.recipient.clone(),
                env.device_id,
                header.ratchet_key,
                header.counter,
            );
            let uses = seen.entry(key).or_default();
            if uses.iter().any(|(_, c)| *c == env.content.as_slice()) {
                continue;
            }
            uses.push((
                KeyUse {
                    send: i,
                    message_id: hex_string(&send.request.message_id),
                    recipient: send.request.recipient.clone(),
                    device_id: env.device_id,
                    header,
                },
                env.content.as_slice(),
            ));
        }
    }
    let mut reused: Vec<Vec<KeyUse>> = seen
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|v| v.into_iter().map(|(u, _)| u).collect())
        .collect();
    reused.sort_by_key(|v: &Vec<KeyUse>| v.first().map(|u| u.send));
    Ok(reused)
}

/// Lower-case hex.
pub fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
