//! Reconnection delays: exponential, capped, with jitter so a restarted
//! server is not hit by every client in the same second; reset by any sign
//! of life (as gurk-rs resets on each message).

use std::time::Duration;

use rand::Rng as _;

/// First delay.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delay before the next attempt, after one more failure: the
    /// base doubles from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], then a
    /// uniformly drawn 50–100 % of it is used.
    pub fn next_delay(&mut self, rng: &mut impl rand::RngCore) -> Duration {
        let base = BACKOFF_MIN
            .saturating_mul(1u32 << self.failures.min(10))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.gen_range(ms / 2..=ms))
    }

    /// Forgets the failures (the connection works).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn grows_capped_with_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new();
        let mut prev_cap = Duration::ZERO;
        let mut seen = std::collections::HashSet::new();
        for i in 0..12u32 {
            let d = b.next_delay(&mut rng);
            let cap = BACKOFF_MIN.saturating_mul(1 << i.min(10)).min(BACKOFF_MAX);
            assert!(d <= cap && d >= cap / 2, "{i}: {d:?} vs {cap:?}");
            assert!(cap >= prev_cap);
            prev_cap = cap;
            seen.insert(d);
        }
        assert!(seen.len() > 6, "jitter should vary the delays: {seen:?}");
        b.reset();
        assert!(b.next_delay(&mut rng) <= BACKOFF_MIN);
    }
}
