//! Sessions: PQXDH establishment plus the Double Ratchet
//! (docs/PROTOCOL.md, "PQXDH", "Double Ratchet", "Session state").

use std::collections::VecDeque;

use core::fmt;

use prost::Message as _;
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::address::Address;
use crate::consts::{
    MAX_MESSAGE_GAP, MAX_PREVIOUS_RATCHET_KEYS, MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS,
};
use crate::error::{DecryptError, EncryptError, SessionError, StateError};
use crate::identity::{IdentityKeyPair, PUBLIC_IDENTITY_LEN, PublicIdentity};
use crate::pqxdh;
use crate::prekeys::{KemPrekeyPair, OneTimePrekeyPair, PrekeyBundle, SignedPrekeyPair};
use crate::primitives;
use crate::ratchet::{ChainKey, MessageKey, RatchetKeyPair, RootKey};
use crate::state::{
    AddressPickle, ReceivingChainPickle, SESSION_STATE_VERSION, SessionPickle, SkippedKeyPickle,
};
use crate::storage::{self, StorageKey};
use crate::wire::{
    MessageKind, NORMAL_HEADER_LEN, NormalMessage, OutgoingMessage, PrekeyMessage, message_kind,
};

const SESSION_SEAL_AD: &[u8] = b"Missive session state";

#[derive(Clone)]
struct ReceivingChain {
    ratchet_key: [u8; 32],
    chain: ChainKey,
    next: u32,
}

/// A stored key of a skipped message. In `Session::skipped`, times never
/// decrease from front to back and the keys without a time come last, so
/// expiry only ever looks at the front.
#[derive(Clone)]
struct SkippedKey {
    ratchet_key: [u8; 32],
    counter: u32,
    /// Caller time (ms since the Unix epoch) when stored; `None` until the
    /// session is next given the time (stored by `accept` or the clock-free
    /// `decrypt`, or loaded from state format 1).
    stored_at_ms: Option<u64>,
    key: MessageKey,
}

/// A Double Ratchet session with one peer device.
///
/// `Clone` lets callers decrypt on a copy; `Debug` prints fingerprints and
/// counters, never key material.
#[derive(Clone)]
pub struct Session {
    local: PublicIdentity,
    remote: PublicIdentity,
    local_address: Address,
    remote_address: Address,
    root: RootKey,
    our_ratchet: RatchetKeyPair,
    sending: Option<ChainKey>,
    sending_counter: u32,
    previous_counter: u32,
    remote_ratchet: Option<[u8; 32]>,
    receiving: Option<ReceivingChain>,
    previous_ratchet_keys: VecDeque<[u8; 32]>,
    skipped: VecDeque<SkippedKey>,
    pending_prekey: Option<Vec<u8>>,
    base_key: [u8; 32],
}

fn dh_session(
    secret: &StaticSecret,
    public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, SessionError> {
    primitives::x25519(secret, public).map_err(|_| SessionError::NonContributory)
}

fn dh_decrypt(
    secret: &StaticSecret,
    public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, DecryptError> {
    primitives::x25519(secret, public).map_err(|_| DecryptError::NonContributory)
}

/// One end of a session as the AD names it: its address and its device key.
#[derive(Clone, Copy)]
struct Party<'a> {
    address: &'a Address,
    identity: &'a PublicIdentity,
}

impl Party<'_> {
    fn put(&self, out: &mut Vec<u8>) {
        self.address.put(out);
        out.extend_from_slice(&self.identity.to_array());
    }
}

/// AEAD associated data: `field(sender username) || u32 sender device || sender key (32)
/// || field(recipient username) || u32 recipient device || recipient key (32)
/// || [PQXDH header (1166), prekey messages only] || ratchet header (41) || caller AD`.
fn aead_ad(
    sender: Party<'_>,
    recipient: Party<'_>,
    prekey_header: &[u8],
    header: &[u8; NORMAL_HEADER_LEN],
    associated_data: &[u8],
) -> Vec<u8> {
    let mut ad = Vec::with_capacity(
        2 * (PUBLIC_IDENTITY_LEN + 12)
            + sender.address.username.len()
            + recipient.address.username.len()
            + prekey_header.len()
            + NORMAL_HEADER_LEN
            + associated_data.len(),
    );
    sender.put(&mut ad);
    recipient.put(&mut ad);
    ad.extend_from_slice(prekey_header);
    ad.extend_from_slice(header);
    ad.extend_from_slice(associated_data);
    ad
}

/// Opens `message` under its message key; the AD binds sender, recipient, the
/// PQXDH header (prekey messages) and the ratchet header.
fn open_message(
    key: &MessageKey,
    sender: Party<'_>,
    recipient: Party<'_>,
    message: &NormalMessage,
    prekey_header: &[u8],
    associated_data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let cipher = key.expand();
    let ad = aead_ad(
        sender,
        recipient,
        prekey_header,
        &message.header,
        associated_data,
    );
    primitives::aead_open(&cipher.key, &cipher.nonce, &message.ciphertext, &ad)
        .map_err(|_| DecryptError::AuthenticationFailed)
}

