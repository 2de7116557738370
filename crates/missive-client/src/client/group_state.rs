//! The MLS half of groups (RFC 9420, through openmls): key packages, group
//! state and the checks that keep a ghost out, inside one store transaction
//! and without I/O (the network half is `groups.rs`).
//!
//! Every leaf is a device. Its credential is a basic credential naming
//! `(username, device id)` and its signature key is that device's key; a
//! leaf is accepted only if the account's signed device list, verified
//! against the pinned account key, lists that device with that key
//! ([`vouched`]). This is checked for every member of a group a Welcome
//! brings this device into, for every leaf a Commit adds or updates, and for
//! every KeyPackage fetched to add someone. The server, which is not a
//! member, cannot make a valid commit; what it can do — hand out a KeyPackage
//! of a device the account never listed, or a Welcome into a group it made
//! itself with such devices — is refused here.

use missive_crypto::{IdentityKeyPair, PublicIdentity, SignedDeviceList};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_libcrux_crypto::CryptoProvider as LibcruxCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::storage::StorageProvider as _;
use openmls_traits::types::SignatureScheme;

use super::mls_storage::{MlsStore, MlsStoreError};
use crate::store::{Db, MlsStamp};

/// The groups' ciphersuite: X-Wing (ML-KEM-768 + X25519) for HPKE, so a
/// recorded group is as safe from a future quantum computer as a recorded
/// 1:1 session; ChaCha20-Poly1305, SHA-256, Ed25519 (the device keys), as
/// in 1:1 sessions. Code point 0x004D; see docs/PROTOCOL.md, "Groups".
pub(crate) const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;

// The group context extension holding the group's name (UTF-8), in RFC
// 9420's private-use range: only members read it.
use missive_crypto::group::GROUP_NAME_EXTENSION;

/// Longest group name, bytes.
pub(crate) const MAX_GROUP_NAME: usize = missive_crypto::group::MAX_GROUP_NAME_BYTES;

/// Epochs whose secrets a member keeps after moving on: none. The server
/// takes an application message only for the group's current epoch and
/// delivers in order, so every message is processed in the epoch it was made
/// in; the one device that moves ahead, a committer, merges its commit only
/// after the messages ordered before it (`OutgoingCommit::accepted_seq`).
/// Each kept epoch would cost a copy of every member's leaf (≈ 1.3 KB with
/// X-Wing keys) written with every message processed.
const PAST_EPOCHS: usize = 0;

/// Application messages are padded to a multiple of this many bytes.
const PADDING: usize = 256;

/// The openmls provider for one store transaction.
pub(crate) struct Provider<'a, 'c> {
    crypto: LibcruxCrypto,
    storage: MlsStore<'a, 'c>,
}

impl<'a, 'c> Provider<'a, 'c> {
    /// Fails only when the operating system gives no randomness.
    pub(crate) fn new(db: &'a Db<'c>) -> std::result::Result<Self, GroupRefusal> {
        let crypto = LibcruxCrypto::new().map_err(|e| {
            GroupRefusal::Local(crate::error::ClientError::Crypto(format!(
                "no randomness for the group layer: {e:?}"
            )))
        })?;
        Ok(Provider {
            crypto,
            storage: MlsStore::new(db),
        })
    }
}

impl<'a, 'c> OpenMlsProvider for Provider<'a, 'c> {
    type CryptoProvider = LibcruxCrypto;
    type RandProvider = LibcruxCrypto;
    type StorageProvider = MlsStore<'a, 'c>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// This device's key as an MLS signer (it signs only MLS `SignContent`).
pub(crate) struct DeviceSigner<'a>(pub(crate) &'a IdentityKeyPair);

impl Signer for DeviceSigner<'_> {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.0
            .sign_mls(payload)
            .map(|s| s.to_vec())
            .map_err(|_| SignerError::SigningError)
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A device as a group member.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DeviceName {
    pub(crate) username: String,
    pub(crate) device_id: u32,
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.username, self.device_id)
    }
}

/// Reads a credential back; `None` for anything that is not exactly one of
/// ours (`missive_crypto::group::credential_identity`) with a valid username.
pub(crate) fn parse_credential(credential: &Credential) -> Option<DeviceName> {
    if credential.credential_type() != CredentialType::Basic {
        return None;
    }
    let (username, device_id) =
        missive_crypto::group::parse_credential_identity(credential.serialized_content())?;
    if super::normalize_username(username).ok().as_deref() != Some(username) {
        return None;
    }
    Some(DeviceName {
        username: username.to_owned(),
        device_id,
    })
}

fn credential_with_key(username: &str, device_id: u32, key: &PublicIdentity) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(missive_crypto::group::credential_identity(
            username, device_id,
        ))
        .into(),
        signature_key: key.signing_key().to_vec().into(),
    }
}

/// What every leaf supports. `LastResort` must be listed, or a last-resort
/// KeyPackage carries an extension its own leaf does not support and no one
/// can add it.
fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[
            ExtensionType::Unknown(GROUP_NAME_EXTENSION),
            ExtensionType::LastResort,
        ]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Whether the signed device list `list` of `username` names `device` with
/// the signature key `key`.
fn list_vouches(list: &SignedDeviceList, device_id: u32, key: &[u8]) -> bool {
    list.unverified_list()
        .devices
        .iter()
        .any(|d| d.device_id == device_id && d.identity.signing_key().as_slice() == key)
}

/// Whether the account of `device` vouches for it with signature key `key`:
/// its newest verified signed device list (ours, or the pinned contact's)
/// lists the device with that key. A contact whose account key changed and
/// was not accepted vouches for nothing.
pub(crate) fn vouched(
    db: &Db<'_>,
    me: &str,
    device: &DeviceName,
    key: &[u8],
) -> crate::error::Result<bool> {
    if device.username == me {
        let own = db
            .get_meta(super::META_DEVICE_LIST)?
            .and_then(|b| SignedDeviceList::from_bytes(&b).ok());
        return Ok(own.is_some_and(|l| list_vouches(&l, device.device_id, key)));
    }
    Ok(db
        .contact(&device.username)?
        .and_then(|c| c.device_list)
        .is_some_and(|l| list_vouches(&l, device.device_id, key)))
}

