//! Group conversations (MLS, RFC 9420) with the real binaries, through the
//! lying server: create, talk, add, remove, leave; a member with two
//! devices; two commits at once; a server restart; a report; and the
//! server's lies (a ghost device's KeyPackage, a Welcome it forged with a
//! ghost device, a withheld commit, replays) refused or detected; and two
//! processes on one home.
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

/// `creator` makes the group `group` with `members`, who then receive (and
/// so join it).
fn group_with(w: &World, creator: &User, group: &str, members: &[&User]) {
    let mut args = vec!["group", "create", group];
    args.extend(members.iter().map(|m| m.name.as_str()));
    creator.ok(&w.liar, &args).unwrap();
    for m in members {
        m.ok(&w.liar, &["recv"]).unwrap();
    }
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
    group_with(&w, &alice, "race", &[&bob]);
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
    group_with(&w, &alice, "home", &[&bob]);
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

/// What a server can build on its own: an MLS group whose only member is a
/// device it made up, and a Welcome into it for someone's KeyPackage.
mod forge {
    use openmls::prelude::tls_codec::Deserialize as _;
    use openmls::prelude::*;
    use openmls_traits::signatures::{Signer, SignerError};
    use openmls_traits::types::SignatureScheme;

    const SUITE: Ciphersuite = Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;

    struct Ghost(ed25519_dalek::SigningKey);

    impl Signer for Ghost {
        fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
            use ed25519_dalek::Signer as _;
            Ok(self.0.sign(payload).to_bytes().to_vec())
        }

        fn signature_scheme(&self) -> SignatureScheme {
            SignatureScheme::ED25519
        }
    }

    /// A commit adding the holder of `key_package` (an `MLSMessage` as the
    /// directory serves it) to group `group_id`, made by `(username,
    /// device_id)` with a key the server chose, and its Welcome.
    pub(super) fn add(
        username: &str,
        device_id: u32,
        key_package: &[u8],
        group_id: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let provider = openmls_libcrux_crypto::Provider::new().unwrap();
        let ghost = Ghost(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng));
        let me = CredentialWithKey {
            credential: BasicCredential::new(missive_crypto::group::credential_identity(
                username, device_id,
            ))
            .into(),
            signature_key: ghost.0.verifying_key().to_bytes().to_vec().into(),
        };
        let message = MlsMessageIn::tls_deserialize_exact(key_package).unwrap();
        let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
            panic!("not a KeyPackage");
        };
        let kp = kp
            .validate(provider.crypto(), ProtocolVersion::Mls10)
            .unwrap();
        let mut group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(SUITE)
            .with_capabilities(Capabilities::new(
                None,
                Some(&[SUITE]),
                None,
                None,
                Some(&[CredentialType::Basic]),
            ))
            .use_ratchet_tree_extension(true)
            .build(&provider, &ghost, me)
            .unwrap();
        let (commit, welcome, _) = group.add_members(&provider, &ghost, &[kp]).unwrap();
        (commit.to_bytes().unwrap(), welcome.to_bytes().unwrap())
    }
}

