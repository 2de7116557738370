//! The client's receive path under a hostile server, for the fuzz target
//! `receive` (crates/missive-client/fuzz) and its corpus replay test.
//!
//! A [`Fixture`] is a real account home (store, identity, prekeys) with an
//! established session from a peer `bob`; [`Fixture::feed`] turns arbitrary
//! bytes into envelopes — raw protobuf, or genuine envelopes of bob's with
//! fields rewritten and bytes flipped — and runs them through
//! [`Client::store_envelope`], then everything that displays stored
//! messages. The property: nothing panics, and a refused envelope changes no
//! session. Not a stable API.

use std::path::{Path, PathBuf};

use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    Address, DeviceEntry, DeviceList, IdentityKeyPair, KemPrekeyPair, OneTimePrekeyPair,
    PrekeyBundle, PrekeyOwner, Session, SignedPrekeyPair,
};
use missive_proto::v1;
use prost::Message as _;
use rand::RngCore as _;
use rand::rngs::OsRng;

use crate::client::{Client, clamp_sender_clock, rfc3339};
use crate::display::{sanitize_line, sanitize_text};
use crate::error::Result;
use crate::net::ServerConfig;
use crate::store::{KeySource, PrekeyKind, Slot, Store};

/// A live account under attack, and genuine material to mutate.
pub struct Fixture {
    home: PathBuf,
    client: Client,
    genuine: Vec<v1::Envelope>,
    bob: Session,
    next_id: u64,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

fn envelope(session: &mut Session, text: &str, sent_at_ms: u64, id: u64) -> v1::Envelope {
    let mut message_id = [0u8; 16];
    OsRng.fill_bytes(&mut message_id);
    let key = FrankingKey::generate(&mut OsRng);
    let commitment = franking::commit(&key, &message_id, text.as_bytes());
    let content = v1::Content {
        body: Some(v1::content::Body::Text(v1::TextMessage {
            body: text.to_owned(),
            sent_at_ms,
            ..Default::default()
        })),
        attachment: None,
        franking_key: key.as_bytes().to_vec(),
        sender_devices: None,
        sent_to: String::new(),
    }
    .encode_to_vec();
    let out = session.encrypt(&mut OsRng, &content, &commitment);
    let (kind, bytes) = match out {
        Ok(o) => (o.kind, o.bytes),
        Err(_) => (missive_crypto::MessageKind::Normal, Vec::new()),
    };
    v1::Envelope {
        id,
        sender: "bob".into(),
        sender_device: 1,
        r#type: match kind {
            missive_crypto::MessageKind::Prekey => v1::EnvelopeType::PrekeyMessage,
            missive_crypto::MessageKind::Normal => v1::EnvelopeType::Message,
        } as i32,
        content: bytes,
        message_id: message_id.to_vec(),
        server_timestamp_ms: 1_765_000_000_000 + id,
        franking_commitment: commitment.to_vec(),
        franking_tag: vec![0u8; 32],
        online_only: false,
    }
}

impl Fixture {
    /// Creates the account in `home` (which must not hold one) with a
    /// session from bob already accepted.
    pub fn create(home: &Path) -> Result<Self> {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let alice_account = IdentityKeyPair::generate(&mut OsRng);
        let owner = PrekeyOwner {
            account: alice_account.public().clone(),
            device_id: 1,
        };
        let mut store = Store::open_with(home, true, &KeySource::KeyFile)?;
        let spk = SignedPrekeyPair::generate(&mut OsRng, 1, &alice, &owner);
        let kem = KemPrekeyPair::generate(&mut OsRng, 1, &alice, &owner);
        let otk = OneTimePrekeyPair::generate(&mut OsRng, 1);
        let bob = IdentityKeyPair::generate(&mut OsRng);
        let bob_account = IdentityKeyPair::generate(&mut OsRng);
        let crypto = |e: missive_crypto::DeviceListError| crate::ClientError::Crypto(e.to_string());
        let bob_list = DeviceList {
            username: "bob".into(),
            version: 1,
            timestamp_ms: 1_765_000_000_000,
            devices: vec![DeviceEntry::link(&bob, "bob", bob_account.public(), 1, 7)],
        }
        .sign(&bob_account)
        .map_err(crypto)?;
        store.write(|db| {
            db.set_meta("username", b"alice")?;
            db.set_meta_u64("device_id", 1)?;
            db.set_meta("device_key", &alice.to_secret_bytes())?;
            db.set_meta("account_public", &alice_account.public().to_bytes())?;
            db.put_prekey(PrekeyKind::Signed, 1, &spk.to_secret_bytes())?;
            db.put_prekey(PrekeyKind::KemLastResort, 1, &kem.to_secret_bytes())?;
            db.put_prekey(PrekeyKind::OneTime, 1, &otk.to_secret_bytes())?;
            // Bob's account and list, as `learn_sender_device` would keep them.
            db.pin_contact("bob", bob_account.public())?;
            db.set_device_list("bob", &bob_list).map(drop)
        })?;
        drop(store);
        let bundle = PrekeyBundle {
            identity: alice.public().clone(),
            owner,
            signed_prekey: spk.public(),
            kem_prekey: kem.public(),
            one_time_prekey: Some(otk.public()),
        };
        let mut bob_session =
            Session::initiate(&mut OsRng, &bob, &Address::new("bob", 1), "alice", &bundle)
                .map_err(|e| crate::ClientError::Crypto(e.to_string()))?;
        let server = ServerConfig {
            url: "https://127.0.0.1:9".into(),
            ca: None,
        };
        let mut client = Client::open(home, server)?;
        let first = envelope(&mut bob_session, "hello alice", 1_765_000_000_000, 1);
        client.store_envelope(&first)?;
        let mut genuine = vec![first];
        for (i, text) in ["second", "a\u{1b}[2Jthird\nline", ""].iter().enumerate() {
            let id = 2 + i as u64;
            genuine.push(envelope(&mut bob_session, text, u64::MAX - id, id));
        }
        Ok(Fixture {
            home: home.to_path_buf(),
            client,
            genuine,
            bob: bob_session,
            next_id: 100,
        })
    }

