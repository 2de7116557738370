//! `KeyService`: one-time prekey upload and counts, signed prekey rotation,
//! bundle distribution, and each account's signed device list (protocol v2),
//! which the server checks, stores and serves but can never make.

use std::sync::Arc;

use missive_crypto::PrekeyOwner;
use missive_proto::v1::key_service_server::KeyService;
use missive_proto::v1::{
    DeviceLinkedDay, GetBundlesRequest, GetBundlesResponse, GetDeviceListRequest,
    GetDeviceListResponse, GetPrekeyCountRequest, KemPrekey, OneTimePrekey, PrekeyBundle,
    PrekeyCount, PublicIdentity, PublishDeviceListRequest, PublishDeviceListResponse,
    ReplaceSignedPrekeysRequest, ReplaceSignedPrekeysResponse, SignedPrekey, UploadPrekeysRequest,
    UploadPrekeysResponse,
};
use tonic::{Request, Response, Status};

use super::{State, normalize_username};
use crate::checks;
use crate::error::{ApiError, ApiResult};
use crate::limits::MAX_PREKEYS_STORED;
use crate::ratelimit::BundleAllowance;
use crate::storage::{AccountId, DeviceAddress, PrekeyCounts, PutOutcome, StorageError};

/// The key service.
#[derive(Clone, Debug)]
pub struct KeyApi {
    state: Arc<State>,
}

fn count(counts: PrekeyCounts) -> PrekeyCount {
    PrekeyCount {
        one_time_prekeys: counts.one_time,
        one_time_kem_prekeys: counts.one_time_kem,
        one_time_prekeys_taken_last_hour: 0,
        drained_recently: false,
    }
}

