//! The local store: sealing at rest (no names, times or lengths in the
//! clear), rows bound to their seals, permissions, migrations, trust,
//! exactly-once bookkeeping and the detection of a restored backup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use missive_client::ClientError;
use missive_client::store::{
    KeySource, NewIncoming, PROCESSED_KEEP_ACKED, SealedMessage, SessionRow, Slot, Store,
};
use missive_crypto::{
    Address, IdentityKeyPair, KemPrekeyPair, PrekeyBundle, PrekeyOwner, Session, SignedPrekeyPair,
};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

fn home_files(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect()
}

fn any_file_contains(home: &Path, needle: &[u8]) -> Option<PathBuf> {
    home_files(home).into_iter().find(|p| {
        let bytes = std::fs::read(p).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

fn text(t: &str) -> SealedMessage {
    let mut m = SealedMessage::default();
    m.text = t.into();
    m
}

/// A session with a fresh peer identity (Alice's side of PQXDH).
fn session() -> (Session, IdentityKeyPair) {
    let me = IdentityKeyPair::generate(&mut OsRng);
    let peer = IdentityKeyPair::generate(&mut OsRng);
    let owner = PrekeyOwner {
        account: IdentityKeyPair::generate(&mut OsRng).public().clone(),
        device_id: 1,
    };
    let bundle = PrekeyBundle {
        identity: peer.public().clone(),
        signed_prekey: SignedPrekeyPair::generate(&mut OsRng, 1, &peer, &owner).public(),
        kem_prekey: KemPrekeyPair::generate(&mut OsRng, 1, &peer, &owner).public(),
        owner,
        one_time_prekey: None,
    };
    let me_at = Address::new("alice", 1);
    (
        Session::initiate(&mut OsRng, &me, &me_at, "bob", &bundle).unwrap(),
        peer,
    )
}

fn row(device_id: u32) -> SessionRow {
    SessionRow {
        device_id,
        registration_id: 7,
        session: session().0,
    }
}

fn keyfile(home: &Path, create: bool) -> Store {
    Store::open_with(home, create, &KeySource::KeyFile).unwrap()
}

fn sql(home: &Path, statement: &str) {
    let c = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    c.execute_batch(statement).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn secrets_and_history_are_sealed_and_files_private() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut store = keyfile(&home, true);
    store
        .write(|db| {
            db.set_meta("token", b"TOKEN-SECRET-1234")?;
            db.add_outgoing("bob", &[7u8; 16], text("the eagle lands at midnight"), 1, 2)
        })
        .unwrap();
    drop(store);

    assert_eq!(any_file_contains(&home, b"TOKEN-SECRET-1234"), None);
    assert_eq!(any_file_contains(&home, b"eagle lands"), None);
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("missive.db")), 0o600);
    assert_eq!(mode(&home.join("storage.key")), 0o600);

    let store = keyfile(&home, false);
    assert_eq!(
        store.get_meta("token").unwrap().unwrap().as_slice(),
        b"TOKEN-SECRET-1234"
    );
    let h = store.history("bob").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "the eagle lands at midnight");
    assert!(h[0].outgoing);
}

