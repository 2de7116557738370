//! `missive-bench`: drives simulated devices with real crypto sessions over
//! real gRPC/TLS against `missive-server` (started here, or `--server URL`),
//! and optionally the same call pattern against a bare tonic service
//! (`--baseline`), so the relay's cost is a ratio measured in the same run.
#![forbid(unsafe_code)]

mod attachment;
mod baseline;
mod driver;
mod group;
mod nodes;
mod procstat;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rand::Rng as _;
use tonic::transport::Certificate;

use driver::{Device, Mode, Workload};
use nodes::Node;
use stats::RunResult;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Target a running server instead of starting node(s) here.
    #[arg(long)]
    server: Option<String>,
    /// CA certificate (PEM) for --server.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Simulated accounts (even: account 2k talks with 2k+1), each with
    /// --devices-per-account devices.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Devices per account (protocol v2): device 1 registers, the others are
    /// named in the account's signed device list and join with AddDevice.
    /// Every device sends --messages messages, encrypted once per device of
    /// the peer account and once per other device of its own account (a
    /// second Send, to its own account); a message counts as delivered when
    /// every device of the peer account decrypted it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=6))]
    devices_per_account: u16,
    /// Messages each device sends.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Text bytes per message (at least 32).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Sends in flight per device.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Offered load in messages per second, all devices together (open loop);
    /// without it every device sends as fast as its window allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Storage for the nodes started here (default: a temporary SQLite file).
    #[arg(long)]
    database: Option<String>,
    /// NATS URL for the nodes started here (needed for --nodes > 1 to be live).
    #[arg(long)]
    nats: Option<String>,
    /// Number of server nodes to start; devices are spread over them.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Extra argument passed to every node started here (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Also measure a bare tonic service with the same call pattern.
    #[arg(long)]
    baseline: bool,
    /// Connection-scale mode: hold this many idle devices, each with an open
    /// receive stream, and report the node's memory per device.
    #[arg(long)]
    idle: Option<usize>,
    /// Devices sharing one HTTP/2 connection, as behind an HTTP/2 load balancer
    /// that multiplexes (1 = a TCP connection per device, as a phone has).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    devices_per_connection: u16,
    /// Fault mode: every SECS seconds of the measured phase, SIGKILL one of
    /// the nodes started here (in turn) and restart it on the same data
    /// directory and address. Devices reconnect and resend what was not
    /// acknowledged; lost and duplicated are counted over the whole run.
    #[arg(long, value_name = "SECS")]
    kill_node_every: Option<f64>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 120)]
    deadline_secs: u64,
    /// Attachment mode (issue 15): send a file of BYTES bytes with the real
    /// `missive` CLI (`send --file`, then `recv`) and report upload and
    /// download throughput and both sides' peak RSS, instead of the message
    /// load. Repeatable, or a comma-separated list; sizes run in the order given.
    #[arg(long = "attachment-size", value_name = "BYTES", value_delimiter = ',')]
    attachment_sizes: Vec<u64>,
    /// Group mode (issue 14): an MLS group of N single-device accounts, each
    /// a real client store with an open Receive stream; measures a message to
    /// all members (streamed and decrypted), the server's bytes per group
    /// message, and adding/removing one device (committer, receivers, sizes).
    #[arg(long, value_name = "N")]
    group_size: Option<usize>,
    /// Group mode: application messages sent, one at a time.
    #[arg(long, default_value_t = 20)]
    group_messages: usize,
    /// Group mode: add + remove rounds measured (one extra account each).
    #[arg(long, default_value_t = 3)]
    group_trials: usize,
    /// Group mode: how many members decrypt at once (default: the cores).
    /// Every member here shares this machine; a decrypt is CPU work and one
    /// fsync of the member's store (`synchronous = FULL`), so more than the
    /// cores overlaps the fsyncs, as members on their own devices would.
    #[arg(long, value_name = "K")]
    group_decrypt_threads: Option<usize>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// (internal) Serve the bare baseline service.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("missive-bench: could not start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("missive-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the devices connect, and the nodes to measure and stop.
