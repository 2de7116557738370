//! `MessageService`: durable store-and-forward with group commit, streaming
//! delivery and acknowledgement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use missive_proto::v1::message_service_server::MessageService;
use missive_proto::v1::receive_response::Item;
use missive_proto::v1::{
    AcknowledgeRequest, AcknowledgeResponse, DeviceMismatch, Envelope, EnvelopeType, GroupMessage,
    GroupMessageKind, QueueEmpty, ReceiveRequest, ReceiveResponse, SendRequest, SendResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{State, normalize_username};
use crate::error::{ApiError, ApiResult};
use crate::fanout::{FanOut, Subscription};
use crate::franking::KeyRing;
use crate::limits::{
    CATCH_UP_INTERVAL, FRANKING_COMMITMENT_LEN, GROUP_COMMIT_MAX, GROUP_ID_LEN, MAX_ACKS_PER_CALL,
    MAX_ENVELOPE_BYTES, MAX_ENVELOPES_PER_SEND, MAX_GROUP_ACKS_PER_CALL, MESSAGE_ID_LEN,
    RECEIVE_BUFFER, RECEIVE_PAGE,
};
use crate::storage::{
    DeviceAddress, DeviceRecord, NewEnvelope, Principal, SendItem, SendOutcome, Storage,
    StorageError, StoredEnvelope, StoredGroupMessage,
};
use crate::{mls_frame, telemetry, time};

/// One send waiting for the group-commit writer.
#[derive(Debug)]
pub struct WriteJob {
    item: SendItem,
    reply: oneshot::Sender<Result<SendOutcome, StorageError>>,
}

/// Stored envelopes to hand over and devices to wake, after one commit.
type FanOutBatch = (Vec<(DeviceAddress, StoredEnvelope)>, Vec<DeviceAddress>);

/// Committed batches waiting for the fan-out task at most; beyond, the
/// writer waits.
const FAN_OUT_QUEUE: usize = 64;

/// Passes committed batches to the fan-out one after the other (so hand-offs
/// keep commit order) without holding up the writer's next commit.
async fn fan_out(fanout: Arc<dyn FanOut>, mut batches: mpsc::Receiver<FanOutBatch>) {
    while let Some((handed, woken)) = batches.recv().await {
        if !handed.is_empty() {
            fanout.hand_off(handed).await;
        }
        if !woken.is_empty() {
            fanout.publish(&woken).await;
        }
    }
}

/// The group-commit writer: concurrent sends share one durable transaction.
/// After each commit it passes the stored envelopes to the fan-out, in commit
/// order (see [`FanOut::hand_off`]). Ends when every sender handle is dropped.
pub async fn group_commit(
    storage: Arc<dyn Storage>,
    fanout: Arc<dyn FanOut>,
    mut jobs: mpsc::Receiver<WriteJob>,
) {
    let (committed, batches) = mpsc::channel(FAN_OUT_QUEUE);
    let fan_out_task = tokio::spawn(fan_out(fanout, batches));
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut items = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut replies = Vec::with_capacity(GROUP_COMMIT_MAX);
    while jobs.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
        telemetry::commit_batch(batch.len(), jobs.len(), &committed);
        for job in batch.drain(..) {
            items.push(job.item);
            replies.push(job.reply);
        }
        let shared = Arc::new(std::mem::take(&mut items));
        let started = std::time::Instant::now();
        let answer = storage.store_envelopes_with_ids(Arc::clone(&shared)).await;
        telemetry::storage_latency("store_envelopes", started);
        // The store has dropped its reference; should it not have, the
        // envelopes go out as wake-ups (streams re-read the store).
        let (mut owned, first_ids) = match Arc::try_unwrap(shared) {
            Ok(owned) => (owned, true),
            Err(shared) => ((*shared).clone(), false),
        };
        match answer {
            Ok(outcomes) => {
                let mut handed = Vec::with_capacity(owned.len());
                let mut woken = Vec::new();
                for ((item, reply), (outcome, first_id)) in
                    owned.drain(..).zip(replies.drain(..)).zip(outcomes)
                {
                    let _ = reply.send(Ok(outcome));
                    if let SendOutcome::Stored { .. } = outcome {
                        telemetry::stored(item.envelopes.len());
                        let first_id = first_id.filter(|_| first_ids);
                        stored(item, first_id, &mut handed, &mut woken);
                    }
                }
                if (!handed.is_empty() || !woken.is_empty())
                    && committed.send((handed, woken)).await.is_err()
                {
                    tracing::warn!("the fan-out task ended; streams rely on catch-up");
                }
            }
            Err(error) => {
                owned.clear();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        items = owned;
    }
    drop(committed);
    let _ = fan_out_task.await;
}

/// The envelopes of one stored item, to hand over when their ids are known,
/// else their devices to wake.
fn stored(
    item: SendItem,
    first_id: Option<u64>,
    handed: &mut Vec<(DeviceAddress, StoredEnvelope)>,
    woken: &mut Vec<DeviceAddress>,
) {
    let SendItem {
        mut sender,
        sender_device,
        recipient,
        mut message_id,
        server_timestamp_ms,
        expires_at_ms,
        envelopes,
        ..
    } = item;
    let count = envelopes.len();
    for (k, envelope) in envelopes.into_iter().enumerate() {
        let device = DeviceAddress {
            account: recipient,
            device: envelope.recipient_device,
        };
        let Some(id) = first_id.and_then(|first| first.checked_add(k as u64)) else {
            woken.push(device);
            continue;
        };
        // The last envelope takes the item's sender and id instead of copies.
        let (sender, message_id) = if k + 1 == count {
            (std::mem::take(&mut sender), std::mem::take(&mut message_id))
        } else {
            (sender.clone(), message_id.clone())
        };
        handed.push((
            device,
            StoredEnvelope {
                id,
                sender,
                sender_device,
                kind: envelope.kind,
                content: envelope.content,
                message_id,
                server_timestamp_ms,
                expires_at_ms: Some(expires_at_ms),
                franking_commitment: envelope.franking_commitment,
                franking_tag: envelope.franking_tag,
            },
        ));
    }
}

/// The message service.
#[derive(Clone, Debug)]
pub struct MessageApi {
    state: Arc<State>,
}

type ReceiveStream = Pin<Box<dyn Stream<Item = Result<ReceiveResponse, Status>> + Send>>;

impl MessageApi {
    /// Over shared state.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    async fn send_inner(&self, request: Request<SendRequest>) -> ApiResult<SendResponse> {
        let sender = self.state.principal(&request).await?;
        if let Some(limiters) = self.state.limiters() {
            limiters.send(sender.address.account, self.state.source(&request))?;
        }
        let request = request.into_inner();
        let recipient = normalize_username(&request.recipient)?;
        validate(&request)?;
        let online_only = request.online_only;
        // The device list comes from a short-lived cache (see `cache`); a
        // mismatch is confirmed against the store before it is reported.
        let mut fresh = false;
        let recipient_account = loop {
            let ((account, devices), cached) = self.state.recipient(&recipient, fresh).await?;
            // A copy for the sender's other devices (protocol v2 fan-out):
            // the sending device is not a recipient.
            let skip = (account == sender.address.account).then_some(sender.address.device);
            match mismatch(&devices, skip, &request) {
                None => break account,
                Some(_) if cached => fresh = true,
                Some(mismatch) => return Err(ApiError::DeviceMismatch(mismatch)),
            }
        };
        let server_timestamp_ms = time::now_ms();
        // Never longer than the message lives, never longer than the
        // server's own retention; 0 asks for the server's.
        let retention = match request.retention_secs {
            0 => self.state.retention,
            secs => self.state.retention.min(Duration::from_secs(secs)),
        };
        let expires_at_ms = server_timestamp_ms
            .saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        // Tagged like any envelope (so the recipient's checks are the same),
        // though an online-only one is never stored at either end and so is
        // never reported.
        let keys = self.state.franking.get();
        let envelopes = request
            .envelopes
            .into_iter()
            .map(|e| NewEnvelope {
                recipient_device: e.device_id,
                kind: e.r#type,
                franking_tag: keys.tag(
                    &e.franking_commitment,
                    sender.address.account,
                    &sender.username,
                    recipient_account,
                    &recipient,
                    server_timestamp_ms,
                    &request.message_id,
                ),
                content: e.content,
                franking_commitment: e.franking_commitment,
            })
            .collect::<Vec<_>>();
        if online_only {
            self.deliver_online(
                &sender,
                recipient_account,
                request.message_id,
                server_timestamp_ms,
                envelopes,
            )
            .await;
            return Ok(SendResponse {
                server_timestamp_ms,
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            item: SendItem {
                sender: sender.username.clone(),
                sender_device: sender.address.device,
                recipient: recipient_account,
                message_id: request.message_id,
                server_timestamp_ms,
                expires_at_ms,
                envelopes,
                mailbox_limit: self.state.mailbox_limit,
            },
            reply,
        };
        self.state
            .writer
            .send(job)
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        let outcome = answer.await.map_err(|_| ApiError::ShuttingDown)??;
        if let SendOutcome::Stored { .. } = outcome {
            self.state.expiry.note(expires_at_ms);
        }
        match outcome {
            // The writer already handed the envelopes to the fan-out.
            SendOutcome::Stored {
                server_timestamp_ms,
            }
            | SendOutcome::Duplicate {
                server_timestamp_ms,
            } => Ok(SendResponse {
                server_timestamp_ms,
            }),
            SendOutcome::MailboxFull { device } => Err(ApiError::ResourceExhausted(format!(
                "the mailbox of {recipient:?} device {device} is full; try again after they catch up"
            ))),
            SendOutcome::RecipientGone => {
                self.state.caches.forget_recipient(&recipient);
                Err(ApiError::NotFound(format!(
                    "there is no user named {recipient:?}"
                )))
            }
        }
    }
}

impl MessageApi {
    /// An online-only send: straight to the fan-out, never to the store (no
    /// envelope row, no idempotency record, no mailbox count). Whether any
    /// device was online is not told to the sender.
    async fn deliver_online(
        &self,
        sender: &Principal,
        recipient: crate::storage::AccountId,
        message_id: Vec<u8>,
        server_timestamp_ms: u64,
        envelopes: Vec<NewEnvelope>,
    ) {
        let online = envelopes
            .into_iter()
            .map(|e| {
                (
                    DeviceAddress {
                        account: recipient,
                        device: e.recipient_device,
                    },
                    StoredEnvelope {
                        id: 0,
                        sender: sender.username.clone(),
                        sender_device: sender.address.device,
                        kind: e.kind,
                        content: e.content,
                        message_id: message_id.clone(),
                        server_timestamp_ms,
                        expires_at_ms: None,
                        franking_commitment: e.franking_commitment,
                        franking_tag: e.franking_tag,
                    },
                )
            })
            .collect();
        self.state.fanout.deliver_online(online).await;
    }
}

/// How the addressed devices differ from the recipient's current ones.
fn mismatch(
    devices: &[DeviceRecord],
    skip: Option<u32>,
    request: &SendRequest,
) -> Option<DeviceMismatch> {
    let current: BTreeMap<u32, u32> = devices
        .iter()
        .filter(|d| Some(d.device_id) != skip)
        .map(|d| (d.device_id, d.registration_id))
        .collect();
    let addressed: BTreeMap<u32, u32> = request
        .envelopes
        .iter()
        .map(|e| (e.device_id, e.registration_id))
        .collect();
    let mismatch = DeviceMismatch {
        missing_devices: current
            .keys()
            .filter(|d| !addressed.contains_key(d))
            .copied()
            .collect(),
        extra_devices: addressed
            .keys()
            .filter(|d| !current.contains_key(d))
            .copied()
            .collect(),
        stale_devices: addressed
            .iter()
            .filter(|(d, r)| current.get(d).is_some_and(|c| c != *r))
            .map(|(d, _)| *d)
            .collect(),
    };
    let same = mismatch.missing_devices.is_empty()
        && mismatch.extra_devices.is_empty()
        && mismatch.stale_devices.is_empty();
    (!same).then_some(mismatch)
}

fn validate(request: &SendRequest) -> ApiResult<()> {
    let invalid = |m: String| Err(ApiError::InvalidArgument(m));
    if request.message_id.len() != MESSAGE_ID_LEN {
        return invalid(format!("the message id must be {MESSAGE_ID_LEN} bytes"));
    }
    if request.envelopes.is_empty() {
        return invalid("a send needs at least one envelope".into());
    }
    if request.envelopes.len() > MAX_ENVELOPES_PER_SEND {
        return invalid(format!(
            "a send carries at most {MAX_ENVELOPES_PER_SEND} envelopes"
        ));
    }
    let mut seen = BTreeSet::new();
    for envelope in &request.envelopes {
        if !seen.insert(envelope.device_id) {
            return invalid(format!("device {} is addressed twice", envelope.device_id));
        }
        if envelope.content.len() > MAX_ENVELOPE_BYTES {
            return Err(ApiError::ResourceExhausted(format!(
                "an envelope holds at most {MAX_ENVELOPE_BYTES} bytes, not {}",
                envelope.content.len()
            )));
        }
        if envelope.content.is_empty() {
            return invalid("an envelope's content is empty".into());
        }
        if envelope.franking_commitment.len() != FRANKING_COMMITMENT_LEN {
            return invalid(format!(
                "the franking commitment must be {FRANKING_COMMITMENT_LEN} bytes"
            ));
        }
        match EnvelopeType::try_from(envelope.r#type) {
            Ok(EnvelopeType::PrekeyMessage | EnvelopeType::Message) => {}
            _ => return invalid("the envelope type must be PREKEY_MESSAGE or MESSAGE".into()),
        }
    }
    Ok(())
}

fn envelope(stored: StoredEnvelope) -> ReceiveResponse {
    telemetry::delivered();
    // Id 0 is never a stored envelope's (ids start at 1): it marks an
    // online-only one.
    let online_only = stored.id == 0;
    ReceiveResponse {
        item: Some(Item::Envelope(Envelope {
            id: stored.id,
            sender: stored.sender,
            sender_device: stored.sender_device,
            r#type: stored.kind,
            content: stored.content,
            message_id: stored.message_id,
            server_timestamp_ms: stored.server_timestamp_ms,
            franking_commitment: stored.franking_commitment,
            franking_tag: stored.franking_tag,
            online_only,
        })),
    }
}

/// A receive stream's queue to its HTTP/2 stream. Items are boxed: tokio
/// allocates a channel's slots 32 at a time when the channel is made, so an
/// idle stream holds 32 pointers instead of 32 unboxed responses (≈ 5 KiB;
/// docs/BENCHMARKS.md, idle connections).
struct Outbox(mpsc::Sender<Box<Result<ReceiveResponse, Status>>>);

impl Outbox {
    async fn send(&self, item: Result<ReceiveResponse, Status>) -> Result<(), ()> {
        self.0.send(Box::new(item)).await.map_err(|_| ())
    }

    async fn closed(&self) {
        self.0.closed().await;
    }
}

/// The last seq a stream sent of each group.
type GroupPositions = HashMap<Vec<u8>, u64>;

/// A stored group message as delivered. An application message's franking
/// commitment is its MLS authenticated data, and its tag is made now from
/// the stored fields (the MAC of docs/PROTOCOL.md, "Franking in groups", with
/// the current key): neither is stored.
fn group_message(franking: &KeyRing, stored: StoredGroupMessage) -> ReceiveResponse {
    telemetry::delivered();
    let (franking_commitment, franking_tag) = if stored.kind == GroupMessageKind::Application as i32
    {
        // Checked when it was accepted; a row from before that check that
        // does not parse goes out without them, and its members refuse it.
        match mls_frame::application_header(&stored.content) {
            Ok(header) => {
                let tag = franking.tag_group(
                    &header.authenticated_data,
                    stored.sender_account,
                    &stored.sender,
                    &stored.group_id,
                    stored.server_timestamp_ms,
                    &stored.message_id,
                );
                (header.authenticated_data, tag)
            }
            Err(_) => (Vec::new(), Vec::new()),
        }
    } else {
        (Vec::new(), Vec::new())
    };
    ReceiveResponse {
        item: Some(Item::GroupMessage(GroupMessage {
            group_id: stored.group_id,
            seq: stored.seq,
            kind: stored.kind,
            epoch: stored.epoch,
            sender: stored.sender,
            sender_device: stored.sender_device,
            content: stored.content,
            message_id: stored.message_id,
            server_timestamp_ms: stored.server_timestamp_ms,
            franking_commitment,
            franking_tag,
        })),
    }
}

/// Sends the pending messages of every group the device receives that the
/// stream has not sent yet, per group in seq order (a Welcome first);
/// `false` when the stream is over. Group messages are never handed over:
/// a stored one wakes its devices, whose streams read it here.
async fn drain_groups(
    state: &State,
    device: DeviceAddress,
    positions: &mut GroupPositions,
    outbox: &Outbox,
) -> bool {
    let groups = match state.storage.receiving_groups(device).await {
        Ok(groups) => groups,
        Err(error) => {
            let _ = outbox.send(Err(ApiError::from(error).into())).await;
            return false;
        }
    };
    // Groups left (or removed from) are forgotten: a later Welcome starts over.
    positions.retain(|group, _| groups.binary_search(group).is_ok());
    for group in groups {
        loop {
            let after = positions.get(&group).copied().unwrap_or(0);
            let page = state
                .storage
                .pending_group_messages(device, &group, after, RECEIVE_PAGE, time::now_ms())
                .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    let _ = outbox.send(Err(ApiError::from(error).into())).await;
                    return false;
                }
            };
            let full = page.len() >= RECEIVE_PAGE as usize;
            let franking = state.franking.get();
            for stored in page {
                positions.insert(group.clone(), stored.seq);
                if outbox
                    .send(Ok(group_message(&franking, stored)))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            if !full {
                break;
            }
        }
    }
    true
}

/// Sends everything pending after `last`, then the groups' pending
/// messages; `false` when the stream is over.
async fn drain(
    state: &State,
    device: DeviceAddress,
    last: &mut u64,
    positions: &mut GroupPositions,
    outbox: &Outbox,
) -> bool {
    drain_envelopes(state, device, last, outbox).await
        && drain_groups(state, device, positions, outbox).await
}

/// Sends every envelope pending after `last`; `false` when the stream is over.
async fn drain_envelopes(
    state: &State,
    device: DeviceAddress,
    last: &mut u64,
    outbox: &Outbox,
) -> bool {
    loop {
        let started = std::time::Instant::now();
        let page = state
            .storage
            .pending_envelopes(device, *last, RECEIVE_PAGE)
            .await;
        telemetry::storage_latency("pending_envelopes", started);
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                let _ = outbox.send(Err(ApiError::from(error).into())).await;
                return false;
            }
        };
        let full = page.len() >= RECEIVE_PAGE as usize;
        let now = time::now_ms();
        for stored in page {
            *last = (*last).max(stored.id);
            // Past its retention: the purge deletes it soon; never deliver it.
            if stored.expired(now) {
                continue;
            }
            if outbox.send(Ok(envelope(stored))).await.is_err() {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

/// Sends the envelopes handed over, skipping those at or below `last`;
/// `false` when the stream is over.
async fn send_handed(envelopes: Vec<StoredEnvelope>, last: &mut u64, outbox: &Outbox) -> bool {
    let now = time::now_ms();
    for stored in envelopes {
        if stored.id <= *last {
            continue;
        }
        *last = stored.id;
        if stored.expired(now) {
            continue;
        }
        if outbox.send(Ok(envelope(stored))).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends online-only envelopes (id 0) without touching `last`: they are not
/// in the store, so the stream's position in it does not move. `false` when
/// the stream is over.
async fn send_online(envelopes: Vec<StoredEnvelope>, outbox: &Outbox) -> bool {
    for mut online in envelopes {
        online.id = 0;
        if outbox.send(Ok(envelope(online))).await.is_err() {
            return false;
        }
    }
    true
}

async fn deliver(state: Arc<State>, principal: Principal, outbox: Outbox) {
    let _connected = telemetry::ConnectedDevice::new();
    let device = principal.address;
    let mut shutdown = state.shutdown.clone();
    let mut subscription: Option<Subscription> = match state.fanout.subscribe(device).await {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "fan-out subscription failed; falling back to polling");
            None
        }
    };
    // Subscribed first, then read: whatever is committed later is handed over
    // or woken (and duplicates of what the read returned are skipped by id).
    let mut last = 0;
    let mut positions = GroupPositions::new();
    if !drain(&state, device, &mut last, &mut positions, &outbox).await {
        return;
    }
    let marker = ReceiveResponse {
        item: Some(Item::QueueEmpty(QueueEmpty {})),
    };
    if outbox.send(Ok(marker)).await.is_err() {
        return;
    }
    let mut catch_up = tokio::time::interval(CATCH_UP_INTERVAL);
    catch_up.reset();
    // The stream lives no longer than the token that opened it.
    let expiry = tokio::time::sleep(Duration::from_millis(
        principal.expires_at_ms.saturating_sub(time::now_ms()),
    ));
    tokio::pin!(expiry);
    loop {
        if *shutdown.borrow() {
            let _ = outbox.send(Err(ApiError::ShuttingDown.into())).await;
            return;
        }
        let mut reread = false;
        tokio::select! {
            changed = shutdown.changed() => {
                // A dropped sender means the node is gone: end like a shutdown.
                if changed.is_err() {
                    let _ = outbox.send(Err(ApiError::ShuttingDown.into())).await;
                    return;
                }
                continue;
            }
            () = outbox.closed() => return,
            () = &mut expiry => {
                let _ = outbox
                    .send(Err(ApiError::Unauthenticated(
                        "the bearer token expired; log in again and reopen the stream",
                    )
                    .into()))
                    .await;
                return;
            }
            woken = async {
                match subscription.as_mut() {
                    Some(s) => s.woken().await,
                    None => std::future::pending().await,
                }
            } => {
                if !woken {
                    subscription = None;
                    reread = true;
                }
            }
            _ = catch_up.tick() => {
                // A deleted account's streams end (ids are never reused, so
                // nothing would be delivered, but the stream should not linger).
                match state.storage.account_identity(device.account).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = outbox
                            .send(Err(ApiError::Unauthenticated("the account was deleted").into()))
                            .await;
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "account check failed"),
                }
                reread = true;
            }
        }
        // Taken before any read: everything handed was committed before the
        // read starts, so a re-read covers it and it can be dropped.
        let handed = subscription
            .as_ref()
            .map(Subscription::take)
            .unwrap_or_default();
        let delivered = if reread || handed.reread {
            drain(&state, device, &mut last, &mut positions, &outbox).await
        } else {
            send_handed(handed.envelopes, &mut last, &outbox).await
        };
        if !delivered || !send_online(handed.online, &outbox).await {
            return;
        }
    }
}

#[tonic::async_trait]
impl MessageService for MessageApi {
    #[tracing::instrument(skip_all)]
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        Ok(Response::new(self.send_inner(request).await?))
    }

    type ReceiveStream = ReceiveStream;

    #[tracing::instrument(skip_all)]
    async fn receive(
        &self,
        request: Request<ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        let principal = self.state.principal(&request).await?;
        if *self.state.shutdown.borrow() {
            return Err(ApiError::ShuttingDown.into());
        }
        // On a full disk the day may not be recordable; delivering (and so
        // letting the device acknowledge, which frees space) matters more.
        match self
            .state
            .storage
            .touch_last_seen(principal.address, time::day_of(time::now_ms()))
            .await
        {
            Ok(()) => {}
            Err(StorageError::Full) => {
                tracing::warn!("storage full: last-seen day not updated");
            }
            Err(other) => return Err(ApiError::from(other).into()),
        }
        let (outbox, inbox) = mpsc::channel(RECEIVE_BUFFER);
        tokio::spawn(deliver(Arc::clone(&self.state), principal, Outbox(outbox)));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            ReceiverStream::new(inbox),
            |item| *item,
        ))))
    }

    #[tracing::instrument(skip_all)]
    async fn acknowledge(
        &self,
        request: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        let principal = self.state.principal(&request).await?;
        let request = request.into_inner();
        let ids = request.envelope_ids;
        if ids.len() > MAX_ACKS_PER_CALL {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_ACKS_PER_CALL} envelope ids per acknowledgement"
            ))
            .into());
        }
        if request.group_acks.len() > MAX_GROUP_ACKS_PER_CALL {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_GROUP_ACKS_PER_CALL} group acknowledgements per call"
            ))
            .into());
        }
        if !ids.is_empty() {
            self.state
                .storage
                .acknowledge(principal.address, &ids)
                .await
                .map_err(ApiError::from)?;
        }
        // Ids of the wrong length name no group: ignored like unknown ones.
        let group_acks: Vec<(Vec<u8>, u64)> = request
            .group_acks
            .into_iter()
            .filter(|a| a.group_id.len() == GROUP_ID_LEN)
            .map(|a| (a.group_id, a.seq))
            .collect();
        if !group_acks.is_empty() {
            self.state
                .storage
                .acknowledge_group(principal.address, &group_acks)
                .await
                .map_err(ApiError::from)?;
        }
        Ok(Response::new(AcknowledgeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fanout::memory::MemoryFanOut;
    use crate::franking::{KeyRing, SharedKeyRing};

    /// Issue 17.5: a receive stream ends, with UNAUTHENTICATED, when the
    /// token that opened it expires.
    #[tokio::test]
    async fn a_receive_stream_ends_when_its_token_expires() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let storage = crate::storage::open(&url, crate::storage::OpenMode::Serve)
            .await
            .unwrap();
        let account = storage
            .create_account(&crate::storage::suite::account("streamer", 0, 0))
            .await
            .unwrap();
        let (writer, _jobs) = mpsc::channel(1);
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let state = Arc::new(State {
            storage,
            fanout: Arc::new(MemoryFanOut::new()),
            limiters: None,
            franking: SharedKeyRing::new(KeyRing::generate(1), None),
            writer,
            retention: Duration::from_secs(60),
            mailbox_limit: 10,
            shutdown,
            caches: Default::default(),
            drain: Default::default(),
            expiry: Default::default(),
            forwarders: Default::default(),
            server_names: Default::default(),
        });
        let principal = Principal {
            address: DeviceAddress { account, device: 1 },
            username: "streamer".into(),
            expires_at_ms: time::now_ms() + 1_500,
        };
        let (outbox, mut inbox) = mpsc::channel(8);
        let started = std::time::Instant::now();
        tokio::spawn(deliver(state, principal, Outbox(outbox)));
        let first = inbox.recv().await.unwrap().unwrap();
        assert!(matches!(first.item, Some(Item::QueueEmpty(_))));
        let end = tokio::time::timeout(Duration::from_secs(20), inbox.recv())
            .await
            .expect("the stream outlived its token")
            .unwrap()
            .unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unauthenticated, "{end:?}");
        assert!(end.message().contains("expired"), "{}", end.message());
        assert!(started.elapsed() >= Duration::from_millis(1_400));
        assert!(inbox.recv().await.is_none(), "the stream went on");
    }
}
