//! Prekeys: signed X25519 (SPK), signed ML-KEM-768 (PQSPK / PQOPK) and
//! one-time X25519 (OPK). Signature inputs: docs/PROTOCOL.md, "Prekey signatures".

use core::fmt;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::encoding::{Reader, put_field, put_u32};
use crate::error::KeyError;
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::primitives::{self, KemDecapsulationKey, KemEncapsulationKey};

/// ML-KEM-768 encapsulation key length.
pub const KEM_PUBLIC_KEY_LEN: usize = primitives::KEM_EK_LEN;
/// ML-KEM-768 ciphertext length.
pub const KEM_CIPHERTEXT_LEN: usize = primitives::KEM_CT_LEN;

const SIGNED_PREKEY_LABEL: &[u8] = b"Missive signed prekey X25519 v2";
const KEM_PREKEY_LABEL: &[u8] = b"Missive KEM prekey ML-KEM-768 v2";
const SECRET_FORMAT_V1: u8 = 1;

/// Whose prekey a signature vouches for: the device's account key and the
/// device id, both inside every prekey signature (protocol v2), so a server
/// cannot serve one device's prekeys as another device's or another account's.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PrekeyOwner {
    /// The account key of the account the device belongs to.
    pub account: PublicIdentity,
    /// The device id within that account.
    pub device_id: u32,
}

impl PrekeyOwner {
    fn put(&self, out: &mut Vec<u8>) {
        put_field(out, &self.account.to_bytes());
        put_u32(out, self.device_id);
    }
}

/// Public half of a signed X25519 prekey.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedPrekeyPublic {
    /// Identifier chosen by the owner.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature by the identity over [`Self::signature_input`].
    pub signature: [u8; 64],
}

impl SignedPrekeyPublic {
    /// `field("Missive signed prekey X25519 v2") || field(account) || u32 device_id
    /// || u32 id || field(public_key)`.
    pub fn signature_input(&self, owner: &PrekeyOwner) -> Vec<u8> {
        let mut out = Vec::with_capacity(135);
        put_field(&mut out, SIGNED_PREKEY_LABEL);
        owner.put(&mut out);
        put_u32(&mut out, self.id);
        put_field(&mut out, &self.public_key);
        out
    }
}

/// Public half of a signed ML-KEM-768 prekey (last-resort or one-time).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KemPrekeyPublic {
    /// Identifier chosen by the owner.
    pub id: u32,
    /// ML-KEM-768 encapsulation key, [`KEM_PUBLIC_KEY_LEN`] bytes.
    pub public_key: Vec<u8>,
    /// Ed25519 signature by the identity over [`Self::signature_input`].
    pub signature: [u8; 64],
}

impl KemPrekeyPublic {
    /// `field("Missive KEM prekey ML-KEM-768 v2") || field(account) || u32 device_id
    /// || u32 id || field(public_key)`.
    pub fn signature_input(&self, owner: &PrekeyOwner) -> Vec<u8> {
        let mut out = Vec::with_capacity(100 + 12 + self.public_key.len());
        put_field(&mut out, KEM_PREKEY_LABEL);
        owner.put(&mut out);
        put_u32(&mut out, self.id);
        put_field(&mut out, &self.public_key);
        out
    }

    pub(crate) fn check_key(&self) -> Result<KemEncapsulationKey, KeyError> {
        if self.public_key.len() != KEM_PUBLIC_KEY_LEN {
            return Err(KeyError::InvalidLength {
                what: "ML-KEM-768 public key",
                expected: KEM_PUBLIC_KEY_LEN,
                actual: self.public_key.len(),
            });
        }
        primitives::kem_encapsulation_key(&self.public_key)
            .map_err(|_| KeyError::InvalidPublicKey("ML-KEM-768 public key"))
    }
}

/// Public half of a one-time X25519 prekey (unsigned, as in X3DH / PQXDH).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OneTimePrekeyPublic {
    /// Identifier chosen by the owner.
    pub id: u32,
    /// X25519 public key.
    pub public_key: [u8; 32],
}

