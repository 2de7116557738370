//! Criterion benches for the figures in docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use missive_crypto::{
    Address, IdentityKeyPair, KemPrekeyPair, OneTimePrekeyPair, PrekeyBundle, PrekeyMessage,
    PrekeyOwner, Session, SignedPrekeyPair,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::hint::black_box;

fn alice_address() -> Address {
    Address::new("alice", 1)
}

fn bob_address() -> Address {
    Address::new("bob", 1)
}

/// Device 1 of Bob's account: the device key signs the prekeys for the
/// account key (a different key) and the device id.
struct Responder {
    identity: IdentityKeyPair,
    owner: PrekeyOwner,
    signed_prekey: SignedPrekeyPair,
    kem_prekey: KemPrekeyPair,
    one_time_prekey: OneTimePrekeyPair,
}

impl Responder {
    fn new(rng: &mut ChaCha20Rng) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let owner = PrekeyOwner {
            account: IdentityKeyPair::generate(rng).public().clone(),
            device_id: 1,
        };
        Self {
            signed_prekey: SignedPrekeyPair::generate(rng, 1, &identity, &owner),
            kem_prekey: KemPrekeyPair::generate(rng, 2, &identity, &owner),
            one_time_prekey: OneTimePrekeyPair::generate(rng, 3),
            identity,
            owner,
        }
    }

    fn bundle(&self) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.identity.public().clone(),
            owner: self.owner.clone(),
            signed_prekey: self.signed_prekey.public(),
            kem_prekey: self.kem_prekey.public(),
            one_time_prekey: Some(self.one_time_prekey.public()),
        }
    }

    fn accept(&self, bytes: &[u8]) -> Session {
        let message = PrekeyMessage::parse(bytes).unwrap();
        Session::accept(
            &self.identity,
            &bob_address(),
            &alice_address(),
            &self.signed_prekey,
            &self.kem_prekey,
            Some(&self.one_time_prekey),
            &message,
            b"",
        )
        .unwrap()
        .0
    }
}

/// Alice and Bob after one message each way (no prekey header any more).
fn conversing(rng: &mut ChaCha20Rng) -> (Session, Session) {
    let alice = IdentityKeyPair::generate(rng);
    let bob = Responder::new(rng);
    let mut a = Session::initiate(rng, &alice, &alice_address(), "bob", &bob.bundle()).unwrap();
    let first = a.encrypt(rng, b"hello", b"").unwrap();
    let mut b = bob.accept(&first.bytes);
    let reply = b.encrypt(rng, b"hi", b"").unwrap();
    a.decrypt(&reply.bytes, b"").unwrap();
    (a, b)
}

fn establishment(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = Responder::new(&mut rng);
    let bundle = bob.bundle();
    c.bench_function("pqxdh/initiator (initiate + first encrypt)", |bench| {
        bench.iter(|| {
            let mut a = Session::initiate(
                &mut rng,
                &alice,
                &alice_address(),
                "bob",
                black_box(&bundle),
            )
            .unwrap();
            black_box(a.encrypt(&mut rng, b"hello", b"").unwrap())
        })
    });
    let mut a = Session::initiate(&mut rng, &alice, &alice_address(), "bob", &bundle).unwrap();
    let first = a.encrypt(&mut rng, b"hello", b"").unwrap().bytes;
    c.bench_function("pqxdh/responder (parse + accept + decrypt)", |bench| {
        bench.iter(|| black_box(bob.accept(black_box(&first))))
    });
    c.bench_function("pqxdh/both sides", |bench| {
        bench.iter(|| {
            let mut a = Session::initiate(
                &mut rng,
                &alice,
                &alice_address(),
                "bob",
                black_box(&bundle),
            )
            .unwrap();
            let first = a.encrypt(&mut rng, b"hello", b"").unwrap();
            black_box(bob.accept(&first.bytes))
        })
    });
}

