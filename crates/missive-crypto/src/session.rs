//! Sessions: PQXDH establishment plus the Double Ratchet.
//! (Phase 1 placeholder: signatures are final; bodies land in phase 2.)

use core::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{DecryptError, EncryptError, SessionError, StateError};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::prekeys::{KemPrekeyPair, OneTimePrekeyPair, PrekeyBundle, SignedPrekeyPair};
use crate::storage::{self, StorageKey};
use crate::wire::{OutgoingMessage, PrekeyMessage};

const SESSION_SEAL_AD: &[u8] = b"Missive session state";

/// A Double Ratchet session with one peer device.
#[derive(Clone)]
pub struct Session {
    local: PublicIdentity,
    remote: PublicIdentity,
}

impl Session {
    /// Initiator: verifies the bundle's signatures and runs PQXDH.
    pub fn initiate<R: CryptoRng + RngCore>(
        rng: &mut R,
        ours: &IdentityKeyPair,
        theirs: &PrekeyBundle,
    ) -> Result<Session, SessionError> {
        let _ = (rng, ours, theirs);
        Err(SessionError::NonContributory)
    }

    /// Responder: runs PQXDH with the private prekeys named in `message` and decrypts it.
    pub fn accept(
        ours: &IdentityKeyPair,
        signed_prekey: &SignedPrekeyPair,
        kem_prekey: &KemPrekeyPair,
        one_time_prekey: Option<&OneTimePrekeyPair>,
        message: &PrekeyMessage,
        associated_data: &[u8],
    ) -> Result<(Session, Zeroizing<Vec<u8>>), DecryptError> {
        let _ = (
            ours,
            signed_prekey,
            kem_prekey,
            one_time_prekey,
            message,
            associated_data,
        );
        Err(DecryptError::AuthenticationFailed)
    }

    /// Encrypts `plaintext`, binding `associated_data` into the AEAD.
    pub fn encrypt<R: CryptoRng + RngCore>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<OutgoingMessage, EncryptError> {
        let _ = (rng, plaintext, associated_data);
        Err(EncryptError::ChainExhausted)
    }

    /// Decrypts a message of either kind; on error the session is unchanged.
    pub fn decrypt(
        &mut self,
        message: &[u8],
        associated_data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let _ = (message, associated_data);
        Err(DecryptError::AuthenticationFailed)
    }

    /// The peer's identity.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote
    }

    /// Our identity.
    pub fn local_identity(&self) -> &PublicIdentity {
        &self.local
    }

    /// Versioned serialisation of the whole state (secret: store it sealed).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(Vec::new())
    }

    /// Restores a session written by [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Session, StateError> {
        let _ = bytes;
        Err(StateError::UnsupportedVersion(0))
    }

    /// Authenticated encryption of [`Self::to_bytes`] under `key`.
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
        f.debug_struct("Session")
            .field("local", &self.local.fingerprint())
            .field("remote", &self.remote.fingerprint())
            .finish_non_exhaustive()
    }
}
