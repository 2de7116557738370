//! Simulated devices and the send → durable → streamed → decrypted →
//! acknowledged workload, for the relay (real registration, PQXDH sessions and
//! Double Ratchet encryption, franking) and for the bare-tonic baseline.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    Address, DeviceEntry, DeviceList, IdentityKeyPair, KemPrekeyPair, KemPrekeyPublic,
    OneTimePrekeyPair, OneTimePrekeyPublic, PrekeyBundle, PrekeyMessage, PrekeyOwner,
    PublicIdentity, Session, SignedDeviceList, SignedPrekeyPair, SignedPrekeyPublic, transcript,
};
use missive_proto::v1::account_service_client::AccountServiceClient;
use missive_proto::v1::key_service_client::KeyServiceClient;
use missive_proto::v1::message_service_client::MessageServiceClient;
use missive_proto::v1::{self, receive_response};
use prost::Message as _;
use rand::rngs::{OsRng, StdRng};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use tokio::sync::{Barrier, Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use crate::baseline::DEVICE_HEADER;
use crate::stats::RunResult;

/// Which server the devices talk to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Relay,
    Baseline,
}

/// Workload shape.
#[derive(Clone, Debug)]
pub(crate) struct Workload {
    pub(crate) messages: usize,
    pub(crate) payload: usize,
    pub(crate) window: usize,
    /// Total offered load in messages per second; `None` is closed loop.
    pub(crate) rate: Option<f64>,
    pub(crate) deadline: Duration,
    /// Devices per account (consecutive in the device list).
    pub(crate) devices_per_account: usize,
}

/// How long a call is retried through a node restart before the run gives up.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// First pause between retries; doubled up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A status as one sentence with its transport cause (never a Debug dump).
pub(crate) fn sentence(status: &Status) -> String {
    let mut text = format!("the server answered {:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(&format!(" ({})", status.message()));
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Failures a node restart causes; the call is repeated.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Runs `call` until it succeeds, retrying what a restart causes for up to
/// [`RETRY_FOR`]; returns the value and how many attempts failed.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<(T, u64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut pause = FIRST_RETRY_PAUSE;
    let mut failed = 0;
    loop {
        match call().await {
            Ok(value) => return Ok((value, failed)),
            Err(status) if retryable(&status) && started.elapsed() < RETRY_FOR => {
                failed += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            Err(status) if retryable(&status) => {
                bail!(
                    "{what} still failed after {} s of retries: {}",
                    RETRY_FOR.as_secs(),
                    sentence(&status)
                )
            }
            Err(status) => bail!("{what} failed: {}", sentence(&status)),
        }
    }
}

/// Opens one HTTP/2 connection over TLS, trusting `ca`.
pub(crate) async fn connect(url: &str, ca: &Certificate) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name(SERVER_NAME),
        )?
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .with_context(|| format!("could not connect to {url}"))
}

/// The name the nodes' TLS certificates are verified for (and that the
/// login and registration transcripts name).
const SERVER_NAME: &str = "localhost";

struct Keys {
    identity: IdentityKeyPair,
    signed: SignedPrekeyPair,
    kem: KemPrekeyPair,
    one_time: OneTimePrekeyPair,
    registration_id: u32,
}

/// A pairwise session with one device of another (or this) account, and the
/// registration id the sender quotes for it.
struct PeerSession {
    session: Session,
    registration_id: u32,
}

/// The crypto state a device shares between its send and receive tasks: one
/// session per (username, device id) it talks with.
struct Crypto {
    sessions: BTreeMap<(String, u32), PeerSession>,
    rng: StdRng,
}

/// One message sealed for a peer account and for the sender's other devices.
pub(crate) struct Sealed {
    message_id: Vec<u8>,
    /// One envelope per device of the peer account.
    to_peer: Vec<v1::OutgoingEnvelope>,
    /// One envelope per other device of the sender's own account (none with
    /// one device per account, and then no second Send).
    to_own: Vec<v1::OutgoingEnvelope>,
}

/// The account key of an account being set up, and its list so far.
struct AccountKey {
    key: IdentityKeyPair,
    list: DeviceList,
}

/// One simulated device, on a connection of its own or shared with others.
pub(crate) struct Device {
    /// The account's username (every device of an account has the same).
    pub(crate) name: String,
    pub(crate) device_id: u32,
    channel: Channel,
    auth: (&'static str, MetadataValue<tonic::metadata::Ascii>),
    keys: Option<Keys>,
    crypto: Mutex<Crypto>,
    /// Sends repeated because an attempt failed (a node restart).
    resent: AtomicU64,
    /// Envelopes and encoded SendRequest bytes sent in the measured phase
    /// (first attempts only).
    envelopes_sent: AtomicU64,
    request_bytes: AtomicU64,
    /// Device 1 of a registered account: the account key and the signed
    /// device list it registered with (the group mode pins these).
    account: Option<(PublicIdentity, SignedDeviceList)>,
}

/// A registered device's prekeys, for the register and add-device requests.
fn prekeys(
    rng: &mut OsRng,
    identity: IdentityKeyPair,
    owner: &PrekeyOwner,
    registration_id: u32,
) -> Keys {
    Keys {
        signed: SignedPrekeyPair::generate(rng, 1, &identity, owner),
        kem: KemPrekeyPair::generate(rng, 1, &identity, owner),
        one_time: OneTimePrekeyPair::generate(rng, 1),
        identity,
        registration_id,
    }
}

fn wire_signed_prekey(keys: &Keys) -> v1::SignedPrekey {
    let spk = keys.signed.public();
    v1::SignedPrekey {
        id: spk.id,
        public_key: spk.public_key.to_vec(),
        signature: spk.signature.to_vec(),
    }
}

fn wire_kem_prekey(keys: &Keys) -> v1::KemPrekey {
    let kpk = keys.kem.public();
    v1::KemPrekey {
        id: kpk.id,
        public_key: kpk.public_key.clone(),
        signature: kpk.signature.to_vec(),
    }
}

fn wire_one_time_prekeys(keys: &Keys) -> Vec<v1::OneTimePrekey> {
    let opk = keys.one_time.public();
    vec![v1::OneTimePrekey {
        id: opk.id,
        public_key: opk.public_key.to_vec(),
    }]
}

fn bearer(token: &[u8]) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    let bearer = format!(
        "Bearer {}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    );
    Ok(MetadataValue::try_from(bearer)?)
}

impl Device {
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(self.auth.0, self.auth.1.clone());
        request
    }

