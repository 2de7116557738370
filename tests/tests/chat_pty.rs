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
use missive_e2e::{Endpoint, Server, User, binaries, safety_digits};
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

/// The id (hex) of the newest message with `text` in `user`'s history with
/// `contact`.
fn id_of(user: &User, server: &Server, contact: &str, text: &str) -> String {
    let h = user
        .ok(server, &["history", contact, "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    h.iter()
        .rev()
        .find(|v| v["text"].as_str() == Some(text))
        .and_then(|v| v["id"].as_str())
        .unwrap_or_else(|| panic!("no {text:?} in {h:?}"))
        .to_owned()
}

#[test]
fn chat_shows_receipts_typing_reactions_edits_deletions_and_timers() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.server, &["send", "bob", "first"]).unwrap();
    alice.ok(&w.server, &["send", "bob", "second"]).unwrap();

    let mut chat = Pty::spawn(&bob, &w.server, &["chat", "alice"], 30, 100);
    chat.wait_text("alice: second");
    chat.wait_text("connected");

    // Our message: sent, then read once alice's `recv` shows it.
    chat.send("hi alice\r");
    chat.wait_text("bob: hi alice  ✓");
    let got = alice.ok(&w.server, &["recv", "--json"]).unwrap();
    assert!(got.stdout.contains("hi alice"), "{got:?}");
    chat.wait_text("hi alice  ✓✓ read");
    // Bob had alice's two messages on screen: alice got read receipts.
    let h = alice.ok(&w.server, &["history", "bob", "--json"]).unwrap();
    let lines = h.json_lines().unwrap();
    let first = lines.iter().find(|v| v["text"] == "first").unwrap();
    assert_eq!(first["receipt"], "read", "{lines:?}");

    // Typing comes and goes with the message.
    alice.ok(&w.server, &["typing", "bob", "start"]).unwrap();
    chat.wait_text("alice is typing…");
    alice.ok(&w.server, &["send", "bob", "third"]).unwrap();
    chat.wait_for("typing gone with the message", |_, s| {
        s.contains("alice: third") && !s.contains("is typing")
    });

    // Alice reacts to bob's message, edits and deletes hers.
    let hi = id_of(&alice, &w.server, "bob", "hi alice");
    alice.ok(&w.server, &["react", "bob", &hi, "👍"]).unwrap();
    chat.wait_text("👍 alice");
    let second = id_of(&alice, &w.server, "bob", "second");
    alice
        .ok(&w.server, &["edit", "bob", &second, "second, fixed"])
        .unwrap();
    chat.wait_text("alice: second, fixed (edited)");
    let first = id_of(&alice, &w.server, "bob", "first");
    alice.ok(&w.server, &["unsend", "bob", &first]).unwrap();
    chat.wait_for("the tombstone", |_, s| {
        s.contains("alice: (deleted)") && !s.contains("alice: first")
    });

    // Bob's commands: a reply to alice's newest, a reaction, an edit.
    chat.send("/reply got it\r");
    chat.wait_for("the reply with its quote", |_, s| {
        s.contains("┌ reply to alice: third") && s.contains("bob: got it")
    });
    chat.send("/react 🎉\r");
    chat.wait_text("🎉 bob");
    chat.send("/edit got it!\r");
    chat.wait_text("bob: got it! (edited)");
    chat.send("/nonsense\r");
    chat.wait_text("unknown command /nonsense");
    // A refused command stays in the input to be fixed; Ctrl-U clears it.
    chat.send("\x15");
    let got = alice.ok(&w.server, &["recv", "--json"]).unwrap();
    let h = alice.ok(&w.server, &["history", "bob", "--json"]).unwrap();
    let lines = h.json_lines().unwrap();
    let reply = lines
        .iter()
        .find(|v| v["text"] == "got it!")
        .unwrap_or_else(|| panic!("{got:?}\n{lines:?}"));
    assert_eq!(reply["reply_to"]["text"], "third", "{reply}");
    let third = lines.iter().find(|v| v["text"] == "third").unwrap();
    assert!(third.to_string().contains("🎉"), "{third}");

    // A timer set by alice is an event; her message under it disappears
    // from the screen when its time comes.
    alice.ok(&w.server, &["timer", "bob", "2s"]).unwrap();
    chat.wait_text("alice set disappearing messages to 2s");
    alice.ok(&w.server, &["send", "bob", "vanishing"]).unwrap();
    chat.wait_text("alice: vanishing");
    chat.wait_for("the message gone after its timer", |_, s| {
        !s.contains("vanishing") && s.contains("disappearing messages to 2s")
    });
    chat.send("/timer off\r");
    chat.wait_text("bob turned disappearing messages off");

    chat.send("\x03");
    assert!(chat.wait_exit().success());
    // Gone from bob's store too, once its own clock (started when bob's
    // device took the message) has run out.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = bob.ok(&w.server, &["history", "alice"]).unwrap();
        if !h.stdout.contains("vanishing") {
            break;
        }
        assert!(Instant::now() < deadline, "{h:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn chat_shows_files_and_saves_them_on_command() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.server, &["send", "bob", "hello"]).unwrap();
    let mut chat = Pty::spawn(&bob, &w.server, &["chat", "alice"], 30, 120);
    chat.wait_text("alice: hello");
    chat.wait_text("connected");

    // A file arrives while the chat is open: its line, not yet saved.
    let dir = w.root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = dir.join("plan.pdf");
    std::fs::write(&path, &bytes).unwrap();
    alice
        .ok(
            &w.server,
            &["send", "bob", "--file", path.to_str().unwrap(), "the plan"],
        )
        .unwrap();
    chat.wait_text("plan.pdf (195.3 KiB), /save downloads it");
    chat.send("/save\r");
    let saved = bob.home.join("attachments").join("plan.pdf");
    chat.wait_text("saved to");
    assert!(std::fs::read(&saved).unwrap() == bytes);
    chat.send("/save\r");
    chat.wait_text("no file here waits to be saved");
    // A refused command stays in the input; Ctrl-U clears it.
    chat.send("\x15");

    // Bob sends one back from the chat; alice's recv saves it.
    let reply = dir.join("notes.txt");
    std::fs::write(&reply, b"noted").unwrap();
    chat.send(&format!("/file {}\r", reply.display()));
    chat.wait_text("notes.txt (5 B), sent from");
    let got = alice.ok(&w.server, &["recv", "--json"]).unwrap();
    let m = got
        .json_lines()
        .unwrap()
        .into_iter()
        .find(|v| v["file_name"] == "notes.txt")
        .unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(
        std::fs::read(m["file"].as_str().unwrap()).unwrap(),
        b"noted"
    );
    chat.send("/quit\r");
    chat.wait_exit();
}

#[test]
fn chat_shows_a_group_live_sends_to_it_and_shows_a_replay_once() {
    use missive_e2e::liar::{At, World as LiarWorld};
    use missive_proto::v1;
    let w = LiarWorld::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    let dave = w.user("dave");

    // bob's chat is open on an empty list when the invitation arrives.
    let mut chat = Pty::spawn(&bob, &w.liar, &["chat"], 24, 80);
    chat.wait_text("connected");
    alice
        .ok(&w.liar, &["group", "create", "crew", "bob", "carol"])
        .unwrap();
    alice
        .ok(&w.liar, &["send", "--group", "crew", "hello friends"])
        .unwrap();
    let scr = chat.wait_text("#crew (1)");
    assert!(
        !scr.contains("alice (1)"),
        "not alice's 1:1 conversation:\n{scr}"
    );
    chat.send("\r");
    chat.wait_text("alice: hello friends");
    chat.wait_text("* alice added you to crew");

    // What bob types goes to the group.
    chat.send("hi from the chat\r");
    chat.wait_text("bob: hi from the chat");
    let at_carol = carol.ok(&w.liar, &["recv", "--json"]).unwrap();
    let texts: Vec<String> = at_carol
        .json_lines()
        .unwrap()
        .iter()
        .filter(|v| v["group"].as_str() == Some("crew") && v["event"] == false)
        .map(|v| {
            format!(
                "{}: {}",
                v["from"].as_str().unwrap(),
                v["text"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(texts, ["alice: hello friends", "bob: hi from the chat"]);

    // A membership change appears live, in the group.
    carol
        .ok(&w.liar, &["group", "add", "crew", "dave"])
        .unwrap();
    chat.wait_text("* carol added dave");
    dave.ok(&w.liar, &["recv"]).unwrap();
    dave.ok(&w.liar, &["send", "--group", "crew", "dave here"])
        .unwrap();
    chat.wait_text("dave: dave here");

    // The server replays alice's message to the open chat: shown once.
    let replay = w
        .liar
        .group_deliveries("bob")
        .into_iter()
        .find(|d| d.message.kind == v1::GroupMessageKind::Application as i32)
        .unwrap()
        .message;
    let before = w.liar.group_deliveries("bob").len();
    w.liar.redeliver_group("bob", replay, At::AfterBacklog);
    let start = Instant::now();
    while w.liar.group_deliveries("bob").len() == before {
        assert!(start.elapsed() < WAIT, "the replay never went out");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Delivered after the replay on the same stream: processed after it.
    alice
        .ok(&w.liar, &["send", "--group", "crew", "after the replay"])
        .unwrap();
    let scr = chat.wait_text("alice: after the replay");
    assert_eq!(scr.matches("hello friends").count(), 1, "{scr}");

    // Commands the group does not take yet say so and keep the input.
    chat.send("/react x\r");
    chat.wait_text("/react is not available in group conversations");
    chat.send("\x03");
    assert!(chat.wait_exit().success());
}

/// Links a second device to `primary`'s account, in its own home.
fn link_laptop(w: &World, primary: &User) -> User {
    let laptop = User::new(w.root.path(), "alice-laptop");
    let running = laptop.spawn(&w.server, &["link", "--wait", "60"]).unwrap();
    let code = running.wait_for_line("link code: ", WAIT).unwrap();
    primary.ok(&w.server, &["devices", "add", &code]).unwrap();
    let r = running.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(r.ok(), "{r:?}");
    laptop
}

#[test]
fn chat_follows_what_another_device_of_the_account_reads_and_does() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    bob.ok(&w.server, &["send", "alice", "before"]).unwrap();
    alice.ok(&w.server, &["recv"]).unwrap();
    let laptop = link_laptop(&w, &alice);
    // The laptop tells bob nothing of what it reads; the phone still learns.
    laptop
        .ok(&w.server, &["settings", "read-receipts", "off"])
        .unwrap();

    // The phone's chat is on the list: bob's message is unread there.
    let mut chat = Pty::spawn(&alice, &w.server, &["chat"], 24, 80);
    chat.wait_text("Select a conversation");
    chat.wait_text("connected");
    bob.ok(&w.server, &["send", "alice", "hi alice"]).unwrap();
    chat.wait_text("bob (1)");
    // The laptop shows it: the phone's count clears.
    let got = laptop.ok(&w.server, &["recv"]).unwrap();
    assert!(got.stdout.contains("hi alice"), "{got:?}");
    chat.wait_for("the unread count cleared", |_, s| !s.contains("bob (1)"));
    // Bob was told "delivered", by both devices, and never "read".
    bob.ok(&w.server, &["recv"]).unwrap();
    let h = bob
        .ok(&w.server, &["history", "alice", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    let hi = h.iter().find(|v| v["text"] == "hi alice").unwrap();
    assert_eq!(hi["receipt"], "delivered", "{h:?}");

    // The laptop reacts and deletes in the conversation the phone has open.
    chat.send("\r");
    chat.wait_text("bob: hi alice");
    let id = id_of(&laptop, &w.server, "bob", "hi alice");
    laptop.ok(&w.server, &["react", "bob", &id, "🎉"]).unwrap();
    chat.wait_text("🎉 alice");
    laptop
        .ok(&w.server, &["send", "bob", "from the laptop"])
        .unwrap();
    chat.wait_text("alice: from the laptop");
    let mine = id_of(&laptop, &w.server, "bob", "from the laptop");
    laptop.ok(&w.server, &["unsend", "bob", &mine]).unwrap();
    chat.wait_for("the deletion", |_, s| !s.contains("alice: from the laptop"));

    chat.send("\x1b");
    chat.wait_text("q quit");
    chat.send("q");
    assert!(chat.wait_exit().success());
}
