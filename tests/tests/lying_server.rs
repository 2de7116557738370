//! The client keeps its promises against a lying server (issue 12).
//!
//! Every test runs the real `missive` binary against a
//! [`LyingServer`](missive_e2e::liar::LyingServer) in front of a real
//! `missive-server`, or receives from a [`raw`](missive_e2e::raw) peer that
//! builds its own (genuinely encrypted, correctly franked) content. The
//! contract they check:
//!
//! - `recv --json` prints one object per message with `id`, `from`, `text`,
//!   `sent_at` and `server_time` (RFC 3339, both the server's timestamp),
//!   `sender_clock` (the sender's claim, clamped) and `quarantined`; plain
//!   `recv` prints `[TIME] FROM: TEXT`, FROM being `an unverified new key of
//!   USERNAME` for a quarantined message; a dropped envelope prints `warning:
//!   dropped a message from SENDER: REASON` on stderr.
//! - A message key is never used twice, whatever runs concurrently on one
//!   home and even after the store is restored from a backup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use missive_crypto::PrekeyMessage;
use missive_e2e::liar::{At, Rpc, World};
use missive_e2e::raw::now_ms;
use missive_e2e::wire::{ratchet_header, reused_message_keys};
use missive_e2e::{Endpoint as _, Job, Run, User, concurrently};
use missive_proto::v1;
use serde_json::Value;

fn lines(r: &Run) -> Vec<Value> {
    r.json_lines()
        .unwrap_or_else(|e| panic!("{e}\nstdout: {}\nstderr: {}", r.stdout, r.stderr))
}

fn texts(r: &Run) -> Vec<String> {
    lines(r)
        .iter()
        .map(|v| v["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Alice and bob have talked both ways, so each has pinned the other.
fn converse(w: &World, alice: &User, bob: &User) {
    alice.ok(&w.liar, &["send", "bob", "hello bob"]).unwrap();
    assert_eq!(
        texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap()),
        ["hello bob"]
    );
    bob.ok(&w.liar, &["send", "alice", "hello alice"]).unwrap();
    assert_eq!(
        texts(&alice.ok(&w.liar, &["recv", "--json"]).unwrap()),
        ["hello alice"]
    );
}

// ---- item 2 --------------------------------------------------------------------

#[test]
fn replayed_prekey_message_is_shown_once_and_redeliveries_are_dropped() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let _mallory = w.user("mallory");
    const TEXT: &str = "this first contact must be shown exactly once";

    // Bob's bundle without one-time prekeys: PQXDH falls back on his
    // last-resort KEM key, which a replay can reuse.
    w.liar.drain_bundles("bob", true);
    alice.ok(&w.liar, &["send", "bob", TEXT]).unwrap();
    w.liar.drain_bundles("bob", false);
    let sent = w.liar.sends_to("bob");
    assert_eq!(sent.len(), 1);
    let first = &sent[0].request.envelopes[0];
    assert_eq!(first.r#type, v1::EnvelopeType::PrekeyMessage as i32);
    let pm = PrekeyMessage::parse(&first.content).unwrap();
    assert_eq!(pm.one_time_prekey_id(), None, "the liar did not drain");
    assert_eq!(
        Some(pm.kem_prekey_id()),
        w.liar.last_resort_kem("bob", 1).map(|k| k.id),
        "the liar did not hand out the last-resort KEM prekey"
    );

    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r), [TEXT]);
    let original = w.liar.delivered_to("bob")[0].clone();

    for (n, (sender, device)) in [("mallory", 1), ("alice", 2), ("alice", 1)]
        .into_iter()
        .enumerate()
    {
        let mut replay = original.clone();
        replay.sender = sender.into();
        replay.sender_device = device;
        replay.id = w.liar.fake_id();
        w.liar.inject("bob", replay, At::BeforeBacklog);
        let r = bob.run(&w.liar, &["recv", "--json"]).unwrap();
        assert!(r.ok(), "{r:?}");
        // The harness really delivered it.
        let injected = w.liar.deliveries().iter().filter(|d| d.injected).count();
        assert_eq!(injected, n + 1, "{}", w.liar.log());
        assert!(
            !r.stdout.contains(TEXT),
            "the replay as {sender}/{device} was shown again:\n{}",
            r.stdout
        );
        assert!(lines(&r).is_empty(), "{r:?}");
        // The very same (sender, device, message id) may be recognised as
        // already processed and skipped silently; any other re-delivery of
        // a consumed first contact is a replay and says so.
        if (sender, device) != ("alice", 1) {
            assert!(
                r.stderr.to_lowercase().contains("replay"),
                "the replay as {sender}/{device} was not reported as one: {r:?}\n{}",
                w.liar.log()
            );
        }
    }

    let h = bob.run(&w.liar, &["history", "mallory"]).unwrap();
    assert!(!h.stdout.contains(TEXT), "mallory's history: {h:?}");
    if !h.ok() {
        assert!(h.stderr.contains("unknown"), "{h:?}");
    }
    let h = bob.ok(&w.liar, &["history", "alice", "--json"]).unwrap();
    assert_eq!(
        texts(&h).iter().filter(|t| t.as_str() == TEXT).count(),
        1,
        "{h:?}"
    );

    // The genuine session still works.
    alice
        .ok(&w.liar, &["send", "bob", "a genuine follow-up"])
        .unwrap();
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r), ["a genuine follow-up"], "{r:?}");
    assert!(!r.stderr.contains("dropped"), "{}", r.stderr);
}

