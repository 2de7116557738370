//! `missive-server`: the Missive relay.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use missive_server::proxy::TrustedProxies;
use missive_server::storage::{self, OpenMode, StorageError};
use missive_server::{Config, export, service::normalize_username};

/// The Missive relay: stores and forwards end-to-end encrypted envelopes it
/// cannot read, over gRPC with TLS always on.
#[derive(Debug, Parser)]
#[command(
    name = "missive-server",
    version,
    about,
    long_about = None,
    after_help = "Every setting can also be given in the TOML file named by --config, under the \
flag's long name with dashes as underscores (listen = \"0.0.0.0:7443\", data_dir = \"/var/lib/missive\"). \
A flag beats its environment variable, which beats the file."
)]
struct Cli {
    /// TOML configuration file with any of the settings below (keys are the
    /// long flag names with '_' for '-'); flags and environment variables
    /// take precedence over it.
    #[arg(long, env = "MISSIVE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(
        long,
        env = "MISSIVE_LISTEN",
        default_value = "127.0.0.1:7443",
        global = true
    )]
    listen: SocketAddr,
    /// Data directory: development TLS material (ca.pem, server.pem,
    /// server.key) and the default SQLite database.
    #[arg(
        long,
        env = "MISSIVE_DATA_DIR",
        default_value = "./missive-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Database URL [default: sqlite://DATA_DIR/server.db].
    #[arg(long, env = "MISSIVE_DATABASE_URL", global = true)]
    database: Option<String>,
    /// TLS certificate chain (PEM). Without it a development CA and a
    /// certificate for localhost, 127.0.0.1 and ::1 are generated in DATA_DIR.
    #[arg(long, env = "MISSIVE_TLS_CERT", requires = "tls_key", global = true)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), with --tls-cert.
    #[arg(long, env = "MISSIVE_TLS_KEY", requires = "tls_cert", global = true)]
    tls_key: Option<PathBuf>,
    /// How long undelivered envelopes are kept, e.g. "30days", "12h".
    #[arg(long, env = "MISSIVE_RETENTION", default_value = "30days", value_parser = humantime::parse_duration, global = true)]
    retention: Duration,
    /// Pending envelopes per device before senders get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MISSIVE_MAILBOX_LIMIT", default_value_t = missive_server::limits::DEFAULT_MAILBOX_LIMIT, global = true)]
    mailbox_limit: u32,
    /// Turn off per-IP and per-account rate limits (benchmarks only).
    #[arg(long, env = "MISSIVE_DISABLE_RATE_LIMITS", global = true)]
    disable_rate_limits: bool,
    /// NATS URL (e.g. nats://127.0.0.1:4222) for waking receive streams
    /// across nodes; without it streams are woken in-process (one node).
    #[arg(long, env = "MISSIVE_NATS_URL", global = true)]
    nats: Option<String>,
    /// First subject token(s) of NATS wake-ups, so deployments can share a
    /// NATS server.
    #[arg(long, env = "MISSIVE_NATS_PREFIX", default_value = missive_server::fanout::nats::DEFAULT_SUBJECT_PREFIX, global = true)]
    nats_prefix: String,
    /// Franking key file [default: DATA_DIR/franking.keys]. Secret (mode
    /// 0600): whoever holds it can forge verified abuse reports. Nodes
    /// sharing a database need copies of the same file.
    #[arg(long, env = "MISSIVE_FRANKING_KEYS", global = true)]
    franking_keys: Option<PathBuf>,
    /// Comma-separated addresses or networks (e.g. 10.0.0.0/8) of load
    /// balancers whose connections start with a PROXY protocol (v1 or v2)
    /// header naming the client; per-address rate limits then count the
    /// client. Off by default; connections from other peers are served as
    /// they come.
    #[arg(long, env = "MISSIVE_PROXY_PROTOCOL_FROM", value_parser = TrustedProxies::parse, default_value = "", hide_default_value = true, global = true)]
    proxy_protocol_from: TrustedProxies,
    /// Comma-separated addresses or networks of HTTP/2 proxies whose
    /// `x-forwarded-for` header names the client (the rightmost address not
    /// itself listed). Off by default.
    #[arg(long, env = "MISSIVE_TRUSTED_PROXY", value_parser = TrustedProxies::parse, default_value = "", hide_default_value = true, global = true)]
    trusted_proxy: TrustedProxies,
    /// Disk space kept free beside a SQLite database (`server.db.reserve`)
    /// so acknowledgements still work on a full disk, e.g. "16MiB"; 0 for
    /// none.
    #[arg(long, env = "MISSIVE_STORAGE_RESERVE", default_value = "16MiB", value_parser = missive_server::config_file::parse_size, global = true)]
    storage_reserve: u64,
    /// Bytes of attachment blobs one account may upload within the retention
    /// period, e.g. "2GiB" (docs/DEPLOYMENT.md, "Blob storage").
    #[arg(long, env = "MISSIVE_ATTACHMENT_QUOTA", default_value = "2GiB", value_parser = missive_server::config_file::parse_size, global = true)]
    attachment_quota: u64,
    /// A name of this server that clients may sign in login and
    /// registration transcripts (the name they verified TLS for), besides
    /// every name the TLS certificate is valid for; repeatable (the
    /// environment variable takes a comma-separated list). Give the public
    /// name when a proxy terminates TLS with another certificate.
    #[arg(
        long = "server-name",
        value_name = "NAME",
        env = "MISSIVE_SERVER_NAMES",
        value_delimiter = ',',
        global = true
    )]
    server_name: Vec<String>,
    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "missive_server=debug");
    /// logs go to stderr. Falls back to RUST_LOG, then "info".
    #[arg(long, env = "MISSIVE_LOG", global = true)]
    log: Option<String>,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics
    /// (port 0 picks a free port); off without it. Keep ADDR private.
    #[arg(long, env = "MISSIVE_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
    /// Validate the configuration, the store (opens, migrations current),
    /// the TLS material and NATS reachability, then exit: 0 when all is
    /// well, 1 with one sentence per problem otherwise.
    Check,
    /// Print, as JSON, everything the server stores about an account. Works
    /// while the server runs.
    ExportAccount {
        /// The account's username.
        username: String,
    },
    /// Show verified abuse reports to a moderator.
    Reports {
        #[command(subcommand)]
        command: ReportsCommand,
    },
    /// Start tagging with a fresh franking key; older keys stay in the key
    /// file for verifying reports only. Copy the file to every node; running
    /// nodes reload it within a minute.
    RotateFrankingKey,
}