    /// Runs `data` through the receive path. Ok unless the local store
    /// itself failed; panics are the bugs this looks for.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.split(|b| *b == 0xff).take(8) {
            let Some((&op, rest)) = chunk.split_first() else {
                continue;
            };
            let env = if op % 2 == 0 {
                match v1::Envelope::decode(rest) {
                    Ok(e) => e,
                    Err(_) => continue,
                }
            } else {
                self.mutated(op, rest)
            };
            let before = self.session_state()?;
            let events = self.client.store_envelope(&env)?;
            if events
                .iter()
                .any(|e| matches!(e, crate::RecvEvent::Dropped { .. }))
                && self.session_state()? != before
            {
                return Err(crate::ClientError::Protocol(
                    "a refused envelope changed bob's session".into(),
                ));
            }
        }
        self.show_everything()
    }

    fn mutated(&self, op: u8, rest: &[u8]) -> v1::Envelope {
        let pick = usize::from(op / 2) % self.genuine.len();
        let mut env = self.genuine[pick].clone();
        let mut bytes = rest.iter().copied();
        let mut next = || bytes.next().unwrap_or(0);
        match next() % 8 {
            0 => {
                env.sender =
                    ["mallory", "bob", "BOB", "", "b\u{1b}ob"][usize::from(next()) % 5].into()
            }
            1 => env.sender_device = u32::from(next()),
            2 => env.server_timestamp_ms = u64::from(next()) << 56,
            3 => env.r#type = i32::from(next()),
            4 => env.franking_commitment.truncate(usize::from(next()) % 33),
            _ => {}
        }
        for _ in 0..(next() % 4) {
            let at = usize::from(next()) << 8 | usize::from(next());
            let flip = next();
            if !env.content.is_empty() {
                let i = at % env.content.len();
                env.content[i] ^= flip;
            }
        }
        if next() % 4 == 0 {
            let keep = (usize::from(next()) << 4) % env.content.len().max(1);
            env.content.truncate(keep);
        }
        env
    }

    fn session_state(&self) -> Result<Vec<Vec<u8>>> {
        let db = self.client.store().db();
        let mut out = Vec::new();
        for slot in [Slot::Current, Slot::Pending, Slot::Archived] {
            for row in db.sessions("bob", slot)? {
                out.push(row.session.to_bytes().to_vec());
            }
        }
        Ok(out)
    }

    /// Everything that formats stored messages for display.
    fn show_everything(&mut self) -> Result<()> {
        let shown = self.client.take_unshown(None)?;
        let contacts = self.client.contacts()?;
        let mut sink = String::new();
        for e in shown
            .iter()
            .chain(self.client.store().history("bob")?.iter())
        {
            let (clock, _) = clamp_sender_clock(e.sender_clock_ms, e.server_ts_ms);
            sink.push_str(&rfc3339(clock));
            sink.push_str(&rfc3339(e.server_ts_ms));
            sink.push_str(&sanitize_line(&e.contact));
            sink.push_str(&sanitize_text(&e.text, "  "));
        }
        for (name, v, fp) in contacts {
            sink.push_str(&format!("{name}{v}{fp}"));
        }
        std::hint::black_box(sink);
        Ok(())
    }

    /// A fresh genuine envelope from bob (benchmarks: the receive path).
    pub fn next_from_bob(&mut self, text: &str) -> v1::Envelope {
        self.next_id += 1;
        envelope(&mut self.bob, text, 1_765_000_000_000, self.next_id)
    }

    /// The receive path's local half for one envelope, as `recv` runs it:
    /// store, note the acknowledgement, show.
    pub fn receive(&mut self, env: &v1::Envelope) -> Result<()> {
        self.client.store_envelope(env)?;
        self.client
            .note_acked(&env.sender, env.sender_device, &env.message_id);
        self.client.take_unshown(None).map(|_| ())
    }

    /// The send path's local half: in one write transaction, load the
    /// session with bob, encrypt `content`, store the advanced session.
    pub fn encrypt_for_bob(&mut self, content: &[u8]) -> Result<Vec<u8>> {
        self.client.store_mut().write(|db| {
            let mut sessions = db.sessions("bob", Slot::Current)?;
            let mut out = Vec::new();
            for row in &mut sessions {
                let m = row
                    .session
                    .encrypt(&mut OsRng, content, &[0u8; 32])
                    .map_err(|e| crate::ClientError::Crypto(e.to_string()))?;
                out = m.bytes;
            }
            db.save_sessions("bob", &sessions, &[])?;
            Ok(out)
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }
}
