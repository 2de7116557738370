//! In-process fan-out for a single node.
//!
//! With one node, its send writer is the only writer of envelopes, and it
//! calls [`FanOut::hand_off`] after each commit in commit order: the
//! envelopes go straight to the local streams, which need not re-read the
//! store (ids increase in that order, so a stream skips nothing by resuming
//! after the last id it was handed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;

use super::{FanOut, FanOutError, StreamHandle, Subscription, stream_channel};
use crate::storage::{DeviceAddress, StoredEnvelope};

type Registry = Mutex<HashMap<DeviceAddress, Vec<(u64, StreamHandle)>>>;

/// Wakes streams of this process through channels.
#[derive(Debug, Default)]
pub struct MemoryFanOut {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: std::sync::atomic::AtomicU64,
    streams: Registry,
}

impl MemoryFanOut {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open subscriptions (for tests and metrics).
    pub fn subscriptions(&self) -> usize {
        self.inner
            .streams
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
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
        let Ok(mut streams) = inner.streams.lock() else {
            return;
        };
        if let Some(list) = streams.get_mut(&self.device) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                streams.remove(&self.device);
            }
        }
    }
}

#[async_trait]
impl FanOut for MemoryFanOut {
    async fn publish(&self, devices: &[DeviceAddress]) {
        let Ok(streams) = self.inner.streams.lock() else {
            return;
        };
        for device in devices {
            for (_, handle) in streams.get(device).into_iter().flatten() {
                handle.wake();
            }
        }
    }

    async fn hand_off(&self, envelopes: Vec<(DeviceAddress, StoredEnvelope)>) {
        let Ok(streams) = self.inner.streams.lock() else {
            return;
        };
        for (device, envelope) in envelopes {
            match streams.get(&device).map(Vec::as_slice) {
                None | Some([]) => {}
                Some([(_, only)]) => only.hand(envelope),
                Some(several) => {
                    for (_, handle) in several {
                        handle.hand(envelope.clone());
                    }
                }
            }
        }
    }

    async fn deliver_online(&self, envelopes: Vec<(DeviceAddress, StoredEnvelope)>) {
        let Ok(streams) = self.inner.streams.lock() else {
            return;
        };
        for (device, envelope) in envelopes {
            match streams.get(&device).map(Vec::as_slice) {
                None | Some([]) => {}
                Some([(_, only)]) => only.hand_online(envelope),
                Some(several) => {
                    for (_, handle) in several {
                        handle.hand_online(envelope.clone());
                    }
                }
            }
        }
    }

    async fn subscribe(&self, device: DeviceAddress) -> Result<Subscription, FanOutError> {
        let id = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guard = Unregister {
            inner: Arc::downgrade(&self.inner),
            device,
            id,
        };
        let (handle, subscription) = stream_channel(Box::new(guard));
        self.inner
            .streams
            .lock()
            .map_err(|_| FanOutError::Unavailable("registry poisoned".into()))?
            .entry(device)
            .or_default()
            .push((id, handle));
        Ok(subscription)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_addressed_device_and_unregisters_on_drop() {
        let fanout = MemoryFanOut::new();
        let a = DeviceAddress {
            account: 1,
            device: 1,
        };
        let b = DeviceAddress {
            account: 2,
            device: 1,
        };
        let mut sub_a = fanout.subscribe(a).await.unwrap();
        let sub_b = fanout.subscribe(b).await.unwrap();
        fanout.publish(&[a]).await;
        fanout.publish(&[a]).await; // coalesces
        assert!(sub_a.woken().await);
        assert!(sub_a.receiver.try_recv().is_err());
        drop(sub_b);
        assert_eq!(fanout.subscriptions(), 1);
        drop(sub_a);
        assert_eq!(fanout.subscriptions(), 0);
    }

    fn stored(id: u64, bytes: usize) -> StoredEnvelope {
        StoredEnvelope {
            id,
            sender: "alice".into(),
            sender_device: 1,
            kind: 1,
            content: vec![7; bytes],
            message_id: vec![0; 16],
            server_timestamp_ms: 1,
            expires_at_ms: None,
            franking_commitment: vec![0; 32],
            franking_tag: vec![0; 32],
        }
    }

    #[tokio::test]
    async fn hands_envelopes_over_in_order_and_asks_for_a_reread_past_the_bounds() {
        use crate::limits::{HANDOFF_MAX_BYTES, HANDOFF_MAX_ENVELOPES};
        let fanout = MemoryFanOut::new();
        let a = DeviceAddress {
            account: 1,
            device: 1,
        };
        let b = DeviceAddress {
            account: 1,
            device: 2,
        };
        let mut first = fanout.subscribe(a).await.unwrap();
        let second = fanout.subscribe(a).await.unwrap();
        fanout
            .hand_off(vec![
                (a, stored(5, 10)),
                (b, stored(6, 10)),
                (a, stored(7, 10)),
            ])
            .await;
        assert!(first.woken().await);
        for sub in [&first, &second] {
            let handed = sub.take();
            assert!(!handed.reread);
            let ids: Vec<u64> = handed.envelopes.iter().map(|e| e.id).collect();
            assert_eq!(ids, [5, 7]);
            assert!(sub.take().envelopes.is_empty());
        }

        // Too many envelopes: the queue is dropped for a re-read.
        let many = (0..=HANDOFF_MAX_ENVELOPES as u64).map(|i| (a, stored(10 + i, 1)));
        fanout.hand_off(many.collect()).await;
        let handed = first.take();
        assert!(handed.reread);
        assert!(handed.envelopes.is_empty());
        // Too many bytes, likewise.
        fanout
            .hand_off(vec![(a, stored(900, HANDOFF_MAX_BYTES / 2 + 1)); 2])
            .await;
        assert!(second.take().reread);
        // A wake-up without data also asks for a re-read.
        fanout.publish(&[a]).await;
        assert!(first.take().reread);
    }

    #[tokio::test]
    async fn online_envelopes_reach_open_streams_only_and_survive_a_reread() {
        use crate::limits::HANDOFF_MAX_ENVELOPES;
        let fanout = MemoryFanOut::new();
        let a = DeviceAddress {
            account: 1,
            device: 1,
        };
        let b = DeviceAddress {
            account: 1,
            device: 2,
        };
        let mut sub = fanout.subscribe(a).await.unwrap();
        // b has no stream: its envelope goes nowhere, and nothing fails.
        fanout
            .deliver_online(vec![(a, stored(0, 3)), (b, stored(0, 4))])
            .await;
        assert!(sub.woken().await);
        // A wake-up for stored envelopes after it does not drop it.
        fanout.publish(&[a]).await;
        let handed = sub.take();
        assert!(handed.reread);
        assert_eq!(handed.online.len(), 1);
        assert_eq!(handed.online[0].content.len(), 3);
        assert!(sub.take().online.is_empty());
        // Past the bounds further ones are dropped, not queued.
        let many = (0..HANDOFF_MAX_ENVELOPES + 5).map(|_| (a, stored(0, 1)));
        fanout.deliver_online(many.collect()).await;
        assert_eq!(sub.take().online.len(), HANDOFF_MAX_ENVELOPES);
        // A stream opened later gets nothing of what was sent before.
        let late = fanout.subscribe(b).await.unwrap();
        assert!(late.take().online.is_empty());
    }
}
