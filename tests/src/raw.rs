//! A malicious *peer*: an account driven directly through missive-crypto and
//! missive-proto instead of the `missive` client, so a test controls every
//! byte of what it sends (the `v1::Content`, the message id, `sent_at_ms`,
//! even the plaintext and commitment), while the cryptography stays genuine:
//! PQXDH and the Double Ratchet from missive-crypto, and a franking
//! commitment made with `missive_crypto::franking` exactly as the real
//! client makes it (crates/missive-client/src/client.rs, `send`), so the
//! recipient's checks pass and what is tested is its handling of the content.
//!
//! [`RawPeer`] is async (one tonic channel, sessions kept in memory);
//! [`BlockingRawPeer`] wraps it with its own runtime for the blocking tests.
//! Register it through a [`LyingServer`](crate::liar::LyingServer) and the
//! proxy knows its token like any other user's.

use std::collections::HashMap;

use base64::Engine as _;
use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    Address, DeviceEntry, DeviceList, IdentityKeyPair, KemPrekeyPair, KemPrekeyPublic, MessageKind,
    OneTimePrekeyPublic, PrekeyBundle, PrekeyOwner, PublicIdentity, Session, SignedDeviceList,
    SignedPrekeyPair, SignedPrekeyPublic, transcript,
};
use missive_proto::v1::{
    self, account_service_client::AccountServiceClient, key_service_client::KeyServiceClient,
    message_service_client::MessageServiceClient,
};
use prost::Message as _;
use rand::RngCore as _;
use rand::rngs::OsRng;
use tonic::Request;
use tonic::transport::Channel;

use crate::{Endpoint, HarnessError, herr};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A `v1::Content` holding `text`, as a genuine client builds it, with a
/// fresh franking key.
pub fn text_content(text: &str, sent_at_ms: u64) -> v1::Content {
    let key = FrankingKey::generate(&mut OsRng);
    v1::Content {
        body: Some(v1::content::Body::Text(v1::TextMessage {
            body: text.to_owned(),
            sent_at_ms,
            ..Default::default()
        })),
        attachment: None,
        franking_key: key.as_bytes().to_vec(),
        // No sender device list view: raw peers are not clients.
        sender_devices: None,
        sent_to: String::new(),
    }
}

/// A fresh 16-byte message id.
pub fn message_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    OsRng.fill_bytes(&mut id);
    id
}

/// What the server answered to a raw send.
#[derive(Clone, Debug)]
pub struct RawSent {
    /// The message id used.
    pub message_id: Vec<u8>,
    /// The server's timestamp.
    pub server_timestamp_ms: u64,
    /// The envelopes as sent.
    pub envelopes: Vec<v1::OutgoingEnvelope>,
}

/// A session with one device of a user.
struct PeerSession {
    registration_id: u32,
    session: Session,
}

/// The server name raw peers sign in their transcripts (the name the
/// harness verifies TLS for).
pub const SERVER_NAME: &str = "localhost";

/// An account registered over raw gRPC (device 1).
pub struct RawPeer {
    name: String,
    /// The account key (signs the device list and the registration).
    account: IdentityKeyPair,
    /// Device 1's key (signs its prekeys; IK in PQXDH).
    identity: IdentityKeyPair,
    token: String,
    channel: Channel,
    sessions: HashMap<String, Vec<(u32, PeerSession)>>,
}

impl std::fmt::Debug for RawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPeer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn arr<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], HarnessError> {
    bytes
        .try_into()
        .map_err(|_| herr(format!("{what} is {} bytes, expected {N}", bytes.len())))
}

/// The account key a `GetBundles` answer's signed device list names for
/// `user`, checked against the list's own signature (raw peers pin nothing).
pub fn account_key_from_list(
    signed_device_list: &[u8],
    user: &str,
) -> Result<PublicIdentity, HarnessError> {
    let signed = SignedDeviceList::from_bytes(signed_device_list)
        .map_err(|e| herr(format!("{user}'s device list: {e}")))?;
    let account = signed.account().clone();
    signed
        .verify(&account, user)
        .map_err(|e| herr(format!("{user}'s device list: {e}")))?;
    Ok(account)
}

