//! One-time prekeys drained by other users' first contacts are refilled by
//! the owner's client once the server holds fewer than the threshold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use missive_crypto::{
    DeviceEntry, DeviceList, IdentityKeyPair, KemPrekeyPair, PrekeyOwner, SignedPrekeyPair,
    transcript,
};
use missive_e2e::{Server, User};
use missive_proto::v1::{
    self, account_service_client::AccountServiceClient, key_service_client::KeyServiceClient,
};
use rand::rngs::OsRng;
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn find_u64(v: &Value, key: &str) -> Option<u64> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| m.values().find_map(|x| find_u64(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_u64(x, key)),
        _ => None,
    }
}

fn one_time_left(server: &Server, user: &str) -> u64 {
    let out = server.admin(&["export-account", user]).unwrap();
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    find_u64(&json, "one_time_prekeys").unwrap()
}

async fn channel(server: &Server) -> Channel {
    let pem = std::fs::read(server.ca()).unwrap();
    Endpoint::from_shared(server.url().to_owned())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Registers `name` directly over gRPC and returns its bearer token.
async fn raw_account(channel: Channel, name: &str) -> String {
    // The name the generated certificate is valid for (as is 127.0.0.1).
    const SERVER_NAME: &str = "localhost";
    let account_key = IdentityKeyPair::generate(&mut OsRng);
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let owner = PrekeyOwner {
        account: account_key.public().clone(),
        device_id: 1,
    };
    let spk = SignedPrekeyPair::generate(&mut OsRng, 1, &identity, &owner);
    let kem = KemPrekeyPair::generate(&mut OsRng, 1, &identity, &owner);
    let signed_device_list = DeviceList {
        username: name.to_ascii_lowercase(),
        version: 1,
        timestamp_ms: 0,
        devices: vec![DeviceEntry::link(
            &identity,
            &name.to_ascii_lowercase(),
            account_key.public(),
            1,
            7,
        )],
    }
    .sign(&account_key)
    .unwrap()
    .to_bytes();
    let mut account = AccountServiceClient::new(channel);
    let challenge = account
        .get_challenge(v1::GetChallengeRequest {
            username: name.into(),
            purpose: v1::ChallengePurpose::Register as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .challenge;
    let signature = account_key.sign(&transcript::registration(&challenge, SERVER_NAME, name, 7));
    let (spk, kem) = (spk.public(), kem.public());
    let resp = account
        .register(v1::RegisterRequest {
            username: name.into(),
            challenge,
            identity: Some(v1::PublicIdentity {
                signing_key: account_key.public().signing_key().to_vec(),
            }),
            device_identity: Some(v1::PublicIdentity {
                signing_key: identity.public().signing_key().to_vec(),
            }),
            signed_device_list,
            server_name: SERVER_NAME.into(),
            registration_id: 7,
            signed_prekey: Some(v1::SignedPrekey {
                id: spk.id,
                public_key: spk.public_key.to_vec(),
                signature: spk.signature.to_vec(),
            }),
            last_resort_kem_prekey: Some(v1::KemPrekey {
                id: kem.id,
                public_key: kem.public_key.clone(),
                signature: kem.signature.to_vec(),
            }),
            one_time_prekeys: vec![],
            one_time_kem_prekeys: vec![],
            signature: signature.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = resp.session.unwrap().token;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

async fn signed_prekey_id(ch: Channel, token: &str, user: &str) -> u32 {
    let mut req = tonic::Request::new(v1::GetBundlesRequest {
        username: user.into(),
        device_id: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let bundles = KeyServiceClient::new(ch)
        .get_bundles(req)
        .await
        .unwrap()
        .into_inner()
        .bundles;
    bundles[0].signed_prekey.as_ref().unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn drained_one_time_prekeys_are_refilled() {
    let root = tempfile::tempdir().unwrap();
    // The per-target limits (see the next test) stop a drain at 30 fetches;
    // this test is about the refill, so it lifts them.
    let server = Server::start_with(
        &root.path().join("data"),
        &root.path().join("log"),
        &["--disable-rate-limits"],
    )
    .unwrap();
    let bob = User::new(root.path(), "bob");
    bob.ok(&server, &["register", "bob"]).unwrap();
    assert_eq!(one_time_left(&server, "bob"), 100);

    let ch = channel(&server).await;
    let token = raw_account(ch.clone(), "drainer").await;
    let mut keys = KeyServiceClient::new(ch);
    for _ in 0..85 {
        let mut req = tonic::Request::new(v1::GetBundlesRequest {
            username: "bob".into(),
            device_id: 0,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let bundles = keys.get_bundles(req).await.unwrap().into_inner().bundles;
        assert!(bundles[0].one_time_prekey.is_some());
    }
    assert_eq!(one_time_left(&server, "bob"), 15);

    // Bob's next receive notices the low count and uploads fresh keys.
    bob.ok(&server, &["recv"]).unwrap();
    assert_eq!(one_time_left(&server, "bob"), 100);
    // Above the threshold nothing more is uploaded.
    bob.ok(&server, &["recv"]).unwrap();
    assert_eq!(one_time_left(&server, "bob"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn signed_prekey_rotation_keeps_old_and_new_first_contacts_working() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"), &root.path().join("log")).unwrap();
    let bob = User::new(root.path(), "bob");
    let alice = User::new(root.path(), "alice");
    let dave = User::new(root.path(), "dave");
    for u in [&bob, &alice, &dave] {
        u.ok(&server, &["register", &u.name]).unwrap();
    }
    // In flight under the old signed prekey.
    alice
        .ok(&server, &["send", "bob", "sent before rotation"])
        .unwrap();

    let config = missive_client::ServerConfig {
        url: server.url().to_owned(),
        ca: Some(server.ca()),
    };
    let ch = channel(&server).await;
    let token = raw_account(ch.clone(), "observer").await;
    let spk_before = signed_prekey_id(ch.clone(), &token, "bob").await;
    let mut client = missive_client::Client::open(&bob.home, config).unwrap();
    client.rotate_signed_prekeys().await.unwrap();
    drop(client);
    let spk_after = signed_prekey_id(ch, &token, "bob").await;
    assert_ne!(
        spk_before, spk_after,
        "the server still hands out the old signed prekey"
    );

    // A first contact after rotation uses the new signed prekey.
    dave.ok(&server, &["send", "bob", "sent after rotation"])
        .unwrap();
    let r = bob.ok(&server, &["recv", "--json"]).unwrap();
    let got: Vec<String> = r
        .json_lines()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["sent before rotation", "sent after rotation"]);
}

/// Issue 17, item 3 (client side): when the server says an account's
/// one-time prekeys are being fetched faster than the per-target limit
/// allows, the owner's client says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_owner_is_told_when_its_prekeys_are_being_drained() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"), &root.path().join("log")).unwrap();
    let bob = User::new(root.path(), "bob");
    bob.ok(&server, &["register", "bob"]).unwrap();
    let quiet = bob.ok(&server, &["recv"]).unwrap();
    assert!(
        !quiet.stderr.contains("unusually often"),
        "{}",
        quiet.stderr
    );

    let ch = channel(&server).await;
    let mut without_one_time = 0;
    for d in 0..4 {
        let token = raw_account(ch.clone(), &format!("drainer{d}")).await;
        let mut keys = KeyServiceClient::new(ch.clone());
        for _ in 0..10 {
            let mut req = tonic::Request::new(v1::GetBundlesRequest {
                username: "bob".into(),
                device_id: 0,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let bundles = keys.get_bundles(req).await.unwrap().into_inner().bundles;
            if bundles[0].one_time_prekey.is_none() {
                without_one_time += 1;
            }
        }
    }
    assert!(
        without_one_time > 0,
        "the per-target limit held back no one-time prekey"
    );
    assert!(one_time_left(&server, "bob") >= 60);
    let warned = bob.ok(&server, &["recv"]).unwrap();
    assert!(
        warned.stderr.contains("unusually often"),
        "{}",
        warned.stderr
    );
}
