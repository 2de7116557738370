//! The shared storage suite against the SQLite backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_server::storage::{self, OpenMode, suite};

#[tokio::test]
async fn sqlite_backend_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("suite.db").display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    suite::run_all(store.as_ref()).await;
    store.close().await;
    // The schema survives a reopen without migrations.
    let reopened = storage::open(&url, OpenMode::Existing).await.unwrap();
    assert!(reopened.export_account("suite-r2").await.unwrap().is_some());
}

#[tokio::test]
async fn existing_mode_refuses_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    let error = storage::open(&url, OpenMode::Existing).await.err().unwrap();
    assert!(
        matches!(error, storage::StorageError::NoDatabase),
        "{error:?}"
    );
    assert!(!dir.path().join("none.db").exists());
}

#[tokio::test]
async fn sqlite_reports_the_ids_of_stored_envelopes() {
    use missive_server::storage::{DeviceAddress, SendOutcome};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ids.db").display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    let account = store
        .create_account(&suite::account("ids", 0, 0))
        .await
        .unwrap();
    let item = |id: u8| suite::send("x", account, id, 5, 10);
    let answers = store
        .store_envelopes_with_ids(std::sync::Arc::new(vec![item(1), item(2)]))
        .await
        .unwrap();
    let device = DeviceAddress { account, device: 1 };
    let pending = store.pending_envelopes(device, 0, 10).await.unwrap();
    let delivered: Vec<(SendOutcome, Option<u64>)> = pending
        .iter()
        .map(|e| {
            (
                SendOutcome::Stored {
                    server_timestamp_ms: 5,
                },
                Some(e.id),
            )
        })
        .collect();
    assert_eq!(answers, delivered);
    store.close().await;
}

/// An acknowledged envelope must not linger in the live WAL file either: the
/// periodic purge truncates the WAL once it is checkpointed, so its ciphertext
/// and sender/recipient pair are gone from the data directory while the server
/// is still running (not only after a clean shutdown).
#[tokio::test]
async fn purge_leaves_no_acknowledged_envelope_in_the_wal() {
    use missive_server::storage::DeviceAddress;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wal.db").display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    let account = store
        .create_account(&suite::account("wal", 0, 0))
        .await
        .unwrap();
    let secret: Vec<u8> = b"acknowledged ciphertext, gone after the purge"
        .iter()
        .copied()
        .cycle()
        .take(300)
        .collect();
    let mut item = suite::send("x", account, 9, 5, 10);
    item.envelopes[0].content = secret.clone();
    store.store_envelopes(&[item]).await.unwrap();
    let device = DeviceAddress { account, device: 1 };
    let pending = store.pending_envelopes(device, 0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let on_disk = |needle: &[u8]| {
        std::fs::read_dir(dir.path()).unwrap().any(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    };
    // The scan sees what is stored: the pending envelope is on disk.
    assert!(
        on_disk(&secret[..64]),
        "scan cannot see the stored envelope"
    );
    store.acknowledge(device, &[pending[0].id]).await.unwrap();
    store.purge_expired(10, 0).await.unwrap();
    assert!(
        !on_disk(&secret[..64]),
        "an acknowledged envelope is still in the data directory after the purge"
    );
    store.close().await;
}

/// A database of schema v1 (migrations 0001 and 0002 only), with rows.
async fn v1_database(dir: &std::path::Path) -> String {
    let migrations = dir.join("v1-migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for name in ["0001_init.sql", "0002_pending_counter.sql"] {
        std::fs::copy(source.join(name), migrations.join(name)).unwrap();
    }
    let url = format!("sqlite://{}", dir.join("old.db").display());
    let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
        .unwrap()
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(migrations)
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let identity = format!("X'{}'", "07".repeat(32));
    for statement in suite::v1_rows(&identity) {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
    url
}

/// Issue 17: a v1 database migrates (reports to the accounts of the time,
/// token expiry to a day, challenges to hashes), and its franking key moves
/// to the key file and is gone from every database file.
#[tokio::test]
async fn a_v1_database_migrates_and_its_franking_key_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = v1_database(dir.path()).await;
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    suite::migrated_from_v1(store.as_ref()).await;

    let keys = dir.path().join("franking.keys");
    let ring = missive_server::franking::open(&keys, store.as_ref())
        .await
        .unwrap();
    assert_eq!(ring.ids(), vec![1, 2]);
    assert_eq!(
        ring.current_id(),
        2,
        "new tags must not use the key that sat in the database"
    );
    // A tag from before key ids still verifies, under the migrated key.
    let old = missive_crypto::franking::ServerFrankingKey::from_bytes(&[7; 32]).unwrap();
    let legacy = missive_crypto::franking::server_tag(&old, &[1; 32], "alice", "carol", 9, b"m");
    let verified = ring
        .verify(&legacy, &[1; 32], "alice", 2, "carol", 9, b"m")
        .unwrap();
    assert_eq!((verified.key_id, verified.sender_account), (1, None));
    assert!(
        store
            .server_secret_get(missive_server::franking::LEGACY_SECRET)
            .await
            .unwrap()
            .is_none()
    );
    // The key bytes are in the key file only.
    let key_hex = "07".repeat(32);
    assert!(std::fs::read_to_string(&keys).unwrap().contains(&key_hex));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("old.db") {
            let bytes = std::fs::read(&path).unwrap();
            // The identity literal is 0x07 too, in accounts: look for the
            // secret's row instead (name next to value).
            let row: Vec<u8> = missive_server::franking::LEGACY_SECRET.bytes().collect();
            assert!(
                !bytes.windows(row.len()).any(|w| w == row.as_slice()),
                "{name} still holds the franking key row"
            );
        }
    }
    // A second start uses the file as it is.
    let again = missive_server::franking::open(&keys, store.as_ref())
        .await
        .unwrap();
    assert_eq!(again.checks(), ring.checks());
    store.close().await;
}

/// Issue 17: after a mailbox drains the database file shrinks (incremental
/// vacuum at the purge), and it is private (0600).
#[tokio::test]
async fn the_database_shrinks_after_a_mailbox_drains_and_is_private() {
    use missive_server::storage::DeviceAddress;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrink.db");
    let url = format!("sqlite://{}", path.display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("shrink.db{suffix}"));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "shrink.db{suffix} is {mode:o}");
        }
    }
    let account = store
        .create_account(&suite::account("shrink", 0, 0))
        .await
        .unwrap();
    let items: Vec<_> = (0..200u8)
        .map(|n| {
            let mut item = suite::send("x", account, n, 5, 1000);
            item.message_id = vec![n, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
            item.envelopes[0].content = vec![n; 30_000];
            item
        })
        .collect();
    store.store_envelopes(&items).await.unwrap();
    store.purge_expired(10, 0).await.unwrap();
    let full = std::fs::metadata(&path).unwrap().len();
    assert!(full > 5_000_000, "only {full} bytes stored");
    let device = DeviceAddress { account, device: 1 };
    let ids: Vec<u64> = store
        .pending_envelopes(device, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 200);
    store.acknowledge(device, &ids).await.unwrap();
    store.purge_expired(10, 0).await.unwrap();
    let drained = std::fs::metadata(&path).unwrap().len();
    assert!(
        drained < full / 10,
        "the database did not shrink after its mailbox drained: {full} -> {drained} bytes"
    );
    store.close().await;
}

