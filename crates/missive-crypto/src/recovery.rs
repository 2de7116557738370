//! The recovery code (protocol v2; docs/PROTOCOL.md, "Recovery code"): the
//! account key's Ed25519 seed with a short checksum, printed once at
//! registration, so a lost primary does not lose the account.
//!
//! ```text
//! check = SHA256(field("Missive recovery code v2") || field(seed))[0..3]
//! code  = base32(seed (32) || check (3))      56 characters, groups of four
//! ```

use core::fmt;

use zeroize::Zeroizing;

use crate::encoding::put_field;
use crate::error::KeyError;
use crate::identity::IdentityKeyPair;
use crate::link::{grouped_base32, parse_base32};
use crate::primitives;

const LABEL: &[u8] = b"Missive recovery code v2";
const SEED_LEN: usize = 32;
const CHECK_LEN: usize = 3;
/// `IdentityKeyPair::to_secret_bytes` format byte before the seed.
const SECRET_FORMAT: u8 = 0x02;

/// Why a recovery code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// Not base32, or the wrong length.
    #[error("this is not a recovery code (56 letters A-Z and digits 2-7)")]
    NotACode,
    /// The checksum does not match: a typo.
    #[error("this recovery code has a typo (its checksum does not match)")]
    Checksum,
}

/// The account key's seed, as the user writes it down.
pub struct RecoveryCode {
    seed: Zeroizing<[u8; SEED_LEN]>,
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

fn check(seed: &[u8; SEED_LEN]) -> [u8; CHECK_LEN] {
    let mut t = Zeroizing::new(Vec::with_capacity(16 + LABEL.len() + SEED_LEN));
    put_field(&mut t, LABEL);
    put_field(&mut t, seed);
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&primitives::sha256(&t)[..CHECK_LEN]);
    out
}

impl RecoveryCode {
    /// The code of `account`.
    pub fn of(account: &IdentityKeyPair) -> RecoveryCode {
        let secret = account.to_secret_bytes();
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        seed.copy_from_slice(&secret[1..]);
        RecoveryCode { seed }
    }

    /// The text to write down.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; SEED_LEN + CHECK_LEN]);
        raw[..SEED_LEN].copy_from_slice(&self.seed[..]);
        raw[SEED_LEN..].copy_from_slice(&check(&self.seed));
        grouped_base32(&raw[..])
    }

    /// Parses a written-down code; case, dashes and spaces do not matter.
    pub fn parse(text: &str) -> Result<RecoveryCode, RecoveryError> {
        let raw = parse_base32(text).ok_or(RecoveryError::NotACode)?;
        if raw.len() != SEED_LEN + CHECK_LEN {
            return Err(RecoveryError::NotACode);
        }
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        seed.copy_from_slice(&raw[..SEED_LEN]);
        if !primitives::ct_eq(&check(&seed), &raw[SEED_LEN..]) {
            return Err(RecoveryError::Checksum);
        }
        Ok(RecoveryCode { seed })
    }

    /// The account key it restores.
    pub fn account_key(&self) -> Result<IdentityKeyPair, KeyError> {
        let mut secret = Zeroizing::new(Vec::with_capacity(1 + SEED_LEN));
        secret.push(SECRET_FORMAT);
        secret.extend_from_slice(&self.seed[..]);
        IdentityKeyPair::from_secret_bytes(&secret)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn a_code_restores_the_same_account_key_and_catches_typos() {
        let account = IdentityKeyPair::generate(&mut ChaCha20Rng::from_seed([7; 32]));
        let text = RecoveryCode::of(&account).to_text();
        assert_eq!(text.len(), 56 + 13);
        let back = RecoveryCode::parse(&text.to_lowercase()).unwrap();
        assert_eq!(back.account_key().unwrap().public(), account.public());
        let mut typo: Vec<char> = text.chars().collect();
        typo[0] = if typo[0] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(
            RecoveryCode::parse(&typo).err(),
            Some(RecoveryError::Checksum)
        );
        assert_eq!(
            RecoveryCode::parse("abc").err(),
            Some(RecoveryError::NotACode)
        );
        assert_eq!(
            RecoveryCode::parse("1111").err(),
            Some(RecoveryError::NotACode)
        );
    }
}
