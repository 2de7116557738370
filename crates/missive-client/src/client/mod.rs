//! The client: one [`Client`] per registered account on this machine.
//!
//! It owns the local [`Store`] and, lazily, a TLS channel to the server, and
//! every operation returns a [`ClientError`] a person can act on. Its parts
//! are modules of their own:
//!
//! - this file: the account life cycle (register, open, delete);
//! - [`transport`]: the channel, tokens and logins, status mapping;
//! - [`trust`]: pinned account keys, contacts' device lists, safety numbers,
//!   verification;
//! - [`devices`]: this account's own signed device list;
//! - [`sessions`]: fetching bundles, encrypting to every device, prekeys;
//! - [`receive`]: decrypting and storing envelopes, the `recv` loop;
//! - [`history`]: the stored conversation and abuse reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use missive_crypto::{
    Address, DeviceEntry, DeviceList, IdentityKeyPair, KemPrekeyPair, PrekeyOwner, PublicIdentity,
    SignedDeviceList, SignedPrekeyPair,
};
use missive_proto::v1::{self, account_service_client::AccountServiceClient};
use rand::Rng as _;
use rand::rngs::OsRng;
use tonic::Request;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};
use crate::limits::{ONE_TIME_PREKEY_TARGET, REQUEST_TIMEOUT};
use crate::net::{ServerConfig, connect};
use crate::proto_conv;
use crate::store::{HistoryEntry, PrekeyKind, Store, now_ms};

mod devices;
pub(crate) mod group_state;
mod groups;
mod history;
mod link;
mod mls_storage;
mod receive;
mod sessions;
mod transport;
mod trust;

pub use devices::OwnDevice;
pub(crate) use group_state::OutgoingCommit;
pub use groups::{GroupMember, GroupSummary};
pub use link::LinkedDevice;
pub(crate) use receive::Refusal;
pub use receive::check_content;
pub use sessions::FORGE_COMMITMENT_ENV;
pub use trust::{SafetyNumberView, Verification};

use sessions::generate_one_time;
use transport::register_status;

/// Environment variable of the test hook that simulates a crash between the
/// store commit and the acknowledgement: when set to `1`, `recv` exits the
/// process (status 75) right after committing the first new message.
pub const CRASH_BEFORE_ACK_ENV: &str = "MISSIVE_TEST_CRASH_BEFORE_ACK";

/// Exit status used by the crash hook.
pub const CRASH_EXIT_CODE: i32 = 75;

const META_USERNAME: &str = "username";
const META_DEVICE_ID: &str = "device_id";
const META_REGISTRATION_ID: &str = "registration_id";
/// Protocol v1's single identity secret: its presence marks a v1 home.
const META_V1_IDENTITY: &str = "identity";
/// The account key's secret (on the device that holds it: the primary).
const META_ACCOUNT_KEY: &str = "account_key";
/// The account key's public half (on every device).
const META_ACCOUNT_PUBLIC: &str = "account_public";
/// This device's own key.
const META_DEVICE_KEY: &str = "device_key";
/// Our account's newest signed device list, as published.
pub(crate) const META_DEVICE_LIST: &str = "device_list";
const META_TOKEN: &str = "token";
const META_TOKEN_EXPIRY: &str = "token_expires_at_ms";
const META_SIGNED_ID: &str = "current_signed_prekey_id";
const META_KEM_LAST_RESORT_ID: &str = "current_kem_last_resort_id";
const META_ROTATED_AT: &str = "signed_prekeys_rotated_at_ms";
/// The device id of an account's first device.
const FIRST_DEVICE: u32 = 1;
const COUNTER_SIGNED: &str = "next_signed_prekey_id";
const COUNTER_KEM: &str = "next_kem_prekey_id";
const COUNTER_ONE_TIME: &str = "next_one_time_prekey_id";

/// Something `recv` (or the chat) reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecvEvent {
    /// A new message, stored, acknowledged, now shown.
    Message(HistoryEntry),
    /// A contact's identity differs from the pinned one (said again for
    /// every further different identity).
    IdentityChanged {
        /// The contact.
        username: String,
    },
    /// The store was restored from an older copy; sessions start afresh.
    RolledBack,
    /// An envelope that could not be accepted (and was acknowledged so it
    /// does not block the queue).
    Dropped {
        /// Claimed sender.
        sender: String,
        /// Why.
        reason: String,
    },
    /// Housekeeping failed (prekey refill or rotation); not fatal.
    Warning(String),
}

/// Result of a successful send.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Message id, hex.
    pub id: String,
    /// Server acceptance time, ms.
    pub server_timestamp_ms: u64,
}