// ---- item 3 --------------------------------------------------------------------

const EVE_AS_BOB: &str = "eve here, pretending to be bob";
const TRUDY_AS_BOB: &str = "trudy here, also pretending to be bob";

/// Alice and bob have talked; eve and trudy exist, and the liar delivers
/// whatever they send alice as coming from bob device 1.
fn impersonation_world() -> (World, User, User, User, User) {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let eve = w.user("eve");
    let trudy = w.user("trudy");
    converse(&w, &alice, &bob);
    w.liar.rewrite(|to, env| {
        if to == "alice" && (env.sender == "eve" || env.sender == "trudy") {
            env.sender = "bob".into();
            env.sender_device = 1;
        }
    });
    (w, alice, bob, eve, trudy)
}

/// Alice receives `text` from an impostor under bob's name. Protocol v2:
/// the impostor's device key is on no list signed by bob's account key (the
/// server cannot make one), so the message is refused by name — never shown,
/// not even quarantined, not in bob's history.
fn assert_refused_as_unlisted(w: &World, alice: &User, text: &str) {
    let r = alice.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(
        r.stderr
            .contains("device 1 of bob is not on bob's signed device list"),
        "no device-list refusal: {r:?}"
    );
    assert!(
        !r.stdout.contains(text),
        "the impostor's message is shown: {r:?}"
    );
    let h = alice.ok(&w.liar, &["history", "bob", "--json"]).unwrap();
    assert!(
        !h.stdout.contains(text),
        "the impostor's message is in bob's history: {}",
        h.stdout
    );
}

/// A genuine bob → alice message still decrypts and shows normally.
fn assert_genuine_bob_gets_through(w: &World, alice: &User, bob: &User, text: &str) {
    bob.ok(&w.liar, &["send", "alice", text]).unwrap();
    let r = alice.ok(&w.liar, &["recv", "--json"]).unwrap();
    let msgs = lines(&r);
    assert_eq!(texts(&r), [text], "genuine bob lost: {r:?}");
    assert_eq!(msgs[0]["from"], "bob");
    assert_eq!(msgs[0]["quarantined"], Value::Bool(false), "{}", r.stdout);
    assert!(!r.stderr.contains("dropped"), "{}", r.stderr);
}

