//! A reserve of disk space next to the SQLite database, so that on a full
//! disk acknowledgements — which free space, but are writes too (WAL frames,
//! `secure_delete` overwrites) — still succeed.
//!
//! At start the node writes `DB.reserve`, a file of real zeros (not sparse).
//! When a write fails because the disk is full, the file is deleted, which
//! gives SQLite that much room, and the store enters *low-space mode*: sends,
//! registrations, prekey uploads and reports are refused with
//! `RESOURCE_EXHAUSTED` before they touch the disk, while acknowledgements,
//! logins, challenges and receive streams go on (acknowledgements in small
//! transactions, each followed by a WAL checkpoint, so the WAL does not
//! grow). After acknowledgements the database returns its free pages to the
//! file system (incremental vacuum) and the node tries to write the reserve
//! again; once it can, low-space mode ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The reserve of one database.
#[derive(Debug)]
pub(super) struct Reserve {
    path: Option<PathBuf>,
    size: u64,
    low: AtomicBool,
    /// Serialises release and restore.
    guard: Mutex<()>,
}

fn write_zeros(path: &Path, size: u64) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let block = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

impl Reserve {
    /// No reserve (in-memory paths, PostgreSQL, `--storage-reserve 0`).
    pub(super) fn none() -> Self {
        Self {
            path: None,
            size: 0,
            low: AtomicBool::new(false),
            guard: Mutex::new(()),
        }
    }

    /// Writes (or keeps) `size` bytes at `DB.reserve` next to `database`.
    /// If the disk is already too full, starts in low-space mode.
    pub(super) fn create(database: &Path, size: u64) -> Self {
        if size == 0 {
            return Self::none();
        }
        let mut path = database.as_os_str().to_owned();
        path.push(".reserve");
        let reserve = Self {
            path: Some(PathBuf::from(path)),
            size,
            low: AtomicBool::new(false),
            guard: Mutex::new(()),
        };
        if !reserve.present() {
            reserve.low.store(true, Ordering::SeqCst);
            reserve.restore();
        }
        reserve
    }

    fn present(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|path| std::fs::metadata(path).is_ok_and(|m| m.len() >= self.size))
    }

    /// Whether the reserve is spent: growth is refused.
    pub(super) fn low(&self) -> bool {
        self.low.load(Ordering::SeqCst)
    }

    /// The disk is full: frees the reserve (once) and enters low-space mode.
    /// Returns whether there was a reserve to free.
    pub(super) fn release(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let _guard = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_low = self.low.swap(true, Ordering::SeqCst);
        let freed = std::fs::remove_file(path).is_ok();
        if !was_low {
            tracing::warn!(
                bytes = self.size,
                "the disk is full: released the storage reserve; new messages, accounts and keys are refused until space is freed, acknowledgements go on"
            );
        }
        freed
    }

    /// In low-space mode, tries to write the reserve again; ends low-space
    /// mode when it succeeds.
    pub(super) fn restore(&self) {
        let Some(path) = &self.path else { return };
        if !self.low() {
            return;
        }
        let _guard = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match write_zeros(path, self.size) {
            Ok(()) => {
                if self.low.swap(false, Ordering::SeqCst) {
                    tracing::info!(
                        bytes = self.size,
                        "storage reserve in place; new messages are accepted again"
                    );
                }
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn release_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("server.db");
        let reserve = Reserve::create(&db, 100_000);
        let file = dir.path().join("server.db.reserve");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 100_000);
        assert!(!reserve.low());
        assert!(reserve.release());
        assert!(reserve.low());
        assert!(!file.exists());
        assert!(!reserve.release(), "released twice");
        reserve.restore();
        assert!(!reserve.low());
        assert!(file.exists());
        assert!(!Reserve::none().release());
    }
}
