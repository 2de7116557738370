//! Blobs as chunk rows in PostgreSQL, so every node of a cluster serves every
//! blob. Tables are created on open (`CREATE TABLE IF NOT EXISTS`), apart
//! from the message store's migrations.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::fs::{backend, to_i64};
use super::{BlobError, BlobId, BlobResult, BlobStatus, BlobStore, NewBlob};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS attachment_blobs (
        id BYTEA PRIMARY KEY,
        size BIGINT NOT NULL,
        committed BIGINT NOT NULL DEFAULT 0,
        finalized BOOLEAN NOT NULL DEFAULT FALSE,
        created_ms BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS attachment_blobs_created ON attachment_blobs (created_ms)",
    "CREATE TABLE IF NOT EXISTS attachment_chunks (
        blob_id BYTEA NOT NULL REFERENCES attachment_blobs (id) ON DELETE CASCADE,
        start_offset BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (blob_id, start_offset)
    )",
    "CREATE TABLE IF NOT EXISTS attachment_usage (
        account BIGINT NOT NULL,
        day BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY (account, day)
    )",
];

/// The PostgreSQL backend.
#[derive(Debug)]
pub struct PgBlobStore {
    pool: PgPool,
    written: Mutex<HashMap<BlobId, u64>>,
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl PgBlobStore {
    /// Connects and creates the tables if needed.
    pub async fn open(url: &str) -> BlobResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .map_err(backend)?;
        // Nodes starting together race on CREATE ... IF NOT EXISTS; serialise.
        let mut tx = pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7715001)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(Self {
            pool,
            written: Mutex::new(HashMap::new()),
        })
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, u64>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn used(&self, account: i64, since_day: i64) -> BlobResult<u64> {
        let used: i64 = sqlx::query(
            "SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM attachment_usage WHERE account = $1 AND day >= $2",
        )
        .bind(account)
        .bind(since_day)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?
        .get(0);
        Ok(to_u64(used))
    }
}

