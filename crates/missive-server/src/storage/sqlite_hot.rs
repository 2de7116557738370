//! The SQLite message hot path — storing sends and deleting acknowledged
//! envelopes — on one dedicated thread with its own rusqlite connection.
//!
//! Through sqlx every statement is a hand-off to a connection worker thread
//! and back (two thread wake-ups each). Here a whole group commit is one
//! hand-off: the thread takes every queued job (send batches from the send
//! writer and acknowledgement calls), runs them in one `BEGIN IMMEDIATE`
//! transaction with cached prepared statements, commits with
//! `synchronous=FULL`, and only then answers each job. A failed transaction
//! fails every job in it, and nothing of it is stored.
//!
//! The connection opens the same database file as the sqlx pool (after its
//! migrations ran) with the same pragmas; SQLite's file locking and the busy
//! timeout order it against the pool's other writers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::reserve::Reserve;
use super::{DeviceAddress, Result, SendItem, SendOutcome, StorageError};

/// Jobs queued for the hot-path thread at most (senders wait beyond).
const QUEUE: usize = 4096;
/// Jobs sharing one transaction at most.
const BATCH_MAX: usize = 1024;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 16;
/// Envelopes deleted per transaction while the disk is full (each followed
/// by a WAL checkpoint, so the WAL stays within the reserve).
const LOW_SPACE_ACK_CHUNK: usize = 16;
/// How long a write waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const INSERT_SINGLE: &str = "INSERT INTO envelopes (recipient_account, recipient_device, sender, \
     sender_device, kind, content, message_id, server_timestamp_ms, franking_commitment, franking_tag, \
     expires_at_ms) \
     SELECT d.account_id, d.device_id, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?12 FROM devices d \
     WHERE d.account_id = ?9 AND d.device_id = ?10 AND d.pending_envelopes < ?11 \
     ON CONFLICT DO NOTHING";

const CHECK: &str = "SELECT d.pending_envelopes, \
     (SELECT e.server_timestamp_ms FROM envelopes e WHERE e.recipient_account = d.account_id \
      AND e.recipient_device = d.device_id AND e.sender = ?1 AND e.sender_device = ?2 \
      AND e.message_id = ?3) \
     FROM devices d WHERE d.account_id = ?4 AND d.device_id = ?5";

const INSERT: &str = "INSERT INTO envelopes (recipient_account, recipient_device, sender, \
     sender_device, kind, content, message_id, server_timestamp_ms, franking_commitment, franking_tag, \
     expires_at_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const DELETE: &str = "DELETE FROM envelopes WHERE recipient_account = ?1 AND recipient_device = ?2 \
     AND id = ?3";

/// Outcomes of a send batch, with the first envelope id of each stored item.
pub(super) type StoreAnswer = Result<Vec<(SendOutcome, Option<u64>)>>;

/// One unit of work for the thread.
#[derive(Debug)]
pub(super) enum Job {
    /// A group-committed batch of sends.
    Store {
        items: Arc<Vec<SendItem>>,
        reply: oneshot::Sender<StoreAnswer>,
    },
    /// One acknowledgement call.
    Ack {
        device: DeviceAddress,
        ids: Vec<u64>,
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// What the thread receives.
#[derive(Debug)]
pub(super) enum Message {
    /// Work for the next transaction.
    Job(Job),
    /// Finish what was queued before, close the connection (the last one to
    /// close checkpoints the WAL away) and answer.
    Close(oneshot::Sender<()>),
}

/// What a job produced inside the transaction.
enum Done {
    Store(Vec<(SendOutcome, Option<u64>)>),
    Ack(u64),
}

/// The one place rusqlite errors become [`StorageError`]s (mirrors the sqlx
/// mapping of the pool).
fn map_err(error: rusqlite::Error) -> StorageError {
    match error.sqlite_error() {
        Some(e) if e.extended_code == 2067 || e.extended_code == 1555 => StorageError::Conflict,
        Some(e) if e.extended_code == 787 => StorageError::NotFound,
        Some(e) if e.code == ErrorCode::DiskFull => StorageError::Full,
        Some(e)
            if matches!(
                e.code,
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::ReadOnly
            ) =>
        {
            StorageError::Unavailable(error.to_string())
        }
        _ => StorageError::Backend(error.to_string()),
    }
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Opens the connection and starts the thread. The thread ends when every
/// sender is dropped (the store is gone).
pub(super) fn start(path: &Path, reserve: Arc<Reserve>) -> Result<mpsc::Sender<Message>> {
    let connection = open(path).map_err(map_err)?;
    let (jobs, queue) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("sqlite-hot-path".into())
        .spawn(move || run(connection, queue, &reserve))
        .map_err(|e| StorageError::Backend(format!("cannot start the SQLite thread: {e}")))?;
    Ok(jobs)
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    // The pool set WAL (persistent in the file); the others are per
    // connection and must match the pool's.
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not WAL"
        )));
    }
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.pragma_update(None, "secure_delete", "ON")?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(connection)
}

