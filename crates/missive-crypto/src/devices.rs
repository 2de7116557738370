//! Signed device lists (protocol v2; docs/PROTOCOL.md, "Device lists (protocol v2)").
//!
//! An account's Ed25519 identity key becomes its *account key*: it signs only
//! device lists. Every device has its own [`IdentityKeyPair`] and signs a *link
//! statement* consenting to be listed under the account (the WhatsApp model:
//! the account signs the device, the device signs the account). A
//! [`SignedDeviceList`] is the list transcript followed by the account's
//! signature.
//!
//! ```text
//! link = field("Missive device link v2") || field(username) || field(account key, 32)
//!        || u32(device_id) || field(device key, 32) || u32(registration_id)
//! list = field("Missive device list v2") || field(username) || field(account key, 32)
//!        || u64(version) || u64(timestamp_ms) || u32(count)
//!        || count × (u32(device_id) || field(device key, 32) || u32(registration_id)
//!                    || field(link_signature, 64))          ascending device_id
//! signed list = list || Sign(account key, list)
//! list hash   = SHA256(field("Missive device list hash v2") || list)
//! ```
//!
//! The server stores and serves signed lists; clients do not use them yet.

use core::fmt;

use crate::consts::MAX_DEVICES;
use crate::encoding::{Reader, put_field, put_u32, put_u64};
use crate::error::{DecodeError, DeviceListError};
use crate::identity::{IdentityKeyPair, PUBLIC_IDENTITY_LEN, PublicIdentity};
use crate::primitives;

const LINK_LABEL: &[u8] = b"Missive device link v2";
const LIST_LABEL: &[u8] = b"Missive device list v2";
const LIST_HASH_LABEL: &[u8] = b"Missive device list hash v2";
/// Length of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// The statement a device signs to consent to being listed under an account:
/// `field("Missive device link v2") || field(username) || field(account, 32)
/// || u32(device_id) || field(device, 32) || u32(registration_id)`.
pub fn link_statement(
    username: &str,
    account: &PublicIdentity,
    device_id: u32,
    device: &PublicIdentity,
    registration_id: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * 8 + LINK_LABEL.len() + username.len() + 2 * 32 + 8 + 8);
    put_field(&mut out, LINK_LABEL);
    put_field(&mut out, username.as_bytes());
    put_field(&mut out, &account.to_array());
    put_u32(&mut out, device_id);
    put_field(&mut out, &device.to_array());
    put_u32(&mut out, registration_id);
    out
}

/// One device of an account: its id, identity key, registration id and its
/// signature over [`link_statement`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceEntry {
    /// The device id, unique within the account.
    pub device_id: u32,
    /// The device's own identity key (never the account key).
    pub identity: PublicIdentity,
    /// The device's registration id.
    pub registration_id: u32,
    /// Ed25519 signature by `identity` over [`link_statement`].
    pub link_signature: [u8; 64],
}

impl DeviceEntry {
    /// The entry for `device`, with its link signature over
    /// `(username, account, device_id, device's key, registration_id)`.
    pub fn link(
        device: &IdentityKeyPair,
        username: &str,
        account: &PublicIdentity,
        device_id: u32,
        registration_id: u32,
    ) -> DeviceEntry {
        let statement = link_statement(
            username,
            account,
            device_id,
            device.public(),
            registration_id,
        );
        DeviceEntry {
            device_id,
            identity: device.public().clone(),
            registration_id,
            link_signature: device.sign(&statement),
        }
    }

    /// The link statement this entry's signature must cover.
    pub fn link_statement(&self, username: &str, account: &PublicIdentity) -> Vec<u8> {
        link_statement(
            username,
            account,
            self.device_id,
            &self.identity,
            self.registration_id,
        )
    }

