//! The chat screen's state and rendering, without a terminal (ratatui's
//! TestBackend): row-based scrolling, the input's shell keys, paste, the
//! conversation list and inline events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use missive_client::Verification;
use missive_client::chat::{Action, ChatState, Connection, ConversationId, Focus, render};
use missive_client::client::RecvEvent;
use missive_client::store::HistoryEntry;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn entry(seq: i64, contact: &str, outgoing: bool, text: &str) -> HistoryEntry {
    HistoryEntry {
        seq,
        message_id: vec![seq as u8; 16],
        contact: contact.into(),
        outgoing,
        text: text.into(),
        sender_clock_ms: 1_700_000_000_000 + seq as u64,
        sender_clock_clamped: false,
        server_ts_ms: 1_700_000_000_500 + seq as u64 * 1000,
        quarantined: false,
        attachment: None,
        group: None,
    }
}

fn screen_at(state: &mut ChatState, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| render(state, f)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let mut x = 0;
        while x < buffer.area.width {
            let symbol = buffer[(x, y)].symbol();
            out.push_str(symbol);
            // A wide character's second column is filler, as on a terminal.
            x += u16::try_from(unicode_width::UnicodeWidthStr::width(symbol).max(1)).unwrap();
        }
        out.push('\n');
    }
    out
}

