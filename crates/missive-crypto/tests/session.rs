//! Session behaviour and every error path of establishment, encryption and decryption.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Party, conversing, established, rng};
use missive_crypto::consts::{
    MAX_MESSAGE_GAP, MAX_PREVIOUS_RATCHET_KEYS, MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS,
};
use missive_crypto::*;

#[test]
fn establishment_with_and_without_one_time_prekey() {
    for with_one_time in [true, false] {
        let mut r = rng(1);
        let (mut a, mut b) = established(&mut r, with_one_time);
        assert_eq!(a.remote_identity(), b.local_identity());
        assert_eq!(b.remote_identity(), a.local_identity());
        // Until Bob replies, Alice keeps sending prekey messages, which Bob's session accepts.
        let second = a.encrypt(&mut r, b"second", b"").unwrap();
        assert_eq!(second.kind, MessageKind::Prekey);
        assert_eq!(&b.decrypt(&second.bytes, b"").unwrap()[..], b"second");
        let reply = b.encrypt(&mut r, b"reply", b"").unwrap();
        assert_eq!(reply.kind, MessageKind::Normal);
        assert_eq!(&a.decrypt(&reply.bytes, b"").unwrap()[..], b"reply");
        let third = a.encrypt(&mut r, b"third", b"").unwrap();
        assert_eq!(third.kind, MessageKind::Normal);
        assert_eq!(&b.decrypt(&third.bytes, b"").unwrap()[..], b"third");
    }
}

#[test]
fn prekey_message_exposes_ids() {
    let mut r = rng(2);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let mut a = alice.initiate(&mut r, &bob, true).unwrap();
    let m = a.encrypt(&mut r, b"x", b"").unwrap();
    assert_eq!(message_kind(&m.bytes), Ok(MessageKind::Prekey));
    let parsed = PrekeyMessage::parse(&m.bytes).unwrap();
    assert_eq!(parsed.sender_identity(), alice.identity.public());
    assert_eq!(parsed.signed_prekey_id(), 1);
    assert_eq!(parsed.kem_prekey_id(), 2);
    assert_eq!(parsed.one_time_prekey_id(), Some(3));
    let mut a2 = alice.initiate(&mut r, &bob, false).unwrap();
    let m2 = a2.encrypt(&mut r, b"x", b"").unwrap();
    assert_eq!(
        PrekeyMessage::parse(&m2.bytes)
            .unwrap()
            .one_time_prekey_id(),
        None
    );
}

#[test]
fn long_conversation_with_ping_pong_and_bursts() {
    let mut r = rng(3);
    let (mut a, mut b) = conversing(&mut r);
    for round in 0..20u32 {
        let burst = 1 + round % 4;
        for i in 0..burst {
            let text = format!("a{round}-{i}");
            let m = a.encrypt(&mut r, text.as_bytes(), b"").unwrap();
            assert_eq!(&b.decrypt(&m.bytes, b"").unwrap()[..], text.as_bytes());
        }
        let text = format!("b{round}");
        let m = b.encrypt(&mut r, text.as_bytes(), b"").unwrap();
        assert_eq!(&a.decrypt(&m.bytes, b"").unwrap()[..], text.as_bytes());
    }
}

#[test]
fn bad_bundle_signatures_are_rejected() {
    let mut r = rng(4);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let mallory = Party::new(&mut r, "mallory");

    let mut bundle = bob.bundle(true);
    bundle.signed_prekey.signature[0] ^= 1;
    assert_eq!(
        alice.initiate_to(&mut r, "bob", &bundle).err(),
        Some(SessionError::Key(KeyError::BadSignature))
    );
    let mut bundle = bob.bundle(true);
    bundle.kem_prekey.signature[5] ^= 1;
    assert_eq!(
        alice.initiate_to(&mut r, "bob", &bundle).err(),
        Some(SessionError::Key(KeyError::BadSignature))
    );
    // Keys signed by another identity.
    let mut bundle = bob.bundle(true);
    bundle.signed_prekey = mallory.signed_prekey.public();
    assert!(alice.initiate_to(&mut r, "bob", &bundle).is_err());
    let mut bundle = bob.bundle(true);
    bundle.kem_prekey = mallory.kem_prekey.public();
    assert!(alice.initiate_to(&mut r, "bob", &bundle).is_err());
    let mut bundle = bob.bundle(true);
    bundle.kem_prekey.public_key.truncate(100);
    assert!(matches!(
        alice.initiate_to(&mut r, "bob", &bundle),
        Err(SessionError::Key(KeyError::InvalidLength { .. }))
    ));
}

