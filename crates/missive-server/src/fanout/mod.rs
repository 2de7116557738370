//! Fan-out: waking a device's open receive stream after its envelopes are
//! committed. The store stays the source of truth:
//! - a *wake-up* carries no data: the stream re-reads the store after the last
//!   id it delivered, so a lost wake-up only delays delivery until the next
//!   periodic catch-up ([`crate::limits::CATCH_UP_INTERVAL`]);
//! - a *hand-off* ([`FanOut::hand_off`]) carries the freshly committed
//!   envelopes themselves, in commit order, to the streams on this node, which
//!   then need no read. Only the single-node backend ([`memory`]) hands
//!   envelopes over; a stream that falls behind (its hand-off queue is full)
//!   is told to re-read the store instead.
//!
//! - an *online-only* delivery ([`FanOut::deliver_online`]) carries envelopes
//!   that are never stored (typing indicators) to whichever streams of the
//!   devices are open right now, on any node; a device without an open
//!   stream, or a stream whose online queue is full, does not get them.
//!
//! One module per backend: [`memory`] (single node) and [`nats`] (several
//! nodes: `publish()` goes to a NATS subject per device, which feeds the
//! `Subscription`s of whichever node holds the device's stream).

pub mod memory;
pub mod nats;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::limits::{HANDOFF_MAX_BYTES, HANDOFF_MAX_ENVELOPES};
use crate::storage::{DeviceAddress, StoredEnvelope};

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
    /// Called by the single send writer after each commit, in commit order,
    /// with the envelopes it just stored. A backend whose streams can trust
    /// that order (one node is the only writer) hands them over; the default
    /// wakes the devices, so their streams re-read the store.
    async fn hand_off(&self, envelopes: Vec<(DeviceAddress, StoredEnvelope)>) {
        let devices: Vec<DeviceAddress> = envelopes.iter().map(|(d, _)| *d).collect();
        self.publish(&devices).await;
    }
    /// Delivers envelopes that are not stored (`SendRequest.online_only`,
    /// id 0) to the devices' streams open now, wherever they are. Best
    /// effort: nothing is retried and nothing tells the caller whether any
    /// stream took them.
    async fn deliver_online(&self, envelopes: Vec<(DeviceAddress, StoredEnvelope)>);
}

/// What a stream has been handed since it last looked.
#[derive(Debug, Default)]
pub struct Handed {
    /// The store must be re-read (a wake-up without data, or the queue
    /// overflowed); `envelopes` may then be incomplete and can be ignored.
    pub reread: bool,
    /// Committed envelopes in commit order (ids increase).
    pub envelopes: Vec<StoredEnvelope>,
    bytes: usize,
    /// Online-only envelopes (never stored, id 0), in arrival order. A
    /// re-read does not cover them: they are sent whatever `reread` says.
    pub online: Vec<StoredEnvelope>,
    online_bytes: usize,
}

/// The backend's end of one local stream: wakes it, or hands it envelopes.
#[derive(Clone, Debug)]
pub struct StreamHandle {
    wake: mpsc::Sender<()>,
    queue: Arc<Mutex<Handed>>,
}

impl StreamHandle {
    /// A wake-up without data: the stream re-reads the store.
    pub fn wake(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.reread = true;
            queue.envelopes = Vec::new();
            queue.bytes = 0;
        }
        // Full means a wake-up is already pending: coalesce.
        let _ = self.wake.try_send(());
    }

    /// Hands over one committed envelope; past the queue bounds the stream
    /// is told to re-read the store instead.
    pub fn hand(&self, envelope: StoredEnvelope) {
        if let Ok(mut queue) = self.queue.lock()
            && !queue.reread
        {
            let bytes = queue.bytes + envelope.content.len();
            if queue.envelopes.len() >= HANDOFF_MAX_ENVELOPES || bytes > HANDOFF_MAX_BYTES {
                queue.reread = true;
                queue.envelopes = Vec::new();
                queue.bytes = 0;
            } else {
                queue.bytes = bytes;
                queue.envelopes.push(envelope);
            }
        }
        let _ = self.wake.try_send(());
    }

    /// Hands over one online-only envelope. Past the queue bounds it is
    /// dropped (a stream that far behind is not "online" for a typing
    /// indicator, and a re-read could not bring it back).
    pub fn hand_online(&self, envelope: StoredEnvelope) {
        if let Ok(mut queue) = self.queue.lock() {
            let bytes = queue.online_bytes + envelope.content.len();
            if queue.online.len() >= HANDOFF_MAX_ENVELOPES || bytes > HANDOFF_MAX_BYTES {
                return;
            }
            queue.online_bytes = bytes;
            queue.online.push(envelope);
        }
        let _ = self.wake.try_send(());
    }
}

/// A connected pair: the backend keeps the handle, the stream the subscription.
pub fn stream_channel(guard: Box<dyn Send + Sync>) -> (StreamHandle, Subscription) {
    let (wake, receiver) = mpsc::channel(1);
    let queue = Arc::new(Mutex::new(Handed::default()));
    let handle = StreamHandle {
        wake,
        queue: Arc::clone(&queue),
    };
    let subscription = Subscription {
        receiver,
        queue,
        _guard: guard,
    };
    (handle, subscription)
}

/// Wake-ups for one device. Bursts coalesce into one wake-up.
pub struct Subscription {
    receiver: mpsc::Receiver<()>,
    queue: Arc<Mutex<Handed>>,
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// Waits for the next wake-up; `false` once the backend is gone.
    pub async fn woken(&mut self) -> bool {
        self.receiver.recv().await.is_some()
    }

    /// Takes what was handed over since the last call. A poisoned queue
    /// asks for a re-read.
    pub fn take(&self) -> Handed {
        match self.queue.lock() {
            Ok(mut queue) => std::mem::take(&mut *queue),
            Err(_) => Handed {
                reread: true,
                ..Handed::default()
            },
        }
    }
}
