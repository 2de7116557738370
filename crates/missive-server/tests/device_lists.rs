//! Signed device lists (protocol v2, issue 13) through real gRPC: the server
//! verifies a published list against the account's registered identity and
//! username, stores only growing versions, serves the list with
//! `GetDeviceList` and every bundle fetch, forgets it with the account, and
//! `export-account` names its version and device ids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use missive_crypto::{DeviceEntry, DeviceList, IdentityKeyPair, SignedDeviceList};
use missive_proto::v1::*;
use missive_server::storage::{self, OpenMode};
use rand::rngs::OsRng;
use tonic::Code;

/// A list for `username` signed by `account`, naming one fresh device key per
/// id in `device_ids`; `timestamp_ms` makes two lists of one version differ.
fn list_by(
    account: &IdentityKeyPair,
    username: &str,
    version: u64,
    timestamp_ms: u64,
    device_ids: &[u32],
) -> Vec<u8> {
    let devices = device_ids
        .iter()
        .map(|&id| {
            let device = IdentityKeyPair::generate(&mut OsRng);
            DeviceEntry::link(&device, username, account.public(), id, 1000 + id)
        })
        .collect();
    DeviceList {
        username: username.to_owned(),
        version,
        timestamp_ms,
        devices,
    }
    .sign(account)
    .unwrap()
    .to_bytes()
}

/// A valid list of `user`'s: signed by the account key it registered with.
fn list_of(user: &User, version: u64, timestamp_ms: u64, device_ids: &[u32]) -> Vec<u8> {
    list_by(
        &user.account,
        &user.username,
        version,
        timestamp_ms,
        device_ids,
    )
}

async fn publish(user: &User, list: &[u8]) -> Result<u64, tonic::Status> {
    user.keys()
        .publish_device_list(user.req(PublishDeviceListRequest {
            signed_device_list: list.to_vec(),
        }))
        .await
        .map(|r| r.into_inner().version)
}

