//! Protocol v2 accounts through real gRPC: an account key and a key per
//! device, the first device list stored with the registration, server names
//! in every transcript, linked devices joining with `AddDevice`, and devices
//! a new list no longer names removed at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use missive_crypto::{IdentityKeyPair, KemPrekeyPublic, PublicIdentity, SignedPrekeyPublic};
use missive_proto::v1::account_service_client::AccountServiceClient;
use missive_proto::v1::*;
use rand::rngs::OsRng;
use tonic::Code;

fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, says: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} does not say {says:?}",
        status.message()
    );
}

fn keys() -> (IdentityKeyPair, IdentityKeyPair) {
    (
        IdentityKeyPair::generate(&mut OsRng),
        IdentityKeyPair::generate(&mut OsRng),
    )
}

#[tokio::test]
async fn registration_needs_its_own_device_key_a_matching_list_and_this_servers_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let mut accounts = AccountServiceClient::new(channel.clone());
    let (account, device) = keys();
    let other = IdentityKeyPair::generate(&mut OsRng);

    // The device key is the account key.
    let mut same = registration(&channel, "carol", &account, &device, 0, 0).await;
    same.device_identity = Some(wire_identity(&account));
    refused(
        accounts.register(same).await,
        Code::InvalidArgument,
        "a key of its own",
    );
    // No device key, a malformed one.
    let mut none = registration(&channel, "carol", &account, &device, 0, 0).await;
    none.device_identity = None;
    refused(
        accounts.register(none).await,
        Code::InvalidArgument,
        "device identity is missing",
    );
    let mut short = registration(&channel, "carol", &account, &device, 0, 0).await;
    short.device_identity = Some(missive_proto::v1::PublicIdentity {
        signing_key: vec![1; 5],
    });
    refused(
        accounts.register(short).await,
        Code::InvalidArgument,
        "invalid device identity",
    );
    // Lists that are missing, signed by another key, of version 2, naming
    // another key, another registration id, another device or two devices.
    let lists: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "device list is missing"),
        (
            device_list(&other, "carol", 1, &[(1, &device, 1234)]),
            "refused",
        ),
        (
            device_list(&account, "carol", 2, &[(1, &device, 1234)]),
            "version 1",
        ),
        (
            device_list(&account, "carol", 1, &[(1, &other, 1234)]),
            "another key",
        ),
        (
            device_list(&account, "carol", 1, &[(1, &device, 77)]),
            "registration id 77",
        ),
        (
            device_list(&account, "carol", 1, &[(2, &device, 1234)]),
            "exactly device 1",
        ),
        (
            device_list(&account, "carol", 1, &[(1, &device, 1234), (2, &other, 5)]),
            "exactly device 1",
        ),
        (
            device_list(&account, "dave", 1, &[(1, &device, 1234)]),
            "refused",
        ),
        (b"not a list".to_vec(), "refused"),
    ];
    for (list, says) in lists {
        let mut request = registration(&channel, "carol", &account, &device, 0, 0).await;
        request.signed_device_list = list;
        refused(
            accounts.register(request).await,
            Code::InvalidArgument,
            says,
        );
    }
    // Another server's name, signed as such, or none.
    for name in ["evil.example", ""] {
        let mut request = registration(&channel, "carol", &account, &device, 0, 0).await;
        request.server_name = name.into();
        request.signature = account
            .sign(&missive_crypto::transcript::registration(
                &request.challenge,
                name,
                "carol",
                request.registration_id,
            ))
            .to_vec();
        let says = if name.is_empty() {
            "server name is missing"
        } else {
            "the server name \"evil.example\" is not a name of this server"
        };
        refused(
            accounts.register(request).await,
            Code::InvalidArgument,
            says,
        );
    }
    // A signature naming another server than the request does.
    let mut relayed = registration(&channel, "carol", &account, &device, 0, 0).await;
    relayed.signature = account
        .sign(&missive_crypto::transcript::registration(
            &relayed.challenge,
            "evil.example",
            "carol",
            relayed.registration_id,
        ))
        .to_vec();
    refused(
        accounts.register(relayed).await,
        Code::InvalidArgument,
        "signature",
    );
    // The certificate's other names work; so does the configured one.
    for (n, name) in ["127.0.0.1", "LOCALHOST", "[::1]"].into_iter().enumerate() {
        let username = format!("carol{n}");
        let mut request = registration(&channel, &username, &account, &device, 0, 0).await;
        request.server_name = name.into();
        request.signature = account
            .sign(&missive_crypto::transcript::registration(
                &request.challenge,
                name,
                &username,
                request.registration_id,
            ))
            .to_vec();
        accounts.register(request).await.unwrap();
    }
    server.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.server_names = vec!["chat.example.org".into()];
    let server = missive_server::start(config).await.unwrap();
    let channel = common::channel(&server).await;
    let mut request = registration(&channel, "erin", &account, &device, 0, 0).await;
    request.server_name = "chat.example.org".into();
    request.signature = account
        .sign(&missive_crypto::transcript::registration(
            &request.challenge,
            "chat.example.org",
            "erin",
            request.registration_id,
        ))
        .to_vec();
    AccountServiceClient::new(channel.clone())
        .register(request)
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

