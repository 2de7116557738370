//! Per-IP and per-account rate limits (governor's GCRA), one limiter per
//! operation class. Keys live only in memory and are pruned periodically;
//! no IP address is ever stored.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::{ApiError, ApiResult};
use crate::storage::AccountId;

/// A rate: `per_second` sustained with bursts of `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained calls per second.
    pub per_second: u32,
    /// Burst size.
    pub burst: u32,
}

/// The configurable rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Challenge, register and login, per client IP.
    pub account_per_ip: Rate,
    /// Login per account (by username, so it applies before authentication).
    pub login_per_account: Rate,
    /// Bundle fetches per account.
    pub bundles_per_account: Rate,
    /// Bundle fetches per client IP.
    pub bundles_per_ip: Rate,
    /// Sends per account.
    pub send_per_account: Rate,
    /// Sends per client IP.
    pub send_per_ip: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            account_per_ip: Rate {
                per_second: 5,
                burst: 60,
            },
            login_per_account: Rate {
                per_second: 1,
                burst: 20,
            },
            bundles_per_account: Rate {
                per_second: 20,
                burst: 200,
            },
            bundles_per_ip: Rate {
                per_second: 100,
                burst: 1000,
            },
            send_per_account: Rate {
                per_second: 200,
                burst: 2000,
            },
            send_per_ip: Rate {
                per_second: 5000,
                burst: 20_000,
            },
        }
    }
}

fn limiter<K: Hash + Eq + Clone>(rate: Rate) -> DefaultKeyedRateLimiter<K> {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
}

/// The server's limiters; `None` disables limiting (benchmarks).
pub struct Limiters {
    account_ip: DefaultKeyedRateLimiter<IpAddr>,
    login_account: DefaultKeyedRateLimiter<String>,
    bundles_account: DefaultKeyedRateLimiter<AccountId>,
    bundles_ip: DefaultKeyedRateLimiter<IpAddr>,
    send_account: DefaultKeyedRateLimiter<AccountId>,
    send_ip: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

fn check<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    scope: &'static str,
) -> ApiResult<()> {
    limiter
        .check_key(key)
        .map_err(|not_until| ApiError::RateLimited {
            scope,
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
}

impl Limiters {
    /// Builds every limiter.
    pub fn new(rates: RateLimits) -> Self {
        Self {
            account_ip: limiter(rates.account_per_ip),
            login_account: limiter(rates.login_per_account),
            bundles_account: limiter(rates.bundles_per_account),
            bundles_ip: limiter(rates.bundles_per_ip),
            send_account: limiter(rates.send_per_account),
            send_ip: limiter(rates.send_per_ip),
        }
    }

    /// Challenge/register/login from `ip`.
    pub fn account_op(&self, ip: Option<IpAddr>) -> ApiResult<()> {
        ip.map_or(Ok(()), |ip| {
            check(&self.account_ip, &ip, "from this address")
        })
    }

    /// Login attempts for `username`.
    pub fn login(&self, username: &str) -> ApiResult<()> {
        check(
            &self.login_account,
            &username.to_owned(),
            "for this account",
        )
    }

    /// Bundle fetch.
    pub fn bundles(&self, account: AccountId, ip: Option<IpAddr>) -> ApiResult<()> {
        check(&self.bundles_account, &account, "for this account")?;
        ip.map_or(Ok(()), |ip| {
            check(&self.bundles_ip, &ip, "from this address")
        })
    }

    /// Send.
    pub fn send(&self, account: AccountId, ip: Option<IpAddr>) -> ApiResult<()> {
        check(&self.send_account, &account, "for this account")?;
        ip.map_or(Ok(()), |ip| check(&self.send_ip, &ip, "from this address"))
    }

    /// Forgets keys whose limits have fully recovered.
    pub fn prune(&self) {
        self.account_ip.retain_recent();
        self.login_account.retain_recent();
        self.bundles_account.retain_recent();
        self.bundles_ip.retain_recent();
        self.send_account.retain_recent();
        self.send_ip.retain_recent();
    }
}
