//! Property tests over random delivery and clock schedules, plus forward secrecy
//! and post-compromise security. `PROPTEST_CASES=N` runs more cases (default 24).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Party, conversing, rng};
use missive_crypto::consts::{MAX_PREVIOUS_RATCHET_KEYS, MAX_SKIPPED_KEY_AGE_MS};
use missive_crypto::{DecryptError, MessageKind, Session, message_kind};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

/// The clock at the start of each schedule (ms since the Unix epoch).
const T0: u64 = 1_700_000_000_000;
/// Length of a prekey message's PQXDH header, before the embedded normal message.
const PREKEY_HEADER_LEN: usize = 1166;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Alice,
    Bob,
}

#[derive(Clone, Debug)]
enum Event {
    /// `side` encrypts a message; when `drop` is set it is lost in transit.
    Send { side: Side, drop: bool },
    /// Deliver the in-flight message at this index (modulo the queue length).
    Deliver(usize),
    /// Deliver again a message already delivered (modulo).
    Duplicate(usize),
    /// Deliver a copy of an in-flight message with one byte flipped.
    Tamper(usize, usize),
    /// `side` sends a message that arrives at once, and the other side answers
    /// the same way: one DH ratchet step on each side.
    RoundTrip(Side),
    /// The clock moves forward by this many milliseconds.
    Advance(u64),
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Alice => Side::Bob,
            Side::Bob => Side::Alice,
        }
    }
}

fn event() -> impl Strategy<Value = Event> {
    let side = prop_oneof![Just(Side::Alice), Just(Side::Bob)];
    let advance = prop_oneof![
        3 => 0..3_600_000u64,
        1 => Just(MAX_SKIPPED_KEY_AGE_MS / 2),
        1 => Just(MAX_SKIPPED_KEY_AGE_MS + 1),
    ];
    prop_oneof![
        4 => (side.clone(), prop::bool::weighted(0.15)).prop_map(|(side, drop)| Event::Send { side, drop }),
        4 => any::<usize>().prop_map(Event::Deliver),
        1 => any::<usize>().prop_map(Event::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Event::Tamper(i, j)),
        3 => side.prop_map(Event::RoundTrip),
        1 => advance.prop_map(Event::Advance),
    ]
}

struct Flight {
    to: Side,
    /// Position in the order of sending (both senders share one sequence).
    seq: u64,
    bytes: Vec<u8>,
    plaintext: Vec<u8>,
    ad: Vec<u8>,
}

/// What a receiving session must know, modelled from outside: the peer's
/// ratchet keys in the order they became its receiving chain, and when it
/// decrypted which of the peer's messages.
#[derive(Default)]
struct Model {
    chains: Vec<[u8; 32]>,
    received: Vec<(u64, u64)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Plaintext,
    /// The chain's ratchet key was evicted, with its skipped keys: the message
    /// cannot be told from a forgery.
    Forgotten,
    /// Already decrypted, or its skipped key expired.
    Replay,
}

/// The ratchet key in a message's header (a prekey message embeds a normal one).
fn ratchet_key(bytes: &[u8]) -> [u8; 32] {
    let at = match message_kind(bytes).unwrap() {
        MessageKind::Normal => 1,
        MessageKind::Prekey => PREKEY_HEADER_LEN + 1,
    };
    bytes[at..at + 32].try_into().unwrap()
}

impl Model {
    fn forgotten(&self, key: &[u8; 32]) -> bool {
        self.chains
            .iter()
            .position(|k| k == key)
            .is_some_and(|i| self.chains.len() - 1 - i > MAX_PREVIOUS_RATCHET_KEYS)
    }

    /// A message's key is skipped when the first later message of the same
    /// sender arrives (on its chain, or on the next one, whose header counts the
    /// messages of this one); it expires MAX_SKIPPED_KEY_AGE_MS later.
    fn expect(&self, flight: &Flight, now: u64) -> Expect {
        if self.forgotten(&ratchet_key(&flight.bytes)) {
            return Expect::Forgotten;
        }
        let skipped_at = self
            .received
            .iter()
            .filter(|(seq, _)| *seq > flight.seq)
            .map(|(_, at)| *at)
            .min();
        match skipped_at {
            Some(at) if now - at > MAX_SKIPPED_KEY_AGE_MS => Expect::Replay,
            _ => Expect::Plaintext,
        }
    }

    fn delivered(&mut self, flight: &Flight, now: u64) {
        let key = ratchet_key(&flight.bytes);
        if !self.chains.contains(&key) {
            self.chains.push(key);
        }
        self.received.push((flight.seq, now));
    }

    fn duplicate(&self, flight: &Flight) -> Expect {
        if self.forgotten(&ratchet_key(&flight.bytes)) {
            Expect::Forgotten
        } else {
            Expect::Replay
        }
    }
}

