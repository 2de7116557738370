//! Receiving: each envelope is decrypted and everything it changes committed
//! in one store transaction, then acknowledged; the `recv` loop with its
//! reconnection.

use std::time::Duration;

use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    Address, IdentityKeyPair, KemPrekeyPair, OneTimePrekeyPair, PrekeyMessage, PublicIdentity,
    Session, SignedPrekeyPair,
};
use missive_proto::v1::{self, message_service_client::MessageServiceClient};
use prost::Message as _;
use rand::rngs::OsRng;
use tonic::Code;
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};
use crate::limits::{MAX_ACK_BATCH, REQUEST_TIMEOUT};
use crate::store::{Db, HistoryEntry, PrekeyKind, SessionRow, Slot, now_ms};

use super::{CRASH_BEFORE_ACK_ENV, CRASH_EXIT_CODE, Client, RecvEvent, normalize_username};

/// Decodes a decrypted payload and checks its franking commitment
/// (docs/PROTOCOL.md, "Franking"). A message whose commitment does not match
/// its text, or whose text is longer than a report may carry
/// ([`franking::MAX_REPORTABLE_BYTES`], the bound the server checks), is
/// refused: what a recipient sees is always reportable.
pub fn check_content(
    plaintext: &[u8],
    message_id: &[u8],
    commitment: &[u8],
) -> std::result::Result<(v1::TextMessage, FrankingKey), String> {
    let content =
        v1::Content::decode(plaintext).map_err(|_| "its content is malformed".to_owned())?;
    let Some(v1::content::Body::Text(text)) = content.body else {
        return Err("it holds no text (unsupported content)".into());
    };
    if text.body.len() > franking::MAX_REPORTABLE_BYTES {
        return Err(format!(
            "its text is {} bytes, longer than a report can carry ({} bytes), so it could not be reported",
            text.body.len(),
            franking::MAX_REPORTABLE_BYTES
        ));
    }
    let franking_key = FrankingKey::from_bytes(&content.franking_key)
        .map_err(|_| "it carries no valid franking key".to_owned())?;
    if !franking::verify_commitment(&franking_key, message_id, text.body.as_bytes(), commitment) {
        return Err("its franking commitment does not match its text".into());
    }
    Ok((text, franking_key))
}

/// Why an envelope was not accepted.
pub(crate) enum Refusal {
    /// The envelope itself is bad: drop it (acknowledge, warn).
    Drop(String),
    /// A local failure (store): keep the envelope on the server for a retry.
    Local(ClientError),
}

impl From<String> for Refusal {
    fn from(s: String) -> Self {
        Refusal::Drop(s)
    }
}

impl From<&str> for Refusal {
    fn from(s: &str) -> Self {
        Refusal::Drop(s.to_owned())
    }
}

impl From<ClientError> for Refusal {
    fn from(e: ClientError) -> Self {
        Refusal::Local(e)
    }
}

impl Client {
    // ---- receiving ----------------------------------------------------

    /// Opens the receive stream.
    pub async fn open_stream(&mut self) -> Result<tonic::Streaming<v1::ReceiveResponse>> {
        for attempt in 0..2 {
            let channel = self.channel().await?;
            let req = self.authed(v1::ReceiveRequest {}, false).await?;
            let mut client = MessageServiceClient::new(channel)
                .max_decoding_message_size(crate::limits::MAX_GROUP_MESSAGE_BYTES);
            match client.receive(req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == Code::Unauthenticated && attempt == 0 => {
                    self.forget_token()?;
                }
                Err(s) => return Err(self.authed_err(&s)),
            }
        }
        Err(ClientError::AccountRejected("login refused".into()))
    }

    /// Decrypts, stores (one transaction) and acknowledges one envelope.
    /// The message itself is then returned by [`Client::take_unshown`]. An
    /// online-only envelope (a typing indicator) is not in the server's
    /// store: it is not acknowledged.
    pub async fn process_envelope(&mut self, env: v1::Envelope) -> Result<Vec<RecvEvent>> {
        let mut events = self.learn_sender_device(&env).await;
        events.extend(self.store_envelope(&env)?);
        events.extend(self.check_list_hints().await);
        if !env.online_only {
            if std::env::var(CRASH_BEFORE_ACK_ENV).as_deref() == Ok("1")
                && events
                    .iter()
                    .all(|e| !matches!(e, RecvEvent::Dropped { .. }))
            {
                std::process::exit(CRASH_EXIT_CODE);
            }
            self.ack(&[env.id]).await?;
            self.acked.push((
                env.sender.clone(),
                env.sender_device,
                env.message_id.clone(),
            ));
        }
        for w in self.after_envelope().await {
            events.push(RecvEvent::Warning(w));
        }
        Ok(events)
    }