#[async_trait]
impl BlobStore for PgBlobStore {
    async fn create(&self, blob: &NewBlob) -> BlobResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Serialise quota checks of one account across nodes.
        sqlx::query("SELECT pg_advisory_xact_lock(7715002, $1::INT)")
            .bind((blob.account & 0x7fff_ffff) as i32)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let used: i64 = sqlx::query(
            "SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM attachment_usage WHERE account = $1 AND day >= $2",
        )
        .bind(blob.account)
        .bind(blob.since_day)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?
        .get(0);
        let used = to_u64(used);
        if used.saturating_add(blob.size) > blob.quota {
            return Err(BlobError::QuotaExceeded {
                used,
                quota: blob.quota,
                size: blob.size,
            });
        }
        sqlx::query(
            "INSERT INTO attachment_usage (account, day, bytes) VALUES ($1, $2, $3)
             ON CONFLICT (account, day) DO UPDATE SET bytes = attachment_usage.bytes + EXCLUDED.bytes",
        )
        .bind(blob.account)
        .bind(blob.day)
        .bind(to_i64(blob.size)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query("INSERT INTO attachment_blobs (id, size, created_ms) VALUES ($1, $2, $3)")
            .bind(&blob.id[..])
            .bind(to_i64(blob.size)?)
            .bind(to_i64(blob.created_ms)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn status(&self, id: &BlobId) -> BlobResult<BlobStatus> {
        let row = sqlx::query(
            "SELECT size, committed, finalized, created_ms FROM attachment_blobs WHERE id = $1",
        )
        .bind(&id[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .ok_or(BlobError::NotFound)?;
        Ok(BlobStatus {
            size: to_u64(row.get(0)),
            committed: to_u64(row.get(1)),
            finalized: row.get(2),
            created_ms: to_u64(row.get(3)),
        })
    }

    async fn begin_append(&self, id: &BlobId) -> BlobResult<u64> {
        let status = self.status(id).await?;
        if status.finalized {
            return Err(BlobError::State("the upload is already finalised"));
        }
        sqlx::query("DELETE FROM attachment_chunks WHERE blob_id = $1 AND start_offset >= $2")
            .bind(&id[..])
            .bind(to_i64(status.committed)?)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        self.written().insert(*id, status.committed);
        Ok(status.committed)
    }

    async fn write(&self, id: &BlobId, offset: u64, data: &[u8]) -> BlobResult<()> {
        {
            let written = self.written();
            let end = written.get(id).copied().ok_or(BlobError::State(
                "the upload was not resumed; query it and start at its committed offset",
            ))?;
            if end != offset {
                return Err(BlobError::WrongOffset {
                    committed: end,
                    offset,
                });
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO attachment_chunks (blob_id, start_offset, data) VALUES ($1, $2, $3)
             ON CONFLICT (blob_id, start_offset) DO UPDATE SET data = EXCLUDED.data",
        )
        .bind(&id[..])
        .bind(to_i64(offset)?)
        .bind(data)
        .execute(&self.pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(ref d) if d.is_foreign_key_violation() => BlobError::NotFound,
            other => backend(other),
        })?;
        self.written().insert(*id, offset + data.len() as u64);
        Ok(())
    }

    async fn commit(&self, id: &BlobId, committed: u64) -> BlobResult<()> {
        // Each chunk row was committed by its own statement; record the length.
        sqlx::query("UPDATE attachment_blobs SET committed = $1 WHERE id = $2 AND NOT finalized")
            .bind(to_i64(committed)?)
            .bind(&id[..])
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn finalize(&self, id: &BlobId) -> BlobResult<()> {
        let status = self.status(id).await?;
        if status.committed != status.size {
            return Err(BlobError::State(
                "the upload is not complete: query its committed offset and send the rest",
            ));
        }
        sqlx::query("UPDATE attachment_blobs SET finalized = TRUE WHERE id = $1")
            .bind(&id[..])
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        self.written().remove(id);
        Ok(())
    }

    async fn read(&self, id: &BlobId, offset: u64, max: usize) -> BlobResult<Vec<u8>> {
        let status = self.status(id).await?;
        let end = status.committed.min(offset.saturating_add(max as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT start_offset, data FROM attachment_chunks
             WHERE blob_id = $1 AND start_offset < $3 AND start_offset + length(data) > $2
             ORDER BY start_offset",
        )
        .bind(&id[..])
        .bind(to_i64(offset)?)
        .bind(to_i64(end)?)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for row in rows {
            let start = to_u64(row.get(0));
            let data: Vec<u8> = row.get(1);
            if start > offset + out.len() as u64 {
                return Err(BlobError::Backend(format!("blob has a gap at {start}")));
            }
            let from = (offset + out.len() as u64 - start) as usize;
            let to = ((end - start) as usize).min(data.len());
            if from < to {
                out.extend_from_slice(&data[from..to]);
            }
        }
        if out.len() as u64 != end - offset {
            return Err(BlobError::NotFound);
        }
        Ok(out)
    }

    async fn purge(
        &self,
        finalized_before_ms: u64,
        unfinalized_before_ms: u64,
        ledger_before_day: i64,
    ) -> BlobResult<u64> {
        let rows = sqlx::query(
            "DELETE FROM attachment_blobs WHERE (finalized AND created_ms < $1) OR (NOT finalized AND created_ms < $2) RETURNING id",
        )
        .bind(to_i64(finalized_before_ms)?)
        .bind(to_i64(unfinalized_before_ms)?)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        sqlx::query("DELETE FROM attachment_usage WHERE day < $1")
            .bind(ledger_before_day)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        for row in &rows {
            let id: Vec<u8> = row.get(0);
            if let Ok(id) = BlobId::try_from(id.as_slice()) {
                self.written().remove(&id);
            }
        }
        Ok(rows.len() as u64)
    }

    async fn ledger(&self, account: i64) -> BlobResult<Vec<(i64, u64)>> {
        let rows =
            sqlx::query("SELECT day, bytes FROM attachment_usage WHERE account = $1 ORDER BY day")
                .bind(account)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<i64, _>(0), to_u64(r.get::<i64, _>(1))))
            .collect())
    }

    async fn usage(&self, account: i64, since_day: i64) -> BlobResult<u64> {
        self.used(account, since_day).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