/// Two stores on one SQLite file (two processes' worth of connections)
/// commit to one group for the same epoch at once: exactly one wins.
#[tokio::test]
async fn concurrent_group_commits_on_two_sqlite_stores_store_exactly_one_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("race.db").display());
    let first = storage::open(&url, OpenMode::Serve).await.unwrap();
    let second = storage::open(&url, OpenMode::Serve).await.unwrap();
    suite::group_epoch_race(first.as_ref(), second.as_ref(), "race").await;
    first.close().await;
    second.close().await;
}

/// A group message is stored once, whatever the number of receivers: with
/// 50 receiving devices the database grows by about one copy of it.
#[tokio::test]
async fn a_group_message_is_stored_once_for_all_its_receivers() {
    use missive_server::storage::DeviceAddress;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("once.db");
    let url = format!("sqlite://{}", path.display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    let mut devices = Vec::new();
    for n in 0..50 {
        let account = store
            .create_account(&suite::account(&format!("once-{n}"), 0, 0))
            .await
            .unwrap();
        devices.push(DeviceAddress { account, device: 1 });
    }
    let group = [5u8; 16];
    store
        .create_group(&group, devices[0], 1, 20_000)
        .await
        .unwrap();
    store
        .commit_group(&suite::group_commit(
            &group,
            0,
            devices[0],
            1,
            &devices[1..],
            &[],
        ))
        .await
        .unwrap();
    let mut message = suite::group_message(&group, 1, devices[0], 2, 0, u64::MAX / 2);
    // Incompressible filler, so the size says how many copies exist.
    message.content = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    store.purge_expired(10, 0).await.unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    store.store_group_message(&message).await.unwrap();
    store.purge_expired(10, 0).await.unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    for device in &devices[1..] {
        let pending = store
            .pending_group_messages(*device, &group, 1, 10, 10)
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].content, message.content);
    }
    let grown = after.saturating_sub(before);
    assert!(
        (190_000..2 * 200_000).contains(&grown),
        "the database grew by {grown} bytes for one 200 kB message to 49 devices"
    );
    store.close().await;
}
