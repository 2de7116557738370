//! Starting and stopping a node: the library API used by `main`, tests and
//! benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use missive_proto::v1::account_service_server::AccountServiceServer;
use missive_proto::v1::attachment_service_server::AttachmentServiceServer;
use missive_proto::v1::group_service_server::GroupServiceServer;
use missive_proto::v1::key_service_server::KeyServiceServer;
use missive_proto::v1::link_service_server::LinkServiceServer;
use missive_proto::v1::message_service_server::MessageServiceServer;
use missive_proto::v1::report_service_server::ReportServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tower_http::catch_panic::CatchPanicLayer;

use crate::fanout::FanOut;
use crate::fanout::memory::MemoryFanOut;
use crate::fanout::nats::NatsFanOut;
use crate::franking::SharedKeyRing;
use crate::limits;
use crate::proxy::TrustedProxies;
use crate::ratelimit::{Limiters, RateLimits};
use crate::service::State;
use crate::service::account::AccountApi;
use crate::service::attachments::AttachmentApi;
use crate::service::groups::GroupApi;
use crate::service::keys::KeyApi;
use crate::service::link::LinkApi;
use crate::service::messages::{MessageApi, group_commit};
use crate::service::reports::ReportApi;
use crate::storage::{self, Storage, StorageError};
use crate::tls::{self, TlsError};

/// Everything a node needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Data directory (development TLS material, default SQLite database).
    pub data_dir: PathBuf,
    /// Database URL; `None` means `sqlite://DATA_DIR/server.db`.
    pub database_url: Option<String>,
    /// Certificate chain PEM (with `tls_key`); `None` generates a development CA.
    pub tls_cert: Option<PathBuf>,
    /// Private key PEM.
    pub tls_key: Option<PathBuf>,
    /// Undelivered envelopes older than this are deleted.
    pub retention: Duration,
    /// Pending envelopes per device before `RESOURCE_EXHAUSTED`.
    pub mailbox_limit: u32,
    /// Rate limits; `None` disables them (benchmarks only).
    pub rate_limits: Option<RateLimits>,
    /// Unary call timeout.
    pub request_timeout: Duration,
    /// NATS URL for fan-out between nodes; `None` wakes streams in-process
    /// (a single node).
    pub nats_url: Option<String>,
    /// First token(s) of the NATS wake-up subjects.
    pub nats_subject_prefix: String,
    /// The franking key file; `None` means `DATA_DIR/franking.keys`.
    pub franking_keys: Option<PathBuf>,
    /// Peers whose connections start with a PROXY protocol header naming
    /// the client (empty: none; [`crate::proxy`]).
    pub proxy_protocol_from: TrustedProxies,
    /// Peers whose `x-forwarded-for` names the client (empty: none).
    pub trusted_proxies: TrustedProxies,
    /// Bytes kept free next to a SQLite database for acknowledgements on a
    /// full disk (0: no reserve).
    pub storage_reserve: u64,
    /// Bytes of attachment blobs an account may reserve within the retention
    /// period (`--attachment-quota`).
    pub attachment_quota: u64,
    /// Names of this server clients may sign in login, registration and
    /// add-device transcripts, besides those its TLS certificate is valid
    /// for (`--server-name`; [`crate::tls::ServerNames`]).
    pub server_names: Vec<String>,
}

impl Config {
    /// Defaults for `data_dir`, listening on `127.0.0.1:7443`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data_dir: data_dir.into(),
            database_url: None,
            tls_cert: None,
            tls_key: None,
            retention: limits::DEFAULT_RETENTION,
            mailbox_limit: limits::DEFAULT_MAILBOX_LIMIT,
            rate_limits: Some(RateLimits::default()),
            request_timeout: limits::REQUEST_TIMEOUT,
            nats_url: None,
            nats_subject_prefix: crate::fanout::nats::DEFAULT_SUBJECT_PREFIX.to_owned(),
            franking_keys: None,
            proxy_protocol_from: TrustedProxies::default(),
            trusted_proxies: TrustedProxies::default(),
            storage_reserve: limits::DEFAULT_STORAGE_RESERVE,
            attachment_quota: crate::service::attachments::DEFAULT_ATTACHMENT_QUOTA,
            server_names: Vec::new(),
        }
    }

    /// The effective franking key file.
    pub fn franking_keys_path(&self) -> PathBuf {
        self.franking_keys
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::franking::FILE_NAME))
    }

    /// The effective database URL.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| default_database_url(&self.data_dir))
    }
}

