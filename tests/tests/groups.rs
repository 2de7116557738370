//! Group conversations (MLS, RFC 9420) with the real binaries, through the
//! lying server: create, talk, add, remove, leave; a member with two
//! devices; two commits at once; a server restart; a report; and the
//! server's lies (a ghost device's KeyPackage, a withheld commit, replays)
//! refused or detected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_e2e::liar::{At, World};
use missive_e2e::{Endpoint as _, Job, User, concurrently};
use missive_proto::v1;

/// What `recv --json` printed for the group `group`: (from, text, event).
fn group_lines(u: &User, w: &World, group: &str) -> Vec<(String, String, bool)> {
    let r = u.ok(&w.liar, &["recv", "--json"]).unwrap();
    r.json_lines()
        .unwrap()
        .iter()
        .filter(|v| v["group"].as_str() == Some(group))
        .map(|v| {
            (
                v["from"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
                v["event"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn texts(lines: &[(String, String, bool)]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.2)
        .map(|l| format!("{}: {}", l.0, l.1))
        .collect()
}

fn events(lines: &[(String, String, bool)]) -> Vec<String> {
    lines.iter().filter(|l| l.2).map(|l| l.1.clone()).collect()
}

fn members(u: &User, w: &World, group: &str) -> Vec<String> {
    u.ok(&w.liar, &["group", "info", group, "--json"])
        .unwrap()
        .json_lines()
        .unwrap()
        .iter()
        .map(|v| v["username"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn three_users_talk_add_a_fourth_remove_one_and_leave() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    let dave = w.user("dave");

    let made = alice
        .ok(&w.liar, &["group", "create", "team", "bob", "carol"])
        .unwrap();
    assert!(made.stdout.contains("created the group team"), "{made:?}");
    alice
        .ok(&w.liar, &["send", "--group", "team", "hello team"])
        .unwrap();

    let at_bob = group_lines(&bob, &w, "team");
    assert_eq!(events(&at_bob), ["alice added you to team"], "{at_bob:?}");
    assert_eq!(texts(&at_bob), ["alice: hello team"]);
    bob.ok(&w.liar, &["send", "--group", "team", "hi from bob"])
        .unwrap();
    let at_carol = group_lines(&carol, &w, "team");
    assert_eq!(texts(&at_carol), ["alice: hello team", "bob: hi from bob"]);
    assert_eq!(members(&carol, &w, "team"), ["alice", "bob", "carol"]);

    // A fourth member, added by bob: everyone sees it, dave reads what follows.
    bob.ok(&w.liar, &["group", "add", "team", "dave"]).unwrap();
    alice
        .ok(&w.liar, &["send", "--group", "team", "welcome dave"])
        .unwrap();
    let at_dave = group_lines(&dave, &w, "team");
    assert_eq!(events(&at_dave), ["bob added you to team"]);
    assert_eq!(texts(&at_dave), ["alice: welcome dave"]);
    let at_alice = group_lines(&alice, &w, "team");
    assert!(
        events(&at_alice).contains(&"bob added dave".to_owned()),
        "{at_alice:?}"
    );
    assert_eq!(texts(&at_alice), ["bob: hi from bob"]);

    // Carol removed: she learns it, and reads nothing after.
    alice
        .ok(&w.liar, &["group", "remove", "team", "carol"])
        .unwrap();
    alice
        .ok(&w.liar, &["send", "--group", "team", "carol is out"])
        .unwrap();
    let at_carol = group_lines(&carol, &w, "team");
    assert!(
        events(&at_carol).contains(&"alice added dave".to_owned())
            || events(&at_carol).contains(&"bob added dave".to_owned()),
        "{at_carol:?}"
    );
    assert!(
        events(&at_carol).contains(&"alice removed you".to_owned()),
        "{at_carol:?}"
    );
    assert_eq!(texts(&at_carol), ["alice: welcome dave"]);
    let sent = carol
        .run(&w.liar, &["send", "--group", "team", "still here?"])
        .unwrap();
    assert!(!sent.ok(), "{sent:?}");
    assert!(sent.stderr.contains("removed"), "{sent:?}");
    let list = carol.ok(&w.liar, &["group", "list", "--json"]).unwrap();
    assert_eq!(list.json_lines().unwrap()[0]["status"], "removed");

    // Dave leaves; the next member to process it commits his removal.
    dave.ok(&w.liar, &["group", "leave", "team"]).unwrap();
    let at_alice = group_lines(&alice, &w, "team");
    assert!(
        events(&at_alice).contains(&"dave left".to_owned()),
        "{at_alice:?}"
    );
    let at_bob = group_lines(&bob, &w, "team");
    assert!(
        events(&at_bob).contains(&"dave left".to_owned()),
        "{at_bob:?}"
    );
    assert_eq!(members(&bob, &w, "team"), ["alice", "bob"]);
    bob.ok(&w.liar, &["send", "--group", "team", "just us"])
        .unwrap();
    assert_eq!(texts(&group_lines(&alice, &w, "team")), ["bob: just us"]);
    assert!(
        group_lines(&dave, &w, "team")
            .iter()
            .all(|l| l.1 != "just us")
    );

    // The history keeps the conversation and its events, in order.
    let history = alice
        .ok(&w.liar, &["history", "--group", "team", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    let shown: Vec<&str> = history
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    let pos = |t: &str| {
        shown
            .iter()
            .position(|s| *s == t)
            .unwrap_or_else(|| panic!("{t} in {shown:?}"))
    };
    assert!(pos("hello team") < pos("hi from bob"));
    assert!(pos("welcome dave") < pos("carol is out"));
    assert!(pos("carol is out") < pos("just us"));
}

#[test]
fn a_member_with_two_devices_reads_on_both_and_sends_from_either() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let laptop = w.link_device(&bob, "bob-laptop");
    alice
        .ok(&w.liar, &["group", "create", "pair", "bob"])
        .unwrap();
    let info = alice
        .ok(&w.liar, &["group", "info", "pair", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    let bob_row = info.iter().find(|v| v["username"] == "bob").unwrap();
    assert_eq!(bob_row["devices"], serde_json::json!([1, 2]), "{info:?}");

    alice
        .ok(&w.liar, &["send", "--group", "pair", "to both"])
        .unwrap();
    assert_eq!(texts(&group_lines(&bob, &w, "pair")), ["alice: to both"]);
    assert_eq!(texts(&group_lines(&laptop, &w, "pair")), ["alice: to both"]);
    laptop
        .ok(&w.liar, &["send", "--group", "pair", "from the laptop"])
        .unwrap();
    assert_eq!(
        texts(&group_lines(&alice, &w, "pair")),
        ["bob: from the laptop"]
    );
    // Bob's phone shows it as his own.
    let phone = bob
        .ok(&w.liar, &["recv", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    let own: Vec<_> = phone
        .iter()
        .filter(|v| v["text"] == "from the laptop")
        .collect();
    assert_eq!(own.len(), 1, "{phone:?}");
    assert_eq!(own[0]["outgoing"], true);
}

#[test]
fn two_commits_at_once_resolve_to_one_epoch_and_lose_nothing() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    let dave = w.user("dave");
    alice
        .ok(&w.liar, &["group", "create", "race", "bob"])
        .unwrap();
    group_lines(&bob, &w, "race");
    let (l, a, b) = (&w.liar, &alice, &bob);
    let results = concurrently(vec![
        Box::new(move || a.run(l, &["group", "add", "race", "carol"]).unwrap()) as Job<'_, _>,
        Box::new(move || b.run(l, &["group", "add", "race", "dave"]).unwrap()),
    ]);
    for r in &results {
        assert!(r.ok(), "{r:?}\n{}", w.liar.log());
    }
    // Exactly one commit per epoch was accepted.
    let commits = w.liar.commits();
    let mut epochs: Vec<u64> = commits.iter().map(|(_, c)| c.epoch).collect();
    epochs.sort_unstable();
    assert!(
        epochs.windows(2).any(|p| p[0] == p[1]),
        "a commit re-based: {epochs:?}"
    );
    for u in [&alice, &bob] {
        u.ok(&w.liar, &["recv"]).unwrap();
    }
    for u in [&alice, &bob, &carol, &dave] {
        let _ = group_lines(u, &w, "race");
        assert_eq!(
            members(u, &w, "race"),
            ["alice", "bob", "carol", "dave"],
            "{}",
            w.liar.log()
        );
    }
    carol
        .ok(&w.liar, &["send", "--group", "race", "all four"])
        .unwrap();
    for u in [&alice, &bob, &dave] {
        assert_eq!(texts(&group_lines(u, &w, "race")), ["carol: all four"]);
    }
}

#[test]
fn group_messages_survive_a_server_restart_and_a_report_verifies() {
    let mut w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.liar, &["group", "create", "kept", "bob"])
        .unwrap();
    alice
        .ok(
            &w.liar,
            &["send", "--group", "kept", "stored before the restart"],
        )
        .unwrap();
    w.restart_upstream();
    let at_bob = bob
        .ok(&w.liar, &["recv", "--json"])
        .unwrap()
        .json_lines()
        .unwrap();
    let message = at_bob
        .iter()
        .find(|v| v["text"] == "stored before the restart")
        .unwrap_or_else(|| panic!("{at_bob:?}"));
    assert_eq!(message["group"], "kept");
    let id = message["id"].as_str().unwrap();
    let report = bob
        .ok(&w.liar, &["report", id, "--reason", "test"])
        .unwrap();
    assert!(
        report.stdout.contains("accepted by the server"),
        "{report:?}"
    );
}

#[test]
fn a_ghost_key_package_is_refused_by_name() {
    let w = World::new();
    let alice = w.user("alice");
    let _bob = w.user("bob");
    let carol = w.user("carol");
    // The server hands out, as bob's, a device bob's list does not name.
    w.liar
        .rewrite_key_packages(|resp: &mut v1::FetchKeyPackagesResponse| {
            if resp.username == "bob"
                && let Some(mut kp) = resp.key_packages.first().cloned()
            {
                kp.device_id = 7;
                resp.key_packages.push(kp);
            }
        });
    let r = alice
        .run(&w.liar, &["group", "create", "trap", "bob"])
        .unwrap();
    assert!(!r.ok(), "{r:?}");
    assert!(r.stderr.contains("device 7 of bob"), "{r:?}");
    // Or carol's KeyPackage offered as bob's device 1.
    let seen = std::sync::Mutex::new(None::<Vec<u8>>);
    w.liar
        .rewrite_key_packages(move |resp: &mut v1::FetchKeyPackagesResponse| {
            let mut c = seen.lock().unwrap();
            if resp.username == "carol" {
                *c = resp.key_packages.first().map(|k| k.key_package.clone());
            } else if resp.username == "bob"
                && let (Some(kp), Some(other)) = (resp.key_packages.first_mut(), c.clone())
            {
                kp.key_package = other;
            }
        });
    alice
        .ok(&w.liar, &["group", "create", "first", "carol"])
        .unwrap();
    let r = alice
        .run(&w.liar, &["group", "add", "first", "bob"])
        .unwrap();
    assert!(!r.ok(), "{r:?}");
    assert!(
        r.stderr.contains("bob/1") && r.stderr.contains("another device"),
        "{r:?}"
    );
    w.liar.stop_rewriting_key_packages();
    alice
        .ok(&w.liar, &["group", "add", "first", "bob"])
        .unwrap();
    assert_eq!(members(&alice, &w, "first"), ["alice", "bob", "carol"]);
    let _ = carol;
}

#[test]
fn a_withheld_commit_is_detected_and_replays_show_nothing_twice() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    alice
        .ok(&w.liar, &["group", "create", "split", "bob", "carol"])
        .unwrap();
    alice
        .ok(&w.liar, &["send", "--group", "split", "one"])
        .unwrap();
    assert_eq!(texts(&group_lines(&bob, &w, "split")), ["alice: one"]);
    assert_eq!(texts(&group_lines(&carol, &w, "split")), ["alice: one"]);

    // A replay of a delivered message shows nothing new.
    let delivered = w.liar.group_deliveries("bob");
    let one = delivered
        .iter()
        .rev()
        .find(|d| d.message.kind == v1::GroupMessageKind::Application as i32)
        .unwrap()
        .message
        .clone();
    w.liar.redeliver_group("bob", one, At::AfterBacklog);
    assert!(texts(&group_lines(&bob, &w, "split")).is_empty());

    // The server keeps alice's next commit from carol.
    w.liar
        .withhold_group("carol", |m| m.kind == v1::GroupMessageKind::Commit as i32);
    alice
        .ok(&w.liar, &["group", "remove", "split", "bob"])
        .unwrap();
    alice
        .ok(&w.liar, &["send", "--group", "split", "two"])
        .unwrap();
    let r = carol.ok(&w.liar, &["recv"]).unwrap();
    assert!(r.stderr.contains("withheld"), "{r:?}");
    assert!(!r.stdout.contains("two"), "{r:?}");
    let list = carol.ok(&w.liar, &["group", "list", "--json"]).unwrap();
    let status = list.json_lines().unwrap()[0]["status"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        status.starts_with("stopped") && status.contains("forked"),
        "{status}"
    );
}

#[test]
fn a_linked_device_joins_the_groups_and_a_removed_one_leaves_them() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    alice
        .ok(&w.liar, &["group", "create", "home", "bob"])
        .unwrap();
    group_lines(&bob, &w, "home");
    let laptop = w.link_device(&alice, "alice-laptop");
    // The next time alice's phone runs, it adds the laptop to its groups.
    alice.ok(&w.liar, &["recv"]).unwrap();
    let at_laptop = group_lines(&laptop, &w, "home");
    assert_eq!(
        events(&at_laptop),
        ["this device joined home"],
        "{at_laptop:?}"
    );
    let at_bob = group_lines(&bob, &w, "home");
    assert_eq!(events(&at_bob), ["alice's new device joined"], "{at_bob:?}");
    bob.ok(&w.liar, &["send", "--group", "home", "to both of alice's"])
        .unwrap();
    assert_eq!(
        texts(&group_lines(&laptop, &w, "home")),
        ["bob: to both of alice's"]
    );
    assert_eq!(
        texts(&group_lines(&alice, &w, "home")),
        ["bob: to both of alice's"]
    );

    // Removing the laptop removes it from the group at once.
    alice.ok(&w.liar, &["devices", "remove", "2"]).unwrap();
    let info = bob
        .ok(&w.liar, &["recv"])
        .and_then(|_| bob.ok(&w.liar, &["group", "info", "home", "--json"]))
        .unwrap()
        .json_lines()
        .unwrap();
    let alice_row = info.iter().find(|v| v["username"] == "alice").unwrap();
    assert_eq!(alice_row["devices"], serde_json::json!([1]), "{info:?}");
}
