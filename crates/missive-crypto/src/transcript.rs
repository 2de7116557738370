//! Byte strings signed for proof of possession of a key.
//!
//! The server sends a random challenge; the client signs one of these
//! transcripts with [`crate::IdentityKeyPair::sign`] and the server checks it
//! with [`crate::PublicIdentity::verify`]. Each transcript starts with its own
//! label, so a signature for one purpose is never valid for another (or for a
//! prekey, whose signed inputs use different labels). Since protocol v2 each
//! names the server the client meant to reach (the host name it verified the
//! TLS certificate for), so a look-alike server cannot relay a challenge from
//! the real one and replay the answer there.

use crate::encoding::{put_field, put_u32};

const REGISTRATION_LABEL: &[u8] = b"Missive registration v2";
const LOGIN_LABEL: &[u8] = b"Missive login v2";
const ADD_DEVICE_LABEL: &[u8] = b"Missive add device v2";

fn start(label: &[u8], challenge: &[u8], server_name: &str, username: &str) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(56 + label.len() + challenge.len() + server_name.len() + username.len());
    put_field(&mut out, label);
    put_field(&mut out, challenge);
    put_field(&mut out, server_name.as_bytes());
    put_field(&mut out, username.as_bytes());
    out
}

/// Signed by the account key: `field("Missive registration v2") || field(challenge)
/// || field(server_name) || field(username) || u32 registration_id`.
pub fn registration(
    challenge: &[u8],
    server_name: &str,
    username: &str,
    registration_id: u32,
) -> Vec<u8> {
    let mut out = start(REGISTRATION_LABEL, challenge, server_name, username);
    put_u32(&mut out, registration_id);
    out
}

/// Signed by the device key: `field("Missive login v2") || field(challenge)
/// || field(server_name) || field(username) || u32 device_id`.
pub fn login(challenge: &[u8], server_name: &str, username: &str, device_id: u32) -> Vec<u8> {
    let mut out = start(LOGIN_LABEL, challenge, server_name, username);
    put_u32(&mut out, device_id);
    out
}

/// Signed by a newly linked device's key when it first joins its account:
/// `field("Missive add device v2") || field(challenge) || field(server_name)
/// || field(username) || u32 device_id || u32 registration_id`.
pub fn add_device(
    challenge: &[u8],
    server_name: &str,
    username: &str,
    device_id: u32,
    registration_id: u32,
) -> Vec<u8> {
    let mut out = start(ADD_DEVICE_LABEL, challenge, server_name, username);
    put_u32(&mut out, device_id);
    put_u32(&mut out, registration_id);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn layout_is_pinned() {
        let t = login(b"\x01\x02", "s", "al", 5);
        let mut expected = Vec::new();
        expected.extend_from_slice(&16u64.to_be_bytes());
        expected.extend_from_slice(b"Missive login v2");
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&[1, 2]);
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(b"s");
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(b"al");
        expected.extend_from_slice(&[0, 0, 0, 5]);
        assert_eq!(t, expected);
    }

    #[test]
    fn transcripts_are_domain_separated_and_unambiguous() {
        assert_ne!(registration(b"c", "s", "u", 1), login(b"c", "s", "u", 1));
        assert_ne!(
            add_device(b"c", "s", "u", 1, 1)[..40],
            login(b"c", "s", "u", 1)[..40]
        );
        // Moving a byte between challenge, server and username changes the transcript.
        assert_ne!(login(b"ab", "s", "c", 1), login(b"a", "bs", "c", 1));
        assert_ne!(login(b"a", "sc", "u", 1), login(b"a", "s", "cu", 1));
        assert_ne!(login(b"c", "s", "u", 1), login(b"c", "s", "u", 2));
        assert_ne!(
            login(b"c", "real.example", "u", 1),
            login(b"c", "fake.example", "u", 1)
        );
    }
}
