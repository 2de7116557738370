//! The only place Missive touches the primitive crates.
//!
//! Every other module calls these wrappers, and the known-answer tests
//! (Wycheproof, RFC 7748 / 8439 / 5869) run through them too, so what is tested
//! is what is used. Not a stable API.

use chacha20poly1305::aead::{Aead, AeadInPlace, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libcrux_ml_kem::mlkem768::{self, MlKem768Ciphertext, MlKem768PrivateKey, MlKem768PublicKey};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of X25519 keys and shared secrets.
pub const X25519_LEN: usize = 32;
/// ChaCha20-Poly1305 key length.
pub const AEAD_KEY_LEN: usize = 32;
/// ChaCha20-Poly1305 nonce length.
pub const AEAD_NONCE_LEN: usize = 12;
/// Poly1305 tag length.
pub const AEAD_TAG_LEN: usize = 16;
/// ML-KEM-768 encapsulation key length.
pub const KEM_EK_LEN: usize = 1184;
/// ML-KEM-768 ciphertext length.
pub const KEM_CT_LEN: usize = 1088;
/// ML-KEM-768 seed (d || z) length.
pub const KEM_SEED_LEN: usize = 64;

/// ML-KEM-768 expanded decapsulation key length (FIPS 203 `dk`).
pub const KEM_DK_LEN: usize = 2400;

/// ML-KEM-768 decapsulation key: the 2,400-byte expanded FIPS 203 key
/// (`dk_PKE || ek || H(ek) || z`), wiped on drop.
///
/// libcrux (`libcrux-ml-kem`) never zeroizes its keys, so the bytes live in
/// this type, which overwrites them (volatile writes, `zeroize`) when it is
/// dropped; libcrux only ever borrows them (`decapsulate` takes
/// `&MlKem768PrivateKey`). Not `Clone`, and `Debug` prints no bytes.
pub struct KemDecapsulationKey {
    key: MlKem768PrivateKey,
}

impl Zeroize for KemDecapsulationKey {
    fn zeroize(&mut self) {
        self.key[0..].zeroize();
    }
}

impl Drop for KemDecapsulationKey {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for KemDecapsulationKey {}

impl std::fmt::Debug for KemDecapsulationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KemDecapsulationKey(..)")
    }
}

/// ML-KEM-768 encapsulation key, 1184 bytes, that passed the FIPS 203 §7.2
/// modulus check (only [`kem_encapsulation_key`] and [`kem_keypair_from_seed`]
/// make one).
#[derive(Clone)]
pub struct KemEncapsulationKey {
    key: MlKem768PublicKey,
}

impl PartialEq for KemEncapsulationKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.as_slice() == other.key.as_slice()
    }
}

impl Eq for KemEncapsulationKey {}

impl std::fmt::Debug for KemEncapsulationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KemEncapsulationKey(..)")
    }
}

/// A primitive rejected its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PrimitiveError {
    /// X25519 produced the all-zero output: the public key has low order.
    #[error("X25519 result is all zero (low-order public key)")]
    NonContributory,
    /// AEAD authentication failed.
    #[error("AEAD authentication failed")]
    Aead,
    /// An input had an unusable length.
    #[error("invalid input length")]
    Length,
    /// A signature or public key did not verify.
    #[error("signature does not verify")]
    Signature,
    /// An ML-KEM key or ciphertext is malformed.
    #[error("invalid ML-KEM input")]
    Kem,
}

/// X25519 with the secret's clamped scalar; rejects non-contributory results.
pub fn x25519(
    secret: &StaticSecret,
    public: &[u8; X25519_LEN],
) -> Result<Zeroizing<[u8; X25519_LEN]>, PrimitiveError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(PrimitiveError::NonContributory);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// X25519 from raw scalar bytes (RFC 7748 `X25519(k, u)`), rejecting non-contributory results.
pub fn x25519_raw(
    scalar: &[u8; X25519_LEN],
    public: &[u8; X25519_LEN],
) -> Result<Zeroizing<[u8; X25519_LEN]>, PrimitiveError> {
    let secret = StaticSecret::from(*scalar);
    x25519(&secret, public)
}

/// The X25519 public key of a secret.
pub fn x25519_public(secret: &StaticSecret) -> [u8; X25519_LEN] {
    PublicKey::from(secret).to_bytes()
}