/// Why a leaf is refused, naming it.
fn check_leaf(
    db: &Db<'_>,
    me: &str,
    credential: &Credential,
    key: &[u8],
) -> std::result::Result<DeviceName, GroupRefusal> {
    let Some(device) = parse_credential(credential) else {
        return Err(GroupRefusal::Refused(
            "it names a member whose credential is not a Missive device".into(),
        ));
    };
    match vouched(db, me, &device, key) {
        Ok(true) => Ok(device),
        Ok(false) => Err(GroupRefusal::Refused(format!(
            "device {} of {} is not on {}'s signed device list",
            device.device_id, device.username, device.username
        ))),
        Err(e) => Err(GroupRefusal::Local(e)),
    }
}

/// Why a group message was not accepted.
#[derive(Debug)]
pub(crate) enum GroupRefusal {
    /// The message is bad or names a device no account vouches for.
    Refused(String),
    /// A local failure (store): try again later.
    Local(crate::error::ClientError),
}

impl From<MlsStoreError> for GroupRefusal {
    fn from(e: MlsStoreError) -> Self {
        GroupRefusal::Local(crate::error::ClientError::Store {
            path: std::path::PathBuf::new(),
            detail: e.0,
        })
    }
}

impl From<crate::error::ClientError> for GroupRefusal {
    fn from(e: crate::error::ClientError) -> Self {
        GroupRefusal::Local(e)
    }
}

/// This device as a group member: its names, key and signer.
pub(crate) struct Me<'a> {
    pub(crate) username: &'a str,
    pub(crate) device_id: u32,
    pub(crate) identity: &'a IdentityKeyPair,
}

impl Me<'_> {
    fn credential(&self) -> CredentialWithKey {
        credential_with_key(self.username, self.device_id, self.identity.public())
    }

    fn signer(&self) -> DeviceSigner<'_> {
        DeviceSigner(self.identity)
    }
}

/// New KeyPackages for this device (their private keys stay in the store),
/// TLS-encoded `MLSMessage`s ready to upload.
pub(crate) fn new_key_packages(
    db: &Db<'_>,
    me: &Me<'_>,
    count: usize,
    last_resort: bool,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    let provider = Provider::new(db).map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(CIPHERSUITE, &provider, &me.signer(), me.credential())
            .map_err(|e| err("cannot make a KeyPackage", e))?;
        let message = MlsMessageOut::from(bundle.key_package().clone());
        out.push(
            message
                .to_bytes()
                .map_err(|e| err("cannot encode a KeyPackage", e))?,
        );
    }
    Ok(out)
}

/// The last-resort KeyPackages this device made, newest last: (made at ms,
/// its hash reference).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct LastResortKeys(pub(crate) Vec<(u64, Option<KeyPackageRef>)>);

/// Makes a new last-resort KeyPackage (the server replaces its copy with
/// it) and forgets the private keys of all but the one it replaces: a
/// Welcome made from that one may still be on its way.
pub(crate) fn rotate_last_resort(
    db: &Db<'_>,
    me: &Me<'_>,
    kept: &mut LastResortKeys,
    now_ms: u64,
) -> std::result::Result<Vec<u8>, String> {
    let provider = Provider::new(db).map_err(|e| format!("{e:?}"))?;
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .mark_as_last_resort()
        .build(CIPHERSUITE, &provider, &me.signer(), me.credential())
        .map_err(|e| err("cannot make a KeyPackage", e))?;
    let reference = bundle
        .key_package()
        .hash_ref(provider.crypto())
        .map_err(|e| err("cannot name a KeyPackage", e))?;
    while kept.0.len() > 1 {
        if let (_, Some(old)) = kept.0.remove(0) {
            provider
                .storage()
                .delete_key_package(&old)
                .map_err(|e| e.0)?;
        }
    }
    kept.0.push((now_ms, Some(reference)));
    MlsMessageOut::from(bundle.key_package().clone())
        .to_bytes()
        .map_err(|e| err("cannot encode a KeyPackage", e))
}

/// Checks a fetched KeyPackage: it parses, its signature verifies, it is for
/// our ciphersuite, and its leaf names `device` with the key the account's
/// signed device list gives that device (`key`).
pub(crate) fn check_key_package(
    bytes: &[u8],
    device: &DeviceName,
    key: &PublicIdentity,
) -> std::result::Result<KeyPackage, String> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| format!("the KeyPackage of {device} does not parse"))?;
    let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
        return Err(format!(
            "what the server gave as {device}'s KeyPackage is not one"
        ));
    };
    let kp = kp
        .validate(
            &LibcruxCrypto::new().map_err(|e| format!("no randomness: {e:?}"))?,
            ProtocolVersion::Mls10,
        )
        .map_err(|e| match e {
            KeyPackageVerifyError::LifetimeError(_) => format!(
                "the KeyPackage of {device} has expired or is not valid yet (that device has not \
                 refreshed its KeyPackages for weeks, or a clock is wrong)"
            ),
            _ => format!("the KeyPackage of {device} is not validly signed"),
        })?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(format!(
            "the KeyPackage of {device} is for another ciphersuite"
        ));
    }
    let leaf = kp.leaf_node();
    if parse_credential(leaf.credential()).as_ref() != Some(device) {
        return Err(format!(
            "the KeyPackage given for {device} names another device"
        ));
    }
    if leaf.signature_key().as_slice() != key.signing_key().as_slice() {
        return Err(format!(
            "the KeyPackage of {device} is not signed by the key {}'s signed device list gives it",
            device.username
        ));
    }
    Ok(kp)
}

fn group_id(id: &[u8]) -> GroupId {
    GroupId::from_slice(id)
}

/// How many groups one process keeps in memory.
const CACHED_GROUPS: usize = 4;

/// Groups' MLS state kept in memory by this process between store
/// transactions, each with the stamp of the stored state it is
/// ([`Db::mls_stamp`]). Loading a group reads and parses its whole ratchet
/// tree (≈ 1.5 KB per member with X-Wing keys); an application message
/// needs none of it, so a long-running receiver keeps the group instead.
/// A copy is used only while the store's stamp still matches: any write of
/// the group's state (by this process or another on the home), any other
/// write of openmls state, and any rolled-back write change the stamp.
#[derive(Default)]
pub(crate) struct GroupCache(std::sync::Mutex<Vec<(Vec<u8>, MlsStamp, MlsGroup)>>);

