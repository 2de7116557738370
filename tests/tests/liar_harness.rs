//! The lying server itself: each lie does what its docs say, checked through
//! behaviour today's client already has (so these pass before and after
//! issue 12, and a failure here is a harness bug, not a client bug).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use missive_e2e::liar::{At, Order, Rpc, World};
use missive_e2e::raw::{BlockingRawPeer, now_ms};
use missive_e2e::{Endpoint as _, Run};
use missive_proto::v1;

fn texts(r: &Run) -> Vec<String> {
    r.json_lines()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn forwards_everything_and_captures_sends_and_deliveries() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.liar, &["send", "bob", "one"]).unwrap();
    alice.ok(&w.liar, &["send", "bob", "two"]).unwrap();
    assert_eq!(
        texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()),
        ["one", "two"]
    );
    bob.ok(&w.liar, &["send", "alice", "back"]).unwrap();
    assert_eq!(
        texts(&alice.ok(&w.liar, &["recv", "--json"]).unwrap()),
        ["back"]
    );
    // Acknowledged for real: nothing comes again.
    assert!(texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());

    // The two texts, then alice's read receipt of "back" (held until her
    // backlog was in, it says delivered too).
    let sends = w.liar.sends_to("bob");
    assert_eq!(sends.len(), 3);
    assert!(sends.iter().all(|s| s.sender.as_deref() == Some("alice")));
    assert!(sends.iter().all(|s| s.result.is_ok()));
    assert_eq!(w.liar.sends_to("alice")[0].sender.as_deref(), Some("bob"));
    let delivered = w.liar.delivered_to("bob");
    assert_eq!(delivered.len(), 3);
    assert_eq!(delivered[0].message_id, sends[0].request.message_id);
    assert!(w.liar.last_resort_kem("bob", 1).is_some());
    // The upstream still works directly, and its log is part of ours.
    bob.ok(w.liar.upstream(), &["contacts"]).unwrap();
    assert!(w.liar.log().contains("--- upstream server ---"));
}

#[test]
fn withheld_envelopes_are_released_in_reverse_order_on_an_open_stream() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.liar, &["send", "bob", "first contact"])
        .unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();

    w.liar.withhold("bob", |e| e.sender == "alice");
    for t in ["a", "b", "c"] {
        alice.ok(&w.liar, &["send", "bob", t]).unwrap();
    }
    assert!(texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());
    assert_eq!(w.liar.held("bob").len(), 3);
    w.liar.stop_withholding("bob");

    let listener = bob
        .spawn(&w.liar, &["recv", "--json", "--wait", "3"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(w.liar.release("bob", Order::Reversed, At::AfterBacklog), 3);
    let r = listener.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(r.ok(), "{r:?}");
    // The ratchet copes with the reordering; the acks were real.
    assert_eq!(texts(&r), ["c", "b", "a"], "{}", w.liar.log());
    assert!(texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());
}

#[test]
fn injected_envelopes_are_delivered_and_their_acks_swallowed() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice.ok(&w.liar, &["send", "bob", "once"]).unwrap();
    bob.ok(&w.liar, &["recv"]).unwrap();
    let mut copy = w.liar.delivered_to("bob")[0].clone();
    copy.id = w.liar.fake_id();
    w.liar.inject("bob", copy, At::AfterBacklog);
    // Same sender, device and message id: today's client skips it silently.
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(texts(&r).is_empty(), "{r:?}");
    assert_eq!(w.liar.deliveries().iter().filter(|d| d.injected).count(), 1);
    assert!(
        w.liar
            .events()
            .iter()
            .any(|e| e.contains("swallowed 1 fake ids")),
        "{}",
        w.liar.log()
    );
}

#[test]
fn swapped_bundles_are_refused_by_the_signed_device_list() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    w.liar.swap_bundles("bob", "carol");
    // Carol's bundles come with carol's signed list, which names carol:
    // protocol v2 refuses it for bob, and nothing is encrypted to carol's keys.
    let r = alice
        .run(&w.liar, &["send", "bob", "for bob's eyes"])
        .unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("bob's device list was refused"),
        "{}",
        r.stderr
    );
    assert!(
        w.liar.sends().is_empty(),
        "nothing may be sent: {:?}",
        w.liar.sends()
    );
    assert!(texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());
    assert!(texts(&carol.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());
}

#[test]
fn status_lies_and_rewrites_reach_the_client() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    w.liar
        .fail_times(Rpc::Send, 1, tonic::Code::Internal, "the liar says no");
    let r = alice.run(&w.liar, &["send", "bob", "x"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("the liar says no"), "{}", r.stderr);
    alice.ok(&w.liar, &["send", "bob", "second try"]).unwrap();

    w.liar.rewrite(|to, env: &mut v1::Envelope| {
        if to == "bob" {
            env.content.truncate(env.content.len() / 2);
        }
    });
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(texts(&r).is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("dropped a message from alice"),
        "{}",
        r.stderr
    );
}

#[test]
fn raw_peer_messages_decrypt_in_the_real_client() {
    let w = World::new();
    let bob = w.user("bob");
    let mut raw = BlockingRawPeer::register(&w.liar, "rawpeer").unwrap();
    raw.send_text("bob", "hello from a hand-built client", now_ms())
        .unwrap();
    raw.send_text("bob", "and a second one", now_ms()).unwrap();
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert_eq!(
        texts(&r),
        ["hello from a hand-built client", "and a second one"],
        "{}",
        r.stderr
    );
    assert_eq!(w.liar.sends_to("bob")[0].sender.as_deref(), Some("rawpeer"));
}
