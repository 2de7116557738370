//! `AttachmentService`: resumable upload and download of sealed attachment
//! blobs (docs/PROTOCOL.md, "Attachments"). The server sees opaque bytes of
//! a padded size under a random id; it never learns who a blob is for.
//!
//! Memory is bounded whatever the blob size: an upload holds one gRPC
//! message (at most [`MAX_UPLOAD_MESSAGE_BYTES`]) at a time, a download at
//! most [`DOWNLOAD_QUEUE`] reads of [`DOWNLOAD_READ_BYTES`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use missive_proto::v1::attachment_service_server::AttachmentService;
use missive_proto::v1::{
    CreateUploadRequest, CreateUploadResponse, DownloadChunk, DownloadRequest,
    FinalizeUploadRequest, FinalizeUploadResponse, QueryUploadRequest, QueryUploadResponse,
    UploadChunk, UploadResponse,
};
use rand_core::{OsRng, RngCore};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::State;
use crate::blobs::{BLOB_ID_LEN, BlobError, BlobId, BlobStore, NewBlob};
use crate::time;

/// Default per-account quota: bytes of sealed blobs reserved within the
/// retention period (`--attachment-quota`).
pub const DEFAULT_ATTACHMENT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;
/// Largest blob: the sealed size of `missive_crypto`'s largest attachment.
pub const MAX_BLOB_BYTES: u64 = {
    let chunks = missive_crypto::attachment::MAX_ATTACHMENT_LEN
        .div_ceil(missive_crypto::attachment::ATTACHMENT_CHUNK_LEN as u64)
        + 1;
    missive_crypto::attachment::MAX_ATTACHMENT_LEN * 21 / 20
        + chunks * (missive_crypto::attachment::ATTACHMENT_CHUNK_OVERHEAD as u64 + 1)
};
/// Largest `UploadChunk.data`.
pub const MAX_UPLOAD_DATA_BYTES: usize = 1024 * 1024;
/// Largest upload message on the wire (data plus id and offset).
pub const MAX_UPLOAD_MESSAGE_BYTES: usize = MAX_UPLOAD_DATA_BYTES + 1024;
/// Bytes of one download message.
pub const DOWNLOAD_READ_BYTES: usize =
    16 * missive_crypto::attachment::ATTACHMENT_CHUNK_CIPHERTEXT_LEN;
/// Download messages queued ahead of the network.
pub const DOWNLOAD_QUEUE: usize = 2;
/// Uploaded bytes between two durable commits: a broken upload repeats at most
/// this much. An fsync every 4 MiB cost this machine's disk 0.3–1.2 s per
/// 256 MiB, every 16 MiB 0.2–0.26 s (docs/BENCHMARKS.md, "Issue 15").
pub const COMMIT_EVERY_BYTES: u64 = 16 * 1024 * 1024;
/// An upload not finalised within this time is deleted.
pub const UPLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The attachment service.
#[derive(Clone, Debug)]
pub struct AttachmentApi {
    state: Arc<State>,
    blobs: Arc<dyn BlobStore>,
    quota: u64,
}

fn blob_id(bytes: &[u8]) -> Result<BlobId, Status> {
    BlobId::try_from(bytes)
        .map_err(|_| Status::invalid_argument(format!("an attachment id is {BLOB_ID_LEN} bytes")))
}

impl AttachmentApi {
    /// Over shared state and a blob store, with a per-account quota in bytes.
    pub fn new(state: Arc<State>, blobs: Arc<dyn BlobStore>, quota: u64) -> Self {
        Self {
            state,
            blobs,
            quota,
        }
    }

    /// Authenticates the call and charges the attachment rate limits.
    async fn limited<T>(&self, request: &Request<T>) -> Result<crate::storage::Principal, Status> {
        let principal = self.state.principal(request).await?;
        if let Some(limiters) = self.state.limiters() {
            limiters.attachment(principal.address.account, self.state.source(request))?;
        }
        Ok(principal)
    }

    fn retention_days(&self) -> i64 {
        (self.state.retention.as_secs() / 86_400) as i64 + 1
    }