/// A wire bundle as missive-crypto's [`PrekeyBundle`]; `account` is the
/// account key of its owner (from the signed device list).
pub fn bundle_from_proto(
    b: &v1::PrekeyBundle,
    account: &PublicIdentity,
) -> Result<PrekeyBundle, HarnessError> {
    let id = b
        .identity
        .as_ref()
        .ok_or_else(|| herr("bundle without identity"))?;
    let identity = PublicIdentity::from_bytes(&id.signing_key)
        .map_err(|e| herr(format!("identity in bundle: {e}")))?;
    let spk = b
        .signed_prekey
        .as_ref()
        .ok_or_else(|| herr("bundle without signed prekey"))?;
    let kem = b
        .kem_prekey
        .as_ref()
        .ok_or_else(|| herr("bundle without KEM prekey"))?;
    let one_time_prekey = match &b.one_time_prekey {
        Some(k) => Some(OneTimePrekeyPublic {
            id: k.id,
            public_key: arr(&k.public_key, "one-time prekey")?,
        }),
        None => None,
    };
    Ok(PrekeyBundle {
        identity,
        owner: PrekeyOwner {
            account: account.clone(),
            device_id: b.device_id,
        },
        signed_prekey: SignedPrekeyPublic {
            id: spk.id,
            public_key: arr(&spk.public_key, "signed prekey")?,
            signature: arr(&spk.signature, "signed prekey signature")?,
        },
        kem_prekey: KemPrekeyPublic {
            id: kem.id,
            public_key: kem.public_key.clone(),
            signature: arr(&kem.signature, "KEM prekey signature")?,
        },
        one_time_prekey,
    })
}

impl RawPeer {
    /// Registers `name` at `endpoint` with a fresh identity, a signed prekey
    /// and a last-resort KEM prekey (no one-time prekeys: nobody is expected
    /// to start sessions with it).
    pub async fn register<E: Endpoint + ?Sized>(
        endpoint: &E,
        name: &str,
    ) -> Result<RawPeer, HarnessError> {
        let channel = crate::liar::connect(endpoint.url(), &endpoint.ca()).await?;
        let account_key = IdentityKeyPair::generate(&mut OsRng);
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let owner = PrekeyOwner {
            account: account_key.public().clone(),
            device_id: 1,
        };
        let spk = SignedPrekeyPair::generate(&mut OsRng, 1, &identity, &owner);
        let kem = KemPrekeyPair::generate(&mut OsRng, 1, &identity, &owner);
        let registration_id = 4242;
        let folded = name.to_ascii_lowercase();
        let signed_device_list = DeviceList {
            username: folded.clone(),
            version: 1,
            timestamp_ms: now_ms(),
            devices: vec![DeviceEntry::link(
                &identity,
                &folded,
                account_key.public(),
                1,
                registration_id,
            )],
        }
        .sign(&account_key)
        .map_err(|e| herr(format!("device list for {name}: {e}")))?
        .to_bytes();
        let mut account = AccountServiceClient::new(channel.clone());
        let challenge = account
            .get_challenge(v1::GetChallengeRequest {
                username: name.into(),
                purpose: v1::ChallengePurpose::Register as i32,
            })
            .await
            .map_err(|s| herr(format!("GetChallenge for {name}: {s}")))?
            .into_inner()
            .challenge;
        let signature = account_key.sign(&transcript::registration(
            &challenge,
            SERVER_NAME,
            name,
            registration_id,
        ));
        let (spk, kem) = (spk.public(), kem.public());
        let resp = account
            .register(v1::RegisterRequest {
                username: name.into(),
                challenge,
                identity: Some(v1::PublicIdentity {
                    signing_key: account_key.public().signing_key().to_vec(),
                }),
                device_identity: Some(v1::PublicIdentity {
                    signing_key: identity.public().signing_key().to_vec(),
                }),
                signed_device_list,
                server_name: SERVER_NAME.into(),
                registration_id,
                signed_prekey: Some(v1::SignedPrekey {
                    id: spk.id,
                    public_key: spk.public_key.to_vec(),
                    signature: spk.signature.to_vec(),
                }),
                last_resort_kem_prekey: Some(v1::KemPrekey {
                    id: kem.id,
                    public_key: kem.public_key.clone(),
                    signature: kem.signature.to_vec(),
                }),
                one_time_prekeys: vec![],
                one_time_kem_prekeys: vec![],
                signature: signature.to_vec(),
            })
            .await
            .map_err(|s| herr(format!("Register {name}: {s}")))?
            .into_inner();
        let token = resp
            .session
            .ok_or_else(|| herr("Register returned no session"))?
            .token;
        Ok(RawPeer {
            name: folded,
            account: account_key,
            identity,
            token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
            channel,
            sessions: HashMap::new(),
        })
    }