    /// The local half of receiving: decrypts `env` and commits everything it
    /// changes (session, contact, history, consumed prekeys, replay records)
    /// in one write transaction. Never touches the network; whatever the
    /// server put in `env`, the worst outcome is a `Dropped` event.
    pub fn store_envelope(&mut self, env: &v1::Envelope) -> Result<Vec<RecvEvent>> {
        let identity = &self.identity;
        let me = &Address::new(self.username.clone(), self.device_id);
        let mut received = crate::conversation::Received::default();
        let out = &mut received;
        let result = self.store.write(|db| {
            if db.is_processed(&env.sender, env.sender_device, &env.message_id)? {
                return Ok(Vec::new());
            }
            let mut events = Vec::new();
            // A refused envelope leaves nothing behind but its processed id:
            // no session, no pinned contact, no consumed prekey.
            db.savepoint()?;
            match receive_in(db, identity, me, env, out) {
                // A changed account key was said when its list was fetched
                // (`learn_sender_device`), before this transaction.
                Ok(()) => db.release_savepoint()?,
                Err(Refusal::Local(e)) => return Err(e),
                Err(Refusal::Drop(reason)) => {
                    db.rollback_to_savepoint()?;
                    *out = crate::conversation::Received::default();
                    events.push(RecvEvent::Dropped {
                        sender: env.sender.clone(),
                        reason,
                    });
                }
            }
            // An online-only envelope is never redelivered (nor acknowledged,
            // which is what prunes processed ids): no record of it is kept; a
            // replay fails to decrypt (its message key is gone).
            if !env.online_only {
                db.mark_processed(&env.sender, env.sender_device, &env.message_id)?;
            }
            Ok(events)
        });
        if result.is_ok() {
            if let Some(hint) = received.sender_devices.take() {
                self.list_hints.push(hint);
            }
            self.conv.absorb(received);
        }
        result
    }

    /// Acknowledges envelopes.
    pub(super) async fn ack(&mut self, ids: &[u64]) -> Result<()> {
        for chunk in ids.chunks(MAX_ACK_BATCH) {
            let channel = self.channel().await?;
            let req = self
                .authed(
                    v1::AcknowledgeRequest {
                        envelope_ids: chunk.to_vec(),
                        group_acks: Vec::new(),
                    },
                    true,
                )
                .await?;
            if let Err(s) = MessageServiceClient::new(channel).acknowledge(req).await {
                return Err(self.authed_err(&s));
            }
        }
        Ok(())
    }

    /// Incoming messages stored but not yet shown (optionally only from
    /// `from`), marked shown as they are returned — in one write
    /// transaction, so two processes on this home never both show one.
    pub fn take_unshown(&mut self, from: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let acked = std::mem::take(&mut self.acked);
        let shown = self.store.write(|db| {
            db.mark_acked(&acked)?;
            db.take_unshown(from)
        })?;
        // Read receipts for them go with the next `send_pending_receipts`.
        self.conv.note_shown(&shown);
        Ok(shown)
    }

    /// As [`Client::take_unshown`], but no read receipt follows: the chat
    /// calls [`Client::mark_read`] once a message's conversation is on
    /// screen (a message that lands in a conversation nobody looks at is
    /// delivered, not read).
    pub fn take_unshown_unread(&mut self, from: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let acked = std::mem::take(&mut self.acked);
        self.store.write(|db| {
            db.mark_acked(&acked)?;
            db.take_unshown(from)
        })
    }

    /// Notes acknowledgements the server took (benchmarks and tests; `recv`
    /// does it through [`Client::take_unshown`]).
    pub fn note_acked(&mut self, sender: &str, sender_device: u32, message_id: &[u8]) {
        self.acked
            .push((sender.to_owned(), sender_device, message_id.to_vec()));
    }

    /// Whether opening this home found its store restored from an older
    /// copy (its sessions were archived; the next send re-establishes them).
    pub fn was_rolled_back(&self) -> bool {
        self.store.was_rolled_back()
    }

    /// Receives everything pending, then (with `wait`) new messages until
    /// `wait` has elapsed, calling `sink` for each event.
    pub async fn recv(
        &mut self,
        wait: Option<Duration>,
        sink: impl FnMut(&RecvEvent),
    ) -> Result<()> {
        let result = self.recv_until(wait, sink).await;
        self.conv.hold_receipts = false;
        result
    }