/// What an initiator fetches to start a session with one device.
#[derive(Clone, Debug)]
pub struct PrekeyBundle {
    /// The responder device's identity key (not its account key).
    pub identity: PublicIdentity,
    /// The account and device id the prekey signatures name.
    pub owner: PrekeyOwner,
    /// The responder's signed X25519 prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// A one-time ML-KEM prekey, or the last-resort one.
    pub kem_prekey: KemPrekeyPublic,
    /// A one-time X25519 prekey, when one was left.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
}

fn bad_len(what: &'static str, expected: usize, actual: usize) -> KeyError {
    KeyError::InvalidLength {
        what,
        expected,
        actual,
    }
}

fn read_header(reader: &mut Reader<'_>, what: &'static str, len: usize) -> Result<u32, KeyError> {
    match reader.u8() {
        Some(SECRET_FORMAT_V1) => {}
        Some(other) => return Err(KeyError::UnsupportedVersion(other)),
        None => return Err(bad_len(what, len, 0)),
    }
    reader.u32().ok_or(bad_len(what, len, 0))
}

/// A signed X25519 prekey pair. The secret is boxed and zeroized on drop.
pub struct SignedPrekeyPair {
    secret: Box<StaticSecret>,
    public: SignedPrekeyPublic,
}

impl SignedPrekeyPair {
    const SECRET_LEN: usize = 1 + 4 + 32 + 64;

    /// Generates a prekey signed by the device key `identity` for `owner`.
    pub fn generate<R: CryptoRng + RngCore>(
        rng: &mut R,
        id: u32,
        identity: &IdentityKeyPair,
        owner: &PrekeyOwner,
    ) -> Self {
        let secret = Box::new(StaticSecret::random_from_rng(rng));
        let mut public = SignedPrekeyPublic {
            id,
            public_key: primitives::x25519_public(&secret),
            signature: [0u8; 64],
        };
        public.signature = identity.sign(&public.signature_input(owner));
        Self { secret, public }
    }

    /// The identifier.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// The public half with its signature.
    pub fn public(&self) -> SignedPrekeyPublic {
        self.public.clone()
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    pub(crate) fn public_key(&self) -> [u8; 32] {
        self.public.public_key
    }

    /// `0x01 || u32 id || secret (32) || signature (64)`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::SECRET_LEN));
        out.push(SECRET_FORMAT_V1);
        out.extend_from_slice(&self.public.id.to_be_bytes());
        out.extend_from_slice(self.secret.as_bytes());
        out.extend_from_slice(&self.public.signature);
        out
    }

    /// Restores a pair written by [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let what = "signed prekey secret";
        let mut reader = Reader::new(bytes);
        let id = read_header(&mut reader, what, Self::SECRET_LEN)?;
        let (Some(secret), Some(signature), true) = (
            reader.array::<32>().map(Zeroizing::new),
            reader.array::<64>(),
            reader.is_empty(),
        ) else {
            return Err(bad_len(what, Self::SECRET_LEN, bytes.len()));
        };
        let secret = Box::new(StaticSecret::from(*secret));
        let public = SignedPrekeyPublic {
            id,
            public_key: primitives::x25519_public(&secret),
            signature,
        };
        Ok(Self { secret, public })
    }
}

impl fmt::Debug for SignedPrekeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { secret: _, public } = self;
        f.debug_struct("SignedPrekeyPair")
            .field("public", public)
            .finish_non_exhaustive()
    }
}

/// A signed ML-KEM-768 prekey pair (last-resort or one-time).
///
/// Stored as its 64-byte FIPS 203 seed `d || z`; the expanded decapsulation
/// key is boxed and zeroized on drop.
pub struct KemPrekeyPair {
    seed: Box<Zeroizing<[u8; primitives::KEM_SEED_LEN]>>,
    decapsulation_key: Box<KemDecapsulationKey>,
    public: KemPrekeyPublic,
}

