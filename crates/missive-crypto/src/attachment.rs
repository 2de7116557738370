//! Encrypted attachments (docs/PROTOCOL.md, "Attachments").
//!
//! A file is sealed under a fresh 32-byte [`AttachmentKey`]: its plaintext is
//! padded with zeros to a size bucket ([`padded_len`]), cut into chunks of
//! [`ATTACHMENT_CHUNK_LEN`] bytes and each chunk sealed with ChaCha20-Poly1305
//! in the STREAM construction (`aead::stream::StreamBE32`: a 32-bit chunk
//! counter and a last-chunk flag in the nonce), so a reordered, swapped,
//! truncated or extended stream fails to open. The key is committed by
//! [`AttachmentKey::commitment`] and the exact ciphertext by
//! [`CiphertextHasher`]; both travel in the franked attachment pointer
//! ([`franking_commit`]).
//!
//! Everything is random access by chunk index, so an upload resumes from the
//! server's committed offset and a download from any chunk boundary. Nothing
//! here reads a file or a socket: callers feed chunks.

use core::fmt;

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use crate::consts::{ATTACHMENT_CHUNK_LEN, ATTACHMENT_MIN_PADDED_LEN, MAX_ATTACHMENT_LEN};
use crate::encoding::{put_field, put_u64};
use crate::franking::{COMMITMENT_LEN, FrankingKey};
use crate::primitives;

/// Length of an attachment key.
pub const ATTACHMENT_KEY_LEN: usize = 32;
/// Length of a key commitment and of a ciphertext hash.
pub const ATTACHMENT_DIGEST_LEN: usize = 32;
/// Bytes the AEAD adds to each chunk (the Poly1305 tag).
pub const ATTACHMENT_CHUNK_OVERHEAD: usize = primitives::AEAD_TAG_LEN;
/// Length of a full sealed chunk.
pub const ATTACHMENT_CHUNK_CIPHERTEXT_LEN: usize = ATTACHMENT_CHUNK_LEN + ATTACHMENT_CHUNK_OVERHEAD;

const ENCRYPTION_INFO: &[u8] = b"Missive attachment encryption v1";
const COMMITMENT_LABEL: &[u8] = b"Missive attachment key commitment v1";
const HASH_LABEL: &[u8] = b"Missive attachment ciphertext v1";
const FRANKING_LABEL: &[u8] = b"missive franking v1";
const FRANKING_ATTACHMENT_LABEL: &[u8] = b"missive franking attachment v1";
/// The STREAM nonce prefix: 7 zero bytes. Each key seals exactly one file, so
/// the (key, nonce) pairs never repeat; the counter and flag make the rest.
const NONCE_PREFIX: [u8; 7] = [0u8; 7];

/// An attachment could not be sealed, opened or verified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The key was not 32 bytes.
    #[error("attachment key must be 32 bytes, got {0}")]
    InvalidKeyLength(usize),
    /// The file is larger than [`MAX_ATTACHMENT_LEN`].
    #[error("file of {size} bytes is larger than the {max}-byte attachment limit")]
    TooLarge {
        /// The announced plaintext length.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// A chunk index beyond the last chunk of this attachment.
    #[error("chunk {index} is beyond the last chunk ({count} chunks)")]
    ChunkOutOfRange {
        /// The index asked for.
        index: u64,
        /// How many chunks the attachment has.
        count: u64,
    },
    /// A chunk had a length other than the layout requires.
    #[error("chunk {index} is {actual} bytes, expected {expected}")]
    ChunkLength {
        /// The chunk index.
        index: u64,
        /// The required length.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// A chunk did not authenticate: tampered, reordered, swapped, from another
    /// file, a wrong key, or not the last chunk where the stream ends.
    #[error(
        "chunk {0} does not authenticate: the blob was altered, truncated or reordered, or the key is wrong"
    )]
    AuthenticationFailed(u64),
    /// The padding after the file's last byte was not all zeros.
    #[error("the attachment's padding is not zero: the sender's client is faulty or malicious")]
    BadPadding,
    /// The key does not match the commitment in the pointer.
    #[error("the attachment key does not match its commitment")]
    CommitmentMismatch,
    /// The ciphertext does not match the hash in the pointer.
    #[error("the downloaded blob does not match the hash in the message")]
    HashMismatch,
}

/// A per-file attachment key; boxed, zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AttachmentKey(Box<[u8; ATTACHMENT_KEY_LEN]>);

impl AttachmentKey {
    /// Draws a fresh random key.
    pub fn generate<R: CryptoRng + RngCore>(rng: &mut R) -> Self {
        let mut key = Box::new([0u8; ATTACHMENT_KEY_LEN]);
        rng.fill_bytes(&mut key[..]);
        Self(key)
    }

    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttachmentError> {
        let key: [u8; ATTACHMENT_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| AttachmentError::InvalidKeyLength(bytes.len()))?;
        let boxed = Self(Box::new(key));
        let mut key = key;
        key.zeroize();
        Ok(boxed)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; ATTACHMENT_KEY_LEN] {
        &self.0
    }