fn run(mut connection: Connection, mut queue: mpsc::Receiver<Message>, reserve: &Reserve) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut closed = None;
    while closed.is_none() {
        let Some(first) = queue.blocking_recv() else {
            return;
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job(job) => batch.push(job),
                Message::Close(reply) => {
                    closed = Some(reply);
                    break;
                }
            }
            if batch.len() < BATCH_MAX {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit(&mut connection, &mut batch, reserve);
        }
    }
    drop(connection);
    if let Some(reply) = closed {
        let _ = reply.send(());
    }
}

fn is_full(error: &rusqlite::Error) -> bool {
    error
        .sqlite_error()
        .is_some_and(|e| e.code == ErrorCode::DiskFull)
}

/// Runs a batch and answers every job in it. On a full disk (or while the
/// reserve is spent) sends fail with [`StorageError::Full`] and
/// acknowledgements run on their own, in small transactions.
fn commit(connection: &mut Connection, batch: &mut Vec<Job>, reserve: &Reserve) {
    if reserve.low() {
        low_space(connection, batch, reserve);
        return;
    }
    match transaction(connection, batch) {
        Ok(done) => {
            for (job, done) in batch.drain(..).zip(done) {
                match (job, done) {
                    (Job::Store { items, reply }, Done::Store(outcomes)) => {
                        // Ours is dropped first: the caller takes the items back.
                        drop(items);
                        let _ = reply.send(Ok(outcomes));
                    }
                    (Job::Ack { reply, .. }, Done::Ack(count)) => {
                        let _ = reply.send(Ok(count));
                    }
                    // `transaction` answers each job with its own kind.
                    (job, _) => fail(job, &StorageError::Backend("mismatched answer".into())),
                }
            }
        }
        Err(error) if is_full(&error) => {
            reserve.release();
            low_space(connection, batch, reserve);
        }
        Err(error) => {
            let error = map_err(error);
            for job in batch.drain(..) {
                fail(job, &error);
            }
        }
    }
}

/// Low-space mode: refuses sends, deletes acknowledged envelopes a few per
/// transaction with a WAL checkpoint after each, then gives free pages back
/// to the file system and tries to restore the reserve.
fn low_space(connection: &mut Connection, batch: &mut Vec<Job>, reserve: &Reserve) {
    let mut acknowledged = false;
    for job in batch.drain(..) {
        let Job::Ack { device, ids, reply } = job else {
            fail(job, &StorageError::Full);
            continue;
        };
        let mut deleted = 0;
        let mut outcome = Ok(());
        for chunk in ids.chunks(LOW_SPACE_ACK_CHUNK) {
            let done = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .and_then(|tx| {
                    let n = acknowledge(&tx, device, chunk)?;
                    tx.commit()?;
                    Ok(n)
                });
            match done {
                Ok(n) => deleted += n,
                Err(error) => {
                    outcome = Err(map_err(error));
                    break;
                }
            }
            checkpoint(connection);
        }
        acknowledged |= deleted > 0;
        let _ = reply.send(outcome.map(|()| deleted));
    }
    if acknowledged {
        if let Err(error) = connection.execute_batch("PRAGMA incremental_vacuum") {
            tracing::debug!(%error, "incremental vacuum deferred");
        }
        checkpoint(connection);
        reserve.restore();
    }
}

/// Moves the WAL into the database and truncates it; busy readers just
/// defer it.
fn checkpoint(connection: &Connection) {
    if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::debug!(%error, "WAL checkpoint deferred");
    }
}

