//! The backend-independent storage test suite. Every backend runs
//! [`run_all`] on a fresh, empty store; each check panics with a message on
//! failure (it is test code, used from `tests/`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The filler account key of [`account`].
pub const ACCOUNT_KEY: [u8; 32] = [7; 32];
/// The filler device key of device 1 in [`account`].
pub const DEVICE_KEY: [u8; 32] = [13; 32];

/// A registration with `one_time` X25519 and `kem` ML-KEM one-time prekeys
/// (filler key bytes; storage does not check them) and a version 1 device
/// list naming device 1.
pub fn account(username: &str, one_time: u32, kem: u32) -> NewAccount {
    NewAccount {
        username: username.to_owned(),
        identity: ACCOUNT_KEY.to_vec(),
        device_identity: DEVICE_KEY.to_vec(),
        signed_device_list: signed_device_list(username, 1, 0, &[1]),
        registration_id: 42,
        signed_prekey: SignedPrekeyRecord {
            id: 1,
            public_key: vec![1; 32],
            signature: vec![2; 64],
        },
        last_resort_kem_prekey: KemPrekeyRecord {
            id: 1000,
            public_key: vec![3; 1184],
            signature: vec![4; 64],
        },
        one_time_prekeys: (1..=one_time)
            .map(|id| OneTimePrekeyRecord {
                id,
                public_key: vec![5; 32],
            })
            .collect(),
        one_time_kem_prekeys: (1..=kem)
            .map(|id| KemPrekeyRecord {
                id,
                public_key: vec![6; 1184],
                signature: vec![8; 64],
            })
            .collect(),
        today: 20_000,
    }
}

/// One envelope for device 1 of `recipient`, 100 bytes of `message_id`,
/// expiring 30 days after `ts`.
pub fn send(sender: &str, recipient: AccountId, message_id: u8, ts: u64, limit: u32) -> SendItem {
    SendItem {
        sender: sender.to_owned(),
        sender_device: 1,
        recipient,
        message_id: vec![message_id; 16],
        server_timestamp_ms: ts,
        expires_at_ms: ts + 30 * DAY_MS,
        envelopes: vec![NewEnvelope {
            recipient_device: 1,
            kind: 2,
            content: vec![message_id; 100],
            franking_commitment: vec![9; 32],
            franking_tag: vec![10; 32],
        }],
        mailbox_limit: limit,
    }
}

/// Runs every check on an empty store.
pub async fn run_all(store: &dyn Storage) {
    accounts_and_tokens(store).await;
    challenges(store).await;
    prekeys(store).await;
    envelopes(store).await;
    envelope_expiry(store).await;
    reported_ids(store).await;
    reports_and_export(store).await;
    secrets_and_franking_keys(store).await;
    deletion(store).await;
    device_lists(store).await;
    linked_devices(store).await;
    link_mailboxes(store).await;
    key_packages(store).await;
    groups(store).await;
    group_epoch_race(store, store, "suite-race").await;
}

/// A linked device `device_id` of `account` with key `[key; 32]` and
/// `one_time` one-time prekeys of each kind.
pub fn linked(account: AccountId, device_id: u32, key: u8, one_time: u32) -> NewDevice {
    let base = self::account("unused", one_time, one_time);
    NewDevice {
        address: DeviceAddress {
            account,
            device: device_id,
        },
        identity: vec![key; 32],
        registration_id: 100 + device_id,
        signed_prekey: base.signed_prekey,
        last_resort_kem_prekey: base.last_resort_kem_prekey,
        one_time_prekeys: base.one_time_prekeys,
        one_time_kem_prekeys: base.one_time_kem_prekeys,
        today: 20_001,
    }
}

