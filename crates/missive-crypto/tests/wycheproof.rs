//! Every Project Wycheproof vector for the primitives Missive uses, run through
//! the wrappers in `missive_crypto::primitives` that the protocol code calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_crypto::primitives as p;
use wycheproof::TestResult;

/// Counts of (passed-as-valid, rejected) so each test can assert it ran vectors.
#[derive(Default, Debug)]
struct Tally {
    accepted: usize,
    rejected: usize,
}

#[test]
fn x25519() {
    use wycheproof::xdh::{TestFlag, TestName, TestSet};
    let set = TestSet::load(TestName::X25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let scalar: [u8; 32] = t.private_key.as_slice().try_into().unwrap();
            let Ok(public) = <[u8; 32]>::try_from(t.public_key.as_slice()) else {
                assert!(t.result.must_fail(), "tc {}", t.tc_id);
                tally.rejected += 1;
                continue;
            };
            let result = p::x25519_raw(&scalar, &public);
            let zero_shared = t.shared_secret.iter().all(|&b| b == 0);
            if zero_shared || t.flags.contains(&TestFlag::ZeroSharedSecret) {
                // Missive must refuse every all-zero result.
                assert_eq!(
                    result.err(),
                    Some(p::PrimitiveError::NonContributory),
                    "tc {}",
                    t.tc_id
                );
                tally.rejected += 1;
                continue;
            }
            match t.result {
                TestResult::Valid | TestResult::Acceptable => {
                    let shared = result.unwrap_or_else(|e| panic!("tc {}: {e}", t.tc_id));
                    assert_eq!(&shared[..], t.shared_secret.as_slice(), "tc {}", t.tc_id);
                    tally.accepted += 1;
                }
                TestResult::Invalid => {
                    assert!(result.is_err(), "tc {}", t.tc_id);
                    tally.rejected += 1;
                }
            }
        }
    }
    // Wycheproof's low-order public keys all give the zero result and are refused.
    assert!(tally.accepted > 400 && tally.rejected > 10, "{tally:?}");
}

#[test]
fn chacha20_poly1305() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::ChaCha20Poly1305).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(key), Ok(nonce)) = (
                <[u8; 32]>::try_from(t.key.as_slice()),
                <[u8; 12]>::try_from(t.nonce.as_slice()),
            ) else {
                // Missive's wrapper only takes 256-bit keys and 96-bit nonces.
                assert!(t.result.must_fail(), "tc {}", t.tc_id);
                tally.rejected += 1;
                continue;
            };
            let mut ct_tag = t.ct.to_vec();
            ct_tag.extend_from_slice(&t.tag);
            let opened = p::aead_open(&key, &nonce, &ct_tag, &t.aad);
            if t.result.must_fail() {
                assert!(opened.is_err(), "tc {}", t.tc_id);
                tally.rejected += 1;
            } else {
                assert_eq!(&opened.unwrap()[..], t.pt.as_slice(), "tc {}", t.tc_id);
                let sealed = p::aead_seal(&key, &nonce, &t.pt, &t.aad).unwrap();
                assert_eq!(sealed, ct_tag, "tc {}", t.tc_id);
                tally.accepted += 1;
            }
        }
    }
    assert!(tally.accepted > 100 && tally.rejected > 50, "{tally:?}");
}

#[test]
fn xchacha20_poly1305_for_storage() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::XChaCha20Poly1305).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let (Ok(key), Ok(nonce)) = (
                <[u8; 32]>::try_from(t.key.as_slice()),
                <[u8; 24]>::try_from(t.nonce.as_slice()),
            ) else {
                assert!(t.result.must_fail(), "tc {}", t.tc_id);
                continue;
            };
            let mut ct_tag = t.ct.to_vec();
            ct_tag.extend_from_slice(&t.tag);
            let opened = p::xaead_open(&key, &nonce, &ct_tag, &t.aad);
            if t.result.must_fail() {
                assert!(opened.is_err(), "tc {}", t.tc_id);
                tally.rejected += 1;
            } else {
                assert_eq!(&opened.unwrap()[..], t.pt.as_slice(), "tc {}", t.tc_id);
                assert_eq!(
                    p::xaead_seal(&key, &nonce, &t.pt, &t.aad).unwrap(),
                    ct_tag,
                    "tc {}",
                    t.tc_id
                );
                tally.accepted += 1;
            }
        }
    }
    assert!(tally.accepted > 100 && tally.rejected > 20, "{tally:?}");
}

