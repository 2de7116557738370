//! PQXDH key agreement (docs/PROTOCOL.md, "PQXDH"), after Signal's PQXDH
//! specification with X25519, SHA-256 and ML-KEM-768.

use zeroize::Zeroizing;

use crate::primitives;
use crate::ratchet::RootKey;

/// HKDF info string of the PQXDH KDF.
pub(crate) const PQXDH_INFO: &[u8] = b"Missive_PQXDH_X25519_SHA-256_ML-KEM-768_v1";

/// `SK = HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS, info, 32)`.
pub(crate) fn derive_secret(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    dh3: &[u8; 32],
    dh4: Option<&[u8; 32]>,
    kem_shared_secret: &[u8; 32],
) -> RootKey {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 6));
    ikm.extend_from_slice(&[0xFF; 32]);
    ikm.extend_from_slice(dh1);
    ikm.extend_from_slice(dh2);
    ikm.extend_from_slice(dh3);
    if let Some(dh4) = dh4 {
        ikm.extend_from_slice(dh4);
    }
    ikm.extend_from_slice(kem_shared_secret);
    let mut sk = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit.
    let _ = primitives::hkdf_sha256(&[0u8; 32], &ikm, PQXDH_INFO, &mut sk[..]);
    RootKey::from_array(*sk)
}