async fn login_as(
    user: &User,
    device_id: u32,
    key: &IdentityKeyPair,
    server_name: &str,
) -> Result<LoginResponse, tonic::Status> {
    let challenge = challenge(&user.channel, &user.username, ChallengePurpose::Login).await;
    let signature = key.sign(&missive_crypto::transcript::login(
        &challenge,
        server_name,
        &user.username,
        device_id,
    ));
    user.accounts()
        .login(LoginRequest {
            username: user.username.clone(),
            device_id,
            challenge,
            signature: signature.to_vec(),
            server_name: server_name.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn login_needs_the_device_key_and_this_servers_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;

    login_as(&alice, 1, &alice.identity, SERVER_NAME)
        .await
        .unwrap();
    login_as(&alice, 1, &alice.identity, "127.0.0.1")
        .await
        .unwrap();
    refused(
        login_as(&alice, 1, &alice.account, SERVER_NAME).await,
        Code::Unauthenticated,
        "does not verify",
    );
    refused(
        login_as(&alice, 1, &alice.identity, "evil.example").await,
        Code::Unauthenticated,
        "the server name \"evil.example\" is not a name of this server",
    );
    // Signed for another server, sent naming this one.
    let challenge = challenge(&channel, "alice", ChallengePurpose::Login).await;
    let signature = alice.identity.sign(&missive_crypto::transcript::login(
        &challenge,
        "evil.example",
        "alice",
        1,
    ));
    let status = alice
        .accounts()
        .login(LoginRequest {
            username: "alice".into(),
            device_id: 1,
            challenge,
            signature: signature.to_vec(),
            server_name: SERVER_NAME.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_listed_device_joins_with_its_own_key_and_is_served_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 1, 1).await;
    let bob = register(&channel, "bob", 0, 0).await;

    let phone = link_device(&alice, 2, 2).await;
    // Its token works; it logs in with its own key, not device 1's.
    phone
        .keys()
        .get_prekey_count(phone.req(GetPrekeyCountRequest {}))
        .await
        .unwrap();
    login(&phone).await;
    refused(
        login_as(&phone, 2, &alice.identity, SERVER_NAME).await,
        Code::Unauthenticated,
        "does not verify",
    );

    // Bundles carry each device's own key; the signatures bind the account
    // key and the device id.
    let response = bob
        .keys()
        .get_bundles(bob.req(GetBundlesRequest {
            username: "alice".into(),
            device_id: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.bundles.len(), 2);
    for (bundle, user) in response.bundles.iter().zip([&alice, &phone]) {
        assert_eq!(bundle.device_id, user.device_id);
        assert_eq!(bundle.registration_id, user.registration_id);
        let key = bundle.identity.as_ref().unwrap();
        assert_eq!(key.signing_key, wire_identity(&user.identity).signing_key);
        let key = PublicIdentity::from_bytes(&key.signing_key).unwrap();
        let owner = owner(&alice.account, user.device_id);
        let spk = bundle.signed_prekey.as_ref().unwrap();
        key.verify_signed_prekey(
            &SignedPrekeyPublic {
                id: spk.id,
                public_key: spk.public_key.clone().try_into().unwrap(),
                signature: spk.signature.clone().try_into().unwrap(),
            },
            &owner,
        )
        .unwrap();
        let kem = bundle.kem_prekey.as_ref().unwrap();
        key.verify_kem_prekey(
            &KemPrekeyPublic {
                id: kem.id,
                public_key: kem.public_key.clone(),
                signature: kem.signature.clone().try_into().unwrap(),
            },
            &owner,
        )
        .unwrap();
    }

    // Uploads and rotations verify with the caller device's key and id.
    let mine = owner(&alice.account, 2);
    phone
        .keys()
        .upload_prekeys(phone.req(UploadPrekeysRequest {
            one_time_prekeys: vec![],
            one_time_kem_prekeys: vec![kem_prekey(&phone.identity, &mine, 50)],
        }))
        .await
        .unwrap();
    for (key, owner) in [
        (&alice.identity, mine.clone()),
        (&phone.identity, common::owner(&alice.account, 1)),
        (&alice.account, mine.clone()),
    ] {
        refused(
            phone
                .keys()
                .upload_prekeys(phone.req(UploadPrekeysRequest {
                    one_time_prekeys: vec![],
                    one_time_kem_prekeys: vec![kem_prekey(key, &owner, 51)],
                }))
                .await,
            Code::InvalidArgument,
            "does not verify",
        );
        refused(
            phone
                .keys()
                .replace_signed_prekeys(phone.req(ReplaceSignedPrekeysRequest {
                    signed_prekey: Some(signed_prekey(key, &owner, 2)),
                    last_resort_kem_prekey: None,
                }))
                .await,
            Code::InvalidArgument,
            "does not verify",
        );
    }
    phone
        .keys()
        .replace_signed_prekeys(phone.req(ReplaceSignedPrekeysRequest {
            signed_prekey: Some(signed_prekey(&phone.identity, &mine, 2)),
            last_resort_kem_prekey: Some(kem_prekey(&phone.identity, &mine, 1001)),
        }))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn add_device_refuses_unlisted_devices_wrong_keys_and_registered_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let mut accounts = AccountServiceClient::new(channel.clone());
    let alice = register(&channel, "alice", 0, 0).await;
    let laptop = IdentityKeyPair::generate(&mut OsRng);
    let stranger = IdentityKeyPair::generate(&mut OsRng);

    // Not (yet) in the list.
    let request = add_device_request(&channel, "alice", &alice.account, &laptop, 2, 102, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::FailedPrecondition,
        "does not name device 2",
    );
    alice
        .keys()
        .publish_device_list(alice.req(PublishDeviceListRequest {
            signed_device_list: device_list(
                &alice.account,
                "alice",
                2,
                &[(1, &alice.identity, 1234), (2, &laptop, 102)],
            ),
        }))
        .await
        .unwrap();
    // Another id than listed.
    let request = add_device_request(&channel, "alice", &alice.account, &laptop, 3, 102, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::FailedPrecondition,
        "does not name device 3",
    );
    // Signed by another key than the list names for device 2.
    let request = add_device_request(&channel, "alice", &alice.account, &stranger, 2, 102, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::InvalidArgument,
        "does not verify",
    );
    // Another registration id than listed.
    let request = add_device_request(&channel, "alice", &alice.account, &laptop, 2, 103, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::FailedPrecondition,
        "registration id 102",
    );
    // Prekeys signed for another device id or account.
    let mut request =
        add_device_request(&channel, "alice", &alice.account, &laptop, 2, 102, 0).await;
    request.signed_prekey = Some(signed_prekey(&laptop, &owner(&alice.account, 1), 1));
    refused(
        accounts.add_device(request).await,
        Code::InvalidArgument,
        "signed prekey",
    );
    // Another server's name.
    let mut request =
        add_device_request(&channel, "alice", &alice.account, &laptop, 2, 102, 0).await;
    request.server_name = "evil.example".into();
    refused(
        accounts.add_device(request).await,
        Code::InvalidArgument,
        "is not a name of this server",
    );
    // A challenge for another purpose, an unknown user, id 0.
    let mut request =
        add_device_request(&channel, "alice", &alice.account, &laptop, 2, 102, 0).await;
    request.challenge = challenge(&channel, "alice", ChallengePurpose::Login).await;
    refused(
        accounts.add_device(request).await,
        Code::Unauthenticated,
        "challenge",
    );
    let request = add_device_request(&channel, "nobody", &alice.account, &laptop, 2, 102, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::NotFound,
        "no user named",
    );
    let request = add_device_request(&channel, "alice", &alice.account, &laptop, 0, 102, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::InvalidArgument,
        "device id",
    );
    // Device 1 is registered already; device 2 joins once.
    let request = add_device_request(
        &channel,
        "alice",
        &alice.account,
        &alice.identity,
        1,
        1234,
        0,
    )
    .await;
    refused(
        accounts.add_device(request).await,
        Code::FailedPrecondition,
        "already registered",
    );
    let request = add_device_request(&channel, "alice", &alice.account, &laptop, 2, 102, 0).await;
    let joined = accounts.add_device(request).await.unwrap().into_inner();
    assert_eq!(joined.device_id, 2);
    let request = add_device_request(&channel, "alice", &alice.account, &laptop, 2, 102, 0).await;
    refused(
        accounts.add_device(request).await,
        Code::FailedPrecondition,
        "already registered",
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_list_without_a_device_removes_it_its_token_and_its_mail() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let phone = link_device(&alice, 2, 1).await;

    // Bob writes to both devices; the phone's token works (and is cached).
    let send = |text: &'static str, devices: Vec<(u32, u32)>| {
        let bob = &bob;
        async move {
            bob.messages()
                .send(
                    bob.req(SendRequest {
                        recipient: "alice".into(),
                        message_id: {
                            let mut id = text.as_bytes().to_vec();
                            id.resize(16, b'.');
                            id
                        },
                        envelopes: devices
                            .into_iter()
                            .map(|(device_id, registration_id)| OutgoingEnvelope {
                                device_id,
                                registration_id,
                                r#type: EnvelopeType::Message as i32,
                                content: text.as_bytes().to_vec(),
                                franking_commitment: vec![0; 32],
                            })
                            .collect(),
                        ..Default::default()
                    }),
                )
                .await
        }
    };
    send("to both", vec![(1, 1234), (2, 102)]).await.unwrap();
    phone
        .keys()
        .get_prekey_count(phone.req(GetPrekeyCountRequest {}))
        .await
        .unwrap();

    // The phone cannot remove itself.
    refused(
        phone
            .keys()
            .publish_device_list(phone.req(PublishDeviceListRequest {
                signed_device_list: device_list(
                    &alice.account,
                    "alice",
                    3,
                    &[(1, &alice.identity, 1234)],
                ),
            }))
            .await,
        Code::FailedPrecondition,
        "a device cannot remove itself",
    );
    // The primary removes it.
    alice
        .keys()
        .publish_device_list(alice.req(PublishDeviceListRequest {
            signed_device_list: device_list(
                &alice.account,
                "alice",
                3,
                &[(1, &alice.identity, 1234)],
            ),
        }))
        .await
        .unwrap();
    refused(
        phone
            .keys()
            .get_prekey_count(phone.req(GetPrekeyCountRequest {}))
            .await,
        Code::Unauthenticated,
        "",
    );
    refused(
        login_as(&phone, 2, &phone.identity, SERVER_NAME).await,
        Code::Unauthenticated,
        "",
    );
    // Senders see one device; its mail is gone, device 1's is not.
    let status = send("to the phone", vec![(1, 1234), (2, 102)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
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
        bundles
            .bundles
            .iter()
            .map(|b| b.device_id)
            .collect::<Vec<_>>(),
        [1]
    );
    server.shutdown().await.unwrap();

    let store = missive_server::storage::open(
        &format!("sqlite://{}", dir.path().join("server.db").display()),
        missive_server::storage::OpenMode::Existing,
    )
    .await
    .unwrap();
    let account = store.account_named("alice").await.unwrap().unwrap().id;
    let at = |device| missive_server::storage::DeviceAddress { account, device };
    assert!(
        store
            .pending_envelopes(at(2), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.pending_envelopes(at(1), 0, 10).await.unwrap().len(),
        1
    );
    assert_eq!(store.device_key(at(2)).await.unwrap(), None);
    store.close().await;
}

/// A device recovering the account key joins with the next list in its
/// `AddDevice` (no listed device publishes for it); the list must be signed
/// by the stored account key, be newer and name the device. The list is
/// readable without a token.
#[tokio::test]
async fn a_recovering_device_publishes_its_list_with_add_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 2, 2).await;
    let recovered = IdentityKeyPair::generate(&mut OsRng);
    fn entries<'a>(
        alice: &'a User,
        key: &'a IdentityKeyPair,
    ) -> Vec<(u32, &'a IdentityKeyPair, u32)> {
        vec![
            (alice.device_id, &alice.identity, alice.registration_id),
            (2, key, 102),
        ]
    }
    let request = |list: Vec<u8>| {
        let (channel, account, key) = (channel.clone(), &alice.account, &recovered);
        async move {
            let mut r = add_device_request(&channel, "alice", account, key, 2, 102, 1).await;
            r.signed_device_list = list;
            r
        }
    };
    let mut accounts = AccountServiceClient::new(channel.clone());

    // Signed by another key: refused, nothing stored.
    let stranger = IdentityKeyPair::generate(&mut OsRng);
    let forged = device_list(&stranger, "alice", 2, &entries(&alice, &recovered));
    refused(
        accounts.add_device(request(forged).await).await,
        Code::InvalidArgument,
        "",
    );
    // Not newer than the stored version 1.
    let stale = device_list(&alice.account, "alice", 1, &entries(&alice, &recovered));
    refused(
        accounts.add_device(request(stale).await).await,
        Code::FailedPrecondition,
        "must be newer",
    );
    // Naming another key for device 2 than the one that signs the request.
    let other = IdentityKeyPair::generate(&mut OsRng);
    let wrong = device_list(&alice.account, "alice", 2, &entries(&alice, &other));
    refused(
        accounts.add_device(request(wrong).await).await,
        Code::InvalidArgument,
        "does not verify",
    );

    let list = device_list(&alice.account, "alice", 2, &entries(&alice, &recovered));
    let joined = accounts
        .add_device(request(list.clone()).await)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.device_id, 2);
    let served = missive_proto::v1::key_service_client::KeyServiceClient::new(channel.clone())
        .get_device_list(GetDeviceListRequest {
            username: "alice".into(),
            with_linked_days: false,
        })
        .await
        .unwrap()
        .into_inner()
        .signed_device_list;
    assert_eq!(served, list);
    // The day each device joined: to the account's own devices only.
    let ask = |user: &User| {
        user.req(GetDeviceListRequest {
            username: "alice".into(),
            with_linked_days: true,
        })
    };
    let days = alice
        .keys()
        .get_device_list(ask(&alice))
        .await
        .unwrap()
        .into_inner();
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 86_400_000
        * 86_400_000;
    let mut ids: Vec<(u32, u64, u64)> = days
        .linked_days
        .iter()
        .map(|d| (d.device_id, d.linked_at_ms, d.last_seen_at_ms))
        .collect();
    ids.sort_unstable();
    // Both joined and logged in today.
    assert_eq!(ids, [(1, today, today), (2, today, today)]);
    let bob = register(&channel, "bob", 0, 0).await;
    let theirs = bob
        .keys()
        .get_device_list(ask(&bob))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.linked_days.is_empty());
    assert_eq!(theirs.signed_device_list, list);
}
