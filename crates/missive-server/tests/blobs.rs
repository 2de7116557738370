//! The blob storage suite on both backends: the filesystem backend in a
//! temporary directory, and PostgreSQL in a schema of its own on
//! `MISSIVE_TEST_DATABASE_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod services;

use missive_server::blobs::{self, BlobStore, fs::FsBlobStore, postgres::PgBlobStore, suite};

#[tokio::test]
async fn filesystem_backend_passes_the_blob_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(&dir.path().join("blobs")).await.unwrap();
    suite::run_all(&store).await;
    store.close().await;
    // Rows and files survive a reopen.
    let reopened = FsBlobStore::open(&dir.path().join("blobs")).await.unwrap();
    assert_eq!(
        reopened.read(&[8; 16], 0, 557).await.unwrap(),
        vec![1u8; 557]
    );
    reopened.close().await;
}

#[tokio::test]
async fn postgres_backend_passes_the_blob_suite() {
    let Some(schema) = services::PgSchema::create("blobs").await else {
        return;
    };
    let store = PgBlobStore::open(&schema.url()).await.unwrap();
    suite::run_all(&store).await;
    store.close().await;
    // `open` picks PostgreSQL for a postgres:// URL, and the tables survive.
    let reopened = blobs::open(&schema.url(), std::path::Path::new("/nonexistent"))
        .await
        .unwrap();
    assert_eq!(
        reopened.read(&[8; 16], 0, 557).await.unwrap(),
        vec![1u8; 557]
    );
    reopened.close().await;
    drop(schema);
}
