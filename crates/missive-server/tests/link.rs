//! `LinkService` through real gRPC over TLS: the rendezvous mailbox a primary
//! device and a new device exchange four opaque messages through. The server
//! checks sizes, order, write-once and who may post what; it never reads the
//! payloads (filler bytes here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod services;

use common::*;
use missive_proto::v1::link_service_client::LinkServiceClient;
use missive_proto::v1::*;
use rand::RngCore;
use rand::rngs::OsRng;
use tonic::transport::Channel;
use tonic::{Code, Request};

const OFFER_LEN: usize = 1216;
const MAX_HELLO: usize = 64 * 1024;
const MAX_FINISH: usize = 1024 * 1024;
const TTL_MS: u64 = 10 * 60 * 1000;

fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, says: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} does not say {says:?}",
        status.message()
    );
}

fn links(channel: &Channel) -> LinkServiceClient<Channel> {
    LinkServiceClient::new(channel.clone())
        .max_decoding_message_size(4 * 1024 * 1024)
        .max_encoding_message_size(4 * 1024 * 1024)
}

fn fresh_rendezvous() -> Vec<u8> {
    let mut id = vec![0u8; 32];
    OsRng.fill_bytes(&mut id);
    id
}

fn post(rendezvous: &[u8], slot: LinkSlot, payload: &[u8]) -> PostLinkRequest {
    PostLinkRequest {
        rendezvous: rendezvous.to_vec(),
        slot: slot as i32,
        payload: payload.to_vec(),
    }
}

fn get(rendezvous: &[u8]) -> GetLinkRequest {
    GetLinkRequest {
        rendezvous: rendezvous.to_vec(),
    }
}

/// Opens a fresh mailbox with a filler offer; its rendezvous id.
async fn open(channel: &Channel) -> Vec<u8> {
    let rendezvous = fresh_rendezvous();
    let before = missive_server::time::now_ms();
    let expires = links(channel)
        .open_link(OpenLinkRequest {
            rendezvous: rendezvous.clone(),
            offer: vec![7; OFFER_LEN],
        })
        .await
        .unwrap()
        .into_inner()
        .expires_at_ms;
    let after = missive_server::time::now_ms();
    assert!((before + TTL_MS..=after + TTL_MS).contains(&expires));
    rendezvous
}