impl GroupCache {
    /// The copy of `id`, if it is the stored state; it leaves the cache
    /// (a failed operation must not put it back).
    fn take(&self, id: &[u8], stamp: &MlsStamp) -> Option<MlsGroup> {
        let mut groups = self.0.lock().ok()?;
        let i = groups.iter().position(|(gid, _, _)| gid == id)?;
        let (_, kept, group) = groups.swap_remove(i);
        (&kept == stamp).then_some(group)
    }

    fn put(&self, id: &[u8], stamp: MlsStamp, group: MlsGroup) {
        if let Ok(mut groups) = self.0.lock() {
            groups.retain(|(gid, _, _)| gid != id);
            if groups.len() >= CACHED_GROUPS {
                groups.remove(0);
            }
            groups.push((id.to_vec(), stamp, group));
        }
    }
}

/// Runs `f` on group `id`'s state: the copy in memory if it is the stored
/// state, else loaded. After `f` succeeds the group is kept in memory; if
/// it fails, whatever it changed in memory is dropped.
fn with_group<T>(
    db: &Db<'_>,
    id: &[u8],
    f: impl FnOnce(&Provider<'_, '_>, &mut MlsGroup) -> std::result::Result<T, GroupRefusal>,
) -> std::result::Result<T, GroupRefusal> {
    let stamp = db.mls_stamp(id)?;
    let cache = db.group_cache();
    let mut group = match cache.and_then(|c| c.take(id, &stamp)) {
        Some(g) => g,
        None => load(db, id)?,
    };
    let provider = Provider::new(db)?;
    let (out, stamp) = db.with_group_scope(id, stamp, || f(&provider, &mut group))?;
    if out.is_ok()
        && let Some(c) = cache
    {
        c.put(id, stamp, group);
    }
    out
}

/// Reads group `id` (through the copy in memory when it is current).
pub(crate) fn read<T>(
    db: &Db<'_>,
    id: &[u8],
    f: impl FnOnce(&MlsGroup) -> T,
) -> std::result::Result<T, GroupRefusal> {
    with_group(db, id, |_, g| Ok(f(g)))
}

/// Loads a group's MLS state from the store (not through the copy in
/// memory: for work that is rolled back).
pub(crate) fn load(db: &Db<'_>, id: &[u8]) -> std::result::Result<MlsGroup, GroupRefusal> {
    let provider = Provider::new(db)?;
    MlsGroup::load(provider.storage(), &group_id(id))?
        .ok_or_else(|| GroupRefusal::Refused("this device holds no state for the group".into()))
}

/// The name a group's context carries.
pub(crate) fn group_name(group: &MlsGroup) -> Option<String> {
    group.extensions().iter().find_map(|e| match e {
        Extension::Unknown(t, UnknownExtension(bytes)) if *t == GROUP_NAME_EXTENSION => {
            String::from_utf8(bytes.clone()).ok()
        }
        _ => None,
    })
}

/// Creates a group with this device as its only member, at epoch 0.
pub(crate) fn create(
    db: &Db<'_>,
    me: &Me<'_>,
    id: &[u8; 16],
    name: &str,
) -> std::result::Result<(), String> {
    let provider = Provider::new(db).map_err(|e| format!("{e:?}"))?;
    let extensions = Extensions::single(Extension::Unknown(
        GROUP_NAME_EXTENSION,
        UnknownExtension(name.as_bytes().to_vec()),
    ))
    .map_err(|e| err("cannot name the group", e))?;
    MlsGroup::builder()
        .with_group_id(group_id(id))
        .ciphersuite(CIPHERSUITE)
        .with_capabilities(capabilities())
        .with_group_context_extensions(extensions)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .padding_size(PADDING)
        .with_wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build(&provider, &me.signer(), me.credential())
        .map_err(|e| err("cannot create the group", e))?;
    Ok(())
}

/// A commit this device made, waiting for the server to order it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct OutgoingCommit {
    /// The epoch it was made in, hex-free.
    pub(crate) epoch: u64,
    /// 16 bytes, hex: the idempotency key of its `Commit` call.
    pub(crate) message_id: String,
    /// The commit `MLSMessage`, hex.
    pub(crate) commit: String,
    /// The Welcome `MLSMessage` for the added devices, hex (empty if none).
    pub(crate) welcome: String,
    pub(crate) added: Vec<(String, u32)>,
    pub(crate) removed: Vec<(String, u32)>,
    /// Those of `removed` that had left (their own proposal): no event.
    #[serde(default)]
    pub(crate) left: Vec<(String, u32)>,
    /// The seq the server gave it. It is merged only once every message
    /// ordered before it was processed (they are of its epoch, and no past
    /// epoch's secrets are kept), i.e. before the first message after it.
    #[serde(default)]
    pub(crate) accepted_seq: Option<u64>,
}

fn outgoing(
    epoch: u64,
    commit: &MlsMessageOut,
    welcome: Option<&MlsMessageOut>,
    added: Vec<DeviceName>,
    removed: Vec<DeviceName>,
    left: Vec<DeviceName>,
) -> std::result::Result<OutgoingCommit, String> {
    let commit = commit
        .to_bytes()
        .map_err(|e| err("cannot encode the commit", e))?;
    let welcome = match welcome {
        Some(w) => w
            .to_bytes()
            .map_err(|e| err("cannot encode the Welcome", e))?,
        None => Vec::new(),
    };
    let message_id: [u8; 16] = rand::random();
    Ok(OutgoingCommit {
        epoch,
        message_id: hex::encode(message_id),
        commit: hex::encode(commit),
        welcome: hex::encode(welcome),
        added: added
            .into_iter()
            .map(|d| (d.username, d.device_id))
            .collect(),
        accepted_seq: None,
        removed: removed
            .into_iter()
            .map(|d| (d.username, d.device_id))
            .collect(),
        left: left
            .into_iter()
            .map(|d| (d.username, d.device_id))
            .collect(),
    })
}

/// The devices in a group, by leaf.
pub(crate) fn members(group: &MlsGroup) -> Vec<(LeafNodeIndex, Option<DeviceName>)> {
    group
        .members()
        .map(|m| (m.index, parse_credential(&m.credential)))
        .collect()
}

