//! `LinkService`: the rendezvous mailbox through which a primary device links
//! a new device to its account (protocol v2, docs/PROTOCOL.md "Linking a
//! device"). The server relays four opaque sealed messages — the new
//! device's offer, HELLO, REPLY, FINISH — and cannot read them; payloads are
//! never logged.
//!
//! Every slot is written at most once and only after the one before it; the
//! check is one conditional statement in the store ([`Storage::post_link`]),
//! so two primaries racing with one link code (also through two nodes) get
//! one success and one `FAILED_PRECONDITION`.
//!
//! [`Storage::post_link`]: crate::storage::Storage::post_link

use std::sync::Arc;

use missive_proto::v1::link_service_server::LinkService;
use missive_proto::v1::{
    CloseLinkRequest, CloseLinkResponse, GetLinkRequest, GetLinkResponse, LinkSlot as WireSlot,
    OpenLinkRequest, OpenLinkResponse, PostLinkRequest, PostLinkResponse,
};
use tonic::{Request, Response, Status};

use super::State;
use crate::error::{ApiError, ApiResult};
use crate::limits::{
    LINK_OFFER_LEN, LINK_RENDEZVOUS_LEN, LINK_TTL, MAX_LINK_FINISH_BYTES, MAX_LINK_HELLO_BYTES,
    MAX_LINK_REPLY_BYTES,
};
use crate::storage::{LinkMessage, LinkPost, LinkSlot};
use crate::time;

/// The link service.
#[derive(Clone, Debug)]
pub struct LinkApi {
    state: Arc<State>,
}

/// A slot already written: the code was used (by this primary or another).
const ALREADY_USED: &str = "this link code was already used; start linking again on the new \
                            device for a fresh code";
/// The slot before it is not written yet.
const NOT_YET: &str = "the link is not at that step yet";
/// An unknown or expired mailbox.
const NOT_FOUND: &str = "there is no such link: the code is wrong, expired (after 10 minutes) or \
                         was closed; start linking again on the new device";

fn rendezvous(bytes: &[u8]) -> ApiResult<[u8; LINK_RENDEZVOUS_LEN]> {
    bytes.try_into().map_err(|_| {
        ApiError::InvalidArgument(format!(
            "the rendezvous id must be {LINK_RENDEZVOUS_LEN} bytes, not {}",
            bytes.len()
        ))
    })
}

/// The largest payload of a slot.
fn max_payload(slot: LinkSlot) -> usize {
    match slot {
        LinkSlot::Hello => MAX_LINK_HELLO_BYTES,
        LinkSlot::Reply => MAX_LINK_REPLY_BYTES,
        LinkSlot::Finish => MAX_LINK_FINISH_BYTES,
    }
}

fn slot_name(slot: LinkSlot) -> &'static str {
    match slot {
        LinkSlot::Hello => "HELLO",
        LinkSlot::Reply => "REPLY",
        LinkSlot::Finish => "FINISH",
    }
}

impl LinkApi {
    /// Over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    /// Charges a read, post or close to the caller's source.
    fn charge<T>(&self, request: &Request<T>) -> ApiResult<()> {
        match self.state.limiters() {
            Some(limiters) => limiters.link(self.state.source(request)),
            None => Ok(()),
        }
    }

    async fn open_inner(&self, request: Request<OpenLinkRequest>) -> ApiResult<OpenLinkResponse> {
        // The new device has no account yet: per source, like a challenge.
        if let Some(limiters) = self.state.limiters() {
            limiters.account_op(self.state.source(&request))?;
        }
        let request = request.into_inner();
        let id = rendezvous(&request.rendezvous)?;
        if request.offer.len() != LINK_OFFER_LEN {
            return Err(ApiError::InvalidArgument(format!(
                "the offer must be {LINK_OFFER_LEN} bytes (an X25519 key and an ML-KEM-768 \
                 encapsulation key), not {}",
                request.offer.len()
            )));
        }
        let now = time::now_ms();
        let expires_at_ms = time::add(now, LINK_TTL);
        let opened = self
            .state
            .storage
            .open_link(&id, &request.offer, now, expires_at_ms)
            .await?;
        if !opened {
            return Err(ApiError::AlreadyExists(
                "this rendezvous id is in use by another link; draw a new link code".into(),
            ));
        }
        tracing::debug!("link opened");
        Ok(OpenLinkResponse { expires_at_ms })
    }

