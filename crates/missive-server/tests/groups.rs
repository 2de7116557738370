//! `GroupService` (the MLS Delivery Service) through real gRPC over TLS. The
//! server never parses MLS: the "commits", "Welcomes" and "messages" here are
//! filler bytes, and the tests check what the server decides — order,
//! epochs, who gets what, acknowledgements, franking tags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod services;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use missive_crypto::franking::{self, FrankingKey};
use missive_proto::v1::group_service_client::GroupServiceClient;
use missive_proto::v1::message_service_client::MessageServiceClient;
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::*;
use prost::Message as _;
use rand::RngCore;
use rand::rngs::OsRng;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const BIG: usize = 12 * 1024 * 1024;

/// One device of a test account, as the tests need it (cheap to re-point
/// at a restarted node).
#[derive(Clone)]
struct Dev {
    username: String,
    device_id: u32,
    token: Vec<u8>,
    channel: Channel,
}

impl Dev {
    fn of(user: &User) -> Self {
        Self {
            username: user.username.clone(),
            device_id: user.device_id,
            token: user.token.clone(),
            channel: user.channel.clone(),
        }
    }
    fn req<T>(&self, message: T) -> tonic::Request<T> {
        authed(&self.token, message)
    }
    fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.channel.clone())
            .max_decoding_message_size(BIG)
            .max_encoding_message_size(BIG)
    }
    fn messages(&self) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(BIG)
            .max_encoding_message_size(BIG)
    }
    fn address(&self) -> DeviceAddress {
        DeviceAddress {
            username: self.username.clone(),
            device_id: self.device_id,
        }
    }
}

