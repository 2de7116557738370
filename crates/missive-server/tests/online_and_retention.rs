//! Issue 16 on one node (SQLite store, in-process fan-out): online-only
//! envelopes (typing indicators) reach open receive streams and are never
//! written to the store, and an envelope's own retention (a disappearing
//! message's timer) bounds how long the server keeps it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::*;
use rand::rngs::OsRng;
use tokio_stream::StreamExt;
use tonic::Streaming;

/// Well below the 15 s catch-up: what arrives within it came live.
const LIVE: Duration = Duration::from_secs(5);

fn request(to: &User, content: &[u8], online_only: bool, retention_secs: u64) -> SendRequest {
    let mut message_id = vec![0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut message_id);
    SendRequest {
        recipient: to.username.clone(),
        message_id,
        envelopes: vec![OutgoingEnvelope {
            device_id: 1,
            registration_id: to.registration_id,
            r#type: EnvelopeType::Message as i32,
            content: content.to_vec(),
            franking_commitment: vec![3; 32],
        }],
        online_only,
        retention_secs,
    }
}

async fn send(from: &User, request: SendRequest) -> SendResponse {
    from.messages()
        .send(from.req(request))
        .await
        .unwrap()
        .into_inner()
}

/// Opens `user`'s stream and reads up to its `QueueEmpty`; returns the
/// stream and the backlog.
async fn open(user: &User) -> (Streaming<ReceiveResponse>, Vec<Envelope>) {
    let mut stream = user
        .messages()
        .receive(user.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut backlog = Vec::new();
    loop {
        let item = tokio::time::timeout(LIVE, stream.next())
            .await
            .expect("no QueueEmpty")
            .expect("stream ended")
            .unwrap();
        match item.item {
            Some(Item::Envelope(e)) => backlog.push(e),
            Some(Item::QueueEmpty(_)) => return (stream, backlog),
            Some(Item::GroupMessage(_)) => panic!("a group message in a 1:1 test"),
            None => panic!("empty item"),
        }
    }
}

async fn next(stream: &mut Streaming<ReceiveResponse>, within: Duration) -> Option<Envelope> {
    match tokio::time::timeout(within, stream.next()).await {
        Err(_) => None,
        Ok(item) => match item.expect("stream ended").unwrap().item {
            Some(Item::Envelope(e)) => Some(e),
            other => panic!("unexpected item {other:?}"),
        },
    }
}

/// Envelope rows in the node's SQLite file, read beside the running node.
async fn rows(dir: &Path) -> Vec<(Vec<u8>, i64, Option<i64>)> {
    let url = missive_server::server::default_database_url(dir);
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(Vec<u8>, i64, Option<i64>)> =
        sqlx::query_as("SELECT content, server_timestamp_ms, expires_at_ms FROM envelopes")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn online_only_envelopes_reach_open_streams_and_leave_no_trace_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let (mut stream, backlog) = open(&bob).await;
    assert!(backlog.is_empty());

    // Live, with id 0, marked, and tagged like any envelope.
    let typing = b"online-only typing ciphertext 1";
    let answer = send(&alice, request(&bob, typing, true, 0)).await;
    let got = next(&mut stream, LIVE).await.expect("not delivered live");
    assert_eq!(got.content, typing);
    assert_eq!((got.id, got.online_only), (0, true));
    assert_eq!(got.sender, "alice");
    assert_eq!(got.server_timestamp_ms, answer.server_timestamp_ms);
    assert_eq!(got.franking_tag.len(), missive_server::franking::TAG_LEN);

    // A stored envelope after it has a real id and is not marked; another
    // online one between stored ones leaves the stream's position alone.
    send(&alice, request(&bob, b"stored 1", false, 0)).await;
    let stored1 = next(&mut stream, LIVE).await.unwrap();
    assert!(stored1.id > 0 && !stored1.online_only, "{stored1:?}");
    let same_id = request(&bob, b"online-only typing ciphertext 2", true, 0);
    send(&alice, same_id.clone()).await;
    // No idempotency record: the same message id goes out again.
    send(&alice, same_id).await;
    send(&alice, request(&bob, b"stored 2", false, 0)).await;
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(next(&mut stream, LIVE).await.unwrap());
    }
    // One wake-up may carry all three: stored ones go first then.
    let (online, stored): (Vec<Envelope>, Vec<Envelope>) =
        live.into_iter().partition(|e| e.online_only);
    assert_eq!(online.len(), 2, "{online:?}");
    for e in &online {
        assert_eq!(e.id, 0);
        assert_eq!(e.content, b"online-only typing ciphertext 2");
    }
    assert_eq!(stored.len(), 1);
    let stored2 = &stored[0];
    assert_eq!(stored2.content, b"stored 2");
    assert!(stored2.id > stored1.id);
    assert!(
        next(&mut stream, Duration::from_millis(300))
            .await
            .is_none()
    );
    // Acknowledging id 0 is harmless (it is nobody's pending envelope).
    bob.messages()
        .acknowledge(bob.req(AcknowledgeRequest {
            envelope_ids: vec![0],
            group_acks: Vec::new(),
        }))
        .await
        .unwrap();

    // Without an open stream: still OK (the sender does not learn that bob
    // is offline), and nothing waits for bob's next stream.
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(
        &alice,
        request(&bob, b"online-only typing ciphertext 3", true, 0),
    )
    .await;
    let (mut stream, backlog) = open(&bob).await;
    let ids: Vec<u64> = backlog.iter().map(|e| e.id).collect();
    assert_eq!(ids, [stored1.id, stored2.id], "{backlog:?}");
    assert!(
        next(&mut stream, Duration::from_millis(500))
            .await
            .is_none()
    );

    // The store: the two stored envelopes only, and bob's mailbox counts two.
    let contents: Vec<Vec<u8>> = rows(dir.path()).await.into_iter().map(|r| r.0).collect();
    assert_eq!(contents.len(), 2);
    assert!(contents.iter().all(|c| c.starts_with(b"stored")));
    let store = missive_server::storage::open(
        &missive_server::server::default_database_url(dir.path()),
        missive_server::storage::OpenMode::Existing,
    )
    .await
    .unwrap();
    let export = store.export_account("bob").await.unwrap().unwrap();
    assert_eq!(export.devices[0].pending_envelopes, 2);
    store.close().await;
    server.shutdown().await.unwrap();
    // Not in any file of the data directory either (database, WAL, logs).
    let bytes = all_bytes(dir.path());
    assert!(
        !contains(&bytes, b"online-only typing"),
        "an online-only envelope was written to disk"
    );
    assert!(contains(&bytes, b"stored 1"), "the check reads nothing");
}

