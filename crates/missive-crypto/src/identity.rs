//! Long-term identities: an Ed25519 signing key plus an X25519 agreement key
//! signed by it (docs/PROTOCOL.md, "Identity").

use core::fmt;

use ed25519_dalek::{Signer, SigningKey};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::encoding::{Reader, put_field};
use crate::error::KeyError;
use crate::prekeys::{KemPrekeyPublic, SignedPrekeyPublic};
use crate::primitives;

/// Label of the signature that binds the agreement key to the signing key.
pub(crate) const AGREEMENT_KEY_LABEL: &[u8] = b"Missive identity agreement key v1";
/// Format version of [`IdentityKeyPair::to_secret_bytes`].
const SECRET_FORMAT_V1: u8 = 1;
/// Length of [`PublicIdentity::to_bytes`].
pub(crate) const PUBLIC_IDENTITY_LEN: usize = 128;

/// The bytes signed to bind an X25519 agreement key to an identity.
pub(crate) fn agreement_key_signature_input(agreement_key: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    put_field(&mut out, AGREEMENT_KEY_LABEL);
    put_field(&mut out, agreement_key);
    out
}

/// A long-term identity key pair: Ed25519 for signatures, X25519 for PQXDH.
///
/// Both secrets are boxed and zeroized on drop; `Debug` shows only the fingerprint.
pub struct IdentityKeyPair {
    signing: Box<SigningKey>,
    agreement: Box<StaticSecret>,
    public: PublicIdentity,
}

