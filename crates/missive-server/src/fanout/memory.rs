//! In-process fan-out for a single node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{FanOut, FanOutError, Subscription};
use crate::storage::DeviceAddress;

type Registry = Mutex<HashMap<DeviceAddress, Vec<(u64, mpsc::Sender<()>)>>>;

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
            for (_, sender) in streams.get(device).into_iter().flatten() {
                // Full means a wake-up is already pending: coalesce.
                let _ = sender.try_send(());
            }
        }
    }

    async fn subscribe(&self, device: DeviceAddress) -> Result<Subscription, FanOutError> {
        let (sender, receiver) = mpsc::channel(1);
        let id = self
            .inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .streams
            .lock()
            .map_err(|_| FanOutError::Unavailable("registry poisoned".into()))?
            .entry(device)
            .or_default()
            .push((id, sender));
        let guard = Unregister {
            inner: Arc::downgrade(&self.inner),
            device,
            id,
        };
        Ok(Subscription::new(receiver, Box::new(guard)))
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
}
