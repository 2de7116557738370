//! What one device of an account does in a conversation reaches its other
//! devices (protocol v2 fan-out, docs/PROTOCOL.md "Copies to your other
//! devices"): reactions, edits, deletions, timer changes and what was read,
//! with the real binaries through the lying server, two processes on one
//! home, a replayed copy, and another account posing as a copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_e2e::liar::{At, World};
use missive_e2e::raw::now_ms;
use missive_e2e::{Job, Run, User, concurrently};
use missive_proto::v1;
use serde_json::Value;

fn lines(r: &Run) -> Vec<Value> {
    r.json_lines().unwrap()
}

fn ok_json(u: &User, w: &World, args: &[&str]) -> Vec<Value> {
    lines(&u.ok(&w.liar, args).unwrap())
}

/// The id printed by `send`: "sent ID to NAME".
fn sent_id(r: &Run) -> String {
    r.stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {:?}", r.stdout))
        .to_owned()
}

fn own_events<'a>(v: &'a [Value], kind: &str) -> Vec<&'a Value> {
    v.iter()
        .filter(|x| x["event"] == kind && x["own_device"] == true)
        .collect()
}

fn by_id<'a>(v: &'a [Value], id: &str) -> &'a Value {
    v.iter()
        .find(|x| x["id"] == id)
        .unwrap_or_else(|| panic!("no item {id} in {v:#?}"))
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_other_device_follows_reactions_edits_deletions_timers_and_reads() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    bob.ok(&w.liar, &["send", "alice", "before the link"])
        .unwrap();
    alice.ok(&w.liar, &["recv"]).unwrap();
    let laptop = w.link_device(&alice, "alice-laptop");

    // Bob's message reaches both devices; the laptop reads it first.
    let bobs = sent_id(&bob.ok(&w.liar, &["send", "alice", "hi alice"]).unwrap());
    let got = ok_json(&laptop, &w, &["recv", "--json"]);
    assert_eq!(by_id(&got, &bobs)["text"], "hi alice");
    // The phone's backlog holds bob's message, then the laptop's read copy:
    // it shows the message, learns it was read, and tells bob nothing more
    // (the laptop's read receipt said it all).
    let to_bob = w.liar.sends_to("bob").len();
    let got = ok_json(&alice, &w, &["recv", "--json"]);
    assert_eq!(by_id(&got, &bobs)["text"], "hi alice");
    let read = own_events(&got, "read");
    assert_eq!(read.len(), 1, "{got:#?}");
    assert_eq!(read[0]["ids"], serde_json::json!([bobs]));
    assert_eq!(read[0]["contact"], "bob");
    assert_eq!(w.liar.sends_to("bob").len(), to_bob, "a second receipt");

    // The phone acts in the conversation with bob.
    let mine = sent_id(&alice.ok(&w.liar, &["send", "bob", "hello bob"]).unwrap());
    let gone = sent_id(&alice.ok(&w.liar, &["send", "bob", "oops"]).unwrap());
    alice.ok(&w.liar, &["react", "bob", &bobs, "👍"]).unwrap();
    alice
        .ok(&w.liar, &["edit", "bob", &mine, "hello bob!"])
        .unwrap();
    alice.ok(&w.liar, &["unsend", "bob", &gone]).unwrap();
    alice.ok(&w.liar, &["timer", "bob", "1h"]).unwrap();

    // Two processes on the laptop's home take the copies: each is applied
    // once, by one of them.
    let recv = || {
        let (laptop, liar) = (&laptop, &w.liar);
        Box::new(move || laptop.run(liar, &["recv", "--json"]).unwrap()) as Job<'_, Run>
    };
    let runs = concurrently(vec![recv(), recv()]);
    let mut got = Vec::new();
    for r in &runs {
        assert!(r.ok(), "{r:?}");
        got.extend(lines(r));
    }
    let reactions = own_events(&got, "reaction");
    assert_eq!(reactions.len(), 1, "{got:#?}");
    assert_eq!(reactions[0]["target"], bobs.as_str());
    assert_eq!(reactions[0]["emoji"], "👍");
    assert_eq!(reactions[0]["contact"], "bob");
    let edits = own_events(&got, "edit");
    assert_eq!(edits.len(), 1, "{got:#?}");
    assert_eq!(edits[0]["target"], mine.as_str());
    assert_eq!(own_events(&got, "unsend").len(), 1, "{got:#?}");
    let timers = own_events(&got, "timer");
    assert_eq!(timers.len(), 1, "{got:#?}");
    assert_eq!(timers[0]["disappears_after_secs"], 3600);

    let h = ok_json(&laptop, &w, &["history", "bob", "--json"]);
    assert_eq!(
        by_id(&h, &bobs)["reactions"],
        serde_json::json!([{"from": "alice", "emoji": "👍"}])
    );
    let m = by_id(&h, &mine);
    assert_eq!(m["text"], "hello bob!");
    assert_eq!(m["edit_history"].as_array().unwrap().len(), 2, "{m}");
    assert_eq!(by_id(&h, &gone)["unsent"], true);
    assert_eq!(by_id(&h, &gone)["text"], "");
    let t = h.iter().filter(|x| x["event"] == "timer").count();
    assert_eq!(t, 1, "{h:#?}");
    // The laptop's next message to bob carries the timer the phone set.
    laptop.ok(&w.liar, &["send", "bob", "timed"]).unwrap();
    let got = ok_json(&bob, &w, &["recv", "--json"]);
    let timed = got.iter().find(|v| v["text"] == "timed").unwrap();
    assert_eq!(timed["disappears_after_secs"], 3600, "{got:#?}");

    // A replayed copy changes nothing twice.
    let copy = w
        .liar
        .delivered_to("alice")
        .into_iter()
        .rev()
        .find(|e| e.sender == "alice" && e.sender_device == 1)
        .expect("a copy from the phone reached the laptop");
    w.liar.redeliver("alice", copy, At::BeforeBacklog);
    let got = ok_json(&laptop, &w, &["recv", "--json"]);
    assert!(
        got.iter().all(|v| v["own_device"] != true),
        "a replayed copy was applied again: {got:#?}"
    );
    let h = ok_json(&laptop, &w, &["history", "bob", "--json"]);
    assert_eq!(h.iter().filter(|x| x["event"] == "timer").count(), 1);

    let h = ok_json(&alice, &w, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &bobs)["read"], true, "{h:#?}");
    bob.ok(&w.liar, &["recv"]).unwrap();
    let h = ok_json(&bob, &w, &["history", "alice", "--json"]);
    assert_eq!(by_id(&h, &bobs)["receipt"], "read", "{h:#?}");
}