impl IdentityKeyPair {
    /// Generates a fresh identity.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let signing = Box::new(SigningKey::generate(rng));
        let agreement = Box::new(StaticSecret::random_from_rng(&mut *rng));
        Self::from_secrets(signing, agreement)
    }

    fn from_secrets(signing: Box<SigningKey>, agreement: Box<StaticSecret>) -> Self {
        let agreement_key = primitives::x25519_public(&agreement);
        let signature = signing
            .sign(&agreement_key_signature_input(&agreement_key))
            .to_bytes();
        let public = PublicIdentity {
            verifying_key: signing.verifying_key(),
            signing_key: signing.verifying_key().to_bytes(),
            agreement_key,
            agreement_key_signature: signature,
        };
        Self {
            signing,
            agreement,
            public,
        }
    }

    /// The public half, to publish.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Ed25519 signature over `message` (for proof-of-possession transcripts and prekeys).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub(crate) fn agreement_secret(&self) -> &StaticSecret {
        &self.agreement
    }

    /// Serialises the secret keys: `0x01 || ed25519 seed (32) || x25519 secret (32)`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(65));
        out.push(SECRET_FORMAT_V1);
        out.extend_from_slice(self.signing.as_bytes());
        out.extend_from_slice(self.agreement.as_bytes());
        out
    }

    /// Restores a key pair written by [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut reader = Reader::new(bytes);
        match reader.u8() {
            Some(SECRET_FORMAT_V1) => {}
            Some(other) => return Err(KeyError::UnsupportedVersion(other)),
            None => {
                return Err(KeyError::InvalidLength {
                    what: "identity secret",
                    expected: 65,
                    actual: 0,
                });
            }
        }
        let (Some(seed), Some(agreement), true) = (
            reader.array::<32>().map(Zeroizing::new),
            reader.array::<32>().map(Zeroizing::new),
            reader.is_empty(),
        ) else {
            return Err(KeyError::InvalidLength {
                what: "identity secret",
                expected: 65,
                actual: bytes.len(),
            });
        };
        Ok(Self::from_secrets(
            Box::new(SigningKey::from_bytes(&seed)),
            Box::new(StaticSecret::from(*agreement)),
        ))
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            signing: _,
            agreement: _,
            public,
        } = self;
        f.debug_struct("IdentityKeyPair")
            .field("fingerprint", &public.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A verified public identity: signing key, agreement key and the binding signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicIdentity {
    /// The decoded signing key, kept so verification does not decompress it again.
    verifying_key: ed25519_dalek::VerifyingKey,
    signing_key: [u8; 32],
    agreement_key: [u8; 32],
    agreement_key_signature: [u8; 64],
}

impl PublicIdentity {
    /// Builds an identity from its parts, verifying the agreement-key signature first.
    pub fn from_parts(
        signing_key: &[u8],
        agreement_key: &[u8],
        agreement_key_signature: &[u8],
    ) -> Result<Self, KeyError> {
        let signing_key: [u8; 32] = fixed(signing_key, "identity signing key")?;
        let agreement_key: [u8; 32] = fixed(agreement_key, "identity agreement key")?;
        let agreement_key_signature: [u8; 64] =
            fixed(agreement_key_signature, "agreement key signature")?;
        let verifying_key = primitives::ed25519_public_key(&signing_key)
            .map_err(|_| KeyError::InvalidPublicKey("identity signing key"))?;
        primitives::ed25519_verify_with(
            &verifying_key,
            &agreement_key_signature_input(&agreement_key),
            &agreement_key_signature,
        )
        .map_err(|_| KeyError::BadSignature)?;
        Ok(Self {
            verifying_key,
            signing_key,
            agreement_key,
            agreement_key_signature,
        })
    }

    /// Ed25519 public key.
    pub fn signing_key(&self) -> [u8; 32] {
        self.signing_key
    }

    /// X25519 public key.
    pub fn agreement_key(&self) -> [u8; 32] {
        self.agreement_key
    }

    /// Signature by the signing key over the agreement key.
    pub fn agreement_key_signature(&self) -> [u8; 64] {
        self.agreement_key_signature
    }

    /// `signing_key (32) || agreement_key (32) || agreement_key_signature (64)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_array().to_vec()
    }

    pub(crate) fn to_array(&self) -> [u8; PUBLIC_IDENTITY_LEN] {
        let mut out = [0u8; PUBLIC_IDENTITY_LEN];
        out[..32].copy_from_slice(&self.signing_key);
        out[32..64].copy_from_slice(&self.agreement_key);
        out[64..].copy_from_slice(&self.agreement_key_signature);
        out
    }

    /// Parses and verifies the 128-byte form of [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != PUBLIC_IDENTITY_LEN {
            return Err(KeyError::InvalidLength {
                what: "public identity",
                expected: PUBLIC_IDENTITY_LEN,
                actual: bytes.len(),
            });
        }
        Self::from_parts(&bytes[..32], &bytes[32..64], &bytes[64..])
    }

    /// SHA-256 of [`Self::to_bytes`].
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(primitives::sha256(&self.to_array()))
    }

    /// Verifies an Ed25519 signature by this identity (strict verification).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        if signature.len() != 64 {
            return Err(KeyError::InvalidLength {
                what: "signature",
                expected: 64,
                actual: signature.len(),
            });
        }
        let signature: [u8; 64] = fixed(signature, "signature")?;
        primitives::ed25519_verify_with(&self.verifying_key, message, &signature)
            .map_err(|_| KeyError::BadSignature)
    }

    /// Verifies a signed X25519 prekey's signature.
    pub fn verify_signed_prekey(&self, prekey: &SignedPrekeyPublic) -> Result<(), KeyError> {
        self.verify(&prekey.signature_input(), &prekey.signature)
    }

    /// Verifies an ML-KEM prekey's signature and that its key is well formed.
    pub fn verify_kem_prekey(&self, prekey: &KemPrekeyPublic) -> Result<(), KeyError> {
        self.verify_kem_prekey_key(prekey).map(drop)
    }

    /// [`Self::verify_kem_prekey`], returning the parsed key.
    pub(crate) fn verify_kem_prekey_key(
        &self,
        prekey: &KemPrekeyPublic,
    ) -> Result<primitives::KemEncapsulationKey, KeyError> {
        let key = prekey.check_key()?;
        self.verify(&prekey.signature_input(), &prekey.signature)?;
        Ok(key)
    }
}

pub(crate) fn fixed<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], KeyError> {
    bytes.try_into().map_err(|_| KeyError::InvalidLength {
        what,
        expected: N,
        actual: bytes.len(),
    })
}

