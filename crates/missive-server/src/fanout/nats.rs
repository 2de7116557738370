//! Fan-out between nodes through NATS.
//!
//! After a send commits, the node publishes an empty wake-up on one subject
//! per recipient device, `PREFIX.wake.ACCOUNT_ID.DEVICE_ID` (numeric ids,
//! never usernames). A node subscribes to a device's subject while it holds at
//! least one receive stream for that device, and unsubscribes when the last
//! one closes, so NATS interest follows the connected devices.
//!
//! The database stays the source of truth: wake-ups carry no data, a lost
//! one is healed by the streams' periodic catch-up, and when the connection to
//! NATS comes back every local stream is woken to re-read the store.
//! Stored envelopes are never handed to streams directly (the default
//! [`FanOut::hand_off`] wakes them): with several nodes writing, no single node
//! sees the commit order of a device's envelopes.
//!
//! Online-only envelopes ([`FanOut::deliver_online`]), which are never
//! stored, travel as data on the same subject: a non-empty payload is an
//! encoded `missive.v1.Envelope` (id 0, `online_only` set), handed to the
//! local streams of the device by whichever node listens; an empty payload
//! is a wake-up. The publishing node gets its own message back from NATS
//! like any other listener (no local shortcut, so no stream gets it twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use prost::Message as _;

use super::{FanOut, FanOutError, StreamHandle, Subscription, stream_channel};
use crate::storage::{DeviceAddress, StoredEnvelope, redact_url};

/// Default first subject token.
pub const DEFAULT_SUBJECT_PREFIX: &str = "missive";

/// How long the first connection may take before the node refuses to start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Local streams of one device and the NATS subscription feeding them.
struct Local {
    streams: Vec<(u64, StreamHandle)>,
    listener: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    devices: Mutex<HashMap<DeviceAddress, Local>>,
    /// Set by the first `Connected` event; later ones are reconnections.
    connected_once: AtomicBool,
}

impl Inner {
    fn wake(&self, device: DeviceAddress) {
        let Ok(devices) = self.devices.lock() else {
            return;
        };
        if let Some(local) = devices.get(&device) {
            for (_, handle) in &local.streams {
                handle.wake();
            }
        }
    }

    fn hand_online(&self, device: DeviceAddress, envelope: StoredEnvelope) {
        let Ok(devices) = self.devices.lock() else {
            return;
        };
        if let Some(local) = devices.get(&device) {
            for (_, handle) in &local.streams {
                handle.hand_online(envelope.clone());
            }
        }
    }

    /// One message on a device's subject: a wake-up, or an online envelope.
    fn received(&self, device: DeviceAddress, payload: &[u8]) {
        if payload.is_empty() {
            self.wake(device);
            return;
        }
        match decode_online(payload) {
            Some(envelope) => self.hand_online(device, envelope),
            None => tracing::warn!("undecodable online envelope on a NATS subject; dropped"),
        }
    }

    fn wake_all(&self) {
        let Ok(devices) = self.devices.lock() else {
            return;
        };
        for local in devices.values() {
            for (_, handle) in &local.streams {
                handle.wake();
            }
        }
    }
}

