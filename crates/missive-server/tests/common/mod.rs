//! Helpers shared by the integration tests: a real node over real TLS on
//! 127.0.0.1, and a client that registers with real keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::path::{Path, PathBuf};

use missive_crypto::{IdentityKeyPair, KemPrekeyPair, OneTimePrekeyPair, SignedPrekeyPair};
use missive_proto::v1::account_service_client::AccountServiceClient;
use missive_proto::v1::key_service_client::KeyServiceClient;
use missive_proto::v1::message_service_client::MessageServiceClient;
use missive_proto::v1::report_service_client::ReportServiceClient;
use missive_proto::v1::{
    ChallengePurpose, GetChallengeRequest, KemPrekey, LoginRequest, OneTimePrekey, PublicIdentity,
    RegisterRequest, SignedPrekey,
};
use missive_server::{Config, RouteHook, RunningServer};
use rand::rngs::OsRng;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// A config for a test node in `dir`, on a free port.
pub fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config
}

pub async fn start(dir: &Path) -> RunningServer {
    missive_server::start(config(dir)).await.unwrap()
}

pub async fn start_with(dir: &Path, hook: RouteHook) -> RunningServer {
    missive_server::start_with(config(dir), Some(hook))
        .await
        .unwrap()
}

/// A TLS channel trusting the node's generated CA.
pub async fn connect(url: &str, ca: &Path) -> Channel {
    let ca = std::fs::read(ca).unwrap();
    Channel::from_shared(url.to_owned())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn channel(server: &RunningServer) -> Channel {
    connect(&server.url(), server.ca_path().unwrap()).await
}

pub struct User {
    pub username: String,
    pub identity: IdentityKeyPair,
    pub registration_id: u32,
    pub token: Vec<u8>,
    pub channel: Channel,
}

pub fn wire_identity(identity: &IdentityKeyPair) -> PublicIdentity {
    let public = identity.public();
    PublicIdentity {
        signing_key: public.signing_key().to_vec(),
    }
}

pub fn signed_prekey(identity: &IdentityKeyPair, id: u32) -> SignedPrekey {
    let public = SignedPrekeyPair::generate(&mut OsRng, id, identity).public();
    SignedPrekey {
        id,
        public_key: public.public_key.to_vec(),
        signature: public.signature.to_vec(),
    }
}

pub fn kem_prekey(identity: &IdentityKeyPair, id: u32) -> KemPrekey {
    let public = KemPrekeyPair::generate(&mut OsRng, id, identity).public();
    KemPrekey {
        id,
        public_key: public.public_key.clone(),
        signature: public.signature.to_vec(),
    }
}

pub fn one_time_prekey(id: u32) -> OneTimePrekey {
    let public = OneTimePrekeyPair::generate(&mut OsRng, id).public();
    OneTimePrekey {
        id,
        public_key: public.public_key.to_vec(),
    }
}

pub async fn challenge(channel: &Channel, username: &str, purpose: ChallengePurpose) -> Vec<u8> {
    AccountServiceClient::new(channel.clone())
        .get_challenge(GetChallengeRequest {
            username: username.into(),
            purpose: purpose as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .challenge
}

/// A complete, correctly signed registration request.
pub async fn registration(
    channel: &Channel,
    username: &str,
    identity: &IdentityKeyPair,
    one_time: u32,
    kem: u32,
) -> RegisterRequest {
    let challenge = challenge(channel, username, ChallengePurpose::Register).await;
    let registration_id = 1234;
    let signature = identity.sign(&missive_crypto::transcript::registration(
        &challenge,
        username,
        registration_id,
    ));
    RegisterRequest {
        username: username.into(),
        challenge,
        identity: Some(wire_identity(identity)),
        registration_id,
        signed_prekey: Some(signed_prekey(identity, 1)),
        last_resort_kem_prekey: Some(kem_prekey(identity, 1000)),
        one_time_prekeys: (1..=one_time).map(one_time_prekey).collect(),
        one_time_kem_prekeys: (1..=kem).map(|id| kem_prekey(identity, id)).collect(),
        signature: signature.to_vec(),
    }
}

pub async fn register(channel: &Channel, username: &str, one_time: u32, kem: u32) -> User {
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let request = registration(channel, username, &identity, one_time, kem).await;
    let registration_id = request.registration_id;
    let response = AccountServiceClient::new(channel.clone())
        .register(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.device_id, 1);
    User {
        username: username.into(),
        identity,
        registration_id,
        token: response.session.unwrap().token,
        channel: channel.clone(),
    }
}

/// A fresh token through challenge-response login.
pub async fn login(user: &User) -> Vec<u8> {
    let challenge = challenge(&user.channel, &user.username, ChallengePurpose::Login).await;
    let signature = user.identity.sign(&missive_crypto::transcript::login(
        &challenge,
        &user.username,
        1,
    ));
    AccountServiceClient::new(user.channel.clone())
        .login(LoginRequest {
            username: user.username.clone(),
            device_id: 1,
            challenge,
            signature: signature.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

pub fn authed<T>(token: &[u8], message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = missive_server::auth::bearer_header(token).parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

impl User {
    pub fn req<T>(&self, message: T) -> Request<T> {
        authed(&self.token, message)
    }
    pub fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel.clone())
    }
    pub fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel.clone())
    }
    pub fn messages(&self) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(self.channel.clone())
    }
    pub fn reports(&self) -> ReportServiceClient<Channel> {
        ReportServiceClient::new(self.channel.clone())
    }
}

/// Every file under `dir`, concatenated.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