/// Item 7 of issue 12: a copy of the home without the key shows no contact
/// name, no message time and no message length.
#[test]
fn a_copy_of_the_home_reveals_no_names_times_or_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut store = keyfile(&home, true);
    let (s, peer) = session();
    let sent_at: u64 = 1_765_432_109_876;
    let server_at: u64 = 1_765_432_112_345;
    store
        .write(|db| {
            db.pin_contact("zebulon-contact", peer.public())?;
            db.put_session(
                "zebulon-contact",
                &SessionRow {
                    device_id: 1,
                    registration_id: 9,
                    session: s,
                },
                Slot::Current,
            )?;
            db.add_outgoing(
                "zebulon-contact",
                &[1u8; 16],
                text("hi"),
                sent_at,
                server_at,
            )?;
            db.add_incoming(NewIncoming {
                sender: "zebulon-contact",
                message_id: &[2u8; 16],
                sealed: text(&"a much longer answer ".repeat(8)),
                sender_clock_ms: sent_at + 1,
                sender_clock_clamped: false,
                server_ts_ms: server_at + 1,
                quarantine_identity: None,
            })?;
            db.mark_processed("zebulon-contact", 1, &[2u8; 16])
        })
        .unwrap();
    drop(store);

    assert_eq!(any_file_contains(&home, b"zebulon"), None);
    for t in [sent_at, server_at, sent_at + 1, server_at + 1] {
        // SQLite stores integers big-endian in 6 or 8 bytes; JSON as text.
        assert_eq!(any_file_contains(&home, &t.to_be_bytes()[2..]), None, "{t}");
        assert_eq!(
            any_file_contains(&home, t.to_string().as_bytes()),
            None,
            "{t}"
        );
    }
    let c = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    let lengths: Vec<i64> = c
        .prepare("SELECT length(sealed) FROM messages ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(lengths.len(), 2);
    assert_eq!(
        lengths[0], lengths[1],
        "a 2-byte and a 168-byte message look alike"
    );
}

#[test]
fn wrong_key_is_a_clear_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pass = |p: &str| KeySource::Passphrase(Zeroizing::new(p.to_owned()));
    let store = Store::open_with(&home, true, &pass("correct horse")).unwrap();
    store.set_meta("identity", b"secret").unwrap();
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
        store.get_meta("identity").unwrap().unwrap().as_slice(),
        b"secret"
    );
}

/// Item 9 of issue 12: at least 64 MiB and three passes, recorded beside the salt.
#[test]
fn passphrase_parameters_are_strong_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let pass = KeySource::Passphrase(Zeroizing::new("correct horse".to_owned()));
    drop(Store::open_with(&home, true, &pass).unwrap());
    let params = std::fs::read_to_string(home.join("passphrase.salt")).unwrap();
    assert!(
        params.starts_with("argon2id m=65536 t=3 p=1 salt="),
        "{params}"
    );
    assert_eq!(mode(&home.join("passphrase.salt")), 0o600);
    let empty = KeySource::Passphrase(Zeroizing::new("  ".to_owned()));
    let err = Store::open_with(&dir.path().join("other"), true, &empty).unwrap_err();
    assert!(matches!(err, ClientError::EmptyPassphrase), "{err}");
    // A passphrase on a key-file account is explained, not "cannot read ...salt".
    let kf = dir.path().join("kf");
    drop(keyfile(&kf, true));
    let err = Store::open_with(&kf, false, &pass).unwrap_err();
    assert!(
        err.to_string().contains("not protected by a passphrase"),
        "{err}"
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
    drop(keyfile(&home, true));
    assert_eq!(user_version(&home), 4);
    // A store from a newer missive is refused, not damaged.
    sql(&home, "PRAGMA user_version = 99");
    let err = Store::open_with(&home, false, &KeySource::KeyFile).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    sql(&home, "PRAGMA user_version = 4");
    keyfile(&home, false);
}

