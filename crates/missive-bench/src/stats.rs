//! Latency percentiles and the final report.

use std::time::Duration;

/// Percentile (0..=100) of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted_us: &[u32], pct: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((pct / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
}

/// What one workload run measured.
#[derive(Debug, Default)]
pub(crate) struct RunResult {
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) duplicated: u64,
    /// Envelopes received again under a message id already seen (skipped).
    pub(crate) redelivered: u64,
    /// Send attempts that failed and were repeated.
    pub(crate) resent: u64,
    /// Receive streams reopened after a node went away.
    pub(crate) reconnects: u64,
    /// Nodes killed (SIGKILL) and restarted during the run.
    pub(crate) kills: u64,
    pub(crate) elapsed: Duration,
    /// Send → decrypted latency, microseconds, one sample per delivered
    /// message: to the last device of the recipient account to decrypt it.
    pub(crate) latencies_us: Vec<u32>,
    /// Devices per account.
    pub(crate) devices_per_account: usize,
    /// Copies for the sender's other devices: expected (one per message
    /// with more than one device per account), delivered to all of them,
    /// and the latency to the last of them.
    pub(crate) own_expected: u64,
    pub(crate) own_delivered: u64,
    pub(crate) own_latencies_us: Vec<u32>,
    /// Envelopes and encoded SendRequest bytes sent in the measured phase.
    pub(crate) envelopes_sent: u64,
    pub(crate) request_bytes: u64,
    pub(crate) server_cpu_seconds: f64,
    pub(crate) server_peak_rss_mib: f64,
}

impl RunResult {
    pub(crate) fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    pub(crate) fn msgs_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.delivered as f64 / secs
        }
    }

    /// (p50, p95, p99) in milliseconds.
    pub(crate) fn percentiles(&mut self) -> (f64, f64, f64) {
        three_percentiles(&mut self.latencies_us)
    }

    /// (p50, p95, p99) in milliseconds of the own-device copies.
    pub(crate) fn own_percentiles(&mut self) -> (f64, f64, f64) {
        three_percentiles(&mut self.own_latencies_us)
    }

    /// Per message sent (not per envelope); 0 before any.
    pub(crate) fn per_message(&self, total: u64) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            total as f64 / self.expected as f64
        }
    }
}

fn three_percentiles(samples: &mut [u32]) -> (f64, f64, f64) {
    samples.sort_unstable();
    (
        percentile_ms(samples, 50.0),
        percentile_ms(samples, 95.0),
        percentile_ms(samples, 99.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranked_samples() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert!((percentile_ms(&samples, 50.0) - 51.0).abs() < 1e-9);
        assert!((percentile_ms(&samples, 99.0) - 99.0).abs() < 1e-9);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
    }

    #[test]
    fn lost_counts_undelivered() {
        let r = RunResult {
            expected: 10,
            delivered: 7,
            ..Default::default()
        };
        assert_eq!(r.lost(), 3);
    }
}
