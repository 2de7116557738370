//! The scale-out backend: PostgreSQL through sqlx, shared by any number of
//! stateless nodes, migrations embedded in the binary.
//!
//! Durability: every write commits with the server's `synchronous_commit`
//! (on by default; this backend never lowers it). Group commit: the node's
//! single send writer hands whole batches to [`Storage::store_envelopes`],
//! which stores them in one transaction with a fixed number of round trips.
//!
//! Ordering: a send first locks the recipient device rows (`FOR UPDATE`, in
//! key order, so nodes cannot deadlock each other) and only then draws
//! envelope ids from the identity sequence; two transactions writing to one
//! device therefore take ids in commit order, which is what receive streams
//! resuming "after the last delivered id" need.
//!
//! A schema other than `public` is chosen in the URL:
//! `postgres://host/db?options[search_path]=missive`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{
    AccountExport, AccountId, AccountRecord, BundleRecord, Bundles, DAY_MS, DeviceAddress,
    DeviceExport, DeviceRecord, KemPrekeyRecord, LinkExport, LinkMailbox, LinkMessage, LinkPost,
    LinkSlot, LinkSlots, NewAccount, NewDevice, NewReport, OneTimePrekeyRecord, OpenMode,
    PrekeyCounts, Principal, PurgeCounts, PutOutcome, ReportRecord, Result, SendItem, SendOutcome,
    SignedPrekeyRecord, Storage, StorageError, StoredEnvelope, link_post_failure,
};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

type Db = Postgres;
type DbRow = PgRow;
/// Group writes lock the group row: one epoch decision and one seq order
/// per group across nodes.
const FOR_UPDATE: &str = " FOR UPDATE";
/// Concurrent KeyPackage fetches take different rows.
const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
/// A new group's number, from the column's sequence.
const NEW_GROUP_NUMBER: &str = "nextval('mls_groups_number_seq')";
/// The largest of its arguments.
const GREATEST: &str = "GREATEST";
super::groups::group_helpers!();
super::groups::group_methods!(PostgresStorage);

/// Connections per node. Sends use one at a time (group commit); the rest
/// serve receive streams, logins and key fetches.
const MAX_CONNECTIONS: u32 = 16;

/// How long the first connection may take before the node gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The OS-level cause of a failed connection, without sqlx's wrapping.
fn connect_cause(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => format!("TLS failed: {tls}"),
        other => other.to_string(),
    }
}

/// PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStorage {
    pool: PgPool,
}

/// The one place sqlx errors become [`StorageError`]s.
fn map_err(error: sqlx::Error) -> StorageError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::Conflict,
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StorageError::NotFound,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Serialization failure, deadlock, too many connections, admin
            // shutdown, cannot connect now, connection exceptions (class 08).
            Some("40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03") => {
                StorageError::Unavailable(db.message().to_owned())
            }
            Some(code) if code.starts_with("08") => {
                StorageError::Unavailable(db.message().to_owned())
            }
            // undefined_table: the schema was never migrated.
            Some("42P01") => StorageError::NoDatabase,
            // disk_full, insufficient_resources.
            Some("53100" | "53000") => StorageError::Full,
            _ => StorageError::Backend(error.to_string()),
        },
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

fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
    row: &'r PgRow,
    column: &str,
) -> Result<T> {
    row.try_get(column).map_err(map_err)
}

