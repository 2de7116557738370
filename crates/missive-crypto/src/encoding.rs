//! Length-prefixed encoding shared by every MAC, signature and transcript input.
//!
//! A field is its length as a big-endian `u64` followed by its bytes; fixed-size
//! integers are written big-endian without a prefix. See docs/PROTOCOL.md,
//! "Conventions".

/// Appends `bytes` as a length-prefixed field.
pub(crate) fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a big-endian `u32`.
pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a big-endian `u64`.
pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// A cursor over a byte slice that never panics.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Takes exactly `n` bytes, or `None` when fewer remain.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array::<8>().map(u64::from_be_bytes)
    }

    /// Takes a field written by [`put_field`], or `None` when its length prefix
    /// is incomplete or names more bytes than remain (nothing is allocated).
    pub(crate) fn field(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }

    /// Everything not yet read.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.bytes
    }

    /// How many bytes are not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn field_is_length_prefixed() {
        let mut out = Vec::new();
        put_field(&mut out, b"ab");
        put_u32(&mut out, 7);
        assert_eq!(out, [0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 7]);
    }

    #[test]
    fn reader_stops_at_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.u32(), None);
        assert_eq!(r.array::<2>(), Some([2, 3]));
        assert!(r.is_empty());
        assert_eq!(r.take(1), None);
    }

    #[test]
    fn reader_reads_fields_and_u64() {
        let mut out = Vec::new();
        put_field(&mut out, b"ab");
        put_u64(&mut out, 9);
        let mut r = Reader::new(&out);
        assert_eq!(r.field(), Some(&b"ab"[..]));
        assert_eq!(r.remaining(), 8);
        assert_eq!(r.u64(), Some(9));
        assert!(r.is_empty());
        // A length naming more bytes than remain, or an absurd length, is `None`.
        let mut short = Vec::new();
        put_field(&mut short, b"abc");
        assert_eq!(Reader::new(&short[..10]).field(), None);
        assert_eq!(Reader::new(&[0xff; 12]).field(), None);
        assert_eq!(Reader::new(&[0, 0, 0]).field(), None);
    }
}