    /// A MessageService client on this device's connection taking items of
    /// up to `max` bytes.
    pub(crate) fn messages_client(&self, max: usize) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(self.channel.clone()).max_decoding_message_size(max)
    }

    fn messages(&self) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(self.channel.clone()).max_decoding_message_size(256 * 1024)
    }

    fn new(
        name: String,
        device_id: u32,
        channel: Channel,
        auth: (&'static str, MetadataValue<tonic::metadata::Ascii>),
        keys: Option<Keys>,
    ) -> Self {
        Device {
            name,
            device_id,
            channel,
            auth,
            keys,
            crypto: Mutex::new(Crypto {
                sessions: BTreeMap::new(),
                rng: StdRng::from_entropy(),
            }),
            resent: AtomicU64::new(0),
            envelopes_sent: AtomicU64::new(0),
            request_bytes: AtomicU64::new(0),
            account: None,
        }
    }

    /// The account key and signed device list a device 1 registered with.
    pub(crate) fn account(&self) -> Option<&(PublicIdentity, SignedDeviceList)> {
        self.account.as_ref()
    }

    /// A copy of this relay device's identity key (its MLS signature key).
    pub(crate) fn identity_copy(&self) -> anyhow::Result<IdentityKeyPair> {
        let keys = self
            .keys
            .as_ref()
            .context("a baseline device has no keys")?;
        IdentityKeyPair::from_secret_bytes(&keys.identity.to_secret_bytes())
            .map_err(|e| anyhow!("copying {}'s identity: {e}", self.label()))
    }

    /// The connection this device uses.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A baseline device: no account, named by a header.
    pub(crate) fn baseline(channel: Channel, name: String) -> anyhow::Result<Self> {
        let value = MetadataValue::try_from(name.as_str())?;
        Ok(Device::new(name, 1, channel, (DEVICE_HEADER, value), None))
    }

    /// Registers an account with one device per channel in `channels`:
    /// device 1 registers (list version 1), then each further device is
    /// named in the next list version, which device 1 publishes, and joins
    /// with AddDevice, as a primary device links a new one.
    pub(crate) async fn register_account(
        channels: Vec<Channel>,
        name: String,
    ) -> anyhow::Result<Vec<Self>> {
        let mut channels = channels.into_iter();
        let first = channels.next().context("an account needs a device")?;
        let (primary, mut account) = Device::register(first, name).await?;
        let mut devices = vec![primary];
        for (channel, device_id) in channels.zip(2..) {
            let device = devices[0]
                .add_device(channel, &mut account, device_id)
                .await?;
            devices.push(device);
        }
        Ok(devices)
    }

    /// A relay device 1: generates the account key, its identity and
    /// prekeys, and registers with list version 1.
    async fn register(channel: Channel, name: String) -> anyhow::Result<(Self, AccountKey)> {
        let mut rng = OsRng;
        let account = IdentityKeyPair::generate(&mut rng);
        let identity = IdentityKeyPair::generate(&mut rng);
        let owner = PrekeyOwner {
            account: account.public().clone(),
            device_id: 1,
        };
        let registration_id = rng.gen_range(1..=16380);
        let list = DeviceList {
            username: name.clone(),
            version: 1,
            timestamp_ms: 0,
            devices: vec![DeviceEntry::link(
                &identity,
                &name,
                account.public(),
                1,
                registration_id,
            )],
        };
        let signed_list = list
            .sign(&account)
            .map_err(|e| anyhow!("signing {name}'s device list: {e}"))?;
        let device_key = identity.public().signing_key().to_vec();
        let keys = prekeys(&mut rng, identity, &owner, registration_id);

        let mut accounts = AccountServiceClient::new(channel.clone());
        let challenge = accounts
            .get_challenge(v1::GetChallengeRequest {
                username: name.clone(),
                purpose: v1::ChallengePurpose::Register as i32,
            })
            .await
            .map_err(|s| anyhow!("asking a challenge for {name} failed: {}", sentence(&s)))?
            .into_inner()
            .challenge;
        let signature = account.sign(&transcript::registration(
            &challenge,
            SERVER_NAME,
            &name,
            registration_id,
        ));
        let response = accounts
            .register(v1::RegisterRequest {
                username: name.clone(),
                challenge,
                identity: Some(v1::PublicIdentity {
                    signing_key: account.public().signing_key().to_vec(),
                }),
                registration_id,
                signed_prekey: Some(wire_signed_prekey(&keys)),
                last_resort_kem_prekey: Some(wire_kem_prekey(&keys)),
                one_time_prekeys: wire_one_time_prekeys(&keys),
                one_time_kem_prekeys: Vec::new(),
                signature: signature.to_vec(),
                device_identity: Some(v1::PublicIdentity {
                    signing_key: device_key,
                }),
                signed_device_list: signed_list.to_bytes(),
                server_name: SERVER_NAME.to_owned(),
            })
            .await
            .map_err(|s| anyhow!("registering {name} failed: {}", sentence(&s)))?
            .into_inner();
        let token = response
            .session
            .context("registration returned no token")?
            .token;
        let mut device = Device::new(
            name,
            1,
            channel,
            ("authorization", bearer(&token)?),
            Some(keys),
        );
        device.account = Some((account.public().clone(), signed_list));
        Ok((device, AccountKey { key: account, list }))
    }

    /// On device 1 (which holds the account key): names a new device
    /// `device_id` in the next list version, publishes it, and lets the new
    /// device join with AddDevice on `channel`.
    async fn add_device(
        &self,
        channel: Channel,
        account: &mut AccountKey,
        device_id: u32,
    ) -> anyhow::Result<Self> {
        let name = self.name.clone();
        let mut rng = OsRng;
        let identity = IdentityKeyPair::generate(&mut rng);
        let owner = PrekeyOwner {
            account: account.key.public().clone(),
            device_id,
        };
        let registration_id = rng.gen_range(1..=16380);
        let mut next = account.list.clone();
        next.version += 1;
        next.devices.push(DeviceEntry::link(
            &identity,
            &name,
            account.key.public(),
            device_id,
            registration_id,
        ));
        let signed_list = next
            .sign(&account.key)
            .map_err(|e| anyhow!("signing {name}'s device list: {e}"))?;
        KeyServiceClient::new(self.channel.clone())
            .publish_device_list(self.request(v1::PublishDeviceListRequest {
                signed_device_list: signed_list.to_bytes(),
            }))
            .await
            .map_err(|s| {
                anyhow!(
                    "publishing {name}'s device list version {} failed: {}",
                    next.version,
                    sentence(&s)
                )
            })?;
        account.list = next;

        let mut accounts = AccountServiceClient::new(channel.clone());
        let challenge = accounts
            .get_challenge(v1::GetChallengeRequest {
                username: name.clone(),
                purpose: v1::ChallengePurpose::AddDevice as i32,
            })
            .await
            .map_err(|s| {
                anyhow!(
                    "asking an add-device challenge for {name} failed: {}",
                    sentence(&s)
                )
            })?
            .into_inner()
            .challenge;
        let signature = identity.sign(&transcript::add_device(
            &challenge,
            SERVER_NAME,
            &name,
            device_id,
            registration_id,
        ));
        let keys = prekeys(&mut rng, identity, &owner, registration_id);
        let response = accounts
            .add_device(v1::AddDeviceRequest {
                username: name.clone(),
                challenge,
                device_id,
                registration_id,
                signed_prekey: Some(wire_signed_prekey(&keys)),
                last_resort_kem_prekey: Some(wire_kem_prekey(&keys)),
                one_time_prekeys: wire_one_time_prekeys(&keys),
                one_time_kem_prekeys: Vec::new(),
                server_name: SERVER_NAME.to_owned(),
                signature: signature.to_vec(),
                // `signed_device_list` is for recovery only: device 1 published
                // the list naming this device above.
                ..Default::default()
            })
            .await
            .map_err(|s| {
                anyhow!(
                    "adding device {device_id} to {name} failed: {}",
                    sentence(&s)
                )
            })?
            .into_inner();
        if response.device_id != device_id {
            bail!(
                "adding device {device_id} to {name}: the server answered device {}",
                response.device_id
            );
        }
        let token = response
            .session
            .context("AddDevice returned no token")?
            .token;
        Ok(Device::new(
            name,
            device_id,
            channel,
            ("authorization", bearer(&token)?),
            Some(keys),
        ))
    }

    fn address(&self) -> Address {
        Address::new(self.name.clone(), self.device_id)
    }

    /// Opens the receive stream and waits for the end of the backlog.
    async fn open_stream(
        &self,
    ) -> anyhow::Result<(Streaming<v1::ReceiveResponse>, Vec<v1::Envelope>)> {
        let mut stream = self
            .messages()
            .receive(self.request(v1::ReceiveRequest {}))
            .await
            .map_err(|s| {
                anyhow!(
                    "opening {}'s receive stream failed: {}",
                    self.label(),
                    sentence(&s)
                )
            })?
            .into_inner();
        let mut backlog = Vec::new();
        loop {
            let item = stream
                .message()
                .await
                .map_err(|s| anyhow!("{}'s receive stream failed: {}", self.label(), sentence(&s)))?
                .context("the receive stream closed before the end of the backlog")?;
            match item.item {
                Some(receive_response::Item::Envelope(e)) => backlog.push(e),
                Some(receive_response::Item::QueueEmpty(_)) => return Ok((stream, backlog)),
                Some(receive_response::Item::GroupMessage(_)) | None => {}
            }
        }
    }

    /// `name` for device 1 (as before devices per account), else `name/id`.
    pub(crate) fn label(&self) -> String {
        if self.device_id == 1 {
            self.name.clone()
        } else {
            format!("{}/{}", self.name, self.device_id)
        }
    }

    /// Opens the receive stream and keeps it, for the connection-scale mode.
    pub(crate) async fn hold_stream(&self) -> anyhow::Result<Streaming<v1::ReceiveResponse>> {
        Ok(self.open_stream().await?.0)
    }

    /// Encrypts (relay) or frames (baseline) one benchmark message for every
    /// device of `peer` and every other device of this account.
    fn seal(&self, peer: &str, body: String) -> anyhow::Result<Sealed> {
        let mut crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let mut message_id = vec![0u8; 16];
        crypto.rng.fill_bytes(&mut message_id);
        if self.keys.is_none() {
            return Ok(Sealed {
                message_id,
                to_peer: vec![v1::OutgoingEnvelope {
                    device_id: 1,
                    registration_id: 0,
                    r#type: v1::EnvelopeType::Message as i32,
                    content: body.into_bytes(),
                    franking_commitment: vec![0; 32],
                }],
                to_own: Vec::new(),
            });
        }
        let franking_key = FrankingKey::generate(&mut crypto.rng);
        let commitment = franking::commit(&franking_key, &message_id, body.as_bytes());
        let mut content = v1::Content {
            body: Some(v1::content::Body::Text(v1::TextMessage {
                body,
                sent_at_ms: 0,
                ..Default::default()
            })),
            attachment: None,
            franking_key: franking_key.as_bytes().to_vec(),
            sender_devices: None,
            sent_to: String::new(),
        };
        let for_peer = content.encode_to_vec();
        let Crypto { sessions, rng } = &mut *crypto;
        let to_peer = encrypt_for(sessions, rng, peer, None, &for_peer, &commitment)?;
        if to_peer.is_empty() {
            bail!("{} has no session with {peer}", self.label());
        }
        // The copy for this account's other devices says whom it was sent to,
        // as the client's does.
        let to_own = if sessions.keys().any(|(user, _)| *user == self.name) {
            content.sent_to = peer.to_owned();
            let for_own = content.encode_to_vec();
            encrypt_for(
                sessions,
                rng,
                &self.name,
                Some(self.device_id),
                &for_own,
                &commitment,
            )?
        } else {
            Vec::new()
        };
        Ok(Sealed {
            message_id,
            to_peer,
            to_own,
        })
    }

    /// Decrypts (relay) or reads (baseline) one envelope back to its text.
    fn open(&self, envelope: &v1::Envelope) -> anyhow::Result<String> {
        let Some(keys) = &self.keys else {
            return Ok(String::from_utf8(envelope.content.clone())?);
        };
        let mut crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let ad = &envelope.franking_commitment;
        let from = (envelope.sender.clone(), envelope.sender_device);
        let plaintext = match crypto.sessions.get_mut(&from) {
            Some(peer) => peer
                .session
                .decrypt(&envelope.content, ad)
                .map_err(|e| anyhow!("decrypt: {e}"))?,
            None => {
                let message = PrekeyMessage::parse(&envelope.content)
                    .map_err(|e| anyhow!("prekey message: {e}"))?;
                let one_time = (message.one_time_prekey_id() == Some(keys.one_time.id()))
                    .then_some(&keys.one_time);
                let sender = Address::new(envelope.sender.clone(), envelope.sender_device);
                let (session, plaintext) = Session::accept(
                    &keys.identity,
                    &self.address(),
                    &sender,
                    &keys.signed,
                    &keys.kem,
                    one_time,
                    &message,
                    ad,
                )
                .map_err(|e| anyhow!("accept: {e}"))?;
                crypto.sessions.insert(
                    from,
                    PeerSession {
                        session,
                        // Learnt from the in-process device (`learn_registration_ids`).
                        registration_id: 0,
                    },
                );
                plaintext
            }
        };
        let content = v1::Content::decode(plaintext.as_slice())?;
        let Some(v1::content::Body::Text(text)) = content.body else {
            bail!("not a text message");
        };
        let franking_key =
            FrankingKey::from_bytes(&content.franking_key).map_err(|e| anyhow!("{e}"))?;
        if !franking::verify_commitment(
            &franking_key,
            &envelope.message_id,
            text.body.as_bytes(),
            ad,
        ) {
            bail!("franking commitment does not match");
        }
        Ok(text.body)
    }

    async fn send(&self, peer: &str, body: String) -> anyhow::Result<()> {
        let sealed = self.seal(peer, body)?;
        self.deliver(peer, sealed).await
    }

    /// Sends one sealed message: one Send to the peer account and, with
    /// several devices per account, a second to this account (the server
    /// skips the sending device), each repeated unchanged (same message id,
    /// so the relay and the receivers can tell it is the same) until a node
    /// answers.
    async fn deliver(&self, peer: &str, sealed: Sealed) -> anyhow::Result<()> {
        let Sealed {
            message_id,
            to_peer,
            to_own,
        } = sealed;
        self.deliver_to(peer, message_id.clone(), to_peer).await?;
        if !to_own.is_empty() {
            let own = self.name.clone();
            self.deliver_to(&own, message_id, to_own).await?;
        }
        Ok(())
    }

    async fn deliver_to(
        &self,
        recipient: &str,
        message_id: Vec<u8>,
        envelopes: Vec<v1::OutgoingEnvelope>,
    ) -> anyhow::Result<()> {
        let request = v1::SendRequest {
            recipient: recipient.to_owned(),
            message_id,
            envelopes,
            ..Default::default()
        };
        self.envelopes_sent
            .fetch_add(request.envelopes.len() as u64, Ordering::Relaxed);
        self.request_bytes
            .fetch_add(request.encoded_len() as u64, Ordering::Relaxed);
        let what = format!("sending from {} to {recipient}", self.label());
        let ((), failed) = retrying(&what, || {
            let request = self.request(request.clone());
            let mut client = self.messages();
            async move { client.send(request).await.map(|_| ()) }
        })
        .await?;
        self.resent.fetch_add(failed, Ordering::Relaxed);
        Ok(())
    }

    /// Acknowledges on the relay and on the baseline alike, so both see the
    /// same call pattern (send, stream, acknowledge).
    async fn acknowledge(&self, ids: Vec<u64>) -> anyhow::Result<()> {
        let what = format!("acknowledging for {}", self.label());
        retrying(&what, || {
            let request = self.request(v1::AcknowledgeRequest {
                envelope_ids: ids.clone(),
                group_acks: Vec::new(),
            });
            let mut client = self.messages();
            async move { client.acknowledge(request).await.map(|_| ()) }
        })
        .await?;
        Ok(())
    }

    /// Fetches the bundles of `username`'s devices this device has no session
    /// with (all at once: device id 0) and initiates those sessions.
    async fn initiate_missing(&self, username: &str, want: usize) -> anyhow::Result<()> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        if self.sessions_with(username)? >= want {
            return Ok(());
        }
        let bundles = KeyServiceClient::new(self.channel.clone())
            .get_bundles(self.request(v1::GetBundlesRequest {
                username: username.to_owned(),
                device_id: 0,
            }))
            .await
            .map_err(|s| anyhow!("fetching {username}'s bundles failed: {}", sentence(&s)))?
            .into_inner();
        if bundles.bundles.is_empty() {
            bail!("{username} has no bundle");
        }
        let mut crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let Crypto { sessions, rng } = &mut *crypto;
        for wire in &bundles.bundles {
            let key = (username.to_owned(), wire.device_id);
            if (username == self.name && wire.device_id == self.device_id)
                || sessions.contains_key(&key)
            {
                continue;
            }
            let bundle = bundle_from_wire(wire, &bundles.signed_device_list)?;
            initiate(
                sessions,
                rng,
                keys,
                &self.address(),
                key,
                wire.registration_id,
                &bundle,
            )?;
        }
        Ok(())
    }
}

