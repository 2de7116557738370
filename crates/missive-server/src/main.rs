//! `missive-server`: the Missive relay.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use missive_server::storage::{self, OpenMode, StorageError};
use missive_server::{Config, export, service::normalize_username};

/// The Missive relay: stores and forwards end-to-end encrypted envelopes it
/// cannot read, over gRPC with TLS always on.
#[derive(Debug, Parser)]
#[command(name = "missive-server", version, about, long_about = None)]
struct Cli {
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
    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "missive_server=debug");
    /// logs go to stderr. Falls back to RUST_LOG, then "info".
    #[arg(long, env = "MISSIVE_LOG", global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Serve,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("missive-server: error: {error:#}");
            ExitCode::FAILURE
        }
    }
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

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        None | Some(Command::Serve) => serve(&cli).await,
        Some(Command::ExportAccount { username }) => {
            let username = normalize_username(username).map_err(|e| anyhow!("{e}"))?;
            let store = open_existing(&cli).await?;
            let export = store
                .export_account(&username)
                .await?
                .ok_or_else(|| anyhow!("no account named {username:?}"))?;
            print(&serde_json::to_string_pretty(&export::document(export))?)
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
            let store = open_existing(&cli).await?;
            let report = store
                .report(*id)
                .await?
                .ok_or_else(|| anyhow!("no report with id {id}"))?;
            if *json {
                print(&serde_json::to_string_pretty(&report)?)
            } else {
                print(&export::report_text(&report))
            }
        }
    }
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let config = Config {
        listen: cli.listen,
        data_dir: cli.data_dir.clone(),
        database_url: cli.database.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        retention: cli.retention,
        mailbox_limit: cli.mailbox_limit,
        rate_limits: (!cli.disable_rate_limits).then(Default::default),
        request_timeout: missive_server::limits::REQUEST_TIMEOUT,
    };
    let server = missive_server::start(config).await?;
    print(&format!("missive-server listening on {}", server.url()))?;
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
