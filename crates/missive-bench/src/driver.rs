//! Simulated devices and the send → durable → streamed → decrypted →
//! acknowledged workload, for the relay (real registration, PQXDH sessions and
//! Double Ratchet encryption, franking) and for the bare-tonic baseline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    IdentityKeyPair, KemPrekeyPair, KemPrekeyPublic, OneTimePrekeyPair, OneTimePrekeyPublic,
    PrekeyBundle, PrekeyMessage, PublicIdentity, Session, SignedPrekeyPair, SignedPrekeyPublic,
    transcript,
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
use tonic::{Request, Streaming};

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

/// Opens one HTTP/2 connection over TLS, trusting `ca`.
pub(crate) async fn connect(url: &str, ca: &Certificate) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost"),
        )?
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .with_context(|| format!("could not connect to {url}"))
}

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
        })
    }

    /// A relay device: generates its identity and prekeys and registers.
    pub(crate) async fn register(channel: Channel, name: String) -> anyhow::Result<Self> {
        let mut rng = OsRng;
        let identity = IdentityKeyPair::generate(&mut rng);
        let signed = SignedPrekeyPair::generate(&mut rng, 1, &identity);
        let kem = KemPrekeyPair::generate(&mut rng, 1, &identity);
        let one_time = OneTimePrekeyPair::generate(&mut rng, 1);
        let registration_id = rng.gen_range(1..=16380);

        let mut accounts = AccountServiceClient::new(channel.clone());
        let challenge = accounts
            .get_challenge(v1::GetChallengeRequest {
                username: name.clone(),
                purpose: v1::ChallengePurpose::Register as i32,
            })
            .await
            .with_context(|| format!("challenge for {name}"))?
            .into_inner()
            .challenge;
        let signature = identity.sign(&transcript::registration(
            &challenge,
            &name,
            registration_id,
        ));
        let public = identity.public();
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
            })
            .await
            .with_context(|| format!("registering {name}"))?
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
            .await?
            .into_inner();
        let mut backlog = Vec::new();
        loop {
            let item = stream
                .message()
                .await?
                .context("stream closed before the end of the backlog")?;
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
            })),
            franking_key: franking_key.as_bytes().to_vec(),
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
                let (session, plaintext) = Session::accept(
                    &keys.identity,
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

    async fn deliver(&self, to: &Device, sealed: Sealed) -> anyhow::Result<()> {
        let (kind, content, commitment, message_id) = sealed;
        self.messages()
            .send(self.request(v1::SendRequest {
                recipient: to.name.clone(),
                message_id,
                envelopes: vec![v1::OutgoingEnvelope {
                    device_id: 1,
                    registration_id: to.registration_id(),
                    r#type: kind as i32,
                    content,
                    franking_commitment: commitment,
                }],
            }))
            .await?;
        Ok(())
    }

    /// Acknowledges on the relay and on the baseline alike, so both see the
    /// same call pattern (send, stream, acknowledge).
    async fn acknowledge(&self, ids: Vec<u64>) -> anyhow::Result<()> {
        self.messages()
            .acknowledge(self.request(v1::AcknowledgeRequest { envelope_ids: ids }))
            .await?;
        Ok(())
    }
}

fn bundle_from_wire(bundle: &v1::PrekeyBundle) -> anyhow::Result<PrekeyBundle> {
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
        .await?
        .into_inner();
    let bundle = bundle_from_wire(bundles.bundles.first().context("no bundle")?)?;
    {
        let mut crypto = a.crypto.lock().map_err(|_| anyhow!("poisoned"))?;
        let keys = a.keys.as_ref().context("no keys")?;
        let session = Session::initiate(&mut crypto.rng, &keys.identity, &bundle)
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
            let item = stream.message().await?.context("stream closed")?;
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
        result.latencies_us.extend(outcome.latencies_us);
        last = last.max(outcome.finished);
    }
    watchdog.abort();
    result.elapsed = last - start;
    Ok(result)
}

async fn receive_loop(
    device: Arc<Device>,
    mut stream: Streaming<v1::ReceiveResponse>,
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
    let mut seen = vec![false; expected];
    let mut delivered = 0u64;
    let mut duplicated = 0u64;
    let mut latencies_us = Vec::with_capacity(expected);
    while (delivered as usize) < expected && !stop.load(Ordering::Relaxed) {
        let item = match tokio::time::timeout(Duration::from_millis(250), stream.message()).await {
            Err(_) => continue,
            Ok(item) => item?,
        };
        let Some(item) = item else { break };
        let Some(receive_response::Item::Envelope(envelope)) = item.item else {
            continue;
        };
        let text = device.open(&envelope)?;
        let (seq, sent_ns) = parse_body(&text).context("malformed benchmark message")?;
        let now_ns = epoch.elapsed().as_nanos() as u64;
        match seen.get_mut(seq as usize) {
            Some(slot) if !*slot => {
                *slot = true;
                delivered += 1;
                let us = now_ns.saturating_sub(sent_ns) / 1000;
                latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            _ => duplicated += 1,
        }
        let _ = ack_tx.send(envelope.id);
    }
    drop(ack_tx);
    let finished = acker.await??;
    Ok(DeviceOutcome {
        delivered,
        duplicated,
        latencies_us,
        finished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_and_pads() {
        let text = body(42, 123_456_789, 200);
        assert_eq!(text.len(), 200);
        assert_eq!(parse_body(&text), Some((42, 123_456_789)));
        assert_eq!(parse_body("short"), None);
    }
}
