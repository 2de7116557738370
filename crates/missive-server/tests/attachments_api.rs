//! `AttachmentService` over real TLS: create with quota, a broken upload
//! stream resumed from the committed offset, offsets and sizes enforced,
//! finalise, download from any offset, expiry of unknown blobs, and no
//! plaintext in the data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use missive_crypto::attachment::{
    ATTACHMENT_CHUNK_CIPHERTEXT_LEN, AttachmentError, AttachmentKey, Layout, open_all, seal_all,
};
use missive_proto::v1::attachment_service_client::AttachmentServiceClient;
use missive_proto::v1::*;
use rand::rngs::OsRng;
use tonic::Code;
use tonic::transport::Channel;

fn service(user: &User) -> AttachmentServiceClient<Channel> {
    AttachmentServiceClient::new(user.channel.clone())
}

fn chunks(id: &[u8], blob: &[u8], from: usize, to: usize) -> Vec<UploadChunk> {
    (from..to)
        .step_by(ATTACHMENT_CHUNK_CIPHERTEXT_LEN)
        .map(|offset| UploadChunk {
            blob_id: id.to_vec(),
            offset: offset as u64,
            data: blob[offset..(offset + ATTACHMENT_CHUNK_CIPHERTEXT_LEN).min(to)].to_vec(),
        })
        .collect()
}

async fn download(user: &User, id: &[u8], offset: u64) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = service(user)
        .download(user.req(DownloadRequest {
            blob_id: id.to_vec(),
            offset,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(chunk.offset, offset + out.len() as u64);
        out.extend(chunk.data);
    }
    Ok(out)
}

async fn committed(user: &User, id: &[u8]) -> QueryUploadResponse {
    service(user)
        .query_upload(user.req(QueryUploadRequest {
            blob_id: id.to_vec(),
        }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn broken_upload_resumes_and_downloads_verify() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;
    let bob = register(&channel, "bob", 0, 0).await;

    let file: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let key = AttachmentKey::generate(&mut OsRng);
    let (blob, hash) = seal_all(&key, &file).unwrap();
    let layout = Layout::new(file.len() as u64).unwrap();
    assert_eq!(blob.len() as u64, layout.ciphertext_len());

    let created = service(&alice)
        .create_upload(alice.req(CreateUploadRequest {
            size: blob.len() as u64,
        }))
        .await
        .unwrap()
        .into_inner();
    let id = created.blob_id;
    assert_eq!(id.len(), 16);

    // A stream that sends 6 chunks and then hangs; the call is aborted
    // (the HTTP/2 stream is reset) like a killed client.
    let half = 6 * ATTACHMENT_CHUNK_CIPHERTEXT_LEN;
    let first = chunks(&id, &blob, 0, half);
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadChunk>(16);
    for chunk in first {
        tx.send(chunk).await.unwrap();
    }
    let mut client = service(&alice);
    let request = alice.req(tokio_stream::wrappers::ReceiverStream::new(rx));
    let call = tokio::spawn(async move { client.upload(request).await });
    // Nothing is committed while the stream is open (below 4 MiB)...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(committed(&alice, &id).await.committed, 0);
    // ...and everything that arrived is once it breaks.
    call.abort();
    let mut status = committed(&alice, &id).await;
    for _ in 0..100 {
        if status.committed == half as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = committed(&alice, &id).await;
    }
    drop(tx);
    assert_eq!(
        status.committed, half as u64,
        "the broken stream's bytes are kept"
    );
    assert!(!status.finalized);

    // Not downloadable before it is finalised; finalising early is refused.
    let early = download(&bob, &id, 0).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    let early = service(&alice)
        .finalize_upload(alice.req(FinalizeUploadRequest {
            blob_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);

    // Resuming anywhere but the committed offset is refused, with the offset in the sentence.
    let wrong = service(&alice)
        .upload(alice.req(tokio_stream::iter(chunks(
            &id,
            &blob,
            0,
            ATTACHMENT_CHUNK_CIPHERTEXT_LEN,
        ))))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(
        wrong.message().contains(&half.to_string()),
        "{}",
        wrong.message()
    );

    // Past the announced size.
    let mut too_long = chunks(&id, &blob, half, blob.len());
    too_long.push(UploadChunk {
        blob_id: id.clone(),
        offset: blob.len() as u64,
        data: vec![0],
    });
    let refused = service(&alice)
        .upload(alice.req(tokio_stream::iter(too_long)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    // Everything before the bad chunk was kept.
    assert_eq!(committed(&alice, &id).await.committed, blob.len() as u64);
    service(&alice)
        .finalize_upload(alice.req(FinalizeUploadRequest {
            blob_id: id.clone(),
        }))
        .await
        .unwrap();

    // Bob downloads it all, and from a chunk boundary (a resumed download).
    let whole = download(&bob, &id, 0).await.unwrap();
    assert_eq!(whole, blob);
    assert_eq!(
        open_all(&key, &key.commitment(), &hash, file.len() as u64, &whole).unwrap(),
        file
    );
    let from = layout.chunk_ciphertext_offset(9);
    assert_eq!(
        download(&bob, &id, from).await.unwrap(),
        blob[from as usize..]
    );
    let past = download(&bob, &id, blob.len() as u64 + 1)
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange);

    // The server never holds the plaintext: no 64-byte run of it in the data directory.
    let on_disk = all_bytes(dir.path());
    for start in [0usize, 100_000, 500_000, 999_000] {
        assert!(!contains(&on_disk, &file[start..start + 64]));
    }

    // A chunk altered on the server's disk is detected by the recipient.
    let data_dir = dir.path().join("blobs").join("data");
    let path = data_dir.join(hex::encode(&id));
    let mut stored = std::fs::read(&path).unwrap();
    stored[from as usize + 5] ^= 1;
    std::fs::write(&path, &stored).unwrap();
    let tampered = download(&bob, &id, 0).await.unwrap();
    assert_eq!(
        open_all(&key, &key.commitment(), &hash, file.len() as u64, &tampered),
        Err(AttachmentError::HashMismatch)
    );
    let cipher =
        missive_crypto::attachment::AttachmentCipher::new(&key, file.len() as u64).unwrap();
    let s = from as usize;
    assert_eq!(
        cipher.open_chunk(9, &tampered[s..s + ATTACHMENT_CHUNK_CIPHERTEXT_LEN]),
        Err(AttachmentError::AuthenticationFailed(9))
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn quota_unknown_ids_and_bad_requests_get_their_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.attachment_quota = 1_000_000;
    let server = missive_server::start(config).await.unwrap();
    let channel = channel(&server).await;
    let alice = register(&channel, "alice", 0, 0).await;

    let create = |size| {
        let mut s = service(&alice);
        let req = alice.req(CreateUploadRequest { size });
        async move { s.create_upload(req).await }
    };
    create(600_000).await.unwrap();
    let over = create(500_000).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted);
    assert!(over.message().contains("quota"), "{}", over.message());
    assert_eq!(create(0).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        create(u64::MAX).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    let unknown = download(&alice, &[7u8; 16], 0).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("expired"),
        "{}",
        unknown.message()
    );
    let bad_id = download(&alice, &[7u8; 3], 0).await.unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let anonymous = AttachmentServiceClient::new(channel.clone())
        .query_upload(QueryUploadRequest {
            blob_id: vec![7u8; 16],
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    server.shutdown().await.unwrap();
}