/// SHA-256 of a public identity. `Display` is lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn identity(seed: u64) -> IdentityKeyPair {
        IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn public_identity_round_trips() {
        let id = identity(1);
        let bytes = id.public().to_bytes();
        assert_eq!(bytes.len(), 128);
        assert_eq!(&PublicIdentity::from_bytes(&bytes).unwrap(), id.public());
        let p = id.public();
        assert_eq!(
            &PublicIdentity::from_parts(
                &p.signing_key(),
                &p.agreement_key(),
                &p.agreement_key_signature()
            )
            .unwrap(),
            p
        );
    }

    #[test]
    fn secret_round_trips() {
        let id = identity(2);
        let restored = IdentityKeyPair::from_secret_bytes(&id.to_secret_bytes()).unwrap();
        assert_eq!(restored.public(), id.public());
        assert_eq!(restored.sign(b"m"), id.sign(b"m"));
    }

    #[test]
    fn secret_rejects_bad_input() {
        let id = identity(3);
        let bytes = id.to_secret_bytes();
        assert_eq!(
            IdentityKeyPair::from_secret_bytes(&bytes[..64]).err(),
            Some(KeyError::InvalidLength {
                what: "identity secret",
                expected: 65,
                actual: 64
            })
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            IdentityKeyPair::from_secret_bytes(&long),
            Err(KeyError::InvalidLength { .. })
        ));
        let mut v2 = bytes.to_vec();
        v2[0] = 2;
        assert_eq!(
            IdentityKeyPair::from_secret_bytes(&v2).err(),
            Some(KeyError::UnsupportedVersion(2))
        );
        assert!(matches!(
            IdentityKeyPair::from_secret_bytes(&[]),
            Err(KeyError::InvalidLength { actual: 0, .. })
        ));
    }

    #[test]
    fn swapped_agreement_key_is_rejected() {
        let a = identity(4);
        let b = identity(5);
        let err = PublicIdentity::from_parts(
            &a.public().signing_key(),
            &b.public().agreement_key(),
            &a.public().agreement_key_signature(),
        );
        assert_eq!(err, Err(KeyError::BadSignature));
        let mut bytes = a.public().to_bytes();
        bytes[127] ^= 1;
        assert_eq!(
            PublicIdentity::from_bytes(&bytes),
            Err(KeyError::BadSignature)
        );
        assert!(matches!(
            PublicIdentity::from_bytes(&bytes[..127]),
            Err(KeyError::InvalidLength { .. })
        ));
        assert!(matches!(
            PublicIdentity::from_parts(&[0u8; 31], &[0u8; 32], &[0u8; 64]),
            Err(KeyError::InvalidLength { .. })
        ));
    }

    #[test]
    fn invalid_signing_point_is_rejected() {
        // y = 2 does not decompress to a curve point.
        let mut key = [0u8; 32];
        key[0] = 2;
        assert_eq!(
            PublicIdentity::from_parts(&key, &[9u8; 32], &[0u8; 64]),
            Err(KeyError::InvalidPublicKey("identity signing key"))
        );
    }

    #[test]
    fn sign_and_verify() {
        let id = identity(6);
        let sig = id.sign(b"challenge");
        id.public().verify(b"challenge", &sig).unwrap();
        assert_eq!(
            id.public().verify(b"challengf", &sig),
            Err(KeyError::BadSignature)
        );
        assert!(matches!(
            id.public().verify(b"challenge", &sig[..63]),
            Err(KeyError::InvalidLength { .. })
        ));
        assert_eq!(
            identity(7).public().verify(b"challenge", &sig),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        let id = identity(8);
        let fp = id.public().fingerprint();
        assert_eq!(fp.0, primitives::sha256(&id.public().to_bytes()));
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(hex, hex::encode(fp.0));
    }

    #[test]
    fn debug_prints_no_secret() {
        let id = identity(9);
        let debug = format!("{id:?}");
        let secret = id.to_secret_bytes();
        assert!(debug.contains(&id.public().fingerprint().to_string()));
        assert!(!debug.contains(&hex::encode(&secret[1..33])));
        assert!(!debug.contains(&format!("{:?}", &secret[1..5])));
    }
}