    /// [`Client::recv`]. While a stream's backlog comes in, receipts are
    /// held and go once it is in: batched, and a read copy from another of
    /// this account's devices later in the backlog spares the contact a
    /// second receipt.
    async fn recv_until(
        &mut self,
        wait: Option<Duration>,
        mut sink: impl FnMut(&RecvEvent),
    ) -> Result<()> {
        if self.was_rolled_back() {
            sink(&RecvEvent::RolledBack);
        }
        self.deliver_unshown(&mut sink).await?;
        // Files an earlier (perhaps killed) run did not finish saving.
        self.save_pending_attachments(&mut sink).await;
        for w in self.send_pending_receipts().await {
            sink(&RecvEvent::Warning(w));
        }
        // Commits accepted before the stream opens merge once its backlog
        // is in (groups.rs).
        let accepted = self.accepted_commits()?;
        let mut stream = self.open_stream().await?;
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut backlog_done = false;
        self.conv.hold_receipts = true;
        let mut backoff = crate::chat::Backoff::new();
        loop {
            let next = if !backlog_done {
                tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
                    .await
                    .map_err(|_| ClientError::ServerUnreachable {
                        url: self.server.url.clone(),
                        detail: "no answer while receiving".into(),
                    })?
            } else if let Some(d) = deadline {
                match tokio::time::timeout_at(d, stream.message()).await {
                    Ok(n) => n,
                    Err(_) => break,
                }
            } else {
                break;
            };
            let lost = match next {
                Ok(Some(resp)) => {
                    backoff.reset();
                    Ok(resp.item)
                }
                Ok(None) => Err(ClientError::ConnectionLost {
                    url: self.server.url.clone(),
                    detail: "the server closed the stream".to_owned(),
                }),
                Err(s) => Err(self.authed_err(&s)),
            };
            let item = match lost {
                Ok(item) => item,
                // A one-shot `recv` says what happened; `recv --wait`
                // reconnects with backoff until its deadline and says so.
                Err(ClientError::ConnectionLost { .. }) if deadline.is_none() && backlog_done => {
                    break;
                }
                Err(e) if deadline.is_none() || matches!(e, ClientError::AccountRejected(_)) => {
                    return Err(e);
                }
                Err(e) => match self
                    .reconnect_until(deadline, &e, &mut backoff, &mut sink)
                    .await?
                {
                    Some(s) => {
                        stream = s;
                        backlog_done = false;
                        self.conv.hold_receipts = true;
                        continue;
                    }
                    None => break,
                },
            };
            match item {
                Some(v1::receive_response::Item::Envelope(env)) => {
                    for ev in self.process_envelope(env).await? {
                        sink(&ev);
                    }
                    self.deliver_unshown(&mut sink).await?;
                    if backlog_done {
                        for w in self.send_pending_receipts().await {
                            sink(&RecvEvent::Warning(w));
                        }
                    }
                }
                Some(v1::receive_response::Item::GroupMessage(gm)) => {
                    for ev in self.process_group_message(gm).await? {
                        sink(&ev);
                    }
                    self.deliver_unshown(&mut sink).await?;
                }
                Some(v1::receive_response::Item::QueueEmpty(_)) => {
                    backlog_done = true;
                    self.conv.hold_receipts = false;
                    self.merge_accepted(&accepted)?;
                    for w in self.send_pending_receipts().await {
                        sink(&RecvEvent::Warning(w));
                    }
                }
                None => {}
            }
        }
        // A device linked or removed: its groups follow (groups.rs).
        for w in self.sync_own_devices().await {
            sink(&RecvEvent::Warning(w));
        }
        self.deliver_unshown(&mut sink).await?;
        self.conv.hold_receipts = false;
        for w in self.send_pending_receipts().await {
            sink(&RecvEvent::Warning(w));
        }
        match self.maintain_prekeys().await {
            Ok(Some(w)) => sink(&RecvEvent::Warning(w)),
            Ok(None) => {}
            Err(e) => sink(&RecvEvent::Warning(format!(
                "could not refresh prekeys on the server: {e}"
            ))),
        }
        Ok(())
    }

    /// Shows the messages stored but not yet shown; one with a file (when
    /// files are saved) is shown only once the file is verified and saved,
    /// or refused.
    pub(super) async fn deliver_unshown(
        &mut self,
        sink: &mut impl FnMut(&RecvEvent),
    ) -> Result<()> {
        let saving = self.attachment_dir.is_some();
        let mut waiting = false;
        for e in self.take_unshown(None)? {
            if saving
                && !e.quarantined
                && e.attachment
                    .as_ref()
                    .is_some_and(|a| a.saved_path.is_none() && a.error.is_none())
            {
                waiting = true;
                continue;
            }
            sink(&RecvEvent::Message(e));
        }
        if waiting {
            self.save_pending_attachments(sink).await;
        }
        Ok(())
    }