/// Checks and normalises a username (3–32 of `a-z0-9._-`, lower-cased).
pub fn normalize_username(name: &str) -> Result<String> {
    let lower = name.to_ascii_lowercase();
    let ok = (3..=32).contains(&lower.len())
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(lower)
    } else {
        Err(ClientError::BadUsername(name.to_owned()))
    }
}

/// The latest instant RFC 3339 can write: 9999-12-31T23:59:59.999Z.
pub const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// How far ahead of the server's clock a sender's clock may claim to be.
pub const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;
/// How far behind the server's clock a sender's clock may claim to be (the
/// server keeps envelopes 30 days; a message can be written offline before).
pub const MAX_CLOCK_BEHIND_MS: u64 = 60 * 24 * 3600 * 1000;

/// Formats ms since the epoch as RFC 3339 (UTC, milliseconds). Total: times
/// beyond year 9999 print as its last millisecond.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.min(MAX_RFC3339_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Clamps a sender's claimed clock into the window around the server's
/// acceptance time; returns the clamped value and whether it was outside.
pub fn clamp_sender_clock(sender_ms: u64, server_ms: u64) -> (u64, bool) {
    if server_ms == 0 {
        let c = sender_ms.min(MAX_RFC3339_MS);
        return (c, c != sender_ms);
    }
    let low = server_ms.saturating_sub(MAX_CLOCK_BEHIND_MS);
    let high = server_ms
        .saturating_add(MAX_CLOCK_AHEAD_MS)
        .min(MAX_RFC3339_MS);
    let c = sender_ms.clamp(low, high.max(low));
    (c, c != sender_ms)
}

/// A registered account on this machine.
pub struct Client {
    home: PathBuf,
    server: ServerConfig,
    store: Store,
    /// This device's key: signs its prekeys and logins, IK in PQXDH.
    identity: IdentityKeyPair,
    /// The account key, which signs device lists and gives safety numbers.
    account: PublicIdentity,
    /// Its secret, on the device that holds it (the primary).
    account_key: Option<IdentityKeyPair>,
    username: String,
    device_id: u32,
    channel: Option<Channel>,
    token: Option<(Zeroizing<String>, u64)>,
    /// Envelopes the server took the acknowledgement of, noted in the store
    /// by the next `take_unshown` (one commit per received message, not two).
    acked: Vec<(String, u32, Vec<u8>)>,
    /// Conversation events and receipts not yet said or sent.
    conv: crate::conversation::ConvState,
    /// Where `recv` saves received files (`attachments.rs`); `None`: not saved.
    pub(crate) attachment_dir: Option<PathBuf>,
    /// Progress bars and resume notes on standard error (the CLI).
    pub(crate) progress: bool,
    /// What a send learnt that the user should hear ("bob linked a new
    /// device"); taken by [`Client::take_notices`].
    notices: Vec<String>,
    /// Device-list versions and hashes named inside received messages, not
    /// yet compared with the lists the server serves.
    list_hints: Vec<(String, u64, [u8; 32])>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("home", &self.home)
            .field("username", &self.username)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

fn key_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Crypto(e.to_string())
}

fn with_timeout<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(REQUEST_TIMEOUT);
    r
}

