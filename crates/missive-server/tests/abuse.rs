//! Limits an abuser cannot turn against others (issue 17): client addresses
//! behind proxies and IPv6 /64s, login attempts per (username, source),
//! prekey fetches per target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;

use common::*;
use hyper_util::rt::TokioIo;
use missive_proto::v1::account_service_client::AccountServiceClient;
use missive_proto::v1::*;
use missive_server::RunningServer;
use missive_server::proxy::TrustedProxies;
use missive_server::ratelimit::{Rate, RateLimits};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A PROXY protocol v1 header naming `client`.
fn v1(client: &str) -> Vec<u8> {
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let local = if client.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {family} {client} {local} 40000 7443\r\n").into_bytes()
}

/// A PROXY protocol v2 header naming an IPv4 `client`.
fn v2(client: &str) -> Vec<u8> {
    let IpAddr::V4(ip) = client.parse::<IpAddr>().unwrap() else {
        panic!("v2 helper is IPv4 only")
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&ip.octets());
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&7443u16.to_be_bytes());
    header
}

/// A TLS channel whose TCP connection starts with `header`.
async fn connect_with(server: &RunningServer, header: Vec<u8>) -> Result<Channel, String> {
    let addr = server.local_addr();
    let ca = std::fs::read(server.ca_path().unwrap()).unwrap();
    Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let header = header.clone();
            async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.write_all(&header).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tcp))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn challenge_status(channel: &Channel) -> Result<(), Code> {
    AccountServiceClient::new(channel.clone())
        .get_challenge(GetChallengeRequest {
            username: "anyone".into(),
            purpose: ChallengePurpose::Login as i32,
        })
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

async fn start_with_rates(
    dir: &std::path::Path,
    proxies: &str,
    rates: RateLimits,
) -> RunningServer {
    let mut config = config(dir);
    config.proxy_protocol_from = TrustedProxies::parse(proxies).unwrap();
    config.rate_limits = Some(rates);
    missive_server::start(config).await.unwrap()
}

/// Issue 17.6: from a trusted peer the PROXY header (v1 or v2) names the
/// client whose budget is charged; IPv6 clients share one budget per /64; a
/// trusted peer must send a header; without the setting no header is
/// accepted.
#[tokio::test]
async fn proxy_protocol_names_the_client_and_ipv6_counts_by_64() {
    let dir = tempfile::tempdir().unwrap();
    let rates = RateLimits {
        account_per_ip: Rate::per_hour(1, 3),
        ..Default::default()
    };
    let server = start_with_rates(dir.path(), "127.0.0.1", rates).await;
    let exhaust = |channel: Channel| async move {
        for _ in 0..3 {
            challenge_status(&channel).await.unwrap();
        }
        assert_eq!(
            challenge_status(&channel).await,
            Err(Code::ResourceExhausted)
        );
    };
    exhaust(connect_with(&server, v1("203.0.113.1")).await.unwrap()).await;
    // The same client through another connection is the same budget …
    let again = connect_with(&server, v2("203.0.113.1")).await.unwrap();
    assert_eq!(challenge_status(&again).await, Err(Code::ResourceExhausted));
    // … another client is not.
    let other = connect_with(&server, v2("198.51.100.2")).await.unwrap();
    challenge_status(&other).await.unwrap();
    // IPv6: one /64 is one client, whichever address it uses.
    exhaust(connect_with(&server, v1("2001:db8:1:2::1")).await.unwrap()).await;
    let rotated = connect_with(&server, v1("2001:db8:1:2:dead:beef:0:1"))
        .await
        .unwrap();
    assert_eq!(
        challenge_status(&rotated).await,
        Err(Code::ResourceExhausted)
    );
    let neighbour = connect_with(&server, v1("2001:db8:1:3::1")).await.unwrap();
    challenge_status(&neighbour).await.unwrap();
    // A trusted peer that sends no header is not served.
    assert!(connect_with(&server, Vec::new()).await.is_err());
    server.shutdown().await.unwrap();

    // Off by default: a client cannot claim an address.
    let dir = tempfile::tempdir().unwrap();
    let server = missive_server::start(config(dir.path())).await.unwrap();
    assert!(
        connect_with(&server, v1("203.0.113.9")).await.is_err(),
        "a PROXY header was accepted without --proxy-protocol-from"
    );
    server.shutdown().await.unwrap();
}

/// Issue 17.6: `x-forwarded-for` counts only from a trusted proxy.
#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let rates = RateLimits {
        account_per_ip: Rate::per_hour(1, 2),
        ..Default::default()
    };
    let challenge = |channel: Channel, client: &'static str| async move {
        let mut request = tonic::Request::new(GetChallengeRequest {
            username: "anyone".into(),
            purpose: ChallengePurpose::Login as i32,
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        AccountServiceClient::new(channel)
            .get_challenge(request)
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    };
    for (trusted, other_client_served) in [(true, true), (false, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.rate_limits = Some(rates);
        if trusted {
            config.trusted_proxies = TrustedProxies::parse("127.0.0.0/8").unwrap();
        }
        let server = missive_server::start(config).await.unwrap();
        let channel = channel(&server).await;
        for _ in 0..2 {
            challenge(channel.clone(), "203.0.113.5").await.unwrap();
        }
        assert_eq!(
            challenge(channel.clone(), "203.0.113.5").await,
            Err(Code::ResourceExhausted)
        );
        assert_eq!(
            challenge(channel.clone(), "198.51.100.8").await.is_ok(),
            other_client_served,
            "trusted = {trusted}"
        );
        server.shutdown().await.unwrap();
    }
}

/// Issue 17.2: an attacker failing logins for a username at the allowed
/// rate exhausts only their own budget; the owner, elsewhere, still logs in.
#[tokio::test]
async fn failing_logins_cannot_lock_the_owner_out() {
    let dir = tempfile::tempdir().unwrap();
    let rates = RateLimits {
        account_per_ip: Rate::per_hour(1, 1000),
        login_per_account_and_ip: Rate::per_hour(1, 5),
        ..Default::default()
    };
    let server = start_with_rates(dir.path(), "127.0.0.1", rates).await;
    let home = connect_with(&server, v1("198.51.100.7")).await.unwrap();
    let mut owner = register(&home, "victim", 0, 0).await;
    let attacker = connect_with(&server, v1("203.0.113.66")).await.unwrap();
    let mut refused = None;
    for _ in 0..10 {
        let challenge = challenge(&attacker, "victim", ChallengePurpose::Login).await;
        let status = AccountServiceClient::new(attacker.clone())
            .login(LoginRequest {
                username: "victim".into(),
                device_id: 1,
                challenge,
                signature: vec![0; 64],
                server_name: SERVER_NAME.into(),
            })
            .await
            .unwrap_err();
        if status.code() == Code::ResourceExhausted {
            refused = Some(status);
            break;
        }
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let refused = refused.expect("the attacker was never limited");
    assert!(
        refused.message().contains("too many requests"),
        "{refused:?}"
    );
    // The owner, from home, is not affected.
    owner.channel = home;
    let token = login(&owner).await;
    assert_eq!(token.len(), 32);
    server.shutdown().await.unwrap();
}

async fn fetch(requester: &User, target: &str) -> Result<GetBundlesResponse, tonic::Status> {
    requester
        .keys()
        .get_bundles(requester.req(GetBundlesRequest {
            username: target.into(),
            device_id: 0,
        }))
        .await
        .map(|r| r.into_inner())
}

/// Issue 17.3: one requester cannot drain a user's one-time prekeys, many
/// together stop consuming them at the per-target limit, and the owner's
/// prekey count says its keys are being drained.
#[tokio::test]
async fn prekeys_cannot_be_drained_and_their_owner_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let rates = RateLimits {
        bundles_per_pair: Rate::per_hour(1, 2),
        bundles_per_target: Rate::per_hour(1, 4),
        ..Default::default()
    };
    let server = start_with_rates(dir.path(), "", rates).await;
    let channel = channel(&server).await;
    let victim = register(&channel, "victim", 20, 20).await;
    let a = register(&channel, "drainer-a", 0, 0).await;
    let b = register(&channel, "drainer-b", 0, 0).await;
    let c = register(&channel, "drainer-c", 0, 0).await;
    for _ in 0..2 {
        let bundle = fetch(&a, "victim").await.unwrap().bundles.remove(0);
        assert!(bundle.one_time_prekey.is_some());
    }
    let status = fetch(&a, "victim").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for _ in 0..2 {
        assert!(
            fetch(&b, "victim").await.unwrap().bundles[0]
                .one_time_prekey
                .is_some()
        );
    }
    // Past the per-target limit sessions still start, on the last-resort keys.
    let bundle = fetch(&c, "victim").await.unwrap().bundles.remove(0);
    assert!(bundle.one_time_prekey.is_none());
    assert!(bundle.kem_prekey_is_last_resort);
    let count = victim
        .keys()
        .get_prekey_count(victim.req(GetPrekeyCountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.one_time_prekeys, 16);
    assert_eq!(count.one_time_kem_prekeys, 16);
    assert_eq!(count.one_time_prekeys_taken_last_hour, 4);
    assert!(count.drained_recently);
    // Other users' counts are untouched.
    let quiet = a
        .keys()
        .get_prekey_count(a.req(GetPrekeyCountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!quiet.drained_recently);
    server.shutdown().await.unwrap();
}
