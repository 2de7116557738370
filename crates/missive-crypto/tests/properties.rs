//! Property tests over random delivery and clock schedules, plus forward secrecy
//! and post-compromise security, and the bindings of protocol v2: prekey
//! signatures name their owner (account key, device id), every message's AD
//! names both ends' addresses, the PQXDH root commits to its transcript, v1
//! messages are refused by name and proof-of-possession transcripts name the
//! server. `PROPTEST_CASES=N` runs more cases (default 24).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Party, conversing, rng};
use missive_crypto::consts::{MAX_PREVIOUS_RATCHET_KEYS, MAX_SKIPPED_KEY_AGE_MS};
use missive_crypto::{
    Address, DecodeError, DecryptError, IdentityKeyPair, KemPrekeyPair, KeyError, MessageKind,
    OneTimePrekeyPair, PrekeyMessage, PrekeyOwner, Session, SessionError, SignedPrekeyPair,
    message_kind, transcript,
};
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
        let alice_party = Party::new(&mut r, "alice");
        let bob_party = Party::new(&mut r, "bob");
        let mut alice = alice_party
            .initiate(&mut r, &bob_party, seed.is_multiple_of(2))
            .unwrap();
        let first = alice.encrypt(&mut r, b"hello", b"ad").unwrap().bytes;
        let (bob, _) = bob_party
            .accept(&alice_party.address, &first, b"ad")
            .unwrap();
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

// Protocol v2 bindings.

const BAD_SIGNATURE: Option<SessionError> = Some(SessionError::Key(KeyError::BadSignature));

