//! Signed device lists (protocol v2): encoding, every verification rule,
//! tampering, and monotonicity. The lists a correct client cannot sign are built
//! here byte by byte (`Raw`) and signed with the account key directly, so
//! `verify` is tested on what a malicious server or account could send.
//! `PROPTEST_CASES=N` runs more cases (default 24).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_crypto::consts::MAX_DEVICES;
use missive_crypto::devices::{check_change, link_statement};
use missive_crypto::{
    DecodeError, DeviceEntry, DeviceList, DeviceListError, IdentityKeyPair, KeyError, ListChange,
    PublicIdentity, SignedDeviceList,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const USER: &str = "alice";
const T0: u64 = 1_700_000_000_000;

fn identity(seed: u8) -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut ChaCha20Rng::from_seed([seed; 32]))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    ProptestConfig::with_cases(cases)
}

/// An account key and `n` device keys (seeds 1, 2, ..., n + 1).
struct Keys {
    account: IdentityKeyPair,
    devices: Vec<IdentityKeyPair>,
}

fn keys(n: u8) -> Keys {
    Keys {
        account: identity(1),
        devices: (0..n).map(|i| identity(2 + i)).collect(),
    }
}

/// A valid list of every key in `keys`, device ids 1, 2, ..., registration ids 100 + id.
fn list(keys: &Keys, version: u64) -> DeviceList {
    DeviceList {
        username: USER.into(),
        version,
        timestamp_ms: T0 + version,
        devices: keys
            .devices
            .iter()
            .zip(1u32..)
            .map(|(d, id)| DeviceEntry::link(d, USER, keys.account.public(), id, 100 + id))
            .collect(),
    }
}

/// The list transcript, written independently of the crate from docs/PROTOCOL.md,
/// with raw bytes so that anything (bad lengths, bad keys) can be encoded.
#[derive(Clone)]
struct Raw {
    label: Vec<u8>,
    username: Vec<u8>,
    account: Vec<u8>,
    version: u64,
    timestamp_ms: u64,
    count: Option<u32>,
    devices: Vec<RawDevice>,
}

