//! Linking a new device to an account (protocol v2; docs/PROTOCOL.md,
//! "Linking a device").
//!
//! The new device shows a [`LinkCode`]: a one-time secret and the hash of
//! its ephemeral public keys (X25519 and ML-KEM-768). The primary, given the
//! code, fetches those keys from a server mailbox, checks their hash, and runs
//! a hybrid key agreement to them, with the code's secret as HKDF salt (a
//! pre-shared key). The server relays everything but learns neither the
//! secret (it sees only a hash of it, the rendezvous id) nor any key:
//!
//! ```text
//! offer      = E_N (32) || EK_N (1184)                      new device → server
//! rendezvous = SHA256(field("Missive link rendezvous v2") || field(secret))
//! offer hash = SHA256(field("Missive link offer v2") || field(offer))[0..16]
//! code       = secret (16) || offer hash (16), base32
//! hello      = E_P (32) || CT (1088) || Seal(k_hello, invite)  primary → new device
//! th         = SHA256(field("Missive link transcript v2") || field(offer)
//!                     || field(E_P) || field(CT))
//! k_hello || k_reply || k_finish = HKDF-SHA256(salt = secret,
//!     ikm = 0xFF^32 || X25519(e_P, E_N) || ML-KEM shared secret,
//!     info = "Missive link keys v2" || th, 96)
//! invite     = field(username) || field(account key, 32) || u32(device id)
//! reply      = Seal(k_reply, field(device key, 32) || u32(registration id)
//!                            || field(link signature, 64))  new device → primary
//! finish     = Seal(k_finish, payload)                       primary → new device
//! Seal(k, m) = ChaCha20-Poly1305(k, nonce = 0^12, m, ad = th)  (each key seals once)
//! ```
//!
//! Only the device holding the ephemeral secrets can open the hello, and only
//! someone who read the code can make a hello it accepts or open its reply.

use core::fmt;

use data_encoding::BASE32_NOPAD;
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::devices::DeviceEntry;
use crate::encoding::{Reader, put_field, put_u32};
use crate::identity::{IdentityKeyPair, PUBLIC_IDENTITY_LEN, PublicIdentity};
use crate::primitives::{
    self, KEM_CT_LEN, KEM_EK_LEN, KEM_SEED_LEN, KemDecapsulationKey, X25519_LEN,
};

/// Length of the code's one-time secret.
pub const LINK_SECRET_LEN: usize = 16;
/// Length of the offer hash carried in the code.
pub const OFFER_HASH_LEN: usize = 16;
/// Length of an offer: X25519 public key || ML-KEM-768 encapsulation key.
pub const OFFER_LEN: usize = X25519_LEN + KEM_EK_LEN;
/// Length of the unencrypted head of a hello: E_P || CT.
const HELLO_HEAD_LEN: usize = X25519_LEN + KEM_CT_LEN;
/// Characters of a code's text form between two dashes.
const GROUP: usize = 4;

const RENDEZVOUS_LABEL: &[u8] = b"Missive link rendezvous v2";
const OFFER_LABEL: &[u8] = b"Missive link offer v2";
const TRANSCRIPT_LABEL: &[u8] = b"Missive link transcript v2";
const KEYS_INFO: &[u8] = b"Missive link keys v2";
const NONCE: [u8; primitives::AEAD_NONCE_LEN] = [0; primitives::AEAD_NONCE_LEN];

/// Why a link step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The text is not a link code.
    #[error("this is not a link code: {0}")]
    BadCode(&'static str),
    /// The offer in the mailbox is not the one the code names: the server
    /// (or someone) swapped the new device's keys.
    #[error(
        "the keys in the link mailbox are not the ones this code names: the server substituted them"
    )]
    OfferMismatch,
    /// A message has the wrong length or layout.
    #[error("malformed link message: {0}")]
    Malformed(&'static str),
    /// A sealed message does not open under this link's keys: it was made
    /// without the code, or altered.
    #[error(
        "a link message does not authenticate: it was not made with this link code, or it was altered"
    )]
    Authentication,
    /// The new device's link signature does not verify, or names another
    /// device than the one invited.
    #[error("the new device's signature does not verify: {0}")]
    BadDevice(&'static str),
}

/// The text a new device shows: secret and offer hash.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    secret: Zeroizing<[u8; LINK_SECRET_LEN]>,
    offer_hash: [u8; OFFER_HASH_LEN],
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkCode(..)")
    }
}

