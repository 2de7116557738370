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
    use missive_server::storage::{DeviceAddress, KemPrekeyRecord, NewAccount};
    use missive_server::storage::{NewEnvelope, SendItem, SendOutcome, SignedPrekeyRecord};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ids.db").display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    let account = store
        .create_account(&NewAccount {
            username: "ids".into(),
            identity: vec![7; 128],
            registration_id: 1,
            signed_prekey: SignedPrekeyRecord {
                id: 1,
                public_key: vec![1; 32],
                signature: vec![2; 64],
            },
            last_resort_kem_prekey: KemPrekeyRecord {
                id: 2,
                public_key: vec![3; 1184],
                signature: vec![4; 64],
            },
            one_time_prekeys: Vec::new(),
            one_time_kem_prekeys: Vec::new(),
            today: 1,
        })
        .await
        .unwrap();
    let item = |id: u8| SendItem {
        sender: "x".into(),
        sender_device: 1,
        recipient: account,
        message_id: vec![id; 16],
        server_timestamp_ms: 5,
        envelopes: vec![NewEnvelope {
            recipient_device: 1,
            kind: 2,
            content: vec![id; 10],
            franking_commitment: vec![0; 32],
            franking_tag: vec![0; 32],
        }],
        mailbox_limit: 10,
    };
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
    use missive_server::storage::{DeviceAddress, KemPrekeyRecord, NewAccount};
    use missive_server::storage::{NewEnvelope, SendItem, SignedPrekeyRecord};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wal.db").display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    let account = store
        .create_account(&NewAccount {
            username: "wal".into(),
            identity: vec![7; 128],
            registration_id: 1,
            signed_prekey: SignedPrekeyRecord {
                id: 1,
                public_key: vec![1; 32],
                signature: vec![2; 64],
            },
            last_resort_kem_prekey: KemPrekeyRecord {
                id: 2,
                public_key: vec![3; 1184],
                signature: vec![4; 64],
            },
            one_time_prekeys: Vec::new(),
            one_time_kem_prekeys: Vec::new(),
            today: 1,
        })
        .await
        .unwrap();
    let secret: Vec<u8> = b"acknowledged ciphertext, gone after the purge"
        .iter()
        .copied()
        .cycle()
        .take(300)
        .collect();
    store
        .store_envelopes(&[SendItem {
            sender: "x".into(),
            sender_device: 1,
            recipient: account,
            message_id: vec![9; 16],
            server_timestamp_ms: 5,
            envelopes: vec![NewEnvelope {
                recipient_device: 1,
                kind: 2,
                content: secret.clone(),
                franking_commitment: vec![0; 32],
                franking_tag: vec![0; 32],
            }],
            mailbox_limit: 10,
        }])
        .await
        .unwrap();
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