/// `sqlite://DATA_DIR/server.db`.
pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("server.db").display())
}

/// Failures starting or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause (already in the message).
        #[source]
        source: std::io::Error,
    },
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store.
    #[error("cannot open the database: {0}")]
    Storage(#[from] StorageError),
    /// The listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause (already in the message).
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration or the HTTP/2 server failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The franking key file.
    #[error(transparent)]
    Franking(#[from] crate::franking::KeyFileError),
    /// The fan-out backend (NATS) cannot be reached or configured.
    #[error(transparent)]
    FanOut(#[from] crate::fanout::FanOutError),
    /// The attachment blob store cannot be opened.
    #[error("cannot open the attachment blob store: {0}")]
    Blobs(#[from] crate::blobs::BlobError),
}

/// A running node. Dropping it shuts the node down as
/// [`RunningServer::trigger_shutdown`] does (without waiting).
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    ca_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// The bound address (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `https://IP:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.local_addr)
    }

    /// The generated development CA, if the node uses one.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// Starts a graceful shutdown: no new connections, receive streams end
    /// with `UNAVAILABLE`, in-flight sends finish and the store is flushed.
    pub fn trigger_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Triggers shutdown and waits until the node has stopped.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.trigger_shutdown();
        self.wait().await
    }

    /// Waits until the node stops (after [`Self::trigger_shutdown`]).
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(%join, "server task failed");
                Ok(())
            }
        }
    }
}

/// Adds services to the router before it starts (tests mount diagnostic
/// services this way; production passes none).
pub type RouteHook = Box<dyn FnOnce(Routes) -> Routes + Send>;

/// Starts a node with the storage named by the database URL and the
/// fan-out named by `nats_url` (in-process without one).
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with(config, None).await
}