/// Makes (and keeps as pending) a commit adding the devices of `key_packages`
/// (already checked with [`check_key_package`]) and removing the leaves of
/// `remove`.
pub(crate) fn stage_commit(
    db: &Db<'_>,
    me: &Me<'_>,
    id: &[u8],
    key_packages: Vec<(DeviceName, KeyPackage)>,
    remove: &[DeviceName],
) -> std::result::Result<OutgoingCommit, GroupRefusal> {
    with_group(db, id, |provider, group| {
        stage_commit_in(provider, group, me, key_packages, remove)
    })
}

fn stage_commit_in(
    provider: &Provider<'_, '_>,
    group: &mut MlsGroup,
    me: &Me<'_>,
    key_packages: Vec<(DeviceName, KeyPackage)>,
    remove: &[DeviceName],
) -> std::result::Result<OutgoingCommit, GroupRefusal> {
    if group.pending_commit().is_some() {
        group.clear_pending_commit(provider.storage())?;
    }
    let epoch = group.epoch().as_u64();
    let leaves: Vec<LeafNodeIndex> = members(group)
        .into_iter()
        .filter(|(_, d)| d.as_ref().is_some_and(|d| remove.contains(d)))
        .map(|(i, _)| i)
        .collect();
    let added: Vec<DeviceName> = key_packages.iter().map(|(d, _)| d.clone()).collect();
    let mut builder = group.commit_builder();
    for (_, kp) in key_packages {
        builder = builder.propose_adds(Some(kp));
    }
    builder = builder.propose_removals(leaves.iter().copied());
    // Proposals received earlier (a member leaving) go in too.
    let bundle = builder
        .consume_proposal_store(true)
        .load_psks(provider.storage())
        .map_err(|e| GroupRefusal::Refused(err("cannot make the commit", e)))?
        .build(provider.rand(), provider.crypto(), &me.signer(), |_| true)
        .map_err(|e| GroupRefusal::Refused(err("cannot make the commit", e)))?
        .stage_commit(provider)
        .map_err(|e| GroupRefusal::Refused(err("cannot make the commit", e)))?;
    let mut removed: Vec<DeviceName> = remove.to_vec();
    let mut left = Vec::new();
    if let Some(staged) = group.pending_commit() {
        for r in staged.remove_proposals() {
            if let Some(Some(d)) = group
                .member_at(r.remove_proposal().removed())
                .map(|m| parse_credential(&m.credential))
                && !removed.contains(&d)
            {
                left.push(d.clone());
                removed.push(d);
            }
        }
    }
    let (commit, welcome, _) = bundle.into_messages();
    outgoing(epoch, &commit, welcome.as_ref(), added, removed, left).map_err(GroupRefusal::Refused)
}

/// The server took this device's pending commit: apply it.
pub(crate) fn merge_own_commit(db: &Db<'_>, id: &[u8]) -> std::result::Result<(), GroupRefusal> {
    with_group(db, id, |provider, group| {
        group
            .merge_pending_commit(provider)
            .map_err(|e| GroupRefusal::Refused(err("cannot apply our commit", e)))
    })
}

/// The server refused this device's pending commit (another won the epoch).
pub(crate) fn discard_own_commit(db: &Db<'_>, id: &[u8]) -> std::result::Result<(), GroupRefusal> {
    with_group(db, id, |provider, group| {
        group.clear_pending_commit(provider.storage())?;
        Ok(())
    })
}

/// Encrypts an application message; `aad` travels authenticated beside it
/// (the franking commitment). Returns (epoch, `MLSMessage` bytes).
pub(crate) fn encrypt(
    db: &Db<'_>,
    me: &Me<'_>,
    id: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> std::result::Result<(u64, Vec<u8>), GroupRefusal> {
    with_group(db, id, |provider, group| {
        if !group.is_active() {
            return Err(GroupRefusal::Refused(
                "this device is no longer a member of the group".into(),
            ));
        }
        group.set_aad(aad.to_vec());
        let message = group
            .create_message(provider, &me.signer(), plaintext)
            .map_err(|e| GroupRefusal::Refused(err("cannot encrypt to the group", e)))?;
        let bytes = message
            .to_bytes()
            .map_err(|e| GroupRefusal::Refused(err("cannot encode the message", e)))?;
        Ok((group.epoch().as_u64(), bytes))
    })
}

/// A leave proposal (a Remove of our own leaf) for the current epoch.
pub(crate) fn leave(
    db: &Db<'_>,
    me: &Me<'_>,
    id: &[u8],
) -> std::result::Result<(u64, Vec<u8>), GroupRefusal> {
    with_group(db, id, |provider, group| {
        let epoch = group.epoch().as_u64();
        let proposal = group
            .leave_group(provider, &me.signer())
            .map_err(|e| GroupRefusal::Refused(err("cannot make the leave proposal", e)))?;
        let bytes = proposal
            .to_bytes()
            .map_err(|e| GroupRefusal::Refused(err("cannot encode the proposal", e)))?;
        Ok((epoch, bytes))
    })
}

/// What one processed group message did.
#[derive(Debug)]
pub(crate) enum Processed {
    /// An application message from `sender`, with the authenticated data
    /// it carried.
    Application {
        sender: DeviceName,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    },
    /// A commit by `by`, applied: who it added and removed; `self_removed`
    /// when it removed this device.
    Commit {
        by: Option<DeviceName>,
        added: Vec<DeviceName>,
        removed: Vec<DeviceName>,
        self_removed: bool,
    },
    /// A proposal, kept for the next commit (a member leaving).
    Proposal { by: Option<DeviceName> },
}

/// The epoch an `MLSMessage` claims, and its parsed form.
pub(crate) fn parse_protocol_message(bytes: &[u8]) -> std::result::Result<ProtocolMessage, String> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| "it is not an MLS message".to_owned())?;
    message
        .try_into_protocol_message()
        .map_err(|_| "it is not an MLS group message".to_owned())
}

/// The accounts whose device lists a message needs checked: those named by
/// the leaves a commit adds or updates. Read without changing anything.
pub(crate) fn accounts_to_check(
    db: &Db<'_>,
    id: &[u8],
    bytes: &[u8],
) -> std::result::Result<Vec<String>, GroupRefusal> {
    db.savepoint()?;
    let out = accounts_to_check_in(db, id, bytes);
    db.rollback_to_savepoint()?;
    out
}