    /// The key commitment `HMAC(key, field("Missive attachment key commitment v1"))`.
    pub fn commitment(&self) -> [u8; ATTACHMENT_DIGEST_LEN] {
        let mut input = Vec::with_capacity(8 + COMMITMENT_LABEL.len());
        put_field(&mut input, COMMITMENT_LABEL);
        primitives::hmac_sha256(self.as_bytes(), &[&input])
    }

    /// Checks `commitment` against this key in constant time.
    pub fn verify_commitment(&self, commitment: &[u8]) -> Result<(), AttachmentError> {
        if primitives::ct_eq(&self.commitment(), commitment) {
            Ok(())
        } else {
            Err(AttachmentError::CommitmentMismatch)
        }
    }
}

impl fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachmentKey(<redacted>)")
    }
}

/// The padded length of a `plaintext_len`-byte file: the smallest bucket
/// `B_i >= plaintext_len`, where `B_0 = 541` and `B_{i+1} = B_i + ceil(B_i / 20)`
/// (that is `ceil(1.05 * B_i)` in integers), so padding costs at most ≈ 5 %.
pub fn padded_len(plaintext_len: u64) -> u64 {
    let mut bucket = ATTACHMENT_MIN_PADDED_LEN;
    while bucket < plaintext_len {
        bucket = bucket.saturating_add(bucket.div_ceil(20));
    }
    bucket
}

/// How an attachment of a given size is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    plaintext_len: u64,
    padded_len: u64,
    chunk_count: u64,
}

impl Layout {
    /// The layout of a `plaintext_len`-byte file, refused beyond [`MAX_ATTACHMENT_LEN`].
    pub fn new(plaintext_len: u64) -> Result<Self, AttachmentError> {
        if plaintext_len > MAX_ATTACHMENT_LEN {
            return Err(AttachmentError::TooLarge {
                size: plaintext_len,
                max: MAX_ATTACHMENT_LEN,
            });
        }
        let padded_len = padded_len(plaintext_len);
        Ok(Self {
            plaintext_len,
            padded_len,
            chunk_count: padded_len.div_ceil(ATTACHMENT_CHUNK_LEN as u64),
        })
    }

    /// The file's length.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The padded plaintext length (what is encrypted).
    pub fn padded_len(&self) -> u64 {
        self.padded_len
    }

    /// Number of chunks (at least one).
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// Total length of the sealed blob: padded length plus one tag per chunk.
    pub fn ciphertext_len(&self) -> u64 {
        self.padded_len + self.chunk_count * ATTACHMENT_CHUNK_OVERHEAD as u64
    }

    fn check(&self, index: u64) -> Result<(), AttachmentError> {
        if index < self.chunk_count {
            Ok(())
        } else {
            Err(AttachmentError::ChunkOutOfRange {
                index,
                count: self.chunk_count,
            })
        }
    }

    /// Padded plaintext bytes in chunk `index`.
    fn padded_chunk_len(&self, index: u64) -> usize {
        let start = index * ATTACHMENT_CHUNK_LEN as u64;
        (self.padded_len - start).min(ATTACHMENT_CHUNK_LEN as u64) as usize
    }

    /// Length of sealed chunk `index`.
    pub fn chunk_ciphertext_len(&self, index: u64) -> Result<usize, AttachmentError> {
        self.check(index)?;
        Ok(self.padded_chunk_len(index) + ATTACHMENT_CHUNK_OVERHEAD)
    }

    /// Offset of sealed chunk `index` in the blob.
    pub fn chunk_ciphertext_offset(&self, index: u64) -> u64 {
        index * ATTACHMENT_CHUNK_CIPHERTEXT_LEN as u64
    }

    /// Offset of chunk `index`'s first byte in the file (may be past its end).
    pub fn chunk_file_offset(&self, index: u64) -> u64 {
        index * ATTACHMENT_CHUNK_LEN as u64
    }

    /// How many of the file's own bytes chunk `index` holds (the rest is padding).
    pub fn file_bytes_in_chunk(&self, index: u64) -> Result<usize, AttachmentError> {
        self.check(index)?;
        let start = index * ATTACHMENT_CHUNK_LEN as u64;
        Ok(self
            .plaintext_len
            .saturating_sub(start)
            .min(ATTACHMENT_CHUNK_LEN as u64) as usize)
    }
}

/// Seals and opens the chunks of one attachment, in any order.
pub struct AttachmentCipher {
    stream: StreamBE32<ChaCha20Poly1305>,
    layout: Layout,
}

