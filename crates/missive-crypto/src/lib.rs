//! Sans-I/O protocol core of Missive.
//!
//! Identities, signed device lists, prekeys, PQXDH, the Double Ratchet, message franking, safety
//! numbers and sealing of stored state. Nothing here performs I/O, reads a
//! clock or owns a random number generator: randomness is always a parameter,
//! so tests, vectors and fuzzers are deterministic.
//!
//! The exact byte layouts and key derivations are specified in
//! `docs/PROTOCOL.md`; the bounds live in [`consts`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
pub mod attachment;
pub mod consts;
pub mod devices;
mod encoding;
mod error;
pub mod franking;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
mod identity;
pub mod link;
mod pqxdh;
mod prekeys;
#[doc(hidden)]
pub mod primitives;
mod ratchet;
pub mod recovery;
mod safety;
mod session;
mod state;
mod storage;
pub mod transcript;
mod wire;

pub use address::Address;
pub use devices::{DeviceEntry, DeviceList, ListChange, SignedDeviceList};
pub use error::{
    DecodeError, DecryptError, DeviceListError, EncryptError, KeyError, SessionError, StateError,
};
pub use identity::{Fingerprint, IdentityKeyPair, PublicIdentity};
pub use prekeys::{
    KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemPrekeyPair, KemPrekeyPublic, OneTimePrekeyPair,
    OneTimePrekeyPublic, PrekeyBundle, PrekeyOwner, SignedPrekeyPair, SignedPrekeyPublic,
};
pub use safety::{SAFETY_NUMBER_ITERATIONS, SafetyNumber, safety_number};
pub use session::Session;
pub use storage::{SEAL_OVERHEAD, StorageKey, open, seal};
pub use wire::{MessageKind, OutgoingMessage, PrekeyMessage, message_kind};
