//! Sending: bundles fetched and checked against the pinned identity, one
//! pairwise session per recipient device (advanced inside one store
//! transaction), the server's device-mismatch answers, and this device's
//! prekeys (refill and rotation).

use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    IdentityKeyPair, KemPrekeyPair, MessageKind, OneTimePrekeyPair, PrekeyOwner, Session,
    SignedPrekeyPair,
};
use missive_proto::v1::{
    self, key_service_client::KeyServiceClient, message_service_client::MessageServiceClient,
};
use prost::Message as _;
use rand::RngCore as _;
use rand::rngs::OsRng;
use tonic::Code;
use zeroize::Zeroizing;

use crate::display::sanitize_line;
use crate::error::{ClientError, Result};
use crate::limits::{
    ONE_TIME_PREKEY_REFILL_BELOW, ONE_TIME_PREKEY_TARGET, SEND_ATTEMPTS, SIGNED_PREKEY_GRACE,
    SIGNED_PREKEY_ROTATION,
};
use crate::proto_conv;
use crate::store::{PrekeyKind, SessionRow, Slot, Store, now_ms};

use super::{
    COUNTER_KEM, COUNTER_ONE_TIME, COUNTER_SIGNED, Client, META_KEM_LAST_RESORT_ID,
    META_ROTATED_AT, META_SIGNED_ID, Sent, key_err, normalize_username,
};

/// One encrypted message on its way to the devices of one account.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    content: &'a [u8],
    commitment: &'a [u8],
    message_id: &'a [u8; 16],
    online_only: bool,
    retention_secs: u64,
}

/// Who a franked content goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// Every device of the recipient, then a copy to this account's others.
    ContactAndOwnDevices,
    /// Only the copy to this account's other devices.
    OwnDevicesOnly,
}

/// What this account's other devices get a copy of (`Content.sent_to`):
/// everything it sends that changes the conversation. Typing indicators
/// are live only and delivery receipts say what each device learns itself.
fn copied_to_own_devices(body: &v1::content::Body) -> bool {
    use v1::content::Body;
    match body {
        Body::Text(_) | Body::Reaction(_) | Body::Edit(_) | Body::Unsend(_) | Body::Timer(_) => {
            true
        }
        Body::Receipt(r) => r.r#type == v1::receipt_message::Type::Read as i32,
        Body::Typing(_) => false,
    }
}

/// Test hook: when `1`, `send` commits to a different text than it encrypts,
/// as a malicious sender would (end-to-end test of the recipient's check).
pub const FORGE_COMMITMENT_ENV: &str = "MISSIVE_TEST_FORGE_COMMITMENT";

impl Client {
    // ---- sending ------------------------------------------------------

    /// The version of the newest list this home kept for `username` (our
    /// own, or a contact's under either of its keys).
    fn kept_list_version(&self, username: &str) -> Result<Option<(u64, u64)>> {
        if username == self.username {
            return Ok(self.own_device_list()?.map(|l| (l.version(), 0)));
        }
        Ok(self.store.contact(username)?.map(|c| {
            (
                c.device_list.map_or(0, |l| l.version()),
                c.changed_device_list.map_or(0, |l| l.version()),
            )
        }))
    }

