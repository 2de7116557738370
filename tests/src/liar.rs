//! A lying server: an in-process gRPC proxy in front of a real
//! [`Server`](crate::Server) that forwards every RPC of `proto/missive/v1`
//! and, when told to, lies.
//!
//! The threat model says the server may lie (docs/THREAT_MODEL.md); this is
//! that server, for end-to-end tests of the real `missive` binary. The CLI
//! connects to the proxy exactly as to a server (it is an [`Endpoint`]: its
//! own rcgen CA and a certificate for `127.0.0.1`, the CA written to
//! `DIR/liar-ca.pem`); the proxy forwards to the upstream over real TLS with
//! the upstream's CA. It runs its own multi-threaded tokio runtime on a
//! background thread, so blocking tests (which spawn CLI children) and async
//! tests can both use it; it stops when dropped.
//!
//! ```ignore
//! let root = tempfile::tempdir()?;
//! let server = Server::start(&root.path().join("data"), &root.path().join("log"))?;
//! let liar = LyingServer::start(server, root.path())?;
//! let bob = User::new(root.path(), "bob");
//! bob.ok(&liar, &["register", "bob"])?;     // through the proxy
//! liar.drain_bundles("bob", true);          // lie from now on
//! ```
//!
//! # What it can do
//!
//! Every switch is on the [`Liar`] handle (a `Mutex`'d script shared with
//! the proxy; [`LyingServer`] derefs to it, and [`Liar`] is `Clone + Send`
//! for use from other threads). Changes apply to the next RPC.
//!
//! - **Capture** (always on): [`Liar::sends`] lists every `SendRequest` it
//!   forwarded, with the sender (from the bearer token) and the upstream
//!   outcome; [`Liar::deliveries`] every envelope it delivered downstream, per
//!   receiving user. Users are known from the `Register`/`Login` responses
//!   the proxy forwarded (token → username, device), so **register and log in
//!   through the proxy**: an account whose token the proxy never saw is
//!   `"?"`.
//! - **Inject / re-deliver**: [`Liar::inject`] queues a fake envelope for the
//!   user's next receive stream (or the open one, once its backlog is done),
//!   before or after the real backlog ([`At`]); its id is remembered as fake
//!   and acknowledgements of it are swallowed (take ids from
//!   [`Liar::fake_id`] so they never collide with real ones).
//!   [`Liar::redeliver`] queues an envelope as if real: its ack is forwarded.
//! - **Withhold / reorder**: [`Liar::withhold`] holds back real envelopes
//!   matching a predicate (they stay pending upstream and are suppressed on
//!   every stream); [`Liar::release`] queues them for delivery, in arrival or
//!   reverse order.
//! - **Swap identity**: [`Liar::swap_bundles`] answers `GetBundles` for X with
//!   Y's bundles (username rewritten to X, and the registration ids to X's as
//!   learnt at registration, so the server accepts the resulting send).
//! - **Drained bundles**: [`Liar::drain_bundles`] answers `GetBundles` for a
//!   user with no one-time prekey and the user's *last-resort* KEM prekey
//!   (`kem_prekey_is_last_resort = true`), learnt from the `RegisterRequest`
//!   / `ReplaceSignedPrekeysRequest` the proxy forwarded.
//! - **Device-list lies** (protocol v2): [`Liar::add_ghost_device`] appends
//!   to a user's `GetBundles` answer a device 2 with keys of the liar's own,
//!   prekeys validly signed by it for the user's real account key — the
//!   "ghost device" — while the signed list stays the real one;
//!   [`Liar::serve_device_list`] answers the user's list (in `GetBundles` and
//!   `GetDeviceList`) with the given bytes (forged, tampered or replayed).
//! - **Rewrite content**: [`Liar::rewrite`] installs a hook run on every
//!   envelope delivered downstream (real or injected), with the receiving
//!   username.
//! - **Attachment lies**: [`Liar::rewrite_downloads`] runs a hook on every
//!   downloaded chunk, [`Liar::swap_blob`] serves another blob than the one
//!   asked for, [`Liar::cut_downloads`] ends download streams early (as if
//!   complete). Uploads are forwarded as they are.
//! - **Link lies**: [`Liar::rewrite_links`] runs a hook on every `GetLink`
//!   answer (swap the new device's offer, alter a sealed message).
//! - **Group lies** (MLS): [`Liar::withhold_group`] holds back a user's group
//!   messages matching a predicate and [`Liar::release_group`] lets them go;
//!   [`Liar::inject_group`] queues a fake group message (its ack is
//!   swallowed) and [`Liar::redeliver_group`] a real one again (replay);
//!   [`Liar::rewrite_key_packages`] runs a hook on every `FetchKeyPackages`
//!   answer (a ghost device's KeyPackage). [`Liar::group_deliveries`] and
//!   [`Liar::commits`] capture what went through.
//! - **Status lies**: [`Liar::fail`] / [`Liar::fail_times`] make an [`Rpc`]
//!   answer a chosen status without forwarding.
//!
//! [`Liar::events`] is a log of what it did (also part of [`Endpoint::log`]).
//!
//! # Extending it
//!
//! Later features (multi-device, MLS groups) add RPCs: add a variant to
//! [`Rpc`], forward it in the service impl like the others (check
//! [`Shared::lie`] first, copy the `authorization` metadata with
//! [`forward`]), and put any new lie in [`Script`] behind a [`Liar`] method.
//! Per-device receive streams already carry the device in the token map.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use missive_proto::v1::{
    self,
    account_service_client::AccountServiceClient,
    account_service_server::{AccountService, AccountServiceServer},
    attachment_service_client::AttachmentServiceClient,
    attachment_service_server::{AttachmentService, AttachmentServiceServer},
    group_service_client::GroupServiceClient,
    group_service_server::{GroupService, GroupServiceServer},
    key_service_client::KeyServiceClient,
    key_service_server::{KeyService, KeyServiceServer},
    link_service_client::LinkServiceClient,
    link_service_server::{LinkService, LinkServiceServer},
    message_service_client::MessageServiceClient,
    message_service_server::{MessageService, MessageServiceServer},
    receive_response::Item,
    report_service_client::ReportServiceClient,
    report_service_server::{ReportService, ReportServiceServer},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::Bytes;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Identity, Server as TonicServer, ServerTlsConfig,
};
use tonic::{Code, Request, Response, Status};

use crate::{Endpoint, HarnessError, Server, herr};

/// The RPCs of `proto/missive/v1`, for [`Liar::fail`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `AccountService.GetChallenge`.
    GetChallenge,
    /// `AccountService.Register`.
    Register,
    /// `AccountService.Login`.
    Login,
    /// `AccountService.AddDevice`.
    AddDevice,
    /// `AccountService.DeleteAccount`.
    DeleteAccount,
    /// `KeyService.UploadPrekeys`.
    UploadPrekeys,
    /// `KeyService.GetPrekeyCount`.
    GetPrekeyCount,
    /// `KeyService.ReplaceSignedPrekeys`.
    ReplaceSignedPrekeys,
    /// `KeyService.GetBundles`.
    GetBundles,
    /// `MessageService.Send`.
    Send,
    /// `MessageService.Receive` (fails the call before any item).
    Receive,
    /// `MessageService.Acknowledge`.
    Acknowledge,
    /// `ReportService.Report`.
    Report,
    /// `AttachmentService.CreateUpload`.
    CreateUpload,
    /// `AttachmentService.Upload`.
    Upload,
    /// `AttachmentService.QueryUpload`.
    QueryUpload,
    /// `AttachmentService.FinalizeUpload`.
    FinalizeUpload,
    /// `AttachmentService.Download`.
    Download,
    /// `LinkService.OpenLink`.
    OpenLink,
    /// `LinkService.GetLink`.
    GetLink,
    /// `LinkService.PostLink`.
    PostLink,
    /// `LinkService.CloseLink`.
    CloseLink,
    /// `GroupService.FetchKeyPackages`.
    FetchKeyPackages,
    /// `GroupService.Commit`.
    Commit,
    /// `GroupService.SendGroupMessage`.
    SendGroupMessage,
}

