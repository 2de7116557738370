//! Linking and removing devices (docs/PROTOCOL.md, "Linking a device").
//!
//! The new device (`missive link`) opens a mailbox on the server and shows a
//! code; the primary (`missive devices add CODE`) runs the link key agreement
//! of `missive_crypto::link` through that mailbox, signs and publishes the
//! account's next device list naming the new device, and hands it the
//! contacts. The new device then joins with `AddDevice` and its own prekeys.
//! The server relays sealed bytes only; the code the user carries between
//! the two screens is what authenticates both ends.

use std::path::Path;
use std::time::{Duration, Instant};

use missive_crypto::consts::MAX_DEVICES;
use missive_crypto::link::{LinkCode, LinkFinish, LinkInvite, LinkOffer, LinkedContact};
use missive_crypto::{DeviceList, IdentityKeyPair, PrekeyOwner, SignedDeviceList};
use missive_proto::v1::{
    self, account_service_client::AccountServiceClient, key_service_client::KeyServiceClient,
    link_service_client::LinkServiceClient,
};
use rand::Rng as _;
use rand::rngs::OsRng;
use tonic::Code;
use tonic::transport::Channel;

use crate::error::{ClientError, Result};
use crate::net::{ServerConfig, connect};
use crate::proto_conv;
use crate::store::{Contact, Store, now_ms};

use super::{
    Client, DeviceKeys, FIRST_DEVICE, META_ACCOUNT_PUBLIC, META_DEVICE_ID, META_DEVICE_KEY,
    META_DEVICE_LIST, META_REGISTRATION_ID, META_USERNAME, clear_unregistered_home, keep_ca,
    key_err, normalize_username, remove_store_files, with_timeout,
};

/// How often a waiting side looks into the mailbox.
const POLL: Duration = Duration::from_millis(500);
/// How long the new device waits for the primary's last message once it
/// has replied (the primary publishes the list and answers at once).
const FINISH_WAIT: Duration = Duration::from_secs(120);
/// Publishing attempts when other publishers race this one.
const PUBLISH_ATTEMPTS: usize = 4;
/// The highest device id handed out so far (ids are never reused, so a
/// contact's session with a removed device cannot be mistaken for a new one).
const META_LAST_DEVICE_ID: &str = "last_device_id";

/// A device added by [`Client::add_device`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedDevice {
    /// Its device id.
    pub id: u32,
    /// Fingerprint of its device key, hex.
    pub fingerprint: String,
    /// How many contacts it was given.
    pub contacts: usize,
}

fn link_err(e: missive_crypto::link::LinkError) -> ClientError {
    ClientError::Link(e.to_string())
}