    /// Checks the link signature under the device's own identity key.
    pub fn verify_link(
        &self,
        username: &str,
        account: &PublicIdentity,
    ) -> Result<(), DeviceListError> {
        self.identity
            .verify(
                &self.link_statement(username, account),
                &self.link_signature,
            )
            .map_err(|_| DeviceListError::BadLinkSignature {
                device_id: self.device_id,
            })
    }

    fn same_device(&self, other: &DeviceEntry) -> bool {
        self.device_id == other.device_id && self.identity == other.identity
    }
}

/// An account's devices at one version. Only public data.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceList {
    /// The account's username.
    pub username: String,
    /// Starts at 1; each published change increases it.
    pub version: u64,
    /// When the list was made, caller-supplied, in ms since the Unix epoch.
    /// Informative only: nothing here compares it to a clock.
    pub timestamp_ms: u64,
    /// The devices, in strictly ascending `device_id`.
    pub devices: Vec<DeviceEntry>,
}

impl DeviceList {
    /// Checks every invariant [`SignedDeviceList::verify`] checks after the
    /// account signature and username, then signs the list with the account key.
    pub fn sign(&self, account: &IdentityKeyPair) -> Result<SignedDeviceList, DeviceListError> {
        self.check_contents(account.public())?;
        let transcript = list_transcript(self, account.public());
        let signature = account.sign(&transcript);
        Ok(SignedDeviceList {
            list: self.clone(),
            account: account.public().clone(),
            transcript,
            signature,
        })
    }

    /// Ids of the devices in `self` that `older` does not have. A device whose
    /// id is in both but whose identity key changed counts as added (and as
    /// removed, see [`Self::removed_since`]). Ascending.
    pub fn added_since(&self, older: &DeviceList) -> Vec<u32> {
        missing_from(&self.devices, &older.devices)
    }

    /// Ids of the devices in `older` that `self` no longer has, including
    /// those whose identity key changed. Ascending.
    pub fn removed_since(&self, older: &DeviceList) -> Vec<u32> {
        missing_from(&older.devices, &self.devices)
    }

    /// The list rules, in the order docs/PROTOCOL.md gives them (rules 4 to 9).
    fn check_contents(&self, account: &PublicIdentity) -> Result<(), DeviceListError> {
        let count = self.devices.len();
        if count == 0 {
            return Err(DeviceListError::Empty);
        }
        if count > MAX_DEVICES {
            return Err(DeviceListError::TooManyDevices {
                count,
                max: MAX_DEVICES,
            });
        }
        if self.version == 0 {
            return Err(DeviceListError::VersionZero);
        }
        for pair in self.devices.windows(2) {
            if let [previous, device] = pair {
                if device.device_id == previous.device_id {
                    return Err(DeviceListError::DuplicateDeviceId {
                        device_id: device.device_id,
                    });
                }
                if device.device_id < previous.device_id {
                    return Err(DeviceListError::DevicesOutOfOrder {
                        device_id: device.device_id,
                    });
                }
            }
        }
        if let Some(device) = self.devices.iter().find(|d| d.identity == *account) {
            return Err(DeviceListError::DeviceIsAccountKey {
                device_id: device.device_id,
            });
        }
        for (i, device) in self.devices.iter().enumerate() {
            if let Some(other) = self.devices[..i]
                .iter()
                .find(|o| o.identity == device.identity)
            {
                return Err(DeviceListError::DuplicateDeviceKey {
                    device_id: device.device_id,
                    other_device_id: other.device_id,
                });
            }
        }
        for device in &self.devices {
            device.verify_link(&self.username, account)?;
        }
        Ok(())
    }
}