#[test]
fn impersonated_sender_is_refused_and_no_number_makes_it_trusted() {
    let (w, alice, bob, eve, trudy) = impersonation_world();
    eve.ok(&w.liar, &["send", "alice", EVE_AS_BOB]).unwrap();
    assert_refused_as_unlisted(&w, &alice, EVE_AS_BOB);
    assert_genuine_bob_gets_through(&w, &alice, &bob, "the real bob, still here");

    // Nothing is pending: `trust` has no new key to accept, and `verify`
    // refuses a number that is not bob's.
    let zeros = vec!["00000"; 12];
    let mut args = vec!["trust", "bob"];
    args.extend(&zeros);
    let r = alice.ok(&w.liar, &args).unwrap();
    assert!(r.stdout.contains("has not changed"), "{r:?}");
    let mut args = vec!["verify", "bob"];
    args.extend(&zeros);
    let r = alice.run(&w.liar, &args).unwrap();
    assert!(!r.ok(), "`verify` with a wrong number succeeded: {r:?}");
    // A second impostor is refused the same way.
    trudy.ok(&w.liar, &["send", "alice", TRUDY_AS_BOB]).unwrap();
    assert_refused_as_unlisted(&w, &alice, TRUDY_AS_BOB);
    assert_genuine_bob_gets_through(&w, &alice, &bob, "and again");
    alice
        .ok(&w.liar, &["send", "bob", "glad it is still you"])
        .unwrap();
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert_eq!(texts(&r), ["glad it is still you"], "{r:?}");
}

// ---- item 4 --------------------------------------------------------------------

#[test]
fn oversized_content_from_a_peer_is_dropped_with_a_warning() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let mut mallory = w.raw("mallory");
    // Below the server's 96 KiB envelope cap, above what a report may carry.
    let big = "A".repeat(80 * 1024);
    mallory.send_text("bob", &big, now_ms()).unwrap();
    alice
        .ok(&w.liar, &["send", "bob", "a normal message"])
        .unwrap();

    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert!(
        !r.stdout.contains("AAAAAAAA"),
        "the oversized text was shown"
    );
    assert_eq!(texts(&r), ["a normal message"], "{}", r.stderr);
    assert!(
        r.stderr.contains("dropped a message from mallory"),
        "{}",
        r.stderr
    );
    let h = bob.run(&w.liar, &["history", "mallory"]).unwrap();
    assert!(
        !h.stdout.contains("AAAAAAAA"),
        "stored: {} bytes",
        h.stdout.len()
    );
}

// ---- item 5 --------------------------------------------------------------------

fn assert_sane_time(v: &Value, field: &str) {
    let s = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"));
    let t = humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{field} {s:?}: {e}"));
    let age = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(3600), "{field} {s:?} is not now");
}

#[test]
fn hostile_sender_timestamps_neither_crash_nor_mislead() {
    let w = World::new();
    let bob = w.user("bob");
    let mut mallory = w.raw("mallory");
    let hostile = [u64::MAX, 300_000_000_000_000];

    for (i, ts) in hostile.iter().enumerate() {
        mallory
            .send_text("bob", &format!("plain {i}"), *ts)
            .unwrap();
    }
    let r = bob.run(&w.liar, &["recv"]).unwrap();
    assert_eq!(r.code, Some(0), "recv: {r:?}");
    for i in 0..hostile.len() {
        assert!(r.stdout.contains(&format!("mallory: plain {i}")), "{r:?}");
    }

    for (i, ts) in hostile.iter().enumerate() {
        mallory.send_text("bob", &format!("json {i}"), *ts).unwrap();
    }
    let r = bob.run(&w.liar, &["recv", "--json"]).unwrap();
    assert_eq!(r.code, Some(0), "recv --json: {r:?}");
    let msgs = lines(&r);
    assert_eq!(texts(&r), ["json 0", "json 1"]);
    for m in &msgs {
        // The time shown is the server's, which the franking tag binds.
        assert_sane_time(m, "sent_at");
        assert_sane_time(m, "server_time");
        assert_eq!(m["sent_at"], m["server_time"], "{m}");
        // The sender's claim, clamped; as RFC 3339 or as ms.
        let clock = &m["sender_clock"];
        assert!(clock.is_string() || clock.is_u64(), "no sender_clock: {m}");
        if let Some(s) = clock.as_str() {
            assert!(humantime::parse_rfc3339(s).is_ok(), "sender_clock {s:?}");
        }
    }

    let h = bob.run(&w.liar, &["history", "mallory"]).unwrap();
    assert_eq!(h.code, Some(0), "history: {h:?}");
    assert_eq!(h.stdout.lines().count(), 4, "{}", h.stdout);
    let h = bob.run(&w.liar, &["history", "mallory", "--json"]).unwrap();
    assert_eq!(h.code, Some(0), "history --json: {h:?}");
    assert_eq!(lines(&h).len(), 4, "{}", h.stdout);
}

