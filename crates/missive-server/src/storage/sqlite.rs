//! The embedded default backend: SQLite through sqlx, WAL journal,
//! `synchronous=FULL` (power-loss durable), migrations embedded in the binary.
//! Sends and acknowledgements bypass sqlx: they run on one dedicated thread
//! with its own connection (`storage/sqlite_hot.rs`), which is therefore the
//! only writer of envelopes (so `AUTOINCREMENT` ids follow commit order).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::reserve::Reserve;
use super::sqlite_hot;
use super::{
    AccountExport, AccountId, AccountRecord, BundleRecord, Bundles, DAY_MS, DeviceAddress,
    DeviceExport, DeviceRecord, KemPrekeyRecord, LinkExport, LinkMailbox, LinkMessage, LinkPost,
    LinkSlot, LinkSlots, NewAccount, NewDevice, NewReport, OneTimePrekeyRecord, OpenMode,
    PrekeyCounts, Principal, PurgeCounts, PutOutcome, ReportRecord, Result, SendItem, SendOutcome,
    SignedPrekeyRecord, Storage, StorageError, StoredEnvelope, link_post_failure,
};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

type Db = Sqlite;
type DbRow = SqliteRow;
/// Write transactions are `BEGIN IMMEDIATE`: no row locks to take.
const FOR_UPDATE: &str = "";
const SKIP_LOCKED: &str = "";
/// A new group's number (writes are exclusive: `BEGIN IMMEDIATE`). A
/// number is reused only after its group and, by cascade, its rows are gone.
const NEW_GROUP_NUMBER: &str = "(SELECT COALESCE(MAX(number), 0) + 1 FROM mls_groups)";
/// The largest of its arguments (SQLite's scalar `max`).
const GREATEST: &str = "max";
super::groups::group_helpers!();
super::groups::group_methods!(SqliteStorage);

/// SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStorage {
    pool: SqlitePool,
    /// The message hot path (sends and acknowledgements), see [`sqlite_hot`].
    hot: mpsc::Sender<sqlite_hot::Message>,
    /// Disk space kept for acknowledgements on a full disk.
    reserve: Arc<Reserve>,
}

fn closing() -> StorageError {
    StorageError::Unavailable("the store is closing".into())
}

/// The one place sqlx errors become [`StorageError`]s.
fn map_err(error: sqlx::Error) -> StorageError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::Conflict,
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StorageError::NotFound,
        // SQLITE_FULL: the disk (or max_page_count) is full.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("13") => StorageError::Full,
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517")) =>
        {
            StorageError::Unavailable(db.message().to_owned())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StorageError::Unavailable(error.to_string())
        }
        _ => StorageError::Backend(error.to_string()),
    }
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn u32_of(value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| StorageError::Backend(format!("out-of-range value {value}")))
}

fn u64_of(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| StorageError::Backend(format!("out-of-range value {value}")))
}

fn get<'r, T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(
    row: &'r SqliteRow,
    column: &str,
) -> Result<T> {
    row.try_get(column).map_err(map_err)
}

impl SqliteStorage {
    /// Opens (and in [`OpenMode::Serve`] creates and migrates) the database at `url`.
    pub async fn open(url: &str, mode: OpenMode) -> Result<Self> {
        Self::open_with_reserve(url, mode, 0).await
    }

    /// [`Self::open`] keeping `reserve` bytes of disk free next to the
    /// database for acknowledgements on a full disk ([`Reserve`]).
    pub async fn open_with_reserve(url: &str, mode: OpenMode, reserve: u64) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StorageError::Backend(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(mode == OpenMode::Serve)
            // Before the first table exists, so new databases can shrink
            // (older ones are converted once below).
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Acknowledged envelopes are overwritten, not just unlinked: no
            // forensic trace of who wrote to whom in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(10));
        if mode == OpenMode::Serve {
            private_files(options.get_filename())?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(_) if mode == OpenMode::Existing => StorageError::NoDatabase,
                other => map_err(other),
            })?;
        match mode {
            OpenMode::Serve => MIGRATOR.run(&pool).await.map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(inner) => map_err(inner),
                other => StorageError::Backend(other.to_string()),
            })?,
            OpenMode::Existing => {
                let present: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'accounts'",
                )
                .fetch_optional(&pool)
                .await
                .map_err(map_err)?;
                if present.is_none() {
                    return Err(StorageError::NoDatabase);
                }
            }
        }
        if mode == OpenMode::Serve {
            incremental_vacuum_on(&pool).await?;
        }
        // The hot path opens the file a second time, which an in-memory
        // database cannot be.
        let file = options.get_filename();
        if file.to_string_lossy().starts_with("file:sqlx-in-memory") {
            return Err(StorageError::Backend(
                "in-memory SQLite databases are not supported; give a file".into(),
            ));
        }
        let reserve = Arc::new(match mode {
            OpenMode::Serve => Reserve::create(file, reserve),
            OpenMode::Existing => Reserve::none(),
        });
        let hot = sqlite_hot::start(file, Arc::clone(&reserve))?;
        Ok(Self { pool, hot, reserve })
    }

    /// Refuses a write that makes the database grow while the reserve is
    /// spent.
    fn growth(&self) -> Result<()> {
        if self.reserve.low() {
            Err(StorageError::Full)
        } else {
            Ok(())
        }
    }

    /// A full disk seen by a write spends the reserve.
    fn spent<T>(&self, result: Result<T>) -> Result<T> {
        if matches!(result, Err(StorageError::Full)) {
            self.reserve.release();
        }
        result
    }

    /// Runs a write that must work on a full disk (it frees space or lets a
    /// device log in to acknowledge): once more after releasing the reserve.
    async fn essential<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match op().await {
            Err(StorageError::Full) if self.reserve.release() => op().await,
            other => other,
        }
    }

    /// A write transaction for the group methods.
    async fn group_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.growth()?;
        self.write().await
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }
}