/// How long [`LyingServer::inject`], `redeliver` and `release` wait for a
/// user's receive streams to close before queueing.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Where a queued envelope goes in the receive stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Before the first real envelope of the next stream.
    BeforeBacklog,
    /// After the real backlog, just before the `QueueEmpty` marker (or at
    /// once on a stream already past its backlog).
    AfterBacklog,
}

/// Order of released envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// As the upstream delivered them.
    AsReceived,
    /// Last received first.
    Reversed,
}

/// A `SendRequest` the proxy forwarded.
#[derive(Clone, Debug)]
pub struct CapturedSend {
    /// Sending user, from the bearer token (`None` if the token is unknown).
    pub sender: Option<String>,
    /// Sending device, from the bearer token.
    pub sender_device: Option<u32>,
    /// The request as the client sent it.
    pub request: v1::SendRequest,
    /// The upstream's answer: the server timestamp, or the status code and
    /// message.
    pub result: Result<u64, (Code, String)>,
}

/// An envelope the proxy delivered downstream.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Receiving user (from the bearer token; `"?"` if unknown).
    pub to: String,
    /// The envelope as delivered (after any rewrite).
    pub envelope: v1::Envelope,
    /// Injected by the test rather than forwarded from the upstream.
    pub injected: bool,
}

type Predicate = Arc<dyn Fn(&v1::Envelope) -> bool + Send + Sync>;
type Rewrite = Arc<dyn Fn(&str, &mut v1::Envelope) + Send + Sync>;
type ChunkRewrite = Arc<dyn Fn(&mut v1::DownloadChunk) + Send + Sync>;
type LinkRewrite = Arc<dyn Fn(&mut v1::GetLinkResponse) + Send + Sync>;
type GroupPredicate = Arc<dyn Fn(&v1::GroupMessage) -> bool + Send + Sync>;
type KeyPackageRewrite = Arc<dyn Fn(&mut v1::FetchKeyPackagesResponse) + Send + Sync>;

/// A group message the proxy delivered downstream.
#[derive(Clone, Debug)]
pub struct GroupDelivery {
    /// Receiving user.
    pub to: String,
    /// As delivered.
    pub message: v1::GroupMessage,
    /// Injected by the test.
    pub injected: bool,
}

struct QueuedGroup {
    message: v1::GroupMessage,
    at: At,
    injected: bool,
}

struct Queued {
    envelope: v1::Envelope,
    at: At,
    injected: bool,
}

struct Failure {
    code: Code,
    message: String,
    remaining: Option<u32>,
}

/// The lies in force and what was captured. Reached through [`Liar`].
#[derive(Default)]
pub struct Script {
    tokens: HashMap<String, (String, u32)>,
    last_resort: HashMap<(String, u32), v1::KemPrekey>,
    registration_ids: HashMap<(String, u32), u32>,
    sends: Vec<CapturedSend>,
    deliveries: Vec<Delivery>,
    queued: HashMap<String, VecDeque<Queued>>,
    fake_ids: HashMap<String, HashSet<u64>>,
    next_fake: u64,
    withhold: HashMap<String, Predicate>,
    held: HashMap<String, Vec<v1::Envelope>>,
    suppressed: HashMap<String, HashSet<u64>>,
    swaps: HashMap<String, String>,
    drained: HashSet<String>,
    ghost_devices: HashSet<String>,
    list_overrides: HashMap<String, Vec<u8>>,
    rewrite: Option<Rewrite>,
    chunk_rewrite: Option<ChunkRewrite>,
    link_rewrite: Option<LinkRewrite>,
    created_blobs: Vec<Vec<u8>>,
    blob_swaps: HashMap<Vec<u8>, Vec<u8>>,
    download_cut: Option<u64>,
    failures: HashMap<Rpc, Failure>,
    group_withhold: HashMap<String, GroupPredicate>,
    group_held: HashMap<String, Vec<v1::GroupMessage>>,
    group_queued: HashMap<String, VecDeque<QueuedGroup>>,
    group_deliveries: Vec<GroupDelivery>,
    fake_group_acks: HashMap<String, HashSet<(Vec<u8>, u64)>>,
    key_package_rewrite: Option<KeyPackageRewrite>,
    commits: Vec<(String, v1::CommitRequest)>,
    events: Vec<String>,
    started: Option<Instant>,
    open_streams: HashMap<String, usize>,
}

impl Script {
    fn event(&mut self, text: String) {
        let t = self
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        self.events.push(format!("[{t:8.3}s] {text}"));
    }

    fn principal(&self, token: Option<&str>) -> Option<(String, u32)> {
        token.and_then(|t| self.tokens.get(t).cloned())
    }
}

/// State shared by the proxy's handlers and the test's [`Liar`] handles.
pub struct Shared {
    script: Mutex<Script>,
    wake: watch::Sender<u64>,
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        // A test thread that panicked while holding the lock leaves the script
        // usable: it holds plain data only.
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The status lie for `rpc`, if one is in force (consuming one use).
    pub fn lie(&self, rpc: Rpc) -> Option<Status> {
        let mut s = self.script();
        let f = s.failures.get_mut(&rpc)?;
        let status = Status::new(f.code, f.message.clone());
        match &mut f.remaining {
            Some(0) => {
                s.failures.remove(&rpc);
                return None;
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    s.failures.remove(&rpc);
                }
            }
            None => {}
        }
        s.event(format!("{rpc:?}: lied with {:?}", status.code()));
        Some(status)
    }

    fn take_queued(&self, user: &str, only: Option<At>) -> Vec<Queued> {
        let mut s = self.script();
        let Some(q) = s.queued.get_mut(user) else {
            return Vec::new();
        };
        let (take, keep): (VecDeque<Queued>, VecDeque<Queued>) = q
            .drain(..)
            .partition(|item| only.is_none_or(|at| item.at == at));
        *q = keep;
        take.into()
    }

    fn take_group_queued(&self, user: &str, only: At) -> Vec<QueuedGroup> {
        let mut s = self.script();
        let Some(q) = s.group_queued.get_mut(user) else {
            return Vec::new();
        };
        let (take, keep): (VecDeque<QueuedGroup>, VecDeque<QueuedGroup>) =
            q.drain(..).partition(|item| item.at == only);
        *q = keep;
        take.into()
    }

    /// Applies group withholding to a real group message; records and
    /// returns it when it goes downstream now.
    fn admit_group(&self, user: &str, gm: v1::GroupMessage) -> Option<v1::GroupMessage> {
        let mut s = self.script();
        if s.group_withhold.get(user).is_some_and(|p| p(&gm)) {
            s.event(format!(
                "Receive {user}: withheld group message seq {} ({:?})",
                gm.seq,
                v1::GroupMessageKind::try_from(gm.kind)
            ));
            let held = s.group_held.entry(user.to_owned()).or_default();
            if !held
                .iter()
                .any(|h| h.group_id == gm.group_id && h.seq == gm.seq && h.kind == gm.kind)
            {
                held.push(gm);
            }
            return None;
        }
        s.group_deliveries.push(GroupDelivery {
            to: user.to_owned(),
            message: gm.clone(),
            injected: false,
        });
        Some(gm)
    }

    /// Applies withholding to a real envelope; `None` if it must not be
    /// delivered now.
    fn admit(&self, user: &str, env: v1::Envelope, sent: &HashSet<u64>) -> Option<v1::Envelope> {
        let mut s = self.script();
        // Online-only envelopes all carry id 0: not a repeat of each other.
        if env.online_only {
            return Some(env);
        }
        if sent.contains(&env.id) || s.suppressed.get(user).is_some_and(|h| h.contains(&env.id)) {
            return None;
        }
        let hold = s.withhold.get(user).is_some_and(|p| p(&env));
        if hold {
            s.event(format!(
                "Receive {user}: withheld envelope {} from {}/{}",
                env.id, env.sender, env.sender_device
            ));
            s.suppressed
                .entry(user.to_owned())
                .or_default()
                .insert(env.id);
            s.held.entry(user.to_owned()).or_default().push(env);
            return None;
        }
        Some(env)
    }

    /// Rewrites and records an envelope about to go downstream.
    fn deliver(&self, user: &str, mut env: v1::Envelope, injected: bool) -> v1::Envelope {
        let mut s = self.script();
        if !injected && let Some(h) = s.suppressed.get_mut(user) {
            h.remove(&env.id);
        }
        if let Some(f) = s.rewrite.clone() {
            f(user, &mut env);
        }
        s.deliveries.push(Delivery {
            to: user.to_owned(),
            envelope: env.clone(),
            injected,
        });
        env
    }
}

