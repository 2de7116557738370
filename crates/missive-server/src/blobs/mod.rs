//! Attachment blob storage behind one small trait, one module per backend
//! (docs/PROTOCOL.md, "Attachments"; docs/DEPLOYMENT.md, "Blob storage").
//!
//! A blob is opaque sealed bytes under a random 16-byte id. Its row holds the
//! id, the announced size, the committed length, whether it is finalised and
//! when it was created: **no sender and no recipient**. Quotas are kept apart,
//! as bytes reserved per account per day ([`NewBlob::account`]), so the server
//! can bound what an account stores without recording which blob is whose.
//!
//! Writes are split in two so a backend can batch durability: [`BlobStore::write`]
//! stores bytes at the committed end, [`BlobStore::commit`] makes everything
//! written so far durable and records the new committed length. A crash
//! loses only uncommitted bytes, which [`BlobStore::begin_append`] discards
//! before an upload resumes. An S3-compatible backend maps `write` to a
//! multipart part and `commit` to recording the part list.
//!
//! Backends: [`fs`] (files under the data directory, metadata in a SQLite
//! file beside them; the default with a SQLite database) and [`postgres`]
//! (chunk rows; used with `--database postgres://` so stateless nodes share
//! blobs). Both run [`suite`].

pub mod fs;
pub mod postgres;
#[doc(hidden)]
pub mod suite;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

/// Length of a blob id.
pub const BLOB_ID_LEN: usize = 16;

/// A blob id (random, 16 bytes).
pub type BlobId = [u8; BLOB_ID_LEN];

/// A new upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBlob {
    /// The random id.
    pub id: BlobId,
    /// Announced sealed size in bytes.
    pub size: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// The uploading account: charged in the quota ledger only, never stored
    /// with the blob.
    pub account: i64,
    /// Today (days since the epoch), the ledger row charged.
    pub day: i64,
    /// Oldest ledger day that still counts (today minus the retention).
    pub since_day: i64,
    /// Most bytes the account may have reserved since `since_day`, this blob included.
    pub quota: u64,
}

/// The state of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobStatus {
    /// Announced size.
    pub size: u64,
    /// Bytes durably committed.
    pub committed: u64,
    /// Whether the upload was finalised (only then can it be downloaded).
    pub finalized: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// Failures of a blob store, each with the sentence a client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// No such blob: never created, expired or purged.
    #[error("no such attachment: it never existed or has expired")]
    NotFound,
    /// The account's quota would be exceeded.
    #[error(
        "the attachment quota is exceeded: {used} of {quota} bytes are in use within the retention period, and this file needs {size}"
    )]
    QuotaExceeded {
        /// Bytes already reserved in the window.
        used: u64,
        /// The quota.
        quota: u64,
        /// What the new blob asked for.
        size: u64,
    },
    /// A write that does not start at the committed end.
    #[error(
        "the upload continues at byte {committed}, not {offset}; query the upload and resume there"
    )]
    WrongOffset {
        /// The committed length.
        committed: u64,
        /// The offset sent.
        offset: u64,
    },
    /// A write past the announced size.
    #[error("the upload would exceed its announced size of {size} bytes")]
    TooLong {
        /// Announced size.
        size: u64,
    },
    /// Finalising before every byte is committed, or writing after.
    #[error("{0}")]
    State(&'static str),
    /// The backend failed (details logged, not sent).
    #[error("blob storage failure: {0}")]
    Backend(String),
}

impl From<BlobError> for tonic::Status {
    fn from(error: BlobError) -> Self {
        let message = error.to_string();
        match error {
            BlobError::NotFound => Self::not_found(message),
            BlobError::QuotaExceeded { .. } => Self::resource_exhausted(message),
            BlobError::WrongOffset { .. } | BlobError::State(_) => {
                Self::failed_precondition(message)
            }
            BlobError::TooLong { .. } => Self::out_of_range(message),
            BlobError::Backend(detail) => {
                tracing::error!(%detail, "blob storage failure");
                Self::internal(
                    "the server could not complete the request because of a blob storage failure",
                )
            }
        }
    }
}

/// Shorthand.
pub type BlobResult<T> = Result<T, BlobError>;

/// Where attachment blobs live.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Reserves a blob, charging `size` to the account's ledger in the same
    /// transaction as the quota check.
    async fn create(&self, blob: &NewBlob) -> BlobResult<()>;
    /// The blob's state.
    async fn status(&self, id: &BlobId) -> BlobResult<BlobStatus>;
    /// Discards bytes written but never committed (after a crash or a broken
    /// stream) and returns the committed length, where the next write starts.
    async fn begin_append(&self, id: &BlobId) -> BlobResult<u64>;
    /// Stores `data` at `offset`, which must be where the previous write
    /// ended (the committed length for the first write after
    /// [`Self::begin_append`]). Not durable until [`Self::commit`].
    async fn write(&self, id: &BlobId, offset: u64, data: &[u8]) -> BlobResult<()>;
    /// Makes every write that ended at or before `committed` durable and
    /// records `committed` as the committed length. Later writes of the same
    /// upload may run meanwhile.
    async fn commit(&self, id: &BlobId, committed: u64) -> BlobResult<()>;
    /// Marks a fully committed upload finalised.
    async fn finalize(&self, id: &BlobId) -> BlobResult<()>;
    /// Up to `max` committed bytes from `offset`.
    async fn read(&self, id: &BlobId, offset: u64, max: usize) -> BlobResult<Vec<u8>>;
    /// Deletes finalised blobs created before `finalized_before_ms`,
    /// unfinalised ones created before `unfinalized_before_ms`, and ledger rows
    /// older than `ledger_before_day`. Returns how many blobs went.
    async fn purge(
        &self,
        finalized_before_ms: u64,
        unfinalized_before_ms: u64,
        ledger_before_day: i64,
    ) -> BlobResult<u64>;
    /// Bytes the account reserved since `since_day` (for `export-account`).
    async fn usage(&self, account: i64, since_day: i64) -> BlobResult<u64>;
    /// The account's quota ledger: bytes reserved per day (days since the
    /// epoch), oldest first; what `export-account` shows. It names no blob.
    async fn ledger(&self, account: i64) -> BlobResult<Vec<(i64, u64)>>;
    /// Closes connections.
    async fn close(&self);
}

/// The blob store for a node: PostgreSQL when the database is, else files
/// under `DATA_DIR/blobs`.
pub async fn open(database_url: &str, data_dir: &Path) -> BlobResult<Arc<dyn BlobStore>> {
    if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PgBlobStore::open(database_url).await?))
    } else {
        Ok(Arc::new(
            fs::FsBlobStore::open(&data_dir.join("blobs")).await?,
        ))
    }
}