/// Creates the database file with mode 0600 (SQLite then gives its `-wal`
/// and `-shm` files the same mode) and tightens existing files to 0600.
fn private_files(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| {
            StorageError::Backend(format!("cannot secure {}: {e}", path.display()))
        };
        if path.as_os_str().is_empty() || path.to_string_lossy().starts_with("file:") {
            return Ok(());
        }
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::PathBuf::from(file);
            match std::fs::metadata(&file) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Converts a database created before `auto_vacuum = INCREMENTAL` (a
/// one-time `VACUUM`, which needs free space about the size of the file).
async fn incremental_vacuum_on(pool: &SqlitePool) -> Result<()> {
    let (mode,): (i64,) = sqlx::query_as("PRAGMA auto_vacuum")
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
    if mode == 2 {
        return Ok(());
    }
    tracing::info!("converting the database to incremental vacuum (once)");
    let mut connection = pool.acquire().await.map_err(map_err)?;
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(&mut *connection)
        .await
        .map_err(map_err)?;
    sqlx::query("VACUUM")
        .execute(&mut *connection)
        .await
        .map_err(map_err)?;
    Ok(())
}

async fn counts(
    tx: &mut Transaction<'static, Sqlite>,
    device: DeviceAddress,
) -> Result<PrekeyCounts> {
    let one_time: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM one_time_prekeys WHERE account_id = ? AND device_id = ?",
    )
    .bind(device.account)
    .bind(i64::from(device.device))
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    let one_time_kem: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM one_time_kem_prekeys WHERE account_id = ? AND device_id = ?",
    )
    .bind(device.account)
    .bind(i64::from(device.device))
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(PrekeyCounts {
        one_time: u32_of(one_time)?,
        one_time_kem: u32_of(one_time_kem)?,
    })
}

fn report_of(row: &SqliteRow) -> Result<ReportRecord> {
    Ok(ReportRecord {
        id: u64_of(get(row, "id")?)?,
        reporter_account: get(row, "reporter_account")?,
        reporter: get(row, "reporter_username")?,
        sender_account: get(row, "sender_account")?,
        sender: get(row, "sender_username")?,
        sender_identity_fingerprint: get::<Option<Vec<u8>>>(row, "sender_identity")?
            .map(|identity| crate::checks::fingerprint(&identity)),
        franking_key_id: get::<Option<i64>>(row, "franking_key_id")?
            .map(u32_of)
            .transpose()?,
        message_id: hex::encode(get::<Vec<u8>>(row, "message_id")?),
        message_server_timestamp_ms: u64_of(get(row, "message_server_timestamp_ms")?)?,
        text: get(row, "plaintext")?,
        reason: get(row, "reason")?,
        created_at_ms: u64_of(get(row, "created_at_ms")?)?,
        verified: get::<i64>(row, "verified")? != 0,
        file: super::reported_file(get(row, "attachment")?),
    })
}

const REPORT_COLUMNS: &str = "id, reporter_account, reporter_username, sender_account, \
                              sender_username, sender_identity, franking_key_id, message_id, \
                              message_server_timestamp_ms, plaintext, reason, created_at_ms, verified, \
                              attachment";

