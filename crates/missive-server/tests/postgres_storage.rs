//! The shared storage suite against the PostgreSQL backend. Each test runs
//! in a schema of its own (so tests run in parallel) on the database named by
//! `MISSIVE_TEST_DATABASE_URL`, and drops it afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod services;

use std::collections::HashSet;
use std::sync::Arc;

use missive_server::storage::{
    self, DeviceAddress, NewEnvelope, OpenMode, SendItem, SendOutcome, Storage, StorageError, suite,
};

#[tokio::test]
async fn postgres_backend_passes_the_storage_suite() {
    let Some(schema) = services::PgSchema::create("suite").await else {
        return;
    };
    let store = storage::open(&schema.url(), OpenMode::Serve).await.unwrap();
    suite::run_all(store.as_ref()).await;
    store.close().await;
    // The schema survives a reopen without migrations.
    let reopened = storage::open(&schema.url(), OpenMode::Existing)
        .await
        .unwrap();
    assert!(reopened.export_account("suite-r2").await.unwrap().is_some());
    reopened.close().await;
    drop(schema);
}

#[tokio::test]
async fn existing_mode_refuses_an_empty_schema() {
    let Some(schema) = services::PgSchema::create("empty").await else {
        return;
    };
    let error = storage::open(&schema.url(), OpenMode::Existing)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, StorageError::NoDatabase), "{error:?}");
    drop(schema);
}

