//! The client: account life cycle, sending, receiving, trust and reports.
//!
//! One [`Client`] owns the local [`Store`] and, lazily, a TLS channel to the
//! server. Every operation returns a [`ClientError`] a person can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    IdentityKeyPair, KemPrekeyPair, MessageKind, OneTimePrekeyPair, PrekeyMessage, PublicIdentity,
    Session, SignedPrekeyPair,
};
use missive_proto::v1::{
    self, account_service_client::AccountServiceClient, key_service_client::KeyServiceClient,
    message_service_client::MessageServiceClient, report_service_client::ReportServiceClient,
};
use prost::Message as _;
use rand::Rng as _;
use rand::RngCore as _;
use rand::rngs::OsRng;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use zeroize::Zeroizing;

use crate::display::sanitize_line;
use crate::error::{ClientError, Result};
use crate::limits::{
    MAX_ACK_BATCH, ONE_TIME_PREKEY_REFILL_BELOW, ONE_TIME_PREKEY_TARGET, REQUEST_TIMEOUT,
    SEND_ATTEMPTS, SIGNED_PREKEY_GRACE, SIGNED_PREKEY_ROTATION, TOKEN_RENEW_MARGIN_MS,
};
use crate::net::{ServerConfig, connect};
use crate::proto_conv;
use crate::store::{Db, HistoryEntry, PrekeyKind, SessionRow, Slot, Store, now_ms};

/// Environment variable of the test hook that simulates a crash between the
/// store commit and the acknowledgement: when set to `1`, `recv` exits the
/// process (status 75) right after committing the first new message.
pub const CRASH_BEFORE_ACK_ENV: &str = "MISSIVE_TEST_CRASH_BEFORE_ACK";

/// Exit status used by the crash hook.
pub const CRASH_EXIT_CODE: i32 = 75;

const META_USERNAME: &str = "username";
const META_DEVICE_ID: &str = "device_id";
const META_REGISTRATION_ID: &str = "registration_id";
const META_IDENTITY: &str = "identity";
const META_TOKEN: &str = "token";
const META_TOKEN_EXPIRY: &str = "token_expires_at_ms";
const META_SIGNED_ID: &str = "current_signed_prekey_id";
const META_KEM_LAST_RESORT_ID: &str = "current_kem_last_resort_id";
const META_ROTATED_AT: &str = "signed_prekeys_rotated_at_ms";
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

/// A safety number with what the user needs to compare it.
#[derive(Clone, Debug)]
pub struct SafetyNumberView {
    /// 12 groups of 5 digits.
    pub groups: Vec<String>,
    /// QR payload.
    pub qr_payload: Vec<u8>,
    /// Whether the user marked the pinned identity verified.
    pub verified: bool,
    /// Whether this is for a changed identity not yet trusted.
    pub for_changed_identity: bool,
}

/// Verification state of a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Pinned on first use, not compared.
    Unverified,
    /// Safety number compared and confirmed.
    Verified,
    /// The identity changed and was not yet accepted.
    Changed,
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verification::Unverified => "unverified",
            Verification::Verified => "verified",
            Verification::Changed => "IDENTITY CHANGED",
        })
    }
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

/// Test hook: when `1`, `send` commits to a different text than it encrypts,
/// as a malicious sender would (end-to-end test of the recipient's check).
pub const FORGE_COMMITMENT_ENV: &str = "MISSIVE_TEST_FORGE_COMMITMENT";