impl PostgresStorage {
    /// Connects to `url` and, in [`OpenMode::Serve`], runs the migrations
    /// (under sqlx's advisory lock, so nodes starting together agree).
    pub async fn open(url: &str, mode: OpenMode) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StorageError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("missive-server");
        // One direct attempt first: an unreachable or refusing server is
        // reported at once, in one sentence, instead of after the pool's
        // acquire timeout as "pool timed out".
        let target = format!("{}:{}", options.get_host(), options.get_port());
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
            }
            Ok(Err(sqlx::Error::Database(db))) => {
                return Err(StorageError::Unavailable(format!(
                    "PostgreSQL at {target} refused the connection: {}",
                    db.message()
                )));
            }
            Ok(Err(error)) => {
                return Err(StorageError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: {}",
                    connect_cause(&error)
                )));
            }
            Err(_) => {
                return Err(StorageError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        match mode {
            OpenMode::Serve => MIGRATOR.run(&pool).await.map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(inner) => map_err(inner),
                other => StorageError::Backend(other.to_string()),
            })?,
            OpenMode::Existing => {
                let present: Option<String> =
                    sqlx::query_scalar("SELECT to_regclass('accounts')::text")
                        .fetch_one(&pool)
                        .await
                        .map_err(map_err)?;
                if present.is_none() {
                    pool.close().await;
                    return Err(StorageError::NoDatabase);
                }
            }
        }
        Ok(Self { pool })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }

    /// A write transaction for the group methods.
    async fn group_tx(&self) -> Result<Transaction<'static, Postgres>> {
        self.begin().await
    }
}

/// Locks a device row for the rest of the transaction; `false` if it is gone.
async fn lock_device(
    tx: &mut Transaction<'static, Postgres>,
    device: DeviceAddress,
) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT device_id FROM devices WHERE account_id = $1 AND device_id = $2 FOR UPDATE",
    )
    .bind(device.account)
    .bind(i64::from(device.device))
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(found.is_some())
}

async fn counts(
    tx: &mut Transaction<'static, Postgres>,
    device: DeviceAddress,
) -> Result<PrekeyCounts> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM one_time_prekeys WHERE account_id = $1 AND device_id = $2) AS one_time, \
                (SELECT COUNT(*) FROM one_time_kem_prekeys WHERE account_id = $1 AND device_id = $2) AS one_time_kem",
    )
    .bind(device.account)
    .bind(i64::from(device.device))
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(PrekeyCounts {
        one_time: u32_of(get(&row, "one_time")?)?,
        one_time_kem: u32_of(get(&row, "one_time_kem")?)?,
    })
}