impl Device {
    fn sessions_with(&self, username: &str) -> anyhow::Result<usize> {
        let crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        Ok(crypto
            .sessions
            .keys()
            .filter(|(u, _)| u == username)
            .count())
    }

    /// Sets the registration id of every session this device accepted from
    /// the device in `devices` (as the driver knows them in-process; the
    /// bench does not fetch device lists).
    fn learn_registration_ids(&self, devices: &[&Arc<Device>]) -> anyhow::Result<()> {
        let mut crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        for ((user, device_id), peer) in crypto.sessions.iter_mut() {
            if let Some(other) = devices
                .iter()
                .find(|d| d.name == *user && d.device_id == *device_id)
            {
                peer.registration_id = other.keys.as_ref().map_or(0, |k| k.registration_id);
            }
        }
        Ok(())
    }
}

/// Runs PQXDH as `local` with the device `key` names, from its `bundle`.
fn initiate(
    sessions: &mut BTreeMap<(String, u32), PeerSession>,
    rng: &mut StdRng,
    keys: &Keys,
    local: &Address,
    key: (String, u32),
    registration_id: u32,
    bundle: &PrekeyBundle,
) -> anyhow::Result<()> {
    let session = Session::initiate(rng, &keys.identity, local, &key.0, bundle)
        .map_err(|e| anyhow!("initiate: {e}"))?;
    sessions.insert(
        key,
        PeerSession {
            session,
            registration_id,
        },
    );
    Ok(())
}