fn accounts_to_check_in(
    db: &Db<'_>,
    id: &[u8],
    bytes: &[u8],
) -> std::result::Result<Vec<String>, GroupRefusal> {
    let provider = Provider::new(db)?;
    let mut group = load(db, id)?;
    let message = parse_protocol_message(bytes).map_err(GroupRefusal::Refused)?;
    let processed = group
        .process_message(&provider, message)
        .map_err(|e| GroupRefusal::Refused(err("it does not process", e)))?;
    let mut out = Vec::new();
    if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
        for (credential, _) in staged_leaves(&staged) {
            if let Some(d) = parse_credential(&credential)
                && !out.contains(&d.username)
            {
                out.push(d.username);
            }
        }
    }
    Ok(out)
}

/// The (credential, signature key) of every leaf a staged commit adds or
/// changes.
fn staged_leaves(staged: &StagedCommit) -> Vec<(Credential, Vec<u8>)> {
    let mut out = Vec::new();
    if let Some(leaf) = staged.update_path_leaf_node() {
        out.push((
            leaf.credential().clone(),
            leaf.signature_key().as_slice().to_vec(),
        ));
    }
    for add in staged.add_proposals() {
        let leaf = add.add_proposal().key_package().leaf_node();
        out.push((
            leaf.credential().clone(),
            leaf.signature_key().as_slice().to_vec(),
        ));
    }
    for update in staged.update_proposals() {
        let leaf = update.update_proposal().leaf_node();
        out.push((
            leaf.credential().clone(),
            leaf.signature_key().as_slice().to_vec(),
        ));
    }
    out
}

/// Processes one handshake or application message of a group this device
/// is in. A commit is applied only if every leaf it adds or changes is
/// vouched for by its account; a refused commit leaves the group as it was.
pub(crate) fn process(
    db: &Db<'_>,
    me_name: &str,
    id: &[u8],
    bytes: &[u8],
) -> std::result::Result<Processed, GroupRefusal> {
    let message = parse_protocol_message(bytes).map_err(GroupRefusal::Refused)?;
    with_group(db, id, |provider, group| {
        process_in(db, provider, group, me_name, id, message)
    })
}

fn process_in(
    db: &Db<'_>,
    provider: &Provider<'_, '_>,
    group: &mut MlsGroup,
    me_name: &str,
    id: &[u8],
    message: ProtocolMessage,
) -> std::result::Result<Processed, GroupRefusal> {
    if message.group_id().as_slice() != id {
        return Err(GroupRefusal::Refused(
            "it belongs to another group than the one the server filed it under".into(),
        ));
    }
    let ours = group.epoch().as_u64();
    let theirs = message.epoch().as_u64();
    if theirs > ours {
        return Err(GroupRefusal::Refused(format!(
            "it is for epoch {theirs} while this device is at epoch {ours}: a change of the group \
             was withheld from this device (the server forked the group)"
        )));
    }
    let processed = group
        .process_message(provider, message)
        .map_err(|e| GroupRefusal::Refused(err("it does not decrypt or verify", e)))?;
    let sender = parse_credential(processed.credential());
    let aad = processed.aad().to_vec();
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(app) => Ok(Processed::Application {
            sender: sender.ok_or_else(|| {
                GroupRefusal::Refused("its sender is not a Missive device".into())
            })?,
            plaintext: app.into_bytes(),
            aad,
        }),
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            for (credential, key) in staged_leaves(&staged) {
                check_leaf(db, me_name, &credential, &key)?;
            }
            let added = staged
                .add_proposals()
                .filter_map(|a| {
                    parse_credential(a.add_proposal().key_package().leaf_node().credential())
                })
                .collect();
            // A member's own Remove (it left) was shown when it came.
            let removed = staged
                .remove_proposals()
                .filter(|r| {
                    !matches!(r.sender(), Sender::Member(i) if *i == r.remove_proposal().removed())
                })
                .filter_map(|r| {
                    group
                        .member_at(r.remove_proposal().removed())
                        .and_then(|m| parse_credential(&m.credential))
                })
                .collect();
            let self_removed = staged.self_removed();
            group
                .merge_staged_commit(provider, *staged)
                .map_err(|e| GroupRefusal::Refused(err("it cannot be applied", e)))?;
            Ok(Processed::Commit {
                by: sender,
                added,
                removed,
                self_removed,
            })
        }
        ProcessedMessageContent::ProposalMessage(proposal) => {
            let removes = match proposal.proposal() {
                Proposal::Remove(r) => group
                    .member_at(r.removed())
                    .and_then(|m| parse_credential(&m.credential))
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            };
            // Only a member's removal of itself (leaving) is kept; anything
            // else waits for that member's own commit.
            let leaving = matches!(proposal.proposal(), Proposal::Remove(_))
                && sender.is_some()
                && removes.first() == sender.as_ref();
            if !leaving {
                return Err(GroupRefusal::Refused(
                    "it is a proposal other than a member leaving".into(),
                ));
            }
            group.store_pending_proposal(provider.storage(), *proposal)?;
            Ok(Processed::Proposal { by: sender })
        }
        ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(GroupRefusal::Refused(
            "it is an external join proposal, which Missive groups do not take".into(),
        )),
        ProcessedMessageContent::OwnPendingCommit | ProcessedMessageContent::OwnPrivateMessage => {
            Err(GroupRefusal::Refused(
                "it is this device's own message, sent back to it".into(),
            ))
        }
    }
}

/// The members (devices) of the group a Welcome brings this device into,
/// read without joining: nothing it touches (the KeyPackage it consumes)
/// is kept.
pub(crate) fn welcome_members(
    db: &Db<'_>,
    bytes: &[u8],
) -> std::result::Result<Vec<DeviceName>, GroupRefusal> {
    db.savepoint()?;
    let members = stage_welcome(db, bytes).map(|staged| {
        staged
            .members()
            .filter_map(|m| parse_credential(&m.credential))
            .collect()
    });
    db.rollback_to_savepoint()?;
    members
}

fn stage_welcome(db: &Db<'_>, bytes: &[u8]) -> std::result::Result<StagedWelcome, GroupRefusal> {
    let provider = Provider::new(db)?;
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| GroupRefusal::Refused("it is not an MLS message".into()))?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err(GroupRefusal::Refused("it is not a Welcome".into()));
    };
    let config = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .padding_size(PADDING)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build();
    StagedWelcome::new_from_welcome(&provider, &config, welcome, None)
        .map_err(|e| GroupRefusal::Refused(err("it does not open", e)))
}

