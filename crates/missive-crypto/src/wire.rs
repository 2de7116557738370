//! Message formats on the wire (docs/PROTOCOL.md, "Messages").
//!
//! ```text
//! normal  = 0x03 || ratchet_key (32) || counter (u32) || previous_counter (u32) || aead (>= 16)
//! prekey  = 0x04 || sender_identity (32) || base_key (32) || signed_prekey_id (u32)
//!                || kem_prekey_id (u32) || has_one_time (u8: 0|1) || one_time_prekey_id (u32, 0 if absent)
//!                || kem_ciphertext (1088) || normal
//! ```

use core::fmt;

use crate::encoding::Reader;
use crate::error::DecodeError;
use crate::identity::{PUBLIC_IDENTITY_LEN, PublicIdentity};
use crate::primitives::{AEAD_TAG_LEN, KEM_CT_LEN};

/// Type byte of a normal ratchet message, protocol v2 (v1 used 0x01).
pub(crate) const TYPE_NORMAL_V2: u8 = 0x03;
/// Type byte of a PQXDH prekey message, protocol v2 (v1 used 0x02).
pub(crate) const TYPE_PREKEY_V2: u8 = 0x04;
/// Type bytes of protocol v1 messages, refused by name.
const RETIRED_TYPES: [u8; 2] = [0x01, 0x02];
/// Length of a normal message header (type byte included).
pub(crate) const NORMAL_HEADER_LEN: usize = 1 + 32 + 4 + 4;
/// Length of a prekey message header, before the embedded normal message.
pub(crate) const PREKEY_HEADER_LEN: usize =
    1 + PUBLIC_IDENTITY_LEN + 32 + 4 + 4 + 1 + 4 + KEM_CT_LEN;

/// Which kind of message a ciphertext is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MessageKind {
    /// Starts a session: carries the PQXDH header. Sent until the first reply.
    Prekey,
    /// An ordinary Double Ratchet message.
    Normal,
}

/// The result of [`crate::Session::encrypt`]. `Debug` shows the kind and length only.
#[derive(Clone)]
pub struct OutgoingMessage {
    /// Whether the bytes carry a PQXDH header.
    pub kind: MessageKind,
    /// The message, ready for the envelope.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { kind, bytes } = self;
        f.debug_struct("OutgoingMessage")
            .field("kind", kind)
            .field("len", &bytes.len())
            .finish()
    }
}

/// The kind of a received message, from its type byte.
pub fn message_kind(bytes: &[u8]) -> Result<MessageKind, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&TYPE_NORMAL_V2) => Ok(MessageKind::Normal),
        Some(&TYPE_PREKEY_V2) => Ok(MessageKind::Prekey),
        Some(&old) if RETIRED_TYPES.contains(&old) => Err(DecodeError::RetiredVersion(old)),
        Some(&other) => Err(DecodeError::UnknownType(other)),
    }
}

/// A parsed normal ratchet message.
#[derive(Clone)]
pub(crate) struct NormalMessage {
    pub(crate) header: [u8; NORMAL_HEADER_LEN],
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) counter: u32,
    pub(crate) previous_counter: u32,
    pub(crate) ciphertext: Vec<u8>,
}

impl NormalMessage {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        match message_kind(bytes)? {
            MessageKind::Normal => {}
            MessageKind::Prekey => return Err(DecodeError::Malformed("expected a normal message")),
        }
        let mut reader = Reader::new(bytes);
        let header: [u8; NORMAL_HEADER_LEN] = reader
            .array()
            .ok_or(DecodeError::Truncated("ratchet header"))?;
        let mut h = Reader::new(&header[1..]);
        let (Some(ratchet_key), Some(counter), Some(previous_counter)) =
            (h.array::<32>(), h.u32(), h.u32())
        else {
            return Err(DecodeError::Truncated("ratchet header"));
        };
        let ciphertext = reader.rest();
        if ciphertext.len() < AEAD_TAG_LEN {
            return Err(DecodeError::Truncated("ciphertext"));
        }
        Ok(Self {
            header,
            ratchet_key,
            counter,
            previous_counter,
            ciphertext: ciphertext.to_vec(),
        })
    }

    pub(crate) fn encode_header(
        ratchet_key: &[u8; 32],
        counter: u32,
        previous_counter: u32,
    ) -> [u8; NORMAL_HEADER_LEN] {
        let mut header = [0u8; NORMAL_HEADER_LEN];
        header[0] = TYPE_NORMAL_V2;
        header[1..33].copy_from_slice(ratchet_key);
        header[33..37].copy_from_slice(&counter.to_be_bytes());
        header[37..41].copy_from_slice(&previous_counter.to_be_bytes());
        header
    }
}

/// A parsed PQXDH initial message: the PQXDH header plus the first ratchet message.
/// `Debug` shows the sender's fingerprint and the prekey ids, no ciphertext.
#[derive(Clone)]
pub struct PrekeyMessage {
    pub(crate) sender: PublicIdentity,
    pub(crate) base_key: [u8; 32],
    pub(crate) signed_prekey_id: u32,
    pub(crate) kem_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
    pub(crate) kem_ciphertext: Vec<u8>,
    /// The raw PQXDH header, bound into the embedded message's AEAD.
    pub(crate) header: Vec<u8>,
    pub(crate) message: NormalMessage,
}