/// Encrypts `content` once per session with a device of `username` (but
/// `skip`), in device order.
fn encrypt_for(
    sessions: &mut BTreeMap<(String, u32), PeerSession>,
    rng: &mut StdRng,
    username: &str,
    skip: Option<u32>,
    content: &[u8],
    commitment: &[u8],
) -> anyhow::Result<Vec<v1::OutgoingEnvelope>> {
    let mut envelopes = Vec::new();
    for ((user, device_id), peer) in sessions.iter_mut() {
        if user != username || Some(*device_id) == skip {
            continue;
        }
        let out = peer
            .session
            .encrypt(rng, content, commitment)
            .map_err(|e| anyhow!("encrypt: {e}"))?;
        let kind = match out.kind {
            missive_crypto::MessageKind::Prekey => v1::EnvelopeType::PrekeyMessage,
            missive_crypto::MessageKind::Normal => v1::EnvelopeType::Message,
        };
        envelopes.push(v1::OutgoingEnvelope {
            device_id: *device_id,
            registration_id: peer.registration_id,
            r#type: kind as i32,
            content: out.bytes,
            franking_commitment: commitment.to_vec(),
        });
    }
    Ok(envelopes)
}

/// The bench trusts the relay's list (it measures the relay, not trust).
fn bundle_from_wire(
    bundle: &v1::PrekeyBundle,
    signed_device_list: &[u8],
) -> anyhow::Result<PrekeyBundle> {
    let list = SignedDeviceList::from_bytes(signed_device_list)
        .map_err(|e| anyhow!("device list: {e}"))?;
    let identity = bundle
        .identity
        .as_ref()
        .context("bundle without identity")?;
    let spk = bundle
        .signed_prekey
        .as_ref()
        .context("bundle without signed prekey")?;
    let kpk = bundle
        .kem_prekey
        .as_ref()
        .context("bundle without KEM prekey")?;
    let err = |e: missive_crypto::KeyError| anyhow!("{e}");
    Ok(PrekeyBundle {
        identity: PublicIdentity::from_bytes(&identity.signing_key).map_err(err)?,
        owner: PrekeyOwner {
            account: list.account().clone(),
            device_id: bundle.device_id,
        },
        signed_prekey: SignedPrekeyPublic {
            id: spk.id,
            public_key: spk.public_key.as_slice().try_into()?,
            signature: spk.signature.as_slice().try_into()?,
        },
        kem_prekey: KemPrekeyPublic {
            id: kpk.id,
            public_key: kpk.public_key.clone(),
            signature: kpk.signature.as_slice().try_into()?,
        },
        one_time_prekey: bundle
            .one_time_prekey
            .as_ref()
            .map(|o| -> anyhow::Result<_> {
                Ok(OneTimePrekeyPublic {
                    id: o.id,
                    public_key: o.public_key.as_slice().try_into()?,
                })
            })
            .transpose()?,
    })
}

