//! The server's franking keys: kept in a key file of their own (mode 0600,
//! `DATA_DIR/franking.keys` by default), never in the database they protect,
//! so a database backup cannot mint tags. Every tag names the key it was made
//! with; rotation adds a key and keeps the old ones for verification only.
//! The MAC is `missive_crypto::franking::server_tag`; the tag layout and the
//! MAC's fields are specified in docs/PROTOCOL.md, "Franking".
//!
//! Tag (44 bytes): `key_id` (u32, big-endian) ‖ `sender_account` (u64,
//! big-endian) ‖ `server_tag(key, commitment, "SENDER_ACCOUNT:SENDER",
//! "RECIPIENT_ACCOUNT:RECIPIENT", server_timestamp_ms, message_id)`, where
//! the account ids are the never-reused database ids in decimal. A 32-byte
//! tag is a tag from before key ids: the bare MAC over the usernames under
//! the key migrated out of the database (marked `legacy` in the file).
//!
//! The database records, per key id, only a check value
//! (`SHA-256("missive franking key check v1" ‖ key)`), so nodes sharing a
//! database detect a missing or different key file instead of minting tags
//! the others cannot verify.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use missive_crypto::franking::{self, ServerFrankingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::storage::{AccountId, Storage, StorageError};

/// The first line of a key file.
pub const FILE_HEADER: &str = "missive-franking-keys v1";
/// Name of the key file in the data directory.
pub const FILE_NAME: &str = "franking.keys";
/// Name under which the single pre-key-file franking key was stored in the
/// database (`server_secrets`); it is moved out and deleted at start.
pub const LEGACY_SECRET: &str = "franking-server-key-v1";
/// Length of a tag with a key id.
pub const TAG_LEN: usize = 4 + 8 + franking::COMMITMENT_LEN;
/// Length of a tag from before key ids.
pub const LEGACY_TAG_LEN: usize = franking::COMMITMENT_LEN;

/// Failures loading, creating or rotating the keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file cannot be read or written.
    #[error("cannot {action} the franking key file {path}: {source}")]
    Io {
        /// "read" / "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file's contents are not a key file.
    #[error("the franking key file {path} is malformed: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        why: String,
    },
    /// The database knows keys, but the file is missing.
    #[error(
        "the database was used with franking keys {ids} but {path} does not exist: restore it from \
         your backup or copy it from another node; or run `missive-server rotate-franking-key` to \
         start a new key (messages tagged with the lost keys can then no longer be reported)"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// The ids the database knows.
        ids: String,
    },
    /// The file's key differs from the one the database recorded.
    #[error(
        "franking key {id} in {path} is not the key {id} this database's other nodes use: copy the \
         key file from the node that created it"
    )]
    Different {
        /// The file.
        path: PathBuf,
        /// Key id.
        id: u32,
    },
    /// The store failed.
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// One key of the ring.
struct Entry {
    key: ServerFrankingKey,
    legacy: bool,
}

/// The keys a node tags and verifies with.
pub struct KeyRing {
    current: u32,
    keys: BTreeMap<u32, Entry>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A tag that verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The key id the tag was made with.
    pub key_id: u32,
    /// The sender's account id, bound by the tag; `None` for a tag from
    /// before key ids, which binds only the username.
    pub sender_account: Option<AccountId>,
}

/// Why a tag did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Neither 44 nor 32 bytes.
    #[error("the server franking tag must be {TAG_LEN} bytes")]
    Length,
    /// A key id this node does not hold.
    #[error(
        "the server franking tag names franking key {0}, which this server does not hold; the message cannot be verified"
    )]
    UnknownKey(u32),
    /// The MAC does not verify.
    #[error(
        "the server franking tag does not verify: the message was not delivered by this server as described"
    )]
    Mismatch,
}

fn field(account: AccountId, username: &str) -> String {
    format!("{account}:{username}")
}

/// The recipient field of a group message's tag: `"group:"` and the
/// lowercase hex of the group id (`missive_crypto::group::franking_recipient`).
pub fn group_field(group_id: &[u8]) -> String {
    missive_crypto::group::franking_recipient(group_id)
}

/// The check value the database keeps for a key.
pub fn check_value(key: &ServerFrankingKey) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(b"missive franking key check v1");
    hash.update(key.as_bytes());
    hash.finalize().to_vec()
}