#[test]
fn a_welcome_or_commit_the_server_forged_with_a_ghost_device_is_refused() {
    use missive_proto::v1::group_service_client::GroupServiceClient;
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    group_with(&w, &alice, "team", &[&bob, &carol]);
    assert_eq!(members(&carol, &w, "team"), ["alice", "bob", "carol"]);
    let listed = carol.ok(&w.liar, &["group", "list", "--json"]).unwrap();
    let team_id = hex::decode(listed.json_lines().unwrap()[0]["id"].as_str().unwrap()).unwrap();

    // The server takes carol's KeyPackages from its own directory.
    let mut mallory = w.raw("mallory");
    let fetched = mallory.block_on(|p| async move {
        let req = p
            .authed(v1::FetchKeyPackagesRequest {
                username: "carol".into(),
            })
            .unwrap();
        GroupServiceClient::new(p.channel())
            .fetch_key_packages(req)
            .await
            .unwrap()
            .into_inner()
    });
    let kp = fetched.key_packages[0].key_package.clone();

    let invite = |sender: &str, device: u32, group_id: &[u8], seq: u64| v1::GroupMessage {
        group_id: group_id.to_vec(),
        seq,
        kind: v1::GroupMessageKind::Welcome as i32,
        epoch: 1,
        sender: sender.into(),
        sender_device: device,
        content: forge::add(sender, device, &kp, group_id).1,
        message_id: vec![seq as u8; 16],
        server_timestamp_ms: missive_e2e::raw::now_ms(),
        ..Default::default()
    };
    // A device of bob's that bob never linked; alice's own device id with
    // a key that is not hers; and a ghost "joining" the group carol is in.
    w.liar
        .inject_group("carol", invite("bob", 7, &[0x11; 16], 1), At::AfterBacklog);
    w.liar.inject_group(
        "carol",
        invite("alice", 1, &[0x22; 16], 1),
        At::AfterBacklog,
    );
    w.liar
        .inject_group("carol", invite("bob", 7, &team_id, 99), At::AfterBacklog);

    // And a commit of the server's own into carol's group.
    let (commit, _) = forge::add("bob", 7, &kp, &team_id);
    w.liar.inject_group(
        "carol",
        v1::GroupMessage {
            group_id: team_id.clone(),
            seq: 100,
            kind: v1::GroupMessageKind::Commit as i32,
            epoch: 1,
            sender: "bob".into(),
            sender_device: 7,
            content: commit,
            message_id: vec![100; 16],
            server_timestamp_ms: missive_e2e::raw::now_ms(),
            ..Default::default()
        },
        At::AfterBacklog,
    );

    let r = carol.ok(&w.liar, &["recv"]).unwrap();
    assert!(
        r.stderr.contains("a message of the group team was refused"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(
            "a group invitation was refused: device 7 of bob is not on bob's signed device list"
        ),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(
            "a group invitation was refused: device 1 of alice is not on alice's signed device list"
        ),
        "{r:?}"
    );
    let listed = carol.ok(&w.liar, &["group", "list", "--json"]).unwrap();
    assert_eq!(listed.json_lines().unwrap().len(), 1, "{listed:?}");
    assert_eq!(members(&carol, &w, "team"), ["alice", "bob", "carol"]);

    // The group carol is in goes on as before.
    alice
        .ok(&w.liar, &["send", "--group", "team", "still just us"])
        .unwrap();
    assert_eq!(
        texts(&group_lines(&carol, &w, "team")),
        ["alice: still just us"]
    );
    assert_eq!(
        texts(&group_lines(&bob, &w, "team")),
        ["alice: still just us"]
    );
}

#[test]
fn two_processes_on_one_home_show_each_group_message_once_and_both_commits_land() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    let dave = w.user("dave");
    group_with(&w, &alice, "pair", &[&bob, &carol]);
    let sent: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    for m in &sent {
        alice.ok(&w.liar, &["send", "--group", "pair", m]).unwrap();
    }

    // Two receivers and a sender on bob's one home, at once.
    let (l, b) = (&w.liar, &bob);
    let results = concurrently(vec![
        Box::new(move || b.run(l, &["recv", "--json"]).unwrap()) as Job<'_, _>,
        Box::new(move || b.run(l, &["recv", "--json"]).unwrap()),
        Box::new(move || b.run(l, &["send", "--group", "pair", "from bob"]).unwrap()),
    ]);
    let mut shown = Vec::new();
    for r in &results {
        assert!(r.ok(), "{r:?}\n{}", w.liar.log());
        for v in r.json_lines().unwrap_or_default() {
            if v["group"].as_str() == Some("pair") && v["event"] == false {
                shown.push(v["text"].as_str().unwrap().to_owned());
            }
        }
    }
    shown.sort();
    assert_eq!(shown, sent, "each message shown once, by one of the two");
    let history = bob
        .ok(&w.liar, &["history", "--group", "pair", "--json"])
        .unwrap();
    let mut stored: Vec<String> = history
        .json_lines()
        .unwrap()
        .iter()
        .filter(|v| v["event"] == false)
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    // In the order this home stored them (bob's own may come first).
    stored.sort();
    let mut want = sent.clone();
    want.push("from bob".into());
    want.sort();
    assert_eq!(stored, want);

    // Two membership changes from two processes of one device: one waits
    // for or re-bases on the other; both land.
    let results = concurrently(vec![
        Box::new(move || b.run(l, &["group", "add", "pair", "dave"]).unwrap()) as Job<'_, _>,
        Box::new(move || b.run(l, &["group", "remove", "pair", "carol"]).unwrap()),
    ]);
    for r in &results {
        assert!(r.ok(), "{r:?}\n{}", w.liar.log());
    }
    for u in [&alice, &bob, &dave] {
        let _ = group_lines(u, &w, "pair");
        assert_eq!(
            members(u, &w, "pair"),
            ["alice", "bob", "dave"],
            "{}",
            w.liar.log()
        );
    }
    alice
        .ok(&w.liar, &["send", "--group", "pair", "after both"])
        .unwrap();
    assert_eq!(
        texts(&group_lines(&dave, &w, "pair")),
        ["alice: after both"]
    );
    let at_carol = group_lines(&carol, &w, "pair");
    assert!(
        !texts(&at_carol).contains(&"alice: after both".to_owned()),
        "{at_carol:?}"
    );
}

