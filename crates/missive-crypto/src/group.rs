//! Missive's own pieces of group conversations (protocol v3; MLS itself,
//! RFC 9420, is openmls's, in the client): how a leaf's credential names a
//! device, the group-name extension, and the recipient a server's franking
//! tag binds for a group message. Specified in docs/PROTOCOL.md, "Groups".

use crate::encoding::put_field;

/// Length of a Missive group id (the MLS group id), bytes.
pub const GROUP_ID_LEN: usize = 16;

/// The private-use group context extension type (RFC 9420, section 17.3)
/// that carries a group's name.
pub const GROUP_NAME_EXTENSION: u16 = 0xF3A1;

/// Longest group name, bytes of UTF-8.
pub const MAX_GROUP_NAME_BYTES: usize = 64;

/// The identity of a device's MLS basic credential:
/// `field(username) ‖ u32(device_id)`.
pub fn credential_identity(username: &str, device_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + username.len() + 4);
    put_field(&mut out, username.as_bytes());
    out.extend_from_slice(&device_id.to_be_bytes());
    out
}

/// Reads a credential identity back: `None` unless the bytes are exactly
/// one field of UTF-8 and a `u32`. (Whether the username is valid is the
/// caller's rule.)
pub fn parse_credential_identity(bytes: &[u8]) -> Option<(&str, u32)> {
    let len = usize::try_from(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let end = 8usize.checked_add(len)?;
    let name = std::str::from_utf8(bytes.get(8..end)?).ok()?;
    let device = bytes.get(end..)?;
    Some((name, u32::from_be_bytes(device.try_into().ok()?)))
}

/// The `recipient` argument of [`crate::franking::server_tag`] for a
/// message of a group: `"group:"` and the lowercase hex of the group id.
pub fn franking_recipient(group_id: &[u8]) -> String {
    let mut out = String::with_capacity(6 + 2 * group_id.len());
    out.push_str("group:");
    for b in group_id {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn credential_identities_round_trip_and_nothing_else_parses() {
        let id = credential_identity("alice", 3);
        assert_eq!(hex::encode(&id), "0000000000000005616c69636500000003");
        assert_eq!(parse_credential_identity(&id), Some(("alice", 3)));
        let mut longer = id.clone();
        longer.push(0);
        for bad in [&b""[..], &id[..id.len() - 1], &longer, &[0xff; 12][..]] {
            assert_eq!(parse_credential_identity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_group_recipient_is_lowercase_hex() {
        assert_eq!(
            franking_recipient(&[0xAB; 16]),
            "group:abababababababababababababababab"
        );
    }
}
