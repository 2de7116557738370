//! Shared test fixtures: parties with prekeys, and established sessions.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use missive_crypto::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// One device of one account: its device key signs its prekeys for
/// (account key, device id); the account key is a different key.
pub struct Party {
    pub identity: IdentityKeyPair,
    pub account: IdentityKeyPair,
    pub address: Address,
    pub signed_prekey: SignedPrekeyPair,
    pub kem_prekey: KemPrekeyPair,
    pub one_time_prekey: OneTimePrekeyPair,
}

impl Party {
    /// Device 1 of `username`'s account.
    pub fn new(rng: &mut ChaCha20Rng, username: &str) -> Self {
        Self::device(rng, username, 1)
    }

    /// Device `device_id` of `username`, with its own account key.
    pub fn device(rng: &mut ChaCha20Rng, username: &str, device_id: u32) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let account = IdentityKeyPair::generate(rng);
        Self::with_account(rng, identity, account, username, device_id)
    }

    /// A device with the given device and account keys.
    pub fn with_account(
        rng: &mut ChaCha20Rng,
        identity: IdentityKeyPair,
        account: IdentityKeyPair,
        username: &str,
        device_id: u32,
    ) -> Self {
        let owner = PrekeyOwner {
            account: account.public().clone(),
            device_id,
        };
        let signed_prekey = SignedPrekeyPair::generate(rng, 1, &identity, &owner);
        let kem_prekey = KemPrekeyPair::generate(rng, 2, &identity, &owner);
        let one_time_prekey = OneTimePrekeyPair::generate(rng, 3);
        Self {
            identity,
            account,
            address: Address::new(username, device_id),
            signed_prekey,
            kem_prekey,
            one_time_prekey,
        }
    }

    /// Whose prekeys these are: what the prekey signatures name.
    pub fn owner(&self) -> PrekeyOwner {
        PrekeyOwner {
            account: self.account.public().clone(),
            device_id: self.address.device_id,
        }
    }

    pub fn bundle(&self, with_one_time: bool) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.identity.public().clone(),
            owner: self.owner(),
            signed_prekey: self.signed_prekey.public(),
            kem_prekey: self.kem_prekey.public(),
            one_time_prekey: with_one_time.then(|| self.one_time_prekey.public()),
        }
    }

    /// This party starts a session with `to`'s bundle.
    pub fn initiate(
        &self,
        rng: &mut ChaCha20Rng,
        to: &Party,
        with_one_time: bool,
    ) -> Result<Session, SessionError> {
        self.initiate_to(rng, &to.address.username, &to.bundle(with_one_time))
    }

    /// This party starts a session with `bundle`, as a device of `remote_username`.
    pub fn initiate_to(
        &self,
        rng: &mut ChaCha20Rng,
        remote_username: &str,
        bundle: &PrekeyBundle,
    ) -> Result<Session, SessionError> {
        Session::initiate(rng, &self.identity, &self.address, remote_username, bundle)
    }

    /// Accepts a prekey message from `sender` with this party's keys.
    pub fn accept(
        &self,
        sender: &Address,
        bytes: &[u8],
        ad: &[u8],
    ) -> Result<(Session, Vec<u8>), DecryptError> {
        self.accept_at(&self.address, sender, bytes, ad)
    }

    /// [`Self::accept`] with `local` as this party's own address.
    pub fn accept_at(
        &self,
        local: &Address,
        sender: &Address,
        bytes: &[u8],
        ad: &[u8],
    ) -> Result<(Session, Vec<u8>), DecryptError> {
        let message = PrekeyMessage::parse(bytes)?;
        let otk = message.one_time_prekey_id().map(|_| &self.one_time_prekey);
        let (session, plaintext) = Session::accept(
            &self.identity,
            local,
            sender,
            &self.signed_prekey,
            &self.kem_prekey,
            otk,
            &message,
            ad,
        )?;
        Ok((session, plaintext.to_vec()))
    }
}

/// Alice initiates to Bob, Bob accepts the first message "hello". Returns (alice, bob).
pub fn established(rng: &mut ChaCha20Rng, with_one_time: bool) -> (Session, Session) {
    let alice = Party::new(rng, "alice");
    let bob = Party::new(rng, "bob");
    let mut a = alice.initiate(rng, &bob, with_one_time).unwrap();
    let first = a.encrypt(rng, b"hello", b"ad").unwrap();
    assert_eq!(first.kind, MessageKind::Prekey);
    let (b, plaintext) = bob.accept(&alice.address, &first.bytes, b"ad").unwrap();
    assert_eq!(plaintext, b"hello");
    assert_eq!(
        (a.local_address(), a.remote_address()),
        (&alice.address, &bob.address)
    );
    assert_eq!(
        (b.local_address(), b.remote_address()),
        (&bob.address, &alice.address)
    );
    (a, b)
}

/// Both directions have exchanged a message: no prekey header any more.
pub fn conversing(rng: &mut ChaCha20Rng) -> (Session, Session) {
    let (mut a, mut b) = established(rng, true);
    let reply = b.encrypt(rng, b"hi", b"").unwrap();
    assert_eq!(reply.kind, MessageKind::Normal);
    assert_eq!(&a.decrypt(&reply.bytes, b"").unwrap()[..], b"hi");
    (a, b)
}
