//! End to end: the real `missive-server` and `missive` binaries over TLS on
//! 127.0.0.1 (see `missive_e2e` for how the binaries are built and found).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_e2e::{Server, User, dir_contains, safety_digits};
use serde_json::Value;

struct World {
    root: tempfile::TempDir,
    server: Server,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir().unwrap();
        let server = Server::start(
            &root.path().join("server-data"),
            &root.path().join("server.log"),
        )
        .unwrap();
        World { root, server }
    }

    fn user(&self, name: &str) -> User {
        let u = User::new(self.root.path(), name);
        u.ok(&self.server, &["register", name]).unwrap();
        u
    }

    fn restart(&mut self) {
        self.server.stop();
        self.server = Server::start(
            &self.root.path().join("server-data"),
            &self.root.path().join("server.log"),
        )
        .unwrap();
    }
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn two_users_exchange_messages_in_order_exactly_once() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");

    alice
        .ok(&w.server, &["send", "bob", "first: meet at the old mill"])
        .unwrap();
    alice
        .ok(&w.server, &["send", "bob", "second: bring the map"])
        .unwrap();
    let piped = alice
        .run_with(
            &w.server,
            &["send", "bob", "-"],
            &[],
            Some("third: from stdin\n"),
        )
        .unwrap();
    assert!(piped.ok(), "{piped:?}");

    // While pending, the server's data directory holds only ciphertext.
    for text in ["meet at the old mill", "bring the map", "from stdin"] {
        assert_eq!(
            dir_contains(w.server.data_dir(), text.as_bytes()).unwrap(),
            None
        );
    }

    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    let msgs = r.json_lines().unwrap();
    assert_eq!(
        texts(&msgs),
        [
            "first: meet at the old mill",
            "second: bring the map",
            "third: from stdin"
        ]
    );
    for m in &msgs {
        assert_eq!(m["from"], "alice");
        assert_eq!(m["id"].as_str().unwrap().len(), 32);
        let sent_at = m["sent_at"].as_str().unwrap();
        assert!(humantime_like(sent_at), "{sent_at}");
    }
    let again = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(again.json_lines().unwrap(), Vec::<Value>::new());

    bob.ok(&w.server, &["send", "alice", "got all three"])
        .unwrap();
    let r = alice.ok(&w.server, &["recv", "--json"]).unwrap();
    let msgs = r.json_lines().unwrap();
    assert_eq!(texts(&msgs), ["got all three"]);
    assert_eq!(msgs[0]["from"], "bob");
    // The conversation keeps going on the established sessions.
    alice.ok(&w.server, &["send", "bob", "great"]).unwrap();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["great"]);

    // Same safety number on both sides, 12 groups of 5 digits.
    let a = safety_digits(
        &alice
            .ok(&w.server, &["safety-number", "bob"])
            .unwrap()
            .stdout,
    );
    let b = safety_digits(
        &bob.ok(&w.server, &["safety-number", "alice"])
            .unwrap()
            .stdout,
    );
    assert_eq!(a.split(' ').count(), 12, "{a}");
    assert_eq!(a, b);
    // A number that is not the one compared is refused, the right one taken.
    let wrong = alice
        .run(&w.server, &["verify", "bob", &"1".repeat(60)])
        .unwrap();
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    assert!(wrong.stderr.contains("does not match"), "{}", wrong.stderr);
    alice.ok(&w.server, &["verify", "bob", &a]).unwrap();
    let contacts = alice.ok(&w.server, &["contacts"]).unwrap().stdout;
    assert!(contacts.contains("bob\tverified"), "{contacts}");

    let h = bob.ok(&w.server, &["history", "alice", "--json"]).unwrap();
    let h = h.json_lines().unwrap();
    assert_eq!(h.len(), 5);
    assert_eq!(h[3]["text"], "got all three");
    assert_eq!(h[3]["outgoing"], true);

    for text in ["old mill", "got all three", "great"] {
        assert_eq!(
            dir_contains(w.server.data_dir(), text.as_bytes()).unwrap(),
            None
        );
    }
}