#[derive(Clone)]
struct RawDevice {
    id: u32,
    key: Vec<u8>,
    registration_id: u32,
    link_signature: Vec<u8>,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Raw {
    fn of(list: &DeviceList, account: &PublicIdentity) -> Raw {
        Raw {
            label: b"Missive device list v2".to_vec(),
            username: list.username.as_bytes().to_vec(),
            account: account.to_bytes(),
            version: list.version,
            timestamp_ms: list.timestamp_ms,
            count: None,
            devices: list
                .devices
                .iter()
                .map(|d| RawDevice {
                    id: d.device_id,
                    key: d.identity.to_bytes(),
                    registration_id: d.registration_id,
                    link_signature: d.link_signature.to_vec(),
                })
                .collect(),
        }
    }

    fn transcript(&self) -> Vec<u8> {
        let mut out = Vec::new();
        field(&mut out, &self.label);
        field(&mut out, &self.username);
        field(&mut out, &self.account);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        let count = self.count.unwrap_or(self.devices.len() as u32);
        out.extend_from_slice(&count.to_be_bytes());
        for d in &self.devices {
            out.extend_from_slice(&d.id.to_be_bytes());
            field(&mut out, &d.key);
            out.extend_from_slice(&d.registration_id.to_be_bytes());
            field(&mut out, &d.link_signature);
        }
        out
    }

    fn encode(&self, signature: &[u8]) -> Vec<u8> {
        let mut out = self.transcript();
        out.extend_from_slice(signature);
        out
    }

    /// Signed by `account` directly, bypassing `DeviceList::sign`'s checks.
    fn sign(&self, account: &IdentityKeyPair) -> Vec<u8> {
        self.encode(&account.sign(&self.transcript()))
    }
}

/// Parses and verifies as a client with the pinned key `account` would.
fn accept(bytes: &[u8], account: &PublicIdentity) -> Result<DeviceList, DeviceListError> {
    let signed = SignedDeviceList::from_bytes(bytes)?;
    signed.verify(account, USER).cloned()
}

#[test]
fn round_trip() {
    for n in 1..=MAX_DEVICES as u8 {
        let k = keys(n);
        let list = list(&k, 3);
        let signed = list.sign(&k.account).unwrap();
        let bytes = signed.to_bytes();
        // The layout as docs/PROTOCOL.md gives it.
        assert_eq!(
            bytes,
            Raw::of(&list, k.account.public()).encode(signed.signature())
        );
        let parsed = SignedDeviceList::from_bytes(&bytes).unwrap();
        assert_eq!(parsed, signed);
        assert_eq!(parsed.to_bytes(), bytes);
        assert_eq!(parsed.list_hash(), signed.list_hash());
        assert_eq!(parsed.verify(k.account.public(), USER).unwrap(), &list);
        assert_eq!(parsed.username(), USER);
        assert_eq!(parsed.version(), 3);
        assert_eq!(parsed.account(), k.account.public());
        assert_eq!(parsed.unverified_list(), &list);
        for d in &list.devices {
            d.verify_link(USER, k.account.public()).unwrap();
            d.identity
                .verify(
                    &link_statement(
                        USER,
                        k.account.public(),
                        d.device_id,
                        &d.identity,
                        d.registration_id,
                    ),
                    &d.link_signature,
                )
                .unwrap();
        }
    }
}

#[test]
fn list_hash_binds_the_contents_but_not_the_signature() {
    let k = keys(2);
    let a = list(&k, 1).sign(&k.account).unwrap();
    let mut later = list(&k, 1);
    later.timestamp_ms += 1;
    let b = later.sign(&k.account).unwrap();
    assert_ne!(a.list_hash(), b.list_hash());
    // The hash is over the transcript only: a second encoding of the same list
    // (any valid signature) has the same hash. Ed25519 is deterministic, so here
    // the signatures are equal too.
    assert_eq!(
        a.list_hash(),
        list(&k, 1).sign(&k.account).unwrap().list_hash()
    );
}

/// Every field changed after signing, the signature kept: refused.
#[test]
fn every_field_tampered_after_signing_fails() {
    let k = keys(3);
    let other = identity(40);
    let signed = list(&k, 2).sign(&k.account).unwrap();
    let raw = Raw::of(&list(&k, 2), k.account.public());
    let signature = signed.signature().to_vec();

    let mut tampers: Vec<(String, Raw, DeviceListError)> = Vec::new();
    let mut push = |name: &str, f: &dyn Fn(&mut Raw), expected: DeviceListError| {
        let mut r = raw.clone();
        f(&mut r);
        tampers.push((name.to_string(), r, expected));
    };
    push(
        "username",
        &|r| r.username = b"alicf".to_vec(),
        DeviceListError::BadSignature,
    );
    push(
        "account key",
        &|r| r.account = other.public().to_bytes(),
        DeviceListError::AccountMismatch,
    );
    push(
        "version",
        &|r| r.version += 1,
        DeviceListError::BadSignature,
    );
    push(
        "timestamp",
        &|r| r.timestamp_ms -= 1,
        DeviceListError::BadSignature,
    );
    push(
        "device dropped",
        &|r| {
            r.devices.pop();
        },
        DeviceListError::BadSignature,
    );
    for i in 0..raw.devices.len() {
        push(
            &format!("device {i} id"),
            &|r| r.devices[i].id += 10,
            DeviceListError::BadSignature,
        );
        push(
            &format!("device {i} key"),
            &|r| r.devices[i].key = other.public().to_bytes(),
            DeviceListError::BadSignature,
        );
        push(
            &format!("device {i} registration id"),
            &|r| r.devices[i].registration_id ^= 1,
            DeviceListError::BadSignature,
        );
        push(
            &format!("device {i} link signature"),
            &|r| r.devices[i].link_signature[10] ^= 1,
            DeviceListError::BadSignature,
        );
    }
    for (name, r, expected) in tampers {
        let bytes = r.encode(&signature);
        assert_eq!(
            accept(&bytes, k.account.public()).err(),
            Some(expected),
            "{name}"
        );
    }
    for i in [0, 31, 32, 63] {
        let mut sig = signature.clone();
        sig[i] ^= 0x40;
        assert_eq!(
            accept(&raw.encode(&sig), k.account.public()).err(),
            Some(DeviceListError::BadSignature),
            "signature byte {i}"
        );
    }
}

/// Each single-bit flip of a whole encoding fails to parse or to verify.
#[test]
fn every_bit_flip_is_refused() {
    let k = keys(2);
    let bytes = list(&k, 2).sign(&k.account).unwrap().to_bytes();
    assert_eq!(accept(&bytes, k.account.public()).unwrap(), list(&k, 2));
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            assert!(
                accept(&b, k.account.public()).is_err(),
                "byte {i} bit {bit} accepted"
            );
        }
    }
}