/// A group joined from a Welcome.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) id: Vec<u8>,
    pub(crate) name: String,
    pub(crate) added_by: Option<DeviceName>,
}

/// Joins the group of a Welcome, if every member is vouched for by its
/// account (else nothing is kept).
pub(crate) fn join(
    db: &Db<'_>,
    me_name: &str,
    bytes: &[u8],
) -> std::result::Result<Joined, GroupRefusal> {
    let provider = Provider::new(db)?;
    let staged = stage_welcome(db, bytes)?;
    for m in staged.members() {
        check_leaf(db, me_name, &m.credential, &m.signature_key)?;
    }
    let added_by = staged
        .welcome_sender()
        .ok()
        .and_then(|l| parse_credential(l.credential()));
    let group = staged
        .into_group(&provider)
        .map_err(|e| GroupRefusal::Refused(err("it cannot be joined", e)))?;
    let name = group_name(&group).unwrap_or_else(|| "group".to_owned());
    let id = group.group_id().as_slice().to_vec();
    // A receiver's first message need not read back the tree just written.
    if let Some(cache) = db.group_cache() {
        cache.put(&id, db.mls_stamp_to_keep(&id)?, group);
    }
    Ok(Joined { id, name, added_by })
}

/// Forgets a group's MLS state (after leaving or being removed).
pub(crate) fn forget(db: &Db<'_>, id: &[u8]) -> std::result::Result<(), GroupRefusal> {
    let provider = Provider::new(db)?;
    if let Some(mut group) = MlsGroup::load(provider.storage(), &group_id(id))? {
        group.delete(provider.storage())?;
    }
    db.forget_mls_version(id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::{Contact, KeySource, Store};
    use missive_crypto::{DeviceEntry, DeviceList};
    use rand::rngs::OsRng;

    struct Device {
        _dir: tempfile::TempDir,
        store: Store,
        identity: IdentityKeyPair,
        username: String,
        device_id: u32,
    }

    struct Account {
        key: IdentityKeyPair,
        list: SignedDeviceList,
    }

    fn device(username: &str, device_id: u32) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(&dir.path().join("home"), true, &KeySource::KeyFile).unwrap();
        Device {
            _dir: dir,
            store,
            identity: IdentityKeyPair::generate(&mut OsRng),
            username: username.to_owned(),
            device_id,
        }
    }

    fn account(devices: &[&Device]) -> Account {
        let key = IdentityKeyPair::generate(&mut OsRng);
        let username = devices[0].username.clone();
        let list = DeviceList {
            username: username.clone(),
            version: 1,
            timestamp_ms: 1,
            devices: devices
                .iter()
                .map(|d| DeviceEntry::link(&d.identity, &username, key.public(), d.device_id, 7))
                .collect(),
        }
        .sign(&key)
        .unwrap();
        Account { key, list }
    }

    /// `d` knows its own list and the other accounts' lists (as if fetched
    /// and verified).
    fn know(d: &mut Device, own: &Account, others: &[&Account]) {
        d.store
            .write(|db| {
                db.set_meta(super::super::META_DEVICE_LIST, &own.list.to_bytes())?;
                for a in others {
                    db.put_contact(&Contact {
                        username: a.list.username().to_owned(),
                        identity: a.key.public().clone(),
                        verified: false,
                        changed_identity: None,
                        device_list: Some(a.list.clone()),
                        changed_device_list: None,
                    })?;
                }
                Ok(())
            })
            .unwrap();
    }

    fn key_package(d: &mut Device) -> Vec<u8> {
        let me_name = d.username.clone();
        let identity = &d.identity;
        let device_id = d.device_id;
        d.store
            .write(|db| {
                let me = Me {
                    username: &me_name,
                    device_id,
                    identity,
                };
                Ok(new_key_packages(db, &me, 1, false).unwrap().pop().unwrap())
            })
            .unwrap()
    }

    fn name(d: &Device) -> DeviceName {
        DeviceName {
            username: d.username.clone(),
            device_id: d.device_id,
        }
    }

    fn with<T>(d: &mut Device, f: impl FnOnce(&Db<'_>, &Me<'_>) -> T) -> T {
        let Device {
            store,
            identity,
            username,
            device_id,
            ..
        } = d;
        let me = Me {
            username,
            device_id: *device_id,
            identity,
        };
        store.write(|db| Ok(f(db, &me))).unwrap()
    }

    fn refused<T: std::fmt::Debug>(r: std::result::Result<T, GroupRefusal>) -> String {
        match r {
            Err(GroupRefusal::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A second handle on `d`'s home, as a second process would open it.
    fn second_process(d: &Device) -> Device {
        Device {
            _dir: tempfile::tempdir().unwrap(),
            store: Store::open_with(&d._dir.path().join("home"), false, &KeySource::KeyFile)
                .unwrap(),
            identity: IdentityKeyPair::from_secret_bytes(&d.identity.to_secret_bytes()).unwrap(),
            username: d.username.clone(),
            device_id: d.device_id,
        }
    }

    /// Alice and Bob, single-device accounts that know each other.
    fn alice_and_bob() -> (Device, Device) {
        let mut alice = device("alice", 1);
        let mut bob = device("bob", 1);
        let alice_account = account(&[&alice]);
        let bob_account = account(&[&bob]);
        know(&mut alice, &alice_account, &[&bob_account]);
        know(&mut bob, &bob_account, &[&alice_account]);
        (alice, bob)
    }

    /// Alice and Bob in group `id`, Bob joined.
    fn pair(id: &[u8; 16]) -> (Device, Device) {
        let (mut alice, mut bob) = alice_and_bob();
        with(&mut alice, |db, me| create(db, me, id, "team")).unwrap();
        let kp = key_package(&mut bob);
        let kp = check_key_package(&kp, &name(&bob), bob.identity.public()).unwrap();
        let commit = with(&mut alice, |db, me| {
            stage_commit(db, me, id, vec![(name(&bob), kp)], &[])
        })
        .unwrap();
        with(&mut alice, |db, _| merge_own_commit(db, id)).unwrap();
        let welcome = hex::decode(&commit.welcome).unwrap();
        with(&mut bob, |db, _| join(db, "bob", &welcome)).unwrap();
        (alice, bob)
    }

    fn send(d: &mut Device, id: &[u8], text: &[u8]) -> Vec<u8> {
        with(d, |db, me| encrypt(db, me, id, text, &[0; 32]))
            .unwrap()
            .1
    }

    fn read_text(d: &mut Device, id: &[u8], wire: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let name = d.username.clone();
        match with(d, |db, _| process(db, &name, id, wire)) {
            Ok(Processed::Application { plaintext, .. }) => Ok(plaintext),
            Ok(other) => panic!("{other:?}"),
            Err(GroupRefusal::Refused(why)) => Err(why),
            Err(GroupRefusal::Local(e)) => panic!("{e}"),
        }
    }

    /// A replaced last-resort KeyPackage still opens a Welcome (one may be
    /// on its way); the one before it is forgotten for good.
    #[test]
    fn last_resort_key_packages_rotate_and_old_ones_are_forgotten() {
        let (mut alice, mut bob) = alice_and_bob();
        let mut kept = LastResortKeys::default();
        let made: Vec<Vec<u8>> = (1..=3u64)
            .map(|t| with(&mut bob, |db, me| rotate_last_resort(db, me, &mut kept, t)).unwrap())
            .collect();
        assert_eq!(kept.0.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [2, 3]);

        let welcome_from = |alice: &mut Device, gid: u8, kp: &[u8]| {
            let id = [gid; 16];
            with(alice, |db, me| create(db, me, &id, "g")).unwrap();
            let kp = check_key_package(kp, &name(&bob), bob.identity.public()).unwrap();
            let commit = with(alice, |db, me| {
                stage_commit(db, me, &id, vec![(name(&bob), kp)], &[])
            })
            .unwrap();
            hex::decode(&commit.welcome).unwrap()
        };
        let oldest = welcome_from(&mut alice, 1, &made[0]);
        let previous = welcome_from(&mut alice, 2, &made[1]);
        let newest = welcome_from(&mut alice, 3, &made[2]);
        assert!(
            refused(with(&mut bob, |db, _| join(db, "bob", &oldest))).contains("does not open")
        );
        with(&mut bob, |db, _| join(db, "bob", &previous)).unwrap();
        with(&mut bob, |db, _| join(db, "bob", &newest)).unwrap();
    }

    /// The group a process keeps in memory is not used once another
    /// process on the home changed the stored state: a stale copy would
    /// bring back a deleted message key (receiving) or reuse one (sending).
    #[test]
    fn a_group_kept_in_memory_yields_to_another_process_and_to_rollbacks() {
        let id = [5u8; 16];
        let (mut alice, mut bob) = pair(&id);
        let mut bob_too = second_process(&bob);
        let m: Vec<Vec<u8>> = (1..=3u8)
            .map(|i| send(&mut alice, &id, &[b'm', b'0' + i]))
            .collect();
        assert_eq!(read_text(&mut bob, &id, &m[0]).unwrap(), b"m1");
        assert_eq!(read_text(&mut bob_too, &id, &m[1]).unwrap(), b"m2");
        assert_eq!(read_text(&mut bob, &id, &m[2]).unwrap(), b"m3");
        // m2's key is gone for both handles.
        read_text(&mut bob, &id, &m[1]).unwrap_err();
        read_text(&mut bob_too, &id, &m[1]).unwrap_err();

        // Two senders on one home never reuse a message key.
        let mut alice_too = second_process(&alice);
        let a1 = send(&mut alice, &id, b"a1");
        let a2 = send(&mut alice_too, &id, b"a2");
        let a3 = send(&mut alice, &id, b"a3");
        for (wire, text) in [(&a1, b"a1"), (&a2, b"a2"), (&a3, b"a3")] {
            assert_eq!(read_text(&mut bob, &id, wire).unwrap(), text);
        }

        // A processed message whose transaction part is rolled back can be
        // processed again: the copy in memory went with it.
        let b1 = send(&mut alice, &id, b"b1");
        let name = bob.username.clone();
        with(&mut bob, |db, _| {
            db.savepoint().unwrap();
            assert!(matches!(
                process(db, &name, &id, &b1),
                Ok(Processed::Application { .. })
            ));
            db.rollback_to_savepoint().unwrap();
        });
        assert_eq!(read_text(&mut bob, &id, &b1).unwrap(), b"b1");
    }

    /// Alice makes a group with Bob; both read each other; a commit removing
    /// Bob reaches him as his removal.
    #[test]
    fn two_devices_make_a_group_talk_and_part() {
        let (mut alice, mut bob) = alice_and_bob();

        let id = [9u8; 16];
        with(&mut alice, |db, me| create(db, me, &id, "team")).unwrap();
        let kp = key_package(&mut bob);
        let kp = check_key_package(&kp, &name(&bob), bob.identity.public()).unwrap();
        let commit = with(&mut alice, |db, me| {
            stage_commit(db, me, &id, vec![(name(&bob), kp)], &[])
        })
        .unwrap();
        assert_eq!(commit.epoch, 0);
        assert_eq!(commit.added, vec![("bob".to_owned(), 1)]);
        with(&mut alice, |db, _| merge_own_commit(db, &id)).unwrap();

        let welcome = hex::decode(&commit.welcome).unwrap();
        let members = with(&mut bob, |db, _| welcome_members(db, &welcome)).unwrap();
        assert_eq!(members, vec![name(&alice), name(&bob)]);
        let joined = with(&mut bob, |db, _| join(db, "bob", &welcome)).unwrap();
        assert_eq!(joined.id, id.to_vec());
        assert_eq!(joined.name, "team");
        assert_eq!(joined.added_by, Some(name(&alice)));

        let (epoch, wire) = with(&mut alice, |db, me| {
            encrypt(db, me, &id, b"hi bob", &[7; 32])
        })
        .unwrap();
        assert_eq!(epoch, 1);
        match with(&mut bob, |db, _| process(db, "bob", &id, &wire)).unwrap() {
            Processed::Application {
                sender,
                plaintext,
                aad,
            } => {
                assert_eq!(sender, name(&alice));
                assert_eq!(plaintext, b"hi bob");
                assert_eq!(aad, vec![7; 32]);
            }
            other => panic!("{other:?}"),
        }
        // A replay does not decrypt twice.
        refused(with(&mut bob, |db, _| process(db, "bob", &id, &wire)));

        let (_, wire) = with(&mut bob, |db, me| encrypt(db, me, &id, b"hi alice", &[])).unwrap();
        match with(&mut alice, |db, _| process(db, "alice", &id, &wire)).unwrap() {
            Processed::Application {
                sender, plaintext, ..
            } => {
                assert_eq!(sender, name(&bob));
                assert_eq!(plaintext, b"hi alice");
            }
            other => panic!("{other:?}"),
        }

        let removal = with(&mut alice, |db, me| {
            stage_commit(db, me, &id, Vec::new(), &[name(&bob)])
        })
        .unwrap();
        assert_eq!(removal.removed, vec![("bob".to_owned(), 1)]);
        with(&mut alice, |db, _| merge_own_commit(db, &id)).unwrap();
        let wire = hex::decode(&removal.commit).unwrap();
        match with(&mut bob, |db, _| process(db, "bob", &id, &wire)).unwrap() {
            Processed::Commit {
                by,
                removed,
                self_removed,
                ..
            } => {
                assert_eq!(by, Some(name(&alice)));
                assert_eq!(removed, vec![name(&bob)]);
                assert!(self_removed);
            }
            other => panic!("{other:?}"),
        }
        // Bob can no longer read what Alice writes.
        let (_, wire) = with(&mut alice, |db, me| encrypt(db, me, &id, b"bye", &[])).unwrap();
        assert!(with(&mut bob, |db, _| process(db, "bob", &id, &wire)).is_err());
    }

    /// A device that no signed list names — the "ghost" a server would add —
    /// is refused as a KeyPackage and inside a Welcome; a change withheld
    /// from a member shows as a fork.
    #[test]
    fn ghosts_and_withheld_changes_are_refused() {
        let mut alice = device("alice", 1);
        let mut bob = device("bob", 1);
        let mut carol = device("carol", 1);
        // The server's ghost claims to be bob's device 7.
        let mut ghost = device("bob", 7);
        let alice_account = account(&[&alice]);
        let bob_account = account(&[&bob]);
        let carol_account = account(&[&carol]);
        know(&mut alice, &alice_account, &[&bob_account, &carol_account]);
        know(&mut bob, &bob_account, &[&alice_account, &carol_account]);
        know(&mut carol, &carol_account, &[&alice_account, &bob_account]);

        let ghost_kp = key_package(&mut ghost);
        let why = check_key_package(&ghost_kp, &name(&ghost), bob.identity.public()).unwrap_err();
        assert!(why.contains("not signed by the key"), "{why}");
        let why = check_key_package(&ghost_kp, &name(&bob), bob.identity.public()).unwrap_err();
        assert!(why.contains("names another device"), "{why}");

        // The ghost's own group, with alice invited: alice refuses to join.
        know(&mut ghost, &bob_account, &[&alice_account]);
        let ghost_id = [3u8; 16];
        with(&mut ghost, |db, me| create(db, me, &ghost_id, "trap")).unwrap();
        let kp = key_package(&mut alice);
        let kp = check_key_package(&kp, &name(&alice), alice.identity.public()).unwrap();
        let trap = with(&mut ghost, |db, me| {
            stage_commit(db, me, &ghost_id, vec![(name(&alice), kp)], &[])
        })
        .unwrap();
        let why = refused(with(&mut alice, |db, _| {
            join(db, "alice", &hex::decode(&trap.welcome).unwrap())
        }));
        assert!(
            why.contains("device 7 of bob is not on bob's signed device list"),
            "{why}"
        );

        // A real group of three; carol misses the commit adding... nothing:
        // alice's commit that removes bob is withheld from carol.
        let id = [4u8; 16];
        with(&mut alice, |db, me| create(db, me, &id, "three")).unwrap();
        let kps: Vec<_> = [&mut bob, &mut carol]
            .into_iter()
            .map(|d| {
                let kp = key_package(d);
                (
                    name(d),
                    check_key_package(&kp, &name(d), d.identity.public()).unwrap(),
                )
            })
            .collect();
        let commit = with(&mut alice, |db, me| stage_commit(db, me, &id, kps, &[])).unwrap();
        with(&mut alice, |db, _| merge_own_commit(db, &id)).unwrap();
        let welcome = hex::decode(&commit.welcome).unwrap();
        with(&mut bob, |db, _| join(db, "bob", &welcome)).unwrap();
        with(&mut carol, |db, _| join(db, "carol", &welcome)).unwrap();
        let removal = with(&mut alice, |db, me| {
            stage_commit(db, me, &id, Vec::new(), &[name(&bob)])
        })
        .unwrap();
        with(&mut alice, |db, _| merge_own_commit(db, &id)).unwrap();
        let (_, wire) = with(&mut alice, |db, me| {
            encrypt(db, me, &id, b"bob is gone", &[])
        })
        .unwrap();
        let why = refused(with(&mut carol, |db, _| process(db, "carol", &id, &wire)));
        assert!(why.contains("withheld"), "{why}");
        // Once carol gets the commit, she reads on.
        let removal = hex::decode(&removal.commit).unwrap();
        with(&mut carol, |db, _| process(db, "carol", &id, &removal)).unwrap();
        match with(&mut carol, |db, _| process(db, "carol", &id, &wire)).unwrap() {
            Processed::Application { plaintext, .. } => assert_eq!(plaintext, b"bob is gone"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_round_trip_and_reject_strays() {
        let c: Credential =
            BasicCredential::new(missive_crypto::group::credential_identity("alice", 3)).into();
        assert_eq!(
            parse_credential(&c),
            Some(DeviceName {
                username: "alice".into(),
                device_id: 3
            })
        );
        for bad in [
            Vec::new(),
            b"alice".to_vec(),
            {
                let mut v = missive_crypto::group::credential_identity("alice", 3);
                v.push(0);
                v
            },
            missive_crypto::group::credential_identity("Alice", 3),
            missive_crypto::group::credential_identity("a", 3),
        ] {
            let c: Credential = BasicCredential::new(bad.clone()).into();
            assert_eq!(parse_credential(&c), None, "{bad:?}");
        }
    }
}
