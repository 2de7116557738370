//! Issue 15, encrypted attachments, end to end: a real `missive-server`
//! process, accounts registered with the real `missive` CLI, and the
//! client library's upload and download (`missive_client::attachments`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use missive_crypto::attachment::ATTACHMENT_CHUNK_LEN;
use missive_e2e::{Server, User, dir_contains};

fn config(server: &Server) -> missive_client::ServerConfig {
    missive_client::ServerConfig {
        url: server.url().to_owned(),
        ca: Some(server.ca()),
    }
}

/// Bytes that do not repeat with a short period, so a 64-byte window is unique.
fn file_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

fn setup() -> (tempfile::TempDir, Server, User, User) {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"), &root.path().join("log")).unwrap();
    let alice = User::new(root.path(), "alice");
    let bob = User::new(root.path(), "bob");
    for u in [&alice, &bob] {
        u.ok(&server, &["register", &u.name]).unwrap();
    }
    (root, server, alice, bob)
}

async fn round_trip(
    server: &Server,
    alice: &User,
    bob: &User,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) {
    let source = dir.join(name);
    std::fs::write(&source, bytes).unwrap();
    let mut sender = missive_client::Client::open(&alice.home, config(server)).unwrap();
    let pointer = sender.upload_attachment(&source).await.unwrap();
    assert_eq!(pointer.size, bytes.len() as u64);
    assert_eq!(pointer.file_name, name);
    let mut receiver = missive_client::Client::open(&bob.home, config(server)).unwrap();
    let saved = receiver
        .download_attachment(&pointer, &dir.join("saved"))
        .await
        .unwrap();
    assert_eq!(saved.file_name().unwrap().to_str().unwrap(), name);
    assert!(std::fs::read(&saved).unwrap() == bytes, "{name} differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_edge_size_arrive_byte_identical() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, len) in [
        ("empty.bin", 0usize),
        ("one.bin", 1),
        ("boundary.bin", ATTACHMENT_CHUNK_LEN),
        ("boundary-plus-one.bin", ATTACHMENT_CHUNK_LEN + 1),
        ("fifty.bin", 50 * 1024 * 1024),
    ] {
        round_trip(
            &server,
            &alice,
            &bob,
            &dir,
            name,
            &file_bytes(len, len as u32),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_and_a_tampered_blob_is_refused() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = file_bytes(1_000_000, 7);
    let source = dir.join("photo.jpg");
    std::fs::write(&source, &bytes).unwrap();
    let mut sender = missive_client::Client::open(&alice.home, config(&server)).unwrap();
    let pointer = sender.upload_attachment(&source).await.unwrap();
    assert_eq!(pointer.mime_type, "image/jpeg");
    let mut receiver = missive_client::Client::open(&bob.home, config(&server)).unwrap();
    // The server's data directory never holds the plaintext.
    for start in [0usize, 300_000, 999_000] {
        assert_eq!(
            dir_contains(server.data_dir(), &bytes[start..start + 64]).unwrap(),
            None
        );
    }

    // A download that stopped after 5 chunks and 100 more bytes left a
    // `.part` file: the next one continues after the last whole chunk.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let part = resumed.join(format!(".photo.jpg.{}.part", hex::encode(&pointer.blob_id)));
    std::fs::write(&part, &bytes[..5 * ATTACHMENT_CHUNK_LEN + 100]).unwrap();
    let saved = receiver
        .download_attachment(&pointer, &resumed)
        .await
        .unwrap();
    assert!(std::fs::read(&saved).unwrap() == bytes);
    assert!(!part.exists());
    // A second copy is not written over the first.
    let again = receiver
        .download_attachment(&pointer, &resumed)
        .await
        .unwrap();
    assert_eq!(again.file_name().unwrap(), "photo (2).jpg");

    // A `.part` whose saved chunks were altered locally fails the hash: never saved.
    let bad_part = dir.join("bad-part");
    std::fs::create_dir_all(&bad_part).unwrap();
    let mut altered = bytes[..3 * ATTACHMENT_CHUNK_LEN].to_vec();
    altered[10] ^= 1;
    std::fs::write(
        bad_part.join(format!(".photo.jpg.{}.part", hex::encode(&pointer.blob_id))),
        &altered,
    )
    .unwrap();
    let error = receiver
        .download_attachment(&pointer, &bad_part)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match the hash"), "{error}");
    assert!(!bad_part.join("photo.jpg").exists());

    // One byte of the blob altered on the server's disk: refused, naming the chunk.
    let blob = server
        .data_dir()
        .join("blobs")
        .join("data")
        .join(hex::encode(&pointer.blob_id));
    let mut stored = std::fs::read(&blob).unwrap();
    stored[3 * (ATTACHMENT_CHUNK_LEN + 16) + 9] ^= 0x40;
    std::fs::write(&blob, &stored).unwrap();
    let tampered = dir.join("tampered");
    let error = receiver
        .download_attachment(&pointer, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("chunk 3 does not authenticate"), "{error}");
    assert!(!tampered.join("photo.jpg").exists());

    // A wrong key is caught by the key commitment before any download.
    let mut wrong = pointer.clone();
    wrong.key[0] ^= 1;
    let error = receiver
        .download_attachment(&wrong, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match its commitment"), "{error}");
    // Nor can one fetch a blob that does not exist (or expired).
    let mut gone = pointer.clone();
    gone.blob_id = vec![0u8; 16];
    let error = receiver
        .download_attachment(&gone, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("expired"), "{error}");
}

// ---- through the real binaries: `send --file`, `recv`, `attachments` ------

/// Bob's one received message (recv --json), with a file.
fn received_file(run: &missive_e2e::Run) -> serde_json::Value {
    let lines = run.json_lines().unwrap();
    let files: Vec<_> = lines
        .into_iter()
        .filter(|v| v.get("file_name").is_some())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    files.into_iter().next().unwrap()
}

#[test]
fn the_cli_sends_and_saves_files_of_every_edge_size() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let fifty = file_bytes(50 * 1024 * 1024, 50);
    for (name, bytes) in [
        ("empty.bin", Vec::new()),
        ("one.bin", vec![0x5a]),
        ("boundary.bin", file_bytes(ATTACHMENT_CHUNK_LEN, 3)),
        ("fifty.bin", fifty.clone()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let sent = alice
            .ok(
                &server,
                &["send", "bob", "--file", path.to_str().unwrap(), "a caption"],
            )
            .unwrap();
        assert!(sent.stdout.contains("with the file"), "{}", sent.stdout);
        let run = bob.ok(&server, &["recv", "--json"]).unwrap();
        let m = received_file(&run);
        assert_eq!(m["file_name"], name);
        assert_eq!(m["size"], bytes.len() as u64);
        assert_eq!(m["text"], "a caption");
        assert!(m["file_error"].is_null());
        let saved = std::path::PathBuf::from(m["file"].as_str().unwrap());
        assert_eq!(saved.parent().unwrap(), bob.home.join("attachments"));
        assert!(std::fs::read(&saved).unwrap() == bytes, "{name} differs");
    }
    // The server's data directory never holds the plaintext.
    for start in [0usize, 20_000_000, 50 * 1024 * 1024 - 64] {
        assert_eq!(
            dir_contains(server.data_dir(), &fifty[start..start + 64]).unwrap(),
            None
        );
    }

    // The same name again, into --save-dir where that name exists: a new name.
    let save = root.path().join("elsewhere");
    std::fs::create_dir_all(&save).unwrap();
    std::fs::write(save.join("one.bin"), b"mine").unwrap();
    let path = dir.join("one.bin");
    alice
        .ok(&server, &["send", "bob", "--file", path.to_str().unwrap()])
        .unwrap();
    let run = bob
        .ok(
            &server,
            &["recv", "--json", "--save-dir", save.to_str().unwrap()],
        )
        .unwrap();
    let m = received_file(&run);
    assert_eq!(m["file"], save.join("one (2).bin").to_str().unwrap());
    assert_eq!(m["text"], "");
    assert_eq!(std::fs::read(save.join("one.bin")).unwrap(), b"mine");
    // The plain output says where.
    alice
        .ok(
            &server,
            &["send", "bob", "--file", path.to_str().unwrap(), "again"],
        )
        .unwrap();
    let run = bob.ok(&server, &["recv"]).unwrap();
    assert!(
        run.stdout.contains("[file] one.bin (1 B), saved to "),
        "{}",
        run.stdout
    );

    // `attachments` lists both sides; `history --json` carries the file.
    let list = bob
        .ok(&server, &["attachments", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    assert_eq!(list.len(), 6);
    assert!(
        list.iter()
            .all(|v| v["from"] == "alice" && !v["file"].is_null())
    );
    let sent = alice.ok(&server, &["attachments"]).unwrap();
    assert_eq!(sent.stdout.lines().count(), 6, "{}", sent.stdout);
    assert!(
        sent.stdout.contains("fifty.bin\tto bob\t50.0 MiB"),
        "{}",
        sent.stdout
    );
    let history = bob
        .ok(&server, &["history", "alice", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|v| v["file_name"] == "fifty.bin")
            .count(),
        1
    );

    // A message with a file is reported with its pointer, and verifies.
    let id = history
        .iter()
        .find(|v| v["file_name"] == "boundary.bin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = bob
        .ok(&server, &["report", &id, "--reason", "unwanted file"])
        .unwrap();
    assert!(
        report.stdout.contains("accepted by the server"),
        "{}",
        report.stdout
    );
    // The moderator sees the file in the report, and fetches, opens and
    // checks it with the key the reporter disclosed.
    let report_id = report.stdout.split_whitespace().nth(1).unwrap().to_owned();
    let shown = server.admin(&["reports", "show", &report_id]).unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("file:      \"boundary.bin\""), "{shown}");
    let out = root.path().join("moderator.bin");
    let saved = server
        .admin(&[
            "reports",
            "save-file",
            &report_id,
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    assert!(std::fs::read(&out).unwrap() == file_bytes(ATTACHMENT_CHUNK_LEN, 3));
    // Never over an existing file.
    let again = server
        .admin(&[
            "reports",
            "save-file",
            &report_id,
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );
    // A blob changed on the server after the report does not verify: nothing saved.
    let blob = shown
        .split("blob ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_owned();
    let blob_path = server.data_dir().join("blobs").join("data").join(&blob);
    let mut stored = std::fs::read(&blob_path).unwrap();
    stored[10] ^= 1;
    std::fs::write(&blob_path, &stored).unwrap();
    let out = root.path().join("tampered.bin");
    let refused = server
        .admin(&[
            "reports",
            "save-file",
            &report_id,
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not verify"),
        "{refused:?}"
    );
    assert!(!out.exists());
    assert!(!root.path().join("tampered.bin.part").exists());

    // A file that does not exist: one sentence, non-zero exit.
    let missing = alice
        .run(&server, &["send", "bob", "--file", "/nonexistent/x.bin"])
        .unwrap();
    assert!(!missing.ok());
    assert!(
        missing.stderr.contains("cannot read /nonexistent/x.bin"),
        "{}",
        missing.stderr
    );
}

#[test]
fn killed_uploads_and_downloads_resume_and_two_processes_save_once() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = file_bytes(3_000_000, 11);
    let path = dir.join("big.bin");
    std::fs::write(&path, &bytes).unwrap();
    let p = path.to_str().unwrap();

    // Killed after ~1.5 MB: nothing sent, the server keeps what arrived.
    let killed = alice
        .run_with(
            &server,
            &["send", "bob", "--file", p],
            &[("MISSIVE_TEST_CRASH_AFTER_BYTES", "1500000")],
            None,
        )
        .unwrap();
    assert_eq!(killed.code, Some(75), "{killed:?}");
    // The server commits what arrived once it sees the stream break.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let resumed = alice.ok(&server, &["send", "bob", "--file", p]).unwrap();
    let note = resumed
        .stderr
        .lines()
        .find(|l| l.starts_with("resuming the upload of"))
        .unwrap_or_else(|| panic!("no resume note: {}", resumed.stderr));
    let at: u64 = note
        .split(" at ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= 1_000_000, "resumed at {at}: {note}");
    // Bob's download is killed half-way: no message shown, a .part kept.
    let killed = bob
        .run_with(
            &server,
            &["recv", "--json"],
            &[("MISSIVE_TEST_CRASH_AFTER_BYTES", "1500000")],
            None,
        )
        .unwrap();
    assert_eq!(killed.code, Some(75), "{killed:?}");
    assert!(!killed.stdout.contains("big.bin"), "{}", killed.stdout);
    let parts: Vec<_> = std::fs::read_dir(bob.home.join("attachments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(parts.iter().all(|n| n.ends_with(".part")), "{parts:?}");
    assert_eq!(parts.len(), 1);
    // The next recv resumes it and only then shows the message.
    let run = bob.ok(&server, &["recv", "--json"]).unwrap();
    assert!(
        run.stderr.contains("resuming the download of big.bin at"),
        "{}",
        run.stderr
    );
    let m = received_file(&run);
    assert!(std::fs::read(m["file"].as_str().unwrap()).unwrap() == bytes);
    assert!(!bob.home.join("attachments").join(&parts[0]).exists());

    // Two recv processes on one home at once: the file is saved once.
    // A sent file leaves no unfinished upload behind: this one starts afresh.
    let fresh = alice
        .ok(&server, &["send", "bob", "--file", p, "twice?"])
        .unwrap();
    assert!(!fresh.stderr.contains("resuming"), "{}", fresh.stderr);
    let a = bob.spawn(&server, &["recv", "--json"]).unwrap();
    let b = bob.spawn(&server, &["recv", "--json"]).unwrap();
    let (a, b) = (a.wait().unwrap(), b.wait().unwrap());
    assert!(a.ok() && b.ok(), "{a:?} {b:?}");
    // One of them (or a later recv) shows it; never both.
    let shown = [&a, &b]
        .iter()
        .filter(|r| r.stdout.contains("big.bin"))
        .count();
    let later = bob.ok(&server, &["recv", "--json"]).unwrap();
    assert_eq!(
        shown + usize::from(later.stdout.contains("big.bin")),
        1,
        "{a:?} {b:?} {later:?}"
    );
    let saved: Vec<_> = std::fs::read_dir(bob.home.join("attachments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut saved = saved;
    saved.sort();
    assert_eq!(saved, ["big (2).bin", "big.bin"]);
}

#[test]
fn a_tampered_blob_is_refused_by_recv_and_never_saved() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = file_bytes(1_000_000, 5);
    let path = dir.join("photo.jpg");
    std::fs::write(&path, &bytes).unwrap();
    alice
        .ok(&server, &["send", "bob", "--file", path.to_str().unwrap()])
        .unwrap();
    let blobs = server.data_dir().join("blobs").join("data");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut stored = std::fs::read(&blob).unwrap();
    stored[2 * (ATTACHMENT_CHUNK_LEN + 16) + 100] ^= 1;
    std::fs::write(&blob, &stored).unwrap();
    let run = bob.ok(&server, &["recv", "--json"]).unwrap();
    assert!(
        run.stderr.contains("chunk 2 does not authenticate"),
        "{}",
        run.stderr
    );
    let m = received_file(&run);
    assert!(m["file"].is_null());
    assert!(m["file_error"].as_str().unwrap().contains("chunk 2"));
    let saved = bob.home.join("attachments");
    assert!(!saved.join("photo.jpg").exists());
    // Refused for good: not fetched again, listed as refused.
    let again = bob.ok(&server, &["recv", "--json"]).unwrap();
    assert!(!again.stdout.contains("photo.jpg"), "{}", again.stdout);
    let list = bob.ok(&server, &["attachments"]).unwrap();
    assert!(list.stdout.contains("refused"), "{}", list.stdout);
}

/// `m` (a `recv --json` object) carries a file refused for `why`, not saved.
fn assert_refused(m: &serde_json::Value, why: &str) {
    assert!(m["file"].is_null(), "{m}");
    assert!(
        m["file_error"].as_str().unwrap_or_default().contains(why),
        "{m}"
    );
}

/// The lying server serves another blob, flips a byte, cuts the stream
/// short or lies about the size: each file is refused or left unsaved,
/// never shown as complete, and an honest server afterwards delivers it.
#[test]
fn a_lying_server_cannot_pass_off_a_wrong_tampered_or_cut_file() {
    let w = missive_e2e::liar::World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let dir = w.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let send = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        alice
            .ok(&w.liar, &["send", "bob", "--file", path.to_str().unwrap()])
            .unwrap();
        w.liar.created_blobs().last().unwrap().clone()
    };
    let saved = bob.home.join("attachments");

    // Another genuine blob, under another key, in place of the one sent.
    let a = file_bytes(300_000, 21);
    let blob_a = send("a.bin", &a);
    let blob_b = send("b.bin", &file_bytes(300_000, 22));
    w.liar.swap_blob(&blob_b, &blob_a);
    let run = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    let lines = run.json_lines().unwrap();
    let by_name = |n: &str| lines.iter().find(|v| v["file_name"] == n).unwrap().clone();
    assert!(std::fs::read(by_name("a.bin")["file"].as_str().unwrap()).unwrap() == a);
    let b = by_name("b.bin");
    assert_refused(&b, "does not authenticate");
    assert!(!saved.join("b.bin").exists());
    w.liar.stop_lying();

    // One flipped bit in the second chunk.
    send("c.bin", &file_bytes(200_000, 23));
    w.liar.rewrite_downloads(|chunk| {
        if chunk.offset <= ATTACHMENT_CHUNK_LEN as u64 + 100
            && chunk.offset + chunk.data.len() as u64 > ATTACHMENT_CHUNK_LEN as u64 + 100
        {
            let i = (ATTACHMENT_CHUNK_LEN as u64 + 100 - chunk.offset) as usize;
            chunk.data[i] ^= 1;
        }
    });
    let run = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    let c = received_file(&run);
    assert_refused(&c, "does not authenticate");
    assert!(!saved.join("c.bin").exists());
    w.liar.stop_lying();

    // A size other than the message announced.
    send("d.bin", &file_bytes(100_000, 24));
    w.liar.rewrite_downloads(|chunk| chunk.size += 1);
    let run = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    let d = received_file(&run);
    assert!(d["file_error"].as_str().unwrap().contains("size"), "{d}");
    w.liar.stop_lying();

    // Streams that end early, as if complete: the message waits, unsaved.
    let e = file_bytes(400_000, 25);
    send("e.bin", &e);
    w.liar.cut_downloads(30_000);
    let run = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(!run.stdout.contains("e.bin"), "{}", run.stdout);
    assert!(run.stderr.contains("not saved yet"), "{}", run.stderr);
    assert!(!saved.join("e.bin").exists());
    w.liar.stop_lying();
    let run = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    let m = received_file(&run);
    assert!(std::fs::read(m["file"].as_str().unwrap()).unwrap() == e);

    // Refused files stay refused and are never fetched again.
    let list = bob.ok(&w.liar, &["attachments"]).unwrap();
    for name in ["b.bin", "c.bin", "d.bin"] {
        assert!(
            list.stdout
                .lines()
                .any(|l| l.contains(name) && l.contains("refused")),
            "{}",
            list.stdout
        );
    }
}