impl fmt::Debug for AttachmentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentCipher")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl AttachmentCipher {
    /// A cipher for a file of `plaintext_len` bytes under `key`.
    pub fn new(key: &AttachmentKey, plaintext_len: u64) -> Result<Self, AttachmentError> {
        let layout = Layout::new(plaintext_len)?;
        let mut enc = Zeroizing::new([0u8; 32]);
        // 32 bytes of HKDF output cannot fail.
        if primitives::hkdf_sha256(&[], key.as_bytes(), ENCRYPTION_INFO, &mut enc[..]).is_err() {
            return Err(AttachmentError::InvalidKeyLength(ATTACHMENT_KEY_LEN));
        }
        let aead = ChaCha20Poly1305::new((&*enc).into());
        Ok(Self {
            stream: StreamBE32::from_aead(aead, (&NONCE_PREFIX).into()),
            layout,
        })
    }

    /// The layout this cipher seals.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn position(&self, index: u64) -> Result<(u32, bool), AttachmentError> {
        self.layout.check(index)?;
        // MAX_ATTACHMENT_LEN keeps the count far below 2^32.
        let position = u32::try_from(index).map_err(|_| AttachmentError::ChunkOutOfRange {
            index,
            count: self.layout.chunk_count,
        })?;
        Ok((position, index + 1 == self.layout.chunk_count))
    }

    /// Seals chunk `index` from the file bytes it holds
    /// ([`Layout::file_bytes_in_chunk`]), adding the zero padding itself.
    pub fn seal_chunk(&self, index: u64, file_bytes: &[u8]) -> Result<Vec<u8>, AttachmentError> {
        let (position, last) = self.position(index)?;
        let expected = self.layout.file_bytes_in_chunk(index)?;
        if file_bytes.len() != expected {
            return Err(AttachmentError::ChunkLength {
                index,
                expected,
                actual: file_bytes.len(),
            });
        }
        let padded = self.layout.padded_chunk_len(index);
        let mut buffer = Vec::with_capacity(padded + ATTACHMENT_CHUNK_OVERHEAD);
        buffer.extend_from_slice(file_bytes);
        buffer.resize(padded, 0);
        self.stream
            .encrypt_in_place(position, last, &[], &mut buffer)
            .map_err(|_| AttachmentError::AuthenticationFailed(index))?;
        Ok(buffer)
    }

    /// Opens sealed chunk `index` and returns the file bytes it holds (padding
    /// checked to be zero and removed).
    pub fn open_chunk(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, AttachmentError> {
        let (position, last) = self.position(index)?;
        let expected = self.layout.chunk_ciphertext_len(index)?;
        if sealed.len() != expected {
            return Err(AttachmentError::ChunkLength {
                index,
                expected,
                actual: sealed.len(),
            });
        }
        let mut buffer = sealed.to_vec();
        self.stream
            .decrypt_in_place(position, last, &[], &mut buffer)
            .map_err(|_| AttachmentError::AuthenticationFailed(index))?;
        let keep = self.layout.file_bytes_in_chunk(index)?;
        if buffer[keep..].iter().any(|&b| b != 0) {
            buffer.zeroize();
            return Err(AttachmentError::BadPadding);
        }
        buffer.truncate(keep);
        Ok(buffer)
    }
}

/// Incremental hash of a sealed blob:
/// `SHA256(field("Missive attachment ciphertext v1") || u64(ciphertext_len) || ciphertext)`.
#[derive(Clone)]
pub struct CiphertextHasher {
    hasher: Sha256,
    expected_len: u64,
    seen: u64,
}

impl fmt::Debug for CiphertextHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CiphertextHasher")
            .field("expected_len", &self.expected_len)
            .field("seen", &self.seen)
            .finish()
    }
}

impl CiphertextHasher {
    /// Starts the hash of a blob of `layout.ciphertext_len()` bytes.
    pub fn new(layout: &Layout) -> Self {
        let mut head = Vec::with_capacity(16 + HASH_LABEL.len());
        put_field(&mut head, HASH_LABEL);
        put_u64(&mut head, layout.ciphertext_len());
        let mut hasher = Sha256::new();
        hasher.update(&head);
        Self {
            hasher,
            expected_len: layout.ciphertext_len(),
            seen: 0,
        }
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, bytes: &[u8]) {
        self.seen = self.seen.saturating_add(bytes.len() as u64);
        self.hasher.update(bytes);
    }

    /// The hash (whatever was fed).
    pub fn finalize(self) -> [u8; ATTACHMENT_DIGEST_LEN] {
        self.hasher.finalize().into()
    }

