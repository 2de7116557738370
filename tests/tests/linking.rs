//! Linking and removing devices with the real binaries, through the lying
//! server: `missive link` on a new home, `missive devices add CODE` on the
//! primary, messages reaching both devices, removal, and the server's lies
//! (a swapped offer, an altered message, an old list) refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use missive_e2e::liar::World;
use missive_e2e::{Endpoint as _, Job, Running, User, concurrently, safety_digits};

const CODE_WAIT: Duration = Duration::from_secs(30);
const LINK_DONE: Duration = Duration::from_secs(60);

fn texts(u: &User, w: &World) -> Vec<String> {
    u.ok(&w.liar, &["recv", "--json"])
        .unwrap()
        .json_lines()
        .unwrap()
        .iter()
        .filter(|v| v.get("event").is_none())
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Starts `missive link` in a new home and returns it with its code.
fn start_link(w: &World, name: &str, wait: &str) -> (User, Running, String) {
    let laptop = User::new(w.root.path(), name);
    let running = laptop.spawn(&w.liar, &["link", "--wait", wait]).unwrap();
    let code = running.wait_for_line("link code: ", CODE_WAIT).unwrap();
    (laptop, running, code)
}

/// Links a new device `name` to `primary`'s account.
fn link(w: &World, primary: &User, name: &str) -> User {
    let (laptop, running, code) = start_link(w, name, "60");
    let added = primary.ok(&w.liar, &["devices", "add", &code]).unwrap();
    assert!(added.stdout.contains("linked device 2"), "{added:?}");
    let r = running.wait_timeout(LINK_DONE).unwrap();
    assert!(r.ok(), "{r:?}\n{}", w.liar.log());
    assert!(
        r.stdout
            .contains(&format!("linked as device 2 of {}", primary.name)),
        "{}",
        r.stdout
    );
    laptop
}

fn device_ids(u: &User, w: &World) -> Vec<(u64, bool)> {
    u.ok(&w.liar, &["devices", "--json"])
        .unwrap()
        .json_lines()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_u64().unwrap(), v["current"].as_bool().unwrap()))
        .collect()
}

