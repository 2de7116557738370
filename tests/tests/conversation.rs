//! Conversation features end to end (issue 16 part B): receipts, typing,
//! replies, reactions, edits, delete for everyone and disappearing messages,
//! through the real `missive` and `missive-server` binaries, against a lying
//! server, and beside a second process on the same home.
//!
//! The contract: `history --json` prints one object per item; messages carry
//! `reply_to`, `reactions`, `edited`, `edit_history`, `unsent`, `receipt`
//! (ours: sent, delivered or read), `disappears_after_secs`, `expires_at`;
//! timer changes are `{"event":"timer",...}`. `recv --json` prints messages
//! as before plus one `{"event":...}` object per conversation event
//! (receipt, typing, reaction, edit, unsend, timer, expired).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use missive_e2e::liar::{At, Order, World};
use missive_e2e::{Endpoint, Run, User, dir_contains};
use serde_json::Value;

fn lines(r: &Run) -> Vec<Value> {
    r.json_lines()
        .unwrap_or_else(|e| panic!("{e}\nstdout: {}\nstderr: {}", r.stdout, r.stderr))
}

fn ok_json<E: Endpoint + ?Sized>(u: &User, s: &E, args: &[&str]) -> Vec<Value> {
    lines(&u.ok(s, args).unwrap())
}

/// The id printed by `send` / `reply`: "sent ID to NAME".
fn sent_id(r: &Run) -> String {
    r.stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {:?}", r.stdout))
        .to_owned()
}

fn events<'a>(v: &'a [Value], kind: &str) -> Vec<&'a Value> {
    v.iter().filter(|x| x["event"] == kind).collect()
}

fn messages(v: &[Value]) -> Vec<&Value> {
    v.iter().filter(|x| x.get("event").is_none()).collect()
}

fn by_id<'a>(v: &'a [Value], id: &str) -> &'a Value {
    v.iter()
        .find(|x| x["id"] == id)
        .unwrap_or_else(|| panic!("no item {id} in {v:#?}"))
}

/// Alice and bob have talked both ways; returns alice's first message id.
fn converse(w: &World, alice: &User, bob: &User) -> String {
    let id = sent_id(&alice.ok(&w.liar, &["send", "bob", "hello bob"]).unwrap());
    let got = ok_json(bob, &w.liar, &["recv", "--json"]);
    assert_eq!(messages(&got)[0]["text"], "hello bob");
    bob.ok(&w.liar, &["send", "alice", "hello alice"]).unwrap();
    let got = ok_json(alice, &w.liar, &["recv", "--json"]);
    assert_eq!(messages(&got)[0]["text"], "hello alice");
    id
}

