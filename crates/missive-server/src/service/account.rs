//! `AccountService`: challenges, registration with proof of possession,
//! login, deletion.

use std::sync::Arc;

use missive_proto::v1::account_service_server::AccountService;
use missive_proto::v1::{
    ChallengePurpose as WirePurpose, DeleteAccountRequest, DeleteAccountResponse,
    GetChallengeRequest, GetChallengeResponse, LoginRequest, LoginResponse, RegisterRequest,
    RegisterResponse,
};
use rand::RngCore;
use tonic::{Request, Response, Status};

use super::{State, normalize_username};
use crate::auth::Token;
use crate::checks;
use crate::error::{ApiError, ApiResult};
use crate::limits::{CHALLENGE_TTL, MAX_REGISTRATION_ID, TOKEN_VALID_DAYS};
use crate::storage::{
    ChallengePurpose, DAY_MS, DeviceAddress, NewAccount, StorageError, challenge_hash,
};
use crate::time;

/// The account service.
#[derive(Clone, Debug)]
pub struct AccountApi {
    state: Arc<State>,
}

impl AccountApi {
    /// Over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    async fn issue_token(&self, device: DeviceAddress) -> ApiResult<LoginResponse> {
        let token = Token::generate();
        let today = time::day_of(time::now_ms());
        // Only the expiry day is stored: no time of day (docs/LAWFUL_ACCESS.md).
        let expires_day = today.saturating_add(TOKEN_VALID_DAYS);
        self.state
            .storage
            .insert_token(&token.hash(), device, expires_day, today)
            .await?;
        Ok(LoginResponse {
            token: token.as_bytes().to_vec(),
            expires_at_ms: u64::try_from(expires_day)
                .unwrap_or_default()
                .saturating_mul(DAY_MS),
        })
    }

    async fn register_inner(
        &self,
        request: Request<RegisterRequest>,
    ) -> ApiResult<RegisterResponse> {
        if let Some(limiters) = self.state.limiters() {
            limiters.account_op(self.state.source(&request))?;
        }
        let request = request.into_inner();
        let username = normalize_username(&request.username)?;
        if !(1..=MAX_REGISTRATION_ID).contains(&request.registration_id) {
            return Err(ApiError::InvalidArgument(format!(
                "the registration id must be between 1 and {MAX_REGISTRATION_ID}"
            )));
        }
        let identity = checks::identity(request.identity.as_ref())?;
        let signed_prekey = checks::signed_prekey(&identity, request.signed_prekey.as_ref())?;
        let last_resort = checks::kem_prekey(&identity, request.last_resort_kem_prekey.as_ref())?;
        let (one_time, kem) = checks::one_time_prekeys(
            &identity,
            &request.one_time_prekeys,
            &request.one_time_kem_prekeys,
        )?;
        // The challenge is consumed whatever happens next: no replay.
        if !self
            .state
            .storage
            .take_challenge(
                &challenge_hash(&request.challenge, &username, ChallengePurpose::Register),
                time::now_ms(),
            )
            .await?
        {
            return Err(ApiError::BadChallenge);
        }
        // The transcript carries the username as the client sent it (the
        // challenge itself is bound to the case-folded name).
        checks::registration(
            &identity,
            &request.challenge,
            &request.username,
            request.registration_id,
            &request.signature,
        )?;
        let account = NewAccount {
            username: username.clone(),
            identity: identity.to_bytes(),
            registration_id: request.registration_id,
            signed_prekey,
            last_resort_kem_prekey: last_resort,
            one_time_prekeys: one_time,
            one_time_kem_prekeys: kem,
            today: time::day_of(time::now_ms()),
        };
        let account_id = match self.state.storage.create_account(&account).await {
            Ok(id) => id,
            Err(StorageError::Conflict) => return Err(ApiError::UsernameTaken(username)),
            Err(other) => return Err(other.into()),
        };
        tracing::info!("account registered");
        let session = self
            .issue_token(DeviceAddress {
                account: account_id,
                device: 1,
            })
            .await?;
        Ok(RegisterResponse {
            device_id: 1,
            session: Some(session),
        })
    }

    async fn login_inner(&self, request: Request<LoginRequest>) -> ApiResult<LoginResponse> {
        let source = self.state.source(&request);
        let request = request.into_inner();
        let username = normalize_username(&request.username)?;
        // Charged before the signature check, per (username, source): an
        // attacker failing at the allowed rate spends only their own
        // source's budget, never the owner's.
        if let Some(limiters) = self.state.limiters() {
            limiters.account_op(source)?;
            limiters.login_attempt(&username, source)?;
        }
        let fresh = self
            .state
            .storage
            .take_challenge(
                &challenge_hash(&request.challenge, &username, ChallengePurpose::Login),
                time::now_ms(),
            )
            .await?;
        if !fresh {
            return Err(ApiError::BadChallenge);
        }
        let Some((account, identity)) = self
            .state
            .storage
            .device_identity(&username, request.device_id)
            .await?
        else {
            return Err(ApiError::Unauthenticated("no such username and device"));
        };
        let identity = checks::stored_identity(&identity)?;
        checks::login(
            &identity,
            &request.challenge,
            &username,
            request.device_id,
            &request.signature,
        )
        .map_err(|_| ApiError::Unauthenticated("the login signature does not verify"))?;
        // Only the key holder gets here: bounds the tokens one account mints.
        if let Some(limiters) = self.state.limiters() {
            limiters.login_success(account)?;
        }
        self.issue_token(DeviceAddress {
            account,
            device: request.device_id,
        })
        .await
    }
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    #[tracing::instrument(skip_all)]
    async fn get_challenge(
        &self,
        request: Request<GetChallengeRequest>,
    ) -> Result<Response<GetChallengeResponse>, Status> {
        let result: ApiResult<_> = async {
            if let Some(limiters) = self.state.limiters() {
                limiters.account_op(self.state.source(&request))?;
            }
            let request = request.into_inner();
            let username = normalize_username(&request.username)?;
            let purpose = match WirePurpose::try_from(request.purpose) {
                Ok(WirePurpose::Register) => ChallengePurpose::Register,
                Ok(WirePurpose::Login) => ChallengePurpose::Login,
                _ => {
                    return Err(ApiError::InvalidArgument(
                        "the challenge purpose must be REGISTER or LOGIN".into(),
                    ));
                }
            };
            let mut challenge = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut challenge);
            let expires_at_ms = time::add(time::now_ms(), CHALLENGE_TTL);
            self.state
                .storage
                .put_challenge(
                    &challenge_hash(&challenge, &username, purpose),
                    expires_at_ms,
                )
                .await?;
            Ok(GetChallengeResponse {
                challenge: challenge.to_vec(),
                expires_at_ms,
            })
        }
        .await;
        Ok(Response::new(result?))
    }

    #[tracing::instrument(skip_all)]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        Ok(Response::new(self.register_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        Ok(Response::new(self.login_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        self.state
            .storage
            .delete_account(principal.address.account)
            .await
            .map_err(ApiError::from)?;
        self.state.caches.forget_account(principal.address.account);
        tracing::info!("account deleted");
        Ok(Response::new(DeleteAccountResponse {}))
    }
}