/// Schema 2 (before the conversation features) becomes schema 4 in place:
/// its rows stay as they are and still open.
#[test]
fn schema_2_migrates_to_4_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut store = keyfile(&home, true);
    store
        .write(|db| {
            db.add_incoming(NewIncoming {
                sender: "carol",
                message_id: &[7u8; 16],
                sealed: text("written under schema 2"),
                sender_clock_ms: 1,
                sender_clock_clamped: false,
                server_ts_ms: 2,
                quarantine_identity: None,
            })
        })
        .unwrap();
    drop(store);
    // Take away exactly what schemas 3 and 4 added: this is schema 2's layout.
    sql(
        &home,
        "DROP INDEX messages_expiring; ALTER TABLE messages DROP COLUMN expiring; DROP TABLE conversations; DROP TABLE mls; DROP TABLE groups; PRAGMA user_version = 2;",
    );
    assert_eq!(user_version(&home), 2);
    let store = keyfile(&home, false);
    assert_eq!(user_version(&home), 4);
    let h = store.history("carol").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "written under schema 2");
    drop(store);
    let c = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    let cols: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'expiring'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cols, 1);
    let tables: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'conversations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn schema_3_migrates_to_4_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut store = keyfile(&home, true);
    store
        .write(|db| {
            db.add_incoming(NewIncoming {
                sender: "carol",
                message_id: &[8u8; 16],
                sealed: text("written under schema 3"),
                sender_clock_ms: 1,
                sender_clock_clamped: false,
                server_ts_ms: 2,
                quarantine_identity: None,
            })
        })
        .unwrap();
    drop(store);
    // Take away exactly what schema 4 added (groups).
    sql(
        &home,
        "DROP TABLE mls; DROP TABLE groups; PRAGMA user_version = 3;",
    );
    let store = keyfile(&home, false);
    assert_eq!(user_version(&home), 4);
    assert_eq!(
        store.history("carol").unwrap()[0].text,
        "written under schema 3"
    );
    drop(store);
    let c = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    let tables: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('mls', 'groups')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 2);
}

fn user_version(home: &Path) -> i64 {
    let c = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn contacts_pin_first_identity_and_record_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = keyfile(&dir.path().join("h"), true);
    let first = IdentityKeyPair::generate(&mut OsRng);
    let second = IdentityKeyPair::generate(&mut OsRng);
    let third = IdentityKeyPair::generate(&mut OsRng);
    store
        .write(|db| {
            db.pin_contact("bob", first.public())?;
            // Pinning again never overwrites.
            db.pin_contact("bob", second.public())?;
            db.set_verified("bob", true)
        })
        .unwrap();
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, first.public());
    assert!(c.changed_identity.is_none());

    let news = |store: &mut Store, id: &IdentityKeyPair| {
        store
            .write(|db| db.mark_identity_changed("bob", id.public()))
            .unwrap()
    };
    assert!(news(&mut store, &second));
    assert!(!news(&mut store, &second), "the same change is not news");
    assert!(news(&mut store, &third), "a further change warns again");
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, first.public());
    assert_eq!(c.changed_identity.as_ref(), Some(third.public()));

    store
        .write(|db| db.accept_changed_identity("bob", third.public()))
        .unwrap();
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, third.public());
    assert!(c.changed_identity.is_none());
    assert!(!c.verified, "a newly accepted identity starts unverified");
}

/// Item 6 of issue 12: whoever can write the file cannot move a session to
/// another contact or device, nor edit a contact row (e.g. verified = 1).
#[test]
fn sessions_and_contacts_are_bound_to_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let mut store = keyfile(&home, true);
    let bob = IdentityKeyPair::generate(&mut OsRng);
    let carol = IdentityKeyPair::generate(&mut OsRng);
    store
        .write(|db| {
            db.pin_contact("bob", bob.public())?;
            db.pin_contact("carol", carol.public())?;
            db.save_sessions("bob", &[row(1), row(2)], &[])?;
            db.save_sessions("carol", &[row(1)], &[])
        })
        .unwrap();
    drop(store);

    // Carol's session blob copied over bob's device 1.
    sql(
        &home,
        "UPDATE sessions SET sealed = (SELECT s.sealed FROM sessions s WHERE s.rowid = (SELECT MAX(rowid) FROM sessions)) WHERE rowid = (SELECT MIN(rowid) FROM sessions)",
    );
    let store = keyfile(&home, false);
    let err = store
        .sessions("bob")
        .err()
        .or_else(|| store.sessions("carol").err())
        .expect("a moved session must not open");
    assert!(err.to_string().contains("moved or damaged"), "{err}");
    drop(store);

    // Contact rows swapped: each now claims the other's name.
    sql(
        &home,
        "CREATE TEMP TABLE t AS SELECT tag, sealed FROM contacts; UPDATE contacts SET sealed = (SELECT t.sealed FROM t WHERE t.tag != contacts.tag);",
    );
    let store = keyfile(&home, false);
    assert!(store.contact("bob").is_err());
    assert!(store.contacts().is_err());
}

