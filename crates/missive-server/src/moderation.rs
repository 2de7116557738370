//! The moderator's side of a report of a message with a file
//! (`missive-server reports save-file`): the blob is read from the blob
//! store, every chunk opened with the key the reporter disclosed, and the
//! whole ciphertext checked against the hash the franking commitment binds,
//! so the file saved is the file the sender committed to.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use missive_crypto::attachment::{AttachmentCipher, AttachmentKey, CiphertextHasher};
use prost::Message as _;

use crate::blobs::{BLOB_ID_LEN, BlobStore};
use crate::storage::ReportRecord;

/// Bytes read from the blob store at a time (one sealed chunk is 64 KiB + 16).
const READ_BYTES: usize = 1024 * 1024;

/// Fetches, opens and verifies the file of `report` and writes it to `out`
/// (through `out.part`, renamed only once every check holds; an existing
/// `out` is never replaced). Returns the file's length.
pub async fn save_reported_file(
    blobs: &dyn BlobStore,
    report: &ReportRecord,
    out: &Path,
) -> anyhow::Result<u64> {
    let file = report
        .file
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("report {} carries no file", report.id))?;
    let pointer = missive_proto::v1::AttachmentPointer::decode(file.pointer.as_slice())
        .map_err(|_| anyhow::anyhow!("the stored attachment pointer is malformed"))?;
    let key = AttachmentKey::from_bytes(&pointer.key)?;
    key.verify_commitment(&pointer.key_commitment)?;
    let cipher = AttachmentCipher::new(&key, pointer.size)?;
    let layout = *cipher.layout();
    let id: [u8; BLOB_ID_LEN] = pointer
        .blob_id
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored blob id is malformed"))?;
    let status = blobs.status(&id).await.map_err(|e| {
        anyhow::anyhow!("the file's blob is not in the attachment store ({e}); it may have expired")
    })?;
    if !status.finalized || status.size != layout.ciphertext_len() {
        anyhow::bail!("the stored blob is incomplete or not the size the pointer announces");
    }
    if out.exists() {
        anyhow::bail!("{} exists; give another --out", out.display());
    }
    let part = PathBuf::from(format!("{}.part", out.display()));
    let mut writer = std::io::BufWriter::new(
        std::fs::File::create(&part)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", part.display()))?,
    );
    let result = async {
        let mut hasher = CiphertextHasher::new(&layout);
        let mut pending: Vec<u8> = Vec::new();
        let mut offset = 0u64;
        let mut index = 0u64;
        while index < layout.chunk_count() {
            let len = layout.chunk_ciphertext_len(index)?;
            while pending.len() < len {
                let bytes = blobs.read(&id, offset, READ_BYTES).await?;
                if bytes.is_empty() {
                    anyhow::bail!("the stored blob ends early");
                }
                offset += bytes.len() as u64;
                pending.extend_from_slice(&bytes);
            }
            let sealed: Vec<u8> = pending.drain(..len).collect();
            let opened = cipher.open_chunk(index, &sealed)?;
            hasher.update(&sealed);
            writer.write_all(&opened)?;
            index += 1;
        }
        hasher.verify(&pointer.ciphertext_hash)?;
        writer.flush()?;
        writer.get_ref().sync_all()?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        drop(writer);
        let _ = std::fs::remove_file(&part);
        return Err(e.context("the reported file does not verify; nothing was saved"));
    }
    drop(writer);
    // A hard link fails if `out` appeared meanwhile: never replaces a file.
    std::fs::hard_link(&part, out)
        .map_err(|e| anyhow::anyhow!("cannot save {}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&part);
    Ok(pointer.size)
}
