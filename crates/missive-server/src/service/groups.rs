//! `GroupService`: the KeyPackage directory and the MLS Delivery Service
//! (proto/missive/v1/groups.proto). The server never parses MLS: it checks
//! sizes and who may write, stores opaque bytes once per group message,
//! orders them per group (the epoch compare-and-set and the seq are decided
//! in the store, [`Storage::commit_group`]) and wakes the receiving devices'
//! streams, which read the rows themselves (`service/messages.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use missive_proto::v1::group_service_server::GroupService;
use missive_proto::v1::{
    CommitRequest, CommitResponse, CreateGroupRequest, CreateGroupResponse, DeviceKeyPackage,
    FetchKeyPackagesRequest, FetchKeyPackagesResponse, GetKeyPackageCountRequest, GroupEpoch,
    GroupMessageKind, KeyPackageCount, LeaveGroupRequest, LeaveGroupResponse,
    SendGroupMessageRequest, SendGroupMessageResponse, UploadKeyPackagesRequest,
    UploadKeyPackagesResponse,
};
use tonic::{Request, Response, Status};

use super::{State, normalize_username};
use crate::error::{ApiError, ApiResult};
use crate::limits::{
    FRANKING_COMMITMENT_LEN, GROUP_ID_LEN, MAX_COMMIT_BYTES, MAX_COMMIT_DEVICES,
    MAX_GROUP_MESSAGE_BYTES, MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_CALL,
    MAX_KEY_PACKAGES_STORED, MAX_WELCOME_BYTES, MESSAGE_ID_LEN,
};
use crate::mls_frame;
use crate::ratelimit::BundleAllowance;
use crate::storage::{
    AccountId, COMMIT_KIND, DeviceAddress, GroupCreate, GroupWrite, KeyPackageCounts, NewCommit,
    NewGroupMessage, Principal, StorageError,
};
use crate::time;

/// The group service.
#[derive(Clone, Debug)]
pub struct GroupApi {
    state: Arc<State>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(message.into())
}

fn check_group_id(group_id: &[u8]) -> ApiResult<()> {
    if group_id.len() == GROUP_ID_LEN {
        Ok(())
    } else {
        Err(invalid(format!("a group id is {GROUP_ID_LEN} bytes")))
    }
}

fn check_message_id(message_id: &[u8]) -> ApiResult<()> {
    if message_id.len() == MESSAGE_ID_LEN {
        Ok(())
    } else {
        Err(invalid(format!(
            "the message id must be {MESSAGE_ID_LEN} bytes"
        )))
    }
}

/// Content of an application message or proposal.
fn check_content(content: &[u8], what: &str) -> ApiResult<()> {
    if content.is_empty() {
        return Err(invalid(format!("the {what} is empty")));
    }
    if content.len() > MAX_GROUP_MESSAGE_BYTES {
        return Err(ApiError::ResourceExhausted(format!(
            "a {what} holds at most {MAX_GROUP_MESSAGE_BYTES} bytes, not {}",
            content.len()
        )));
    }
    Ok(())
}

/// An application message's MLS header must name the request's group and
/// epoch, and carry its franking commitment as authenticated data: the
/// server reads the commitment back from the ciphertext at delivery.
fn check_application_header(request: &SendGroupMessageRequest) -> ApiResult<()> {
    let header = mls_frame::application_header(&request.content).map_err(|e| {
        invalid(format!(
            "an APPLICATION group message must be an MLS application PrivateMessage, but {e}"
        ))
    })?;
    if header.group_id != request.group_id {
        return Err(invalid("the message's MLS header names another group"));
    }
    if header.epoch != request.epoch {
        return Err(invalid(format!(
            "the message's MLS header names epoch {}, the request epoch {}",
            header.epoch, request.epoch
        )));
    }
    if header.authenticated_data != request.franking_commitment {
        return Err(invalid(
            "the franking commitment is not the message's MLS authenticated data",
        ));
    }
    Ok(())
}

/// The same answer for an unknown group and one the caller does not
/// receive, so the id of someone else's group reveals nothing.
fn no_group() -> ApiError {
    ApiError::NotFound("there is no group with this id that this device receives".into())
}

fn counts(counts: KeyPackageCounts) -> KeyPackageCount {
    KeyPackageCount {
        one_time: counts.one_time,
        has_last_resort: counts.has_last_resort,
    }
}