/// Binds the listen address: first of all, so a port in use is reported
/// before anything is created on disk.
async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Creates the data directory with mode 0700 (it holds the TLS key, the
/// franking keys and the database), tightening an existing one.
fn data_dir(path: &Path) -> Result<(), ServerError> {
    let failed = |source| ServerError::DataDir {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(failed)?;
        let mode = std::fs::metadata(path)
            .map_err(failed)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(failed)?;
            tracing::info!(path = %path.display(), "the data directory was open to other users; its mode is now 0700");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path).map_err(failed)?;
    Ok(())
}

/// [`start`] with extra routes.
pub async fn start_with(
    config: Config,
    hook: Option<RouteHook>,
) -> Result<RunningServer, ServerError> {
    let listener = bind(config.listen).await?;
    data_dir(&config.data_dir)?;
    let storage = storage::open_serving(&config.database_url(), config.storage_reserve).await?;
    let fanout: Arc<dyn FanOut> = match &config.nats_url {
        Some(url) => Arc::new(NatsFanOut::connect(url, &config.nats_subject_prefix).await?),
        None => Arc::new(MemoryFanOut::new()),
    };
    serve(listener, config, storage, fanout, hook).await
}

/// Starts a node over a given store and fan-out (how other backends plug in).
pub async fn start_on(
    config: Config,
    storage: Arc<dyn Storage>,
    fanout: Arc<dyn FanOut>,
    hook: Option<RouteHook>,
) -> Result<RunningServer, ServerError> {
    let listener = bind(config.listen).await?;
    data_dir(&config.data_dir)?;
    serve(listener, config, storage, fanout, hook).await
}

async fn serve(
    listener: TcpListener,
    config: Config,
    storage: Arc<dyn Storage>,
    fanout: Arc<dyn FanOut>,
    hook: Option<RouteHook>,
) -> Result<RunningServer, ServerError> {
    let tls = tls::load_or_generate(
        &config.data_dir,
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    )?;
    let keys_path = config.franking_keys_path();
    let ring = crate::franking::open(&keys_path, storage.as_ref()).await?;
    let franking = SharedKeyRing::new(ring, Some(keys_path));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (writer, jobs) = mpsc::channel(limits::GROUP_COMMIT_MAX * 4);
    let writer_task = tokio::spawn(group_commit(
        Arc::clone(&storage),
        Arc::clone(&fanout),
        jobs,
    ));
    let state = Arc::new(State {
        storage: Arc::clone(&storage),
        fanout,
        limiters: config.rate_limits.map(Limiters::new),
        franking,
        writer,
        retention: config.retention,
        mailbox_limit: config.mailbox_limit,
        shutdown: shutdown_rx.clone(),
        caches: Default::default(),
        drain: Default::default(),
        expiry: Default::default(),
        forwarders: config.trusted_proxies.clone(),
        server_names: tls::ServerNames::new(&config.server_names, &tls.cert_pem),
    });
    let housekeeping = tokio::spawn(housekeeping(Arc::clone(&state), shutdown_rx.clone()));
    let blobs = crate::blobs::open(&config.database_url(), &config.data_dir).await?;
    let blob_housekeeping = tokio::spawn(blob_housekeeping(
        Arc::clone(&blobs),
        config.retention,
        shutdown_rx.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AccountServiceServer<AccountApi>>()
        .await;
    health.set_serving::<KeyServiceServer<KeyApi>>().await;
    health
        .set_serving::<MessageServiceServer<MessageApi>>()
        .await;
    health.set_serving::<ReportServiceServer<ReportApi>>().await;
    health
        .set_serving::<AttachmentServiceServer<AttachmentApi>>()
        .await;
    health.set_serving::<LinkServiceServer<LinkApi>>().await;
    health.set_serving::<GroupServiceServer<GroupApi>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(missive_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Storage(StorageError::Backend(format!("reflection: {e}"))))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(missive_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Storage(StorageError::Backend(format!("reflection: {e}"))))?;

    let mut routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AccountServiceServer::new(AccountApi::new(Arc::clone(&state)))
                .max_decoding_message_size(limits::MAX_KEY_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_RESPONSE_BYTES),
        )
        .add_service(
            KeyServiceServer::new(KeyApi::new(Arc::clone(&state)))
                .max_decoding_message_size(limits::MAX_KEY_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_RESPONSE_BYTES),
        )
        .add_service(
            // A Receive item may be a Welcome of up to 8 MiB.
            MessageServiceServer::new(MessageApi::new(Arc::clone(&state)))
                .max_decoding_message_size(limits::MAX_MESSAGE_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_RECEIVE_ITEM_BYTES),
        )
        .add_service(
            ReportServiceServer::new(ReportApi::new(Arc::clone(&state)))
                .max_decoding_message_size(limits::MAX_REPORT_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_RESPONSE_BYTES),
        )
        .add_service(
            AttachmentServiceServer::new(AttachmentApi::new(
                Arc::clone(&state),
                Arc::clone(&blobs),
                config.attachment_quota,
            ))
            .max_decoding_message_size(crate::service::attachments::MAX_UPLOAD_MESSAGE_BYTES)
            .max_encoding_message_size(crate::service::attachments::DOWNLOAD_READ_BYTES + 1024),
        )
        .add_service(
            // A FINISH payload is up to 1 MiB; GetLink returns every slot.
            LinkServiceServer::new(LinkApi::new(Arc::clone(&state)))
                .max_decoding_message_size(limits::MAX_LINK_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_LINK_RESPONSE_BYTES),
        )
        .add_service(
            // A commit carries a Welcome of up to 8 MiB.
            GroupServiceServer::new(GroupApi::new(Arc::clone(&state)))
                .max_decoding_message_size(limits::MAX_GROUP_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_GROUP_RESPONSE_BYTES),
        );
    if let Some(hook) = hook {
        routes = hook(routes);
    }
    drop(state);

    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let proxies = config.proxy_protocol_from.clone();

    let router = Server::builder()
        .tls_config(
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &*tls.key_pem)),
        )?
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .http2_max_local_error_reset_streams(Some(limits::MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_max_pending_accept_reset_streams(Some(limits::MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .max_connection_age(limits::MAX_CONNECTION_AGE)
        .max_connection_age_grace(limits::MAX_CONNECTION_AGE_GRACE)
        .timeout(config.request_timeout)
        .layer(CatchPanicLayer::custom(crate::layers::panic_response))
        .layer(tower::util::MapResponseLayer::new(
            crate::layers::rewrite_decode_errors::<tonic::body::Body>,
        ))
        .add_routes(routes);

    let mut signal = shutdown_rx.clone();
    let task = tokio::spawn(async move {
        let stopped = async move {
            let _ = signal.wait_for(|stop| *stop).await;
        };
        let served = if proxies.is_empty() {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)));
            router.serve_with_incoming_shutdown(incoming, stopped).await
        } else {
            router
                .serve_with_incoming_shutdown(crate::proxy::incoming(listener, proxies), stopped)
                .await
        };
        health
            .set_not_serving::<MessageServiceServer<MessageApi>>()
            .await;
        health.set_not_serving::<LinkServiceServer<LinkApi>>().await;
        let _ = housekeeping.await;
        let _ = blob_housekeeping.await;
        // Every State handle is gone once the router and streams are: the
        // writer drains what was queued, then the store is flushed.
        if tokio::time::timeout(Duration::from_secs(10), writer_task)
            .await
            .is_err()
        {
            tracing::warn!("send writer still busy at shutdown");
        }
        storage.close().await;
        blobs.close().await;
        tracing::info!("server stopped");
        served.map_err(ServerError::from)
    });
    tracing::info!(%local_addr, "listening");
    Ok(RunningServer {
        local_addr,
        ca_path: tls.ca_path,
        shutdown: shutdown_tx,
        task,
    })
}

/// Purges once a purge interval, and also when the earliest per-envelope
/// expiry (a disappearing message's retention) is due, at most once per
/// [`limits::MIN_EXPIRY_PURGE_GAP`].
async fn housekeeping(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(limits::PURGE_INTERVAL);
    let mut last_purge = tokio::time::Instant::now();
    let mut full = true;
    loop {
        let due = state.expiry.earliest().map(|at| {
            let wait = Duration::from_millis(at.saturating_sub(crate::time::now_ms()));
            (tokio::time::Instant::now() + wait).max(last_purge + limits::MIN_EXPIRY_PURGE_GAP)
        });
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => full = true,
            () = state.expiry.lowered() => continue,
            () = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        last_purge = tokio::time::Instant::now();
        state.expiry.reset();
        let now = crate::time::now_ms();
        match state
            .storage
            .purge_expired(now, crate::time::sub(now, state.retention))
            .await
        {
            Ok(purged) => {
                if purged.envelopes > 0 {
                    tracing::info!(
                        envelopes = purged.envelopes,
                        "expired undelivered envelopes deleted"
                    );
                }
                if purged.links > 0 {
                    tracing::debug!(links = purged.links, "expired link mailboxes deleted");
                }
            }
            Err(error) => tracing::warn!(%error, "purge failed"),
        }
        // What is left expires later (or the purge failed: retry then).
        match state.storage.next_envelope_expiry().await {
            Ok(Some(at)) => state.expiry.note(at.max(now.saturating_add(1))),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot read the next envelope expiry"),
        }
        if !std::mem::take(&mut full) {
            continue;
        }
        if let Some(limiters) = state.limiters() {
            limiters.prune();
        }
        state
            .franking
            .reload_if_changed(state.storage.as_ref())
            .await;
    }
}

/// Deletes attachment blobs past the retention, uploads never finalised
/// within [`crate::service::attachments::UPLOAD_TTL`] and quota ledger days
/// older than the retention.
async fn blob_housekeeping(
    blobs: Arc<dyn crate::blobs::BlobStore>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(limits::PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let now = crate::time::now_ms();
        let ledger_day = crate::time::day_of(crate::time::sub(now, retention)) - 1;
        match blobs
            .purge(
                crate::time::sub(now, retention),
                crate::time::sub(now, crate::service::attachments::UPLOAD_TTL),
                ledger_day,
            )
            .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired attachment blobs deleted"),
            Err(error) => tracing::warn!(%error, "attachment purge failed"),
        }
    }
}
