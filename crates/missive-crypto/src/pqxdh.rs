//! PQXDH key agreement (docs/PROTOCOL.md, "PQXDH"), after Signal's PQXDH
//! specification with X25519, SHA-256 and ML-KEM-768.

use zeroize::Zeroizing;

use crate::encoding::put_field;
use crate::primitives;
use crate::ratchet::RootKey;

/// Prefix of the HKDF info of the PQXDH KDF; the transcript hash follows it.
pub(crate) const PQXDH_INFO: &[u8] = b"Missive_PQXDH_X25519_SHA-256_ML-KEM-768_v2";
const TRANSCRIPT_LABEL: &[u8] = b"Missive PQXDH transcript v2";

/// The public values of one PQXDH run, hashed into the KDF's info so the
/// root key commits to every one of them, whatever ML-KEM does or does not
/// hash internally (protocol v2).
pub(crate) struct Transcript<'a> {
    pub(crate) initiator_identity: &'a [u8; 32],
    pub(crate) responder_identity: &'a [u8; 32],
    pub(crate) signed_prekey: &'a [u8; 32],
    pub(crate) kem_prekey: &'a [u8],
    pub(crate) one_time_prekey: Option<&'a [u8; 32]>,
    pub(crate) base_key: &'a [u8; 32],
    pub(crate) kem_ciphertext: &'a [u8],
}

impl Transcript<'_> {
    /// `SHA-256(field(label) || field(IK_A) || field(IK_B) || field(SPK_B)
    /// || field(PQPK_B) || field(OPK_B or empty) || field(EK_A) || field(CT))`.
    pub(crate) fn hash(&self) -> [u8; 32] {
        let mut t = Vec::with_capacity(
            9 * 8
                + TRANSCRIPT_LABEL.len()
                + 5 * 32
                + self.kem_prekey.len()
                + self.kem_ciphertext.len(),
        );
        put_field(&mut t, TRANSCRIPT_LABEL);
        put_field(&mut t, self.initiator_identity);
        put_field(&mut t, self.responder_identity);
        put_field(&mut t, self.signed_prekey);
        put_field(&mut t, self.kem_prekey);
        put_field(&mut t, self.one_time_prekey.map_or(&[][..], |k| &k[..]));
        put_field(&mut t, self.base_key);
        put_field(&mut t, self.kem_ciphertext);
        primitives::sha256(&t)
    }
}