fn missing_from(devices: &[DeviceEntry], other: &[DeviceEntry]) -> Vec<u32> {
    let mut ids: Vec<u32> = devices
        .iter()
        .filter(|d| !other.iter().any(|o| o.same_device(d)))
        .map(|d| d.device_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The list transcript. Only called on lists of at most [`MAX_DEVICES`] devices.
fn list_transcript(list: &DeviceList, account: &PublicIdentity) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        8 + LIST_LABEL.len()
            + 8
            + list.username.len()
            + 8
            + 32
            + 8
            + 8
            + 4
            + list.devices.len() * 120,
    );
    put_field(&mut out, LIST_LABEL);
    put_field(&mut out, list.username.as_bytes());
    put_field(&mut out, &account.to_array());
    put_u64(&mut out, list.version);
    put_u64(&mut out, list.timestamp_ms);
    // Checked against MAX_DEVICES before any caller gets here.
    put_u32(
        &mut out,
        u32::try_from(list.devices.len()).unwrap_or(u32::MAX),
    );
    for device in &list.devices {
        put_u32(&mut out, device.device_id);
        put_field(&mut out, &device.identity.to_array());
        put_u32(&mut out, device.registration_id);
        put_field(&mut out, &device.link_signature);
    }
    out
}

/// Whether an offered list is new to a client, from [`check_change`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ListChange {
    /// No list was seen before for this account.
    First,
    /// The same version with the same hash as the list seen before.
    Unchanged,
    /// A higher version than the list seen before.
    Newer,
}

/// Compares an offered list's `(version, list hash)` with the one a client saw
/// before (`None` when it saw none). A lower version is a
/// [`DeviceListError::Rollback`]; the same version with another hash is
/// [`DeviceListError::Equivocation`]. Only meaningful for a verified list; see
/// [`SignedDeviceList::verify_change`].
pub fn check_change(
    seen: Option<(u64, [u8; 32])>,
    offered: (u64, [u8; 32]),
) -> Result<ListChange, DeviceListError> {
    let Some((seen_version, seen_hash)) = seen else {
        return Ok(ListChange::First);
    };
    let (version, hash) = offered;
    if version < seen_version {
        Err(DeviceListError::Rollback {
            seen: seen_version,
            offered: version,
        })
    } else if version > seen_version {
        Ok(ListChange::Newer)
    } else if hash == seen_hash {
        Ok(ListChange::Unchanged)
    } else {
        Err(DeviceListError::Equivocation { version })
    }
}

/// A device list with the account key's signature: `list transcript ||
/// signature (64)`. Parsing checks only the format; [`Self::verify`] against the
/// pinned account key before using it.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedDeviceList {
    list: DeviceList,
    account: PublicIdentity,
    /// The list transcript, exactly as signed and parsed.
    transcript: Vec<u8>,
    signature: [u8; 64],
}

