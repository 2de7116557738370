//! Key and signature checks, delegated to `missive-crypto` (the server never
//! implements a primitive). Every key is verified before it is stored.

use missive_crypto::franking::{self, FrankingKey};
use missive_crypto::{
    KEM_PUBLIC_KEY_LEN, KemPrekeyPublic, PrekeyOwner, PublicIdentity, SignedPrekeyPublic,
};
use missive_proto::v1;

use crate::error::{ApiError, ApiResult};
use crate::franking::{KeyRing, Verified};
use crate::storage::{AccountId, KemPrekeyRecord, OneTimePrekeyRecord, SignedPrekeyRecord};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(message.into())
}

fn array<const N: usize>(bytes: &[u8], what: &str) -> ApiResult<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| invalid(format!("{what} must be {N} bytes, not {}", bytes.len())))
}

/// Parses the identity key (a canonical Ed25519 key of large order).
pub fn identity(identity: Option<&v1::PublicIdentity>) -> ApiResult<PublicIdentity> {
    key(identity, "identity")
}

/// Parses a key named `what` in messages ("identity", "device identity").
pub fn key(identity: Option<&v1::PublicIdentity>, what: &str) -> ApiResult<PublicIdentity> {
    let identity = identity.ok_or_else(|| invalid(format!("the {what} is missing")))?;
    PublicIdentity::from_bytes(&identity.signing_key)
        .map_err(|e| invalid(format!("invalid {what}: {e}")))
}

/// A stored identity (`to_bytes()`).
pub fn stored_identity(bytes: &[u8]) -> ApiResult<PublicIdentity> {
    PublicIdentity::from_bytes(bytes).map_err(|_| {
        // Identities of the two-key pre-release were 128 bytes (docs/PROTOCOL.md).
        let why = if bytes.len() == 128 {
            "stored identity is in a retired pre-release format; the account must register again"
        } else {
            "stored identity does not parse"
        };
        ApiError::Storage(crate::storage::StorageError::Backend(why.into()))
    })
}

/// Verifies the proof of possession over a registration transcript (by the
/// account key).
pub fn registration(
    identity: &PublicIdentity,
    challenge: &[u8],
    server_name: &str,
    username: &str,
    registration_id: u32,
    signature: &[u8],
) -> ApiResult<()> {
    let transcript =
        missive_crypto::transcript::registration(challenge, server_name, username, registration_id);
    identity
        .verify(&transcript, signature)
        .map_err(|_| ApiError::BadSignature)
}

/// Verifies the proof of possession over a login transcript (by the device
/// key).
pub fn login(
    identity: &PublicIdentity,
    challenge: &[u8],
    server_name: &str,
    username: &str,
    device_id: u32,
    signature: &[u8],
) -> ApiResult<()> {
    let transcript = missive_crypto::transcript::login(challenge, server_name, username, device_id);
    identity
        .verify(&transcript, signature)
        .map_err(|_| ApiError::BadSignature)
}

/// Verifies a linked device's proof of possession over an add-device
/// transcript (by its device key).
pub fn add_device(
    identity: &PublicIdentity,
    challenge: &[u8],
    server_name: &str,
    username: &str,
    device_id: u32,
    registration_id: u32,
    signature: &[u8],
) -> ApiResult<()> {
    let transcript = missive_crypto::transcript::add_device(
        challenge,
        server_name,
        username,
        device_id,
        registration_id,
    );
    identity
        .verify(&transcript, signature)
        .map_err(|_| ApiError::BadSignature)
}