/// ChaCha20-Poly1305 (RFC 8439) encryption; returns ciphertext || tag.
pub fn aead_seal(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    plaintext: &[u8],
    associated_data: &[u8],
) -> Result<Vec<u8>, PrimitiveError> {
    let mut out = Vec::with_capacity(plaintext.len() + AEAD_TAG_LEN);
    aead_seal_append(key, nonce, plaintext, associated_data, &mut out)?;
    Ok(out)
}

/// [`aead_seal`] appending `ciphertext || tag` to `out`, so a caller that frames
/// the ciphertext behind a header encrypts in place instead of copying.
pub fn aead_seal_append(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    plaintext: &[u8],
    associated_data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), PrimitiveError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    let start = out.len();
    out.extend_from_slice(plaintext);
    match cipher.encrypt_in_place_detached(nonce.into(), associated_data, &mut out[start..]) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(())
        }
        Err(_) => {
            // Too long for ChaCha20's block counter: leave no plaintext behind.
            out[start..].zeroize();
            out.truncate(start);
            Err(PrimitiveError::Length)
        }
    }
}

/// ChaCha20-Poly1305 (RFC 8439) decryption of ciphertext || tag.
pub fn aead_open(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    ciphertext: &[u8],
    associated_data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PrimitiveError> {
    let cipher = ChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad: associated_data,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| PrimitiveError::Aead)
}

/// XChaCha20-Poly1305 encryption (24-byte nonce), used only for stored state.
pub fn xaead_seal(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; 24],
    plaintext: &[u8],
    associated_data: &[u8],
) -> Result<Vec<u8>, PrimitiveError> {
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    cipher
        .encrypt(
            nonce.into(),
            Payload {
                msg: plaintext,
                aad: associated_data,
            },
        )
        .map_err(|_| PrimitiveError::Length)
}

/// XChaCha20-Poly1305 decryption (24-byte nonce), used only for stored state.
pub fn xaead_open(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; 24],
    ciphertext: &[u8],
    associated_data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PrimitiveError> {
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad: associated_data,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| PrimitiveError::Aead)
}

/// HKDF-SHA256 (RFC 5869) extract-and-expand into `okm`.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), PrimitiveError> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm)
        .map_err(|_| PrimitiveError::Length)
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `[HMAC-SHA256(key, a), HMAC-SHA256(key, b)]`, sharing the key schedule.
pub fn hmac_sha256_two(key: &[u8], a: &[u8], b: &[u8]) -> [[u8; 32]; 2] {
    let keyed = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    let mut first = keyed.clone();
    first.update(a);
    let mut second = keyed;
    second.update(b);
    [
        first.finalize().into_bytes().into(),
        second.finalize().into_bytes().into(),
    ]
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // `new_from_slice` only fails for fixed-size-key MACs; HMAC hashes long keys.
    // Fall back to an empty key rather than panic; never reached.
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

/// Constant-time equality of two byte strings (false when lengths differ).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(data).into()
}

/// Strict Ed25519 verification (RFC 8032, rejecting small-order keys and
/// non-canonical encodings, as `ed25519-dalek`'s `verify_strict`).
pub fn ed25519_verify(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), PrimitiveError> {
    let public_key: [u8; 32] = public_key.try_into().map_err(|_| PrimitiveError::Length)?;
    let signature: [u8; 64] = signature.try_into().map_err(|_| PrimitiveError::Length)?;
    let key = ed25519_public_key(&public_key)?;
    ed25519_verify_with(&key, message, &signature)
}

/// Decodes (decompresses) an Ed25519 public key.
pub fn ed25519_public_key(
    public_key: &[u8; 32],
) -> Result<ed25519_dalek::VerifyingKey, PrimitiveError> {
    ed25519_dalek::VerifyingKey::from_bytes(public_key).map_err(|_| PrimitiveError::Signature)
}

/// The X25519 public key of an Ed25519 public key: the Montgomery u-coordinate
/// of the same point, `u = (1 + y) / (1 - y)` (RFC 7748, section 4.1), as
/// libsodium's `crypto_sign_ed25519_pk_to_curve25519`.
pub fn ed25519_to_x25519_public(key: &ed25519_dalek::VerifyingKey) -> [u8; X25519_LEN] {
    key.to_montgomery().to_bytes()
}

