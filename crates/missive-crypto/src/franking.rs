//! Message franking: verifiable abuse reports (docs/PROTOCOL.md, "Franking").
//!
//! The sender commits to the plaintext under a fresh per-message key that
//! travels inside the ciphertext; the commitment travels beside it and is bound
//! into the AEAD associated data. The server MACs the commitment with the
//! envelope's metadata. A recipient who reveals the plaintext and the franking
//! key lets the server verify both MACs.

use core::fmt;

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::encoding::{put_field, put_u64};
use crate::primitives;

/// Length of a commitment and of a server tag.
pub const COMMITMENT_LEN: usize = 32;
/// Length of a franking key and of the server franking key.
pub const KEY_LEN: usize = 32;
/// Longest plaintext a report may carry. The server refuses longer reports
/// and clients refuse to show longer messages, so that every message a
/// person sees can be reported: both sides read this one constant.
pub const MAX_REPORTABLE_BYTES: usize = 65_536;

const COMMITMENT_LABEL: &[u8] = b"missive franking v1";
const SERVER_TAG_LABEL: &[u8] = b"missive franking server tag v1";

/// A franking key had the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrankingError {
    /// The key was not 32 bytes.
    #[error("franking key must be 32 bytes, got {0}")]
    InvalidLength(usize),
}

macro_rules! franking_key {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name(Box<[u8; KEY_LEN]>);

        impl $name {
            /// Draws a fresh random key.
            pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
                let mut key = Box::new([0u8; KEY_LEN]);
                rng.fill_bytes(&mut key[..]);
                Self(key)
            }

            /// Wraps 32 key bytes.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, FrankingError> {
                let key: [u8; KEY_LEN] = bytes
                    .try_into()
                    .map_err(|_| FrankingError::InvalidLength(bytes.len()))?;
                Ok(Self(Box::new(key)))
            }

            /// The key bytes.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

franking_key!(
    FrankingKey,
    "A per-message franking key, drawn by the sender; zeroized on drop."
);
franking_key!(
    ServerFrankingKey,
    "The server's long-term franking secret; zeroized on drop."
);

/// `HMAC-SHA256(key, field("missive franking v1") || field(message_id) || field(plaintext))`.
pub fn commit(key: &FrankingKey, message_id: &[u8], plaintext: &[u8]) -> [u8; COMMITMENT_LEN] {
    let mut head = Vec::with_capacity(64 + message_id.len());
    put_field(&mut head, COMMITMENT_LABEL);
    put_field(&mut head, message_id);
    head.extend_from_slice(&(plaintext.len() as u64).to_be_bytes());
    primitives::hmac_sha256(key.as_bytes(), &[&head, plaintext])
}

/// Recomputes the commitment and compares it in constant time.
pub fn verify_commitment(
    key: &FrankingKey,
    message_id: &[u8],
    plaintext: &[u8],
    commitment: &[u8],
) -> bool {
    primitives::ct_eq(&commit(key, message_id, plaintext), commitment)
}

fn server_tag_input(
    commitment: &[u8],
    sender: &str,
    recipient: &str,
    server_timestamp_ms: u64,
    message_id: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + sender.len() + recipient.len() + message_id.len());
    put_field(&mut out, SERVER_TAG_LABEL);
    put_field(&mut out, commitment);
    put_field(&mut out, sender.as_bytes());
    put_field(&mut out, recipient.as_bytes());
    put_u64(&mut out, server_timestamp_ms);
    put_field(&mut out, message_id);
    out
}

/// `HMAC-SHA256(server_key, field("missive franking server tag v1") || field(commitment)
/// || field(sender) || field(recipient) || u64 server_timestamp_ms || field(message_id))`.
pub fn server_tag(
    key: &ServerFrankingKey,
    commitment: &[u8],
    sender: &str,
    recipient: &str,
    server_timestamp_ms: u64,
    message_id: &[u8],
) -> [u8; COMMITMENT_LEN] {
    let input = server_tag_input(
        commitment,
        sender,
        recipient,
        server_timestamp_ms,
        message_id,
    );
    primitives::hmac_sha256(key.as_bytes(), &[&input])
}

