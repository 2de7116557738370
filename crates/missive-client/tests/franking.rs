//! The recipient's franking check: a message whose commitment does not match
//! its text is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_client::client::check_content;
use missive_crypto::franking::{self, FrankingKey};
use missive_proto::v1;
use prost::Message as _;
use rand::rngs::OsRng;

fn payload(text: &str, key: &FrankingKey) -> Vec<u8> {
    v1::Content {
        body: Some(v1::content::Body::Text(v1::TextMessage {
            body: text.into(),
            sent_at_ms: 42,
            ..Default::default()
        })),
        attachment: None,
        franking_key: key.as_bytes().to_vec(),
        sender_devices: None,
        sent_to: String::new(),
    }
    .encode_to_vec()
}

#[test]
fn matching_commitment_is_accepted() {
    let key = FrankingKey::generate(&mut OsRng);
    let id = [9u8; 16];
    let c = franking::commit(&key, &id, b"hello");
    let (text, k) = check_content(&payload("hello", &key), &id, &c).unwrap();
    assert_eq!(text.body, "hello");
    assert_eq!(text.sent_at_ms, 42);
    assert_eq!(k.as_bytes(), key.as_bytes());
}

#[test]
fn mismatches_are_dropped() {
    let key = FrankingKey::generate(&mut OsRng);
    let other = FrankingKey::generate(&mut OsRng);
    let id = [9u8; 16];
    let c = franking::commit(&key, &id, b"hello");
    // Other text, other key, other message id, altered commitment.
    assert!(check_content(&payload("hellO", &key), &id, &c).is_err());
    assert!(check_content(&payload("hello", &other), &id, &c).is_err());
    assert!(check_content(&payload("hello", &key), &[8u8; 16], &c).is_err());
    let mut bad = c;
    bad[0] ^= 1;
    let err = check_content(&payload("hello", &key), &id, &bad).unwrap_err();
    assert!(err.contains("franking commitment does not match"), "{err}");
    // No franking key, or not a text.
    let no_key = v1::Content {
        body: Some(v1::content::Body::Text(v1::TextMessage {
            body: "hello".into(),
            sent_at_ms: 1,
            ..Default::default()
        })),
        attachment: None,
        franking_key: vec![],
        sender_devices: None,
        sent_to: String::new(),
    }
    .encode_to_vec();
    assert!(check_content(&no_key, &id, &c).is_err());
    assert!(check_content(&[0xff, 0xff], &id, &c).is_err());
}