#[test]
fn replies_reactions_edits_unsend_and_receipts_show_in_history() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let first = converse(&w, &alice, &bob);

    // Bob's recv sent a delivery+read receipt; alice's recv took it.
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &first)["receipt"], "read", "{h:#?}");

    // A reply quotes alice's message from bob's own copy; an id prefix works.
    let reply = sent_id(
        &bob.ok(&w.liar, &["reply", "alice", &first[..8], "yes, hello"])
            .unwrap(),
    );
    let got = ok_json(&alice, &w.liar, &["recv", "--json"]);
    let m = by_id(&got, &reply);
    assert_eq!(m["text"], "yes, hello");
    assert_eq!(m["reply_to"]["id"], first.as_str());
    assert_eq!(m["reply_to"]["from"], "alice");
    assert_eq!(m["reply_to"]["text"], "hello bob");
    let plain = alice.ok(&w.liar, &["history", "bob"]).unwrap().stdout;
    assert!(plain.contains("> replying to alice: hello bob"), "{plain}");

    // One reaction per person, changeable and removable.
    alice.ok(&w.liar, &["react", "bob", &reply, "👍"]).unwrap();
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    let ev = events(&got, "reaction");
    assert_eq!(ev.len(), 1, "{got:#?}");
    assert_eq!(ev[0]["emoji"], "👍");
    assert_eq!(ev[0]["target"], reply.as_str());
    alice.ok(&w.liar, &["react", "bob", &reply, "❤️"]).unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    assert_eq!(
        by_id(&h, &reply)["reactions"],
        serde_json::json!([{"from": "alice", "emoji": "❤️"}])
    );
    // Alice's own copy shows her reaction too.
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &reply)["reactions"][0]["emoji"], "❤️");
    alice
        .ok(&w.liar, &["react", "bob", &reply, "--remove"])
        .unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    assert_eq!(by_id(&h, &reply)["reactions"], serde_json::json!([]));

    // Refused with a sentence, nothing sent.
    let r = alice.run(&w.liar, &["react", "bob", &reply, "ok"]).unwrap();
    assert!(!r.ok() && r.stderr.contains("is not one emoji"), "{r:?}");
    let r = bob
        .run(&w.liar, &["edit", "alice", &first, "not mine"])
        .unwrap();
    assert!(
        !r.ok() && r.stderr.contains("you can only edit your own messages"),
        "{r:?}"
    );
    let r = bob.run(&w.liar, &["unsend", "alice", "ffffffff"]).unwrap();
    assert!(!r.ok() && r.stderr.contains("no message with id"), "{r:?}");

    // Edits: shown as edited, history kept, and the report carries it.
    alice
        .ok(&w.liar, &["edit", "bob", &first, "hello bob (edited)"])
        .unwrap();
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert_eq!(events(&got, "edit")[0]["text"], "hello bob (edited)");
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    let m = by_id(&h, &first);
    assert_eq!(m["text"], "hello bob (edited)");
    assert_eq!(m["edited"], true);
    let versions: Vec<&str> = m["edit_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["hello bob", "hello bob (edited)"]);
    // The server verifies both franking proofs or refuses the report.
    let r = bob
        .ok(&w.liar, &["report", &first, "--reason", "test"])
        .unwrap();
    assert!(
        r.stdout.contains("with the message's 1 edit(s) as reports"),
        "{}",
        r.stdout
    );
    // A reply (franked with its quote) is reportable too.
    alice.ok(&w.liar, &["report", &reply]).unwrap();

    // Delete for everyone: a tombstone at both ends.
    alice.ok(&w.liar, &["unsend", "bob", &first]).unwrap();
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert_eq!(events(&got, "unsend")[0]["target"], first.as_str());
    for (u, peer) in [(&bob, "alice"), (&alice, "bob")] {
        let h = ok_json(u, &w.liar, &["history", peer, "--json"]);
        let m = by_id(&h, &first);
        assert_eq!(m["unsent"], true, "{h:#?}");
        assert_eq!(m["text"], "");
        assert_eq!(m["edit_history"], serde_json::json!([]));
    }
    let plain = bob.ok(&w.liar, &["history", "alice"]).unwrap().stdout;
    assert!(plain.contains("(deleted for everyone)"), "{plain}");
    // The reply now quotes a message that is gone.
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &reply)["reply_to"]["text"], Value::Null);
    let r = alice.run(&w.liar, &["unsend", "bob", &first]).unwrap();
    assert!(!r.ok() && r.stderr.contains("already deleted"), "{r:?}");
}

