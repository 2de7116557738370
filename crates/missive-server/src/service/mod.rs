//! The gRPC services over the `missive.v1` contract. Handlers validate, call
//! [`crate::checks`] and the [`Storage`] trait, and return [`ApiError`]s that
//! `crate::error` maps to statuses.

pub mod account;
pub mod cache;
pub mod keys;
pub mod messages;
pub mod reports;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use missive_crypto::franking::ServerFrankingKey;
use tokio::sync::{mpsc, watch};

use crate::error::{ApiError, ApiResult};
use crate::fanout::FanOut;
use crate::ratelimit::Limiters;
use crate::storage::{Principal, Storage};

/// State shared by every service.
pub struct State {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) fanout: Arc<dyn FanOut>,
    pub(crate) limiters: Option<Limiters>,
    pub(crate) franking_key: ServerFrankingKey,
    pub(crate) writer: mpsc::Sender<messages::WriteJob>,
    pub(crate) retention: Duration,
    pub(crate) mailbox_limit: u32,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) caches: cache::Caches,
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
}

pub(crate) fn remote_ip<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|a| a.ip())
}

/// Case-folds and validates a username: 3 to 32 of `a-z0-9._-`.
pub fn normalize_username(username: &str) -> ApiResult<String> {
    let folded = username.to_ascii_lowercase();
    let valid = (3..=32).contains(&folded.len())
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
