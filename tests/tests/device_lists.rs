//! Protocol v2 device lists through the lying server: a device the server
//! adds, a tampered or forged list — each refused by the sender, by name,
//! with nothing sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_e2e::Run;
use missive_e2e::liar::World;
use missive_e2e::raw::BlockingRawPeer;

fn texts(r: &Run) -> Vec<String> {
    r.json_lines()
        .unwrap()
        .iter()
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect()
}

/// `user`'s real signed list as the server serves it, read by a raw peer.
fn real_list(w: &World, user: &str) -> Vec<u8> {
    let mut eve = BlockingRawPeer::register(&w.liar, "eve").unwrap();
    let user = user.to_owned();
    eve.block_on(|p| async move { p.bundles(&user).await })
        .unwrap()
        .signed_device_list
}

#[test]
fn a_device_the_server_adds_is_refused_by_name() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    w.liar.add_ghost_device("bob");
    let r = alice
        .run(&w.liar, &["send", "bob", "for bob only"])
        .unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("device 2 of bob is not on bob's signed device list"),
        "{}",
        r.stderr
    );
    assert!(w.liar.sends().is_empty(), "nothing may be sent");
    assert!(texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()).is_empty());
    // Without the lie the same send reaches bob's one real device.
    w.liar.remove_ghost_device("bob");
    alice.ok(&w.liar, &["send", "bob", "for bob only"]).unwrap();
    let sends = w.liar.sends();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert!(sends[0].request.envelopes.iter().all(|e| e.device_id == 1));
    assert_eq!(
        texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()),
        ["for bob only"]
    );
}

#[test]
fn a_tampered_list_is_refused() {
    let w = World::new();
    let alice = w.user("alice");
    let _bob = w.user("bob");
    let mut list = real_list(&w, "bob");
    let last = list.len() - 1;
    list[last] ^= 1;
    w.liar.serve_device_list("bob", Some(list));
    let r = alice.run(&w.liar, &["send", "bob", "x"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("bob's device list was refused"),
        "{}",
        r.stderr
    );
    assert!(w.liar.sends().is_empty());
}
