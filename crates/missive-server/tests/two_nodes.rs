//! Two real `missive-server` processes on one PostgreSQL schema and one NATS,
//! node B using node A's TLS material: bob streams from B while alice sends
//! through A and gets her envelopes live; A is killed; alice moves to B and
//! nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod services;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::*;
use rand::rngs::OsRng;
use tokio_stream::StreamExt;
use tonic::Streaming;

const BIN: &str = env!("CARGO_BIN_EXE_missive-server");

/// Well below `limits::CATCH_UP_INTERVAL` (15 s): an envelope arriving within
/// it was delivered by a wake-up, not by the periodic catch-up.
const LIVE: Duration = Duration::from_secs(5);

/// Kills the node when the test ends, however it ends.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_node(
    data: &Path,
    database: &str,
    nats: &str,
    prefix: &str,
    tls: Option<&Path>,
) -> Node {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args([
            "--database",
            database,
            "--nats",
            nats,
            "--nats-prefix",
            prefix,
        ])
        .env("MISSIVE_LOG", "warn")
        .env_remove("MISSIVE_DATABASE_URL")
        .env_remove("MISSIVE_NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = tls {
        command
            .arg("--tls-cert")
            .arg(dir.join("server.pem"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            // Every node tags and verifies with the first node's franking keys.
            .arg("--franking-keys")
            .arg(dir.join("franking.keys"));
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("missive-server listening on ")
        .unwrap_or_else(|| panic!("node did not start: {line:?}"))
        .to_owned();
    Node { child, url }
}

fn send_request(to: &User, n: u32) -> SendRequest {
    let mut message_id = vec![0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut message_id);
    SendRequest {
        recipient: to.username.clone(),
        message_id,
        envelopes: vec![OutgoingEnvelope {
            device_id: 1,
            registration_id: to.registration_id,
            r#type: EnvelopeType::Message as i32,
            // Opaque to the server: it only relays ciphertext.
            content: format!("opaque ciphertext {n}").into_bytes(),
            franking_commitment: vec![n as u8; 32],
        }],
        ..Default::default()
    }
}

async fn send(from: &User, to: &User, n: u32) -> Vec<u8> {
    let request = send_request(to, n);
    let id = request.message_id.clone();
    from.messages().send(from.req(request)).await.unwrap();
    id
}

async fn next_envelope(stream: &mut Streaming<ReceiveResponse>, within: Duration) -> Envelope {
    loop {
        let item = tokio::time::timeout(within, stream.next())
            .await
            .expect("no envelope arrived in time")
            .expect("stream ended")
            .unwrap();
        if let Some(Item::Envelope(envelope)) = item.item {
            return envelope;
        }
    }
}

#[tokio::test]
async fn two_nodes_share_postgres_and_nats_and_lose_nothing_when_one_dies() {
    let Some(schema) = services::PgSchema::create("two_nodes").await else {
        return;
    };
    let Some(nats) = services::service_url("MISSIVE_TEST_NATS_URL") else {
        return;
    };
    let prefix = services::unique("missive_test");
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let node_a = spawn_node(&dir_a, &schema.url(), &nats, &prefix, None).await;
    // B serves A's certificate: clients trust one CA whatever node they reach.
    let node_b = spawn_node(&dir_b, &schema.url(), &nats, &prefix, Some(&dir_a)).await;
    assert!(
        !dir_b.join("ca.pem").exists(),
        "node B generated its own CA"
    );
    let ca = dir_a.join("ca.pem");
    let channel_a = connect(&node_a.url, &ca).await;
    let channel_b = connect(&node_b.url, &ca).await;

    let mut alice = register(&channel_a, "alice", 1, 1).await;
    let mut bob = register(&channel_b, "bob", 1, 1).await;
    // Registrations are shared: each node sees the other's accounts.
    assert_eq!(bob.registration_id, 1234);

    let mut stream = bob
        .messages()
        .receive(bob.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIVE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first.item, Some(Item::QueueEmpty(_))), "{first:?}");

    // Live across nodes: sent through A, delivered by B's stream.
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for n in 0..3 {
        sent.push(send(&alice, &bob, n).await);
        let envelope = next_envelope(&mut stream, LIVE).await;
        assert_eq!(envelope.sender, "alice");
        assert_eq!(
            envelope.content,
            format!("opaque ciphertext {n}").into_bytes()
        );
        assert_eq!(
            envelope.franking_tag.len(),
            missive_server::franking::TAG_LEN
        );
        received.push(envelope);
    }

    // A burst through A, then A dies without a graceful shutdown right after
    // the sends were acknowledged.
    let mut burst = Vec::new();
    for n in 3..13 {
        burst.push(send(&alice, &bob, n).await);
    }
    drop(node_a);
    sent.extend(burst);

    // Alice moves to B with the same token; bob's stream on B never closed.
    alice.channel = channel_b.clone();
    for n in 13..16 {
        sent.push(send(&alice, &bob, n).await);
    }
    while received.len() < sent.len() {
        received.push(next_envelope(&mut stream, LIVE).await);
    }
    let ids: Vec<u64> = received.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    let got: HashSet<Vec<u8>> = received.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(got.len(), received.len(), "an envelope was delivered twice");
    assert_eq!(
        got,
        sent.iter().cloned().collect::<HashSet<_>>(),
        "an envelope was lost"
    );

    // Acknowledged through B, they are gone for good: a fresh stream on B
    // (bob logs in again there) has an empty backlog.
    bob.messages()
        .acknowledge(bob.req(AcknowledgeRequest {
            envelope_ids: ids,
            group_acks: Vec::new(),
        }))
        .await
        .unwrap();
    drop(stream);
    bob.token = login(&bob).await;
    let mut again = bob
        .messages()
        .receive(bob.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIVE, again.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first.item, Some(Item::QueueEmpty(_))), "{first:?}");
    drop(again);
    drop(node_b);
    drop(schema);
}

/// Issue 16: an online-only envelope (a typing indicator) sent through node
/// A reaches bob's stream on node B live, with id 0, and is never written to
/// the shared PostgreSQL store; stored envelopes keep flowing around it.
#[tokio::test]
async fn online_only_envelopes_cross_nodes_and_are_never_stored() {
    let Some(schema) = services::PgSchema::create("online").await else {
        return;
    };
    let Some(nats) = services::service_url("MISSIVE_TEST_NATS_URL") else {
        return;
    };
    let prefix = services::unique("missive_test");
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    let node_a = spawn_node(&dir_a, &schema.url(), &nats, &prefix, None).await;
    let node_b = spawn_node(&dir_b, &schema.url(), &nats, &prefix, Some(&dir_a)).await;
    let ca = dir_a.join("ca.pem");
    let alice = register(&connect(&node_a.url, &ca).await, "alice", 1, 1).await;
    let bob = register(&connect(&node_b.url, &ca).await, "bob", 1, 1).await;
    let mut stream = bob
        .messages()
        .receive(bob.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIVE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first.item, Some(Item::QueueEmpty(_))), "{first:?}");

    // B subscribes to bob's subject when the stream opens; until NATS has
    // that subscription an online envelope is simply lost, so send until
    // one arrives, as a typing client would keep saying it types.
    let mut typing = send_request(&bob, 100);
    typing.online_only = true;
    let got = tokio::time::timeout(LIVE, async {
        loop {
            alice
                .messages()
                .send(alice.req(typing.clone()))
                .await
                .unwrap();
            if let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(250), stream.next()).await
            {
                match item.unwrap().item {
                    Some(Item::Envelope(e)) => return e,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    })
    .await
    .expect("no online-only envelope crossed the nodes");
    assert_eq!((got.id, got.online_only), (0, true));
    assert_eq!(got.content, b"opaque ciphertext 100");
    assert_eq!(got.sender, "alice");
    assert_eq!(got.franking_tag.len(), missive_server::franking::TAG_LEN);
    // Drain the repeats, if any.
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await
    {
        let Some(Item::Envelope(e)) = item.unwrap().item else {
            panic!("unexpected item")
        };
        assert!(e.online_only, "{e:?}");
    }

    // A stored one after it still arrives live, with a real id.
    let stored_id = send(&alice, &bob, 101).await;
    let stored = next_envelope(&mut stream, LIVE).await;
    assert_eq!(stored.message_id, stored_id);
    assert!(stored.id > 0 && !stored.online_only);

    // The shared store holds the stored envelope only.
    let pool = sqlx::PgPool::connect(&schema.url()).await.unwrap();
    let contents: Vec<Vec<u8>> = sqlx::query_scalar("SELECT content FROM envelopes")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(contents, [b"opaque ciphertext 101".to_vec()]);
    pool.close().await;
    drop(stream);
    drop((node_a, node_b));
    drop(schema);
}
