//! Conversions between missive-crypto key types and their wire form.

use missive_crypto::{
    KemPrekeyPublic, OneTimePrekeyPublic, PrekeyBundle, PrekeyOwner, PublicIdentity,
    SignedPrekeyPublic,
};
use missive_proto::v1;

use crate::error::{ClientError, Result};

pub(crate) fn identity(id: &PublicIdentity) -> v1::PublicIdentity {
    v1::PublicIdentity {
        signing_key: id.signing_key().to_vec(),
    }
}

pub(crate) fn signed_prekey(k: &SignedPrekeyPublic) -> v1::SignedPrekey {
    v1::SignedPrekey {
        id: k.id,
        public_key: k.public_key.to_vec(),
        signature: k.signature.to_vec(),
    }
}

pub(crate) fn kem_prekey(k: &KemPrekeyPublic) -> v1::KemPrekey {
    v1::KemPrekey {
        id: k.id,
        public_key: k.public_key.clone(),
        signature: k.signature.to_vec(),
    }
}

pub(crate) fn one_time_prekey(k: &OneTimePrekeyPublic) -> v1::OneTimePrekey {
    v1::OneTimePrekey {
        id: k.id,
        public_key: k.public_key.to_vec(),
    }
}

fn arr<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| {
        ClientError::Protocol(format!("{what} is {} bytes, expected {N}", bytes.len()))
    })
}

/// A bundle from the server: `(device_id, registration_id, bundle)`; its
/// prekey signatures must name `account` (checked by `Session::initiate`).
pub(crate) fn bundle(
    b: &v1::PrekeyBundle,
    account: &PublicIdentity,
) -> Result<(u32, u32, PrekeyBundle)> {
    let id = b
        .identity
        .as_ref()
        .ok_or_else(|| ClientError::Protocol("bundle without identity".into()))?;
    let identity = PublicIdentity::from_bytes(&id.signing_key)
        .map_err(|e| ClientError::Protocol(format!("identity in bundle: {e}")))?;
    let spk = b
        .signed_prekey
        .as_ref()
        .ok_or_else(|| ClientError::Protocol("bundle without signed prekey".into()))?;
    let kem = b
        .kem_prekey
        .as_ref()
        .ok_or_else(|| ClientError::Protocol("bundle without KEM prekey".into()))?;
    let one_time_prekey = match &b.one_time_prekey {
        Some(k) => Some(OneTimePrekeyPublic {
            id: k.id,
            public_key: arr(&k.public_key, "one-time prekey")?,
        }),
        None => None,
    };
    Ok((
        b.device_id,
        b.registration_id,
        PrekeyBundle {
            identity,
            owner: PrekeyOwner {
                account: account.clone(),
                device_id: b.device_id,
            },
            signed_prekey: SignedPrekeyPublic {
                id: spk.id,
                public_key: arr(&spk.public_key, "signed prekey")?,
                signature: arr(&spk.signature, "signed prekey signature")?,
            },
            kem_prekey: KemPrekeyPublic {
                id: kem.id,
                public_key: kem.public_key.clone(),
                signature: arr(&kem.signature, "KEM prekey signature")?,
            },
            one_time_prekey,
        },
    ))
}
