//! Double Ratchet key schedule (docs/PROTOCOL.md, "Double Ratchet").
//!
//! Root KDF: HKDF-SHA256; chain KDF: HMAC-SHA256; message keys HKDF-expanded
//! into a ChaCha20-Poly1305 key and nonce. Keys are boxed, zeroized on drop and
//! have no `Debug`.

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::primitives::{self, AEAD_KEY_LEN, AEAD_NONCE_LEN};

/// HKDF info of the root KDF.
pub(crate) const ROOT_KDF_INFO: &[u8] = b"Missive_Ratchet_Root_v1";
/// HKDF info of the message-key expansion.
pub(crate) const MESSAGE_KEY_INFO: &[u8] = b"Missive_Ratchet_MessageKeys_v1";
/// HMAC input deriving a message key from a chain key.
const MESSAGE_KEY_SEED: u8 = 0x01;
/// HMAC input deriving the next chain key.
const CHAIN_KEY_SEED: u8 = 0x02;

macro_rules! secret_key {
    ($name:ident) => {
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub(crate) struct $name(Box<[u8; 32]>);

        impl $name {
            pub(crate) fn from_array(bytes: [u8; 32]) -> Self {
                let mut bytes = bytes;
                let key = Self(Box::new(bytes));
                bytes.zeroize();
                key
            }

            pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
                let mut key = Box::new([0u8; 32]);
                if bytes.len() != 32 {
                    return None;
                }
                key.copy_from_slice(bytes);
                Some(Self(key))
            }

            pub(crate) fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }
    };
}

secret_key!(RootKey);
secret_key!(ChainKey);
secret_key!(MessageKey);

impl RootKey {
    /// `RK', CK = HKDF(salt = RK, ikm = dh_out, info = ROOT_KDF_INFO, 64)`.
    pub(crate) fn step(&self, dh_out: &[u8; 32]) -> (RootKey, ChainKey) {
        let mut okm = Zeroizing::new([0u8; 64]);
        // 64 bytes is far below HKDF-SHA256's 8160-byte limit.
        let _ = primitives::hkdf_sha256(self.as_bytes(), dh_out, ROOT_KDF_INFO, &mut okm[..]);
        let mut root = Box::new([0u8; 32]);
        let mut chain = Box::new([0u8; 32]);
        root.copy_from_slice(&okm[..32]);
        chain.copy_from_slice(&okm[32..]);
        (RootKey(root), ChainKey(chain))
    }
}

impl ChainKey {
    /// `(HMAC(CK, 0x01), HMAC(CK, 0x02))` with one HMAC key schedule.
    pub(crate) fn step(&self) -> (MessageKey, ChainKey) {
        let [mk, ck] =
            primitives::hmac_sha256_two(self.as_bytes(), &[MESSAGE_KEY_SEED], &[CHAIN_KEY_SEED]);
        (MessageKey::from_array(mk), ChainKey::from_array(ck))
    }
}

/// AEAD key and nonce for one message.
pub(crate) struct MessageCipher {
    pub(crate) key: Zeroizing<[u8; AEAD_KEY_LEN]>,
    pub(crate) nonce: [u8; AEAD_NONCE_LEN],
}

impl MessageKey {
    /// `key || nonce = HKDF(salt = 0^32, ikm = MK, info = MESSAGE_KEY_INFO, 44)`.
    pub(crate) fn expand(&self) -> MessageCipher {
        let mut okm = Zeroizing::new([0u8; AEAD_KEY_LEN + AEAD_NONCE_LEN]);
        let _ =
            primitives::hkdf_sha256(&[0u8; 32], self.as_bytes(), MESSAGE_KEY_INFO, &mut okm[..]);
        let mut key = Zeroizing::new([0u8; AEAD_KEY_LEN]);
        let mut nonce = [0u8; AEAD_NONCE_LEN];
        key.copy_from_slice(&okm[..AEAD_KEY_LEN]);
        nonce.copy_from_slice(&okm[AEAD_KEY_LEN..]);
        MessageCipher { key, nonce }
    }
}

/// A ratchet key pair with its public key cached (computed once, not per message).
#[derive(Clone)]
pub(crate) struct RatchetKeyPair {
    secret: Box<StaticSecret>,
    public: [u8; 32],
}

impl RatchetKeyPair {
    pub(crate) fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        Self::from_secret(Box::new(StaticSecret::random_from_rng(rng)))
    }

    pub(crate) fn from_secret(secret: Box<StaticSecret>) -> Self {
        let public = primitives::x25519_public(&secret);
        Self { secret, public }
    }

    /// From a secret whose public key is already known (a signed prekey).
    pub(crate) fn from_parts(secret: Box<StaticSecret>, public: [u8; 32]) -> Self {
        Self { secret, public }
    }

    pub(crate) fn public(&self) -> &[u8; 32] {
        &self.public
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn kdfs_follow_documented_construction() {
        let root = RootKey::from_array([1u8; 32]);
        let (r2, c) = root.step(&[2u8; 32]);
        let mut okm = [0u8; 64];
        primitives::hkdf_sha256(&[1u8; 32], &[2u8; 32], ROOT_KDF_INFO, &mut okm).unwrap();
        assert_eq!(r2.as_bytes(), &okm[..32]);
        assert_eq!(c.as_bytes(), &okm[32..]);
        let (mk, next) = c.step();
        assert_eq!(
            mk.as_bytes(),
            &primitives::hmac_sha256(c.as_bytes(), &[&[1]])
        );
        assert_eq!(
            next.as_bytes(),
            &primitives::hmac_sha256(c.as_bytes(), &[&[2]])
        );
        let cipher = mk.expand();
        let mut okm = [0u8; 44];
        primitives::hkdf_sha256(&[0u8; 32], mk.as_bytes(), MESSAGE_KEY_INFO, &mut okm).unwrap();
        assert_eq!(&cipher.key[..], &okm[..32]);
        assert_eq!(&cipher.nonce[..], &okm[32..]);
        assert!(ChainKey::from_slice(&[0u8; 31]).is_none());
    }
}