/// Recomputes the server tag and compares it in constant time.
pub fn verify_server_tag(
    key: &ServerFrankingKey,
    commitment: &[u8],
    sender: &str,
    recipient: &str,
    server_timestamp_ms: u64,
    message_id: &[u8],
    tag: &[u8],
) -> bool {
    let expected = server_tag(
        key,
        commitment,
        sender,
        recipient,
        server_timestamp_ms,
        message_id,
    );
    primitives::ct_eq(&expected, tag)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn keys() -> (FrankingKey, ServerFrankingKey) {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        (
            FrankingKey::generate(&mut rng),
            ServerFrankingKey::generate(&mut rng),
        )
    }

    #[test]
    fn commitment_matches_documented_construction() {
        let key = FrankingKey::from_bytes(&[7u8; 32]).unwrap();
        let mut input = Vec::new();
        input.extend_from_slice(&19u64.to_be_bytes());
        input.extend_from_slice(b"missive franking v1");
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(b"id1");
        input.extend_from_slice(&2u64.to_be_bytes());
        input.extend_from_slice(b"hi");
        let expected = primitives::hmac_sha256(&[7u8; 32], &[&input]);
        assert_eq!(commit(&key, b"id1", b"hi"), expected);
    }

    #[test]
    fn genuine_commitment_verifies_and_alterations_do_not() {
        let (key, _) = keys();
        let c = commit(&key, b"msg-1", b"hello");
        assert!(verify_commitment(&key, b"msg-1", b"hello", &c));
        assert!(!verify_commitment(&key, b"msg-1", b"hellO", &c));
        assert!(!verify_commitment(&key, b"msg-2", b"hello", &c));
        let other = FrankingKey::from_bytes(&[1u8; 32]).unwrap();
        assert!(!verify_commitment(&other, b"msg-1", b"hello", &c));
        assert!(!verify_commitment(&key, b"msg-1", b"hello", &c[..31]));
        // Field boundaries are unambiguous.
        assert_ne!(commit(&key, b"ab", b"c"), commit(&key, b"a", b"bc"));
    }

    #[test]
    fn server_tag_binds_every_field() {
        let (key, server) = keys();
        let c = commit(&key, b"m", b"text");
        let tag = server_tag(&server, &c, "alice", "bob", 1000, b"m");
        assert!(verify_server_tag(
            &server, &c, "alice", "bob", 1000, b"m", &tag
        ));
        let mut c2 = c;
        c2[0] ^= 1;
        assert!(!verify_server_tag(
            &server, &c2, "alice", "bob", 1000, b"m", &tag
        ));
        assert!(!verify_server_tag(
            &server, &c, "mallory", "bob", 1000, b"m", &tag
        ));
        assert!(!verify_server_tag(
            &server, &c, "alice", "carol", 1000, b"m", &tag
        ));
        assert!(!verify_server_tag(
            &server, &c, "alice", "bob", 1001, b"m", &tag
        ));
        assert!(!verify_server_tag(
            &server, &c, "alice", "bob", 1000, b"n", &tag
        ));
        assert!(!verify_server_tag(
            &server, &c, "bob", "alice", 1000, b"m", &tag
        ));
        assert!(!verify_server_tag(
            &server,
            &c,
            "alice",
            "bob",
            1000,
            b"m",
            &tag[..16]
        ));
        let other = ServerFrankingKey::from_bytes(&[2u8; 32]).unwrap();
        assert!(!verify_server_tag(
            &other, &c, "alice", "bob", 1000, b"m", &tag
        ));
        assert_ne!(
            server_tag(&server, &c, "ab", "c", 1, b"m"),
            server_tag(&server, &c, "a", "bc", 1, b"m")
        );
    }

    #[test]
    fn key_lengths_are_checked_and_debug_redacts() {
        assert_eq!(
            FrankingKey::from_bytes(&[0u8; 31]).err(),
            Some(FrankingError::InvalidLength(31))
        );
        assert!(ServerFrankingKey::from_bytes(&[0u8; 33]).is_err());
        let key = FrankingKey::from_bytes(&[0xabu8; 32]).unwrap();
        assert_eq!(key.as_bytes(), &[0xab; 32]);
        assert_eq!(format!("{key:?}"), "FrankingKey(<redacted>)");
    }
}