#[tokio::test]
async fn online_only_sends_are_checked_like_any_send() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let mut stale = request(&bob, b"x", true, 0);
    stale.envelopes[0].registration_id += 1;
    let status = alice.messages().send(alice.req(stale)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let mut short_id = request(&bob, b"x", true, 0);
    short_id.message_id.truncate(3);
    let status = alice
        .messages()
        .send(alice.req(short_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut nobody = request(&bob, b"x", true, 0);
    nobody.recipient = "nobody".into();
    let status = alice.messages().send(alice.req(nobody)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_envelope_expires_at_its_own_retention_never_later_than_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = Duration::from_secs(3_600);
    let server = missive_server::start(config).await.unwrap();
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;

    send(&alice, request(&bob, b"default", false, 0)).await;
    send(&alice, request(&bob, b"longer", false, 7 * 86_400)).await;
    let short = send(&alice, request(&bob, b"short", false, 2)).await;
    let mut lifetimes: Vec<(Vec<u8>, i64)> = rows(dir.path())
        .await
        .into_iter()
        .map(|(content, ts, expires)| (content, expires.unwrap() - ts))
        .collect();
    lifetimes.sort();
    assert_eq!(
        lifetimes,
        [
            (b"default".to_vec(), 3_600_000),
            // Asked for longer than the server keeps anything: the server's.
            (b"longer".to_vec(), 3_600_000),
            (b"short".to_vec(), 2_000),
        ]
    );

    // Gone from the store soon after its two seconds, not a purge interval
    // (60 s) later; the others stay.
    let started = std::time::Instant::now();
    loop {
        let left = rows(dir.path()).await;
        if left.len() == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the 2 s envelope is still stored: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed_ms = now_ms() - short.server_timestamp_ms;
    assert!(elapsed_ms >= 2_000, "purged early, after {elapsed_ms} ms");
    let (_stream, backlog) = open(&bob).await;
    let contents: Vec<&[u8]> = backlog.iter().map(|e| e.content.as_slice()).collect();
    assert_eq!(contents, [&b"default"[..], &b"longer"[..]]);
    server.shutdown().await.unwrap();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