/// Inserts a device row and its one-time prekeys.
async fn insert_device(tx: &mut Transaction<'static, Postgres>, device: &NewDevice) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (account_id, device_id, registration_id, created_day, identity, \
         signed_prekey_id, signed_prekey, signed_prekey_signature, \
         kem_prekey_id, kem_prekey, kem_prekey_signature) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
    tx: &mut Transaction<'static, Postgres>,
    device: DeviceAddress,
    one_time: &[OneTimePrekeyRecord],
    kem: &[KemPrekeyRecord],
) -> Result<()> {
    if !one_time.is_empty() {
        let ids: Vec<i64> = one_time.iter().map(|k| i64::from(k.id)).collect();
        let keys: Vec<Vec<u8>> = one_time.iter().map(|k| k.public_key.clone()).collect();
        sqlx::query(
            "INSERT INTO one_time_prekeys (account_id, device_id, key_id, public_key) \
             SELECT $1, $2, k.id, k.public_key FROM UNNEST($3::BIGINT[], $4::BYTEA[]) AS k(id, public_key)",
        )
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(ids)
        .bind(keys)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    if !kem.is_empty() {
        let ids: Vec<i64> = kem.iter().map(|k| i64::from(k.id)).collect();
        let keys: Vec<Vec<u8>> = kem.iter().map(|k| k.public_key.clone()).collect();
        let signatures: Vec<Vec<u8>> = kem.iter().map(|k| k.signature.clone()).collect();
        sqlx::query(
            "INSERT INTO one_time_kem_prekeys (account_id, device_id, key_id, public_key, signature) \
             SELECT $1, $2, k.id, k.public_key, k.signature \
             FROM UNNEST($3::BIGINT[], $4::BYTEA[], $5::BYTEA[]) AS k(id, public_key, signature)",
        )
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(ids)
        .bind(keys)
        .bind(signatures)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

fn report_of(row: &PgRow) -> Result<ReportRecord> {
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
        verified: get(row, "verified")?,
        file: super::reported_file(get(row, "attachment")?),
    })
}

const REPORT_COLUMNS: &str = "id, reporter_account, reporter_username, sender_account, \
                              sender_username, sender_identity, franking_key_id, message_id, \
                              message_server_timestamp_ms, plaintext, reason, created_at_ms, verified, \
                              attachment";

/// A device's bundle without one-time keys: the last-resort KEM key.
fn last_resort_bundle(row: &PgRow, device: u32) -> Result<BundleRecord> {
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

/// The idempotency key of one envelope.
type EnvelopeKey = (AccountId, i64, String, i64, Vec<u8>);

/// Envelopes accepted in a batch, column by column (for one `UNNEST` insert).
#[derive(Default)]
struct Columns {
    recipient_account: Vec<i64>,
    recipient_device: Vec<i64>,
    sender: Vec<String>,
    sender_device: Vec<i64>,
    kind: Vec<i64>,
    content: Vec<Vec<u8>>,
    message_id: Vec<Vec<u8>>,
    server_timestamp_ms: Vec<i64>,
    expires_at_ms: Vec<i64>,
    franking_commitment: Vec<Vec<u8>>,
    franking_tag: Vec<Vec<u8>>,
}

#[async_trait]
impl Storage for PostgresStorage {
    #[tracing::instrument(skip_all)]
    async fn put_challenge(&self, challenge_hash: &[u8; 32], expires_at_ms: u64) -> Result<()> {
        sqlx::query("INSERT INTO challenges (challenge_hash, expires_at_ms) VALUES ($1, $2)")
            .bind(&challenge_hash[..])
            .bind(int(expires_at_ms))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn take_challenge(&self, challenge_hash: &[u8; 32], now_ms: u64) -> Result<bool> {
        // One statement: a challenge is consumed by its first use, right or
        // wrong, and by exactly one of two concurrent uses.
        let expires: Option<i64> = sqlx::query_scalar(
            "DELETE FROM challenges WHERE challenge_hash = $1 RETURNING expires_at_ms",
        )
        .bind(&challenge_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(expires.is_some_and(|at| at > int(now_ms)))
    }

    #[tracing::instrument(skip_all)]
    async fn create_account(&self, account: &NewAccount) -> Result<AccountId> {
        let mut tx = self.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO accounts (username, identity, created_day, last_seen_day) \
             VALUES ($1, $2, $3, $3) RETURNING id",
        )
        .bind(&account.username)
        .bind(&account.identity)
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
        sqlx::query("INSERT INTO device_lists (account, version, signed_list) VALUES ($1, 1, $2)")
            .bind(id)
            .bind(&account.signed_device_list)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(id)
    }

    #[tracing::instrument(skip_all)]
    async fn add_device(&self, device: &NewDevice) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_device(&mut tx, device).await?;
        tx.commit().await.map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn device_identity(
        &self,
        username: &str,
        device_id: u32,
    ) -> Result<Option<(AccountId, Vec<u8>)>> {
        let row = sqlx::query(
            "SELECT a.id AS id, d.identity AS identity FROM accounts a \
             JOIN devices d ON d.account_id = a.id WHERE a.username = $1 AND d.device_id = $2",
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
        sqlx::query_scalar("SELECT identity FROM devices WHERE account_id = $1 AND device_id = $2")
            .bind(device.account)
            .bind(i64::from(device.device))
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn account_identity(&self, account: AccountId) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT identity FROM accounts WHERE id = $1")
            .bind(account)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn account_named(&self, username: &str) -> Result<Option<AccountRecord>> {
        let row = sqlx::query("SELECT id, identity, created_day FROM accounts WHERE username = $1")
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
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (token_hash, account_id, device_id, expires_day) VALUES ($1, $2, $3, $4)",
        )
        .bind(&token_hash[..])
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(expires_day)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE accounts SET last_seen_day = $1 WHERE id = $2")
            .bind(today)
            .bind(device.account)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "UPDATE devices SET last_seen_day = $1 WHERE account_id = $2 AND device_id = $3",
        )
        .bind(today)
        .bind(device.account)
        .bind(i64::from(device.device))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn authenticate(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT t.account_id AS account_id, t.device_id AS device_id, a.username AS username, \
             t.expires_day AS expires_day FROM tokens t JOIN accounts a ON a.id = t.account_id \
             WHERE t.token_hash = $1 AND t.expires_day > $2",
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
        // One statement, so the two days can never disagree mid-way.
        sqlx::query(
            "WITH d AS (UPDATE devices SET last_seen_day = $1 \
             WHERE account_id = $2 AND device_id = $3 AND last_seen_day <> $1) \
             UPDATE accounts SET last_seen_day = $1 WHERE id = $2 AND last_seen_day <> $1",
        )
        .bind(today)
        .bind(device.account)
        .bind(i64::from(device.device))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn delete_account(&self, account: AccountId) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(KEEP_SENDER_NAMES)
            .bind(account)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // Foreign keys cascade to devices, prekeys, tokens and envelopes.
        let done = sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(account)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(())
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
        let listed: Vec<i64> = super::listed_device_ids(signed_list)?
            .into_iter()
            .map(i64::from)
            .collect();
        let mut tx = self.begin().await?;
        // One statement decides: insert, or replace a lower version.
        let stored: Option<i64> = sqlx::query_scalar(
            "INSERT INTO device_lists (account, version, signed_list) VALUES ($1, $2, $3) \
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
            // Devices the new list no longer names go with it; their prekeys,
            // tokens and envelopes cascade.
            sqlx::query("DELETE FROM devices WHERE account_id = $1 AND NOT (device_id = ANY($2))")
                .bind(account)
                .bind(&listed)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            PutOutcome::Stored
        } else {
            let row =
                sqlx::query("SELECT version, signed_list FROM device_lists WHERE account = $1")
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

    #[tracing::instrument(skip_all)]
    async fn device_list(&self, account: AccountId) -> Result<Option<(u64, Vec<u8>)>> {
        let row = sqlx::query("SELECT version, signed_list FROM device_lists WHERE account = $1")
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
        let mut tx = self.begin().await?;
        // Serialise uploads per device so two cannot both pass the quota check.
        if !lock_device(&mut tx, device).await? {
            return Err(StorageError::NotFound);
        }
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

    #[tracing::instrument(skip_all)]
    async fn prekey_counts(&self, device: DeviceAddress) -> Result<PrekeyCounts> {
        let mut tx = self.begin().await?;
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
        let mut tx = self.begin().await?;
        if let Some(key) = signed_prekey {
            sqlx::query(
                "UPDATE devices SET signed_prekey_id = $1, signed_prekey = $2, signed_prekey_signature = $3 \
                 WHERE account_id = $4 AND device_id = $5",
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
                "UPDATE devices SET kem_prekey_id = $1, kem_prekey = $2, kem_prekey_signature = $3 \
                 WHERE account_id = $4 AND device_id = $5",
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

    #[tracing::instrument(skip_all)]
    async fn take_bundles(
        &self,
        username: &str,
        device_id: Option<u32>,
        consume: bool,
    ) -> Result<Option<(AccountId, Bundles)>> {
        let mut tx = self.begin().await?;
        let Some(account) = sqlx::query("SELECT id, identity FROM accounts WHERE username = $1")
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
             WHERE account_id = $1 AND ($2::BIGINT IS NULL OR device_id = $2) ORDER BY device_id",
        )
        .bind(account_id)
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
            // SKIP LOCKED: two concurrent fetches take two different keys
            // instead of the second finding its chosen key deleted.
            let one_time = sqlx::query(
                "DELETE FROM one_time_prekeys WHERE (account_id, device_id, key_id) = \
                 (SELECT account_id, device_id, key_id FROM one_time_prekeys \
                  WHERE account_id = $1 AND device_id = $2 ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
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
                "DELETE FROM one_time_kem_prekeys WHERE (account_id, device_id, key_id) = \
                 (SELECT account_id, device_id, key_id FROM one_time_kem_prekeys \
                  WHERE account_id = $1 AND device_id = $2 ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
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
            "SELECT a.id AS account_id, d.device_id AS device_id, d.registration_id AS registration_id \
             FROM accounts a LEFT JOIN devices d ON d.account_id = a.id \
             WHERE a.username = $1 ORDER BY d.device_id",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let account_id: i64 = get(first, "account_id")?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in &rows {
            let (Some(device_id), Some(registration_id)) = (
                get::<Option<i64>>(row, "device_id")?,
                get::<Option<i64>>(row, "registration_id")?,
            ) else {
                continue;
            };
            devices.push(DeviceRecord {
                device_id: u32_of(device_id)?,
                registration_id: u32_of(registration_id)?,
            });
        }
        Ok(Some((account_id, devices)))
    }

    #[tracing::instrument(skip_all, fields(batch = batch.len()))]
    async fn store_envelopes(&self, batch: &[SendItem]) -> Result<Vec<SendOutcome>> {
        // Every recipient device of the batch, in key order (the lock order).
        let targets: BTreeSet<(i64, i64)> = batch
            .iter()
            .flat_map(|item| {
                item.envelopes
                    .iter()
                    .map(|e| (item.recipient, i64::from(e.recipient_device)))
            })
            .collect();
        if targets.is_empty() {
            return Ok(batch
                .iter()
                .map(|item| SendOutcome::Stored {
                    server_timestamp_ms: item.server_timestamp_ms,
                })
                .collect());
        }
        let target_accounts: Vec<i64> = targets.iter().map(|t| t.0).collect();
        let target_devices: Vec<i64> = targets.iter().map(|t| t.1).collect();
        let bound = batch.iter().map(|i| i.mailbox_limit).max().unwrap_or(0);

        let mut tx = self.begin().await?;
        // 1. Lock the devices that exist, in order; this also orders ids.
        let locked = sqlx::query(
            "SELECT d.account_id, d.device_id FROM devices d \
             JOIN UNNEST($1::BIGINT[], $2::BIGINT[]) AS t(account_id, device_id) \
             ON d.account_id = t.account_id AND d.device_id = t.device_id \
             ORDER BY d.account_id, d.device_id FOR UPDATE OF d",
        )
        .bind(&target_accounts)
        .bind(&target_devices)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let existing: HashSet<(i64, i64)> = locked
            .iter()
            .map(|r| Ok((get(r, "account_id")?, get(r, "device_id")?)))
            .collect::<Result<_>>()?;

        // 2. Pending envelopes per device, counted up to the largest limit.
        let pending_rows = sqlx::query(
            "SELECT t.account_id, t.device_id, \
             (SELECT COUNT(*) FROM (SELECT 1 FROM envelopes e WHERE e.recipient_account = t.account_id \
              AND e.recipient_device = t.device_id LIMIT $3) AS p) AS pending \
             FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS t(account_id, device_id)",
        )
        .bind(&target_accounts)
        .bind(&target_devices)
        .bind(i64::from(bound))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut pending: HashMap<(i64, i64), i64> = pending_rows
            .iter()
            .map(|r| {
                Ok((
                    (get(r, "account_id")?, get(r, "device_id")?),
                    get(r, "pending")?,
                ))
            })
            .collect::<Result<_>>()?;

        // 3. Envelopes already stored under the batch's idempotency keys.
        let mut keys = Columns::default();
        for item in batch {
            for envelope in &item.envelopes {
                keys.recipient_account.push(item.recipient);
                keys.recipient_device
                    .push(i64::from(envelope.recipient_device));
                keys.sender.push(item.sender.clone());
                keys.sender_device.push(i64::from(item.sender_device));
                keys.message_id.push(item.message_id.clone());
            }
        }
        let duplicate_rows = sqlx::query(
            "SELECT e.recipient_account, e.recipient_device, e.sender, e.sender_device, e.message_id, \
             e.server_timestamp_ms FROM envelopes e \
             JOIN UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[]) \
             AS k(recipient_account, recipient_device, sender, sender_device, message_id) \
             ON e.recipient_account = k.recipient_account AND e.recipient_device = k.recipient_device \
             AND e.sender = k.sender AND e.sender_device = k.sender_device AND e.message_id = k.message_id",
        )
        .bind(&keys.recipient_account)
        .bind(&keys.recipient_device)
        .bind(&keys.sender)
        .bind(&keys.sender_device)
        .bind(&keys.message_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut stored: HashMap<EnvelopeKey, i64> = HashMap::with_capacity(duplicate_rows.len());
        for row in &duplicate_rows {
            stored.insert(
                (
                    get(row, "recipient_account")?,
                    get(row, "recipient_device")?,
                    get(row, "sender")?,
                    get(row, "sender_device")?,
                    get(row, "message_id")?,
                ),
                get(row, "server_timestamp_ms")?,
            );
        }

        // 4. Decide each item in order, as if stored one by one.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows = Columns::default();
        'items: for item in batch {
            let key_of = |device: u32| -> EnvelopeKey {
                (
                    item.recipient,
                    i64::from(device),
                    item.sender.clone(),
                    i64::from(item.sender_device),
                    item.message_id.clone(),
                )
            };
            for envelope in &item.envelopes {
                if let Some(ts) = stored.get(&key_of(envelope.recipient_device)) {
                    outcomes.push(SendOutcome::Duplicate {
                        server_timestamp_ms: u64_of(*ts)?,
                    });
                    continue 'items;
                }
            }
            for envelope in &item.envelopes {
                let target = (item.recipient, i64::from(envelope.recipient_device));
                if !existing.contains(&target) {
                    outcomes.push(SendOutcome::RecipientGone);
                    continue 'items;
                }
                if pending.get(&target).copied().unwrap_or(0) >= i64::from(item.mailbox_limit) {
                    outcomes.push(SendOutcome::MailboxFull {
                        device: envelope.recipient_device,
                    });
                    continue 'items;
                }
            }
            for envelope in &item.envelopes {
                let target = (item.recipient, i64::from(envelope.recipient_device));
                *pending.entry(target).or_default() += 1;
                stored.insert(
                    key_of(envelope.recipient_device),
                    int(item.server_timestamp_ms),
                );
                rows.recipient_account.push(item.recipient);
                rows.recipient_device.push(target.1);
                rows.sender.push(item.sender.clone());
                rows.sender_device.push(i64::from(item.sender_device));
                rows.kind.push(i64::from(envelope.kind));
                rows.content.push(envelope.content.clone());
                rows.message_id.push(item.message_id.clone());
                rows.server_timestamp_ms.push(int(item.server_timestamp_ms));
                rows.expires_at_ms.push(int(item.expires_at_ms));
                rows.franking_commitment
                    .push(envelope.franking_commitment.clone());
                rows.franking_tag.push(envelope.franking_tag.clone());
            }
            outcomes.push(SendOutcome::Stored {
                server_timestamp_ms: item.server_timestamp_ms,
            });
        }

        // 5. One insert for the whole batch; ids follow the batch order.
        if !rows.recipient_account.is_empty() {
            sqlx::query(
                "INSERT INTO envelopes (recipient_account, recipient_device, sender, sender_device, kind, \
                 content, message_id, server_timestamp_ms, franking_commitment, franking_tag, \
                 expires_at_ms) \
                 SELECT r.recipient_account, r.recipient_device, r.sender, r.sender_device, r.kind, \
                 r.content, r.message_id, r.server_timestamp_ms, r.franking_commitment, r.franking_tag, \
                 r.expires_at_ms \
                 FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], \
                 $6::BYTEA[], $7::BYTEA[], $8::BIGINT[], $9::BYTEA[], $10::BYTEA[], $11::BIGINT[]) \
                 WITH ORDINALITY \
                 AS r(recipient_account, recipient_device, sender, sender_device, kind, content, \
                 message_id, server_timestamp_ms, franking_commitment, franking_tag, expires_at_ms, \
                 position) \
                 ORDER BY r.position",
            )
            .bind(&rows.recipient_account)
            .bind(&rows.recipient_device)
            .bind(&rows.sender)
            .bind(&rows.sender_device)
            .bind(&rows.kind)
            .bind(&rows.content)
            .bind(&rows.message_id)
            .bind(&rows.server_timestamp_ms)
            .bind(&rows.franking_commitment)
            .bind(&rows.franking_tag)
            .bind(&rows.expires_at_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(outcomes)
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
             WHERE recipient_account = $1 AND recipient_device = $2 AND id > $3 ORDER BY id LIMIT $4",
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
        let ids: Vec<i64> = ids.iter().map(|id| int(*id)).collect();
        let done = sqlx::query(
            "DELETE FROM envelopes WHERE recipient_account = $1 AND recipient_device = $2 \
             AND id = ANY($3::BIGINT[])",
        )
        .bind(device.account)
        .bind(i64::from(device.device))
        .bind(&ids)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    #[tracing::instrument(skip_all)]
    async fn purge_expired(&self, now_ms: u64, envelope_cutoff_ms: u64) -> Result<PurgeCounts> {
        let mut tx = self.begin().await?;
        let mut envelopes = sqlx::query("DELETE FROM envelopes WHERE server_timestamp_ms < $1")
            .bind(int(envelope_cutoff_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        envelopes += sqlx::query("DELETE FROM envelopes WHERE expires_at_ms <= $1")
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let tokens = sqlx::query("DELETE FROM tokens WHERE expires_day <= $1")
            .bind(crate::time::day_of(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let challenges = sqlx::query("DELETE FROM challenges WHERE expires_at_ms <= $1")
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let links = sqlx::query("DELETE FROM link_mailboxes WHERE expires_at_ms <= $1")
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let group_messages = purge_groups(&mut tx, now_ms, envelope_cutoff_ms).await?;
        tx.commit().await.map_err(map_err)?;
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
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    #[tracing::instrument(skip_all)]
    async fn delete_server_secret(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM server_secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        // Removes the dead row version from the table's files (WAL segments
        // keep it until recycled; docs/DEPLOYMENT.md).
        sqlx::query("VACUUM server_secrets")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn record_franking_key(&self, id: u32, check_value: &[u8]) -> Result<Vec<u8>> {
        // First writer wins; every node then compares with the same row.
        sqlx::query(
            "INSERT INTO franking_keys (key_id, check_value) VALUES ($1, $2) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(i64::from(id))
        .bind(check_value)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        sqlx::query_scalar("SELECT check_value FROM franking_keys WHERE key_id = $1")
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
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO reports (reporter_account, reporter_username, sender_account, sender_username, \
             sender_identity, franking_key_id, message_id, message_server_timestamp_ms, plaintext, \
             reason, created_at_ms, verified, attachment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, TRUE, $12) \
             RETURNING id",
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
            "SELECT {REPORT_COLUMNS} FROM reports WHERE id = $1"
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
        let done = sqlx::query(
            "INSERT INTO link_mailboxes (rendezvous, offer, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (rendezvous) DO UPDATE SET offer = excluded.offer, hello = NULL, \
             hello_account = NULL, reply = NULL, finish = NULL, \
             expires_at_ms = excluded.expires_at_ms WHERE link_mailboxes.expires_at_ms <= $4",
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

    #[tracing::instrument(skip_all)]
    async fn link(&self, rendezvous: &[u8; 32], now_ms: u64) -> Result<Option<LinkMailbox>> {
        let row = sqlx::query(
            "SELECT offer, hello, hello_account, reply, finish, expires_at_ms FROM link_mailboxes \
             WHERE rendezvous = $1 AND expires_at_ms > $2",
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
        let (rendezvous, now) = (&rendezvous[..], int(now_ms));
        // One conditional statement per slot: the slot empty, the one before
        // it written (and for FINISH the HELLO's account), checked and
        // written atomically, so of two racing posts one changes the row.
        let query = match message {
            LinkMessage::Hello { account, payload } => sqlx::query(
                "UPDATE link_mailboxes SET hello = $1, hello_account = $2 WHERE rendezvous = $3 \
                 AND expires_at_ms > $4 AND hello IS NULL",
            )
            .bind(payload)
            .bind(account)
            .bind(rendezvous)
            .bind(now),
            LinkMessage::Reply { payload } => sqlx::query(
                "UPDATE link_mailboxes SET reply = $1 WHERE rendezvous = $2 AND expires_at_ms > $3 \
                 AND hello IS NOT NULL AND reply IS NULL",
            )
            .bind(payload)
            .bind(rendezvous)
            .bind(now),
            LinkMessage::Finish { account, payload } => sqlx::query(
                "UPDATE link_mailboxes SET finish = $1 WHERE rendezvous = $2 AND expires_at_ms > $3 \
                 AND reply IS NOT NULL AND finish IS NULL AND hello_account = $4",
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
             WHERE rendezvous = $1 AND expires_at_ms > $2",
        )
        .bind(rendezvous)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?
        .map(|row| {
            Ok::<_, StorageError>(LinkSlots {
                hello: get::<bool>(&row, "hello")?,
                hello_account: get(&row, "hello_account")?,
                reply: get::<bool>(&row, "reply")?,
                finish: get::<bool>(&row, "finish")?,
            })
        })
        .transpose()?;
        Ok(link_post_failure(slots, &message))
    }

    #[tracing::instrument(skip_all)]
    async fn close_link(&self, rendezvous: &[u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM link_mailboxes WHERE rendezvous = $1")
            .bind(&rendezvous[..])
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn export_account(&self, username: &str) -> Result<Option<AccountExport>> {
        // One snapshot for the whole export.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(map_err)?;
        let Some(account) = sqlx::query(
            "SELECT id, username, identity, created_day, last_seen_day FROM accounts WHERE username = $1",
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
            "SELECT d.device_id AS device_id, d.created_day AS created_day, \
             d.last_seen_day AS last_seen_day, d.identity AS identity, \
             (SELECT COUNT(*) FROM envelopes e WHERE e.recipient_account = d.account_id \
              AND e.recipient_device = d.device_id) AS pending \
             FROM devices d WHERE d.account_id = $1 ORDER BY d.device_id",
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
            devices.push(DeviceExport {
                device_id: device,
                created_day: get(&row, "created_day")?,
                last_seen_day: get(&row, "last_seen_day")?,
                identity: get(&row, "identity")?,
                pending_envelopes: u64_of(get(&row, "pending")?)?,
                prekeys: counts(&mut tx, address).await?,
                key_packages: key_package_counts(&mut tx, address).await?,
            });
        }
        let reports_against = sqlx::query(&format!(
            "SELECT {REPORT_COLUMNS} FROM reports WHERE sender_account = $1 ORDER BY id"
        ))
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
        .iter()
        .map(report_of)
        .collect::<Result<Vec<_>>>()?;
        let reports_filed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM reports WHERE reporter_account = $1")
                .bind(account_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let device_list =
            sqlx::query("SELECT version, signed_list FROM device_lists WHERE account = $1")
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
             FROM link_mailboxes WHERE hello_account = $1 ORDER BY expires_at_ms",
        )
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?
        .iter()
        .map(|row| {
            let step = if get::<bool>(row, "finish")? {
                LinkSlot::Finish
            } else if get::<bool>(row, "reply")? {
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
        self.pool.close().await;
    }
}
