//! The local store: one SQLite file under the home directory.
//!
//! Secret material (identity, prekeys, sessions, bearer token, message text
//! and franking keys) is sealed with [`missive_crypto::seal`] under a
//! [`StorageKey`] that lives in `storage.key` beside the database (0600), or
//! is derived with Argon2id from `MISSIVE_PASSPHRASE` (then nothing secret is
//! on disk in the clear). The schema is versioned with `PRAGMA user_version`
//! and migrated forward on open.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use missive_crypto::{PublicIdentity, Session, StorageKey};
use rand::RngCore;
use rand::rngs::OsRng;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// File name of the database inside the home directory.
pub const DB_FILE: &str = "missive.db";
/// File name of the storage key inside the home directory.
pub const KEY_FILE: &str = "storage.key";
/// File name of the Argon2id salt used with `MISSIVE_PASSPHRASE`.
pub const SALT_FILE: &str = "passphrase.salt";
/// Environment variable holding the optional passphrase.
pub const PASSPHRASE_ENV: &str = "MISSIVE_PASSPHRASE";

const KEY_CHECK: &[u8] = b"missive storage key check v1";

/// Ordered migrations; `user_version` = number applied.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE prekeys (
    kind INTEGER NOT NULL,
    id INTEGER NOT NULL,
    secret BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE sessions (
    username TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    registration_id INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (username, device_id)
);
CREATE TABLE contacts (
    username TEXT PRIMARY KEY,
    identity BLOB NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    changed_identity BLOB,
    added_at_ms INTEGER NOT NULL
);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id BLOB NOT NULL,
    contact TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    server_ts_ms INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_by_contact ON messages (contact, seq);
CREATE INDEX messages_by_id ON messages (message_id);
CREATE TABLE processed (
    sender TEXT NOT NULL,
    sender_device INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    processed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sender, sender_device, message_id)
);
"#];

/// Kinds of private prekeys kept locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrekeyKind {
    /// Signed X25519 prekey.
    Signed = 1,
    /// Last-resort ML-KEM prekey.
    KemLastResort = 2,
    /// One-time X25519 prekey.
    OneTime = 3,
    /// One-time ML-KEM prekey.
    KemOneTime = 4,
}

/// A contact as stored.
#[derive(Clone, Debug)]
pub struct Contact {
    /// Username.
    pub username: String,
    /// The pinned identity.
    pub identity: PublicIdentity,
    /// Whether the user compared safety numbers for the pinned identity.
    pub verified: bool,
    /// A different identity seen since pinning, awaiting `missive trust`.
    pub changed_identity: Option<PublicIdentity>,
}

/// A session row.
pub struct SessionRow {
    /// Peer device.
    pub device_id: u32,
    /// Registration id the peer device announced (0 when unknown).
    pub registration_id: u32,
    /// The ratchet state.
    pub session: Session,
}

/// The sealed part of a history row.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SealedMessage {
    /// Text.
    pub text: String,
    /// Franking key, hex (incoming only).
    #[serde(default)]
    pub franking_key: String,
    /// Franking commitment, hex.
    #[serde(default)]
    pub commitment: String,
    /// Server franking tag, hex (incoming only).
    #[serde(default)]
    pub tag: String,
    /// Sender device (incoming only).
    #[serde(default)]
    pub sender_device: u32,
}

impl Drop for SealedMessage {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.text.zeroize();
        self.franking_key.zeroize();
    }
}

/// One history entry, decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Local sequence number (order of arrival).
    pub seq: i64,
    /// Sender's message id, 16 bytes.
    pub message_id: Vec<u8>,
    /// The other party.
    pub contact: String,
    /// Sent by us.
    pub outgoing: bool,
    /// Text.
    pub text: String,
    /// Sender's clock, ms since the epoch.
    pub sent_at_ms: u64,
    /// Server's acceptance time, ms since the epoch (0 if unknown).
    pub server_ts_ms: u64,
}

/// Everything needed to report an incoming message.
pub struct ReportMaterial {
    /// Sender.
    pub sender: String,
    /// Server timestamp.
    pub server_ts_ms: u64,
    /// Message id.
    pub message_id: Vec<u8>,
    /// Sealed content.
    pub sealed: SealedMessage,
}

