//! Fan-out: waking a device's open receive stream after its envelopes are
//! committed. Wake-ups carry no data — the store stays the source of truth and
//! a receive stream re-reads it, so a lost wake-up only delays delivery until
//! the next periodic catch-up ([`crate::limits::CATCH_UP_INTERVAL`]).
//!
//! One module per backend: [`memory`] (single node). A NATS backend publishes
//! `publish()` to a subject per device and feeds `Subscription`s from it.

pub mod memory;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::storage::DeviceAddress;

/// Fan-out failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FanOutError {
    /// The backend cannot take subscriptions now.
    #[error("the fan-out backend is unavailable: {0}")]
    Unavailable(String),
}

/// Wakes receive streams across one or many nodes.
#[async_trait]
pub trait FanOut: Send + Sync + 'static {
    /// Called after envelopes for `devices` are durably committed. Never
    /// fails the send: a backend logs its errors and relies on catch-up.
    async fn publish(&self, devices: &[DeviceAddress]);
    /// Starts receiving wake-ups for one device; dropping the subscription
    /// ends it.
    async fn subscribe(&self, device: DeviceAddress) -> Result<Subscription, FanOutError>;
}

/// Wake-ups for one device. Bursts coalesce into one wake-up.
pub struct Subscription {
    receiver: mpsc::Receiver<()>,
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription fed by `receiver`; `guard` is dropped with it (to
    /// unregister from the backend).
    pub fn new(receiver: mpsc::Receiver<()>, guard: Box<dyn Send + Sync>) -> Self {
        Self {
            receiver,
            _guard: guard,
        }
    }

    /// Waits for the next wake-up; `false` once the backend is gone.
    pub async fn woken(&mut self) -> bool {
        self.receiver.recv().await.is_some()
    }
}