impl KeyApi {
    /// Over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    async fn identity(&self, account: AccountId) -> ApiResult<missive_crypto::PublicIdentity> {
        let bytes = self
            .state
            .storage
            .account_identity(account)
            .await?
            .ok_or(ApiError::Unauthenticated("the account no longer exists"))?;
        checks::stored_identity(&bytes)
    }

    /// The caller device's key and the owner its prekey signatures name
    /// (the account key and the device id, protocol v2).
    async fn device_key(
        &self,
        device: DeviceAddress,
    ) -> ApiResult<(missive_crypto::PublicIdentity, PrekeyOwner)> {
        let account = self.identity(device.account).await?;
        let bytes = self
            .state
            .storage
            .device_key(device)
            .await?
            .ok_or(ApiError::Unauthenticated("the device no longer exists"))?;
        let key = checks::stored_identity(&bytes)?;
        Ok((
            key,
            PrekeyOwner {
                account,
                device_id: device.device,
            },
        ))
    }

    /// The account's signed device list as published; empty without one.
    async fn signed_device_list(&self, account: AccountId) -> ApiResult<Vec<u8>> {
        Ok(self
            .state
            .storage
            .device_list(account)
            .await?
            .map(|(_, bytes)| bytes)
            .unwrap_or_default())
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    #[tracing::instrument(skip_all)]
    async fn upload_prekeys(
        &self,
        request: Request<UploadPrekeysRequest>,
    ) -> Result<Response<UploadPrekeysResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        let request = request.into_inner();
        let (identity, owner) = self.device_key(principal.address).await?;
        let (one_time, kem) = checks::one_time_prekeys(
            &identity,
            &owner,
            &request.one_time_prekeys,
            &request.one_time_kem_prekeys,
        )?;
        let counts = self
            .state
            .storage
            .upload_prekeys(principal.address, &one_time, &kem, MAX_PREKEYS_STORED)
            .await
            .map_err(|e| match e {
                StorageError::Conflict => ApiError::InvalidArgument(
                    "a one-time prekey id is already in use on this device".into(),
                ),
                StorageError::QuotaExceeded => ApiError::ResourceExhausted(format!(
                    "a device holds at most {MAX_PREKEYS_STORED} one-time prekeys of each kind"
                )),
                other => other.into(),
            })?;
        Ok(Response::new(UploadPrekeysResponse {
            count: Some(count(counts)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_prekey_count(
        &self,
        request: Request<GetPrekeyCountRequest>,
    ) -> Result<Response<PrekeyCount>, Status> {
        let principal = self.state.principal(&request).await?;
        let counts = self
            .state
            .storage
            .prekey_counts(principal.address)
            .await
            .map_err(ApiError::from)?;
        let (taken, drained) = self
            .state
            .drain
            .report(principal.address, crate::time::now_ms());
        Ok(Response::new(PrekeyCount {
            one_time_prekeys_taken_last_hour: taken,
            drained_recently: drained,
            ..count(counts)
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn replace_signed_prekeys(
        &self,
        request: Request<ReplaceSignedPrekeysRequest>,
    ) -> Result<Response<ReplaceSignedPrekeysResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        let request = request.into_inner();
        let (identity, owner) = self.device_key(principal.address).await?;
        let signed = request
            .signed_prekey
            .as_ref()
            .map(|k| checks::signed_prekey(&identity, &owner, Some(k)))
            .transpose()?;
        let kem = request
            .last_resort_kem_prekey
            .as_ref()
            .map(|k| checks::kem_prekey(&identity, &owner, Some(k)))
            .transpose()?;
        self.state
            .storage
            .replace_signed_prekeys(principal.address, signed.as_ref(), kem.as_ref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ReplaceSignedPrekeysResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn get_bundles(
        &self,
        request: Request<GetBundlesRequest>,
    ) -> Result<Response<GetBundlesResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        let source = self.state.source(&request);
        let request = request.into_inner();
        let username = normalize_username(&request.username)?;
        let device = (request.device_id != 0).then_some(request.device_id);
        let not_found = || ApiError::NotFound(format!("there is no user named {username:?}"));
        let mut consume = true;
        if let Some(limiters) = self.state.limiters() {
            let (target, _) = self.state.recipient(&username, false).await?.0;
            let allowance = limiters.bundles(principal.address.account, source, target)?;
            if allowance == BundleAllowance::WithoutOneTimeKeys {
                consume = false;
                self.state.drain.throttled(target, crate::time::now_ms());
            }
        }
        let (target, bundles) = self
            .state
            .storage
            .take_bundles(&username, device, consume)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(not_found)?;
        let now = crate::time::now_ms();
        for bundle in &bundles.bundles {
            if bundle.one_time_prekey.is_some() {
                let address = DeviceAddress {
                    account: target,
                    device: bundle.device_id,
                };
                self.state.drain.taken(address, now);
            }
        }
        if bundles.bundles.is_empty() {
            return Err(ApiError::NotFound(format!(
                "{username:?} has no device {}",
                request.device_id
            ))
            .into());
        }
        // Each device's own key (protocol v2); the account key is in the list.
        let mut wire = Vec::with_capacity(bundles.bundles.len());
        for b in bundles.bundles {
            let identity = checks::stored_identity(&b.identity)?;
            wire.push((identity, b));
        }
        let bundles = wire
            .into_iter()
            .map(|(identity, b)| PrekeyBundle {
                device_id: b.device_id,
                registration_id: b.registration_id,
                identity: Some(PublicIdentity {
                    signing_key: identity.signing_key().to_vec(),
                }),
                signed_prekey: Some(SignedPrekey {
                    id: b.signed_prekey.id,
                    public_key: b.signed_prekey.public_key,
                    signature: b.signed_prekey.signature,
                }),
                kem_prekey: Some(KemPrekey {
                    id: b.kem_prekey.id,
                    public_key: b.kem_prekey.public_key,
                    signature: b.kem_prekey.signature,
                }),
                kem_prekey_is_last_resort: b.kem_prekey_is_last_resort,
                one_time_prekey: b.one_time_prekey.map(|k| OneTimePrekey {
                    id: k.id,
                    public_key: k.public_key,
                }),
            })
            .collect();
        let signed_device_list = self.signed_device_list(target).await?;
        Ok(Response::new(GetBundlesResponse {
            username,
            bundles,
            signed_device_list,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn publish_device_list(
        &self,
        request: Request<PublishDeviceListRequest>,
    ) -> Result<Response<PublishDeviceListResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        if let Some(limiters) = self.state.limiters() {
            limiters.device_list(principal.address.account, self.state.source(&request))?;
        }
        let bytes = request.into_inner().signed_device_list;
        let account = principal.address.account;
        let identity = self.identity(account).await?;
        let version = checks::device_list(&bytes, &identity, &principal.username)?;
        // Checked above; parsed again for the ids it names.
        let names_caller = missive_crypto::SignedDeviceList::from_bytes(&bytes)
            .map(|signed| {
                signed
                    .unverified_list()
                    .devices
                    .iter()
                    .any(|d| d.device_id == principal.address.device)
            })
            .unwrap_or(false);
        if !names_caller {
            return Err(ApiError::FailedPrecondition(format!(
                "a device cannot remove itself: the list does not name the calling device {} \
                 (another device of the account must publish it)",
                principal.address.device
            ))
            .into());
        }
        let outcome = self
            .state
            .storage
            .put_device_list(account, version, &bytes)
            .await
            .map_err(|e| match e {
                StorageError::NotFound => ApiError::Unauthenticated("the account no longer exists"),
                other => other.into(),
            })?;
        match outcome {
            PutOutcome::Stored => {
                // Devices the list no longer names were deleted with their
                // tokens: refuse their cached tokens at once.
                self.state.caches.forget_account(account);
                tracing::info!(version, "device list published");
            }
            PutOutcome::Unchanged => {}
            PutOutcome::Stale { stored_version } => {
                return Err(ApiError::FailedPrecondition(format!(
                    "the server holds device list version {stored_version}; a published list \
                     must have a higher version (version {version} was refused; a list with \
                     the same version and other contents is never accepted)"
                ))
                .into());
            }
        }
        Ok(Response::new(PublishDeviceListResponse { version }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_device_list(
        &self,
        request: Request<GetDeviceListRequest>,
    ) -> Result<Response<GetDeviceListResponse>, Status> {
        // The token is optional: a device recovering its account has none.
        let principal = if request.metadata().contains_key("authorization") {
            Some(self.state.principal(&request).await?)
        } else {
            None
        };
        if let Some(limiters) = self.state.limiters() {
            let source = self.state.source(&request);
            match &principal {
                Some(p) => limiters.device_list(p.address.account, source)?,
                None => limiters.account_op(source)?,
            }
        }
        let request = request.into_inner();
        let username = normalize_username(&request.username)?;
        let account = self
            .state
            .storage
            .account_named(&username)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("there is no user named {username:?}")))?;
        let signed_device_list = self.signed_device_list(account.id).await?;
        let own = principal
            .as_ref()
            .is_some_and(|p| p.address.account == account.id);
        let linked_days = if request.with_linked_days && own {
            self.state
                .storage
                .device_days(&username)
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .map(|(device_id, linked, seen)| {
                    let ms = |day: i64| {
                        u64::try_from(day)
                            .unwrap_or(0)
                            .saturating_mul(crate::storage::DAY_MS)
                    };
                    DeviceLinkedDay {
                        device_id,
                        linked_at_ms: ms(linked),
                        last_seen_at_ms: ms(seen),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(GetDeviceListResponse {
            signed_device_list,
            linked_days,
        }))
    }
}