impl LinkCode {
    /// The mailbox id: a hash of the secret, so the server cannot compute
    /// the keys from it.
    pub fn rendezvous(&self) -> [u8; 32] {
        let mut t = Zeroizing::new(Vec::with_capacity(16 + RENDEZVOUS_LABEL.len() + 16));
        put_field(&mut t, RENDEZVOUS_LABEL);
        put_field(&mut t, &self.secret[..]);
        primitives::sha256(&t)
    }

    /// The text form: base32 (RFC 4648, no padding) of secret || offer hash,
    /// 52 characters in dash-separated groups of four.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; LINK_SECRET_LEN + OFFER_HASH_LEN]);
        raw[..LINK_SECRET_LEN].copy_from_slice(&self.secret[..]);
        raw[LINK_SECRET_LEN..].copy_from_slice(&self.offer_hash);
        grouped_base32(&raw[..])
    }

    /// Parses a text form; case, dashes and spaces do not matter.
    pub fn parse(text: &str) -> Result<LinkCode, LinkError> {
        let raw = parse_base32(text)
            .ok_or(LinkError::BadCode("it has characters outside A-Z and 2-7"))?;
        if raw.len() != LINK_SECRET_LEN + OFFER_HASH_LEN {
            return Err(LinkError::BadCode(
                "it has the wrong length (52 letters and digits)",
            ));
        }
        let mut secret = Zeroizing::new([0u8; LINK_SECRET_LEN]);
        secret.copy_from_slice(&raw[..LINK_SECRET_LEN]);
        let mut offer_hash = [0u8; OFFER_HASH_LEN];
        offer_hash.copy_from_slice(&raw[LINK_SECRET_LEN..]);
        Ok(LinkCode { secret, offer_hash })
    }
}

/// Base32 (RFC 4648, no padding) in dash-separated groups of four.
pub(crate) fn grouped_base32(raw: &[u8]) -> Zeroizing<String> {
    let plain = Zeroizing::new(BASE32_NOPAD.encode(raw));
    let mut out = Zeroizing::new(String::with_capacity(plain.len() + plain.len() / GROUP));
    for (i, c) in plain.chars().enumerate() {
        if i > 0 && i % GROUP == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// The bytes of a [`grouped_base32`] text; case, dashes and spaces do not
/// matter. `None` for any other character.
pub(crate) fn parse_base32(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let plain: Zeroizing<String> = Zeroizing::new(
        text.chars()
            .filter(|c| !matches!(c, '-' | ' ' | '\t' | '\n' | '\r'))
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    );
    BASE32_NOPAD
        .decode(plain.as_bytes())
        .ok()
        .map(Zeroizing::new)
}

fn offer_hash(offer: &[u8]) -> [u8; OFFER_HASH_LEN] {
    let mut t = Vec::with_capacity(16 + OFFER_LABEL.len() + offer.len());
    put_field(&mut t, OFFER_LABEL);
    put_field(&mut t, offer);
    let mut out = [0u8; OFFER_HASH_LEN];
    out.copy_from_slice(&primitives::sha256(&t)[..OFFER_HASH_LEN]);
    out
}

/// The account a primary invites the new device into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInvite {
    /// The account's username.
    pub username: String,
    /// The account key; the new device pins it.
    pub account: PublicIdentity,
    /// The device id the new device will have.
    pub device_id: u32,
}

impl LinkInvite {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.username.len() + 48));
        put_field(&mut out, self.username.as_bytes());
        put_field(&mut out, &self.account.to_array());
        put_u32(&mut out, self.device_id);
        out
    }

    fn decode(bytes: &[u8]) -> Result<LinkInvite, LinkError> {
        let bad = LinkError::Malformed("invite");
        let mut r = Reader::new(bytes);
        let username = r.field().ok_or(bad.clone())?;
        let username = core::str::from_utf8(username)
            .map_err(|_| bad.clone())?
            .to_owned();
        let account = r.field().ok_or(bad.clone())?;
        if account.len() != PUBLIC_IDENTITY_LEN {
            return Err(bad);
        }
        let account = PublicIdentity::from_bytes(account).map_err(|_| bad.clone())?;
        let device_id = r.u32().ok_or(bad.clone())?;
        if !r.is_empty() {
            return Err(bad);
        }
        Ok(LinkInvite {
            username,
            account,
            device_id,
        })
    }
}

/// The three keys and the transcript hash of one link, on both sides.
pub struct LinkChannel {
    reply_key: Zeroizing<[u8; 32]>,
    finish_key: Zeroizing<[u8; 32]>,
    transcript_hash: [u8; 32],
    invite: LinkInvite,
}

