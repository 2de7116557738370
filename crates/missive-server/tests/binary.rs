//! The real `missive-server` binary: the listening line, the generated CA,
//! export-account and reports while it runs, and a clean SIGTERM shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_missive-server");

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MISSIVE_DATABASE_URL")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_binary_serves_exports_and_shuts_down_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_arg])
        .env("MISSIVE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("missive-server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        url.starts_with("https://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "server.key is not private");
    }
    let channel = connect(&url, &data.join("ca.pem")).await;
    let alice = register(&channel, "alice", 3, 2).await;
    assert_eq!(alice.token.len(), 32);

    // export-account while the server runs.
    let out = cli(&["export-account", "Alice", "--data-dir", data_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["username"], "alice");
    assert_eq!(json["devices"][0]["one_time_prekeys"], 3);
    assert_eq!(json["devices"][0]["one_time_kem_prekeys"], 2);
    assert_eq!(json["pending_envelopes"], 0);
    assert_eq!(json["identity_fingerprint"].as_str().unwrap().len(), 64);

    let out = cli(&["export-account", "nobody", "--data-dir", data_arg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no account named"));
    let out = cli(&["reports", "list", "--json", "--data-dir", data_arg]);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = cli(&["reports", "show", "7", "--data-dir", data_arg]);
    assert!(!out.status.success());

    // SIGTERM: graceful shutdown, exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    // Restart reuses the CA.
    let ca_before = std::fs::read(data.join("ca.pem")).unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--data-dir", data_arg])
        .env("MISSIVE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        line.starts_with("missive-server listening on https://"),
        "{line}"
    );
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), ca_before);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_input_gives_a_sentence_and_a_failure_exit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = cli(&["export-account", "alice", "--data-dir", data]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Missive database"), "{stderr}");
    let out = cli(&["export-account", "a b", "--data-dir", data]);
    assert!(!out.status.success());
    let out = cli(&["--listen", "not-an-address"]);
    assert!(!out.status.success());
    let out = cli(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--database",
        "--tls-cert",
        "MISSIVE_LISTEN",
        "MISSIVE_DATA_DIR",
        "MISSIVE_DATABASE_URL",
    ] {
        assert!(help.contains(flag), "--help does not document {flag}");
    }
}

#[tokio::test]
async fn logs_never_contain_tokens_keys_ciphertext_or_plaintext() {
    use base64::Engine;
    use missive_proto::v1::{EnvelopeType, OutgoingEnvelope, SendRequest};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env(
            "MISSIVE_LOG",
            "trace,h2=info,hyper=info,rustls=info,tower=info",
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("missive-server listening on ")
        .unwrap()
        .to_owned();
    let channel = connect(&url, &data.join("ca.pem")).await;
    let alice = register(&channel, "alice", 2, 2).await;
    let bob = register(&channel, "bob", 0, 0).await;
    let ciphertext: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    alice
        .messages()
        .send(alice.req(SendRequest {
            recipient: "bob".into(),
            message_id: vec![5; 16],
            envelopes: vec![OutgoingEnvelope {
                device_id: 1,
                registration_id: bob.registration_id,
                r#type: EnvelopeType::Message as i32,
                content: ciphertext.clone(),
                franking_commitment: vec![9; 32],
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    let token = login(&alice).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("account registered"),
        "the log was not captured: {logged}"
    );
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (what, secret) in [
        ("alice's first token", b64.encode(&alice.token)),
        ("alice's login token", b64.encode(&token)),
        ("bob's token", b64.encode(&bob.token)),
        ("ciphertext (hex)", hex::encode(&ciphertext)),
        ("ciphertext (base64)", b64.encode(&ciphertext)),
        (
            "identity key (hex)",
            hex::encode(wire_identity(&alice.identity).signing_key),
        ),
        ("token bytes (debug)", format!("{:?}", &alice.token[..8])),
        (
            "ciphertext bytes (debug)",
            format!("{:?}", &ciphertext[..8]),
        ),
    ] {
        assert!(!logged.contains(&secret), "{what} appears in the log");
    }
}
