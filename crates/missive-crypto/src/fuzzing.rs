//! Entry points for the fuzz targets in `crates/missive-crypto/fuzz`. Not a stable API.

/// Parses arbitrary bytes as every message type; must never panic.
pub fn parse_messages(data: &[u8]) {
    let _ = crate::message_kind(data);
    let _ = crate::PrekeyMessage::parse(data);
    let _ = crate::wire_normal_parse(data);
}