/// Sets up every pairwise session between the devices of two accounts (and
/// within each), so the measured phase uses established sessions (normal
/// ratchet messages) in both directions. In turn, each device initiates
/// sessions with the devices it has none with and sends one message to the
/// other account (and a copy to its own other devices), which every other
/// device receives and decrypts; a device later in turn so replies on every
/// session an earlier one initiated. With one device per account this is
/// PQXDH from `a` to `b`, a message, and a reply.
pub(crate) async fn pair_up(a: &[Arc<Device>], b: &[Arc<Device>]) -> anyhow::Result<()> {
    if a.iter().chain(b).any(|d| d.keys.is_none()) {
        return Ok(());
    }
    let (Some(a_name), Some(b_name)) = (a.first().map(|d| &d.name), b.first().map(|d| &d.name))
    else {
        bail!("an account without devices");
    };
    let all: Vec<&Arc<Device>> = a.iter().chain(b).collect();
    for (turn, device) in all.iter().enumerate() {
        let (own, peer) = if turn < a.len() {
            (a_name, b_name)
        } else {
            (b_name, a_name)
        };
        let (own_len, peer_len) = if turn < a.len() {
            (a.len(), b.len())
        } else {
            (b.len(), a.len())
        };
        device.initiate_missing(peer, peer_len).await?;
        if own_len > 1 {
            device.initiate_missing(own, own_len - 1).await?;
        }
        device.learn_registration_ids(&all)?;
        let text = if turn < a.len() {
            "hello"
        } else {
            "hello back"
        };
        device.send(peer, text.to_owned()).await?;
        for (other, receiver) in all.iter().enumerate() {
            if other != turn {
                receive_one(receiver).await?;
            }
        }
    }
    Ok(())
}

async fn receive_one(device: &Device) -> anyhow::Result<()> {
    let (mut stream, mut backlog) = device.open_stream().await?;
    let envelope = match backlog.pop() {
        Some(e) => e,
        None => loop {
            let item = stream
                .message()
                .await
                .map_err(|s| {
                    anyhow!(
                        "{}'s receive stream failed: {}",
                        device.label(),
                        sentence(&s)
                    )
                })?
                .context("the receive stream closed")?;
            if let Some(receive_response::Item::Envelope(e)) = item.item {
                break e;
            }
        },
    };
    device.open(&envelope)?;
    device.acknowledge(vec![envelope.id]).await
}

/// Encodes the sequence number and send time in the text itself.
fn body(seq: u64, sent_ns: u64, payload: usize) -> String {
    let mut body = format!("{seq:016x}{sent_ns:016x}");
    let pad = payload.saturating_sub(body.len());
    body.extend(std::iter::repeat_n('x', pad));
    body
}

