//! The one place where failures become gRPC statuses, each with a sentence a
//! person can act on. Internal details are logged (without secrets), never sent.

use std::time::Duration;

use missive_proto::v1::{DeviceMismatch, GroupEpoch};
use prost::Message;
use tonic::{Code, Status};

use crate::storage::StorageError;

/// Every way a call can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed; the sentence says how.
    #[error("{0}")]
    InvalidArgument(String),
    /// No, malformed, unknown or expired bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// [`Self::Unauthenticated`] with a sentence naming what the peer sent.
    #[error("{0}")]
    UnauthenticatedBecause(String),
    /// The challenge is unknown, used, expired or for something else.
    #[error(
        "the challenge is unknown, already used, expired or for another username or purpose; request a new one"
    )]
    BadChallenge,
    /// The proof of possession does not verify.
    #[error("the signature does not verify with the identity key")]
    BadSignature,
    /// The username is taken.
    #[error("the username {0:?} is already taken")]
    UsernameTaken(String),
    /// Something does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something the call would create exists already (a link rendezvous id
    /// in use); the sentence says what.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is authenticated but may not do this (a link FINISH from
    /// another account than the HELLO's); the sentence says why.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request conflicts with what the server holds (e.g. a device list
    /// version that is not above the stored one); the sentence says what.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The sender's device list is out of date.
    #[error("the recipient's devices have changed: fetch their bundles again and re-encrypt")]
    DeviceMismatch(DeviceMismatch),
    /// A group write names another epoch than the group's at the server.
    #[error(
        "the group is at epoch {} at the server: process the messages you have not received yet, then retry",
        .0.current_epoch
    )]
    GroupEpoch(GroupEpoch),
    /// A size or count limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate limit; retry after the given time.
    #[error("too many requests {scope}; retry in {} ms", .retry_after.as_millis())]
    RateLimited {
        /// "from this address" / "for this account".
        scope: &'static str,
        /// When the next call can succeed.
        retry_after: Duration,
    },
    /// The store failed.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
    /// The server is shutting down.
    #[error("the server is shutting down; reconnect shortly")]
    ShuttingDown,
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        let scope = match &error {
            ApiError::RateLimited { scope, .. } => Some(crate::telemetry::limiter_scope(scope)),
            _ => None,
        };
        let status = match error {
            ApiError::InvalidArgument(_) | ApiError::BadSignature => {
                Status::invalid_argument(message)
            }
            ApiError::Unauthenticated(_)
            | ApiError::UnauthenticatedBecause(_)
            | ApiError::BadChallenge => Status::unauthenticated(message),
            ApiError::UsernameTaken(_) | ApiError::AlreadyExists(_) => {
                Status::already_exists(message)
            }
            ApiError::PermissionDenied(_) => Status::permission_denied(message),
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(message),
            ApiError::DeviceMismatch(mismatch) => Status::with_details(
                Code::FailedPrecondition,
                message,
                mismatch.encode_to_vec().into(),
            ),
            ApiError::GroupEpoch(epoch) => Status::with_details(
                Code::FailedPrecondition,
                message,
                epoch.encode_to_vec().into(),
            ),
            ApiError::ResourceExhausted(_) | ApiError::RateLimited { .. } => {
                Status::resource_exhausted(message)
            }
            ApiError::ShuttingDown => Status::unavailable(message),
            ApiError::Storage(inner) => match inner {
                StorageError::Conflict => {
                    Status::already_exists("that value already exists on the server")
                }
                StorageError::QuotaExceeded => {
                    Status::resource_exhausted("the storage quota for this device is exceeded")
                }
                StorageError::NotFound => {
                    Status::not_found("the account or device no longer exists")
                }
                StorageError::Full => Status::resource_exhausted(
                    "the server's storage is full: new messages, accounts and keys are refused \
                     until the operator frees space; receiving and acknowledging still work",
                ),
                StorageError::Unavailable(detail) => {
                    tracing::warn!(%detail, "storage unavailable");
                    Status::unavailable(
                        "the server's database is busy or unavailable; retry shortly",
                    )
                }
                other => {
                    tracing::error!(error = %other, "storage failure");
                    Status::internal(
                        "the server could not complete the request because of a storage failure",
                    )
                }
            },
        };
        crate::telemetry::failed(status.code(), scope);
        status
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