/// Wakes receive streams on every node through a NATS server or cluster.
pub struct NatsFanOut {
    client: async_nats::Client,
    prefix: String,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsFanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsFanOut")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

impl NatsFanOut {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`, several separated by
    /// commas). Wake-up subjects start with `prefix` (dot-separated tokens of
    /// `A-Za-z0-9_-`), so several deployments can share one NATS.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, FanOutError> {
        if !valid_prefix(prefix) {
            return Err(FanOutError::Unavailable(format!(
                "invalid NATS subject prefix {prefix:?}: use dot-separated tokens of letters, digits, '_' and '-'"
            )));
        }
        let inner = Arc::new(Inner::default());
        let weak = Arc::downgrade(&inner);
        let client = async_nats::ConnectOptions::new()
            .name("missive-server")
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let weak = weak.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            let Some(inner) = weak.upgrade() else { return };
                            if inner.connected_once.swap(true, Ordering::AcqRel) {
                                // Wake-ups published while we were away are
                                // lost: every local stream re-reads the store.
                                tracing::info!("NATS reconnected; catching up all local streams");
                                inner.wake_all();
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected; streams rely on periodic catch-up");
                        }
                        other => tracing::info!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| {
                FanOutError::Unavailable(format!(
                    "cannot connect to NATS at {}: {e}",
                    redact_url(url)
                ))
            })?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            inner,
        })
    }

    /// The wake-up subject of a device.
    pub fn subject(&self, device: DeviceAddress) -> String {
        format!("{}.wake.{}.{}", self.prefix, device.account, device.device)
    }

    /// Devices this node currently listens for (one NATS subscription each).
    pub fn subscribed_devices(&self) -> usize {
        self.inner.devices.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Waits until everything published so far reached the NATS server.
    pub async fn flush(&self) -> Result<(), FanOutError> {
        self.client
            .flush()
            .await
            .map_err(|e| FanOutError::Unavailable(format!("NATS flush failed: {e}")))
    }
}

/// The payload of an online-only envelope on a device subject.
fn encode_online(envelope: &StoredEnvelope) -> Vec<u8> {
    missive_proto::v1::Envelope {
        id: 0,
        sender: envelope.sender.clone(),
        sender_device: envelope.sender_device,
        r#type: envelope.kind,
        content: envelope.content.clone(),
        message_id: envelope.message_id.clone(),
        server_timestamp_ms: envelope.server_timestamp_ms,
        franking_commitment: envelope.franking_commitment.clone(),
        franking_tag: envelope.franking_tag.clone(),
        online_only: true,
    }
    .encode_to_vec()
}

/// The envelope of a non-empty payload; `None` unless it is an online one.
fn decode_online(payload: &[u8]) -> Option<StoredEnvelope> {
    let e = missive_proto::v1::Envelope::decode(payload).ok()?;
    e.online_only.then_some(StoredEnvelope {
        id: 0,
        sender: e.sender,
        sender_device: e.sender_device,
        kind: e.r#type,
        content: e.content,
        message_id: e.message_id,
        server_timestamp_ms: e.server_timestamp_ms,
        expires_at_ms: None,
        franking_commitment: e.franking_commitment,
        franking_tag: e.franking_tag,
    })
}

struct Unregister {
    inner: Weak<Inner>,
    device: DeviceAddress,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Ok(mut devices) = inner.devices.lock() else {
            return;
        };
        if let Some(local) = devices.get_mut(&self.device) {
            local.streams.retain(|(id, _)| *id != self.id);
            if local.streams.is_empty()
                && let Some(local) = devices.remove(&self.device)
            {
                // Dropping the NATS subscriber unsubscribes.
                local.listener.abort();
            }
        }
    }
}

#[async_trait]
impl FanOut for NatsFanOut {
    async fn publish(&self, devices: &[DeviceAddress]) {
        for device in devices {
            // Streams on this node need no round trip through NATS.
            self.inner.wake(*device);
            if let Err(error) = self.client.publish(self.subject(*device), "".into()).await {
                tracing::warn!(%error, "NATS publish failed; the recipient catches up periodically");
            }
        }
    }

    async fn deliver_online(&self, envelopes: Vec<(DeviceAddress, StoredEnvelope)>) {
        for (device, envelope) in envelopes {
            let payload = encode_online(&envelope);
            if let Err(error) = self
                .client
                .publish(self.subject(device), payload.into())
                .await
            {
                tracing::warn!(%error, "NATS publish of an online envelope failed; it is lost");
            }
        }
    }

    async fn subscribe(&self, device: DeviceAddress) -> Result<Subscription, FanOutError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let guard = Unregister {
            inner: Arc::downgrade(&self.inner),
            device,
            id,
        };
        let (sender, subscription) = stream_channel(Box::new(guard));
        let poisoned = || FanOutError::Unavailable("registry poisoned".into());
        {
            let mut devices = self.inner.devices.lock().map_err(|_| poisoned())?;
            if let Some(local) = devices.get_mut(&device) {
                local.streams.push((id, sender));
                return Ok(subscription);
            }
        }
        // First stream for this device on this node: listen on its subject.
        let mut subscriber = self
            .client
            .subscribe(self.subject(device))
            .await
            .map_err(|e| FanOutError::Unavailable(format!("NATS subscribe failed: {e}")))?;
        let weak = Arc::downgrade(&self.inner);
        let mut devices = self.inner.devices.lock().map_err(|_| poisoned())?;
        match devices.get_mut(&device) {
            // Another stream of the device subscribed meanwhile: use its
            // listener; ours unsubscribes when dropped.
            Some(local) => local.streams.push((id, sender)),
            None => {
                let listener = tokio::spawn(async move {
                    while let Some(message) = subscriber.next().await {
                        match weak.upgrade() {
                            Some(inner) => inner.received(device, &message.payload),
                            None => return,
                        }
                    }
                });
                devices.insert(
                    device,
                    Local {
                        streams: vec![(id, sender)],
                        listener,
                    },
                );
            }
        }
        drop(devices);
        Ok(subscription)
    }
}

impl Drop for NatsFanOut {
    fn drop(&mut self) {
        if let Ok(mut devices) = self.inner.devices.lock() {
            for (_, local) in devices.drain() {
                local.listener.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn prefixes_are_plain_subject_tokens() {
        assert!(valid_prefix("missive"));
        assert!(valid_prefix("prod-eu.missive_1"));
        for bad in ["", ".", "a..b", "a.*", "a.>", "a b", "a.", "ü"] {
            assert!(!valid_prefix(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn online_payloads_round_trip_and_anything_else_is_refused() {
        let envelope = StoredEnvelope {
            id: 0,
            sender: "alice".into(),
            sender_device: 2,
            kind: 2,
            content: vec![1, 2, 3],
            message_id: vec![9; 16],
            server_timestamp_ms: 77,
            expires_at_ms: None,
            franking_commitment: vec![4; 32],
            franking_tag: vec![5; 44],
        };
        let payload = encode_online(&envelope);
        assert_eq!(decode_online(&payload), Some(envelope));
        // Not an envelope, or an envelope not marked online: refused.
        assert_eq!(decode_online(&[0xff, 0xff, 0xff]), None);
        let stored = missive_proto::v1::Envelope {
            id: 5,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(decode_online(&stored), None);
    }
}
