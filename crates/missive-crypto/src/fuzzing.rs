//! Entry points for the fuzz targets in `crates/missive-crypto/fuzz`, also
//! driven by the corpus-replay test. Not a stable API.
//!
//! The oracles here may panic on purpose: a panic is how a fuzzer reports a
//! broken invariant (a failed decryption that changed the session).
#![allow(clippy::panic, clippy::expect_used)]

use std::sync::OnceLock;

use rand_core::{CryptoRng, Error, RngCore};

use crate::{
    Address, IdentityKeyPair, KemPrekeyPair, OneTimePrekeyPair, PrekeyBundle, PrekeyMessage,
    PrekeyOwner, PublicIdentity, Session, SignedPrekeyPair, StorageKey,
};

/// A deterministic generator (SplitMix64) so fuzz runs are reproducible; never use
/// outside tests and fuzzing.
pub struct FuzzRng(u64);

impl FuzzRng {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Deterministic test generator, not a CSPRNG; only the fuzz harness uses it.
impl CryptoRng for FuzzRng {}

/// A fixed pair of parties with an established, conversing session.
pub struct Fixture {
    /// Bob's identity (the responder).
    pub bob: IdentityKeyPair,
    /// Bob's signed prekey.
    pub signed_prekey: SignedPrekeyPair,
    /// Bob's KEM prekey.
    pub kem_prekey: KemPrekeyPair,
    /// Bob's one-time prekey.
    pub one_time_prekey: OneTimePrekeyPair,
    /// Alice's session with Bob after one message each way.
    pub alice: Session,
    /// Bob's session with Alice after one message each way.
    pub bob_session: Session,
}

fn alice_address() -> Address {
    Address::new("alice", 1)
}

fn bob_address() -> Address {
    Address::new("bob", 1)
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = FuzzRng::new(0x4d69_7373_6976_6531);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let bob_account = IdentityKeyPair::generate(&mut rng);
        let owner = PrekeyOwner {
            account: bob_account.public().clone(),
            device_id: 1,
        };
        let signed_prekey = SignedPrekeyPair::generate(&mut rng, 1, &bob, &owner);
        let kem_prekey = KemPrekeyPair::generate(&mut rng, 2, &bob, &owner);
        let one_time_prekey = OneTimePrekeyPair::generate(&mut rng, 3);
        let bundle = PrekeyBundle {
            identity: bob.public().clone(),
            owner,
            signed_prekey: signed_prekey.public(),
            kem_prekey: kem_prekey.public(),
            one_time_prekey: Some(one_time_prekey.public()),
        };
        let mut alice = Session::initiate(&mut rng, &alice_id, &alice_address(), "bob", &bundle)
            .expect("fixture");
        let first = alice.encrypt(&mut rng, b"hello", b"").expect("fixture");
        let message = PrekeyMessage::parse(&first.bytes).expect("fixture");
        let (mut bob_session, _) = Session::accept(
            &bob,
            &bob_address(),
            &alice_address(),
            &signed_prekey,
            &kem_prekey,
            Some(&one_time_prekey),
            &message,
            b"",
        )
        .expect("fixture");
        let reply = bob_session.encrypt(&mut rng, b"hi", b"").expect("fixture");
        alice.decrypt(&reply.bytes, b"").expect("fixture");
        Fixture {
            bob,
            signed_prekey,
            kem_prekey,
            one_time_prekey,
            alice,
            bob_session,
        }
    })
}

/// Parses arbitrary bytes as every input type Missive accepts; must never panic.
pub fn parse_messages(data: &[u8]) {
    let _ = crate::message_kind(data);
    if let Ok(message) = PrekeyMessage::parse(data) {
        let _ = (
            message.sender_identity().fingerprint(),
            message.one_time_prekey_id(),
        );
    }
    let _ = crate::wire::NormalMessage::parse(data);
    let _ = PublicIdentity::from_bytes(data);
    let _ = IdentityKeyPair::from_secret_bytes(data);
    let _ = SignedPrekeyPair::from_secret_bytes(data);
    let _ = KemPrekeyPair::from_secret_bytes(data);
    let _ = OneTimePrekeyPair::from_secret_bytes(data);
    if let Ok(session) = Session::from_bytes(data) {
        let _ = session.to_bytes();
    }
    let key = StorageKey::from_bytes([7u8; 32]);
    let _ = crate::open(&key, data, b"");
    let _ = Session::unseal(&key, data);
}

/// The caller time the decrypt oracle passes to [`Session::decrypt_at`].
const FUZZ_NOW_MS: u64 = 1_700_000_000_000;

/// Feeds arbitrary bytes to the live fixture session (and, as a prekey message, to
/// `accept`). The first byte selects the associated-data length. Returns whether
/// something decrypted. Panics if a failed decryption changed the session.
pub fn decrypt(data: &[u8]) -> bool {
    let fixture = fixture();
    let (ad_len, rest) = match data.split_first() {
        Some((&n, rest)) => (usize::from(n % 33).min(rest.len()), rest),
        None => (0, data),
    };
    let (ad, message) = rest.split_at(ad_len);
    let mut decrypted = false;
    // One session without a clock, one with (the clock only matters for skipped keys).
    for (original, now_ms) in [
        (&fixture.bob_session, None),
        (&fixture.alice, Some(FUZZ_NOW_MS)),
    ] {
        let mut session = original.clone();
        let result = match now_ms {
            None => session.decrypt(message, ad),
            Some(now_ms) => session.decrypt_at(message, ad, now_ms),
        };
        match result {
            Ok(_) => decrypted = true,
            Err(_) => {
                if session.to_bytes() != original.to_bytes() {
                    panic!("a failed decryption changed the session");
                }
            }
        }
    }
    if let Ok(prekey) = PrekeyMessage::parse(message) {
        let otk = prekey
            .one_time_prekey_id()
            .map(|_| &fixture.one_time_prekey);
        decrypted |= Session::accept(
            &fixture.bob,
            &bob_address(),
            &alice_address(),
            &fixture.signed_prekey,
            &fixture.kem_prekey,
            otk,
            &prekey,
            ad,
        )
        .is_ok();
    }
    decrypted
}