proptest! {
    #![proptest_config(config())]

    /// A server serving a device's prekeys as another device's (another device
    /// id, or another account) is caught by `initiate`: the signatures name the
    /// owner. So are prekeys the device key signed for another owner, and a
    /// bundle naming the account key as the device key.
    #[test]
    fn prekeys_of_another_owner_fail_initiate(
        seed in any::<u64>(),
        device_id in 1..u32::MAX,
        other_device in 1..u32::MAX,
    ) {
        prop_assume!(device_id != other_device);
        let mut r = rng(seed);
        let alice = Party::new(&mut r, "alice");
        let bob = Party::device(&mut r, "bob", device_id);
        let session = alice.initiate(&mut r, &bob, true).unwrap();
        prop_assert_eq!(session.remote_address(), &bob.address);
        let other_account = IdentityKeyPair::generate(&mut r);
        let other_owners = [
            PrekeyOwner { account: bob.account.public().clone(), device_id: other_device },
            PrekeyOwner { account: other_account.public().clone(), device_id },
        ];
        for other in &other_owners {
            // The bundle names another owner than the signatures do.
            let mut bundle = bob.bundle(true);
            bundle.owner = other.clone();
            prop_assert_eq!(alice.initiate_to(&mut r, "bob", &bundle).err(), BAD_SIGNATURE);
            // The bundle names the real owner, one prekey was signed for another.
            let mut bundle = bob.bundle(true);
            bundle.signed_prekey = SignedPrekeyPair::generate(&mut r, 1, &bob.identity, other).public();
            prop_assert_eq!(alice.initiate_to(&mut r, "bob", &bundle).err(), BAD_SIGNATURE);
            let mut bundle = bob.bundle(true);
            bundle.kem_prekey = KemPrekeyPair::generate(&mut r, 2, &bob.identity, other).public();
            prop_assert_eq!(alice.initiate_to(&mut r, "bob", &bundle).err(), BAD_SIGNATURE);
        }
        // The account key is not the device key that signed the prekeys.
        let mut bundle = bob.bundle(true);
        bundle.identity = bob.account.public().clone();
        prop_assert_eq!(alice.initiate_to(&mut r, "bob", &bundle).err(), BAD_SIGNATURE);
    }

    /// A prekey message accepted, or a normal message decrypted, with a sender
    /// or recipient address that differs from the one the sender used (in the
    /// username or the device id) fails authentication and changes nothing.
    #[test]
    fn a_wrong_address_fails_authentication(
        seed in any::<u64>(),
        wrong in wrong_address(),
    ) {
        let mut r = rng(seed);
        let alice = Party::new(&mut r, "alice");
        let bob = Party::new(&mut r, "bob");
        let (sender, recipient) = wrong.apply(&alice.address, &bob.address);
        prop_assume!((&sender, &recipient) != (&alice.address, &bob.address));

        let mut a = alice.initiate(&mut r, &bob, seed.is_multiple_of(2)).unwrap();
        let first = a.encrypt(&mut r, b"first", b"ad").unwrap().bytes;
        prop_assert_eq!(
            bob.accept_at(&recipient, &sender, &first, b"ad").err(),
            Some(DecryptError::AuthenticationFailed)
        );
        let (mut b, _) = bob.accept(&alice.address, &first, b"ad").unwrap();

        // Alice's next prekey message, then (after Bob's reply) a normal one,
        // each opened by a copy of Bob's session naming the wrong addresses.
        let second = a.encrypt(&mut r, b"second", b"ad").unwrap().bytes;
        let mut b_after = b.clone();
        b_after.decrypt(&second, b"ad").unwrap();
        let reply = b_after.encrypt(&mut r, b"reply", b"").unwrap().bytes;
        let mut a_after = a.clone();
        a_after.decrypt(&reply, b"").unwrap();
        let normal = a_after.encrypt(&mut r, b"normal", b"ad").unwrap().bytes;
        prop_assert_eq!(message_kind(&normal), Ok(MessageKind::Normal));
        for (session, message) in [(&b, &second), (&b_after, &normal)] {
            let mut bad = with_addresses(session, &recipient, &sender);
            prop_assert_eq!(bad.local_address(), &recipient);
            prop_assert_eq!(bad.remote_address(), &sender);
            let before = bad.to_bytes();
            prop_assert_eq!(
                bad.decrypt(message, b"ad").err(),
                Some(DecryptError::AuthenticationFailed)
            );
            prop_assert_eq!(bad.to_bytes(), before);
            // The session with the right addresses opens it.
            prop_assert!(session.clone().decrypt(message, b"ad").is_ok());
        }
        // The same holds for what Bob sends: Alice with wrong addresses fails.
        let from_bob = b.encrypt(&mut r, b"to alice", b"").unwrap().bytes;
        let mut bad = with_addresses(&a, &sender, &recipient);
        let before = bad.to_bytes();
        prop_assert_eq!(
            bad.decrypt(&from_bob, b"").err(),
            Some(DecryptError::AuthenticationFailed)
        );
        prop_assert_eq!(bad.to_bytes(), before);
        prop_assert!(a.decrypt(&from_bob, b"").is_ok());
    }

    /// Messages with a protocol v1 type byte (0x01 normal, 0x02 prekey) are
    /// refused by name, wherever the byte is, and change nothing.
    #[test]
    fn v1_type_bytes_are_refused_by_name(seed in any::<u64>(), v1 in 1u8..=2) {
        let mut r = rng(seed);
        let (mut a, mut b) = common::established(&mut r, true);
        let prekey = a.encrypt(&mut r, b"prekey", b"").unwrap().bytes;
        let mut a2 = a.clone();
        let reply = b.encrypt(&mut r, b"reply", b"").unwrap().bytes;
        a2.decrypt(&reply, b"").unwrap();
        let normal = a2.encrypt(&mut r, b"normal", b"").unwrap().bytes;
        let retired = Some(DecryptError::Decode(DecodeError::RetiredVersion(v1)));
        for (message, at) in [(&prekey, 0), (&prekey, PREKEY_HEADER_LEN), (&normal, 0)] {
            let mut old = message.clone();
            old[at] = v1;
            let before = b.to_bytes();
            prop_assert_eq!(b.decrypt(&old, b"").err(), retired.clone());
            prop_assert_eq!(b.to_bytes(), before);
            prop_assert_eq!(PrekeyMessage::parse(&old).err(), Some(DecodeError::RetiredVersion(v1)));
            if at == 0 {
                prop_assert_eq!(message_kind(&old), Err(DecodeError::RetiredVersion(v1)));
            }
        }
        prop_assert_eq!(&b.decrypt(&normal, b"").unwrap()[..], b"normal");
    }

    /// Proof-of-possession transcripts name the server: the same challenge,
    /// username and ids for two server names give two transcripts, and a
    /// signature over one does not verify the other.
    #[test]
    fn transcripts_for_different_servers_differ(
        server in "[a-z]{1,12}\\.example",
        other in "[a-z]{1,12}\\.example",
        challenge in prop::collection::vec(any::<u8>(), 0..48),
        username in "[a-z]{1,16}",
        device_id in any::<u32>(),
        registration_id in any::<u32>(),
    ) {
        prop_assume!(server != other);
        let key = IdentityKeyPair::generate(&mut rng(u64::from(device_id)));
        let pairs = [
            (
                transcript::registration(&challenge, &server, &username, registration_id),
                transcript::registration(&challenge, &other, &username, registration_id),
            ),
            (
                transcript::login(&challenge, &server, &username, device_id),
                transcript::login(&challenge, &other, &username, device_id),
            ),
            (
                transcript::add_device(&challenge, &server, &username, device_id, registration_id),
                transcript::add_device(&challenge, &other, &username, device_id, registration_id),
            ),
        ];
        for (ours, theirs) in &pairs {
            prop_assert_ne!(ours, theirs);
            let signature = key.sign(ours);
            prop_assert!(key.public().verify(ours, &signature).is_ok());
            prop_assert!(key.public().verify(theirs, &signature).is_err());
        }
    }
}