fn humantime_like(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' && s.ends_with('Z')
}

#[test]
fn offline_user_receives_after_server_restart() {
    let mut w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.server, &["send", "bob", "while you were away"])
        .unwrap();
    w.restart();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["while you were away"]);
}

#[test]
fn crash_between_store_and_ack_shows_the_message_once() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.server, &["send", "bob", "exactly once"])
        .unwrap();

    let crashed = bob
        .run_with(
            &w.server,
            &["recv", "--json"],
            &[("MISSIVE_TEST_CRASH_BEFORE_ACK", "1")],
            None,
        )
        .unwrap();
    assert_eq!(crashed.code, Some(75), "{crashed:?}");
    assert!(!crashed.stdout.contains("exactly once"));

    // The server redelivers; the client recognises the envelope.
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["exactly once"]);
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert!(r.json_lines().unwrap().is_empty(), "{r:?}");
    let h = bob.ok(&w.server, &["history", "alice", "--json"]).unwrap();
    assert_eq!(texts(&h.json_lines().unwrap()), ["exactly once"]);
    // The session survived the crash: the conversation continues.
    alice.ok(&w.server, &["send", "bob", "and again"]).unwrap();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["and again"]);
}

#[test]
fn changed_identity_is_refused_until_trusted() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.server, &["send", "bob", "hello old bob"])
        .unwrap();
    bob.ok(&w.server, &["recv"]).unwrap();
    bob.ok(&w.server, &["send", "alice", "hi"]).unwrap();
    alice.ok(&w.server, &["recv"]).unwrap();

    bob.ok(&w.server, &["delete-account", "--yes"]).unwrap();
    bob.ok(&w.server, &["register", "bob"]).unwrap();

    let refused = alice
        .run(&w.server, &["send", "bob", "are you still you?"])
        .unwrap();
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("identity key of bob has changed"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("missive safety-number bob"));
    assert!(refused.stderr.contains("missive trust bob"));
    assert!(!refused.stderr.contains("panicked"));
    // Still refused on a second try, and verify refuses too.
    assert_eq!(
        alice.run(&w.server, &["send", "bob", "x"]).unwrap().code,
        Some(1)
    );
    assert_eq!(
        alice
            .run(&w.server, &["verify", "bob", &"0".repeat(60)])
            .unwrap()
            .code,
        Some(1)
    );
    let contacts = alice.ok(&w.server, &["contacts"]).unwrap().stdout;
    assert!(contacts.contains("IDENTITY CHANGED"), "{contacts}");

    // Compare, accept, and talk to the new bob.
    let sn = alice
        .ok(&w.server, &["safety-number", "bob"])
        .unwrap()
        .stdout;
    let bob_sn = bob
        .ok(&w.server, &["safety-number", "alice"])
        .unwrap()
        .stdout;
    assert_eq!(safety_digits(&sn), safety_digits(&bob_sn));
    alice
        .ok(&w.server, &["trust", "bob", &safety_digits(&sn)])
        .unwrap();
    alice
        .ok(&w.server, &["send", "bob", "welcome back"])
        .unwrap();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["welcome back"]);
}

#[test]
fn errors_are_sentences() {
    let w = World::new();
    let alice = w.user("alice");
    let r = alice
        .run(&w.server, &["send", "nobody-here", "hi"])
        .unwrap();
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("no Missive user called \"nobody-here\""),
        "{}",
        r.stderr
    );

    let r = alice.run(&w.server, &["register", "alice"]).unwrap();
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("already holds the account"),
        "{}",
        r.stderr
    );

    let other = User::new(w.root.path(), "mallory");
    let r = other.run(&w.server, &["register", "alice"]).unwrap();
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("already taken"), "{}", r.stderr);

    // A CA that did not sign this server's certificate.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = Server::start(
        &stranger_dir.path().join("data"),
        &stranger_dir.path().join("log"),
    )
    .unwrap();
    let out = std::process::Command::new(missive_e2e::binaries().unwrap().client)
        .arg("--home")
        .arg(w.root.path().join("carol"))
        .args(["--server", w.server.url(), "--ca"])
        .arg(stranger.ca())
        .args(["register", "carol"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("certificate that is not trusted"), "{err}");
}