#[test]
fn read_receipts_can_be_turned_off_and_typing_is_never_stored() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    converse(&w, &alice, &bob);

    let r = bob
        .ok(&w.liar, &["settings", "read-receipts", "off"])
        .unwrap();
    assert_eq!(r.stdout.trim(), "read-receipts\toff");
    assert_eq!(
        bob.ok(&w.liar, &["settings"]).unwrap().stdout.trim(),
        "read-receipts\toff"
    );
    let id = sent_id(
        &alice
            .ok(&w.liar, &["send", "bob", "are you there?"])
            .unwrap(),
    );
    bob.ok(&w.liar, &["recv"]).unwrap();
    let got = ok_json(&alice, &w.liar, &["recv", "--json", "--receipts"]);
    let receipts = events(&got, "receipt");
    assert_eq!(receipts.len(), 1, "{got:#?}");
    assert_eq!(receipts[0]["state"], "delivered");
    assert_eq!(receipts[0]["ids"], serde_json::json!([id]));
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &id)["receipt"], "delivered");

    // Typing: online-only, said live to a listening bob, stored by no one.
    let before = ok_json(&bob, &w.liar, &["history", "alice", "--json"]).len();
    // Offline bob never gets it, not even from his next stream.
    alice.ok(&w.liar, &["typing", "bob", "start"]).unwrap();
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert!(events(&got, "typing").is_empty(), "{got:#?}");
    let listening = bob
        .spawn(&w.liar, &["recv", "--json", "--wait", "6"])
        .unwrap();
    wait_for_stream(&w, "bob");
    alice.ok(&w.liar, &["typing", "bob", "start"]).unwrap();
    alice.ok(&w.liar, &["typing", "bob", "stop"]).unwrap();
    let r = listening.wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(r.ok(), "{r:?}");
    let got = lines(&r);
    let typing: Vec<bool> = events(&got, "typing")
        .iter()
        .map(|v| v["started"].as_bool().unwrap())
        .collect();
    assert_eq!(typing, [true, false], "{got:#?}\n{}", w.liar.log());
    assert_eq!(
        ok_json(&bob, &w.liar, &["history", "alice", "--json"]).len(),
        before
    );
    // Nothing pending for bob afterwards, and the client acknowledged none.
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert!(events(&got, "typing").is_empty(), "{got:#?}");
    let typing_sends: Vec<_> = w
        .liar
        .sends_to("bob")
        .into_iter()
        .filter(|c| c.request.online_only)
        .collect();
    assert_eq!(
        typing_sends.len(),
        3,
        "the client did not send typing online-only"
    );
    for (n, d) in w.liar.delivered_to("bob").iter().enumerate() {
        if d.online_only {
            assert_eq!(d.id, 0, "delivery {n}");
        }
    }
    // Their ciphertext is in no file of the server's data directory (while
    // a stored envelope's is: the check can fail).
    let data = w.liar.upstream().data_dir().to_owned();
    for c in &typing_sends {
        let content = &c.request.envelopes[0].content;
        let needle = &content[content.len() / 2 - 16..content.len() / 2 + 16];
        assert_eq!(dir_contains(&data, needle).unwrap(), None, "typing stored");
    }
    // Typing indicators are not acknowledged with receipts.
    let got = ok_json(&alice, &w.liar, &["recv", "--json", "--receipts"]);
    assert!(events(&got, "receipt").is_empty(), "{got:#?}");
}

/// Waits until the lying proxy saw `user` open a receive stream, and a
/// little more for the server to reach the stream's live phase.
fn wait_for_stream(w: &World, user: &str) {
    let opened = format!("Receive {user}: stream opened");
    let until = Instant::now() + Duration::from_secs(20);
    while !w.liar.events().iter().any(|e| e.contains(&opened)) {
        assert!(Instant::now() < until, "no stream opened: {}", w.liar.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700));
}

