//! What the relay records (issue 17): reports follow accounts, franking keys
//! live in their own file, and docs/LAWFUL_ACCESS.md lists exactly what the
//! export and the database hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use missive_crypto::franking::{self, FrankingKey};
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::*;
use missive_server::storage::{self, OpenMode};
use rand::rngs::OsRng;
use tokio_stream::StreamExt;

fn server_db(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("server.db").display())
}

/// A sent message and what its recipient needs to report it.
struct Sent {
    text: String,
    key: FrankingKey,
    commitment: [u8; 32],
    id: Vec<u8>,
}

/// `from` sends `text` to `to` (the content is opaque to the server; a
/// placeholder stands for the ciphertext).
async fn send(from: &User, to: &User, text: &str) -> Sent {
    let mut id = vec![0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut id);
    let key = FrankingKey::generate(&mut OsRng);
    let commitment = franking::commit(&key, &id, text.as_bytes());
    from.messages()
        .send(from.req(SendRequest {
            recipient: to.username.clone(),
            message_id: id.clone(),
            envelopes: vec![OutgoingEnvelope {
                device_id: 1,
                registration_id: to.registration_id,
                r#type: EnvelopeType::Message as i32,
                content: b"opaque ciphertext".to_vec(),
                franking_commitment: commitment.to_vec(),
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    Sent {
        text: text.into(),
        key,
        commitment,
        id,
    }
}

/// The recipient's pending envelope for `sent`, acknowledged.
async fn receive(user: &User, sent: &Sent) -> Envelope {
    let mut stream = user
        .messages()
        .receive(user.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Item::Envelope(envelope)) = item.item
            && envelope.message_id == sent.id
        {
            user.messages()
                .acknowledge(user.req(AcknowledgeRequest {
                    envelope_ids: vec![envelope.id],
                    group_acks: Vec::new(),
                }))
                .await
                .unwrap();
            return envelope;
        }
    }
}

fn report_of(envelope: &Envelope, sent: &Sent) -> ReportRequest {
    ReportRequest {
        message_id: envelope.message_id.clone(),
        sender: envelope.sender.clone(),
        server_timestamp_ms: envelope.server_timestamp_ms,
        plaintext: sent.text.as_bytes().to_vec(),
        franking_key: sent.key.as_bytes().to_vec(),
        franking_commitment: sent.commitment.to_vec(),
        franking_tag: envelope.franking_tag.clone(),
        reason: "spam".into(),
        attachment: None,
        group_id: Vec::new(),
    }
}

async fn delete(user: &User) {
    user.accounts()
        .delete_account(user.req(DeleteAccountRequest {}))
        .await
        .unwrap();
}

/// Issue 17.1: a re-registered name inherits none of the previous holder's
/// reports, about it or filed by it, and cannot report its messages.
#[tokio::test]
async fn a_new_holder_of_a_name_inherits_no_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let sent = send(&alice, &bob, "a message worth reporting").await;
    let envelope = receive(&bob, &sent).await;
    let report = report_of(&envelope, &sent);
    bob.reports().report(bob.req(report.clone())).await.unwrap();
    let store = storage::open(&server_db(dir.path()), OpenMode::Existing)
        .await
        .unwrap();
    let before = store.export_account("alice").await.unwrap().unwrap();
    assert_eq!(before.reports_against.len(), 1);

    delete(&alice).await;
    delete(&bob).await;
    let _alice = register(&channel, "alice", 0, 0).await;
    let new_bob = register(&channel, "bob", 0, 0).await;
    let alice_now = store.export_account("alice").await.unwrap().unwrap();
    assert!(
        alice_now.reports_against.is_empty(),
        "the new alice inherited the old alice's reports"
    );
    let bob_now = store.export_account("bob").await.unwrap().unwrap();
    assert_eq!(
        bob_now.reports_filed, 0,
        "the new bob inherited the old bob's reports"
    );
    // The tag binds the accounts, not the names: the new bob cannot report
    // a message sent to the old one.
    let status = new_bob
        .reports()
        .report(new_bob.req(report))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    server.shutdown().await.unwrap();
}

/// Issue 17.4: the franking keys are in a 0600 file, not in the database;
/// every tag names its key; after a rotation old tags still verify and new
/// ones use the new key.
#[tokio::test]
async fn franking_keys_live_in_a_private_file_and_survive_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let first = send(&alice, &bob, "before the rotation").await;
    let first_envelope = receive(&bob, &first).await;
    assert_eq!(&first_envelope.franking_tag[..4], &1u32.to_be_bytes());
    server.shutdown().await.unwrap();

    let keys = dir.path().join(missive_server::franking::FILE_NAME);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is {mode:o}");
    }
    let text = std::fs::read_to_string(&keys).unwrap();
    let key_hex = text
        .lines()
        .find(|l| l.starts_with("key 1 current "))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_owned();
    let key = hex::decode(&key_hex).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("server.db")
        {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, &key),
                "{} holds the franking key",
                path.display()
            );
        }
    }

    // Rotate with the real command, then restart.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_missive-server"))
        .args(["rotate-franking-key", "--data-dir"])
        .arg(dir.path())
        .env_remove("MISSIVE_DATABASE_URL")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("franking key 2 is now current"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("key 1 is kept for verifying reports only"),
        "{said}"
    );
    let store = storage::open(&server_db(dir.path()), OpenMode::Existing)
        .await
        .unwrap();
    assert_eq!(store.franking_key_ids().await.unwrap(), vec![1, 2]);
    let server = missive_server::start(config(dir.path())).await.unwrap();
    let channel = common::channel(&server).await;
    let (mut alice, mut bob) = (alice, bob);
    for user in [&mut alice, &mut bob] {
        user.channel = channel.clone();
        user.token = login(user).await;
    }
    let second = send(&alice, &bob, "after the rotation").await;
    let second_envelope = receive(&bob, &second).await;
    assert_eq!(&second_envelope.franking_tag[..4], &2u32.to_be_bytes());
    for (envelope, sent, key_id) in [(&first_envelope, &first, 1), (&second_envelope, &second, 2)] {
        let id = bob
            .reports()
            .report(bob.req(report_of(envelope, sent)))
            .await
            .unwrap()
            .into_inner()
            .report_id;
        let stored = store.report(id).await.unwrap().unwrap();
        assert_eq!(stored.franking_key_id, Some(key_id));
    }
    server.shutdown().await.unwrap();
}