    pub(super) async fn fetch_sessions(
        &mut self,
        username: &str,
        device_id: u32,
    ) -> Result<Vec<SessionRow>> {
        let mut retried = false;
        let (resp, list, added) = loop {
            let kept = self.kept_list_version(username)?;
            let channel = self.channel().await?;
            let req = self
                .authed(
                    v1::GetBundlesRequest {
                        username: username.to_owned(),
                        device_id,
                    },
                    true,
                )
                .await?;
            let resp = match KeyServiceClient::new(channel).get_bundles(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == Code::NotFound => {
                    return Err(ClientError::UnknownUser(username.to_owned()));
                }
                Err(s) => return Err(self.authed_err(&s)),
            };
            if resp.bundles.is_empty() {
                return Err(ClientError::UnknownUser(username.to_owned()));
            }
            // Only the account key can sign the list, and only listed device
            // keys get a session: a device the server adds is refused by name.
            match self.verified_device_list(username, &resp.signed_device_list) {
                Ok((list, added)) => break (resp, list, added),
                // Another process on this home kept a newer list of theirs
                // while this answer was on its way: ask once more. A server
                // that really rolls back answers the old list again.
                Err(ClientError::DeviceListRefused { .. })
                    if !retried && self.kept_list_version(username)? != kept =>
                {
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        };
        for w in super::trust::new_device_notices(username, list.unverified_list(), &added) {
            self.notices.push(w);
        }
        let me = self.address();
        let mut rows = Vec::new();
        for b in &resp.bundles {
            let (device_id, registration_id, bundle) = proto_conv::bundle(b, list.account())?;
            let listed = list.unverified_list().devices.iter().any(|d| {
                d.device_id == device_id
                    && d.identity == bundle.identity
                    && d.registration_id == registration_id
            });
            if !listed {
                return Err(ClientError::DeviceNotListed {
                    username: username.to_owned(),
                    device: device_id,
                });
            }
            let session = Session::initiate(&mut OsRng, &self.identity, &me, username, &bundle)
                .map_err(|e| ClientError::Protocol(format!("{username}'s prekeys: {e}")))?;
            rows.push(SessionRow {
                device_id,
                registration_id,
                session,
            });
        }
        Ok(rows)
    }

    /// Encrypts `text` for every device of `recipient` and sends it.
    ///
    /// Each attempt loads, advances and stores the sessions in one write
    /// transaction, so a second process on this home can never encrypt
    /// under the same message key; the network call happens after the
    /// commit (a crash then loses a message, never reuses a key).
    pub async fn send(&mut self, recipient: &str, text: &str) -> Result<Sent> {
        // Under the conversation's disappearing timer (conversation.rs).
        self.send_text(recipient, text, None).await
    }

    /// Encrypts the franked `body` for every device of `recipient` and sends
    /// it (the commitment covers `conversation::franked_plaintext(body)`).
    /// Stores nothing but the sessions: the caller records what it sent.
    pub(crate) async fn send_content(
        &mut self,
        recipient: &str,
        body: v1::content::Body,
    ) -> Result<crate::conversation::SentContent> {
        self.send_content_with(recipient, body, None).await
    }

    /// [`Client::send_content`] with an attachment pointer inside the
    /// `Content`; the commitment then covers it too
    /// (`missive_crypto::attachment::franking_commit`).
    pub(crate) async fn send_content_with(
        &mut self,
        recipient: &str,
        body: v1::content::Body,
        attachment: Option<&v1::AttachmentPointer>,
    ) -> Result<crate::conversation::SentContent> {
        self.send_franked(recipient, body, attachment, Audience::ContactAndOwnDevices)
            .await
    }

    /// Tells only this account's other devices what it did in the
    /// conversation with `contact` (a read receipt with read receipts off:
    /// the contact is told nothing, this account's devices still are).
    pub(crate) async fn send_to_own_devices(
        &mut self,
        contact: &str,
        body: v1::content::Body,
    ) -> Result<()> {
        self.send_franked(contact, body, None, Audience::OwnDevicesOnly)
            .await
            .map(|_| ())
    }

    async fn send_franked(
        &mut self,
        recipient: &str,
        body: v1::content::Body,
        attachment: Option<&v1::AttachmentPointer>,
        audience: Audience,
    ) -> Result<crate::conversation::SentContent> {
        let recipient = normalize_username(recipient)?;
        let franked =
            crate::conversation::franked_plaintext(&body).map_err(ClientError::Conversation)?;
        let (online_only, retention_secs) = crate::conversation::send_options(&body);
        if recipient == self.username {
            return Err(ClientError::SendToSelf);
        }
        if let Some(c) = self.store.contact(&recipient)?
            && c.changed_identity.is_some()
        {
            return Err(ClientError::IdentityChanged {
                username: recipient,
            });
        }
        let mut update = DeviceUpdate::default();
        if audience == Audience::ContactAndOwnDevices && self.store.sessions(&recipient)?.is_empty()
        {
            update.add = self.fetch_sessions(&recipient, 0).await?;
        }

        let mut message_id = [0u8; 16];
        OsRng.fill_bytes(&mut message_id);
        let franking_key = FrankingKey::generate(&mut OsRng);
        let forge = std::env::var(FORGE_COMMITMENT_ENV).as_deref() == Ok("1");
        let franked_bytes: &[u8] = if forge {
            b"not the text that was sent"
        } else {
            franked.as_bytes()
        };
        let commitment = match attachment {
            None => franking::commit(&franking_key, &message_id, franked_bytes),
            Some(p) => missive_crypto::attachment::franking_commit(
                &franking_key,
                &message_id,
                franked_bytes,
                &crate::attachments::binding(p),
            ),
        };
        let sender_devices = self.own_device_list()?.map(|l| v1::SenderDevices {
            list_version: l.version(),
            list_hash: l.list_hash().to_vec(),
        });
        let mut content = v1::Content {
            body: Some(body),
            attachment: attachment.cloned(),
            franking_key: franking_key.as_bytes().to_vec(),
            sender_devices,
            sent_to: String::new(),
        };
        let wire = Zeroizing::new(content.encode_to_vec());
        let message = Outgoing {
            content: &wire,
            commitment: &commitment,
            message_id: &message_id,
            online_only,
            retention_secs,
        };
        let server_timestamp_ms = match audience {
            Audience::ContactAndOwnDevices => self.deliver(&recipient, update, &message).await?,
            Audience::OwnDevicesOnly => 0,
        };
        // The sender's other devices show what it sent and did.
        if content.body.as_ref().is_some_and(copied_to_own_devices) {
            content.sent_to.clone_from(&recipient);
            let copy = Zeroizing::new(content.encode_to_vec());
            let message = Outgoing {
                content: &copy,
                ..message
            };
            match (self.deliver_own_copy(&message).await, audience) {
                (Ok(()), _) => {}
                (Err(e), Audience::OwnDevicesOnly) => return Err(e),
                (Err(e), Audience::ContactAndOwnDevices) => self.notices.push(format!(
                    "your other devices did not get a copy of this message: {}",
                    e.brief()
                )),
            }
        }
        Ok(crate::conversation::SentContent {
            message_id,
            commitment_hex: hex::encode(commitment),
            server_timestamp_ms,
        })
    }

    /// The copy of a sent message for this account's other devices, through
    /// their own pairwise sessions (a second `Send`, to our own account).
    async fn deliver_own_copy(&mut self, message: &Outgoing<'_>) -> Result<()> {
        let me = self.username.clone();
        let others: Vec<u32> = match self.own_device_list()? {
            Some(l) => l
                .unverified_list()
                .devices
                .iter()
                .map(|d| d.device_id)
                .filter(|id| *id != self.device_id)
                .collect(),
            None => Vec::new(),
        };
        if others.is_empty() {
            return Ok(());
        }
        let mut update = DeviceUpdate::default();
        if self.store.sessions(&me)?.is_empty() {
            for id in others {
                update.add.extend(self.fetch_sessions(&me, id).await?);
            }
        }
        self.deliver(&me, update, message).await.map(|_| ())
    }

    /// Encrypts `message` for every device of `recipient` (and those in
    /// `update`) and sends it; returns the server's timestamp.
    ///
    /// Each attempt loads, advances and stores the sessions in one write
    /// transaction, so a second process on this home can never encrypt
    /// under the same message key; the network call happens after the
    /// commit (a crash then loses a message, never reuses a key).
    async fn deliver(
        &mut self,
        recipient: &str,
        mut update: DeviceUpdate,
        message: &Outgoing<'_>,
    ) -> Result<u64> {
        let recipient = recipient.to_owned();
        for _attempt in 0..SEND_ATTEMPTS {
            let envelopes = self.store.write(|db| {
                let mut sessions = db.sessions(&recipient, Slot::Current)?;
                update.apply(&mut sessions);
                if sessions.is_empty() {
                    return Err(ClientError::UnknownUser(recipient.clone()));
                }
                let mut envelopes = Vec::with_capacity(sessions.len());
                for row in &mut sessions {
                    let out = row
                        .session
                        .encrypt(&mut OsRng, message.content, message.commitment)
                        .map_err(key_err)?;
                    envelopes.push(v1::OutgoingEnvelope {
                        device_id: row.device_id,
                        registration_id: row.registration_id,
                        r#type: match out.kind {
                            MessageKind::Prekey => v1::EnvelopeType::PrekeyMessage,
                            MessageKind::Normal => v1::EnvelopeType::Message,
                        } as i32,
                        content: out.bytes,
                        franking_commitment: message.commitment.to_vec(),
                    });
                }
                db.save_sessions(&recipient, &sessions, &update.remove)?;
                Ok(envelopes)
            })?;

            let channel = self.channel().await?;
            let req = self
                .authed(
                    v1::SendRequest {
                        recipient: recipient.clone(),
                        message_id: message.message_id.to_vec(),
                        envelopes,
                        online_only: message.online_only,
                        retention_secs: message.retention_secs,
                    },
                    true,
                )
                .await?;
            match MessageServiceClient::new(channel).send(req).await {
                Ok(resp) => return Ok(resp.into_inner().server_timestamp_ms),
                Err(s) if s.code() == Code::NotFound => {
                    return Err(ClientError::UnknownUser(recipient));
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    let mismatch = v1::DeviceMismatch::decode(s.details()).map_err(|_| {
                        ClientError::Protocol(format!(
                            "device list out of date but no details: {}",
                            sanitize_line(s.message())
                        ))
                    })?;
                    update = self.device_update(&recipient, &mismatch).await?;
                }
                Err(s) => return Err(self.authed_err(&s)),
            }
        }
        Err(ClientError::Server(format!(
            "{recipient}'s devices kept changing during the send; try again"
        )))
    }

    /// Fetches fresh sessions for the devices the server says we lack or
    /// hold stale sessions for; applied inside the next send transaction.
    pub(super) async fn device_update(
        &mut self,
        recipient: &str,
        mismatch: &v1::DeviceMismatch,
    ) -> Result<DeviceUpdate> {
        let mut refetch: Vec<u32> = mismatch
            .missing_devices
            .iter()
            .chain(&mismatch.stale_devices)
            .copied()
            .collect();
        refetch.sort_unstable();
        refetch.dedup();
        let mut update = DeviceUpdate {
            remove: mismatch.extra_devices.clone(),
            ..DeviceUpdate::default()
        };
        for device in refetch {
            update
                .replace
                .extend(self.fetch_sessions(recipient, device).await?);
        }
        Ok(update)
    }

    // ---- prekeys ------------------------------------------------------

    /// Refills one-time prekeys below the threshold and rotates the signed
    /// prekeys on schedule. Returns a warning for the user when the server
    /// reports the one-time prekeys drained faster than a client refills.
    pub async fn maintain_prekeys(&mut self) -> Result<Option<String>> {
        let channel = self.channel().await?;
        let mut keys = KeyServiceClient::new(channel);
        let req = self.authed(v1::GetPrekeyCountRequest {}, true).await?;
        let count = match keys.get_prekey_count(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.authed_err(&s)),
        };
        let warning = count.drained_recently.then(|| {
            format!(
                "your one-time prekeys are being requested unusually often ({} in the last hour); someone may be trying to exhaust them. New conversations still start securely, on your last-resort key.",
                count.one_time_prekeys_taken_last_hour
            )
        });
        if count.one_time_prekeys < ONE_TIME_PREKEY_REFILL_BELOW
            || count.one_time_kem_prekeys < ONE_TIME_PREKEY_REFILL_BELOW
        {
            let n_otk = ONE_TIME_PREKEY_TARGET.saturating_sub(count.one_time_prekeys);
            let n_kem = ONE_TIME_PREKEY_TARGET.saturating_sub(count.one_time_kem_prekeys);
            let owner = self.prekey_owner();
            let (otks, kems) =
                generate_one_time(&mut self.store, &self.identity, &owner, n_otk, n_kem)?;
            let req = self
                .authed(
                    v1::UploadPrekeysRequest {
                        one_time_prekeys: otks,
                        one_time_kem_prekeys: kems,
                    },
                    true,
                )
                .await?;
            if let Err(s) = keys.upload_prekeys(req).await {
                return Err(self.authed_err(&s));
            }
        }
        let rotated = self.store.get_meta_u64(META_ROTATED_AT)?.unwrap_or(0);
        let rotation_ms = u64::try_from(SIGNED_PREKEY_ROTATION.as_millis()).unwrap_or(u64::MAX);
        if now_ms().saturating_sub(rotated) >= rotation_ms {
            self.rotate_signed_prekeys().await?;
        }
        // KeyPackages, so others can add this device to groups (groups.rs).
        self.maintain_key_packages().await?;
        Ok(warning)
    }

