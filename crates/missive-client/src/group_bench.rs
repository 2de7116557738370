//! Benchmark access to the MLS half of groups (`missive-bench --group-size`):
//! one device's encrypted store and keys, driven through the same
//! `client::group_state` functions the client uses, each call in one store
//! transaction as in the client. Not an API: it exists so the benchmark
//! measures the real client path without the network half.

use std::path::Path;

use missive_crypto::{IdentityKeyPair, PublicIdentity, SignedDeviceList};

use crate::client::group_state::{self, DeviceName, GroupRefusal, Me, Processed};
use crate::store::{Contact, Db, KeySource, Store};

use crate::client::META_DEVICE_LIST;

/// One device: its store, its key and its names.
pub struct BenchDevice {
    store: Store,
    identity: IdentityKeyPair,
    username: String,
    device_id: u32,
}

/// A commit this device made and applied.
pub struct BenchCommit {
    /// The epoch it was made in.
    pub epoch: u64,
    /// The commit `MLSMessage`.
    pub commit: Vec<u8>,
    /// The Welcome `MLSMessage` (empty when nothing was added).
    pub welcome: Vec<u8>,
}

/// A device to add: its names, the KeyPackage fetched for it and the key
/// its account's signed device list gives it.
pub struct BenchAdd {
    /// Account.
    pub username: String,
    /// Device id.
    pub device_id: u32,
    /// The KeyPackage `MLSMessage` as fetched.
    pub key_package: Vec<u8>,
    /// The device key from the signed device list.
    pub key: PublicIdentity,
}

/// What one processed message was.
#[derive(Debug)]
pub enum BenchProcessed {
    /// An application message and its plaintext.
    Application(Vec<u8>),
    /// A commit, applied.
    Commit,
    /// A proposal, kept.
    Proposal,
}

fn refusal(e: GroupRefusal) -> String {
    match e {
        GroupRefusal::Refused(why) => why,
        GroupRefusal::Local(e) => e.to_string(),
    }
}

impl BenchDevice {
    /// Creates the device's store in `home` (key in a key file).
    pub fn open(
        home: &Path,
        username: &str,
        device_id: u32,
        identity: IdentityKeyPair,
    ) -> Result<Self, String> {
        let store = Store::open_with(home, true, &KeySource::KeyFile).map_err(|e| e.to_string())?;
        Ok(BenchDevice {
            store,
            identity,
            username: username.to_owned(),
            device_id,
        })
    }

    fn with<T>(&mut self, f: impl FnOnce(&Db<'_>, &Me<'_>) -> T) -> Result<T, String> {
        let BenchDevice {
            store,
            identity,
            username,
            device_id,
        } = self;
        let me = Me {
            username,
            device_id: *device_id,
            identity,
        };
        store.write(|db| Ok(f(db, &me))).map_err(|e| e.to_string())
    }

    /// Keeps this account's signed device list (as the client does after
    /// registering or linking).
    pub fn set_own_list(&mut self, list: &SignedDeviceList) -> Result<(), String> {
        self.with(|db, _| db.set_meta(META_DEVICE_LIST, &list.to_bytes()))?
            .map_err(|e| e.to_string())
    }

    /// Pins other accounts (account key, signed device list), as the client
    /// does once it fetched and verified their lists; one transaction.
    pub fn know(&mut self, accounts: &[(PublicIdentity, SignedDeviceList)]) -> Result<(), String> {
        self.with(|db, _| {
            for (key, list) in accounts {
                db.put_contact(&Contact {
                    username: list.username().to_owned(),
                    identity: key.clone(),
                    verified: false,
                    changed_identity: None,
                    device_list: Some(list.clone()),
                    changed_device_list: None,
                })?;
            }
            Ok::<(), crate::error::ClientError>(())
        })?
        .map_err(|e| e.to_string())
    }

    /// `count` one-time KeyPackages, ready to upload.
    pub fn key_packages(&mut self, count: usize) -> Result<Vec<Vec<u8>>, String> {
        self.with(|db, me| group_state::new_key_packages(db, me, count, false))?
    }

    /// Creates a group with this device alone in it.
    pub fn create_group(&mut self, id: &[u8; 16], name: &str) -> Result<(), String> {
        self.with(|db, me| group_state::create(db, me, id, name))?
    }

    /// Checks the KeyPackages of `add` (as after FetchKeyPackages), makes a
    /// commit adding them and removing `remove`, and applies it (as once
    /// the server took it): two transactions, as in the client.
    pub fn commit(
        &mut self,
        id: &[u8],
        add: &[BenchAdd],
        remove: &[(String, u32)],
    ) -> Result<BenchCommit, String> {
        let mut checked = Vec::with_capacity(add.len());
        for a in add {
            let name = DeviceName {
                username: a.username.clone(),
                device_id: a.device_id,
            };
            let kp = group_state::check_key_package(&a.key_package, &name, &a.key)?;
            checked.push((name, kp));
        }
        let remove: Vec<DeviceName> = remove
            .iter()
            .map(|(username, device_id)| DeviceName {
                username: username.clone(),
                device_id: *device_id,
            })
            .collect();
        let outgoing = self
            .with(|db, me| group_state::stage_commit(db, me, id, checked, &remove))?
            .map_err(refusal)?;
        self.with(|db, _| group_state::merge_own_commit(db, id))?
            .map_err(refusal)?;
        Ok(BenchCommit {
            epoch: outgoing.epoch,
            commit: hex::decode(&outgoing.commit).map_err(|e| e.to_string())?,
            welcome: hex::decode(&outgoing.welcome).map_err(|e| e.to_string())?,
        })
    }

    /// Joins the group of a Welcome (every member checked against its
    /// account's signed device list); returns the group id.
    pub fn join(&mut self, welcome: &[u8]) -> Result<Vec<u8>, String> {
        let me = self.username.clone();
        let joined = self
            .with(|db, _| group_state::join(db, &me, welcome))?
            .map_err(refusal)?;
        Ok(joined.id)
    }

    /// Encrypts an application message: (epoch, `MLSMessage`).
    pub fn encrypt(
        &mut self,
        id: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<(u64, Vec<u8>), String> {
        self.with(|db, me| group_state::encrypt(db, me, id, plaintext, aad))?
            .map_err(refusal)
    }

    /// Processes one group message.
    pub fn process(&mut self, id: &[u8], message: &[u8]) -> Result<BenchProcessed, String> {
        let me = self.username.clone();
        let processed = self
            .with(|db, _| group_state::process(db, &me, id, message))?
            .map_err(refusal)?;
        Ok(match processed {
            Processed::Application { plaintext, .. } => BenchProcessed::Application(plaintext),
            Processed::Commit { .. } => BenchProcessed::Commit,
            Processed::Proposal { .. } => BenchProcessed::Proposal,
        })
    }
}