impl fmt::Debug for LinkChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkChannel")
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

/// `th` and `k_hello, k_reply, k_finish` from the shared secrets.
fn derive(
    secret: &[u8; LINK_SECRET_LEN],
    offer: &[u8],
    primary_public: &[u8; X25519_LEN],
    kem_ciphertext: &[u8],
    dh: &[u8; 32],
    kem_shared: &[u8; 32],
) -> ([u8; 32], Zeroizing<[[u8; 32]; 3]>) {
    let mut t = Vec::with_capacity(32 + TRANSCRIPT_LABEL.len() + offer.len() + HELLO_HEAD_LEN);
    put_field(&mut t, TRANSCRIPT_LABEL);
    put_field(&mut t, offer);
    put_field(&mut t, primary_public);
    put_field(&mut t, kem_ciphertext);
    let th = primitives::sha256(&t);
    let mut ikm = Zeroizing::new([0u8; 96]);
    ikm[..32].copy_from_slice(&[0xFF; 32]);
    ikm[32..64].copy_from_slice(dh);
    ikm[64..].copy_from_slice(kem_shared);
    let mut info = Vec::with_capacity(KEYS_INFO.len() + 32);
    info.extend_from_slice(KEYS_INFO);
    info.extend_from_slice(&th);
    let mut okm = Zeroizing::new([0u8; 96]);
    // 96 bytes is far below HKDF-SHA256's limit.
    let _ = primitives::hkdf_sha256(secret, &ikm[..], &info, &mut okm[..]);
    let mut keys = Zeroizing::new([[0u8; 32]; 3]);
    for (i, key) in keys.iter_mut().enumerate() {
        key.copy_from_slice(&okm[32 * i..32 * (i + 1)]);
    }
    (th, keys)
}

/// The new device's side: the code it shows and the ephemeral secrets.
pub struct LinkOffer {
    code: LinkCode,
    x25519: StaticSecret,
    kem: Box<KemDecapsulationKey>,
    offer: Vec<u8>,
}

impl fmt::Debug for LinkOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkOffer(..)")
    }
}

impl LinkOffer {
    /// Draws, in this order, the secret (16 bytes), the X25519 secret (32)
    /// and the ML-KEM-768 seed d || z (64).
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> LinkOffer {
        let mut secret = Zeroizing::new([0u8; LINK_SECRET_LEN]);
        rng.fill_bytes(&mut secret[..]);
        let mut scalar = [0u8; X25519_LEN];
        rng.fill_bytes(&mut scalar);
        let x25519 = StaticSecret::from(scalar);
        scalar.zeroize();
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        rng.fill_bytes(&mut seed[..]);
        let (kem, ek) = primitives::kem_keypair_from_seed(&seed);
        let mut offer = Vec::with_capacity(OFFER_LEN);
        offer.extend_from_slice(&primitives::x25519_public(&x25519));
        offer.extend_from_slice(&primitives::kem_encode_public(&ek));
        let code = LinkCode {
            secret,
            offer_hash: offer_hash(&offer),
        };
        LinkOffer {
            code,
            x25519,
            kem,
            offer,
        }
    }

    /// The code to show.
    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// The offer to put in the mailbox.
    pub fn offer(&self) -> &[u8] {
        &self.offer
    }

    /// Opens the primary's hello: the account this device is invited into,
    /// and the keys for the rest of the link.
    pub fn open_hello(&self, hello: &[u8]) -> Result<LinkChannel, LinkError> {
        if hello.len() < HELLO_HEAD_LEN + primitives::AEAD_TAG_LEN {
            return Err(LinkError::Malformed("hello is too short"));
        }
        let (head, sealed) = hello.split_at(HELLO_HEAD_LEN);
        let mut primary_public = [0u8; X25519_LEN];
        primary_public.copy_from_slice(&head[..X25519_LEN]);
        let ciphertext = &head[X25519_LEN..];
        let dh = primitives::x25519(&self.x25519, &primary_public)
            .map_err(|_| LinkError::Malformed("primary key has low order"))?;
        let kem_shared = primitives::kem_decapsulate(&self.kem, ciphertext)
            .map_err(|_| LinkError::Malformed("KEM ciphertext"))?;
        let (th, keys) = derive(
            &self.code.secret,
            &self.offer,
            &primary_public,
            ciphertext,
            &dh,
            &kem_shared,
        );
        let invite = primitives::aead_open(&keys[0], &NONCE, sealed, &th)
            .map_err(|_| LinkError::Authentication)?;
        let invite = LinkInvite::decode(&invite)?;
        Ok(LinkChannel {
            reply_key: Zeroizing::new(keys[1]),
            finish_key: Zeroizing::new(keys[2]),
            transcript_hash: th,
            invite,
        })
    }
}