    /// Replaces the signed X25519 prekey and the last-resort KEM prekey.
    pub async fn rotate_signed_prekeys(&mut self) -> Result<()> {
        let identity = &self.identity;
        let owner = &self.prekey_owner();
        let (spk, kem) = self.store.write(|db| {
            let spk_id = db.take_ids(COUNTER_SIGNED, 1)?;
            let spk = SignedPrekeyPair::generate(&mut OsRng, spk_id, identity, owner);
            let kem_id = db.take_ids(COUNTER_KEM, 1)?;
            let kem = KemPrekeyPair::generate(&mut OsRng, kem_id, identity, owner);
            db.put_prekey(PrekeyKind::Signed, spk_id, &spk.to_secret_bytes())?;
            db.put_prekey(PrekeyKind::KemLastResort, kem_id, &kem.to_secret_bytes())?;
            Ok((spk, kem))
        })?;
        let (spk_id, kem_id) = (spk.public().id, kem.public().id);
        let channel = self.channel().await?;
        let req = self
            .authed(
                v1::ReplaceSignedPrekeysRequest {
                    signed_prekey: Some(proto_conv::signed_prekey(&spk.public())),
                    last_resort_kem_prekey: Some(proto_conv::kem_prekey(&kem.public())),
                },
                true,
            )
            .await?;
        if let Err(s) = KeyServiceClient::new(channel)
            .replace_signed_prekeys(req)
            .await
        {
            return Err(self.authed_err(&s));
        }
        let now = now_ms();
        // Old keys stay for in-flight messages, then go (with the record of
        // the base keys accepted under them).
        let keep_ms = u64::try_from((SIGNED_PREKEY_ROTATION + SIGNED_PREKEY_GRACE).as_millis())
            .unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(keep_ms);
        self.store.write(|db| {
            db.set_meta_u64(META_SIGNED_ID, u64::from(spk_id))?;
            db.set_meta_u64(META_KEM_LAST_RESORT_ID, u64::from(kem_id))?;
            db.set_meta_u64(META_ROTATED_AT, now)?;
            db.prune_signed(PrekeyKind::Signed, spk_id, cutoff)?;
            db.prune_signed(PrekeyKind::KemLastResort, kem_id, cutoff)
        })
    }
}