impl SignedDeviceList {
    /// The encoding: `list transcript || signature (64)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.transcript.len() + SIGNATURE_LEN);
        out.extend_from_slice(&self.transcript);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses [`Self::to_bytes`] strictly: the label, every field length, every
    /// key (canonical, not of small order) and the absence of trailing bytes.
    /// A count above [`MAX_DEVICES`] is refused before anything is allocated.
    /// Checks no signature and no list rule: call [`Self::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeviceListError> {
        let mut r = Reader::new(bytes);
        let label = r
            .field()
            .ok_or(DecodeError::Truncated("device list label"))?;
        if label != LIST_LABEL {
            return Err(DecodeError::Malformed("not a Missive device list v2").into());
        }
        let username = r.field().ok_or(DecodeError::Truncated("username"))?;
        let username = core::str::from_utf8(username)
            .map_err(|_| DecodeError::Malformed("username is not UTF-8"))?
            .to_owned();
        let account = read_key(&mut r, "account key")?;
        let version = r.u64().ok_or(DecodeError::Truncated("version"))?;
        let timestamp_ms = r.u64().ok_or(DecodeError::Truncated("timestamp"))?;
        let count = r.u32().ok_or(DecodeError::Truncated("device count"))?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_DEVICES {
            return Err(DeviceListError::TooManyDevices {
                count,
                max: MAX_DEVICES,
            });
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            let device_id = r.u32().ok_or(DecodeError::Truncated("device id"))?;
            let identity = read_key(&mut r, "device key")?;
            let registration_id = r.u32().ok_or(DecodeError::Truncated("registration id"))?;
            let link_signature = match r.field() {
                None => return Err(DecodeError::Truncated("link signature").into()),
                Some(s) => <[u8; SIGNATURE_LEN]>::try_from(s)
                    .map_err(|_| DecodeError::Malformed("link signature is not 64 bytes"))?,
            };
            devices.push(DeviceEntry {
                device_id,
                identity,
                registration_id,
                link_signature,
            });
        }
        let transcript_len = bytes.len() - r.remaining();
        let signature = r
            .array::<SIGNATURE_LEN>()
            .ok_or(DecodeError::Truncated("account signature"))?;
        if !r.is_empty() {
            return Err(DecodeError::Malformed("trailing bytes after the signature").into());
        }
        Ok(Self {
            list: DeviceList {
                username,
                version,
                timestamp_ms,
                devices,
            },
            account,
            transcript: bytes[..transcript_len].to_vec(),
            signature,
        })
    }

    /// Verifies the list against the caller's **pinned** account key and the
    /// username it was fetched for, in this order: the account key in the list
    /// is `account`; the signature verifies; the username is `username`; then
    /// the list rules (1 to [`MAX_DEVICES`] devices, version at least 1, ids
    /// strictly ascending, no device with the account key, no two devices with
    /// one key, every link signature verifies). The first failure is returned.
    pub fn verify(
        &self,
        account: &PublicIdentity,
        username: &str,
    ) -> Result<&DeviceList, DeviceListError> {
        if self.account != *account {
            return Err(DeviceListError::AccountMismatch);
        }
        account
            .verify(&self.transcript, &self.signature)
            .map_err(|_| DeviceListError::BadSignature)?;
        if self.list.username != username {
            return Err(DeviceListError::UsernameMismatch {
                expected: username.to_owned(),
                actual: self.list.username.clone(),
            });
        }
        self.list.check_contents(account)?;
        Ok(&self.list)
    }

    /// [`Self::verify`], then [`check_change`] against what the client saw
    /// before. Store `(version, list_hash)` of an accepted list as the new `seen`.
    pub fn verify_change(
        &self,
        account: &PublicIdentity,
        username: &str,
        seen: Option<(u64, [u8; 32])>,
    ) -> Result<(&DeviceList, ListChange), DeviceListError> {
        let list = self.verify(account, username)?;
        let change = check_change(seen, (list.version, self.list_hash()))?;
        Ok((list, change))
    }

    /// `SHA256(field("Missive device list hash v2") || list transcript)`: what
    /// messages carry with the version, and a key-transparency leaf
    /// `(username, version, hash)`. The signature is not hashed.
    pub fn list_hash(&self) -> [u8; 32] {
        let mut input = Vec::with_capacity(8 + LIST_HASH_LABEL.len() + self.transcript.len());
        put_field(&mut input, LIST_HASH_LABEL);
        input.extend_from_slice(&self.transcript);
        primitives::sha256(&input)
    }

    /// The list as parsed, **not verified**: for routing by username or
    /// version only. Use [`Self::verify`] to read it.
    pub fn unverified_list(&self) -> &DeviceList {
        &self.list
    }

    /// The username the list names (not verified).
    pub fn username(&self) -> &str {
        &self.list.username
    }

    /// The version the list names (not verified).
    pub fn version(&self) -> u64 {
        self.list.version
    }

    /// The account key the list names (not verified: compare with the pinned key).
    pub fn account(&self) -> &PublicIdentity {
        &self.account
    }

    /// The list transcript the account key signed.
    pub fn transcript(&self) -> &[u8] {
        &self.transcript
    }

    /// The account key's signature over [`Self::transcript`].
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