/// Item 6 of issue 12: a database restored from an older copy is noticed
/// (its generation is behind the file beside it) and its sessions are
/// archived, so nothing is ever encrypted again under a used message key.
#[test]
fn a_restored_database_archives_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let backup = dir.path().join("backup");
    let mut store = keyfile(&home, true);
    store
        .write(|db| db.save_sessions("bob", &[row(1)], &[]))
        .unwrap();
    drop(store);
    std::fs::create_dir(&backup).unwrap();
    for f in ["missive.db", "missive.db-wal", "missive.db-shm"] {
        if home.join(f).exists() {
            std::fs::copy(home.join(f), backup.join(f)).unwrap();
        }
    }
    let mut store = keyfile(&home, false);
    assert!(!store.was_rolled_back());
    store
        .write(|db| db.save_sessions("bob", &[row(1)], &[]))
        .unwrap();
    drop(store);
    for f in ["missive.db", "missive.db-wal", "missive.db-shm"] {
        let _ = std::fs::remove_file(home.join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), home.join(f)).unwrap();
        }
    }
    let store = keyfile(&home, false);
    assert!(store.was_rolled_back());
    assert!(
        store.sessions("bob").unwrap().is_empty(),
        "no session to send on"
    );
    assert_eq!(
        store.db().sessions("bob", Slot::Archived).unwrap().len(),
        1,
        "kept to decrypt late messages"
    );
    drop(store);
    let store = keyfile(&home, false);
    assert!(!store.was_rolled_back(), "said once");
    // Deleting the generation file of a used store also reads as a restore.
    drop(store);
    let mut store = keyfile(&home, false);
    store
        .write(|db| db.save_sessions("bob", &[row(1)], &[]))
        .unwrap();
    drop(store);
    std::fs::remove_file(home.join("missive.generation")).unwrap();
    assert!(keyfile(&home, false).was_rolled_back());
}

#[test]
fn processed_ids_are_remembered_then_pruned_after_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = keyfile(&dir.path().join("h"), true);
    let id = [3u8; 16];
    store
        .write(|db| {
            assert!(!db.is_processed("bob", 1, &id)?);
            db.mark_processed("bob", 1, &id)?;
            db.mark_processed("bob", 1, &id)?;
            assert!(db.is_processed("bob", 1, &id)?);
            assert!(!db.is_processed("bob", 2, &id)?);
            Ok(())
        })
        .unwrap();
    assert_eq!(store.count("processed").unwrap(), 1);

    let total = PROCESSED_KEEP_ACKED as usize + 40;
    let ids: Vec<(String, u32, Vec<u8>)> = (0..total)
        .map(|i| ("carol".to_owned(), 1, (i as u64).to_be_bytes().to_vec()))
        .collect();
    store
        .write(|db| {
            for (s, d, m) in &ids {
                db.mark_processed(s, *d, m)?;
            }
            // Not yet acknowledged: nothing may go.
            db.mark_acked(&[])
        })
        .unwrap();
    assert_eq!(store.count("processed").unwrap(), total as u64 + 1);
    store.write(|db| db.mark_acked(&ids)).unwrap();
    assert_eq!(
        store.count("processed").unwrap(),
        PROCESSED_KEEP_ACKED as u64 + 1,
        "the unacknowledged entry stays, the oldest acknowledged go"
    );
    store
        .write(|db| {
            assert!(db.is_processed("bob", 1, &id)?);
            assert!(db.is_processed("carol", 1, &ids[total - 1].2)?);
            assert!(!db.is_processed("carol", 1, &ids[0].2)?);
            Ok(())
        })
        .unwrap();
}