/// Issue 16: the server keeps a disappearing message no longer than its
/// timer: the client sends the timer as `retention_secs`, and an envelope
/// the recipient does not fetch in time is gone from the server's files and
/// never delivered.
#[test]
fn the_server_keeps_a_disappearing_message_no_longer_than_its_timer() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    converse(&w, &alice, &bob);
    alice.ok(&w.liar, &["timer", "bob", "2s"]).unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();

    alice
        .ok(&w.liar, &["send", "bob", "gone before bob looks"])
        .unwrap();
    let sent_at = Instant::now();
    let send = w.liar.sends_to("bob").pop().unwrap();
    assert_eq!(send.request.retention_secs, 2);
    assert!(!send.request.online_only);
    let content = &send.request.envelopes[0].content;
    let needle = content[content.len() / 2 - 16..content.len() / 2 + 16].to_vec();
    let data = w.liar.upstream().data_dir().to_owned();
    assert!(
        dir_contains(&data, &needle).unwrap().is_some(),
        "the pending envelope is not on disk: the check below could not fail"
    );
    // Expired after 2 s, purged within about a second more, WAL truncated.
    let until = Instant::now() + Duration::from_secs(15);
    while dir_contains(&data, &needle).unwrap().is_some() {
        assert!(
            Instant::now() < until,
            "the expired envelope is still on disk"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sent_at.elapsed() >= Duration::from_millis(1_900));
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert!(messages(&got).is_empty(), "{got:#?}");
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    assert!(
        h.iter().all(|m| m["text"] != "gone before bob looks"),
        "{h:#?}"
    );

    // Without a timer the server's retention applies.
    alice.ok(&w.liar, &["timer", "bob", "off"]).unwrap();
    alice.ok(&w.liar, &["send", "bob", "this stays"]).unwrap();
    let send = w.liar.sends_to("bob").pop().unwrap();
    assert_eq!(send.request.retention_secs, 0);
}