/// The mailbox as the server serves it; `NOT_FOUND` said for people.
async fn get_link(
    channel: &Channel,
    rendezvous: &[u8; 32],
    url: &str,
) -> Result<v1::GetLinkResponse> {
    LinkServiceClient::new(channel.clone())
        .get_link(with_timeout(v1::GetLinkRequest {
            rendezvous: rendezvous.to_vec(),
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| link_status(&s, url))
}

fn link_status(s: &tonic::Status, url: &str) -> ClientError {
    match s.code() {
        Code::NotFound => ClientError::LinkCodeUnknown,
        Code::FailedPrecondition => ClientError::LinkCodeUsed,
        _ => ClientError::from_status(s, url),
    }
}

/// Polls the mailbox until `pick` finds its slot filled, or `wait` passes.
async fn wait_for(
    channel: &Channel,
    rendezvous: &[u8; 32],
    url: &str,
    wait: Duration,
    pick: fn(v1::GetLinkResponse) -> Vec<u8>,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + wait;
    loop {
        let got = pick(get_link(channel, rendezvous, url).await?);
        if !got.is_empty() {
            return Ok(got);
        }
        if Instant::now() + POLL > deadline {
            return Err(ClientError::LinkTimedOut(wait.as_secs()));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn close_link(channel: &Channel, rendezvous: &[u8; 32]) {
    // Best effort: the mailbox expires on its own.
    let _ = LinkServiceClient::new(channel.clone())
        .close_link(with_timeout(v1::CloseLinkRequest {
            rendezvous: rendezvous.to_vec(),
        }))
        .await;
}

impl Client {
    /// The new device's side of linking, in a fresh `home`: shows the code
    /// through `show_code`, waits up to `wait` for a primary, then joins its
    /// account. Nothing is left in `home` if it fails.
    pub async fn link_new_device(
        home: &Path,
        server: ServerConfig,
        wait: Duration,
        show_code: impl FnOnce(&str),
    ) -> Result<Self> {
        clear_unregistered_home(home)?;
        let channel = connect(&server).await?;
        let offer = LinkOffer::generate(&mut OsRng);
        let rendezvous = offer.code().rendezvous();
        LinkServiceClient::new(channel.clone())
            .open_link(with_timeout(v1::OpenLinkRequest {
                rendezvous: rendezvous.to_vec(),
                offer: offer.offer().to_vec(),
            }))
            .await
            .map_err(|s| ClientError::from_status(&s, &server.url))?;
        show_code(&offer.code().to_text());
        let result = Self::join(home, &server, &channel, &offer, wait).await;
        close_link(&channel, &rendezvous).await;
        if result.is_err() {
            remove_store_files(home);
        }
        result
    }

    async fn join(
        home: &Path,
        server: &ServerConfig,
        channel: &Channel,
        offer: &LinkOffer,
        wait: Duration,
    ) -> Result<Self> {
        let rendezvous = offer.code().rendezvous();
        let url = &server.url;
        let hello = wait_for(channel, &rendezvous, url, wait, |r| r.hello).await?;
        let link = offer.open_hello(&hello).map_err(link_err)?;
        let invite = link.invite().clone();
        let username = normalize_username(&invite.username)?;
        if username != invite.username || invite.device_id <= FIRST_DEVICE {
            return Err(ClientError::Link(
                "the primary invited this device under an impossible name or device id".into(),
            ));
        }
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let registration_id: u32 = OsRng.gen_range(1..=16380);
        let (reply, entry) = link
            .seal_reply(&identity, registration_id)
            .map_err(link_err)?;
        LinkServiceClient::new(channel.clone())
            .post_link(with_timeout(v1::PostLinkRequest {
                rendezvous: rendezvous.to_vec(),
                slot: v1::LinkSlot::Reply as i32,
                payload: reply,
            }))
            .await
            .map_err(|s| link_status(&s, url))?;
        let finish = wait_for(channel, &rendezvous, url, FINISH_WAIT, |r| r.finish).await?;
        let finish =
            LinkFinish::decode(&link.open_finish(&finish).map_err(link_err)?).map_err(link_err)?;
        let list = verified_list_naming(&finish.signed_device_list, &invite, &entry.identity)?;

        let mut store = Store::open(home, true)?;
        store.write(|db| {
            db.set_meta(META_ACCOUNT_PUBLIC, &invite.account.to_bytes())?;
            db.set_meta(META_DEVICE_KEY, &identity.to_secret_bytes())?;
            db.set_meta(META_DEVICE_LIST, &list.to_bytes())?;
            db.set_meta_u64(META_REGISTRATION_ID, u64::from(registration_id))
        })?;
        let owner = PrekeyOwner {
            account: invite.account.clone(),
            device_id: invite.device_id,
        };
        let keys = DeviceKeys::generate(&mut store, &identity, &owner)?;
        keep_ca(home, server)?;

        let resp = join_account(
            channel,
            server,
            &identity,
            &username,
            invite.device_id,
            registration_id,
            keys,
            Vec::new(),
        )
        .await?;
        store.write(|db| {
            for c in &finish.contacts {
                if c.username == username
                    || normalize_username(&c.username).ok().as_ref() != Some(&c.username)
                {
                    continue;
                }
                db.put_contact(&Contact {
                    username: c.username.clone(),
                    identity: c.account.clone(),
                    verified: c.verified,
                    changed_identity: None,
                    device_list: None,
                    changed_device_list: None,
                })?;
            }
            db.set_meta(META_USERNAME, username.as_bytes())?;
            db.set_meta_u64(META_DEVICE_ID, u64::from(invite.device_id))
        })?;
        let mut client = Client::open(home, server.clone())?;
        client.channel = Some(channel.clone());
        if let Some(session) = resp.session {
            client.remember_token(&session.token, session.expires_at_ms)?;
        }
        // So that others can add this device to groups right away.
        if let Err(e) = client.maintain_key_packages().await {
            client.notices.push(format!(
                "could not put group KeyPackages on the server yet: {}",
                e.brief()
            ));
        }
        Ok(client)
    }

    /// The primary's side: links the device showing `code`, waiting up to
    /// `wait` for its reply. Publishes the account's next device list.
    pub async fn add_device(&mut self, code: &str, wait: Duration) -> Result<LinkedDevice> {
        let Some(account_key) = self.account_key.as_ref().map(|k| k.to_secret_bytes()) else {
            return Err(ClientError::NotPrimary);
        };
        let account_key = IdentityKeyPair::from_secret_bytes(&account_key).map_err(key_err)?;
        let code = LinkCode::parse(code).map_err(link_err)?;
        let rendezvous = code.rendezvous();
        let channel = self.channel().await?;
        let url = self.server.url.clone();
        let mailbox = get_link(&channel, &rendezvous, &url).await?;
        if !mailbox.hello.is_empty() {
            return Err(ClientError::LinkCodeUsed);
        }
        let current = self.fetch_own_device_list().await?;
        let devices = &current.unverified_list().devices;
        if devices.len() >= MAX_DEVICES {
            return Err(ClientError::TooManyDevices(MAX_DEVICES));
        }
        let highest = devices
            .iter()
            .map(|d| u64::from(d.device_id))
            .max()
            .unwrap_or(1);
        // Taken in one transaction: two `devices add` at once on this home
        // never hand out one id twice, and a crash never reuses one.
        let device_id = self.store.write(|db| {
            let last = db.get_meta_u64(META_LAST_DEVICE_ID)?.unwrap_or(0);
            let id = u32::try_from(last.max(highest) + 1)
                .map_err(|_| ClientError::Link("no device id is left".into()))?;
            db.set_meta_u64(META_LAST_DEVICE_ID, u64::from(id))?;
            Ok(id)
        })?;
        let invite = LinkInvite {
            username: self.username.clone(),
            account: self.account.clone(),
            device_id,
        };
        let (hello, link) =
            missive_crypto::link::accept_offer(&mut OsRng, &code, &mailbox.offer, &invite)
                .map_err(link_err)?;
        self.post_link(&rendezvous, v1::LinkSlot::Hello, hello)
            .await?;
        let reply = wait_for(&channel, &rendezvous, &url, wait, |r| r.reply).await?;
        let entry = link.open_reply(&reply).map_err(link_err)?;
        let signed = self
            .publish_next(&account_key, |next| {
                if next.devices.iter().any(|d| d.identity == entry.identity) {
                    return Err(ClientError::Link(
                        "the new device offered a key another device of this account already has"
                            .into(),
                    ));
                }
                if next.devices.len() >= MAX_DEVICES {
                    return Err(ClientError::TooManyDevices(MAX_DEVICES));
                }
                next.devices.push(entry.clone());
                next.devices.sort_by_key(|d| d.device_id);
                Ok(())
            })
            .await?;
        let contacts: Vec<LinkedContact> = self
            .store
            .contacts()?
            .into_iter()
            .map(|c| LinkedContact {
                username: c.username,
                account: c.identity,
                verified: c.verified,
            })
            .take(missive_crypto::link::MAX_LINKED_CONTACTS)
            .collect();
        let finish = LinkFinish {
            signed_device_list: signed.to_bytes(),
            contacts,
        };
        let sealed = link.seal_finish(&finish.encode()).map_err(link_err)?;
        self.post_link(&rendezvous, v1::LinkSlot::Finish, sealed)
            .await?;
        Ok(LinkedDevice {
            id: device_id,
            fingerprint: entry.identity.fingerprint().to_string(),
            contacts: finish.contacts.len(),
        })
    }

    /// Restores `username`'s account key from its recovery code on a new
    /// device in `home` (when the primary is lost): this device joins the
    /// account, listed beside the others, and becomes a primary.
    pub async fn recover(
        home: &Path,
        server: ServerConfig,
        username: &str,
        code: &str,
    ) -> Result<Self> {
        let username = normalize_username(username)?;
        let code = missive_crypto::recovery::RecoveryCode::parse(code)
            .map_err(|e| ClientError::Recovery(e.to_string()))?;
        let account_key = code.account_key().map_err(key_err)?;
        clear_unregistered_home(home)?;
        let channel = connect(&server).await?;
        let result = Self::recover_inner(home, &server, &channel, &username, account_key).await;
        if result.is_err() {
            remove_store_files(home);
        }
        result
    }

    async fn recover_inner(
        home: &Path,
        server: &ServerConfig,
        channel: &Channel,
        username: &str,
        account_key: IdentityKeyPair,
    ) -> Result<Self> {
        let url = &server.url;
        let served = KeyServiceClient::new(channel.clone())
            .get_device_list(with_timeout(v1::GetDeviceListRequest {
                username: username.to_owned(),
                with_linked_days: false,
            }))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => ClientError::UnknownUser(username.to_owned()),
                _ => ClientError::from_status(&s, url),
            })?
            .into_inner()
            .signed_device_list;
        let current =
            SignedDeviceList::from_bytes(&served).map_err(|e| ClientError::DeviceListRefused {
                username: username.to_owned(),
                reason: e.to_string(),
            })?;
        if current.account() != account_key.public() {
            return Err(ClientError::Recovery(format!(
                "this recovery code is not for {username}'s account (its account key differs)"
            )));
        }
        let mut next = current
            .verify(account_key.public(), username)
            .map_err(|e| ClientError::DeviceListRefused {
                username: username.to_owned(),
                reason: e.to_string(),
            })?
            .clone();
        if next.devices.len() >= MAX_DEVICES {
            return Err(ClientError::TooManyDevices(MAX_DEVICES));
        }
        let device_id = next
            .devices
            .iter()
            .map(|d| d.device_id)
            .max()
            .unwrap_or(FIRST_DEVICE)
            .checked_add(1)
            .ok_or_else(|| ClientError::Recovery("no device id is left".into()))?;
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let registration_id: u32 = OsRng.gen_range(1..=16380);
        next.devices.push(missive_crypto::DeviceEntry::link(
            &identity,
            username,
            account_key.public(),
            device_id,
            registration_id,
        ));
        next.version += 1;
        next.timestamp_ms = now_ms();
        let list = next.sign(&account_key).map_err(key_err)?;

        let mut store = Store::open(home, true)?;
        store.write(|db| {
            db.set_meta(super::META_ACCOUNT_KEY, &account_key.to_secret_bytes())?;
            db.set_meta(META_ACCOUNT_PUBLIC, &account_key.public().to_bytes())?;
            db.set_meta(META_DEVICE_KEY, &identity.to_secret_bytes())?;
            db.set_meta(META_DEVICE_LIST, &list.to_bytes())?;
            db.set_meta_u64(META_LAST_DEVICE_ID, u64::from(device_id))?;
            db.set_meta_u64(META_REGISTRATION_ID, u64::from(registration_id))
        })?;
        let owner = PrekeyOwner {
            account: account_key.public().clone(),
            device_id,
        };
        let keys = DeviceKeys::generate(&mut store, &identity, &owner)?;
        keep_ca(home, server)?;
        let resp = join_account(
            channel,
            server,
            &identity,
            username,
            device_id,
            registration_id,
            keys,
            list.to_bytes(),
        )
        .await?;
        store.write(|db| {
            db.set_meta(META_USERNAME, username.as_bytes())?;
            db.set_meta_u64(META_DEVICE_ID, u64::from(device_id))
        })?;
        let mut client = Client::open(home, server.clone())?;
        client.channel = Some(channel.clone());
        if let Some(session) = resp.session {
            client.remember_token(&session.token, session.expires_at_ms)?;
        }
        // So that others can add this device to groups right away.
        if let Err(e) = client.maintain_key_packages().await {
            client.notices.push(format!(
                "could not put group KeyPackages on the server yet: {}",
                e.brief()
            ));
        }
        Ok(client)
    }

    /// Publishes a list without device `id`; the server then refuses that
    /// device's token and deletes its pending envelopes.
    pub async fn remove_device(&mut self, id: u32) -> Result<()> {
        let Some(account_key) = self.account_key.as_ref().map(|k| k.to_secret_bytes()) else {
            return Err(ClientError::NotPrimary);
        };
        let account_key = IdentityKeyPair::from_secret_bytes(&account_key).map_err(key_err)?;
        if id == self.device_id {
            return Err(ClientError::RemoveSelf);
        }
        self.publish_next(&account_key, |next| {
            let before = next.devices.len();
            next.devices.retain(|d| d.device_id != id);
            if next.devices.len() == before {
                return Err(ClientError::NoSuchDevice(id));
            }
            Ok(())
        })
        .await?;
        // The removed device leaves every group at once.
        for note in self.sync_own_devices().await {
            self.notices.push(note);
        }
        Ok(())
    }

    /// Applies `change` to the account's current list and publishes the
    /// result as the next version; when another device or process published
    /// meanwhile, starts again from the list it published.
    async fn publish_next(
        &mut self,
        account_key: &IdentityKeyPair,
        change: impl Fn(&mut DeviceList) -> Result<()>,
    ) -> Result<SignedDeviceList> {
        for _ in 0..PUBLISH_ATTEMPTS {
            let current = self.fetch_own_device_list().await?;
            let mut next = current.unverified_list().clone();
            change(&mut next)?;
            match self.publish_list(account_key, next).await {
                Err(ClientError::ListRaced) => continue,
                other => return other,
            }
        }
        Err(ClientError::Server(
            "the account's device list kept changing while this command ran; try again".into(),
        ))
    }

    /// Signs `list` as the version after the current one and publishes it.
    async fn publish_list(
        &mut self,
        account_key: &IdentityKeyPair,
        mut list: DeviceList,
    ) -> Result<SignedDeviceList> {
        list.version += 1;
        list.timestamp_ms = now_ms();
        let signed = list.sign(account_key).map_err(key_err)?;
        let channel = self.channel().await?;
        let req = self
            .authed(
                v1::PublishDeviceListRequest {
                    signed_device_list: signed.to_bytes(),
                },
                true,
            )
            .await?;
        match KeyServiceClient::new(channel)
            .publish_device_list(req)
            .await
        {
            Ok(_) => {}
            // Another publisher took this version first.
            Err(s)
                if s.code() == Code::FailedPrecondition
                    && s.message().contains("holds device list version") =>
            {
                return Err(ClientError::ListRaced);
            }
            Err(s) => return Err(self.authed_err(&s)),
        }
        self.store
            .write(|db| db.set_meta(META_DEVICE_LIST, &signed.to_bytes()))?;
        Ok(signed)
    }

    async fn post_link(
        &mut self,
        rendezvous: &[u8; 32],
        slot: v1::LinkSlot,
        payload: Vec<u8>,
    ) -> Result<()> {
        let channel = self.channel().await?;
        let req = self
            .authed(
                v1::PostLinkRequest {
                    rendezvous: rendezvous.to_vec(),
                    slot: slot as i32,
                    payload,
                },
                true,
            )
            .await?;
        match LinkServiceClient::new(channel).post_link(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::Unauthenticated => Err(self.authed_err(&s)),
            Err(s) => Err(link_status(&s, &self.server.url)),
        }
    }
}

/// `AddDevice`: this device, named by the account's list (or by
/// `recovery_list`, the next list a recovering device publishes with it),
/// joins with its prekeys.
#[allow(clippy::too_many_arguments)]
async fn join_account(
    channel: &Channel,
    server: &ServerConfig,
    identity: &IdentityKeyPair,
    username: &str,
    device_id: u32,
    registration_id: u32,
    keys: DeviceKeys,
    recovery_list: Vec<u8>,
) -> Result<v1::RegisterResponse> {
    let url = &server.url;
    let mut account = AccountServiceClient::new(channel.clone());
    let challenge = account
        .get_challenge(with_timeout(v1::GetChallengeRequest {
            username: username.to_owned(),
            purpose: v1::ChallengePurpose::AddDevice as i32,
        }))
        .await
        .map_err(|s| ClientError::from_status(&s, url))?
        .into_inner()
        .challenge;
    let server_name = server.name()?;
    let signature = identity.sign(&missive_crypto::transcript::add_device(
        &challenge,
        &server_name,
        username,
        device_id,
        registration_id,
    ));
    Ok(account
        .add_device(with_timeout(v1::AddDeviceRequest {
            username: username.to_owned(),
            challenge,
            device_id,
            registration_id,
            signed_prekey: Some(proto_conv::signed_prekey(&keys.signed.public())),
            last_resort_kem_prekey: Some(proto_conv::kem_prekey(&keys.kem.public())),
            one_time_prekeys: keys.one_time,
            one_time_kem_prekeys: keys.one_time_kem,
            server_name,
            signature: signature.to_vec(),
            signed_device_list: recovery_list,
        }))
        .await
        .map_err(|s| ClientError::from_status(&s, url))?
        .into_inner())
}

/// The finish's list, verified under the invited account key, naming this
/// device with its key.
fn verified_list_naming(
    bytes: &[u8],
    invite: &LinkInvite,
    device: &missive_crypto::PublicIdentity,
) -> Result<SignedDeviceList> {
    let refused = |reason: String| ClientError::DeviceListRefused {
        username: invite.username.clone(),
        reason,
    };
    let list = SignedDeviceList::from_bytes(bytes).map_err(|e| refused(e.to_string()))?;
    let names_us = list
        .verify(&invite.account, &invite.username)
        .map_err(|e| refused(e.to_string()))?
        .devices
        .iter()
        .any(|d| d.device_id == invite.device_id && &d.identity == device);
    if !names_us {
        return Err(refused("it does not name this new device".into()));
    }
    Ok(list)
}