fn fail(job: Job, error: &StorageError) {
    match job {
        Job::Store { items, reply } => {
            drop(items);
            let _ = reply.send(Err(error.clone()));
        }
        Job::Ack { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// Runs every job in one durable transaction; on error nothing is stored
/// (the transaction rolls back when dropped).
fn transaction(connection: &mut Connection, batch: &[Job]) -> rusqlite::Result<Vec<Done>> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done = Vec::with_capacity(batch.len());
    for job in batch {
        done.push(match job {
            Job::Store { items, .. } => Done::Store(store(&tx, items)?),
            Job::Ack { device, ids, .. } => Done::Ack(acknowledge(&tx, *device, ids)?),
        });
    }
    tx.commit()?;
    Ok(done)
}

fn acknowledge(tx: &Connection, device: DeviceAddress, ids: &[u64]) -> rusqlite::Result<u64> {
    let mut delete = tx.prepare_cached(DELETE)?;
    let mut deleted = 0u64;
    for id in ids {
        // Ids beyond i64 match nothing.
        let Ok(id) = i64::try_from(*id) else { continue };
        deleted += delete.execute(params![device.account, device.device, id])? as u64;
    }
    Ok(deleted)
}

fn store(tx: &Connection, items: &[SendItem]) -> rusqlite::Result<Vec<(SendOutcome, Option<u64>)>> {
    let mut outcomes = Vec::with_capacity(items.len());
    'items: for item in items {
        // A single-device send (the common case) is one statement: insert
        // unless a duplicate, a full mailbox or a missing device; only when
        // nothing is inserted does the check below say why.
        if let [envelope] = item.envelopes.as_slice() {
            let inserted = tx.prepare_cached(INSERT_SINGLE)?.execute(params![
                item.sender,
                item.sender_device,
                envelope.kind,
                envelope.content,
                item.message_id,
                int(item.server_timestamp_ms),
                envelope.franking_commitment,
                envelope.franking_tag,
                item.recipient,
                envelope.recipient_device,
                item.mailbox_limit,
                int(item.expires_at_ms),
            ])?;
            if inserted == 1 {
                outcomes.push((
                    SendOutcome::Stored {
                        server_timestamp_ms: item.server_timestamp_ms,
                    },
                    u64::try_from(tx.last_insert_rowid()).ok(),
                ));
                continue 'items;
            }
        }
        // 1. Per envelope: the device exists, the message is not already
        //    stored (a retry answers the first timestamp), the mailbox has
        //    room (counter kept by triggers).
        let mut check = tx.prepare_cached(CHECK)?;
        for envelope in &item.envelopes {
            let mut rows = check.query(params![
                item.sender,
                item.sender_device,
                item.message_id,
                item.recipient,
                envelope.recipient_device,
            ])?;
            let Some(row) = rows.next()? else {
                outcomes.push((SendOutcome::RecipientGone, None));
                continue 'items;
            };
            let pending: i64 = row.get(0)?;
            let existing: Option<i64> = row.get(1)?;
            if let Some(ts) = existing {
                let server_timestamp_ms = u64::try_from(ts)
                    .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, ts))?;
                outcomes.push((
                    SendOutcome::Duplicate {
                        server_timestamp_ms,
                    },
                    None,
                ));
                continue 'items;
            }
            if pending >= i64::from(item.mailbox_limit) {
                outcomes.push((
                    SendOutcome::MailboxFull {
                        device: envelope.recipient_device,
                    },
                    None,
                ));
                continue 'items;
            }
        }
        // 2. Store them all. On this single writer ids are consecutive; if
        //    they ever were not, they are reported as unknown.
        let mut insert = tx.prepare_cached(INSERT)?;
        let mut first_id: Option<i64> = None;
        let mut consecutive = true;
        for (k, envelope) in item.envelopes.iter().enumerate() {
            insert.execute(params![
                item.recipient,
                envelope.recipient_device,
                item.sender,
                item.sender_device,
                envelope.kind,
                envelope.content,
                item.message_id,
                int(item.server_timestamp_ms),
                envelope.franking_commitment,
                envelope.franking_tag,
                int(item.expires_at_ms),
            ])?;
            let id = tx.last_insert_rowid();
            let first = *first_id.get_or_insert(id);
            consecutive &= i64::try_from(k).is_ok_and(|k| first + k == id);
        }
        outcomes.push((
            SendOutcome::Stored {
                server_timestamp_ms: item.server_timestamp_ms,
            },
            first_id
                .filter(|_| consecutive)
                .and_then(|id| u64::try_from(id).ok()),
        ));
    }
    Ok(outcomes)
}
