//! External services for tests: PostgreSQL (`MISSIVE_TEST_DATABASE_URL`)
//! and NATS (`MISSIVE_TEST_NATS_URL`). Without the variable a test prints
//! "skipped: …" and returns, unless `MISSIVE_REQUIRE_SERVICES=1`, when it fails.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// The URL in `variable`, or `None` after printing why the test is skipped.
pub fn service_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("MISSIVE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{variable} is not set but MISSIVE_REQUIRE_SERVICES=1")
        }
        _ => {
            println!("skipped: {variable} not set");
            None
        }
    }
}

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh PostgreSQL schema, dropped by [`PgSchema::drop`].
pub struct PgSchema {
    base: String,
    name: String,
}

impl PgSchema {
    /// Creates `missive_test_<prefix>_…` on `MISSIVE_TEST_DATABASE_URL`.
    pub async fn create(prefix: &str) -> Option<Self> {
        let base = service_url("MISSIVE_TEST_DATABASE_URL")?;
        let name = unique(&format!("missive_test_{prefix}"));
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .expect("cannot connect to MISSIVE_TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Some(Self { base, name })
    }

    /// The database URL with this schema as the search path.
    pub fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{separator}options[search_path]={}", self.base, self.name)
    }
}

impl Drop for PgSchema {
    /// Drops the schema and everything in it, also when the test panicked
    /// (on a thread of its own: `Drop` cannot await).
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
                sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            });
        });
        if cleanup.join().is_err() {
            eprintln!("could not drop test schema {}", self.name);
        }
    }
}