// ---- item 8 --------------------------------------------------------------------

const EVIL: &str = "hi\x1b[2J\x1b]52;c;ZXZpbA==\x07\r\n[2026-01-01T00:00:00.000Z] alice: please send me your password\u{9b}31m\u{202e}";

/// No terminal control in `out`: no ESC, BEL, CR, CSI (U+009B) or RLO (U+202E).
fn assert_inert(what: &str, out: &str) {
    for (bad, name) in [
        ('\x1b', "ESC"),
        ('\x07', "BEL"),
        ('\r', "CR"),
        ('\u{9b}', "U+009B CSI"),
        ('\u{202e}', "U+202E RLO"),
    ] {
        assert!(!out.contains(bad), "{what} contains a raw {name}: {out:?}");
    }
}

/// Each message starts exactly one line with '['.
fn assert_one_line_each(what: &str, out: &str, messages: usize) {
    let starts = out.lines().filter(|l| l.starts_with('[')).count();
    assert_eq!(starts, messages, "{what}: a text forged a line: {out:?}");
}

#[test]
fn terminal_control_characters_never_reach_the_terminal() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");

    alice.ok(&w.liar, &["send", "bob", EVIL]).unwrap();
    alice.ok(&w.liar, &["send", "bob", "a plain one"]).unwrap();
    let r = bob.ok(&w.liar, &["recv"]).unwrap();
    assert!(r.stdout.contains("a plain one"), "{r:?}");
    assert_inert("recv stdout", &r.stdout);
    assert_inert("recv stderr", &r.stderr);
    assert_one_line_each("recv", &r.stdout, 2);

    alice.ok(&w.liar, &["send", "bob", EVIL]).unwrap();
    alice
        .ok(&w.liar, &["send", "bob", "another plain one"])
        .unwrap();
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    assert_eq!(lines(&r).len(), 2, "{r:?}");
    assert_inert("recv --json stdout", &r.stdout);
    assert_inert("recv --json stderr", &r.stderr);

    for (who, contact) in [(&bob, "alice"), (&alice, "bob")] {
        let h = who.ok(&w.liar, &["history", contact]).unwrap();
        let what = format!("{}'s history {contact}", who.name);
        assert_inert(&what, &h.stdout);
        assert_inert(&what, &h.stderr);
        assert_one_line_each(&what, &h.stdout, 4);
    }

    // A status message is attacker-controlled too.
    w.liar.fail(
        Rpc::Send,
        tonic::Code::InvalidArgument,
        "\x1b[31mfake\x1b[0m",
    );
    let r = alice.run(&w.liar, &["send", "bob", "hello?"]).unwrap();
    assert!(!r.ok(), "{r:?}");
    assert!(
        !r.stderr.contains('\x1b'),
        "raw ESC from the server: {:?}",
        r.stderr
    );
    assert!(!r.stdout.contains('\x1b'), "{:?}", r.stdout);
}

// ---- item 1 --------------------------------------------------------------------

/// Messages bob received, counted by text, over several `recv` runs.
#[derive(Default)]
struct Inbox {
    counts: BTreeMap<String, usize>,
    dropped: Vec<String>,
}

impl Inbox {
    fn add(&mut self, r: &Run) {
        assert!(r.ok(), "bob's recv failed: {r:?}");
        for t in texts(r) {
            *self.counts.entry(t).or_default() += 1;
        }
        self.dropped.extend(
            r.stderr
                .lines()
                .filter(|l| l.contains("dropped"))
                .map(str::to_owned),
        );
    }

    fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

#[test]
fn concurrent_senders_on_one_home_never_reuse_a_message_key() {
    const PER_PROCESS: usize = 200;
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    converse(&w, &alice, &bob);
    let started = Instant::now();

    let done = std::sync::atomic::AtomicUsize::new(0);
    let sender = |p: usize| {
        let (alice, liar, done) = (&alice, &w.liar, &done);
        Box::new(move || {
            let mut failures = Vec::new();
            for n in 0..PER_PROCESS {
                let r = alice
                    .run(liar, &["send", "bob", &format!("msg-{p}-{n}")])
                    .unwrap();
                if !r.ok() {
                    failures.push(format!("msg-{p}-{n}: {}", r.stderr.trim()));
                }
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (Vec::new(), failures)
        }) as Job<'_, (Vec<Run>, Vec<String>)>
    };
    let receiver = {
        let (bob, liar, done) = (&bob, &w.liar, &done);
        Box::new(move || {
            let mut runs = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                runs.push(bob.run(liar, &["recv", "--json", "--wait", "2"]).unwrap());
            }
            (runs, Vec::new())
        }) as Job<'_, (Vec<Run>, Vec<String>)>
    };
    let results = concurrently(vec![sender(0), sender(1), receiver]);
    eprintln!("400 sends took {:?}", started.elapsed());

    let failures: Vec<&String> = results.iter().flat_map(|(_, f)| f).collect();
    assert!(failures.is_empty(), "sends failed: {failures:#?}");

    let mut inbox = Inbox::default();
    for r in results.iter().flat_map(|(runs, _)| runs) {
        inbox.add(r);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while inbox.total() < 2 * PER_PROCESS && Instant::now() < deadline {
        inbox.add(&bob.run(&w.liar, &["recv", "--json"]).unwrap());
    }

    let reused = reused_message_keys(&w.liar.sends_to("bob")).unwrap();
    assert!(
        reused.is_empty(),
        "{} (ratchet key, counter) pairs were used by more than one message, e.g. {:#?}",
        reused.len(),
        reused.first()
    );
    let missing: Vec<String> = (0..2)
        .flat_map(|p| (0..PER_PROCESS).map(move |n| format!("msg-{p}-{n}")))
        .filter(|t| !inbox.counts.contains_key(t))
        .collect();
    let twice: Vec<(&String, &usize)> = inbox.counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty() && inbox.dropped.is_empty(),
        "{} missing (e.g. {:?}), {} shown twice (e.g. {:?}), {} dropped (e.g. {:?})",
        missing.len(),
        missing.first(),
        twice.len(),
        twice.first(),
        inbox.dropped.len(),
        inbox.dropped.first()
    );
}

#[test]
fn concurrent_receivers_on_one_home_show_each_message_once() {
    const MESSAGES: usize = 50;
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    converse(&w, &alice, &bob);
    let sent: Vec<String> = (0..MESSAGES).map(|n| format!("pending-{n}")).collect();
    for t in &sent {
        alice.ok(&w.liar, &["send", "bob", t]).unwrap();
    }

    let recv = || {
        let (bob, liar) = (&bob, &w.liar);
        Box::new(move || bob.run(liar, &["recv", "--json"]).unwrap()) as Job<'_, Run>
    };
    let runs = concurrently(vec![recv(), recv(), recv()]);
    let mut inbox = Inbox::default();
    for r in &runs {
        inbox.add(r);
    }
    inbox.add(&bob.ok(&w.liar, &["recv", "--json"]).unwrap());

    let wrong: Vec<(&String, usize)> = sent
        .iter()
        .map(|t| (t, inbox.counts.get(t).copied().unwrap_or(0)))
        .filter(|(_, c)| *c != 1)
        .collect();
    assert!(
        wrong.is_empty() && inbox.dropped.is_empty(),
        "shown other than once across three concurrent recv: {wrong:?}; dropped: {:?}",
        inbox.dropped
    );
    let h = bob.ok(&w.liar, &["history", "alice", "--json"]).unwrap();
    let in_history = texts(&h);
    for t in &sent {
        assert_eq!(in_history.iter().filter(|x| *x == t).count(), 1, "{t}");
    }
}

// ---- item 6 --------------------------------------------------------------------

const DB_FILES: [&str; 4] = [
    "missive.db",
    "missive.db-wal",
    "missive.db-shm",
    "missive.db-journal",
];

#[test]
fn restored_backup_never_reuses_a_message_key() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let backup = w.root.path().join("alice-backup");
    std::fs::create_dir_all(&backup).unwrap();