#[test]
fn truncation_and_trailing_bytes_fail() {
    let k = keys(2);
    let bytes = list(&k, 1).sign(&k.account).unwrap().to_bytes();
    for len in 0..bytes.len() {
        assert!(
            matches!(
                SignedDeviceList::from_bytes(&bytes[..len]),
                Err(DeviceListError::Decode(_))
            ),
            "prefix of {len} bytes parsed"
        );
    }
    for extra in [&[0u8][..], &[0; 64], b"x"] {
        let mut long = bytes.clone();
        long.extend_from_slice(extra);
        assert_eq!(
            SignedDeviceList::from_bytes(&long).err(),
            Some(DeviceListError::Decode(DecodeError::Malformed(
                "trailing bytes after the signature"
            )))
        );
    }
}

#[test]
fn malformed_fields_fail_to_parse() {
    let k = keys(1);
    let raw = Raw::of(&list(&k, 1), k.account.public());
    let decode = |r: &Raw| SignedDeviceList::from_bytes(&r.sign(&k.account)).err();

    let mut r = raw.clone();
    r.label = b"Missive device list v3".to_vec();
    assert_eq!(
        decode(&r),
        Some(DeviceListError::Decode(DecodeError::Malformed(
            "not a Missive device list v2"
        )))
    );
    let mut r = raw.clone();
    r.username = vec![0xff, 0xfe];
    assert_eq!(
        decode(&r),
        Some(DeviceListError::Decode(DecodeError::Malformed(
            "username is not UTF-8"
        )))
    );
    let mut r = raw.clone();
    r.account.pop();
    assert_eq!(
        decode(&r),
        Some(DeviceListError::Decode(DecodeError::Malformed(
            "identity key field is not 32 bytes"
        )))
    );
    // The identity point has small order; y = 2 is not a point.
    for bad in [1u8, 2] {
        let mut key = vec![0u8; 32];
        key[0] = bad;
        let mut r = raw.clone();
        r.devices[0].key = key.clone();
        assert_eq!(
            decode(&r),
            Some(DeviceListError::Decode(DecodeError::Key(
                KeyError::InvalidPublicKey("identity key")
            )))
        );
        let mut r = raw.clone();
        r.account = key;
        assert!(matches!(
            decode(&r),
            Some(DeviceListError::Decode(DecodeError::Key(_)))
        ));
    }
    let mut r = raw.clone();
    r.devices[0].link_signature.push(0);
    assert_eq!(
        decode(&r),
        Some(DeviceListError::Decode(DecodeError::Malformed(
            "link signature is not 64 bytes"
        )))
    );
    // A count naming more entries than present.
    let mut r = raw.clone();
    r.count = Some(2);
    assert!(matches!(decode(&r), Some(DeviceListError::Decode(_))));
}

