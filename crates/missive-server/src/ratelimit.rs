//! Per-source and per-account rate limits (governor's GCRA), one limiter per
//! operation class. Keys live only in memory and are pruned periodically;
//! no IP address is ever stored.
//!
//! A *source* is an IPv4 address or an IPv6 /64 prefix ([`Source`]): one
//! IPv6 subscriber usually holds a whole /64 and can rotate through it
//! freely, so limiting full IPv6 addresses would limit nothing. Behind a
//! proxy the source is the client address the proxy reports
//! ([`crate::proxy`]), not the proxy's.

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::{ApiError, ApiResult};
use crate::storage::AccountId;

/// The unit per-source limits count: an IPv4 address, or the /64 prefix of
/// an IPv6 address (IPv4-mapped IPv6 addresses count as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 client.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 client address.
    V6Prefix(u64),
}

impl Source {
    /// The bucket of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A rate: `burst` calls at once, then `sustained` calls per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Calls replenished per `per`.
    pub sustained: u32,
    /// The period `sustained` applies to.
    pub per: Duration,
    /// Burst size.
    pub burst: u32,
}

impl Rate {
    /// `sustained` calls per second with bursts of `burst`.
    pub const fn per_second(sustained: u32, burst: u32) -> Self {
        Self {
            sustained,
            per: Duration::from_secs(1),
            burst,
        }
    }

    /// `sustained` calls per hour with bursts of `burst`.
    pub const fn per_hour(sustained: u32, burst: u32) -> Self {
        Self {
            sustained,
            per: Duration::from_secs(3600),
            burst,
        }
    }
}

/// The configurable rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Challenge, register and login, per client source.
    pub account_per_ip: Rate,
    /// Login attempts per (username, client source), charged before the
    /// signature check: an attacker exhausts only their own source's budget
    /// for a username, never the owner's.
    pub login_per_account_and_ip: Rate,
    /// Successful logins per account (charged after the signature verified,
    /// so only the key holder can spend it; bounds the tokens issued).
    pub login_success_per_account: Rate,
    /// Bundle fetches per requesting account; device-list calls
    /// (`PublishDeviceList`, `GetDeviceList`) are charged here too.
    pub bundles_per_account: Rate,
    /// Bundle fetches (and device-list calls) per client source.
    pub bundles_per_ip: Rate,
    /// Bundle fetches per (requesting account, target account): past it the
    /// requester is refused.
    pub bundles_per_pair: Rate,
    /// Bundle fetches naming one target account, from anyone: past it the
    /// bundles are still served, but without consuming one-time prekeys
    /// (the last-resort KEM key, no one-time X25519 key), and the owner's
    /// `PrekeyCount.drained_recently` turns true.
    pub bundles_per_target: Rate,
    /// Sends per account.
    pub send_per_account: Rate,
    /// Sends per client source.
    pub send_per_ip: Rate,
    /// Attachment calls (create, upload stream, query, finalise, download)
    /// per account. Bytes are bounded by the quota; this bounds the calls.
    pub attachment_per_account: Rate,
    /// Attachment calls per client source.
    pub attachment_per_ip: Rate,
    /// Link mailbox reads, posts and closes (`GetLink`, `PostLink`,
    /// `CloseLink`) per client source. A new device polls `GetLink` about
    /// twice a second while the user types the code on the primary, so this
    /// is generous; `OpenLink` is charged to [`Self::account_per_ip`].
    pub link_per_ip: Rate,
    /// Link HELLOs per account: each opens the way to a FINISH of up to
    /// 1 MiB stored for 10 minutes, so this bounds what one account can
    /// park on the server.
    pub link_hello_per_account: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            account_per_ip: Rate::per_second(5, 60),
            login_per_account_and_ip: Rate::per_second(1, 20),
            login_success_per_account: Rate::per_hour(60, 20),
            bundles_per_account: Rate::per_second(20, 200),
            bundles_per_ip: Rate::per_second(100, 1000),
            bundles_per_pair: Rate::per_hour(10, 10),
            bundles_per_target: Rate::per_hour(30, 30),
            send_per_account: Rate::per_second(200, 2000),
            send_per_ip: Rate::per_second(5000, 20_000),
            // A resumed transfer costs a query and a stream per try; a
            // conversation full of images a download each.
            attachment_per_account: Rate::per_second(10, 100),
            attachment_per_ip: Rate::per_second(200, 2000),
            // Ten devices polling twice a second behind one address.
            link_per_ip: Rate::per_second(20, 200),
            // A user retrying a mistyped code a few times.
            link_hello_per_account: Rate::per_hour(30, 10),
        }
    }
}

fn limiter<K: Hash + Eq + Clone>(rate: Rate) -> DefaultKeyedRateLimiter<K> {
    let sustained = rate.sustained.max(1);
    let period = (rate.per / sustained).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    DefaultKeyedRateLimiter::keyed(quota)
}