impl Session {
    /// Initiator: verifies the bundle's signatures (by the device key
    /// `theirs.identity`, for `theirs.owner`) and runs PQXDH from our device
    /// key `ours` at `local` to device `theirs.owner.device_id` of
    /// `remote_username`. Until the first reply arrives, every
    /// [`Self::encrypt`] yields [`MessageKind::Prekey`].
    pub fn initiate<R: CryptoRng + RngCore>(
        rng: &mut R,
        ours: &IdentityKeyPair,
        local: &Address,
        remote_username: &str,
        theirs: &PrekeyBundle,
    ) -> Result<Session, SessionError> {
        let identity = &theirs.identity;
        identity.verify_signed_prekey(&theirs.signed_prekey, &theirs.owner)?;
        let kem_key = identity.verify_kem_prekey_key(&theirs.kem_prekey, &theirs.owner)?;
        let spk = theirs.signed_prekey.public_key;

        let base = StaticSecret::random_from_rng(&mut *rng);
        let base_key = primitives::x25519_public(&base);
        let dh1 = dh_session(ours.agreement_secret(), &spk)?;
        let dh2 = dh_session(&base, &identity.agreement_key())?;
        let dh3 = dh_session(&base, &spk)?;
        let dh4 = match &theirs.one_time_prekey {
            Some(otk) => Some(dh_session(&base, &otk.public_key)?),
            None => None,
        };
        let (kem_ciphertext, kem_secret) =
            primitives::kem_encapsulate(&kem_key, rng).map_err(|_| {
                SessionError::Key(crate::KeyError::InvalidPublicKey("ML-KEM-768 public key"))
            })?;
        let transcript = pqxdh::Transcript {
            initiator_identity: &ours.public().to_array(),
            responder_identity: &identity.to_array(),
            signed_prekey: &spk,
            kem_prekey: &theirs.kem_prekey.public_key,
            one_time_prekey: theirs.one_time_prekey.as_ref().map(|k| &k.public_key),
            base_key: &base_key,
            kem_ciphertext: &kem_ciphertext,
        };
        let sk = pqxdh::derive_secret(&dh1, &dh2, &dh3, dh4.as_deref(), &kem_secret, &transcript);

        // First sending ratchet step against the signed prekey (Double Ratchet §3.3)
        // with the base key as Alice's first ratchet key: X25519(DHs, DHr) is then
        // DH3, already computed, which saves a key generation and an agreement on
        // each side (docs/PROTOCOL.md, "Double Ratchet", initialisation).
        let (root, sending) = sk.step(&dh3);
        let our_ratchet = RatchetKeyPair::from_parts(Box::new(base), base_key);
        let header = PrekeyMessage::encode_header(
            ours.public(),
            &base_key,
            theirs.signed_prekey.id,
            theirs.kem_prekey.id,
            theirs.one_time_prekey.as_ref().map(|k| k.id),
            &kem_ciphertext,
        );
        Ok(Session {
            local: ours.public().clone(),
            remote: identity.clone(),
            local_address: local.clone(),
            remote_address: Address::new(remote_username, theirs.owner.device_id),
            root,
            our_ratchet,
            sending: Some(sending),
            sending_counter: 0,
            previous_counter: 0,
            remote_ratchet: Some(spk),
            receiving: None,
            previous_ratchet_keys: VecDeque::new(),
            skipped: VecDeque::new(),
            pending_prekey: Some(header),
            base_key,
        })
    }

