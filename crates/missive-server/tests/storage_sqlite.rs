//! The shared storage suite against the SQLite backend.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_server::storage::{self, OpenMode, suite};

#[tokio::test]
async fn sqlite_backend_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("suite.db").display());
    let store = storage::open(&url, OpenMode::Serve).await.unwrap();
    suite::run_all(store.as_ref()).await;
    store.close().await;
    // The schema survives a reopen without migrations.
    let reopened = storage::open(&url, OpenMode::Existing).await.unwrap();
    assert!(reopened.export_account("suite-r2").await.unwrap().is_some());
}

#[tokio::test]
async fn existing_mode_refuses_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("none.db").display());
    let error = storage::open(&url, OpenMode::Existing).await.err().unwrap();
    assert!(
        matches!(error, storage::StorageError::NoDatabase),
        "{error:?}"
    );
    assert!(!dir.path().join("none.db").exists());
}