/// Linked devices (protocol v2): added with their own key and prekeys,
/// served with their own key; a device id is added once; a stored list that
/// no longer names a device deletes it with its prekeys, tokens and
/// envelopes, in the same transaction.
pub async fn linked_devices(store: &dyn Storage) {
    let id = store
        .create_account(&account("suite-linked", 1, 1))
        .await
        .unwrap();
    let one = DeviceAddress {
        account: id,
        device: 1,
    };
    let two = DeviceAddress {
        account: id,
        device: 2,
    };
    assert_eq!(
        store.device_key(one).await.unwrap(),
        Some(DEVICE_KEY.to_vec())
    );
    assert_eq!(store.device_key(two).await.unwrap(), None);
    store.add_device(&linked(id, 2, 21, 2)).await.unwrap();
    assert!(matches!(
        store.add_device(&linked(id, 2, 22, 0)).await,
        Err(StorageError::Conflict)
    ));
    assert!(matches!(
        store.add_device(&linked(id + 1000, 2, 21, 0)).await,
        Err(StorageError::NotFound)
    ));
    assert_eq!(store.device_key(two).await.unwrap(), Some(vec![21; 32]));
    let (found, key) = store
        .device_identity("suite-linked", 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found, key), (id, vec![21; 32]));
    assert_eq!(
        store.prekey_counts(two).await.unwrap(),
        PrekeyCounts {
            one_time: 2,
            one_time_kem: 2
        }
    );
    let (_, bundles) = store
        .take_bundles("suite-linked", None, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bundles.identity, ACCOUNT_KEY.to_vec());
    let keys: Vec<_> = bundles
        .bundles
        .iter()
        .map(|b| (b.device_id, b.registration_id, b.identity.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![(1, 42, DEVICE_KEY.to_vec()), (2, 102, vec![21; 32])]
    );
    let export = store.export_account("suite-linked").await.unwrap().unwrap();
    let exported: Vec<_> = export
        .devices
        .iter()
        .map(|d| (d.device_id, d.identity.clone()))
        .collect();
    assert_eq!(exported, vec![(1, DEVICE_KEY.to_vec()), (2, vec![21; 32])]);

    // Device 2 has a token and a pending envelope; device 1 too.
    store
        .insert_token(&[61; 32], one, 30_000, 20_001)
        .await
        .unwrap();
    store
        .insert_token(&[62; 32], two, 30_000, 20_001)
        .await
        .unwrap();
    let mut item = send("suite-x", id, 61, 5, 100);
    item.envelopes.push(NewEnvelope {
        recipient_device: 2,
        ..item.envelopes[0].clone()
    });
    assert!(matches!(
        store.store_envelopes(&[item]).await.unwrap()[0],
        SendOutcome::Stored { .. }
    ));
    assert_eq!(store.pending_envelopes(two, 0, 10).await.unwrap().len(), 1);

    // A list that is refused removes nothing.
    let stale = signed_device_list("suite-linked", 1, 9, &[1]);
    assert_eq!(
        store.put_device_list(id, 1, &stale).await.unwrap(),
        PutOutcome::Stale { stored_version: 1 }
    );
    assert_eq!(store.device_key(two).await.unwrap(), Some(vec![21; 32]));
    // A list naming both keeps both.
    let both = signed_device_list("suite-linked", 2, 0, &[1, 2]);
    assert_eq!(
        store.put_device_list(id, 2, &both).await.unwrap(),
        PutOutcome::Stored
    );
    assert!(store.device_key(two).await.unwrap().is_some());
    // A list naming device 1 only removes device 2 with everything it had.
    let only_one = signed_device_list("suite-linked", 3, 0, &[1, 3]);
    assert_eq!(
        store.put_device_list(id, 3, &only_one).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(store.device_key(two).await.unwrap(), None);
    assert!(
        store
            .device_identity("suite-linked", 2)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.authenticate(&[62; 32], 0).await.unwrap().is_none());
    assert!(
        store
            .pending_envelopes(two, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.prekey_counts(two).await.unwrap(),
        PrekeyCounts::default()
    );
    let (_, devices) = store.devices("suite-linked").await.unwrap().unwrap();
    assert_eq!(devices.iter().map(|d| d.device_id).collect::<Vec<_>>(), [1]);
    // Device 1 keeps its token and envelope.
    assert!(store.authenticate(&[61; 32], 0).await.unwrap().is_some());
    assert_eq!(store.pending_envelopes(one, 0, 10).await.unwrap().len(), 1);
    // A removed device id can be added again (a new device).
    store.add_device(&linked(id, 2, 23, 0)).await.unwrap();
    assert_eq!(store.device_key(two).await.unwrap(), Some(vec![23; 32]));
    assert!(
        store
            .pending_envelopes(two, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.delete_account(id).await.unwrap();
}

/// A correctly signed device list for `username` at `version` naming
/// `device_ids` (ascending), under a fresh account key and fresh device keys.
/// `timestamp_ms` lets two lists of one version differ. Storage does not
/// verify it; the export parses it.
pub fn signed_device_list(
    username: &str,
    version: u64,
    timestamp_ms: u64,
    device_ids: &[u32],
) -> Vec<u8> {
    use missive_crypto::{DeviceEntry, DeviceList, IdentityKeyPair};
    let mut rng = rand::rngs::OsRng;
    let account = IdentityKeyPair::generate(&mut rng);
    let devices = device_ids
        .iter()
        .map(|&id| {
            let device = IdentityKeyPair::generate(&mut rng);
            DeviceEntry::link(&device, username, account.public(), id, 100 + id)
        })
        .collect();
    DeviceList {
        username: username.to_owned(),
        version,
        timestamp_ms,
        devices,
    }
    .sign(&account)
    .unwrap()
    .to_bytes()
}

/// Device lists: compare-and-set on the version (atomic: of two concurrent
/// puts of one version exactly one stores), idempotent for the same bytes,
/// exported as version and device ids, deleted with the account.
pub async fn device_lists(store: &dyn Storage) {
    let id = store
        .create_account(&account("suite-l", 0, 0))
        .await
        .unwrap();
    // Registration stores version 1, naming device 1.
    let first = store.device_list(id).await.unwrap().unwrap();
    assert_eq!(first.0, 1);
    let export = store.export_account("suite-l").await.unwrap().unwrap();
    assert_eq!(
        (export.device_list_version, export.device_list_devices),
        (Some(1), vec![1])
    );

    let v2 = signed_device_list("suite-l", 2, 1, &[1, 3]);
    assert_eq!(
        store.put_device_list(id, 2, &v2).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(store.device_list(id).await.unwrap(), Some((2, v2.clone())));
    // The same bytes again: nothing changes.
    assert_eq!(
        store.put_device_list(id, 2, &v2).await.unwrap(),
        PutOutcome::Unchanged
    );
    // A lower version, and the same version with other bytes: refused.
    let v1 = signed_device_list("suite-l", 1, 1, &[1]);
    assert_eq!(
        store.put_device_list(id, 1, &v1).await.unwrap(),
        PutOutcome::Stale { stored_version: 2 }
    );
    let other_v2 = signed_device_list("suite-l", 2, 2, &[1, 3]);
    assert_eq!(
        store.put_device_list(id, 2, &other_v2).await.unwrap(),
        PutOutcome::Stale { stored_version: 2 }
    );
    assert_eq!(store.device_list(id).await.unwrap(), Some((2, v2.clone())));
    // An older list the server once held is refused like any lower version.
    let v3 = signed_device_list("suite-l", 3, 1, &[2, 5, 6]);
    assert_eq!(
        store.put_device_list(id, 3, &v3).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store.put_device_list(id, 2, &v2).await.unwrap(),
        PutOutcome::Stale { stored_version: 3 }
    );
    let export = store.export_account("suite-l").await.unwrap().unwrap();
    assert_eq!(
        (export.device_list_version, export.device_list_devices),
        (Some(3), vec![2, 5, 6])
    );

    // Two puts of one version at once, replacing a list: exactly one
    // stores, the other is told the version now held.
    let fresh = store
        .create_account(&account("suite-l2", 0, 0))
        .await
        .unwrap();
    for (account, version) in [(id, 4), (fresh, 2)] {
        let a = signed_device_list("suite-l", version, 1, &[1]);
        let b = signed_device_list("suite-l", version, 2, &[1, 2]);
        let (x, y) = tokio::join!(
            store.put_device_list(account, version, &a),
            store.put_device_list(account, version, &b)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        let stale = PutOutcome::Stale {
            stored_version: version,
        };
        let winner = match (x, y) {
            (PutOutcome::Stored, other) if other == stale => a,
            (other, PutOutcome::Stored) if other == stale => b,
            other => panic!("two puts of version {version}: {other:?}"),
        };
        assert_eq!(
            store.device_list(account).await.unwrap(),
            Some((version, winner))
        );
    }

    // No list without an account; deleting the account deletes its list.
    assert!(matches!(
        store.put_device_list(fresh + 1000, 1, &v1).await,
        Err(StorageError::NotFound)
    ));
    store.delete_account(id).await.unwrap();
    assert_eq!(store.device_list(id).await.unwrap(), None);
    let again = store
        .create_account(&account("suite-l", 0, 0))
        .await
        .unwrap();
    assert_eq!(store.device_list(again).await.unwrap().unwrap().0, 1);
    let export = store.export_account("suite-l").await.unwrap().unwrap();
    assert_eq!(export.device_list_version, Some(1));
}

/// Usernames are unique; tokens authenticate until they expire.
pub async fn accounts_and_tokens(store: &dyn Storage) {
    let id = store
        .create_account(&account("suite-a", 0, 0))
        .await
        .unwrap();
    assert!(matches!(
        store.create_account(&account("suite-a", 0, 0)).await,
        Err(StorageError::Conflict)
    ));
    let (found, identity) = store.device_identity("suite-a", 1).await.unwrap().unwrap();
    assert_eq!((found, identity), (id, DEVICE_KEY.to_vec()));
    assert!(store.device_identity("suite-a", 2).await.unwrap().is_none());
    let device = DeviceAddress {
        account: id,
        device: 1,
    };
    let seen = |e: &AccountExport| {
        e.devices
            .iter()
            .find(|d| d.device_id == device.device)
            .map(|d| d.last_seen_day)
    };
    let export = store.export_account("suite-a").await.unwrap().unwrap();
    assert_eq!(seen(&export), Some(0), "seen before any login");
    // Valid until the start of day 3, whatever the time of login.
    store
        .insert_token(&[1; 32], device, 3, 20_001)
        .await
        .unwrap();
    let principal = store
        .authenticate(&[1; 32], 3 * DAY_MS - 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        principal,
        Principal {
            address: device,
            username: "suite-a".into(),
            expires_at_ms: 3 * DAY_MS,
        }
    );
    assert!(
        store
            .authenticate(&[1; 32], 3 * DAY_MS)
            .await
            .unwrap()
            .is_none(),
        "expired token accepted"
    );
    assert!(
        store.authenticate(&[2; 32], 0).await.unwrap().is_none(),
        "unknown token accepted"
    );
    let purged = store.purge_expired(3 * DAY_MS, 0).await.unwrap();
    assert!(purged.credentials >= 1);
    let export = store.export_account("suite-a").await.unwrap().unwrap();
    assert_eq!((export.created_day, export.last_seen_day), (20_000, 20_001));
    // The login's day is the device's too; a stream opened later moves both.
    assert_eq!(seen(&export), Some(20_001));
    store.touch_last_seen(device, 20_005).await.unwrap();
    store.touch_last_seen(device, 20_005).await.unwrap();
    let export = store.export_account("suite-a").await.unwrap().unwrap();
    assert_eq!(
        (export.last_seen_day, seen(&export)),
        (20_005, Some(20_005))
    );
    let days = store.device_days("suite-a").await.unwrap();
    assert!(days.contains(&(device.device, 20_000, 20_005)), "{days:?}");
}

/// Challenges are single-use and bound to username, purpose and time (by
/// their hash: the row holds nothing else but the expiry).
pub async fn challenges(store: &dyn Storage) {
    use ChallengePurpose::{Login, Register};
    let key = |c: &[u8], user: &str, purpose| challenge_hash(c, user, purpose);
    store
        .put_challenge(&key(b"c1", "suite-c", Login), 100)
        .await
        .unwrap();
    for (user, purpose) in [("suite-c", Register), ("other", Login)] {
        assert!(
            !store
                .take_challenge(&key(b"c1", user, purpose), 50)
                .await
                .unwrap(),
            "a challenge for suite-c/login accepted for {user}"
        );
    }
    assert!(
        store
            .take_challenge(&key(b"c1", "suite-c", Login), 99)
            .await
            .unwrap()
    );
    assert!(
        !store
            .take_challenge(&key(b"c1", "suite-c", Login), 99)
            .await
            .unwrap(),
        "replay"
    );
    store
        .put_challenge(&key(b"c3", "suite-c", Login), 100)
        .await
        .unwrap();
    assert!(
        !store
            .take_challenge(&key(b"c3", "suite-c", Login), 100)
            .await
            .unwrap(),
        "expired"
    );
    // An expired challenge is consumed too: it cannot be used later.
    assert!(
        !store
            .take_challenge(&key(b"c3", "suite-c", Login), 0)
            .await
            .unwrap()
    );
}

/// One-time prekeys go out once; the last-resort KEM key stays; quotas hold.
pub async fn prekeys(store: &dyn Storage) {
    let id = store
        .create_account(&account("suite-p", 2, 1))
        .await
        .unwrap();
    let device = DeviceAddress {
        account: id,
        device: 1,
    };
    assert_eq!(
        store.prekey_counts(device).await.unwrap(),
        PrekeyCounts {
            one_time: 2,
            one_time_kem: 1
        }
    );
    let dup = [OneTimePrekeyRecord {
        id: 1,
        public_key: vec![0; 32],
    }];
    assert!(matches!(
        store.upload_prekeys(device, &dup, &[], 1000).await,
        Err(StorageError::Conflict)
    ));
    let many: Vec<_> = (10..20)
        .map(|id| OneTimePrekeyRecord {
            id,
            public_key: vec![0; 32],
        })
        .collect();
    assert!(matches!(
        store.upload_prekeys(device, &many, &[], 5).await,
        Err(StorageError::QuotaExceeded)
    ));
    assert_eq!(
        store.prekey_counts(device).await.unwrap().one_time,
        2,
        "a refused upload stored keys"
    );
    let counts = store
        .upload_prekeys(device, &many[..1], &[], 1000)
        .await
        .unwrap();
    assert_eq!(counts.one_time, 3);

    // Without consuming (a drained target): last-resort keys, nothing taken.
    let (_, kept) = store
        .take_bundles("suite-p", None, false)
        .await
        .unwrap()
        .unwrap();
    assert!(kept.bundles[0].one_time_prekey.is_none());
    assert!(kept.bundles[0].kem_prekey_is_last_resort);
    assert_eq!(kept.bundles[0].kem_prekey.id, 1000);
    assert_eq!(store.prekey_counts(device).await.unwrap().one_time, 3);

    let mut seen = std::collections::HashSet::new();
    for round in 0..4 {
        let (owner, bundles) = store
            .take_bundles("suite-p", None, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(owner, device.account);
        assert_eq!(bundles.bundles.len(), 1);
        let bundle = &bundles.bundles[0];
        assert_eq!(bundle.registration_id, 42);
        if let Some(key) = &bundle.one_time_prekey {
            assert!(
                seen.insert(key.id),
                "one-time prekey {} handed out twice",
                key.id
            );
        } else {
            assert_eq!(round, 3, "ran out of one-time prekeys early");
        }
        assert_eq!(bundle.kem_prekey_is_last_resort, round > 0);
        if round > 0 {
            assert_eq!(bundle.kem_prekey.id, 1000);
        }
    }
    assert_eq!(
        store.prekey_counts(device).await.unwrap(),
        PrekeyCounts::default()
    );
    let new_spk = SignedPrekeyRecord {
        id: 2,
        public_key: vec![11; 32],
        signature: vec![12; 64],
    };
    store
        .replace_signed_prekeys(device, Some(&new_spk), None)
        .await
        .unwrap();
    let (_, bundles) = store
        .take_bundles("suite-p", Some(1), true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bundles.bundles[0].signed_prekey, new_spk);
    assert_eq!(bundles.bundles[0].kem_prekey.id, 1000);
    assert!(
        store
            .take_bundles("suite-p", Some(9), true)
            .await
            .unwrap()
            .unwrap()
            .1
            .bundles
            .is_empty()
    );
    assert!(
        store
            .take_bundles("nobody", None, true)
            .await
            .unwrap()
            .is_none()
    );
}

/// Sends are idempotent, ordered, bounded, private to their recipient device.
pub async fn envelopes(store: &dyn Storage) {
    let bob = store
        .create_account(&account("suite-bob", 0, 0))
        .await
        .unwrap();
    let eve = store
        .create_account(&account("suite-eve", 0, 0))
        .await
        .unwrap();
    let bob_device = DeviceAddress {
        account: bob,
        device: 1,
    };
    let eve_device = DeviceAddress {
        account: eve,
        device: 1,
    };
    let outcomes = store
        .store_envelopes(&[
            send("alice", bob, 1, 10, 3),
            send("alice", bob, 2, 11, 3),
            send("alice", bob, 1, 12, 3),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            SendOutcome::Stored {
                server_timestamp_ms: 10
            },
            SendOutcome::Stored {
                server_timestamp_ms: 11
            },
            SendOutcome::Duplicate {
                server_timestamp_ms: 10
            },
        ]
    );
    let retry = store
        .store_envelopes(&[send("alice", bob, 2, 99, 3)])
        .await
        .unwrap();
    assert_eq!(
        retry,
        vec![SendOutcome::Duplicate {
            server_timestamp_ms: 11
        }]
    );
    let full = store
        .store_envelopes(&[send("alice", bob, 3, 13, 3), send("alice", bob, 4, 14, 3)])
        .await
        .unwrap();
    assert_eq!(
        full[0],
        SendOutcome::Stored {
            server_timestamp_ms: 13
        }
    );
    assert_eq!(full[1], SendOutcome::MailboxFull { device: 1 });
    let gone = store
        .store_envelopes(&[send("alice", 987_654, 5, 15, 3)])
        .await
        .unwrap();
    assert_eq!(gone, vec![SendOutcome::RecipientGone]);

    let pending = store.pending_envelopes(bob_device, 0, 100).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert!(
        pending.windows(2).all(|w| w[0].id < w[1].id),
        "not in order"
    );
    assert_eq!(pending[0].content, vec![1; 100]);
    assert_eq!(pending[0].sender, "alice");
    let page = store
        .pending_envelopes(bob_device, pending[0].id, 1)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, pending[1].id);
    assert!(
        store
            .pending_envelopes(eve_device, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );

    let ids: Vec<u64> = pending.iter().map(|e| e.id).collect();
    assert_eq!(
        store.acknowledge(eve_device, &ids).await.unwrap(),
        0,
        "eve acknowledged bob's envelopes"
    );
    assert_eq!(
        store
            .pending_envelopes(bob_device, 0, 100)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(store.acknowledge(bob_device, &ids[..1]).await.unwrap(), 1);
    // A new envelope gets a fresh, larger id even after the newest was acknowledged.
    store.acknowledge(bob_device, &ids[2..]).await.unwrap();
    store
        .store_envelopes(&[send("alice", bob, 6, 16, 3)])
        .await
        .unwrap();
    let after = store
        .pending_envelopes(bob_device, ids[2], 100)
        .await
        .unwrap();
    assert_eq!(after.len(), 1, "an id was reused");

    let purged = store.purge_expired(0, 12).await.unwrap();
    assert_eq!(
        purged.envelopes, 1,
        "the envelope accepted at 11 is past retention"
    );
    assert_eq!(
        store
            .pending_envelopes(bob_device, 0, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    // The quota follows acknowledgements and purges: one pending, limit two.
    let outcomes = store
        .store_envelopes(&[send("alice", bob, 7, 17, 2), send("alice", bob, 8, 18, 2)])
        .await
        .unwrap();
    assert_eq!(
        outcomes[0],
        SendOutcome::Stored {
            server_timestamp_ms: 17
        }
    );
    assert_eq!(outcomes[1], SendOutcome::MailboxFull { device: 1 });
}

fn report(reporter: (AccountId, &str), sender: (Option<AccountId>, &str)) -> NewReport {
    NewReport {
        reporter_account: reporter.0,
        reporter: reporter.1.into(),
        sender_account: sender.0,
        sender: sender.1.into(),
        sender_identity: Some(vec![7; 32]),
        franking_key_id: 1,
        message_id: vec![3; 16],
        server_timestamp_ms: 5,
        plaintext: "reported words".into(),
        reason: "spam".into(),
        created_at_ms: 6,
        attachment: None,
    }
}

/// Reports follow account ids: a later holder of a username inherits none
/// of the previous holder's reports, filed or received.
pub async fn reports_and_export(store: &dyn Storage) {
    let sender = store
        .create_account(&account("suite-r2", 1, 2))
        .await
        .unwrap();
    let reporter = store
        .create_account(&account("suite-r1", 0, 0))
        .await
        .unwrap();
    let id = store
        .insert_report(&report((reporter, "suite-r1"), (Some(sender), "suite-r2")))
        .await
        .unwrap();
    let stored = store.report(id).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.text.as_str(),
            stored.verified,
            stored.franking_key_id
        ),
        ("reported words", true, Some(1))
    );
    assert_eq!(
        (stored.sender_account, stored.reporter_account),
        (Some(sender), Some(reporter))
    );
    assert_eq!(
        stored.sender_identity_fingerprint.as_deref(),
        Some(crate::checks::fingerprint(&[7; 32]).as_str())
    );
    assert!(stored.file.is_none());
    assert!(store.reports().await.unwrap().iter().any(|r| r.id == id));
    assert!(store.report(id + 1000).await.unwrap().is_none());
    // A report of a message with a file keeps its pointer, key and all.
    let pointer = missive_proto::v1::AttachmentPointer {
        blob_id: vec![9; 16],
        key: vec![4; 32],
        key_commitment: vec![5; 32],
        ciphertext_hash: vec![6; 32],
        size: 1234,
        mime_type: "image/png".into(),
        file_name: "cat.png".into(),
        thumbnail: Vec::new(),
    };
    let with_file = NewReport {
        attachment: Some(prost::Message::encode_to_vec(&pointer)),
        ..report((reporter, "suite-r1"), (Some(sender), "suite-r2"))
    };
    let file_id = store.insert_report(&with_file).await.unwrap();
    let file = store.report(file_id).await.unwrap().unwrap().file.unwrap();
    assert_eq!(
        (file.file_name.as_str(), file.size, file.blob_id.as_str()),
        ("cat.png", 1234, hex::encode([9u8; 16]).as_str())
    );
    assert_eq!(file.pointer, prost::Message::encode_to_vec(&pointer));
    // A report whose sender account is unknown is in no export.
    store
        .insert_report(&report((reporter, "suite-r1"), (None, "suite-r2")))
        .await
        .unwrap();
    let export = store.export_account("suite-r2").await.unwrap().unwrap();
    assert_eq!(export.devices.len(), 1);
    assert_eq!(
        export.devices[0].prekeys,
        PrekeyCounts {
            one_time: 1,
            one_time_kem: 2
        }
    );
    assert_eq!(export.reports_against.len(), 2);
    assert_eq!(export.reports_against[0].id, id);
    assert_eq!(export.reports_against[1].id, file_id);
    assert_eq!(export.reports_filed, 0);
    let filed = store.export_account("suite-r1").await.unwrap().unwrap();
    assert_eq!(filed.reports_filed, 3);
    assert!(store.export_account("nobody").await.unwrap().is_none());

    // Both names change hands: the new holders inherit nothing.
    store.delete_account(sender).await.unwrap();
    store.delete_account(reporter).await.unwrap();
    store
        .create_account(&account("suite-r2", 0, 0))
        .await
        .unwrap();
    store
        .create_account(&account("suite-r1", 0, 0))
        .await
        .unwrap();
    let new_sender = store.export_account("suite-r2").await.unwrap().unwrap();
    assert!(
        new_sender.reports_against.is_empty(),
        "the new holder of a name inherited the reports about its previous holder"
    );
    let new_reporter = store.export_account("suite-r1").await.unwrap().unwrap();
    assert_eq!(
        new_reporter.reports_filed, 0,
        "the new holder of a name inherited the reports its previous holder filed"
    );
    // The moderator's view keeps the report, with the old account ids.
    assert_eq!(
        store.report(id).await.unwrap().unwrap().sender_account,
        Some(sender)
    );
}

/// A secret of an earlier version is read, then deleted; franking key check
/// values are recorded once per id.
pub async fn secrets_and_franking_keys(store: &dyn Storage) {
    assert!(
        store
            .server_secret_get("suite-none")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.franking_key_ids().await.unwrap(), Vec::<u32>::new());
    let first = store.record_franking_key(1, &[1; 32]).await.unwrap();
    let second = store.record_franking_key(1, &[2; 32]).await.unwrap();
    assert_eq!(
        (first, second),
        (vec![1; 32], vec![1; 32]),
        "check value not stable"
    );
    store.record_franking_key(2, &[3; 32]).await.unwrap();
    assert_eq!(store.franking_key_ids().await.unwrap(), vec![1, 2]);
    store.delete_server_secret("suite-none").await.unwrap();
}

/// Deleting an account removes its keys, tokens and envelopes and frees the name.
pub async fn deletion(store: &dyn Storage) {
    let id = store
        .create_account(&account("suite-d", 3, 3))
        .await
        .unwrap();
    let device = DeviceAddress {
        account: id,
        device: 1,
    };
    store
        .insert_token(&[9; 32], device, i64::MAX / 2, 1)
        .await
        .unwrap();
    store
        .store_envelopes(&[send("x", id, 1, 1, 10)])
        .await
        .unwrap();
    store.delete_account(id).await.unwrap();
    assert!(store.authenticate(&[9; 32], 0).await.unwrap().is_none());
    assert!(
        store
            .pending_envelopes(device, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.prekey_counts(device).await.unwrap(),
        PrekeyCounts::default()
    );
    assert!(matches!(
        store.delete_account(id).await,
        Err(StorageError::NotFound)
    ));
    let again = store
        .create_account(&account("suite-d", 0, 0))
        .await
        .unwrap();
    assert_ne!(again, id);
}

/// Ids reported by `store_envelopes_with_ids` (where a backend reports them)
/// are the ids the envelopes are delivered with; items not stored report none.
pub async fn reported_ids(store: &dyn Storage) {
    let ivy = store
        .create_account(&account("suite-ivy", 0, 0))
        .await
        .unwrap();
    let device = DeviceAddress {
        account: ivy,
        device: 1,
    };
    let mut two_devices = send("alice", ivy, 3, 30, 10);
    two_devices.envelopes.push(NewEnvelope {
        recipient_device: 2,
        ..two_devices.envelopes[0].clone()
    });
    let answers = store
        .store_envelopes_with_ids(Arc::new(vec![
            send("alice", ivy, 1, 10, 10),
            send("alice", ivy, 2, 20, 10),
            send("alice", ivy, 1, 99, 10),
            two_devices,
        ]))
        .await
        .unwrap();
    assert_eq!(answers.len(), 4);
    assert!(matches!(answers[0].0, SendOutcome::Stored { .. }));
    assert!(matches!(answers[1].0, SendOutcome::Stored { .. }));
    assert_eq!(
        answers[2],
        (
            SendOutcome::Duplicate {
                server_timestamp_ms: 10
            },
            None
        )
    );
    // Ivy has no device 2: nothing of that send is stored.
    assert_eq!(answers[3], (SendOutcome::RecipientGone, None));
    let pending = store.pending_envelopes(device, 0, 10).await.unwrap();
    let ids: Vec<u64> = pending.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 2);
    for (answer, id) in answers.iter().zip(&ids) {
        if let Some(reported) = answer.1 {
            assert_eq!(reported, *id);
        }
    }
}

/// Issue 16: each envelope expires at its own time (a disappearing
/// message's retention), is purged then and not before, and the store tells
/// the earliest expiry left.
pub async fn envelope_expiry(store: &dyn Storage) {
    let recipient = store
        .create_account(&account("expiry-b", 0, 0))
        .await
        .unwrap();
    let device = DeviceAddress {
        account: recipient,
        device: 1,
    };
    let short = SendItem {
        expires_at_ms: 1_000,
        ..send("expiry-a", recipient, 1, 100, 10)
    };
    let longer = SendItem {
        expires_at_ms: 5_000,
        ..send("expiry-a", recipient, 2, 200, 10)
    };
    let outcomes = store.store_envelopes(&[short, longer]).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, SendOutcome::Stored { .. })),
        "{outcomes:?}"
    );
    let pending = store.pending_envelopes(device, 0, 10).await.unwrap();
    let expiries: Vec<Option<u64>> = pending.iter().map(|e| e.expires_at_ms).collect();
    assert_eq!(expiries, [Some(1_000), Some(5_000)]);
    assert!(!pending[0].expired(999) && pending[0].expired(1_000));
    // Other tests' envelopes expire 30 days after small timestamps: later.
    assert_eq!(store.next_envelope_expiry().await.unwrap(), Some(1_000));

    // Not before its time, whatever the (old) global cutoff says.
    let purged = store.purge_expired(999, 0).await.unwrap();
    assert_eq!(purged.envelopes, 0, "purged before its expiry");
    let purged = store.purge_expired(1_000, 0).await.unwrap();
    assert_eq!(purged.envelopes, 1, "not purged at its expiry");
    let left = store.pending_envelopes(device, 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].expires_at_ms, Some(5_000));
    assert_eq!(store.next_envelope_expiry().await.unwrap(), Some(5_000));
    let export = store.export_account("expiry-b").await.unwrap().unwrap();
    assert_eq!(export.devices[0].pending_envelopes, 1);
    // The mailbox counter followed the purge: one pending, limit two.
    let outcomes = store
        .store_envelopes(&[
            send("expiry-a", recipient, 3, 300, 2),
            send("expiry-a", recipient, 4, 400, 2),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], SendOutcome::Stored { .. }));
    assert_eq!(outcomes[1], SendOutcome::MailboxFull { device: 1 });
    let ids: Vec<u64> = store
        .pending_envelopes(device, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(store.acknowledge(device, &ids).await.unwrap(), 2);
    assert_ne!(store.next_envelope_expiry().await.unwrap(), Some(5_000));
}

/// The rows [`migrated_from_v1`] expects, as a schema-v1 database held them
/// (before reports followed accounts, tokens kept days and the franking key
/// left the database). Statements without parameters, valid in SQLite and
/// PostgreSQL alike; `identity` is a 32-byte blob literal of the backend.
pub fn v1_rows(identity: &str) -> Vec<String> {
    let day = DAY_MS;
    vec![
        format!(
            "INSERT INTO accounts (username, identity, created_day, last_seen_day) VALUES \
             ('alice', {identity}, 10, 12), ('carol', {identity}, 30, 31)"
        ),
        format!(
            "INSERT INTO devices (account_id, device_id, registration_id, created_day, \
             signed_prekey_id, signed_prekey, signed_prekey_signature, kem_prekey_id, kem_prekey, \
             kem_prekey_signature) SELECT id, 1, 7, 10, 1, {identity}, {identity}, 2, {identity}, \
             {identity} FROM accounts WHERE username = 'alice'"
        ),
        // Filed by alice about carol before the current carol registered
        // (day 20 < day 30): nobody's now.
        format!(
            "INSERT INTO reports (reporter, sender, message_id, message_server_timestamp_ms, \
             plaintext, reason, created_at_ms, verified) VALUES \
             ('alice', 'carol', {identity}, {}, 'old words', 'spam', {}, TRUE)",
            20 * day,
            20 * day + 5
        ),
        // Filed by carol about alice, both existing at the time.
        format!(
            "INSERT INTO reports (reporter, sender, message_id, message_server_timestamp_ms, \
             plaintext, reason, created_at_ms, verified) VALUES \
             ('carol', 'alice', {identity}, {}, 'newer words', 'abuse', {}, TRUE)",
            31 * day,
            31 * day + 5
        ),
        format!(
            "INSERT INTO tokens (token_hash, account_id, device_id, expires_at_ms) \
             SELECT {identity}, id, 1, {} FROM accounts WHERE username = 'alice'",
            40 * day + 12_345
        ),
        format!(
            "INSERT INTO challenges (challenge, username, purpose, expires_at_ms) VALUES \
             ({identity}, 'alice', 2, {})",
            40 * day + 12_345
        ),
        format!(
            "INSERT INTO server_secrets (name, value) VALUES ('{}', {identity})",
            crate::franking::LEGACY_SECRET
        ),
        // A pending envelope from before per-envelope expiry.
        format!(
            "INSERT INTO envelopes (recipient_account, recipient_device, sender, sender_device, \
             kind, content, message_id, server_timestamp_ms, franking_commitment, franking_tag) \
             SELECT id, 1, 'carol', 1, 2, {identity}, {identity}, {}, {identity}, {identity} \
             FROM accounts WHERE username = 'alice'",
            35 * day
        ),
    ]
}

/// After migrating [`v1_rows`] (with a 32-byte identity literal of 0x07
/// bytes): reports follow the accounts that existed at the time, the token
/// keeps only its expiry day, and the legacy franking key is still there to
/// be moved out.
pub async fn migrated_from_v1(store: &dyn Storage) {
    let alice = store.export_account("alice").await.unwrap().unwrap();
    assert_eq!(alice.reports_against.len(), 1);
    assert_eq!(alice.reports_against[0].text, "newer words");
    assert_eq!(alice.reports_filed, 1);
    let carol = store.export_account("carol").await.unwrap().unwrap();
    assert!(
        carol.reports_against.is_empty(),
        "carol inherited a report about the name's earlier holder"
    );
    assert_eq!(carol.reports_filed, 1);
    let all = store.reports().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].sender_account, all[0].franking_key_id),
        (None, None)
    );
    assert_eq!(all[0].sender, "carol");
    assert_eq!(
        all[1].sender_identity_fingerprint.as_deref(),
        Some(crate::checks::fingerprint(&[7; 32]).as_str())
    );
    // The token expired at 40 days + 12.345 s; it now lasts to the end of day 40.
    let token = store
        .authenticate(&[7; 32], 41 * DAY_MS - 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.expires_at_ms, 41 * DAY_MS);
    assert!(
        store
            .authenticate(&[7; 32], 41 * DAY_MS)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .server_secret_get(crate::franking::LEGACY_SECRET)
            .await
            .unwrap(),
        Some(vec![7; 32])
    );
    // The old envelope is still pending, with no expiry of its own: only the
    // server's retention (by acceptance time) applies to it.
    let alice_device = DeviceAddress {
        account: store.account_named("alice").await.unwrap().unwrap().id,
        device: 1,
    };
    let pending = store.pending_envelopes(alice_device, 0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].server_timestamp_ms, pending[0].expires_at_ms),
        (35 * DAY_MS, None)
    );
    assert_eq!(store.next_envelope_expiry().await.unwrap(), None);
    let kept = store
        .purge_expired(100 * DAY_MS, 35 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(kept.envelopes, 0);
    let purged = store
        .purge_expired(100 * DAY_MS, 35 * DAY_MS + 1)
        .await
        .unwrap();
    assert_eq!(purged.envelopes, 1);
}