/// Two handles on one home: a write transaction is exclusive, so a
/// read-modify-write of a session can never interleave with another's.
#[test]
fn write_transactions_of_two_handles_serialise() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    drop(keyfile(&home, true));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let home = home.clone();
            std::thread::spawn(move || {
                let mut store = keyfile(&home, false);
                for _ in 0..100 {
                    store
                        .write(|db| {
                            let n = db.get_meta_u64("counter")?.unwrap_or(0);
                            std::thread::yield_now();
                            db.set_meta_u64("counter", n + 1)
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        keyfile(&home, false).get_meta_u64("counter").unwrap(),
        Some(200)
    );
}

// ---- migration from schema 1 --------------------------------------------

/// The schema-1 layout exactly as missive wrote it before schema 2
/// (crates/missive-client/src/store.rs at eaf2503).
const SCHEMA_V1: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE prekeys (kind INTEGER NOT NULL, id INTEGER NOT NULL, secret BLOB NOT NULL, created_at_ms INTEGER NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE sessions (username TEXT NOT NULL, device_id INTEGER NOT NULL, registration_id INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (username, device_id));
CREATE TABLE contacts (username TEXT PRIMARY KEY, identity BLOB NOT NULL, verified INTEGER NOT NULL DEFAULT 0, changed_identity BLOB, added_at_ms INTEGER NOT NULL);
CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id BLOB NOT NULL, contact TEXT NOT NULL, outgoing INTEGER NOT NULL, sealed BLOB NOT NULL, sent_at_ms INTEGER NOT NULL, server_ts_ms INTEGER NOT NULL, shown INTEGER NOT NULL DEFAULT 0);
CREATE INDEX messages_by_contact ON messages (contact, seq);
CREATE INDEX messages_by_id ON messages (message_id);
CREATE TABLE processed (sender TEXT NOT NULL, sender_device INTEGER NOT NULL, message_id BLOB NOT NULL, processed_at_ms INTEGER NOT NULL, PRIMARY KEY (sender, sender_device, message_id));
PRAGMA user_version = 1;
"#;

fn write_v1_store(
    home: &Path,
    key: &missive_crypto::StorageKey,
    peer: &IdentityKeyPair,
) -> Session {
    std::fs::create_dir_all(home).unwrap();
    let c = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    c.execute_batch(SCHEMA_V1).unwrap();
    let seal = |pt: &[u8], ad: &[u8]| missive_crypto::seal(&mut OsRng, key, pt, ad);
    let check = b"missive storage key check v1";
    c.execute(
        "INSERT INTO meta VALUES ('key_check', ?1), ('identity', ?2), ('username', ?3), ('device_id', ?4)",
        rusqlite::params![
            seal(check, check),
            seal(b"IDENTITY-SECRET", b"identity"),
            b"alice".to_vec(),
            b"1".to_vec()
        ],
    )
    .unwrap();
    c.execute(
        "INSERT INTO prekeys VALUES (1, 5, ?1, 1700000000000)",
        [seal(b"PREKEY-SECRET", b"prekey/1/5")],
    )
    .unwrap();
    c.execute(
        "INSERT INTO contacts VALUES ('bob', ?1, 1, NULL, 1700000000000)",
        [peer.public().to_bytes()],
    )
    .unwrap();
    let (s, _) = session();
    c.execute(
        "INSERT INTO sessions VALUES ('bob', 1, 42, ?1)",
        [s.seal(&mut OsRng, key)],
    )
    .unwrap();
    let mid = [9u8; 16];
    let mut ad = b"message/".to_vec();
    ad.extend_from_slice(&mid);
    ad.extend_from_slice(b"bob");
    let json = br#"{"text":"from the old days","franking_key":"","commitment":"","tag":"","sender_device":1}"#;
    c.execute(
        "INSERT INTO messages (message_id, contact, outgoing, sealed, sent_at_ms, server_ts_ms, shown) VALUES (?1, 'bob', 0, ?2, 1700000000001, 1700000000002, 1)",
        rusqlite::params![mid.to_vec(), seal(json, &ad)],
    )
    .unwrap();
    c.execute(
        "INSERT INTO processed VALUES ('bob', 1, ?1, 1700000000003)",
        [mid.to_vec()],
    )
    .unwrap();
    s
}

fn check_migrated(store: &Store, peer: &IdentityKeyPair, session: &Session) {
    assert_eq!(
        store.get_meta_str("username").unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(store.get_meta_u64("device_id").unwrap(), Some(1));
    assert_eq!(
        store.get_meta("identity").unwrap().unwrap().as_slice(),
        b"IDENTITY-SECRET"
    );
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(&c.identity, peer.public());
    assert!(c.verified);
    let h = store.history("bob").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].text, "from the old days");
    assert_eq!(h[0].sender_clock_ms, 1_700_000_000_001);
    assert_eq!(h[0].server_ts_ms, 1_700_000_000_002);
    let s = store.sessions("bob").unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].registration_id, 42);
    assert_eq!(s[0].session.to_bytes(), session.to_bytes());
    assert_eq!(
        store
            .db()
            .get_prekey(missive_client::store::PrekeyKind::Signed, 5)
            .unwrap()
            .unwrap()
            .as_slice(),
        b"PREKEY-SECRET"
    );
    store
        .db()
        .is_processed("bob", 1, &[9u8; 16])
        .map(|p| assert!(p))
        .unwrap();
    assert!(!store.was_rolled_back());
}

