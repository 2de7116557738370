//! The operator's view of the real binary: the Prometheus endpoint, the
//! `check` subcommand and the TOML configuration file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use missive_proto::v1::{EnvelopeType, OutgoingEnvelope, ReceiveRequest, SendRequest};

const BIN: &str = env!("CARGO_BIN_EXE_missive-server");

/// A `missive-server` child whose stdout lines are read until `wanted` of
/// them are in; killed on drop.
struct Node {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn(args: &[&str], envs: &[(&str, &str)], wanted: usize) -> Node {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("MISSIVE_LOG", "warn")
        .env_remove("MISSIVE_DATABASE_URL")
        .env_remove("MISSIVE_CONFIG")
        .env_remove("MISSIVE_METRICS_LISTEN")
        .env_remove("MISSIVE_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            for _ in 0..wanted {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                lines.push(line.trim_end().to_owned());
            }
            lines
        }),
    )
    .await
    .expect("the server printed its lines in time")
    .unwrap();
    Node { child, lines }
}

impl Node {
    fn line(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in {:?}", self.lines))
            .to_owned()
    }
}

/// A plain HTTP/1.1 GET; returns (status line, body).
fn http_get(url: &str, method: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled sample, 0 when absent.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn send_request(to: &User) -> SendRequest {
    SendRequest {
        recipient: to.username.clone(),
        message_id: vec![7; 16],
        envelopes: vec![OutgoingEnvelope {
            device_id: 1,
            registration_id: to.registration_id,
            r#type: EnvelopeType::Message as i32,
            content: b"opaque ciphertext".to_vec(),
            franking_commitment: vec![9; 32],
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn metrics_endpoint_counts_sends_deliveries_streams_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        2,
    )
    .await;
    let url = node.line("missive-server listening on ");
    let metrics = node.line("missive-server metrics on ");
    assert!(
        metrics.starts_with("http://127.0.0.1:") && metrics.ends_with("/metrics"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(":0/"),
        "the real port is printed: {metrics}"
    );
    let (status, before) = http_get(&metrics, "GET");
    assert!(status.contains("200"), "{status}");

    let channel = connect(&url, &data.join("ca.pem")).await;
    let alice = register(&channel, "alice", 1, 1).await;
    let bob = register(&channel, "bobby", 1, 1).await;
    let mut stream = bob
        .messages()
        .receive(bob.req(ReceiveRequest {}))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap(); // QueueEmpty
    alice
        .messages()
        .send(alice.req(send_request(&bob)))
        .await
        .unwrap();
    stream.message().await.unwrap().unwrap(); // the envelope
    // An unauthenticated call fails with UNAUTHENTICATED.
    let refused = bob
        .messages()
        .receive(authed(b"not a token at all", ReceiveRequest {}))
        .await;
    assert!(refused.is_err());

    let (_, after) = http_get(&metrics, "GET");
    assert_eq!(
        sample(&after, "missive_sends_total"),
        sample(&before, "missive_sends_total") + 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "missive_envelopes_stored_total"),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "missive_envelopes_delivered_total"),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, "missive_connected_devices"), 1.0, "{after}");
    assert!(
        sample(&after, "missive_group_commit_batch_size_count") >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("missive_storage_seconds_bucket{operation=\"store_envelopes\""),
        "{after}"
    );
    assert!(
        after.contains("missive_errors_total{code=\"UNAUTHENTICATED\"} 1"),
        "{after}"
    );
    // No personal data in any label or value.
    for secret in ["alice", "bobby", "opaque"] {
        assert!(!after.contains(secret), "{secret} leaked into {after}");
    }
    drop(stream);

    let (status, _) = http_get(&metrics.replace("/metrics", "/other"), "GET");
    assert!(status.contains("404"), "{status}");
    let (status, _) = http_get(&metrics, "POST");
    assert!(status.contains("405"), "{status}");
}

fn cli(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("MISSIVE_LOG", "error")
        .env_remove("MISSIVE_DATABASE_URL")
        .env_remove("MISSIVE_CONFIG")
        .env_remove("MISSIVE_NATS_URL")
        .env_remove("MISSIVE_TLS_CERT")
        .env_remove("MISSIVE_TLS_KEY");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[tokio::test]
async fn check_passes_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    // A node that served once leaves a migrated store and development TLS.
    drop(spawn(&["--listen", "127.0.0.1:0", "--data-dir", data_arg], &[], 1).await);
    let out = cli(
        &[
            "check",
            "--data-dir",
            data_arg,
            "--nats",
            "nats://127.0.0.1:4222",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("migrations are current"), "{stdout}");
    assert!(stdout.contains("development TLS certificate"), "{stdout}");
    assert!(
        stdout.contains("NATS nats://127.0.0.1:4222 is reachable"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("missive-server: the configuration is good\n"),
        "{stdout}"
    );
}

#[test]
fn check_names_every_problem_in_one_sentence_each() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = cli(
        &[
            "check",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            dir.path().join("missing.key").to_str().unwrap(),
            "--database",
            "postgres://postgres@127.0.0.1:1/none",
            "--nats",
            "nats://127.0.0.1:1",
            "--mailbox-limit",
            "0",
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failures: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("missive-server: check failed: "))
        .collect();
    assert_eq!(failures.len(), 4, "{stderr}");
    for expected in [
        "mailbox limit",
        "cannot open the database postgres://postgres",
        "missing.key",
        "NATS nats://127.0.0.1:1",
    ] {
        assert!(
            failures.iter().any(|l| l.contains(expected)),
            "{expected}: {stderr}"
        );
    }
    assert!(stderr.contains("4 problem(s) found"), "{stderr}");
    assert!(!stderr.contains("Error {"), "no Debug dump: {stderr}");

    // A certificate file that is not PEM is named too.
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let out = cli(
        &[
            "check",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("check failed: the TLS certificate") && stderr.contains("do not load"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_config_file_is_used_below_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file");
    let from_flag = dir.path().join("from-flag");
    let config = dir.path().join("missive.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nmetrics_listen = \"127.0.0.1:0\"\nretention = \"2days\"\n\
             franking_keys = {:?}\nstorage_reserve = \"1MiB\"\nproxy_protocol_from = \"10.0.0.0/8\"\n",
            from_file.to_str().unwrap(),
            dir.path().join("custom.keys").to_str().unwrap(),
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();

    // The file alone: its data directory and its metrics listener.
    let node = spawn(&["--config", config_arg], &[], 2).await;
    assert!(
        node.line("missive-server metrics on http://127.0.0.1:")
            .ends_with("/metrics")
    );
    assert!(from_file.join("ca.pem").exists());
    // The file's franking key path and disk reserve are the ones used.
    assert!(dir.path().join("custom.keys").exists());
    assert!(!from_file.join("franking.keys").exists());
    assert_eq!(
        std::fs::metadata(from_file.join("server.db.reserve"))
            .unwrap()
            .len(),
        1 << 20
    );
    drop(node);

    // MISSIVE_CONFIG names the file; a flag beats it.
    let node = spawn(
        &["--data-dir", from_flag.to_str().unwrap()],
        &[("MISSIVE_CONFIG", config_arg)],
        2,
    )
    .await;
    node.line("missive-server listening on https://127.0.0.1:");
    assert!(from_flag.join("ca.pem").exists());
    drop(node);

    // An environment variable beats the file: check reports the settings.
    let out = cli(
        &["check", "--config", config_arg],
        &[("MISSIVE_MAILBOX_LIMIT", "77")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("retention 2days, mailbox limit 77"),
        "{stdout}"
    );

    // Mistakes in the file are one sentence naming the file and the key.
    std::fs::write(&config, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let out = cli(&["check", "--config", config_arg], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the configuration file") && stderr.contains("lisen"),
        "{stderr}"
    );

    // --help documents the file and still every setting.
    let out = cli(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    for setting in [
        "--config",
        "--metrics-listen",
        "--listen",
        "--data-dir",
        "MISSIVE_CONFIG",
        "TOML",
    ] {
        assert!(
            help.contains(setting),
            "{setting} missing from --help: {help}"
        );
    }
}