fn outcome(result: Result<Zeroizing<Vec<u8>>, DecryptError>, flight: &Flight) -> Expect {
    match result {
        Ok(plaintext) => {
            assert_eq!(&plaintext[..], &flight.plaintext[..]);
            Expect::Plaintext
        }
        Err(DecryptError::Replay) => Expect::Replay,
        Err(DecryptError::AuthenticationFailed) => Expect::Forgotten,
        Err(other) => panic!("unexpected {other:?}"),
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    ProptestConfig::with_cases(cases)
}

/// Both sessions, their models, the clock and the messages on the way.
struct World {
    r: ChaCha20Rng,
    alice: Session,
    bob: Session,
    alice_model: Model,
    bob_model: Model,
    now: u64,
    seq: u64,
    in_flight: Vec<Flight>,
    delivered: Vec<Flight>,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut r = rng(seed);
        // As `common::established`, keeping the first message: Bob accepts it
        // (seq 0) and its chain.
        let alice_party = Party::new(&mut r);
        let bob_party = Party::new(&mut r);
        let bundle = bob_party.bundle(seed.is_multiple_of(2));
        let mut alice = Session::initiate(&mut r, &alice_party.identity, &bundle).unwrap();
        let first = alice.encrypt(&mut r, b"hello", b"ad").unwrap().bytes;
        let (bob, _) = bob_party.accept(&first, b"ad").unwrap();
        World {
            r,
            alice,
            bob,
            alice_model: Model::default(),
            bob_model: Model {
                chains: vec![ratchet_key(&first)],
                received: vec![(0, T0)],
            },
            now: T0,
            seq: 0,
            in_flight: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn receiver(&mut self, to: Side) -> (&mut Session, &mut Model) {
        match to {
            Side::Alice => (&mut self.alice, &mut self.alice_model),
            Side::Bob => (&mut self.bob, &mut self.bob_model),
        }
    }

    fn send(&mut self, side: Side) -> Flight {
        self.seq += 1;
        let plaintext = format!("message {}", self.seq).into_bytes();
        let ad = self.seq.to_be_bytes().to_vec();
        let (session, to) = match side {
            Side::Alice => (&mut self.alice, Side::Bob),
            Side::Bob => (&mut self.bob, Side::Alice),
        };
        let bytes = session.encrypt(&mut self.r, &plaintext, &ad).unwrap().bytes;
        Flight {
            to,
            seq: self.seq,
            bytes,
            plaintext,
            ad,
        }
    }

    /// Delivers a message for the first time and checks the outcome against the
    /// model; a failure must leave the session unchanged.
    fn deliver(&mut self, flight: Flight) -> Result<(), TestCaseError> {
        let now = self.now;
        let (session, model) = self.receiver(flight.to);
        let expected = model.expect(&flight, now);
        let before = session.to_bytes();
        let got = outcome(session.decrypt_at(&flight.bytes, &flight.ad, now), &flight);
        prop_assert_eq!(&got, &expected);
        if got == Expect::Plaintext {
            model.delivered(&flight, now);
            self.delivered.push(flight);
        } else {
            prop_assert_eq!(session.to_bytes(), before);
        }
        Ok(())
    }

    /// Delivers an already delivered message again.
    fn duplicate(&mut self, i: usize) -> Result<(), TestCaseError> {
        let now = self.now;
        let (alice, bob) = (&mut self.alice, &mut self.bob);
        let flight = &self.delivered[i % self.delivered.len()];
        let (session, model) = match flight.to {
            Side::Alice => (alice, &self.alice_model),
            Side::Bob => (bob, &self.bob_model),
        };
        let before = session.to_bytes();
        let got = outcome(session.decrypt_at(&flight.bytes, &flight.ad, now), flight);
        prop_assert_eq!(got, model.duplicate(flight));
        prop_assert_eq!(session.to_bytes(), before);
        Ok(())
    }

    /// Delivers an in-flight message with one byte flipped: an error, no change.
    fn tamper(&mut self, i: usize, j: usize) -> Result<(), TestCaseError> {
        let now = self.now;
        let flight = &self.in_flight[i % self.in_flight.len()];
        let session = match flight.to {
            Side::Alice => &mut self.alice,
            Side::Bob => &mut self.bob,
        };
        let mut bad = flight.bytes.clone();
        let at = j % bad.len();
        bad[at] ^= 0x20;
        let before = session.to_bytes();
        prop_assert!(session.decrypt_at(&bad, &flight.ad, now).is_err());
        prop_assert_eq!(session.to_bytes(), before);
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every message is delivered exactly once (with its plaintext) unless its
    /// skipped key expired (`Replay`) or its chain was evicted (indistinguishable
    /// from a forgery); duplicates are `Replay`; every failure, tampered or not,
    /// leaves the session byte for byte unchanged.
    #[test]
    fn random_schedules_deliver_exactly_once(
        seed in any::<u64>(),
        events in prop::collection::vec(event(), 1..80),
    ) {
        let mut w = World::new(seed);
        for event in events {
            match event {
                Event::Send { side, drop } => {
                    let flight = w.send(side);
                    if !drop {
                        w.in_flight.push(flight);
                    }
                }
                Event::Deliver(i) if !w.in_flight.is_empty() => {
                    let flight = w.in_flight.remove(i % w.in_flight.len());
                    w.deliver(flight)?;
                }
                Event::Duplicate(i) if !w.delivered.is_empty() => w.duplicate(i)?,
                Event::Tamper(i, j) if !w.in_flight.is_empty() => w.tamper(i, j)?,
                Event::RoundTrip(side) => {
                    for side in [side, side.other()] {
                        let flight = w.send(side);
                        w.deliver(flight)?;
                    }
                }
                Event::Advance(ms) => w.now += ms,
                _ => {}
            }
        }
        // Everything still in flight, in any order, as the model says, exactly once.
        let mut rest = std::mem::take(&mut w.in_flight);
        while let Some(flight) = rest.pop() {
            w.deliver(flight)?;
        }
        for i in 0..w.delivered.len() {
            w.duplicate(i)?;
        }
        // And the sessions (restored from bytes) still talk both ways.
        let now = w.now;
        let mut alice = Session::from_bytes(&w.alice.to_bytes()).unwrap();
        let mut bob = Session::from_bytes(&w.bob.to_bytes()).unwrap();
        let m = alice.encrypt(&mut w.r, b"end a", b"").unwrap().bytes;
        prop_assert_eq!(&bob.decrypt_at(&m, b"", now).unwrap()[..], b"end a");
        let m = bob.encrypt(&mut w.r, b"end b", b"").unwrap().bytes;
        prop_assert_eq!(&alice.decrypt_at(&m, b"", now).unwrap()[..], b"end b");
    }
}

#[test]
fn forward_secrecy_decrypted_message_key_is_gone() {
    let mut r = rng(100);
    let (mut alice, mut bob) = conversing(&mut r);
    let m1 = alice.encrypt(&mut r, b"first", b"").unwrap().bytes;
    let m2 = alice.encrypt(&mut r, b"second", b"").unwrap().bytes;
    let before = Session::from_bytes(&bob.to_bytes()).unwrap();
    bob.decrypt(&m1, b"").unwrap();
    // A snapshot taken after decryption cannot decrypt the message again...
    let mut snapshot = Session::from_bytes(&bob.to_bytes()).unwrap();
    assert_eq!(snapshot.decrypt(&m1, b"").err(), Some(DecryptError::Replay));
    // ...while one taken before could (so the check above is meaningful).
    assert_eq!(&before.clone().decrypt(&m1, b"").unwrap()[..], b"first");
    // A skipped key is gone once used as well.
    bob.decrypt(&m2, b"").unwrap();
    let m3 = alice.encrypt(&mut r, b"third", b"").unwrap().bytes;
    let m4 = alice.encrypt(&mut r, b"fourth", b"").unwrap().bytes;
    bob.decrypt(&m4, b"").unwrap();
    bob.decrypt(&m3, b"").unwrap();
    let mut snapshot = Session::from_bytes(&bob.to_bytes()).unwrap();
    assert_eq!(snapshot.decrypt(&m3, b"").err(), Some(DecryptError::Replay));
    // After a DH round trip, old chains are unreachable from later state.
    let reply = bob.encrypt(&mut r, b"r", b"").unwrap().bytes;
    alice.decrypt(&reply, b"").unwrap();
    let m5 = alice.encrypt(&mut r, b"fifth", b"").unwrap().bytes;
    bob.decrypt(&m5, b"").unwrap();
    let mut snapshot = Session::from_bytes(&bob.to_bytes()).unwrap();
    for m in [&m1, &m2, &m3, &m4, &m5] {
        assert!(snapshot.decrypt(m, b"").is_err());
    }
}

#[test]
fn post_compromise_security_after_dh_round_trip() {
    let mut r = rng(101);
    let (mut alice, mut bob) = conversing(&mut r);
    // Eve steals Bob's complete state.
    let stolen = bob.to_bytes();
    // Before any new DH step, the stolen state reads Alice's next message (the
    // compromise is real: this is what healing must undo).
    let early = alice.encrypt(&mut r, b"early", b"").unwrap().bytes;
    assert_eq!(
        &Session::from_bytes(&stolen)
            .unwrap()
            .decrypt(&early, b"")
            .unwrap()[..],
        b"early"
    );
    bob.decrypt(&early, b"").unwrap();
    // A DH round trip with fresh randomness on both sides.
    let to_alice = bob.encrypt(&mut r, b"ping", b"").unwrap().bytes;
    alice.decrypt(&to_alice, b"").unwrap();
    let to_bob = alice.encrypt(&mut r, b"pong", b"").unwrap().bytes;
    bob.decrypt(&to_bob, b"").unwrap();
    let later = alice.encrypt(&mut r, b"later", b"").unwrap().bytes;
    assert_eq!(&bob.decrypt(&later, b"").unwrap()[..], b"later");
    // Eve, even seeing every message in order, cannot read past the round trip.
    let mut eve = Session::from_bytes(&stolen).unwrap();
    eve.decrypt(&early, b"").unwrap();
    assert!(eve.decrypt(&to_alice, b"").is_err());
    assert_eq!(
        eve.decrypt(&to_bob, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    assert!(eve.decrypt(&later, b"").is_err());
    let mut eve = Session::from_bytes(&stolen).unwrap();
    assert!(eve.decrypt(&later, b"").is_err());
}
