//! Safety numbers (docs/PROTOCOL.md, "Safety numbers"), after Signal's
//! numeric fingerprints: 5,200 iterations of SHA-512 per side.

use sha2::{Digest, Sha512};

use crate::identity::PublicIdentity;

/// Iterations of SHA-512 per side (as Signal).
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5_200;
const SAFETY_NUMBER_VERSION: u16 = 1;
const QR_VERSION: u8 = 1;

/// A 60-digit safety number, identical on both sides of a conversation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SafetyNumber {
    digits: String,
    qr: Vec<u8>,
}

impl SafetyNumber {
    /// The 60 ASCII digits.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// Twelve groups of five digits, for display.
    pub fn groups(&self) -> Vec<String> {
        self.digits
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// `0x01 || lower side's 32-byte hash || higher side's 32-byte hash` (65 bytes);
    /// identical on both sides, so a scanner compares it byte for byte.
    pub fn qr_payload(&self) -> Vec<u8> {
        self.qr.clone()
    }

    /// Whether a scanned QR payload matches this safety number (constant time).
    pub fn matches_qr_payload(&self, scanned: &[u8]) -> bool {
        crate::primitives::ct_eq(&self.qr, scanned)
    }
}

fn side_hash(username: &str, identity: &PublicIdentity) -> [u8; 64] {
    let key = identity.to_array();
    let mut hash: [u8; 64] = Sha512::new()
        .chain_update(SAFETY_NUMBER_VERSION.to_be_bytes())
        .chain_update(key)
        .chain_update(username.as_bytes())
        .finalize()
        .into();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        hash = Sha512::new()
            .chain_update(hash)
            .chain_update(key)
            .finalize()
            .into();
    }
    hash
}

fn digits_of(hash: &[u8; 64]) -> String {
    let mut out = String::with_capacity(30);
    for chunk in hash[..30].chunks(5) {
        let mut v = 0u64;
        for &b in chunk {
            v = (v << 8) | u64::from(b);
        }
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// Computes the safety number of a conversation; symmetric in its two sides.
pub fn safety_number(
    local_username: &str,
    local: &PublicIdentity,
    remote_username: &str,
    remote: &PublicIdentity,
) -> SafetyNumber {
    let a = side_hash(local_username, local);
    let b = side_hash(remote_username, remote);
    let (da, db) = (digits_of(&a), digits_of(&b));
    let (first, second, h1, h2) = if da <= db {
        (da, db, a, b)
    } else {
        (db, da, b, a)
    };
    let mut qr = Vec::with_capacity(65);
    qr.push(QR_VERSION);
    qr.extend_from_slice(&h1[..32]);
    qr.extend_from_slice(&h2[..32]);
    SafetyNumber {
        digits: first + &second,
        qr,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::IdentityKeyPair;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn symmetric_and_sensitive() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let a = IdentityKeyPair::generate(&mut rng);
        let b = IdentityKeyPair::generate(&mut rng);
        let c = IdentityKeyPair::generate(&mut rng);
        let ab = safety_number("alice", a.public(), "bob", b.public());
        let ba = safety_number("bob", b.public(), "alice", a.public());
        assert_eq!(ab, ba);
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|d| d.is_ascii_digit()));
        let groups = ab.groups();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 5));
        assert_eq!(groups.concat(), ab.digits());
        assert_eq!(ab.qr_payload().len(), 65);
        assert!(ab.matches_qr_payload(&ba.qr_payload()));
        let ac = safety_number("alice", a.public(), "bob", c.public());
        assert_ne!(ab.digits(), ac.digits());
        assert!(!ab.matches_qr_payload(&ac.qr_payload()));
        let renamed = safety_number("alice", a.public(), "bobby", b.public());
        assert_ne!(ab.digits(), renamed.digits());
    }

    #[test]
    fn digits_follow_documented_derivation() {
        let mut hash = [0u8; 64];
        hash[4] = 1; // first chunk = 1
        hash[5..10].copy_from_slice(&[0xff; 5]); // 2^40 - 1 = 1099511627775
        assert_eq!(&digits_of(&hash)[..10], "0000127775");
    }
}