#[test]
fn hkdf_sha256() {
    use wycheproof::hkdf::{TestName, TestSet};
    let set = TestSet::load(TestName::HkdfSha256).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let mut okm = vec![0u8; t.size];
            let result = p::hkdf_sha256(&t.salt, &t.ikm, &t.info, &mut okm);
            if t.result.must_fail() {
                assert!(result.is_err(), "tc {}", t.tc_id);
                tally.rejected += 1;
            } else {
                result.unwrap();
                assert_eq!(okm, t.okm.as_slice(), "tc {}", t.tc_id);
                tally.accepted += 1;
            }
        }
    }
    assert!(tally.accepted > 50 && tally.rejected > 0, "{tally:?}");
}

#[test]
fn hmac_sha256() {
    use wycheproof::mac::{TestName, TestSet};
    let set = TestSet::load(TestName::HmacSha256).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let tag_len = group.tag_size / 8;
        for t in &group.tests {
            let full = p::hmac_sha256(&t.key, &[&t.msg]);
            // Missive uses untruncated tags; truncated groups compare the prefix.
            let matches = p::ct_eq(&full[..tag_len], &t.tag);
            if t.result.must_fail() {
                assert!(!matches, "tc {}", t.tc_id);
                tally.rejected += 1;
            } else {
                assert!(matches, "tc {}", t.tc_id);
                tally.accepted += 1;
            }
        }
    }
    assert!(tally.accepted > 50 && tally.rejected > 50, "{tally:?}");
}

#[test]
fn ed25519() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let result = p::ed25519_verify(&group.key.pk, &t.msg, &t.sig);
            if t.result.must_fail() {
                assert!(result.is_err(), "tc {} {}", t.tc_id, t.comment);
                tally.rejected += 1;
            } else {
                result.unwrap_or_else(|e| panic!("tc {} {}: {e}", t.tc_id, t.comment));
                tally.accepted += 1;
            }
        }
    }
    assert!(tally.accepted > 10 && tally.rejected > 50, "{tally:?}");
}

#[test]
fn ml_kem_768_keygen_and_decapsulation() {
    use wycheproof::mlkem::{MlKemParameterSet, TestName, TestSet};
    let mut tally = Tally::default();
    for name in [TestName::MlKem768, TestName::MlKem768KeyGenSeed] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            assert_eq!(group.parameter_set, MlKemParameterSet::MlKem768);
            for t in &group.tests {
                let seed = t.seed.as_ref().unwrap();
                let Ok(seed) = <[u8; 64]>::try_from(seed.as_slice()) else {
                    assert!(t.result.must_fail(), "tc {}", t.tc_id);
                    tally.rejected += 1;
                    continue;
                };
                let (dk, ek) = p::kem_keypair_from_seed(&seed);
                if let Some(expected) = &t.encaps_key {
                    assert_eq!(
                        p::kem_encode_public(&ek),
                        expected.as_slice(),
                        "tc {}",
                        t.tc_id
                    );
                }
                if let Some(expected) = &t.decaps_key {
                    assert_eq!(
                        &p::kem_encode_secret(&dk)[..],
                        expected.as_slice(),
                        "tc {}",
                        t.tc_id
                    );
                }
                let Some(ct) = &t.ct else {
                    tally.accepted += 1;
                    continue;
                };
                let result = p::kem_decapsulate(&dk, ct);
                if t.result.must_fail() {
                    assert!(result.is_err(), "tc {}", t.tc_id);
                    tally.rejected += 1;
                } else {
                    let expected = t.shared_secret.as_ref().unwrap();
                    assert_eq!(&result.unwrap()[..], expected.as_slice(), "tc {}", t.tc_id);
                    tally.accepted += 1;
                }
            }
        }
    }
    assert!(tally.accepted > 100 && tally.rejected > 0, "{tally:?}");
}

#[test]
fn ml_kem_768_encapsulation() {
    use wycheproof::mlkem::{TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768Encaps).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let ek = t.encaps_key.as_ref().unwrap();
            let m: [u8; 32] = t.msg.as_ref().unwrap().as_slice().try_into().unwrap();
            let result = p::kem_encapsulation_key(ek)
                .and_then(|key| p::kem_encapsulate_deterministic(&key, &m));
            if t.result.must_fail() {
                assert!(result.is_err(), "tc {}", t.tc_id);
                tally.rejected += 1;
            } else {
                let (ct, ss) = result.unwrap();
                assert_eq!(ct, t.ct.as_ref().unwrap().as_slice(), "tc {}", t.tc_id);
                assert_eq!(&ss[..], t.shared_secret.as_ref().unwrap().as_slice());
                tally.accepted += 1;
            }
        }
    }
    assert!(tally.accepted > 0 && tally.rejected > 0, "{tally:?}");
}