fn screen(state: &mut ChatState) -> String {
    screen_at(state, 80, 24)
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn type_text(state: &mut ChatState, text: &str) {
    for c in text.chars() {
        let a = state.handle_key(key(KeyCode::Char(c)));
        assert!(
            a.is_none() || matches!(a, Some(Action::Typing(..))),
            "{a:?}"
        );
    }
}

fn bob() -> ConversationId {
    ConversationId::Direct("bob".into())
}

/// The reproduction: one 439-character message, then 24 short ones.
fn long_then_fills() -> ChatState {
    let mut history = vec![entry(1, "bob", false, &"x".repeat(20).repeat(22)[..439])];
    for i in 1..=24 {
        history.push(entry(1 + i, "bob", false, &format!("fill {i}")));
    }
    let mut s = ChatState::new("alice", false);
    s.add_conversation(bob(), Verification::Unverified, &history);
    s.open(&bob());
    s
}

#[test]
fn newest_rows_are_visible_after_a_long_wrapped_message() {
    for (w, h) in [(80u16, 24u16), (60, 20), (40, 12)] {
        let mut s = long_then_fills();
        let scr = screen_at(&mut s, w, h);
        assert!(scr.contains("fill 24"), "{w}x{h}:\n{scr}");
        assert!(scr.contains("fill 23"), "{w}x{h}:\n{scr}");
        if h >= 20 {
            assert!(scr.contains("fill 22"), "{w}x{h}:\n{scr}");
        }
        // Page all the way up, then down again: the newest comes back.
        for _ in 0..20 {
            s.handle_key(key(KeyCode::PageUp));
            screen_at(&mut s, w, h);
        }
        let top = screen_at(&mut s, w, h);
        assert!(top.contains("xxxxxxxx"), "{w}x{h}:\n{top}");
        assert!(!top.contains("fill 24"), "{w}x{h}:\n{top}");
        for _ in 0..20 {
            s.handle_key(key(KeyCode::PageDown));
            screen_at(&mut s, w, h);
        }
        let bottom = screen_at(&mut s, w, h);
        assert!(bottom.contains("fill 24"), "{w}x{h}:\n{bottom}");
    }
}

#[test]
fn status_lines_are_rows_too() {
    let mut s = long_then_fills();
    s.set_connection(Connection::Connected);
    s.set_connection(Connection::Offline {
        reason: "connection refused".into(),
        retry_in_s: 2,
    });
    let scr = screen_at(&mut s, 60, 20);
    assert!(scr.contains("reconnecting…"), "{scr}");
    assert!(scr.contains("retrying in 2 s"), "{scr}");
}

#[test]
fn shell_keys_edit_the_input() {
    let mut s = long_then_fills();
    type_text(&mut s, "hello big world");
    s.handle_key(ctrl('w'));
    assert_eq!(s.input_text(), "hello big ");
    s.handle_key(ctrl('a'));
    type_text(&mut s, ">");
    assert_eq!(s.input_text(), ">hello big ");
    s.handle_key(ctrl('e'));
    s.handle_key(key(KeyCode::Left));
    type_text(&mut s, "!");
    assert_eq!(s.input_text(), ">hello big! ");
    s.handle_key(ctrl('u'));
    assert_eq!(s.input_text(), " ");
    s.handle_key(key(KeyCode::Home));
    s.handle_key(ctrl('k'));
    assert_eq!(s.input_text(), "");
    // History: Up brings back what was sent.
    type_text(&mut s, "first");
    assert!(matches!(s.handle_key(key(KeyCode::Enter)), Some(Action::Send(_, t)) if t == "first"));
    s.handle_key(key(KeyCode::Up));
    assert_eq!(s.input_text(), "first");
    s.handle_key(key(KeyCode::Down));
    assert_eq!(s.input_text(), "");
}

#[test]
fn a_long_input_scrolls_and_keeps_the_cursor_visible() {
    let mut s = long_then_fills();
    let text: String = (0..120)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    type_text(&mut s, &text);
    type_text(&mut s, "END");
    let scr = screen_at(&mut s, 60, 20);
    assert!(scr.contains("END"), "{scr}");
}

#[test]
fn a_multi_line_paste_is_one_message() {
    let mut s = long_then_fills();
    s.handle_paste("one\r\ntwo\nthree");
    assert_eq!(s.input_text(), "one\ntwo\nthree");
    match s.handle_key(key(KeyCode::Enter)) {
        Some(Action::Send(id, text)) => {
            assert_eq!(id, bob());
            assert_eq!(text, "one\ntwo\nthree");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.input_text(), "");
    let scr = screen(&mut s);
    assert!(scr.contains("alice: one"), "{scr}");
    assert!(scr.contains("│ two"), "{scr}");
    assert!(scr.contains("│ three"), "{scr}");
}

#[test]
fn a_third_contact_raises_its_count_and_is_shown_there() {
    let mut s = long_then_fills();
    s.add_conversation(
        ConversationId::Direct("carol".into()),
        Verification::Verified,
        &[entry(100, "carol", false, "old")],
    );
    s.open(&bob());
    s.apply(&RecvEvent::Message(entry(200, "zed", false, "psst")));
    s.apply(&RecvEvent::Message(entry(201, "zed", false, "again")));
    s.apply(&RecvEvent::Message(entry(202, "bob", false, "live in bob")));
    let zed = ConversationId::Direct("zed".into());
    assert_eq!(s.conversation(&zed).unwrap().unread, 2);
    assert_eq!(s.conversation(&bob()).unwrap().unread, 0);
    let scr = screen(&mut s);
    assert!(scr.contains("zed (2)"), "{scr}");
    assert!(scr.contains("live in bob"), "{scr}");
    assert!(!scr.contains("psst"), "{scr}");
    // Switch with Tab until zed is open: its messages are there, count gone.
    for _ in 0..3 {
        if s.current().unwrap().id == zed {
            break;
        }
        s.handle_key(key(KeyCode::Tab));
    }
    assert_eq!(s.current().unwrap().id, zed);
    let scr = screen(&mut s);
    assert!(
        scr.contains("zed: psst") && scr.contains("zed: again"),
        "{scr}"
    );
    assert!(!scr.contains("zed (2)"), "{scr}");
}

#[test]
fn the_list_has_the_keys_until_a_conversation_is_opened() {
    let mut s = ChatState::new("alice", false);
    s.add_conversation(
        bob(),
        Verification::Unverified,
        &[entry(1, "bob", false, "hi")],
    );
    s.add_conversation(
        ConversationId::Direct("carol".into()),
        Verification::Unverified,
        &[entry(2, "carol", false, "yo")],
    );
    assert_eq!(s.focus(), Focus::List);
    let scr = screen(&mut s);
    assert!(scr.contains("Select a conversation"), "{scr}");
    // carol is newest, first; Down selects bob.
    s.handle_key(key(KeyCode::Down));
    s.handle_key(key(KeyCode::Enter));
    assert_eq!(s.focus(), Focus::Conversation);
    assert_eq!(s.current().unwrap().id, bob());
    s.handle_key(key(KeyCode::Esc));
    assert_eq!(s.focus(), Focus::List);
    assert_eq!(s.handle_key(key(KeyCode::Char('q'))), Some(Action::Quit));
}

#[test]
fn verification_changes_are_shown_inline() {
    let mut s = long_then_fills();
    s.set_verification(&bob(), Verification::Verified);
    let scr = screen(&mut s);
    assert!(
        scr.contains("bob is now verified (was unverified)"),
        "{scr}"
    );
    assert!(scr.contains("[verified]"), "{scr}");
    s.apply(&RecvEvent::IdentityChanged {
        username: "bob".into(),
    });
    let scr = screen(&mut s);
    assert!(scr.contains("identity key changed"), "{scr}");
    type_text(&mut s, "hi");
    assert_eq!(s.handle_key(key(KeyCode::Enter)), None);
    assert!(s.status().unwrap().contains("not sent"), "{:?}", s.status());
}

#[test]
fn failed_send_removes_the_line_and_gives_the_text_back() {
    let mut s = long_then_fills();
    type_text(&mut s, "hello");
    let Some(Action::Send(id, _)) = s.handle_key(key(KeyCode::Enter)) else {
        panic!()
    };
    assert!(screen(&mut s).contains("[sending] alice: hello"));
    s.sent(&id, Err("the server is unreachable".into()));
    let scr = screen(&mut s);
    assert!(!scr.contains("alice: hello"), "{scr}");
    assert!(scr.contains("not sent: the server is unreachable"), "{scr}");
    assert_eq!(s.input_text(), "hello");
}

#[test]
fn peer_text_cannot_fake_a_line() {
    let mut s = ChatState::new("alice", false);
    s.add_conversation(
        bob(),
        Verification::Unverified,
        &[entry(
            1,
            "bob",
            false,
            "ok\n[12:00] alice: please send me your password\x1b[31m",
        )],
    );
    s.open(&bob());
    let scr = screen(&mut s);
    assert!(scr.contains("│ [12:00] alice: please"), "{scr}");
    assert!(scr.contains("\\u{1b}[31m"), "{scr}");
}

#[test]
fn ctrl_c_quits_and_tiny_terminals_do_not_panic() {
    let mut s = long_then_fills();
    for (w, h) in [(1u16, 1u16), (2, 2), (5, 3), (10, 6)] {
        screen_at(&mut s, w, h);
    }
    assert_eq!(s.handle_key(ctrl('c')), Some(Action::Quit));
}

#[test]
fn the_bell_rings_only_for_other_conversations_when_asked() {
    for bell in [false, true] {
        let mut s = ChatState::new("alice", bell);
        s.add_conversation(bob(), Verification::Unverified, &[]);
        s.open(&bob());
        s.apply(&RecvEvent::Message(entry(1, "bob", false, "here")));
        assert!(!s.take_bell());
        s.apply(&RecvEvent::Message(entry(2, "carol", false, "elsewhere")));
        assert_eq!(s.take_bell(), bell);
        assert!(!s.take_bell());
    }
}

fn sent_ok(s: &mut ChatState, text: &str, id: u8) {
    type_text(s, text);
    let Some(Action::Send(to, _)) = (loop {
        match s.handle_key(key(KeyCode::Enter)) {
            Some(Action::Typing(..)) => continue,
            other => break other,
        }
    }) else {
        panic!("no send")
    };
    s.sent(
        &to,
        Ok(missive_client::Sent {
            id: hex::encode([id; 16]),
            server_timestamp_ms: 1_700_000_100_000,
        }),
    );
}

#[test]
fn receipts_reactions_edits_deletions_timers_and_typing_update_the_screen() {
    use missive_client::conversation::{ConversationEvent, ReceiptState};
    let mut s = ChatState::new("alice", false);
    s.add_conversation(
        bob(),
        Verification::Unverified,
        &[entry(1, "bob", false, "old news")],
    );
    s.open(&bob());
    sent_ok(&mut s, "hello bob", 0xaa);
    assert!(screen(&mut s).contains("alice: hello bob  ✓"));
    let receipt = |state| ConversationEvent::Receipt {
        from: "bob".into(),
        state,
        message_ids: vec![vec![0xaa; 16]],
    };
    s.apply_conversation(&receipt(ReceiptState::Delivered));
    assert!(screen(&mut s).contains("hello bob  ✓✓ delivered"));
    s.apply_conversation(&receipt(ReceiptState::Read));
    // A late delivery receipt does not lower it.
    s.apply_conversation(&receipt(ReceiptState::Delivered));
    assert!(screen(&mut s).contains("hello bob  ✓✓ read"));

    s.apply_conversation(&ConversationEvent::Reaction {
        from: "bob".into(),
        target: vec![0xaa; 16],
        emoji: Some("👍".into()),
    });
    let scr = screen(&mut s);
    assert!(scr.contains("👍 bob"), "{scr}");
    s.apply_conversation(&ConversationEvent::Reaction {
        from: "bob".into(),
        target: vec![0xaa; 16],
        emoji: Some("❤".into()),
    });
    let scr = screen(&mut s);
    assert!(scr.contains("❤ bob") && !scr.contains("👍"), "{scr}");

    s.apply_conversation(&ConversationEvent::Edited {
        from: "bob".into(),
        target: vec![1; 16],
        text: "fresh news\x1b[2J".into(),
    });
    let scr = screen(&mut s);
    assert!(scr.contains("bob: fresh news\\u{1b}[2J (edited)"), "{scr}");
    // Only the author's own message can be edited by them.
    s.apply_conversation(&ConversationEvent::Edited {
        from: "bob".into(),
        target: vec![0xaa; 16],
        text: "forged".into(),
    });
    assert!(!screen(&mut s).contains("forged"));
    s.apply_conversation(&ConversationEvent::Unsent {
        from: "bob".into(),
        target: vec![1; 16],
    });
    let scr = screen(&mut s);
    assert!(
        scr.contains("bob: (deleted)") && !scr.contains("fresh news"),
        "{scr}"
    );

    s.apply_conversation(&ConversationEvent::TimerChanged {
        from: "bob".into(),
        expire_after_secs: 300,
    });
    assert!(screen(&mut s).contains("bob set disappearing messages to 5m"));

    s.tick(1_000);
    s.apply_conversation(&ConversationEvent::Typing {
        from: "bob".into(),
        started: true,
    });
    assert!(screen(&mut s).contains("bob is typing…"));
    s.tick(1_000 + missive_client::chat::TYPING_SHOWN_MS);
    assert!(!screen(&mut s).contains("is typing"));

    // A message under a timer leaves the screen at its time.
    s.apply_conversation(&ConversationEvent::MessageDetails {
        from: "bob".into(),
        message_id: vec![9; 16],
        reply_to: None,
        expire_after_secs: 5,
    });
    s.tick(100_000);
    s.push_live(&entry(9, "bob", false, "self-destructs"));
    let scr = screen(&mut s);
    assert!(
        scr.contains("⏱5s") && scr.contains("self-destructs"),
        "{scr}"
    );
    s.tick(104_000);
    assert!(screen(&mut s).contains("self-destructs"));
    s.tick(105_000);
    assert!(!screen(&mut s).contains("self-destructs"));
    // And an expiry the store reports removes the line at once.
    s.apply_conversation(&ConversationEvent::Expired {
        contact: "bob".into(),
        message_ids: vec![vec![0xaa; 16]],
    });
    assert!(!screen(&mut s).contains("hello bob"));
}

#[test]
fn read_receipts_wait_until_a_conversation_is_on_screen() {
    let mut s = ChatState::new("alice", false);
    s.add_conversation(bob(), Verification::Unverified, &[]);
    s.open(&bob());
    s.push_live(&entry(1, "bob", false, "seen"));
    s.push_live(&entry(2, "zed", false, "not yet"));
    assert_eq!(
        s.take_read_due(),
        vec![("bob".to_owned(), vec![vec![1u8; 16]])]
    );
    assert_eq!(s.take_read_due(), vec![]);
    // In the list, nothing on screen is read.
    s.handle_key(key(KeyCode::Esc));
    s.push_live(&entry(3, "bob", false, "while in the list"));
    assert_eq!(s.take_read_due(), vec![]);
    s.open(&ConversationId::Direct("zed".into()));
    assert_eq!(
        s.take_read_due(),
        vec![("zed".to_owned(), vec![vec![2u8; 16]])]
    );
    s.open(&bob());
    assert_eq!(
        s.take_read_due(),
        vec![("bob".to_owned(), vec![vec![3u8; 16]])]
    );
}

#[test]
fn slash_commands_become_actions_and_typing_is_said_once() {
    let mut s = ChatState::new("alice", false);
    s.add_conversation(
        bob(),
        Verification::Unverified,
        &[entry(1, "bob", false, "hi")],
    );
    s.open(&bob());
    // The first key says typing; the next ones do not repeat it.
    assert_eq!(
        s.handle_key(key(KeyCode::Char('h'))),
        Some(Action::Typing(bob(), true))
    );
    assert_eq!(s.handle_key(key(KeyCode::Char('i'))), None);
    // Emptying the input says stopped.
    s.handle_key(key(KeyCode::Backspace));
    assert_eq!(
        s.handle_key(key(KeyCode::Backspace)),
        Some(Action::Typing(bob(), false))
    );
    // Nothing of ours to edit yet: said, input kept.
    type_text(&mut s, "/edit oops");
    assert_eq!(s.handle_key(key(KeyCode::Enter)), None);
    assert!(
        s.status().unwrap().contains("you have sent nothing here"),
        "{:?}",
        s.status()
    );
    assert_eq!(s.input_text(), "/edit oops");
    s.handle_key(ctrl('u'));

    let theirs = hex::encode([1u8; 16]);
    let run = |s: &mut ChatState, line: &str| {
        s.handle_key(ctrl('u'));
        type_text(s, line);
        s.handle_key(key(KeyCode::Enter))
    };
    assert_eq!(
        run(&mut s, "/reply  sure thing"),
        Some(Action::Reply {
            to: bob(),
            target: theirs.clone(),
            text: "sure thing".into()
        })
    );
    assert_eq!(
        run(&mut s, "/react 👍"),
        Some(Action::React {
            to: bob(),
            target: theirs.clone(),
            emoji: Some("👍".into())
        })
    );
    assert_eq!(
        run(&mut s, "/unreact"),
        Some(Action::React {
            to: bob(),
            target: theirs,
            emoji: None
        })
    );
    assert_eq!(run(&mut s, "/timer 90s"), Some(Action::Timer(bob(), 90)));
    assert_eq!(run(&mut s, "/timer off"), Some(Action::Timer(bob(), 0)));
    assert_eq!(run(&mut s, "/timer soon"), None);
    assert!(
        s.status().unwrap().starts_with("/timer:"),
        "{:?}",
        s.status()
    );
    assert_eq!(run(&mut s, "/frobnicate"), None);
    assert!(s.status().unwrap().contains("unknown command /frobnicate"));
    assert_eq!(
        run(&mut s, "//slashes are fine"),
        Some(Action::Send(bob(), "/slashes are fine".into()))
    );
    s.sent(
        &bob(),
        Ok(missive_client::Sent {
            id: hex::encode([7u8; 16]),
            server_timestamp_ms: 5,
        }),
    );
    let ours = hex::encode([7u8; 16]);
    assert_eq!(
        run(&mut s, "/edit better"),
        Some(Action::Edit {
            to: bob(),
            target: ours.clone(),
            text: "better".into()
        })
    );
    let edit = Action::Edit {
        to: bob(),
        target: ours.clone(),
        text: "better".into(),
    };
    s.done(&edit, Ok(()));
    assert!(screen(&mut s).contains("alice: better (edited)"));
    assert_eq!(
        run(&mut s, "/unsend"),
        Some(Action::Unsend {
            to: bob(),
            target: ours
        })
    );
    assert_eq!(run(&mut s, "/quit"), Some(Action::Quit));
}

#[test]
fn files_show_their_name_and_size_and_save_on_command() {
    let file = |name: &str, size: u64, saved: Option<&str>| missive_client::store::AttachmentInfo {
        file_name: name.into(),
        mime_type: "application/octet-stream".into(),
        size,
        saved_path: saved.map(Into::into),
        error: None,
    };
    let mut old = entry(1, "bob", false, "the report");
    old.attachment = Some(file(
        "report.pdf",
        3 * 1024 * 1024,
        Some("/h/attachments/report.pdf"),
    ));
    let mut new = entry(2, "bob", false, "");
    // A hostile name cannot reach the terminal raw.
    new.attachment = Some(file("cat\u{1b}[2J.png", 1, None));
    let mut ours = entry(3, "bob", true, "mine");
    ours.attachment = Some(file("notes.txt", 0, Some("/tmp/notes.txt")));
    let mut s = ChatState::new("alice", false);
    s.add_conversation(bob(), Verification::Unverified, &[old, new, ours]);
    s.open(&bob());
    let shown = screen_at(&mut s, 120, 24);
    assert!(
        shown.contains("report.pdf (3.0 MiB), saved to /h/attachments/report.pdf"),
        "{shown}"
    );
    assert!(shown.contains("(1 B), /save downloads it"), "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown}");
    assert!(
        shown.contains("notes.txt (0 B), sent from /tmp/notes.txt"),
        "{shown}"
    );

    // /save takes the newest file not yet saved.
    let run = |s: &mut ChatState, line: &str| {
        s.handle_key(ctrl('u'));
        type_text(s, line);
        s.handle_key(key(KeyCode::Enter))
    };
    let target = hex::encode([2u8; 16]);
    assert_eq!(
        run(&mut s, "/save"),
        Some(Action::Save {
            to: bob(),
            target: target.clone()
        })
    );
    // A failed verification marks it refused, on screen and for /save.
    s.file_saved(
        &bob(),
        &target,
        Err(missive_client::ClientError::Attachment(
            "chunk 0 does not authenticate".into(),
        )),
    );
    let shown = screen_at(&mut s, 120, 24);
    assert!(
        shown.contains("REFUSED: chunk 0 does not authenticate"),
        "{shown}"
    );
    assert_eq!(run(&mut s, "/save"), None);
    assert!(s.status().unwrap().contains("refused"), "{:?}", s.status());
    // A broken connection leaves it to save later.
    s.file_saved(
        &bob(),
        &hex::encode([1u8; 16]),
        Err(missive_client::ClientError::Server("unreachable".into())),
    );
    assert!(
        s.status().unwrap().starts_with("not saved yet"),
        "{:?}",
        s.status()
    );
    assert_eq!(
        run(&mut s, "/file /tmp/a b.txt"),
        Some(Action::SendFile {
            to: bob(),
            path: "/tmp/a b.txt".into()
        })
    );
    assert_eq!(run(&mut s, "/file"), None);
}

#[test]
fn a_saved_file_says_where() {
    let mut e = entry(1, "bob", false, "");
    e.attachment = Some(missive_client::store::AttachmentInfo {
        file_name: "a.bin".into(),
        mime_type: String::new(),
        size: 10,
        saved_path: None,
        error: None,
    });
    let mut s = ChatState::new("alice", false);
    s.add_conversation(bob(), Verification::Unverified, &[e]);
    s.open(&bob());
    s.file_saved(
        &bob(),
        &hex::encode([1u8; 16]),
        Ok("/home/alice/.missive/attachments/a.bin".into()),
    );
    let shown = screen_at(&mut s, 120, 24);
    assert!(
        shown.contains("a.bin (10 B), saved to /home/alice/.missive/attachments/a.bin"),
        "{shown}"
    );
    assert!(
        s.status().unwrap().starts_with("saved to"),
        "{:?}",
        s.status()
    );
}

fn group_entry(seq: i64, author: &str, outgoing: bool, text: &str, event: bool) -> HistoryEntry {
    HistoryEntry {
        group: Some(Box::new(missive_client::store::HistoryGroup {
            name: "crew".into(),
            id: "00ff".into(),
            event,
        })),
        ..entry(seq, author, outgoing, text)
    }
}

#[test]
fn group_messages_land_in_the_group_not_in_the_authors_conversation() {
    let mut s = ChatState::new("alice", false);
    s.add_conversation(
        bob(),
        Verification::Unverified,
        &[entry(1, "bob", false, "1:1")],
    );
    let group = ConversationId::Group("crew".into());
    s.add_conversation(
        group.clone(),
        Verification::Unverified,
        &[group_entry(2, "alice", true, "bob added you to crew", true)],
    );
    s.apply(&RecvEvent::Message(group_entry(
        3, "bob", false, "hi all", false,
    )));
    s.apply(&RecvEvent::Message(group_entry(
        4,
        "bob",
        false,
        "carol's new device joined",
        true,
    )));

    let direct = s.conversation(&bob()).unwrap();
    assert_eq!(direct.items.len(), 1, "{:?}", direct.items);
    let g = s.conversation(&group).unwrap();
    assert_eq!(g.unread, 1, "a membership event is not an unread message");
    let shown = screen(&mut s);
    assert!(shown.contains("#crew (1)"), "{shown}");

    s.open(&group);
    assert!(
        s.take_read_due().is_empty(),
        "groups send no read receipts yet"
    );
    let shown = screen(&mut s);
    for line in [
        "* bob added you to crew",
        "hi all",
        "* carol's new device joined",
    ] {
        assert!(shown.contains(line), "{line:?} missing:\n{shown}");
    }
}

#[test]
fn a_group_takes_text_and_says_what_it_does_not_take_yet() {
    let mut s = ChatState::new("alice", false);
    let group = ConversationId::Group("crew".into());
    s.add_conversation(
        group.clone(),
        Verification::Unverified,
        &[group_entry(1, "bob", false, "hello", false)],
    );
    s.open(&group);
    // No typing indicator goes to a group.
    for c in "hi".chars() {
        assert_eq!(s.handle_key(key(KeyCode::Char(c))), None);
    }
    assert_eq!(
        s.handle_key(key(KeyCode::Enter)),
        Some(Action::Send(group.clone(), "hi".into()))
    );
    type_text(&mut s, "/react 👍");
    assert_eq!(s.handle_key(key(KeyCode::Enter)), None);
    let status = s.status().unwrap_or_default().to_owned();
    assert!(
        status.contains("/react is not available in group conversations"),
        "{status}"
    );
    assert_eq!(s.input_text(), "/react 👍", "the input is kept");
}
