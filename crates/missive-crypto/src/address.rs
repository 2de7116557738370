//! Who a session runs between: a username and a device id on each side
//! (protocol v2 binds both ends' addresses into every message).

use crate::encoding::{put_field, put_u32};

/// One device of one account, as the server routes to it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Address {
    /// The account's username (case-folded, as the server stores it).
    pub username: String,
    /// The device id within the account (1 for the account's first device).
    pub device_id: u32,
}

impl Address {
    /// An address.
    pub fn new(username: impl Into<String>, device_id: u32) -> Self {
        Self {
            username: username.into(),
            device_id,
        }
    }

    /// `field(username) || u32 device_id`.
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        put_field(out, self.username.as_bytes());
        put_u32(out, self.device_id);
    }
}

impl core::fmt::Display for Address {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.username, self.device_id)
    }
}