fn symmetric(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (mut a, mut b) = conversing(&mut rng);
    let plaintext = [0x42u8; 100];
    let ad = [7u8; 32];
    let mut group = c.benchmark_group("ratchet");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt+decrypt 100 B, one direction", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&mut rng, black_box(&plaintext), &ad).unwrap();
            black_box(b.decrypt(&m.bytes, &ad).unwrap())
        })
    });
    // A ping-pong round trip is two messages, each with a DH ratchet step.
    group.throughput(Throughput::Elements(2));
    group.bench_function("ping-pong round trip (2 messages), 100 B", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&mut rng, black_box(&plaintext), &ad).unwrap();
            b.decrypt(&m.bytes, &ad).unwrap();
            let m = b.encrypt(&mut rng, black_box(&plaintext), &ad).unwrap();
            black_box(a.decrypt(&m.bytes, &ad).unwrap())
        })
    });
    // The same two paths through `decrypt_at`, which also expires skipped keys.
    let now_ms = 1_700_000_000_000u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt+decrypt_at 100 B, one direction", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&mut rng, black_box(&plaintext), &ad).unwrap();
            black_box(b.decrypt_at(&m.bytes, &ad, now_ms).unwrap())
        })
    });
    group.throughput(Throughput::Elements(2));
    group.bench_function(
        "ping-pong round trip (2 messages), 100 B, decrypt_at",
        |bench| {
            bench.iter(|| {
                let m = a.encrypt(&mut rng, black_box(&plaintext), &ad).unwrap();
                b.decrypt_at(&m.bytes, &ad, now_ms).unwrap();
                let m = b.encrypt(&mut rng, black_box(&plaintext), &ad).unwrap();
                black_box(a.decrypt_at(&m.bytes, &ad, now_ms).unwrap())
            })
        },
    );
    let big = vec![0x42u8; 64 * 1024];
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("encrypt+decrypt 64 KiB, one direction", |bench| {
        bench.iter(|| {
            let m = a.encrypt(&mut rng, black_box(&big), &ad).unwrap();
            black_box(b.decrypt(&m.bytes, &ad).unwrap())
        })
    });
    group.finish();
    let key = missive_crypto::StorageKey::generate(&mut rng);
    c.bench_function("session/seal+unseal state", |bench| {
        bench.iter_batched(
            || a.clone(),
            |s| {
                let sealed = s.seal(&mut rng, &key);
                black_box(Session::unseal(&key, &sealed).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
}

/// The primitives' own cost on this machine: the floor for the figures above.
fn primitives(c: &mut Criterion) {
    use missive_crypto::primitives as p;
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let secret = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
    let peer = p::x25519_public(&x25519_dalek::StaticSecret::random_from_rng(&mut rng));
    c.bench_function("primitive/X25519 agreement", |bench| {
        bench.iter(|| black_box(p::x25519(&secret, black_box(&peer)).unwrap()))
    });
    c.bench_function("primitive/X25519 key generation", |bench| {
        bench.iter(|| {
            let s = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
            black_box(p::x25519_public(&s))
        })
    });
    let id = IdentityKeyPair::generate(&mut rng);
    let sig = id.sign(b"message");
    let public = id.public().signing_key();
    c.bench_function("primitive/Ed25519 verify (strict)", |bench| {
        bench.iter(|| p::ed25519_verify(&public, black_box(b"message"), &sig).unwrap())
    });
    let owner = PrekeyOwner {
        account: IdentityKeyPair::generate(&mut rng).public().clone(),
        device_id: 1,
    };
    let kem = KemPrekeyPair::generate(&mut rng, 1, &id, &owner)
        .public()
        .public_key;
    c.bench_function(
        "primitive/ML-KEM-768 encapsulate (with key check)",
        |bench| {
            bench.iter(|| {
                let ek = p::kem_encapsulation_key(black_box(&kem)).unwrap();
                black_box(p::kem_encapsulate(&ek, &mut rng).unwrap())
            })
        },
    );
    let (dk, dk_ek) = p::kem_keypair_from_seed(&[5u8; 64]);
    let (ct, _) = p::kem_encapsulate(&dk_ek, &mut rng).unwrap();
    c.bench_function("primitive/ML-KEM-768 decapsulate", |bench| {
        bench.iter(|| black_box(p::kem_decapsulate(&dk, black_box(&ct)).unwrap()))
    });
    let key = [1u8; 32];
    let nonce = [2u8; 12];
    let ad = [3u8; 297 + 32];
    c.bench_function(
        "primitive/ChaCha20-Poly1305 seal+open 100 B (329 B AD)",
        |bench| {
            bench.iter(|| {
                let ct = p::aead_seal(&key, &nonce, black_box(&[0x42u8; 100]), &ad).unwrap();
                black_box(p::aead_open(&key, &nonce, &ct, &ad).unwrap())
            })
        },
    );
}

criterion_group!(benches, establishment, symmetric, primitives);
criterion_main!(benches);