/// The first column of the table rows under `heading` in `document`: one
/// backticked name per row.
fn listed(document: &str, heading: &str) -> BTreeSet<String> {
    let section = document
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/LAWFUL_ACCESS.md has no section {heading:?}"));
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| rest.split('`').next().unwrap().to_owned())
        .collect()
}

/// Every key path of a JSON value: `a`, `b[].c`.
fn paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = format!("{prefix}{key}");
                out.insert(path.clone());
                paths(value, &format!("{path}."), out);
            }
        }
        serde_json::Value::Array(items) => {
            let array = format!("{}[].", prefix.trim_end_matches('.'));
            for item in items {
                paths(item, &array, out);
            }
        }
        _ => {}
    }
}

/// Issue 17.5: docs/LAWFUL_ACCESS.md lists exactly the export's fields and
/// exactly the database's columns, and the database keeps no time of day
/// where the document says it does not.
#[tokio::test]
async fn lawful_access_lists_exactly_what_the_export_and_the_database_hold() {
    let document = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/LAWFUL_ACCESS.md"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 2, 2).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let sent = send(&alice, &bob, "reported").await;
    let envelope = receive(&bob, &sent).await;
    bob.reports()
        .report(bob.req(report_of(&envelope, &sent)))
        .await
        .unwrap();
    send(&bob, &alice, "pending").await;
    // A device link alice started and did not finish.
    let mut links = link_service_client::LinkServiceClient::new(channel.clone());
    links
        .open_link(OpenLinkRequest {
            rendezvous: vec![5; 32],
            offer: vec![6; 1216],
        })
        .await
        .unwrap();
    links
        .post_link(alice.req(PostLinkRequest {
            rendezvous: vec![5; 32],
            slot: LinkSlot::Hello as i32,
            payload: b"sealed hello".to_vec(),
        }))
        .await
        .unwrap();
    // A group alice created and added bob to, with a message pending.
    let groups = || {
        group_service_client::GroupServiceClient::new(channel.clone())
            .max_encoding_message_size(16 * 1024 * 1024)
    };
    groups()
        .upload_key_packages(alice.req(UploadKeyPackagesRequest {
            key_packages: vec![vec![1; 100]],
            last_resort: vec![2; 100],
        }))
        .await
        .unwrap();
    let group_id = vec![0x6b; 16];
    groups()
        .create_group(alice.req(CreateGroupRequest {
            group_id: group_id.clone(),
        }))
        .await
        .unwrap();
    groups()
        .commit(alice.req(CommitRequest {
            group_id: group_id.clone(),
            epoch: 0,
            message_id: vec![1; 16],
            commit: vec![3; 50],
            welcome: vec![4; 50],
            added: vec![DeviceAddress {
                username: "bob".into(),
                device_id: 1,
            }],
            removed: Vec::new(),
        }))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let store = storage::open(&server_db(dir.path()), OpenMode::Existing)
        .await
        .unwrap();
    let export =
        missive_server::export::document(store.export_account("alice").await.unwrap().unwrap());
    let mut exported = BTreeSet::new();
    paths(&serde_json::to_value(&export).unwrap(), "", &mut exported);
    assert_eq!(
        listed(&document, "The export document"),
        exported,
        "the export's fields and docs/LAWFUL_ACCESS.md's list differ"
    );
    store.close().await;

    // Every column of every table, from the schema itself.
    let pool = sqlx::SqlitePool::connect(&server_db(dir.path()))
        .await
        .unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut columns = BTreeSet::new();
    for table in &tables {
        let names: Vec<String> =
            sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .fetch_all(&pool)
                .await
                .unwrap();
        columns.extend(names.into_iter().map(|c| format!("{table}.{c}")));
    }
    assert_eq!(
        listed(&document, "Everything the database holds"),
        columns,
        "the database's columns and docs/LAWFUL_ACCESS.md's list differ"
    );
    // Tokens keep a day, challenges no name.
    let expires: Vec<i64> = sqlx::query_scalar("SELECT expires_day FROM tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    let today = missive_server::time::day_of(missive_server::time::now_ms());
    assert!(expires.iter().all(|d| *d == today + 2), "{expires:?}");
    pool.close().await;
}