#[test]
fn too_many_and_no_devices_are_refused() {
    let k = keys(MAX_DEVICES as u8 + 1);
    let too_many = list(&k, 1);
    let expected = DeviceListError::TooManyDevices {
        count: MAX_DEVICES + 1,
        max: MAX_DEVICES,
    };
    assert_eq!(too_many.sign(&k.account).err(), Some(expected.clone()));
    // Signed by the account key anyway: refused when parsed, so never verified.
    let bytes = Raw::of(&too_many, k.account.public()).sign(&k.account);
    assert_eq!(SignedDeviceList::from_bytes(&bytes).err(), Some(expected));
    // The count is refused before anything is read or allocated for it.
    let mut raw = Raw::of(&list(&keys(1), 1), k.account.public());
    raw.count = Some(u32::MAX);
    assert_eq!(
        SignedDeviceList::from_bytes(&raw.sign(&k.account)).err(),
        Some(DeviceListError::TooManyDevices {
            count: u32::MAX as usize,
            max: MAX_DEVICES
        })
    );
    assert!(
        DeviceListError::TooManyDevices { count: 7, max: 6 }
            .to_string()
            .contains("7 devices, more than the allowed 6")
    );

    let mut empty = list(&k, 1);
    empty.devices.clear();
    assert_eq!(empty.sign(&k.account).err(), Some(DeviceListError::Empty));
    let bytes = Raw::of(&empty, k.account.public()).sign(&k.account);
    assert_eq!(
        accept(&bytes, k.account.public()).err(),
        Some(DeviceListError::Empty)
    );

    // Exactly MAX_DEVICES is fine.
    let k = keys(MAX_DEVICES as u8);
    let bytes = list(&k, 1).sign(&k.account).unwrap().to_bytes();
    assert_eq!(accept(&bytes, k.account.public()).unwrap(), list(&k, 1));
}

#[test]
fn version_zero_is_refused() {
    let k = keys(1);
    let zero = list(&k, 0);
    assert_eq!(
        zero.sign(&k.account).err(),
        Some(DeviceListError::VersionZero)
    );
    let bytes = Raw::of(&zero, k.account.public()).sign(&k.account);
    assert_eq!(
        accept(&bytes, k.account.public()).err(),
        Some(DeviceListError::VersionZero)
    );
}

/// A list a correct client refuses to sign: `sign` refuses it, and the same
/// list signed by the account key directly fails `verify` with the same error.
fn refused_both_ways(k: &Keys, bad: &DeviceList, expected: DeviceListError) {
    assert_eq!(bad.sign(&k.account).err(), Some(expected.clone()));
    let bytes = Raw::of(bad, k.account.public()).sign(&k.account);
    assert_eq!(accept(&bytes, k.account.public()).err(), Some(expected));
}

#[test]
fn duplicate_device_ids_are_refused() {
    let k = keys(3);
    let mut bad = list(&k, 1);
    let account = k.account.public();
    bad.devices[1] = DeviceEntry::link(&k.devices[1], USER, account, 1, 5);
    let expected = DeviceListError::DuplicateDeviceId { device_id: 1 };
    assert_eq!(expected.to_string(), "device 1 is listed twice");
    refused_both_ways(&k, &bad, expected);
}

#[test]
fn devices_out_of_order_are_refused() {
    let k = keys(3);
    let mut bad = list(&k, 1);
    bad.devices.swap(1, 2);
    refused_both_ways(
        &k,
        &bad,
        DeviceListError::DevicesOutOfOrder { device_id: 2 },
    );
}

#[test]
fn a_device_with_the_account_key_is_refused() {
    let k = keys(2);
    let mut bad = list(&k, 1);
    bad.devices.push(DeviceEntry::link(
        &k.account,
        USER,
        k.account.public(),
        9,
        1,
    ));
    let expected = DeviceListError::DeviceIsAccountKey { device_id: 9 };
    assert!(expected.to_string().contains("device 9"));
    refused_both_ways(&k, &bad, expected);
}

#[test]
fn two_devices_sharing_a_key_are_refused() {
    let k = keys(2);
    let mut bad = list(&k, 1);
    bad.devices.push(DeviceEntry::link(
        &k.devices[0],
        USER,
        k.account.public(),
        5,
        1,
    ));
    let expected = DeviceListError::DuplicateDeviceKey {
        device_id: 5,
        other_device_id: 1,
    };
    assert_eq!(
        expected.to_string(),
        "device 5 has the same identity key as device 1"
    );
    refused_both_ways(&k, &bad, expected);
}

