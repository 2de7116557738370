//! `ReportService`: verifiable abuse reports (message franking).

use std::sync::Arc;

use missive_proto::v1::report_service_server::ReportService;
use missive_proto::v1::{ReportRequest, ReportResponse};
use tonic::{Request, Response, Status};

use super::{State, normalize_username};
use crate::checks;
use crate::error::{ApiError, ApiResult};
use crate::limits::{
    GROUP_ID_LEN, MAX_REPORT_PLAINTEXT_BYTES, MAX_REPORT_REASON_CHARS, MESSAGE_ID_LEN,
};
use crate::storage::NewReport;
use crate::time;

/// The report service.
#[derive(Clone, Debug)]
pub struct ReportApi {
    state: Arc<State>,
}

impl ReportApi {
    /// Over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    async fn report_inner(&self, request: Request<ReportRequest>) -> ApiResult<ReportResponse> {
        let reporter = self.state.principal(&request).await?;
        let request = request.into_inner();
        let invalid = |m: String| ApiError::InvalidArgument(m);
        if request.message_id.len() != MESSAGE_ID_LEN {
            return Err(invalid(format!(
                "the message id must be {MESSAGE_ID_LEN} bytes"
            )));
        }
        if request.plaintext.len() > MAX_REPORT_PLAINTEXT_BYTES {
            return Err(invalid(format!(
                "the reported text is at most {MAX_REPORT_PLAINTEXT_BYTES} bytes"
            )));
        }
        if request.reason.chars().count() > MAX_REPORT_REASON_CHARS {
            return Err(invalid(format!(
                "the reason is at most {MAX_REPORT_REASON_CHARS} characters"
            )));
        }
        let text = String::from_utf8(request.plaintext.clone())
            .map_err(|_| invalid("the reported text is not UTF-8".into()))?;
        let sender = normalize_username(&request.sender)?;
        let verified = if request.group_id.is_empty() {
            checks::report(
                &self.state.franking.get(),
                &request.franking_key,
                &request.franking_commitment,
                &request.franking_tag,
                &request.plaintext,
                &sender,
                reporter.address.account,
                &reporter.username,
                request.server_timestamp_ms,
                &request.message_id,
                request.attachment.as_ref(),
            )?
        } else {
            // A group message: the tag binds the group, not the reporter.
            if request.group_id.len() != GROUP_ID_LEN {
                return Err(invalid(format!("a group id is {GROUP_ID_LEN} bytes")));
            }
            checks::report_group(
                &self.state.franking.get(),
                &request.franking_key,
                &request.franking_commitment,
                &request.franking_tag,
                &request.plaintext,
                &sender,
                &request.group_id,
                request.server_timestamp_ms,
                &request.message_id,
                request.attachment.as_ref(),
            )?
        };
        // The tag binds the sender's account id. A tag from before key ids
        // binds only the name: it is attributed to the account holding the
        // name now only if that account existed on the day of the message.
        let sender_account = match verified.sender_account {
            Some(account) => Some(account),
            None => self
                .state
                .storage
                .account_named(&sender)
                .await?
                .filter(|a| a.created_day <= time::day_of(request.server_timestamp_ms))
                .map(|a| a.id),
        };
        // Identities never change for an account, so the current one is the
        // one at the time; a deleted account has none left.
        let sender_identity = match sender_account {
            Some(account) => self.state.storage.account_identity(account).await?,
            None => None,
        };
        let report_id = self
            .state
            .storage
            .insert_report(&NewReport {
                reporter_account: reporter.address.account,
                reporter: reporter.username,
                sender_account,
                sender,
                sender_identity,
                franking_key_id: verified.key_id,
                message_id: request.message_id,
                server_timestamp_ms: request.server_timestamp_ms,
                plaintext: text,
                reason: request.reason,
                created_at_ms: time::now_ms(),
                attachment: request
                    .attachment
                    .as_ref()
                    .map(prost::Message::encode_to_vec),
            })
            .await?;
        tracing::info!(report_id, "verified abuse report stored");
        Ok(ReportResponse { report_id })
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    #[tracing::instrument(skip_all)]
    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        Ok(Response::new(self.report_inner(request).await?))
    }
}