#[test]
fn genuine_message_can_be_reported() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.server, &["send", "bob", "buy my fake watches"])
        .unwrap();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    let msgs = r.json_lines().unwrap();
    let id = msgs[0]["id"].as_str().unwrap();
    let rep = bob
        .ok(&w.server, &["report", id, "--reason", "spam"])
        .unwrap();
    assert!(rep.stdout.contains("accepted"), "{rep:?}");
    // The moderator sees the verified report with the reported text.
    let list = w.server.admin(&["reports", "list", "--json"]).unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let reports: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{list}");
    assert!(list.contains("buy my fake watches"), "{list}");
    assert!(list.contains("spam"), "{list}");
    // Only received messages can be reported; unknown ids are explained.
    let r = bob
        .run(&w.server, &["report", "00112233445566778899aabbccddeeff"])
        .unwrap();
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("no received message with id"),
        "{}",
        r.stderr
    );
}

#[test]
fn export_account_holds_no_content_and_no_correspondents() {
    let w = World::new();
    let quentin = w.user("quentin");
    let ursula = w.user("ursula");
    quentin
        .ok(&w.server, &["send", "ursula", "the launch codes are 0000"])
        .unwrap();
    // One message stays pending, one is delivered and acknowledged.
    ursula.ok(&w.server, &["recv"]).unwrap();
    ursula
        .ok(&w.server, &["send", "quentin", "lunch on thursday?"])
        .unwrap();
    quentin
        .ok(&w.server, &["send", "ursula", "still pending for you"])
        .unwrap();

    for (who, other) in [("quentin", "ursula"), ("ursula", "quentin")] {
        let out = w.server.admin(&["export-account", who]).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_str(&stdout).unwrap();
        assert!(json.is_object(), "{stdout}");
        assert!(stdout.contains(who), "{stdout}");
        assert!(
            !stdout.contains(other),
            "export of {who} names {other}: {stdout}"
        );
        for text in ["launch codes", "lunch on thursday", "still pending"] {
            assert!(!stdout.contains(text), "{stdout}");
        }
    }
}

#[test]
fn forged_commitment_is_dropped_and_cannot_be_shown() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let forged = alice
        .run_with(
            &w.server,
            &["send", "bob", "you will never see this"],
            &[("MISSIVE_TEST_FORGE_COMMITMENT", "1")],
            None,
        )
        .unwrap();
    assert!(forged.ok(), "{forged:?}");
    alice
        .ok(&w.server, &["send", "bob", "an honest message"])
        .unwrap();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["an honest message"]);
    assert!(
        r.stderr.contains("dropped a message from alice"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("franking commitment"), "{}", r.stderr);
    let h = bob.ok(&w.server, &["history", "alice"]).unwrap().stdout;
    assert!(!h.contains("never see this"), "{h}");
}

