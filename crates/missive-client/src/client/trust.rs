//! Trust on first use and its repair: pinned identities, changed identities
//! held apart until the user accepts or rejects them, safety numbers.

use missive_crypto::{DeviceList, ListChange, PublicIdentity, SignedDeviceList};
use missive_proto::v1::{self, key_service_client::KeyServiceClient};
use tonic::Code;

use crate::error::{ClientError, Result};
use crate::store::{SessionRow, Slot};

use super::{Client, RecvEvent, normalize_username, rfc3339};

/// A safety number with what the user needs to compare it.
#[derive(Clone, Debug)]
pub struct SafetyNumberView {
    /// 12 groups of 5 digits.
    pub groups: Vec<String>,
    /// QR payload.
    pub qr_payload: Vec<u8>,
    /// Whether the user marked the pinned identity verified.
    pub verified: bool,
    /// Whether this is for a changed identity not yet trusted.
    pub for_changed_identity: bool,
}

/// Verification state of a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Pinned on first use, not compared.
    Unverified,
    /// Safety number compared and confirmed.
    Verified,
    /// The identity changed and was not yet accepted.
    Changed,
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verification::Unverified => "unverified",
            Verification::Verified => "verified",
            Verification::Changed => "IDENTITY CHANGED",
        })
    }
}

impl Client {
    // ---- trust --------------------------------------------------------