#[test]
fn a_schema_1_store_is_migrated_not_broken() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let key = missive_crypto::StorageKey::generate(&mut OsRng);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("storage.key"), key.as_bytes()).unwrap();
    let peer = IdentityKeyPair::generate(&mut OsRng);
    let session = write_v1_store(&home, &key, &peer);
    let store = keyfile(&home, false);
    check_migrated(&store, &peer, &session);
    drop(store);
    // Straight to today's schema (1 -> 2 -> 3 -> 4 in one transaction).
    assert_eq!(user_version(&home), 4);
    assert_eq!(
        any_file_contains(&home, b"bob"),
        None,
        "names gone from the file"
    );
    check_migrated(&keyfile(&home, false), &peer, &session);
}

#[test]
fn a_schema_1_passphrase_store_is_migrated_to_strong_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    std::fs::create_dir_all(&home).unwrap();
    // Schema 1: a bare 16-byte salt, the argon2 crate's default parameters.
    let salt = [5u8; 16];
    std::fs::write(home.join("passphrase.salt"), salt).unwrap();
    let mut old = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(b"correct horse", &salt, &mut old)
        .unwrap();
    let key = missive_crypto::StorageKey::from_bytes(old);
    let peer = IdentityKeyPair::generate(&mut OsRng);
    let session = write_v1_store(&home, &key, &peer);
    let pass = KeySource::Passphrase(Zeroizing::new("correct horse".to_owned()));
    let store = Store::open_with(&home, false, &pass).unwrap();
    check_migrated(&store, &peer, &session);
    drop(store);
    let params = std::fs::read_to_string(home.join("passphrase.salt")).unwrap();
    assert!(params.starts_with("argon2id m=65536 t=3 p=1 "), "{params}");
    assert!(!home.join("passphrase.salt.new").exists());
    check_migrated(
        &Store::open_with(&home, false, &pass).unwrap(),
        &peer,
        &session,
    );
    let wrong = KeySource::Passphrase(Zeroizing::new("wrong".to_owned()));
    assert!(matches!(
        Store::open_with(&home, false, &wrong),
        Err(ClientError::WrongKey(_))
    ));
}
