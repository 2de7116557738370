//! Byte strings signed for proof of possession of an identity.
//!
//! The server sends a random challenge; the client signs one of these
//! transcripts with [`crate::IdentityKeyPair::sign`] and the server checks it
//! with [`crate::PublicIdentity::verify`]. Each transcript starts with its own
//! label, so a signature for one purpose is never valid for another (or for a
//! prekey, whose signed inputs use different labels).

use crate::encoding::{put_field, put_u32};

const REGISTRATION_LABEL: &[u8] = b"Missive registration v1";
const LOGIN_LABEL: &[u8] = b"Missive login v1";

/// `field("Missive registration v1") || field(challenge) || field(username) || u32 registration_id`.
pub fn registration(challenge: &[u8], username: &str, registration_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + challenge.len() + username.len());
    put_field(&mut out, REGISTRATION_LABEL);
    put_field(&mut out, challenge);
    put_field(&mut out, username.as_bytes());
    put_u32(&mut out, registration_id);
    out
}

/// `field("Missive login v1") || field(challenge) || field(username) || u32 device_id`.
pub fn login(challenge: &[u8], username: &str, device_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + challenge.len() + username.len());
    put_field(&mut out, LOGIN_LABEL);
    put_field(&mut out, challenge);
    put_field(&mut out, username.as_bytes());
    put_u32(&mut out, device_id);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn layout_is_pinned() {
        let t = login(b"\x01\x02", "al", 5);
        let mut expected = Vec::new();
        expected.extend_from_slice(&16u64.to_be_bytes());
        expected.extend_from_slice(b"Missive login v1");
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[1, 2]);
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(b"al");
        expected.extend_from_slice(&[0, 0, 0, 5]);
        assert_eq!(t, expected);
    }

    #[test]
    fn transcripts_are_domain_separated_and_unambiguous() {
        assert_ne!(registration(b"c", "u", 1), login(b"c", "u", 1));
        // Moving a byte between challenge and username changes the transcript.
        assert_ne!(login(b"ab", "c", 1), login(b"a", "bc", 1));
        assert_ne!(login(b"c", "u", 1), login(b"c", "u", 2));
    }
}
