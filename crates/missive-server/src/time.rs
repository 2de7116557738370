//! Wall-clock helpers: milliseconds and days since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Days since the Unix epoch for `ms`.
pub fn day_of(ms: u64) -> i64 {
    i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX)
}

/// `ms` plus `d`, saturating.
pub fn add(ms: u64, d: Duration) -> u64 {
    ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` minus `d`, saturating.
pub fn sub(ms: u64, d: Duration) -> u64 {
    ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// ISO-8601 date (`YYYY-MM-DD`) of a day number (proleptic Gregorian,
/// H. Hinnant's civil-from-days).
pub fn iso_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// ISO-8601 UTC timestamp with milliseconds of `ms`.
pub fn iso_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let day_secs = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        iso_date(day_of(ms)),
        day_secs / 3600,
        (day_secs / 60) % 60,
        day_secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(19_723), "2024-01-01");
        assert_eq!(iso_date(11_016), "2000-02-29");
        assert_eq!(iso_timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