impl GroupApi {
    /// Over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// Group writes share the per-account (and per-source) send limit.
    fn send_limit<T>(&self, principal: &Principal, request: &Request<T>) -> ApiResult<()> {
        match self.state.limiters() {
            Some(limiters) => limiters.send(principal.address.account, self.state.source(request)),
            None => Ok(()),
        }
    }

    /// When a message accepted now expires: the server's retention, or
    /// less when the sender asks for less.
    fn expires_at(&self, now_ms: u64, retention_secs: u64) -> u64 {
        let retention = match retention_secs {
            0 => self.state.retention,
            secs => self.state.retention.min(Duration::from_secs(secs)),
        };
        now_ms.saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX))
    }

    /// Wakes the devices a stored message is for; their streams read it.
    async fn stored(&self, outcome: &GroupWrite) {
        if let GroupWrite::Stored { wake, .. } = outcome
            && !wake.is_empty()
        {
            self.state.fanout.publish(wake).await;
        }
    }

    /// Resolves the devices a commit names. `must_exist`: an unknown one is
    /// NOT_FOUND naming it; else it is skipped (a removed device that is
    /// gone already needs no removal).
    async fn resolve(
        &self,
        addresses: &[missive_proto::v1::DeviceAddress],
        must_exist: bool,
        resolved: &mut HashMap<String, Option<AccountId>>,
    ) -> ApiResult<Vec<DeviceAddress>> {
        let mut devices = Vec::with_capacity(addresses.len());
        for address in addresses {
            let username = normalize_username(&address.username)?;
            let missing = || {
                ApiError::NotFound(format!(
                    "there is no device {username}/{}",
                    address.device_id
                ))
            };
            let mut found = None;
            for fresh in [false, true] {
                let recipient = match self.state.recipient(&username, fresh).await {
                    Ok((recipient, _)) => recipient,
                    Err(ApiError::NotFound(_)) => break,
                    Err(other) => return Err(other),
                };
                resolved.insert(username.clone(), Some(recipient.0));
                if recipient.1.iter().any(|d| d.device_id == address.device_id) {
                    found = Some(recipient.0);
                    break;
                }
            }
            match found {
                Some(account) => devices.push(DeviceAddress {
                    account,
                    device: address.device_id,
                }),
                None if must_exist => return Err(missing()),
                None => {}
            }
        }
        Ok(devices)
    }

    fn epoch_error(current_epoch: u64) -> ApiError {
        ApiError::GroupEpoch(GroupEpoch { current_epoch })
    }

    async fn commit_inner(&self, request: Request<CommitRequest>) -> ApiResult<CommitResponse> {
        let principal = self.state.principal(&request).await?;
        let request_ref = &request;
        let r = request_ref.get_ref();
        check_group_id(&r.group_id)?;
        check_message_id(&r.message_id)?;
        if r.commit.is_empty() {
            return Err(invalid("the commit is empty"));
        }
        if r.commit.len() > MAX_COMMIT_BYTES {
            return Err(invalid(format!(
                "a commit holds at most {MAX_COMMIT_BYTES} bytes, not {}",
                r.commit.len()
            )));
        }
        if r.welcome.len() > MAX_WELCOME_BYTES {
            return Err(invalid(format!(
                "a Welcome holds at most {MAX_WELCOME_BYTES} bytes, not {}",
                r.welcome.len()
            )));
        }
        if r.added.len() > MAX_COMMIT_DEVICES || r.removed.len() > MAX_COMMIT_DEVICES {
            return Err(invalid(format!(
                "a commit adds and removes at most {MAX_COMMIT_DEVICES} devices each"
            )));
        }
        match (r.added.is_empty(), r.welcome.is_empty()) {
            (true, false) => return Err(invalid("a commit that adds no device has no Welcome")),
            (false, true) => return Err(invalid("a commit that adds devices needs a Welcome")),
            _ => {}
        }
        self.send_limit(&principal, request_ref)?;
        let request = request.into_inner();
        let mut resolved = HashMap::new();
        let added = self.resolve(&request.added, true, &mut resolved).await?;
        let removed = self.resolve(&request.removed, false, &mut resolved).await?;
        let now = time::now_ms();
        let commit = NewCommit {
            message: NewGroupMessage {
                group_id: request.group_id,
                epoch: request.epoch,
                kind: COMMIT_KIND,
                sender: principal.address,
                sender_name: principal.username,
                message_id: request.message_id,
                content: request.commit,
                server_timestamp_ms: now,
                expires_at_ms: self.expires_at(now, 0),
                disappears_at_ms: None,
            },
            welcome: request.welcome,
            added,
            removed,
            today: time::day_of(now),
        };
        let outcome = match self.state.storage.commit_group(&commit).await {
            // An added device went away between the check and the write.
            Err(StorageError::NotFound) => {
                return Err(ApiError::NotFound(
                    "a device the commit adds no longer exists".into(),
                ));
            }
            other => other?,
        };
        self.stored(&outcome).await;
        match outcome {
            GroupWrite::Stored {
                seq,
                server_timestamp_ms,
                epoch,
                ..
            }
            | GroupWrite::Duplicate {
                seq,
                server_timestamp_ms,
                epoch,
            } => Ok(CommitResponse {
                seq,
                server_timestamp_ms,
                epoch,
            }),
            GroupWrite::WrongEpoch { current_epoch } => Err(Self::epoch_error(current_epoch)),
            GroupWrite::NotFound => Err(no_group()),
        }
    }

    async fn send_inner(
        &self,
        request: Request<SendGroupMessageRequest>,
    ) -> ApiResult<SendGroupMessageResponse> {
        let principal = self.state.principal(&request).await?;
        {
            let r = request.get_ref();
            check_group_id(&r.group_id)?;
            check_message_id(&r.message_id)?;
            match GroupMessageKind::try_from(r.kind) {
                Ok(GroupMessageKind::Application) => {
                    if r.franking_commitment.len() != FRANKING_COMMITMENT_LEN {
                        return Err(invalid(format!(
                            "the franking commitment must be {FRANKING_COMMITMENT_LEN} bytes"
                        )));
                    }
                }
                Ok(GroupMessageKind::Proposal) => {}
                _ => return Err(invalid("the kind must be APPLICATION or PROPOSAL")),
            }
            check_content(&r.content, "group message")?;
            if r.kind == GroupMessageKind::Application as i32 {
                check_application_header(r)?;
            }
        }
        self.send_limit(&principal, &request)?;
        let request = request.into_inner();
        let now = time::now_ms();
        // The franking tag is made at delivery (service::messages), from the
        // stored row and the commitment in the ciphertext's header.
        let retention_ends = self.expires_at(now, 0);
        let message = NewGroupMessage {
            group_id: request.group_id,
            epoch: request.epoch,
            kind: request.kind,
            sender: principal.address,
            sender_name: principal.username,
            message_id: request.message_id,
            content: request.content,
            server_timestamp_ms: now,
            expires_at_ms: retention_ends,
            // Only a shorter end needs its own column (and index entry).
            disappears_at_ms: Some(self.expires_at(now, request.retention_secs))
                .filter(|&at| at < retention_ends),
        };
        let outcome = self.state.storage.store_group_message(&message).await?;
        self.stored(&outcome).await;
        match outcome {
            GroupWrite::Stored {
                seq,
                server_timestamp_ms,
                ..
            }
            | GroupWrite::Duplicate {
                seq,
                server_timestamp_ms,
                ..
            } => Ok(SendGroupMessageResponse {
                seq,
                server_timestamp_ms,
            }),
            GroupWrite::WrongEpoch { current_epoch } => Err(Self::epoch_error(current_epoch)),
            GroupWrite::NotFound => Err(no_group()),
        }
    }

    async fn leave_inner(&self, request: Request<LeaveGroupRequest>) -> ApiResult<()> {
        let principal = self.state.principal(&request).await?;
        {
            let r = request.get_ref();
            check_group_id(&r.group_id)?;
            check_message_id(&r.message_id)?;
            check_content(&r.proposal, "proposal")?;
        }
        self.send_limit(&principal, &request)?;
        let request = request.into_inner();
        let now = time::now_ms();
        let message = NewGroupMessage {
            group_id: request.group_id,
            epoch: request.epoch,
            kind: GroupMessageKind::Proposal as i32,
            sender: principal.address,
            sender_name: principal.username,
            message_id: request.message_id,
            content: request.proposal,
            server_timestamp_ms: now,
            expires_at_ms: self.expires_at(now, 0),
            disappears_at_ms: None,
        };
        let outcome = self.state.storage.leave_group(&message).await?;
        self.stored(&outcome).await;
        match outcome {
            GroupWrite::Stored { .. } | GroupWrite::Duplicate { .. } => Ok(()),
            // Not an outcome of a leave (any epoch is accepted).
            GroupWrite::WrongEpoch { current_epoch } => Err(Self::epoch_error(current_epoch)),
            GroupWrite::NotFound => Err(no_group()),
        }
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    #[tracing::instrument(skip_all)]
    async fn upload_key_packages(
        &self,
        request: Request<UploadKeyPackagesRequest>,
    ) -> Result<Response<UploadKeyPackagesResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        let request = request.into_inner();
        if request.key_packages.len() > MAX_KEY_PACKAGES_PER_CALL {
            return Err(ApiError::ResourceExhausted(format!(
                "at most {MAX_KEY_PACKAGES_PER_CALL} KeyPackages per upload"
            ))
            .into());
        }
        for key_package in request.key_packages.iter().chain([&request.last_resort]) {
            if key_package.len() > MAX_KEY_PACKAGE_BYTES {
                return Err(invalid(format!(
                    "a KeyPackage holds at most {MAX_KEY_PACKAGE_BYTES} bytes, not {}",
                    key_package.len()
                ))
                .into());
            }
        }
        if request.key_packages.iter().any(Vec::is_empty) {
            return Err(invalid("a KeyPackage is empty").into());
        }
        let last_resort = (!request.last_resort.is_empty()).then_some(&request.last_resort[..]);
        let stored = self
            .state
            .storage
            .upload_key_packages(
                principal.address,
                &request.key_packages,
                last_resort,
                MAX_KEY_PACKAGES_STORED,
            )
            .await
            .map_err(|e| match e {
                StorageError::QuotaExceeded => ApiError::ResourceExhausted(format!(
                    "a device holds at most {MAX_KEY_PACKAGES_STORED} one-time KeyPackages"
                )),
                other => ApiError::from(other),
            })?;
        Ok(Response::new(UploadKeyPackagesResponse {
            count: Some(counts(stored)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_key_package_count(
        &self,
        request: Request<GetKeyPackageCountRequest>,
    ) -> Result<Response<KeyPackageCount>, Status> {
        let principal = self.state.principal(&request).await?;
        let stored = self
            .state
            .storage
            .key_package_count(principal.address)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(counts(stored)))
    }

    #[tracing::instrument(skip_all)]
    async fn fetch_key_packages(
        &self,
        request: Request<FetchKeyPackagesRequest>,
    ) -> Result<Response<FetchKeyPackagesResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        let source = self.state.source(&request);
        let username = normalize_username(&request.get_ref().username)?;
        let not_found = || ApiError::NotFound(format!("there is no user named {username:?}"));
        let mut consume = true;
        if let Some(limiters) = self.state.limiters() {
            let (target, _) = self.state.recipient(&username, false).await?.0;
            let allowance = limiters.key_packages(principal.address.account, source, target)?;
            consume = allowance == BundleAllowance::Consume;
        }
        let (_, found) = self
            .state
            .storage
            .take_key_packages(&username, consume)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(not_found)?;
        Ok(Response::new(FetchKeyPackagesResponse {
            username,
            key_packages: found
                .key_packages
                .into_iter()
                .map(|k| DeviceKeyPackage {
                    device_id: k.device_id,
                    key_package: k.key_package,
                    is_last_resort: k.is_last_resort,
                })
                .collect(),
            missing_devices: found.missing_devices,
            signed_device_list: found.signed_device_list,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<CreateGroupResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        check_group_id(&request.get_ref().group_id)?;
        // Registering groups is a write like any other: the send limit.
        self.send_limit(&principal, &request)?;
        let group_id = request.into_inner().group_id;
        let now = time::now_ms();
        match self
            .state
            .storage
            .create_group(&group_id, principal.address, now, time::day_of(now))
            .await
            .map_err(ApiError::from)?
        {
            GroupCreate::Created { created_at_ms } | GroupCreate::Retried { created_at_ms } => {
                Ok(Response::new(CreateGroupResponse { created_at_ms }))
            }
            GroupCreate::Taken => Err(ApiError::AlreadyExists(
                "a group with this id exists; choose another random id".into(),
            )
            .into()),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        Ok(Response::new(self.commit_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn send_group_message(
        &self,
        request: Request<SendGroupMessageRequest>,
    ) -> Result<Response<SendGroupMessageResponse>, Status> {
        Ok(Response::new(self.send_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn leave_group(
        &self,
        request: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        self.leave_inner(request).await?;
        Ok(Response::new(LeaveGroupResponse {}))
    }
}