/// Link mailboxes (`LinkService`): opened once per rendezvous id, slots
/// written once and in order, FINISH only by the HELLO's account, nothing
/// served after expiry, purged, closed idempotently, deleted with the
/// account that posted HELLO; of two concurrent HELLOs exactly one wins.
pub async fn link_mailboxes(store: &dyn Storage) {
    let primary = store
        .create_account(&account("suite-link", 0, 0))
        .await
        .unwrap();
    let other = store
        .create_account(&account("suite-link-other", 0, 0))
        .await
        .unwrap();
    let (now, ttl) = (1_000_000_u64, 600_000_u64);
    let code = [21u8; 32];
    let offer = vec![3u8; 1216];
    let hello = |account, payload| LinkMessage::Hello { account, payload };
    let reply = |payload| LinkMessage::Reply { payload };
    let finish = |account, payload| LinkMessage::Finish { account, payload };

    // Unknown.
    assert!(store.link(&code, now).await.unwrap().is_none());
    assert_eq!(
        store
            .post_link(&code, hello(primary, b"h"), now)
            .await
            .unwrap(),
        LinkPost::NotFound
    );
    store.close_link(&code).await.unwrap();

    // Open; a second open of the same id changes nothing.
    assert!(
        store
            .open_link(&code, &offer, now, now + ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .open_link(&code, &[4; 1216], now + 1, now + 1 + ttl)
            .await
            .unwrap()
    );
    let empty = LinkMailbox {
        offer: offer.clone(),
        hello: None,
        hello_account: None,
        reply: None,
        finish: None,
        expires_at_ms: now + ttl,
    };
    assert_eq!(store.link(&code, now).await.unwrap().unwrap(), empty);

    // Nothing before HELLO.
    assert_eq!(
        store.post_link(&code, reply(b"r"), now).await.unwrap(),
        LinkPost::NotYet
    );
    assert_eq!(
        store
            .post_link(&code, finish(primary, b"f"), now)
            .await
            .unwrap(),
        LinkPost::NotYet
    );
    // HELLO once, by whoever comes first.
    assert_eq!(
        store
            .post_link(&code, hello(primary, b"hello"), now)
            .await
            .unwrap(),
        LinkPost::Posted
    );
    for account in [primary, other] {
        assert_eq!(
            store
                .post_link(&code, hello(account, b"again"), now)
                .await
                .unwrap(),
            LinkPost::AlreadyWritten
        );
    }
    // FINISH needs REPLY, and the HELLO's account.
    assert_eq!(
        store
            .post_link(&code, finish(primary, b"f"), now)
            .await
            .unwrap(),
        LinkPost::NotYet
    );
    assert_eq!(
        store.post_link(&code, reply(b"reply"), now).await.unwrap(),
        LinkPost::Posted
    );
    assert_eq!(
        store.post_link(&code, reply(b"again"), now).await.unwrap(),
        LinkPost::AlreadyWritten
    );
    assert_eq!(
        store
            .post_link(&code, finish(other, b"f"), now)
            .await
            .unwrap(),
        LinkPost::OtherAccount
    );
    assert_eq!(
        store
            .post_link(&code, finish(primary, b"finish"), now)
            .await
            .unwrap(),
        LinkPost::Posted
    );
    assert_eq!(
        store
            .post_link(&code, finish(primary, b"again"), now)
            .await
            .unwrap(),
        LinkPost::AlreadyWritten
    );
    assert_eq!(
        store.link(&code, now).await.unwrap().unwrap(),
        LinkMailbox {
            hello: Some(b"hello".to_vec()),
            hello_account: Some(primary),
            reply: Some(b"reply".to_vec()),
            finish: Some(b"finish".to_vec()),
            ..empty.clone()
        }
    );
    let export = store.export_account("suite-link").await.unwrap().unwrap();
    assert_eq!(
        export.pending_links,
        vec![LinkExport {
            expires_at_ms: now + ttl,
            step: LinkSlot::Finish,
        }]
    );
    assert!(
        store
            .export_account("suite-link-other")
            .await
            .unwrap()
            .unwrap()
            .pending_links
            .is_empty()
    );

    // Expired: never served or written, even before the purge; its id can
    // be opened again, empty.
    let expired = now + ttl;
    assert!(store.link(&code, expired).await.unwrap().is_none());
    assert_eq!(
        store.post_link(&code, reply(b"r"), expired).await.unwrap(),
        LinkPost::NotFound
    );
    assert!(
        store
            .open_link(&code, &offer, expired, expired + ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store.link(&code, expired).await.unwrap().unwrap(),
        LinkMailbox {
            expires_at_ms: expired + ttl,
            ..empty.clone()
        }
    );
    assert!(
        store
            .export_account("suite-link")
            .await
            .unwrap()
            .unwrap()
            .pending_links
            .is_empty()
    );

    // The purge deletes what has expired, and only that.
    let later = [22u8; 32];
    assert!(
        store
            .open_link(&later, &offer, expired, expired + 2 * ttl)
            .await
            .unwrap()
    );
    let purged = store.purge_expired(expired + ttl, 0).await.unwrap();
    assert_eq!(purged.links, 1);
    assert!(store.link(&code, now).await.unwrap().is_none());
    assert!(store.link(&later, expired).await.unwrap().is_some());

    // Close: gone at once; twice is fine.
    store.close_link(&later).await.unwrap();
    store.close_link(&later).await.unwrap();
    assert!(store.link(&later, expired).await.unwrap().is_none());

    // Deleting the account that posted HELLO deletes its mailboxes; a HELLO
    // naming no account is refused.
    let doomed = store
        .create_account(&account("suite-link-doomed", 0, 0))
        .await
        .unwrap();
    let theirs = [23u8; 32];
    assert!(
        store
            .open_link(&theirs, &offer, now, now + ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .post_link(&theirs, hello(doomed, b"h"), now)
            .await
            .unwrap(),
        LinkPost::Posted
    );
    store.delete_account(doomed).await.unwrap();
    assert!(store.link(&theirs, now).await.unwrap().is_none());
    assert!(
        store
            .open_link(&theirs, &offer, now, now + ttl)
            .await
            .unwrap()
    );
    assert!(matches!(
        store.post_link(&theirs, hello(doomed, b"h"), now).await,
        Err(StorageError::NotFound)
    ));
    store.close_link(&theirs).await.unwrap();

    // Two primaries racing with one code: exactly one HELLO is stored.
    for round in 0..20u8 {
        let race = [100 + round; 32];
        assert!(
            store
                .open_link(&race, &offer, now, now + ttl)
                .await
                .unwrap()
        );
        let (a, b) = tokio::join!(
            store.post_link(&race, hello(primary, b"from primary"), now),
            store.post_link(&race, hello(other, b"from other"), now),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let stored = store.link(&race, now).await.unwrap().unwrap();
        match (a, b) {
            (LinkPost::Posted, LinkPost::AlreadyWritten) => {
                assert_eq!(stored.hello_account, Some(primary));
                assert_eq!(stored.hello.as_deref(), Some(&b"from primary"[..]));
            }
            (LinkPost::AlreadyWritten, LinkPost::Posted) => {
                assert_eq!(stored.hello_account, Some(other));
                assert_eq!(stored.hello.as_deref(), Some(&b"from other"[..]));
            }
            outcome => panic!("two HELLOs for one code: {outcome:?}"),
        }
        store.close_link(&race).await.unwrap();
    }
}

/// A group message from `sender` (kind APPLICATION) with content
/// `[fill; len]`, expiring at `expires_at_ms`.
pub fn group_message(
    group_id: &[u8],
    epoch: u64,
    sender: DeviceAddress,
    message_id: u8,
    fill: u8,
    expires_at_ms: u64,
) -> NewGroupMessage {
    NewGroupMessage {
        group_id: group_id.to_vec(),
        epoch,
        kind: 3,
        sender,
        sender_name: "sender".into(),
        message_id: vec![message_id; 16],
        content: vec![fill; 100],
        server_timestamp_ms: 1_000,
        expires_at_ms: u64::MAX / 2,
        disappears_at_ms: (expires_at_ms != u64::MAX / 2).then_some(expires_at_ms),
    }
}

/// A commit by `sender` in `epoch` adding and removing devices.
pub fn group_commit(
    group_id: &[u8],
    epoch: u64,
    sender: DeviceAddress,
    message_id: u8,
    added: &[DeviceAddress],
    removed: &[DeviceAddress],
) -> NewCommit {
    let mut message = group_message(group_id, epoch, sender, message_id, 0xC0, u64::MAX / 2);
    message.kind = COMMIT_KIND;
    message.disappears_at_ms = None;
    NewCommit {
        message,
        welcome: if added.is_empty() {
            Vec::new()
        } else {
            vec![0x77; 300]
        },
        added: added.to_vec(),
        removed: removed.to_vec(),
        today: 20_005,
    }
}

fn seq_of(write: &GroupWrite) -> u64 {
    match write {
        GroupWrite::Stored { seq, .. } | GroupWrite::Duplicate { seq, .. } => *seq,
        other => panic!("not stored: {other:?}"),
    }
}

/// `(seq, kind)` of what `device` has pending in `group`.
async fn pending_of(
    store: &dyn Storage,
    device: DeviceAddress,
    group: &[u8],
    now: u64,
) -> Vec<(u64, i32)> {
    store
        .pending_group_messages(device, group, 0, 100, now)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.seq, m.kind))
        .collect()
}

/// KeyPackages: one-time ones are handed out once each, oldest first, then
/// the last-resort one (never consumed); a device with none is missing;
/// the quota refuses a whole upload; the signed device list comes along.
pub async fn key_packages(store: &dyn Storage) {
    let account = store
        .create_account(&self::account("suite-kp", 0, 0))
        .await
        .unwrap();
    store.add_device(&linked(account, 2, 9, 0)).await.unwrap();
    let one = DeviceAddress { account, device: 1 };
    assert_eq!(
        store.key_package_count(one).await.unwrap(),
        KeyPackageCounts::default()
    );
    let counts = store
        .upload_key_packages(one, &[vec![1; 50], vec![2; 50]], Some(&[9; 40]), 3)
        .await
        .unwrap();
    assert_eq!(
        counts,
        KeyPackageCounts {
            one_time: 2,
            has_last_resort: true
        }
    );
    // Past the quota: nothing stored, the last resort not replaced either.
    let over = store
        .upload_key_packages(one, &[vec![3; 50], vec![4; 50]], Some(&[8; 40]), 3)
        .await;
    assert!(matches!(over, Err(StorageError::QuotaExceeded)), "{over:?}");
    assert_eq!(store.key_package_count(one).await.unwrap().one_time, 2);

    let take = |consume| store.take_key_packages("suite-kp", consume);
    let (id, first) = take(true).await.unwrap().unwrap();
    assert_eq!(id, account);
    assert_eq!(first.missing_devices, vec![2]);
    assert_eq!(
        first.key_packages,
        vec![DeviceKeyPackage {
            device_id: 1,
            key_package: vec![1; 50],
            is_last_resort: false
        }]
    );
    let (_, listed) = store.device_list(account).await.unwrap().unwrap();
    assert_eq!(first.signed_device_list, listed);
    // Not consuming: the last-resort one, the one-time one stays.
    let (_, spared) = take(false).await.unwrap().unwrap();
    assert_eq!(spared.key_packages[0].key_package, vec![9; 40]);
    assert!(spared.key_packages[0].is_last_resort);
    assert_eq!(store.key_package_count(one).await.unwrap().one_time, 1);
    let (_, second) = take(true).await.unwrap().unwrap();
    assert_eq!(second.key_packages[0].key_package, vec![2; 50]);
    // None left: the last-resort one, again and again.
    for _ in 0..2 {
        let (_, last) = take(true).await.unwrap().unwrap();
        assert_eq!(
            last.key_packages,
            vec![DeviceKeyPackage {
                device_id: 1,
                key_package: vec![9; 40],
                is_last_resort: true
            }]
        );
    }
    assert_eq!(
        store.key_package_count(one).await.unwrap(),
        KeyPackageCounts {
            one_time: 0,
            has_last_resort: true
        }
    );
    // A new last resort replaces the old one.
    store
        .upload_key_packages(one, &[], Some(&[7; 40]), 3)
        .await
        .unwrap();
    let (_, replaced) = take(true).await.unwrap().unwrap();
    assert_eq!(replaced.key_packages[0].key_package, vec![7; 40]);
    assert!(
        store
            .take_key_packages("nobody-kp", true)
            .await
            .unwrap()
            .is_none()
    );
    let export = store.export_account("suite-kp").await.unwrap().unwrap();
    assert_eq!(
        export.devices[0].key_packages,
        KeyPackageCounts {
            one_time: 0,
            has_last_resort: true
        }
    );
}

/// The Delivery Service: create, commit (epoch compare-and-set, idempotent,
/// Welcome to the added devices only), one row per message whatever the
/// number of receivers, delivery by cursor without the sender's own
/// messages, acknowledgement (capped), deletion once every receiver
/// acknowledged, a removed device gets its removal commit and nothing
/// after, leaving, retention, and cleanup with a removed device.
pub async fn groups(store: &dyn Storage) {
    let mut accounts = Vec::new();
    for name in ["suite-ga", "suite-gb", "suite-gc"] {
        accounts.push(store.create_account(&account(name, 0, 0)).await.unwrap());
    }
    store
        .add_device(&linked(accounts[0], 2, 9, 0))
        .await
        .unwrap();
    let dev = |i: usize, device| DeviceAddress {
        account: accounts[i],
        device,
    };
    let (a, a2, b, c) = (dev(0, 1), dev(0, 2), dev(1, 1), dev(2, 1));
    let group = [0x11u8; 16];
    let never = u64::MAX / 2;
    let now = 5_000;

    // Create; a retry by the same device; the id is taken for another.
    let created = store.create_group(&group, a, 1_234, 20_003).await.unwrap();
    assert_eq!(
        created,
        GroupCreate::Created {
            created_at_ms: 1_234
        }
    );
    assert_eq!(
        store.create_group(&group, a, 9_999, 20_004).await.unwrap(),
        GroupCreate::Retried {
            created_at_ms: 1_234
        }
    );
    assert_eq!(
        store.create_group(&group, b, 9_999, 20_004).await.unwrap(),
        GroupCreate::Taken
    );
    assert_eq!(
        store.receiving_groups(a).await.unwrap(),
        vec![group.to_vec()]
    );
    assert!(store.receiving_groups(b).await.unwrap().is_empty());

    // Unknown group, and a device that does not receive it: the same.
    let stray = group_message(&[0x99; 16], 0, a, 1, 1, never);
    assert_eq!(
        store.store_group_message(&stray).await.unwrap(),
        GroupWrite::NotFound
    );
    let outsider = group_message(&group, 0, b, 1, 1, never);
    assert_eq!(
        store.store_group_message(&outsider).await.unwrap(),
        GroupWrite::NotFound
    );
    assert_eq!(
        store
            .commit_group(&group_commit(&group, 0, b, 1, &[b], &[]))
            .await
            .unwrap(),
        GroupWrite::NotFound
    );
    // Adding a device that does not exist stores nothing.
    let ghost = DeviceAddress {
        account: accounts[1],
        device: 9,
    };
    let refused = store
        .commit_group(&group_commit(&group, 0, a, 1, &[ghost], &[]))
        .await;
    assert!(
        matches!(refused, Err(StorageError::NotFound)),
        "{refused:?}"
    );

    // a adds b and c: seq 1, epoch 1, the Welcome for b and c only.
    let add = group_commit(&group, 0, a, 1, &[b, c], &[]);
    let first = store.commit_group(&add).await.unwrap();
    assert_eq!(
        first,
        GroupWrite::Stored {
            seq: 1,
            server_timestamp_ms: 1_000,
            epoch: 1,
            wake: {
                let mut w = vec![b, c];
                w.sort_by_key(|d| (d.account, d.device));
                w
            },
        }
    );
    // A retry answers the same; another commit for epoch 0 loses.
    let mut retry = add.clone();
    retry.message.server_timestamp_ms = 2_000;
    assert_eq!(
        store.commit_group(&retry).await.unwrap(),
        GroupWrite::Duplicate {
            seq: 1,
            server_timestamp_ms: 1_000,
            epoch: 1
        }
    );
    assert_eq!(
        store
            .commit_group(&group_commit(&group, 0, a, 2, &[], &[]))
            .await
            .unwrap(),
        GroupWrite::WrongEpoch { current_epoch: 1 }
    );
    assert_eq!(pending_of(store, a, &group, now).await, vec![]);
    assert_eq!(
        pending_of(store, b, &group, now).await,
        vec![(1, WELCOME_KIND)]
    );
    assert_eq!(
        pending_of(store, c, &group, now).await,
        vec![(1, WELCOME_KIND)]
    );
    assert!(store.receiving_groups(a2).await.unwrap().is_empty());
    let welcome = store
        .pending_group_messages(b, &group, 0, 10, now)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (welcome.epoch, welcome.content.len(), welcome.sender_device),
        (1, 300, 1)
    );
    assert_eq!(
        (welcome.kind, welcome.sender_account),
        (WELCOME_KIND, accounts[0])
    );

    // b writes in epoch 1 (epoch 0 is refused); a and c get it, b does not.
    assert_eq!(
        store
            .store_group_message(&group_message(&group, 0, b, 2, 0xB0, never))
            .await
            .unwrap(),
        GroupWrite::WrongEpoch { current_epoch: 1 }
    );
    let from_b = group_message(&group, 1, b, 2, 0xB0, never);
    let stored = store.store_group_message(&from_b).await.unwrap();
    assert_eq!(seq_of(&stored), 2);
    let GroupWrite::Stored { wake, epoch, .. } = &stored else {
        panic!("{stored:?}")
    };
    assert_eq!(*epoch, 1);
    assert!(
        wake.contains(&a) && wake.contains(&c) && !wake.contains(&b),
        "{wake:?}"
    );
    assert_eq!(
        store.store_group_message(&from_b).await.unwrap(),
        GroupWrite::Duplicate {
            seq: 2,
            server_timestamp_ms: 1_000,
            epoch: 1
        }
    );
    assert_eq!(pending_of(store, a, &group, now).await, vec![(2, 3)]);
    assert_eq!(
        pending_of(store, b, &group, now).await,
        vec![(1, WELCOME_KIND)]
    );
    assert_eq!(
        pending_of(store, c, &group, now).await,
        vec![(1, WELCOME_KIND), (2, 3)]
    );
    // Paging: after a seq, at most a limit.
    let page = store
        .pending_group_messages(c, &group, 1, 10, now)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].content, vec![0xB0; 100]);
    assert_eq!(
        store
            .pending_group_messages(c, &group, 0, 1, now)
            .await
            .unwrap()
            .len(),
        1
    );

    // Stored once: the commit, its Welcome and b's message, for three
    // receiving devices.
    let held = |export: AccountExport| {
        let g = export
            .groups
            .into_iter()
            .find(|g| g.group_id == group)
            .unwrap();
        (g.pending_messages, g.pending_bytes, g.receiving_devices)
    };
    let export = store.export_account("suite-ga").await.unwrap().unwrap();
    let g = &export.groups[0];
    assert_eq!(g.devices, vec![(1, 20_003)]);
    assert_eq!(g.created_day, 0);
    assert_eq!(held(export), (3, 100 + 300 + 100, 3));

    // Acknowledgements: capped at the last seq; a group not received and a
    // lower seq change nothing.
    store
        .acknowledge_group(a, &[(group.to_vec(), 99), (vec![0x99; 16], 5)])
        .await
        .unwrap();
    assert_eq!(pending_of(store, a, &group, now).await, vec![]);
    store
        .acknowledge_group(a, &[(group.to_vec(), 1)])
        .await
        .unwrap();
    assert_eq!(pending_of(store, a, &group, now).await, vec![]);
    store
        .acknowledge_group(b, &[(group.to_vec(), 1)])
        .await
        .unwrap();
    assert_eq!(pending_of(store, b, &group, now).await, vec![]);
    store
        .acknowledge_group(c, &[(group.to_vec(), 1)])
        .await
        .unwrap();
    assert_eq!(pending_of(store, c, &group, now).await, vec![(2, 3)]);
    // The commit and the Welcome are gone (no device still gets them); b's
    // message waits for c.
    let export = store.export_account("suite-ga").await.unwrap().unwrap();
    assert_eq!(held(export), (1, 100, 3));
    store
        .acknowledge_group(c, &[(group.to_vec(), 2)])
        .await
        .unwrap();
    let export = store.export_account("suite-ga").await.unwrap().unwrap();
    assert_eq!(held(export), (0, 0, 3));

    // a removes c: c gets that commit and nothing after it.
    let remove = store
        .commit_group(&group_commit(&group, 1, a, 3, &[], &[c]))
        .await
        .unwrap();
    assert_eq!(seq_of(&remove), 3);
    let GroupWrite::Stored { wake, epoch, .. } = &remove else {
        panic!("{remove:?}")
    };
    assert_eq!(*epoch, 2);
    assert!(wake.contains(&c) && wake.contains(&b), "{wake:?}");
    assert_eq!(
        store
            .store_group_message(&group_message(&group, 2, c, 4, 1, never))
            .await
            .unwrap(),
        GroupWrite::NotFound,
        "a removed device still writes"
    );
    let after = store
        .store_group_message(&group_message(&group, 2, b, 4, 0xB1, never))
        .await
        .unwrap();
    assert_eq!(seq_of(&after), 4);
    let GroupWrite::Stored { wake, .. } = &after else {
        panic!("{after:?}")
    };
    assert!(!wake.contains(&c), "{wake:?}");
    assert_eq!(
        pending_of(store, c, &group, now).await,
        vec![(3, COMMIT_KIND)]
    );
    assert_eq!(
        store.receiving_groups(c).await.unwrap(),
        vec![group.to_vec()]
    );
    store
        .acknowledge_group(c, &[(group.to_vec(), 100)])
        .await
        .unwrap();
    assert!(store.receiving_groups(c).await.unwrap().is_empty());
    assert_eq!(pending_of(store, c, &group, now).await, vec![]);

    // b leaves: its proposal is stored for a, b stops receiving at once; a
    // retry answers the same.
    let mut leave = group_message(&group, 1, b, 5, 0xBB, never);
    leave.kind = 2;
    let left = store.leave_group(&leave).await.unwrap();
    assert_eq!(seq_of(&left), 5);
    assert_eq!(seq_of(&store.leave_group(&leave).await.unwrap()), 5);
    assert!(store.receiving_groups(b).await.unwrap().is_empty());
    assert_eq!(
        pending_of(store, a, &group, now).await,
        vec![(4, 3), (5, 2)]
    );
    let mut again = leave.clone();
    again.message_id = vec![6; 16];
    assert_eq!(
        store.leave_group(&again).await.unwrap(),
        GroupWrite::NotFound
    );

    // Retention: an expired message is never delivered and the purge
    // deletes it.
    let short = store
        .store_group_message(&group_message(&group, 2, a, 7, 0xA7, 0))
        .await
        .unwrap();
    assert_eq!(seq_of(&short), 6);
    let group2 = [0x22u8; 16];
    store.create_group(&group2, a, 1_000, 20_003).await.unwrap();
    store
        .commit_group(&group_commit(&group2, 0, a, 1, &[b, a2], &[]))
        .await
        .unwrap();
    let expiring = group_message(&group2, 1, a, 2, 0xA2, 10_000);
    assert_eq!(
        seq_of(&store.store_group_message(&expiring).await.unwrap()),
        2
    );
    assert_eq!(
        pending_of(store, b, &group2, 9_999).await,
        vec![(1, WELCOME_KIND), (2, 3)]
    );
    assert_eq!(
        pending_of(store, b, &group2, 10_000).await,
        vec![(1, WELCOME_KIND)]
    );
    let purged = store.purge_expired(10_000, 0).await.unwrap();
    assert!(purged.group_messages >= 1, "{purged:?}");
    let export = store.export_account("suite-gb").await.unwrap().unwrap();
    let g2 = export.groups.iter().find(|g| g.group_id == group2).unwrap();
    assert_eq!((g2.pending_messages, g2.receiving_devices), (1, 3));
    // The server's retention (the cutoff) applies too.
    store.purge_expired(10_000, 2_000).await.unwrap();
    let export = store.export_account("suite-gb").await.unwrap().unwrap();
    let g2 = export.groups.iter().find(|g| g.group_id == group2).unwrap();
    assert_eq!(g2.pending_messages, 0);

    // a's device 2 leaves the account's device list: its member rows,
    // Welcomes and KeyPackages go with it.
    store
        .upload_key_packages(a2, &[vec![5; 10]], Some(&[6; 10]), 200)
        .await
        .unwrap();
    store
        .commit_group(&group_commit(&group2, 1, a, 3, &[], &[]))
        .await
        .unwrap();
    assert_eq!(
        store.receiving_groups(a2).await.unwrap(),
        vec![group2.to_vec()]
    );
    let only_one = signed_device_list("suite-ga", 2, 0, &[1]);
    assert_eq!(
        store
            .put_device_list(accounts[0], 2, &only_one)
            .await
            .unwrap(),
        PutOutcome::Stored
    );
    assert!(store.receiving_groups(a2).await.unwrap().is_empty());
    assert_eq!(
        store.key_package_count(a2).await.unwrap(),
        KeyPackageCounts::default()
    );
    let export = store.export_account("suite-gb").await.unwrap().unwrap();
    let g2 = export.groups.iter().find(|g| g.group_id == group2).unwrap();
    assert_eq!(g2.receiving_devices, 2);
    // A message whose sender's account is deleted before it is delivered
    // still names its sender.
    let group3 = [0x44u8; 16];
    store.create_group(&group3, c, 1_000, 20_003).await.unwrap();
    store
        .commit_group(&group_commit(&group3, 0, c, 1, &[b], &[]))
        .await
        .unwrap();
    store
        .store_group_message(&group_message(&group3, 1, b, 2, 0xB3, never))
        .await
        .unwrap();
    // Deleting an account takes its member rows; a group nobody receives
    // goes at the purge.
    store.delete_account(accounts[1]).await.unwrap();
    let orphan = store
        .pending_group_messages(c, &group3, 1, 10, now)
        .await
        .unwrap();
    assert_eq!(
        orphan
            .iter()
            .map(|m| (m.sender.as_str(), m.sender_account, m.content[0]))
            .collect::<Vec<_>>(),
        vec![("suite-gb", accounts[1], 0xB3)]
    );
    store.delete_account(accounts[0]).await.unwrap();
    store.purge_expired(20_000, 0).await.unwrap();
    assert_eq!(
        store
            .create_group(&group2, c, 30_000, 20_010)
            .await
            .unwrap(),
        GroupCreate::Created {
            created_at_ms: 30_000
        },
        "a group no device receives was kept"
    );
}

