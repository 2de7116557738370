//! The chat screen's state and rendering, without a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_client::Verification;
use missive_client::chat::{Action, ChatState, Key, render};
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
        server_ts_ms: 1_700_000_000_500 + seq as u64,
        quarantined: false,
    }
}

fn screen(state: &ChatState) -> String {
    let mut terminal = Terminal::new(TestBackend::new(80, 20)).unwrap();
    terminal.draw(|f| render(state, f)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn type_text(state: &mut ChatState, text: &str) {
    for c in text.chars() {
        assert_eq!(state.handle_key(Key::Char(c)), None);
    }
}

#[test]
fn history_live_messages_input_and_verification_are_shown() {
    let history = [
        entry(1, "bob", false, "hi alice"),
        entry(2, "bob", true, "hi bob"),
    ];
    let mut state = ChatState::new("alice", "bob", Verification::Unverified, &history);
    let s = screen(&state);
    assert!(s.contains("bob: hi alice"), "{s}");
    assert!(s.contains("alice: hi bob"), "{s}");
    assert!(s.contains("unverified"), "{s}");

    // A live incoming message from the contact appears; one from someone
    // else only sets the status line.
    state.apply(&RecvEvent::Message(entry(
        3,
        "bob",
        false,
        "are you there?",
    )));
    state.apply(&RecvEvent::Message(entry(4, "carol", false, "psst")));
    let s = screen(&state);
    assert!(s.contains("bob: are you there?"), "{s}");
    assert!(!s.contains("psst"), "{s}");
    assert!(s.contains("new message from carol"), "{s}");

    // Typing shows in the input line; Enter sends and clears it.
    type_text(&mut state, "yes!");
    assert!(screen(&state).contains("yes!"));
    assert_eq!(
        state.handle_key(Key::Enter),
        Some(Action::Send("yes!".into()))
    );
    assert_eq!(state.input(), "");
    assert!(state.lines().last().unwrap().pending);
    assert!(screen(&state).contains("sending"));
    state.sent(Ok(1_700_000_001_000));
    assert!(!state.lines().last().unwrap().pending);
    assert!(!screen(&state).contains("sending"));
}

#[test]
fn failed_send_removes_the_line_and_says_why() {
    let mut state = ChatState::new("alice", "bob", Verification::Verified, &[]);
    assert!(screen(&state).contains("[verified]"));
    type_text(&mut state, "hello");
    assert!(matches!(
        state.handle_key(Key::Enter),
        Some(Action::Send(_))
    ));
    state.sent(Err("server unreachable".into()));
    assert!(state.lines().is_empty());
    assert!(state.status().unwrap().contains("server unreachable"));
}

#[test]
fn identity_change_blocks_sending_and_is_shown() {
    let mut state = ChatState::new("alice", "bob", Verification::Verified, &[]);
    state.apply(&RecvEvent::IdentityChanged {
        username: "bob".into(),
    });
    assert_eq!(state.verification(), Verification::Changed);
    let s = screen(&state);
    assert!(s.contains("IDENTITY CHANGED"), "{s}");
    type_text(&mut state, "secret");
    assert_eq!(state.handle_key(Key::Enter), None);
    assert!(state.status().unwrap().contains("missive trust bob"));
    // The text stays in the input so nothing is lost.
    assert_eq!(state.input(), "secret");
}

#[test]
fn editing_and_quitting() {
    let mut state = ChatState::new("alice", "bob", Verification::Unverified, &[]);
    type_text(&mut state, "helo");
    state.handle_key(Key::Backspace);
    type_text(&mut state, "lo");
    assert_eq!(state.input(), "hello");
    // Blank input sends nothing.
    let mut blank = ChatState::new("alice", "bob", Verification::Unverified, &[]);
    type_text(&mut blank, "   ");
    assert_eq!(blank.handle_key(Key::Enter), None);
    assert_eq!(state.handle_key(Key::Esc), Some(Action::Quit));
    assert_eq!(state.handle_key(Key::CtrlC), Some(Action::Quit));
    let mut q = ChatState::new("alice", "bob", Verification::Unverified, &[]);
    type_text(&mut q, "/quit");
    assert_eq!(q.handle_key(Key::Enter), Some(Action::Quit));
}

#[test]
fn dropped_message_is_noted() {
    let mut state = ChatState::new("alice", "bob", Verification::Unverified, &[]);
    state.apply(&RecvEvent::Dropped {
        sender: "bob".into(),
        reason: "its franking commitment does not match its text".into(),
    });
    assert!(screen(&state).contains("dropped a message from bob"));
}