/// Checks a signed X25519 prekey's length and its signature by the device
/// key `identity` for `owner`.
pub fn signed_prekey(
    identity: &PublicIdentity,
    owner: &PrekeyOwner,
    key: Option<&v1::SignedPrekey>,
) -> ApiResult<SignedPrekeyRecord> {
    let key = key.ok_or_else(|| invalid("the signed prekey is missing"))?;
    let public = SignedPrekeyPublic {
        id: key.id,
        public_key: array(&key.public_key, "a signed prekey")?,
        signature: array(&key.signature, "a prekey signature")?,
    };
    identity.verify_signed_prekey(&public, owner).map_err(|_| {
        invalid(format!(
            "the signature of signed prekey {} does not verify",
            key.id
        ))
    })?;
    Ok(SignedPrekeyRecord {
        id: key.id,
        public_key: key.public_key.clone(),
        signature: key.signature.clone(),
    })
}

/// Checks an ML-KEM prekey's length and its signature by the device key
/// `identity` for `owner`.
pub fn kem_prekey(
    identity: &PublicIdentity,
    owner: &PrekeyOwner,
    key: Option<&v1::KemPrekey>,
) -> ApiResult<KemPrekeyRecord> {
    let key = key.ok_or_else(|| invalid("the KEM prekey is missing"))?;
    if key.public_key.len() != KEM_PUBLIC_KEY_LEN {
        return Err(invalid(format!(
            "KEM prekey {} must be {KEM_PUBLIC_KEY_LEN} bytes, not {}",
            key.id,
            key.public_key.len()
        )));
    }
    let public = KemPrekeyPublic {
        id: key.id,
        public_key: key.public_key.clone(),
        signature: array(&key.signature, "a prekey signature")?,
    };
    identity.verify_kem_prekey(&public, owner).map_err(|_| {
        invalid(format!(
            "the signature of KEM prekey {} does not verify",
            key.id
        ))
    })?;
    Ok(KemPrekeyRecord {
        id: key.id,
        public_key: key.public_key.clone(),
        signature: key.signature.clone(),
    })
}