/// The primary's side: checks the offer against the code and seals the
/// invite. Draws, in this order, the X25519 secret (32 bytes) and the
/// ML-KEM encapsulation randomness m (32). Returns the hello to post.
pub fn accept_offer<R: CryptoRng + RngCore>(
    rng: &mut R,
    code: &LinkCode,
    offer: &[u8],
    invite: &LinkInvite,
) -> Result<(Vec<u8>, LinkChannel), LinkError> {
    if offer.len() != OFFER_LEN {
        return Err(LinkError::Malformed("offer has the wrong length"));
    }
    if !primitives::ct_eq(&offer_hash(offer), &code.offer_hash) {
        return Err(LinkError::OfferMismatch);
    }
    let mut new_public = [0u8; X25519_LEN];
    new_public.copy_from_slice(&offer[..X25519_LEN]);
    let ek = primitives::kem_encapsulation_key(&offer[X25519_LEN..])
        .map_err(|_| LinkError::Malformed("offer KEM key"))?;
    let mut scalar = [0u8; X25519_LEN];
    rng.fill_bytes(&mut scalar);
    let ours = StaticSecret::from(scalar);
    scalar.zeroize();
    let mut m = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut m[..]);
    let primary_public = primitives::x25519_public(&ours);
    let dh = primitives::x25519(&ours, &new_public)
        .map_err(|_| LinkError::Malformed("offer key has low order"))?;
    let (ciphertext, kem_shared) = primitives::kem_encapsulate_deterministic(&ek, &m)
        .map_err(|_| LinkError::Malformed("offer KEM key"))?;
    let (th, keys) = derive(
        &code.secret,
        offer,
        &primary_public,
        &ciphertext,
        &dh,
        &kem_shared,
    );
    let mut hello = Vec::with_capacity(HELLO_HEAD_LEN + 64 + invite.username.len());
    hello.extend_from_slice(&primary_public);
    hello.extend_from_slice(&ciphertext);
    primitives::aead_seal_append(&keys[0], &NONCE, &invite.encode(), &th, &mut hello)
        .map_err(|_| LinkError::Malformed("invite is too long"))?;
    Ok((
        hello,
        LinkChannel {
            reply_key: Zeroizing::new(keys[1]),
            finish_key: Zeroizing::new(keys[2]),
            transcript_hash: th,
            invite: invite.clone(),
        },
    ))
}

impl LinkChannel {
    /// The account of this link.
    pub fn invite(&self) -> &LinkInvite {
        &self.invite
    }

    /// The SHA-256 transcript hash both sides agree on (shown to compare
    /// if the user wishes; bound into every sealed message).
    pub fn transcript_hash(&self) -> &[u8; 32] {
        &self.transcript_hash
    }

    /// New device: signs its link statement for the invite and seals it.
    pub fn seal_reply(
        &self,
        device: &IdentityKeyPair,
        registration_id: u32,
    ) -> Result<(Vec<u8>, DeviceEntry), LinkError> {
        let entry = DeviceEntry::link(
            device,
            &self.invite.username,
            &self.invite.account,
            self.invite.device_id,
            registration_id,
        );
        let mut plain = Vec::with_capacity(8 + 32 + 4 + 8 + 64);
        put_field(&mut plain, &entry.identity.to_array());
        put_u32(&mut plain, entry.registration_id);
        put_field(&mut plain, &entry.link_signature);
        let sealed = primitives::aead_seal(&self.reply_key, &NONCE, &plain, &self.transcript_hash)
            .map_err(|_| LinkError::Malformed("reply"))?;
        Ok((sealed, entry))
    }