/// The local store.
pub struct Store {
    conn: Connection,
    key: StorageKey,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Current time, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Creates `dir` (and parents) with mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| ClientError::io(format!("cannot create {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| ClientError::io(format!("cannot restrict {}", dir.display()), e))
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ClientError::io(format!("cannot create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ClientError::io(format!("cannot write {}", path.display()), e))
}

/// Where the storage key comes from.
pub enum KeySource {
    /// A random key in `HOME/storage.key` (0600).
    KeyFile,
    /// Argon2id of a passphrase with a random salt in `HOME/passphrase.salt`.
    Passphrase(Zeroizing<String>),
}

impl KeySource {
    /// `Passphrase` when `MISSIVE_PASSPHRASE` is set, else `KeyFile`.
    pub fn from_env() -> Self {
        match std::env::var(PASSPHRASE_ENV) {
            Ok(p) => KeySource::Passphrase(Zeroizing::new(p)),
            Err(_) => KeySource::KeyFile,
        }
    }
}

/// Loads or creates the storage key for `home`.
fn storage_key(home: &Path, fresh: bool, source: &KeySource) -> Result<(StorageKey, PathBuf)> {
    if let KeySource::Passphrase(pass) = source {
        let salt_path = home.join(SALT_FILE);
        if fresh && !salt_path.exists() {
            let mut salt = [0u8; 16];
            OsRng.fill_bytes(&mut salt);
            write_new_private(&salt_path, &salt)?;
        }
        let salt = fs::read(&salt_path)
            .map_err(|e| ClientError::io(format!("cannot read {}", salt_path.display()), e))?;
        let mut out = Zeroizing::new([0u8; 32]);
        argon2::Argon2::default()
            .hash_password_into(pass.as_bytes(), &salt, out.as_mut())
            .map_err(|e| ClientError::Crypto(format!("passphrase key derivation: {e}")))?;
        return Ok((StorageKey::from_bytes(*out), salt_path));
    }
    let key_path = home.join(KEY_FILE);
    if !key_path.exists() && home.join(SALT_FILE).exists() {
        return Err(ClientError::PassphraseRequired(home.to_path_buf()));
    }
    if fresh && !key_path.exists() {
        let key = StorageKey::generate(&mut OsRng);
        write_new_private(&key_path, key.as_bytes())?;
    }
    let bytes = Zeroizing::new(
        fs::read(&key_path)
            .map_err(|e| ClientError::io(format!("cannot read {}", key_path.display()), e))?,
    );
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| ClientError::WrongKey(key_path.clone()))?;
    Ok((StorageKey::from_bytes(arr), key_path))
}

impl Store {
    /// Whether `home` holds a store.
    pub fn exists(home: &Path) -> bool {
        home.join(DB_FILE).exists()
    }

    /// Opens the store in `home`, creating it (and its key) if `create`,
    /// with the key source named by the environment.
    pub fn open(home: &Path, create: bool) -> Result<Self> {
        Self::open_with(home, create, &KeySource::from_env())
    }

    /// Opens the store in `home` with an explicit key source.
    pub fn open_with(home: &Path, create: bool, source: &KeySource) -> Result<Self> {
        let path = home.join(DB_FILE);
        let exists = path.exists();
        if !exists && !create {
            return Err(ClientError::NotRegistered(home.to_path_buf()));
        }
        if !exists {
            ensure_private_dir(home)?;
        }
        let (key, key_path) = storage_key(home, !exists, source)?;
        let conn = Connection::open(&path).map_err(|e| ClientError::store(&path, e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| ClientError::io(format!("cannot restrict {}", path.display()), e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| ClientError::store(&path, e))?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
            .map_err(|e| ClientError::store(&path, e))?;
        let mut store = Store { conn, key, path };
        store.migrate()?;
        store.check_key(&key_path)?;
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::store(&self.path, e)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(self.err(format!(
                "schema version {version} is newer than this missive understands ({}); upgrade missive",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let path = self.path.clone();
            let tx = self
                .conn
                .transaction()
                .map_err(|e| ClientError::store(&path, e))?;
            tx.execute_batch(sql)
                .and_then(|()| tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)))
                .and_then(|()| tx.commit())
                .map_err(|e| ClientError::store(&path, e))?;
        }
        Ok(())
    }

    fn check_key(&mut self, key_path: &Path) -> Result<()> {
        match self.get_meta("key_check")? {
            Some(sealed) => missive_crypto::open(&self.key, &sealed, KEY_CHECK)
                .map(|_| ())
                .map_err(|_| ClientError::WrongKey(key_path.to_path_buf())),
            None => {
                let sealed = missive_crypto::seal(&mut OsRng, &self.key, KEY_CHECK, KEY_CHECK);
                self.set_meta("key_check", &sealed)
            }
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- meta ---------------------------------------------------------

    /// Reads a meta value.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Writes a meta value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        set_meta_on(&self.conn, key, value).map_err(|e| self.err(e))
    }

    /// Reads a meta value as text.
    pub fn get_meta_str(&self, key: &str) -> Result<Option<String>> {
        Ok(self.get_meta(key)?.and_then(|v| String::from_utf8(v).ok()))
    }

    /// Reads a meta value as an integer.
    pub fn get_meta_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.get_meta_str(key)?.and_then(|s| s.parse().ok()))
    }

    /// Writes an integer meta value.
    pub fn set_meta_u64(&self, key: &str, v: u64) -> Result<()> {
        self.set_meta(key, v.to_string().as_bytes())
    }

    /// Reads and opens a sealed meta value.
    pub fn get_secret(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match self.get_meta(key)? {
            None => Ok(None),
            Some(sealed) => missive_crypto::open(&self.key, &sealed, key.as_bytes())
                .map(Some)
                .map_err(|e| self.err(format!("sealed value {key} does not open: {e}"))),
        }
    }

    /// Seals and writes a meta value.
    pub fn set_secret(&self, key: &str, plaintext: &[u8]) -> Result<()> {
        let sealed = missive_crypto::seal(&mut OsRng, &self.key, plaintext, key.as_bytes());
        self.set_meta(key, &sealed)
    }

    /// Deletes a meta value.
    pub fn delete_meta(&self, key: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Returns the next id of a counter and advances it by `n`.
    pub fn take_ids(&self, counter: &str, n: u32) -> Result<u32> {
        let first = self
            .get_meta_u64(counter)?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1);
        let next = first
            .checked_add(n)
            .ok_or_else(|| self.err("prekey ids exhausted"))?;
        self.set_meta_u64(counter, u64::from(next))?;
        Ok(first)
    }

    // ---- prekeys ------------------------------------------------------

    fn prekey_ad(kind: PrekeyKind, id: u32) -> Vec<u8> {
        format!("prekey/{}/{id}", kind as i64).into_bytes()
    }

    /// Stores a private prekey.
    pub fn put_prekey(&self, kind: PrekeyKind, id: u32, secret: &[u8]) -> Result<()> {
        let sealed =
            missive_crypto::seal(&mut OsRng, &self.key, secret, &Self::prekey_ad(kind, id));
        self.conn
            .execute(
                "INSERT OR REPLACE INTO prekeys (kind, id, secret, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![kind as i64, id, sealed, to_i64(now_ms())],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Loads a private prekey.
    pub fn get_prekey(&self, kind: PrekeyKind, id: u32) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT secret FROM prekeys WHERE kind = ?1 AND id = ?2",
                params![kind as i64, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match sealed {
            None => Ok(None),
            Some(s) => missive_crypto::open(&self.key, &s, &Self::prekey_ad(kind, id))
                .map(Some)
                .map_err(|e| self.err(format!("prekey does not open: {e}"))),
        }
    }

    /// Deletes replaced signed prekeys older than `cutoff_ms`, except `keep`.
    pub fn prune_signed(&self, kind: PrekeyKind, keep: u32, cutoff_ms: u64) -> Result<()> {
        self.conn
            .execute(
                "DELETE FROM prekeys WHERE kind = ?1 AND id != ?2 AND created_at_ms < ?3",
                params![kind as i64, keep, to_i64(cutoff_ms)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    // ---- contacts -----------------------------------------------------

    /// Loads a contact.
    pub fn contact(&self, username: &str) -> Result<Option<Contact>> {
        let row: Option<(Vec<u8>, bool, Option<Vec<u8>>)> = self
            .conn
            .query_row(
                "SELECT identity, verified, changed_identity FROM contacts WHERE username = ?1",
                [username],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((identity, verified, changed)) = row else {
            return Ok(None);
        };
        let identity = PublicIdentity::from_bytes(&identity)
            .map_err(|e| self.err(format!("contact key: {e}")))?;
        let changed_identity = match changed {
            Some(b) => Some(
                PublicIdentity::from_bytes(&b)
                    .map_err(|e| self.err(format!("contact key: {e}")))?,
            ),
            None => None,
        };
        Ok(Some(Contact {
            username: username.to_owned(),
            identity,
            verified,
            changed_identity,
        }))
    }

    /// All contacts, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let names: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT username FROM contacts ORDER BY username")
                .map_err(|e| self.err(e))?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        let mut out = Vec::new();
        for n in names {
            if let Some(c) = self.contact(&n)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Pins `identity` for a new contact (no-op if the contact exists).
    pub fn pin_contact(&self, username: &str, identity: &PublicIdentity) -> Result<()> {
        pin_contact_on(&self.conn, username, identity).map_err(|e| self.err(e))
    }

    /// Records a changed identity awaiting `trust`.
    pub fn mark_identity_changed(&self, username: &str, identity: &PublicIdentity) -> Result<()> {
        mark_changed_on(&self.conn, username, identity).map_err(|e| self.err(e))
    }

    /// Sets the verified flag.
    pub fn set_verified(&self, username: &str, verified: bool) -> Result<()> {
        self.conn
            .execute(
                "UPDATE contacts SET verified = ?2 WHERE username = ?1",
                params![username, verified],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Accepts the pending changed identity: pins it, clears the verified
    /// flag and drops sessions with any other identity.
    pub fn accept_changed_identity(
        &mut self,
        username: &str,
        identity: &PublicIdentity,
    ) -> Result<()> {
        let keep: Vec<u32> = self
            .sessions(username)?
            .into_iter()
            .filter(|s| s.session.remote_identity() == identity)
            .map(|s| s.device_id)
            .collect();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| ClientError::store(&path, e))?;
        let run = || -> rusqlite::Result<()> {
            tx.execute(
                "UPDATE contacts SET identity = ?2, verified = 0, changed_identity = NULL WHERE username = ?1",
                params![username, identity.to_bytes()],
            )?;
            let mut stmt = tx.prepare("SELECT device_id FROM sessions WHERE username = ?1")?;
            let devices: Vec<u32> = stmt
                .query_map([username], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            drop(stmt);
            for d in devices.into_iter().filter(|d| !keep.contains(d)) {
                tx.execute(
                    "DELETE FROM sessions WHERE username = ?1 AND device_id = ?2",
                    params![username, d],
                )?;
            }
            Ok(())
        };
        run().map_err(|e| ClientError::store(&path, e))?;
        tx.commit().map_err(|e| ClientError::store(&path, e))
    }

    // ---- sessions -----------------------------------------------------

    /// All sessions with `username`'s devices.
    pub fn sessions(&self, username: &str) -> Result<Vec<SessionRow>> {
        let rows: Vec<(u32, u32, Vec<u8>)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT device_id, registration_id, state FROM sessions WHERE username = ?1 ORDER BY device_id",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([username], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        rows.into_iter()
            .map(|(device_id, registration_id, state)| {
                let session = Session::unseal(&self.key, &state)
                    .map_err(|e| self.err(format!("session does not open: {e}")))?;
                Ok(SessionRow {
                    device_id,
                    registration_id,
                    session,
                })
            })
            .collect()
    }

    /// One session.
    pub fn session(&self, username: &str, device_id: u32) -> Result<Option<SessionRow>> {
        Ok(self
            .sessions(username)?
            .into_iter()
            .find(|s| s.device_id == device_id))
    }

    /// Writes sessions (upsert) and deletes the sessions of `remove` devices, atomically.
    pub fn save_sessions(
        &mut self,
        username: &str,
        rows: &[SessionRow],
        remove: &[u32],
    ) -> Result<()> {
        let sealed: Vec<(u32, u32, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                (
                    r.device_id,
                    r.registration_id,
                    r.session.seal(&mut OsRng, &self.key),
                )
            })
            .collect();
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| ClientError::store(&path, e))?;
        for (d, reg, state) in &sealed {
            upsert_session_on(&tx, username, *d, *reg, state)
                .map_err(|e| ClientError::store(&path, e))?;
        }
        for d in remove {
            tx.execute(
                "DELETE FROM sessions WHERE username = ?1 AND device_id = ?2",
                params![username, d],
            )
            .map_err(|e| ClientError::store(&path, e))?;
        }
        tx.commit().map_err(|e| ClientError::store(&path, e))
    }

    // ---- messages -----------------------------------------------------

    fn message_ad(message_id: &[u8], contact: &str) -> Vec<u8> {
        let mut ad = b"message/".to_vec();
        ad.extend_from_slice(message_id);
        ad.extend_from_slice(contact.as_bytes());
        ad
    }

    /// Stores an outgoing message (already sent).
    pub fn add_outgoing(
        &self,
        contact: &str,
        message_id: &[u8],
        sealed: &SealedMessage,
        sent_at_ms: u64,
        server_ts_ms: u64,
    ) -> Result<()> {
        let blob = self.seal_message(contact, message_id, sealed)?;
        self.conn
            .execute(
                "INSERT INTO messages (message_id, contact, outgoing, sealed, sent_at_ms, server_ts_ms, shown) VALUES (?1, ?2, 1, ?3, ?4, ?5, 1)",
                params![message_id, contact, blob, to_i64(sent_at_ms), to_i64(server_ts_ms)],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn seal_message(
        &self,
        contact: &str,
        message_id: &[u8],
        sealed: &SealedMessage,
    ) -> Result<Vec<u8>> {
        let json = Zeroizing::new(serde_json::to_vec(sealed).map_err(|e| self.err(e))?);
        Ok(missive_crypto::seal(
            &mut OsRng,
            &self.key,
            &json,
            &Self::message_ad(message_id, contact),
        ))
    }

    fn open_message(&self, contact: &str, message_id: &[u8], blob: &[u8]) -> Result<SealedMessage> {
        let json = missive_crypto::open(&self.key, blob, &Self::message_ad(message_id, contact))
            .map_err(|e| self.err(format!("message does not open: {e}")))?;
        serde_json::from_slice(&json).map_err(|e| self.err(e))
    }

    /// Whether an envelope was already processed.
    pub fn is_processed(
        &self,
        sender: &str,
        sender_device: u32,
        message_id: &[u8],
    ) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM processed WHERE sender = ?1 AND sender_device = ?2 AND message_id = ?3",
                params![sender, sender_device, message_id],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err(e))
    }

    /// Commits everything a received envelope changes, in one transaction:
    /// the processed id, and (when `accepted`) the session, the contact pin
    /// or identity-change mark, the history row, and the consumed one-time
    /// prekeys.
    pub fn commit_incoming(&mut self, inc: &IncomingCommit<'_>) -> Result<()> {
        let prepared = match &inc.accepted {
            Some(a) => Some((
                a.session.session.seal(&mut OsRng, &self.key),
                self.seal_message(inc.sender, inc.message_id, a.sealed)?,
            )),
            None => None,
        };
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| ClientError::store(&path, e))?;
        let run = |tx: &Transaction<'_>| -> rusqlite::Result<()> {
            tx.execute(
                "INSERT OR IGNORE INTO processed (sender, sender_device, message_id, processed_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![inc.sender, inc.sender_device, inc.message_id, to_i64(now_ms())],
            )?;
            if let (Some(a), Some((state, blob))) = (&inc.accepted, &prepared) {
                upsert_session_on(
                    tx,
                    inc.sender,
                    a.session.device_id,
                    a.session.registration_id,
                    state,
                )?;
                let identity = a.session.session.remote_identity();
                let pinned: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT identity FROM contacts WHERE username = ?1",
                        [inc.sender],
                        |r| r.get(0),
                    )
                    .optional()?;
                match pinned {
                    None => pin_contact_on(tx, inc.sender, identity)?,
                    Some(p) if p != identity.to_bytes() => {
                        mark_changed_on(tx, inc.sender, identity)?
                    }
                    Some(_) => {}
                }
                tx.execute(
                    "INSERT INTO messages (message_id, contact, outgoing, sealed, sent_at_ms, server_ts_ms, shown) VALUES (?1, ?2, 0, ?3, ?4, ?5, 0)",
                    params![inc.message_id, inc.sender, blob, to_i64(a.sent_at_ms), to_i64(a.server_ts_ms)],
                )?;
                for (kind, id) in &a.consumed_prekeys {
                    tx.execute(
                        "DELETE FROM prekeys WHERE kind = ?1 AND id = ?2",
                        params![*kind as i64, id],
                    )?;
                }
            }
            Ok(())
        };
        run(&tx).map_err(|e| ClientError::store(&path, e))?;
        tx.commit().map_err(|e| ClientError::store(&path, e))
    }

    fn entries(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<HistoryEntry>> {
        type Row = (i64, Vec<u8>, String, bool, Vec<u8>, i64, i64);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(args, |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        rows.into_iter()
            .map(|(seq, message_id, contact, outgoing, blob, sent, server)| {
                let sealed = self.open_message(&contact, &message_id, &blob)?;
                Ok(HistoryEntry {
                    seq,
                    message_id,
                    contact,
                    outgoing,
                    text: sealed.text.clone(),
                    sent_at_ms: to_u64(sent),
                    server_ts_ms: to_u64(server),
                })
            })
            .collect()
    }

    /// The conversation with `contact`, oldest first.
    pub fn history(&self, contact: &str) -> Result<Vec<HistoryEntry>> {
        self.entries(
            "SELECT seq, message_id, contact, outgoing, sealed, sent_at_ms, server_ts_ms FROM messages WHERE contact = ?1 ORDER BY seq",
            &[&contact],
        )
    }

    /// Incoming messages not yet shown to the user, in order of arrival.
    pub fn unshown(&self) -> Result<Vec<HistoryEntry>> {
        self.entries(
            "SELECT seq, message_id, contact, outgoing, sealed, sent_at_ms, server_ts_ms FROM messages WHERE shown = 0 ORDER BY seq",
            &[],
        )
    }

    /// Marks history rows as shown.
    pub fn mark_shown(&self, seqs: &[i64]) -> Result<()> {
        for s in seqs {
            self.conn
                .execute("UPDATE messages SET shown = 1 WHERE seq = ?1", [s])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// What is needed to report the incoming message `message_id`.
    pub fn report_material(&self, message_id: &[u8]) -> Result<Option<ReportMaterial>> {
        let row: Option<(String, Vec<u8>, i64)> = self
            .conn
            .query_row(
                "SELECT contact, sealed, server_ts_ms FROM messages WHERE message_id = ?1 AND outgoing = 0 ORDER BY seq LIMIT 1",
                [message_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((sender, blob, ts)) = row else {
            return Ok(None);
        };
        let sealed = self.open_message(&sender, message_id, &blob)?;
        Ok(Some(ReportMaterial {
            sender,
            server_ts_ms: to_u64(ts),
            message_id: message_id.to_vec(),
            sealed,
        }))
    }

    /// Counts rows of a table (tests and diagnostics).
    pub fn count(&self, table: &str) -> Result<u64> {
        let sql = match table {
            "messages" | "processed" | "sessions" | "contacts" | "prekeys" => {
                format!("SELECT COUNT(*) FROM {table}")
            }
            _ => return Err(self.err(format!("unknown table {table}"))),
        };
        self.conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .map(to_u64)
            .map_err(|e| self.err(e))
    }
}

/// What [`Store::commit_incoming`] writes for a message that was accepted.
pub struct AcceptedIncoming<'a> {
    /// The advanced (or new) session.
    pub session: &'a SessionRow,
    /// Sealed history content.
    pub sealed: &'a SealedMessage,
    /// Sender's clock.
    pub sent_at_ms: u64,
    /// Server time.
    pub server_ts_ms: u64,
    /// One-time prekeys to delete.
    pub consumed_prekeys: Vec<(PrekeyKind, u32)>,
}

/// Input of [`Store::commit_incoming`].
pub struct IncomingCommit<'a> {
    /// Sender username.
    pub sender: &'a str,
    /// Sender device.
    pub sender_device: u32,
    /// Sender's message id.
    pub message_id: &'a [u8],
    /// `None` for a dropped envelope (only the processed id is recorded).
    pub accepted: Option<AcceptedIncoming<'a>>,
}

fn set_meta_on(conn: &Connection, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
}

fn pin_contact_on(
    conn: &Connection,
    username: &str,
    identity: &PublicIdentity,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO contacts (username, identity, verified, added_at_ms) VALUES (?1, ?2, 0, ?3)",
        params![username, identity.to_bytes(), to_i64(now_ms())],
    )
    .map(|_| ())
}

fn mark_changed_on(
    conn: &Connection,
    username: &str,
    identity: &PublicIdentity,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE contacts SET changed_identity = ?2 WHERE username = ?1",
        params![username, identity.to_bytes()],
    )
    .map(|_| ())
}

fn upsert_session_on(
    conn: &Connection,
    username: &str,
    device_id: u32,
    registration_id: u32,
    state: &[u8],
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO sessions (username, device_id, registration_id, state) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (username, device_id) DO UPDATE SET registration_id = excluded.registration_id, state = excluded.state",
        params![username, device_id, registration_id, state],
    )
    .map(|_| ())
}

impl Store {
    /// Starts a batch of writes (one fsync at [`Store::commit`]).
    pub fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))
    }

    /// Commits a batch started with [`Store::begin`].
    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))
    }
}
