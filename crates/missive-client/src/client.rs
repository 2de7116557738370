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

use crate::error::{ClientError, Result};
use crate::limits::{
    MAX_ACK_BATCH, MAX_TEXT_BYTES, ONE_TIME_PREKEY_REFILL_BELOW, ONE_TIME_PREKEY_TARGET,
    REQUEST_TIMEOUT, SEND_ATTEMPTS, SIGNED_PREKEY_GRACE, SIGNED_PREKEY_ROTATION,
    TOKEN_RENEW_MARGIN_MS,
};
use crate::net::{ServerConfig, connect};
use crate::proto_conv;
use crate::store::{
    AcceptedIncoming, HistoryEntry, IncomingCommit, PrekeyKind, SealedMessage, SessionRow, Store,
    now_ms,
};

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
    /// A contact's identity differs from the pinned one.
    IdentityChanged {
        /// The contact.
        username: String,
    },
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

/// Formats ms since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Decodes a decrypted payload and checks its franking commitment
/// (docs/PROTOCOL.md, "Franking"). A message whose commitment does not match
/// its text is refused: what a recipient sees is always reportable.
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
    let franking_key = FrankingKey::from_bytes(&content.franking_key)
        .map_err(|_| "it carries no valid franking key".to_owned())?;
    if !franking::verify_commitment(&franking_key, message_id, text.body.as_bytes(), commitment) {
        return Err("its franking commitment does not match its text".into());
    }
    Ok((text, franking_key))
}

/// Why an envelope was not accepted.
enum Refusal {
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
            .get_secret(META_IDENTITY)?
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
        store.set_secret(META_IDENTITY, &identity.to_secret_bytes())?;
        store.set_meta_u64(META_REGISTRATION_ID, u64::from(registration_id))?;