/// A message from another account that claims to be one of alice's copies
/// (`sent_to` set) is refused, whatever it carries, and changes nothing.
#[test]
fn another_account_posing_as_a_copy_is_refused() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let mut mallory = w.raw("mallory");
    let bobs = sent_id(&bob.ok(&w.liar, &["send", "alice", "hi alice"]).unwrap());
    alice.ok(&w.liar, &["recv"]).unwrap();
    let content = v1::Content {
        body: Some(v1::content::Body::Reaction(v1::ReactionMessage {
            target: Some(v1::MessageRef {
                message_id: hex_decode(&bobs),
                author: "bob".into(),
            }),
            emoji: "💩".into(),
            sent_at_ms: now_ms(),
        })),
        attachment: None,
        franking_key: vec![7u8; 32],
        sender_devices: None,
        sent_to: "bob".into(),
    };
    mallory.send_content("alice", &[9u8; 16], &content).unwrap();
    let r = alice.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(
        r.stderr.contains("comes from another account"),
        "{}",
        r.stderr
    );
    assert!(lines(&r).iter().all(|v| v["event"] != "reaction"), "{r:?}");
    let h = ok_json(&alice, &w, &["history", "bob", "--json"]);
    assert_eq!(by_id(&h, &bobs)["reactions"], serde_json::json!([]));
}