    async fn receive_upload(&self, mut stream: Streaming<UploadChunk>) -> Result<u64, Status> {
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("the upload stream sent no chunk"));
        };
        let id = blob_id(&first.blob_id)?;
        let status = self.blobs.status(&id).await?;
        if status.finalized {
            return Err(BlobError::State("the upload is already finalised").into());
        }
        let committed = self.blobs.begin_append(&id).await?;
        let mut next = committed;
        let mut last_commit = committed;
        // The commit of the previous 16 MiB runs while the next ones arrive;
        // at most one is in flight, so commits land in order.
        let mut in_flight: Option<tokio::task::JoinHandle<Result<(), BlobError>>> = None;
        let mut chunk = Some(first);
        let outcome: Result<(), Status> = loop {
            let Some(message) = chunk.take() else {
                match stream.message().await {
                    Ok(Some(message)) => {
                        chunk = Some(message);
                        continue;
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                }
            };
            if message.blob_id != id {
                break Err(Status::invalid_argument(
                    "every chunk of an upload stream must name the same attachment",
                ));
            }
            if message.data.len() > MAX_UPLOAD_DATA_BYTES {
                break Err(Status::invalid_argument(format!(
                    "an upload chunk carries at most {MAX_UPLOAD_DATA_BYTES} bytes"
                )));
            }
            if message.offset != next {
                break Err(BlobError::WrongOffset {
                    committed: next,
                    offset: message.offset,
                }
                .into());
            }
            if next.saturating_add(message.data.len() as u64) > status.size {
                break Err(BlobError::TooLong { size: status.size }.into());
            }
            if let Err(error) = self.blobs.write(&id, next, &message.data).await {
                break Err(error.into());
            }
            next += message.data.len() as u64;
            if next - last_commit >= COMMIT_EVERY_BYTES {
                if let Err(error) = finish_commit(in_flight.take()).await {
                    break Err(error);
                }
                let blobs = Arc::clone(&self.blobs);
                let at = next;
                in_flight = Some(tokio::spawn(async move { blobs.commit(&id, at).await }));
                last_commit = next;
            }
        };
        finish_commit(in_flight).await?;
        // Whatever arrived intact is kept, also when the stream broke, so the
        // client resumes from here.
        if next != last_commit {
            self.blobs.commit(&id, next).await?;
        }
        outcome.map(|()| next)
    }
}

/// Waits for an upload's commit in flight, if any.
async fn finish_commit(
    in_flight: Option<tokio::task::JoinHandle<Result<(), BlobError>>>,
) -> Result<(), Status> {
    match in_flight {
        None => Ok(()),
        Some(task) => task
            .await
            .map_err(|_| Status::internal("the upload failed on the server"))?
            .map_err(Status::from),
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AttachmentService for AttachmentApi {
    #[tracing::instrument(skip_all)]
    async fn create_upload(
        &self,
        request: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        let principal = self.limited(&request).await?;
        let size = request.into_inner().size;
        if size == 0 {
            return Err(Status::invalid_argument(
                "an attachment blob is never empty (files are padded); announce its sealed size",
            ));
        }
        if size > MAX_BLOB_BYTES {
            return Err(Status::resource_exhausted(format!(
                "an attachment is at most {MAX_BLOB_BYTES} sealed bytes"
            )));
        }
        let mut id = [0u8; BLOB_ID_LEN];
        OsRng.fill_bytes(&mut id);
        let now = time::now_ms();
        let today = time::day_of(now);
        self.blobs
            .create(&NewBlob {
                id,
                size,
                created_ms: now,
                account: principal.address.account,
                day: today,
                since_day: today - self.retention_days(),
                quota: self.quota,
            })
            .await?;
        tracing::info!(size, "attachment upload created");
        Ok(Response::new(CreateUploadResponse {
            blob_id: id.to_vec(),
            expires_at_ms: time::add(now, self.state.retention),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn upload(
        &self,
        request: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        self.limited(&request).await?;
        // On a task of its own: when the client resets the stream, hyper drops
        // this handler, but the task still sees the broken stream and commits
        // what arrived, so the client resumes from there.
        let api = self.clone();
        let stream = request.into_inner();
        let committed = tokio::spawn(async move { api.receive_upload(stream).await })
            .await
            .map_err(|_| Status::internal("the upload failed on the server"))??;
        Ok(Response::new(UploadResponse { committed }))
    }

    #[tracing::instrument(skip_all)]
    async fn query_upload(
        &self,
        request: Request<QueryUploadRequest>,
    ) -> Result<Response<QueryUploadResponse>, Status> {
        self.limited(&request).await?;
        let id = blob_id(&request.into_inner().blob_id)?;
        let status = self.blobs.status(&id).await?;
        Ok(Response::new(QueryUploadResponse {
            size: status.size,
            committed: status.committed,
            finalized: status.finalized,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn finalize_upload(
        &self,
        request: Request<FinalizeUploadRequest>,
    ) -> Result<Response<FinalizeUploadResponse>, Status> {
        self.limited(&request).await?;
        let id = blob_id(&request.into_inner().blob_id)?;
        self.blobs.finalize(&id).await?;
        Ok(Response::new(FinalizeUploadResponse {}))
    }

    type DownloadStream = DownloadStream;

    #[tracing::instrument(skip_all)]
    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        self.limited(&request).await?;
        let request = request.into_inner();
        let id = blob_id(&request.blob_id)?;
        let status = self.blobs.status(&id).await?;
        if !status.finalized {
            return Err(Status::failed_precondition(
                "the attachment's upload was never finished; ask the sender to send it again",
            ));
        }
        if request.offset > status.size {
            return Err(Status::out_of_range(format!(
                "the attachment has {} bytes; cannot start at {}",
                status.size, request.offset
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(DOWNLOAD_QUEUE);
        let blobs = Arc::clone(&self.blobs);
        let size = status.size;
        let mut offset = request.offset;
        tokio::spawn(async move {
            while offset < size {
                let item = match blobs.read(&id, offset, DOWNLOAD_READ_BYTES).await {
                    Ok(data) if data.is_empty() => Err(BlobError::NotFound.into()),
                    Ok(data) => {
                        let chunk = DownloadChunk { offset, data, size };
                        offset += chunk.data.len() as u64;
                        Ok(chunk)
                    }
                    Err(error) => Err(Status::from(error)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