        let spk_id = store.take_ids(COUNTER_SIGNED, 1)?;
        let spk = SignedPrekeyPair::generate(rng, spk_id, &identity);
        let kem_id = store.take_ids(COUNTER_KEM, 1)?;
        let kem = KemPrekeyPair::generate(rng, kem_id, &identity);
        store.put_prekey(PrekeyKind::Signed, spk_id, &spk.to_secret_bytes())?;
        store.put_prekey(PrekeyKind::KemLastResort, kem_id, &kem.to_secret_bytes())?;
        store.set_meta_u64(META_SIGNED_ID, u64::from(spk_id))?;
        store.set_meta_u64(META_KEM_LAST_RESORT_ID, u64::from(kem_id))?;
        store.set_meta_u64(META_ROTATED_AT, now_ms())?;
        let (otks, kems) = generate_one_time(
            &mut store,
            &identity,
            ONE_TIME_PREKEY_TARGET,
            ONE_TIME_PREKEY_TARGET,
        )?;

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
        store.set_meta(META_USERNAME, username.as_bytes())?;
        store.set_meta_u64(META_DEVICE_ID, u64::from(resp.device_id))?;
        let mut client = Client {
            home: home.to_path_buf(),
            server: server.clone(),
            store,
            identity,
            username: username.to_owned(),
            device_id: resp.device_id,
            channel: Some(channel),
            token: None,
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

    /// The local store (read access for tools and tests).
    pub fn store(&self) -> &Store {
        &self.store
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
        self.store.set_secret(META_TOKEN, encoded.as_bytes())?;
        self.store.set_meta_u64(META_TOKEN_EXPIRY, expires_at_ms)?;
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
            self.store.get_secret(META_TOKEN)?,
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

    /// Pins a first-seen identity, or refuses a changed one.
    fn check_identity(&mut self, username: &str, identity: &PublicIdentity) -> Result<()> {
        match self.store.contact(username)? {
            None => self.store.pin_contact(username, identity),
            Some(c) if c.changed_identity.is_some() => Err(ClientError::IdentityChanged {
                username: username.to_owned(),
            }),
            Some(c) if &c.identity != identity => {
                self.store.mark_identity_changed(username, identity)?;
                Err(ClientError::IdentityChanged {
                    username: username.to_owned(),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// Verification state of `username`.
    pub fn verification(&self, username: &str) -> Result<Option<Verification>> {
        Ok(self.store.contact(username)?.map(|c| {
            if c.changed_identity.is_some() {
                Verification::Changed
            } else if c.verified {
                Verification::Verified
            } else {
                Verification::Unverified
            }
        }))
    }

    /// All contacts with their verification state and pinned fingerprint.
    pub fn contacts(&self) -> Result<Vec<(String, Verification, String)>> {
        Ok(self
            .store
            .contacts()?
            .into_iter()
            .map(|c| {
                let v = if c.changed_identity.is_some() {
                    Verification::Changed
                } else if c.verified {
                    Verification::Verified
                } else {
                    Verification::Unverified
                };
                (c.username, v, c.identity.fingerprint().to_string())
            })
            .collect())
    }

    /// The safety number with `username` (fetching and pinning their
    /// identity first if we never talked).
    pub async fn safety_number(&mut self, username: &str) -> Result<SafetyNumberView> {
        let username = normalize_username(username)?;
        if self.store.contact(&username)?.is_none() {
            let rows = self.fetch_sessions(&username, 0).await?;
            self.store.save_sessions(&username, &rows, &[])?;
        }
        let c = self
            .store
            .contact(&username)?
            .ok_or_else(|| ClientError::UnknownContact(username.clone()))?;
        let (theirs, for_changed) = match &c.changed_identity {
            Some(changed) => (changed, true),
            None => (&c.identity, false),
        };
        let sn = missive_crypto::safety_number(
            &self.username,
            self.identity.public(),
            &username,
            theirs,
        );
        Ok(SafetyNumberView {
            groups: sn.groups(),
            qr_payload: sn.qr_payload(),
            verified: c.verified && !for_changed,
            for_changed_identity: for_changed,
        })
    }

    /// Marks `username`'s pinned identity as verified.
    pub fn verify(&mut self, username: &str) -> Result<()> {
        let username = normalize_username(username)?;
        let c = self
            .store
            .contact(&username)?
            .ok_or_else(|| ClientError::UnknownContact(username.clone()))?;
        if c.changed_identity.is_some() {
            return Err(ClientError::IdentityChanged { username });
        }
        self.store.set_verified(&username, true)
    }

    /// Accepts `username`'s changed identity. Returns false if nothing changed.
    pub fn trust(&mut self, username: &str) -> Result<bool> {
        let username = normalize_username(username)?;
        let c = self
            .store
            .contact(&username)?
            .ok_or_else(|| ClientError::UnknownContact(username.clone()))?;
        match c.changed_identity {
            Some(new) => {
                self.store.accept_changed_identity(&username, &new)?;
                Ok(true)
            }
            None => Ok(false),
        }
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
    pub async fn send(&mut self, recipient: &str, text: &str) -> Result<Sent> {
        let recipient = normalize_username(recipient)?;
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::MessageTooLong(text.len()));
        }
        if let Some(c) = self.store.contact(&recipient)?
            && c.changed_identity.is_some()
        {
            return Err(ClientError::IdentityChanged {
                username: recipient,
            });
        }
        let mut sessions = self.store.sessions(&recipient)?;
        if sessions.is_empty() {
            sessions = self.fetch_sessions(&recipient, 0).await?;
            self.store.save_sessions(&recipient, &sessions, &[])?;
        }

        let mut message_id = [0u8; 16];
        OsRng.fill_bytes(&mut message_id);
        let franking_key = FrankingKey::generate(&mut OsRng);
        let commitment = if std::env::var(FORGE_COMMITMENT_ENV).as_deref() == Ok("1") {
            franking::commit(&franking_key, &message_id, b"not the text that was sent")
        } else {
            franking::commit(&franking_key, &message_id, text.as_bytes())
        };
        let sent_at_ms = now_ms();
        let content = Zeroizing::new(
            v1::Content {
                body: Some(v1::content::Body::Text(v1::TextMessage {
                    body: text.to_owned(),
                    sent_at_ms,
                })),
                franking_key: franking_key.as_bytes().to_vec(),
            }
            .encode_to_vec(),
        );

        for _attempt in 0..SEND_ATTEMPTS {
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
            // The advanced ratchet is stored before anything leaves, so a
            // crash can never make us reuse a message key.
            self.store.save_sessions(&recipient, &sessions, &[])?;

            let channel = self.channel().await?;
            let req = self
                .authed(
                    v1::SendRequest {
                        recipient: recipient.clone(),
                        message_id: message_id.to_vec(),
                        envelopes,
                    },
                    true,
                )
                .await?;
            match MessageServiceClient::new(channel).send(req).await {
                Ok(resp) => {
                    let server_timestamp_ms = resp.into_inner().server_timestamp_ms;
                    let sealed = SealedMessage {
                        text: text.to_owned(),
                        franking_key: String::new(),
                        commitment: hex::encode(commitment),
                        tag: String::new(),
                        sender_device: self.device_id,
                    };
                    self.store.add_outgoing(
                        &recipient,
                        &message_id,
                        &sealed,
                        sent_at_ms,
                        server_timestamp_ms,
                    )?;
                    return Ok(Sent {
                        id: hex::encode(message_id),
                        server_timestamp_ms,
                    });
                }
                Err(s) if s.code() == Code::NotFound => {
                    return Err(ClientError::UnknownUser(recipient));
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    let mismatch = v1::DeviceMismatch::decode(s.details()).map_err(|_| {
                        ClientError::Protocol(format!(
                            "device list out of date but no details: {}",
                            s.message()
                        ))
                    })?;
                    self.repair_devices(&recipient, &mut sessions, &mismatch)
                        .await?;
                }
                Err(s) => return Err(self.authed_err(&s)),
            }
        }
        Err(ClientError::Server(format!(
            "{recipient}'s devices kept changing during the send; try again"
        )))
    }

    /// Brings `sessions` in line with the server's view of the devices.
    async fn repair_devices(
        &mut self,
        recipient: &str,
        sessions: &mut Vec<SessionRow>,
        mismatch: &v1::DeviceMismatch,
    ) -> Result<()> {
        let extra: Vec<u32> = mismatch.extra_devices.clone();
        sessions.retain(|r| !extra.contains(&r.device_id));
        let mut refetch: Vec<u32> = mismatch
            .missing_devices
            .iter()
            .chain(&mismatch.stale_devices)
            .copied()
            .collect();
        refetch.sort_unstable();
        refetch.dedup();
        for device in refetch {
            for fresh in self.fetch_sessions(recipient, device).await? {
                match sessions.iter_mut().find(|r| r.device_id == fresh.device_id) {
                    // A session we accepted from that device, whose
                    // registration id we only learn now: keep it.
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
        self.store.save_sessions(recipient, sessions, &extra)
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
    /// The message itself is then returned by [`Client::take_unshown`].
    pub async fn process_envelope(&mut self, env: v1::Envelope) -> Result<Vec<RecvEvent>> {
        let mut events = Vec::new();
        let sender = env.sender.clone();
        if self
            .store
            .is_processed(&sender, env.sender_device, &env.message_id)?
        {
            self.ack(&[env.id]).await?;
            return Ok(events);
        }
        let before = self.verification(&sender)?;
        match self.decrypt_envelope(&env) {
            Ok((row, sealed, sent_at_ms, consumed)) => {
                self.store.commit_incoming(&IncomingCommit {
                    sender: &sender,
                    sender_device: env.sender_device,
                    message_id: &env.message_id,
                    accepted: Some(AcceptedIncoming {
                        session: &row,
                        sealed: &sealed,
                        sent_at_ms,
                        server_ts_ms: env.server_timestamp_ms,
                        consumed_prekeys: consumed,
                    }),
                })?;
                if before != Some(Verification::Changed)
                    && self.verification(&sender)? == Some(Verification::Changed)
                {
                    events.push(RecvEvent::IdentityChanged {
                        username: sender.clone(),
                    });
                }
            }
            Err(Refusal::Local(e)) => return Err(e),
            Err(Refusal::Drop(reason)) => {
                self.store.commit_incoming(&IncomingCommit {
                    sender: &sender,
                    sender_device: env.sender_device,
                    message_id: &env.message_id,
                    accepted: None,
                })?;
                events.push(RecvEvent::Dropped {
                    sender: sender.clone(),
                    reason,
                });
            }
        }
        if std::env::var(CRASH_BEFORE_ACK_ENV).as_deref() == Ok("1") {
            std::process::exit(CRASH_EXIT_CODE);
        }
        self.ack(&[env.id]).await?;
        Ok(events)
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

    /// Decrypts on a copy of the session; the caller commits the result.
    #[allow(clippy::type_complexity)]
    fn decrypt_envelope(
        &self,
        env: &v1::Envelope,
    ) -> std::result::Result<(SessionRow, SealedMessage, u64, Vec<(PrekeyKind, u32)>), Refusal>
    {
        let commitment = env.franking_commitment.as_slice();
        if commitment.len() != franking::COMMITMENT_LEN {
            return Err("it carries no valid franking commitment".into());
        }
        let existing = self.store.session(&env.sender, env.sender_device)?;
        let mut consumed = Vec::new();
        let (row, plaintext) = if env.r#type == v1::EnvelopeType::PrekeyMessage as i32 {
            let msg = PrekeyMessage::parse(&env.content).map_err(|e| e.to_string())?;
            let on_existing = existing.and_then(|mut r| {
                (r.session.remote_identity() == msg.sender_identity())
                    .then(|| r.session.decrypt(&env.content, commitment).ok())
                    .flatten()
                    .map(|pt| (r, pt))
            });
            match on_existing {
                Some(found) => found,
                None => {
                    let (session, pt, used) = self.accept(&msg, commitment)?;
                    consumed = used;
                    let registration_id = self
                        .store
                        .session(&env.sender, env.sender_device)
                        .ok()
                        .flatten()
                        .filter(|r| r.session.remote_identity() == session.remote_identity())
                        .map_or(0, |r| r.registration_id);
                    (
                        SessionRow {
                            device_id: env.sender_device,
                            registration_id,
                            session,
                        },
                        pt,
                    )
                }
            }
        } else {
            let mut r = existing.ok_or("no session with the sending device")?;
            let pt = r
                .session
                .decrypt(&env.content, commitment)
                .map_err(|e| e.to_string())?;
            (r, pt)
        };
        let (text, franking_key) = check_content(&plaintext, &env.message_id, commitment)?;
        let sealed = SealedMessage {
            text: text.body.clone(),
            franking_key: hex::encode(franking_key.as_bytes()),
            commitment: hex::encode(commitment),
            tag: hex::encode(&env.franking_tag),
            sender_device: env.sender_device,
        };
        Ok((row, sealed, text.sent_at_ms, consumed))
    }

    #[allow(clippy::type_complexity)]
    fn accept(
        &self,
        msg: &PrekeyMessage,
        ad: &[u8],
    ) -> std::result::Result<(Session, Zeroizing<Vec<u8>>, Vec<(PrekeyKind, u32)>), Refusal> {
        let mut consumed = Vec::new();
        let spk_bytes = self
            .store
            .get_prekey(PrekeyKind::Signed, msg.signed_prekey_id())?
            .ok_or("it names a signed prekey we no longer have")?;
        let spk = SignedPrekeyPair::from_secret_bytes(&spk_bytes).map_err(|e| e.to_string())?;
        let kem_id = msg.kem_prekey_id();
        let kem_bytes = match self.store.get_prekey(PrekeyKind::KemOneTime, kem_id)? {
            Some(b) => {
                consumed.push((PrekeyKind::KemOneTime, kem_id));
                b
            }
            None => self
                .store
                .get_prekey(PrekeyKind::KemLastResort, kem_id)?
                .ok_or("it names a KEM prekey we no longer have (already used?)")?,
        };
        let kem = KemPrekeyPair::from_secret_bytes(&kem_bytes).map_err(|e| e.to_string())?;
        let otk = match msg.one_time_prekey_id() {
            Some(id) => {
                let b = self
                    .store
                    .get_prekey(PrekeyKind::OneTime, id)?
                    .ok_or("it names a one-time prekey that was already used")?;
                consumed.push((PrekeyKind::OneTime, id));
                Some(OneTimePrekeyPair::from_secret_bytes(&b).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let (session, pt) = Session::accept(&self.identity, &spk, &kem, otk.as_ref(), msg, ad)
            .map_err(|e| e.to_string())?;
        Ok((session, pt, consumed))
    }

    /// Incoming messages stored but not yet shown (optionally only from
    /// `from`), marked shown as they are returned.
    pub fn take_unshown(&mut self, from: Option<&str>) -> Result<Vec<HistoryEntry>> {
        let entries: Vec<HistoryEntry> = self
            .store
            .unshown()?
            .into_iter()
            .filter(|e| from.is_none_or(|f| e.contact == f))
            .collect();
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        self.store.mark_shown(&seqs)?;
        Ok(entries)
    }

    /// Receives everything pending, then (with `wait`) new messages until
    /// `wait` has elapsed, calling `sink` for each event.
    pub async fn recv(
        &mut self,
        wait: Option<Duration>,
        mut sink: impl FnMut(&RecvEvent),
    ) -> Result<()> {
        for e in self.take_unshown(None)? {
            sink(&RecvEvent::Message(e));
        }
        let mut stream = self.open_stream().await?;
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut backlog_done = false;
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
            let item = match next {
                Ok(Some(resp)) => resp.item,
                Ok(None) => break,
                Err(s) => return Err(self.authed_err(&s)),
            };
            match item {
                Some(v1::receive_response::Item::Envelope(env)) => {
                    for ev in self.process_envelope(env).await? {
                        sink(&ev);
                    }
                    for e in self.take_unshown(None)? {
                        sink(&RecvEvent::Message(e));
                    }
                }
                Some(v1::receive_response::Item::QueueEmpty(_)) => backlog_done = true,
                None => {}
            }
        }
        if let Err(e) = self.maintain_prekeys().await {
            sink(&RecvEvent::Warning(format!(
                "could not refresh prekeys on the server: {e}"
            )));
        }
        Ok(())
    }

    // ---- prekeys ------------------------------------------------------

    /// Refills one-time prekeys below the threshold and rotates the signed
    /// prekeys on schedule.
    pub async fn maintain_prekeys(&mut self) -> Result<()> {
        let channel = self.channel().await?;
        let mut keys = KeyServiceClient::new(channel);
        let req = self.authed(v1::GetPrekeyCountRequest {}, true).await?;
        let count = match keys.get_prekey_count(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.authed_err(&s)),
        };
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
        Ok(())
    }

    /// Replaces the signed X25519 prekey and the last-resort KEM prekey.
    pub async fn rotate_signed_prekeys(&mut self) -> Result<()> {
        let spk_id = self.store.take_ids(COUNTER_SIGNED, 1)?;
        let spk = SignedPrekeyPair::generate(&mut OsRng, spk_id, &self.identity);
        let kem_id = self.store.take_ids(COUNTER_KEM, 1)?;
        let kem = KemPrekeyPair::generate(&mut OsRng, kem_id, &self.identity);
        self.store
            .put_prekey(PrekeyKind::Signed, spk_id, &spk.to_secret_bytes())?;
        self.store
            .put_prekey(PrekeyKind::KemLastResort, kem_id, &kem.to_secret_bytes())?;
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
        self.store.set_meta_u64(META_SIGNED_ID, u64::from(spk_id))?;
        self.store
            .set_meta_u64(META_KEM_LAST_RESORT_ID, u64::from(kem_id))?;
        self.store.set_meta_u64(META_ROTATED_AT, now)?;
        // Old keys stay for in-flight messages, then go.
        let keep_ms = u64::try_from((SIGNED_PREKEY_ROTATION + SIGNED_PREKEY_GRACE).as_millis())
            .unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(keep_ms);
        self.store
            .prune_signed(PrekeyKind::Signed, spk_id, cutoff)?;
        self.store
            .prune_signed(PrekeyKind::KemLastResort, kem_id, cutoff)
    }

    // ---- history, reports, deletion -----------------------------------

    /// The conversation with `username`, oldest first.
    pub fn history(&self, username: &str) -> Result<Vec<HistoryEntry>> {
        let username = normalize_username(username)?;
        self.store.history(&username)
    }

    /// Reports the received message `message_id_hex` to the server's
    /// moderators with its franking proof. Returns the report id.
    pub async fn report(&mut self, message_id_hex: &str, reason: &str) -> Result<u64> {
        let unknown = || ClientError::UnknownMessage(message_id_hex.to_owned());
        let id = hex::decode(message_id_hex.trim()).map_err(|_| unknown())?;
        let m = self.store.report_material(&id)?.ok_or_else(unknown)?;
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
                },
                true,
            )
            .await?;
        let channel = self.channel().await?;
        match ReportServiceClient::new(channel).report(req).await {
            Ok(r) => Ok(r.into_inner().report_id),
            Err(s) if s.code() == Code::InvalidArgument => Err(ClientError::Server(format!(
                "the report was refused: {}",
                s.message()
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

/// Generates, stores and returns the public halves of one-time prekeys.
fn generate_one_time(
    store: &mut Store,
    identity: &IdentityKeyPair,
    n_otk: u32,
    n_kem: u32,
) -> Result<(Vec<v1::OneTimePrekey>, Vec<v1::KemPrekey>)> {
    let n_otk = n_otk.min(ONE_TIME_PREKEY_TARGET);
    let n_kem = n_kem.min(ONE_TIME_PREKEY_TARGET);
    let first_otk = store.take_ids(COUNTER_ONE_TIME, n_otk)?;
    let first_kem = store.take_ids(COUNTER_KEM, n_kem)?;
    let mut otks = Vec::new();
    let mut kems = Vec::new();
    store.begin()?;
    for id in first_otk..first_otk + n_otk {
        let k = OneTimePrekeyPair::generate(&mut OsRng, id);
        store.put_prekey(PrekeyKind::OneTime, id, &k.to_secret_bytes())?;
        otks.push(proto_conv::one_time_prekey(&k.public()));
    }
    for id in first_kem..first_kem + n_kem {
        let k = KemPrekeyPair::generate(&mut OsRng, id, identity);
        store.put_prekey(PrekeyKind::KemOneTime, id, &k.to_secret_bytes())?;
        kems.push(proto_conv::kem_prekey(&k.public()));
    }
    store.commit()?;
    Ok((otks, kems))
}

/// Removes the store files of `home` (best effort).
fn remove_store_files(home: &Path) {
    for f in [
        crate::store::DB_FILE,
        crate::store::KEY_FILE,
        crate::store::SALT_FILE,
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
            s.message()
        )),
        _ => ClientError::from_status(s, url),
    }
}
