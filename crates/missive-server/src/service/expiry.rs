//! When the next per-envelope expiry is due, so the purge loop deletes a
//! disappearing message's envelopes when its retention ends rather than up
//! to a purge interval later.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// The earliest known envelope expiry (ms since the epoch; `u64::MAX`:
/// none), lowered by sends and reset by each purge.
#[derive(Debug)]
pub struct ExpiryWatch {
    earliest: AtomicU64,
    lowered: Notify,
}

impl Default for ExpiryWatch {
    fn default() -> Self {
        Self {
            earliest: AtomicU64::new(u64::MAX),
            lowered: Notify::new(),
        }
    }
}

impl ExpiryWatch {
    /// Notes envelopes stored to expire at `at_ms`; wakes the purge loop if
    /// that is earlier than anything it waits for.
    pub fn note(&self, at_ms: u64) {
        if self.earliest.fetch_min(at_ms, Ordering::AcqRel) > at_ms {
            self.lowered.notify_one();
        }
    }

    /// The earliest expiry noted, `None` if none.
    pub fn earliest(&self) -> Option<u64> {
        Some(self.earliest.load(Ordering::Acquire)).filter(|&at| at != u64::MAX)
    }

    /// Forgets everything noted, before a purge; what is noted from now on
    /// (and what the purge reports as still stored, through [`Self::note`])
    /// is kept.
    pub fn reset(&self) {
        self.earliest.store(u64::MAX, Ordering::Release);
    }

    /// Resolves when a send lowered the earliest expiry.
    pub async fn lowered(&self) {
        self.lowered.notified().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn keeps_the_earliest_and_wakes_only_when_lowered() {
        let watch = ExpiryWatch::default();
        assert_eq!(watch.earliest(), None);
        watch.note(500);
        watch.note(900);
        assert_eq!(watch.earliest(), Some(500));
        // The first note left a permit: the waiter resolves at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.lowered())
            .await
            .unwrap();
        // A later expiry does not wake it.
        watch.note(700);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), watch.lowered())
                .await
                .is_err()
        );
        watch.reset();
        assert_eq!(watch.earliest(), None);
        watch.note(800);
        assert_eq!(watch.earliest(), Some(800));
    }
}
