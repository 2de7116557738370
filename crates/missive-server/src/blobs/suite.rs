//! The storage suite every blob backend passes (`tests/blobs.rs` runs it on
//! the filesystem backend and on PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{BlobError, BlobId, BlobStore, NewBlob};

fn blob(id: u8, size: u64, created_ms: u64, account: i64) -> NewBlob {
    NewBlob {
        id: [id; 16],
        size,
        created_ms,
        account,
        day: 100,
        since_day: 70,
        quota: 1_000_000,
    }
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 253) as u8)
        .collect()
}

/// Runs every case; ids and accounts are distinct per case, so one store serves all.
pub async fn run_all(store: &dyn BlobStore) {
    upload_commit_resume_finalize_read(store).await;
    offsets_and_sizes_are_enforced(store).await;
    quota_counts_the_window(store).await;
    purge_expires_blobs_and_ledger(store).await;
    unknown_blobs_are_not_found(store).await;
}

async fn upload_commit_resume_finalize_read(store: &dyn BlobStore) {
    let id: BlobId = [1; 16];
    let size = 300_000u64;
    store.create(&blob(1, size, 1_000, 1)).await.unwrap();
    let status = store.status(&id).await.unwrap();
    assert_eq!(
        (status.size, status.committed, status.finalized),
        (size, 0, false)
    );
    assert_eq!(store.begin_append(&id).await.unwrap(), 0);
    store.write(&id, 0, &pattern(0, 100_000)).await.unwrap();
    store.commit(&id, 100_000).await.unwrap();
    // Written but never committed (a crash): discarded on resume.
    store
        .write(&id, 100_000, &pattern(100_000, 50_000))
        .await
        .unwrap();
    assert_eq!(store.status(&id).await.unwrap().committed, 100_000);
    assert!(matches!(
        store.finalize(&id).await,
        Err(BlobError::State(_))
    ));
    assert_eq!(store.begin_append(&id).await.unwrap(), 100_000);
    store
        .write(&id, 100_000, &pattern(100_000, 150_000))
        .await
        .unwrap();
    store
        .write(&id, 250_000, &pattern(250_000, 50_000))
        .await
        .unwrap();
    store.commit(&id, size).await.unwrap();
    store.finalize(&id).await.unwrap();
    assert!(store.status(&id).await.unwrap().finalized);
    // Reads at any offset and length, clipped to the blob.
    for (offset, max) in [
        (0u64, 10usize),
        (99_990, 20),
        (0, 1 << 20),
        (299_999, 5),
        (123_457, 70_000),
    ] {
        let got = store.read(&id, offset, max).await.unwrap();
        let len = (size - offset).min(max as u64) as usize;
        assert_eq!(got, pattern(offset, len), "read at {offset} of {max}");
    }
    assert!(store.read(&id, size, 10).await.unwrap().is_empty());
    // Finalised: no more writes.
    assert!(matches!(
        store.begin_append(&id).await,
        Err(BlobError::State(_))
    ));
}

async fn offsets_and_sizes_are_enforced(store: &dyn BlobStore) {
    let id: BlobId = [2; 16];
    store.create(&blob(2, 1_000, 1_000, 2)).await.unwrap();
    assert!(matches!(
        store.write(&id, 0, b"x").await,
        Err(BlobError::State(_))
    ));
    assert_eq!(store.begin_append(&id).await.unwrap(), 0);
    store.write(&id, 0, &[7u8; 400]).await.unwrap();
    assert_eq!(
        store.write(&id, 500, &[7u8; 10]).await,
        Err(BlobError::WrongOffset {
            committed: 400,
            offset: 500
        })
    );
    assert_eq!(
        store.write(&id, 0, &[7u8; 10]).await,
        Err(BlobError::WrongOffset {
            committed: 400,
            offset: 0
        })
    );
    // A duplicate id is refused.
    assert!(store.create(&blob(2, 10, 1_000, 2)).await.is_err());
}

async fn quota_counts_the_window(store: &dyn BlobStore) {
    let account = 3;
    let mut first = blob(3, 600_000, 1_000, account);
    first.quota = 1_000_000;
    store.create(&first).await.unwrap();
    let mut second = blob(4, 500_000, 1_000, account);
    second.quota = 1_000_000;
    assert_eq!(
        store.create(&second).await,
        Err(BlobError::QuotaExceeded {
            used: 600_000,
            quota: 1_000_000,
            size: 500_000
        })
    );
    // The refused blob was not created.
    assert_eq!(store.status(&[4; 16]).await, Err(BlobError::NotFound));
    // Another account is not charged.
    let mut other = second.clone();
    other.account = 4;
    other.id = [5; 16];
    store.create(&other).await.unwrap();
    // Reservations older than the window no longer count.
    let mut later = blob(6, 500_000, 1_000, account);
    later.day = 200;
    later.since_day = 170;
    store.create(&later).await.unwrap();
    assert_eq!(store.usage(account, 70).await.unwrap(), 1_100_000);
    assert_eq!(store.usage(account, 170).await.unwrap(), 500_000);
}

async fn purge_expires_blobs_and_ledger(store: &dyn BlobStore) {
    let old: BlobId = [7; 16];
    let fresh: BlobId = [8; 16];
    let stale_upload: BlobId = [9; 16];
    for (id, created) in [(old, 10u64), (fresh, 5_000), (stale_upload, 20)] {
        store
            .create(&blob(id[0], 541 + 16, created, 5))
            .await
            .unwrap();
    }
    for id in [old, fresh] {
        store.begin_append(&id).await.unwrap();
        store.write(&id, 0, &[1u8; 557]).await.unwrap();
        store.commit(&id, 557).await.unwrap();
        store.finalize(&id).await.unwrap();
    }
    // Finalised before 1,000 go; unfinalised before 100 go.
    let purged = store.purge(1_000, 100, 50).await.unwrap();
    assert!(purged >= 2, "purged {purged}");
    assert_eq!(store.status(&old).await, Err(BlobError::NotFound));
    assert_eq!(store.status(&stale_upload).await, Err(BlobError::NotFound));
    assert_eq!(store.read(&old, 0, 10).await, Err(BlobError::NotFound));
    assert_eq!(store.read(&fresh, 0, 557).await.unwrap(), vec![1u8; 557]);
    // Ledger rows before day 50 are gone; day 100 stays.
    assert!(store.usage(5, 0).await.unwrap() > 0);
    store.purge(1_000, 100, 150).await.unwrap();
    assert_eq!(store.usage(5, 0).await.unwrap(), 0);
}

async fn unknown_blobs_are_not_found(store: &dyn BlobStore) {
    let id: BlobId = [0xee; 16];
    assert_eq!(store.status(&id).await, Err(BlobError::NotFound));
    assert_eq!(store.begin_append(&id).await, Err(BlobError::NotFound));
    assert_eq!(store.finalize(&id).await, Err(BlobError::NotFound));
    assert_eq!(store.read(&id, 0, 1).await, Err(BlobError::NotFound));
}