    async fn get_inner(&self, request: Request<GetLinkRequest>) -> ApiResult<GetLinkResponse> {
        self.charge(&request)?;
        let id = rendezvous(&request.get_ref().rendezvous)?;
        let mailbox = self
            .state
            .storage
            .link(&id, time::now_ms())
            .await?
            .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))?;
        Ok(GetLinkResponse {
            offer: mailbox.offer,
            hello: mailbox.hello.unwrap_or_default(),
            reply: mailbox.reply.unwrap_or_default(),
            finish: mailbox.finish.unwrap_or_default(),
            expires_at_ms: mailbox.expires_at_ms,
        })
    }

    async fn post_inner(&self, request: Request<PostLinkRequest>) -> ApiResult<PostLinkResponse> {
        self.charge(&request)?;
        let message = request.get_ref();
        let id = rendezvous(&message.rendezvous)?;
        let slot = match WireSlot::try_from(message.slot) {
            Ok(WireSlot::Hello) => LinkSlot::Hello,
            Ok(WireSlot::Reply) => LinkSlot::Reply,
            Ok(WireSlot::Finish) => LinkSlot::Finish,
            _ => {
                return Err(ApiError::InvalidArgument(
                    "the link slot must be HELLO, REPLY or FINISH".into(),
                ));
            }
        };
        let (name, max, len) = (slot_name(slot), max_payload(slot), message.payload.len());
        if len == 0 {
            return Err(ApiError::InvalidArgument(format!(
                "the {name} payload is empty"
            )));
        }
        if len > max {
            return Err(ApiError::InvalidArgument(format!(
                "the {name} payload is {len} bytes; at most {max} are allowed"
            )));
        }
        // HELLO and FINISH come from the primary, signed in; REPLY from the
        // new device, which has no account yet.
        let payload = message.payload.as_slice();
        let message = match slot {
            LinkSlot::Reply => LinkMessage::Reply { payload },
            LinkSlot::Hello => {
                let account = self.state.principal(&request).await?.address.account;
                if let Some(limiters) = self.state.limiters() {
                    limiters.link_hello(account)?;
                }
                LinkMessage::Hello { account, payload }
            }
            LinkSlot::Finish => {
                let account = self.state.principal(&request).await?.address.account;
                LinkMessage::Finish { account, payload }
            }
        };
        let outcome = match self
            .state
            .storage
            .post_link(&id, message, time::now_ms())
            .await
        {
            Ok(outcome) => outcome,
            // The HELLO's account was deleted in the meantime.
            Err(crate::storage::StorageError::NotFound) => {
                return Err(ApiError::Unauthenticated(
                    "the bearer token's account no longer exists",
                ));
            }
            Err(other) => return Err(other.into()),
        };
        match outcome {
            LinkPost::Posted => {
                tracing::debug!(slot = name, "link message posted");
                Ok(PostLinkResponse {})
            }
            LinkPost::NotFound => Err(ApiError::NotFound(NOT_FOUND.into())),
            LinkPost::AlreadyWritten => Err(ApiError::FailedPrecondition(ALREADY_USED.into())),
            LinkPost::NotYet => Err(ApiError::FailedPrecondition(format!(
                "{NOT_YET}: {name} needs {} first",
                match slot {
                    LinkSlot::Hello | LinkSlot::Reply => "HELLO",
                    LinkSlot::Finish => "REPLY",
                }
            ))),
            LinkPost::OtherAccount => Err(ApiError::PermissionDenied(
                "FINISH must come from the account that posted HELLO".into(),
            )),
        }
    }

    async fn close_inner(
        &self,
        request: Request<CloseLinkRequest>,
    ) -> ApiResult<CloseLinkResponse> {
        self.charge(&request)?;
        let id = rendezvous(&request.get_ref().rendezvous)?;
        self.state.storage.close_link(&id).await?;
        tracing::debug!("link closed");
        Ok(CloseLinkResponse {})
    }
}

#[tonic::async_trait]
impl LinkService for LinkApi {
    #[tracing::instrument(skip_all)]
    async fn open_link(
        &self,
        request: Request<OpenLinkRequest>,
    ) -> Result<Response<OpenLinkResponse>, Status> {
        Ok(Response::new(self.open_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_link(
        &self,
        request: Request<GetLinkRequest>,
    ) -> Result<Response<GetLinkResponse>, Status> {
        Ok(Response::new(self.get_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn post_link(
        &self,
        request: Request<PostLinkRequest>,
    ) -> Result<Response<PostLinkResponse>, Status> {
        Ok(Response::new(self.post_inner(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn close_link(
        &self,
        request: Request<CloseLinkRequest>,
    ) -> Result<Response<CloseLinkResponse>, Status> {
        Ok(Response::new(self.close_inner(request).await?))
    }
}