#[test]
fn a_link_signature_by_another_key_is_refused() {
    let k = keys(2);
    let account = k.account.public();
    let intruder = identity(50);
    // Device 2's entry, but the link is signed by another key.
    let mut bad = list(&k, 1);
    let forged = DeviceEntry::link(&intruder, USER, account, 2, 102);
    bad.devices[1].link_signature = forged.link_signature;
    let expected = DeviceListError::BadLinkSignature { device_id: 2 };
    assert!(
        expected
            .to_string()
            .starts_with("device 2's link signature")
    );
    refused_both_ways(&k, &bad, expected.clone());

    // A genuine link, but for another account, username, id or registration id:
    // the device did not consent to this listing.
    let other_account = identity(51);
    let d = &k.devices[1];
    let links = [
        DeviceEntry::link(d, USER, other_account.public(), 2, 102),
        DeviceEntry::link(d, "mallory", account, 2, 102),
        DeviceEntry::link(d, USER, account, 3, 102),
        DeviceEntry::link(d, USER, account, 2, 103),
    ];
    for link in links {
        let mut bad = list(&k, 1);
        bad.devices[1].link_signature = link.link_signature;
        refused_both_ways(&k, &bad, expected.clone());
    }
}

#[test]
fn wrong_pinned_account_or_username_is_refused() {
    let k = keys(2);
    let signed = list(&k, 1).sign(&k.account).unwrap();
    let other = identity(60);
    assert_eq!(
        signed.verify(other.public(), USER).err(),
        Some(DeviceListError::AccountMismatch)
    );
    // A device key is not the account key either.
    assert_eq!(
        signed.verify(k.devices[0].public(), USER).err(),
        Some(DeviceListError::AccountMismatch)
    );
    assert_eq!(
        signed.verify(k.account.public(), "bob").err(),
        Some(DeviceListError::UsernameMismatch {
            expected: "bob".into(),
            actual: USER.into()
        })
    );
    // The same account key signing a list for another username is refused for alice.
    let mut bob = list(&k, 1);
    bob.username = "bob".into();
    let bytes = Raw::of(&bob, k.account.public()).sign(&k.account);
    assert!(matches!(
        accept(&bytes, k.account.public()).err(),
        Some(DeviceListError::UsernameMismatch { .. })
    ));
    // A list by another account key that names the pinned one: bad signature.
    let bytes = Raw::of(&list(&k, 1), k.account.public()).sign(&other);
    assert_eq!(
        accept(&bytes, k.account.public()).err(),
        Some(DeviceListError::BadSignature)
    );
}

#[test]
fn rollback_and_equivocation_are_refused() {
    let k = keys(2);
    let account = k.account.public();
    let v1 = list(&k, 1).sign(&k.account).unwrap();
    let v2 = list(&k, 2).sign(&k.account).unwrap();
    let mut other = list(&k, 2);
    other.devices.pop();
    let v2_other = other.sign(&k.account).unwrap();
    let seen = |s: &SignedDeviceList| Some((s.version(), s.list_hash()));

    assert_eq!(
        v1.verify_change(account, USER, None).unwrap().1,
        ListChange::First
    );
    assert_eq!(
        v2.verify_change(account, USER, seen(&v1)).unwrap().1,
        ListChange::Newer
    );
    assert_eq!(
        v2.verify_change(account, USER, seen(&v2)).unwrap().1,
        ListChange::Unchanged
    );
    assert_eq!(
        v1.verify_change(account, USER, seen(&v2)).err(),
        Some(DeviceListError::Rollback {
            seen: 2,
            offered: 1
        })
    );
    assert_eq!(
        v2_other.verify_change(account, USER, seen(&v2)).err(),
        Some(DeviceListError::Equivocation { version: 2 })
    );
    // verify runs first: a list that does not verify never reaches the comparison.
    assert_eq!(
        v2.verify_change(identity(70).public(), USER, seen(&v1))
            .err(),
        Some(DeviceListError::AccountMismatch)
    );
    // The comparison alone.
    let h = [7u8; 32];
    assert_eq!(check_change(None, (5, h)), Ok(ListChange::First));
    assert_eq!(
        check_change(Some((5, h)), (5, h)),
        Ok(ListChange::Unchanged)
    );
    assert_eq!(
        check_change(Some((5, h)), (6, [0; 32])),
        Ok(ListChange::Newer)
    );
    assert_eq!(
        check_change(Some((5, h)), (4, h)),
        Err(DeviceListError::Rollback {
            seen: 5,
            offered: 4
        })
    );
    assert_eq!(
        check_change(Some((5, h)), (5, [8; 32])),
        Err(DeviceListError::Equivocation { version: 5 })
    );
    assert_eq!(
        check_change(Some((u64::MAX, h)), (0, h)),
        Err(DeviceListError::Rollback {
            seen: u64::MAX,
            offered: 0
        })
    );
}

