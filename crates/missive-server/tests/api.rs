//! Integration tests against a real node over real TLS on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{KemPrekeyPublic, PublicIdentity, SignedPrekeyPublic, StorageKey};
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::*;
use missive_server::storage::{self, OpenMode};
use prost::Message;
use rand::rngs::OsRng;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

fn message_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut id);
    id
}

/// What the client would put in an envelope for `text`: an encrypted
/// `Content` and its franking commitment. (The AEAD is missive-crypto's
/// `seal`; real clients use a ratchet session, which the server cannot tell apart.)
struct Sealed {
    id: Vec<u8>,
    key: FrankingKey,
    commitment: [u8; 32],
    ciphertext: Vec<u8>,
}

fn seal(shared: &StorageKey, text: &str) -> Sealed {
    let id = message_id();
    let key = FrankingKey::generate(&mut OsRng);
    let commitment = franking::commit(&key, &id, text.as_bytes());
    let content = Content {
        body: Some(content::Body::Text(TextMessage {
            body: text.into(),
            sent_at_ms: 1,
            ..Default::default()
        })),
        attachment: None,
        franking_key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let ciphertext =
        missive_crypto::seal(&mut OsRng, shared, &content.encode_to_vec(), &commitment);
    Sealed {
        id,
        key,
        commitment,
        ciphertext,
    }
}

fn send_request(to: &User, registration_id: u32, sealed: &Sealed) -> SendRequest {
    SendRequest {
        recipient: to.username.clone(),
        message_id: sealed.id.clone(),
        envelopes: vec![OutgoingEnvelope {
            device_id: 1,
            registration_id,
            r#type: EnvelopeType::Message as i32,
            content: sealed.ciphertext.clone(),
            franking_commitment: sealed.commitment.to_vec(),
        }],
        ..Default::default()
    }
}

async fn send(from: &User, to: &User, sealed: &Sealed) -> Result<u64, Status> {
    from.messages()
        .send(from.req(send_request(to, to.registration_id, sealed)))
        .await
        .map(|r| r.into_inner().server_timestamp_ms)
}

async fn open_stream(user: &User) -> Streaming<ReceiveResponse> {
    user.messages()
        .receive(user.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner()
}

/// Reads the backlog up to `QueueEmpty`.
async fn backlog(stream: &mut Streaming<ReceiveResponse>) -> Vec<Envelope> {
    let mut out = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stream stalled")
            .expect("stream ended")
            .unwrap();
        match item.item.unwrap() {
            Item::Envelope(e) => out.push(e),
            Item::QueueEmpty(_) => return out,
            Item::GroupMessage(g) => panic!("a group message in a 1:1 test: {g:?}"),
        }
    }
}

async fn pending(user: &User) -> Vec<Envelope> {
    backlog(&mut open_stream(user).await).await
}

async fn codes_for(user: &User, token: Option<&[u8]>) -> Vec<(&'static str, Code)> {
    fn req<T>(token: Option<&[u8]>, m: T) -> tonic::Request<T> {
        match token {
            Some(t) => authed(t, m),
            None => tonic::Request::new(m),
        }
    }
    let code = |r: Result<(), Status>| r.err().map_or(Code::Ok, |s| s.code());
    let (a, k, m, r) = (
        user.accounts(),
        user.keys(),
        user.messages(),
        user.reports(),
    );
    vec![
        (
            "DeleteAccount",
            code(
                a.clone()
                    .delete_account(req(token, DeleteAccountRequest {}))
                    .await
                    .map(drop),
            ),
        ),
        (
            "UploadPrekeys",
            code(
                k.clone()
                    .upload_prekeys(req(token, UploadPrekeysRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetPrekeyCount",
            code(
                k.clone()
                    .get_prekey_count(req(token, GetPrekeyCountRequest {}))
                    .await
                    .map(drop),
            ),
        ),
        (
            "ReplaceSignedPrekeys",
            code(
                k.clone()
                    .replace_signed_prekeys(req(token, ReplaceSignedPrekeysRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetBundles",
            code(
                k.clone()
                    .get_bundles(req(
                        token,
                        GetBundlesRequest {
                            username: user.username.clone(),
                            device_id: 0,
                        },
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Send",
            code(
                m.clone()
                    .send(req(token, SendRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Receive",
            code(
                m.clone()
                    .receive(req(token, ReceiveRequest {}))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Acknowledge",
            code(
                m.clone()
                    .acknowledge(req(
                        token,
                        AcknowledgeRequest {
                            envelope_ids: vec![1],
                            group_acks: Vec::new(),
                        },
                    ))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Report",
            code(
                r.clone()
                    .report(req(token, ReportRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
    ]
}

#[tokio::test]
async fn every_authenticated_method_refuses_missing_forged_and_expired_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 1, 1).await;

    // An expired token for alice, planted directly in the store.
    let store = storage::open(&server_db(dir.path()), OpenMode::Existing)
        .await
        .unwrap();
    let principal = store
        .authenticate(&sha256(&alice.token), missive_server::time::now_ms())
        .await
        .unwrap()
        .unwrap();
    let expired = missive_server::auth::Token::generate();
    store
        .insert_token(&expired.hash(), principal.address, 1, 0)
        .await
        .unwrap();
    let forged = [7u8; 32];

    for (label, token) in [
        ("missing", None),
        ("forged", Some(&forged[..])),
        ("expired", Some(&expired.as_bytes()[..])),
        ("wrong length", Some(&forged[..16])),
    ] {
        for (method, code) in codes_for(&alice, token).await {
            assert_eq!(
                code,
                Code::Unauthenticated,
                "{method} with a {label} token answered {code:?}"
            );
        }
    }
    // A malformed header too.
    let mut request = tonic::Request::new(GetPrekeyCountRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer !!".parse().unwrap());
    assert_eq!(
        alice
            .keys()
            .get_prekey_count(request)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // And the real token works everywhere it is checked.
    let count = alice
        .keys()
        .get_prekey_count(alice.req(GetPrekeyCountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((count.one_time_prekeys, count.one_time_kem_prekeys), (1, 1));
    server.shutdown().await.unwrap();
}

fn server_db(dir: &std::path::Path) -> String {
    missive_server::server::default_database_url(dir)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[tokio::test]
async fn registration_and_login_need_fresh_challenges_and_real_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let mut accounts =
        missive_proto::v1::account_service_client::AccountServiceClient::new(channel.clone());

    let account = missive_crypto::IdentityKeyPair::generate(&mut OsRng);
    let identity = missive_crypto::IdentityKeyPair::generate(&mut OsRng);
    let request = registration(&channel, "carol", &account, &identity, 2, 2).await;
    accounts.register(request.clone()).await.unwrap();
    // Replaying the same request: the challenge is spent.
    let replay = accounts.register(request.clone()).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated, "{replay:?}");
    // Case-folded and unique.
    let again = registration(&channel, "Carol", &account, &identity, 0, 0).await;
    assert_eq!(
        accounts.register(again).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // A signature by another key.
    let other = missive_crypto::IdentityKeyPair::generate(&mut OsRng);
    let mut forged = registration(&channel, "dave", &account, &identity, 0, 0).await;
    forged.signature = other
        .sign(&missive_crypto::transcript::registration(
            &forged.challenge,
            SERVER_NAME,
            "dave",
            forged.registration_id,
        ))
        .to_vec();
    assert_eq!(
        accounts.register(forged).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // The registration signed by the device key instead of the account key.
    let mut by_device = registration(&channel, "dave", &account, &identity, 0, 0).await;
    by_device.signature = identity
        .sign(&missive_crypto::transcript::registration(
            &by_device.challenge,
            SERVER_NAME,
            "dave",
            by_device.registration_id,
        ))
        .to_vec();
    assert_eq!(
        accounts.register(by_device).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // A prekey signed by another identity, by the account key, or for
    // another device id.
    for (key, device) in [(&other, 1), (&account, 1), (&identity, 2)] {
        let mut bad_prekey = registration(&channel, "dave", &account, &identity, 0, 0).await;
        bad_prekey.signed_prekey = Some(signed_prekey(key, &owner(&account, device), 1));
        let status = accounts.register(bad_prekey).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("signed prekey"),
            "{}",
            status.message()
        );
    }
    let mut bad_prekey = registration(&channel, "dave", &account, &identity, 0, 0).await;
    bad_prekey.last_resort_kem_prekey = Some(kem_prekey(&identity, &owner(&other, 1), 1000));
    let status = accounts.register(bad_prekey).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("KEM prekey"),
        "{}",
        status.message()
    );
    // A bad username.
    let status = accounts
        .get_challenge(GetChallengeRequest {
            username: "no spaces".into(),
            purpose: ChallengePurpose::Register as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Login: a good signature gets a working token, a register challenge or a bad signature does not.
    let user = User {
        username: "carol".into(),
        account,
        identity,
        device_id: 1,
        registration_id: 1234,
        token: vec![],
        channel: channel.clone(),
    };
    let token = login(&user).await;
    assert_eq!(token.len(), 32);
    assert!(
        user.keys()
            .get_prekey_count(authed(&token, GetPrekeyCountRequest {}))
            .await
            .is_ok()
    );
    let wrong_purpose = common::challenge(&channel, "carol", ChallengePurpose::Register).await;
    let signature = user.identity.sign(&missive_crypto::transcript::login(
        &wrong_purpose,
        SERVER_NAME,
        "carol",
        1,
    ));
    let status = accounts
        .login(LoginRequest {
            username: "carol".into(),
            device_id: 1,
            challenge: wrong_purpose,
            signature: signature.to_vec(),
            server_name: SERVER_NAME.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let fresh = common::challenge(&channel, "carol", ChallengePurpose::Login).await;
    let signature = other.sign(&missive_crypto::transcript::login(
        &fresh,
        SERVER_NAME,
        "carol",
        1,
    ));
    let status = accounts
        .login(LoginRequest {
            username: "carol".into(),
            device_id: 1,
            challenge: fresh,
            signature: signature.to_vec(),
            server_name: SERVER_NAME.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // The account key is not a device key: it cannot log in.
    let fresh = common::challenge(&channel, "carol", ChallengePurpose::Login).await;
    let signature = user.account.sign(&missive_crypto::transcript::login(
        &fresh,
        SERVER_NAME,
        "carol",
        1,
    ));
    let status = accounts
        .login(LoginRequest {
            username: "carol".into(),
            device_id: 1,
            challenge: fresh,
            signature: signature.to_vec(),
            server_name: SERVER_NAME.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_time_prekeys_are_handed_out_once_then_last_resort() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 3, 2).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let identity = PublicIdentity::from_bytes(&wire_identity(&alice.identity).signing_key).unwrap();
    let alice_owner = owner(&alice.account, 1);

    let mut one_time_ids = std::collections::HashSet::new();
    let mut kem_ids = std::collections::HashSet::new();
    for round in 0..5 {
        let response = bob
            .keys()
            .get_bundles(bob.req(GetBundlesRequest {
                username: "ALICE".into(),
                device_id: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.bundles.len(), 1);
        let bundle = &response.bundles[0];
        assert_eq!(bundle.registration_id, alice.registration_id);
        let spk = bundle.signed_prekey.as_ref().unwrap();
        identity
            .verify_signed_prekey(
                &SignedPrekeyPublic {
                    id: spk.id,
                    public_key: spk.public_key.clone().try_into().unwrap(),
                    signature: spk.signature.clone().try_into().unwrap(),
                },
                &alice_owner,
            )
            .unwrap();
        let kem = bundle.kem_prekey.as_ref().unwrap();
        identity
            .verify_kem_prekey(
                &KemPrekeyPublic {
                    id: kem.id,
                    public_key: kem.public_key.clone(),
                    signature: kem.signature.clone().try_into().unwrap(),
                },
                &alice_owner,
            )
            .unwrap();
        if round < 2 {
            assert!(!bundle.kem_prekey_is_last_resort);
            assert!(
                kem_ids.insert(kem.id),
                "KEM prekey {} handed out twice",
                kem.id
            );
        } else {
            assert!(bundle.kem_prekey_is_last_resort);
            assert_eq!(kem.id, 1000);
        }
        match &bundle.one_time_prekey {
            Some(key) => assert!(
                one_time_ids.insert(key.id),
                "one-time prekey {} handed out twice",
                key.id
            ),
            None => assert!(round >= 3, "ran out early"),
        }
    }
    assert_eq!(one_time_ids.len(), 3);
    let count = alice
        .keys()
        .get_prekey_count(alice.req(GetPrekeyCountRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((count.one_time_prekeys, count.one_time_kem_prekeys), (0, 0));

    // Upload bounds.
    let too_many = UploadPrekeysRequest {
        one_time_prekeys: (1..=101).map(one_time_prekey).collect(),
        ..Default::default()
    };
    assert_eq!(
        alice
            .keys()
            .upload_prekeys(alice.req(too_many))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let ok = UploadPrekeysRequest {
        one_time_prekeys: (10..20).map(one_time_prekey).collect(),
        ..Default::default()
    };
    let count = alice
        .keys()
        .upload_prekeys(alice.req(ok))
        .await
        .unwrap()
        .into_inner()
        .count
        .unwrap();
    assert_eq!(count.one_time_prekeys, 10);
    let reused = UploadPrekeysRequest {
        one_time_prekeys: vec![one_time_prekey(10)],
        ..Default::default()
    };
    assert_eq!(
        alice
            .keys()
            .upload_prekeys(alice.req(reused))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let status = bob
        .keys()
        .get_bundles(bob.req(GetBundlesRequest {
            username: "nobody".into(),
            device_id: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn envelopes_are_private_idempotent_live_and_checked_against_devices() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let eve = register(&channel, "eve", 0, 0).await;
    let shared = StorageKey::generate(&mut OsRng);

    let first = seal(&shared, "hello bob");
    let ts = send(&alice, &bob, &first).await.unwrap();
    let retry = send(&alice, &bob, &first).await.unwrap();
    assert_eq!(ts, retry, "a retry must answer the first timestamp");

    let got = pending(&bob).await;
    assert_eq!(got.len(), 1, "a retried send was stored twice");
    let envelope = &got[0];
    assert_eq!(
        (envelope.sender.as_str(), envelope.sender_device),
        ("alice", 1)
    );
    assert_eq!(envelope.content, first.ciphertext);
    assert_eq!(envelope.message_id, first.id);
    assert_eq!(
        envelope.franking_tag.len(),
        missive_server::franking::TAG_LEN
    );
    assert!(pending(&eve).await.is_empty(), "eve sees bob's envelopes");

    // Eve cannot acknowledge (delete) bob's envelope.
    eve.messages()
        .acknowledge(eve.req(AcknowledgeRequest {
            envelope_ids: vec![envelope.id],
            group_acks: Vec::new(),
        }))
        .await
        .unwrap();
    assert_eq!(pending(&bob).await.len(), 1);
    // Deleting eve's account touches only eve.
    eve.accounts()
        .delete_account(eve.req(DeleteAccountRequest {}))
        .await
        .unwrap();
    assert_eq!(pending(&bob).await.len(), 1);

    // Live delivery on an open stream.
    let mut stream = open_stream(&bob).await;
    assert_eq!(backlog(&mut stream).await.len(), 1);
    let second = seal(&shared, "are you there");
    send(&alice, &bob, &second).await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match live.item.unwrap() {
        Item::Envelope(e) => assert_eq!(e.message_id, second.id),
        other => panic!("expected an envelope, got {other:?}"),
    }
    bob.messages()
        .acknowledge(bob.req(AcknowledgeRequest {
            envelope_ids: vec![envelope.id],
            group_acks: Vec::new(),
        }))
        .await
        .unwrap();
    let left = pending(&bob).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message_id, second.id);

    // Device list checks, with the mismatch in the status details.
    let stale = alice
        .messages()
        .send(alice.req(send_request(
            &bob,
            bob.registration_id + 1,
            &seal(&shared, "x"),
        )))
        .await;
    let status = stale.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let mismatch = DeviceMismatch::decode(status.details()).unwrap();
    assert_eq!(
        mismatch,
        DeviceMismatch {
            stale_devices: vec![1],
            ..Default::default()
        }
    );
    let mut wrong_device = send_request(&bob, bob.registration_id, &seal(&shared, "x"));
    wrong_device.envelopes[0].device_id = 2;
    let status = alice
        .messages()
        .send(alice.req(wrong_device))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let mismatch = DeviceMismatch::decode(status.details()).unwrap();
    assert_eq!(
        (mismatch.missing_devices, mismatch.extra_devices),
        (vec![1], vec![2])
    );
    // Unknown recipient, oversized envelope, bad message id.
    let mut to_nobody = send_request(&bob, bob.registration_id, &seal(&shared, "x"));
    to_nobody.recipient = "nobody".into();
    assert_eq!(
        alice
            .messages()
            .send(alice.req(to_nobody))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut big = send_request(&bob, bob.registration_id, &seal(&shared, "x"));
    big.envelopes[0].content = vec![1; 96 * 1024 + 1];
    assert_eq!(
        alice
            .messages()
            .send(alice.req(big))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
    let mut bad_id = send_request(&bob, bob.registration_id, &seal(&shared, "x"));
    bad_id.message_id = vec![1; 3];
    assert_eq!(
        alice
            .messages()
            .send(alice.req(bad_id))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_mailbox_answers_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.mailbox_limit = 2;
    let server = missive_server::start(config).await.unwrap();
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let shared = StorageKey::generate(&mut OsRng);
    send(&alice, &bob, &seal(&shared, "1")).await.unwrap();
    send(&alice, &bob, &seal(&shared, "2")).await.unwrap();
    let status = send(&alice, &bob, &seal(&shared, "3")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_offline_message_is_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let mut bob = register(&channel, "bob", 0, 0).await;
    let sealed = seal(&StorageKey::generate(&mut OsRng), "while you were out");
    send(&alice, &bob, &sealed).await.unwrap();
    server.shutdown().await.unwrap();

    let server = start(dir.path()).await;
    bob.channel = common::channel(&server).await;
    let got = pending(&bob).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].content, sealed.ciphertext);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plaintext_never_reaches_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let text = "the eagle lands at midnight by the old mill";
    let sealed = seal(&StorageKey::generate(&mut OsRng), text);
    send(&alice, &bob, &sealed).await.unwrap();
    let received = pending(&bob).await;
    assert_eq!(received.len(), 1);
    // A second message, acknowledged: its ciphertext must be gone from disk.
    let acked = seal(&StorageKey::generate(&mut OsRng), "read and forgotten");
    send(&alice, &bob, &acked).await.unwrap();
    let both = pending(&bob).await;
    let acked_id = both.iter().find(|e| e.message_id == acked.id).unwrap().id;
    bob.messages()
        .acknowledge(bob.req(AcknowledgeRequest {
            envelope_ids: vec![acked_id],
            group_acks: Vec::new(),
        }))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let stored = all_bytes(dir.path());
    // The scan does find what the server holds (the ciphertext, still pending) ...
    assert!(
        contains(&stored, &sealed.ciphertext[..64]),
        "scan cannot see stored envelopes"
    );
    // ... and never the plaintext or the franking key that would open the commitment.
    assert!(
        !contains(&stored, text.as_bytes()),
        "plaintext found in the data directory"
    );
    assert!(
        !contains(&stored, sealed.key.as_bytes()),
        "franking key found in the data directory"
    );
    assert!(
        !contains(&stored, &acked.ciphertext[..64]),
        "an acknowledged envelope is still on disk"
    );
}

#[tokio::test]
async fn franking_reports_verify_and_tampered_ones_are_refused_and_exports_stay_minimal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let eve = register(&channel, "eve", 0, 0).await;
    let shared = StorageKey::generate(&mut OsRng);
    let text = "buy my totally legitimate pills";
    let sealed = seal(&shared, text);
    send(&alice, &bob, &sealed).await.unwrap();
    send(&bob, &alice, &seal(&shared, "no thanks, who is this"))
        .await
        .unwrap();
    let envelope = pending(&bob).await.remove(0);

    // The exports of two accounts that talked name neither the other nor any content.
    let store = storage::open(&server_db(dir.path()), OpenMode::Existing)
        .await
        .unwrap();
    for (me, other) in [("alice", "bob"), ("bob", "alice")] {
        let doc =
            missive_server::export::document(store.export_account(me).await.unwrap().unwrap());
        let json = serde_json::to_string(&doc).unwrap();
        assert!(!json.contains(other), "{me}'s export names {other}: {json}");
        assert!(
            !json.contains("pills") && !json.contains("thanks"),
            "content in export: {json}"
        );
        assert_eq!(doc.pending_envelopes, 1);
    }

    // Bob recovers the franking key by decrypting.
    let opened =
        missive_crypto::open(&shared, &envelope.content, &envelope.franking_commitment).unwrap();
    let content = Content::decode(opened.as_slice()).unwrap();
    let genuine = ReportRequest {
        message_id: envelope.message_id.clone(),
        sender: envelope.sender.clone(),
        server_timestamp_ms: envelope.server_timestamp_ms,
        plaintext: text.as_bytes().to_vec(),
        franking_key: content.franking_key.clone(),
        franking_commitment: envelope.franking_commitment.clone(),
        franking_tag: envelope.franking_tag.clone(),
        reason: "spam".into(),
        attachment: None,
        group_id: Vec::new(),
    };
    let mut tampered = Vec::new();
    let mut r = genuine.clone();
    r.plaintext = b"buy my totally legitimate pills!".to_vec();
    tampered.push(("altered text", r));
    let mut r = genuine.clone();
    r.franking_key = FrankingKey::generate(&mut OsRng).as_bytes().to_vec();
    tampered.push(("another franking key", r));
    let mut r = genuine.clone();
    r.franking_tag[0] ^= 1;
    tampered.push(("another tag", r));
    let mut r = genuine.clone();
    r.sender = "eve".into();
    tampered.push(("another sender", r));
    let mut r = genuine.clone();
    r.server_timestamp_ms += 1;
    tampered.push(("another timestamp", r));
    let mut r = genuine.clone();
    r.message_id[0] ^= 1;
    tampered.push(("another message id", r));
    for (what, request) in tampered {
        let status = bob.reports().report(bob.req(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // Eve cannot report a message she did not receive, even with every value.
    let status = eve
        .reports()
        .report(eve.req(genuine.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        store.reports().await.unwrap().is_empty(),
        "a refused report was stored"
    );

    let id = bob
        .reports()
        .report(bob.req(genuine))
        .await
        .unwrap()
        .into_inner()
        .report_id;
    let stored = store.report(id).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.sender.as_str(),
            stored.reporter.as_str(),
            stored.text.as_str()
        ),
        ("alice", "bob", text)
    );
    assert!(stored.verified);
    let doc =
        missive_server::export::document(store.export_account("alice").await.unwrap().unwrap());
    assert_eq!(doc.reports_about_account.len(), 1);
    assert_eq!(doc.reports_about_account[0].text, text);
    assert!(
        !serde_json::to_string(&doc).unwrap().contains("bob"),
        "the report names the reporter"
    );

    // The moderator's view, from the real binary while the server runs.
    let data = dir.path().to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_missive-server");
    let out = std::process::Command::new(bin)
        .args(["reports", "list", "--json", "--data-dir", data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["text"], text);
    assert_eq!(list[0]["sender"], "alice");
    assert_eq!(list[0]["reporter"], "bob");
    assert_eq!(list[0]["verified"], true);
    let out = std::process::Command::new(bin)
        .args(["reports", "show", &id.to_string(), "--data-dir", data])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains(text) && shown.contains("spam"),
        "{shown}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_sends_share_commits_and_each_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = std::sync::Arc::new(register(&channel, "alice", 0, 0).await);
    let bob = std::sync::Arc::new(register(&channel, "bob", 0, 0).await);
    let shared = StorageKey::generate(&mut OsRng);
    let sealed: Vec<_> = (0..200)
        .map(|i| std::sync::Arc::new(seal(&shared, &format!("message {i}"))))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, message) in sealed.iter().enumerate() {
        let (alice, bob, message) = (alice.clone(), bob.clone(), message.clone());
        tasks.spawn(async move {
            send(&alice, &bob, &message).await.unwrap();
            if i % 10 == 0 {
                send(&alice, &bob, &message).await.unwrap(); // a retry
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let got = pending(&bob).await;
    assert_eq!(got.len(), 200);
    let ids: std::collections::HashSet<_> = got.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(ids.len(), 200);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    server.shutdown().await.unwrap();
}

/// A live stream whose reader stalls falls behind the hand-off bounds
/// (`HANDOFF_MAX_ENVELOPES`/`HANDOFF_MAX_BYTES`): it re-reads the store and
/// still delivers every envelope once, in id order.
#[tokio::test]
async fn a_stream_that_falls_behind_rereads_the_store_and_loses_nothing() {
    const MESSAGES: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = std::sync::Arc::new(register(&channel, "alice", 0, 0).await);
    let bob = register(&channel, "bob", 0, 0).await;
    let bob = std::sync::Arc::new(bob);
    let mut stream = open_stream(&bob).await;
    assert!(backlog(&mut stream).await.is_empty());
    // 300 × 20 KiB, more than the stream's buffers and hand-off bounds hold
    // while nobody reads.
    let shared = StorageKey::generate(&mut OsRng);
    let text = "x".repeat(20 * 1024);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = std::collections::HashSet::new();
    for _ in 0..MESSAGES {
        let message = seal(&shared, &text);
        sent.insert(message.id.clone());
        let (alice, bob) = (alice.clone(), bob.clone());
        tasks.spawn(async move { send(&alice, &bob, &message).await.unwrap() });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut got = Vec::with_capacity(MESSAGES);
    while got.len() < MESSAGES {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("stream stalled")
            .expect("stream ended")
            .unwrap();
        if let Some(Item::Envelope(e)) = item.item {
            got.push(e);
        }
    }
    assert!(
        got.windows(2).all(|w| w[0].id < w[1].id),
        "out of order or repeated"
    );
    let ids: std::collections::HashSet<_> = got.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(ids, sent);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "missive.v1.MessageService"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_api_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;

    use tonic_reflection::pb::{v1, v1alpha};
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in missive_proto::SERVICE_NAMES {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not listed in {names:?}"
        );
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection answer");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "missive.v1.MessageService")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleting_an_account_removes_its_keys_and_mail_and_frees_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 5, 5).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let shared = StorageKey::generate(&mut OsRng);
    send(&bob, &alice, &seal(&shared, "for the old alice"))
        .await
        .unwrap();

    alice
        .accounts()
        .delete_account(alice.req(DeleteAccountRequest {}))
        .await
        .unwrap();
    let refused = alice
        .keys()
        .get_prekey_count(alice.req(GetPrekeyCountRequest {}))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unauthenticated,
        "the old token still works"
    );
    let gone = bob
        .keys()
        .get_bundles(bob.req(GetBundlesRequest {
            username: "alice".into(),
            device_id: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        send(&bob, &alice, &seal(&shared, "hello?"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // The name is free again: a new identity, an empty mailbox.
    let new_alice = register(&channel, "alice", 1, 1).await;
    assert_ne!(
        wire_identity(&new_alice.identity).signing_key,
        wire_identity(&alice.identity).signing_key
    );
    assert!(
        pending(&new_alice).await.is_empty(),
        "the new account inherited old mail"
    );
    let bundles = bob
        .keys()
        .get_bundles(bob.req(GetBundlesRequest {
            username: "alice".into(),
            device_id: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bundles.bundles[0].identity.as_ref().unwrap().signing_key,
        wire_identity(&new_alice.identity).signing_key
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn undelivered_envelopes_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let mut bob = register(&channel, "bob", 0, 0).await;
    send(
        &alice,
        &bob,
        &seal(&StorageKey::generate(&mut OsRng), "old news"),
    )
    .await
    .unwrap();
    assert_eq!(pending(&bob).await.len(), 1);
    server.shutdown().await.unwrap();

    // Restart with a retention shorter than the envelope's age; the purge
    // runs at start and then periodically.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut config = config(dir.path());
    config.retention = Duration::from_millis(10);
    let server = missive_server::start(config).await.unwrap();
    bob.channel = common::channel(&server).await;
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = pending(&bob).await.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the expired envelope is still pending");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn operator_certificates_are_used_instead_of_the_development_ca() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("op.pem"), dir.path().join("op.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let mut only_cert = config(&dir.path().join("a"));
    only_cert.tls_cert = Some(cert_path.clone());
    assert!(
        missive_server::start(only_cert).await.is_err(),
        "a certificate without its key was accepted"
    );

    let mut config = config(&dir.path().join("data"));
    config.tls_cert = Some(cert_path.clone());
    config.tls_key = Some(key_path);
    let server = missive_server::start(config).await.unwrap();
    assert!(server.ca_path().is_none());
    assert!(
        !dir.path().join("data").join("ca.pem").exists(),
        "a development CA was generated anyway"
    );
    let channel = connect(&server.url(), &cert_path).await;
    register(&channel, "alice", 0, 0).await;
    server.shutdown().await.unwrap();
}