impl Client {
    /// Opens the account stored in `home`.
    pub fn open(home: &Path, server: ServerConfig) -> Result<Self> {
        if !Store::exists(home) {
            return Err(ClientError::NotRegistered(home.to_path_buf()));
        }
        let store = Store::open(home, false)?;
        let username = store
            .get_meta_str(META_USERNAME)?
            .ok_or_else(|| ClientError::NotRegistered(home.to_path_buf()))?;
        let device_id = store
            .get_meta_u64(META_DEVICE_ID)?
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ClientError::NotRegistered(home.to_path_buf()))?;
        let Some(secret) = store.get_meta(META_DEVICE_KEY)? else {
            if store.get_meta(META_V1_IDENTITY)?.is_some() {
                return Err(ClientError::ProtocolV1Home(home.to_path_buf()));
            }
            return Err(ClientError::NotRegistered(home.to_path_buf()));
        };
        let identity = IdentityKeyPair::from_secret_bytes(&secret).map_err(key_err)?;
        let account_key = store
            .get_meta(META_ACCOUNT_KEY)?
            .map(|s| IdentityKeyPair::from_secret_bytes(&s).map_err(key_err))
            .transpose()?;
        let account = store
            .get_meta(META_ACCOUNT_PUBLIC)?
            .ok_or_else(|| ClientError::NotRegistered(home.to_path_buf()))?;
        let account = PublicIdentity::from_bytes(&account).map_err(key_err)?;
        Ok(Client {
            home: home.to_path_buf(),
            server,
            store,
            identity,
            account,
            account_key,
            username,
            device_id,
            channel: None,
            token: None,
            acked: Vec::new(),
            conv: Default::default(),
            attachment_dir: None,
            progress: false,
            notices: Vec::new(),
            list_hints: Vec::new(),
        })
        .and_then(|mut c| {
            // Disappeared messages go before anything reads the history.
            crate::conversation::purge_expired(&mut c.store)?;
            Ok(c)
        })
    }

    /// Creates an identity and prekeys in `home` and registers `username`.
    pub async fn register(home: &Path, server: ServerConfig, username: &str) -> Result<Self> {
        let username = normalize_username(username)?;
        clear_unregistered_home(home)?;
        let channel = connect(&server).await?;
        let result = Self::register_inner(home, &server, channel, &username).await;
        if result.is_err() {
            remove_store_files(home);
        }
        result
    }

    async fn register_inner(
        home: &Path,
        server: &ServerConfig,
        channel: Channel,
        username: &str,
    ) -> Result<Self> {
        let mut store = Store::open(home, true)?;
        let rng = &mut OsRng;
        let account_key = IdentityKeyPair::generate(rng);
        let identity = IdentityKeyPair::generate(rng);
        let registration_id: u32 = rng.gen_range(1..=16380);
        let owner = PrekeyOwner {
            account: account_key.public().clone(),
            device_id: FIRST_DEVICE,
        };
        let list = DeviceList {
            username: username.to_owned(),
            version: 1,
            timestamp_ms: now_ms(),
            devices: vec![DeviceEntry::link(
                &identity,
                username,
                account_key.public(),
                FIRST_DEVICE,
                registration_id,
            )],
        }
        .sign(&account_key)
        .map_err(key_err)?;
        store.write(|db| {
            db.set_meta(META_ACCOUNT_KEY, &account_key.to_secret_bytes())?;
            db.set_meta(META_ACCOUNT_PUBLIC, &account_key.public().to_bytes())?;
            db.set_meta(META_DEVICE_KEY, &identity.to_secret_bytes())?;
            db.set_meta(META_DEVICE_LIST, &list.to_bytes())?;
            db.set_meta_u64(META_REGISTRATION_ID, u64::from(registration_id))
        })?;
        let keys = DeviceKeys::generate(&mut store, &identity, &owner)?;
        keep_ca(home, server)?;
        let url = server.url.clone();
        let mut account = AccountServiceClient::new(channel.clone());
        let challenge = account
            .get_challenge(with_timeout(v1::GetChallengeRequest {
                username: username.to_owned(),
                purpose: v1::ChallengePurpose::Register as i32,
            }))
            .await
            .map_err(|s| register_status(&s, username, &url))?
            .into_inner()
            .challenge;
        let server_name = server.name()?;
        let signature = account_key.sign(&missive_crypto::transcript::registration(
            &challenge,
            &server_name,
            username,
            registration_id,
        ));
        let resp = account
            .register(with_timeout(v1::RegisterRequest {
                username: username.to_owned(),
                challenge,
                identity: Some(proto_conv::identity(account_key.public())),
                device_identity: Some(proto_conv::identity(identity.public())),
                signed_device_list: list.to_bytes(),
                server_name,
                registration_id,
                signed_prekey: Some(proto_conv::signed_prekey(&keys.signed.public())),
                last_resort_kem_prekey: Some(proto_conv::kem_prekey(&keys.kem.public())),
                one_time_prekeys: keys.one_time,
                one_time_kem_prekeys: keys.one_time_kem,
                signature: signature.to_vec(),
            }))
            .await
            .map_err(|s| register_status(&s, username, &url))?
            .into_inner();
        store.write(|db| {
            db.set_meta(META_USERNAME, username.as_bytes())?;
            db.set_meta_u64(META_DEVICE_ID, u64::from(resp.device_id))
        })?;
        let mut client = Client {
            home: home.to_path_buf(),
            server: server.clone(),
            store,
            identity,
            account: account_key.public().clone(),
            account_key: Some(account_key),
            username: username.to_owned(),
            device_id: resp.device_id,
            channel: Some(channel),
            token: None,
            acked: Vec::new(),
            conv: Default::default(),
            attachment_dir: None,
            progress: false,
            notices: Vec::new(),
            list_hints: Vec::new(),
        };
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

    /// This account's username.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The server URL this client talks to.
    pub fn server_url(&self) -> &str {
        &self.server.url
    }

    /// The local store (read access for tools and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    pub(crate) fn conv_state(&mut self) -> &mut crate::conversation::ConvState {
        &mut self.conv
    }

    /// This device's id within its account.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    pub(crate) fn device(&self) -> u32 {
        self.device_id
    }

    /// Our account key (safety numbers are computed from it).
    pub fn public_identity(&self) -> &PublicIdentity {
        &self.account
    }

    /// Notices gathered since the last call (new devices of contacts).
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// This device's own key.
    pub fn device_identity(&self) -> &PublicIdentity {
        self.identity.public()
    }

    /// This device's address.
    pub(crate) fn address(&self) -> Address {
        Address::new(self.username.clone(), self.device_id)
    }

    /// Whom our prekey signatures name.
    pub(crate) fn prekey_owner(&self) -> PrekeyOwner {
        PrekeyOwner {
            account: self.account.clone(),
            device_id: self.device_id,
        }
    }

    /// Our account's newest signed device list, as this device last saw it.
    pub fn own_device_list(&self) -> Result<Option<SignedDeviceList>> {
        self.store
            .get_meta(META_DEVICE_LIST)?
            .map(|b| SignedDeviceList::from_bytes(&b).map_err(key_err))
            .transpose()
    }

    /// Deletes the account on the server, then the local store.
    pub async fn delete_account(mut self) -> Result<()> {
        let channel = self.channel().await?;
        let req = self.authed(v1::DeleteAccountRequest {}, true).await?;
        if let Err(s) = AccountServiceClient::new(channel).delete_account(req).await {
            return Err(self.authed_err(&s));
        }
        let home = self.home.clone();
        drop(self);
        remove_store_files(&home);
        Ok(())
    }
}