    /// Username.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Device 1's public key (IK in PQXDH, what recipients see).
    pub fn identity(&self) -> &PublicIdentity {
        self.identity.public()
    }

    /// The account key (safety numbers are computed from it).
    pub fn account_identity(&self) -> &PublicIdentity {
        self.account.public()
    }

    /// The bearer token (base64url, no padding).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The channel to the endpoint.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `msg` with this account's `authorization` metadata.
    pub fn authed<T>(&self, msg: T) -> Result<Request<T>, HarnessError> {
        let mut req = Request::new(msg);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| herr("token is not valid metadata"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    /// `GetBundles` for every device of `user`.
    pub async fn bundles(&self, user: &str) -> Result<v1::GetBundlesResponse, HarnessError> {
        let req = self.authed(v1::GetBundlesRequest {
            username: user.into(),
            device_id: 0,
        })?;
        KeyServiceClient::new(self.channel())
            .get_bundles(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| herr(format!("GetBundles {user}: {s}")))
    }

    /// Starts sessions with every device of `user` (PQXDH with the bundles
    /// the endpoint hands out) unless they exist.
    pub async fn ensure_sessions(&mut self, user: &str) -> Result<(), HarnessError> {
        if self.sessions.contains_key(user) {
            return Ok(());
        }
        let resp = self.bundles(user).await?;
        let account = account_key_from_list(&resp.signed_device_list, &resp.username)?;
        let local = Address::new(self.name.clone(), 1);
        let mut rows = Vec::new();
        for b in &resp.bundles {
            let bundle = bundle_from_proto(b, &account)?;
            let session =
                Session::initiate(&mut OsRng, &self.identity, &local, &resp.username, &bundle)
                    .map_err(|e| herr(format!("{user}'s bundle: {e}")))?;
            rows.push((
                b.device_id,
                PeerSession {
                    registration_id: b.registration_id,
                    session,
                },
            ));
        }
        if rows.is_empty() {
            return Err(herr(format!("{user} has no devices")));
        }
        self.sessions.insert(user.to_owned(), rows);
        Ok(())
    }

    /// Forgets the sessions with `user` (the next send runs PQXDH again).
    pub fn forget_sessions(&mut self, user: &str) {
        self.sessions.remove(user);
    }

    /// Encrypts `plaintext` (any bytes: the encoded `v1::Content` a client
    /// would decrypt) with `commitment` as the franking commitment (also the
    /// AEAD associated data) for every device of `to`, and sends it with
    /// `message_id`.
    pub async fn send_plaintext(
        &mut self,
        to: &str,
        message_id: &[u8],
        plaintext: &[u8],
        commitment: &[u8],
    ) -> Result<RawSent, HarnessError> {
        self.ensure_sessions(to).await?;
        let rows = self
            .sessions
            .get_mut(to)
            .ok_or_else(|| herr(format!("no sessions with {to}")))?;
        let mut envelopes = Vec::new();
        for (device_id, row) in rows.iter_mut() {
            let out = row
                .session
                .encrypt(&mut OsRng, plaintext, commitment)
                .map_err(|e| herr(format!("encrypt: {e}")))?;
            envelopes.push(v1::OutgoingEnvelope {
                device_id: *device_id,
                registration_id: row.registration_id,
                r#type: match out.kind {
                    MessageKind::Prekey => v1::EnvelopeType::PrekeyMessage,
                    MessageKind::Normal => v1::EnvelopeType::Message,
                } as i32,
                content: out.bytes,
                franking_commitment: commitment.to_vec(),
            });
        }
        let req = self.authed(v1::SendRequest {
            recipient: to.into(),
            message_id: message_id.to_vec(),
            envelopes: envelopes.clone(),
            ..Default::default()
        })?;
        let resp = MessageServiceClient::new(self.channel())
            .send(req)
            .await
            .map_err(|s| {
                herr(format!(
                    "Send to {to} refused: {:?}: {}",
                    s.code(),
                    s.message()
                ))
            })?
            .into_inner();
        Ok(RawSent {
            message_id: message_id.to_vec(),
            server_timestamp_ms: resp.server_timestamp_ms,
            envelopes,
        })
    }

    /// Sends `content` (fully chosen by the test) with `message_id`. The
    /// franking commitment is made as a genuine client makes it: over the
    /// text body (empty without a text body) under `content.franking_key`
    /// (when that is not a valid 32-byte key, under a random key, so the
    /// recipient's check fails as it should).
    pub async fn send_content(
        &mut self,
        to: &str,
        message_id: &[u8],
        content: &v1::Content,
    ) -> Result<RawSent, HarnessError> {
        let text = match &content.body {
            Some(v1::content::Body::Text(t)) => t.body.as_bytes(),
            // Other kinds are franked over their canonical form
            // (missive_client::conversation::franked_plaintext), which this
            // raw peer does not build: the recipient refuses them.
            Some(_) | None => b"",
        };
        let key = FrankingKey::from_bytes(&content.franking_key)
            .unwrap_or_else(|_| FrankingKey::generate(&mut OsRng));
        let commitment = franking::commit(&key, message_id, text);
        let plaintext = content.encode_to_vec();
        self.send_plaintext(to, message_id, &plaintext, &commitment)
            .await
    }

    /// Sends a text with the claimed clock `sent_at_ms` and a fresh id.
    pub async fn send_text(
        &mut self,
        to: &str,
        text: &str,
        sent_at_ms: u64,
    ) -> Result<RawSent, HarnessError> {
        let id = message_id();
        self.send_content(to, &id, &text_content(text, sent_at_ms))
            .await
    }
}

/// [`RawPeer`] with its own runtime, for blocking tests. Do not call from
/// inside an async runtime.
pub struct BlockingRawPeer {
    rt: tokio::runtime::Runtime,
    peer: RawPeer,
}

impl std::fmt::Debug for BlockingRawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.peer.fmt(f)
    }
}