    /// Checks that exactly the announced length was fed and that the hash equals
    /// `expected` (constant time).
    pub fn verify(self, expected: &[u8]) -> Result<(), AttachmentError> {
        let complete = self.seen == self.expected_len;
        let digest = self.finalize();
        if complete && primitives::ct_eq(&digest, expected) {
            Ok(())
        } else {
            Err(AttachmentError::HashMismatch)
        }
    }
}

/// What the franking commitment binds of an attachment pointer: everything but
/// the key itself (bound through its commitment) and the thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerBinding<'a> {
    /// The server's blob id.
    pub blob_id: &'a [u8],
    /// [`AttachmentKey::commitment`].
    pub key_commitment: &'a [u8],
    /// The [`CiphertextHasher`] digest.
    pub ciphertext_hash: &'a [u8],
    /// The file's length.
    pub plaintext_len: u64,
    /// The MIME type, as sent.
    pub mime_type: &'a str,
    /// The file name, as sent.
    pub file_name: &'a str,
}

/// The franking commitment of a message that carries an attachment:
///
/// ```text
/// HMAC(franking_key, field("missive franking v1") || field(message_id) || field(text)
///      || field("missive franking attachment v1") || field(blob_id) || field(key_commitment)
///      || field(ciphertext_hash) || u64(plaintext_len) || field(mime_type) || field(file_name))
/// ```
///
/// Its input begins with exactly the input of [`crate::franking::commit`] over
/// the text and is strictly longer, so it never equals a text-only commitment.
pub fn franking_commit(
    key: &FrankingKey,
    message_id: &[u8],
    text: &[u8],
    pointer: &PointerBinding<'_>,
) -> [u8; COMMITMENT_LEN] {
    let mut input = Vec::with_capacity(256 + text.len());
    put_field(&mut input, FRANKING_LABEL);
    put_field(&mut input, message_id);
    put_field(&mut input, text);
    put_field(&mut input, FRANKING_ATTACHMENT_LABEL);
    put_field(&mut input, pointer.blob_id);
    put_field(&mut input, pointer.key_commitment);
    put_field(&mut input, pointer.ciphertext_hash);
    put_u64(&mut input, pointer.plaintext_len);
    put_field(&mut input, pointer.mime_type.as_bytes());
    put_field(&mut input, pointer.file_name.as_bytes());
    primitives::hmac_sha256(key.as_bytes(), &[&input])
}

/// Recomputes [`franking_commit`] and compares it in constant time.
pub fn verify_franking_commitment(
    key: &FrankingKey,
    message_id: &[u8],
    text: &[u8],
    pointer: &PointerBinding<'_>,
    commitment: &[u8],
) -> bool {
    primitives::ct_eq(&franking_commit(key, message_id, text, pointer), commitment)
}

/// Seals a whole in-memory file: the blob and its hash. For small files and
/// tests; large files are sealed chunk by chunk with [`AttachmentCipher`].
pub fn seal_all(
    key: &AttachmentKey,
    plaintext: &[u8],
) -> Result<(Vec<u8>, [u8; ATTACHMENT_DIGEST_LEN]), AttachmentError> {
    let cipher = AttachmentCipher::new(key, plaintext.len() as u64)?;
    let layout = *cipher.layout();
    let mut hasher = CiphertextHasher::new(&layout);
    let mut blob = Vec::with_capacity(layout.ciphertext_len() as usize);
    for index in 0..layout.chunk_count() {
        let start = (layout.chunk_file_offset(index) as usize).min(plaintext.len());
        let len = layout.file_bytes_in_chunk(index)?;
        let sealed = cipher.seal_chunk(index, &plaintext[start..start + len])?;
        hasher.update(&sealed);
        blob.extend_from_slice(&sealed);
    }
    Ok((blob, hasher.finalize()))
}

/// Opens a whole in-memory blob of a `plaintext_len`-byte file after checking
/// the key commitment and the hash.
pub fn open_all(
    key: &AttachmentKey,
    key_commitment: &[u8],
    ciphertext_hash: &[u8],
    plaintext_len: u64,
    blob: &[u8],
) -> Result<Vec<u8>, AttachmentError> {
    key.verify_commitment(key_commitment)?;
    let cipher = AttachmentCipher::new(key, plaintext_len)?;
    let layout = *cipher.layout();
    let mut hasher = CiphertextHasher::new(&layout);
    hasher.update(blob);
    hasher.verify(ciphertext_hash)?;
    let mut out = Vec::with_capacity(plaintext_len as usize);
    let mut rest = blob;
    for index in 0..layout.chunk_count() {
        let len = layout.chunk_ciphertext_len(index)?;
        if rest.len() < len {
            return Err(AttachmentError::AuthenticationFailed(index));
        }
        let (chunk, tail) = rest.split_at(len);
        out.extend_from_slice(&cipher.open_chunk(index, chunk)?);
        rest = tail;
    }
    Ok(out)
}
