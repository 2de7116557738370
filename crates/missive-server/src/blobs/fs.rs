//! Blobs as files under `DATA_DIR/blobs/data/<hex id>`, with their rows and
//! the quota ledger in `DATA_DIR/blobs/blobs.db` (SQLite). The default with a
//! SQLite database: one node, one disk.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{BlobError, BlobId, BlobResult, BlobStatus, BlobStore, NewBlob};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS blobs (
        id BLOB PRIMARY KEY NOT NULL,
        size INTEGER NOT NULL,
        committed INTEGER NOT NULL DEFAULT 0,
        finalized INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_ms)",
    "CREATE TABLE IF NOT EXISTS blob_usage (
        account INTEGER NOT NULL,
        day INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (account, day)
    ) WITHOUT ROWID",
];

/// The filesystem backend.
#[derive(Debug)]
pub struct FsBlobStore {
    dir: PathBuf,
    pool: SqlitePool,
    /// Where the next write of each blob being uploaded must start.
    written: Mutex<HashMap<BlobId, u64>>,
}

pub(super) fn backend(error: impl std::fmt::Display) -> BlobError {
    BlobError::Backend(error.to_string())
}

pub(super) fn to_i64(value: u64) -> BlobResult<i64> {
    i64::try_from(value).map_err(|_| BlobError::Backend(format!("{value} exceeds i64")))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> BlobResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(backend)?
        .map_err(backend)
}

impl FsBlobStore {
    /// Opens (creating) the store in `dir`.
    pub async fn open(dir: &Path) -> BlobResult<Self> {
        std::fs::create_dir_all(dir.join("data")).map_err(backend)?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("blobs.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // One connection: the quota check and its charge are serialised.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(backend)?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(backend)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            pool,
            written: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join("data").join(hex::encode(id))
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, u64>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn create(&self, blob: &NewBlob) -> BlobResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let used: i64 = sqlx::query(
            "SELECT COALESCE(SUM(bytes), 0) FROM blob_usage WHERE account = ? AND day >= ?",
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
            "INSERT INTO blob_usage (account, day, bytes) VALUES (?, ?, ?)
             ON CONFLICT (account, day) DO UPDATE SET bytes = bytes + excluded.bytes",
        )
        .bind(blob.account)
        .bind(blob.day)
        .bind(to_i64(blob.size)?)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query("INSERT INTO blobs (id, size, created_ms) VALUES (?, ?, ?)")
            .bind(&blob.id[..])
            .bind(to_i64(blob.size)?)
            .bind(to_i64(blob.created_ms)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let path = self.path(&blob.id);
        blocking(move || std::fs::File::create(path).map(|_| ())).await
    }

    async fn status(&self, id: &BlobId) -> BlobResult<BlobStatus> {
        let row =
            sqlx::query("SELECT size, committed, finalized, created_ms FROM blobs WHERE id = ?")
                .bind(&id[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?
                .ok_or(BlobError::NotFound)?;
        Ok(BlobStatus {
            size: to_u64(row.get(0)),
            committed: to_u64(row.get(1)),
            finalized: row.get::<i64, _>(2) != 0,
            created_ms: to_u64(row.get(3)),
        })
    }

    async fn begin_append(&self, id: &BlobId) -> BlobResult<u64> {
        let status = self.status(id).await?;
        if status.finalized {
            return Err(BlobError::State("the upload is already finalised"));
        }
        let path = self.path(id);
        let committed = status.committed;
        blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(committed)
        })
        .await?;
        self.written().insert(*id, committed);
        Ok(committed)
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
        let path = self.path(id);
        let data = data.to_vec();
        let len = data.len() as u64;
        blocking(move || {
            let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&data)
        })
        .await?;
        self.written().insert(*id, offset + len);
        Ok(())
    }

    async fn commit(&self, id: &BlobId, committed: u64) -> BlobResult<()> {
        let path = self.path(id);
        blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .sync_data()
        })
        .await?;
        sqlx::query("UPDATE blobs SET committed = ? WHERE id = ? AND finalized = 0")
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
        sqlx::query("UPDATE blobs SET finalized = 1 WHERE id = ?")
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
        let len = (end - offset) as usize;
        let path = self.path(id);
        let read = blocking(move || {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut buffer = vec![0u8; len];
            file.read_exact(&mut buffer)?;
            Ok(buffer)
        })
        .await;
        // A purge between the row lookup and the read.
        read.map_err(|e| match self.path(id).exists() {
            true => e,
            false => BlobError::NotFound,
        })
    }

    async fn purge(
        &self,
        finalized_before_ms: u64,
        unfinalized_before_ms: u64,
        ledger_before_day: i64,
    ) -> BlobResult<u64> {
        let rows = sqlx::query(
            "DELETE FROM blobs WHERE (finalized = 1 AND created_ms < ?) OR (finalized = 0 AND created_ms < ?) RETURNING id",
        )
        .bind(to_i64(finalized_before_ms)?)
        .bind(to_i64(unfinalized_before_ms)?)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        sqlx::query("DELETE FROM blob_usage WHERE day < ?")
            .bind(ledger_before_day)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        let mut purged = 0;
        for row in rows {
            let id: Vec<u8> = row.get(0);
            let Ok(id) = BlobId::try_from(id.as_slice()) else {
                continue;
            };
            self.written().remove(&id);
            let path = self.path(&id);
            let _ = blocking(move || std::fs::remove_file(path)).await;
            purged += 1;
        }
        Ok(purged)
    }

    async fn ledger(&self, account: i64) -> BlobResult<Vec<(i64, u64)>> {
        let rows = sqlx::query("SELECT day, bytes FROM blob_usage WHERE account = ? ORDER BY day")
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
        let used: i64 = sqlx::query(
            "SELECT COALESCE(SUM(bytes), 0) FROM blob_usage WHERE account = ? AND day >= ?",
        )
        .bind(account)
        .bind(since_day)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?
        .get(0);
        Ok(to_u64(used))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