impl fmt::Debug for SignedDeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            list,
            account,
            transcript: _,
            signature: _,
        } = self;
        f.debug_struct("SignedDeviceList")
            .field("account", &account.fingerprint())
            .field("list", list)
            .finish_non_exhaustive()
    }
}

/// Reads `field(key, 32)` and parses it as a public identity.
fn read_key(r: &mut Reader<'_>, what: &'static str) -> Result<PublicIdentity, DecodeError> {
    let bytes = r.field().ok_or(DecodeError::Truncated(what))?;
    if bytes.len() != PUBLIC_IDENTITY_LEN {
        return Err(DecodeError::Malformed("identity key field is not 32 bytes"));
    }
    Ok(PublicIdentity::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn identity(seed: u8) -> IdentityKeyPair {
        IdentityKeyPair::generate(&mut ChaCha20Rng::from_seed([seed; 32]))
    }

    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    #[test]
    fn link_layout_is_pinned() {
        let (account, device) = (identity(1), identity(2));
        let t = link_statement("al", account.public(), 5, device.public(), 0x0102_0304);
        let mut expected = Vec::new();
        expected.extend_from_slice(&22u64.to_be_bytes());
        expected.extend_from_slice(b"Missive device link v2");
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(b"al");
        expected.extend_from_slice(&32u64.to_be_bytes());
        expected.extend_from_slice(&account.public().to_bytes());
        expected.extend_from_slice(&[0, 0, 0, 5]);
        expected.extend_from_slice(&32u64.to_be_bytes());
        expected.extend_from_slice(&device.public().to_bytes());
        expected.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(t, expected);
        assert_eq!(t.len(), 30 + 10 + 40 + 4 + 40 + 4);
    }

    #[test]
    fn list_layout_is_pinned() {
        let (account, d1, d2) = (identity(1), identity(2), identity(3));
        let list = DeviceList {
            username: "al".into(),
            version: 0x0102_0304_0506_0708,
            timestamp_ms: 9,
            devices: vec![
                DeviceEntry::link(&d1, "al", account.public(), 1, 10),
                DeviceEntry::link(&d2, "al", account.public(), 7, 70),
            ],
        };
        let signed = list.sign(&account).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&22u64.to_be_bytes());
        expected.extend_from_slice(b"Missive device list v2");
        field(&mut expected, b"al");
        field(&mut expected, &account.public().to_bytes());
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
        expected.extend_from_slice(&[0, 0, 0, 2]);
        for device in &list.devices {
            expected.extend_from_slice(&device.device_id.to_be_bytes());
            field(&mut expected, &device.identity.to_bytes());
            expected.extend_from_slice(&device.registration_id.to_be_bytes());
            field(&mut expected, &device.link_signature);
        }
        assert_eq!(signed.transcript(), expected);
        assert_eq!(
            expected.len(),
            30 + 10 + 40 + 8 + 8 + 4 + 2 * (4 + 40 + 4 + 72)
        );

        let mut encoding = expected.clone();
        encoding.extend_from_slice(&account.sign(&expected));
        assert_eq!(signed.to_bytes(), encoding);

        let mut hash_input = Vec::new();
        field(&mut hash_input, b"Missive device list hash v2");
        hash_input.extend_from_slice(&expected);
        assert_eq!(signed.list_hash(), primitives::sha256(&hash_input));
    }

    #[test]
    fn labels_are_distinct() {
        let labels = [LINK_LABEL, LIST_LABEL, LIST_HASH_LABEL];
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn debug_names_the_account() {
        let (account, d1) = (identity(1), identity(2));
        let list = DeviceList {
            username: "al".into(),
            version: 1,
            timestamp_ms: 0,
            devices: vec![DeviceEntry::link(&d1, "al", account.public(), 1, 1)],
        };
        let debug = format!("{:?}", list.sign(&account).unwrap());
        assert!(debug.contains(&account.public().fingerprint().to_string()));
        assert!(debug.contains("\"al\""));
    }
}