async fn fetch(by: &User, username: &str) -> Vec<u8> {
    by.keys()
        .get_device_list(by.req(GetDeviceListRequest {
            username: username.into(),
            with_linked_days: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .signed_device_list
}

async fn bundles_list(by: &User, username: &str) -> Vec<u8> {
    by.keys()
        .get_bundles(by.req(GetBundlesRequest {
            username: username.into(),
            device_id: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .signed_device_list
}

fn refused(result: Result<u64, tonic::Status>, code: Code, says: &str) -> tonic::Status {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(says),
        "{:?} does not say {says:?}",
        status.message()
    );
    status
}

#[tokio::test]
async fn a_published_device_list_is_served_by_get_device_list_and_get_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 2, 2).await;
    let bob = register(&channel, "bob", 0, 0).await;
    // Registration stored version 1, naming device 1 with its own key.
    let first = fetch(&bob, "alice").await;
    let parsed = SignedDeviceList::from_bytes(&first).unwrap();
    let verified = parsed.verify(alice.account.public(), "alice").unwrap();
    assert_eq!(verified.version, 1);
    assert_eq!(verified.devices.len(), 1);
    assert_eq!(&verified.devices[0].identity, alice.identity.public());
    assert_eq!(bundles_list(&bob, "alice").await, first);

    let list = list_of(&alice, 2, 1_700_000_000_000, &[1, 2]);
    assert_eq!(publish(&alice, &list).await.unwrap(), 2);
    // Served byte for byte, to anyone, under the case-folded name.
    let served = fetch(&bob, "Alice").await;
    assert_eq!(served, list);
    assert_eq!(fetch(&alice, "alice").await, list);
    assert_eq!(bundles_list(&bob, "alice").await, list);
    // A client verifies it against the identity it pinned.
    let parsed = SignedDeviceList::from_bytes(&served).unwrap();
    let verified = parsed.verify(alice.account.public(), "alice").unwrap();
    assert_eq!(
        verified
            .devices
            .iter()
            .map(|d| d.device_id)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Bob's list is his own.
    let bobs = fetch(&alice, "bob").await;
    SignedDeviceList::from_bytes(&bobs)
        .unwrap()
        .verify(bob.account.public(), "bob")
        .unwrap();

    let status = bob
        .keys()
        .get_device_list(bob.req(GetDeviceListRequest {
            username: "nobody".into(),
            with_linked_days: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = bob
        .keys()
        .get_device_list(bob.req(GetDeviceListRequest {
            username: "a b".into(),
            with_linked_days: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn device_lists_that_do_not_verify_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let first = fetch(&bob, "alice").await;

    // Signed by another key than the account key alice registered (bob's,
    // her device key, or any other): whoever holds it is not alice's account.
    for key in [
        &bob.account,
        &alice.identity,
        &IdentityKeyPair::generate(&mut OsRng),
    ] {
        let foreign = list_by(key, "alice", 1, 1, &[1]);
        refused(
            publish(&alice, &foreign).await,
            Code::InvalidArgument,
            "different account key",
        );
    }
    // Alice's key, but the list is for bob.
    let bobs = list_by(&alice.account, "bob", 2, 1, &[1]);
    let status = refused(
        publish(&alice, &bobs).await,
        Code::InvalidArgument,
        "for user \"bob\", not \"alice\"",
    );
    assert!(
        status
            .message()
            .starts_with("the signed device list was refused")
    );
    // Peer text in a refusal is escaped.
    let hostile = list_by(&alice.account, "alice\u{1b}[2J", 2, 1, &[1]);
    let status = refused(
        publish(&alice, &hostile).await,
        Code::InvalidArgument,
        "alice\\u{1b}[2J",
    );
    assert!(!status.message().contains('\u{1b}'), "{status:?}");
    // The account signature altered.
    let mut altered = list_of(&alice, 1, 1, &[1]);
    *altered.last_mut().unwrap() ^= 1;
    refused(
        publish(&alice, &altered).await,
        Code::InvalidArgument,
        "signature does not verify",
    );
    // Not a list at all, empty, truncated, trailing bytes.
    let valid = list_of(&alice, 1, 1, &[1]);
    let mut trailing = valid.clone();
    trailing.push(0);
    for (bytes, says) in [
        (b"garbage, not a device list".to_vec(), "cannot be parsed"),
        (Vec::new(), "cannot be parsed"),
        (valid[..valid.len() - 1].to_vec(), "cannot be parsed"),
        (trailing, "trailing bytes"),
    ] {
        refused(publish(&alice, &bytes).await, Code::InvalidArgument, says);
    }
    // Larger than any valid list: refused before parsing.
    let huge = vec![0u8; missive_server::limits::MAX_DEVICE_LIST_BYTES + 1];
    refused(
        publish(&alice, &huge).await,
        Code::InvalidArgument,
        "at most",
    );

    assert_eq!(
        fetch(&bob, "alice").await,
        first,
        "a refused list was stored"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn device_list_versions_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;

    let v2 = list_of(&alice, 2, 10, &[1, 2]);
    assert_eq!(publish(&alice, &v2).await.unwrap(), 2);
    // A lower version: refused, naming the stored version; nothing changes.
    let v1 = list_of(&alice, 1, 5, &[1]);
    refused(
        publish(&alice, &v1).await,
        Code::FailedPrecondition,
        "the server holds device list version 2",
    );
    assert_eq!(fetch(&alice, "alice").await, v2);
    // The same version with other contents: refused.
    let other_v2 = list_of(&alice, 2, 11, &[1, 2]);
    refused(
        publish(&alice, &other_v2).await,
        Code::FailedPrecondition,
        "version 2",
    );
    assert_eq!(fetch(&alice, "alice").await, v2);
    // The stored list again, byte for byte: fine, and nothing changes.
    assert_eq!(publish(&alice, &v2).await.unwrap(), 2);
    assert_eq!(fetch(&alice, "alice").await, v2);
    // A higher version replaces it; the older one is then refused too.
    let v5 = list_of(&alice, 5, 20, &[1, 3]);
    assert_eq!(publish(&alice, &v5).await.unwrap(), 5);
    assert_eq!(fetch(&alice, "alice").await, v5);
    refused(
        publish(&alice, &v2).await,
        Code::FailedPrecondition,
        "version 5",
    );
    assert_eq!(fetch(&alice, "alice").await, v5);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn of_two_lists_published_at_once_with_one_version_exactly_one_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    for version in [2, 3, 4] {
        let a = list_of(&alice, version, 1, &[1]);
        let b = list_of(&alice, version, 2, &[1, 2]);
        let (x, y) = tokio::join!(publish(&alice, &a), publish(&alice, &b));
        let winner = match (x, y) {
            (Ok(v), Err(s)) | (Err(s), Ok(v)) => {
                assert_eq!(v, version);
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                fetch(&alice, "alice").await
            }
            other => panic!("two publishes of version {version}: {other:?}"),
        };
        assert!(winner == a || winner == b);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn publishing_needs_a_token_and_reading_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let list = list_of(&alice, 2, 1, &[1]);
    let mut keys = alice.keys();
    for token in [None, Some(vec![7u8; 32])] {
        let publish_request = PublishDeviceListRequest {
            signed_device_list: list.clone(),
        };
        let get_request = GetDeviceListRequest {
            username: "alice".into(),
            with_linked_days: false,
        };
        let (publish, get) = match &token {
            None => (
                tonic::Request::new(publish_request),
                tonic::Request::new(get_request),
            ),
            Some(token) => (authed(token, publish_request), authed(token, get_request)),
        };
        let status = keys.publish_device_list(publish).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        match token {
            // Readable without a token (a recovering device has none)...
            None => {
                let served = keys.get_device_list(get).await.unwrap().into_inner();
                assert_eq!(served.signed_device_list, fetch(&alice, "alice").await);
            }
            // ...but a token that is given must be valid.
            Some(_) => {
                let status = keys.get_device_list(get).await.unwrap_err();
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            }
        }
    }
    assert_ne!(fetch(&alice, "alice").await, list);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn export_names_the_list_and_deleting_the_account_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let list = list_of(&alice, 3, 1, &[1, 4]);
    assert_eq!(publish(&alice, &list).await.unwrap(), 3);

    // The real command, while the server runs: version and ids, no keys.
    let export = |username: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_missive-server"))
            .args(["export-account", username, "--data-dir"])
            .arg(dir.path())
            .env_remove("MISSIVE_DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let json = export("alice");
    assert_eq!(json["device_list_version"], 3);
    assert_eq!(json["device_list_devices"], serde_json::json!([1, 4]));
    let parsed = SignedDeviceList::from_bytes(&list).unwrap();
    let text = json.to_string();
    for device in &parsed.unverified_list().devices {
        let key = hex::encode(device.identity.signing_key());
        assert!(!text.contains(&key), "the export holds a device key");
    }
    let json = export("bob");
    assert_eq!(json["device_list_version"], 1, "{json}");
    assert_eq!(json["device_list_devices"], serde_json::json!([1]));

    let store = storage::open(
        &format!("sqlite://{}", dir.path().join("server.db").display()),
        OpenMode::Existing,
    )
    .await
    .unwrap();
    let account = store.account_named("alice").await.unwrap().unwrap().id;
    assert_eq!(store.device_list(account).await.unwrap(), Some((3, list)));
    alice
        .accounts()
        .delete_account(alice.req(DeleteAccountRequest {}))
        .await
        .unwrap();
    assert_eq!(store.device_list(account).await.unwrap(), None);
    // The name's next holder starts with its own first list.
    let next = register(&channel, "alice", 0, 0).await;
    SignedDeviceList::from_bytes(&fetch(&bob, "alice").await)
        .unwrap()
        .verify(next.account.public(), "alice")
        .unwrap();
    assert_eq!(export("alice")["device_list_version"], 1);
    store.close().await;
    server.shutdown().await.unwrap();
}