#[tokio::test]
async fn migrations_are_idempotent_for_nodes_starting_together() {
    let Some(schema) = services::PgSchema::create("migrate").await else {
        return;
    };
    let url = schema.url();
    let (a, b) = tokio::join!(
        storage::open(&url, OpenMode::Serve),
        storage::open(&url, OpenMode::Serve)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Both nodes agree on a franking key's check value whoever wrote it
    // first (the loser then refuses its different key file).
    let (x, y) = tokio::join!(
        a.record_franking_key(1, &[1; 32]),
        b.record_franking_key(1, &[2; 32])
    );
    assert_eq!(x.unwrap(), y.unwrap());
    a.close().await;
    b.close().await;
    drop(schema);
}

/// Two "nodes" (two pools) write to one device concurrently while a reader
/// resumes after the last id it saw, exactly like a receive stream: it must
/// see every envelope, i.e. ids become visible in increasing order.
#[tokio::test]
async fn concurrent_writers_on_two_pools_keep_per_device_commit_order() {
    let Some(schema) = services::PgSchema::create("order").await else {
        return;
    };
    let url = schema.url();
    let node_a = storage::open(&url, OpenMode::Serve).await.unwrap();
    let node_b = storage::open(&url, OpenMode::Serve).await.unwrap();
    let bob = node_a
        .create_account(&suite::account("bob", 0, 0))
        .await
        .unwrap();
    let device = DeviceAddress {
        account: bob,
        device: 1,
    };
    const PER_WRITER: u32 = 150;
    let writer = |store: Arc<dyn Storage>, tag: u8| async move {
        for n in 0..PER_WRITER {
            let mut message_id = vec![tag];
            message_id.extend_from_slice(&n.to_be_bytes());
            let item = SendItem {
                sender: format!("writer{tag}"),
                sender_device: 1,
                recipient: bob,
                message_id,
                server_timestamp_ms: u64::from(n),
                expires_at_ms: u64::MAX,
                envelopes: vec![NewEnvelope {
                    recipient_device: 1,
                    kind: 1,
                    content: vec![tag; 8],
                    franking_commitment: vec![0; 32],
                    franking_tag: vec![0; 32],
                }],
                mailbox_limit: 10_000,
            };
            let outcome = store.store_envelopes(&[item]).await.unwrap();
            assert!(matches!(outcome[0], SendOutcome::Stored { .. }));
        }
    };
    let reader = {
        let store = Arc::clone(&node_b);
        async move {
            let mut last = 0;
            let mut seen = HashSet::new();
            while seen.len() < 2 * PER_WRITER as usize {
                for envelope in store.pending_envelopes(device, last, 50).await.unwrap() {
                    last = last.max(envelope.id);
                    assert!(seen.insert(envelope.id), "delivered twice");
                }
                tokio::task::yield_now().await;
            }
            seen.len()
        }
    };
    let deadline = std::time::Duration::from_secs(60);
    let ((), (), seen) = tokio::time::timeout(deadline, async {
        tokio::join!(
            writer(Arc::clone(&node_a), 1),
            writer(Arc::clone(&node_b), 2),
            reader
        )
    })
    .await
    .expect("the reader missed an envelope (an id became visible after a larger one)");
    assert_eq!(seen, 2 * PER_WRITER as usize);
    node_a.close().await;
    node_b.close().await;
    drop(schema);
}

/// Issue 17: a schema-v1 database migrates (reports to the accounts of the
/// time, token expiry to a day, challenges to hashes) and its franking key
/// is moved out of it and deleted.
#[tokio::test]
async fn a_v1_schema_migrates_and_its_franking_key_leaves_it() {
    let Some(schema) = services::PgSchema::create("v1").await else {
        return;
    };
    let url = schema.url();
    {
        let dir = tempfile::tempdir().unwrap();
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        std::fs::copy(
            source.join("0001_init.sql"),
            dir.path().join("0001_init.sql"),
        )
        .unwrap();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(dir.path().to_owned())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let identity = format!("'\\x{}'::bytea", "07".repeat(32));
        for statement in suite::v1_rows(&identity) {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    suite::migrated_from_v1(store.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let ring = missive_server::franking::open(&dir.path().join("franking.keys"), store.as_ref())
        .await
        .unwrap();
    assert_eq!((ring.ids(), ring.current_id()), (vec![1, 2], 2));
    assert!(
        store
            .server_secret_get(missive_server::franking::LEGACY_SECRET)
            .await
            .unwrap()
            .is_none()
    );
    // A second node without the key file refuses to start with a sentence.
    let error = missive_server::franking::open(&dir.path().join("missing.keys"), store.as_ref())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("restore it from your backup"), "{error}");
    store.close().await;
    drop(schema);
}

/// Two "nodes" (two pools) on one schema: a mailbox opened through one is
/// read through the other, and of two primaries posting HELLO with one code
/// at once, one through each node, exactly one is stored; the same for two
/// concurrent opens of one rendezvous id.
#[tokio::test]
async fn two_nodes_racing_on_one_link_code_store_one_hello() {
    use missive_server::storage::{LinkMessage, LinkPost};

    let Some(schema) = services::PgSchema::create("link").await else {
        return;
    };
    let url = schema.url();
    let node_a = storage::open(&url, OpenMode::Serve).await.unwrap();
    let node_b = storage::open(&url, OpenMode::Serve).await.unwrap();
    let alice = node_a
        .create_account(&suite::account("alice", 0, 0))
        .await
        .unwrap();
    let mallory = node_b
        .create_account(&suite::account("mallory", 0, 0))
        .await
        .unwrap();
    let (now, expires) = (1_000, 601_000);
    let offer = vec![1u8; 1216];
    let mut wins = [0u32; 2];
    for round in 0..50u8 {
        let code = [round; 32];
        let (a, b) = tokio::join!(
            node_a.open_link(&code, &offer, now, expires),
            node_b.open_link(&code, &offer, now, expires),
        );
        assert!(a.unwrap() ^ b.unwrap(), "both or neither opened {round}");
        assert!(node_b.link(&code, now).await.unwrap().is_some());
        let (a, b) = tokio::join!(
            node_a.post_link(
                &code,
                LinkMessage::Hello {
                    account: alice,
                    payload: b"alice"
                },
                now
            ),
            node_b.post_link(
                &code,
                LinkMessage::Hello {
                    account: mallory,
                    payload: b"mallory"
                },
                now
            ),
        );
        let stored = node_a.link(&code, now).await.unwrap().unwrap();
        match (a.unwrap(), b.unwrap()) {
            (LinkPost::Posted, LinkPost::AlreadyWritten) => {
                assert_eq!(stored.hello_account, Some(alice));
                wins[0] += 1;
            }
            (LinkPost::AlreadyWritten, LinkPost::Posted) => {
                assert_eq!(stored.hello_account, Some(mallory));
                wins[1] += 1;
            }
            outcome => panic!("round {round}: {outcome:?}"),
        }
    }
    assert_eq!(wins[0] + wins[1], 50);
    node_a.close().await;
    node_b.close().await;
    drop(schema);
}

/// Two "nodes" (two pools) commit to one group for the same epoch at once:
/// exactly one commit is stored per epoch, and every seq is given once.
#[tokio::test]
async fn concurrent_group_commits_on_two_pools_store_exactly_one_per_epoch() {
    let Some(schema) = services::PgSchema::create("group_race").await else {
        return;
    };
    let url = schema.url();
    let node_a = storage::open(&url, OpenMode::Serve).await.unwrap();
    let node_b = storage::open(&url, OpenMode::Serve).await.unwrap();
    suite::group_epoch_race(node_a.as_ref(), node_b.as_ref(), "race").await;
    node_a.close().await;
    node_b.close().await;
    drop(schema);
}