    /// Responder: runs PQXDH with the private prekeys named in `message` and
    /// decrypts the message it carries. The caller looks the prekeys up by the
    /// ids in `message` (and deletes a one-time prekey once the session is
    /// stored). `ours` is our device key at `local`; `sender` is the address
    /// the server delivered the message from, which the message's AD must name.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        ours: &IdentityKeyPair,
        local: &Address,
        sender_address: &Address,
        signed_prekey: &SignedPrekeyPair,
        kem_prekey: &KemPrekeyPair,
        one_time_prekey: Option<&OneTimePrekeyPair>,
        message: &PrekeyMessage,
        associated_data: &[u8],
    ) -> Result<(Session, Zeroizing<Vec<u8>>), DecryptError> {
        if message.signed_prekey_id != signed_prekey.id() {
            return Err(DecryptError::PrekeyMismatch("signed prekey id differs"));
        }
        if message.kem_prekey_id != kem_prekey.id() {
            return Err(DecryptError::PrekeyMismatch("KEM prekey id differs"));
        }
        match (message.one_time_prekey_id, one_time_prekey) {
            (None, None) => {}
            (Some(id), Some(otk)) if id == otk.id() => {}
            (Some(_), Some(_)) => {
                return Err(DecryptError::PrekeyMismatch("one-time prekey id differs"));
            }
            (Some(_), None) => {
                return Err(DecryptError::PrekeyMismatch(
                    "the message used a one-time prekey that was not supplied",
                ));
            }
            (None, Some(_)) => {
                return Err(DecryptError::PrekeyMismatch(
                    "a one-time prekey was supplied but the message used none",
                ));
            }
        }
        let sender = &message.sender;
        let dh1 = dh_decrypt(signed_prekey.secret(), &sender.agreement_key())?;
        let dh2 = dh_decrypt(ours.agreement_secret(), &message.base_key)?;
        let dh3 = dh_decrypt(signed_prekey.secret(), &message.base_key)?;
        let dh4 = match one_time_prekey {
            Some(otk) => Some(dh_decrypt(otk.secret(), &message.base_key)?),
            None => None,
        };
        let kem_secret =
            primitives::kem_decapsulate(kem_prekey.decapsulation_key(), &message.kem_ciphertext)
                .map_err(|_| DecryptError::AuthenticationFailed)?;
        let one_time_public = one_time_prekey.map(OneTimePrekeyPair::public);
        let transcript = pqxdh::Transcript {
            initiator_identity: &sender.to_array(),
            responder_identity: &ours.public().to_array(),
            signed_prekey: &signed_prekey.public_key(),
            kem_prekey: kem_prekey.public_key(),
            one_time_prekey: one_time_public.as_ref().map(|k| &k.public_key),
            base_key: &message.base_key,
            kem_ciphertext: &message.kem_ciphertext,
        };
        let sk = pqxdh::derive_secret(&dh1, &dh2, &dh3, dh4.as_deref(), &kem_secret, &transcript);
        let mut session = Session {
            local: ours.public().clone(),
            remote: sender.clone(),
            local_address: local.clone(),
            remote_address: sender_address.clone(),
            root: sk,
            our_ratchet: RatchetKeyPair::from_parts(
                Box::new(signed_prekey.secret().clone()),
                signed_prekey.public_key(),
            ),
            sending: None,
            sending_counter: 0,
            previous_counter: 0,
            remote_ratchet: None,
            receiving: None,
            previous_ratchet_keys: VecDeque::new(),
            skipped: VecDeque::new(),
            pending_prekey: None,
            base_key: message.base_key,
        };
        // Alice's first ratchet key is her base key (checked by `PrekeyMessage::parse`),
        // so the receiving half of the first DH ratchet step is KDF_RK(SK, DH3).
        session.start_receiving_chain(message.base_key, &dh3);
        let plaintext =
            session.decrypt_normal(&message.message, &message.header, associated_data, None)?;
        Ok((session, plaintext))
    }

    /// Encrypts `plaintext`, binding `associated_data` (Missive passes the franking
    /// commitment) into the AEAD with both identities and the header. On error the
    /// session is unchanged.
    pub fn encrypt<R: CryptoRng + RngCore>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<OutgoingMessage, EncryptError> {
        // A pending sending ratchet step (after receiving a new ratchet key) happens
        // here, where randomness is available; nothing is committed until the end.
        let stepped: Option<(RatchetKeyPair, RootKey, ChainKey)> = match &self.sending {
            Some(_) => None,
            None => {
                let remote = self.remote_ratchet.ok_or(EncryptError::NotReady)?;
                let ratchet = RatchetKeyPair::generate(rng);
                let dh = primitives::x25519(ratchet.secret(), &remote)
                    .map_err(|_| EncryptError::NonContributory)?;
                let (root, chain) = self.root.step(&dh);
                Some((ratchet, root, chain))
            }
        };
        let (chain, our_public) = match (&stepped, &self.sending) {
            (Some((ratchet, _, chain)), _) => (chain, ratchet.public()),
            (None, Some(chain)) => (chain, self.our_ratchet.public()),
            (None, None) => return Err(EncryptError::NotReady),
        };
        let counter = self.sending_counter;
        let next_counter = counter.checked_add(1).ok_or(EncryptError::ChainExhausted)?;
        let header = NormalMessage::encode_header(our_public, counter, self.previous_counter);
        let (message_key, next_chain) = chain.step();
        let cipher = message_key.expand();
        let prefix = self.pending_prekey.as_deref().unwrap_or_default();
        let ad = aead_ad(
            Party {
                address: &self.local_address,
                identity: &self.local,
            },
            Party {
                address: &self.remote_address,
                identity: &self.remote,
            },
            prefix,
            &header,
            associated_data,
        );
        let mut bytes = Vec::with_capacity(
            prefix.len() + NORMAL_HEADER_LEN + plaintext.len() + primitives::AEAD_TAG_LEN,
        );
        bytes.extend_from_slice(prefix);
        bytes.extend_from_slice(&header);
        primitives::aead_seal_append(&cipher.key, &cipher.nonce, plaintext, &ad, &mut bytes)
            .map_err(|_| EncryptError::TooLarge)?;
        let kind = if self.pending_prekey.is_some() {
            MessageKind::Prekey
        } else {
            MessageKind::Normal
        };

        if let Some((ratchet, root, _)) = stepped {
            self.our_ratchet = ratchet;
            self.root = root;
        }
        self.sending = Some(next_chain);
        self.sending_counter = next_counter;
        Ok(OutgoingMessage { kind, bytes })
    }

    /// Decrypts a message of either kind (a prekey message for this session too)
    /// without a clock: like [`Self::decrypt_at`], but no skipped key expires, and
    /// the keys this call stores count their age from the next call that gives
    /// the time. Clients should prefer [`Self::decrypt_at`].
    pub fn decrypt(
        &mut self,
        message: &[u8],
        associated_data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        self.decrypt_with_clock(message, associated_data, None)
    }

    /// Decrypts a message of either kind (a prekey message for this session too)
    /// at `now_ms`, the caller's time in milliseconds since the Unix epoch.
    ///
    /// Skipped message keys stored more than [`MAX_SKIPPED_KEY_AGE_MS`] before
    /// `now_ms` are dropped first, so a message needing one reports
    /// [`DecryptError::Replay`]; keys skipped by this message are stored at
    /// `now_ms`. A clock that goes backwards makes no key older: a key is never
    /// stored with a time before that of a key stored earlier.
    ///
    /// Decryption runs on a copy that replaces the session only on success: on
    /// any error nothing changes, not even expiry.
    pub fn decrypt_at(
        &mut self,
        message: &[u8],
        associated_data: &[u8],
        now_ms: u64,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        self.decrypt_with_clock(message, associated_data, Some(now_ms))
    }

    /// Drops the skipped message keys stored more than [`MAX_SKIPPED_KEY_AGE_MS`]
    /// before `now_ms` (ms since the Unix epoch) and returns how many. Keys that
    /// had no time yet (stored by [`Self::accept`] or [`Self::decrypt`], or loaded
    /// from state format 1) are given `now_ms`; so the session changes even when
    /// nothing is dropped, and should be stored again. Clients call it after
    /// loading a session, so keys expire even in a conversation that went quiet.
    pub fn expire_skipped_keys(&mut self, now_ms: u64) -> usize {
        let stamp = self.stamp_for(now_ms);
        for skipped in self.skipped.iter_mut().rev() {
            if skipped.stored_at_ms.is_some() {
                break;
            }
            skipped.stored_at_ms = Some(stamp);
        }
        let before = self.skipped.len();
        while self
            .skipped
            .front()
            .and_then(|s| s.stored_at_ms)
            .is_some_and(|t| now_ms.saturating_sub(t) > MAX_SKIPPED_KEY_AGE_MS)
        {
            self.skipped.pop_front();
        }
        before - self.skipped.len()
    }

    /// The time to store a key at: `now_ms`, or the newest stored time if the
    /// clock went backwards, so times never decrease along `skipped`.
    fn stamp_for(&self, now_ms: u64) -> u64 {
        self.skipped
            .iter()
            .rev()
            .find_map(|s| s.stored_at_ms)
            .map_or(now_ms, |newest| newest.max(now_ms))
    }

    /// How many skipped message keys the session holds (all chains).
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.len()
    }

    fn decrypt_with_clock(
        &mut self,
        message: &[u8],
        associated_data: &[u8],
        now_ms: Option<u64>,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let (normal, prekey_header) = match message_kind(message)? {
            MessageKind::Normal => (NormalMessage::parse(message)?, Vec::new()),
            MessageKind::Prekey => {
                let prekey = PrekeyMessage::parse(message)?;
                if prekey.sender != self.remote {
                    return Err(DecryptError::IdentityMismatch);
                }
                if !primitives::ct_eq(&prekey.base_key, &self.base_key) {
                    return Err(DecryptError::SessionMismatch);
                }
                (prekey.message, prekey.header)
            }
        };
        if let Some(plaintext) =
            self.decrypt_next_in_chain(&normal, &prekey_header, associated_data)?
        {
            // The next key of the current chain is never a skipped one, so expiry
            // can follow the (committed) decryption.
            if let Some(now_ms) = now_ms {
                self.expire_skipped_keys(now_ms);
            }
            return Ok(plaintext);
        }
        let mut copy = self.clone();
        let stored_at_ms = now_ms.map(|now_ms| {
            copy.expire_skipped_keys(now_ms);
            copy.stamp_for(now_ms)
        });
        let plaintext =
            copy.decrypt_normal(&normal, &prekey_header, associated_data, stored_at_ms)?;
        *self = copy;
        Ok(plaintext)
    }

    /// The common case without copying the whole state: the next message of the
    /// current receiving chain (no skipped keys, no ratchet step). Derives the key
    /// from the chain without advancing it and commits the chain step only once
    /// the AEAD opened. `Ok(None)` means "not this case".
    fn decrypt_next_in_chain(
        &mut self,
        message: &NormalMessage,
        prekey_header: &[u8],
        associated_data: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, DecryptError> {
        let Some(chain) = self.receiving.as_mut() else {
            return Ok(None);
        };
        if chain.ratchet_key != message.ratchet_key || chain.next != message.counter {
            return Ok(None);
        }
        let Some(next_counter) = chain.next.checked_add(1) else {
            return Ok(None);
        };
        let (key, next_chain) = chain.chain.step();
        let plaintext = open_message(
            &key,
            Party {
                address: &self.remote_address,
                identity: &self.remote,
            },
            Party {
                address: &self.local_address,
                identity: &self.local,
            },
            message,
            prekey_header,
            associated_data,
        )?;
        chain.chain = next_chain;
        chain.next = next_counter;
        self.pending_prekey = None;
        Ok(Some(plaintext))
    }

    /// Decrypts in place; callers run it on a copy. Keys skipped on the way are
    /// stored at `stored_at_ms`.
    fn decrypt_normal(
        &mut self,
        message: &NormalMessage,
        prekey_header: &[u8],
        associated_data: &[u8],
        stored_at_ms: Option<u64>,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let position = self
            .skipped
            .iter()
            .position(|s| s.counter == message.counter && s.ratchet_key == message.ratchet_key);
        let key = if let Some(position) = position {
            match self.skipped.remove(position) {
                Some(skipped) => skipped.key,
                None => return Err(DecryptError::Replay),
            }
        } else {
            let current = self
                .receiving
                .as_ref()
                .is_some_and(|r| r.ratchet_key == message.ratchet_key);
            if !current {
                if self.previous_ratchet_keys.contains(&message.ratchet_key) {
                    return Err(DecryptError::Replay);
                }
                self.receive_ratchet(message, stored_at_ms)?;
            }
            self.take_receiving_key(message.counter, stored_at_ms)?
        };
        let plaintext = open_message(
            &key,
            Party {
                address: &self.remote_address,
                identity: &self.remote,
            },
            Party {
                address: &self.local_address,
                identity: &self.local,
            },
            message,
            prekey_header,
            associated_data,
        )?;
        // The peer answered: it has the session, the PQXDH header is no longer needed.
        self.pending_prekey = None;
        Ok(plaintext)
    }

    /// Remembers the current receiving chain's ratchet key (evicting the oldest
    /// with its skipped keys), skips that chain up to the header's previous
    /// counter, then performs the receiving half of a DH ratchet step.
    fn receive_ratchet(
        &mut self,
        message: &NormalMessage,
        stored_at_ms: Option<u64>,
    ) -> Result<(), DecryptError> {
        if let Some(mut old) = self.receiving.take() {
            self.previous_ratchet_keys.push_back(old.ratchet_key);
            while self.previous_ratchet_keys.len() > MAX_PREVIOUS_RATCHET_KEYS {
                // A message on a forgotten chain can no longer be told from a
                // forgery, so its keys go too (before skipping, so that they are
                // not what pushes live keys out of the bounded store).
                if let Some(evicted) = self.previous_ratchet_keys.pop_front() {
                    self.skipped.retain(|s| s.ratchet_key != evicted);
                }
            }
            self.skip_to(&mut old, message.previous_counter, stored_at_ms)?;
        }
        let dh = dh_decrypt(self.our_ratchet.secret(), &message.ratchet_key)?;
        self.start_receiving_chain(message.ratchet_key, &dh);
        Ok(())
    }

    /// The receiving half of a DH ratchet step once `X25519(DHs, ratchet_key)` is
    /// known: `RK, CKr = KDF_RK(RK, dh)`, and the next `encrypt` starts a new
    /// sending chain.
    fn start_receiving_chain(&mut self, ratchet_key: [u8; 32], dh: &[u8; 32]) {
        let (root, chain) = self.root.step(dh);
        self.root = root;
        self.receiving = Some(ReceivingChain {
            ratchet_key,
            chain,
            next: 0,
        });
        self.remote_ratchet = Some(ratchet_key);
        if self.sending.take().is_some() {
            self.previous_counter = self.sending_counter;
            self.sending_counter = 0;
        }
    }

    /// Stores the keys of `chain` from its next counter up to (excluding) `until`,
    /// at `stored_at_ms`.
    fn skip_to(
        &mut self,
        chain: &mut ReceivingChain,
        until: u32,
        stored_at_ms: Option<u64>,
    ) -> Result<(), DecryptError> {
        if until <= chain.next {
            return Ok(());
        }
        let gap = until - chain.next;
        if gap > MAX_MESSAGE_GAP {
            return Err(DecryptError::GapTooLarge {
                gap: u64::from(gap),
                max: MAX_MESSAGE_GAP,
            });
        }
        while chain.next < until {
            let (key, next) = chain.chain.step();
            self.skipped.push_back(SkippedKey {
                ratchet_key: chain.ratchet_key,
                counter: chain.next,
                stored_at_ms,
                key,
            });
            chain.chain = next;
            chain.next += 1;
        }
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
        Ok(())
    }

    /// Takes the message key for `counter` from the current receiving chain.
    fn take_receiving_key(
        &mut self,
        counter: u32,
        stored_at_ms: Option<u64>,
    ) -> Result<MessageKey, DecryptError> {
        let Some(mut chain) = self.receiving.take() else {
            return Err(DecryptError::AuthenticationFailed);
        };
        if counter < chain.next {
            return Err(DecryptError::Replay);
        }
        self.skip_to(&mut chain, counter, stored_at_ms)?;
        let (key, next) = chain.chain.step();
        chain.chain = next;
        chain.next = counter.checked_add(1).ok_or(DecryptError::Replay)?;
        self.receiving = Some(chain);
        Ok(key)
    }

    /// The peer device's identity key.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote
    }

    /// The peer's address.
    pub fn remote_address(&self) -> &Address {
        &self.remote_address
    }

    /// Our address.
    pub fn local_address(&self) -> &Address {
        &self.local_address
    }

    /// Our identity.
    pub fn local_identity(&self) -> &PublicIdentity {
        &self.local
    }

    /// Whether encrypt still yields prekey messages (no reply received yet).
    pub fn is_awaiting_reply(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// Versioned serialisation of the whole state. Contains secrets: store it sealed.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut pickle = SessionPickle {
            version: SESSION_STATE_VERSION,
            local_identity: self.local.to_bytes(),
            remote_identity: self.remote.to_bytes(),
            local_address: Some(AddressPickle::of(&self.local_address)),
            remote_address: Some(AddressPickle::of(&self.remote_address)),
            root_key: self.root.as_bytes().to_vec(),
            our_ratchet_secret: self.our_ratchet.secret().as_bytes().to_vec(),
            sending_chain_key: self.sending.as_ref().map(|c| c.as_bytes().to_vec()),
            sending_counter: self.sending_counter,
            previous_counter: self.previous_counter,
            remote_ratchet_key: self.remote_ratchet.map(|k| k.to_vec()),
            receiving: self.receiving.as_ref().map(|r| ReceivingChainPickle {
                ratchet_key: r.ratchet_key.to_vec(),
                chain_key: r.chain.as_bytes().to_vec(),
                next_counter: r.next,
            }),
            previous_ratchet_keys: self
                .previous_ratchet_keys
                .iter()
                .map(|k| k.to_vec())
                .collect(),
            skipped: self
                .skipped
                .iter()
                .map(|s| SkippedKeyPickle {
                    ratchet_key: s.ratchet_key.to_vec(),
                    counter: s.counter,
                    message_key: s.key.as_bytes().to_vec(),
                    stored_at_ms: s.stored_at_ms,
                })
                .collect(),
            pending_prekey: self.pending_prekey.clone(),
            base_key: self.base_key.to_vec(),
        };
        let mut out = Zeroizing::new(Vec::with_capacity(pickle.encoded_len()));
        pickle.encode_raw(&mut *out);
        pickle.wipe();
        out
    }

    /// Restores a session written by [`Self::to_bytes`], checking every field.
    /// States of formats 1 and 2 are protocol v1 sessions and are refused
    /// (docs/PROTOCOL.md, "Session state").
    pub fn from_bytes(bytes: &[u8]) -> Result<Session, StateError> {
        let mut pickle = SessionPickle::decode(bytes)
            .map_err(|_| StateError::Malformed("not a Missive session state"))?;
        let session = Self::from_pickle(&pickle);
        pickle.wipe();
        session
    }

    fn from_pickle(p: &SessionPickle) -> Result<Session, StateError> {
        fn key32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], StateError> {
            bytes.try_into().map_err(|_| StateError::Malformed(what))
        }
        match p.version {
            SESSION_STATE_VERSION => {}
            0 => return Err(StateError::Malformed("missing format version")),
            old @ (1 | 2) => return Err(StateError::RetiredVersion(old)),
            other => return Err(StateError::UnsupportedVersion(other)),
        }
        let local_address = p
            .local_address
            .as_ref()
            .map(AddressPickle::address)
            .ok_or(StateError::Malformed("local address"))?;
        let remote_address = p
            .remote_address
            .as_ref()
            .map(AddressPickle::address)
            .ok_or(StateError::Malformed("remote address"))?;
        let local = PublicIdentity::from_bytes(&p.local_identity)
            .map_err(|_| StateError::Malformed("local identity"))?;
        let remote = PublicIdentity::from_bytes(&p.remote_identity)
            .map_err(|_| StateError::Malformed("remote identity"))?;
        let root = RootKey::from_slice(&p.root_key).ok_or(StateError::Malformed("root key"))?;
        let secret = Zeroizing::new(key32(&p.our_ratchet_secret, "ratchet key")?);
        let our_ratchet = RatchetKeyPair::from_secret(Box::new(StaticSecret::from(*secret)));
        let sending = match &p.sending_chain_key {
            Some(k) => Some(ChainKey::from_slice(k).ok_or(StateError::Malformed("sending chain"))?),
            None => None,
        };
        let remote_ratchet = match &p.remote_ratchet_key {
            Some(k) => Some(key32(k, "remote ratchet key")?),
            None => None,
        };
        if sending.is_none() && remote_ratchet.is_none() {
            return Err(StateError::Malformed(
                "neither a sending chain nor a peer ratchet key",
            ));
        }
        let receiving = match &p.receiving {
            Some(r) => Some(ReceivingChain {
                ratchet_key: key32(&r.ratchet_key, "receiving ratchet key")?,
                chain: ChainKey::from_slice(&r.chain_key)
                    .ok_or(StateError::Malformed("receiving chain"))?,
                next: r.next_counter,
            }),
            None => None,
        };
        if p.previous_ratchet_keys.len() > MAX_PREVIOUS_RATCHET_KEYS
            || p.skipped.len() > MAX_SKIPPED_KEYS
        {
            return Err(StateError::Malformed(
                "more stored keys than the bounds allow",
            ));
        }
        let previous_ratchet_keys: VecDeque<[u8; 32]> = p
            .previous_ratchet_keys
            .iter()
            .map(|k| key32(k, "previous ratchet key"))
            .collect::<Result<_, _>>()?;
        let skipped: VecDeque<SkippedKey> = p
            .skipped
            .iter()
            .map(|s| {
                Ok(SkippedKey {
                    ratchet_key: key32(&s.ratchet_key, "skipped key ratchet key")?,
                    counter: s.counter,
                    stored_at_ms: s.stored_at_ms,
                    key: MessageKey::from_slice(&s.message_key)
                        .ok_or(StateError::Malformed("skipped message key"))?,
                })
            })
            .collect::<Result<_, StateError>>()?;
        let remembered = |key: &[u8; 32]| {
            receiving.as_ref().is_some_and(|r| r.ratchet_key == *key)
                || previous_ratchet_keys.contains(key)
        };
        if !skipped.iter().all(|s| remembered(&s.ratchet_key)) {
            return Err(StateError::Malformed(
                "skipped key of a chain that is not remembered",
            ));
        }
        let mut newest = 0;
        let mut untimed = false;
        for s in &skipped {
            match s.stored_at_ms {
                Some(t) if !untimed && t >= newest => newest = t,
                Some(_) => return Err(StateError::Malformed("skipped keys out of time order")),
                None => untimed = true,
            }
        }
        if let Some(header) = &p.pending_prekey
            && header.len() != crate::wire::PREKEY_HEADER_LEN
        {
            return Err(StateError::Malformed("pending prekey header"));
        }
        Ok(Session {
            local,
            remote,
            local_address,
            remote_address,
            root,
            our_ratchet,
            sending,
            sending_counter: p.sending_counter,
            previous_counter: p.previous_counter,
            remote_ratchet,
            receiving,
            previous_ratchet_keys,
            skipped,
            pending_prekey: p.pending_prekey.clone(),
            base_key: key32(&p.base_key, "base key")?,
        })
    }

    /// Authenticated encryption of [`Self::to_bytes`] under `key`
    /// (associated data `"Missive session state"`).
    pub fn seal<R: CryptoRng + RngCore>(&self, rng: &mut R, key: &StorageKey) -> Vec<u8> {
        storage::seal(rng, key, &self.to_bytes(), SESSION_SEAL_AD)
    }

    /// Opens bytes written by [`Self::seal`].
    pub fn unseal(key: &StorageKey, bytes: &[u8]) -> Result<Session, StateError> {
        let plain = storage::open(key, bytes, SESSION_SEAL_AD)?;
        Self::from_bytes(&plain)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be printed (or leak) by accident.
        let Session {
            local,
            remote,
            local_address,
            remote_address,
            root: _,
            our_ratchet: _,
            sending,
            sending_counter,
            previous_counter,
            remote_ratchet: _,
            receiving,
            previous_ratchet_keys: _,
            skipped,
            pending_prekey,
            base_key: _,
        } = self;
        f.debug_struct("Session")
            .field("local", &local.fingerprint())
            .field("remote", &remote.fingerprint())
            .field("local_address", local_address)
            .field("remote_address", remote_address)
            .field("sending_ready", &sending.is_some())
            .field("sending_counter", sending_counter)
            .field("previous_counter", previous_counter)
            .field("receiving_next", &receiving.as_ref().map(|r| r.next))
            .field("skipped_keys", &skipped.len())
            .field("awaiting_reply", &pending_prekey.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn alice_address() -> Address {
        Address::new("alice", 1)
    }

    fn bob_address() -> Address {
        Address::new("bob", 1)
    }

    fn pair(rng: &mut ChaCha20Rng) -> (Session, Session) {
        let alice = IdentityKeyPair::generate(rng);
        let bob = IdentityKeyPair::generate(rng);
        let bob_account = IdentityKeyPair::generate(rng);
        let owner = crate::PrekeyOwner {
            account: bob_account.public().clone(),
            device_id: 1,
        };
        let spk = SignedPrekeyPair::generate(rng, 1, &bob, &owner);
        let kem = KemPrekeyPair::generate(rng, 2, &bob, &owner);
        let bundle = PrekeyBundle {
            identity: bob.public().clone(),
            owner,
            signed_prekey: spk.public(),
            kem_prekey: kem.public(),
            one_time_prekey: None,
        };
        let mut a = Session::initiate(rng, &alice, &alice_address(), "bob", &bundle).unwrap();
        let m = a.encrypt(rng, b"x", b"").unwrap();
        let message = PrekeyMessage::parse(&m.bytes).unwrap();
        let (b, _) = Session::accept(
            &bob,
            &bob_address(),
            &alice_address(),
            &spk,
            &kem,
            None,
            &message,
            b"",
        )
        .unwrap();
        (a, b)
    }

    #[test]
    fn encrypt_errors_leave_the_session_unchanged() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (_, b) = pair(&mut rng);
        // Bob's sending ratchet step is pending; a low-order peer key is refused.
        let mut bad = b.clone();
        bad.remote_ratchet = Some([0u8; 32]);
        let before = bad.to_bytes();
        assert_eq!(
            bad.encrypt(&mut rng, b"x", b"").err(),
            Some(EncryptError::NonContributory)
        );
        assert_eq!(bad.to_bytes(), before);
        // No peer ratchet key at all (not loadable from bytes, but handled).
        let mut bad = b.clone();
        bad.remote_ratchet = None;
        assert_eq!(
            bad.encrypt(&mut rng, b"x", b"").err(),
            Some(EncryptError::NotReady)
        );
        assert_eq!(
            Session::from_bytes(&bad.to_bytes()).err(),
            Some(StateError::Malformed(
                "neither a sending chain nor a peer ratchet key"
            ))
        );
    }

    #[test]
    fn ratchet_public_key_is_cached_and_reused_within_a_chain() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (mut a, _) = pair(&mut rng);
        let key = *a.our_ratchet.public();
        let m1 = a.encrypt(&mut rng, b"1", b"").unwrap().bytes;
        let m2 = a.encrypt(&mut rng, b"2", b"").unwrap().bytes;
        let h1 = NormalMessage::parse(&m1[crate::wire::PREKEY_HEADER_LEN..]).unwrap();
        let h2 = NormalMessage::parse(&m2[crate::wire::PREKEY_HEADER_LEN..]).unwrap();
        assert_eq!((h1.ratchet_key, h2.ratchet_key), (key, key));
        assert_eq!((h1.counter, h2.counter), (1, 2));
    }

    #[test]
    fn skipped_keys_are_bounded_in_state() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (mut a, mut b) = pair(&mut rng);
        let reply = b.encrypt(&mut rng, b"r", b"").unwrap().bytes;
        a.decrypt(&reply, b"").unwrap();
        for _ in 0..3 {
            let mut last = Vec::new();
            for _ in 0..=MAX_MESSAGE_GAP {
                last = a.encrypt(&mut rng, b"m", b"").unwrap().bytes;
            }
            b.decrypt(&last, b"").unwrap();
            assert!(b.skipped.len() <= MAX_SKIPPED_KEYS);
        }
        assert_eq!(b.skipped.len(), MAX_SKIPPED_KEYS);
        Session::from_bytes(&b.to_bytes()).unwrap();
    }

    /// Bob with skipped keys on Alice's current chain, stored at 10 and 20.
    fn with_skipped(rng: &mut ChaCha20Rng) -> Session {
        let (mut a, mut b) = pair(rng);
        let reply = b.encrypt(rng, b"r", b"").unwrap().bytes;
        a.decrypt(&reply, b"").unwrap();
        for now in [10, 20] {
            a.encrypt(rng, b"skipped", b"").unwrap();
            let m = a.encrypt(rng, b"m", b"").unwrap().bytes;
            b.decrypt_at(&m, b"", now).unwrap();
        }
        b
    }

    #[test]
    fn loading_checks_skipped_key_chains_and_time_order() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let b = with_skipped(&mut rng);
        let times: Vec<_> = b.skipped.iter().map(|s| s.stored_at_ms).collect();
        assert_eq!(times, [Some(10), Some(20)]);
        let reload = |s: &Session| Session::from_bytes(&s.to_bytes()).map(|s| s.to_bytes());
        assert_eq!(reload(&b).unwrap(), b.to_bytes());

        let mut orphan = b.clone();
        orphan.skipped[0].ratchet_key = [9u8; 32];
        assert_eq!(
            reload(&orphan).err(),
            Some(StateError::Malformed(
                "skipped key of a chain that is not remembered"
            ))
        );
        let mut backwards = b.clone();
        backwards.skipped[0].stored_at_ms = Some(21);
        assert_eq!(
            reload(&backwards).err(),
            Some(StateError::Malformed("skipped keys out of time order"))
        );
        let mut untimed_first = b.clone();
        untimed_first.skipped[0].stored_at_ms = None;
        assert_eq!(
            reload(&untimed_first).err(),
            Some(StateError::Malformed("skipped keys out of time order"))
        );
        // Untimed keys after timed ones are what `decrypt` leaves.
        let mut untimed_last = b.clone();
        untimed_last.skipped[1].stored_at_ms = None;
        reload(&untimed_last).unwrap();
    }

    #[test]
    fn protocol_v1_state_formats_are_retired() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let b = with_skipped(&mut rng);
        assert_eq!(b.to_bytes()[..2], [0x08, 0x03]);
        let mut pickle = SessionPickle::decode(&b.to_bytes()[..]).unwrap();
        for version in [1, 2] {
            pickle.version = version;
            let mut bytes = Vec::new();
            pickle.encode_raw(&mut bytes);
            assert_eq!(
                Session::from_bytes(&bytes).err(),
                Some(StateError::RetiredVersion(version))
            );
            // Even without the addresses format 3 added, as v1 wrote them.
            let mut v1 = pickle.clone();
            (v1.local_address, v1.remote_address) = (None, None);
            let mut bytes = Vec::new();
            v1.encode_raw(&mut bytes);
            assert_eq!(
                Session::from_bytes(&bytes).err(),
                Some(StateError::RetiredVersion(version))
            );
        }
        pickle.version = 4;
        let mut bytes = Vec::new();
        pickle.encode_raw(&mut bytes);
        assert_eq!(
            Session::from_bytes(&bytes).err(),
            Some(StateError::UnsupportedVersion(4))
        );
    }

    #[test]
    fn format_3_needs_both_addresses() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (a, _) = pair(&mut rng);
        let pickle = SessionPickle::decode(&a.to_bytes()[..]).unwrap();
        assert_eq!(
            pickle.local_address,
            Some(AddressPickle::of(&alice_address()))
        );
        assert_eq!(
            pickle.remote_address,
            Some(AddressPickle::of(&bob_address()))
        );
        let encode = |p: &SessionPickle| {
            let mut bytes = Vec::new();
            p.encode_raw(&mut bytes);
            bytes
        };
        let mut no_local = pickle.clone();
        no_local.local_address = None;
        assert_eq!(
            Session::from_bytes(&encode(&no_local)).err(),
            Some(StateError::Malformed("local address"))
        );
        let mut no_remote = pickle.clone();
        no_remote.remote_address = None;
        assert_eq!(
            Session::from_bytes(&encode(&no_remote)).err(),
            Some(StateError::Malformed("remote address"))
        );
        let loaded = Session::from_bytes(&encode(&pickle)).unwrap();
        assert_eq!(loaded.local_address(), &alice_address());
        assert_eq!(loaded.remote_address(), &bob_address());
    }

    /// A normal message opened by a session that names another sender or
    /// recipient address fails authentication and commits nothing.
    #[test]
    fn a_wrong_address_fails_authentication_and_changes_nothing() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let (mut a, mut b) = pair(&mut rng);
        let reply = b.encrypt(&mut rng, b"r", b"").unwrap().bytes;
        a.decrypt(&reply, b"").unwrap();
        let m = a.encrypt(&mut rng, b"normal", b"ad").unwrap().bytes;
        assert_eq!(message_kind(&m), Ok(MessageKind::Normal));
        // The sender's username or device id differs, or the recipient's.
        let wrong_remote = [Address::new("alicf", 1), Address::new("alice", 2)];
        let wrong_local = [Address::new("bob2", 1), Address::new("bob", 2)];
        let cases = wrong_remote
            .into_iter()
            .map(|address| (true, address))
            .chain(wrong_local.into_iter().map(|address| (false, address)));
        for (remote, address) in cases {
            let mut bad = b.clone();
            if remote {
                bad.remote_address = address.clone();
            } else {
                bad.local_address = address.clone();
            }
            let before = bad.to_bytes();
            assert_eq!(
                bad.decrypt(&m, b"ad").err(),
                Some(DecryptError::AuthenticationFailed),
                "{address}"
            );
            assert_eq!(bad.to_bytes(), before, "{address}");
        }
        // Swapping both ends is wrong too (the AD names the sender first).
        let mut swapped = b.clone();
        swapped.local_address = alice_address();
        swapped.remote_address = bob_address();
        assert_eq!(
            swapped.decrypt(&m, b"ad").err(),
            Some(DecryptError::AuthenticationFailed)
        );
        assert_eq!(&b.decrypt(&m, b"ad").unwrap()[..], b"normal");
    }

    #[test]
    fn skipped_times_never_decrease_along_the_store() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut b = with_skipped(&mut rng);
        let times = |s: &Session| s.skipped.iter().map(|k| k.stored_at_ms).collect::<Vec<_>>();
        b.skipped[1].stored_at_ms = None;
        // Untimed keys take the newest stored time when the clock is behind it.
        assert_eq!(b.expire_skipped_keys(5), 0);
        assert_eq!(times(&b), [Some(10), Some(10)]);
        assert_eq!(b.stamp_for(7), 10);
        assert_eq!(b.stamp_for(30), 30);
    }
}