/// Checks a batch of one-time prekeys: bounded, well-formed, ids unique.
pub fn one_time_prekeys(
    identity: &PublicIdentity,
    owner: &PrekeyOwner,
    one_time: &[v1::OneTimePrekey],
    kem: &[v1::KemPrekey],
) -> ApiResult<(Vec<OneTimePrekeyRecord>, Vec<KemPrekeyRecord>)> {
    let max = crate::limits::MAX_PREKEYS_PER_CALL;
    if one_time.len() > max || kem.len() > max {
        return Err(invalid(format!(
            "at most {max} one-time prekeys of each kind per call"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut x25519 = Vec::with_capacity(one_time.len());
    for key in one_time {
        array::<32>(&key.public_key, "a one-time prekey")?;
        if !seen.insert(key.id) {
            return Err(invalid(format!(
                "one-time prekey id {} is used twice",
                key.id
            )));
        }
        x25519.push(OneTimePrekeyRecord {
            id: key.id,
            public_key: key.public_key.clone(),
        });
    }
    seen.clear();
    let mut kems = Vec::with_capacity(kem.len());
    for key in kem {
        if !seen.insert(key.id) {
            return Err(invalid(format!(
                "one-time KEM prekey id {} is used twice",
                key.id
            )));
        }
        kems.push(kem_prekey(identity, owner, Some(key))?);
    }
    Ok((x25519, kems))
}

/// The sender's commitment over the reported plaintext (and file).
fn reported_commitment(
    franking_key: &[u8],
    commitment: &[u8],
    plaintext: &[u8],
    message_id: &[u8],
    attachment: Option<&missive_proto::v1::AttachmentPointer>,
) -> ApiResult<()> {
    let key = FrankingKey::from_bytes(franking_key)
        .map_err(|_| invalid("the franking key must be 32 bytes"))?;
    let committed = match attachment {
        None => franking::verify_commitment(&key, message_id, plaintext, commitment),
        Some(p) => missive_crypto::attachment::verify_franking_commitment(
            &key,
            message_id,
            plaintext,
            &missive_crypto::attachment::PointerBinding {
                blob_id: &p.blob_id,
                key_commitment: &p.key_commitment,
                ciphertext_hash: &p.ciphertext_hash,
                plaintext_len: p.size,
                mime_type: &p.mime_type,
                file_name: &p.file_name,
            },
            commitment,
        ),
    };
    if !committed {
        return Err(invalid(
            "the franking commitment does not match the reported text and key",
        ));
    }
    // The commitment binds key_commitment, not the key: a reported key must
    // open to it, or the moderator could be shown another file.
    if let Some(p) = attachment {
        missive_crypto::attachment::AttachmentKey::from_bytes(&p.key)
            .and_then(|k| k.verify_commitment(&p.key_commitment))
            .map_err(|_| invalid("the reported file key does not match its key commitment"))?;
    }
    Ok(())
}

/// Verifies both MACs of a report of a group message: the sender's
/// commitment, and the server's tag with the group in place of the
/// recipient ([`KeyRing::verify_group`]).
#[allow(clippy::too_many_arguments)]
pub fn report_group(
    keys: &KeyRing,
    franking_key: &[u8],
    commitment: &[u8],
    tag: &[u8],
    plaintext: &[u8],
    sender: &str,
    group_id: &[u8],
    server_timestamp_ms: u64,
    message_id: &[u8],
    attachment: Option<&missive_proto::v1::AttachmentPointer>,
) -> ApiResult<Verified> {
    reported_commitment(franking_key, commitment, plaintext, message_id, attachment)?;
    keys.verify_group(
        tag,
        commitment,
        sender,
        group_id,
        server_timestamp_ms,
        message_id,
    )
    .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// Verifies both MACs of a report: the sender's commitment over the
/// plaintext, and the server's tag over commitment, both accounts and
/// usernames, timestamp and message id ([`crate::franking`]).
#[allow(clippy::too_many_arguments)]
pub fn report(
    keys: &KeyRing,
    franking_key: &[u8],
    commitment: &[u8],
    tag: &[u8],
    plaintext: &[u8],
    sender: &str,
    reporter_account: AccountId,
    reporter: &str,
    server_timestamp_ms: u64,
    message_id: &[u8],
    attachment: Option<&missive_proto::v1::AttachmentPointer>,
) -> ApiResult<Verified> {
    reported_commitment(franking_key, commitment, plaintext, message_id, attachment)?;
    keys.verify(
        tag,
        commitment,
        sender,
        reporter_account,
        reporter,
        server_timestamp_ms,
        message_id,
    )
    .map_err(|e| invalid(e.to_string()))
}

/// Checks a published signed device list (protocol v2) for `username`'s
/// account, whose account key is `account`: bounded in size (before any
/// parsing), parsed strictly and verified by `missive-crypto`, with a version
/// the stores can hold. Returns the verified list's version.
pub fn device_list(bytes: &[u8], account: &PublicIdentity, username: &str) -> ApiResult<u64> {
    let max = crate::limits::MAX_DEVICE_LIST_BYTES;
    if bytes.len() > max {
        return Err(invalid(format!(
            "a signed device list is at most {max} bytes ({} devices), not {}",
            missive_crypto::consts::MAX_DEVICES,
            bytes.len()
        )));
    }
    // The crypto errors' sentences quote any peer text with `{:?}` (escaped).
    let signed = missive_crypto::SignedDeviceList::from_bytes(bytes)
        .map_err(|e| invalid(format!("the signed device list was refused: {e}")))?;
    let list = signed
        .verify(account, username)
        .map_err(|e| invalid(format!("the signed device list was refused: {e}")))?;
    let most = crate::limits::MAX_DEVICE_LIST_VERSION;
    if list.version > most {
        return Err(invalid(format!(
            "device list version {} is above the highest this server stores, {most}",
            list.version
        )));
    }
    Ok(list.version)
}

/// Checks the first signed device list of a registration: it verifies
/// against the account key and username ([`device_list`]), has version 1
/// and names exactly device 1 with `device_identity` and `registration_id`.
pub fn first_device_list(
    bytes: &[u8],
    account: &PublicIdentity,
    username: &str,
    device_identity: &PublicIdentity,
    registration_id: u32,
) -> ApiResult<()> {
    if bytes.is_empty() {
        return Err(invalid(
            "the signed device list is missing: a registration publishes version 1 naming device 1",
        ));
    }
    let version = device_list(bytes, account, username)?;
    if version != 1 {
        return Err(invalid(format!(
            "the first device list must have version 1, not {version}"
        )));
    }
    let signed = missive_crypto::SignedDeviceList::from_bytes(bytes)
        .map_err(|e| invalid(format!("the signed device list was refused: {e}")))?;
    match signed.unverified_list().devices.as_slice() {
        [only] if only.device_id == 1 => {
            if &only.identity != device_identity {
                Err(invalid(
                    "the device list names device 1 with another key than the device identity",
                ))
            } else if only.registration_id != registration_id {
                Err(invalid(format!(
                    "the device list names device 1 with registration id {}, not {registration_id}",
                    only.registration_id
                )))
            } else {
                Ok(())
            }
        }
        devices => Err(invalid(format!(
            "the first device list must name exactly device 1, not devices {:?}",
            devices.iter().map(|d| d.device_id).collect::<Vec<_>>()
        ))),
    }
}

/// The account's stored signed device list, parsed and verified again
/// against the account key and username (it was verified when published;
/// one that no longer verifies is a storage failure, never trusted).
pub fn stored_device_list(
    bytes: &[u8],
    account: &PublicIdentity,
    username: &str,
) -> ApiResult<missive_crypto::DeviceList> {
    let corrupt = |_| {
        ApiError::Storage(crate::storage::StorageError::Backend(
            "the stored device list does not verify".into(),
        ))
    };
    let signed = missive_crypto::SignedDeviceList::from_bytes(bytes).map_err(corrupt)?;
    signed.verify(account, username).cloned().map_err(corrupt)
}

/// Lower-case hex fingerprint of a stored identity.
pub fn fingerprint(identity: &[u8]) -> String {
    PublicIdentity::from_bytes(identity)
        .map(|id| id.fingerprint().to_string())
        .unwrap_or_else(|_| "unparseable".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use missive_crypto::consts::MAX_DEVICES;
    use missive_crypto::{DeviceEntry, DeviceList, IdentityKeyPair};
    use rand::rngs::OsRng;

    use super::*;
    use crate::limits::{MAX_DEVICE_LIST_BYTES, MAX_USERNAME_BYTES};

    fn list(account: &IdentityKeyPair, username: &str, version: u64, count: u32) -> Vec<u8> {
        let devices = (1..=count)
            .map(|id| {
                let device = IdentityKeyPair::generate(&mut OsRng);
                DeviceEntry::link(&device, username, account.public(), id, id)
            })
            .collect();
        DeviceList {
            username: username.to_owned(),
            version,
            timestamp_ms: 0,
            devices,
        }
        .sign(account)
        .unwrap()
        .to_bytes()
    }

    #[test]
    fn the_largest_valid_device_list_is_exactly_the_bound() {
        let account = IdentityKeyPair::generate(&mut OsRng);
        let username = "u".repeat(MAX_USERNAME_BYTES);
        let bytes = list(&account, &username, 1, MAX_DEVICES as u32);
        assert_eq!(bytes.len(), MAX_DEVICE_LIST_BYTES);
        assert_eq!(device_list(&bytes, account.public(), &username).unwrap(), 1);
    }

    #[test]
    fn versions_beyond_what_the_stores_hold_are_refused() {
        let account = IdentityKeyPair::generate(&mut OsRng);
        let most = crate::limits::MAX_DEVICE_LIST_VERSION;
        let bytes = list(&account, "alice", most, 1);
        assert_eq!(
            device_list(&bytes, account.public(), "alice").unwrap(),
            most
        );
        let bytes = list(&account, "alice", most + 1, 1);
        let error = device_list(&bytes, account.public(), "alice").unwrap_err();
        assert!(matches!(error, ApiError::InvalidArgument(_)), "{error}");
    }
}