#[derive(Debug, Subcommand)]
enum ReportsCommand {
    /// List every report, oldest first.
    List {
        /// Print a JSON array instead of one line per report.
        #[arg(long)]
        json: bool,
    },
    /// Show one report in full.
    Show {
        /// Report id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the file of a reported message from the attachment store, open
    /// it with the key the reporter disclosed and check it against the
    /// commitment the sender made; save it to PATH only if it verifies.
    SaveFile {
        /// Report id.
        id: u64,
        /// Where to save the file (never replaced if it exists).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    if let Err(error) = apply_config_file(&mut cli, &matches) {
        eprintln!("missive-server: error: {error}");
        return ExitCode::FAILURE;
    }
    let filter = match &cli.log {
        Some(directives) => tracing_subscriber::EnvFilter::try_new(directives).ok(),
        None => tracing_subscriber::EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("missive-server: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("missive-server: error: {}", sentence(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a cause whose text the message
/// already contains is left out.
fn sentence(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Fills every setting given neither as a flag nor as an environment
/// variable from the `--config` file, if any.
fn apply_config_file(cli: &mut Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    let Some(path) = &cli.config else {
        return Ok(());
    };
    let file = missive_server::config_file::FileSettings::load(path)?;
    let unset = |id: &str| {
        !matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! take {
        ($field:ident) => {
            if let Some(value) = file.$field {
                if unset(stringify!($field)) {
                    cli.$field = value.into();
                }
            }
        };
    }
    take!(listen);
    take!(data_dir);
    take!(database);
    take!(tls_cert);
    take!(tls_key);
    take!(mailbox_limit);
    take!(disable_rate_limits);
    take!(nats);
    take!(nats_prefix);
    take!(log);
    take!(metrics_listen);
    take!(franking_keys);
    if let Some(reserve) = file.storage_reserve
        && unset("storage_reserve")
    {
        cli.storage_reserve =
            missive_server::config_file::parse_size(&reserve).map_err(|e| anyhow!(e))?;
    }
    if let Some(quota) = file.attachment_quota
        && unset("attachment_quota")
    {
        cli.attachment_quota =
            missive_server::config_file::parse_size(&quota).map_err(|e| anyhow!(e))?;
    }
    if let Some(names) = file.server_names
        && unset("server_name")
    {
        cli.server_name = names;
    }
    if let Some(list) = file.proxy_protocol_from
        && unset("proxy_protocol_from")
    {
        cli.proxy_protocol_from = TrustedProxies::parse(&list).map_err(|e| anyhow!(e))?;
    }
    if let Some(list) = file.trusted_proxy
        && unset("trusted_proxy")
    {
        cli.trusted_proxy = TrustedProxies::parse(&list).map_err(|e| anyhow!(e))?;
    }
    if let Some(retention) = file.retention
        && unset("retention")
    {
        // Checked when the file was loaded; parsed again here.
        cli.retention = humantime::parse_duration(&retention)
            .map_err(|e| anyhow!("retention {retention:?} is not a duration: {e}"))?;
    }
    Ok(())
}

fn config(cli: &Cli) -> Config {
    Config {
        listen: cli.listen,
        data_dir: cli.data_dir.clone(),
        database_url: cli.database.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        retention: cli.retention,
        mailbox_limit: cli.mailbox_limit,
        rate_limits: (!cli.disable_rate_limits).then(Default::default),
        request_timeout: missive_server::limits::REQUEST_TIMEOUT,
        nats_url: cli.nats.clone(),
        nats_subject_prefix: cli.nats_prefix.clone(),
        franking_keys: cli.franking_keys.clone(),
        proxy_protocol_from: cli.proxy_protocol_from.clone(),
        trusted_proxies: cli.trusted_proxy.clone(),
        storage_reserve: cli.storage_reserve,
        attachment_quota: cli.attachment_quota,
        server_names: cli.server_name.clone(),
    }
}

async fn check(cli: &Cli) -> anyhow::Result<()> {
    let mut report = missive_server::preflight::check(&config(cli)).await;
    if let Some(metrics) = cli.metrics_listen {
        if metrics == cli.listen && metrics.port() != 0 {
            report.failures.push(format!(
                "the metrics address {metrics} is also the gRPC address"
            ));
        } else {
            report
                .notes
                .push(format!("metrics on http://{metrics}/metrics"));
        }
    }
    for note in &report.notes {
        print(&format!("ok: {note}"))?;
    }
    if report.failures.is_empty() {
        return print("missive-server: the configuration is good");
    }
    for failure in &report.failures {
        eprintln!("missive-server: check failed: {failure}");
    }
    Err(anyhow!(
        "{} problem(s) found; the server would not start cleanly",
        report.failures.len()
    ))
}

fn database_url(cli: &Cli) -> String {
    cli.database
        .clone()
        .unwrap_or_else(|| missive_server::server::default_database_url(&cli.data_dir))
}

async fn open_existing(cli: &Cli) -> anyhow::Result<std::sync::Arc<dyn storage::Storage>> {
    let url = database_url(cli);
    storage::open(&url, OpenMode::Existing)
        .await
        .map_err(|e| match e {
            StorageError::NoDatabase => anyhow!(
                "no Missive database at {} (use --data-dir or --database)",
                storage::redact_url(&url)
            ),
            other => anyhow!("cannot open {}: {other}", storage::redact_url(&url)),
        })
}

/// Report `id` from the store, or an error naming it.
async fn load_report(cli: &Cli, id: u64) -> anyhow::Result<storage::ReportRecord> {
    open_existing(cli)
        .await?
        .report(id)
        .await?
        .ok_or_else(|| anyhow!("no report with id {id}"))
}

/// The attachment blob store beside the database.
async fn open_blobs(
    cli: &Cli,
) -> anyhow::Result<std::sync::Arc<dyn missive_server::blobs::BlobStore>> {
    missive_server::blobs::open(&database_url(cli), &cli.data_dir)
        .await
        .map_err(|e| anyhow!("cannot open the attachment store: {e}"))
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        None | Some(Command::Serve) => serve(&cli).await,
        Some(Command::Check) => check(&cli).await,
        Some(Command::ExportAccount { username }) => {
            let username = normalize_username(username).map_err(|e| anyhow!("{e}"))?;
            let store = open_existing(&cli).await?;
            let export = store
                .export_account(&username)
                .await?
                .ok_or_else(|| anyhow!("no account named {username:?}"))?;
            let account = store
                .account_named(&username)
                .await?
                .ok_or_else(|| anyhow!("no account named {username:?}"))?;
            let blobs = open_blobs(&cli).await?;
            let ledger = blobs.ledger(account.id).await;
            blobs.close().await;
            let mut document = export::document(export);
            document.attachment_bytes_reserved = export::ledger_days(
                &ledger.map_err(|e| anyhow!("cannot read the attachment ledger: {e}"))?,
            );
            print(&serde_json::to_string_pretty(&document)?)
        }
        Some(Command::RotateFrankingKey) => {
            let store = open_existing(&cli).await?;
            let path = cli
                .franking_keys
                .clone()
                .unwrap_or_else(|| cli.data_dir.join(missive_server::franking::FILE_NAME));
            let ring = missive_server::franking::rotate(&path, store.as_ref()).await?;
            let retired: Vec<String> = ring
                .ids()
                .into_iter()
                .filter(|id| *id != ring.current_id())
                .map(|id| id.to_string())
                .collect();
            print(&format!(
                "franking key {} is now current in {}{}; copy the file to every node (running nodes reload it within a minute)",
                ring.current_id(),
                path.display(),
                match retired.as_slice() {
                    [] => String::new(),
                    [one] => format!("; key {one} is kept for verifying reports only"),
                    many => format!(
                        "; keys {} are kept for verifying reports only",
                        many.join(", ")
                    ),
                }
            ))
        }
        Some(Command::Reports {
            command: ReportsCommand::List { json },
        }) => {
            let store = open_existing(&cli).await?;
            let reports = store.reports().await?;
            if *json {
                print(&serde_json::to_string_pretty(&reports)?)
            } else if reports.is_empty() {
                print("no reports")
            } else {
                print(
                    &reports
                        .iter()
                        .map(export::report_line)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            }
        }
        Some(Command::Reports {
            command: ReportsCommand::Show { id, json },
        }) => {
            let report = load_report(&cli, *id).await?;
            if *json {
                print(&serde_json::to_string_pretty(&report)?)
            } else {
                print(&export::report_text(&report))
            }
        }
        Some(Command::Reports {
            command: ReportsCommand::SaveFile { id, out },
        }) => {
            let report = load_report(&cli, *id).await?;
            let blobs = open_blobs(&cli).await?;
            let saved =
                missive_server::moderation::save_reported_file(blobs.as_ref(), &report, out).await;
            blobs.close().await;
            let size = saved?;
            print(&format!(
                "saved {} ({size} bytes): key commitment, every chunk and the ciphertext hash verified",
                out.display()
            ))
        }
    }
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let server = missive_server::start(config(cli)).await?;
    print(&format!("missive-server listening on {}", server.url()))?;
    let _metrics = match cli.metrics_listen {
        Some(addr) => {
            let metrics = missive_server::telemetry::serve(addr).await?;
            print(&format!("missive-server metrics on {}", metrics.url()))?;
            Some(metrics)
        }
        None => None,
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