/// How a bundle fetch may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleAllowance {
    /// Serve bundles and consume one-time prekeys.
    Consume,
    /// The target's limit is reached: serve bundles without consuming
    /// one-time prekeys.
    WithoutOneTimeKeys,
}

/// The server's limiters; `None` disables limiting (benchmarks).
pub struct Limiters {
    account_ip: DefaultKeyedRateLimiter<Source>,
    login_account_ip: DefaultKeyedRateLimiter<(String, Option<Source>)>,
    login_success: DefaultKeyedRateLimiter<AccountId>,
    bundles_account: DefaultKeyedRateLimiter<AccountId>,
    bundles_ip: DefaultKeyedRateLimiter<Source>,
    bundles_pair: DefaultKeyedRateLimiter<(AccountId, AccountId)>,
    bundles_target: DefaultKeyedRateLimiter<AccountId>,
    key_packages_pair: DefaultKeyedRateLimiter<(AccountId, AccountId)>,
    key_packages_target: DefaultKeyedRateLimiter<AccountId>,
    send_account: DefaultKeyedRateLimiter<AccountId>,
    send_ip: DefaultKeyedRateLimiter<Source>,
    attachment_account: DefaultKeyedRateLimiter<AccountId>,
    attachment_ip: DefaultKeyedRateLimiter<Source>,
    link_ip: DefaultKeyedRateLimiter<Source>,
    link_hello_account: DefaultKeyedRateLimiter<AccountId>,
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
            login_account_ip: limiter(rates.login_per_account_and_ip),
            login_success: limiter(rates.login_success_per_account),
            bundles_account: limiter(rates.bundles_per_account),
            bundles_ip: limiter(rates.bundles_per_ip),
            bundles_pair: limiter(rates.bundles_per_pair),
            bundles_target: limiter(rates.bundles_per_target),
            key_packages_pair: limiter(rates.bundles_per_pair),
            key_packages_target: limiter(rates.bundles_per_target),
            send_account: limiter(rates.send_per_account),
            send_ip: limiter(rates.send_per_ip),
            attachment_account: limiter(rates.attachment_per_account),
            attachment_ip: limiter(rates.attachment_per_ip),
            link_ip: limiter(rates.link_per_ip),
            link_hello_account: limiter(rates.link_hello_per_account),
        }
    }

    /// Challenge/register/login from `source`.
    pub fn account_op(&self, source: Option<Source>) -> ApiResult<()> {
        source.map_or(Ok(()), |source| {
            check(&self.account_ip, &source, "from this address")
        })
    }

    /// A login attempt for `username` from `source`, before its signature
    /// is checked.
    pub fn login_attempt(&self, username: &str, source: Option<Source>) -> ApiResult<()> {
        check(
            &self.login_account_ip,
            &(username.to_owned(), source),
            "for this account from this address",
        )
    }

    /// A login whose signature verified.
    pub fn login_success(&self, account: AccountId) -> ApiResult<()> {
        check(&self.login_success, &account, "for this account")
    }

    /// A bundle fetch by `requester` from `source` for `target`.
    pub fn bundles(
        &self,
        requester: AccountId,
        source: Option<Source>,
        target: AccountId,
    ) -> ApiResult<BundleAllowance> {
        check(&self.bundles_account, &requester, "for this account")?;
        if let Some(source) = source {
            check(&self.bundles_ip, &source, "from this address")?;
        }
        check(
            &self.bundles_pair,
            &(requester, target),
            "for this account's bundles of that user",
        )?;
        Ok(match self.bundles_target.check_key(&target) {
            Ok(_) => BundleAllowance::Consume,
            Err(_) => BundleAllowance::WithoutOneTimeKeys,
        })
    }

    /// A KeyPackage fetch (`GroupService.FetchKeyPackages`) by `requester`
    /// from `source` for `target`: the per-account and per-source limits of
    /// bundle fetches, and per-pair and per-target limits of the same rates
    /// kept apart from the bundles' (a KeyPackage is not a prekey). Past the
    /// target's limit last-resort KeyPackages are served instead.
    pub fn key_packages(
        &self,
        requester: AccountId,
        source: Option<Source>,
        target: AccountId,
    ) -> ApiResult<BundleAllowance> {
        check(&self.bundles_account, &requester, "for this account")?;
        if let Some(source) = source {
            check(&self.bundles_ip, &source, "from this address")?;
        }
        check(
            &self.key_packages_pair,
            &(requester, target),
            "for this account's KeyPackages of that user",
        )?;
        Ok(match self.key_packages_target.check_key(&target) {
            Ok(_) => BundleAllowance::Consume,
            Err(_) => BundleAllowance::WithoutOneTimeKeys,
        })
    }

    /// A device-list call (publish or fetch) by `account` from `source`:
    /// charged to the same per-account and per-source limits as bundle
    /// fetches (a list names no prekeys, so no per-target limit applies).
    pub fn device_list(&self, account: AccountId, source: Option<Source>) -> ApiResult<()> {
        check(&self.bundles_account, &account, "for this account")?;
        source.map_or(Ok(()), |source| {
            check(&self.bundles_ip, &source, "from this address")
        })
    }

    /// Send.
    pub fn send(&self, account: AccountId, source: Option<Source>) -> ApiResult<()> {
        check(&self.send_account, &account, "for this account")?;
        source.map_or(Ok(()), |source| {
            check(&self.send_ip, &source, "from this address")
        })
    }

    /// An attachment call.
    pub fn attachment(&self, account: AccountId, source: Option<Source>) -> ApiResult<()> {
        check(
            &self.attachment_account,
            &account,
            "for this account's attachments",
        )?;
        source.map_or(Ok(()), |source| {
            check(&self.attachment_ip, &source, "from this address")
        })
    }

    /// A link mailbox read, post or close from `source` (`OpenLink` is
    /// [`Self::account_op`]).
    pub fn link(&self, source: Option<Source>) -> ApiResult<()> {
        source.map_or(Ok(()), |source| {
            check(&self.link_ip, &source, "from this address")
        })
    }

    /// A link HELLO by `account`.
    pub fn link_hello(&self, account: AccountId) -> ApiResult<()> {
        check(
            &self.link_hello_account,
            &account,
            "for this account's device links",
        )
    }

    /// Forgets keys whose limits have fully recovered.
    pub fn prune(&self) {
        self.attachment_account.retain_recent();
        self.attachment_ip.retain_recent();
        self.account_ip.retain_recent();
        self.login_account_ip.retain_recent();
        self.login_success.retain_recent();
        self.bundles_account.retain_recent();
        self.bundles_ip.retain_recent();
        self.bundles_pair.retain_recent();
        self.bundles_target.retain_recent();
        self.send_account.retain_recent();
        self.send_ip.retain_recent();
        self.link_ip.retain_recent();
        self.link_hello_account.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_sources_are_64_bit_prefixes_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        assert_ne!(Source::of(ip("192.0.2.7")), Source::of(ip("192.0.2.8")));
    }

    #[test]
    fn a_rotating_ipv6_client_shares_one_bucket() {
        let limiters = Limiters::new(RateLimits {
            account_per_ip: Rate::per_hour(1, 3),
            ..Default::default()
        });
        for k in 1..=3u16 {
            let address = ip(&format!("2001:db8:0:7::{k:x}"));
            limiters.account_op(Some(Source::of(address))).unwrap();
        }
        let rotated = Source::of(ip("2001:db8:0:7:dead:beef:1:2"));
        assert!(limiters.account_op(Some(rotated)).is_err());
        let neighbour = Source::of(ip("2001:db8:0:8::1"));
        assert!(limiters.account_op(Some(neighbour)).is_ok());
    }

    #[test]
    fn login_attempts_from_one_source_do_not_touch_another() {
        let limiters = Limiters::new(RateLimits {
            login_per_account_and_ip: Rate::per_hour(1, 2),
            ..Default::default()
        });
        let attacker = Some(Source::of(ip("203.0.113.9")));
        let owner = Some(Source::of(ip("198.51.100.4")));
        while limiters.login_attempt("victim", attacker).is_ok() {}
        assert!(limiters.login_attempt("victim", owner).is_ok());
    }

    #[test]
    fn link_polling_twice_a_second_for_five_minutes_passes() {
        let limiters = Limiters::new(RateLimits::default());
        let source = Some(Source::of(ip("192.0.2.1")));
        // Ten pollers behind one address at 2/s each stay under the
        // sustained rate; a burst of 200 passes at once, then it stops.
        let passed = (0..1000)
            .take_while(|_| limiters.link(source).is_ok())
            .count();
        assert!((200..1000).contains(&passed), "{passed}");
        assert!(limiters.link(Some(Source::of(ip("192.0.2.2")))).is_ok());
    }

    #[test]
    fn a_drained_target_is_served_without_one_time_keys() {
        let limiters = Limiters::new(RateLimits {
            bundles_per_pair: Rate::per_hour(1, 2),
            bundles_per_target: Rate::per_hour(1, 3),
            ..Default::default()
        });
        let target = 99;
        assert_eq!(
            limiters.bundles(1, None, target).unwrap(),
            BundleAllowance::Consume
        );
        assert_eq!(
            limiters.bundles(1, None, target).unwrap(),
            BundleAllowance::Consume
        );
        // The pair limit refuses the same requester …
        assert!(limiters.bundles(1, None, target).is_err());
        // … and the target limit stops others from consuming keys.
        assert_eq!(
            limiters.bundles(2, None, target).unwrap(),
            BundleAllowance::Consume
        );
        assert_eq!(
            limiters.bundles(3, None, target).unwrap(),
            BundleAllowance::WithoutOneTimeKeys
        );
    }
}