#[test]
fn reordered_and_replayed_group_messages_show_once_each() {
    use missive_e2e::liar::Order;
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    group_with(&w, &alice, "order", &[&bob]);

    w.liar.withhold_group("bob", |m| {
        m.kind == v1::GroupMessageKind::Application as i32
    });
    for t in ["r1", "r2", "r3"] {
        alice.ok(&w.liar, &["send", "--group", "order", t]).unwrap();
    }
    assert!(texts(&group_lines(&bob, &w, "order")).is_empty());
    // Last first, ahead of the server's own copies of the same three
    // (bob never acknowledged them): each is shown once, as it came.
    assert_eq!(
        w.liar
            .release_group("bob", At::BeforeBacklog, Order::Reversed),
        3
    );
    assert_eq!(
        texts(&group_lines(&bob, &w, "order")),
        ["alice: r3", "alice: r2", "alice: r1"]
    );
    let again = w
        .liar
        .group_deliveries("bob")
        .into_iter()
        .find(|d| d.message.kind == v1::GroupMessageKind::Application as i32)
        .unwrap()
        .message;
    w.liar.redeliver_group("bob", again, At::BeforeBacklog);
    assert!(texts(&group_lines(&bob, &w, "order")).is_empty());
    let history = bob
        .ok(&w.liar, &["history", "--group", "order", "--json"])
        .unwrap();
    let shown: Vec<String> = history
        .json_lines()
        .unwrap()
        .iter()
        .filter(|v| v["event"] == false)
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, ["r3", "r2", "r1"]);
}

#[test]
fn a_message_ordered_before_a_members_own_commit_is_still_read_by_it() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    group_with(&w, &alice, "late", &[&bob]);
    // bob writes in the current epoch; alice, who has not received it,
    // changes the group: the server orders bob's message first.
    bob.ok(&w.liar, &["send", "--group", "late", "before your change"])
        .unwrap();
    alice
        .ok(&w.liar, &["group", "add", "late", "carol"])
        .unwrap();
    let at_alice = group_lines(&alice, &w, "late");
    assert_eq!(
        texts(&at_alice),
        ["bob: before your change"],
        "{at_alice:?}"
    );
    assert_eq!(members(&alice, &w, "late"), ["alice", "bob", "carol"]);
    // And the next epoch works for everyone.
    alice
        .ok(&w.liar, &["send", "--group", "late", "after"])
        .unwrap();
    assert_eq!(texts(&group_lines(&bob, &w, "late")), ["alice: after"]);
    assert_eq!(texts(&group_lines(&carol, &w, "late")), ["alice: after"]);
}