/// Two commits for one epoch through two stores (two nodes) at once:
/// exactly one is stored, the other learns the new epoch; ten times.
pub async fn group_epoch_race(first: &dyn Storage, second: &dyn Storage, name: &str) {
    let mut devices = Vec::new();
    for suffix in ["a", "b"] {
        let account = first
            .create_account(&account(&format!("{name}-{suffix}"), 0, 0))
            .await
            .unwrap();
        devices.push(DeviceAddress { account, device: 1 });
    }
    let (a, b) = (devices[0], devices[1]);
    let group = [0x33u8; 16];
    first.create_group(&group, a, 1, 20_000).await.unwrap();
    first
        .commit_group(&group_commit(&group, 0, a, 200, &[b], &[]))
        .await
        .unwrap();
    for epoch in 1..=10u64 {
        let id = u8::try_from(epoch).unwrap();
        let from_a = group_commit(&group, epoch, a, id, &[], &[]);
        let from_b = group_commit(&group, epoch, b, id, &[], &[]);
        let (x, y) = tokio::join!(first.commit_group(&from_a), second.commit_group(&from_b));
        let (x, y) = (x.unwrap(), y.unwrap());
        let won = [&x, &y]
            .iter()
            .filter(|w| matches!(w, GroupWrite::Stored { .. }))
            .count();
        assert_eq!(won, 1, "epoch {epoch}: {x:?} / {y:?}");
        let lost = [&x, &y]
            .iter()
            .filter(|w| {
                **w == &GroupWrite::WrongEpoch {
                    current_epoch: epoch + 1,
                }
            })
            .count();
        assert_eq!(lost, 1, "epoch {epoch}: {x:?} / {y:?}");
    }
    // Every seq once, in order: 1 (the add) and one per epoch.
    let mut seen = std::collections::BTreeSet::new();
    for device in [a, b] {
        for (seq, _) in pending_of(second, device, &group, 2).await {
            assert!(seen.insert(seq) || seq == 1, "seq {seq} twice");
        }
    }
    seen.remove(&1);
    let seen: Vec<u64> = seen.into_iter().collect();
    assert_eq!(seen, (2..=11).collect::<Vec<_>>());
}
