//! `AccountService`: challenges, registration with proof of possession of
//! the account and device keys, login per device, linked devices joining
//! their account (protocol v2), deletion.

use std::sync::Arc;

use missive_crypto::{PrekeyOwner, PublicIdentity};
use missive_proto::v1::account_service_server::AccountService;
use missive_proto::v1::{
    AddDeviceRequest, ChallengePurpose as WirePurpose, DeleteAccountRequest, DeleteAccountResponse,
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
    AccountId, ChallengePurpose, DAY_MS, DeviceAddress, NewAccount, NewDevice, PutOutcome,
    StorageError, challenge_hash,
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

    /// Consumes a challenge whatever happens next (no replay); refuses an
    /// unknown, used or expired one.
    async fn take_challenge(
        &self,
        challenge: &[u8],
        username: &str,
        purpose: ChallengePurpose,
    ) -> ApiResult<()> {
        let fresh = self
            .state
            .storage
            .take_challenge(
                &challenge_hash(challenge, username, purpose),
                time::now_ms(),
            )
            .await?;
        if fresh {
            Ok(())
        } else {
            Err(ApiError::BadChallenge)
        }
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
        check_registration_id(request.registration_id)?;
        self.state
            .server_names
            .check(&request.server_name)
            .map_err(ApiError::InvalidArgument)?;
        let identity = checks::key(request.identity.as_ref(), "account identity")?;
        let device_identity = checks::key(request.device_identity.as_ref(), "device identity")?;
        if device_identity == identity {
            return Err(ApiError::InvalidArgument(
                "the device identity must be a key of its own, not the account identity".into(),
            ));
        }
        checks::first_device_list(
            &request.signed_device_list,
            &identity,
            &username,
            &device_identity,
            request.registration_id,
        )?;
        let owner = PrekeyOwner {
            account: identity.clone(),
            device_id: 1,
        };
        let signed_prekey =
            checks::signed_prekey(&device_identity, &owner, request.signed_prekey.as_ref())?;
        let last_resort = checks::kem_prekey(
            &device_identity,
            &owner,
            request.last_resort_kem_prekey.as_ref(),
        )?;
        let (one_time, kem) = checks::one_time_prekeys(
            &device_identity,
            &owner,
            &request.one_time_prekeys,
            &request.one_time_kem_prekeys,
        )?;
        self.take_challenge(&request.challenge, &username, ChallengePurpose::Register)
            .await?;
        // The transcript carries the username as the client sent it (the
        // challenge itself is bound to the case-folded name).
        checks::registration(
            &identity,
            &request.challenge,
            &request.server_name,
            &request.username,
            request.registration_id,
            &request.signature,
        )?;
        let account = NewAccount {
            username: username.clone(),
            identity: identity.to_bytes(),
            device_identity: device_identity.to_bytes(),
            signed_device_list: request.signed_device_list,
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
        self.state
            .server_names
            .check(&request.server_name)
            .map_err(ApiError::UnauthenticatedBecause)?;
        self.take_challenge(&request.challenge, &username, ChallengePurpose::Login)
            .await?;
        let Some((account, identity)) = self
            .state
            .storage
            .device_identity(&username, request.device_id)
            .await?
        else {
            return Err(ApiError::Unauthenticated("no such username and device"));
        };
        // The device's own key (protocol v2), never the account key.
        let identity = checks::stored_identity(&identity)?;
        checks::login(
            &identity,
            &request.challenge,
            &request.server_name,
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

    /// A recovering device's list (AddDevice with `signed_device_list`): it
    /// must verify under the account key, name the device with the key that
    /// signed this request, and be newer than the stored list; stored as
    /// PublishDeviceList stores one.
    async fn store_recovery_list(
        &self,
        request: &AddDeviceRequest,
        username: &str,
        account: AccountId,
        account_key: &PublicIdentity,
    ) -> ApiResult<()> {
        let bytes = &request.signed_device_list;
        let version = checks::device_list(bytes, account_key, username)?;
        // Verified just above; parsed again only for the entry it names.
        let parsed = missive_crypto::SignedDeviceList::from_bytes(bytes)
            .map_err(|e| ApiError::InvalidArgument(format!("the recovery list: {e}")))?;
        let entry = parsed
            .unverified_list()
            .devices
            .iter()
            .find(|d| d.device_id == request.device_id)
            .ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "the recovery list does not name device {}",
                    request.device_id
                ))
            })?;
        checks::add_device(
            &entry.identity,
            &request.challenge,
            &request.server_name,
            &request.username,
            request.device_id,
            request.registration_id,
            &request.signature,
        )
        .map_err(|_| {
            ApiError::InvalidArgument(
                "the add-device signature does not verify with the key the recovery list names"
                    .into(),
            )
        })?;
        match self
            .state
            .storage
            .put_device_list(account, version, bytes)
            .await?
        {
            PutOutcome::Stored => {
                self.state.caches.forget_account(account);
                tracing::info!(version, "device list published by a recovering device");
                Ok(())
            }
            PutOutcome::Unchanged => Ok(()),
            PutOutcome::Stale { stored_version } => Err(ApiError::FailedPrecondition(format!(
                "the server holds device list version {stored_version}; the recovery list \
                 (version {version}) must be newer"
            ))),
        }
    }

    async fn add_device_inner(
        &self,
        request: Request<AddDeviceRequest>,
    ) -> ApiResult<RegisterResponse> {
        if let Some(limiters) = self.state.limiters() {
            limiters.account_op(self.state.source(&request))?;
        }
        let request = request.into_inner();
        let username = normalize_username(&request.username)?;
        let device_id = request.device_id;
        if device_id == 0 {
            return Err(ApiError::InvalidArgument(
                "the device id is missing (0): give the id the device list names".into(),
            ));
        }
        check_registration_id(request.registration_id)?;
        self.state
            .server_names
            .check(&request.server_name)
            .map_err(ApiError::InvalidArgument)?;
        self.take_challenge(&request.challenge, &username, ChallengePurpose::AddDevice)
            .await?;
        let account = self
            .state
            .storage
            .account_named(&username)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("there is no user named {username:?}")))?;
        let account_key = checks::stored_identity(&account.identity)?;
        if !request.signed_device_list.is_empty() {
            self.store_recovery_list(&request, &username, account.id, &account_key)
                .await?;
        }
        let unlisted = || {
            ApiError::FailedPrecondition(format!(
                "the account's device list does not name device {device_id}: the primary \
                 device must publish a list naming it first"
            ))
        };
        // The key comes from the list the account key signed, never from the
        // request: the server cannot add a device the primary did not link.
        let (_, list) = self
            .state
            .storage
            .device_list(account.id)
            .await?
            .ok_or_else(unlisted)?;
        let entry = checks::stored_device_list(&list, &account_key, &username)?
            .devices
            .into_iter()
            .find(|d| d.device_id == device_id)
            .ok_or_else(unlisted)?;
        if entry.registration_id != request.registration_id {
            return Err(ApiError::FailedPrecondition(format!(
                "the account's device list names device {device_id} with registration id {}, \
                 not {}",
                entry.registration_id, request.registration_id
            )));
        }
        let address = DeviceAddress {
            account: account.id,
            device: device_id,
        };
        let registered = || {
            ApiError::FailedPrecondition(format!(
                "device {device_id} is already registered; a device id joins once (the \
                 primary device removes it from the list to free it)"
            ))
        };
        if self.state.storage.device_key(address).await?.is_some() {
            return Err(registered());
        }
        let device_key = entry.identity;
        checks::add_device(
            &device_key,
            &request.challenge,
            &request.server_name,
            &request.username,
            device_id,
            request.registration_id,
            &request.signature,
        )
        .map_err(|_| {
            ApiError::InvalidArgument(format!(
                "the add-device signature does not verify with the key the device list names \
                 for device {device_id}"
            ))
        })?;
        let owner = PrekeyOwner {
            account: account_key,
            device_id,
        };
        let signed_prekey =
            checks::signed_prekey(&device_key, &owner, request.signed_prekey.as_ref())?;
        let last_resort =
            checks::kem_prekey(&device_key, &owner, request.last_resort_kem_prekey.as_ref())?;
        let (one_time, kem) = checks::one_time_prekeys(
            &device_key,
            &owner,
            &request.one_time_prekeys,
            &request.one_time_kem_prekeys,
        )?;
        let device = NewDevice {
            address,
            identity: device_key.to_bytes(),
            registration_id: request.registration_id,
            signed_prekey,
            last_resort_kem_prekey: last_resort,
            one_time_prekeys: one_time,
            one_time_kem_prekeys: kem,
            today: time::day_of(time::now_ms()),
        };
        match self.state.storage.add_device(&device).await {
            Ok(()) => {}
            Err(StorageError::Conflict) => return Err(registered()),
            Err(StorageError::NotFound) => {
                return Err(ApiError::NotFound(format!(
                    "there is no user named {username:?}"
                )));
            }
            Err(other) => return Err(other.into()),
        }
        // Senders see the new device at once.
        self.state.caches.forget_account(account.id);
        tracing::info!(device_id, "device added");
        let session = self.issue_token(address).await?;
        Ok(RegisterResponse {
            device_id,
            session: Some(session),
        })
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
                Ok(WirePurpose::AddDevice) => ChallengePurpose::AddDevice,
                _ => {
                    return Err(ApiError::InvalidArgument(
                        "the challenge purpose must be REGISTER, LOGIN or ADD_DEVICE".into(),
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
    async fn add_device(
        &self,
        request: Request<AddDeviceRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        Ok(Response::new(self.add_device_inner(request).await?))
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

fn check_registration_id(id: u32) -> ApiResult<()> {
    if (1..=MAX_REGISTRATION_ID).contains(&id) {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "the registration id must be between 1 and {MAX_REGISTRATION_ID}"
        )))
    }
}