/// Sessions to merge into the stored ones inside a send transaction.
#[derive(Default)]
pub(super) struct DeviceUpdate {
    /// First contact: used only for devices that still have no session (a
    /// second process may have created one meanwhile, and it may be in use).
    add: Vec<SessionRow>,
    /// Fresh sessions for stale or missing devices: replace what is stored.
    replace: Vec<SessionRow>,
    /// Devices the recipient no longer has.
    remove: Vec<u32>,
}

impl DeviceUpdate {
    fn apply(&mut self, sessions: &mut Vec<SessionRow>) {
        sessions.retain(|r| !self.remove.contains(&r.device_id));
        for fresh in self.add.drain(..) {
            if sessions.iter().all(|r| r.device_id != fresh.device_id) {
                sessions.push(fresh);
            }
        }
        for fresh in self.replace.drain(..) {
            match sessions.iter_mut().find(|r| r.device_id == fresh.device_id) {
                // A session we accepted from that device, whose registration
                // id we only learn now: keep it.
                Some(existing)
                    if existing.registration_id == 0
                        && existing.session.remote_identity()
                            == fresh.session.remote_identity() =>
                {
                    existing.registration_id = fresh.registration_id;
                }
                Some(existing) => *existing = fresh,
                None => sessions.push(fresh),
            }
        }
    }
}