/// The test's handle on a [`LyingServer`]: switches lies, reads captures.
#[derive(Clone)]
pub struct Liar {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Liar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liar").finish_non_exhaustive()
    }
}

impl Liar {
    fn new() -> Liar {
        let (wake, _) = watch::channel(0);
        let script = Script {
            next_fake: 1 << 62,
            started: Some(Instant::now()),
            ..Script::default()
        };
        Liar {
            shared: Arc::new(Shared {
                script: Mutex::new(script),
                wake,
            }),
        }
    }

    /// Direct access to the script (captures and lies), locked.
    pub fn script(&self) -> MutexGuard<'_, Script> {
        self.shared.script()
    }

    // ---- capture ----------------------------------------------------------

    /// Every `SendRequest` forwarded so far, in order.
    pub fn sends(&self) -> Vec<CapturedSend> {
        self.script().sends.clone()
    }

    /// The forwarded `SendRequest`s addressed to `recipient`.
    pub fn sends_to(&self, recipient: &str) -> Vec<CapturedSend> {
        self.script()
            .sends
            .iter()
            .filter(|s| s.request.recipient == recipient)
            .cloned()
            .collect()
    }

    /// Every envelope delivered downstream so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.script().deliveries.clone()
    }

    /// The envelopes delivered to `user`, in order.
    pub fn delivered_to(&self, user: &str) -> Vec<v1::Envelope> {
        self.script()
            .deliveries
            .iter()
            .filter(|d| d.to == user)
            .map(|d| d.envelope.clone())
            .collect()
    }

    /// The last-resort KEM prekey of `user`'s `device` as last uploaded.
    pub fn last_resort_kem(&self, user: &str, device: u32) -> Option<v1::KemPrekey> {
        self.script()
            .last_resort
            .get(&(user.to_owned(), device))
            .cloned()
    }

    /// What the proxy did so far, one line per event.
    pub fn events(&self) -> Vec<String> {
        self.script().events.clone()
    }

    // ---- inject / re-deliver --------------------------------------------

    /// A fresh envelope id far above any the server assigns.
    pub fn fake_id(&self) -> u64 {
        let mut s = self.script();
        s.next_fake += 1;
        s.next_fake
    }

    /// Waits (up to [`SETTLE`]) until `user` has no receive stream open.
    /// A one-shot command's process has exited when the test goes on, but
    /// the proxy notices its closed connection a few milliseconds later;
    /// without this, that dying stream would take what is queued next and
    /// deliver it to nobody. A live listener keeps its stream, so with one
    /// this returns after [`SETTLE`] and the item reaches the listener.
    fn settle(&self, user: &str) {
        let until = Instant::now() + SETTLE;
        while Instant::now() < until
            && self.script().open_streams.get(user).copied().unwrap_or(0) > 0
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Queues a fake `envelope` for `user`; its acknowledgement is swallowed.
    /// Set its `id` with [`Liar::fake_id`].
    pub fn inject(&self, user: &str, envelope: v1::Envelope, at: At) {
        self.settle(user);
        {
            let mut s = self.script();
            s.fake_ids
                .entry(user.to_owned())
                .or_default()
                .insert(envelope.id);
            s.event(format!(
                "inject to {user} ({at:?}): id {} as {}/{}",
                envelope.id, envelope.sender, envelope.sender_device
            ));
            s.queued
                .entry(user.to_owned())
                .or_default()
                .push_back(Queued {
                    envelope,
                    at,
                    injected: true,
                });
        }
        self.shared.bump();
    }

    /// Queues `envelope` for `user` as if the upstream sent it: its
    /// acknowledgement is forwarded.
    pub fn redeliver(&self, user: &str, envelope: v1::Envelope, at: At) {
        self.settle(user);
        {
            let mut s = self.script();
            s.event(format!("redeliver to {user} ({at:?}): id {}", envelope.id));
            s.queued
                .entry(user.to_owned())
                .or_default()
                .push_back(Queued {
                    envelope,
                    at,
                    injected: false,
                });
        }
        self.shared.bump();
    }

    // ---- withhold / reorder ---------------------------------------------

    /// Holds back, from now on, real envelopes for `user` matching `pred`.
    pub fn withhold(
        &self,
        user: &str,
        pred: impl Fn(&v1::Envelope) -> bool + Send + Sync + 'static,
    ) {
        let mut s = self.script();
        s.event(format!("withhold for {user}: on"));
        s.withhold.insert(user.to_owned(), Arc::new(pred));
    }

    /// Stops holding back new envelopes for `user` (those held stay held
    /// until [`Liar::release`]).
    pub fn stop_withholding(&self, user: &str) {
        let mut s = self.script();
        s.event(format!("withhold for {user}: off"));
        s.withhold.remove(user);
    }

    /// The envelopes held back for `user`, in arrival order.
    pub fn held(&self, user: &str) -> Vec<v1::Envelope> {
        self.script().held.get(user).cloned().unwrap_or_default()
    }

    /// Queues every held envelope of `user` for delivery (acks forwarded).
    /// Returns how many.
    pub fn release(&self, user: &str, order: Order, at: At) -> usize {
        self.settle(user);
        let n = {
            let mut s = self.script();
            let mut held = s.held.remove(user).unwrap_or_default();
            if order == Order::Reversed {
                held.reverse();
            }
            let n = held.len();
            s.event(format!(
                "release for {user}: {n} envelopes, {order:?}, {at:?}"
            ));
            let q = s.queued.entry(user.to_owned()).or_default();
            for envelope in held {
                q.push_back(Queued {
                    envelope,
                    at,
                    injected: false,
                });
            }
            n
        };
        self.shared.bump();
        n
    }

    // ---- groups -----------------------------------------------------------

    /// Holds back, from now on, real group messages for `user` matching
    /// `pred` (they stay pending upstream: not acknowledged).
    pub fn withhold_group(
        &self,
        user: &str,
        pred: impl Fn(&v1::GroupMessage) -> bool + Send + Sync + 'static,
    ) {
        let mut s = self.script();
        s.event(format!("withhold group messages for {user}: on"));
        s.group_withhold.insert(user.to_owned(), Arc::new(pred));
    }

    /// Stops holding back group messages for `user` and queues the held
    /// ones in `order` (as real: acks forwarded). Returns how many.
    pub fn release_group(&self, user: &str, at: At, order: Order) -> usize {
        self.settle(user);
        let n = {
            let mut s = self.script();
            s.group_withhold.remove(user);
            let mut held = s.group_held.remove(user).unwrap_or_default();
            if order == Order::Reversed {
                held.reverse();
            }
            let n = held.len();
            s.event(format!("release group messages for {user}: {n}"));
            let q = s.group_queued.entry(user.to_owned()).or_default();
            for message in held {
                q.push_back(QueuedGroup {
                    message,
                    at,
                    injected: false,
                });
            }
            n
        };
        self.shared.bump();
        n
    }

    /// Queues a fake group message for `user`; its acknowledgement is
    /// swallowed.
    pub fn inject_group(&self, user: &str, message: v1::GroupMessage, at: At) {
        self.settle(user);
        {
            let mut s = self.script();
            s.event(format!(
                "inject group message to {user} ({at:?}): seq {} kind {}",
                message.seq, message.kind
            ));
            s.fake_group_acks
                .entry(user.to_owned())
                .or_default()
                .insert((message.group_id.clone(), message.seq));
            s.group_queued
                .entry(user.to_owned())
                .or_default()
                .push_back(QueuedGroup {
                    message,
                    at,
                    injected: true,
                });
        }
        self.shared.bump();
    }

    /// Queues `message` for `user` again, as if the upstream sent it (a
    /// replay).
    pub fn redeliver_group(&self, user: &str, message: v1::GroupMessage, at: At) {
        self.settle(user);
        {
            let mut s = self.script();
            s.event(format!(
                "redeliver group message to {user}: seq {}",
                message.seq
            ));
            s.group_queued
                .entry(user.to_owned())
                .or_default()
                .push_back(QueuedGroup {
                    message,
                    at,
                    injected: false,
                });
        }
        self.shared.bump();
    }

    /// The group messages delivered to `user`, in order.
    pub fn group_deliveries(&self, user: &str) -> Vec<GroupDelivery> {
        self.script()
            .group_deliveries
            .iter()
            .filter(|d| d.to == user)
            .cloned()
            .collect()
    }

    /// Every `CommitRequest` forwarded, with the committing user.
    pub fn commits(&self) -> Vec<(String, v1::CommitRequest)> {
        self.script().commits.clone()
    }

    /// Runs `hook` on every `FetchKeyPackages` answer from now on.
    pub fn rewrite_key_packages(
        &self,
        hook: impl Fn(&mut v1::FetchKeyPackagesResponse) + Send + Sync + 'static,
    ) {
        let mut s = self.script();
        s.event("FetchKeyPackages rewrite: on".to_owned());
        s.key_package_rewrite = Some(Arc::new(hook));
    }

    /// Ends [`Liar::rewrite_key_packages`].
    pub fn stop_rewriting_key_packages(&self) {
        let mut s = self.script();
        s.event("FetchKeyPackages rewrite: off".to_owned());
        s.key_package_rewrite = None;
    }

    // ---- bundles ----------------------------------------------------------

    /// Answers `GetBundles` for `user` with the bundles of `impostor`
    /// (username rewritten to `user`).
    pub fn swap_bundles(&self, user: &str, impostor: &str) {
        let mut s = self.script();
        s.event(format!("GetBundles {user}: will answer with {impostor}'s"));
        s.swaps.insert(user.to_owned(), impostor.to_owned());
    }

    /// Ends [`Liar::swap_bundles`] for `user`.
    pub fn unswap_bundles(&self, user: &str) {
        self.script().swaps.remove(user);
    }

    /// Whether `GetBundles` for `user` answers drained bundles (no one-time
    /// prekey, the last-resort KEM prekey).
    /// Adds a ghost device 2 to `user`'s bundles from now on (see the module docs).
    pub fn add_ghost_device(&self, user: &str) {
        let mut s = self.script();
        s.event(format!("GetBundles {user}: adds a ghost device 2"));
        s.ghost_devices.insert(user.to_owned());
    }

    /// Stops adding the ghost device of [`Liar::add_ghost_device`].
    pub fn remove_ghost_device(&self, user: &str) {
        let mut s = self.script();
        s.event(format!("GetBundles {user}: no more ghost device"));
        s.ghost_devices.remove(user);
    }

    /// Runs `hook` on every `GetLink` answer before it goes downstream
    /// (`None`: serve mailboxes as they are): swap the new device's offer,
    /// alter a sealed message.
    pub fn rewrite_links(&self, hook: Option<LinkRewrite>) {
        let mut s = self.script();
        s.event(format!("GetLink rewrite: {}", hook.is_some()));
        s.link_rewrite = hook;
    }

    /// Serves `list` as `user`'s signed device list from now on (`None`:
    /// the real one again).
    pub fn serve_device_list(&self, user: &str, list: Option<Vec<u8>>) {
        let mut s = self.script();
        s.event(format!(
            "device list of {user}: {}",
            if list.is_some() { "forged" } else { "real" }
        ));
        match list {
            Some(l) => s.list_overrides.insert(user.to_owned(), l),
            None => s.list_overrides.remove(user),
        };
    }

    pub fn drain_bundles(&self, user: &str, on: bool) {
        let mut s = self.script();
        s.event(format!("GetBundles {user}: drained {on}"));
        if on {
            s.drained.insert(user.to_owned());
        } else {
            s.drained.remove(user);
        }
    }

    // ---- content, status --------------------------------------------------

    /// Runs `f(receiving_user, envelope)` on every envelope delivered from now on.
    pub fn rewrite(&self, f: impl Fn(&str, &mut v1::Envelope) + Send + Sync + 'static) {
        let mut s = self.script();
        s.event("rewrite hook: on".to_owned());
        s.rewrite = Some(Arc::new(f));
    }

    /// Runs `f` on every attachment chunk downloaded from now on (flip
    /// bytes, move offsets, shorten data).
    pub fn rewrite_downloads(&self, f: impl Fn(&mut v1::DownloadChunk) + Send + Sync + 'static) {
        let mut s = self.script();
        s.event("download rewrite hook: on".to_owned());
        s.chunk_rewrite = Some(Arc::new(f));
    }

    /// The blob ids of every upload created through the proxy, in order.
    pub fn created_blobs(&self) -> Vec<Vec<u8>> {
        self.script().created_blobs.clone()
    }

    /// Answers every download of blob `asked` with blob `served` instead.
    pub fn swap_blob(&self, asked: &[u8], served: &[u8]) {
        let mut s = self.script();
        s.event(format!(
            "download of blob {} serves {}",
            hex::encode(asked),
            hex::encode(served)
        ));
        s.blob_swaps.insert(asked.to_vec(), served.to_vec());
    }

    /// Ends every download stream, successfully, after `bytes` bytes of data.
    pub fn cut_downloads(&self, bytes: u64) {
        let mut s = self.script();
        s.event(format!("downloads end after {bytes} bytes"));
        s.download_cut = Some(bytes);
    }

    /// Removes the rewrite hook.
    pub fn clear_rewrite(&self) {
        let mut s = self.script();
        s.event("rewrite hook: off".to_owned());
        s.rewrite = None;
    }

    /// Makes every call of `rpc` answer `Status(code, message)` until
    /// [`Liar::clear_failure`].
    pub fn fail(&self, rpc: Rpc, code: Code, message: &str) {
        self.set_failure(rpc, code, message, None);
    }

    /// Makes the next `times` calls of `rpc` answer `Status(code, message)`.
    pub fn fail_times(&self, rpc: Rpc, times: u32, code: Code, message: &str) {
        self.set_failure(rpc, code, message, Some(times));
    }

    fn set_failure(&self, rpc: Rpc, code: Code, message: &str, remaining: Option<u32>) {
        let mut s = self.script();
        s.event(format!(
            "{rpc:?}: will fail with {code:?} ({remaining:?} times)"
        ));
        s.failures.insert(
            rpc,
            Failure {
                code,
                message: message.to_owned(),
                remaining,
            },
        );
    }

    /// Lets `rpc` through again.
    pub fn clear_failure(&self, rpc: Rpc) {
        self.script().failures.remove(&rpc);
    }

    /// Ends every lie (captures, queued and held envelopes are kept).
    pub fn stop_lying(&self) {
        let mut s = self.script();
        s.event("stop lying".to_owned());
        s.withhold.clear();
        s.swaps.clear();
        s.drained.clear();
        s.rewrite = None;
        s.chunk_rewrite = None;
        s.blob_swaps.clear();
        s.download_cut = None;
        s.failures.clear();
    }
}