impl BlockingRawPeer {
    /// See [`RawPeer::register`].
    pub fn register<E: Endpoint + ?Sized>(
        endpoint: &E,
        name: &str,
    ) -> Result<BlockingRawPeer, HarnessError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| herr(format!("runtime: {e}")))?;
        let peer = rt.block_on(RawPeer::register(endpoint, name))?;
        Ok(BlockingRawPeer { rt, peer })
    }

    /// The async peer.
    pub fn peer(&mut self) -> &mut RawPeer {
        &mut self.peer
    }

    /// Runs `f(peer)` to completion on this peer's runtime.
    pub fn block_on<'a, F, T>(&'a mut self, f: impl FnOnce(&'a mut RawPeer) -> F) -> T
    where
        F: std::future::Future<Output = T> + 'a,
    {
        self.rt.block_on(f(&mut self.peer))
    }

    /// See [`RawPeer::send_text`].
    pub fn send_text(
        &mut self,
        to: &str,
        text: &str,
        sent_at_ms: u64,
    ) -> Result<RawSent, HarnessError> {
        self.rt.block_on(self.peer.send_text(to, text, sent_at_ms))
    }

    /// See [`RawPeer::send_content`].
    pub fn send_content(
        &mut self,
        to: &str,
        message_id: &[u8],
        content: &v1::Content,
    ) -> Result<RawSent, HarnessError> {
        self.rt
            .block_on(self.peer.send_content(to, message_id, content))
    }

    /// See [`RawPeer::send_plaintext`].
    pub fn send_plaintext(
        &mut self,
        to: &str,
        message_id: &[u8],
        plaintext: &[u8],
        commitment: &[u8],
    ) -> Result<RawSent, HarnessError> {
        self.rt.block_on(
            self.peer
                .send_plaintext(to, message_id, plaintext, commitment),
        )
    }
}