impl fmt::Debug for PrekeyMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeyMessage")
            .field("sender", &self.sender.fingerprint())
            .field("signed_prekey_id", &self.signed_prekey_id)
            .field("kem_prekey_id", &self.kem_prekey_id)
            .field("one_time_prekey_id", &self.one_time_prekey_id)
            .finish_non_exhaustive()
    }
}

impl PrekeyMessage {
    /// Parses a prekey message, checking that the sender identity is a valid key.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        match message_kind(bytes)? {
            MessageKind::Prekey => {}
            MessageKind::Normal => return Err(DecodeError::Malformed("expected a prekey message")),
        }
        let mut reader = Reader::new(&bytes[1..]);
        let sender = reader
            .take(PUBLIC_IDENTITY_LEN)
            .ok_or(DecodeError::Truncated("sender identity"))?;
        let sender = PublicIdentity::from_bytes(sender)?;
        let base_key = reader
            .array::<32>()
            .ok_or(DecodeError::Truncated("base key"))?;
        let (Some(signed_prekey_id), Some(kem_prekey_id), Some(flag), Some(otk_id)) =
            (reader.u32(), reader.u32(), reader.u8(), reader.u32())
        else {
            return Err(DecodeError::Truncated("prekey ids"));
        };
        let one_time_prekey_id = match (flag, otk_id) {
            (0, 0) => None,
            (1, id) => Some(id),
            (0, _) => return Err(DecodeError::Malformed("one-time prekey id without flag")),
            _ => {
                return Err(DecodeError::Malformed(
                    "one-time prekey flag must be 0 or 1",
                ));
            }
        };
        let kem_ciphertext = reader
            .take(KEM_CT_LEN)
            .ok_or(DecodeError::Truncated("KEM ciphertext"))?
            .to_vec();
        let message = NormalMessage::parse(reader.rest())?;
        if message.ratchet_key != base_key {
            return Err(DecodeError::Malformed(
                "the first ratchet key of a prekey message must be its base key",
            ));
        }
        let header = bytes
            .get(..PREKEY_HEADER_LEN)
            .ok_or(DecodeError::Truncated("prekey header"))?
            .to_vec();
        Ok(Self {
            header,
            sender,
            base_key,
            signed_prekey_id,
            kem_prekey_id,
            one_time_prekey_id,
            kem_ciphertext,
            message,
        })
    }

    /// Encodes the PQXDH header (everything before the embedded normal message).
    pub(crate) fn encode_header(
        sender: &PublicIdentity,
        base_key: &[u8; 32],
        signed_prekey_id: u32,
        kem_prekey_id: u32,
        one_time_prekey_id: Option<u32>,
        kem_ciphertext: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREKEY_HEADER_LEN);
        out.push(TYPE_PREKEY_V2);
        out.extend_from_slice(&sender.to_array());
        out.extend_from_slice(base_key);
        out.extend_from_slice(&signed_prekey_id.to_be_bytes());
        out.extend_from_slice(&kem_prekey_id.to_be_bytes());
        out.push(u8::from(one_time_prekey_id.is_some()));
        out.extend_from_slice(&one_time_prekey_id.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(kem_ciphertext);
        out
    }

    /// The initiator's identity (checked by [`Self::parse`]).
    pub fn sender_identity(&self) -> &PublicIdentity {
        &self.sender
    }

    /// Id of the responder's signed X25519 prekey used.
    pub fn signed_prekey_id(&self) -> u32 {
        self.signed_prekey_id
    }

    /// Id of the responder's ML-KEM prekey used (one-time or last-resort).
    pub fn kem_prekey_id(&self) -> u32 {
        self.kem_prekey_id
    }

    /// Id of the responder's one-time X25519 prekey used, if any.
    pub fn one_time_prekey_id(&self) -> Option<u32> {
        self.one_time_prekey_id
    }

    /// The initiator's ephemeral X25519 public key (EK_A).
    pub fn base_key(&self) -> [u8; 32] {
        self.base_key
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(message_kind(&[3]), Ok(MessageKind::Normal));
        assert_eq!(message_kind(&[4, 0]), Ok(MessageKind::Prekey));
        assert_eq!(message_kind(&[]), Err(DecodeError::Empty));
        assert_eq!(message_kind(&[1]), Err(DecodeError::RetiredVersion(1)));
        assert_eq!(message_kind(&[2]), Err(DecodeError::RetiredVersion(2)));
        assert_eq!(message_kind(&[5]), Err(DecodeError::UnknownType(5)));
    }

    #[test]
    fn normal_round_trip_and_truncation() {
        let header = NormalMessage::encode_header(&[5u8; 32], 7, 3);
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&[9u8; 16]);
        let m = NormalMessage::parse(&bytes).unwrap();
        assert_eq!(
            (m.ratchet_key, m.counter, m.previous_counter),
            ([5u8; 32], 7, 3)
        );
        assert_eq!(m.header, header);
        for len in 0..bytes.len() {
            assert!(NormalMessage::parse(&bytes[..len]).is_err(), "len {len}");
        }
    }
}