/// A new device's prekeys, stored in its store and ready to upload.
pub(super) struct DeviceKeys {
    signed: SignedPrekeyPair,
    kem: KemPrekeyPair,
    one_time: Vec<v1::OneTimePrekey>,
    one_time_kem: Vec<v1::KemPrekey>,
}

impl DeviceKeys {
    pub(super) fn generate(
        store: &mut Store,
        identity: &IdentityKeyPair,
        owner: &PrekeyOwner,
    ) -> Result<DeviceKeys> {
        let (signed, kem) = store.write(|db| {
            let spk_id = db.take_ids(COUNTER_SIGNED, 1)?;
            let spk = SignedPrekeyPair::generate(&mut OsRng, spk_id, identity, owner);
            let kem_id = db.take_ids(COUNTER_KEM, 1)?;
            let kem = KemPrekeyPair::generate(&mut OsRng, kem_id, identity, owner);
            db.put_prekey(PrekeyKind::Signed, spk_id, &spk.to_secret_bytes())?;
            db.put_prekey(PrekeyKind::KemLastResort, kem_id, &kem.to_secret_bytes())?;
            db.set_meta_u64(META_SIGNED_ID, u64::from(spk_id))?;
            db.set_meta_u64(META_KEM_LAST_RESORT_ID, u64::from(kem_id))?;
            db.set_meta_u64(META_ROTATED_AT, now_ms())?;
            Ok((spk, kem))
        })?;
        let (one_time, one_time_kem) = generate_one_time(
            store,
            identity,
            owner,
            ONE_TIME_PREKEY_TARGET,
            ONE_TIME_PREKEY_TARGET,
        )?;
        Ok(DeviceKeys {
            signed,
            kem,
            one_time,
            one_time_kem,
        })
    }
}

/// Keeps the CA given with --ca in the home, so later commands trust it
/// without --ca, and never a file that happens to sit in the working directory.
pub(super) fn keep_ca(home: &Path, server: &ServerConfig) -> Result<()> {
    if let Some(ca) = &server.ca {
        let pem = std::fs::read(ca).map_err(|source| ClientError::CaFile {
            path: ca.clone(),
            source,
        })?;
        crate::store::replace_private(&home.join(crate::store::CA_FILE), &pem, true)?;
    }
    Ok(())
}

/// Refuses a home that holds an account; clears what an earlier failed
/// attempt left in it.
pub(super) fn clear_unregistered_home(home: &Path) -> Result<()> {
    if Store::exists(home) {
        let store = Store::open(home, false)?;
        if let Some(existing) = store.get_meta_str(META_USERNAME)? {
            return Err(ClientError::AlreadyRegistered {
                home: home.to_path_buf(),
                username: existing,
            });
        }
        drop(store);
        remove_store_files(home);
    }
    Ok(())
}

/// Removes the store files of `home` (best effort).
pub(super) fn remove_store_files(home: &Path) {
    for f in [
        crate::store::DB_FILE,
        crate::store::KEY_FILE,
        crate::store::SALT_FILE,
        crate::store::GENERATION_FILE,
        crate::store::CA_FILE,
        "passphrase.salt.new",
        "missive.db-journal",
        "missive.db-wal",
        "missive.db-shm",
    ] {
        let _ = std::fs::remove_file(home.join(f));
    }
}
