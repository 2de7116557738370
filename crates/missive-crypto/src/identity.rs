//! Long-term identities: one Ed25519 key, used for signatures as it is and for
//! PQXDH through its standard X25519 form (docs/PROTOCOL.md, "Identity").

use core::fmt;

use ed25519_dalek::{Signer, SigningKey};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::encoding::Reader;
use crate::error::KeyError;
use crate::prekeys::{KemPrekeyPublic, PrekeyOwner, SignedPrekeyPublic};
use crate::primitives;

/// Format version of [`IdentityKeyPair::to_secret_bytes`]: the Ed25519 seed alone.
const SECRET_FORMAT_V2: u8 = 2;
/// The pre-release format that also held a separate X25519 secret; no longer read.
const SECRET_FORMAT_V1: u8 = 1;
/// Length of [`IdentityKeyPair::to_secret_bytes`].
const SECRET_LEN: usize = 1 + 32;
/// Length of [`PublicIdentity::to_bytes`].
pub(crate) const PUBLIC_IDENTITY_LEN: usize = 32;

/// A long-term identity key pair: an Ed25519 key that signs, and whose X25519
/// form (RFC 7748 birational map, libsodium's conversion) agrees keys in PQXDH.
///
/// Both secrets are boxed and zeroized on drop; `Debug` shows only the fingerprint.
pub struct IdentityKeyPair {
    signing: Box<SigningKey>,
    /// Derived from `signing`, kept so each agreement does not hash the seed again.
    agreement: Box<StaticSecret>,
    public: PublicIdentity,
}

impl IdentityKeyPair {
    /// Generates a fresh identity.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        Self::from_signing(Box::new(SigningKey::generate(rng)))
    }

    fn from_signing(signing: Box<SigningKey>) -> Self {
        let agreement = Box::new(primitives::ed25519_to_x25519_secret(&signing));
        let verifying_key = signing.verifying_key();
        let public = PublicIdentity {
            verifying_key,
            signing_key: verifying_key.to_bytes(),
            agreement_key: primitives::ed25519_to_x25519_public(&verifying_key),
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

    /// Ed25519 signature over an MLS `SignContent` (RFC 9420, section
    /// 5.1.2: the varint-prefixed label `"MLS 1.0 " ‖ Label`, then the
    /// content), for a device's leaf in a group (docs/PROTOCOL.md, "Groups").
    /// Anything else is refused, so a device key never signs, through MLS,
    /// bytes that could read as one of Missive's own transcripts: those
    /// start with a u64 length, so their first byte is 0, which as an MLS
    /// varint would be an empty label.
    pub fn sign_mls(&self, sign_content: &[u8]) -> Result<[u8; 64], KeyError> {
        const PREFIX: &[u8] = b"MLS 1.0 ";
        let label_len = usize::from(*sign_content.first().ok_or(KeyError::NotMlsContent)?);
        // A one-byte varint (top bits 00) holds lengths below 64, which every
        // RFC 9420 label is.
        if label_len >= 64
            || label_len < PREFIX.len()
            || sign_content.get(1..=PREFIX.len()) != Some(PREFIX)
            || sign_content.len() < 1 + label_len
        {
            return Err(KeyError::NotMlsContent);
        }
        Ok(self.sign(sign_content))
    }

    pub(crate) fn agreement_secret(&self) -> &StaticSecret {
        &self.agreement
    }

    /// Serialises the secret key: `0x02 || ed25519 seed (32)`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SECRET_LEN));
        out.push(SECRET_FORMAT_V2);
        out.extend_from_slice(self.signing.as_bytes());
        out
    }

    /// Restores a key pair written by [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut reader = Reader::new(bytes);
        match reader.u8() {
            Some(SECRET_FORMAT_V2) => {}
            Some(SECRET_FORMAT_V1) => return Err(KeyError::RetiredIdentityFormat),
            Some(other) => return Err(KeyError::UnsupportedVersion(other)),
            None => {
                return Err(KeyError::InvalidLength {
                    what: "identity secret",
                    expected: SECRET_LEN,
                    actual: 0,
                });
            }
        }
        let (Some(seed), true) = (reader.array::<32>().map(Zeroizing::new), reader.is_empty())
        else {
            return Err(KeyError::InvalidLength {
                what: "identity secret",
                expected: SECRET_LEN,
                actual: bytes.len(),
            });
        };
        Ok(Self::from_signing(Box::new(SigningKey::from_bytes(&seed))))
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

/// A public identity: a canonical Ed25519 key of large order, and its X25519 form.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicIdentity {
    /// The decoded signing key, kept so verification does not decompress it again.
    verifying_key: ed25519_dalek::VerifyingKey,
    signing_key: [u8; 32],
    /// Derived from `signing_key`; never carried on the wire.
    agreement_key: [u8; 32],
}

