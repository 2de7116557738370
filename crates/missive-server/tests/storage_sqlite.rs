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
