//! Issue 15, encrypted attachments, end to end: a real `missive-server`
//! process, accounts registered with the real `missive` CLI, and the
//! client library's upload and download (`missive_client::attachments`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use missive_crypto::attachment::ATTACHMENT_CHUNK_LEN;
use missive_e2e::{Server, User, dir_contains};

fn config(server: &Server) -> missive_client::ServerConfig {
    missive_client::ServerConfig {
        url: server.url().to_owned(),
        ca: Some(server.ca()),
    }
}

/// Bytes that do not repeat with a short period, so a 64-byte window is unique.
fn file_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

fn setup() -> (tempfile::TempDir, Server, User, User) {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("data"), &root.path().join("log")).unwrap();
    let alice = User::new(root.path(), "alice");
    let bob = User::new(root.path(), "bob");
    for u in [&alice, &bob] {
        u.ok(&server, &["register", &u.name]).unwrap();
    }
    (root, server, alice, bob)
}

async fn round_trip(
    server: &Server,
    alice: &User,
    bob: &User,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) {
    let source = dir.join(name);
    std::fs::write(&source, bytes).unwrap();
    let mut sender = missive_client::Client::open(&alice.home, config(server)).unwrap();
    let pointer = sender.upload_attachment(&source).await.unwrap();
    assert_eq!(pointer.size, bytes.len() as u64);
    assert_eq!(pointer.file_name, name);
    let mut receiver = missive_client::Client::open(&bob.home, config(server)).unwrap();
    let saved = receiver
        .download_attachment(&pointer, &dir.join("saved"))
        .await
        .unwrap();
    assert_eq!(saved.file_name().unwrap().to_str().unwrap(), name);
    assert!(std::fs::read(&saved).unwrap() == bytes, "{name} differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_edge_size_arrive_byte_identical() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, len) in [
        ("empty.bin", 0usize),
        ("one.bin", 1),
        ("boundary.bin", ATTACHMENT_CHUNK_LEN),
        ("boundary-plus-one.bin", ATTACHMENT_CHUNK_LEN + 1),
        ("fifty.bin", 50 * 1024 * 1024),
    ] {
        round_trip(
            &server,
            &alice,
            &bob,
            &dir,
            name,
            &file_bytes(len, len as u32),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_and_a_tampered_blob_is_refused() {
    let (root, server, alice, bob) = setup();
    let dir = root.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = file_bytes(1_000_000, 7);
    let source = dir.join("photo.jpg");
    std::fs::write(&source, &bytes).unwrap();
    let mut sender = missive_client::Client::open(&alice.home, config(&server)).unwrap();
    let pointer = sender.upload_attachment(&source).await.unwrap();
    assert_eq!(pointer.mime_type, "image/jpeg");
    let mut receiver = missive_client::Client::open(&bob.home, config(&server)).unwrap();
    // The server's data directory never holds the plaintext.
    for start in [0usize, 300_000, 999_000] {
        assert_eq!(
            dir_contains(server.data_dir(), &bytes[start..start + 64]).unwrap(),
            None
        );
    }

    // A download that stopped after 5 chunks and 100 more bytes left a
    // `.part` file: the next one continues after the last whole chunk.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let part = resumed.join(format!(".photo.jpg.{}.part", hex::encode(&pointer.blob_id)));
    std::fs::write(&part, &bytes[..5 * ATTACHMENT_CHUNK_LEN + 100]).unwrap();
    let saved = receiver
        .download_attachment(&pointer, &resumed)
        .await
        .unwrap();
    assert!(std::fs::read(&saved).unwrap() == bytes);
    assert!(!part.exists());
    // A second copy is not written over the first.
    let again = receiver
        .download_attachment(&pointer, &resumed)
        .await
        .unwrap();
    assert_eq!(again.file_name().unwrap(), "photo (2).jpg");

    // A `.part` whose saved chunks were altered locally fails the hash: never saved.
    let bad_part = dir.join("bad-part");
    std::fs::create_dir_all(&bad_part).unwrap();
    let mut altered = bytes[..3 * ATTACHMENT_CHUNK_LEN].to_vec();
    altered[10] ^= 1;
    std::fs::write(
        bad_part.join(format!(".photo.jpg.{}.part", hex::encode(&pointer.blob_id))),
        &altered,
    )
    .unwrap();
    let error = receiver
        .download_attachment(&pointer, &bad_part)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match the hash"), "{error}");
    assert!(!bad_part.join("photo.jpg").exists());

    // One byte of the blob altered on the server's disk: refused, naming the chunk.
    let blob = server
        .data_dir()
        .join("blobs")
        .join("data")
        .join(hex::encode(&pointer.blob_id));
    let mut stored = std::fs::read(&blob).unwrap();
    stored[3 * (ATTACHMENT_CHUNK_LEN + 16) + 9] ^= 0x40;
    std::fs::write(&blob, &stored).unwrap();
    let tampered = dir.join("tampered");
    let error = receiver
        .download_attachment(&pointer, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("chunk 3 does not authenticate"), "{error}");
    assert!(!tampered.join("photo.jpg").exists());

    // A wrong key is caught by the key commitment before any download.
    let mut wrong = pointer.clone();
    wrong.key[0] ^= 1;
    let error = receiver
        .download_attachment(&wrong, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match its commitment"), "{error}");
    // Nor can one fetch a blob that does not exist (or expired).
    let mut gone = pointer.clone();
    gone.blob_id = vec![0u8; 16];
    let error = receiver
        .download_attachment(&gone, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("expired"), "{error}");
}
