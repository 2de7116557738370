//! How fast each device's one-time prekeys are being handed out, so the
//! owner's client can be told when they are drained faster than it refills
//! (`PrekeyCount.one_time_prekeys_taken_last_hour`, `drained_recently`).
//!
//! Kept in memory only, per node, per device: two hourly counters (the
//! current and the previous window; the last hour is estimated from both, as
//! a sliding window) and when the account's per-target fetch limit last
//! fired. No requester is recorded. At most [`MAX_TRACKED`] devices are kept;
//! past that, entries older than two windows are dropped and, if still full,
//! everything is (an estimate restarting from zero, never a failure).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::limits::DRAIN_WINDOW;
use crate::storage::{AccountId, DeviceAddress};

/// Devices tracked at most.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    /// Index of the window `current` counts.
    window: u64,
    current: u32,
    previous: u32,
}

#[derive(Debug, Default)]
struct Inner {
    taken: HashMap<DeviceAddress, Counts>,
    throttled_at_ms: HashMap<AccountId, u64>,
}

/// The per-node record of handed-out one-time prekeys.
#[derive(Debug, Default)]
pub struct DrainWatch {
    inner: Mutex<Inner>,
}

fn window_ms() -> u64 {
    u64::try_from(DRAIN_WINDOW.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Counts {
    fn roll(&mut self, window: u64) {
        if window == self.window {
            return;
        }
        self.previous = if window == self.window + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.window = window;
    }
}

impl DrainWatch {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A one-time X25519 prekey of `device` was handed out at `now_ms`.
    pub fn taken(&self, device: DeviceAddress, now_ms: u64) {
        let window = now_ms / window_ms();
        let mut inner = self.lock();
        if inner.taken.len() >= MAX_TRACKED && !inner.taken.contains_key(&device) {
            inner.taken.retain(|_, c| c.window + 1 >= window);
            if inner.taken.len() >= MAX_TRACKED {
                inner.taken.clear();
            }
        }
        let counts = inner.taken.entry(device).or_default();
        counts.roll(window);
        counts.current = counts.current.saturating_add(1);
    }

    /// The per-target fetch limit of `account` fired at `now_ms`.
    pub fn throttled(&self, account: AccountId, now_ms: u64) {
        let mut inner = self.lock();
        if inner.throttled_at_ms.len() >= MAX_TRACKED {
            let cutoff = now_ms.saturating_sub(window_ms());
            inner.throttled_at_ms.retain(|_, at| *at >= cutoff);
            if inner.throttled_at_ms.len() >= MAX_TRACKED {
                inner.throttled_at_ms.clear();
            }
        }
        inner.throttled_at_ms.insert(account, now_ms);
    }

    /// One-time prekeys of `device` handed out in about the last window, and
    /// whether the account's fetch limit fired within it.
    pub fn report(&self, device: DeviceAddress, now_ms: u64) -> (u32, bool) {
        let window_ms = window_ms();
        let window = now_ms / window_ms;
        let mut inner = self.lock();
        let taken = inner.taken.get_mut(&device).map_or(0, |counts| {
            counts.roll(window);
            // Sliding-window estimate: the previous window weighted by the
            // part of it that is still within the last `DRAIN_WINDOW`.
            let elapsed = now_ms % window_ms;
            let weight = window_ms - elapsed;
            let previous = u64::from(counts.previous) * weight / window_ms;
            u32::try_from(u64::from(counts.current) + previous).unwrap_or(u32::MAX)
        });
        let drained = inner
            .throttled_at_ms
            .get(&device.account)
            .is_some_and(|at| now_ms.saturating_sub(*at) < window_ms);
        (taken, drained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: DeviceAddress = DeviceAddress {
        account: 7,
        device: 1,
    };

    #[test]
    fn counts_slide_out_of_the_window() {
        let watch = DrainWatch::default();
        let hour = window_ms();
        let start = 100 * hour;
        for _ in 0..10 {
            watch.taken(DEVICE, start);
        }
        assert_eq!(watch.report(DEVICE, start + 1), (10, false));
        // Half-way through the next window half of the previous one counts.
        assert_eq!(watch.report(DEVICE, start + hour + hour / 2).0, 5);
        assert_eq!(watch.report(DEVICE, start + 3 * hour).0, 0);
    }

    #[test]
    fn throttling_is_reported_for_one_window() {
        let watch = DrainWatch::default();
        let hour = window_ms();
        watch.throttled(DEVICE.account, hour);
        assert!(watch.report(DEVICE, hour + 10).1);
        assert!(!watch.report(DEVICE, 2 * hour + 10).1);
        let other = DeviceAddress {
            account: 8,
            device: 1,
        };
        assert!(!watch.report(other, hour + 10).1);
    }
}
