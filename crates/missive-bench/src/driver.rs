//! Simulated devices and the send → durable → streamed → decrypted →
//! acknowledged workload, for the relay (real registration, PQXDH sessions and
//! Double Ratchet encryption, franking) and for the bare-tonic baseline.

use std::collections::HashSet;
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

/// The crypto state a device shares between its send and receive tasks.
struct Crypto {
    session: Option<Session>,
    rng: StdRng,
}

/// Envelope type, ciphertext, franking commitment and message id.
type Sealed = (v1::EnvelopeType, Vec<u8>, Vec<u8>, Vec<u8>);

/// One simulated device, on a connection of its own or shared with others.
pub(crate) struct Device {
    pub(crate) name: String,
    channel: Channel,
    auth: (&'static str, MetadataValue<tonic::metadata::Ascii>),
    keys: Option<Keys>,
    crypto: Mutex<Crypto>,
    /// Sends repeated because an attempt failed (a node restart).
    resent: AtomicU64,
}

impl Device {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(self.auth.0, self.auth.1.clone());
        request
    }

    fn messages(&self) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(self.channel.clone()).max_decoding_message_size(256 * 1024)
    }

    /// A baseline device: no account, named by a header.
    pub(crate) fn baseline(channel: Channel, name: String) -> anyhow::Result<Self> {
        let value = MetadataValue::try_from(name.as_str())?;
        Ok(Device {
            name,
            channel,
            auth: (DEVICE_HEADER, value),
            keys: None,
            crypto: Mutex::new(Crypto {
                session: None,
                rng: StdRng::from_entropy(),
            }),
            resent: AtomicU64::new(0),
        })
    }

    /// A relay device: generates its identity and prekeys and registers.
    pub(crate) async fn register(channel: Channel, name: String) -> anyhow::Result<Self> {
        let mut rng = OsRng;
        let account = IdentityKeyPair::generate(&mut rng);
        let identity = IdentityKeyPair::generate(&mut rng);
        let owner = PrekeyOwner {
            account: account.public().clone(),
            device_id: 1,
        };
        let signed = SignedPrekeyPair::generate(&mut rng, 1, &identity, &owner);
        let kem = KemPrekeyPair::generate(&mut rng, 1, &identity, &owner);
        let one_time = OneTimePrekeyPair::generate(&mut rng, 1);
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
        }
        .sign(&account)
        .map_err(|e| anyhow!("signing {name}'s device list: {e}"))?;

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
        let public = account.public();
        let spk = signed.public();
        let kpk = kem.public();
        let opk = one_time.public();
        let response = accounts
            .register(v1::RegisterRequest {
                username: name.clone(),
                challenge,
                identity: Some(v1::PublicIdentity {
                    signing_key: public.signing_key().to_vec(),
                }),
                registration_id,
                signed_prekey: Some(v1::SignedPrekey {
                    id: spk.id,
                    public_key: spk.public_key.to_vec(),
                    signature: spk.signature.to_vec(),
                }),
                last_resort_kem_prekey: Some(v1::KemPrekey {
                    id: kpk.id,
                    public_key: kpk.public_key.clone(),
                    signature: kpk.signature.to_vec(),
                }),
                one_time_prekeys: vec![v1::OneTimePrekey {
                    id: opk.id,
                    public_key: opk.public_key.to_vec(),
                }],
                one_time_kem_prekeys: Vec::new(),
                signature: signature.to_vec(),
                device_identity: Some(v1::PublicIdentity {
                    signing_key: identity.public().signing_key().to_vec(),
                }),
                signed_device_list: list.to_bytes(),
                server_name: SERVER_NAME.to_owned(),
            })
            .await
            .map_err(|s| anyhow!("registering {name} failed: {}", sentence(&s)))?
            .into_inner();
        let token = response
            .session
            .context("registration returned no token")?
            .token;
        let bearer = format!(
            "Bearer {}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        );
        Ok(Device {
            name,
            channel,
            auth: ("authorization", MetadataValue::try_from(bearer)?),
            keys: Some(Keys {
                identity,
                signed,
                kem,
                one_time,
                registration_id,
            }),
            crypto: Mutex::new(Crypto {
                session: None,
                rng: StdRng::from_entropy(),
            }),
            resent: AtomicU64::new(0),
        })
    }

    fn registration_id(&self) -> u32 {
        self.keys.as_ref().map_or(0, |k| k.registration_id)
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
                    self.name,
                    sentence(&s)
                )
            })?
            .into_inner();
        let mut backlog = Vec::new();
        loop {
            let item = stream
                .message()
                .await
                .map_err(|s| anyhow!("{}'s receive stream failed: {}", self.name, sentence(&s)))?
                .context("the receive stream closed before the end of the backlog")?;
            match item.item {
                Some(receive_response::Item::Envelope(e)) => backlog.push(e),
                Some(receive_response::Item::QueueEmpty(_)) => return Ok((stream, backlog)),
                None => {}
            }
        }
    }

    /// Opens the receive stream and keeps it, for the connection-scale mode.
    pub(crate) async fn hold_stream(&self) -> anyhow::Result<Streaming<v1::ReceiveResponse>> {
        Ok(self.open_stream().await?.0)
    }

    /// Encrypts (relay) or frames (baseline) one benchmark message.
    fn seal(&self, body: String) -> anyhow::Result<Sealed> {
        let mut crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let mut message_id = vec![0u8; 16];
        crypto.rng.fill_bytes(&mut message_id);
        if self.keys.is_none() {
            return Ok((
                v1::EnvelopeType::Message,
                body.into_bytes(),
                vec![0; 32],
                message_id,
            ));
        }
        let franking_key = FrankingKey::generate(&mut crypto.rng);
        let commitment = franking::commit(&franking_key, &message_id, body.as_bytes());
        let content = v1::Content {
            body: Some(v1::content::Body::Text(v1::TextMessage {
                body,
                sent_at_ms: 0,
                ..Default::default()
            })),
            attachment: None,
            franking_key: franking_key.as_bytes().to_vec(),
            sender_devices: None,
        }
        .encode_to_vec();
        let Crypto { session, rng } = &mut *crypto;
        let session = session.as_mut().context("no session")?;
        let out = session
            .encrypt(rng, &content, &commitment)
            .map_err(|e| anyhow!("encrypt: {e}"))?;
        let kind = match out.kind {
            missive_crypto::MessageKind::Prekey => v1::EnvelopeType::PrekeyMessage,
            missive_crypto::MessageKind::Normal => v1::EnvelopeType::Message,
        };
        Ok((kind, out.bytes, commitment.to_vec(), message_id))
    }

    /// Decrypts (relay) or reads (baseline) one envelope back to its text.
    fn open(&self, envelope: &v1::Envelope) -> anyhow::Result<String> {
        let Some(keys) = &self.keys else {
            return Ok(String::from_utf8(envelope.content.clone())?);
        };
        let mut crypto = self.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let ad = &envelope.franking_commitment;
        let plaintext = match crypto.session.as_mut() {
            Some(session) => session
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
                    &Address::new(self.name.clone(), 1),
                    &sender,
                    &keys.signed,
                    &keys.kem,
                    one_time,
                    &message,
                    ad,
                )
                .map_err(|e| anyhow!("accept: {e}"))?;
                crypto.session = Some(session);
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

    async fn send(&self, to: &Device, body: String) -> anyhow::Result<()> {
        let sealed = self.seal(body)?;
        self.deliver(to, sealed).await
    }

    /// Sends one sealed message, repeating it unchanged (same message id,
    /// so the relay and the receiver can tell it is the same) until a node
    /// answers.
    async fn deliver(&self, to: &Device, sealed: Sealed) -> anyhow::Result<()> {
        let (kind, content, commitment, message_id) = sealed;
        let request = v1::SendRequest {
            recipient: to.name.clone(),
            message_id,
            envelopes: vec![v1::OutgoingEnvelope {
                device_id: 1,
                registration_id: to.registration_id(),
                r#type: kind as i32,
                content,
                franking_commitment: commitment,
            }],
            ..Default::default()
        };
        let what = format!("sending from {} to {}", self.name, to.name);
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
        let what = format!("acknowledging for {}", self.name);
        retrying(&what, || {
            let request = self.request(v1::AcknowledgeRequest {
                envelope_ids: ids.clone(),
            });
            let mut client = self.messages();
            async move { client.acknowledge(request).await.map(|_| ()) }
        })
        .await?;
        Ok(())
    }
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

/// Runs PQXDH between a pair and one reply, so the measured phase uses
/// established sessions (normal ratchet messages) in both directions.
pub(crate) async fn pair_up(a: &Device, b: &Device) -> anyhow::Result<()> {
    if a.keys.is_none() {
        return Ok(());
    }
    let bundles = KeyServiceClient::new(a.channel.clone())
        .get_bundles(a.request(v1::GetBundlesRequest {
            username: b.name.clone(),
            device_id: 0,
        }))
        .await
        .map_err(|s| anyhow!("fetching {}'s bundle failed: {}", b.name, sentence(&s)))?
        .into_inner();
    let bundle = bundle_from_wire(
        bundles.bundles.first().context("no bundle")?,
        &bundles.signed_device_list,
    )?;
    {
        let mut crypto = a.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let keys = a.keys.as_ref().context("no keys")?;
        let session = Session::initiate(
            &mut crypto.rng,
            &keys.identity,
            &Address::new(a.name.clone(), 1),
            &b.name,
            &bundle,
        )
        .map_err(|e| anyhow!("initiate: {e}"))?;
        crypto.session = Some(session);
    }
    a.send(b, "hello".to_owned()).await?;
    receive_one(b).await?;
    b.send(a, "hello back".to_owned()).await?;
    receive_one(a).await?;
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
                .map_err(|s| anyhow!("{}'s receive stream failed: {}", device.name, sentence(&s)))?
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
    delivered: u64,
    duplicated: u64,
    redelivered: u64,
    reconnects: u64,
    latencies_us: Vec<u32>,
    finished: Instant,
}

/// Runs the measured phase on paired devices (device 2k talks with 2k+1).
pub(crate) async fn run(
    devices: Vec<Arc<Device>>,
    workload: &Workload,
) -> anyhow::Result<RunResult> {
    let n = devices.len();
    let barrier = Arc::new(Barrier::new(n + 1));
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    let per_device_interval = workload
        .rate
        .map(|rate| Duration::from_secs_f64(n as f64 / rate.max(1.0)));

    for (i, device) in devices.iter().enumerate() {
        let partner = Arc::clone(&devices[i ^ 1]);
        let device = Arc::clone(device);
        let (stream, backlog) = device.open_stream().await?;
        if !backlog.is_empty() {
            bail!("{} has a backlog before the run", device.name);
        }
        let expected = workload.messages;
        let stop_rx = Arc::clone(&stop);
        let rx_device = Arc::clone(&device);
        receivers.push(tokio::spawn(receive_loop(
            rx_device, stream, expected, epoch, stop_rx,
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
            for seq in 0..messages {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let permit = Arc::clone(&window).acquire_owned().await?;
                let sent_ns = epoch.elapsed().as_nanos() as u64;
                let text = body(seq, sent_ns, payload);
                let sealed = device.seal(text)?;
                let device = Arc::clone(&device);
                let partner = Arc::clone(&partner);
                inflight.spawn(async move {
                    let _permit = permit;
                    device.deliver(&partner, sealed).await
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
        ..Default::default()
    };
    let mut last = start;
    for receiver in receivers {
        let outcome = receiver.await??;
        result.delivered += outcome.delivered;
        result.duplicated += outcome.duplicated;
        result.redelivered += outcome.redelivered;
        result.reconnects += outcome.reconnects;
        result.latencies_us.extend(outcome.latencies_us);
        last = last.max(outcome.finished);
    }
    watchdog.abort();
    result.resent = devices
        .iter()
        .map(|d| d.resent.load(Ordering::Relaxed))
        .sum();
    result.elapsed = last - start;
    Ok(result)
}

/// What a device has received: each benchmark sequence number once, and the
/// message ids seen, so a redelivery (an envelope whose acknowledgement was
/// lost in a restart, or a resend stored twice) is recognised by its message
/// id before decryption, as a real client does.
struct Inbox {
    seen: Vec<bool>,
    message_ids: HashSet<Vec<u8>>,
    delivered: u64,
    duplicated: u64,
    redelivered: u64,
    latencies_us: Vec<u32>,
}

impl Inbox {
    fn new(expected: usize) -> Self {
        Self {
            seen: vec![false; expected],
            message_ids: HashSet::with_capacity(expected),
            delivered: 0,
            duplicated: 0,
            redelivered: 0,
            latencies_us: Vec::with_capacity(expected),
        }
    }

    /// Counts one envelope; `duplicated` counts a sequence number decrypted
    /// twice under different message ids (what a user would see twice).
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
        match self.seen.get_mut(seq as usize) {
            Some(slot) if !*slot => {
                *slot = true;
                self.delivered += 1;
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                self.latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            _ => self.duplicated += 1,
        }
        Ok(())
    }
}

async fn receive_loop(
    device: Arc<Device>,
    stream: Streaming<v1::ReceiveResponse>,
    expected: usize,
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
    let mut inbox = Inbox::new(expected);
    let mut stream = Some(stream);
    let mut reconnects = 0u64;
    let mut down_since: Option<Instant> = None;
    while (inbox.delivered as usize) < expected && !stop.load(Ordering::Relaxed) {
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
                    device.name,
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
                device.name,
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
        delivered: inbox.delivered,
        duplicated: inbox.duplicated,
        redelivered: inbox.redelivered,
        reconnects,
        latencies_us: inbox.latencies_us,
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
    fn body_round_trips_and_pads() {
        let text = body(42, 123_456_789, 200);
        assert_eq!(text.len(), 200);
        assert_eq!(parse_body(&text), Some((42, 123_456_789)));
        assert_eq!(parse_body("short"), None);
    }
}