/// `SK = HKDF(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS,
/// info = PQXDH_INFO || transcript hash, 32)`.
pub(crate) fn derive_secret(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    dh3: &[u8; 32],
    dh4: Option<&[u8; 32]>,
    kem_shared_secret: &[u8; 32],
    transcript: &Transcript<'_>,
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
    let mut info = Vec::with_capacity(PQXDH_INFO.len() + 32);
    info.extend_from_slice(PQXDH_INFO);
    info.extend_from_slice(&transcript.hash());
    let _ = primitives::hkdf_sha256(&[0u8; 32], &ikm, &info, &mut sk[..]);
    RootKey::from_array(*sk)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The root key of fixed DH and KEM secrets with the given transcript.
    fn root(transcript: &Transcript<'_>) -> [u8; 32] {
        let sk = derive_secret(
            &[1; 32],
            &[2; 32],
            &[3; 32],
            Some(&[4; 32]),
            &[5; 32],
            transcript,
        );
        *sk.as_bytes()
    }

    #[test]
    fn the_root_commits_to_every_transcript_element() {
        let (ik_a, ik_b, spk, opk, ek) =
            ([10u8; 32], [11u8; 32], [12u8; 32], [13u8; 32], [14u8; 32]);
        let (pqpk, ct) = (vec![15u8; 1184], vec![16u8; 1088]);
        let base = Transcript {
            initiator_identity: &ik_a,
            responder_identity: &ik_b,
            signed_prekey: &spk,
            kem_prekey: &pqpk,
            one_time_prekey: Some(&opk),
            base_key: &ek,
            kem_ciphertext: &ct,
        };
        let reference = root(&base);
        // Deterministic, and none of the secrets alone decides it.
        assert_eq!(root(&base), reference);
        let other = [99u8; 32];
        let (other_pqpk, other_ct) = (vec![98u8; 1184], vec![97u8; 1088]);
        let variants = [
            (
                "IK_A",
                Transcript {
                    initiator_identity: &other,
                    ..base
                },
            ),
            (
                "IK_B",
                Transcript {
                    responder_identity: &other,
                    ..base
                },
            ),
            (
                "SPK_B",
                Transcript {
                    signed_prekey: &other,
                    ..base
                },
            ),
            (
                "PQPK_B",
                Transcript {
                    kem_prekey: &other_pqpk,
                    ..base
                },
            ),
            (
                "OPK_B absent",
                Transcript {
                    one_time_prekey: None,
                    ..base
                },
            ),
            (
                "OPK_B other",
                Transcript {
                    one_time_prekey: Some(&other),
                    ..base
                },
            ),
            (
                "EK_A",
                Transcript {
                    base_key: &other,
                    ..base
                },
            ),
            (
                "CT",
                Transcript {
                    kem_ciphertext: &other_ct,
                    ..base
                },
            ),
        ];
        let mut roots = vec![reference];
        for (name, variant) in &variants {
            let r = root(variant);
            assert!(!roots.contains(&r), "{name} is not bound");
            roots.push(r);
        }
        // Swapping the two identities changes the root (roles are bound).
        let swapped = Transcript {
            initiator_identity: &ik_b,
            responder_identity: &ik_a,
            ..base
        };
        assert_ne!(root(&swapped), reference);
    }

    #[test]
    fn transcript_fields_are_length_prefixed() {
        // A byte moved from the KEM prekey to the ciphertext changes the hash.
        let k = [7u8; 32];
        let (pqpk, ct) = (vec![1u8; 3], vec![2u8; 3]);
        let (pqpk2, ct2) = (vec![1u8; 2], vec![1u8, 2, 2, 2]);
        let t = |kem_prekey: &[u8], kem_ciphertext: &[u8]| {
            Transcript {
                initiator_identity: &k,
                responder_identity: &k,
                signed_prekey: &k,
                kem_prekey,
                one_time_prekey: None,
                base_key: &k,
                kem_ciphertext,
            }
            .hash()
        };
        assert_ne!(t(&pqpk, &ct), t(&pqpk2, &ct2));
        // The layout: SHA-256 over the label and the seven fields.
        let mut expected = Vec::new();
        let fields: [&[u8]; 8] = [
            b"Missive PQXDH transcript v2",
            &k,
            &k,
            &k,
            &pqpk,
            &[],
            &k,
            &ct,
        ];
        for field in fields {
            put_field(&mut expected, field);
        }
        assert_eq!(t(&pqpk, &ct), primitives::sha256(&expected));
    }

    #[test]
    fn info_is_the_label_then_the_transcript_hash() {
        let k = [7u8; 32];
        let t = Transcript {
            initiator_identity: &k,
            responder_identity: &k,
            signed_prekey: &k,
            kem_prekey: &k,
            one_time_prekey: None,
            base_key: &k,
            kem_ciphertext: &k,
        };
        let mut ikm = vec![0xFF; 32];
        for part in [[1u8; 32], [2; 32], [3; 32], [5; 32]] {
            ikm.extend_from_slice(&part);
        }
        let mut info = PQXDH_INFO.to_vec();
        info.extend_from_slice(&t.hash());
        let mut expected = [0u8; 32];
        primitives::hkdf_sha256(&[0u8; 32], &ikm, &info, &mut expected).unwrap();
        let sk = derive_secret(&[1; 32], &[2; 32], &[3; 32], None, &[5; 32], &t);
        assert_eq!(sk.as_bytes(), &expected);
        assert_eq!(PQXDH_INFO, b"Missive_PQXDH_X25519_SHA-256_ML-KEM-768_v2");
    }
}
