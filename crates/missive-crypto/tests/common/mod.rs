//! Shared test fixtures: parties with prekeys, and established sessions.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use missive_crypto::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub struct Party {
    pub identity: IdentityKeyPair,
    pub signed_prekey: SignedPrekeyPair,
    pub kem_prekey: KemPrekeyPair,
    pub one_time_prekey: OneTimePrekeyPair,
}

impl Party {
    pub fn new(rng: &mut ChaCha20Rng) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let signed_prekey = SignedPrekeyPair::generate(rng, 1, &identity);
        let kem_prekey = KemPrekeyPair::generate(rng, 2, &identity);
        let one_time_prekey = OneTimePrekeyPair::generate(rng, 3);
        Self {
            identity,
            signed_prekey,
            kem_prekey,
            one_time_prekey,
        }
    }

    pub fn bundle(&self, with_one_time: bool) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.identity.public().clone(),
            signed_prekey: self.signed_prekey.public(),
            kem_prekey: self.kem_prekey.public(),
            one_time_prekey: with_one_time.then(|| self.one_time_prekey.public()),
        }
    }

    /// Accepts a prekey message with this party's keys.
    pub fn accept(&self, bytes: &[u8], ad: &[u8]) -> Result<(Session, Vec<u8>), DecryptError> {
        let message = PrekeyMessage::parse(bytes)?;
        let otk = message.one_time_prekey_id().map(|_| &self.one_time_prekey);
        let (session, plaintext) = Session::accept(
            &self.identity,
            &self.signed_prekey,
            &self.kem_prekey,
            otk,
            &message,
            ad,
        )?;
        Ok((session, plaintext.to_vec()))
    }
}

/// Alice initiates to Bob, Bob accepts the first message "hello". Returns (alice, bob).
pub fn established(rng: &mut ChaCha20Rng, with_one_time: bool) -> (Session, Session) {
    let alice = Party::new(rng);
    let bob = Party::new(rng);
    let mut a = Session::initiate(rng, &alice.identity, &bob.bundle(with_one_time)).unwrap();
    let first = a.encrypt(rng, b"hello", b"ad").unwrap();
    assert_eq!(first.kind, MessageKind::Prekey);
    let (b, plaintext) = bob.accept(&first.bytes, b"ad").unwrap();
    assert_eq!(plaintext, b"hello");
    (a, b)
}

/// Both directions have exchanged a message: no prekey header any more.
pub fn conversing(rng: &mut ChaCha20Rng) -> (Session, Session) {
    let (mut a, mut b) = established(rng, true);
    let reply = b.encrypt(rng, b"hi", b"").unwrap();
    assert_eq!(reply.kind, MessageKind::Normal);
    assert_eq!(&a.decrypt(&reply.bytes, b"").unwrap()[..], b"hi");
    (a, b)
}