#[test]
fn low_order_keys_are_rejected() {
    let mut r = rng(5);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    // A low-order one-time prekey (unsigned, so an attacker can substitute it).
    let mut bundle = bob.bundle(true);
    bundle.one_time_prekey = Some(OneTimePrekeyPublic {
        id: 3,
        public_key: [0u8; 32],
    });
    assert_eq!(
        alice.initiate_to(&mut r, "bob", &bundle).err(),
        Some(SessionError::NonContributory)
    );
    // A prekey message whose base key (and so its first ratchet key) has low order.
    let mut a = alice.initiate(&mut r, &bob, false).unwrap();
    let mut m = a.encrypt(&mut r, b"x", b"").unwrap().bytes;
    m[33..65].copy_from_slice(&[0u8; 32]);
    m[1167..1199].copy_from_slice(&[0u8; 32]);
    assert_eq!(
        bob.accept(&alice.address, &m, b"").err(),
        Some(DecryptError::NonContributory)
    );
    // A normal message whose ratchet key has low order.
    let (mut a, mut b) = conversing(&mut r);
    let mut m = a.encrypt(&mut r, b"x", b"").unwrap().bytes;
    let before = b.to_bytes();
    m[1..33].copy_from_slice(&[0u8; 32]);
    assert_eq!(
        b.decrypt(&m, b"").err(),
        Some(DecryptError::NonContributory)
    );
    assert_eq!(b.to_bytes(), before);
}

