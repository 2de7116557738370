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

use missive_crypto::{
    DeviceEntry, DeviceList, IdentityKeyPair, KemPrekeyPair, OneTimePrekeyPair, PrekeyOwner,
    SignedPrekeyPair,
};
use missive_proto::v1::account_service_client::AccountServiceClient;
use missive_proto::v1::key_service_client::KeyServiceClient;
use missive_proto::v1::message_service_client::MessageServiceClient;
use missive_proto::v1::report_service_client::ReportServiceClient;
use missive_proto::v1::{
    AddDeviceRequest, ChallengePurpose, GetChallengeRequest, KemPrekey, LoginRequest,
    OneTimePrekey, PublicIdentity, PublishDeviceListRequest, RegisterRequest, RegisterResponse,
    SignedPrekey,
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

/// The name test clients verify TLS for (the generated certificate's).
pub const SERVER_NAME: &str = "localhost";

pub struct User {
    pub username: String,
    /// The account key (signs device lists and the registration).
    pub account: IdentityKeyPair,
    /// This device's own key (signs its prekeys and logins).
    pub identity: IdentityKeyPair,
    pub device_id: u32,
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

/// Whose prekeys a device signs: its account key and device id.
pub fn owner(account: &IdentityKeyPair, device_id: u32) -> PrekeyOwner {
    PrekeyOwner {
        account: account.public().clone(),
        device_id,
    }
}

pub fn signed_prekey(identity: &IdentityKeyPair, owner: &PrekeyOwner, id: u32) -> SignedPrekey {
    let public = SignedPrekeyPair::generate(&mut OsRng, id, identity, owner).public();
    SignedPrekey {
        id,
        public_key: public.public_key.to_vec(),
        signature: public.signature.to_vec(),
    }
}

pub fn kem_prekey(identity: &IdentityKeyPair, owner: &PrekeyOwner, id: u32) -> KemPrekey {
    let public = KemPrekeyPair::generate(&mut OsRng, id, identity, owner).public();
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

/// A device list for `username` at `version` naming `devices` (id, device
/// key, registration id; ascending ids), signed by `account`.
pub fn device_list(
    account: &IdentityKeyPair,
    username: &str,
    version: u64,
    devices: &[(u32, &IdentityKeyPair, u32)],
) -> Vec<u8> {
    DeviceList {
        username: username.to_owned(),
        version,
        timestamp_ms: 0,
        devices: devices
            .iter()
            .map(|&(id, key, registration_id)| {
                DeviceEntry::link(key, username, account.public(), id, registration_id)
            })
            .collect(),
    }
    .sign(account)
    .unwrap()
    .to_bytes()
}

/// A complete, correctly signed registration request: `account` is the
/// account key, `device` device 1's key.
pub async fn registration(
    channel: &Channel,
    username: &str,
    account: &IdentityKeyPair,
    device: &IdentityKeyPair,
    one_time: u32,
    kem: u32,
) -> RegisterRequest {
    let challenge = challenge(channel, username, ChallengePurpose::Register).await;
    let registration_id = 1234;
    let signature = account.sign(&missive_crypto::transcript::registration(
        &challenge,
        SERVER_NAME,
        username,
        registration_id,
    ));
    let owner = owner(account, 1);
    RegisterRequest {
        username: username.into(),
        challenge,
        identity: Some(wire_identity(account)),
        registration_id,
        signed_prekey: Some(signed_prekey(device, &owner, 1)),
        last_resort_kem_prekey: Some(kem_prekey(device, &owner, 1000)),
        one_time_prekeys: (1..=one_time).map(one_time_prekey).collect(),
        one_time_kem_prekeys: (1..=kem).map(|id| kem_prekey(device, &owner, id)).collect(),
        signature: signature.to_vec(),
        device_identity: Some(wire_identity(device)),
        signed_device_list: device_list(
            account,
            &username.to_ascii_lowercase(),
            1,
            &[(1, device, registration_id)],
        ),
        server_name: SERVER_NAME.into(),
    }
}

/// A complete, correctly signed add-device request for `device` (key
/// `device_key`) of `username`'s account (account key `account`).
pub async fn add_device_request(
    channel: &Channel,
    username: &str,
    account: &IdentityKeyPair,
    device_key: &IdentityKeyPair,
    device_id: u32,
    registration_id: u32,
    one_time: u32,
) -> AddDeviceRequest {
    let challenge = challenge(channel, username, ChallengePurpose::AddDevice).await;
    let signature = device_key.sign(&missive_crypto::transcript::add_device(
        &challenge,
        SERVER_NAME,
        username,
        device_id,
        registration_id,
    ));
    let owner = owner(account, device_id);
    AddDeviceRequest {
        username: username.into(),
        challenge,
        device_id,
        registration_id,
        signed_prekey: Some(signed_prekey(device_key, &owner, 1)),
        last_resort_kem_prekey: Some(kem_prekey(device_key, &owner, 1000)),
        one_time_prekeys: (1..=one_time).map(one_time_prekey).collect(),
        one_time_kem_prekeys: (1..=one_time)
            .map(|id| kem_prekey(device_key, &owner, id))
            .collect(),
        server_name: SERVER_NAME.into(),
        signature: signature.to_vec(),
        signed_device_list: Vec::new(),
    }
}

/// `primary` publishes a list naming itself and a new device `device_id`
/// (registration id `100 + device_id`), which then joins; the new device's
/// user handle.
pub async fn link_device(primary: &User, device_id: u32, one_time: u32) -> User {
    let key = IdentityKeyPair::generate(&mut OsRng);
    let registration_id = 100 + device_id;
    let list = device_list(
        &primary.account,
        &primary.username,
        2,
        &[
            (
                primary.device_id,
                &primary.identity,
                primary.registration_id,
            ),
            (device_id, &key, registration_id),
        ],
    );
    primary
        .keys()
        .publish_device_list(primary.req(PublishDeviceListRequest {
            signed_device_list: list,
        }))
        .await
        .unwrap();
    let request = add_device_request(
        &primary.channel,
        &primary.username,
        &primary.account,
        &key,
        device_id,
        registration_id,
        one_time,
    )
    .await;
    let response: RegisterResponse = primary
        .accounts()
        .add_device(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.device_id, device_id);
    User {
        username: primary.username.clone(),
        account: IdentityKeyPair::from_secret_bytes(&primary.account.to_secret_bytes()).unwrap(),
        identity: key,
        device_id,
        registration_id,
        token: response.session.unwrap().token,
        channel: primary.channel.clone(),
    }
}

pub async fn register(channel: &Channel, username: &str, one_time: u32, kem: u32) -> User {
    let account = IdentityKeyPair::generate(&mut OsRng);
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let request = registration(channel, username, &account, &identity, one_time, kem).await;
    let registration_id = request.registration_id;
    let response = AccountServiceClient::new(channel.clone())
        .register(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.device_id, 1);
    User {
        username: username.into(),
        account,
        identity,
        device_id: 1,
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
        SERVER_NAME,
        &user.username,
        user.device_id,
    ));
    AccountServiceClient::new(user.channel.clone())
        .login(LoginRequest {
            username: user.username.clone(),
            device_id: user.device_id,
            challenge,
            signature: signature.to_vec(),
            server_name: SERVER_NAME.into(),
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