#[test]
fn recv_wait_delivers_live_messages() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    // First contact so the live message travels on an established session.
    alice.ok(&w.server, &["send", "bob", "before"]).unwrap();
    let started = std::time::Instant::now();
    let server_url = w.server.url().to_owned();
    let ca = w.server.ca();
    let home = bob.home.clone();
    let listener = std::thread::spawn(move || {
        std::process::Command::new(missive_e2e::binaries().unwrap().client)
            .arg("--home")
            .arg(home)
            .args(["--server", &server_url, "--ca"])
            .arg(ca)
            .args(["recv", "--json", "--wait", "4"])
            .output()
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    alice.ok(&w.server, &["send", "bob", "live one"]).unwrap();
    let out = listener.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got, ["before", "live one"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(4));
}

#[test]
fn passphrase_protected_account_works_and_is_required() {
    let w = World::new();
    let alice = w.user("alice");
    let carol = User::new(w.root.path(), "carol");
    let pass = [("MISSIVE_PASSPHRASE", "correct horse battery staple")];
    let r = carol
        .run_with(&w.server, &["register", "carol"], &pass, None)
        .unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(!carol.home.join("storage.key").exists());
    alice
        .ok(&w.server, &["send", "carol", "for your eyes only"])
        .unwrap();

    let without = carol.run(&w.server, &["recv"]).unwrap();
    assert_eq!(without.code, Some(1));
    assert!(
        without.stderr.contains("set MISSIVE_PASSPHRASE"),
        "{}",
        without.stderr
    );
    let wrong = carol
        .run_with(
            &w.server,
            &["recv"],
            &[("MISSIVE_PASSPHRASE", "wrong")],
            None,
        )
        .unwrap();
    assert_eq!(wrong.code, Some(1));
    assert!(
        wrong.stderr.contains("wrong MISSIVE_PASSPHRASE"),
        "{}",
        wrong.stderr
    );

    let r = carol
        .run_with(&w.server, &["recv", "--json"], &pass, None)
        .unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(texts(&r.json_lines().unwrap()), ["for your eyes only"]);
    assert_eq!(
        dir_contains(&carol.home, b"for your eyes only").unwrap(),
        None
    );
}

#[test]
fn recv_warns_when_a_contact_comes_back_with_a_new_identity() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.server, &["send", "bob", "hi bob"]).unwrap();
    bob.ok(&w.server, &["recv"]).unwrap();

    bob.ok(&w.server, &["delete-account", "--yes"]).unwrap();
    bob.ok(&w.server, &["register", "bob"]).unwrap();
    bob.ok(&w.server, &["send", "alice", "it's me, new phone"])
        .unwrap();

    let r = alice.ok(&w.server, &["recv", "--json"]).unwrap();
    let shown = r.json_lines().unwrap();
    assert_eq!(texts(&shown), ["it's me, new phone"]);
    // Kept apart from bob's conversation until alice decides.
    assert_eq!(shown[0]["quarantined"], true);
    let plain = alice.ok(&w.server, &["history", "bob", "--json"]).unwrap();
    assert!(!plain.stdout.contains("new phone"), "{}", plain.stdout);
    assert!(
        r.stderr.contains("identity key of bob has changed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("missive trust bob"), "{}", r.stderr);
    // Replying stays blocked until alice accepts the new key.
    let refused = alice.run(&w.server, &["send", "bob", "prove it"]).unwrap();
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("identity key of bob has changed"));
    let sn = safety_digits(
        &alice
            .ok(&w.server, &["safety-number", "bob"])
            .unwrap()
            .stdout,
    );
    alice.ok(&w.server, &["trust", "bob", &sn]).unwrap();
    let h = alice.ok(&w.server, &["history", "bob", "--json"]).unwrap();
    assert!(h.stdout.contains("new phone"), "accepted: {}", h.stdout);
    alice
        .ok(&w.server, &["send", "bob", "welcome back"])
        .unwrap();
    let r = bob.ok(&w.server, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r.json_lines().unwrap()), ["welcome back"]);
}

/// Issue 12, item 9: the CA is trusted from `--ca`, `MISSIVE_CA` or the one
/// remembered at registration — never from `./missive-data/ca.pem` of
/// whatever directory the command runs in.
#[test]
fn the_ca_comes_from_the_account_not_the_working_directory() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.server, &["send", "bob", "hi"]).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("missive-data")).unwrap();
    std::fs::copy(w.server.ca(), cwd.path().join("missive-data/ca.pem")).unwrap();
    let recv = |home: &std::path::Path| {
        std::process::Command::new(missive_e2e::binaries().unwrap().client)
            .current_dir(cwd.path())
            .args(["--server", w.server.url(), "--home"])
            .arg(home)
            .arg("recv")
            .env_remove("MISSIVE_CA")
            .env_remove("MISSIVE_PASSPHRASE")
            .output()
            .unwrap()
    };
    // Remembered at register: no --ca needed.
    let out = recv(&bob.home);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hi"));
    // Without the remembered CA, the file in the working directory is not used.
    std::fs::remove_file(bob.home.join("ca.pem")).unwrap();
    let out = recv(&bob.home);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not trusted"),
        "{out:?}"
    );
}