// ---- the proxy --------------------------------------------------------------

#[derive(Clone)]
struct Proxy {
    shared: Arc<Shared>,
    upstream: Channel,
}

fn bearer<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// A request for the upstream carrying `msg` and the caller's
/// `authorization` metadata, with a 30 s deadline.
pub fn forward<T, U>(from: &Request<T>, msg: U) -> Request<U> {
    let mut req = forward_stream(from, msg);
    req.set_timeout(Duration::from_secs(30));
    req
}

/// Like [`forward`] without a deadline (for streams).
pub fn forward_stream<T, U>(from: &Request<T>, msg: U) -> Request<U> {
    let mut req = Request::new(msg);
    if let Some(v) = from.metadata().get("authorization") {
        req.metadata_mut().insert("authorization", v.clone());
    }
    req
}

/// The upstream's status, re-made so only code, message and details travel.
fn relay(s: Status) -> Status {
    Status::with_details(s.code(), s.message(), Bytes::copy_from_slice(s.details()))
}

fn encode_token(token: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

impl Proxy {
    fn who(&self, token: Option<&str>) -> (String, Option<u32>) {
        match self.shared.script().principal(token) {
            Some((u, d)) => (u, Some(d)),
            None => ("?".to_owned(), None),
        }
    }
}

#[tonic::async_trait]
impl AccountService for Proxy {
    async fn get_challenge(
        &self,
        request: Request<v1::GetChallengeRequest>,
    ) -> Result<Response<v1::GetChallengeResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::GetChallenge) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = AccountServiceClient::new(self.upstream.clone())
            .get_challenge(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Register) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = AccountServiceClient::new(self.upstream.clone())
            .register(forward(&request, msg.clone()))
            .await
            .map_err(relay)?
            .into_inner();
        {
            let mut s = self.shared.script();
            if let Some(session) = &resp.session {
                s.tokens.insert(
                    encode_token(&session.token),
                    (msg.username.clone(), resp.device_id),
                );
            }
            s.registration_ids
                .insert((msg.username.clone(), resp.device_id), msg.registration_id);
            if let Some(kem) = msg.last_resort_kem_prekey {
                s.last_resort
                    .insert((msg.username.clone(), resp.device_id), kem);
            }
            s.event(format!(
                "Register {} device {}",
                msg.username, resp.device_id
            ));
        }
        Ok(Response::new(resp))
    }

    async fn login(
        &self,
        request: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Login) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = AccountServiceClient::new(self.upstream.clone())
            .login(forward(&request, msg.clone()))
            .await
            .map_err(relay)?
            .into_inner();
        {
            let mut s = self.shared.script();
            s.tokens.insert(
                encode_token(&resp.token),
                (msg.username.clone(), msg.device_id),
            );
            s.event(format!("Login {} device {}", msg.username, msg.device_id));
        }
        Ok(Response::new(resp))
    }

    async fn add_device(
        &self,
        request: Request<v1::AddDeviceRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::AddDevice) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = AccountServiceClient::new(self.upstream.clone())
            .add_device(forward(&request, msg.clone()))
            .await
            .map_err(relay)?
            .into_inner();
        {
            let mut s = self.shared.script();
            if let Some(session) = &resp.session {
                s.tokens.insert(
                    encode_token(&session.token),
                    (msg.username.clone(), resp.device_id),
                );
            }
            s.registration_ids
                .insert((msg.username.clone(), resp.device_id), msg.registration_id);
            if let Some(kem) = msg.last_resort_kem_prekey {
                s.last_resort
                    .insert((msg.username.clone(), resp.device_id), kem);
            }
            s.event(format!(
                "AddDevice {} device {}",
                msg.username, resp.device_id
            ));
        }
        Ok(Response::new(resp))
    }

    async fn delete_account(
        &self,
        request: Request<v1::DeleteAccountRequest>,
    ) -> Result<Response<v1::DeleteAccountResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::DeleteAccount) {
            return Err(s);
        }
        let msg = *request.get_ref();
        let resp = AccountServiceClient::new(self.upstream.clone())
            .delete_account(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }
}