    /// Primary: opens the reply and checks the new device's link signature
    /// for the invited account and device id.
    pub fn open_reply(&self, reply: &[u8]) -> Result<DeviceEntry, LinkError> {
        let plain = primitives::aead_open(&self.reply_key, &NONCE, reply, &self.transcript_hash)
            .map_err(|_| LinkError::Authentication)?;
        let bad = LinkError::Malformed("reply");
        let mut r = Reader::new(&plain);
        let key = r.field().ok_or(bad.clone())?;
        if key.len() != PUBLIC_IDENTITY_LEN {
            return Err(bad);
        }
        let identity = PublicIdentity::from_bytes(key).map_err(|_| bad.clone())?;
        let registration_id = r.u32().ok_or(bad.clone())?;
        let signature: [u8; 64] = r
            .field()
            .and_then(|s| s.try_into().ok())
            .ok_or(bad.clone())?;
        if !r.is_empty() {
            return Err(bad);
        }
        if identity == self.invite.account {
            return Err(LinkError::BadDevice("the device key is the account key"));
        }
        let entry = DeviceEntry {
            device_id: self.invite.device_id,
            identity,
            registration_id,
            link_signature: signature,
        };
        entry
            .verify_link(&self.invite.username, &self.invite.account)
            .map_err(|_| {
                LinkError::BadDevice("its link signature is not for this account and device id")
            })?;
        Ok(entry)
    }

    /// Primary: seals the last message (new device list and contacts).
    pub fn seal_finish(&self, payload: &[u8]) -> Result<Vec<u8>, LinkError> {
        primitives::aead_seal(&self.finish_key, &NONCE, payload, &self.transcript_hash)
            .map_err(|_| LinkError::Malformed("finish is too long"))
    }

    /// New device: opens the last message.
    pub fn open_finish(&self, finish: &[u8]) -> Result<Zeroizing<Vec<u8>>, LinkError> {
        primitives::aead_open(&self.finish_key, &NONCE, finish, &self.transcript_hash)
            .map_err(|_| LinkError::Authentication)
    }
}

/// A contact the primary hands to the new device: the pinned account key
/// and whether the user verified it (device lists are fetched again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedContact {
    /// Username.
    pub username: String,
    /// The pinned account key.
    pub account: PublicIdentity,
    /// Whether the user compared safety numbers for it.
    pub verified: bool,
}

/// The finish payload: the account's new signed device list (naming the new
/// device) and the contacts.
///
/// `field(signed list) || u32(count) || count × (field(username)
/// || field(account key, 32) || u8(verified: 0 or 1))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFinish {
    /// The list as published, [`crate::SignedDeviceList::to_bytes`].
    pub signed_device_list: Vec<u8>,
    /// The contacts, in any order.
    pub contacts: Vec<LinkedContact>,
}

/// At most this many contacts travel in a finish (about 800 KB).
pub const MAX_LINKED_CONTACTS: usize = 10_000;