fn parse_body(body: &str) -> Option<(u64, u64)> {
    let seq = u64::from_str_radix(body.get(0..16)?, 16).ok()?;
    let sent = u64::from_str_radix(body.get(16..32)?, 16).ok()?;
    Some((seq, sent))
}

struct DeviceOutcome {
    inbox: Inbox,
    reconnects: u64,
    finished: Instant,
}

/// Runs the measured phase on paired accounts (account 2k talks with 2k+1),
/// `workload.devices_per_account` consecutive devices to an account. Every
/// device sends `workload.messages` messages to the peer account (a copy to
/// each of its devices, and to each other device of its own account).
pub(crate) async fn run(
    devices: Vec<Arc<Device>>,
    workload: &Workload,
) -> anyhow::Result<RunResult> {
    let n = devices.len();
    let k = workload.devices_per_account.max(1);
    if !n.is_multiple_of(2 * k) {
        bail!("{n} devices do not make pairs of accounts of {k} devices");
    }
    let barrier = Arc::new(Barrier::new(n + 1));
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    let per_device_interval = workload
        .rate
        .map(|rate| Duration::from_secs_f64(n as f64 / rate.max(1.0)));
    let sent_before = sent_totals(&devices);

    for (i, device) in devices.iter().enumerate() {
        let peer = devices[((i / k) ^ 1) * k].name.clone();
        let device = Arc::clone(device);
        let (stream, backlog) = device.open_stream().await?;
        if !backlog.is_empty() {
            bail!("{} has a backlog before the run", device.label());
        }
        let inbox = Inbox::new(device.name.clone(), device.device_id, k, workload.messages);
        let stop_rx = Arc::clone(&stop);
        let rx_device = Arc::clone(&device);
        receivers.push(tokio::spawn(receive_loop(
            rx_device, stream, inbox, epoch, stop_rx,
        )));

        let barrier = Arc::clone(&barrier);
        let window = Arc::new(Semaphore::new(workload.window));
        let messages = workload.messages as u64;
        let payload = workload.payload;
        senders.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut ticker = per_device_interval.map(tokio::time::interval);
            // Finished sends are reaped as the loop goes, so a long run does not
            // keep every completed task's memory until the end.
            let mut inflight = JoinSet::new();
            let peer = Arc::new(peer);
            for seq in 0..messages {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let permit = Arc::clone(&window).acquire_owned().await?;
                let sent_ns = epoch.elapsed().as_nanos() as u64;
                let text = body(seq, sent_ns, payload);
                let sealed = device.seal(&peer, text)?;
                let device = Arc::clone(&device);
                let peer = Arc::clone(&peer);
                inflight.spawn(async move {
                    let _permit = permit;
                    device.deliver(&peer, sealed).await
                });
                while let Some(done) = inflight.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = inflight.join_next().await {
                done??;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    barrier.wait().await;
    let start = Instant::now();
    let watchdog = {
        let stop = Arc::clone(&stop);
        let deadline = workload.deadline;
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    for sender in senders {
        sender.await??;
    }
    let mut result = RunResult {
        expected: (n * workload.messages) as u64,
        own_expected: if k > 1 {
            (n * workload.messages) as u64
        } else {
            0
        },
        devices_per_account: k,
        ..Default::default()
    };
    let mut last = start;
    let mut inboxes = Vec::with_capacity(n);
    for receiver in receivers {
        let outcome = receiver.await??;
        result.duplicated += outcome.inbox.duplicated;
        result.redelivered += outcome.inbox.redelivered;
        result.reconnects += outcome.reconnects;
        last = last.max(outcome.finished);
        inboxes.push(outcome.inbox);
    }
    watchdog.abort();
    for account in inboxes.chunks(k) {
        for sender in 1..=k {
            // The peer account's device `sender`, to every device here.
            let tables: Vec<&[Option<u32>]> = account
                .iter()
                .map(|inbox| inbox.peer_table(sender))
                .collect();
            let latencies = last_arrivals(&tables, workload.messages);
            result.delivered += latencies.len() as u64;
            result.latencies_us.extend(latencies);
            // Device `sender` here, to the other devices of this account.
            let tables: Vec<&[Option<u32>]> = account
                .iter()
                .filter(|inbox| inbox.device_id as usize != sender)
                .map(|inbox| inbox.own_table(sender))
                .collect();
            if !tables.is_empty() {
                let latencies = last_arrivals(&tables, workload.messages);
                result.own_delivered += latencies.len() as u64;
                result.own_latencies_us.extend(latencies);
            }
        }
    }
    result.resent = devices
        .iter()
        .map(|d| d.resent.load(Ordering::Relaxed))
        .sum();
    let sent_after = sent_totals(&devices);
    result.envelopes_sent = sent_after.0 - sent_before.0;
    result.request_bytes = sent_after.1 - sent_before.1;
    result.elapsed = last - start;
    Ok(result)
}

/// Envelopes and SendRequest bytes the devices sent so far.
fn sent_totals(devices: &[Arc<Device>]) -> (u64, u64) {
    devices.iter().fold((0, 0), |(e, b), d| {
        (
            e + d.envelopes_sent.load(Ordering::Relaxed),
            b + d.request_bytes.load(Ordering::Relaxed),
        )
    })
}

/// For each of `messages` sequence numbers decrypted by every one of
/// `receivers` (one latency table each), the latency to the last of them;
/// a message some receiver lacks is not delivered.
fn last_arrivals(receivers: &[&[Option<u32>]], messages: usize) -> Vec<u32> {
    (0..messages)
        .filter_map(|seq| {
            receivers.iter().try_fold(0u32, |last, table| {
                table.get(seq).copied().flatten().map(|us| last.max(us))
            })
        })
        .collect()
}

/// What a device has received: each benchmark sequence number of each
/// sending device once (with its latency), and the message ids seen, so a
/// redelivery (an envelope whose acknowledgement was lost in a restart, or
/// a resend stored twice) is recognised by its message id before
/// decryption, as a real client does.
struct Inbox {
    /// This device's account and id (own copies come from this account).
    account: String,
    device_id: u32,
    /// Latency in µs per sequence number, one table per device of the peer
    /// account (index: device id − 1).
    peer: Vec<Vec<Option<u32>>>,
    /// The same for copies from the other devices of this account (this
    /// device's own table is empty).
    own: Vec<Vec<Option<u32>>>,
    message_ids: HashSet<Vec<u8>>,
    /// Distinct (sender, sequence number) pairs decrypted.
    received: u64,
    /// What `received` reaches when everything arrived.
    expected: u64,
    duplicated: u64,
    redelivered: u64,
}

impl Inbox {
    fn new(account: String, device_id: u32, per_account: usize, messages: usize) -> Self {
        let own = (1..=per_account)
            .map(|d| {
                if d == device_id as usize {
                    Vec::new()
                } else {
                    vec![None; messages]
                }
            })
            .collect();
        Self {
            account,
            device_id,
            peer: vec![vec![None; messages]; per_account],
            own,
            message_ids: HashSet::with_capacity(messages * (2 * per_account - 1)),
            received: 0,
            expected: (messages * (2 * per_account - 1)) as u64,
            duplicated: 0,
            redelivered: 0,
        }
    }

    fn peer_table(&self, device_id: usize) -> &[Option<u32>] {
        self.peer.get(device_id - 1).map_or(&[], Vec::as_slice)
    }

    fn own_table(&self, device_id: usize) -> &[Option<u32>] {
        self.own.get(device_id - 1).map_or(&[], Vec::as_slice)
    }

    /// Records the message `seq` from `sender`'s device `sender_device`,
    /// `latency_us` after it was sealed; `duplicated` counts a sequence number
    /// decrypted twice under different message ids (what a user would see
    /// twice), or one no device sent.
    fn record(&mut self, sender: &str, sender_device: u32, seq: u64, latency_us: u32) {
        let tables = if sender == self.account {
            &mut self.own
        } else {
            &mut self.peer
        };
        let slot = (sender_device as usize)
            .checked_sub(1)
            .and_then(|i| tables.get_mut(i))
            .and_then(|t| t.get_mut(usize::try_from(seq).ok()?));
        match slot {
            Some(slot) if slot.is_none() => {
                *slot = Some(latency_us);
                self.received += 1;
            }
            _ => self.duplicated += 1,
        }
    }

    /// Counts one envelope.
    fn accept(
        &mut self,
        device: &Device,
        envelope: &v1::Envelope,
        epoch: Instant,
    ) -> anyhow::Result<()> {
        if !self.message_ids.insert(envelope.message_id.clone()) {
            self.redelivered += 1;
            return Ok(());
        }
        let text = device.open(envelope)?;
        let (seq, sent_ns) = parse_body(&text).context("malformed benchmark message")?;
        let now_ns = epoch.elapsed().as_nanos() as u64;
        let us = now_ns.saturating_sub(sent_ns) / 1000;
        self.record(
            &envelope.sender,
            envelope.sender_device,
            seq,
            u32::try_from(us).unwrap_or(u32::MAX),
        );
        Ok(())
    }
}

async fn receive_loop(
    device: Arc<Device>,
    stream: Streaming<v1::ReceiveResponse>,
    mut inbox: Inbox,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<DeviceOutcome> {
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<u64>();
    let ack_device = Arc::clone(&device);
    let acker = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(512);
        while ack_rx.recv_many(&mut batch, 512).await > 0 {
            ack_device.acknowledge(std::mem::take(&mut batch)).await?;
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let mut stream = Some(stream);
    let mut reconnects = 0u64;
    let mut down_since: Option<Instant> = None;
    while inbox.received < inbox.expected && !stop.load(Ordering::Relaxed) {
        let Some(open) = stream.as_mut() else {
            // The node went away: reopen (the backlog holds whatever was
            // stored and not acknowledged) until it answers.
            let since = *down_since.get_or_insert_with(Instant::now);
            match device.open_stream().await {
                Ok((reopened, backlog)) => {
                    for envelope in &backlog {
                        inbox.accept(&device, envelope, epoch)?;
                        let _ = ack_tx.send(envelope.id);
                    }
                    stream = Some(reopened);
                    down_since = None;
                    reconnects += 1;
                }
                Err(_) if since.elapsed() < RETRY_FOR => {
                    tokio::time::sleep(FIRST_RETRY_PAUSE * 4).await;
                }
                Err(error) => bail!(
                    "{} could not reopen its receive stream for {} s: {error:#}",
                    device.label(),
                    RETRY_FOR.as_secs()
                ),
            }
            continue;
        };
        let item = match tokio::time::timeout(Duration::from_millis(250), open.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(item))) => item,
            Ok(Ok(None)) => {
                stream = None;
                continue;
            }
            Ok(Err(status)) if retryable(&status) => {
                stream = None;
                continue;
            }
            Ok(Err(status)) => bail!(
                "{}'s receive stream failed: {}",
                device.label(),
                sentence(&status)
            ),
        };
        let Some(receive_response::Item::Envelope(envelope)) = item.item else {
            continue;
        };
        inbox.accept(&device, &envelope, epoch)?;
        let _ = ack_tx.send(envelope.id);
    }
    drop(ack_tx);
    let finished = acker.await??;
    Ok(DeviceOutcome {
        inbox,
        reconnects,
        finished,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_status_is_a_sentence_not_a_debug_dump() {
        let status = Status::unavailable("the server is shutting down; reconnect shortly");
        let text = sentence(&status);
        assert_eq!(
            text,
            "the server answered Unavailable (the server is shutting down; reconnect shortly)"
        );
        assert!(!text.contains("metadata") && !text.contains("Status {"));
        assert!(retryable(&status));
        assert!(retryable(&Status::unknown("transport error")));
        assert!(!retryable(&Status::invalid_argument("bad")));
        assert!(!retryable(&Status::unauthenticated("no token")));
    }

    #[tokio::test]
    async fn retrying_gives_up_on_a_permanent_error_at_once() {
        let mut calls = 0;
        let error = retrying("sending", || {
            calls += 1;
            async { Err::<(), _>(Status::invalid_argument("the message id must be 16 bytes")) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            error.to_string(),
            "sending failed: the server answered InvalidArgument (the message id must be 16 bytes)"
        );
        let mut failures = 2;
        let ((), failed) = retrying("sending", || {
            let outcome = if failures > 0 {
                failures -= 1;
                Err(Status::unavailable("restarting"))
            } else {
                Ok(())
            };
            async move { outcome }
        })
        .await
        .unwrap();
        assert_eq!(failed, 2);
    }

    #[test]
    fn a_message_is_delivered_when_the_last_device_decrypted_it() {
        let first = [Some(10), Some(20), None, Some(5)];
        let second = [Some(30), Some(15), Some(1), None];
        assert_eq!(last_arrivals(&[&first, &second], 4), vec![30, 20]);
        assert_eq!(last_arrivals(&[&first], 4), vec![10, 20, 5]);
        // A short table (a device that sent nothing) delivers nothing past it.
        assert_eq!(last_arrivals(&[&first, &[Some(1)]], 4), vec![10]);
    }

    #[test]
    fn an_inbox_keeps_peer_and_own_copies_apart() {
        let mut inbox = Inbox::new("alice".into(), 2, 3, 4);
        assert_eq!(inbox.expected, 4 * 5);
        assert!(inbox.own_table(2).is_empty());
        inbox.record("bob", 3, 0, 7);
        inbox.record("alice", 1, 0, 9);
        assert_eq!(inbox.peer_table(3)[0], Some(7));
        assert_eq!(inbox.own_table(1)[0], Some(9));
        assert_eq!(inbox.peer_table(1)[0], None);
        assert_eq!((inbox.received, inbox.duplicated), (2, 0));
        // The same sequence number again, an unknown device, this device
        // itself and a sequence number out of range are all duplicates.
        inbox.record("bob", 3, 0, 8);
        inbox.record("bob", 4, 0, 1);
        inbox.record("bob", 0, 0, 1);
        inbox.record("alice", 2, 1, 1);
        inbox.record("bob", 1, 4, 1);
        assert_eq!((inbox.received, inbox.duplicated), (2, 5));
        assert_eq!(inbox.peer_table(3)[0], Some(7));
    }

    /// A device of `name` with fresh keys, on a channel that never connects.
    fn offline_device(name: &str, device_id: u32, account: &IdentityKeyPair) -> Device {
        let mut rng = OsRng;
        let owner = PrekeyOwner {
            account: account.public().clone(),
            device_id,
        };
        let identity = IdentityKeyPair::generate(&mut rng);
        let keys = prekeys(&mut rng, identity, &owner, 100 + device_id);
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let auth = ("authorization", MetadataValue::from_static("Bearer x"));
        Device::new(name.into(), device_id, channel, auth, Some(keys))
    }

    fn bundle_of(device: &Device, account: &IdentityKeyPair) -> PrekeyBundle {
        let keys = device.keys.as_ref().unwrap();
        PrekeyBundle {
            identity: keys.identity.public().clone(),
            owner: PrekeyOwner {
                account: account.public().clone(),
                device_id: device.device_id,
            },
            signed_prekey: keys.signed.public(),
            kem_prekey: keys.kem.public(),
            one_time_prekey: Some(keys.one_time.public()),
        }
    }

    #[tokio::test]
    async fn a_send_encrypts_for_every_peer_device_and_every_other_own_device() {
        let mut rng = OsRng;
        let (alice, bob) = (
            IdentityKeyPair::generate(&mut rng),
            IdentityKeyPair::generate(&mut rng),
        );
        let a: Vec<Device> = (1..=3)
            .map(|d| offline_device("alice", d, &alice))
            .collect();
        let b: Vec<Device> = (1..=3).map(|d| offline_device("bob", d, &bob)).collect();
        let sender = &a[0];
        {
            let mut crypto = sender.crypto.lock().unwrap();
            let Crypto { sessions, rng } = &mut *crypto;
            let keys = sender.keys.as_ref().unwrap();
            for (others, account) in [(&b[..], &bob), (&a[1..], &alice)] {
                for other in others {
                    let key = (other.name.clone(), other.device_id);
                    let registration_id = other.keys.as_ref().unwrap().registration_id;
                    let bundle = bundle_of(other, account);
                    initiate(
                        sessions,
                        rng,
                        keys,
                        &sender.address(),
                        key,
                        registration_id,
                        &bundle,
                    )
                    .unwrap();
                }
            }
        }
        let text = body(3, 42, 64);
        let sealed = sender.seal("bob", text.clone()).unwrap();
        let ids = |e: &[v1::OutgoingEnvelope]| -> Vec<(u32, u32)> {
            e.iter().map(|e| (e.device_id, e.registration_id)).collect()
        };
        assert_eq!(ids(&sealed.to_peer), vec![(1, 101), (2, 102), (3, 103)]);
        assert_eq!(ids(&sealed.to_own), vec![(2, 102), (3, 103)]);
        let receivers = b
            .iter()
            .zip(&sealed.to_peer)
            .chain(a[1..].iter().zip(&sealed.to_own));
        for (receiver, envelope) in receivers {
            let envelope = v1::Envelope {
                sender: "alice".into(),
                sender_device: 1,
                content: envelope.content.clone(),
                message_id: sealed.message_id.clone(),
                franking_commitment: envelope.franking_commitment.clone(),
                ..Default::default()
            };
            assert_eq!(receiver.open(&envelope).unwrap(), text);
            assert_eq!(receiver.sessions_with("alice").unwrap(), 1);
        }
        // One device per account: one envelope, and no second Send.
        let lone = offline_device("carol", 1, &alice);
        {
            let mut crypto = lone.crypto.lock().unwrap();
            let Crypto { sessions, rng } = &mut *crypto;
            let bundle = bundle_of(&b[0], &bob);
            let keys = lone.keys.as_ref().unwrap();
            let key = ("bob".to_owned(), 1);
            initiate(sessions, rng, keys, &lone.address(), key, 101, &bundle).unwrap();
        }
        let sealed = lone.seal("bob", text).unwrap();
        assert_eq!(ids(&sealed.to_peer), vec![(1, 101)]);
        assert!(sealed.to_own.is_empty());
    }

    #[test]
    fn body_round_trips_and_pads() {
        let text = body(42, 123_456_789, 200);
        assert_eq!(text.len(), 200);
        assert_eq!(parse_body(&text), Some((42, 123_456_789)));
        assert_eq!(parse_body("short"), None);
    }
}