/// Which address the receiving side gets wrong, and how.
#[derive(Clone, Debug)]
enum WrongAddress {
    SenderUsername(String),
    SenderDevice(u32),
    RecipientUsername(String),
    RecipientDevice(u32),
}

fn wrong_address() -> impl Strategy<Value = WrongAddress> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(WrongAddress::SenderUsername),
        (1..u32::MAX).prop_map(WrongAddress::SenderDevice),
        "[a-z]{1,8}".prop_map(WrongAddress::RecipientUsername),
        (1..u32::MAX).prop_map(WrongAddress::RecipientDevice),
    ]
}

impl WrongAddress {
    /// The (sender, recipient) addresses the receiving side assumes.
    fn apply(&self, sender: &Address, recipient: &Address) -> (Address, Address) {
        let (mut sender, mut recipient) = (sender.clone(), recipient.clone());
        match self {
            WrongAddress::SenderUsername(u) => sender.username.clone_from(u),
            WrongAddress::SenderDevice(d) => sender.device_id = *d,
            WrongAddress::RecipientUsername(u) => recipient.username.clone_from(u),
            WrongAddress::RecipientDevice(d) => recipient.device_id = *d,
        }
        (sender, recipient)
    }
}

/// `session` with other addresses, through its stored form: protobuf merges a
/// repeated embedded message field into the earlier one, so appending fields
/// 15 (local address) and 16 (remote address) replaces a non-empty username
/// and a non-zero device id.
fn with_addresses(session: &Session, local: &Address, remote: &Address) -> Session {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn address_field(out: &mut Vec<u8>, field: u64, address: &Address) {
        assert!(!address.username.is_empty() && address.device_id != 0);
        let mut inner = vec![0x0a];
        varint(&mut inner, address.username.len() as u64);
        inner.extend_from_slice(address.username.as_bytes());
        inner.push(0x10);
        varint(&mut inner, u64::from(address.device_id));
        varint(out, (field << 3) | 2);
        varint(out, inner.len() as u64);
        out.extend_from_slice(&inner);
    }
    let mut bytes = session.to_bytes().to_vec();
    address_field(&mut bytes, 15, local);
    address_field(&mut bytes, 16, remote);
    let edited = Session::from_bytes(&bytes).unwrap();
    assert_eq!(
        (edited.local_address(), edited.remote_address()),
        (local, remote)
    );
    edited
}