    /// Pins a first-seen identity, or refuses a changed one (recording it).
    pub(super) fn check_identity(
        &mut self,
        username: &str,
        identity: &PublicIdentity,
    ) -> Result<()> {
        let changed = self.store.write(|db| match db.contact(username)? {
            None => db.pin_contact(username, identity).map(|()| false),
            Some(c) if &c.identity == identity && c.changed_identity.is_none() => Ok(false),
            Some(c) if &c.identity == identity => Ok(true),
            Some(_) => {
                db.mark_identity_changed(username, identity)?;
                Ok(true)
            }
        })?;
        if changed {
            return Err(ClientError::IdentityChanged {
                username: username.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks the signed device list the server sent for `username`: it must
    /// verify under the account key it names, that key must be the pinned
    /// one (pinned now on first contact), and it must not be older than, or
    /// differ at the same version from, the newest list seen. Keeps it and
    /// returns it with the devices it adds to the one seen before (empty on
    /// first contact). A changed account key is kept apart with its list and
    /// reported as [`ClientError::IdentityChanged`].
    pub(super) fn verified_device_list(
        &mut self,
        username: &str,
        bytes: &[u8],
    ) -> Result<(SignedDeviceList, Vec<u32>)> {
        let refused = |reason: String| ClientError::DeviceListRefused {
            username: username.to_owned(),
            reason,
        };
        if username == self.username {
            // Our own devices: checked against our own account key and list.
            return Ok((self.accept_own_list(bytes)?, Vec::new()));
        }
        if bytes.is_empty() {
            return Err(refused("the server sent none".into()));
        }
        let list = SignedDeviceList::from_bytes(bytes).map_err(|e| refused(e.to_string()))?;
        list.verify(list.account(), username)
            .map_err(|e| refused(e.to_string()))?;
        let pinned = self.check_identity(username, list.account());
        let contact = self.store.contact(username)?;
        let seen = contact.as_ref().and_then(|c| {
            if &c.identity == list.account() {
                c.device_list.as_ref()
            } else {
                c.changed_device_list.as_ref()
            }
        });
        let (_, change) = list
            .verify_change(
                list.account(),
                username,
                seen.map(|l| (l.version(), l.list_hash())),
            )
            .map_err(|e| refused(e.to_string()))?;
        let added = match (change, seen) {
            (ListChange::Newer, Some(old)) => {
                list.unverified_list().added_since(old.unverified_list())
            }
            _ => Vec::new(),
        };
        if change != ListChange::Unchanged {
            self.store.write(|db| db.set_device_list(username, &list))?;
        }
        pinned?;
        Ok((list, added))
    }

    /// Fetches and checks `username`'s signed device list (as
    /// [`Self::verified_device_list`]).
    pub(super) async fn fetch_device_list(
        &mut self,
        username: &str,
    ) -> Result<(SignedDeviceList, Vec<u32>)> {
        let channel = self.channel().await?;
        let req = self
            .authed(
                v1::GetDeviceListRequest {
                    username: username.to_owned(),
                    with_linked_days: false,
                },
                true,
            )
            .await?;
        let bytes = match KeyServiceClient::new(channel).get_device_list(req).await {
            Ok(r) => r.into_inner().signed_device_list,
            Err(s) if s.code() == Code::NotFound => {
                return Err(ClientError::UnknownUser(username.to_owned()));
            }
            Err(s) => return Err(self.authed_err(&s)),
        };
        self.verified_device_list(username, &bytes)
    }

    /// Before a prekey message from a device whose key no list we hold
    /// names: fetch the sender's list, so the store transaction can decide.
    /// What it learns is reported; a failure only means the message is
    /// refused by name afterwards.
    pub(super) async fn learn_sender_device(&mut self, env: &v1::Envelope) -> Vec<RecvEvent> {
        if env.r#type != v1::EnvelopeType::PrekeyMessage as i32 {
            return Vec::new();
        }
        let Ok(msg) = missive_crypto::PrekeyMessage::parse(&env.content) else {
            return Vec::new();
        };
        let Ok(sender) = normalize_username(&env.sender) else {
            return Vec::new();
        };
        if sender != env.sender {
            return Vec::new();
        }
        if sender == self.username {
            let known = self.own_device_list().ok().flatten().is_some_and(|l| {
                crate::store::lists(Some(&l), env.sender_device, msg.sender_identity())
            });
            if !known && let Err(e) = self.fetch_own_device_list().await {
                return vec![RecvEvent::Warning(format!(
                    "could not check your own devices: {}",
                    e.brief()
                ))];
            }
            return Vec::new();
        }
        let known = self.store.contact(&sender).ok().flatten().is_some_and(|c| {
            c.lists_device(env.sender_device, msg.sender_identity())
                || c.changed_lists_device(env.sender_device, msg.sender_identity())
        });
        if known {
            return Vec::new();
        }
        match self.fetch_device_list(&sender).await {
            Ok((list, added)) => new_device_notices(&sender, list.unverified_list(), &added)
                .into_iter()
                .map(RecvEvent::Warning)
                .collect(),
            Err(ClientError::IdentityChanged { username }) => {
                vec![RecvEvent::IdentityChanged { username }]
            }
            Err(e) => vec![RecvEvent::Warning(format!(
                "could not check {sender}'s devices: {}",
                e.brief()
            ))],
        }
    }

    /// Compares the device lists named inside received messages with the
    /// newest seen from the server: an older view is refetched; a list the
    /// server still serves older, or different at the same version, is a
    /// hidden or frozen list, said as a warning.
    pub(super) async fn check_list_hints(&mut self) -> Vec<RecvEvent> {
        let mut events = Vec::new();
        for (sender, version, hash) in std::mem::take(&mut self.list_hints) {
            let seen = |c: Option<crate::store::Contact>| {
                c.and_then(|c| c.device_list)
                    .map(|l| (l.version(), l.list_hash()))
            };
            let Ok(mut view) = self.store.contact(&sender).map(seen) else {
                continue;
            };
            if view.is_none_or(|(v, _)| v < version) {
                match self.fetch_device_list(&sender).await {
                    Ok((list, added)) => {
                        events.extend(
                            new_device_notices(&sender, list.unverified_list(), &added)
                                .into_iter()
                                .map(RecvEvent::Warning),
                        );
                        view = Some((list.version(), list.list_hash()));
                    }
                    Err(e) => {
                        events.push(RecvEvent::Warning(format!(
                            "could not check {sender}'s devices: {}",
                            e.brief()
                        )));
                        continue;
                    }
                }
            }
            match view {
                Some((v, _)) if v < version => events.push(RecvEvent::Warning(format!(
                    "{sender}'s message names their device list version {version}, but the server serves version {v}: the server may be hiding one of {sender}'s devices from you"
                ))),
                Some((v, h)) if v == version && h != hash => events.push(RecvEvent::Warning(format!(
                    "{sender}'s device list version {version} differs from the one their message names: the server may be showing you a different list than {sender} published"
                ))),
                _ => {}
            }
        }
        events
    }

    /// Verification state of `username`.
    pub fn verification(&self, username: &str) -> Result<Option<Verification>> {
        Ok(self.store.contact(username)?.map(|c| verification_of(&c)))
    }

    /// All contacts with their verification state and pinned fingerprint.
    pub fn contacts(&self) -> Result<Vec<(String, Verification, String)>> {
        Ok(self
            .store
            .contacts()?
            .into_iter()
            .map(|c| {
                let v = verification_of(&c);
                (c.username, v, c.identity.fingerprint().to_string())
            })
            .collect())
    }

    pub(super) fn known_contact(&self, username: &str) -> Result<(String, crate::store::Contact)> {
        let username = normalize_username(username)?;
        let c = self
            .store
            .contact(&username)?
            .ok_or_else(|| ClientError::UnknownContact(username.clone()))?;
        Ok((username, c))
    }

    pub(super) fn safety_number_with(
        &self,
        username: &str,
        theirs: &PublicIdentity,
    ) -> missive_crypto::SafetyNumber {
        missive_crypto::safety_number(&self.username, &self.account, username, theirs)
    }

    /// The safety number with `username` (fetching and pinning their
    /// identity first if we never talked).
    pub async fn safety_number(&mut self, username: &str) -> Result<SafetyNumberView> {
        let username = normalize_username(username)?;
        if self.store.contact(&username)?.is_none() {
            let rows = self.fetch_sessions(&username, 0).await?;
            self.store.write(|db| {
                let existing = db.sessions(&username, Slot::Current)?;
                let fresh: Vec<SessionRow> = rows
                    .into_iter()
                    .filter(|r| existing.iter().all(|e| e.device_id != r.device_id))
                    .collect();
                db.save_sessions(&username, &fresh, &[])
            })?;
        }
        let (username, c) = self.known_contact(&username)?;
        let (theirs, for_changed) = match &c.changed_identity {
            Some(changed) => (changed, true),
            None => (&c.identity, false),
        };
        let sn = self.safety_number_with(&username, theirs);
        Ok(SafetyNumberView {
            groups: sn.groups(),
            qr_payload: sn.qr_payload(),
            verified: c.verified && !for_changed,
            for_changed_identity: for_changed,
        })
    }

    /// Checks a safety number typed by the user against the one for `theirs`.
    pub(super) fn check_typed_number(
        &self,
        username: &str,
        theirs: &PublicIdentity,
        typed: &str,
    ) -> Result<()> {
        let digits: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
        let expected: String = self.safety_number_with(username, theirs).groups().concat();
        if digits.len() != expected.len() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ClientError::SafetyNumberMismatch {
                username: username.to_owned(),
                detail: format!("a safety number has {} digits", expected.len()),
            });
        }
        if !missive_crypto::primitives::ct_eq(digits.as_bytes(), expected.as_bytes()) {
            return Err(ClientError::SafetyNumberMismatch {
                username: username.to_owned(),
                detail: "the key may have changed since you compared".to_owned(),
            });
        }
        Ok(())
    }

    /// Marks `username`'s pinned identity as verified, if `typed` is the
    /// safety number of exactly that identity.
    pub fn verify(&mut self, username: &str, typed: &str) -> Result<()> {
        let (username, c) = self.known_contact(username)?;
        if c.changed_identity.is_some() {
            return Err(ClientError::SafetyNumberMismatch {
                detail: format!(
                    "{username}'s identity key changed since it was pinned; accept the new key with `missive trust {username} SAFETY_NUMBER` or discard it with `missive reject {username}` first"
                ),
                username,
            });
        }
        self.check_typed_number(&username, &c.identity, typed)?;
        let pinned = c.identity;
        self.store.write(|db| {
            // Compare-and-set: the identity must still be the one compared.
            match db.contact(&username)? {
                Some(now) if now.identity == pinned && now.changed_identity.is_none() => {
                    db.set_verified(&username, true)
                }
                _ => Err(ClientError::SafetyNumberMismatch {
                    username: username.clone(),
                    detail: "the key changed while verifying".to_owned(),
                }),
            }
        })
    }

    /// Accepts `username`'s changed identity if `typed` is its safety number.
    /// Returns false if nothing changed.
    pub fn trust(&mut self, username: &str, typed: &str) -> Result<bool> {
        let (username, c) = self.known_contact(username)?;
        let Some(new) = c.changed_identity else {
            return Ok(false);
        };
        self.check_typed_number(&username, &new, typed)?;
        self.store.write(|db| match db.contact(&username)? {
            Some(now) if now.changed_identity.as_ref() == Some(&new) => {
                db.accept_changed_identity(&username, &new).map(|()| true)
            }
            _ => Err(ClientError::SafetyNumberMismatch {
                username: username.clone(),
                detail: "the key changed again while trusting it".to_owned(),
            }),
        })
    }

    /// Discards `username`'s changed identity and its quarantined messages.
    /// Returns false if there was none.
    pub fn reject(&mut self, username: &str) -> Result<bool> {
        let (username, _) = self.known_contact(username)?;
        self.store.write(|db| db.reject_changed_identity(&username))
    }
}

pub(super) fn verification_of(c: &crate::store::Contact) -> Verification {
    if c.changed_identity.is_some() {
        Verification::Changed
    } else if c.verified {
        Verification::Verified
    } else {
        Verification::Unverified
    }
}

/// "bob linked a new device on …" for each device a newer list added.
pub(super) fn new_device_notices(username: &str, list: &DeviceList, added: &[u32]) -> Vec<String> {
    added
        .iter()
        .map(|id| {
            format!(
                "{username} linked a new device (device {id}, list version {} of {}); their account key vouches for it, so their safety number is unchanged",
                list.version,
                rfc3339(list.timestamp_ms),
            )
        })
        .collect()
}
