//! Bearer tokens: 32 random bytes, sent as `authorization: Bearer
//! <base64url, no padding>`, stored only as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use zeroize::Zeroizing;

use crate::error::{ApiError, ApiResult};
use crate::storage::{Principal, Storage};

/// A freshly issued token: 32 random bytes. Never logged.
pub struct Token(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Draws a token from the OS RNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// The raw bytes (returned once to the client).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// What the store keeps.
    pub fn hash(&self) -> [u8; 32] {
        hash(self.0.as_ref())
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Parses the `authorization` header into the token hash.
pub fn token_hash(metadata: &MetadataMap) -> ApiResult<[u8; 32]> {
    let value = metadata
        .get("authorization")
        .ok_or(ApiError::Unauthenticated(
            "this call needs a bearer token in the authorization header; log in first",
        ))?
        .to_str()
        .map_err(|_| ApiError::Unauthenticated("the authorization header is not ASCII"))?;
    let encoded = value
        .strip_prefix("Bearer ")
        .ok_or(ApiError::Unauthenticated(
            "the authorization header must be `Bearer <token>`",
        ))?;
    let bytes =
        Zeroizing::new(URL_SAFE_NO_PAD.decode(encoded.trim()).map_err(|_| {
            ApiError::Unauthenticated("the bearer token is not unpadded base64url")
        })?);
    if bytes.len() != 32 {
        return Err(ApiError::Unauthenticated(
            "the bearer token must encode 32 bytes",
        ));
    }
    Ok(hash(&bytes))
}

/// Resolves the caller of an authenticated call.
pub async fn authenticate(storage: &dyn Storage, metadata: &MetadataMap) -> ApiResult<Principal> {
    authenticate_hash(storage, &token_hash(metadata)?).await
}

/// Resolves a token hash against the store.
pub async fn authenticate_hash(storage: &dyn Storage, hash: &[u8; 32]) -> ApiResult<Principal> {
    storage
        .authenticate(hash, crate::time::now_ms())
        .await?
        .ok_or(ApiError::Unauthenticated(
            "the bearer token is unknown or expired; log in again",
        ))
}

/// The header value a client sends for `token` (used by tests and tools).
pub fn bearer_header(token: &[u8]) -> String {
    format!("Bearer {}", URL_SAFE_NO_PAD.encode(token))
}