impl KemPrekeyPair {
    const SECRET_LEN: usize = 1 + 4 + primitives::KEM_SEED_LEN + 64;

    /// Generates a prekey signed by the device key `identity` for `owner`.
    pub fn generate<R: CryptoRng + RngCore>(
        rng: &mut R,
        id: u32,
        identity: &IdentityKeyPair,
        owner: &PrekeyOwner,
    ) -> Self {
        let mut seed = Box::new(Zeroizing::new([0u8; primitives::KEM_SEED_LEN]));
        rng.fill_bytes(&mut seed[..]);
        let (decapsulation_key, ek) = primitives::kem_keypair_from_seed(&seed);
        let mut public = KemPrekeyPublic {
            id,
            public_key: primitives::kem_encode_public(&ek),
            signature: [0u8; 64],
        };
        public.signature = identity.sign(&public.signature_input(owner));
        Self {
            seed,
            decapsulation_key,
            public,
        }
    }

    /// The identifier.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// The public half with its signature.
    pub fn public(&self) -> KemPrekeyPublic {
        self.public.clone()
    }

    pub(crate) fn decapsulation_key(&self) -> &KemDecapsulationKey {
        &self.decapsulation_key
    }

    pub(crate) fn public_key(&self) -> &[u8] {
        &self.public.public_key
    }

    /// `0x01 || u32 id || seed d||z (64) || signature (64)`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::SECRET_LEN));
        out.push(SECRET_FORMAT_V1);
        out.extend_from_slice(&self.public.id.to_be_bytes());
        out.extend_from_slice(&self.seed[..]);
        out.extend_from_slice(&self.public.signature);
        out
    }

    /// Restores a pair written by [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let what = "KEM prekey secret";
        let mut reader = Reader::new(bytes);
        let id = read_header(&mut reader, what, Self::SECRET_LEN)?;
        let (Some(seed), Some(signature), true) = (
            reader.array::<{ primitives::KEM_SEED_LEN }>(),
            reader.array::<64>(),
            reader.is_empty(),
        ) else {
            return Err(bad_len(what, Self::SECRET_LEN, bytes.len()));
        };
        let seed = Box::new(Zeroizing::new(seed));
        let (decapsulation_key, ek) = primitives::kem_keypair_from_seed(&seed);
        let public = KemPrekeyPublic {
            id,
            public_key: primitives::kem_encode_public(&ek),
            signature,
        };
        Ok(Self {
            seed,
            decapsulation_key,
            public,
        })
    }
}

impl fmt::Debug for KemPrekeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            seed: _,
            decapsulation_key: _,
            public,
        } = self;
        f.debug_struct("KemPrekeyPair")
            .field("id", &public.id)
            .finish_non_exhaustive()
    }
}

/// A one-time X25519 prekey pair. The secret is boxed and zeroized on drop.
pub struct OneTimePrekeyPair {
    secret: Box<StaticSecret>,
    public: OneTimePrekeyPublic,
}

impl OneTimePrekeyPair {
    const SECRET_LEN: usize = 1 + 4 + 32;

    /// Generates a one-time prekey.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R, id: u32) -> Self {
        let secret = Box::new(StaticSecret::random_from_rng(rng));
        let public = OneTimePrekeyPublic {
            id,
            public_key: primitives::x25519_public(&secret),
        };
        Self { secret, public }
    }

    /// The identifier.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// The public half.
    pub fn public(&self) -> OneTimePrekeyPublic {
        self.public.clone()
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// `0x01 || u32 id || secret (32)`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::SECRET_LEN));
        out.push(SECRET_FORMAT_V1);
        out.extend_from_slice(&self.public.id.to_be_bytes());
        out.extend_from_slice(self.secret.as_bytes());
        out
    }

    /// Restores a pair written by [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let what = "one-time prekey secret";
        let mut reader = Reader::new(bytes);
        let id = read_header(&mut reader, what, Self::SECRET_LEN)?;
        let (Some(secret), true) = (reader.array::<32>().map(Zeroizing::new), reader.is_empty())
        else {
            return Err(bad_len(what, Self::SECRET_LEN, bytes.len()));
        };
        let secret = Box::new(StaticSecret::from(*secret));
        let public = OneTimePrekeyPublic {
            id,
            public_key: primitives::x25519_public(&secret),
        };
        Ok(Self { secret, public })
    }
}