impl KeyRing {
    /// A ring of one fresh key with id `id`.
    pub fn generate(id: u32) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(
            id,
            Entry {
                key: ServerFrankingKey::generate(&mut rand::rngs::OsRng),
                legacy: false,
            },
        );
        Self { current: id, keys }
    }

    /// The id new tags are made with.
    pub fn current_id(&self) -> u32 {
        self.current
    }

    /// Every key id, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Adds a fresh key, makes it current and keeps the others for
    /// verification only; returns its id.
    pub fn rotate(&mut self, at_least: u32) -> u32 {
        let id = self
            .keys
            .keys()
            .next_back()
            .map_or(1, |last| last.saturating_add(1))
            .max(at_least);
        self.keys.insert(
            id,
            Entry {
                key: ServerFrankingKey::generate(&mut rand::rngs::OsRng),
                legacy: false,
            },
        );
        self.current = id;
        id
    }

    /// Adds the key migrated out of the database as a retired key that also
    /// verifies tags from before key ids; returns its id.
    pub fn add_legacy(&mut self, key: ServerFrankingKey) -> u32 {
        if let Some((id, _)) = self
            .keys
            .iter()
            .find(|(_, e)| e.legacy && e.key.as_bytes() == key.as_bytes())
        {
            return *id;
        }
        let id = self
            .keys
            .keys()
            .next_back()
            .map_or(1, |last| last.saturating_add(1));
        self.keys.insert(id, Entry { key, legacy: true });
        id
    }

    /// `(id, check value)` of every key.
    pub fn checks(&self) -> Vec<(u32, Vec<u8>)> {
        self.keys
            .iter()
            .map(|(id, e)| (*id, check_value(&e.key)))
            .collect()
    }

    /// The tag for an accepted envelope.
    #[allow(clippy::too_many_arguments)]
    pub fn tag(
        &self,
        commitment: &[u8],
        sender_account: AccountId,
        sender: &str,
        recipient_account: AccountId,
        recipient: &str,
        server_timestamp_ms: u64,
        message_id: &[u8],
    ) -> Vec<u8> {
        self.make_tag(
            commitment,
            sender_account,
            sender,
            &field(recipient_account, recipient),
            server_timestamp_ms,
            message_id,
        )
    }

    /// `key_id ‖ sender_account ‖ MAC` under the current key, for the
    /// recipient field `recipient`.
    fn make_tag(
        &self,
        commitment: &[u8],
        sender_account: AccountId,
        sender: &str,
        recipient: &str,
        server_timestamp_ms: u64,
        message_id: &[u8],
    ) -> Vec<u8> {
        let mut tag = Vec::with_capacity(TAG_LEN);
        tag.extend_from_slice(&self.current.to_be_bytes());
        tag.extend_from_slice(&sender_account.to_be_bytes());
        if let Some(entry) = self.keys.get(&self.current) {
            tag.extend_from_slice(&franking::server_tag(
                &entry.key,
                commitment,
                &field(sender_account, sender),
                recipient,
                server_timestamp_ms,
                message_id,
            ));
        }
        tag
    }

    /// The tag for an accepted APPLICATION group message: as [`Self::tag`]
    /// with the recipient field replaced by [`group_field`]`(group_id)`.
    pub fn tag_group(
        &self,
        commitment: &[u8],
        sender_account: AccountId,
        sender: &str,
        group_id: &[u8],
        server_timestamp_ms: u64,
        message_id: &[u8],
    ) -> Vec<u8> {
        self.make_tag(
            commitment,
            sender_account,
            sender,
            &group_field(group_id),
            server_timestamp_ms,
            message_id,
        )
    }

    /// Verifies a reported tag of a group message from `sender` in
    /// `group_id`. Only tags with a key id: group tags never had another form.
    pub fn verify_group(
        &self,
        tag: &[u8],
        commitment: &[u8],
        sender: &str,
        group_id: &[u8],
        server_timestamp_ms: u64,
        message_id: &[u8],
    ) -> Result<Verified, TagError> {
        if tag.len() != TAG_LEN {
            return Err(TagError::Length);
        }
        let (id, rest) = tag.split_at(4);
        let (account, mac) = rest.split_at(8);
        let key_id = u32::from_be_bytes(id.try_into().map_err(|_| TagError::Length)?);
        let sender_account =
            AccountId::from_be_bytes(account.try_into().map_err(|_| TagError::Length)?);
        let entry = self.keys.get(&key_id).ok_or(TagError::UnknownKey(key_id))?;
        franking::verify_server_tag(
            &entry.key,
            commitment,
            &field(sender_account, sender),
            &group_field(group_id),
            server_timestamp_ms,
            message_id,
            mac,
        )
        .then_some(Verified {
            key_id,
            sender_account: Some(sender_account),
        })
        .ok_or(TagError::Mismatch)
    }

    /// Verifies a reported tag for a message from `sender` to the reporter.
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        tag: &[u8],
        commitment: &[u8],
        sender: &str,
        reporter_account: AccountId,
        reporter: &str,
        server_timestamp_ms: u64,
        message_id: &[u8],
    ) -> Result<Verified, TagError> {
        match tag.len() {
            TAG_LEN => {
                let (id, rest) = tag.split_at(4);
                let (account, mac) = rest.split_at(8);
                let key_id = u32::from_be_bytes(id.try_into().map_err(|_| TagError::Length)?);
                let sender_account =
                    AccountId::from_be_bytes(account.try_into().map_err(|_| TagError::Length)?);
                let entry = self.keys.get(&key_id).ok_or(TagError::UnknownKey(key_id))?;
                franking::verify_server_tag(
                    &entry.key,
                    commitment,
                    &field(sender_account, sender),
                    &field(reporter_account, reporter),
                    server_timestamp_ms,
                    message_id,
                    mac,
                )
                .then_some(Verified {
                    key_id,
                    sender_account: Some(sender_account),
                })
                .ok_or(TagError::Mismatch)
            }
            LEGACY_TAG_LEN => {
                let (key_id, entry) = self
                    .keys
                    .iter()
                    .find(|(_, e)| e.legacy)
                    .ok_or(TagError::Mismatch)?;
                franking::verify_server_tag(
                    &entry.key,
                    commitment,
                    sender,
                    reporter,
                    server_timestamp_ms,
                    message_id,
                    tag,
                )
                .then_some(Verified {
                    key_id: *key_id,
                    sender_account: None,
                })
                .ok_or(TagError::Mismatch)
            }
            _ => Err(TagError::Length),
        }
    }

    /// The file's text. Key material: the caller writes it and drops it.
    fn render(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(format!(
            "{FILE_HEADER}\n# Secret: whoever holds these keys can forge verified abuse reports.\n\
             # Keep mode 0600, back it up apart from the database, copy it to every node.\n"
        ));
        for (id, entry) in &self.keys {
            let state = if *id == self.current {
                "current"
            } else {
                "retired"
            };
            let legacy = if entry.legacy { " legacy" } else { "" };
            let hex = Zeroizing::new(hex::encode(entry.key.as_bytes()));
            text.push_str(&format!("key {id} {state}{legacy} "));
            text.push_str(&hex);
            text.push('\n');
        }
        text
    }

    fn parse(path: &Path, text: &str) -> Result<Self, KeyFileError> {
        let malformed = |why: String| KeyFileError::Malformed {
            path: path.to_owned(),
            why,
        };
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(FILE_HEADER) {
            return Err(malformed(format!("the first line must be {FILE_HEADER:?}")));
        }
        let mut keys = BTreeMap::new();
        let mut current = None;
        for (n, line) in lines.enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (id, state, legacy, hex) = match words.as_slice() {
                ["key", id, state, hex] => (*id, *state, false, *hex),
                ["key", id, state, "legacy", hex] => (*id, *state, true, *hex),
                _ => {
                    return Err(malformed(format!(
                        "key line {} is not `key ID current|retired [legacy] HEX`",
                        n + 1
                    )));
                }
            };
            let id: u32 = id
                .parse()
                .map_err(|_| malformed(format!("{id:?} is not a key id")))?;
            let bytes = Zeroizing::new(
                hex::decode(hex).map_err(|_| malformed(format!("key {id} is not hex")))?,
            );
            let key = ServerFrankingKey::from_bytes(&bytes)
                .map_err(|_| malformed(format!("key {id} is not 32 bytes")))?;
            match state {
                "current" if current.is_none() => current = Some(id),
                "current" => return Err(malformed("more than one key is current".into())),
                "retired" => {}
                other => return Err(malformed(format!("{other:?} is not current or retired"))),
            }
            if keys.insert(id, Entry { key, legacy }).is_some() {
                return Err(malformed(format!("key {id} appears twice")));
            }
        }
        let current = current.ok_or_else(|| malformed("no key is current".into()))?;
        Ok(Self { current, keys })
    }
}

