//! The ceiling: a bare tonic `MessageService` over the same TLS, with the same
//! call pattern (send, stream, acknowledge) but no storage, no
//! authentication and no crypto. It runs in a child process of its own so
//! that, like the relay, it shares the machine's cores with the clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use missive_proto::v1::message_service_server::{MessageService, MessageServiceServer};
use missive_proto::v1::{
    AcknowledgeRequest, AcknowledgeResponse, Envelope, QueueEmpty, ReceiveRequest, ReceiveResponse,
    SendRequest, SendResponse, receive_response,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// Metadata key naming the calling device in the baseline (it has no auth).
pub(crate) const DEVICE_HEADER: &str = "x-bench-device";

#[derive(Default)]
struct Baseline {
    mailboxes: Mutex<HashMap<String, mpsc::UnboundedSender<Result<ReceiveResponse, Status>>>>,
    next_id: AtomicU64,
}

fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .metadata()
        .get(DEVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("missing x-bench-device"))
}

type ReceiveStream = Pin<Box<dyn Stream<Item = Result<ReceiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MessageService for Baseline {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let sender = caller(&request)?;
        let request = request.into_inner();
        let mailbox = self
            .mailboxes
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .get(&request.recipient)
            .cloned()
            .ok_or_else(|| Status::not_found("no such device"))?;
        for envelope in request.envelopes {
            let delivered = Envelope {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                sender: sender.clone(),
                sender_device: 1,
                r#type: envelope.r#type,
                content: envelope.content,
                message_id: request.message_id.clone(),
                server_timestamp_ms: 0,
                franking_commitment: envelope.franking_commitment,
                franking_tag: Vec::new(),
                online_only: false,
            };
            let item = ReceiveResponse {
                item: Some(receive_response::Item::Envelope(delivered)),
            };
            // A closed stream just drops the envelope: the baseline keeps nothing.
            let _ = mailbox.send(Ok(item));
        }
        Ok(Response::new(SendResponse::default()))
    }

    type ReceiveStream = ReceiveStream;

    async fn receive(
        &self,
        request: Request<ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        let device = caller(&request)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(ReceiveResponse {
            item: Some(receive_response::Item::QueueEmpty(QueueEmpty {})),
        }));
        self.mailboxes
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .insert(device, tx);
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn acknowledge(
        &self,
        _request: Request<AcknowledgeRequest>,
    ) -> Result<Response<AcknowledgeResponse>, Status> {
        Ok(Response::new(AcknowledgeResponse {}))
    }
}

/// Serves the baseline until killed; prints the same "listening" line as the relay.
pub(crate) async fn serve(listen: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    println!("missive-server listening on https://{addr}");
    Server::builder()
        .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?
        .add_service(MessageServiceServer::new(Baseline::default()))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