impl LinkFinish {
    /// The encoding above.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            self.signed_device_list.len() + 16 + self.contacts.len() * 64,
        ));
        put_field(&mut out, &self.signed_device_list);
        put_u32(
            &mut out,
            u32::try_from(self.contacts.len()).unwrap_or(u32::MAX),
        );
        for c in &self.contacts {
            put_field(&mut out, c.username.as_bytes());
            put_field(&mut out, &c.account.to_array());
            out.push(u8::from(c.verified));
        }
        out
    }

    /// Parses [`LinkFinish::encode`]; the list itself is parsed by the caller.
    pub fn decode(bytes: &[u8]) -> Result<LinkFinish, LinkError> {
        let bad = LinkError::Malformed("finish");
        let mut r = Reader::new(bytes);
        let signed_device_list = r.field().ok_or(bad.clone())?.to_vec();
        let count = r.u32().ok_or(bad.clone())? as usize;
        if count > MAX_LINKED_CONTACTS {
            return Err(LinkError::Malformed("finish has too many contacts"));
        }
        let mut contacts = Vec::with_capacity(count.min(r.remaining() / 45));
        for _ in 0..count {
            let username = r.field().ok_or(bad.clone())?;
            let username = core::str::from_utf8(username)
                .map_err(|_| bad.clone())?
                .to_owned();
            let account = r.field().ok_or(bad.clone())?;
            if account.len() != PUBLIC_IDENTITY_LEN {
                return Err(bad);
            }
            let account = PublicIdentity::from_bytes(account).map_err(|_| bad.clone())?;
            let verified = match r.u8().ok_or(bad.clone())? {
                0 => false,
                1 => true,
                _ => return Err(bad),
            };
            contacts.push(LinkedContact {
                username,
                account,
                verified,
            });
        }
        if !r.is_empty() {
            return Err(bad);
        }
        Ok(LinkFinish {
            signed_device_list,
            contacts,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    fn invite() -> (IdentityKeyPair, LinkInvite) {
        let account = IdentityKeyPair::generate(&mut rng(1));
        let invite = LinkInvite {
            username: "alice".into(),
            account: account.public().clone(),
            device_id: 2,
        };
        (account, invite)
    }

    #[test]
    fn both_sides_agree_and_the_device_is_verified() {
        let (_, invite) = invite();
        let offer = LinkOffer::generate(&mut rng(2));
        let code = LinkCode::parse(&offer.code().to_text()).unwrap();
        assert_eq!(&code, offer.code());
        let (hello, primary) = accept_offer(&mut rng(3), &code, offer.offer(), &invite).unwrap();
        let device = offer.open_hello(&hello).unwrap();
        assert_eq!(device.invite(), &invite);
        assert_eq!(device.transcript_hash(), primary.transcript_hash());
        let key = IdentityKeyPair::generate(&mut rng(4));
        let (reply, entry) = device.seal_reply(&key, 77).unwrap();
        assert_eq!(primary.open_reply(&reply).unwrap(), entry);
        let finish = primary.seal_finish(b"list and contacts").unwrap();
        assert_eq!(
            &device.open_finish(&finish).unwrap()[..],
            b"list and contacts"
        );
    }

    #[test]
    fn finish_round_trips_and_refuses_trailing_bytes() {
        let (account, _) = invite();
        let finish = LinkFinish {
            signed_device_list: vec![1, 2, 3],
            contacts: vec![LinkedContact {
                username: "bob".into(),
                account: account.public().clone(),
                verified: true,
            }],
        };
        let bytes = finish.encode();
        assert_eq!(LinkFinish::decode(&bytes).unwrap(), finish);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(LinkFinish::decode(&longer).is_err());
        let mut bad_flag = bytes.to_vec();
        *bad_flag.last_mut().unwrap() = 2;
        assert!(LinkFinish::decode(&bad_flag).is_err());
    }

    #[test]
    fn a_substituted_offer_is_refused() {
        let (_, invite) = invite();
        let real = LinkOffer::generate(&mut rng(2));
        let fake = LinkOffer::generate(&mut rng(5));
        assert_eq!(
            accept_offer(&mut rng(3), real.code(), fake.offer(), &invite).err(),
            Some(LinkError::OfferMismatch)
        );
    }

    #[test]
    fn a_hello_without_the_code_does_not_open() {
        let (_, invite) = invite();
        let offer = LinkOffer::generate(&mut rng(2));
        // Same offer (the server has it), but a guessed secret.
        let mut guessed = offer.code().clone();
        guessed.secret[0] ^= 1;
        let (hello, _) = accept_offer(&mut rng(3), &guessed, offer.offer(), &invite).unwrap();
        assert_eq!(
            offer.open_hello(&hello).err(),
            Some(LinkError::Authentication)
        );
    }

    #[test]
    fn tampered_messages_are_refused() {
        let (_, invite) = invite();
        let offer = LinkOffer::generate(&mut rng(2));
        let (mut hello, primary) =
            accept_offer(&mut rng(3), offer.code(), offer.offer(), &invite).unwrap();
        let last = hello.len() - 1;
        hello[last] ^= 1;
        assert!(offer.open_hello(&hello).is_err());
        hello[last] ^= 1;
        hello[40] ^= 1; // inside the KEM ciphertext: implicit rejection, then AEAD fails
        assert!(offer.open_hello(&hello).is_err());
        hello[40] ^= 1;
        let device = offer.open_hello(&hello).unwrap();
        let key = IdentityKeyPair::generate(&mut rng(4));
        let (mut reply, _) = device.seal_reply(&key, 77).unwrap();
        reply[0] ^= 1;
        assert_eq!(
            primary.open_reply(&reply).err(),
            Some(LinkError::Authentication)
        );
        let mut finish = primary.seal_finish(b"x").unwrap();
        finish[0] ^= 1;
        assert_eq!(
            device.open_finish(&finish).err(),
            Some(LinkError::Authentication)
        );
    }

    #[test]
    fn codes_parse_loosely_and_refuse_garbage() {
        let offer = LinkOffer::generate(&mut rng(2));
        let text = offer.code().to_text();
        assert_eq!(text.len(), 52 + 12);
        let loose = text.to_lowercase().replace('-', " ");
        assert_eq!(&LinkCode::parse(&loose).unwrap(), offer.code());
        assert!(matches!(
            LinkCode::parse("hello"),
            Err(LinkError::BadCode(_))
        ));
        assert!(matches!(
            LinkCode::parse(&text[..20]),
            Err(LinkError::BadCode(_))
        ));
        assert!(matches!(
            LinkCode::parse("0000-1111"),
            Err(LinkError::BadCode(_))
        ));
    }
}