/// Two PQXDH runs with the same randomness that differ in one transcript
/// element (the one-time prekey's presence or identity, the KEM prekey, the
/// signed prekey, either identity) give different first messages, and Bob's
/// keys for the other run do not open them.
#[test]
fn each_transcript_element_changes_the_first_message() {
    let mut r = rng(200);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let other_alice = Party::with_account(
        &mut r,
        IdentityKeyPair::generate(&mut rng(201)),
        IdentityKeyPair::from_secret_bytes(&alice.account.to_secret_bytes()).unwrap(),
        "alice",
        1,
    );
    // Bob's device with other prekeys under the same ids, and another device key.
    let owner = bob.owner();
    let other_otk = OneTimePrekeyPair::generate(&mut r, 3);
    let other_kem = KemPrekeyPair::generate(&mut r, 2, &bob.identity, &owner);
    let other_spk = SignedPrekeyPair::generate(&mut r, 1, &bob.identity, &owner);
    let other_bob = Party::with_account(
        &mut r,
        IdentityKeyPair::generate(&mut rng(202)),
        IdentityKeyPair::from_secret_bytes(&bob.account.to_secret_bytes()).unwrap(),
        "bob",
        1,
    );

    let seed = rng(203);
    // The first message of a run from `from` to `bundle`, with the same randomness.
    let run = |from: &Party, bundle: &missive_crypto::PrekeyBundle| {
        let mut r = seed.clone();
        let mut s = from.initiate_to(&mut r, "bob", bundle).unwrap();
        s.encrypt(&mut r, b"same plaintext", b"same ad")
            .unwrap()
            .bytes
    };
    let reference = run(&alice, &bob.bundle(true));
    let body = |m: &[u8]| m[PREKEY_HEADER_LEN + 41..].to_vec();
    assert_eq!(
        run(&alice, &bob.bundle(true)),
        reference,
        "runs are reproducible"
    );

    let with = |change: &dyn Fn(&mut missive_crypto::PrekeyBundle)| {
        let mut bundle = bob.bundle(true);
        change(&mut bundle);
        bundle
    };
    let variants = [
        ("one-time prekey absent", run(&alice, &bob.bundle(false))),
        (
            "another one-time prekey",
            run(
                &alice,
                &with(&|b| b.one_time_prekey = Some(other_otk.public())),
            ),
        ),
        (
            "another KEM prekey",
            run(&alice, &with(&|b| b.kem_prekey = other_kem.public())),
        ),
        (
            "another signed prekey",
            run(&alice, &with(&|b| b.signed_prekey = other_spk.public())),
        ),
        (
            "another responder identity",
            run(&alice, &other_bob.bundle(true)),
        ),
        (
            "another initiator identity",
            run(&other_alice, &bob.bundle(true)),
        ),
    ];
    let mut bodies = vec![body(&reference)];
    for (name, message) in &variants {
        let b = body(message);
        assert!(!bodies.contains(&b), "{name}: same ciphertext");
        bodies.push(b);
    }
    // Bob's genuine keys open the reference run only.
    assert!(bob.accept(&alice.address, &reference, b"same ad").is_ok());
    let (absent, other_one_time) = (&variants[0].1, &variants[1].1);
    assert!(bob.accept(&alice.address, absent, b"same ad").is_ok());
    assert_eq!(
        bob.accept(&alice.address, other_one_time, b"same ad").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    // A message that used no one-time prekey, with the header claiming it did:
    // the header is bound, whatever Bob's one-time key.
    let mut claims_one_time = absent.clone();
    claims_one_time[1 + 32 + 32 + 8] = 1;
    claims_one_time[1 + 32 + 32 + 9..1 + 32 + 32 + 13].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(
        bob.accept(&alice.address, &claims_one_time, b"same ad")
            .err(),
        Some(DecryptError::AuthenticationFailed)
    );
}