/// Every sealed message row of a home's database.
fn sealed_rows(home: &Path) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(home.join("missive.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT sealed FROM messages ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn disappearing_messages_vanish_at_both_ends_and_from_disk() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    converse(&w, &alice, &bob);

    for bad in ["500ms", "soon", "0.5s"] {
        let r = alice.run(&w.liar, &["timer", "bob", bad]).unwrap();
        assert!(!r.ok() && r.stderr.contains("is not a timer"), "{r:?}");
    }
    let r = alice.ok(&w.liar, &["timer", "bob", "4s"]).unwrap();
    assert!(r.stdout.contains("disappear 4s after"), "{}", r.stdout);
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    let t = events(&got, "timer");
    assert_eq!(t.len(), 1, "{got:#?}");
    assert_eq!(t[0]["disappears_after_secs"], 4);
    let rows_before = (sealed_rows(&alice.home), sealed_rows(&bob.home));

    let sent_at = Instant::now();
    let id = sent_id(
        &alice
            .ok(&w.liar, &["send", "bob", "this disappears soon"])
            .unwrap(),
    );
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert_eq!(by_id(&got, &id)["text"], "this disappears soon");
    // The sealed rows of the message, found on disk before it expires (so
    // the check below can fail).
    let new_rows = |home: &Path, before: &[Vec<u8>]| -> Vec<Vec<u8>> {
        sealed_rows(home)
            .into_iter()
            .filter(|r| !before.contains(r))
            .collect()
    };
    let alice_rows = new_rows(&alice.home, &rows_before.0);
    let bob_rows = new_rows(&bob.home, &rows_before.1);
    assert_eq!(alice_rows.len(), 1);
    assert_eq!(bob_rows.len(), 1);
    for (u, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let h = ok_json(u, &w.liar, &["history", peer, "--json"]);
        assert_eq!(by_id(&h, &id)["disappears_after_secs"], 4);
        assert!(by_id(&h, &id)["expires_at"].is_string());
        // The timer change is an event of the conversation.
        assert_eq!(events(&h, "timer").len(), 1, "{h:#?}");
    }
    let needle = |row: &[u8]| row[row.len() / 2..row.len() / 2 + 48].to_vec();
    assert!(
        dir_contains(&alice.home, &needle(&alice_rows[0]))
            .unwrap()
            .is_some()
    );
    assert!(
        dir_contains(&bob.home, &needle(&bob_rows[0]))
            .unwrap()
            .is_some()
    );

    std::thread::sleep(Duration::from_secs(5).saturating_sub(sent_at.elapsed()));
    for (u, peer, row) in [
        (&alice, "bob", &alice_rows[0]),
        (&bob, "alice", &bob_rows[0]),
    ] {
        let h = ok_json(u, &w.liar, &["history", peer, "--json"]);
        assert!(h.iter().all(|m| m["id"] != id.as_str()), "{h:#?}");
        // Deleted with secure_delete and checkpointed: the sealed row is
        // nowhere in the home any more (database, WAL or journal).
        assert_eq!(dir_contains(&u.home, &needle(row)).unwrap(), None);
        assert!(
            dir_contains(&u.home, b"this disappears soon")
                .unwrap()
                .is_none()
        );
    }

    // Off again: new messages stay.
    alice.ok(&w.liar, &["timer", "bob", "off"]).unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    let id = sent_id(&alice.ok(&w.liar, &["send", "bob", "this stays"]).unwrap());
    bob.ok(&w.liar, &["recv"]).unwrap();
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    assert_eq!(by_id(&h, &id)["disappears_after_secs"], 0);
    assert_eq!(by_id(&h, &id)["expires_at"], Value::Null);
    let timers: Vec<i64> = events(&h, "timer")
        .iter()
        .map(|v| v["disappears_after_secs"].as_i64().unwrap())
        .collect();
    assert_eq!(timers, [4, 0]);
}

#[test]
fn lying_server_redeliveries_replays_and_withheld_receipts_are_handled() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let first = converse(&w, &alice, &bob);

    // Receipts withheld: alice's message stays "sent" until they arrive.
    w.liar.withhold("alice", |_| true);
    let id = sent_id(&alice.ok(&w.liar, &["send", "bob", "receipt me"]).unwrap());
    bob.ok(&w.liar, &["recv"]).unwrap();
    alice.ok(&w.liar, &["recv"]).unwrap();
    assert!(!w.liar.held("alice").is_empty());
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &id)["receipt"], "sent");
    w.liar.stop_withholding("alice");
    w.liar
        .release("alice", Order::AsReceived, At::BeforeBacklog);
    // Bob's recv held its receipts until its backlog was in, by then it had
    // shown the message: one read receipt, which says delivered too. It
    // arrives now (printed with --receipts only).
    let got = ok_json(&alice, &w.liar, &["recv", "--json", "--receipts"]);
    let states: Vec<&str> = events(&got, "receipt")
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["read"], "{got:#?}");
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &id)["receipt"], "read");

    // A reaction, two edits and an unsend, each re-delivered by the server.
    let sent_before = w.liar.delivered_to("bob").len();
    alice.ok(&w.liar, &["react", "bob", &first, "🎉"]).unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    alice
        .ok(&w.liar, &["edit", "bob", &id, "second version"])
        .unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    alice
        .ok(&w.liar, &["edit", "bob", &id, "third version"])
        .unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    let delivered = w.liar.delivered_to("bob");
    let ours: Vec<_> = delivered[sent_before..]
        .iter()
        .filter(|e| e.sender == "alice")
        .cloned()
        .collect();
    assert_eq!(ours.len(), 3, "{ours:#?}");
    // Redeliver the reaction and replay the old (first) edit, as is.
    w.liar.redeliver("bob", ours[0].clone(), At::BeforeBacklog);
    w.liar.redeliver("bob", ours[1].clone(), At::BeforeBacklog);
    // And the old edit again under a fresh envelope and message id.
    let mut replay = ours[1].clone();
    replay.id = w.liar.fake_id();
    replay.message_id = vec![0x42; 16];
    w.liar.inject("bob", replay, At::AfterBacklog);
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    let got = lines(&r);
    assert!(events(&got, "reaction").is_empty(), "{got:#?}");
    assert!(events(&got, "edit").is_empty(), "{got:#?}");
    assert!(
        r.stderr.contains("dropped a message from alice"),
        "{}",
        r.stderr
    );
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    let m = by_id(&h, &id);
    assert_eq!(m["text"], "third version");
    assert_eq!(m["edit_history"].as_array().unwrap().len(), 3);
    assert_eq!(
        by_id(&h, &first)["reactions"],
        serde_json::json!([{"from": "alice", "emoji": "🎉"}])
    );

    alice.ok(&w.liar, &["unsend", "bob", &id]).unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    let unsend = w.liar.delivered_to("bob").last().cloned().unwrap();
    w.liar.redeliver("bob", unsend, At::BeforeBacklog);
    let got = ok_json(&bob, &w.liar, &["recv", "--json"]);
    assert!(events(&got, "unsend").is_empty(), "{got:#?}");
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    assert_eq!(by_id(&h, &id)["unsent"], true);
    // The server saw which messages went by, never which message they named.
    for s in w.liar.sends_to("bob") {
        let body: Vec<u8> = s
            .request
            .envelopes
            .iter()
            .flat_map(|e| e.content.clone())
            .collect();
        let target = hex::decode_like(&id);
        assert!(!body.windows(16).any(|x| x == target.as_slice()));
    }
}

