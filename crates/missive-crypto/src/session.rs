//! Sessions: PQXDH establishment plus the Double Ratchet
//! (docs/PROTOCOL.md, "PQXDH", "Double Ratchet", "Session state").

use std::collections::VecDeque;

use core::fmt;

use prost::Message as _;
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::consts::{MAX_MESSAGE_GAP, MAX_PREVIOUS_RATCHET_KEYS, MAX_SKIPPED_KEYS};
use crate::error::{DecryptError, EncryptError, SessionError, StateError};
use crate::identity::{IdentityKeyPair, PUBLIC_IDENTITY_LEN, PublicIdentity};
use crate::pqxdh;
use crate::prekeys::{KemPrekeyPair, OneTimePrekeyPair, PrekeyBundle, SignedPrekeyPair};
use crate::primitives;
use crate::ratchet::{ChainKey, MessageKey, RatchetKeyPair, RootKey};
use crate::state::{ReceivingChainPickle, SESSION_STATE_VERSION, SessionPickle, SkippedKeyPickle};
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

#[derive(Clone)]
struct SkippedKey {
    ratchet_key: [u8; 32],
    counter: u32,
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

/// AEAD associated data: `sender (32) || recipient (32) || [PQXDH header (1166), prekey
/// messages only] || ratchet header (41) || caller AD`.
fn aead_ad(
    sender: &PublicIdentity,
    recipient: &PublicIdentity,
    prekey_header: &[u8],
    header: &[u8; NORMAL_HEADER_LEN],
    associated_data: &[u8],
) -> Vec<u8> {
    let mut ad = Vec::with_capacity(
        2 * PUBLIC_IDENTITY_LEN + prekey_header.len() + NORMAL_HEADER_LEN + associated_data.len(),
    );
    ad.extend_from_slice(&sender.to_array());
    ad.extend_from_slice(&recipient.to_array());
    ad.extend_from_slice(prekey_header);
    ad.extend_from_slice(header);
    ad.extend_from_slice(associated_data);
    ad
}

/// Opens `message` under its message key; the AD binds sender, recipient, the
/// PQXDH header (prekey messages) and the ratchet header.
fn open_message(
    key: &MessageKey,
    sender: &PublicIdentity,
    recipient: &PublicIdentity,
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
    /// Initiator: verifies the bundle's signatures and runs PQXDH. Until the first
    /// reply arrives, every [`Self::encrypt`] yields [`MessageKind::Prekey`].
    pub fn initiate<R: CryptoRng + RngCore>(
        rng: &mut R,
        ours: &IdentityKeyPair,
        theirs: &PrekeyBundle,
    ) -> Result<Session, SessionError> {
        let identity = &theirs.identity;
        identity.verify_signed_prekey(&theirs.signed_prekey)?;
        let kem_key = identity.verify_kem_prekey_key(&theirs.kem_prekey)?;
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
        let sk = pqxdh::derive_secret(&dh1, &dh2, &dh3, dh4.as_deref(), &kem_secret);

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
    /// ids in `message` (and deletes a one-time prekey once the session is stored).
    pub fn accept(
        ours: &IdentityKeyPair,
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
        let sk = pqxdh::derive_secret(&dh1, &dh2, &dh3, dh4.as_deref(), &kem_secret);
        let mut session = Session {
            local: ours.public().clone(),
            remote: sender.clone(),
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
            session.decrypt_normal(&message.message, &message.header, associated_data)?;
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
        let ad = aead_ad(&self.local, &self.remote, prefix, &header, associated_data);
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

    /// Decrypts a message of either kind (a prekey message for this session too).
    /// Decryption runs on a copy that replaces the session only on success.
    pub fn decrypt(
        &mut self,
        message: &[u8],
        associated_data: &[u8],
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
            return Ok(plaintext);
        }
        let mut copy = self.clone();
        let plaintext = copy.decrypt_normal(&normal, &prekey_header, associated_data)?;
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
            &self.remote,
            &self.local,
            message,
            prekey_header,
            associated_data,
        )?;
        chain.chain = next_chain;
        chain.next = next_counter;
        self.pending_prekey = None;
        Ok(Some(plaintext))
    }

    /// Decrypts in place; callers run it on a copy.
    fn decrypt_normal(
        &mut self,
        message: &NormalMessage,
        prekey_header: &[u8],
        associated_data: &[u8],
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
                self.receive_ratchet(message)?;
            }
            self.take_receiving_key(message.counter)?
        };
        let plaintext = open_message(
            &key,
            &self.remote,
            &self.local,
            message,
            prekey_header,
            associated_data,
        )?;
        // The peer answered: it has the session, the PQXDH header is no longer needed.
        self.pending_prekey = None;
        Ok(plaintext)
    }