    alice.ok(&w.liar, &["send", "bob", "one"]).unwrap();
    for f in DB_FILES {
        if alice.home.join(f).exists() {
            std::fs::copy(alice.home.join(f), backup.join(f)).unwrap();
        }
    }
    alice.ok(&w.liar, &["send", "bob", "two"]).unwrap();
    alice.ok(&w.liar, &["send", "bob", "three"]).unwrap();
    let mut got = texts(&bob.ok(&w.liar, &["recv", "--json"]).unwrap());

    for f in DB_FILES {
        let _ = std::fs::remove_file(alice.home.join(f));
        if backup.join(f).exists() {
            std::fs::copy(backup.join(f), alice.home.join(f)).unwrap();
        }
    }
    let before_restore = w.liar.sends_to("bob").len();
    alice
        .ok(&w.liar, &["send", "bob", "four, after the restore"])
        .unwrap();
    let r = bob.ok(&w.liar, &["recv", "--json"]).unwrap();
    got.extend(texts(&r));
    assert_eq!(
        got,
        ["one", "two", "three", "four, after the restore"],
        "{}",
        r.stderr
    );

    let sends = w.liar.sends_to("bob");
    let reused = reused_message_keys(&sends).unwrap();
    assert!(reused.is_empty(), "message keys reused: {reused:#?}");
    let old_base_keys: HashSet<[u8; 32]> = sends[..before_restore]
        .iter()
        .flat_map(|s| &s.request.envelopes)
        .filter_map(|e| ratchet_header(&e.content).ok()?.base_key)
        .collect();
    let after = ratchet_header(&sends[before_restore].request.envelopes[0].content).unwrap();
    let base = after
        .base_key
        .expect("after the restore the client must start over with a prekey message");
    assert!(
        !old_base_keys.contains(&base),
        "the prekey message after the restore reuses a base key"
    );
}

// ---- item 9: reports select by (sender, message id) ------------------------------

/// A message id is the sender's choice: another sender can reuse one. A
/// report must then name the sender, and reports exactly that message.
#[test]
fn a_report_names_the_sender_when_a_message_id_is_reused() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let mut mallory = w.raw("mallory");
    alice
        .ok(&w.liar, &["send", "bob", "an honest note"])
        .unwrap();
    let got = lines(&bob.ok(&w.liar, &["recv", "--json"]).unwrap());
    let id = got[0]["id"].as_str().unwrap().to_owned();
    let content = v1::Content {
        body: Some(v1::content::Body::Text(v1::TextMessage {
            body: "mallory's abuse under alice's id".into(),
            sent_at_ms: now_ms(),
            ..Default::default()
        })),
        attachment: None,
        franking_key: vec![7u8; 32],
        sender_devices: None,
        sent_to: String::new(),
    };
    mallory
        .send_content("bob", &hex_decode(&id), &content)
        .unwrap();
    let got = lines(&bob.ok(&w.liar, &["recv", "--json"]).unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"].as_str(), Some(id.as_str()));

    let ambiguous = bob.run(&w.liar, &["report", &id]).unwrap();
    assert_eq!(ambiguous.code, Some(1), "{ambiguous:?}");
    assert!(ambiguous.stderr.contains("--from"), "{ambiguous:?}");
    let r = bob
        .ok(
            &w.liar,
            &["report", &id, "--from", "mallory", "--reason", "abuse"],
        )
        .unwrap();
    assert!(r.stdout.contains("accepted"), "{r:?}");
    // The report the server verified is mallory's text, not alice's.
    let list = w
        .liar
        .upstream()
        .admin(&["reports", "list", "--json"])
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("mallory's abuse"), "{listed}");
    assert!(!listed.contains("an honest note"), "{listed}");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
