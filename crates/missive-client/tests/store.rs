//! The local store: sealing at rest, permissions, migrations, trust and
//! exactly-once bookkeeping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;

use missive_client::ClientError;
use missive_client::store::{IncomingCommit, KeySource, SealedMessage, Store};
use missive_crypto::IdentityKeyPair;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_and_history_are_sealed_and_files_private() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let store = Store::open_with(&home, true, &KeySource::KeyFile).unwrap();
    store.set_secret("token", b"TOKEN-SECRET-1234").unwrap();
    let sealed = SealedMessage {
        text: "the eagle lands at midnight".into(),
        franking_key: String::new(),
        commitment: String::new(),
        tag: String::new(),
        sender_device: 1,
    };
    store
        .add_outgoing("bob", &[7u8; 16], &sealed, 1, 2)
        .unwrap();
    drop(store);

    let db = home.join("missive.db");
    assert!(!file_contains(&db, b"TOKEN-SECRET-1234"));
    assert!(!file_contains(&db, b"eagle lands"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&home.join("storage.key")), 0o600);

    let store = Store::open_with(&home, false, &KeySource::KeyFile).unwrap();
    assert_eq!(
        store.get_secret("token").unwrap().unwrap().as_slice(),
        b"TOKEN-SECRET-1234"
    );
    let h = store.history("bob").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "the eagle lands at midnight");
    assert!(h[0].outgoing);
}

#[test]
fn wrong_key_is_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pass = |p: &str| KeySource::Passphrase(Zeroizing::new(p.to_owned()));
    let store = Store::open_with(&home, true, &pass("correct horse")).unwrap();
    store.set_secret("identity", b"secret").unwrap();
    drop(store);
    assert!(!home.join("storage.key").exists());
    match Store::open_with(&home, false, &pass("wrong")) {
        Err(e @ ClientError::WrongKey(_)) => {
            assert!(e.to_string().contains("MISSIVE_PASSPHRASE"));
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    let store = Store::open_with(&home, false, &pass("correct horse")).unwrap();
    assert_eq!(
        store.get_secret("identity").unwrap().unwrap().as_slice(),
        b"secret"
    );
}

#[test]
fn missing_store_means_not_registered() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_with(&dir.path().join("nobody"), false, &KeySource::KeyFile).unwrap_err();
    assert!(matches!(err, ClientError::NotRegistered(_)));
    assert!(err.to_string().contains("missive register"));
}

#[test]
fn schema_is_versioned_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    drop(Store::open_with(&home, true, &KeySource::KeyFile).unwrap());
    let conn = rusqlite_version(&home.join("missive.db"));
    assert_eq!(conn, 1);
    // A store from a newer missive is refused, not damaged.
    set_version(&home.join("missive.db"), 99);
    let err = Store::open_with(&home, false, &KeySource::KeyFile).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    set_version(&home.join("missive.db"), 1);
    Store::open_with(&home, false, &KeySource::KeyFile).unwrap();
}

fn rusqlite_version(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn set_version(db: &std::path::Path, v: i64) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(&format!("PRAGMA user_version = {v}"))
        .unwrap();
}

#[test]
fn contacts_pin_first_identity_and_record_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_with(&dir.path().join("h"), true, &KeySource::KeyFile).unwrap();
    let first = IdentityKeyPair::generate(&mut OsRng);
    let second = IdentityKeyPair::generate(&mut OsRng);
    store.pin_contact("bob", first.public()).unwrap();
    // Pinning again never overwrites.
    store.pin_contact("bob", second.public()).unwrap();
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, first.public());
    assert!(c.changed_identity.is_none());
    store.set_verified("bob", true).unwrap();

    store.mark_identity_changed("bob", second.public()).unwrap();
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, first.public());
    assert_eq!(c.changed_identity.as_ref(), Some(second.public()));

    store
        .accept_changed_identity("bob", second.public())
        .unwrap();
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, second.public());
    assert!(c.changed_identity.is_none());
    assert!(!c.verified, "a newly accepted identity starts unverified");
}

#[test]
fn processed_ids_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_with(&dir.path().join("h"), true, &KeySource::KeyFile).unwrap();
    let id = [3u8; 16];
    assert!(!store.is_processed("bob", 1, &id).unwrap());
    let commit = IncomingCommit {
        sender: "bob",
        sender_device: 1,
        message_id: &id,
        accepted: None,
    };
    store.commit_incoming(&commit).unwrap();
    store.commit_incoming(&commit).unwrap();
    assert!(store.is_processed("bob", 1, &id).unwrap());
    assert!(!store.is_processed("bob", 2, &id).unwrap());
    assert_eq!(store.count("processed").unwrap(), 1);
    assert_eq!(store.count("messages").unwrap(), 0);
}