impl PublicIdentity {
    /// Parses the 32-byte Ed25519 key of [`Self::to_bytes`]. Rejects encodings that
    /// are not points, not canonical, or of small order (their X25519 form would
    /// make every agreement non-contributory).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let signing_key: [u8; PUBLIC_IDENTITY_LEN] = fixed(bytes, "public identity")?;
        let verifying_key = primitives::ed25519_public_key(&signing_key)
            .map_err(|_| KeyError::InvalidPublicKey("identity key"))?;
        if verifying_key.is_weak()
            || verifying_key.to_edwards().compress().to_bytes() != signing_key
        {
            return Err(KeyError::InvalidPublicKey("identity key"));
        }
        Ok(Self {
            verifying_key,
            signing_key,
            agreement_key: primitives::ed25519_to_x25519_public(&verifying_key),
        })
    }

    /// Ed25519 public key.
    pub fn signing_key(&self) -> [u8; 32] {
        self.signing_key
    }

    /// X25519 form of the signing key, used in PQXDH.
    pub fn agreement_key(&self) -> [u8; 32] {
        self.agreement_key
    }

    /// The Ed25519 public key, 32 bytes: the whole public identity.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.signing_key.to_vec()
    }

    pub(crate) fn to_array(&self) -> [u8; PUBLIC_IDENTITY_LEN] {
        self.signing_key
    }

    /// SHA-256 of [`Self::to_bytes`].
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(primitives::sha256(&self.to_array()))
    }

    /// Verifies an Ed25519 signature by this identity (strict verification).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let signature: [u8; 64] = fixed(signature, "signature")?;
        primitives::ed25519_verify_with(&self.verifying_key, message, &signature)
            .map_err(|_| KeyError::BadSignature)
    }

    /// Verifies a signed X25519 prekey's signature by this device key for `owner`.
    pub fn verify_signed_prekey(
        &self,
        prekey: &SignedPrekeyPublic,
        owner: &PrekeyOwner,
    ) -> Result<(), KeyError> {
        self.verify(&prekey.signature_input(owner), &prekey.signature)
    }

    /// Verifies an ML-KEM prekey's signature by this device key for `owner`
    /// and that its key is well formed.
    pub fn verify_kem_prekey(
        &self,
        prekey: &KemPrekeyPublic,
        owner: &PrekeyOwner,
    ) -> Result<(), KeyError> {
        self.verify_kem_prekey_key(prekey, owner).map(drop)
    }

    /// [`Self::verify_kem_prekey`], returning the parsed key.
    pub(crate) fn verify_kem_prekey_key(
        &self,
        prekey: &KemPrekeyPublic,
        owner: &PrekeyOwner,
    ) -> Result<primitives::KemEncapsulationKey, KeyError> {
        let key = prekey.check_key()?;
        self.verify(&prekey.signature_input(owner), &prekey.signature)?;
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
        assert_eq!(bytes.len(), 32);
        assert_eq!(bytes, id.public().signing_key());
        assert_eq!(&PublicIdentity::from_bytes(&bytes).unwrap(), id.public());
    }

    /// Only MLS `SignContent` is signed through `sign_mls`; a Missive
    /// transcript (a u64-prefixed label) and malformed prefixes are refused.
    #[test]
    fn sign_mls_signs_only_mls_content() {
        let id = identity(3);
        let label = b"MLS 1.0 LeafNodeTBS";
        let mut content = vec![label.len() as u8];
        content.extend_from_slice(label);
        content.extend_from_slice(&[4, 1, 2, 3, 4]);
        let sig = id.sign_mls(&content).unwrap();
        id.public().verify(&content, &sig).unwrap();
        let transcript = crate::transcript::login(b"challenge", "server", "alice", 1);
        assert_eq!(id.sign_mls(&transcript), Err(KeyError::NotMlsContent));
        for bad in [
            &b""[..],
            &[0u8][..],
            &[5, b'M', b'L', b'S', b' ', b'1'][..],
            &[64, b'M', b'L', b'S', b' ', b'1', b'.', b'0', b' '][..],
            &[30, b'M', b'L', b'S', b' ', b'1', b'.', b'0', b' ', b'X'][..],
            &[9, b'M', b'L', b'S', b' ', b'2', b'.', b'0', b' ', b'X'][..],
        ] {
            assert_eq!(id.sign_mls(bad), Err(KeyError::NotMlsContent), "{bad:?}");
        }
    }

    /// The X25519 form of the key is the one X25519 computes from the derived secret,
    /// so both sides of an agreement use the same key.
    #[test]
    fn agreement_key_matches_the_agreement_secret() {
        for seed in 0..16 {
            let id = identity(seed);
            assert_eq!(
                primitives::x25519_public(id.agreement_secret()),
                id.public().agreement_key()
            );
        }
    }

    /// libsodium's test of `crypto_sign_ed25519_{pk,sk}_to_curve25519`
    /// (test/default/ed25519_convert.exp): the conversion is the standard one.
    #[test]
    fn conversion_matches_libsodium() {
        let seed: [u8; 32] =
            hex::decode("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
                .unwrap()
                .try_into()
                .unwrap();
        let mut secret = vec![SECRET_FORMAT_V2];
        secret.extend_from_slice(&seed);
        let id = IdentityKeyPair::from_secret_bytes(&secret).unwrap();
        assert_eq!(
            hex::encode(id.public().agreement_key()),
            "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"
        );
        // libsodium prints the clamped scalar; x25519-dalek clamps when it multiplies.
        let mut scalar = id.agreement_secret().to_bytes();
        scalar[0] &= 248;
        scalar[31] &= 127;
        scalar[31] |= 64;
        assert_eq!(
            hex::encode(scalar),
            "8052030376d47112be7f73ed7a019293dd12ad910b654455798b4667d73de166"
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
            IdentityKeyPair::from_secret_bytes(&bytes[..32]).err(),
            Some(KeyError::InvalidLength {
                what: "identity secret",
                expected: 33,
                actual: 32
            })
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            IdentityKeyPair::from_secret_bytes(&long),
            Err(KeyError::InvalidLength { .. })
        ));
        let mut v3 = bytes.to_vec();
        v3[0] = 3;
        assert_eq!(
            IdentityKeyPair::from_secret_bytes(&v3).err(),
            Some(KeyError::UnsupportedVersion(3))
        );
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[7u8; 64]);
        assert_eq!(
            IdentityKeyPair::from_secret_bytes(&v1).err(),
            Some(KeyError::RetiredIdentityFormat)
        );
        assert!(matches!(
            IdentityKeyPair::from_secret_bytes(&[]),
            Err(KeyError::InvalidLength { actual: 0, .. })
        ));
    }

    #[test]
    fn malformed_public_identities_are_rejected() {
        let bytes = identity(4).public().to_bytes();
        assert!(matches!(
            PublicIdentity::from_bytes(&bytes[..31]),
            Err(KeyError::InvalidLength { .. })
        ));
        // y = 2 does not decompress to a curve point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        // The identity point (y = 1) has small order: every agreement with it is zero.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        for bad in [not_a_point, identity_point] {
            assert_eq!(
                PublicIdentity::from_bytes(&bad),
                Err(KeyError::InvalidPublicKey("identity key")),
                "{}",
                hex::encode(bad)
            );
        }
    }

    /// `y + p` (p = 2^255 - 19) encodes the same point as `y` for y < 19; only the
    /// canonical form is an identity, so one key has one fingerprint.
    #[test]
    fn non_canonical_encodings_are_rejected() {
        let mut checked = 0;
        for y in 3u8..19 {
            let mut canonical = [0u8; 32];
            canonical[0] = y;
            if PublicIdentity::from_bytes(&canonical).is_err() {
                continue; // not a point, or of small order
            }
            let mut non_canonical = [0xffu8; 32];
            non_canonical[0] = 0xed + y;
            non_canonical[31] = 0x7f;
            assert_eq!(
                PublicIdentity::from_bytes(&non_canonical),
                Err(KeyError::InvalidPublicKey("identity key")),
                "y = {y}"
            );
            checked += 1;
        }
        assert!(checked > 0, "no large-order point with a small y");
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