#[tonic::async_trait]
impl KeyService for Proxy {
    async fn upload_prekeys(
        &self,
        request: Request<v1::UploadPrekeysRequest>,
    ) -> Result<Response<v1::UploadPrekeysResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::UploadPrekeys) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = KeyServiceClient::new(self.upstream.clone())
            .upload_prekeys(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn get_prekey_count(
        &self,
        request: Request<v1::GetPrekeyCountRequest>,
    ) -> Result<Response<v1::PrekeyCount>, Status> {
        if let Some(s) = self.shared.lie(Rpc::GetPrekeyCount) {
            return Err(s);
        }
        let msg = *request.get_ref();
        let resp = KeyServiceClient::new(self.upstream.clone())
            .get_prekey_count(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn replace_signed_prekeys(
        &self,
        request: Request<v1::ReplaceSignedPrekeysRequest>,
    ) -> Result<Response<v1::ReplaceSignedPrekeysResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::ReplaceSignedPrekeys) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let token = bearer(&request);
        let resp = KeyServiceClient::new(self.upstream.clone())
            .replace_signed_prekeys(forward(&request, msg.clone()))
            .await
            .map_err(relay)?;
        let mut s = self.shared.script();
        if let (Some((user, device)), Some(kem)) =
            (s.principal(token.as_deref()), msg.last_resort_kem_prekey)
        {
            s.event(format!(
                "ReplaceSignedPrekeys {user}/{device}: new last-resort KEM {}",
                kem.id
            ));
            s.last_resort.insert((user, device), kem);
        }
        Ok(Response::new(resp.into_inner()))
    }

    async fn get_bundles(
        &self,
        request: Request<v1::GetBundlesRequest>,
    ) -> Result<Response<v1::GetBundlesResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::GetBundles) {
            return Err(s);
        }
        let mut msg = request.get_ref().clone();
        let asked = msg.username.clone();
        let (owner, drained) = {
            let s = self.shared.script();
            let owner = s
                .swaps
                .get(&asked)
                .cloned()
                .unwrap_or_else(|| asked.clone());
            (owner, s.drained.contains(&asked))
        };
        msg.username = owner.clone();
        let mut resp = KeyServiceClient::new(self.upstream.clone())
            .get_bundles(forward(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        let mut s = self.shared.script();
        if owner != asked {
            s.event(format!(
                "GetBundles {asked}: answered with {owner}'s bundles"
            ));
            resp.username = asked.clone();
            // The victim's registration ids, so the server takes the send.
            for b in &mut resp.bundles {
                if let Some(id) = s.registration_ids.get(&(asked.clone(), b.device_id)) {
                    b.registration_id = *id;
                }
            }
        }
        if drained {
            for b in &mut resp.bundles {
                b.one_time_prekey = None;
                match s.last_resort.get(&(owner.clone(), b.device_id)).cloned() {
                    Some(kem) => {
                        b.kem_prekey = Some(kem);
                        b.kem_prekey_is_last_resort = true;
                    }
                    None => {
                        let d = b.device_id;
                        s.event(format!(
                            "GetBundles {asked}: last-resort KEM of {owner}/{d} unknown, kept the server's"
                        ));
                    }
                }
            }
            s.event(format!("GetBundles {asked}: drained"));
        }
        if s.ghost_devices.contains(&asked) {
            s.event(format!("GetBundles {asked}: added ghost device 2"));
            if let Some(ghost) = ghost_bundle(&resp.signed_device_list) {
                resp.bundles.push(ghost);
            }
        }
        if let Some(list) = s.list_overrides.get(&asked) {
            resp.signed_device_list = list.clone();
        }
        Ok(Response::new(resp))
    }

    // Device lists (protocol v2) are not scripted yet: forwarded unchanged.
    async fn publish_device_list(
        &self,
        request: Request<v1::PublishDeviceListRequest>,
    ) -> Result<Response<v1::PublishDeviceListResponse>, Status> {
        let msg = request.get_ref().clone();
        let resp = KeyServiceClient::new(self.upstream.clone())
            .publish_device_list(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn get_device_list(
        &self,
        request: Request<v1::GetDeviceListRequest>,
    ) -> Result<Response<v1::GetDeviceListResponse>, Status> {
        let msg = request.get_ref().clone();
        let asked = msg.username.clone();
        let mut resp = KeyServiceClient::new(self.upstream.clone())
            .get_device_list(forward(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        if let Some(list) = self.shared.script().list_overrides.get(&asked) {
            resp.signed_device_list = list.clone();
        }
        Ok(Response::new(resp))
    }
}

type ReceiveItems = Pin<Box<dyn Stream<Item = Result<v1::ReceiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MessageService for Proxy {
    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Send) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let (sender, sender_device) = {
            let p = self.shared.script().principal(bearer(&request).as_deref());
            match p {
                Some((u, d)) => (Some(u), Some(d)),
                None => (None, None),
            }
        };
        let result = MessageServiceClient::new(self.upstream.clone())
            .send(forward(&request, msg.clone()))
            .await
            .map(Response::into_inner);
        let mut s = self.shared.script();
        s.sends.push(CapturedSend {
            sender,
            sender_device,
            request: msg,
            result: result
                .as_ref()
                .map(|r| r.server_timestamp_ms)
                .map_err(|e| (e.code(), e.message().to_owned())),
        });
        drop(s);
        Ok(Response::new(result.map_err(relay)?))
    }

    type ReceiveStream = ReceiveItems;

    async fn receive(
        &self,
        request: Request<v1::ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Receive) {
            return Err(s);
        }
        let (user, _) = self.who(bearer(&request).as_deref());
        let msg = *request.get_ref();
        let upstream = MessageServiceClient::new(self.upstream.clone())
            .max_decoding_message_size(GROUP_MESSAGE_LIMIT)
            .receive(forward_stream(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        {
            let mut s = self.shared.script();
            s.event(format!("Receive {user}: stream opened"));
            *s.open_streams.entry(user.clone()).or_default() += 1;
        }
        let (tx, rx) = mpsc::channel(64);
        let wake = self.shared.wake.subscribe();
        tokio::spawn(pump(Arc::clone(&self.shared), user, upstream, tx, wake));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::AcknowledgeResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Acknowledge) {
            return Err(s);
        }
        let (user, _) = self.who(bearer(&request).as_deref());
        let mut msg = request.get_ref().clone();
        {
            let mut s = self.shared.script();
            let fake = s.fake_ids.get(&user).cloned().unwrap_or_default();
            let before = msg.envelope_ids.len();
            msg.envelope_ids.retain(|id| !fake.contains(id));
            let swallowed = before - msg.envelope_ids.len();
            if swallowed > 0 {
                s.event(format!(
                    "Acknowledge {user}: swallowed {swallowed} fake ids"
                ));
            }
        }
        {
            let s = self.shared.script();
            if let Some(fake) = s.fake_group_acks.get(&user) {
                msg.group_acks
                    .retain(|a| !fake.contains(&(a.group_id.clone(), a.seq)));
            }
        }
        if msg.envelope_ids.is_empty() && msg.group_acks.is_empty() {
            return Ok(Response::new(v1::AcknowledgeResponse {}));
        }
        let resp = MessageServiceClient::new(self.upstream.clone())
            .acknowledge(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }
}

#[tonic::async_trait]
impl LinkService for Proxy {
    async fn open_link(
        &self,
        request: Request<v1::OpenLinkRequest>,
    ) -> Result<Response<v1::OpenLinkResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::OpenLink) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = LinkServiceClient::new(self.upstream.clone())
            .open_link(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn get_link(
        &self,
        request: Request<v1::GetLinkRequest>,
    ) -> Result<Response<v1::GetLinkResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::GetLink) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let mut resp = LinkServiceClient::new(self.upstream.clone())
            .get_link(forward(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        let hook = self.shared.script().link_rewrite.clone();
        if let Some(hook) = hook {
            hook(&mut resp);
        }
        Ok(Response::new(resp))
    }

    async fn post_link(
        &self,
        request: Request<v1::PostLinkRequest>,
    ) -> Result<Response<v1::PostLinkResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::PostLink) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = LinkServiceClient::new(self.upstream.clone())
            .post_link(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn close_link(
        &self,
        request: Request<v1::CloseLinkRequest>,
    ) -> Result<Response<v1::CloseLinkResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::CloseLink) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = LinkServiceClient::new(self.upstream.clone())
            .close_link(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }
}

/// The largest group message relayed (a Welcome with its ratchet tree).
const GROUP_MESSAGE_LIMIT: usize = 9 * 1024 * 1024;

impl Proxy {
    fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.upstream.clone())
            .max_decoding_message_size(GROUP_MESSAGE_LIMIT)
            .max_encoding_message_size(GROUP_MESSAGE_LIMIT)
    }
}

