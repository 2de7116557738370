//! Failure modes an operator meets (issue 17.7), through the real binary: a
//! port in use, an unreachable PostgreSQL, file permissions, a full disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_missive-server");

fn serve(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("serve")
        .args(args)
        .env_remove("MISSIVE_DATABASE_URL")
        .env_remove("MISSIVE_NATS_URL")
        .env("MISSIVE_LOG", "warn")
        .output()
        .unwrap()
}

/// The error line, asserting it is the only thing said and says each part once.
fn one_sentence(output: &std::process::Output) -> String {
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "more than one line: {stderr}");
    let line = lines[0].to_owned();
    let parts: Vec<&str> = line.split(": ").collect();
    for (k, part) in parts.iter().enumerate() {
        assert!(
            !parts[k + 1..].contains(part),
            "{part:?} is said twice in {line:?}"
        );
    }
    line
}

#[test]
fn a_port_in_use_is_reported_once_before_anything_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let listen = format!("127.0.0.1:{port}");
    let output = serve(&["--listen", &listen, "--data-dir", data.to_str().unwrap()]);
    let line = one_sentence(&output);
    assert!(
        line.contains(&format!("cannot listen on {listen}")) && line.contains("in use"),
        "{line}"
    );
    assert!(
        !data.exists(),
        "the data directory was created (with {:?}) for a server that could not listen",
        std::fs::read_dir(&data).map(|d| d.count()).ok()
    );
}

#[test]
fn an_unreachable_postgres_fails_fast_in_one_sentence() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let database = format!("postgres://missive@127.0.0.1:{port}/missive");
    let started = Instant::now();
    let output = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--database",
        &database,
    ]);
    let took = started.elapsed();
    let line = one_sentence(&output);
    assert!(
        line.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

/// A server child that is killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listening(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    line.trim_end()
        .strip_prefix("missive-server listening on ")
        .unwrap_or_else(|| panic!("node did not start: {line:?}"))
        .to_owned()
}

#[tokio::test]
async fn the_data_directory_and_the_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("MISSIVE_DATABASE_URL")
        .env("MISSIVE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    listening(&mut child);
    let _node = Node(child);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for file in [
        "server.db",
        "server.db-wal",
        "server.db-shm",
        "server.key",
        "franking.keys",
        "server.db.reserve",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
}

/// Whether this machine lets the test mount a small tmpfs in a mount
/// namespace of its own (root); otherwise the full-disk test is skipped,
/// unless `MISSIVE_REQUIRE_SERVICES=1`.
fn can_mount() -> bool {
    let ok = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("MISSIVE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "cannot mount a tmpfs (needs root and unshare) but MISSIVE_REQUIRE_SERVICES=1"
        );
        println!("skipped: cannot mount a tmpfs in a mount namespace");
    }
    ok
}

/// On a full disk senders and registrations get RESOURCE_EXHAUSTED with a
/// sentence, never INTERNAL; the recipient still receives and acknowledges
/// everything; then sending works again.
#[tokio::test]
async fn on_a_full_disk_acknowledgements_work_and_writers_get_resource_exhausted() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // The database on a 24 MiB file system of its own, with an 8 MiB reserve.
    let script = "mount -t tmpfs -o size=24m tmpfs \"$1\" && exec \"$2\" serve \
                  --listen 127.0.0.1:0 --data-dir \"$3\" --database \"sqlite://$1/server.db\" \
                  --storage-reserve 8MiB --mailbox-limit 100000 --disable-rate-limits";
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&disk)
        .arg(BIN)
        .arg(&data)
        .env_remove("MISSIVE_DATABASE_URL")
        .env("MISSIVE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = listening(&mut child);
    let _node = Node(child);
    let channel = connect(&url, &data.join("ca.pem")).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;

    let send = |n: u32| {
        let mut id = vec![0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        let request = alice.req(SendRequest {
            recipient: "bob".into(),
            message_id: id,
            envelopes: vec![OutgoingEnvelope {
                device_id: 1,
                registration_id: bob.registration_id,
                r#type: EnvelopeType::Message as i32,
                content: vec![n as u8; 64 * 1024],
                franking_commitment: vec![0; 32],
            }],
            ..Default::default()
        });
        let mut client = alice.messages();
        async move { client.send(request).await }
    };
    let mut stored = 0u32;
    let refused = loop {
        assert!(stored < 2_000, "the disk never filled");
        match send(stored).await {
            Ok(_) => stored += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("storage is full"), "{refused:?}");
    assert!(stored > 50, "only {stored} envelopes fit");
    let status = alice
        .accounts()
        .register(
            registration(
                &channel,
                "carol",
                &missive_crypto::IdentityKeyPair::generate(&mut rand::rngs::OsRng),
                &missive_crypto::IdentityKeyPair::generate(&mut rand::rngs::OsRng),
                0,
                0,
            )
            .await,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Bob receives and acknowledges everything.
    let mut stream = bob
        .messages()
        .receive(bob.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match item.item.unwrap() {
            Item::Envelope(envelope) => ids.push(envelope.id),
            Item::QueueEmpty(_) => break,
            Item::GroupMessage(_) => panic!("a group message in a 1:1 test"),
        }
    }
    assert_eq!(ids.len(), stored as usize);
    for chunk in ids.chunks(100) {
        bob.messages()
            .acknowledge(bob.req(AcknowledgeRequest {
                envelope_ids: chunk.to_vec(),
                group_acks: Vec::new(),
            }))
            .await
            .unwrap_or_else(|s| panic!("an acknowledgement failed on the full disk: {s:?}"));
    }
    // Space is back: sending works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match send(100_000).await {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("sending still refused after the mailbox drained: {status:?}"),
        }
    }
}