/// Hex without a dependency (the tests crate has none for it).
mod hex {
    pub(super) fn decode_like(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }
}

#[test]
fn a_second_process_on_the_same_home_reacts_while_recv_waits() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let first = converse(&w, &alice, &bob);

    // Bob listens in one process and reacts and edits in another.
    let listening = bob
        .spawn(&w.liar, &["recv", "--json", "--wait", "8"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let mine = sent_id(&bob.ok(&w.liar, &["send", "alice", "from bob"]).unwrap());
    bob.ok(&w.liar, &["react", "alice", &first, "👀"]).unwrap();
    alice.ok(&w.liar, &["recv"]).unwrap();
    alice.ok(&w.liar, &["react", "bob", &mine, "👍"]).unwrap();
    alice
        .ok(&w.liar, &["edit", "bob", &first, "hello bob, again"])
        .unwrap();
    let r = listening.wait().unwrap();
    assert!(r.ok(), "{r:?}");
    let got = lines(&r);
    assert_eq!(events(&got, "reaction").len(), 1, "{got:#?}");
    assert_eq!(events(&got, "edit").len(), 1, "{got:#?}");
    let h = ok_json(&bob, &w.liar, &["history", "alice", "--json"]);
    let m = by_id(&h, &first);
    assert_eq!(m["text"], "hello bob, again");
    assert_eq!(m["reactions"][0]["emoji"], "👀");
    assert_eq!(by_id(&h, &mine)["reactions"][0]["emoji"], "👍");
    // Alice's earlier recv took bob's reaction with his message.
    let h = ok_json(&alice, &w.liar, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &first)["reactions"][0]["from"], "bob");
    assert_eq!(by_id(&h, &first)["reactions"][0]["emoji"], "👀");
}

#[test]
fn completions_man_page_and_no_color() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    converse(&w, &alice, &bob);

    let r = alice.ok(&w.liar, &["completions", "bash"]).unwrap();
    for word in ["react", "unsend", "timer", "read-receipts"] {
        assert!(r.stdout.contains(word), "{word} missing from completions");
    }
    let r = alice.ok(&w.liar, &["completions", "zsh"]).unwrap();
    assert!(r.stdout.contains("#compdef missive"));
    let r = alice.ok(&w.liar, &["man"]).unwrap();
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH missive"),
        "{}",
        &r.stdout[..200.min(r.stdout.len())]
    );
    assert!(r.stdout.contains("unsend"));

    let coloured = alice
        .ok(&w.liar, &["history", "bob", "--color", "always"])
        .unwrap();
    assert!(coloured.stdout.contains("\x1b["), "{:?}", coloured.stdout);
    let piped = alice.ok(&w.liar, &["history", "bob"]).unwrap();
    assert!(!piped.stdout.contains('\x1b'));
    let no_color = alice
        .run_with(
            &w.liar,
            &["history", "bob", "--color", "always"],
            &[("NO_COLOR", "1")],
            None,
        )
        .unwrap();
    assert!(no_color.ok());
    assert!(!no_color.stdout.contains('\x1b'), "{:?}", no_color.stdout);
    assert_eq!(no_color.stdout, piped.stdout);
}