#[test]
fn added_and_removed_since() {
    let k = keys(4);
    let account = k.account.public();
    let full = list(&k, 1);
    let mut older = full.clone();
    older.devices.remove(2); // devices 1, 2, 4
    let mut newer = full.clone();
    newer.devices.remove(0); // devices 2, 3, 4
    assert_eq!(newer.added_since(&older), vec![3]);
    assert_eq!(newer.removed_since(&older), vec![1]);
    assert_eq!(older.added_since(&newer), vec![1]);
    assert_eq!(older.removed_since(&newer), vec![3]);
    assert!(full.added_since(&full).is_empty());
    assert!(full.removed_since(&full).is_empty());

    // Device 4 reinstalled with a new key: removed and added.
    let mut rekeyed = newer.clone();
    let fresh = identity(80);
    rekeyed.devices[2] = DeviceEntry::link(&fresh, USER, account, 4, 104);
    assert_eq!(rekeyed.added_since(&newer), vec![4]);
    assert_eq!(rekeyed.removed_since(&newer), vec![4]);
    assert_eq!(rekeyed.added_since(&older), vec![3, 4]);
    assert_eq!(rekeyed.removed_since(&older), vec![1, 4]);
    // Same key under another id: the old id removed, the new id added.
    let mut moved = newer.clone();
    moved.devices[0].device_id = 9;
    assert_eq!(moved.added_since(&newer), vec![9]);
    assert_eq!(moved.removed_since(&newer), vec![2]);
}

fn arbitrary_list() -> impl Strategy<Value = (u64, u64, Vec<(u32, u32)>)> {
    (
        1..=u64::MAX,
        any::<u64>(),
        prop::collection::btree_map(any::<u32>(), any::<u32>(), 1..=MAX_DEVICES),
    )
        .prop_map(|(version, timestamp, devices)| {
            (version, timestamp, devices.into_iter().collect())
        })
}

fn build(version: u64, timestamp_ms: u64, devices: &[(u32, u32)]) -> (Keys, DeviceList) {
    let k = keys(devices.len() as u8);
    let list = DeviceList {
        username: USER.into(),
        version,
        timestamp_ms,
        devices: devices
            .iter()
            .zip(&k.devices)
            .map(|(&(id, reg), d)| DeviceEntry::link(d, USER, k.account.public(), id, reg))
            .collect(),
    };
    (k, list)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_valid_list_round_trips((version, timestamp, devices) in arbitrary_list()) {
        let (k, list) = build(version, timestamp, &devices);
        let bytes = list.sign(&k.account).unwrap().to_bytes();
        prop_assert_eq!(&bytes, &Raw::of(&list, k.account.public()).sign(&k.account));
        prop_assert_eq!(accept(&bytes, k.account.public()).unwrap(), list);
    }

    #[test]
    fn any_byte_replaced_is_refused(
        (version, timestamp, devices) in arbitrary_list(),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let (k, list) = build(version, timestamp, &devices);
        let mut bytes = list.sign(&k.account).unwrap().to_bytes();
        let i = index.index(bytes.len());
        prop_assume!(bytes[i] != value);
        bytes[i] = value;
        prop_assert!(accept(&bytes, k.account.public()).is_err());
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedDeviceList::from_bytes(&bytes);
    }

    /// Arbitrary bytes after a valid prefix (label, username, account key) reach
    /// the deeper parsing code.
    #[test]
    fn parsing_arbitrary_tails_never_panics(tail in prop::collection::vec(any::<u8>(), 0..600)) {
        let k = keys(1);
        let mut bytes = list(&k, 1).sign(&k.account).unwrap().to_bytes();
        bytes.truncate(30 + 13 + 40);
        bytes.extend_from_slice(&tail);
        if let Ok(signed) = SignedDeviceList::from_bytes(&bytes) {
            prop_assert_eq!(signed.to_bytes(), bytes);
            let _ = signed.verify(k.account.public(), USER);
        }
    }
}