#[tonic::async_trait]
impl GroupService for Proxy {
    async fn upload_key_packages(
        &self,
        request: Request<v1::UploadKeyPackagesRequest>,
    ) -> Result<Response<v1::UploadKeyPackagesResponse>, Status> {
        let msg = request.get_ref().clone();
        let resp = self
            .groups()
            .upload_key_packages(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn get_key_package_count(
        &self,
        request: Request<v1::GetKeyPackageCountRequest>,
    ) -> Result<Response<v1::KeyPackageCount>, Status> {
        let msg = *request.get_ref();
        let resp = self
            .groups()
            .get_key_package_count(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn fetch_key_packages(
        &self,
        request: Request<v1::FetchKeyPackagesRequest>,
    ) -> Result<Response<v1::FetchKeyPackagesResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::FetchKeyPackages) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let mut resp = self
            .groups()
            .fetch_key_packages(forward(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        let hook = self.shared.script().key_package_rewrite.clone();
        if let Some(hook) = hook {
            hook(&mut resp);
        }
        Ok(Response::new(resp))
    }

    async fn create_group(
        &self,
        request: Request<v1::CreateGroupRequest>,
    ) -> Result<Response<v1::CreateGroupResponse>, Status> {
        let msg = request.get_ref().clone();
        let resp = self
            .groups()
            .create_group(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Commit) {
            return Err(s);
        }
        let (user, _) = self.who(bearer(&request).as_deref());
        let msg = request.get_ref().clone();
        self.shared.script().commits.push((user, msg.clone()));
        let resp = self
            .groups()
            .commit(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn send_group_message(
        &self,
        request: Request<v1::SendGroupMessageRequest>,
    ) -> Result<Response<v1::SendGroupMessageResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::SendGroupMessage) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = self
            .groups()
            .send_group_message(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let msg = request.get_ref().clone();
        let resp = self
            .groups()
            .leave_group(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }
}

#[tonic::async_trait]
impl ReportService for Proxy {
    async fn report(
        &self,
        request: Request<v1::ReportRequest>,
    ) -> Result<Response<v1::ReportResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Report) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = ReportServiceClient::new(self.upstream.clone())
            .report(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }
}

#[tonic::async_trait]
impl AttachmentService for Proxy {
    async fn create_upload(
        &self,
        request: Request<v1::CreateUploadRequest>,
    ) -> Result<Response<v1::CreateUploadResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::CreateUpload) {
            return Err(s);
        }
        let msg = *request.get_ref();
        let resp = AttachmentServiceClient::new(self.upstream.clone())
            .create_upload(forward(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        self.shared
            .script()
            .created_blobs
            .push(resp.blob_id.clone());
        Ok(Response::new(resp))
    }

    async fn upload(
        &self,
        request: Request<tonic::Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Upload) {
            return Err(s);
        }
        let mut metadata_only = Request::new(());
        if let Some(v) = request.metadata().get("authorization") {
            metadata_only
                .metadata_mut()
                .insert("authorization", v.clone());
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel::<v1::UploadChunk>(8);
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = incoming.message().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let resp = AttachmentServiceClient::new(self.upstream.clone())
            .upload(forward_stream(&metadata_only, ReceiverStream::new(rx)))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn query_upload(
        &self,
        request: Request<v1::QueryUploadRequest>,
    ) -> Result<Response<v1::QueryUploadResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::QueryUpload) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = AttachmentServiceClient::new(self.upstream.clone())
            .query_upload(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    async fn finalize_upload(
        &self,
        request: Request<v1::FinalizeUploadRequest>,
    ) -> Result<Response<v1::FinalizeUploadResponse>, Status> {
        if let Some(s) = self.shared.lie(Rpc::FinalizeUpload) {
            return Err(s);
        }
        let msg = request.get_ref().clone();
        let resp = AttachmentServiceClient::new(self.upstream.clone())
            .finalize_upload(forward(&request, msg))
            .await
            .map_err(relay)?;
        Ok(Response::new(resp.into_inner()))
    }

    type DownloadStream =
        Pin<Box<dyn Stream<Item = Result<v1::DownloadChunk, Status>> + Send + 'static>>;

    async fn download(
        &self,
        request: Request<v1::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        if let Some(s) = self.shared.lie(Rpc::Download) {
            return Err(s);
        }
        let mut msg = request.get_ref().clone();
        let (rewrite, cut) = {
            let mut s = self.shared.script();
            if let Some(served) = s.blob_swaps.get(&msg.blob_id).cloned() {
                s.event(format!(
                    "Download {}: serving {}",
                    hex::encode(&msg.blob_id),
                    hex::encode(&served)
                ));
                msg.blob_id = served;
            }
            (s.chunk_rewrite.clone(), s.download_cut)
        };
        let mut upstream = AttachmentServiceClient::new(self.upstream.clone())
            .download(forward_stream(&request, msg))
            .await
            .map_err(relay)?
            .into_inner();
        let (tx, rx) = mpsc::channel::<Result<v1::DownloadChunk, Status>>(8);
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let item = match upstream.message().await {
                    Ok(Some(mut chunk)) => {
                        if let Some(limit) = cut {
                            if sent >= limit {
                                break;
                            }
                            let room = usize::try_from(limit - sent).unwrap_or(usize::MAX);
                            chunk.data.truncate(room);
                        }
                        sent += chunk.data.len() as u64;
                        if let Some(f) = &rewrite {
                            f(&mut chunk);
                        }
                        Ok(chunk)
                    }
                    Ok(None) => break,
                    Err(s) => Err(relay(s)),
                };
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Outbox = mpsc::Sender<Result<v1::ReceiveResponse, Status>>;

fn envelope_item(env: v1::Envelope) -> v1::ReceiveResponse {
    v1::ReceiveResponse {
        item: Some(Item::Envelope(env)),
    }
}

fn group_item(gm: v1::GroupMessage) -> v1::ReceiveResponse {
    v1::ReceiveResponse {
        item: Some(Item::GroupMessage(gm)),
    }
}

/// Sends queued group messages downstream; false once the client is gone.
async fn send_group_queued(shared: &Shared, user: &str, at: At, tx: &Outbox) -> bool {
    for q in shared.take_group_queued(user, at) {
        shared.script().group_deliveries.push(GroupDelivery {
            to: user.to_owned(),
            message: q.message.clone(),
            injected: q.injected,
        });
        if tx.send(Ok(group_item(q.message))).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends queued envelopes downstream; false once the client is gone.
async fn send_queued(
    shared: &Shared,
    user: &str,
    items: Vec<Queued>,
    sent: &mut HashSet<u64>,
    tx: &Outbox,
) -> bool {
    for q in items {
        if !q.injected {
            sent.insert(q.envelope.id);
        }
        let env = shared.deliver(user, q.envelope, q.injected);
        if tx.send(Ok(envelope_item(env))).await.is_err() {
            return false;
        }
    }
    true
}

/// One downstream receive stream: the upstream's items through the script.
async fn pump(
    shared: Arc<Shared>,
    user: String,
    mut upstream: tonic::Streaming<v1::ReceiveResponse>,
    tx: Outbox,
    mut wake: watch::Receiver<u64>,
) {
    let mut sent: HashSet<u64> = HashSet::new();
    let before = shared.take_queued(&user, Some(At::BeforeBacklog));
    if !send_queued(&shared, &user, before, &mut sent, &tx).await
        || !send_group_queued(&shared, &user, At::BeforeBacklog, &tx).await
    {
        return;
    }
    let mut backlog_done = false;
    loop {
        tokio::select! {
            () = tx.closed() => break,
            changed = wake.changed(), if backlog_done => {
                if changed.is_err() {
                    break;
                }
                // Items for the next stream stay queued: a stream whose
                // client has just exited may not have noticed yet, and must
                // not swallow them.
                let items = shared.take_queued(&user, Some(At::AfterBacklog));
                if !send_queued(&shared, &user, items, &mut sent, &tx).await
                    || !send_group_queued(&shared, &user, At::AfterBacklog, &tx).await
                {
                    break;
                }
            }
            next = upstream.message() => {
                let resp = match next {
                    Ok(Some(resp)) => resp,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(relay(status))).await;
                        break;
                    }
                };
                match resp.item {
                    Some(Item::Envelope(env)) => {
                        let Some(env) = shared.admit(&user, env, &sent) else {
                            continue;
                        };
                        sent.insert(env.id);
                        let env = shared.deliver(&user, env, false);
                        if tx.send(Ok(envelope_item(env))).await.is_err() {
                            break;
                        }
                    }
                    Some(Item::QueueEmpty(marker)) => {
                        let items = shared.take_queued(&user, Some(At::AfterBacklog));
                        if !send_queued(&shared, &user, items, &mut sent, &tx).await
                            || !send_group_queued(&shared, &user, At::AfterBacklog, &tx).await
                        {
                            break;
                        }
                        backlog_done = true;
                        let item = v1::ReceiveResponse { item: Some(Item::QueueEmpty(marker)) };
                        if tx.send(Ok(item)).await.is_err() {
                            break;
                        }
                    }
                    Some(Item::GroupMessage(gm)) => {
                        let Some(gm) = shared.admit_group(&user, gm) else {
                            continue;
                        };
                        if tx.send(Ok(group_item(gm))).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        if tx.send(Ok(resp)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
    let mut s = shared.script();
    s.event(format!("Receive {user}: stream closed"));
    if let Some(open) = s.open_streams.get_mut(&user) {
        *open = open.saturating_sub(1);
    }
}

// ---- the server around it ----------------------------------------------------

/// The lying proxy, running; stops when dropped. Derefs to its [`Liar`].
pub struct LyingServer {
    upstream: Server,
    liar: Liar,
    url: String,
    ca: PathBuf,
    shutdown: Mutex<Option<watch::Sender<bool>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for LyingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LyingServer")
            .field("url", &self.url)
            .field("upstream", &self.upstream.url())
            .finish_non_exhaustive()
    }
}

/// A CA (key discarded) and a server certificate for 127.0.0.1 and
/// localhost: (ca.pem, server.pem, server.key).
fn certificates() -> Result<(String, String, String), rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "Missive lying server test CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "missive lying server");
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// A TLS channel to `url` trusting the CA in `ca`.
pub async fn connect(url: &str, ca: &Path) -> Result<Channel, HarnessError> {
    let pem = std::fs::read(ca).map_err(|e| herr(format!("{}: {e}", ca.display())))?;
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| herr(format!("bad url {url}: {e}")))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .map_err(|e| herr(format!("tls config: {e}")))?
        .connect()
        .await
        .map_err(|e| herr(format!("cannot connect to {url}: {e}")))
}

async fn serve(
    liar: Liar,
    upstream_url: String,
    upstream_ca: PathBuf,
    cert: String,
    key: String,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, HarnessError>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = async {
        let channel = connect(&upstream_url, &upstream_ca).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| herr(format!("bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| herr(format!("local_addr: {e}")))?;
        Ok::<_, HarnessError>((channel, listener, addr))
    };
    let (channel, listener, addr) = match started.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let proxy = Proxy {
        shared: Arc::clone(&liar.shared),
        upstream: channel,
    };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    let mut builder = match TonicServer::builder().tls_config(tls) {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(herr(format!("tls: {e}"))));
            return;
        }
    };
    let mut graceful = shutdown.clone();
    let router = builder
        .add_service(AccountServiceServer::new(proxy.clone()))
        .add_service(KeyServiceServer::new(proxy.clone()))
        .add_service(MessageServiceServer::new(proxy.clone()))
        .add_service(ReportServiceServer::new(proxy.clone()))
        .add_service(AttachmentServiceServer::new(proxy.clone()))
        .add_service(LinkServiceServer::new(proxy.clone()))
        .add_service(
            GroupServiceServer::new(proxy)
                .max_decoding_message_size(GROUP_MESSAGE_LIMIT)
                .max_encoding_message_size(GROUP_MESSAGE_LIMIT),
        );
    let serving =
        router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        });
    let _ = ready.send(Ok(addr));
    // Graceful shutdown waits for open connections; give them a moment, no more.
    let hard_stop = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        result = serving => {
            if let Err(e) = result {
                liar.script().event(format!("server error: {e}"));
            }
        }
        () = hard_stop => {}
    }
}

impl LyingServer {
    /// Starts the proxy in front of `upstream` (which it owns from now on;
    /// reach it with [`LyingServer::upstream`]) and writes its CA to
    /// `dir/liar-ca.pem`.
    pub fn start(upstream: Server, dir: &Path) -> Result<LyingServer, HarnessError> {
        let (ca_pem, cert, key) = certificates().map_err(|e| herr(format!("certificates: {e}")))?;
        std::fs::create_dir_all(dir).map_err(|e| herr(format!("{}: {e}", dir.display())))?;
        let ca = dir.join("liar-ca.pem");
        std::fs::write(&ca, ca_pem).map_err(|e| herr(format!("{}: {e}", ca.display())))?;
        let liar = Liar::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let upstream_url = upstream.url().to_owned();
        let upstream_ca = upstream.ca();
        let thread_liar = liar.clone();
        let thread = std::thread::Builder::new()
            .name("lying-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(herr(format!("runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(serve(
                    thread_liar,
                    upstream_url,
                    upstream_ca,
                    cert,
                    key,
                    ready_tx,
                    stop_rx,
                ));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| herr(format!("thread: {e}")))?;
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| herr("the lying server did not start"))??;
        Ok(LyingServer {
            upstream,
            liar,
            url: format!("https://{addr}"),
            ca,
            shutdown: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The real server behind the proxy.
    pub fn upstream(&self) -> &Server {
        &self.upstream
    }

    /// The handle (also reachable through `Deref`).
    pub fn liar(&self) -> &Liar {
        &self.liar
    }

    /// Stops the proxy (the upstream keeps running until dropped).
    pub fn stop(&self) {
        let stop = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(true);
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Deref for LyingServer {
    type Target = Liar;

    fn deref(&self) -> &Liar {
        &self.liar
    }
}

impl Endpoint for LyingServer {
    fn url(&self) -> &str {
        &self.url
    }

    fn ca(&self) -> PathBuf {
        self.ca.clone()
    }

    fn log(&self) -> String {
        let mut out = String::from("--- lying server ---\n");
        for e in self.liar.events() {
            let _ = writeln!(out, "{e}");
        }
        out.push_str("--- upstream server ---\n");
        out.push_str(&self.upstream.log());
        out
    }
}

impl Drop for LyingServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The usual test world: a real server in a temporary directory behind a
/// [`LyingServer`], and users whose homes live beside it.
pub struct World {
    /// Holds the server's data, its log and every user's home.
    pub root: tempfile::TempDir,
    /// The proxy every user talks to.
    pub liar: LyingServer,
}

// A fixture that cannot start has no test to run: failing loudly is the point.
#[allow(clippy::expect_used)]
impl World {
    /// Starts a server and its lying proxy.
    pub fn new() -> World {
        let root = tempfile::tempdir().expect("temporary directory");
        let server = crate::Server::start(
            &root.path().join("server-data"),
            &root.path().join("server.log"),
        )
        .expect("missive-server starts");
        let liar = LyingServer::start(server, root.path()).expect("lying proxy starts");
        World { root, liar }
    }

    /// A user registered through the lying server.
    pub fn user(&self, name: &str) -> crate::User {
        let u = crate::User::new(self.root.path(), name);
        u.ok(&self.liar, &["register", name])
            .expect("register through the proxy");
        u
    }

    /// Restarts the real server behind the proxy on the same port (same
    /// data directory); the proxy reconnects on its next call.
    pub fn restart_upstream(&mut self) {
        self.liar
            .upstream
            .restart_same_port()
            .expect("the server restarts");
    }

    /// Links a new device (home `name`) to `primary`'s account through the
    /// lying server: `missive link` there, `missive devices add CODE` on the
    /// primary. Returns the new device's user, once linked.
    pub fn link_device(&self, primary: &crate::User, name: &str) -> crate::User {
        let laptop = crate::User::new(self.root.path(), name);
        let running = laptop
            .spawn(&self.liar, &["link", "--wait", "60"])
            .expect("missive link starts");
        let code = running
            .wait_for_line("link code: ", Duration::from_secs(30))
            .expect("a link code");
        let added = primary
            .ok(&self.liar, &["devices", "add", &code])
            .expect("devices add");
        assert!(added.stdout.contains("linked device"), "{added:?}");
        let r = running
            .wait_timeout(Duration::from_secs(60))
            .expect("missive link ends");
        assert!(r.ok(), "{r:?}\n{}", self.liar.log());
        laptop
    }

    /// A raw peer (hand-built client) registered through the lying server.
    pub fn raw(&self, name: &str) -> crate::raw::BlockingRawPeer {
        crate::raw::BlockingRawPeer::register(&self.liar, name).expect("raw peer registers")
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// A bundle for device 2 of the account whose real list is `list`, with keys
/// the liar made: its prekeys verify under its own key for the real account
/// key, so only the signed list can tell it is not the user's.
fn ghost_bundle(list: &[u8]) -> Option<v1::PrekeyBundle> {
    use missive_crypto::{
        IdentityKeyPair, KemPrekeyPair, PrekeyOwner, SignedDeviceList, SignedPrekeyPair,
    };
    let list = SignedDeviceList::from_bytes(list).ok()?;
    let mut rng = rand::rngs::OsRng;
    let ghost = IdentityKeyPair::generate(&mut rng);
    let owner = PrekeyOwner {
        account: list.account().clone(),
        device_id: 2,
    };
    let spk = SignedPrekeyPair::generate(&mut rng, 1, &ghost, &owner).public();
    let kem = KemPrekeyPair::generate(&mut rng, 1, &ghost, &owner).public();
    Some(v1::PrekeyBundle {
        device_id: 2,
        registration_id: 4242,
        identity: Some(v1::PublicIdentity {
            signing_key: ghost.public().signing_key().to_vec(),
        }),
        signed_prekey: Some(v1::SignedPrekey {
            id: spk.id,
            public_key: spk.public_key.to_vec(),
            signature: spk.signature.to_vec(),
        }),
        kem_prekey: Some(v1::KemPrekey {
            id: kem.id,
            public_key: kem.public_key,
            signature: kem.signature.to_vec(),
        }),
        kem_prekey_is_last_resort: true,
        one_time_prekey: None,
    })
}