    /// After the receive stream broke with `why`: waits (capped exponential
    /// backoff with jitter) and reopens it, telling `sink` each time, until
    /// it works (`Some`) or the next attempt would fall past `deadline`.
    pub(super) async fn reconnect_until(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        why: &ClientError,
        backoff: &mut crate::chat::Backoff,
        sink: &mut impl FnMut(&RecvEvent),
    ) -> Result<Option<tonic::Streaming<v1::ReceiveResponse>>> {
        let Some(deadline) = deadline else {
            return Ok(None);
        };
        let mut what = format!("the connection to the server was lost ({})", why.brief());
        loop {
            let delay = backoff.next_delay(&mut OsRng);
            if tokio::time::Instant::now() + delay >= deadline {
                return Ok(None);
            }
            sink(&RecvEvent::Warning(format!(
                "{what}; reconnecting in {:.1} s",
                delay.as_secs_f64()
            )));
            tokio::time::sleep(delay).await;
            match self.open_stream().await {
                Ok(s) => {
                    sink(&RecvEvent::Warning("reconnected to the server".to_owned()));
                    return Ok(Some(s));
                }
                Err(e @ ClientError::AccountRejected(_)) => return Err(e),
                Err(e) => what = format!("still cannot reach the server ({})", e.brief()),
            }
        }
    }
}

/// Decrypts `env` and stores what it changes, inside the caller's write
/// transaction.
pub(super) fn receive_in(
    db: &Db<'_>,
    identity: &IdentityKeyPair,
    me: &Address,
    env: &v1::Envelope,
    out: &mut crate::conversation::Received,
) -> std::result::Result<(), Refusal> {
    let commitment = env.franking_commitment.as_slice();
    if commitment.len() != franking::COMMITMENT_LEN {
        return Err("it carries no valid franking commitment".into());
    }
    if normalize_username(&env.sender).ok().as_deref() != Some(env.sender.as_str()) {
        return Err("its sender name is not a valid username".into());
    }
    let sender = env.sender.as_str();
    let device = env.sender_device;
    let sender_address = Address::new(sender, device);
    // Skipped message keys older than the bound are dropped on the way.
    let now = now_ms();
    let (plaintext, quarantine) = if env.r#type == v1::EnvelopeType::PrekeyMessage as i32 {
        let msg = PrekeyMessage::parse(&env.content).map_err(|e| e.to_string())?;
        let sender_identity = msg.sender_identity().clone();
        // A prekey message on a session we already have (the peer has not
        // seen our reply yet).
        let mut found = None;
        for slot in [Slot::Current, Slot::Pending] {
            if let Some(mut row) = db.session(sender, device, slot)?
                && row.session.remote_identity() == &sender_identity
                && let Ok(pt) = row.session.decrypt_at(&env.content, commitment, now)
            {
                db.put_session(sender, &row, slot)?;
                found = Some((pt, slot));
                break;
            }
        }
        match found {
            Some((pt, Slot::Pending)) => (pt, pending_account(db, sender)?),
            Some((pt, _)) => (pt, None),
            None => {
                if db.base_key_seen(&msg.base_key())? {
                    return Err(
                        "it is a replayed prekey message (its PQXDH base key was already accepted)"
                            .into(),
                    );
                }
                // The device key must be on a signed list of the sender's
                // account (fetched by `learn_sender_device` before this
                // transaction): the pinned account's, else a changed one's,
                // whose messages wait in quarantine for the user's decision.
                let contact = db.contact(sender)?;
                let own_device = sender == me.username
                    && db
                        .get_meta(super::META_DEVICE_LIST)?
                        .and_then(|b| missive_crypto::SignedDeviceList::from_bytes(&b).ok())
                        .is_some_and(|l| crate::store::lists(Some(&l), device, &sender_identity));
                let (slot, quarantine_account) = match &contact {
                    _ if own_device => (Slot::Current, None),
                    Some(c) if c.lists_device(device, &sender_identity) => (Slot::Current, None),
                    Some(c) if c.changed_lists_device(device, &sender_identity) => {
                        (Slot::Pending, c.changed_identity.clone())
                    }
                    _ => {
                        return Err(format!(
                            "device {device} of {sender} is not on {sender}'s signed device list"
                        )
                        .into());
                    }
                };
                let (session, pt, consumed) =
                    accept(db, identity, me, &sender_address, &msg, commitment)?;
                let displaced = db.session(sender, device, slot)?;
                let registration_id = displaced
                    .as_ref()
                    .filter(|r| r.session.remote_identity() == &sender_identity)
                    .map_or(0, |r| r.registration_id);
                // Both ends may have started a session at once (two devices
                // of one account telling each other what they read, say):
                // the one we started may already carry the peer's next
                // messages, so it is kept to decrypt them, never to encrypt.
                if slot == Slot::Current
                    && let Some(old) = displaced
                {
                    db.put_session(sender, &old, Slot::Archived)?;
                }
                db.put_session(
                    sender,
                    &SessionRow {
                        device_id: device,
                        registration_id,
                        session,
                    },
                    slot,
                )?;
                for (kind, id) in consumed {
                    db.delete_prekey(kind, id)?;
                }
                db.remember_base_key(&msg.base_key(), msg.signed_prekey_id())?;
                (pt, quarantine_account)
            }
        }
    } else {
        let mut found = None;
        for slot in [Slot::Current, Slot::Pending, Slot::Archived] {
            if let Some(mut row) = db.session(sender, device, slot)?
                && let Ok(pt) = row.session.decrypt_at(&env.content, commitment, now)
            {
                db.put_session(sender, &row, slot)?;
                let q = match slot {
                    Slot::Pending => pending_account(db, sender)?,
                    _ => None,
                };
                found = Some((pt, q));
                break;
            }
        }
        found
            .ok_or("no session with the sending device decrypts it (a replay, or a lost session)")?
    };
    // Every content kind, franked (conversation.rs).
    // The sender's own view of its device list, checked after the commit.
    let mut sent_to = String::new();
    if let Ok(content) = v1::Content::decode(plaintext.as_slice()) {
        if let Some(d) = content.sender_devices
            && let Ok(hash) = <[u8; 32]>::try_from(d.list_hash.as_slice())
        {
            out.sender_devices = Some((sender.to_owned(), d.list_version, hash));
        }
        sent_to = content.sent_to;
    }
    if sender == me.username {
        // A copy of what another device of this account sent.
        return crate::conversation::receive_own_copy(
            db,
            &me.username,
            env,
            &plaintext,
            &sent_to,
            out,
        );
    }
    if !sent_to.is_empty() {
        return Err("it claims to be a copy of a message this account sent, but it comes from another account".into());
    }
    crate::conversation::receive_content(
        db,
        &me.username,
        env,
        &plaintext,
        quarantine.as_ref(),
        out,
    )?;
    Ok(())
}

