//! Property tests over random delivery schedules, plus forward secrecy and
//! post-compromise security. `PROPTEST_CASES=N` runs more cases (default 24).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{conversing, established, rng};
use missive_crypto::{DecryptError, Session};
use proptest::prelude::*;

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
}

fn event() -> impl Strategy<Value = Event> {
    let side = prop_oneof![Just(Side::Alice), Just(Side::Bob)];
    prop_oneof![
        4 => (side, prop::bool::weighted(0.15)).prop_map(|(side, drop)| Event::Send { side, drop }),
        4 => any::<usize>().prop_map(Event::Deliver),
        1 => any::<usize>().prop_map(Event::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Event::Tamper(i, j)),
    ]
}

struct Flight {
    to: Side,
    bytes: Vec<u8>,
    plaintext: Vec<u8>,
    ad: Vec<u8>,
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_schedules_deliver_exactly_once(
        seed in any::<u64>(),
        events in prop::collection::vec(event(), 1..60),
    ) {
        let mut r = rng(seed);
        let (mut alice, mut bob) = established(&mut r, seed % 2 == 0);
        let mut in_flight: Vec<Flight> = Vec::new();
        let mut delivered: Vec<Flight> = Vec::new();
        let mut counter = 0u32;
        for event in events {
            match event {
                Event::Send { side, drop } => {
                    counter += 1;
                    let plaintext = format!("message {counter}").into_bytes();
                    let ad = counter.to_be_bytes().to_vec();
                    let (session, to) = match side {
                        Side::Alice => (&mut alice, Side::Bob),
                        Side::Bob => (&mut bob, Side::Alice),
                    };
                    let bytes = session.encrypt(&mut r, &plaintext, &ad).unwrap().bytes;
                    if !drop {
                        in_flight.push(Flight { to, bytes, plaintext, ad });
                    }
                }
                Event::Deliver(i) if !in_flight.is_empty() => {
                    let flight = in_flight.remove(i % in_flight.len());
                    let session = match flight.to {
                        Side::Alice => &mut alice,
                        Side::Bob => &mut bob,
                    };
                    let plaintext = session.decrypt(&flight.bytes, &flight.ad).unwrap();
                    prop_assert_eq!(&plaintext[..], &flight.plaintext[..]);
                    delivered.push(flight);
                }
                Event::Duplicate(i) if !delivered.is_empty() => {
                    let flight = &delivered[i % delivered.len()];
                    let session = match flight.to {
                        Side::Alice => &mut alice,
                        Side::Bob => &mut bob,
                    };
                    let before = session.to_bytes();
                    prop_assert_eq!(
                        session.decrypt(&flight.bytes, &flight.ad).err(),
                        Some(DecryptError::Replay)
                    );
                    prop_assert_eq!(session.to_bytes(), before);
                }
                Event::Tamper(i, j) if !in_flight.is_empty() => {
                    let flight = &in_flight[i % in_flight.len()];
                    let session = match flight.to {
                        Side::Alice => &mut alice,
                        Side::Bob => &mut bob,
                    };
                    let mut bad = flight.bytes.clone();
                    let at = j % bad.len();
                    bad[at] ^= 0x20;
                    let before = session.to_bytes();
                    prop_assert!(session.decrypt(&bad, &flight.ad).is_err());
                    prop_assert_eq!(session.to_bytes(), before);
                }
                _ => {}
            }
        }
        // Everything still in flight decrypts, in any order, exactly once.
        for flight in in_flight.drain(..).rev() {
            let session = match flight.to {
                Side::Alice => &mut alice,
                Side::Bob => &mut bob,
            };
            prop_assert_eq!(&session.decrypt(&flight.bytes, &flight.ad).unwrap()[..], &flight.plaintext[..]);
            prop_assert_eq!(session.decrypt(&flight.bytes, &flight.ad).err(), Some(DecryptError::Replay));
        }
        // And the sessions (restored from bytes) still talk both ways.
        let mut alice = Session::from_bytes(&alice.to_bytes()).unwrap();
        let mut bob = Session::from_bytes(&bob.to_bytes()).unwrap();
        let m = alice.encrypt(&mut r, b"end a", b"").unwrap().bytes;
        prop_assert_eq!(&bob.decrypt(&m, b"").unwrap()[..], b"end a");
        let m = bob.encrypt(&mut r, b"end b", b"").unwrap().bytes;
        prop_assert_eq!(&alice.decrypt(&m, b"").unwrap()[..], b"end b");
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