fn random<const N: usize>() -> Vec<u8> {
    let mut bytes = vec![0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

async fn create(dev: &Dev) -> Vec<u8> {
    let group_id = random::<16>();
    dev.groups()
        .create_group(dev.req(CreateGroupRequest {
            group_id: group_id.clone(),
        }))
        .await
        .unwrap();
    group_id
}

fn commit(group_id: &[u8], epoch: u64, added: &[&Dev], removed: &[&Dev]) -> CommitRequest {
    CommitRequest {
        group_id: group_id.to_vec(),
        epoch,
        message_id: random::<16>(),
        commit: vec![0xC0; 200],
        welcome: if added.is_empty() {
            Vec::new()
        } else {
            vec![0x77; 500]
        },
        added: added.iter().map(|d| d.address()).collect(),
        removed: removed.iter().map(|d| d.address()).collect(),
    }
}

fn application(
    group_id: &[u8],
    epoch: u64,
    content: &[u8],
    commitment: &[u8],
) -> SendGroupMessageRequest {
    SendGroupMessageRequest {
        group_id: group_id.to_vec(),
        epoch,
        message_id: random::<16>(),
        kind: GroupMessageKind::Application as i32,
        content: private_message(group_id, epoch, commitment, content),
        franking_commitment: commitment.to_vec(),
        retention_secs: 0,
    }
}

/// An application `PrivateMessage` whose header names `group_id` and
/// `epoch` and carries `commitment`, around `body` (the server reads only
/// the header).
fn private_message(group_id: &[u8], epoch: u64, commitment: &[u8], body: &[u8]) -> Vec<u8> {
    missive_server::mls_frame::private_message_for_tests(group_id, epoch, 1, commitment, body)
}

async fn open(dev: &Dev) -> Streaming<ReceiveResponse> {
    dev.messages()
        .receive(dev.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn next_item(stream: &mut Streaming<ReceiveResponse>) -> Item {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("stream stalled")
        .expect("stream ended")
        .unwrap()
        .item
        .unwrap()
}

/// The group messages of the backlog (up to QueueEmpty).
async fn backlog(dev: &Dev) -> Vec<GroupMessage> {
    let mut stream = open(dev).await;
    let mut out = Vec::new();
    loop {
        match next_item(&mut stream).await {
            Item::GroupMessage(m) => out.push(m),
            Item::QueueEmpty(_) => return out,
            Item::Envelope(e) => panic!("unexpected envelope {}", e.id),
        }
    }
}

async fn ack(dev: &Dev, group_id: &[u8], seq: u64) {
    dev.messages()
        .acknowledge(dev.req(AcknowledgeRequest {
            envelope_ids: Vec::new(),
            group_acks: vec![GroupAck {
                group_id: group_id.to_vec(),
                seq,
            }],
        }))
        .await
        .unwrap();
}

fn kinds(messages: &[GroupMessage]) -> Vec<(u64, i32)> {
    messages.iter().map(|m| (m.seq, m.kind)).collect()
}

const WELCOME: i32 = GroupMessageKind::Welcome as i32;
const COMMIT: i32 = GroupMessageKind::Commit as i32;
const APPLICATION: i32 = GroupMessageKind::Application as i32;

#[tokio::test]
async fn three_accounts_run_a_group_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = Dev::of(&register(&channel, "alice", 0, 0).await);
    let bob = Dev::of(&register(&channel, "bob", 0, 0).await);
    let carol = Dev::of(&register(&channel, "carol", 0, 0).await);

    // KeyPackages: uploaded, counted, fetched once with the device list.
    let counted = bob
        .groups()
        .upload_key_packages(bob.req(UploadKeyPackagesRequest {
            key_packages: vec![vec![1; 300], vec![2; 300]],
            last_resort: vec![9; 300],
        }))
        .await
        .unwrap()
        .into_inner()
        .count
        .unwrap();
    assert_eq!((counted.one_time, counted.has_last_resort), (2, true));
    let fetched = alice
        .groups()
        .fetch_key_packages(alice.req(FetchKeyPackagesRequest {
            username: "BOB".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.username, "bob");
    assert_eq!(fetched.key_packages.len(), 1);
    assert_eq!(fetched.key_packages[0].key_package, vec![1; 300]);
    assert!(!fetched.signed_device_list.is_empty());
    let left = bob
        .groups()
        .get_key_package_count(bob.req(GetKeyPackageCountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.one_time, 1);
    let nobody = alice
        .groups()
        .fetch_key_packages(alice.req(FetchKeyPackagesRequest {
            username: "nobody".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), Code::NotFound);
    let oversized = bob
        .groups()
        .upload_key_packages(bob.req(UploadKeyPackagesRequest {
            key_packages: vec![vec![1; 16385]],
            last_resort: Vec::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::InvalidArgument);

    // Alice creates the group and adds bob and carol.
    let group = create(&alice).await;
    let added = alice
        .groups()
        .commit(alice.req(commit(&group, 0, &[&bob, &carol], &[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.seq, added.epoch), (1, 1));
    // A commit naming a device that does not exist.
    let mut ghost = commit(&group, 1, &[&bob], &[]);
    ghost.added[0].device_id = 7;
    let refused = alice.groups().commit(alice.req(ghost)).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(refused.message().contains("bob/7"), "{}", refused.message());
    // A Welcome without added devices, and none with.
    let mut stray = commit(&group, 1, &[], &[]);
    stray.welcome = vec![1; 10];
    let refused = alice.groups().commit(alice.req(stray)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Bob and carol get the Welcome; alice nothing (her own commit).
    let to_bob = backlog(&bob).await;
    assert_eq!(kinds(&to_bob), vec![(1, WELCOME)]);
    assert_eq!(to_bob[0].content, vec![0x77; 500]);
    assert_eq!((to_bob[0].sender.as_str(), to_bob[0].epoch), ("alice", 1));
    assert_eq!(kinds(&backlog(&carol).await), vec![(1, WELCOME)]);
    assert!(backlog(&alice).await.is_empty());
    ack(&bob, &group, 1).await;
    ack(&carol, &group, 1).await;

    // Live: alice's and carol's open streams each get bob's message once.
    let mut alice_stream = open(&alice).await;
    assert!(matches!(
        next_item(&mut alice_stream).await,
        Item::QueueEmpty(_)
    ));
    let mut carol_stream = open(&carol).await;
    assert!(matches!(
        next_item(&mut carol_stream).await,
        Item::QueueEmpty(_)
    ));
    let key = FrankingKey::generate(&mut OsRng);
    let text = b"hello group";
    let mut request = application(&group, 1, &[0xB0; 120], &[]);
    request.franking_commitment = franking::commit(&key, &request.message_id, text).to_vec();
    request.content = private_message(&group, 1, &request.franking_commitment, &[0xB0; 120]);
    // The header must name the request's group and epoch and carry its
    // commitment: the server reads the commitment back from it at delivery.
    for (mutate, what) in [
        (
            (|r: &mut SendGroupMessageRequest| {
                r.content = private_message(&random::<16>(), 1, &r.franking_commitment, b"x");
            }) as fn(&mut SendGroupMessageRequest),
            "another group",
        ),
        (
            |r| r.content = private_message(&r.group_id, 2, &r.franking_commitment, b"x"),
            "epoch 2",
        ),
        (
            |r| r.content = private_message(&r.group_id, 1, &[7; 32], b"x"),
            "authenticated data",
        ),
        (|r| r.content = vec![0xB0; 120], "not an MLS message"),
    ] {
        let mut bad = request.clone();
        mutate(&mut bad);
        let refused = bob
            .groups()
            .send_group_message(bob.req(bad))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
        assert!(
            refused.message().contains(what),
            "{what}: {}",
            refused.message()
        );
    }
    let sent = bob
        .groups()
        .send_group_message(bob.req(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.seq, 2);
    // A retry stores nothing new.
    let again = bob
        .groups()
        .send_group_message(bob.req(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, sent);
    for stream in [&mut alice_stream, &mut carol_stream] {
        let Item::GroupMessage(m) = next_item(stream).await else {
            panic!("not a group message")
        };
        assert_eq!((m.seq, m.kind, m.sender.as_str()), (2, APPLICATION, "bob"));
        assert_eq!(m.content, request.content);
        assert_eq!(m.franking_commitment, request.franking_commitment);
        assert_eq!(m.franking_tag.len(), 44);
        assert_eq!(m.server_timestamp_ms, sent.server_timestamp_ms);
    }
    assert!(backlog(&bob).await.is_empty(), "bob got his own message");

    // The report of a group message verifies with its group id only.
    let delivered = {
        let all = backlog(&carol).await;
        assert_eq!(kinds(&all), vec![(2, APPLICATION)], "delivered twice?");
        all.into_iter().next().unwrap()
    };
    let report = ReportRequest {
        message_id: delivered.message_id.clone(),
        sender: delivered.sender.clone(),
        server_timestamp_ms: delivered.server_timestamp_ms,
        plaintext: text.to_vec(),
        franking_key: key.as_bytes().to_vec(),
        franking_commitment: delivered.franking_commitment.clone(),
        franking_tag: delivered.franking_tag.clone(),
        reason: "spam".into(),
        attachment: None,
        group_id: group.clone(),
    };
    let reports = || {
        missive_proto::v1::report_service_client::ReportServiceClient::new(carol.channel.clone())
    };
    reports().report(carol.req(report.clone())).await.unwrap();
    let mut wrong = report.clone();
    wrong.group_id = random::<16>();
    let refused = reports().report(carol.req(wrong)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let mut as_one_to_one = report.clone();
    as_one_to_one.group_id.clear();
    let refused = reports()
        .report(carol.req(as_one_to_one))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Acknowledged by both receivers: not delivered again.
    ack(&alice, &group, 2).await;
    ack(&carol, &group, 2).await;
    assert!(backlog(&carol).await.is_empty());

    // A stale epoch: FAILED_PRECONDITION with the current epoch in details.
    let stale = carol
        .groups()
        .send_group_message(carol.req(application(&group, 0, b"old", &[1; 32])))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(
        GroupEpoch::decode(stale.details()).unwrap().current_epoch,
        1
    );

    // Alice removes carol: carol gets that commit, nothing after it.
    let removed = alice
        .groups()
        .commit(alice.req(commit(&group, 1, &[], &[&carol])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((removed.seq, removed.epoch), (3, 2));
    let Item::GroupMessage(removal) = next_item(&mut carol_stream).await else {
        panic!("no removal commit")
    };
    assert_eq!((removal.seq, removal.kind), (3, COMMIT));
    bob.groups()
        .send_group_message(bob.req(application(&group, 2, b"after", &[1; 32])))
        .await
        .unwrap();
    ack(&carol, &group, 3).await;
    assert!(
        backlog(&carol).await.is_empty(),
        "carol got a message after her removal"
    );
    let gone = carol
        .groups()
        .send_group_message(carol.req(application(&group, 2, b"x", &[1; 32])))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let unknown = carol
        .groups()
        .send_group_message(carol.req(application(&random::<16>(), 2, b"x", &[1; 32])))
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (gone.code(), gone.message())
    );
    // Alice's stream sees the removal commit? No: it is hers. Bob's message
    // after it, yes.
    let Item::GroupMessage(after) = next_item(&mut alice_stream).await else {
        panic!("no message")
    };
    assert_eq!(after.seq, 4);

    // The export names the group and counts, never content.
    let store = missive_server::storage::open(
        &missive_server::server::default_database_url(dir.path()),
        missive_server::storage::OpenMode::Existing,
    )
    .await
    .unwrap();
    let exported = store.export_account("bob").await.unwrap().unwrap();
    let document = missive_server::export::document(exported);
    let json = serde_json::to_value(&document).unwrap();
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{json}");
    assert_eq!(groups[0]["group_id"], hex::encode(&group));
    assert_eq!(groups[0]["receiving_devices"], 2);
    assert_eq!(json["devices"][0]["one_time_key_packages"], 1);
    let text = json.to_string();
    assert!(!text.contains("alice") && !text.contains("carol"), "{text}");
    store.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_commits_for_one_epoch_store_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = Dev::of(&register(&channel, "alice", 0, 0).await);
    let bob = Dev::of(&register(&channel, "bob", 0, 0).await);
    let group = create(&alice).await;
    alice
        .groups()
        .commit(alice.req(commit(&group, 0, &[&bob], &[])))
        .await
        .unwrap();
    for epoch in 1..=5u64 {
        let (mut to_a, mut to_b) = (alice.groups(), bob.groups());
        let (x, y) = tokio::join!(
            to_a.commit(alice.req(commit(&group, epoch, &[], &[]))),
            to_b.commit(bob.req(commit(&group, epoch, &[], &[])))
        );
        let (won, lost) = match (x, y) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won.into_inner(), lost),
            other => panic!("epoch {epoch}: {other:?}"),
        };
        assert_eq!(won.epoch, epoch + 1);
        assert_eq!(lost.code(), Code::FailedPrecondition);
        assert_eq!(
            GroupEpoch::decode(lost.details()).unwrap().current_epoch,
            epoch + 1
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pending_group_message_and_an_8_mib_welcome_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let mut alice = Dev::of(&register(&channel, "alice", 0, 0).await);
    let mut bob = Dev::of(&register(&channel, "bob", 0, 0).await);
    let group = create(&alice).await;
    let mut add = commit(&group, 0, &[&bob], &[]);
    add.welcome = vec![0x57; 8 * 1024 * 1024];
    add.commit = vec![0xC1; 1024 * 1024];
    alice.groups().commit(alice.req(add)).await.unwrap();
    alice
        .groups()
        .send_group_message(alice.req(application(&group, 1, b"kept", &[1; 32])))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = start(dir.path()).await;
    let channel = common::channel(&server).await;
    alice.channel = channel.clone();
    bob.channel = channel;
    let pending = backlog(&bob).await;
    assert_eq!(kinds(&pending), vec![(1, WELCOME), (2, APPLICATION)]);
    assert_eq!(pending[0].content.len(), 8 * 1024 * 1024);
    assert_eq!(
        pending[1].content,
        private_message(&group, 1, &[1; 32], b"kept")
    );
    ack(&bob, &group, 2).await;
    assert!(backlog(&bob).await.is_empty());
    // Leaving stops delivery at once; alice gets the proposal.
    let leave = LeaveGroupRequest {
        group_id: group.clone(),
        epoch: 1,
        message_id: random::<16>(),
        proposal: vec![0x50; 64],
    };
    bob.groups()
        .leave_group(bob.req(leave.clone()))
        .await
        .unwrap();
    // A retry succeeds and stores nothing new.
    bob.groups().leave_group(bob.req(leave)).await.unwrap();
    // Too many group acknowledgements in one call.
    let too_many = bob
        .messages()
        .acknowledge(
            bob.req(AcknowledgeRequest {
                envelope_ids: Vec::new(),
                group_acks: (0..1001)
                    .map(|seq| GroupAck {
                        group_id: group.clone(),
                        seq,
                    })
                    .collect(),
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    alice
        .groups()
        .send_group_message(alice.req(application(&group, 1, b"gone", &[1; 32])))
        .await
        .unwrap();
    assert!(backlog(&bob).await.is_empty());
    let to_alice = backlog(&alice).await;
    assert_eq!(
        kinds(&to_alice),
        vec![(3, GroupMessageKind::Proposal as i32)]
    );
    server.shutdown().await.unwrap();
}

/// Two nodes over one PostgreSQL and NATS: a group message stored through
/// one node reaches a stream open on the other at once (a wake-up crosses
/// NATS, the stream reads the row).
#[tokio::test]
async fn a_group_message_wakes_a_stream_on_another_node() {
    let Some(schema) = services::PgSchema::create("groups_nats").await else {
        return;
    };
    let Some(nats) = services::service_url("MISSIVE_TEST_NATS_URL") else {
        return;
    };
    let prefix = services::unique("missive_groups");
    let node = |dir: std::path::PathBuf| {
        let (url, nats, prefix) = (schema.url(), nats.clone(), prefix.clone());
        async move {
            let storage =
                missive_server::storage::open(&url, missive_server::storage::OpenMode::Serve)
                    .await
                    .unwrap();
            let fanout = Arc::new(
                missive_server::fanout::nats::NatsFanOut::connect(&nats, &prefix)
                    .await
                    .unwrap(),
            );
            missive_server::server::start_on(config(&dir), storage, fanout, None)
                .await
                .unwrap()
        }
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node_a = node(dir_a.path().to_path_buf()).await;
    // The nodes share the franking keys, as deployed (docs/DEPLOYMENT.md).
    std::fs::copy(
        dir_a.path().join("franking.keys"),
        dir_b.path().join("franking.keys"),
    )
    .unwrap();
    let node_b = node(dir_b.path().to_path_buf()).await;
    let on_a = channel(&node_a).await;
    let on_b = channel(&node_b).await;
    let alice = Dev::of(&register(&on_a, "alice", 0, 0).await);
    let mut bob = Dev::of(&register(&on_a, "bob", 0, 0).await);
    bob.channel = on_b;
    let group = create(&alice).await;
    alice
        .groups()
        .commit(alice.req(commit(&group, 0, &[&bob], &[])))
        .await
        .unwrap();
    let mut stream = open(&bob).await;
    assert!(matches!(
        next_item(&mut stream).await,
        Item::GroupMessage(_)
    ));
    assert!(matches!(next_item(&mut stream).await, Item::QueueEmpty(_)));
    alice
        .groups()
        .send_group_message(alice.req(application(&group, 1, b"across", &[1; 32])))
        .await
        .unwrap();
    // Within the catch-up interval (15 s) only a wake-up delivers it.
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no wake-up crossed NATS")
        .unwrap()
        .unwrap()
        .item
        .unwrap();
    let Item::GroupMessage(m) = item else {
        panic!("not a group message")
    };
    assert_eq!(
        (m.seq, m.content),
        (2, private_message(&group, 1, &[1; 32], b"across"))
    );
    node_a.shutdown().await.unwrap();
    node_b.shutdown().await.unwrap();
    drop(schema);
}