/// Generates, stores and returns the public halves of one-time prekeys.
pub(super) fn generate_one_time(
    store: &mut Store,
    identity: &IdentityKeyPair,
    owner: &PrekeyOwner,
    n_otk: u32,
    n_kem: u32,
) -> Result<(Vec<v1::OneTimePrekey>, Vec<v1::KemPrekey>)> {
    let n_otk = n_otk.min(ONE_TIME_PREKEY_TARGET);
    let n_kem = n_kem.min(ONE_TIME_PREKEY_TARGET);
    // Ids are taken and the keys stored in one transaction: two processes
    // refilling at once never hand out the same id.
    store.write(|db| {
        let first_otk = db.take_ids(COUNTER_ONE_TIME, n_otk)?;
        let first_kem = db.take_ids(COUNTER_KEM, n_kem)?;
        let mut otks = Vec::new();
        let mut kems = Vec::new();
        for id in first_otk..first_otk + n_otk {
            let k = OneTimePrekeyPair::generate(&mut OsRng, id);
            db.put_prekey(PrekeyKind::OneTime, id, &k.to_secret_bytes())?;
            otks.push(proto_conv::one_time_prekey(&k.public()));
        }
        for id in first_kem..first_kem + n_kem {
            let k = KemPrekeyPair::generate(&mut OsRng, id, identity, owner);
            db.put_prekey(PrekeyKind::KemOneTime, id, &k.to_secret_bytes())?;
            kems.push(proto_conv::kem_prekey(&k.public()));
        }
        Ok((otks, kems))
    })
}