impl fmt::Debug for OneTimePrekeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { secret: _, public } = self;
        f.debug_struct("OneTimePrekeyPair")
            .field("public", public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// A device key and the owner its prekeys are signed for: device 1 of an
    /// account whose key is a different key.
    fn setup() -> (ChaCha20Rng, IdentityKeyPair, PrekeyOwner) {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let id = IdentityKeyPair::generate(&mut rng);
        let account = IdentityKeyPair::generate(&mut rng);
        let owner = PrekeyOwner {
            account: account.public().clone(),
            device_id: 1,
        };
        (rng, id, owner)
    }

    /// Owners that differ from `owner` in exactly one element.
    fn other_owners(rng: &mut ChaCha20Rng, owner: &PrekeyOwner) -> [PrekeyOwner; 2] {
        [
            PrekeyOwner {
                account: IdentityKeyPair::generate(rng).public().clone(),
                device_id: owner.device_id,
            },
            PrekeyOwner {
                account: owner.account.clone(),
                device_id: owner.device_id + 1,
            },
        ]
    }

    #[test]
    fn signed_prekey_verifies_and_round_trips() {
        let (mut rng, id, owner) = setup();
        let spk = SignedPrekeyPair::generate(&mut rng, 7, &id, &owner);
        assert_eq!(spk.id(), 7);
        id.public()
            .verify_signed_prekey(&spk.public(), &owner)
            .unwrap();
        let restored = SignedPrekeyPair::from_secret_bytes(&spk.to_secret_bytes()).unwrap();
        assert_eq!(restored.public(), spk.public());
    }

    #[test]
    fn signed_prekey_tampering_is_rejected() {
        let (mut rng, id, owner) = setup();
        let other = IdentityKeyPair::generate(&mut rng);
        let spk = SignedPrekeyPair::generate(&mut rng, 7, &id, &owner);
        let mut p = spk.public();
        p.id = 8;
        assert_eq!(
            id.public().verify_signed_prekey(&p, &owner),
            Err(KeyError::BadSignature)
        );
        let mut p = spk.public();
        p.public_key[0] ^= 1;
        assert_eq!(
            id.public().verify_signed_prekey(&p, &owner),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            other.public().verify_signed_prekey(&spk.public(), &owner),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn signatures_bind_the_owner() {
        let (mut rng, id, owner) = setup();
        let spk = SignedPrekeyPair::generate(&mut rng, 7, &id, &owner).public();
        let kem = KemPrekeyPair::generate(&mut rng, 9, &id, &owner).public();
        for other in other_owners(&mut rng, &owner) {
            assert_ne!(spk.signature_input(&other), spk.signature_input(&owner));
            assert_eq!(
                id.public().verify_signed_prekey(&spk, &other),
                Err(KeyError::BadSignature)
            );
            assert_eq!(
                id.public().verify_kem_prekey(&kem, &other),
                Err(KeyError::BadSignature)
            );
        }
        // The device key signs, not the account key the owner names.
        assert_eq!(
            owner.account.verify_signed_prekey(&spk, &owner),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            owner.account.verify_kem_prekey(&kem, &owner),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn signature_input_layout_is_pinned() {
        let (mut rng, id, owner) = setup();
        let spk = SignedPrekeyPair::generate(&mut rng, 7, &id, &owner).public();
        let mut expected = Vec::new();
        put_field(&mut expected, b"Missive signed prekey X25519 v2");
        put_field(&mut expected, &owner.account.to_bytes());
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&7u32.to_be_bytes());
        put_field(&mut expected, &spk.public_key);
        assert_eq!(spk.signature_input(&owner), expected);
        let kem = KemPrekeyPair::generate(&mut rng, 9, &id, &owner).public();
        let mut expected = Vec::new();
        put_field(&mut expected, b"Missive KEM prekey ML-KEM-768 v2");
        put_field(&mut expected, &owner.account.to_bytes());
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&9u32.to_be_bytes());
        put_field(&mut expected, &kem.public_key);
        assert_eq!(kem.signature_input(&owner), expected);
    }

    #[test]
    fn kem_prekey_verifies_and_round_trips() {
        let (mut rng, id, owner) = setup();
        let kem = KemPrekeyPair::generate(&mut rng, 9, &id, &owner);
        assert_eq!(kem.public().public_key.len(), KEM_PUBLIC_KEY_LEN);
        id.public()
            .verify_kem_prekey(&kem.public(), &owner)
            .unwrap();
        let restored = KemPrekeyPair::from_secret_bytes(&kem.to_secret_bytes()).unwrap();
        assert_eq!(restored.public(), kem.public());
        assert_eq!(restored.id(), 9);
    }

    #[test]
    fn kem_prekey_tampering_is_rejected() {
        let (mut rng, id, owner) = setup();
        let kem = KemPrekeyPair::generate(&mut rng, 9, &id, &owner);
        let mut p = kem.public();
        p.public_key[100] ^= 1;
        assert_eq!(
            id.public().verify_kem_prekey(&p, &owner),
            Err(KeyError::BadSignature)
        );
        let mut p = kem.public();
        p.public_key.pop();
        assert!(matches!(
            id.public().verify_kem_prekey(&p, &owner),
            Err(KeyError::InvalidLength { .. })
        ));
        let mut p = kem.public();
        p.public_key[0] = 0xff;
        p.public_key[1] |= 0x0f;
        assert_eq!(
            id.public().verify_kem_prekey(&p, &owner),
            Err(KeyError::InvalidPublicKey("ML-KEM-768 public key"))
        );
    }

    #[test]
    fn one_time_prekey_round_trips() {
        let (mut rng, _, _) = setup();
        let otk = OneTimePrekeyPair::generate(&mut rng, 3);
        let restored = OneTimePrekeyPair::from_secret_bytes(&otk.to_secret_bytes()).unwrap();
        assert_eq!(restored.public(), otk.public());
    }

    #[test]
    fn secret_bytes_reject_bad_input() {
        let (mut rng, id, owner) = setup();
        let spk = SignedPrekeyPair::generate(&mut rng, 1, &id, &owner).to_secret_bytes();
        let kem = KemPrekeyPair::generate(&mut rng, 1, &id, &owner).to_secret_bytes();
        let otk = OneTimePrekeyPair::generate(&mut rng, 1).to_secret_bytes();
        assert!(SignedPrekeyPair::from_secret_bytes(&spk[..spk.len() - 1]).is_err());
        assert!(KemPrekeyPair::from_secret_bytes(&kem[..kem.len() - 1]).is_err());
        assert!(OneTimePrekeyPair::from_secret_bytes(&otk[..otk.len() - 1]).is_err());
        assert!(OneTimePrekeyPair::from_secret_bytes(&[]).is_err());
        assert!(OneTimePrekeyPair::from_secret_bytes(&[1, 0, 0]).is_err());
        let mut v9 = otk.to_vec();
        v9[0] = 9;
        assert_eq!(
            OneTimePrekeyPair::from_secret_bytes(&v9).err(),
            Some(KeyError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let (mut rng, _, _) = setup();
        let otk = OneTimePrekeyPair::generate(&mut rng, 3);
        let secret = otk.to_secret_bytes();
        let debug = format!("{otk:?}");
        assert!(!debug.contains(&format!("{:?}", &secret[5..9])));
        assert!(!debug.contains(&hex::encode(&secret[5..])));
    }
}
