//! `missive chat` in a real pseudo-terminal against a real server, its
//! screen read back through a terminal emulator parser (vt100): open,
//! receive live, scroll to the newest after long wrapped messages, resize,
//! paste, switch conversation, verification from a second process on the
//! same home, reconnection, quit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use missive_e2e::liar::{LyingServer, Rpc};
use missive_e2e::{Endpoint, Server, User, binaries};
use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};

const WAIT: Duration = Duration::from_secs(30);

struct Pty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    writer: Box<dyn std::io::Write + Send>,
    parser: Arc<Mutex<vt100::Parser>>,
}

impl Pty {
    fn spawn<E: Endpoint>(user: &User, server: &E, args: &[&str], rows: u16, cols: u16) -> Pty {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(binaries().unwrap().client);
        cmd.arg("--home");
        cmd.arg(&user.home);
        cmd.arg("--server");
        cmd.arg(server.url());
        cmd.arg("--ca");
        cmd.arg(server.ca());
        for a in args {
            cmd.arg(a);
        }
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("MISSIVE_PASSPHRASE");
        cmd.env_remove("MISSIVE_HOME");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let p = parser.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => p.lock().unwrap().process(&buf[..n]),
                }
            }
        });
        Pty {
            child,
            master: pair.master,
            writer,
            parser,
        }
    }

    fn screen(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    fn cell(&self, row: u16, col: u16) -> String {
        self.parser
            .lock()
            .unwrap()
            .screen()
            .cell(row, col)
            .map(|c| c.contents())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the screen; panics with the screen.
    fn wait_for(&self, what: &str, pred: impl Fn(&Pty, &str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(self, &s) {
                return s;
            }
            if start.elapsed() > WAIT {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_text(&self, text: &str) -> String {
        self.wait_for(text, |_, s| s.contains(text))
    }

    fn send(&mut self, bytes: &str) {
        self.writer.write_all(bytes.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        self.parser.lock().unwrap().set_size(rows, cols);
        self.master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
    }

    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > WAIT {
                panic!("chat did not exit; screen:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

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
}

fn safety_digits(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            !parts.is_empty()
                && parts
                    .iter()
                    .all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn chat_scrolls_resizes_pastes_switches_and_quits_on_a_real_terminal() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    // The issue's reproduction: one 439-character message and 24 short ones.
    let long: String = "lorem ipsum dolor sit amet ".repeat(17)[..439].to_owned();
    alice.ok(&w.server, &["send", "bob", &long]).unwrap();
    for i in 1..=24 {
        alice
            .ok(&w.server, &["send", "bob", &format!("fill {i}")])
            .unwrap();
    }
    carol
        .ok(&w.server, &["send", "bob", "hello from carol"])
        .unwrap();
    // Carol becomes a contact of bob's before the chat opens... no: her
    // message arrives as part of the backlog while the chat is open.

    let mut chat = Pty::spawn(&bob, &w.server, &["chat", "alice"], 24, 80);
    let scr = chat.wait_text("fill 24");
    assert!(scr.contains("fill 22") && scr.contains("fill 23"), "{scr}");
    // Carol's message is counted in her conversation, not shown in alice's.
    let scr = chat.wait_text("carol (1)");
    assert!(!scr.contains("hello from carol"), "{scr}");
    assert!(scr.contains("connected"), "{scr}");

    // Resize without pressing a key: the screen is redrawn at 60x20 and the
    // newest rows are still there.
    chat.resize(20, 60);
    let scr = chat.wait_for("a redraw at 60 columns", |p, s| {
        p.cell(1, 59) == "┐" && s.contains("fill 24")
    });
    assert!(scr.contains("fill 23"), "{scr}");

    // Scroll up a few pages and back down: the newest row comes back.
    for _ in 0..6 {
        chat.send("\x1b[5~");
    }
    let scr = chat.wait_text("lorem ipsum");
    assert!(!scr.contains("fill 24"), "{scr}");
    for _ in 0..6 {
        chat.send("\x1b[6~");
    }
    chat.wait_for("the newest row after PgDn", |_, s| {
        s.contains("fill 24") && !s.contains("more rows")
    });

    // Receive live.
    alice.ok(&w.server, &["send", "bob", "live one"]).unwrap();
    chat.wait_text("alice: live one");

    // A bracketed 3-line paste is one message.
    chat.send("\x1b[200~line one\rline two\rline three\x1b[201~");
    chat.wait_text("line three");
    chat.send("\r");
    chat.wait_for("the pasted message sent", |_, s| {
        s.contains("bob: line one") && s.contains("│ line three") && !s.contains("[sending]")
    });
    let got = alice.ok(&w.server, &["recv", "--json"]).unwrap();
    let lines = got.json_lines().unwrap();
    let texts: Vec<&str> = lines.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["line one\nline two\nline three"], "{got:?}");

    // Verify alice from a second process on the same home: shown inline.
    let sn = bob.ok(&w.server, &["safety-number", "alice"]).unwrap();
    let digits = safety_digits(&sn.stdout);
    bob.ok(&w.server, &["verify", "alice", &digits]).unwrap();
    chat.wait_text("alice is now verified");

    // Switch to carol's conversation: her message is there, the count gone.
    chat.send("\t");
    let scr = chat.wait_text("carol: hello from carol");
    assert!(!scr.contains("carol (1)"), "{scr}");

    // Quit.
    chat.send("\x03");
    let status = chat.wait_exit();
    assert!(status.success(), "{status:?}");

    // Nothing was lost: carol's message is in bob's history.
    let h = bob.ok(&w.server, &["history", "carol"]).unwrap();
    assert!(h.stdout.contains("hello from carol"), "{h:?}");
}

#[test]
fn chat_opens_on_the_list_and_reconnects_after_a_server_restart() {
    let mut w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.server, &["send", "bob", "before"]).unwrap();
    bob.ok(&w.server, &["recv"]).unwrap();

    let mut chat = Pty::spawn(&bob, &w.server, &["chat"], 24, 80);
    let scr = chat.wait_text("Select a conversation");
    assert!(scr.contains("alice"), "{scr}");
    chat.wait_text("connected");
    chat.send("\r");
    chat.wait_text("alice: before");

    w.server.restart_same_port().unwrap();
    // The stream was cut: the chat says so and keeps retrying (or is
    // already back).
    chat.wait_for("connected again", |_, s| {
        s.contains("connected to the server again")
    });
    alice
        .ok(&w.server, &["send", "bob", "after restart"])
        .unwrap();
    chat.wait_text("alice: after restart");
    let scr = chat.screen();
    assert!(scr.contains("connection to the server lost"), "{scr}");

    chat.send("\x1b");
    chat.wait_text("q quit");
    chat.send("q");
    assert!(chat.wait_exit().success());
}

#[test]
fn chat_backs_off_while_the_server_refuses_streams_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(
        &root.path().join("server-data"),
        &root.path().join("server.log"),
    )
    .unwrap();
    let liar = LyingServer::start(server, root.path()).unwrap();
    let alice = User::new(root.path(), "alice");
    alice.ok(&liar, &["register", "alice"]).unwrap();
    let bob = User::new(root.path(), "bob");
    bob.ok(&liar, &["register", "bob"]).unwrap();
    alice
        .ok(&liar, &["send", "bob", "waiting for you"])
        .unwrap();

    liar.fail_times(
        Rpc::Receive,
        2,
        tonic::Code::Unavailable,
        "the server is shutting down; reconnect shortly",
    );
    let mut chat = Pty::spawn(&bob, &liar, &["chat", "alice"], 24, 80);
    chat.wait_text("offline, retrying in");
    let scr = chat.wait_text("the server is shutting down");
    assert!(!scr.contains("Is it running?"), "{scr}");
    // Two refused attempts later it is in, and the backlog is shown.
    chat.wait_text("alice: waiting for you");
    chat.wait_text("● connected");
    chat.send("\x03");
    assert!(chat.wait_exit().success());
}
