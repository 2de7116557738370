//! Hostile input over real TLS: undecodable, oversized and unknown-field
//! requests get INVALID_ARGUMENT / RESOURCE_EXHAUSTED (never INTERNAL), and a
//! panicking handler leaves the connection serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::*;
use missive_proto::v1::{ChallengePurpose, GetChallengeRequest};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends and receives raw bytes, so tests can put anything on the wire.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw(
    channel: &Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&[u8]>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let request = match token {
        Some(t) => authed(t, body),
        None => tonic::Request::new(body),
    };
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

const CHALLENGE: &str = "/missive.v1.AccountService/GetChallenge";
const SEND: &str = "/missive.v1.MessageService/Send";

#[tokio::test]
async fn hostile_requests_get_invalid_argument_or_resource_exhausted_never_internal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let valid = GetChallengeRequest {
        username: "alice".into(),
        purpose: ChallengePurpose::Login as i32,
    }
    .encode_to_vec();

    let mut nested_groups = vec![0x7b_u8; 300]; // field 15, start-group, nested 300 deep
    nested_groups.extend(std::iter::repeat_n(0x7c_u8, 300));
    let mut unknown_small = valid.clone();
    for _ in 0..10_000 {
        unknown_small.extend([0xf8, 0x06, 0x01]); // field 111, varint 1
    }
    let mut unknown_huge = valid.clone();
    unknown_huge.extend([0xfa, 0x06]); // field 111, length-delimited
    let len = 300 * 1024;
    prost::encoding::encode_varint(len as u64, &mut unknown_huge);
    unknown_huge.extend(vec![0u8; len]);

    type Case<'a> = (&'a str, &'static str, Vec<u8>, Option<&'a [u8]>, Code);
    let cases: Vec<Case<'_>> = vec![
        (
            "garbage",
            CHALLENGE,
            vec![0xff; 12],
            None,
            Code::InvalidArgument,
        ),
        (
            "truncated length",
            CHALLENGE,
            vec![0x0a, 0x20, b'a'],
            None,
            Code::InvalidArgument,
        ),
        (
            "wrong wire type",
            CHALLENGE,
            vec![0x08, 0x01],
            None,
            Code::InvalidArgument,
        ),
        (
            "string not UTF-8",
            CHALLENGE,
            vec![0x0a, 0x03, 0xff, 0xfe, 0xfd],
            None,
            Code::InvalidArgument,
        ),
        (
            "nested groups",
            CHALLENGE,
            nested_groups,
            None,
            Code::InvalidArgument,
        ),
        (
            "unknown fields, within limits, are ignored",
            CHALLENGE,
            unknown_small,
            None,
            Code::Ok,
        ),
        (
            "unknown fields beyond the size limit",
            CHALLENGE,
            unknown_huge,
            None,
            Code::ResourceExhausted,
        ),
        (
            "send beyond the size limit",
            SEND,
            vec![0u8; 2 * 1024 * 1024],
            Some(&alice.token),
            Code::ResourceExhausted,
        ),
        (
            "garbage send",
            SEND,
            vec![0xff; 64],
            Some(&alice.token),
            Code::InvalidArgument,
        ),
    ];
    for (what, path, body, token, expected) in cases {
        let code = raw(&channel, path, body, token)
            .await
            .err()
            .map_or(Code::Ok, |s| s.code());
        assert_eq!(code, expected, "{what}");
    }
    // The connection still serves.
    assert!(raw(&channel, CHALLENGE, valid, None).await.is_ok());
    server.shutdown().await.unwrap();
}

/// A diagnostic service whose every call panics, mounted only by this test.
#[derive(Clone, Debug)]
struct PanicService;

impl tonic::server::NamedService for PanicService {
    const NAME: &'static str = "missive.test.Panic";
}

impl tower::Service<http::Request<tonic::body::Body>> for PanicService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async { panic!("deliberate panic in a test handler") })
    }
}

#[tokio::test]
async fn a_panicking_handler_does_not_take_the_connection_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(
        dir.path(),
        Box::new(|routes| routes.add_service(PanicService)),
    )
    .await;
    let channel = channel(&server).await;
    let valid = GetChallengeRequest {
        username: "alice".into(),
        purpose: ChallengePurpose::Login as i32,
    }
    .encode_to_vec();
    for _ in 0..3 {
        let status = raw(&channel, "/missive.test.Panic/Boom", vec![], None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        // Same channel, same HTTP/2 connection: still serving.
        assert!(raw(&channel, CHALLENGE, valid.clone(), None).await.is_ok());
    }
    let alice = register(&channel, "alice", 0, 0).await;
    assert_eq!(alice.token.len(), 32);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limits_answer_resource_exhausted_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let rates = missive_server::ratelimit::RateLimits {
        account_per_ip: missive_server::ratelimit::Rate::per_second(1, 3),
        ..Default::default()
    };
    config.rate_limits = Some(rates);
    let server = missive_server::start(config).await.unwrap();
    let channel = channel(&server).await;
    let valid = GetChallengeRequest {
        username: "alice".into(),
        purpose: ChallengePurpose::Login as i32,
    }
    .encode_to_vec();
    let mut refused = None;
    for _ in 0..10 {
        if let Err(status) = raw(&channel, CHALLENGE, valid.clone(), None).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("no rate limit hit after 10 rapid challenges");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("too many requests"),
        "{}",
        status.message()
    );
    server.shutdown().await.unwrap();
}
