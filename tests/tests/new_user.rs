//! Issue 16, "What a new user saw": each finding as the user met it, through
//! the real binaries against a real server behind the lying proxy (which
//! also plays a server that breaks connections or shuts down).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use missive_e2e::liar::{Rpc, World};
use missive_e2e::{Endpoint as _, Run, Server, User, binaries};
use tonic::Code;

fn failed_with(r: &Run, sentence: &str) {
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains(sentence), "wanted {sentence:?}: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

fn texts(r: &Run) -> Vec<String> {
    r.json_lines()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect()
}

/// `missive ARGS` as `user` with standard output a pipe whose reader is
/// already gone (`missive ... | head -1` once head has exited).
fn run_into_closed_pipe(user: &User, w: &World, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(binaries().unwrap().client)
        .arg("--home")
        .arg(&user.home)
        .arg("--server")
        .arg(w.liar.url())
        .arg("--ca")
        .arg(w.liar.ca())
        .args(args)
        .env_remove("MISSIVE_PASSPHRASE")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn one_shot_commands_refuse_or_explain_in_one_sentence() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");

    // Empty messages are not sent.
    for args in [&["send", "bob", ""][..], &["send", "bob", "  \n "]] {
        failed_with(&alice.run(&w.liar, args).unwrap(), "the message is empty");
    }
    let r = alice
        .run_with(&w.liar, &["send", "bob", "-"], &[], Some(""))
        .unwrap();
    failed_with(&r, "the message is empty");
    // Nor to yourself.
    failed_with(
        &alice.run(&w.liar, &["send", "alice", "hi me"]).unwrap(),
        "cannot send a message to yourself",
    );
    assert!(texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());
    // An unknown contact's history is explained, not silently empty.
    failed_with(
        &alice.run(&w.liar, &["history", "zed"]).unwrap(),
        "unknown contact",
    );

    // The safety-number hint names the contact; a closed pipe is no panic.
    let sn = alice.ok(&w.liar, &["safety-number", "bob"]).unwrap();
    assert!(
        sn.stdout.contains("`missive verify bob SAFETY_NUMBER`"),
        "{sn:?}"
    );
    let out = run_into_closed_pipe(&alice, &w, &["safety-number", "bob"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // Peer text cannot fake a line or colour the terminal in recv/history.
    let fake = "ok\n[2026-01-01T00:00:00Z] alice: please send me your password\x1b[31m";
    bob.ok(&w.liar, &["send", "alice", fake]).unwrap();
    for args in [&["recv"][..], &["history", "bob"]] {
        let r = alice.ok(&w.liar, args).unwrap();
        assert!(!r.stdout.contains('\x1b'), "{args:?}: {r:?}");
        let lines: Vec<&str> = r.stdout.lines().collect();
        let i = lines.iter().position(|l| l.ends_with("bob: ok")).unwrap();
        assert!(lines[i + 1].starts_with("    | [2026"), "{lines:?}");
    }

    // A second report of one message is refused with a sentence.
    bob.ok(&w.liar, &["send", "alice", "buy my pills"]).unwrap();
    let got = alice.ok(&w.liar, &["recv", "--json"]).unwrap();
    let id = got.json_lines().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice
        .ok(&w.liar, &["report", &id, "--reason", "spam"])
        .unwrap();
    failed_with(
        &alice
            .run(&w.liar, &["report", &id, "--reason", "spam"])
            .unwrap(),
        "you already reported the message",
    );

    // Passphrases: empty at register, and given to a key-file account.
    let carol = User::new(w.root.path(), "carol");
    let r = carol
        .run_with(
            &w.liar,
            &["register", "carol"],
            &[("MISSIVE_PASSPHRASE", "")],
            None,
        )
        .unwrap();
    failed_with(&r, "the passphrase is empty");
    let r = alice
        .run_with(
            &w.liar,
            &["contacts"],
            &[("MISSIVE_PASSPHRASE", "secret")],
            None,
        )
        .unwrap();
    failed_with(&r, "is not protected by a passphrase");
    assert!(!r.stderr.contains("passphrase.salt"), "{r:?}");

    // delete-account without a terminal needs --yes, and deletes nothing.
    failed_with(
        &bob.run(&w.liar, &["delete-account"]).unwrap(),
        "pass --yes to confirm",
    );
    bob.ok(&w.liar, &["send", "alice", "still here"]).unwrap();
    bob.ok(&w.liar, &["delete-account", "--yes"]).unwrap();
}

#[test]
fn transport_failures_and_shutdowns_are_worded_as_what_happened() {
    let w = World::new();
    let alice = w.user("alice");
    let _bob = w.user("bob");

    w.liar.fail(
        Rpc::Send,
        Code::Unknown,
        "h2 protocol error: error reading a body from connection",
    );
    let r = alice.run(&w.liar, &["send", "bob", "hi"]).unwrap();
    failed_with(&r, "broke during the request");
    assert!(!r.stderr.contains("refused"), "{r:?}");

    w.liar.fail(Rpc::Send, Code::Unknown, "transport error");
    let r = alice.run(&w.liar, &["send", "bob", "hi"]).unwrap();
    failed_with(&r, "broke during the request");
    assert!(!r.stderr.contains("refused"), "{r:?}");

    w.liar.fail(
        Rpc::Send,
        Code::Unavailable,
        "the server is shutting down; reconnect shortly",
    );
    let r = alice.run(&w.liar, &["send", "bob", "hi"]).unwrap();
    failed_with(
        &r,
        "is shutting down (restarting, usually). Try again in a moment.",
    );
    assert!(!r.stderr.contains("Is it running?"), "{r:?}");
    w.liar.clear_failure(Rpc::Send);
    alice.ok(&w.liar, &["send", "bob", "hi"]).unwrap();
}

#[test]
fn recv_wait_reconnects_after_a_server_restart_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &root.path().join("server-data"),
        &root.path().join("server.log"),
    )
    .unwrap();
    let alice = User::new(root.path(), "alice");
    alice.ok(&server, &["register", "alice"]).unwrap();
    let bob = User::new(root.path(), "bob");
    bob.ok(&server, &["register", "bob"]).unwrap();
    alice.ok(&server, &["send", "bob", "before"]).unwrap();

    let waiting = bob
        .spawn(&server, &["recv", "--json", "--wait", "20"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.restart_same_port().unwrap();
    alice
        .ok(&server, &["send", "bob", "after the restart"])
        .unwrap();
    let r = waiting.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(texts(&r), ["before", "after the restart"], "{r:?}");
    assert!(r.stderr.contains("reconnecting in"), "{r:?}");
    assert!(r.stderr.contains("reconnected to the server"), "{r:?}");
}

#[test]
fn an_empty_store_file_is_refused_not_recreated() {
    let w = World::new();
    let alice = w.user("alice");
    let db = alice.home.join("missive.db");
    for suffix in ["-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(&db, b"").unwrap();
    for args in [
        &["contacts"][..],
        &["send", "bob", "hi"],
        &["register", "alice"],
    ] {
        let r = alice.run(&w.liar, args).unwrap();
        failed_with(&r, "is empty (0 bytes)");
    }
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}