/// Reads a key file; `None` when it does not exist. A file others can read
/// is tightened to 0600 (with a warning).
pub fn load(path: &Path) -> Result<Option<KeyRing>, KeyFileError> {
    let io = |action, source| KeyFileError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| io("read", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("write", e))?;
            tracing::warn!(path = %path.display(), "the franking key file was readable by others; its mode is now 0600");
        }
    }
    KeyRing::parse(path, &text).map(Some)
}

/// Writes a key file atomically with mode 0600.
pub fn save(path: &Path, ring: &KeyRing) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(ring.render().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Records every key's check value in the database, or refuses a key that
/// differs from what the database recorded for its id.
async fn register(path: &Path, ring: &KeyRing, storage: &dyn Storage) -> Result<(), KeyFileError> {
    for (id, check) in ring.checks() {
        let recorded = storage.record_franking_key(id, &check).await?;
        if recorded != check {
            return Err(KeyFileError::Different {
                path: path.to_owned(),
                id,
            });
        }
    }
    Ok(())
}

fn legacy_key(path: &Path, bytes: &Zeroizing<Vec<u8>>) -> Result<ServerFrankingKey, KeyFileError> {
    ServerFrankingKey::from_bytes(bytes).map_err(|_| KeyFileError::Malformed {
        path: path.to_owned(),
        why: "the franking key stored in the database is not 32 bytes".into(),
    })
}

/// The keys of a serving node: loads the file (creating it with a fresh key
/// on a fresh database), moves a franking key still stored in the database
/// into it and deletes it there irrevocably, and checks the file against the
/// database.
pub async fn open(path: &Path, storage: &dyn Storage) -> Result<KeyRing, KeyFileError> {
    let legacy = storage
        .server_secret_get(LEGACY_SECRET)
        .await?
        .map(Zeroizing::new);
    let mut ring = match load(path)? {
        Some(ring) => ring,
        None => {
            let known = storage.franking_key_ids().await?;
            if !known.is_empty() && legacy.is_none() {
                return Err(KeyFileError::Missing {
                    path: path.to_owned(),
                    ids: known
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let next = known.iter().max().map_or(1, |id| id.saturating_add(1));
            let ring = match &legacy {
                Some(bytes) => {
                    // The migrated key becomes a retired key; new tags use a
                    // fresh one, since copies of the old one sit in database
                    // backups.
                    let mut ring = KeyRing {
                        current: 0,
                        keys: BTreeMap::new(),
                    };
                    ring.add_legacy(legacy_key(path, bytes)?);
                    ring.rotate(next);
                    ring
                }
                None => KeyRing::generate(next),
            };
            tracing::info!(path = %path.display(), "created the franking key file");
            ring
        }
    };
    if let Some(bytes) = legacy {
        let id = ring.add_legacy(legacy_key(path, &bytes)?);
        // The file first, then the database: a crash between them leaves the
        // key in both, and the next start finishes the move.
        save(path, &ring)?;
        register(path, &ring, storage).await?;
        storage.delete_server_secret(LEGACY_SECRET).await?;
        tracing::info!(
            key_id = id,
            "moved the franking key out of the database into the key file and deleted it from the database"
        );
    } else if !path.exists() {
        save(path, &ring)?;
    }
    register(path, &ring, storage).await?;
    Ok(ring)
}

/// `missive-server rotate-franking-key`: adds a fresh current key, keeps the
/// others for verification only; returns the ring.
pub async fn rotate(path: &Path, storage: &dyn Storage) -> Result<KeyRing, KeyFileError> {
    let known = storage.franking_key_ids().await?;
    let after = known.iter().max().map_or(1, |id| id.saturating_add(1));
    let mut ring = match load(path)? {
        Some(ring) => ring,
        None => KeyRing {
            current: 0,
            keys: BTreeMap::new(),
        },
    };
    ring.rotate(after);
    save(path, &ring)?;
    register(path, &ring, storage).await?;
    Ok(ring)
}

/// The ring a node uses, reloaded when its file changes (after a rotation by
/// `missive-server rotate-franking-key` or a copied file), checked against
/// the database each time.
pub struct SharedKeyRing {
    path: Option<PathBuf>,
    modified: RwLock<Option<SystemTime>>,
    ring: RwLock<Arc<KeyRing>>,
}

impl std::fmt::Debug for SharedKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeyRing")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl SharedKeyRing {
    /// Over a ring loaded from `path` (`None`: never reloaded, for tests).
    pub fn new(ring: KeyRing, path: Option<PathBuf>) -> Self {
        Self {
            modified: RwLock::new(path.as_deref().and_then(modified)),
            path,
            ring: RwLock::new(Arc::new(ring)),
        }
    }

    /// The current ring.
    pub fn get(&self) -> Arc<KeyRing> {
        Arc::clone(
            &self
                .ring
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Reloads the file if it changed; a file that no longer loads or
    /// matches the database is reported and the old ring kept.
    pub async fn reload_if_changed(&self, storage: &dyn Storage) {
        let Some(path) = &self.path else { return };
        let now = modified(path);
        {
            let seen = self
                .modified
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return;
            }
        }
        *self
            .modified
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
        let loaded = match load(path) {
            Ok(Some(ring)) => ring,
            Ok(None) => {
                tracing::warn!(path = %path.display(), "the franking key file disappeared; keeping the keys in memory");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "keeping the previous franking keys");
                return;
            }
        };
        if let Err(error) = register(path, &loaded, storage).await {
            tracing::warn!(%error, "keeping the previous franking keys");
            return;
        }
        tracing::info!(current = loaded.current_id(), "reloaded the franking keys");
        *self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tag_of(ring: &KeyRing) -> Vec<u8> {
        ring.tag(&[9; 32], 17, "alice", 23, "bob", 1000, b"m")
    }

    #[test]
    fn tags_name_their_key_and_bind_both_accounts() {
        let mut ring = KeyRing::generate(1);
        let tag = tag_of(&ring);
        assert_eq!(tag.len(), TAG_LEN);
        assert_eq!(&tag[..4], &1u32.to_be_bytes());
        assert_eq!(&tag[4..12], &17i64.to_be_bytes());
        let verified = ring
            .verify(&tag, &[9; 32], "alice", 23, "bob", 1000, b"m")
            .unwrap();
        assert_eq!(
            verified,
            Verified {
                key_id: 1,
                sender_account: Some(17)
            }
        );
        // Another holder of either name is another account.
        assert_eq!(
            ring.verify(&tag, &[9; 32], "alice", 24, "bob", 1000, b"m"),
            Err(TagError::Mismatch)
        );
        let mut forged = tag.clone();
        forged[11] ^= 1;
        assert_eq!(
            ring.verify(&forged, &[9; 32], "alice", 23, "bob", 1000, b"m"),
            Err(TagError::Mismatch)
        );
        // After rotation old tags still verify, new ones use the new key.
        assert_eq!(ring.rotate(0), 2);
        assert!(
            ring.verify(&tag, &[9; 32], "alice", 23, "bob", 1000, b"m")
                .is_ok()
        );
        assert_eq!(&tag_of(&ring)[..4], &2u32.to_be_bytes());
        let mut unknown = tag.clone();
        unknown[3] = 9;
        assert_eq!(
            ring.verify(&unknown, &[9; 32], "alice", 23, "bob", 1000, b"m"),
            Err(TagError::UnknownKey(9))
        );
        assert_eq!(
            ring.verify(&tag[..20], &[9; 32], "alice", 23, "bob", 1000, b"m"),
            Err(TagError::Length)
        );
    }

    #[test]
    fn legacy_tags_verify_only_under_the_migrated_key() {
        let old = ServerFrankingKey::from_bytes(&[4; 32]).unwrap();
        let legacy = franking::server_tag(&old, &[9; 32], "alice", "bob", 5, b"m");
        let mut ring = KeyRing::generate(1);
        assert!(
            ring.verify(&legacy, &[9; 32], "alice", 3, "bob", 5, b"m")
                .is_err()
        );
        let id = ring.add_legacy(old);
        let verified = ring
            .verify(&legacy, &[9; 32], "alice", 3, "bob", 5, b"m")
            .unwrap();
        assert_eq!(verified.key_id, id);
        assert_eq!(verified.sender_account, None);
    }

    #[test]
    fn the_file_round_trips_with_mode_0600_and_refuses_nonsense() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut ring = KeyRing::generate(1);
        ring.add_legacy(ServerFrankingKey::from_bytes(&[4; 32]).unwrap());
        ring.rotate(0);
        save(&path, &ring).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded.current_id(), 3);
        assert_eq!(loaded.checks(), ring.checks());
        let tag = tag_of(&ring);
        assert!(
            loaded
                .verify(&tag, &[9; 32], "alice", 23, "bob", 1000, b"m")
                .is_ok()
        );
        for bad in [
            "",
            "missive-franking-keys v1\n",
            "missive-franking-keys v1\nkey 1 current 00\n",
            "missive-franking-keys v1\nkey 1 sideways 0000000000000000000000000000000000000000000000000000000000000000\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let error = load(&path).unwrap_err().to_string();
            assert!(error.contains("is malformed"), "{error}");
        }
        assert!(load(&dir.path().join("none")).unwrap().is_none());
        assert!(format!("{ring:?}").contains("current: 3"));
    }
}