#[test]
fn a_linked_device_receives_sends_and_knows_the_contacts() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    bob.ok(&w.liar, &["send", "alice", "before the link"])
        .unwrap();
    assert_eq!(texts(&alice, &w), ["before the link"]);
    let digits = safety_digits(&alice.ok(&w.liar, &["safety-number", "bob"]).unwrap().stdout);
    assert_eq!(digits.split(' ').count(), 12, "{digits}");
    alice.ok(&w.liar, &["verify", "bob", &digits]).unwrap();

    let laptop = link(&w, &alice, "alice-laptop");
    assert_eq!(device_ids(&laptop, &w), [(1, false), (2, true)]);
    assert_eq!(device_ids(&alice, &w), [(1, true), (2, false)]);
    // Each listed with the day it joined, as the server recorded it.
    let listed = alice.ok(&w.liar, &["devices", "--json"]).unwrap();
    for d in listed.json_lines().unwrap() {
        for field in ["linked_on", "last_seen"] {
            let day = d[field].as_str().unwrap_or_else(|| panic!("{d}"));
            assert!(day.len() == 10 && day.starts_with("20"), "{d}");
        }
    }
    let plain = alice.ok(&w.liar, &["devices"]).unwrap().stdout;
    assert_eq!(plain.matches("last seen 20").count(), 2, "{plain}");
    // The contact came along with its verification.
    let contacts = laptop.ok(&w.liar, &["contacts"]).unwrap();
    assert!(
        contacts.stdout.contains("bob") && contacts.stdout.contains("verified"),
        "{}",
        contacts.stdout
    );
    assert!(
        !contacts.stdout.contains("unverified"),
        "{}",
        contacts.stdout
    );

    // Bob's next message reaches both of alice's devices; bob is told.
    let sent = bob.ok(&w.liar, &["send", "alice", "to both"]).unwrap();
    assert!(
        sent.stderr.contains("alice linked a new device"),
        "{}",
        sent.stderr
    );
    assert_eq!(texts(&alice, &w), ["to both"]);
    assert_eq!(texts(&laptop, &w), ["to both"]);
    // The new device talks to bob as alice.
    laptop
        .ok(&w.liar, &["send", "bob", "from the laptop"])
        .unwrap();
    let got = bob
        .ok(&w.liar, &["recv", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["text"], "from the laptop");
    // Each of alice's devices shows what the other sent, as sent to bob.
    alice
        .ok(&w.liar, &["send", "bob", "from the phone"])
        .unwrap();
    let copies = |u: &User| {
        u.ok(&w.liar, &["recv", "--json"])
            .unwrap()
            .json_lines()
            .unwrap()
            .iter()
            .map(|v| {
                assert_eq!(v["from"], "alice", "{v}");
                assert_eq!(v["to"], "bob", "{v}");
                assert_eq!(v["outgoing"], true, "{v}");
                v["text"].as_str().unwrap().to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(copies(&alice), ["from the laptop"]);
    assert_eq!(copies(&laptop), ["from the phone"]);
    // Bob got each once, and the copies are in both histories.
    let got = bob
        .ok(&w.liar, &["recv", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    for u in [&alice, &laptop] {
        let h = u.ok(&w.liar, &["history", "bob"]).unwrap().stdout;
        assert!(
            h.contains("from the laptop") && h.contains("from the phone"),
            "{}: {h}",
            u.name
        );
    }
}

#[test]
fn a_removed_device_is_refused_and_gets_nothing() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let laptop = link(&w, &alice, "alice-laptop");
    let r = laptop.run(&w.liar, &["devices", "remove", "1"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("only the account's primary device"),
        "{}",
        r.stderr
    );
    let r = alice.run(&w.liar, &["devices", "remove", "7"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("has no device 7"), "{}", r.stderr);

    bob.ok(&w.liar, &["send", "alice", "both see this"])
        .unwrap();
    alice.ok(&w.liar, &["devices", "remove", "2"]).unwrap();
    assert_eq!(device_ids(&alice, &w), [(1, true)]);
    // Its pending message is gone with it and it can no longer log in.
    let r = laptop.run(&w.liar, &["recv"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    bob.ok(&w.liar, &["send", "alice", "only the primary"])
        .unwrap();
    let sends = w.liar.sends();
    let last = sends.last().unwrap();
    assert!(
        last.request.envelopes.iter().all(|e| e.device_id == 1),
        "{last:?}"
    );
    assert_eq!(texts(&alice, &w), ["both see this", "only the primary"]);
}

#[test]
fn a_code_links_one_device_once() {
    let w = World::new();
    let alice = w.user("alice");
    let carol = w.user("carol");
    let (_laptop, running, code) = start_link(&w, "alice-laptop", "60");
    // Two primaries race with the same code: exactly one gets the device.
    let runs = concurrently(vec![
        Box::new(|| alice.run(&w.liar, &["devices", "add", &code]).unwrap()) as Job<'_, _>,
        Box::new(|| carol.run(&w.liar, &["devices", "add", &code]).unwrap()),
    ]);
    let winners = runs.iter().filter(|r| r.ok()).count();
    assert_eq!(winners, 1, "{runs:?}");
    let loser = runs.iter().find(|r| !r.ok()).unwrap();
    assert!(
        loser.stderr.contains("already used") || loser.stderr.contains("no device is waiting"),
        "{}",
        loser.stderr
    );
    assert!(running.wait_timeout(LINK_DONE).unwrap().ok());
    // Used up: the mailbox is gone.
    let again = alice.run(&w.liar, &["devices", "add", &code]).unwrap();
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(
        again.stderr.contains("no device is waiting"),
        "{}",
        again.stderr
    );
    // A well-formed code nobody opened (as one past its 10 minutes: the
    // server has no mailbox for it).
    let stale = missive_crypto::link::LinkOffer::generate(&mut rand::rngs::OsRng)
        .code()
        .to_text();
    let r = alice
        .run(&w.liar, &["devices", "add", stale.as_str()])
        .unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("no device is waiting"), "{}", r.stderr);
    // A mistyped code is a sentence, not a panic.
    let typo = alice
        .run(&w.liar, &["devices", "add", "not-a-code"])
        .unwrap();
    assert_eq!(typo.code, Some(1), "{typo:?}");
    assert!(typo.stderr.contains("not a link code"), "{}", typo.stderr);
}

#[test]
fn a_swapped_offer_is_refused_and_nothing_is_published() {
    let w = World::new();
    let alice = w.user("alice");
    let (laptop, running, code) = start_link(&w, "alice-laptop", "20");
    // The server puts its own keys where the new device's were.
    w.liar.rewrite_links(Some(Arc::new(|r| {
        if let Some(b) = r.offer.get_mut(5) {
            *b ^= 1;
        }
    })));
    let r = alice.run(&w.liar, &["devices", "add", &code]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("the server substituted them"),
        "{}",
        r.stderr
    );
    assert_eq!(device_ids(&alice, &w), [(1, true)]);
    let r = running.wait_timeout(LINK_DONE).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(!laptop.home.join("missive.db").exists());
}

#[test]
fn an_altered_hello_is_refused_by_the_new_device() {
    let w = World::new();
    let alice = w.user("alice");
    let (_laptop, running, code) = start_link(&w, "alice-laptop", "20");
    w.liar.rewrite_links(Some(Arc::new(|r| {
        if let Some(b) = r.hello.last_mut() {
            *b ^= 1;
        }
    })));
    // The primary waits for a reply that never comes.
    let primary = alice
        .run(&w.liar, &["devices", "add", &code, "--wait", "3"])
        .unwrap();
    assert_eq!(primary.code, Some(1), "{primary:?}");
    let r = running.wait_timeout(LINK_DONE).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("does not authenticate"), "{}", r.stderr);
    assert_eq!(device_ids(&alice, &w), [(1, true)]);
}

#[test]
fn waiting_without_a_primary_times_out_cleanly() {
    let w = World::new();
    let laptop = User::new(w.root.path(), "alone");
    let r = laptop.run(&w.liar, &["link", "--wait", "1"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("link code: "), "{}", r.stdout);
    assert!(
        r.stderr.contains("did not answer within 1 seconds"),
        "{}",
        r.stderr
    );
    let r = laptop.run(&w.liar, &["devices"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
}

#[test]
fn an_older_device_list_after_a_link_is_a_refused_rollback() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let mut eve = missive_e2e::raw::BlockingRawPeer::register(&w.liar, "eve").unwrap();
    let v1 = eve
        .block_on(|p| async move { p.bundles("alice").await })
        .unwrap()
        .signed_device_list;
    // Bob learns alice's version 2 (primary and laptop).
    let _laptop = link(&w, &alice, "alice-laptop");
    bob.ok(&w.liar, &["send", "alice", "to v2"]).unwrap();
    // The server, hiding the laptop, serves version 1 again: alice's own
    // devices refuse it...
    w.liar.serve_device_list("alice", Some(v1.clone()));
    let r = alice.run(&w.liar, &["devices"]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("device list was refused"), "{}", r.stderr);
    assert!(r.stderr.contains("version 2"), "{}", r.stderr);
    // ...and so does bob, when a device he does not know makes him look:
    // alice replaces the laptop with a tablet (real versions 3 and 4).
    w.liar.serve_device_list("alice", None);
    alice.ok(&w.liar, &["devices", "remove", "2"]).unwrap();
    let (tablet, running, code) = start_link(&w, "alice-tablet", "60");
    alice.ok(&w.liar, &["devices", "add", &code]).unwrap();
    assert!(running.wait_timeout(LINK_DONE).unwrap().ok());
    w.liar.serve_device_list("alice", Some(v1));
    tablet
        .ok(&w.liar, &["send", "bob", "from a hidden tablet"])
        .unwrap();
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(!r.stdout.contains("from a hidden tablet"), "{}", r.stdout);
    assert!(
        r.stderr.contains("could not check alice's devices"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_recovery_code_restores_the_account_on_a_new_device() {
    let w = World::new();
    let alice = User::new(w.root.path(), "alice");
    let reg = alice.ok(&w.liar, &["register", "alice"]).unwrap();
    let code = reg
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("recovery code: "))
        .unwrap_or_else(|| panic!("no recovery code in {}", reg.stdout))
        .to_owned();
    let bob = w.user("bob");
    bob.ok(&w.liar, &["send", "alice", "before"]).unwrap();
    let number = |u: &User, other: &str| u.ok(&w.liar, &["safety-number", other]).unwrap().stdout;
    let before = number(&bob, "alice");

    // A typo, or another account's code, restores nothing.
    let phone = User::new(w.root.path(), "alice-new-phone");
    let mut typo = code.clone().into_bytes();
    typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let r = phone
        .run_with(
            &w.liar,
            &["recover", "alice"],
            &[],
            Some(&format!("{typo}\n")),
        )
        .unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("typo"), "{}", r.stderr);
    let r = phone
        .run_with(
            &w.liar,
            &["recover", "bob"],
            &[],
            Some(&format!("{code}\n")),
        )
        .unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("not for bob's account"), "{}", r.stderr);

    let r = phone
        .run_with(
            &w.liar,
            &["recover", "alice"],
            &[],
            Some(&format!("{code}\n")),
        )
        .unwrap();
    assert!(r.ok(), "{r:?}\n{}", w.liar.log());
    assert!(
        r.stdout.contains("recovered alice as device 2"),
        "{}",
        r.stdout
    );
    // The new device is a primary: it removes the lost one.
    phone.ok(&w.liar, &["devices", "remove", "1"]).unwrap();
    assert_eq!(device_ids(&phone, &w), [(2, true)]);
    bob.ok(&w.liar, &["send", "alice", "after"]).unwrap();
    assert_eq!(texts(&phone, &w), ["after"]);
    // Same account key: bob's safety number did not change.
    assert_eq!(number(&bob, "alice"), before);
    assert_eq!(alice.run(&w.liar, &["recv"]).unwrap().code, Some(1));
}

#[test]
fn two_links_at_once_on_the_primary_home_get_two_devices() {
    let w = World::new();
    let alice = w.user("alice");
    let (_laptop, laptop_link, laptop_code) = start_link(&w, "alice-laptop", "60");
    let (_tablet, tablet_link, tablet_code) = start_link(&w, "alice-tablet", "60");
    let runs = concurrently(vec![
        Box::new(|| {
            alice
                .run(&w.liar, &["devices", "add", &laptop_code])
                .unwrap()
        }) as Job<'_, _>,
        Box::new(|| {
            alice
                .run(&w.liar, &["devices", "add", &tablet_code])
                .unwrap()
        }),
    ]);
    assert!(runs.iter().all(|r| r.ok()), "{runs:?}");
    assert!(laptop_link.wait_timeout(LINK_DONE).unwrap().ok());
    assert!(tablet_link.wait_timeout(LINK_DONE).unwrap().ok());
    // Distinct ids, both on the one list: neither publish was lost.
    assert_eq!(device_ids(&alice, &w), [(1, true), (2, false), (3, false)]);
}