/// A registered account on this machine.
pub struct Client {
    home: PathBuf,
    server: ServerConfig,
    store: Store,
    identity: IdentityKeyPair,
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
        let secret = store
            .get_meta(META_IDENTITY)?
            .ok_or_else(|| ClientError::NotRegistered(home.to_path_buf()))?;
        let identity = IdentityKeyPair::from_secret_bytes(&secret).map_err(key_err)?;
        Ok(Client {
            home: home.to_path_buf(),
            server,
            store,
            identity,
            username,
            device_id,
            channel: None,
            token: None,
            acked: Vec::new(),
            conv: Default::default(),
            attachment_dir: None,
            progress: false,
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
        let identity = IdentityKeyPair::generate(rng);
        let registration_id: u32 = rng.gen_range(1..=16380);
        let (spk, kem) = store.write(|db| {
            db.set_meta(META_IDENTITY, &identity.to_secret_bytes())?;
            db.set_meta_u64(META_REGISTRATION_ID, u64::from(registration_id))?;
            let spk_id = db.take_ids(COUNTER_SIGNED, 1)?;
            let spk = SignedPrekeyPair::generate(&mut OsRng, spk_id, &identity);
            let kem_id = db.take_ids(COUNTER_KEM, 1)?;
            let kem = KemPrekeyPair::generate(&mut OsRng, kem_id, &identity);
            db.put_prekey(PrekeyKind::Signed, spk_id, &spk.to_secret_bytes())?;
            db.put_prekey(PrekeyKind::KemLastResort, kem_id, &kem.to_secret_bytes())?;
            db.set_meta_u64(META_SIGNED_ID, u64::from(spk_id))?;
            db.set_meta_u64(META_KEM_LAST_RESORT_ID, u64::from(kem_id))?;
            db.set_meta_u64(META_ROTATED_AT, now_ms())?;
            Ok((spk, kem))
        })?;
        let (otks, kems) = generate_one_time(
            &mut store,
            &identity,
            ONE_TIME_PREKEY_TARGET,
            ONE_TIME_PREKEY_TARGET,
        )?;
        if let Some(ca) = &server.ca {
            // Later commands trust this CA without --ca, and never a file
            // that happens to sit in the working directory.
            let pem = std::fs::read(ca).map_err(|source| ClientError::CaFile {
                path: ca.clone(),
                source,
            })?;
            crate::store::replace_private(&home.join(crate::store::CA_FILE), &pem, true)?;
        }

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
        let signature = identity.sign(&missive_crypto::transcript::registration(
            &challenge,
            username,
            registration_id,
        ));
        let resp = account
            .register(with_timeout(v1::RegisterRequest {
                username: username.to_owned(),
                challenge,
                identity: Some(proto_conv::identity(identity.public())),
                registration_id,
                signed_prekey: Some(proto_conv::signed_prekey(&spk.public())),
                last_resort_kem_prekey: Some(proto_conv::kem_prekey(&kem.public())),
                one_time_prekeys: otks,
                one_time_kem_prekeys: kems,
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
            username: username.to_owned(),
            device_id: resp.device_id,
            channel: Some(channel),
            token: None,
            acked: Vec::new(),
            conv: Default::default(),
            attachment_dir: None,
            progress: false,
        };
        if let Some(session) = resp.session {
            client.remember_token(&session.token, session.expires_at_ms)?;
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

    pub(crate) fn device(&self) -> u32 {
        self.device_id
    }

    /// Our public identity.
    pub fn public_identity(&self) -> &PublicIdentity {
        self.identity.public()
    }

    // ---- connection and auth ----------------------------------------

    async fn channel(&mut self) -> Result<Channel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let c = connect(&self.server).await?;
        self.channel = Some(c.clone());
        Ok(c)
    }

    fn status_err(&self, s: &Status) -> ClientError {
        ClientError::from_status(s, &self.server.url)
    }

    fn remember_token(&mut self, token: &[u8], expires_at_ms: u64) -> Result<()> {
        let encoded =
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        self.store.write(|db| {
            db.set_meta(META_TOKEN, encoded.as_bytes())?;
            db.set_meta_u64(META_TOKEN_EXPIRY, expires_at_ms)
        })?;
        self.token = Some((encoded, expires_at_ms));
        Ok(())
    }

    fn forget_token(&mut self) -> Result<()> {
        self.token = None;
        self.store.delete_meta(META_TOKEN)
    }

    async fn token(&mut self) -> Result<Zeroizing<String>> {
        let fresh = |exp: u64| exp > now_ms().saturating_add(TOKEN_RENEW_MARGIN_MS);
        if let Some((t, exp)) = &self.token
            && fresh(*exp)
        {
            return Ok(t.clone());
        }
        if let (Some(t), Some(exp)) = (
            self.store.get_meta(META_TOKEN)?,
            self.store.get_meta_u64(META_TOKEN_EXPIRY)?,
        ) && fresh(exp)
        {
            let s = Zeroizing::new(String::from_utf8_lossy(&t).into_owned());
            self.token = Some((s.clone(), exp));
            return Ok(s);
        }
        self.login().await
    }

    async fn login(&mut self) -> Result<Zeroizing<String>> {
        let channel = self.channel().await?;
        let mut account = AccountServiceClient::new(channel);
        let challenge = account
            .get_challenge(with_timeout(v1::GetChallengeRequest {
                username: self.username.clone(),
                purpose: v1::ChallengePurpose::Login as i32,
            }))
            .await
            .map_err(|s| self.login_status(&s))?
            .into_inner()
            .challenge;
        let signature = self.identity.sign(&missive_crypto::transcript::login(
            &challenge,
            &self.username,
            self.device_id,
        ));
        let resp = account
            .login(with_timeout(v1::LoginRequest {
                username: self.username.clone(),
                device_id: self.device_id,
                challenge,
                signature: signature.to_vec(),
            }))
            .await
            .map_err(|s| self.login_status(&s))?
            .into_inner();
        self.remember_token(&resp.token, resp.expires_at_ms)?;
        self.token
            .as_ref()
            .map(|(t, _)| t.clone())
            .ok_or_else(|| ClientError::Protocol("login returned no token".into()))
    }

    fn login_status(&self, s: &Status) -> ClientError {
        match s.code() {
            Code::NotFound | Code::Unauthenticated | Code::PermissionDenied => {
                ClientError::AccountRejected(format!(
                    "login as {} failed: {}",
                    self.username,
                    s.message()
                ))
            }
            _ => self.status_err(s),
        }
    }

    async fn authed<T>(&mut self, msg: T, timeout: bool) -> Result<Request<T>> {
        let token = self.token().await?;
        let mut req = Request::new(msg);
        if timeout {
            req.set_timeout(REQUEST_TIMEOUT);
        }
        let value = format!("Bearer {}", token.as_str())
            .parse()
            .map_err(|_| ClientError::Protocol("token is not valid metadata".into()))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    /// Maps a status from an authenticated call; forgets a rejected token.
    fn authed_err(&mut self, s: &Status) -> ClientError {
        if s.code() == Code::Unauthenticated {
            // The next command logs in again.
            let _ = self.forget_token();
        }
        self.status_err(s)
    }

    // ---- trust --------------------------------------------------------

    /// Pins a first-seen identity, or refuses a changed one (recording it).
    fn check_identity(&mut self, username: &str, identity: &PublicIdentity) -> Result<()> {
        let changed = self.store.write(|db| match db.contact(username)? {
            None => db.pin_contact(username, identity).map(|()| false),
            Some(c) if &c.identity == identity && c.changed_identity.is_none() => Ok(false),
            Some(c) if &c.identity == identity => Ok(true),
            Some(_) => {
                db.mark_identity_changed(username, identity)?;
                Ok(true)
            }
        })?;
        if changed {
            return Err(ClientError::IdentityChanged {
                username: username.to_owned(),
            });
        }
        Ok(())
    }

    /// Verification state of `username`.
    pub fn verification(&self, username: &str) -> Result<Option<Verification>> {
        Ok(self.store.contact(username)?.map(|c| verification_of(&c)))
    }

    /// All contacts with their verification state and pinned fingerprint.
    pub fn contacts(&self) -> Result<Vec<(String, Verification, String)>> {
        Ok(self
            .store
            .contacts()?
            .into_iter()
            .map(|c| {
                let v = verification_of(&c);
                (c.username, v, c.identity.fingerprint().to_string())
            })
            .collect())
    }

    fn known_contact(&self, username: &str) -> Result<(String, crate::store::Contact)> {
        let username = normalize_username(username)?;
        let c = self
            .store
            .contact(&username)?
            .ok_or_else(|| ClientError::UnknownContact(username.clone()))?;
        Ok((username, c))
    }

    fn safety_number_with(
        &self,
        username: &str,
        theirs: &PublicIdentity,
    ) -> missive_crypto::SafetyNumber {
        missive_crypto::safety_number(&self.username, self.identity.public(), username, theirs)
    }

    /// The safety number with `username` (fetching and pinning their
    /// identity first if we never talked).
    pub async fn safety_number(&mut self, username: &str) -> Result<SafetyNumberView> {
        let username = normalize_username(username)?;
        if self.store.contact(&username)?.is_none() {
            let rows = self.fetch_sessions(&username, 0).await?;
            self.store.write(|db| {
                let existing = db.sessions(&username, Slot::Current)?;
                let fresh: Vec<SessionRow> = rows
                    .into_iter()
                    .filter(|r| existing.iter().all(|e| e.device_id != r.device_id))
                    .collect();
                db.save_sessions(&username, &fresh, &[])
            })?;
        }
        let (username, c) = self.known_contact(&username)?;
        let (theirs, for_changed) = match &c.changed_identity {
            Some(changed) => (changed, true),
            None => (&c.identity, false),
        };
        let sn = self.safety_number_with(&username, theirs);
        Ok(SafetyNumberView {
            groups: sn.groups(),
            qr_payload: sn.qr_payload(),
            verified: c.verified && !for_changed,
            for_changed_identity: for_changed,
        })
    }

    /// Checks a safety number typed by the user against the one for `theirs`.
    fn check_typed_number(
        &self,
        username: &str,
        theirs: &PublicIdentity,
        typed: &str,
    ) -> Result<()> {
        let digits: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
        let expected: String = self.safety_number_with(username, theirs).groups().concat();
        if digits.len() != expected.len() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ClientError::SafetyNumberMismatch {
                username: username.to_owned(),
                detail: format!("a safety number has {} digits", expected.len()),
            });
        }
        if !missive_crypto::primitives::ct_eq(digits.as_bytes(), expected.as_bytes()) {
            return Err(ClientError::SafetyNumberMismatch {
                username: username.to_owned(),
                detail: "the key may have changed since you compared".to_owned(),
            });
        }
        Ok(())
    }

    /// Marks `username`'s pinned identity as verified, if `typed` is the
    /// safety number of exactly that identity.
    pub fn verify(&mut self, username: &str, typed: &str) -> Result<()> {
        let (username, c) = self.known_contact(username)?;
        if c.changed_identity.is_some() {
            return Err(ClientError::SafetyNumberMismatch {
                detail: format!(
                    "{username}'s identity key changed since it was pinned; accept the new key with `missive trust {username} SAFETY_NUMBER` or discard it with `missive reject {username}` first"
                ),
                username,
            });
        }
        self.check_typed_number(&username, &c.identity, typed)?;
        let pinned = c.identity;
        self.store.write(|db| {
            // Compare-and-set: the identity must still be the one compared.
            match db.contact(&username)? {
                Some(now) if now.identity == pinned && now.changed_identity.is_none() => {
                    db.set_verified(&username, true)
                }
                _ => Err(ClientError::SafetyNumberMismatch {
                    username: username.clone(),
                    detail: "the key changed while verifying".to_owned(),
                }),
            }
        })
    }

    /// Accepts `username`'s changed identity if `typed` is its safety number.
    /// Returns false if nothing changed.
    pub fn trust(&mut self, username: &str, typed: &str) -> Result<bool> {
        let (username, c) = self.known_contact(username)?;
        let Some(new) = c.changed_identity else {
            return Ok(false);
        };
        self.check_typed_number(&username, &new, typed)?;
        self.store.write(|db| match db.contact(&username)? {
            Some(now) if now.changed_identity.as_ref() == Some(&new) => {
                db.accept_changed_identity(&username, &new).map(|()| true)
            }
            _ => Err(ClientError::SafetyNumberMismatch {
                username: username.clone(),
                detail: "the key changed again while trusting it".to_owned(),
            }),
        })
    }

    /// Discards `username`'s changed identity and its quarantined messages.
    /// Returns false if there was none.
    pub fn reject(&mut self, username: &str) -> Result<bool> {
        let (username, _) = self.known_contact(username)?;
        self.store.write(|db| db.reject_changed_identity(&username))
    }

    // ---- sending ------------------------------------------------------

    async fn fetch_sessions(&mut self, username: &str, device_id: u32) -> Result<Vec<SessionRow>> {
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
        let mut rows = Vec::new();
        for b in &resp.bundles {
            let (device_id, registration_id, bundle) = proto_conv::bundle(b)?;
            self.check_identity(username, &bundle.identity)?;
            let session = Session::initiate(&mut OsRng, &self.identity, &bundle)
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
        if self.store.sessions(&recipient)?.is_empty() {
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
        let content = Zeroizing::new(
            v1::Content {
                body: Some(body),
                attachment: attachment.cloned(),
                franking_key: franking_key.as_bytes().to_vec(),
            }
            .encode_to_vec(),
        );

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
                        .encrypt(&mut OsRng, &content, &commitment)
                        .map_err(key_err)?;
                    envelopes.push(v1::OutgoingEnvelope {
                        device_id: row.device_id,
                        registration_id: row.registration_id,
                        r#type: match out.kind {
                            MessageKind::Prekey => v1::EnvelopeType::PrekeyMessage,
                            MessageKind::Normal => v1::EnvelopeType::Message,
                        } as i32,
                        content: out.bytes,
                        franking_commitment: commitment.to_vec(),
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
                        message_id: message_id.to_vec(),
                        envelopes,
                        online_only,
                        retention_secs,
                    },
                    true,
                )
                .await?;
            match MessageServiceClient::new(channel).send(req).await {
                Ok(resp) => {
                    return Ok(crate::conversation::SentContent {
                        message_id,
                        commitment_hex: hex::encode(commitment),
                        server_timestamp_ms: resp.into_inner().server_timestamp_ms,
                    });
                }
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
    async fn device_update(
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

    // ---- receiving ----------------------------------------------------

    /// Opens the receive stream.
    pub async fn open_stream(&mut self) -> Result<tonic::Streaming<v1::ReceiveResponse>> {
        for attempt in 0..2 {
            let channel = self.channel().await?;
            let req = self.authed(v1::ReceiveRequest {}, false).await?;
            match MessageServiceClient::new(channel).receive(req).await {
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
        let mut events = self.store_envelope(&env)?;
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
        let me = self.username.as_str();
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
                Ok(changed) => {
                    db.release_savepoint()?;
                    if changed {
                        events.push(RecvEvent::IdentityChanged {
                            username: env.sender.clone(),
                        });
                    }
                }
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
            self.conv.absorb(received);
        }
        result
    }

    /// Acknowledges envelopes.
    async fn ack(&mut self, ids: &[u64]) -> Result<()> {
        for chunk in ids.chunks(MAX_ACK_BATCH) {
            let channel = self.channel().await?;
            let req = self
                .authed(
                    v1::AcknowledgeRequest {
                        envelope_ids: chunk.to_vec(),
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
        let mut stream = self.open_stream().await?;
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut backlog_done = false;
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
                    for w in self.send_pending_receipts().await {
                        sink(&RecvEvent::Warning(w));
                    }
                }
                Some(v1::receive_response::Item::QueueEmpty(_)) => backlog_done = true,
                None => {}
            }
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
    async fn deliver_unshown(&mut self, sink: &mut impl FnMut(&RecvEvent)) -> Result<()> {
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
    async fn reconnect_until(
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
            let (otks, kems) = generate_one_time(&mut self.store, &self.identity, n_otk, n_kem)?;
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
        Ok(warning)
    }

    /// Replaces the signed X25519 prekey and the last-resort KEM prekey.
    pub async fn rotate_signed_prekeys(&mut self) -> Result<()> {
        let identity = &self.identity;
        let (spk, kem) = self.store.write(|db| {
            let spk_id = db.take_ids(COUNTER_SIGNED, 1)?;
            let spk = SignedPrekeyPair::generate(&mut OsRng, spk_id, identity);
            let kem_id = db.take_ids(COUNTER_KEM, 1)?;
            let kem = KemPrekeyPair::generate(&mut OsRng, kem_id, identity);
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

    // ---- history, reports, deletion -----------------------------------

    /// The conversation with `username`, oldest first (quarantined messages
    /// from a changed identity are not part of it).
    pub fn history(&self, username: &str) -> Result<Vec<HistoryEntry>> {
        let (username, _) = self.known_contact(username)?;
        self.store.history(&username)
    }

    /// Reports the received message `message_id_hex` (from `from`, needed
    /// when two senders used that id) to the server's moderators with its
    /// franking proof. Returns the report id (of the original, when the
    /// message was edited: see [`Client::report_versions`]).
    pub async fn report(
        &mut self,
        message_id_hex: &str,
        from: Option<&str>,
        reason: &str,
    ) -> Result<u64> {
        let ids = self.report_versions(message_id_hex, from, reason).await?;
        ids.first()
            .copied()
            .ok_or_else(|| ClientError::UnknownMessage(sanitize_line(message_id_hex)))
    }

    /// Reports the received message `message_id_hex` and, when it was
    /// edited, each of its edits (each with its own franking proof), so the
    /// moderators see and can verify its whole edit history. Returns the
    /// report ids, the original's first.
    pub async fn report_versions(
        &mut self,
        message_id_hex: &str,
        from: Option<&str>,
        reason: &str,
    ) -> Result<Vec<u64>> {
        let unknown = || ClientError::UnknownMessage(sanitize_line(message_id_hex));
        let id = hex::decode(message_id_hex.trim()).map_err(|_| unknown())?;
        let from = from.map(normalize_username).transpose()?;
        // Original first, then its edits, each with its franked plaintext.
        let mut found =
            crate::conversation::report_material(&self.store.db(), &id, from.as_deref())?;
        if found.len() > 1 {
            let senders: Vec<String> = found
                .iter()
                .filter_map(|v| v.first().map(|m| m.sender.clone()))
                .collect();
            return Err(ClientError::AmbiguousMessage {
                id: message_id_hex.trim().to_owned(),
                senders: senders.join(", "),
            });
        }
        let versions = found.pop().ok_or_else(unknown)?;
        if let Some(original) = versions.first() {
            let mark = report_mark(original);
            if reported_marks(&self.store.get_meta(META_REPORTED)?).contains(&mark) {
                return Err(ClientError::AlreadyReported(hex::encode(
                    &original.message_id,
                )));
            }
        }
        let mut ids = Vec::with_capacity(versions.len());
        for m in &versions {
            ids.push(self.send_report(m, reason, message_id_hex).await?);
        }
        Ok(ids)
    }

    async fn send_report(
        &mut self,
        m: &crate::store::ReportMaterial,
        reason: &str,
        message_id_hex: &str,
    ) -> Result<u64> {
        let unknown = || ClientError::UnknownMessage(sanitize_line(message_id_hex));
        let mark = report_mark(m);
        let hexd = |s: &str| hex::decode(s).map_err(|_| unknown());
        let franking_key = Zeroizing::new(hexd(&m.sealed.franking_key)?);
        let req = self
            .authed(
                v1::ReportRequest {
                    message_id: m.message_id.clone(),
                    sender: m.sender.clone(),
                    server_timestamp_ms: m.server_ts_ms,
                    plaintext: m.sealed.text.as_bytes().to_vec(),
                    franking_key: franking_key.to_vec(),
                    franking_commitment: hexd(&m.sealed.commitment)?,
                    franking_tag: hexd(&m.sealed.tag)?,
                    reason: reason.chars().take(1000).collect(),
                    attachment: m.attachment.clone(),
                },
                true,
            )
            .await?;
        let channel = self.channel().await?;
        match ReportServiceClient::new(channel).report(req).await {
            Ok(r) => {
                // Remembered (sealed, in one write transaction) so a second
                // report of the same message is refused locally.
                self.store.write(|db| {
                    let mut marks = reported_marks(&db.get_meta(META_REPORTED)?);
                    marks.push(mark.clone());
                    let json = serde_json::to_vec(&marks)
                        .map_err(|e| ClientError::Crypto(format!("cannot encode reports: {e}")))?;
                    db.set_meta(META_REPORTED, &json)
                })?;
                Ok(r.into_inner().report_id)
            }
            Err(s) if s.code() == Code::InvalidArgument => Err(ClientError::Server(format!(
                "the report was refused: {}",
                sanitize_line(s.message())
            ))),
            Err(s) => Err(self.authed_err(&s)),
        }
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

/// Meta key of the messages this account reported: a sealed JSON list of
/// `sender/message-id-hex`.
const META_REPORTED: &str = "reported_messages";

fn report_mark(m: &crate::store::ReportMaterial) -> String {
    format!("{}/{}", m.sender, hex::encode(&m.message_id))
}

fn reported_marks(value: &Option<Zeroizing<Vec<u8>>>) -> Vec<String> {
    value
        .as_ref()
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}

fn verification_of(c: &crate::store::Contact) -> Verification {
    if c.changed_identity.is_some() {
        Verification::Changed
    } else if c.verified {
        Verification::Verified
    } else {
        Verification::Unverified
    }
}

/// Sessions to merge into the stored ones inside a send transaction.
#[derive(Default)]
struct DeviceUpdate {
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

/// Decrypts `env` and stores what it changes, inside the caller's write
/// transaction. Returns whether it revealed a new changed identity.
fn receive_in(
    db: &Db<'_>,
    identity: &IdentityKeyPair,
    me: &str,
    env: &v1::Envelope,
    out: &mut crate::conversation::Received,
) -> std::result::Result<bool, Refusal> {
    let commitment = env.franking_commitment.as_slice();
    if commitment.len() != franking::COMMITMENT_LEN {
        return Err("it carries no valid franking commitment".into());
    }
    if normalize_username(&env.sender).ok().as_deref() != Some(env.sender.as_str()) {
        return Err("its sender name is not a valid username".into());
    }
    let sender = env.sender.as_str();
    let device = env.sender_device;
    let mut changed = false;
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
            Some((pt, slot)) => (pt, (slot == Slot::Pending).then_some(sender_identity)),
            None => {
                if db.base_key_seen(&msg.base_key())? {
                    return Err(
                        "it is a replayed prekey message (its PQXDH base key was already accepted)"
                            .into(),
                    );
                }
                let (session, pt, consumed) = accept(db, identity, &msg, commitment)?;
                let contact = db.contact(sender)?;
                let slot = match &contact {
                    None => {
                        db.pin_contact(sender, &sender_identity)?;
                        Slot::Current
                    }
                    Some(c) if c.identity == sender_identity => Slot::Current,
                    Some(_) => {
                        changed = db.mark_identity_changed(sender, &sender_identity)?;
                        Slot::Pending
                    }
                };
                let registration_id = db
                    .session(sender, device, slot)?
                    .filter(|r| r.session.remote_identity() == &sender_identity)
                    .map_or(0, |r| r.registration_id);
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
                (pt, (slot == Slot::Pending).then_some(sender_identity))
            }
        }
    } else {
        let mut found = None;
        for slot in [Slot::Current, Slot::Pending, Slot::Archived] {
            if let Some(mut row) = db.session(sender, device, slot)?
                && let Ok(pt) = row.session.decrypt_at(&env.content, commitment, now)
            {
                db.put_session(sender, &row, slot)?;
                let q = (slot == Slot::Pending).then(|| row.session.remote_identity().clone());
                found = Some((pt, q));
                break;
            }
        }
        found
            .ok_or("no session with the sending device decrypts it (a replay, or a lost session)")?
    };
    // Every content kind, franked (conversation.rs).
    crate::conversation::receive_content(db, me, env, &plaintext, quarantine.as_ref(), out)?;
    Ok(changed)
}

#[allow(clippy::type_complexity)]
fn accept(
    db: &Db<'_>,
    identity: &IdentityKeyPair,
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
    let (session, pt) =
        Session::accept(identity, &spk, &kem, otk.as_ref(), msg, ad).map_err(|e| e.to_string())?;
    Ok((session, pt, consumed))
}

/// Generates, stores and returns the public halves of one-time prekeys.
fn generate_one_time(
    store: &mut Store,
    identity: &IdentityKeyPair,
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
            let k = KemPrekeyPair::generate(&mut OsRng, id, identity);
            db.put_prekey(PrekeyKind::KemOneTime, id, &k.to_secret_bytes())?;
            kems.push(proto_conv::kem_prekey(&k.public()));
        }
        Ok((otks, kems))
    })
}

/// Removes the store files of `home` (best effort).
fn remove_store_files(home: &Path) {
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

fn register_status(s: &Status, username: &str, url: &str) -> ClientError {
    match s.code() {
        Code::AlreadyExists => ClientError::UsernameTaken(username.to_owned()),
        Code::InvalidArgument => ClientError::Server(format!(
            "registration of {username:?} was refused: {}",
            sanitize_line(s.message())
        )),
        _ => ClientError::from_status(s, url),
    }
}

// ---- attachments (crate::attachments) -------------------------------------

impl Client {
    /// The connection, for the attachment transfers.
    pub(crate) async fn attachment_channel(&mut self) -> Result<Channel> {
        self.channel().await
    }

    /// An authenticated unary attachment request (with the request timeout).
    pub(crate) async fn attachment_request<T>(&mut self, msg: T) -> Result<Request<T>> {
        self.authed(msg, true).await
    }

    /// An authenticated streaming request (no timeout: a large file takes long).
    pub(crate) async fn attachment_stream_request<T>(&mut self, msg: T) -> Result<Request<T>> {
        self.authed(msg, false).await
    }

    /// Maps a status of an attachment call.
    pub(crate) fn attachment_status(&mut self, s: &Status) -> ClientError {
        if s.code() == Code::ResourceExhausted && !s.message().contains("rate") {
            // A quota or size limit, not a rate limit: say what the server said.
            return ClientError::Server(sanitize_line(s.message()));
        }
        if s.code() == Code::NotFound {
            // Final: the blob expired (or never existed); retrying cannot help.
            return ClientError::Attachment(format!(
                "the file is no longer on the server: {}",
                sanitize_line(s.message())
            ));
        }
        self.authed_err(s)
    }
}