#[test]
fn tampering_is_detected_and_leaves_session_unchanged() {
    let mut r = rng(6);
    let (mut a, mut b) = conversing(&mut r);
    let m = a
        .encrypt(&mut r, b"secret text", b"commitment")
        .unwrap()
        .bytes;
    let before = b.to_bytes();
    // Every single-bit flip in the header or ciphertext fails.
    for i in 1..m.len() {
        let mut bad = m.clone();
        bad[i] ^= 0x01;
        assert!(b.decrypt(&bad, b"commitment").is_err(), "byte {i}");
        assert_eq!(b.to_bytes(), before, "byte {i}");
    }
    assert_eq!(
        b.decrypt(&m, b"commitmenT").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    assert_eq!(
        b.decrypt(&m, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    assert_eq!(b.to_bytes(), before);
    // The genuine message still decrypts afterwards.
    assert_eq!(&b.decrypt(&m, b"commitment").unwrap()[..], b"secret text");
}

#[test]
fn tampered_prekey_message_on_existing_session_is_rejected() {
    let mut r = rng(60);
    let (mut a, mut b) = established(&mut r, true);
    let m = a.encrypt(&mut r, b"second", b"ad").unwrap();
    assert_eq!(m.kind, MessageKind::Prekey);
    let before = b.to_bytes();
    for i in 0..m.bytes.len() {
        let mut bad = m.bytes.clone();
        bad[i] ^= 0x04;
        assert!(b.decrypt(&bad, b"ad").is_err(), "byte {i}");
        assert_eq!(b.to_bytes(), before, "byte {i}");
    }
    assert_eq!(&b.decrypt(&m.bytes, b"ad").unwrap()[..], b"second");
}

#[test]
fn truncated_input_is_rejected() {
    let mut r = rng(7);
    let (mut a, b) = established(&mut r, true);
    let prekey = a.encrypt(&mut r, b"x", b"").unwrap().bytes;
    // The PQXDH header is 1166 bytes, the ratchet header 41, the tag 16.
    for len in [0, 1, 33, 100, 200, 1165, 1166, 1200, 1166 + 41 + 15] {
        assert!(b.clone().decrypt(&prekey[..len], b"").is_err(), "len {len}");
        assert!(PrekeyMessage::parse(&prekey[..len]).is_err(), "len {len}");
    }
    // A shortened ciphertext parses but does not authenticate.
    assert_eq!(
        b.clone().decrypt(&prekey[..prekey.len() - 1], b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    let (mut a, mut b) = conversing(&mut r);
    let m = a.encrypt(&mut r, b"x", b"").unwrap().bytes;
    assert_eq!(
        b.decrypt(&[], b"").err(),
        Some(DecryptError::Decode(DecodeError::Empty))
    );
    assert!(matches!(
        b.decrypt(&m[..40], b""),
        Err(DecryptError::Decode(DecodeError::Truncated(_)))
    ));
    assert!(matches!(
        b.decrypt(&m[..41 + 15], b""),
        Err(DecryptError::Decode(DecodeError::Truncated(_)))
    ));
    assert_eq!(
        b.decrypt(&[9, 1, 2], b"").err(),
        Some(DecryptError::Decode(DecodeError::UnknownType(9)))
    );
}

#[test]
fn replay_has_its_own_error() {
    let mut r = rng(8);
    let (mut a, mut b) = conversing(&mut r);
    let m1 = a.encrypt(&mut r, b"one", b"").unwrap().bytes;
    let m2 = a.encrypt(&mut r, b"two", b"").unwrap().bytes;
    assert_eq!(&b.decrypt(&m1, b"").unwrap()[..], b"one");
    assert_eq!(b.decrypt(&m1, b"").err(), Some(DecryptError::Replay));
    // Out of order: m2 first, then m1 from the skipped store, then both replays.
    let m3 = a.encrypt(&mut r, b"three", b"").unwrap().bytes;
    assert_eq!(&b.decrypt(&m3, b"").unwrap()[..], b"three");
    assert_eq!(&b.decrypt(&m2, b"").unwrap()[..], b"two");
    assert_eq!(b.decrypt(&m2, b"").err(), Some(DecryptError::Replay));
    assert_eq!(b.decrypt(&m3, b"").err(), Some(DecryptError::Replay));
    // Replay of a message from an older chain after a DH round trip.
    let reply = b.encrypt(&mut r, b"r", b"").unwrap().bytes;
    a.decrypt(&reply, b"").unwrap();
    let m4 = a.encrypt(&mut r, b"four", b"").unwrap().bytes;
    b.decrypt(&m4, b"").unwrap();
    assert_eq!(b.decrypt(&m1, b"").err(), Some(DecryptError::Replay));
    // A replayed first prekey message on the accepted session.
    let (mut a, mut b) = established(&mut r, true);
    let again = a.encrypt(&mut r, b"again", b"").unwrap().bytes;
    b.decrypt(&again, b"").unwrap();
    assert_eq!(b.decrypt(&again, b"").err(), Some(DecryptError::Replay));
}

#[test]
fn gap_bound_is_enforced() {
    let mut r = rng(9);
    let (mut a, mut b) = conversing(&mut r);
    let mut messages = Vec::new();
    for _ in 0..=MAX_MESSAGE_GAP + 1 {
        messages.push(a.encrypt(&mut r, b"m", b"").unwrap().bytes);
    }
    let before = b.to_bytes();
    let last = messages.last().unwrap();
    assert_eq!(
        b.decrypt(last, b"").err(),
        Some(DecryptError::GapTooLarge {
            gap: u64::from(MAX_MESSAGE_GAP) + 1,
            max: MAX_MESSAGE_GAP
        })
    );
    assert_eq!(b.to_bytes(), before);
    // Exactly at the bound works, and the skipped ones are all still readable.
    let at_bound = &messages[MAX_MESSAGE_GAP as usize];
    b.decrypt(at_bound, b"").unwrap();
    for m in messages[..MAX_MESSAGE_GAP as usize].iter().rev().take(50) {
        b.decrypt(m, b"").unwrap();
    }
    b.decrypt(last, b"").unwrap();
}

#[test]
fn skipped_key_store_evicts_oldest() {
    let mut r = rng(10);
    let (mut a, mut b) = conversing(&mut r);
    // Skip MAX_SKIPPED_KEYS + 10 keys over two chains, then check the oldest are gone.
    let mut first_chain = Vec::new();
    for _ in 0..20 {
        first_chain.push(a.encrypt(&mut r, b"old", b"").unwrap().bytes);
    }
    // Deliver a message later in the chain: 20 keys skipped... then a round trip.
    let trigger = a.encrypt(&mut r, b"t", b"").unwrap().bytes;
    b.decrypt(&trigger, b"").unwrap();
    let reply = b.encrypt(&mut r, b"r", b"").unwrap().bytes;
    a.decrypt(&reply, b"").unwrap();
    let mut second_chain = Vec::new();
    for _ in 0..MAX_SKIPPED_KEYS {
        second_chain.push(a.encrypt(&mut r, b"new", b"").unwrap().bytes);
    }
    let trigger = a.encrypt(&mut r, b"t2", b"").unwrap().bytes;
    b.decrypt(&trigger, b"").unwrap();
    // The 20 keys of the first chain were evicted: reported as replay (key gone).
    assert_eq!(
        b.decrypt(&first_chain[0], b"").err(),
        Some(DecryptError::Replay)
    );
    assert_eq!(
        b.decrypt(&first_chain[19], b"").err(),
        Some(DecryptError::Replay)
    );
    // All keys of the second chain are still there.
    assert_eq!(&b.decrypt(&second_chain[0], b"").unwrap()[..], b"new");
    assert_eq!(
        &b.decrypt(&second_chain[MAX_SKIPPED_KEYS - 1], b"").unwrap()[..],
        b"new"
    );
}

#[test]
fn wrong_recipient_cannot_decrypt() {
    let mut r = rng(11);
    let (mut a, _b) = conversing(&mut r);
    let (_c, mut d) = conversing(&mut r);
    let m = a.encrypt(&mut r, b"for bob", b"").unwrap().bytes;
    let before = d.to_bytes();
    assert!(d.decrypt(&m, b"").is_err());
    assert_eq!(d.to_bytes(), before);
    // A prekey message accepted by the wrong party.
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let carol = Party::new(&mut r, "carol");
    let mut s = alice.initiate(&mut r, &bob, false).unwrap();
    let m = s.encrypt(&mut r, b"x", b"").unwrap().bytes;
    assert_eq!(
        carol.accept(&alice.address, &m, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
}

#[test]
fn accept_checks_prekey_ids() {
    let mut r = rng(12);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let mut s = alice.initiate(&mut r, &bob, true).unwrap();
    let m = PrekeyMessage::parse(&s.encrypt(&mut r, b"x", b"").unwrap().bytes).unwrap();
    let other_spk = SignedPrekeyPair::generate(&mut r, 9, &bob.identity, &bob.owner());
    let other_kem = KemPrekeyPair::generate(&mut r, 9, &bob.identity, &bob.owner());
    let other_otk = OneTimePrekeyPair::generate(&mut r, 9);
    let (id, to, from) = (&bob.identity, &bob.address, &alice.address);
    let (spk, kem, otk) = (&bob.signed_prekey, &bob.kem_prekey, &bob.one_time_prekey);
    let cases = [
        Session::accept(id, to, from, &other_spk, kem, Some(otk), &m, b""),
        Session::accept(id, to, from, spk, &other_kem, Some(otk), &m, b""),
        Session::accept(id, to, from, spk, kem, Some(&other_otk), &m, b""),
        Session::accept(id, to, from, spk, kem, None, &m, b""),
    ];
    for case in cases {
        assert!(matches!(case, Err(DecryptError::PrekeyMismatch(_))));
    }
    let mut s = alice.initiate(&mut r, &bob, false).unwrap();
    let m = PrekeyMessage::parse(&s.encrypt(&mut r, b"x", b"").unwrap().bytes).unwrap();
    assert!(matches!(
        Session::accept(id, to, from, spk, kem, Some(otk), &m, b""),
        Err(DecryptError::PrekeyMismatch(_))
    ));
    // Same ids, different key material (e.g. a rotated signed prekey reusing an id).
    let same_id_spk = SignedPrekeyPair::generate(&mut r, 1, &bob.identity, &bob.owner());
    assert_eq!(
        Session::accept(id, to, from, &same_id_spk, kem, None, &m, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    let same_id_kem = KemPrekeyPair::generate(&mut r, 2, &bob.identity, &bob.owner());
    assert_eq!(
        Session::accept(id, to, from, spk, &same_id_kem, None, &m, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
}

#[test]
fn prekey_message_for_another_session_is_reported() {
    let mut r = rng(13);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let mut s1 = alice.initiate(&mut r, &bob, false).unwrap();
    let m1 = s1.encrypt(&mut r, b"one", b"").unwrap().bytes;
    let (mut b, _) = bob.accept(&alice.address, &m1, b"").unwrap();
    // Alice restarts (e.g. lost her state): a new PQXDH with a new base key.
    let mut s2 = alice.initiate(&mut r, &bob, false).unwrap();
    let m2 = s2.encrypt(&mut r, b"two", b"").unwrap().bytes;
    assert_eq!(
        b.decrypt(&m2, b"").err(),
        Some(DecryptError::SessionMismatch)
    );
    // A prekey message from someone else.
    let carol = Party::new(&mut r, "carol");
    let mut s3 = carol.initiate(&mut r, &bob, false).unwrap();
    let m3 = s3.encrypt(&mut r, b"three", b"").unwrap().bytes;
    assert_eq!(
        b.decrypt(&m3, b"").err(),
        Some(DecryptError::IdentityMismatch)
    );
    // A message reflected back to its sender does not decrypt.
    let mut a = s1.clone();
    assert!(a.decrypt(&m1, b"").is_err());
}

#[test]
fn tampered_sender_identity_in_prekey_message_is_rejected() {
    let mut r = rng(14);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let mut s = alice.initiate(&mut r, &bob, false).unwrap();
    let m = s.encrypt(&mut r, b"x", b"").unwrap().bytes;
    // y = 2 is not a curve point, so not an identity key.
    let mut bad = m.clone();
    bad[1..33].copy_from_slice(&[0u8; 32]);
    bad[1] = 2;
    assert_eq!(
        PrekeyMessage::parse(&bad).err(),
        Some(DecodeError::Key(KeyError::InvalidPublicKey("identity key")))
    );
    // Substituting another valid identity fails authentication.
    let mut bad = m.clone();
    bad[1..33].copy_from_slice(&Party::new(&mut r, "mallory").identity.public().to_bytes());
    assert_eq!(
        bob.accept(&alice.address, &bad, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    // KEM ciphertext tampering fails authentication (implicit rejection).
    let mut bad = m.clone();
    bad[200] ^= 1;
    assert_eq!(
        bob.accept(&alice.address, &bad, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    // Bad one-time flag.
    let mut bad = m.clone();
    bad[1 + 32 + 32 + 8] = 2;
    assert!(matches!(
        PrekeyMessage::parse(&bad),
        Err(DecodeError::Malformed(_))
    ));
    // The first ratchet key must be the base key (docs/PROTOCOL.md, initialisation).
    let mut bad = m.clone();
    let other_key = bob.identity.public().agreement_key();
    bad[1167..1199].copy_from_slice(&other_key);
    assert_eq!(
        PrekeyMessage::parse(&bad).err(),
        Some(DecodeError::Malformed(
            "the first ratchet key of a prekey message must be its base key"
        ))
    );
}

#[test]
fn state_round_trips_and_keeps_working() {
    let mut r = rng(15);
    let (a, mut b) = established(&mut r, true);
    // Initiator state with a pending prekey header.
    let mut a = Session::from_bytes(&a.to_bytes()).unwrap();
    let m = a.encrypt(&mut r, b"after restore", b"").unwrap();
    assert_eq!(m.kind, MessageKind::Prekey);
    assert_eq!(&b.decrypt(&m.bytes, b"").unwrap()[..], b"after restore");
    let skipped = a.encrypt(&mut r, b"skipped", b"").unwrap().bytes;
    let m = a.encrypt(&mut r, b"later", b"").unwrap().bytes;
    b.decrypt(&m, b"").unwrap();
    let mut b = Session::from_bytes(&b.to_bytes()).unwrap();
    assert_eq!(&b.decrypt(&skipped, b"").unwrap()[..], b"skipped");
    let key = StorageKey::generate(&mut r);
    let sealed = b.seal(&mut r, &key);
    let mut b = Session::unseal(&key, &sealed).unwrap();
    let reply = b.encrypt(&mut r, b"reply", b"").unwrap().bytes;
    assert_eq!(&a.decrypt(&reply, b"").unwrap()[..], b"reply");
    assert_eq!(
        b.to_bytes(),
        Session::from_bytes(&b.to_bytes()).unwrap().to_bytes()
    );
    // Sealing errors.
    let other = StorageKey::generate(&mut r);
    assert_eq!(
        Session::unseal(&other, &sealed).err(),
        Some(StateError::AuthenticationFailed)
    );
    let plain_sealed = missive_crypto::seal(&mut r, &key, &b.to_bytes(), b"other ad");
    assert_eq!(
        Session::unseal(&key, &plain_sealed).err(),
        Some(StateError::AuthenticationFailed)
    );
}

#[test]
fn malformed_state_is_rejected() {
    let mut r = rng(16);
    let (a, _) = conversing(&mut r);
    let bytes = a.to_bytes();
    assert!(Session::from_bytes(&[]).is_err());
    assert!(Session::from_bytes(&[0xff, 0xff, 0xff]).is_err());
    for len in 0..bytes.len() {
        // Truncations either fail cleanly or (at a field boundary) fail validation.
        assert!(Session::from_bytes(&bytes[..len]).is_err(), "len {len}");
    }
    // Version 4 is refused with a clear error: field 1 (varint) = 4.
    assert_eq!(&bytes[..2], &[0x08, 0x03]);
    let with_version = |v: u8| {
        let mut edited = vec![0x08, v];
        edited.extend_from_slice(&bytes[2..]);
        edited
    };
    assert_eq!(
        Session::from_bytes(&with_version(4)).err(),
        Some(StateError::UnsupportedVersion(4))
    );
    // Formats 1 and 2 were protocol v1 sessions: refused by name.
    for v in [1, 2] {
        assert_eq!(
            Session::from_bytes(&with_version(v)).err(),
            Some(StateError::RetiredVersion(u32::from(v)))
        );
    }
    // An unknown field added by a later revision is skipped (field 99, varint 1).
    let mut extended = bytes.to_vec();
    extended.extend_from_slice(&[0x98, 0x06, 0x01]);
    let restored = Session::from_bytes(&extended).unwrap();
    assert_eq!(restored.to_bytes(), bytes);
}

#[test]
fn debug_prints_no_key_material() {
    let mut r = rng(17);
    let (a, _) = conversing(&mut r);
    let debug = format!("{a:?}");
    assert!(debug.contains(&a.local_identity().fingerprint().to_string()));
    let state = a.to_bytes();
    // No 4-byte window of the secret state appears in hex or as a byte list.
    let hex_debug = debug.to_lowercase();
    for window in state.windows(8).step_by(8) {
        assert!(!hex_debug.contains(&hex::encode(window)));
    }
    assert!(!debug.contains("root"));
    assert!(!debug.contains("chain_key"));
}

#[test]
fn chain_exhaustion_is_an_error_not_a_panic() {
    // Build a state whose sending counter is at the maximum by editing the
    // serialised form (field 7, varint).
    let mut r = rng(18);
    let (a, _) = conversing(&mut r);
    let bytes = a.to_bytes();
    let mut restored = Session::from_bytes(&bytes).unwrap();
    restored.encrypt(&mut r, b"x", b"").unwrap();
    let _ = restored;
    // Re-encode with u32::MAX as the counter: tag 7 varint = 0x38.
    let mut edited = bytes.to_vec();
    edited.extend_from_slice(&[0x38, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut s = Session::from_bytes(&edited).unwrap();
    let before = s.to_bytes();
    assert_eq!(
        s.encrypt(&mut r, b"x", b"").err(),
        Some(EncryptError::ChainExhausted)
    );
    assert_eq!(s.to_bytes(), before);
}

#[test]
fn gap_bound_applies_to_the_previous_chain_too() {
    let mut r = rng(19);
    let (mut a, mut b) = conversing(&mut r);
    let m0 = a.encrypt(&mut r, b"m0", b"").unwrap().bytes;
    b.decrypt(&m0, b"").unwrap();
    // Alice sends more than the gap on this chain; none arrives.
    for _ in 0..=MAX_MESSAGE_GAP + 1 {
        a.encrypt(&mut r, b"lost", b"").unwrap();
    }
    let reply = b.encrypt(&mut r, b"reply to m0", b"").unwrap().bytes;
    a.decrypt(&reply, b"").unwrap();
    // Alice's next chain announces previous_counter = 2003; Bob would skip 2002.
    let next = a.encrypt(&mut r, b"new chain", b"").unwrap().bytes;
    let before = b.to_bytes();
    assert_eq!(
        b.decrypt(&next, b"").err(),
        Some(DecryptError::GapTooLarge {
            gap: u64::from(MAX_MESSAGE_GAP) + 2,
            max: MAX_MESSAGE_GAP
        })
    );
    assert_eq!(b.to_bytes(), before);
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Session>();
    assert_send_sync::<IdentityKeyPair>();
    assert_send_sync::<SignedPrekeyPair>();
    assert_send_sync::<KemPrekeyPair>();
    assert_send_sync::<OneTimePrekeyPair>();
    assert_send_sync::<PrekeyMessage>();
    assert_send_sync::<StorageKey>();
    assert_send_sync::<franking::FrankingKey>();
}

#[test]
fn session_debug_is_pinned() {
    let mut r = rng(20);
    let (a, b) = conversing(&mut r);
    let expected = format!(
        "Session {{ local: Fingerprint({}), remote: Fingerprint({}), \
         local_address: Address {{ username: \"alice\", device_id: 1 }}, \
         remote_address: Address {{ username: \"bob\", device_id: 1 }}, sending_ready: false, \
         sending_counter: 0, previous_counter: 1, receiving_next: Some(1), skipped_keys: 0, \
         awaiting_reply: false }}",
        a.local_identity().fingerprint(),
        a.remote_identity().fingerprint()
    );
    assert_eq!(format!("{a:?}"), expected);
    assert!(format!("{b:?}").contains("sending_ready: true"));
}

#[test]
fn message_debug_shows_no_ciphertext() {
    let mut r = rng(21);
    let alice = Party::new(&mut r, "alice");
    let bob = Party::new(&mut r, "bob");
    let mut s = alice.initiate(&mut r, &bob, true).unwrap();
    let m = s.encrypt(&mut r, b"x", b"").unwrap();
    let debug = format!("{m:?}");
    assert_eq!(
        debug,
        format!("OutgoingMessage {{ kind: Prekey, len: {} }}", m.bytes.len())
    );
    let parsed = PrekeyMessage::parse(&m.bytes).unwrap();
    let debug = format!("{parsed:?}");
    assert!(debug.contains(&alice.identity.public().fingerprint().to_string()));
    assert!(!debug.contains(&hex::encode(&m.bytes[m.bytes.len() - 16..])));
    assert!(!debug.contains(&format!("{:?}", &m.bytes[1207..1211])));
}

/// A caller time (ms since the Unix epoch) for the clock tests.
const T0: u64 = 1_700_000_000_000;

/// Alice sends `n` messages; Bob receives only the last, at `now`, skipping the others.
fn skip(
    r: &mut rand_chacha::ChaCha20Rng,
    a: &mut Session,
    b: &mut Session,
    n: usize,
    now: u64,
) -> Vec<Vec<u8>> {
    let mut messages: Vec<Vec<u8>> = (0..n)
        .map(|i| a.encrypt(r, format!("m{i}").as_bytes(), b"").unwrap().bytes)
        .collect();
    let last = messages.pop().unwrap();
    b.decrypt_at(&last, b"", now).unwrap();
    messages
}

#[test]
fn evicting_a_ratchet_key_drops_its_skipped_keys() {
    let mut r = rng(22);
    let (mut a, mut b) = conversing(&mut r);
    // Alice's next chain starts here: its first message is skipped.
    let late = skip(&mut r, &mut a, &mut b, 2, T0).remove(0);
    assert_eq!(b.skipped_key_count(), 1);
    // Each DH round trip retires one more of Alice's chains at Bob. Bob's first
    // chain (from `accept`) is the oldest he remembers, so the chain of `late`
    // is evicted in round MAX_PREVIOUS_RATCHET_KEYS.
    let mut just_before = None;
    for round in 0..=MAX_PREVIOUS_RATCHET_KEYS {
        let reply = b.encrypt(&mut r, b"reply", b"").unwrap().bytes;
        a.decrypt_at(&reply, b"", T0).unwrap();
        let next = a.encrypt(&mut r, b"next", b"").unwrap().bytes;
        just_before = Some(b.clone());
        b.decrypt_at(&next, b"", T0).unwrap();
        let expected = usize::from(round < MAX_PREVIOUS_RATCHET_KEYS);
        assert_eq!(b.skipped_key_count(), expected, "round {round}");
    }
    // While the chain was remembered, its skipped key opened the late message...
    let mut before = just_before.unwrap();
    assert_eq!(&before.decrypt_at(&late, b"", T0).unwrap()[..], b"m0");
    // ...now the key went with the chain's ratchet key. Bob no longer knows that
    // chain, so the message cannot be told from a forgery; the state is untouched.
    let state = b.to_bytes();
    assert_eq!(
        b.decrypt_at(&late, b"", T0).err(),
        Some(DecryptError::AuthenticationFailed)
    );
    assert_eq!(
        b.decrypt(&late, b"").err(),
        Some(DecryptError::AuthenticationFailed)
    );
    assert_eq!(b.to_bytes(), state);
    // And it stays gone in the stored state.
    let mut restored = Session::from_bytes(&state).unwrap();
    assert_eq!(restored.skipped_key_count(), 0);
    assert!(restored.decrypt_at(&late, b"", T0).is_err());
}

#[test]
fn skipped_keys_expire_after_the_age_bound() {
    let mut r = rng(23);
    let (mut a, mut b) = conversing(&mut r);
    let old = skip(&mut r, &mut a, &mut b, 4, T0);
    let young = skip(&mut r, &mut a, &mut b, 3, T0 + 1);
    assert_eq!(b.skipped_key_count(), 5);
    let bound = T0 + MAX_SKIPPED_KEY_AGE_MS;
    // At exactly the bound the oldest keys still open their messages.
    assert_eq!(
        &b.clone().decrypt_at(&old[0], b"", bound).unwrap()[..],
        b"m0"
    );
    assert_eq!(&b.decrypt_at(&old[1], b"", bound).unwrap()[..], b"m1");
    assert_eq!(b.skipped_key_count(), 4);
    // One millisecond later they are too old: Replay, and a failure commits
    // nothing, not even the expiry.
    let state = b.to_bytes();
    assert_eq!(
        b.decrypt_at(&old[0], b"", bound + 1).err(),
        Some(DecryptError::Replay)
    );
    assert_eq!(b.to_bytes(), state);
    let mut tampered = young[0].clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(
        b.decrypt_at(&tampered, b"", bound + 1).err(),
        Some(DecryptError::AuthenticationFailed)
    );
    assert_eq!(b.to_bytes(), state);
    // The younger keys (stored 1 ms later) still decrypt at that time, and the
    // successful decryption drops the expired ones.
    assert_eq!(&b.decrypt_at(&young[0], b"", bound + 1).unwrap()[..], b"m0");
    assert_eq!(b.skipped_key_count(), 1);
    assert_eq!(
        b.clone().decrypt_at(&old[2], b"", bound + 1).err(),
        Some(DecryptError::Replay)
    );
    // The next in-order message (the fast path) expires too.
    assert_eq!(b.expire_skipped_keys(bound + 1), 0);
    let next = a.encrypt(&mut r, b"in order", b"").unwrap().bytes;
    b.decrypt_at(&next, b"", bound + 2).unwrap();
    assert_eq!(b.skipped_key_count(), 0);
    assert_eq!(
        b.decrypt_at(&young[1], b"", bound + 2).err(),
        Some(DecryptError::Replay)
    );
}

#[test]
fn expire_skipped_keys_drops_only_the_old_ones() {
    let mut r = rng(24);
    let (mut a, mut b) = conversing(&mut r);
    let old = skip(&mut r, &mut a, &mut b, 3, T0);
    let young = skip(&mut r, &mut a, &mut b, 2, T0 + 60_000);
    assert_eq!(b.expire_skipped_keys(T0 + MAX_SKIPPED_KEY_AGE_MS), 0);
    assert_eq!(b.expire_skipped_keys(T0 + MAX_SKIPPED_KEY_AGE_MS + 1), 2);
    // The pruned state is what gets stored.
    let mut b = Session::from_bytes(&b.to_bytes()).unwrap();
    assert_eq!(b.skipped_key_count(), 1);
    assert_eq!(b.decrypt(&old[0], b"").err(), Some(DecryptError::Replay));
    assert_eq!(&b.decrypt(&young[0], b"").unwrap()[..], b"m0");
}

#[test]
fn keys_stored_without_a_clock_age_from_the_next_time_given() {
    let mut r = rng(25);
    let (mut a, mut b) = conversing(&mut r);
    let m: Vec<_> = (0..3)
        .map(|i| {
            a.encrypt(&mut r, format!("m{i}").as_bytes(), b"")
                .unwrap()
                .bytes
        })
        .collect();
    b.decrypt(&m[2], b"").unwrap();
    // `decrypt` takes no time: nothing it stores can be older than the next time
    // the session is given, however late that is.
    let later = T0 + 10 * MAX_SKIPPED_KEY_AGE_MS;
    assert_eq!(b.expire_skipped_keys(later), 0);
    let mut b = Session::from_bytes(&b.to_bytes()).unwrap();
    assert_eq!(b.expire_skipped_keys(later + MAX_SKIPPED_KEY_AGE_MS), 0);
    assert_eq!(
        &b.clone()
            .decrypt_at(&m[0], b"", later + MAX_SKIPPED_KEY_AGE_MS)
            .unwrap()[..],
        b"m0"
    );
    assert_eq!(b.expire_skipped_keys(later + MAX_SKIPPED_KEY_AGE_MS + 1), 2);
    assert_eq!(b.decrypt(&m[0], b"").err(), Some(DecryptError::Replay));
    // `decrypt` itself never expires a key.
    let m: Vec<_> = (0..2)
        .map(|i| {
            a.encrypt(&mut r, format!("n{i}").as_bytes(), b"")
                .unwrap()
                .bytes
        })
        .collect();
    b.decrypt_at(&m[1], b"", T0).unwrap();
    assert_eq!(&b.decrypt(&m[0], b"").unwrap()[..], b"n0");
}

#[test]
fn a_clock_going_backwards_makes_no_key_older() {
    let mut r = rng(26);
    let (mut a, mut b) = conversing(&mut r);
    let first = skip(&mut r, &mut a, &mut b, 2, T0 + 1_000);
    // The clock goes back by a second: this key is stored at T0 + 1000 too.
    let second = skip(&mut r, &mut a, &mut b, 2, T0);
    let mut b = Session::from_bytes(&b.to_bytes()).unwrap();
    assert_eq!(
        b.expire_skipped_keys(T0 + 1_000 + MAX_SKIPPED_KEY_AGE_MS),
        0
    );
    assert_eq!(&b.clone().decrypt(&second[0], b"").unwrap()[..], b"m0");
    // A time before a key was stored gives it age zero, not an underflow.
    assert_eq!(b.expire_skipped_keys(0), 0);
    assert_eq!(
        b.expire_skipped_keys(T0 + 1_001 + MAX_SKIPPED_KEY_AGE_MS),
        2
    );
    assert_eq!(b.decrypt(&first[0], b"").err(), Some(DecryptError::Replay));
}
