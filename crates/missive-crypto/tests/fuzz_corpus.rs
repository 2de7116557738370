//! Replays the committed fuzz corpora (crates/missive-crypto/fuzz/corpus) as
//! ordinary tests. `MISSIVE_REGENERATE_CORPUS=1` rewrites the seed corpus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use missive_crypto::fuzzing::{self, FuzzRng};
use proptest::prelude::*;

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir(target))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Whom the fixture's prekeys are signed for: device 1 of Bob's account. The
/// fixture keeps no account key, so this replays its generator's draws (Alice's
/// key, Bob's device key, Bob's account key) and checks Bob's key against it.
fn fixture_owner() -> missive_crypto::PrekeyOwner {
    let mut rng = FuzzRng::new(0x4d69_7373_6976_6531);
    let _alice = missive_crypto::IdentityKeyPair::generate(&mut rng);
    let bob = missive_crypto::IdentityKeyPair::generate(&mut rng);
    assert_eq!(
        bob.public(),
        fuzzing::fixture().bob.public(),
        "fixture draws changed"
    );
    let account = missive_crypto::IdentityKeyPair::generate(&mut rng);
    missive_crypto::PrekeyOwner {
        account: account.public().clone(),
        device_id: 1,
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let fixture = fuzzing::fixture();
    let mut rng = FuzzRng::new(99);
    let mut alice = fixture.alice.clone();
    let mut bob = fixture.bob_session.clone();
    let normal = alice.encrypt(&mut rng, b"to bob", b"").unwrap().bytes;
    let reply = bob.encrypt(&mut rng, b"to alice", b"").unwrap().bytes;
    let mut with_ad = vec![4u8];
    with_ad.extend_from_slice(b"adad");
    with_ad.extend_from_slice(&alice.encrypt(&mut rng, b"ad", b"adad").unwrap().bytes);
    let carol = missive_crypto::IdentityKeyPair::generate(&mut rng);
    // A new PQXDH run to Bob from a new device key at the address the oracle
    // accepts prekey messages from ("alice" device 1), with Bob's bundle.
    let mut initiator = missive_crypto::Session::initiate(
        &mut rng,
        &carol,
        &missive_crypto::Address::new("alice", 1),
        "bob",
        &missive_crypto::PrekeyBundle {
            identity: fixture.bob.public().clone(),
            owner: fixture_owner(),
            signed_prekey: fixture.signed_prekey.public(),
            kem_prekey: fixture.kem_prekey.public(),
            one_time_prekey: Some(fixture.one_time_prekey.public()),
        },
    )
    .unwrap();
    let prekey = initiator
        .encrypt(&mut rng, b"new session", b"")
        .unwrap()
        .bytes;
    let with_zero = |m: &[u8]| {
        let mut v = vec![0u8];
        v.extend_from_slice(m);
        v
    };
    vec![
        ("normal", with_zero(&normal)),
        ("reply", with_zero(&reply)),
        ("normal_with_ad", with_ad),
        ("prekey", with_zero(&prekey)),
        ("truncated", with_zero(&normal[..30])),
        ("empty", Vec::new()),
        ("state", bob.to_bytes().to_vec()),
        ("identity", fixture.bob.public().to_bytes()),
    ]
}

#[test]
fn regenerate_seed_corpus() {
    if std::env::var("MISSIVE_REGENERATE_CORPUS").as_deref() != Ok("1") {
        return;
    }
    for target in ["parse_messages", "decrypt"] {
        std::fs::create_dir_all(dir(target)).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir(target).join(format!("seed-{name}")), &bytes).unwrap();
        }
    }
}

#[test]
fn parse_messages_corpus_replays() {
    let files = corpus("parse_messages");
    assert!(files.len() >= 5, "corpus missing");
    for (_, data) in files {
        fuzzing::parse_messages(&data);
    }
}

#[test]
fn decrypt_corpus_replays() {
    let files = corpus("decrypt");
    assert!(files.len() >= 5, "corpus missing");
    let mut decrypted = 0;
    for (name, data) in &files {
        if fuzzing::decrypt(data) {
            decrypted += 1;
        }
        // Every single-byte mutation of a seed is handled without a panic.
        for i in (0..data.len()).step_by(7) {
            let mut mutated = data.clone();
            mutated[i] ^= 0x11;
            let _ = fuzzing::decrypt(&mutated);
        }
        let _ = name;
    }
    // The seeds reach the decryption path, not only the parsers.
    assert!(decrypted >= 4, "only {decrypted} seeds decrypted");
}

proptest! {
    // A few hundred random inputs per run keep the fuzz entry points exercised in
    // ordinary CI without a nightly toolchain.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1500)) {
        fuzzing::parse_messages(&data);
        let _ = fuzzing::decrypt(&data);
    }

    #[test]
    fn mutated_seeds_never_panic(seed in 0usize..8, edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let seeds = seeds();
        let mut data = seeds[seed % seeds.len()].1.clone();
        for (at, byte) in edits {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] = byte;
            }
        }
        fuzzing::parse_messages(&data);
        let _ = fuzzing::decrypt(&data);
    }
}
