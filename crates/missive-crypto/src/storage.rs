//! Authenticated encryption of stored state under a caller-supplied key
//! (docs/PROTOCOL.md, "Storage sealing").

use core::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::encoding::put_field;
use crate::error::StateError;
use crate::primitives;

const SEAL_VERSION_1: u8 = 1;
const SEAL_LABEL: &[u8] = b"Missive storage v1";
const XNONCE_LEN: usize = 24;
/// Bytes [`seal`] adds to a plaintext: version, nonce and tag.
pub const SEAL_OVERHEAD: usize = 1 + XNONCE_LEN + primitives::AEAD_TAG_LEN;

/// A 32-byte key for sealing stored state; boxed and zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey(Box<[u8; 32]>);

impl StorageKey {
    /// Draws a fresh random key.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut key = Box::new([0u8; 32]);
        rng.fill_bytes(&mut key[..]);
        Self(key)
    }

    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut bytes = bytes;
        let key = Self(Box::new(bytes));
        bytes.zeroize();
        key
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

fn aead_ad(associated_data: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(2 * 8 + SEAL_LABEL.len() + associated_data.len());
    put_field(&mut ad, SEAL_LABEL);
    put_field(&mut ad, associated_data);
    ad
}

/// Seals `plaintext`: `0x01 || nonce (24, random) || XChaCha20-Poly1305 ciphertext || tag`,
/// with AEAD associated data `field("Missive storage v1") || field(associated_data)`.
///
/// The only failure of the cipher is a plaintext beyond 2^38 bytes, which cannot be
/// allocated; in that case the result is empty, which [`open`] rejects.
pub fn seal<R: CryptoRng + RngCore>(
    rng: &mut R,
    key: &StorageKey,
    plaintext: &[u8],
    associated_data: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; XNONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let Ok(ciphertext) =
        primitives::xaead_seal(key.as_bytes(), &nonce, plaintext, &aead_ad(associated_data))
    else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(1 + XNONCE_LEN + ciphertext.len());
    out.push(SEAL_VERSION_1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens bytes produced by [`seal`] with the same key and associated data.
pub fn open(
    key: &StorageKey,
    sealed: &[u8],
    associated_data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, StateError> {
    let Some((&version, rest)) = sealed.split_first() else {
        return Err(StateError::Truncated);
    };
    if version != SEAL_VERSION_1 {
        return Err(StateError::UnsupportedVersion(u32::from(version)));
    }
    if rest.len() < XNONCE_LEN + primitives::AEAD_TAG_LEN {
        return Err(StateError::Truncated);
    }
    let (nonce, ciphertext) = rest.split_at(XNONCE_LEN);
    let nonce: [u8; XNONCE_LEN] = nonce.try_into().map_err(|_| StateError::Truncated)?;
    primitives::xaead_open(
        key.as_bytes(),
        &nonce,
        ciphertext,
        &aead_ad(associated_data),
    )
    .map_err(|_| StateError::AuthenticationFailed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn seal_round_trips() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = StorageKey::generate(&mut rng);
        let sealed = seal(&mut rng, &key, b"state", b"ctx");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(&open(&key, &sealed, b"ctx").unwrap()[..], b"state");
        // Fresh nonce each time.
        assert_ne!(seal(&mut rng, &key, b"state", b"ctx"), sealed);
        let empty = seal(&mut rng, &key, b"", b"");
        assert!(open(&key, &empty, b"").unwrap().is_empty());
    }

    #[test]
    fn open_rejects_every_alteration() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let key = StorageKey::generate(&mut rng);
        let sealed = seal(&mut rng, &key, b"state", b"ctx");
        assert_eq!(
            open(&key, &sealed, b"ctX").err(),
            Some(StateError::AuthenticationFailed)
        );
        let other = StorageKey::from_bytes([9u8; 32]);
        assert_eq!(
            open(&other, &sealed, b"ctx").err(),
            Some(StateError::AuthenticationFailed)
        );
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                open(&key, &bad, b"ctx").err(),
                Some(StateError::AuthenticationFailed),
                "byte {i}"
            );
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert_eq!(
            open(&key, &bad, b"ctx").err(),
            Some(StateError::UnsupportedVersion(2))
        );
        assert_eq!(open(&key, &[], b"ctx").err(), Some(StateError::Truncated));
        assert_eq!(
            open(&key, &sealed[..SEAL_OVERHEAD - 1], b"ctx").err(),
            Some(StateError::Truncated)
        );
        // AD boundaries are unambiguous: the label cannot absorb caller AD.
        assert_eq!(
            open(&key, &sealed, b"").err(),
            Some(StateError::AuthenticationFailed)
        );
    }

    #[test]
    fn key_accessors_and_debug() {
        let key = StorageKey::from_bytes([5u8; 32]);
        assert_eq!(key.as_bytes(), &[5u8; 32]);
        assert_eq!(format!("{key:?}"), "StorageKey(<redacted>)");
    }
}