struct Target {
    urls: Vec<String>,
    ca: Certificate,
    /// The CA's PEM file (for the `missive` CLI in attachment mode).
    ca_path: PathBuf,
    /// The SQLite file of the nodes started here (none with --database or
    /// --server).
    server_db: Option<PathBuf>,
    nodes: Vec<Node>,
    /// Certificate and key of node 0, reused by the baseline.
    tls: Option<(PathBuf, PathBuf)>,
    _dir: Option<tempfile::TempDir>,
}

async fn start_target(args: &Args) -> anyhow::Result<Target> {
    if let Some(url) = &args.server {
        let ca_path = args.ca.as_ref().context("--server needs --ca PEM")?;
        let ca =
            std::fs::read(ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        return Ok(Target {
            urls: vec![url.clone()],
            ca: Certificate::from_pem(ca),
            ca_path: ca_path.clone(),
            server_db: None,
            nodes: Vec::new(),
            tls: None,
            _dir: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let program = nodes::sibling_binary("missive-server")?;
    let node0 = dir.path().join("node0");
    let database = match &args.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}/server.db", node0.display()),
    };
    let mut started = Vec::new();
    for k in 0..args.nodes.max(1) {
        let data_dir = dir.path().join(format!("node{k}"));
        std::fs::create_dir_all(&data_dir)?;
        let mut node_args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--database".to_owned(),
            database.clone(),
        ];
        if k > 0 {
            node_args.extend([
                "--tls-cert".to_owned(),
                node0.join("server.pem").display().to_string(),
                "--tls-key".to_owned(),
                node0.join("server.key").display().to_string(),
                // The nodes share one database, so they share its franking keys.
                "--franking-keys".to_owned(),
                node0.join("franking.keys").display().to_string(),
            ]);
        }
        if let Some(nats) = &args.nats {
            node_args.extend(["--nats".to_owned(), nats.clone()]);
        }
        if !args.server_args.iter().any(|a| a.starts_with("--log")) {
            // Per-request info logs would cost the node CPU the bench is measuring.
            node_args.extend(["--log".to_owned(), "warn".to_owned()]);
        }
        node_args.extend(args.server_args.iter().cloned());
        started.push(Node::spawn(&program, &node_args).await?);
    }
    let ca = std::fs::read(node0.join("ca.pem")).context("node 0 wrote no ca.pem")?;
    Ok(Target {
        urls: started.iter().map(|n| n.url.clone()).collect(),
        ca: Certificate::from_pem(ca),
        ca_path: node0.join("ca.pem"),
        server_db: args.database.is_none().then(|| node0.join("server.db")),
        nodes: started,
        tls: Some((node0.join("server.pem"), node0.join("server.key"))),
        _dir: Some(dir),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::BaselineServer { listen, cert, key }) = &args.command {
        return baseline::serve(*listen, cert, key).await;
    }
    if !args.attachment_sizes.is_empty() {
        if args.idle.is_some() || args.baseline || args.kill_node_every.is_some() {
            bail!(
                "--attachment-size cannot be combined with --idle, --baseline or --kill-node-every"
            );
        }
        let target = start_target(&args).await?;
        let server = attachment::Server {
            url: target.urls[0].clone(),
            ca: target.ca_path.clone(),
            pid: target.nodes.first().map(Node::pid),
        };
        let outcome = attachment::run(&server, &args.attachment_sizes, args.json).await;
        for node in target.nodes {
            node.stop().await;
        }
        return outcome;
    }
    if let Some(size) = args.group_size {
        if args.idle.is_some() || args.baseline || args.kill_node_every.is_some() {
            bail!("--group-size cannot be combined with --idle, --baseline or --kill-node-every");
        }
        let target = start_target(&args).await?;
        let outcome = group::run(
            &target.urls,
            &target.ca,
            target.server_db.clone(),
            &group::GroupArgs {
                size,
                messages: args.group_messages,
                payload: args.payload,
                trials: args.group_trials,
                deadline: Duration::from_secs(args.deadline_secs),
                json: args.json,
                decrypt_threads: args
                    .group_decrypt_threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
            },
        )
        .await;
        for node in target.nodes {
            node.stop().await;
        }
        return outcome;
    }
    if args.clients < 2 || !args.clients.is_multiple_of(2) {
        bail!("--clients must be an even number of at least 2");
    }
    if args.devices_per_account > 1
        && (args.idle.is_some() || args.baseline || !args.attachment_sizes.is_empty())
    {
        bail!(
            "--devices-per-account cannot be combined with --idle, --baseline or --attachment-size"
        );
    }
    if args.payload < 32 {
        bail!("--payload must be at least 32 bytes");
    }
    if let Some(secs) = args.kill_node_every {
        if !(secs.is_finite() && secs >= 0.5) {
            bail!("--kill-node-every must be at least 0.5 seconds");
        }
        if args.server.is_some() || args.idle.is_some() || args.baseline {
            bail!(
                "--kill-node-every needs nodes started by missive-bench, without --server, --idle or --baseline"
            );
        }
    }
    let mut target = start_target(&args).await?;
    let outcome = match args.idle {
        Some(count) => idle(&args, &target, count).await,
        None => load(&args, &mut target).await,
    };
    for node in target.nodes {
        node.stop().await;
    }
    outcome
}

/// Registers (relay) or names (baseline) `count` accounts of `per_account`
/// devices (consecutive in the answer), `per_connection` devices to each
/// connection; connections are spread over `urls` in turn.
async fn make_devices(
    mode: Mode,
    urls: &[String],
    ca: &Certificate,
    count: usize,
    per_account: usize,
    per_connection: usize,
) -> anyhow::Result<Vec<Arc<Device>>> {
    let run_tag: u32 = rand::thread_rng().gen_range(0..1_000_000);
    let per_account = per_account.max(1);
    let channels = in_parallel((count * per_account).div_ceil(per_connection), |c| {
        let url = urls[c % urls.len()].clone();
        let ca = ca.clone();
        async move { driver::connect(&url, &ca).await }
    })
    .await?;
    let accounts = in_parallel(count, |i| {
        let channels: Vec<_> = (i * per_account..(i + 1) * per_account)
            .map(|d| channels[d / per_connection].clone())
            .collect();
        let name = format!("b{run_tag:06}-{i}");
        async move {
            match mode {
                Mode::Relay => Device::register_account(channels, name).await,
                Mode::Baseline => Ok(vec![Device::baseline(channels[0].clone(), name)?]),
            }
        }
    })
    .await?;
    Ok(accounts.into_iter().flatten().map(Arc::new).collect())
}

/// Runs `make(0..count)` as tasks, 32 at a time (enough to hide connection and
/// registration latency without flooding the node), keeping the order.
async fn in_parallel<T, F, Fut>(count: usize, mut make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    const PARALLEL: usize = 32;
    let mut out = Vec::with_capacity(count);
    for chunk_start in (0..count).step_by(PARALLEL) {
        let tasks: Vec<_> = (chunk_start..(chunk_start + PARALLEL).min(count))
            .map(|i| tokio::spawn(make(i)))
            .collect();
        for task in tasks {
            out.push(task.await??);
        }
    }
    Ok(out)
}

fn workload(args: &Args) -> Workload {
    Workload {
        messages: args.messages,
        payload: args.payload,
        window: args.window.max(1),
        rate: args.rate,
        deadline: Duration::from_secs(args.deadline_secs),
        devices_per_account: args.devices_per_account.into(),
    }
}

/// SIGKILLs and restarts the nodes in turn every `every` until `stop`;
/// gives the nodes back with the number of kills.
async fn kill_nodes(
    mut nodes: Vec<Node>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<Node>, anyhow::Result<u64>) {
    let mut kills = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return (nodes, Ok(kills)),
            () = tokio::time::sleep(every) => {}
        }
        let k = (kills as usize) % nodes.len();
        let started = Instant::now();
        if let Err(error) = nodes[k].kill_and_restart().await {
            return (nodes, Err(error));
        }
        kills += 1;
        eprintln!(
            "killed node {k} with SIGKILL (kill {kills}); it listens again after {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
}

async fn measure(
    mode: Mode,
    urls: &[String],
    ca: &Certificate,
    args: &Args,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<RunResult> {
    let setup = Instant::now();
    let devices = make_devices(
        mode,
        urls,
        ca,
        args.clients,
        args.devices_per_account.into(),
        args.devices_per_connection.into(),
    )
    .await?;
    let per_account = usize::from(args.devices_per_account);
    let mut pairs = Vec::new();
    for pair in devices.chunks(2 * per_account) {
        let (a, b) = pair.split_at(per_account);
        let (a, b) = (a.to_vec(), b.to_vec());
        pairs.push(tokio::spawn(async move { driver::pair_up(&a, &b).await }));
    }
    for pair in pairs {
        pair.await??;
    }
    if per_account > 1 {
        eprintln!(
            "{mode:?}: {} accounts of {per_account} devices registered, linked and paired in {:.1} s",
            args.clients,
            setup.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "{mode:?}: {} devices registered and paired in {:.1} s",
            devices.len(),
            setup.elapsed().as_secs_f64()
        );
    }
    let Some(every) = args.kill_node_every.filter(|_| !nodes.is_empty()) else {
        return driver::run(devices, &workload(args)).await;
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let killer = tokio::spawn(kill_nodes(
        std::mem::take(nodes),
        Duration::from_secs_f64(every),
        stopped,
    ));
    let result = driver::run(devices, &workload(args)).await;
    let _ = stop.send(true);
    let (returned, kills) = killer.await.context("the node killer task failed")?;
    *nodes = returned;
    let mut result = result?;
    result.kills = kills?;
    Ok(result)
}

async fn load(args: &Args, target: &mut Target) -> anyhow::Result<()> {
    let mut relay = measure(
        Mode::Relay,
        &target.urls,
        &target.ca,
        args,
        &mut target.nodes,
    )
    .await?;
    relay.server_cpu_seconds = target.nodes.iter().map(Node::cpu_seconds).sum();
    relay.server_peak_rss_mib = target.nodes.iter().map(Node::peak_rss_mib).sum();

    let mut baseline = None;
    if args.baseline {
        let (cert, key) = target
            .tls
            .clone()
            .context("--baseline needs the nodes started by missive-bench (no --server)")?;
        let exe = std::env::current_exe()?;
        let node = Node::spawn(
            &exe,
            &[
                "baseline-server".to_owned(),
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--cert".to_owned(),
                cert.display().to_string(),
                "--key".to_owned(),
                key.display().to_string(),
            ],
        )
        .await?;
        let mut result = measure(
            Mode::Baseline,
            std::slice::from_ref(&node.url),
            &target.ca,
            args,
            &mut Vec::new(),
        )
        .await?;
        result.server_cpu_seconds = node.cpu_seconds();
        result.server_peak_rss_mib = node.peak_rss_mib();
        node.stop().await;
        baseline = Some(result);
    }

    let (p50, p95, p99) = relay.percentiles();
    println!(
        "relay:    {} delivered, {} lost, {} duplicated, {:.0} msg/s, p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms, server CPU {:.1} s, peak RSS {:.1} MiB",
        relay.delivered,
        relay.lost(),
        relay.duplicated,
        relay.msgs_per_sec(),
        relay.server_cpu_seconds,
        relay.server_peak_rss_mib
    );
    let per_account = relay.devices_per_account;
    let envelopes_per_message = relay.per_message(relay.envelopes_sent);
    let bytes_per_message = relay.per_message(relay.request_bytes);
    let (o50, o95, o99) = relay.own_percentiles();
    if per_account > 1 {
        println!(
            "fan-out:  {per_account} devices per account: {envelopes_per_message:.2} envelopes ({:.0}/s) and {bytes_per_message:.0} SendRequest bytes per message; own-device copies {} of {} delivered to each of the {} other devices, p50 {o50:.2} ms, p99 {o99:.2} ms",
            relay.envelopes_sent as f64 / relay.elapsed.as_secs_f64().max(1e-9),
            relay.own_delivered,
            relay.own_expected,
            per_account - 1
        );
    }
    if args.kill_node_every.is_some() {
        println!(
            "faults:   {} node kills (SIGKILL + restart), {} receive streams reopened, {} sends repeated, {} envelopes redelivered and recognised by message id",
            relay.kills, relay.reconnects, relay.resent, relay.redelivered
        );
    }
    let mut json = serde_json::json!({
        "delivered": relay.delivered,
        "lost": relay.lost(),
        "duplicated": relay.duplicated,
        "msgs_per_sec": relay.msgs_per_sec().round(),
        "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
        "server_rss_mib": (relay.server_peak_rss_mib * 10.0).round() / 10.0,
        "server_cpu_seconds": (relay.server_cpu_seconds * 10.0).round() / 10.0,
        "clients": args.clients,
        "messages_per_client": args.messages,
        "payload": args.payload,
        "nodes": target.urls.len(),
        "kills": relay.kills,
        "reconnects": relay.reconnects,
        "resent": relay.resent,
        "redelivered": relay.redelivered,
        "devices_per_account": per_account,
        "envelopes_per_message": (envelopes_per_message * 100.0).round() / 100.0,
        "send_request_bytes_per_message": bytes_per_message.round(),
    });
    if per_account > 1 {
        json["own_copies"] = serde_json::json!({
            "expected": relay.own_expected,
            "delivered": relay.own_delivered,
            "latency_ms": {"p50": o50, "p95": o95, "p99": o99},
        });
    }
    if let Some(mut base) = baseline {
        let (b50, _, b99) = base.percentiles();
        println!(
            "baseline: {} delivered, {:.0} msg/s, p50 {b50:.2} ms, p99 {b99:.2} ms, relay/baseline {:.0} %",
            base.delivered,
            base.msgs_per_sec(),
            100.0 * relay.msgs_per_sec() / base.msgs_per_sec().max(1.0)
        );
        json["baseline_msgs_per_sec"] = serde_json::json!(base.msgs_per_sec().round());
    }
    if args.json {
        println!("{json}");
    }
    if relay.lost() > 0 || relay.duplicated > 0 {
        bail!(
            "{} lost and {} duplicated messages",
            relay.lost(),
            relay.duplicated
        );
    }
    if relay.own_delivered < relay.own_expected {
        bail!(
            "{} of {} own-device copies did not reach all of the sender's other devices",
            relay.own_expected - relay.own_delivered,
            relay.own_expected
        );
    }
    Ok(())
}

async fn idle(args: &Args, target: &Target, count: usize) -> anyhow::Result<()> {
    let node = target
        .nodes
        .first()
        .context("--idle measures a node started by missive-bench (no --server)")?;
    let before = procstat::rss_mib(node.pid()).unwrap_or(0.0);
    let started = Instant::now();
    let per_connection = usize::from(args.devices_per_connection);
    let devices = make_devices(
        Mode::Relay,
        &target.urls,
        &target.ca,
        count,
        1,
        per_connection,
    )
    .await?;
    let registered = procstat::rss_mib(node.pid()).unwrap_or(0.0);
    let mut streams = Vec::with_capacity(count);
    for device in &devices {
        streams.push(device.hold_stream().await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procstat::rss_mib(node.pid()).unwrap_or(0.0);
    let per_device_kib = (after - before) * 1024.0 / count as f64;
    let per_stream_kib = (after - registered) * 1024.0 / count as f64;
    println!(
        "{count} idle devices on {} connections, connected in {:.1} s: server RSS {before:.1} -> {after:.1} MiB ({per_device_kib:.1} KiB per device, {per_stream_kib:.1} KiB per open stream)",
        count.div_ceil(per_connection),
        started.elapsed().as_secs_f64()
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "idle_devices": count,
                "connections": count.div_ceil(per_connection),
                "server_rss_mib": (after * 10.0).round() / 10.0,
                "server_rss_before_mib": (before * 10.0).round() / 10.0,
                "kib_per_device": (per_device_kib * 10.0).round() / 10.0,
            })
        );
    }
    drop(streams);
    Ok(())
}