/// The changed account key a pending session's messages are quarantined under.
fn pending_account(
    db: &Db<'_>,
    sender: &str,
) -> std::result::Result<Option<PublicIdentity>, Refusal> {
    Ok(db.contact(sender)?.and_then(|c| c.changed_identity))
}

#[allow(clippy::type_complexity)]
pub(super) fn accept(
    db: &Db<'_>,
    identity: &IdentityKeyPair,
    me: &Address,
    sender: &Address,
    msg: &PrekeyMessage,
    ad: &[u8],
) -> std::result::Result<(Session, Zeroizing<Vec<u8>>, Vec<(PrekeyKind, u32)>), Refusal> {
    let mut consumed = Vec::new();
    let spk_bytes = db
        .get_prekey(PrekeyKind::Signed, msg.signed_prekey_id())?
        .ok_or("it names a signed prekey we no longer have")?;
    let spk = SignedPrekeyPair::from_secret_bytes(&spk_bytes).map_err(|e| e.to_string())?;
    let kem_id = msg.kem_prekey_id();
    let kem_bytes = match db.get_prekey(PrekeyKind::KemOneTime, kem_id)? {
        Some(b) => {
            consumed.push((PrekeyKind::KemOneTime, kem_id));
            b
        }
        None => db
            .get_prekey(PrekeyKind::KemLastResort, kem_id)?
            .ok_or("it names a KEM prekey we no longer have (already used?)")?,
    };
    let kem = KemPrekeyPair::from_secret_bytes(&kem_bytes).map_err(|e| e.to_string())?;
    let otk = match msg.one_time_prekey_id() {
        Some(id) => {
            let b = db
                .get_prekey(PrekeyKind::OneTime, id)?
                .ok_or("it names a one-time prekey that was already used")?;
            consumed.push((PrekeyKind::OneTime, id));
            Some(OneTimePrekeyPair::from_secret_bytes(&b).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let (session, pt) = Session::accept(identity, me, sender, &spk, &kem, otk.as_ref(), msg, ad)
        .map_err(|e| e.to_string())?;
    Ok((session, pt, consumed))
}
