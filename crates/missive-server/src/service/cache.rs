//! Small, time-bounded, in-memory caches of the two reads every Send and
//! Acknowledge used to make against the store: the caller's token and the
//! recipient's device list.
//!
//! Bounds (also in docs/ARCHITECTURE.md):
//! - An authenticated token is trusted for at most [`AUTH_TTL`] after the
//!   store last confirmed it. Deleting an account drops its entries on this
//!   node at once; on another node (shared PostgreSQL) a deleted account's or
//!   just-expired token keeps working for at most [`AUTH_TTL`].
//! - A recipient's device list is reused for at most [`DEVICES_TTL`]. The
//!   write transaction still checks that every addressed device exists, and
//!   a mismatch or vanished recipient is re-checked against the store before
//!   it is reported, so staleness can only let a send that misses a device
//!   registered in the last [`DEVICES_TTL`] through.
//!
//! Both maps hold at most [`MAX_ENTRIES`] entries; past that, expired entries
//! are swept and, if still full, the map is emptied (a cache miss costs one
//! query, never correctness).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::storage::{AccountId, DeviceRecord, Principal};

/// How long a token confirmed by the store is trusted without asking again.
pub const AUTH_TTL: Duration = Duration::from_secs(2);
/// How long a recipient's device list is reused.
pub const DEVICES_TTL: Duration = Duration::from_secs(2);
/// Entries per map.
pub const MAX_ENTRIES: usize = 65_536;

struct Timed<V> {
    value: V,
    until: Instant,
}

struct Map<K, V> {
    inner: Mutex<HashMap<K, Timed<V>>>,
    ttl: Duration,
}

impl<K: std::hash::Hash + Eq, V: Clone> Map<K, V> {
    fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Timed<V>>> {
        // A panic while holding the lock leaves a plain map: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get(key) {
            Some(entry) if entry.until > now => Some(entry.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| e.until > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(
            key,
            Timed {
                value,
                until: now + self.ttl,
            },
        );
    }

    fn remove_where(&self, mut doomed: impl FnMut(&K, &V) -> bool) {
        self.lock().retain(|k, e| !doomed(k, &e.value));
    }

    fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.lock().remove(key);
    }
}

/// A recipient as the send path needs it.
pub type Recipient = (AccountId, std::sync::Arc<[DeviceRecord]>);

/// The caches held by the shared state.
pub struct Caches {
    tokens: Map<[u8; 32], Principal>,
    devices: Map<String, Recipient>,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            tokens: Map::new(AUTH_TTL),
            devices: Map::new(DEVICES_TTL),
        }
    }
}

impl Caches {
    /// The principal of a token hash confirmed less than [`AUTH_TTL`] ago.
    pub fn principal(&self, token_hash: &[u8; 32]) -> Option<Principal> {
        self.tokens.get(token_hash)
    }

    /// Remembers a token hash the store just confirmed.
    pub fn remember_principal(&self, token_hash: [u8; 32], principal: Principal) {
        self.tokens.insert(token_hash, principal);
    }

    /// The device list of `username` read less than [`DEVICES_TTL`] ago.
    pub fn recipient(&self, username: &str) -> Option<Recipient> {
        self.devices.get(username)
    }

    /// Remembers a device list just read from the store.
    pub fn remember_recipient(&self, username: String, recipient: Recipient) {
        self.devices.insert(username, recipient);
    }

    /// Forgets the device list of `username`.
    pub fn forget_recipient(&self, username: &str) {
        self.devices.remove(username);
    }

    /// Drops everything known about a deleted account.
    pub fn forget_account(&self, account: AccountId) {
        self.tokens
            .remove_where(|_, p| p.address.account == account);
        self.devices.remove_where(|_, (id, _)| *id == account);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::DeviceAddress;

    fn principal(account: AccountId) -> Principal {
        Principal {
            address: DeviceAddress { account, device: 1 },
            username: format!("user{account}"),
            expires_at_ms: u64::MAX,
        }
    }

    #[test]
    fn entries_expire() {
        let map: Map<u8, u8> = Map::new(Duration::from_millis(30));
        map.insert(1, 7);
        assert_eq!(map.get(&1), Some(7));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(map.get(&1), None);
    }

    #[test]
    fn deleting_an_account_forgets_its_tokens_and_devices() {
        let caches = Caches::default();
        caches.remember_principal([1; 32], principal(1));
        caches.remember_principal([2; 32], principal(2));
        caches.remember_recipient("user1".into(), (1, Vec::new().into()));
        caches.forget_account(1);
        assert!(caches.principal(&[1; 32]).is_none());
        assert!(caches.recipient("user1").is_none());
        assert_eq!(caches.principal(&[2; 32]).unwrap().address.account, 2);
    }

    #[test]
    fn size_is_bounded() {
        let map: Map<usize, ()> = Map::new(Duration::from_secs(60));
        for i in 0..MAX_ENTRIES + 10 {
            map.insert(i, ());
        }
        assert!(map.lock().len() <= MAX_ENTRIES);
    }
}