/// The X25519 secret of an Ed25519 signing key: the first half of
/// `SHA-512(seed)`, which X25519 clamps to the same scalar Ed25519 signs with
/// (RFC 8032, section 5.1.5), as libsodium's `crypto_sign_ed25519_sk_to_curve25519`.
pub fn ed25519_to_x25519_secret(key: &ed25519_dalek::SigningKey) -> StaticSecret {
    use sha2::Digest;
    // Hashed here rather than with `SigningKey::to_scalar_bytes`, which leaves the
    // whole digest (its second half is the signing nonce prefix) on the stack.
    let mut digest = Zeroizing::new([0u8; 64]);
    sha2::Sha512::new()
        .chain_update(key.as_bytes())
        .finalize_into(sha2::digest::generic_array::GenericArray::from_mut_slice(
            &mut digest[..],
        ));
    let mut scalar = Zeroizing::new([0u8; X25519_LEN]);
    scalar.copy_from_slice(&digest[..X25519_LEN]);
    StaticSecret::from(*scalar)
}

/// Strict Ed25519 verification with an already decoded key.
pub fn ed25519_verify_with(
    key: &ed25519_dalek::VerifyingKey,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), PrimitiveError> {
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| PrimitiveError::Signature)
}

/// Parses an ML-KEM-768 encapsulation key, with the FIPS 203 §7.2 modulus check.
pub fn kem_encapsulation_key(bytes: &[u8]) -> Result<KemEncapsulationKey, PrimitiveError> {
    let key = MlKem768PublicKey::try_from(bytes).map_err(|_| PrimitiveError::Length)?;
    // libcrux's `encapsulate` does not check the key: `validate_public_key` is
    // the §7.2 check (ByteDecode_12 then ByteEncode_12 must give the input back,
    // i.e. no coefficient >= q).
    if !mlkem768::validate_public_key(&key) {
        return Err(PrimitiveError::Kem);
    }
    Ok(KemEncapsulationKey { key })
}

/// ML-KEM-768 encapsulation with fresh randomness.
///
/// Draws `m` as one 32-byte `fill_bytes`, as RustCrypto `ml-kem` 0.2 did, so
/// seeded generators give the same ciphertexts as before.
pub fn kem_encapsulate<R: CryptoRng + RngCore>(
    key: &KemEncapsulationKey,
    rng: &mut R,
) -> Result<(Vec<u8>, Zeroizing<[u8; 32]>), PrimitiveError> {
    let mut m = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut m[..]);
    kem_encapsulate_deterministic(key, &m)
}

/// ML-KEM-768 encapsulation with explicit randomness `m` (for known-answer tests).
///
/// Infallible since the key was checked when parsed; the `Result` is kept
/// for the callers.
pub fn kem_encapsulate_deterministic(
    key: &KemEncapsulationKey,
    m: &[u8; 32],
) -> Result<(Vec<u8>, Zeroizing<[u8; 32]>), PrimitiveError> {
    // libcrux takes `m` by value: that argument copy is on its stack, not ours.
    let (ct, mut ss) = mlkem768::encapsulate(&key.key, *m);
    let out = Zeroizing::new(ss);
    ss.zeroize();
    Ok((ct.as_slice().to_vec(), out))
}

/// ML-KEM-768 key generation from the 64-byte seed d || z (FIPS 203 `ML-KEM.KeyGen_internal`).
pub fn kem_keypair_from_seed(
    seed: &[u8; KEM_SEED_LEN],
) -> (Box<KemDecapsulationKey>, KemEncapsulationKey) {
    // The zeroizing box first, so the private bytes are copied straight into it.
    let mut dk = Box::new(KemDecapsulationKey {
        key: MlKem768PrivateKey::default(),
    });
    // libcrux takes the seed by value and returns the key pair by value: the
    // seed argument and any stack copy the compiler makes of the moved key
    // pair are out of reach without `unsafe` (docs/THREAT_MODEL.md).
    let (mut sk, pk) = mlkem768::generate_key_pair(*seed).into_parts();
    dk.key[0..].copy_from_slice(sk.as_slice());
    sk[0..].zeroize();
    (dk, KemEncapsulationKey { key: pk })
}