#[async_trait]
impl Storage for SqliteStorage {
    #[tracing::instrument(skip_all)]
    async fn put_challenge(&self, challenge_hash: &[u8; 32], expires_at_ms: u64) -> Result<()> {
        self.essential(move || async move {
            sqlx::query("INSERT INTO challenges (challenge_hash, expires_at_ms) VALUES (?, ?)")
                .bind(&challenge_hash[..])
                .bind(int(expires_at_ms))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn take_challenge(&self, challenge_hash: &[u8; 32], now_ms: u64) -> Result<bool> {
        self.essential(move || async move {
            // Deleted by its first use, right or wrong, and by exactly one of two
            // concurrent uses.
            let expires: Option<i64> = sqlx::query_scalar(
                "DELETE FROM challenges WHERE challenge_hash = ? RETURNING expires_at_ms",
            )
            .bind(&challenge_hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
            Ok(expires.is_some_and(|at| at > int(now_ms)))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn create_account(&self, account: &NewAccount) -> Result<AccountId> {
        self.growth()?;
        self.spent(
            async move {
                let mut tx = self.write().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO accounts (username, identity, created_day, last_seen_day) \
                     VALUES (?, ?, ?, ?) RETURNING id",
                )
                .bind(&account.username)
                .bind(&account.identity)
                .bind(account.today)
                .bind(account.today)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                let device = NewDevice {
                    address: DeviceAddress {
                        account: id,
                        device: 1,
                    },
                    identity: account.device_identity.clone(),
                    registration_id: account.registration_id,
                    signed_prekey: account.signed_prekey.clone(),
                    last_resort_kem_prekey: account.last_resort_kem_prekey.clone(),
                    one_time_prekeys: account.one_time_prekeys.clone(),
                    one_time_kem_prekeys: account.one_time_kem_prekeys.clone(),
                    today: account.today,
                };
                insert_device(&mut tx, &device).await?;
                sqlx::query(
                    "INSERT INTO device_lists (account, version, signed_list) VALUES (?, 1, ?)",
                )
                .bind(id)
                .bind(&account.signed_device_list)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tx.commit().await.map_err(map_err)?;
                Ok(id)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn add_device(&self, device: &NewDevice) -> Result<()> {
        self.growth()?;
        self.spent(
            async move {
                let mut tx = self.write().await?;
                insert_device(&mut tx, device).await?;
                tx.commit().await.map_err(map_err)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn device_identity(
        &self,
        username: &str,
        device_id: u32,
    ) -> Result<Option<(AccountId, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT a.id AS id, d.identity AS identity FROM accounts a \
             JOIN devices d ON d.account_id = a.id WHERE a.username = ? AND d.device_id = ?",
        )
        .bind(username)
        .bind(i64::from(device_id))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| Ok((get(&r, "id")?, get(&r, "identity")?)))
            .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn device_key(&self, device: DeviceAddress) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT identity FROM devices WHERE account_id = ? AND device_id = ?")
            .bind(device.account)
            .bind(i64::from(device.device))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn account_identity(&self, account: AccountId) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT identity FROM accounts WHERE id = ?")
            .bind(account)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn account_named(&self, username: &str) -> Result<Option<AccountRecord>> {
        let row = sqlx::query("SELECT id, identity, created_day FROM accounts WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| {
            Ok(AccountRecord {
                id: get(&r, "id")?,
                identity: get(&r, "identity")?,
                created_day: get(&r, "created_day")?,
            })
        })
        .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn insert_token(
        &self,
        token_hash: &[u8; 32],
        device: DeviceAddress,
        expires_day: i64,
        today: i64,
    ) -> Result<()> {
        self.essential(move || async move {
            let mut tx = self.write().await?;
            sqlx::query(
                "INSERT INTO tokens (token_hash, account_id, device_id, expires_day) VALUES (?, ?, ?, ?)",
            )
            .bind(&token_hash[..])
            .bind(device.account)
            .bind(i64::from(device.device))
            .bind(expires_day)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            sqlx::query("UPDATE accounts SET last_seen_day = ? WHERE id = ?")
                .bind(today)
                .bind(device.account)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            sqlx::query("UPDATE devices SET last_seen_day = ? WHERE account_id = ? AND device_id = ?")
                .bind(today)
                .bind(device.account)
                .bind(i64::from(device.device))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn authenticate(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT t.account_id AS account_id, t.device_id AS device_id, a.username AS username, \
             t.expires_day AS expires_day \
             FROM tokens t JOIN accounts a ON a.id = t.account_id \
             WHERE t.token_hash = ? AND t.expires_day > ?",
        )
        .bind(&token_hash[..])
        .bind(crate::time::day_of(now_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            Ok(Principal {
                address: DeviceAddress {
                    account: get(&r, "account_id")?,
                    device: u32_of(get(&r, "device_id")?)?,
                },
                username: get(&r, "username")?,
                expires_at_ms: u64_of(get(&r, "expires_day")?)?.saturating_mul(DAY_MS),
            })
        })
        .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn touch_last_seen(&self, device: DeviceAddress, today: i64) -> Result<()> {
        self.essential(move || async move {
            let mut tx = self.write().await?;
            sqlx::query(
                "UPDATE accounts SET last_seen_day = ? WHERE id = ? AND last_seen_day <> ?",
            )
            .bind(today)
            .bind(device.account)
            .bind(today)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            sqlx::query(
                "UPDATE devices SET last_seen_day = ? \
                 WHERE account_id = ? AND device_id = ? AND last_seen_day <> ?",
            )
            .bind(today)
            .bind(device.account)
            .bind(i64::from(device.device))
            .bind(today)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            tx.commit().await.map_err(map_err)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn delete_account(&self, account: AccountId) -> Result<()> {
        self.essential(move || async move {
            let mut tx = self.write().await?;
            sqlx::query(KEEP_SENDER_NAMES)
                .bind(account)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            // Foreign keys cascade to devices, prekeys, tokens and envelopes.
            let done = sqlx::query("DELETE FROM accounts WHERE id = ?")
                .bind(account)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            if done.rows_affected() == 0 {
                return Err(StorageError::NotFound);
            }
            tx.commit().await.map_err(map_err)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn put_device_list(
        &self,
        account: AccountId,
        version: u64,
        signed_list: &[u8],
    ) -> Result<PutOutcome> {
        let version = i64::try_from(version).map_err(|_| {
            StorageError::Backend(format!("device list version {version} is out of range"))
        })?;
        let listed = super::listed_device_ids(signed_list)?;
        self.growth()?;
        self.spent(
            async move {
                let mut tx = self.write().await?;
                // One statement decides: insert, or replace a lower version.
                let stored: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO device_lists (account, version, signed_list) VALUES (?, ?, ?) \
                     ON CONFLICT (account) DO UPDATE SET version = excluded.version, \
                     signed_list = excluded.signed_list WHERE excluded.version > device_lists.version \
                     RETURNING version",
                )
                .bind(account)
                .bind(version)
                .bind(signed_list)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                let outcome = if stored.is_some() {
                    // Devices the new list no longer names go with it; their
                    // prekeys, tokens and envelopes cascade.
                    let registered: Vec<i64> =
                        sqlx::query_scalar("SELECT device_id FROM devices WHERE account_id = ?")
                            .bind(account)
                            .fetch_all(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    for device in registered {
                        if !listed.contains(&u32_of(device)?) {
                            sqlx::query("DELETE FROM devices WHERE account_id = ? AND device_id = ?")
                                .bind(account)
                                .bind(device)
                                .execute(&mut *tx)
                                .await
                                .map_err(map_err)?;
                        }
                    }
                    PutOutcome::Stored
                } else {
                    let row = sqlx::query(
                        "SELECT version, signed_list FROM device_lists WHERE account = ?",
                    )
                    .bind(account)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    let held: Vec<u8> = get(&row, "signed_list")?;
                    // The version is inside the bytes: equal bytes, equal version.
                    if held == signed_list {
                        PutOutcome::Unchanged
                    } else {
                        PutOutcome::Stale {
                            stored_version: u64_of(get(&row, "version")?)?,
                        }
                    }
                };
                tx.commit().await.map_err(map_err)?;
                Ok(outcome)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn device_list(&self, account: AccountId) -> Result<Option<(u64, Vec<u8>)>> {
        let row = sqlx::query("SELECT version, signed_list FROM device_lists WHERE account = ?")
            .bind(account)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| Ok((u64_of(get(&r, "version")?)?, get(&r, "signed_list")?)))
            .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn upload_prekeys(
        &self,
        device: DeviceAddress,
        one_time: &[OneTimePrekeyRecord],
        kem: &[KemPrekeyRecord],
        max_stored: u32,
    ) -> Result<PrekeyCounts> {
        self.growth()?;
        self.spent(
            async move {
                let mut tx = self.write().await?;
                let before = counts(&mut tx, device).await?;
                if u64::from(before.one_time) + one_time.len() as u64 > u64::from(max_stored)
                    || u64::from(before.one_time_kem) + kem.len() as u64 > u64::from(max_stored)
                {
                    return Err(StorageError::QuotaExceeded);
                }
                insert_prekeys(&mut tx, device, one_time, kem).await?;
                let after = counts(&mut tx, device).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(after)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn prekey_counts(&self, device: DeviceAddress) -> Result<PrekeyCounts> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let result = counts(&mut tx, device).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(result)
    }

    #[tracing::instrument(skip_all)]
    async fn replace_signed_prekeys(
        &self,
        device: DeviceAddress,
        signed_prekey: Option<&SignedPrekeyRecord>,
        last_resort_kem_prekey: Option<&KemPrekeyRecord>,
    ) -> Result<()> {
        self.growth()?;
        self.spent(
            async move {
                let mut tx = self.write().await?;
                if let Some(key) = signed_prekey {
                    sqlx::query(
                        "UPDATE devices SET signed_prekey_id = ?, signed_prekey = ?, signed_prekey_signature = ? \
                         WHERE account_id = ? AND device_id = ?",
                    )
                    .bind(i64::from(key.id))
                    .bind(&key.public_key)
                    .bind(&key.signature)
                    .bind(device.account)
                    .bind(i64::from(device.device))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                if let Some(key) = last_resort_kem_prekey {
                    sqlx::query(
                        "UPDATE devices SET kem_prekey_id = ?, kem_prekey = ?, kem_prekey_signature = ? \
                         WHERE account_id = ? AND device_id = ?",
                    )
                    .bind(i64::from(key.id))
                    .bind(&key.public_key)
                    .bind(&key.signature)
                    .bind(device.account)
                    .bind(i64::from(device.device))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn take_bundles(
        &self,
        username: &str,
        device_id: Option<u32>,
        consume: bool,
    ) -> Result<Option<(AccountId, Bundles)>> {
        let mut tx = self.write().await?;
        let Some(account) = sqlx::query("SELECT id, identity FROM accounts WHERE username = ?")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
        else {
            return Ok(None);
        };
        let account_id: i64 = get(&account, "id")?;
        let identity: Vec<u8> = get(&account, "identity")?;
        let rows = sqlx::query(
            "SELECT device_id, registration_id, identity, signed_prekey_id, signed_prekey, \
             signed_prekey_signature, kem_prekey_id, kem_prekey, kem_prekey_signature FROM devices \
             WHERE account_id = ? AND (? IS NULL OR device_id = ?) ORDER BY device_id",
        )
        .bind(account_id)
        .bind(device_id.map(i64::from))
        .bind(device_id.map(i64::from))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut bundles = Vec::with_capacity(rows.len());
        for row in rows {
            let device = u32_of(get(&row, "device_id")?)?;
            if !consume {
                bundles.push(last_resort_bundle(&row, device)?);
                continue;
            }
            let one_time = sqlx::query(
                "DELETE FROM one_time_prekeys WHERE rowid = (SELECT rowid FROM one_time_prekeys \
                 WHERE account_id = ? AND device_id = ? ORDER BY key_id LIMIT 1) \
                 RETURNING key_id, public_key",
            )
            .bind(account_id)
            .bind(i64::from(device))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            let one_time_prekey = one_time
                .map(|r| {
                    Ok::<_, StorageError>(OneTimePrekeyRecord {
                        id: u32_of(get(&r, "key_id")?)?,
                        public_key: get(&r, "public_key")?,
                    })
                })
                .transpose()?;
            let kem = sqlx::query(
                "DELETE FROM one_time_kem_prekeys WHERE rowid = (SELECT rowid FROM one_time_kem_prekeys \
                 WHERE account_id = ? AND device_id = ? ORDER BY key_id LIMIT 1) \
                 RETURNING key_id, public_key, signature",
            )
            .bind(account_id)
            .bind(i64::from(device))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            let (kem_prekey, kem_prekey_is_last_resort) = match kem {
                Some(r) => (
                    KemPrekeyRecord {
                        id: u32_of(get(&r, "key_id")?)?,
                        public_key: get(&r, "public_key")?,
                        signature: get(&r, "signature")?,
                    },
                    false,
                ),
                None => (
                    KemPrekeyRecord {
                        id: u32_of(get(&row, "kem_prekey_id")?)?,
                        public_key: get(&row, "kem_prekey")?,
                        signature: get(&row, "kem_prekey_signature")?,
                    },
                    true,
                ),
            };
            bundles.push(BundleRecord {
                device_id: device,
                registration_id: u32_of(get(&row, "registration_id")?)?,
                identity: get(&row, "identity")?,
                signed_prekey: SignedPrekeyRecord {
                    id: u32_of(get(&row, "signed_prekey_id")?)?,
                    public_key: get(&row, "signed_prekey")?,
                    signature: get(&row, "signed_prekey_signature")?,
                },
                kem_prekey,
                kem_prekey_is_last_resort,
                one_time_prekey,
            });
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Some((account_id, Bundles { identity, bundles })))
    }

    #[tracing::instrument(skip_all)]
    async fn devices(&self, username: &str) -> Result<Option<(AccountId, Vec<DeviceRecord>)>> {
        let rows = sqlx::query(
            "SELECT a.id AS id, d.device_id AS device_id, d.registration_id AS registration_id \
             FROM accounts a LEFT JOIN devices d ON d.account_id = a.id \
             WHERE a.username = ? ORDER BY d.device_id",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let account_id: i64 = get(first, "id")?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(device_id) = get::<Option<i64>>(row, "device_id")? {
                devices.push(DeviceRecord {
                    device_id: u32_of(device_id)?,
                    registration_id: u32_of(get(row, "registration_id")?)?,
                });
            }
        }
        Ok(Some((account_id, devices)))
    }

    async fn store_envelopes(&self, batch: &[SendItem]) -> Result<Vec<SendOutcome>> {
        Ok(self
            .store_envelopes_with_ids(Arc::new(batch.to_vec()))
            .await?
            .into_iter()
            .map(|(outcome, _)| outcome)
            .collect())
    }

    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    async fn store_envelopes_with_ids(
        &self,
        batch: Arc<Vec<SendItem>>,
    ) -> Result<Vec<(SendOutcome, Option<u64>)>> {
        let (reply, answer) = oneshot::channel();
        let job = sqlite_hot::Message::Job(sqlite_hot::Job::Store {
            items: batch,
            reply,
        });
        self.hot.send(job).await.map_err(|_| closing())?;
        answer.await.map_err(|_| closing())?
    }

    #[tracing::instrument(skip_all)]
    async fn pending_envelopes(
        &self,
        device: DeviceAddress,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<StoredEnvelope>> {
        let rows = sqlx::query(
            "SELECT id, sender, sender_device, kind, content, message_id, server_timestamp_ms, \
             expires_at_ms, franking_commitment, franking_tag FROM envelopes \
             WHERE recipient_account = ? AND recipient_device = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(int(after_id))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(StoredEnvelope {
                    id: u64_of(get(r, "id")?)?,
                    sender: get(r, "sender")?,
                    sender_device: u32_of(get(r, "sender_device")?)?,
                    kind: i32::try_from(get::<i64>(r, "kind")?).unwrap_or_default(),
                    content: get(r, "content")?,
                    message_id: get(r, "message_id")?,
                    server_timestamp_ms: u64_of(get(r, "server_timestamp_ms")?)?,
                    expires_at_ms: get::<Option<i64>>(r, "expires_at_ms")?
                        .map(u64_of)
                        .transpose()?,
                    franking_commitment: get(r, "franking_commitment")?,
                    franking_tag: get(r, "franking_tag")?,
                })
            })
            .collect()
    }

    #[tracing::instrument(skip_all)]
    async fn acknowledge(&self, device: DeviceAddress, ids: &[u64]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (reply, answer) = oneshot::channel();
        let job = sqlite_hot::Message::Job(sqlite_hot::Job::Ack {
            device,
            ids: ids.to_vec(),
            reply,
        });
        self.hot.send(job).await.map_err(|_| closing())?;
        answer.await.map_err(|_| closing())?
    }

    #[tracing::instrument(skip_all)]
    async fn purge_expired(&self, now_ms: u64, envelope_cutoff_ms: u64) -> Result<PurgeCounts> {
        let mut tx = self.write().await?;
        let mut envelopes = sqlx::query("DELETE FROM envelopes WHERE server_timestamp_ms < ?")
            .bind(int(envelope_cutoff_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        envelopes += sqlx::query("DELETE FROM envelopes WHERE expires_at_ms <= ?")
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let tokens = sqlx::query("DELETE FROM tokens WHERE expires_day <= ?")
            .bind(crate::time::day_of(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let challenges = sqlx::query("DELETE FROM challenges WHERE expires_at_ms <= ?")
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let links = sqlx::query("DELETE FROM link_mailboxes WHERE expires_at_ms <= ?")
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let group_messages = purge_groups(&mut tx, now_ms, envelope_cutoff_ms).await?;
        tx.commit().await.map_err(map_err)?;
        // Free pages go back to the file system (auto_vacuum = INCREMENTAL),
        // so the file shrinks once mailboxes drain.
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        // `secure_delete` zeroes deleted rows in the database file, but the WAL
        // still holds the page images written when acknowledged envelopes were
        // stored (ciphertext, sender, recipient) until it is overwritten, which
        // on a quiet server can take days. Checkpoint and truncate it here, so
        // nothing acknowledged outlives one purge interval on disk. Busy (a
        // reader on an old snapshot) just means "next interval".
        let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        if busy != 0 {
            tracing::debug!("WAL checkpoint deferred: the database is busy");
        }
        Ok(PurgeCounts {
            envelopes,
            credentials: tokens + challenges,
            links,
            group_messages,
        })
    }

    #[tracing::instrument(skip_all)]
    async fn next_envelope_expiry(&self) -> Result<Option<u64>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(expires_at_ms) FROM envelopes WHERE expires_at_ms IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        next.map(u64_of).transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn server_secret_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn delete_server_secret(&self, name: &str) -> Result<()> {
        // `secure_delete` overwrites the row in the page; the checkpoint with
        // truncation removes the page images in the WAL.
        sqlx::query("DELETE FROM server_secrets WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        let (busy,): (i64,) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        if busy != 0 {
            return Err(StorageError::Unavailable(
                "the database is busy; the deleted secret is still in the WAL".into(),
            ));
        }
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn record_franking_key(&self, id: u32, check_value: &[u8]) -> Result<Vec<u8>> {
        sqlx::query(
            "INSERT INTO franking_keys (key_id, check_value) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(i64::from(id))
        .bind(check_value)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        sqlx::query_scalar("SELECT check_value FROM franking_keys WHERE key_id = ?")
            .bind(i64::from(id))
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn franking_key_ids(&self) -> Result<Vec<u32>> {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT key_id FROM franking_keys ORDER BY key_id")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        ids.into_iter().map(u32_of).collect()
    }

    #[tracing::instrument(skip_all)]
    async fn insert_report(&self, report: &NewReport) -> Result<u64> {
        self.growth()?;
        self.spent(
            async move {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO reports (reporter_account, reporter_username, sender_account, sender_username, \
                     sender_identity, franking_key_id, message_id, message_server_timestamp_ms, plaintext, \
                     reason, created_at_ms, verified, attachment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) RETURNING id",
                )
                .bind(report.reporter_account)
                .bind(&report.reporter)
                .bind(report.sender_account)
                .bind(&report.sender)
                .bind(&report.sender_identity)
                .bind(i64::from(report.franking_key_id))
                .bind(&report.message_id)
                .bind(int(report.server_timestamp_ms))
                .bind(&report.plaintext)
                .bind(&report.reason)
                .bind(int(report.created_at_ms))
                .bind(&report.attachment)
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
                u64_of(id)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn reports(&self) -> Result<Vec<ReportRecord>> {
        let rows = sqlx::query(&format!("SELECT {REPORT_COLUMNS} FROM reports ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(report_of).collect()
    }

    #[tracing::instrument(skip_all)]
    async fn report(&self, id: u64) -> Result<Option<ReportRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE id = ?"
        ))
        .bind(int(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(report_of).transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn open_link(
        &self,
        rendezvous: &[u8; 32],
        offer: &[u8],
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<bool> {
        self.growth()?;
        self.spent(
            async move {
                let done = sqlx::query(
                    "INSERT INTO link_mailboxes (rendezvous, offer, expires_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT (rendezvous) DO UPDATE SET offer = excluded.offer, hello = NULL, \
                     hello_account = NULL, reply = NULL, finish = NULL, \
                     expires_at_ms = excluded.expires_at_ms WHERE link_mailboxes.expires_at_ms <= ?",
                )
                .bind(&rendezvous[..])
                .bind(offer)
                .bind(int(expires_at_ms))
                .bind(int(now_ms))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                // An unexpired mailbox with this id is left alone: no row changes.
                Ok(done.rows_affected() == 1)
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn link(&self, rendezvous: &[u8; 32], now_ms: u64) -> Result<Option<LinkMailbox>> {
        let row = sqlx::query(
            "SELECT offer, hello, hello_account, reply, finish, expires_at_ms FROM link_mailboxes \
             WHERE rendezvous = ? AND expires_at_ms > ?",
        )
        .bind(&rendezvous[..])
        .bind(int(now_ms))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            Ok(LinkMailbox {
                offer: get(&r, "offer")?,
                hello: get(&r, "hello")?,
                hello_account: get(&r, "hello_account")?,
                reply: get(&r, "reply")?,
                finish: get(&r, "finish")?,
                expires_at_ms: u64_of(get(&r, "expires_at_ms")?)?,
            })
        })
        .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn post_link(
        &self,
        rendezvous: &[u8; 32],
        message: LinkMessage<'_>,
        now_ms: u64,
    ) -> Result<LinkPost> {
        self.growth()?;
        self.spent(
            async move {
                let (rendezvous, now) = (&rendezvous[..], int(now_ms));
                // One conditional statement per slot: the slot empty, the one before
                // it written (and for FINISH the HELLO's account), checked and
                // written atomically, so of two racing posts one changes the row.
                let query = match message {
                    LinkMessage::Hello { account, payload } => sqlx::query(
                        "UPDATE link_mailboxes SET hello = ?, hello_account = ? WHERE rendezvous = ? \
                         AND expires_at_ms > ? AND hello IS NULL",
                    )
                    .bind(payload)
                    .bind(account)
                    .bind(rendezvous)
                    .bind(now),
                    LinkMessage::Reply { payload } => sqlx::query(
                        "UPDATE link_mailboxes SET reply = ? WHERE rendezvous = ? AND expires_at_ms > ? \
                         AND hello IS NOT NULL AND reply IS NULL",
                    )
                    .bind(payload)
                    .bind(rendezvous)
                    .bind(now),
                    LinkMessage::Finish { account, payload } => sqlx::query(
                        "UPDATE link_mailboxes SET finish = ? WHERE rendezvous = ? AND expires_at_ms > ? \
                         AND reply IS NOT NULL AND finish IS NULL AND hello_account = ?",
                    )
                    .bind(payload)
                    .bind(rendezvous)
                    .bind(now)
                    .bind(account),
                };
                if query
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?
                    .rows_affected()
                    == 1
                {
                    return Ok(LinkPost::Posted);
                }
                let slots = sqlx::query(
                    "SELECT hello IS NOT NULL AS hello, hello_account, reply IS NOT NULL AS reply, \
                     finish IS NOT NULL AS finish FROM link_mailboxes \
                     WHERE rendezvous = ? AND expires_at_ms > ?",
                )
                .bind(rendezvous)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
                .map(|row| {
                    Ok::<_, StorageError>(LinkSlots {
                        hello: get::<i64>(&row, "hello")? != 0,
                        hello_account: get(&row, "hello_account")?,
                        reply: get::<i64>(&row, "reply")? != 0,
                        finish: get::<i64>(&row, "finish")? != 0,
                    })
                })
                .transpose()?;
                Ok(link_post_failure(slots, &message))
            }
            .await,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn close_link(&self, rendezvous: &[u8; 32]) -> Result<()> {
        // Frees space: works on a full disk too.
        self.essential(move || async move {
            sqlx::query("DELETE FROM link_mailboxes WHERE rendezvous = ?")
                .bind(&rendezvous[..])
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn export_account(&self, username: &str) -> Result<Option<AccountExport>> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(account) = sqlx::query(
            "SELECT id, username, identity, created_day, last_seen_day FROM accounts WHERE username = ?",
        )
        .bind(username)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        else {
            return Ok(None);
        };
        let account_id: i64 = get(&account, "id")?;
        let rows = sqlx::query(
            "SELECT device_id, created_day, last_seen_day, identity FROM devices WHERE account_id = ? ORDER BY device_id",
        )
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in rows {
            let device = u32_of(get(&row, "device_id")?)?;
            let address = DeviceAddress {
                account: account_id,
                device,
            };
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM envelopes WHERE recipient_account = ? AND recipient_device = ?",
            )
            .bind(account_id)
            .bind(i64::from(device))
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            devices.push(DeviceExport {
                device_id: device,
                created_day: get(&row, "created_day")?,
                last_seen_day: get(&row, "last_seen_day")?,
                identity: get(&row, "identity")?,
                pending_envelopes: u64_of(pending)?,
                prekeys: counts(&mut tx, address).await?,
                key_packages: key_package_counts(&mut tx, address).await?,
            });
        }
        let reports_against = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE sender_account = ? ORDER BY id"
        ))
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
        .iter()
        .map(report_of)
        .collect::<Result<Vec<_>>>()?;
        let reports_filed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM reports WHERE reporter_account = ?")
                .bind(account_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let device_list =
            sqlx::query("SELECT version, signed_list FROM device_lists WHERE account = ?")
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let (device_list_version, device_list_devices) = match device_list {
            None => (None, Vec::new()),
            Some(row) => (
                Some(u64_of(get(&row, "version")?)?),
                super::listed_device_ids(&get::<Vec<u8>>(&row, "signed_list")?)?,
            ),
        };
        let pending_links = sqlx::query(
            "SELECT expires_at_ms, reply IS NOT NULL AS reply, finish IS NOT NULL AS finish \
             FROM link_mailboxes WHERE hello_account = ? ORDER BY expires_at_ms",
        )
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
        .iter()
        .map(|row| {
            let step = if get::<i64>(row, "finish")? != 0 {
                LinkSlot::Finish
            } else if get::<i64>(row, "reply")? != 0 {
                LinkSlot::Reply
            } else {
                LinkSlot::Hello
            };
            Ok(LinkExport {
                expires_at_ms: u64_of(get(row, "expires_at_ms")?)?,
                step,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let groups = group_exports(&mut tx, account_id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(AccountExport {
            username: get(&account, "username")?,
            identity: get(&account, "identity")?,
            created_day: get(&account, "created_day")?,
            last_seen_day: get(&account, "last_seen_day")?,
            devices,
            reports_against,
            reports_filed: u64_of(reports_filed)?,
            device_list_version,
            device_list_devices,
            pending_links,
            groups,
        }))
    }

    async fn close(&self) {
        // The hot-path connection first, so the pool's last connection is the
        // last one and checkpoints the WAL (with the pages of acknowledged
        // envelopes) away.
        let (reply, closed) = oneshot::channel();
        if self
            .hot
            .send(sqlite_hot::Message::Close(reply))
            .await
            .is_ok()
        {
            let _ = closed.await;
        }
        self.pool.close().await;
    }
}

/// A device's bundle without one-time keys: the last-resort KEM key.
fn last_resort_bundle(row: &SqliteRow, device: u32) -> Result<BundleRecord> {
    Ok(BundleRecord {
        device_id: device,
        registration_id: u32_of(get(row, "registration_id")?)?,
        identity: get(row, "identity")?,
        signed_prekey: SignedPrekeyRecord {
            id: u32_of(get(row, "signed_prekey_id")?)?,
            public_key: get(row, "signed_prekey")?,
            signature: get(row, "signed_prekey_signature")?,
        },
        kem_prekey: KemPrekeyRecord {
            id: u32_of(get(row, "kem_prekey_id")?)?,
            public_key: get(row, "kem_prekey")?,
            signature: get(row, "kem_prekey_signature")?,
        },
        kem_prekey_is_last_resort: true,
        one_time_prekey: None,
    })
}

/// Inserts a device row and its one-time prekeys.
async fn insert_device(tx: &mut Transaction<'static, Sqlite>, device: &NewDevice) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (account_id, device_id, registration_id, created_day, identity, \
         signed_prekey_id, signed_prekey, signed_prekey_signature, \
         kem_prekey_id, kem_prekey, kem_prekey_signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(device.address.account)
    .bind(i64::from(device.address.device))
    .bind(i64::from(device.registration_id))
    .bind(device.today)
    .bind(&device.identity)
    .bind(i64::from(device.signed_prekey.id))
    .bind(&device.signed_prekey.public_key)
    .bind(&device.signed_prekey.signature)
    .bind(i64::from(device.last_resort_kem_prekey.id))
    .bind(&device.last_resort_kem_prekey.public_key)
    .bind(&device.last_resort_kem_prekey.signature)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    insert_prekeys(
        tx,
        device.address,
        &device.one_time_prekeys,
        &device.one_time_kem_prekeys,
    )
    .await
}

async fn insert_prekeys(
    tx: &mut Transaction<'static, Sqlite>,
    device: DeviceAddress,
    one_time: &[OneTimePrekeyRecord],
    kem: &[KemPrekeyRecord],
) -> Result<()> {
    for key in one_time {
        sqlx::query(
            "INSERT INTO one_time_prekeys (account_id, device_id, key_id, public_key) VALUES (?, ?, ?, ?)",
        )
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(i64::from(key.id))
        .bind(&key.public_key)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    for key in kem {
        sqlx::query(
            "INSERT INTO one_time_kem_prekeys (account_id, device_id, key_id, public_key, signature) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(i64::from(key.id))
        .bind(&key.public_key)
        .bind(&key.signature)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}