    /// Skips the current receiving chain up to the header's previous counter, then
    /// performs the receiving half of a DH ratchet step.
    fn receive_ratchet(&mut self, message: &NormalMessage) -> Result<(), DecryptError> {
        if let Some(mut old) = self.receiving.take() {
            self.skip_to(&mut old, message.previous_counter)?;
            self.previous_ratchet_keys.push_back(old.ratchet_key);
            while self.previous_ratchet_keys.len() > MAX_PREVIOUS_RATCHET_KEYS {
                self.previous_ratchet_keys.pop_front();
            }
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

    /// Stores the keys of `chain` from its next counter up to (excluding) `until`.
    fn skip_to(&mut self, chain: &mut ReceivingChain, until: u32) -> Result<(), DecryptError> {
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
    fn take_receiving_key(&mut self, counter: u32) -> Result<MessageKey, DecryptError> {
        let Some(mut chain) = self.receiving.take() else {
            return Err(DecryptError::AuthenticationFailed);
        };
        if counter < chain.next {
            return Err(DecryptError::Replay);
        }
        self.skip_to(&mut chain, counter)?;
        let (key, next) = chain.chain.step();
        chain.chain = next;
        chain.next = counter.checked_add(1).ok_or(DecryptError::Replay)?;
        self.receiving = Some(chain);
        Ok(key)
    }

    /// The peer's identity.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote
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
            other => return Err(StateError::UnsupportedVersion(other)),
        }
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
        let previous_ratchet_keys = p
            .previous_ratchet_keys
            .iter()
            .map(|k| key32(k, "previous ratchet key"))
            .collect::<Result<_, _>>()?;
        let skipped = p
            .skipped
            .iter()
            .map(|s| {
                Ok(SkippedKey {
                    ratchet_key: key32(&s.ratchet_key, "skipped key ratchet key")?,
                    counter: s.counter,
                    key: MessageKey::from_slice(&s.message_key)
                        .ok_or(StateError::Malformed("skipped message key"))?,
                })
            })
            .collect::<Result<_, StateError>>()?;
        if let Some(header) = &p.pending_prekey
            && header.len() != crate::wire::PREKEY_HEADER_LEN
        {
            return Err(StateError::Malformed("pending prekey header"));
        }
        Ok(Session {
            local,
            remote,
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

    fn pair(rng: &mut ChaCha20Rng) -> (Session, Session) {
        let alice = IdentityKeyPair::generate(rng);
        let bob = IdentityKeyPair::generate(rng);
        let spk = SignedPrekeyPair::generate(rng, 1, &bob);
        let kem = KemPrekeyPair::generate(rng, 2, &bob);
        let bundle = PrekeyBundle {
            identity: bob.public().clone(),
            signed_prekey: spk.public(),
            kem_prekey: kem.public(),
            one_time_prekey: None,
        };
        let mut a = Session::initiate(rng, &alice, &bundle).unwrap();
        let m = a.encrypt(rng, b"x", b"").unwrap();
        let message = PrekeyMessage::parse(&m.bytes).unwrap();
        let (b, _) = Session::accept(&bob, &spk, &kem, None, &message, b"").unwrap();
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
}
