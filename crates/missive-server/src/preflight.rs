//! `missive-server check`: validates a configuration without serving.
//!
//! Each check yields either a note (what was found) or a failure sentence an
//! operator can act on. Nothing is created or migrated: the data directory,
//! the database and the development certificate are only read.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::server::Config;
use crate::storage::{self, OpenMode, StorageError};

/// How long the NATS check waits.
const NATS_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the database check waits.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The outcome of `check`: notes on what is fine, and failure sentences.
#[derive(Debug, Default)]
pub struct Report {
    /// What was checked and found good.
    pub notes: Vec<String>,
    /// One sentence per problem.
    pub failures: Vec<String>,
}

impl Report {
    fn ok(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    fn fail(&mut self, failure: impl Into<String>) {
        self.failures.push(failure.into());
    }
}

/// Checks configuration values, the store, TLS material and NATS.
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    settings(config, &mut report);
    data_dir(config, &mut report);
    match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, database(config, &mut report)).await {
        Ok(()) => {}
        Err(_) => report.fail(format!(
            "the database {} did not answer within {} s",
            storage::redact_url(&config.database_url()),
            DATABASE_CHECK_TIMEOUT.as_secs()
        )),
    }
    tls(config, &mut report);
    nats(config, &mut report).await;
    report
}

fn settings(config: &Config, report: &mut Report) {
    let before = report.failures.len();
    if config.retention.is_zero() {
        report.fail("the retention must be longer than zero");
    }
    if config.mailbox_limit == 0 {
        report.fail("the mailbox limit must be at least 1");
    }
    if report.failures.len() == before {
        report.ok(format!(
            "settings: listen {}, retention {}, mailbox limit {}",
            config.listen,
            humantime::format_duration(config.retention),
            config.mailbox_limit
        ));
    }
}

fn data_dir(config: &Config, report: &mut Report) {
    let dir = &config.data_dir;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => report.ok(format!("data directory {}", dir.display())),
        Ok(_) => report.fail(format!(
            "the data directory {} is not a directory",
            dir.display()
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => report.ok(format!(
            "data directory {} does not exist yet; serve creates it",
            dir.display()
        )),
        Err(error) => report.fail(format!(
            "cannot read the data directory {}: {error}",
            dir.display()
        )),
    }
}

async fn database(config: &Config, report: &mut Report) {
    let url = config.database_url();
    let shown = storage::redact_url(&url);
    match storage::open(&url, OpenMode::Existing).await {
        Ok(store) => store.close().await,
        Err(StorageError::NoDatabase) => {
            report.ok(format!(
                "database {shown} has no Missive schema yet; serve creates it"
            ));
            return;
        }
        Err(error) => {
            report.fail(format!("cannot open the database {shown}: {error}"));
            return;
        }
    }
    match migrations(&url).await {
        Ok(status) if status.is_current() => report.ok(format!(
            "database {shown} opens and its {} migrations are current",
            status.applied
        )),
        Ok(status) => {
            if !status.pending.is_empty() {
                report.fail(format!(
                    "the database {shown} lacks migrations {:?}; serve applies them when it starts",
                    status.pending
                ));
            }
            if !status.unknown.is_empty() {
                report.fail(format!(
                    "the database {shown} has migrations {:?} this binary does not know: it was used by a newer version",
                    status.unknown
                ));
            }
            if !status.changed.is_empty() {
                report.fail(format!(
                    "the database {shown} applied migrations {:?} with other contents than this binary's",
                    status.changed
                ));
            }
        }
        Err(error) => report.fail(format!(
            "cannot read the migrations of the database {shown}: {error}"
        )),
    }
}

/// Applied migrations compared with the binary's.
#[derive(Debug, Default)]
struct MigrationStatus {
    applied: usize,
    pending: Vec<i64>,
    unknown: Vec<i64>,
    changed: Vec<i64>,
}

impl MigrationStatus {
    fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.changed.is_empty()
    }

    fn compare(migrator: &sqlx::migrate::Migrator, applied: Vec<(i64, Vec<u8>)>) -> Self {
        let known: Vec<_> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .collect();
        let mut status = Self {
            applied: applied.len(),
            ..Self::default()
        };
        for migration in &known {
            match applied.iter().find(|(v, _)| *v == migration.version) {
                None => status.pending.push(migration.version),
                Some((_, checksum)) if checksum[..] != migration.checksum[..] => {
                    status.changed.push(migration.version);
                }
                Some(_) => {}
            }
        }
        status.unknown = applied
            .iter()
            .map(|(v, _)| *v)
            .filter(|v| !known.iter().any(|m| m.version == *v))
            .collect();
        status
    }
}

const APPLIED: &str =
    "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version";

async fn migrations(url: &str) -> Result<MigrationStatus, sqlx::Error> {
    if url.starts_with("sqlite:") {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
        let mut connection = sqlx::SqliteConnection::connect_with(&options).await?;
        let applied = sqlx::query_as(APPLIED).fetch_all(&mut connection).await?;
        let _ = connection.close().await;
        Ok(MigrationStatus::compare(
            &crate::storage::sqlite::MIGRATOR,
            applied,
        ))
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await?;
        let applied = sqlx::query_as(APPLIED).fetch_all(&mut connection).await?;
        let _ = connection.close().await;
        Ok(MigrationStatus::compare(
            &crate::storage::postgres::MIGRATOR,
            applied,
        ))
    }
}

fn tls(config: &Config, report: &mut Report) {
    let (cert, key, what) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), "TLS certificate"),
        (None, None) => {
            let cert = config.data_dir.join("server.pem");
            let key = config.data_dir.join("server.key");
            if !cert.exists() && !key.exists() {
                report.ok("no TLS certificate given; serve generates a development CA in the data directory");
                return;
            }
            (cert, key, "development TLS certificate")
        }
        _ => {
            report.fail("--tls-cert and --tls-key must be given together");
            return;
        }
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let material = read(&cert).and_then(|c| read(&key).map(|k| (c, zeroize::Zeroizing::new(k))));
    let (cert_pem, key_pem) = match material {
        Ok(material) => material,
        Err(sentence) => {
            report.fail(sentence);
            return;
        }
    };
    match Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &*key_pem)))
    {
        Ok(_) => report.ok(format!("{what} {} and its key load", cert.display())),
        Err(error) => report.fail(format!(
            "the {what} {} and key {} do not load: {}",
            cert.display(),
            key.display(),
            source_chain(&error)
        )),
    }
}

async fn nats(config: &Config, report: &mut Report) {
    let Some(url) = &config.nats_url else {
        report.ok("no NATS configured: streams are woken in-process (one node)");
        return;
    };
    let connected = tokio::time::timeout(
        NATS_CHECK_TIMEOUT,
        crate::fanout::nats::NatsFanOut::connect(url, &config.nats_subject_prefix),
    )
    .await;
    match connected {
        Ok(Ok(_fanout)) => report.ok(format!("NATS {url} is reachable")),
        Ok(Err(error)) => report.fail(format!("NATS {url}: {error}")),
        Err(_) => report.fail(format!(
            "NATS {url} did not answer within {} s",
            NATS_CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// An error and its causes in one line.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let sentence = cause.to_string();
        if !text.contains(&sentence) {
            text.push_str(": ");
            text.push_str(&sentence);
        }
        source = cause.source();
    }
    text
}
