//! Prometheus metrics: names in one place, a recorder installed only when
//! `--metrics-listen` is given (without it every `metrics::` call is a no-op),
//! and a plain-HTTP `GET /metrics` listener on its own address.
//!
//! Labels are closed sets chosen here (gRPC code names, limiter scopes,
//! storage operations): never a username, an address, a device, a message id
//! or anything a client sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Receive streams open now (one per connected device).
pub const CONNECTED_DEVICES: &str = "missive_connected_devices";
/// Envelopes accepted and durably stored (one per recipient device).
pub const ENVELOPES_STORED: &str = "missive_envelopes_stored_total";
/// Send calls whose envelopes were stored.
pub const SENDS: &str = "missive_sends_total";
/// Envelopes written to a receive stream.
pub const ENVELOPES_DELIVERED: &str = "missive_envelopes_delivered_total";
/// Sends per group commit (histogram).
pub const GROUP_COMMIT_BATCH: &str = "missive_group_commit_batch_size";
/// Sends waiting for the group-commit writer (gauge).
pub const SEND_QUEUE_DEPTH: &str = "missive_send_queue_depth";
/// Committed batches waiting for the fan-out (gauge).
pub const FAN_OUT_QUEUE_DEPTH: &str = "missive_fan_out_queue_depth";
/// Storage latency in seconds, label `operation` (histogram).
pub const STORAGE_SECONDS: &str = "missive_storage_seconds";
/// Calls refused by a rate limit, label `scope` (`ip` or `account`).
pub const RATE_LIMITED: &str = "missive_rate_limited_total";
/// Failed calls, label `code` (the gRPC status code name).
pub const ERRORS: &str = "missive_errors_total";

/// Histogram buckets for [`GROUP_COMMIT_BATCH`] (sends per commit).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Histogram buckets for [`STORAGE_SECONDS`].
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// How often histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Scrape requests larger than this (headers) are refused by hyper.
const MAX_REQUEST_HEADER_BYTES: usize = 16 * 1024;

/// Failures starting the metrics listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The listen address.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The recorder could not be installed (one per process).
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
}

/// A running metrics listener; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    _stop: watch::Sender<()>,
}

impl MetricsServer {
    /// The bound address (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://IP:PORT/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.local_addr)
    }
}

/// Installs the process-wide Prometheus recorder and serves `GET /metrics`
/// on `addr` (port 0 picks a free port).
pub async fn serve(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(GROUP_COMMIT_BATCH.into()), BATCH_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(STORAGE_SECONDS.into()), LATENCY_BUCKETS)
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    describe();
    let (stop, stopped) = watch::channel(());
    tokio::spawn(accept(listener, handle, stopped));
    tracing::info!(%local_addr, "serving metrics");
    Ok(MetricsServer {
        local_addr,
        _stop: stop,
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTED_DEVICES, "Receive streams open now.");
    describe_counter!(SENDS, "Send calls whose envelopes were stored.");
    describe_counter!(
        ENVELOPES_STORED,
        "Envelopes stored, one per recipient device."
    );
    describe_counter!(ENVELOPES_DELIVERED, "Envelopes written to receive streams.");
    describe_histogram!(GROUP_COMMIT_BATCH, Unit::Count, "Sends per group commit.");
    describe_gauge!(
        SEND_QUEUE_DEPTH,
        "Sends waiting for the group-commit writer."
    );
    describe_gauge!(
        FAN_OUT_QUEUE_DEPTH,
        "Committed batches waiting for the fan-out."
    );
    describe_histogram!(
        STORAGE_SECONDS,
        Unit::Seconds,
        "Storage latency by operation."
    );
    describe_counter!(RATE_LIMITED, "Calls refused by a rate limit, by scope.");
    describe_counter!(ERRORS, "Failed calls by gRPC status code.");
}

async fn accept(listener: TcpListener, handle: PrometheusHandle, mut stopped: watch::Receiver<()>) {
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        let stream = tokio::select! {
            _ = stopped.changed() => return,
            _ = upkeep.tick() => {
                handle.run_upkeep();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(answer(&request, &handle)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_REQUEST_HEADER_BYTES.max(8192))
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET is supported on /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Counts an open receive stream while alive.
#[derive(Debug)]
pub(crate) struct ConnectedDevice(());

impl ConnectedDevice {
    pub(crate) fn new() -> Self {
        metrics::gauge!(CONNECTED_DEVICES).increment(1.0);
        Self(())
    }
}

impl Drop for ConnectedDevice {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTED_DEVICES).decrement(1.0);
    }
}

/// Records one group commit: its size and the queues behind it.
pub(crate) fn commit_batch<T>(
    sends: usize,
    waiting: usize,
    fan_out: &tokio::sync::mpsc::Sender<T>,
) {
    metrics::histogram!(GROUP_COMMIT_BATCH).record(sends as f64);
    metrics::gauge!(SEND_QUEUE_DEPTH).set(waiting as f64);
    metrics::gauge!(FAN_OUT_QUEUE_DEPTH)
        .set(fan_out.max_capacity().saturating_sub(fan_out.capacity()) as f64);
}

/// Counts one stored send of `envelopes` envelopes.
pub(crate) fn stored(envelopes: usize) {
    metrics::counter!(SENDS).increment(1);
    metrics::counter!(ENVELOPES_STORED).increment(envelopes as u64);
}

/// Counts one envelope written to a receive stream.
pub(crate) fn delivered() {
    metrics::counter!(ENVELOPES_DELIVERED).increment(1);
}

/// Records the time since `started` as the latency of a storage `operation`.
pub(crate) fn storage_latency(operation: &'static str, started: Instant) {
    metrics::histogram!(STORAGE_SECONDS, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
}

/// Counts a failed call by its gRPC code (and a rate-limit refusal by scope).
pub(crate) fn failed(code: tonic::Code, rate_limit_scope: Option<&'static str>) {
    metrics::counter!(ERRORS, "code" => code_name(code)).increment(1);
    if let Some(scope) = rate_limit_scope {
        metrics::counter!(RATE_LIMITED, "scope" => scope).increment(1);
    }
}

/// A short label for a limiter's scope sentence ("from this address").
pub(crate) fn limiter_scope(scope: &str) -> &'static str {
    if scope.contains("address") {
        "ip"
    } else if scope.contains("account") {
        "account"
    } else {
        "other"
    }
}

/// The canonical upper-case name of a gRPC code, as a static label value.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
