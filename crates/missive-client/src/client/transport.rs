//! The connection to the server: the lazily opened channel, session tokens
//! (kept in the store, renewed by a signed login), and the mapping of gRPC
//! statuses to errors a person can act on.

use base64::Engine as _;
use missive_proto::v1::{self, account_service_client::AccountServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use zeroize::Zeroizing;

use crate::display::sanitize_line;
use crate::error::{ClientError, Result};
use crate::limits::{REQUEST_TIMEOUT, TOKEN_RENEW_MARGIN_MS};
use crate::net::connect;
use crate::store::now_ms;

use super::{Client, META_TOKEN, META_TOKEN_EXPIRY, with_timeout};

impl Client {
    // ---- connection and auth ----------------------------------------

    pub(super) async fn channel(&mut self) -> Result<Channel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let c = connect(&self.server).await?;
        self.channel = Some(c.clone());
        Ok(c)
    }

    pub(super) fn status_err(&self, s: &Status) -> ClientError {
        ClientError::from_status(s, &self.server.url)
    }

    pub(super) fn remember_token(&mut self, token: &[u8], expires_at_ms: u64) -> Result<()> {
        let encoded =
            Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
        self.store.write(|db| {
            db.set_meta(META_TOKEN, encoded.as_bytes())?;
            db.set_meta_u64(META_TOKEN_EXPIRY, expires_at_ms)
        })?;
        self.token = Some((encoded, expires_at_ms));
        Ok(())
    }

    pub(super) fn forget_token(&mut self) -> Result<()> {
        self.token = None;
        self.store.delete_meta(META_TOKEN)
    }

    pub(super) async fn token(&mut self) -> Result<Zeroizing<String>> {
        let fresh = |exp: u64| exp > now_ms().saturating_add(TOKEN_RENEW_MARGIN_MS);
        if let Some((t, exp)) = &self.token
            && fresh(*exp)
        {
            return Ok(t.clone());
        }
        if let (Some(t), Some(exp)) = (
            self.store.get_meta(META_TOKEN)?,
            self.store.get_meta_u64(META_TOKEN_EXPIRY)?,
        ) && fresh(exp)
        {
            let s = Zeroizing::new(String::from_utf8_lossy(&t).into_owned());
            self.token = Some((s.clone(), exp));
            return Ok(s);
        }
        self.login().await
    }

    pub(super) async fn login(&mut self) -> Result<Zeroizing<String>> {
        let channel = self.channel().await?;
        let mut account = AccountServiceClient::new(channel);
        let challenge = account
            .get_challenge(with_timeout(v1::GetChallengeRequest {
                username: self.username.clone(),
                purpose: v1::ChallengePurpose::Login as i32,
            }))
            .await
            .map_err(|s| self.login_status(&s))?
            .into_inner()
            .challenge;
        let server_name = self.server.name()?;
        let signature = self.identity.sign(&missive_crypto::transcript::login(
            &challenge,
            &server_name,
            &self.username,
            self.device_id,
        ));
        let resp = account
            .login(with_timeout(v1::LoginRequest {
                username: self.username.clone(),
                device_id: self.device_id,
                challenge,
                signature: signature.to_vec(),
                server_name,
            }))
            .await
            .map_err(|s| self.login_status(&s))?
            .into_inner();
        self.remember_token(&resp.token, resp.expires_at_ms)?;
        self.token
            .as_ref()
            .map(|(t, _)| t.clone())
            .ok_or_else(|| ClientError::Protocol("login returned no token".into()))
    }

    pub(super) fn login_status(&self, s: &Status) -> ClientError {
        match s.code() {
            Code::NotFound | Code::Unauthenticated | Code::PermissionDenied => {
                ClientError::AccountRejected(format!(
                    "login as {} failed: {}",
                    self.username,
                    s.message()
                ))
            }
            _ => self.status_err(s),
        }
    }

    pub(super) async fn authed<T>(&mut self, msg: T, timeout: bool) -> Result<Request<T>> {
        let token = self.token().await?;
        let mut req = Request::new(msg);
        if timeout {
            req.set_timeout(REQUEST_TIMEOUT);
        }
        let value = format!("Bearer {}", token.as_str())
            .parse()
            .map_err(|_| ClientError::Protocol("token is not valid metadata".into()))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    /// Maps a status from an authenticated call; forgets a rejected token.
    pub(super) fn authed_err(&mut self, s: &Status) -> ClientError {
        if s.code() == Code::Unauthenticated {
            // The next command logs in again.
            let _ = self.forget_token();
        }
        self.status_err(s)
    }
}

pub(super) fn register_status(s: &Status, username: &str, url: &str) -> ClientError {
    match s.code() {
        Code::AlreadyExists => ClientError::UsernameTaken(username.to_owned()),
        Code::InvalidArgument => ClientError::Server(format!(
            "registration of {username:?} was refused: {}",
            sanitize_line(s.message())
        )),
        _ => ClientError::from_status(s, url),
    }
}

impl Client {
    /// The connection, for the attachment transfers.
    pub(crate) async fn attachment_channel(&mut self) -> Result<Channel> {
        self.channel().await
    }

    /// An authenticated unary attachment request (with the request timeout).
    pub(crate) async fn attachment_request<T>(&mut self, msg: T) -> Result<Request<T>> {
        self.authed(msg, true).await
    }

    /// An authenticated streaming request (no timeout: a large file takes long).
    pub(crate) async fn attachment_stream_request<T>(&mut self, msg: T) -> Result<Request<T>> {
        self.authed(msg, false).await
    }

    /// Maps a status of an attachment call.
    pub(crate) fn attachment_status(&mut self, s: &Status) -> ClientError {
        if s.code() == Code::ResourceExhausted && !s.message().contains("rate") {
            // A quota or size limit, not a rate limit: say what the server said.
            return ClientError::Server(sanitize_line(s.message()));
        }
        if s.code() == Code::NotFound {
            // Final: the blob expired (or never existed); retrying cannot help.
            return ClientError::Attachment(format!(
                "the file is no longer on the server: {}",
                sanitize_line(s.message())
            ));
        }
        self.authed_err(s)
    }
}
