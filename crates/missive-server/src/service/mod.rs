//! The gRPC services over the `missive.v1` contract. Handlers validate, call
//! [`crate::checks`] and the [`Storage`] trait, and return [`ApiError`]s that
//! `crate::error` maps to statuses.

pub mod account;
pub mod attachments;
pub mod cache;
pub mod drain;
pub mod expiry;
pub mod groups;
pub mod keys;
pub mod link;
pub mod messages;
pub mod reports;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::error::{ApiError, ApiResult};
use crate::fanout::FanOut;
use crate::franking::SharedKeyRing;
use crate::proxy::TrustedProxies;
use crate::ratelimit::{Limiters, Source};
use crate::storage::{Principal, Storage};

/// State shared by every service.
pub struct State {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) fanout: Arc<dyn FanOut>,
    pub(crate) limiters: Option<Limiters>,
    pub(crate) franking: SharedKeyRing,
    pub(crate) writer: mpsc::Sender<messages::WriteJob>,
    pub(crate) retention: Duration,
    pub(crate) mailbox_limit: u32,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) caches: cache::Caches,
    pub(crate) drain: drain::DrainWatch,
    /// The next per-envelope expiry, for the purge loop.
    pub(crate) expiry: expiry::ExpiryWatch,
    /// Peers whose `x-forwarded-for` names the client.
    pub(crate) forwarders: TrustedProxies,
    /// The names transcripts may name (protocol v2).
    pub(crate) server_names: crate::tls::ServerNames,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("retention", &self.retention)
            .field("mailbox_limit", &self.mailbox_limit)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The caller of an authenticated call. A token the store confirmed less
    /// than [`cache::AUTH_TTL`] ago is trusted without a query (see
    /// [`cache`] for the bounds).
    pub(crate) async fn principal<T>(&self, request: &tonic::Request<T>) -> ApiResult<Principal> {
        let hash = crate::auth::token_hash(request.metadata())?;
        if let Some(principal) = self.caches.principal(&hash) {
            return Ok(principal);
        }
        let principal = crate::auth::authenticate_hash(self.storage.as_ref(), &hash).await?;
        self.caches.remember_principal(hash, principal.clone());
        Ok(principal)
    }

    pub(crate) fn limiters(&self) -> Option<&Limiters> {
        self.limiters.as_ref()
    }

    /// The rate-limit source of a call: the TCP peer (or the client a
    /// trusted PROXY-protocol peer named), or the client a trusted
    /// forwarder named in `x-forwarded-for`.
    pub(crate) fn source<T>(&self, request: &tonic::Request<T>) -> Option<Source> {
        let peer = request.remote_addr().map(|a| a.ip())?;
        Some(Source::of(self.forwarders.client(peer, request.metadata())))
    }

    /// A user's account and devices, from the short-lived cache (`true`)
    /// unless `fresh`.
    pub(crate) async fn recipient(
        &self,
        username: &str,
        fresh: bool,
    ) -> ApiResult<(cache::Recipient, bool)> {
        if !fresh && let Some(found) = self.caches.recipient(username) {
            return Ok((found, true));
        }
        let (account, devices) =
            self.storage.devices(username).await?.ok_or_else(|| {
                ApiError::NotFound(format!("there is no user named {username:?}"))
            })?;
        let found: cache::Recipient = (account, devices.into());
        self.caches
            .remember_recipient(username.to_owned(), found.clone());
        Ok((found, false))
    }
}

/// Case-folds and validates a username: 3 to 32 of `a-z0-9._-`.
pub fn normalize_username(username: &str) -> ApiResult<String> {
    let folded = username.to_ascii_lowercase();
    let valid = (3..=crate::limits::MAX_USERNAME_BYTES).contains(&folded.len())
        && folded
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid {
        Ok(folded)
    } else {
        Err(ApiError::InvalidArgument(
            "a username is 3 to 32 characters of a-z, 0-9, '.', '_' and '-'".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(normalize_username("Alice.B-1_").unwrap(), "alice.b-1_");
        for bad in ["ab", "", "a b", "élan", "x".repeat(33).as_str(), "bob!"] {
            assert!(normalize_username(bad).is_err(), "{bad}");
        }
    }
}