#[tokio::test]
async fn a_link_runs_hello_reply_finish_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let mut new_device = links(&channel);

    let rendezvous = open(&channel).await;
    let seen = new_device.get_link(get(&rendezvous)).await.unwrap();
    let seen = seen.into_inner();
    assert_eq!(seen.offer, vec![7; OFFER_LEN]);
    assert!(seen.hello.is_empty() && seen.reply.is_empty() && seen.finish.is_empty());
    let expires = seen.expires_at_ms;

    // The primary reads the offer and answers, signed in.
    let primary = links(&channel);
    let mut primary_as_alice = primary.clone();
    primary_as_alice
        .post_link(alice.req(post(&rendezvous, LinkSlot::Hello, &[1; MAX_HELLO])))
        .await
        .unwrap();
    let seen = new_device
        .get_link(get(&rendezvous))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.hello, vec![1; MAX_HELLO]);
    assert!(seen.reply.is_empty() && seen.finish.is_empty());

    // The new device replies without an account.
    new_device
        .post_link(post(&rendezvous, LinkSlot::Reply, b"sealed reply"))
        .await
        .unwrap();
    // The primary finishes with the largest payload allowed.
    primary_as_alice
        .post_link(alice.req(post(&rendezvous, LinkSlot::Finish, &vec![3; MAX_FINISH])))
        .await
        .unwrap();
    let seen = new_device
        .get_link(get(&rendezvous))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.offer, vec![7; OFFER_LEN]);
    assert_eq!(seen.hello, vec![1; MAX_HELLO]);
    assert_eq!(seen.reply, b"sealed reply");
    assert_eq!(seen.finish, vec![3; MAX_FINISH]);
    assert_eq!(seen.expires_at_ms, expires);

    // Closed: gone at once, and closing again is fine.
    for _ in 0..2 {
        new_device
            .close_link(CloseLinkRequest {
                rendezvous: rendezvous.clone(),
            })
            .await
            .unwrap();
    }
    refused(
        new_device.get_link(get(&rendezvous)).await,
        Code::NotFound,
        "there is no such link",
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_slot_is_written_once_in_order_by_the_right_poster() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let mallory = register(&channel, "mallory", 0, 0).await;
    let mut client = links(&channel);
    let rendezvous = open(&channel).await;

    // The same rendezvous id cannot be opened twice.
    refused(
        client
            .open_link(OpenLinkRequest {
                rendezvous: rendezvous.clone(),
                offer: vec![8; OFFER_LEN],
            })
            .await,
        Code::AlreadyExists,
        "in use",
    );
    // Nothing before HELLO; HELLO needs a token.
    refused(
        client
            .post_link(post(&rendezvous, LinkSlot::Reply, b"r"))
            .await,
        Code::FailedPrecondition,
        "the link is not at that step yet",
    );
    refused(
        client
            .post_link(alice.req(post(&rendezvous, LinkSlot::Finish, b"f")))
            .await,
        Code::FailedPrecondition,
        "the link is not at that step yet",
    );
    refused(
        client
            .post_link(post(&rendezvous, LinkSlot::Hello, b"h"))
            .await,
        Code::Unauthenticated,
        "bearer token",
    );
    refused(
        client
            .post_link(authed(&[9; 32], post(&rendezvous, LinkSlot::Hello, b"h")))
            .await,
        Code::Unauthenticated,
        "unknown or expired",
    );
    client
        .post_link(alice.req(post(&rendezvous, LinkSlot::Hello, b"alice's hello")))
        .await
        .unwrap();
    // A second primary with the same code, or the first again, is refused.
    for user in [&mallory, &alice] {
        refused(
            client
                .post_link(user.req(post(&rendezvous, LinkSlot::Hello, b"again")))
                .await,
            Code::FailedPrecondition,
            "this link code was already used",
        );
    }
    refused(
        client
            .post_link(alice.req(post(&rendezvous, LinkSlot::Finish, b"f")))
            .await,
        Code::FailedPrecondition,
        "the link is not at that step yet",
    );
    client
        .post_link(post(&rendezvous, LinkSlot::Reply, b"reply"))
        .await
        .unwrap();
    refused(
        client
            .post_link(post(&rendezvous, LinkSlot::Reply, b"again"))
            .await,
        Code::FailedPrecondition,
        "this link code was already used",
    );
    // FINISH needs a token, and the HELLO's account.
    refused(
        client
            .post_link(post(&rendezvous, LinkSlot::Finish, b"f"))
            .await,
        Code::Unauthenticated,
        "bearer token",
    );
    refused(
        client
            .post_link(mallory.req(post(&rendezvous, LinkSlot::Finish, b"f")))
            .await,
        Code::PermissionDenied,
        "the account that posted HELLO",
    );
    client
        .post_link(alice.req(post(&rendezvous, LinkSlot::Finish, b"finish")))
        .await
        .unwrap();
    refused(
        client
            .post_link(alice.req(post(&rendezvous, LinkSlot::Finish, b"again")))
            .await,
        Code::FailedPrecondition,
        "this link code was already used",
    );
    let seen = client
        .get_link(get(&rendezvous))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (seen.hello, seen.reply, seen.finish),
        (
            b"alice's hello".to_vec(),
            b"reply".to_vec(),
            b"finish".to_vec()
        )
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_sizes_slots_and_unknown_mailboxes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let mut client = links(&channel);

    // Rendezvous ids of the wrong length, in every call.
    for len in [0, 16, 31, 33, 64] {
        let bad = vec![1u8; len];
        let says = "the rendezvous id must be 32 bytes";
        refused(
            client
                .open_link(OpenLinkRequest {
                    rendezvous: bad.clone(),
                    offer: vec![7; OFFER_LEN],
                })
                .await,
            Code::InvalidArgument,
            says,
        );
        refused(
            client.get_link(get(&bad)).await,
            Code::InvalidArgument,
            says,
        );
        refused(
            client.post_link(post(&bad, LinkSlot::Reply, b"r")).await,
            Code::InvalidArgument,
            says,
        );
        refused(
            client
                .close_link(CloseLinkRequest { rendezvous: bad })
                .await,
            Code::InvalidArgument,
            says,
        );
    }
    // Offers of the wrong size.
    for len in [0, 32, OFFER_LEN - 1, OFFER_LEN + 1] {
        refused(
            client
                .open_link(OpenLinkRequest {
                    rendezvous: fresh_rendezvous(),
                    offer: vec![7; len],
                })
                .await,
            Code::InvalidArgument,
            "the offer must be 1216 bytes",
        );
    }
    // Unknown mailboxes.
    let unknown = fresh_rendezvous();
    refused(
        client.get_link(get(&unknown)).await,
        Code::NotFound,
        "there is no such link",
    );
    refused(
        client
            .post_link(alice.req(post(&unknown, LinkSlot::Hello, b"h")))
            .await,
        Code::NotFound,
        "there is no such link",
    );
    refused(
        client
            .post_link(post(&unknown, LinkSlot::Reply, b"r"))
            .await,
        Code::NotFound,
        "there is no such link",
    );
    client
        .close_link(CloseLinkRequest {
            rendezvous: unknown,
        })
        .await
        .unwrap();

    // Payloads: empty, one byte too many for each slot, no slot.
    let rendezvous = open(&channel).await;
    for slot in [LinkSlot::Hello, LinkSlot::Reply, LinkSlot::Finish] {
        refused(
            client
                .post_link(alice.req(post(&rendezvous, slot, b"")))
                .await,
            Code::InvalidArgument,
            "payload is empty",
        );
        let max = if slot == LinkSlot::Finish {
            MAX_FINISH
        } else {
            MAX_HELLO
        };
        refused(
            client
                .post_link(alice.req(post(&rendezvous, slot, &vec![1; max + 1])))
                .await,
            Code::InvalidArgument,
            &format!("at most {max} are allowed"),
        );
    }
    for slot in [LinkSlot::Unspecified as i32, 7, -1] {
        refused(
            client
                .post_link(alice.req(PostLinkRequest {
                    rendezvous: rendezvous.clone(),
                    slot,
                    payload: b"p".to_vec(),
                }))
                .await,
            Code::InvalidArgument,
            "HELLO, REPLY or FINISH",
        );
    }
    // Nothing was written by any of that.
    let seen = client
        .get_link(get(&rendezvous))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.hello.is_empty() && seen.reply.is_empty() && seen.finish.is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleting_the_primary_account_deletes_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let mut client = links(&channel);
    let rendezvous = open(&channel).await;
    client
        .post_link(alice.req(post(&rendezvous, LinkSlot::Hello, b"h")))
        .await
        .unwrap();
    alice
        .accounts()
        .delete_account(alice.req(DeleteAccountRequest {}))
        .await
        .unwrap();
    refused(
        client.get_link(get(&rendezvous)).await,
        Code::NotFound,
        "there is no such link",
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn polling_is_rate_limited_per_address_and_the_service_is_healthy_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.rate_limits = Some(missive_server::ratelimit::RateLimits {
        link_per_ip: missive_server::ratelimit::Rate::per_hour(1, 5),
        ..Default::default()
    });
    let server = missive_server::start(config).await.unwrap();
    let channel = common::channel(&server).await;
    let rendezvous = open(&channel).await;
    let mut client = links(&channel);
    for _ in 0..5 {
        client.get_link(get(&rendezvous)).await.unwrap();
    }
    refused(
        client.get_link(get(&rendezvous)).await,
        Code::ResourceExhausted,
        "too many requests from this address",
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "missive.v1.LinkService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("unexpected reflection answer");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "missive.v1.LinkService"),
        "{list:?}"
    );
    server.shutdown().await.unwrap();
}

/// Two nodes on one PostgreSQL schema: the new device talks to node A, the
/// primary to node B (a load balancer may send them anywhere).
#[tokio::test]
async fn a_link_works_across_two_nodes_sharing_postgres() {
    let Some(schema) = services::PgSchema::create("link_nodes").await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config_a = config(dir_a.path());
    config_a.database_url = Some(schema.url());
    let node_a = missive_server::start(config_a).await.unwrap();
    let mut config_b = config(dir_b.path());
    config_b.database_url = Some(schema.url());
    // One franking key for the deployment.
    config_b.franking_keys = Some(dir_a.path().join("franking.keys"));
    let node_b = missive_server::start(config_b).await.unwrap();
    let (channel_a, channel_b) = (channel(&node_a).await, channel(&node_b).await);
    let alice = register(&channel_b, "alice", 0, 0).await;
    let mallory = register(&channel_a, "mallory", 0, 0).await;

    let rendezvous = open(&channel_a).await;
    let (mut new_device, mut primary) = (links(&channel_a), links(&channel_b));
    let seen = primary
        .get_link(get(&rendezvous))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.offer, vec![7; OFFER_LEN]);
    // Two primaries with the same code, one per node, at once.
    let (mut via_a, mut via_b) = (links(&channel_a), links(&channel_b));
    let (first, second) = tokio::join!(
        via_b.post_link(alice.req(post(&rendezvous, LinkSlot::Hello, b"alice"))),
        via_a.post_link(mallory.req(post(&rendezvous, LinkSlot::Hello, b"mallory"))),
    );
    let winner = match (first, second) {
        (Ok(_), Err(lost)) | (Err(lost), Ok(_)) => {
            assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
            new_device
                .get_link(get(&rendezvous))
                .await
                .unwrap()
                .into_inner()
                .hello
        }
        outcome => panic!("two HELLOs for one code: {outcome:?}"),
    };
    new_device
        .post_link(post(&rendezvous, LinkSlot::Reply, b"reply"))
        .await
        .unwrap();
    let (finisher, loser) = if winner == b"alice" {
        (&alice, &mallory)
    } else {
        (&mallory, &alice)
    };
    refused(
        primary
            .post_link(loser.req(post(&rendezvous, LinkSlot::Finish, b"f")))
            .await,
        Code::PermissionDenied,
        "the account that posted HELLO",
    );
    primary
        .post_link(finisher.req(post(&rendezvous, LinkSlot::Finish, b"finish")))
        .await
        .unwrap();
    assert_eq!(
        new_device
            .get_link(get(&rendezvous))
            .await
            .unwrap()
            .into_inner()
            .finish,
        b"finish"
    );
    primary
        .close_link(Request::new(CloseLinkRequest {
            rendezvous: rendezvous.clone(),
        }))
        .await
        .unwrap();
    refused(
        new_device.get_link(get(&rendezvous)).await,
        Code::NotFound,
        "there is no such link",
    );
    node_a.shutdown().await.unwrap();
    node_b.shutdown().await.unwrap();
    drop(schema);
}