/// The encoded form of an ML-KEM-768 encapsulation key.
pub fn kem_encode_public(key: &KemEncapsulationKey) -> Vec<u8> {
    key.key.as_slice().to_vec()
}

/// The expanded FIPS 203 encoding of a decapsulation key (for known-answer tests).
pub fn kem_encode_secret(key: &KemDecapsulationKey) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(key.key.as_slice().to_vec())
}

/// ML-KEM-768 decapsulation; rejects ciphertexts of the wrong length.
///
/// A wrong ciphertext of the right length gives the implicit-rejection
/// secret (FIPS 203), not an error.
pub fn kem_decapsulate(
    key: &KemDecapsulationKey,
    ciphertext: &[u8],
) -> Result<Zeroizing<[u8; 32]>, PrimitiveError> {
    let ct = MlKem768Ciphertext::try_from(ciphertext).map_err(|_| PrimitiveError::Length)?;
    let mut ss = mlkem768::decapsulate(&key.key, &ct);
    let out = Zeroizing::new(ss);
    ss.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn x25519_rejects_zero_point() {
        let secret = StaticSecret::from([7u8; 32]);
        assert_eq!(
            x25519(&secret, &[0u8; 32]),
            Err(PrimitiveError::NonContributory)
        );
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = [1u8; 32];
        let nonce = [2u8; 12];
        let ct = aead_seal(&key, &nonce, b"hello", b"ad").unwrap();
        assert_eq!(&aead_open(&key, &nonce, &ct, b"ad").unwrap()[..], b"hello");
        assert_eq!(
            aead_open(&key, &nonce, &ct, b"ae"),
            Err(PrimitiveError::Aead)
        );
    }

    #[test]
    fn kem_rejects_bad_lengths() {
        assert!(matches!(
            kem_encapsulation_key(&[0u8; 10]),
            Err(PrimitiveError::Length)
        ));
        let (dk, _) = kem_keypair_from_seed(&[3u8; 64]);
        assert!(matches!(
            kem_decapsulate(&dk, &[0u8; 5]),
            Err(PrimitiveError::Length)
        ));
    }

    #[test]
    fn kem_decapsulation_key_wipes_and_hides() {
        let (mut dk, _) = kem_keypair_from_seed(&[3u8; 64]);
        assert_eq!(kem_encode_secret(&dk).len(), KEM_DK_LEN);
        assert!(kem_encode_secret(&dk).iter().any(|&b| b != 0));
        assert_eq!(format!("{dk:?}"), "KemDecapsulationKey(..)");
        dk.zeroize();
        assert!(kem_encode_secret(&dk).iter().all(|&b| b == 0));
    }

    #[test]
    fn kem_encapsulate_draws_one_32_byte_m() {
        use rand_chacha::ChaCha20Rng;
        use rand_core::SeedableRng;
        let (dk, ek) = kem_keypair_from_seed(&[5u8; 64]);
        let mut rng = ChaCha20Rng::from_seed([9u8; 32]);
        let (ct, ss) = kem_encapsulate(&ek, &mut rng).unwrap();
        let mut replay = ChaCha20Rng::from_seed([9u8; 32]);
        let mut m = [0u8; 32];
        replay.fill_bytes(&mut m);
        let (ct2, ss2) = kem_encapsulate_deterministic(&ek, &m).unwrap();
        assert_eq!((&ct, &ss[..]), (&ct2, &ss2[..]));
        assert_eq!(rng.next_u64(), replay.next_u64());
        assert_eq!(&kem_decapsulate(&dk, &ct2).unwrap()[..], &ss[..]);
    }

    #[test]
    fn kem_modulus_check() {
        let (_, ek) = kem_keypair_from_seed(&[3u8; 64]);
        let mut bytes = kem_encode_public(&ek);
        assert!(kem_encapsulation_key(&bytes).is_ok());
        // First coefficient := 0xfff >= q.
        bytes[0] = 0xff;
        bytes[1] |= 0x0f;
        assert_eq!(
            kem_encapsulation_key(&bytes).err(),
            Some(PrimitiveError::Kem)
        );
    }
}
