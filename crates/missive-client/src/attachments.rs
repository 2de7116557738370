//! Encrypted attachments on the client: seal and upload a file, download,
//! verify and save one (docs/PROTOCOL.md, "Attachments").
//!
//! Memory is bounded whatever the file size: one 64 KiB chunk is read,
//! sealed and queued at a time (at most [`UPLOAD_QUEUE`] ahead of the
//! network), and a download writes each chunk as it opens.
//!
//! Resumption. An upload whose stream breaks asks the server for its
//! committed offset and continues there (re-sealing the earlier chunks only
//! to feed the hash: STREAM is deterministic under the key). A download
//! writes to `NAME.part`; a later download of the same pointer continues
//! after the last whole chunk in it, re-sealing the saved chunks to feed the
//! hash, and the file gets its name only once key commitment, every chunk,
//! the padding and the hash verified.

use std::path::{Path, PathBuf};

use missive_crypto::attachment::{
    ATTACHMENT_CHUNK_LEN, AttachmentCipher, AttachmentKey, CiphertextHasher, Layout,
};
use missive_proto::v1::attachment_service_client::AttachmentServiceClient;
use missive_proto::v1::{
    AttachmentPointer, CreateUploadRequest, DownloadRequest, FinalizeUploadRequest,
    QueryUploadRequest, UploadChunk,
};
use rand::rngs::OsRng;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::client::Client;
use crate::error::{ClientError, Result};

/// Sealed chunks queued ahead of the upload stream.
pub const UPLOAD_QUEUE: usize = 8;
/// Times an upload or download is resumed after a broken stream before giving up.
pub const TRANSFER_ATTEMPTS: usize = 5;
/// Longest file name kept from a pointer.
pub const MAX_FILE_NAME_BYTES: usize = 255;
/// Environment variable (tests only): exit the process with
/// [`crate::client::CRASH_EXIT_CODE`] after uploading or downloading this
/// many bytes, to test resumption after a killed client.
pub const CRASH_AFTER_BYTES_ENV: &str = "MISSIVE_TEST_CRASH_AFTER_BYTES";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Io { what, source }
}

fn refused(name: &str, error: impl std::fmt::Display) -> ClientError {
    ClientError::Crypto(format!("the attachment {name:?} was not saved: {error}"))
}

/// The name a file is saved under: the pointer's name without directories or
/// control characters, never empty, never `.` or `..`.
pub fn safe_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned();
    while clean.len() > MAX_FILE_NAME_BYTES {
        clean.pop();
    }
    if clean.is_empty() || clean == "." || clean == ".." || clean.starts_with('.') {
        clean = format!("attachment{clean}");
    }
    clean
}

/// A MIME type guessed from the file extension (the recipient never trusts it).
pub fn guess_mime_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn crash_after() -> Option<u64> {
    std::env::var(CRASH_AFTER_BYTES_ENV).ok()?.parse().ok()
}

async fn read_chunk(
    file: &mut tokio::fs::File,
    layout: &Layout,
    index: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    let len = layout
        .file_bytes_in_chunk(index)
        .map_err(|e| ClientError::Crypto(e.to_string()))?;
    let mut buffer = vec![0u8; len];
    if len > 0 {
        file.seek(std::io::SeekFrom::Start(layout.chunk_file_offset(index)))
            .await
            .map_err(io(format!("cannot read {}", path.display())))?;
        file.read_exact(&mut buffer).await.map_err(io(format!(
            "{} changed while it was being sent",
            path.display()
        )))?;
    }
    Ok(buffer)
}

impl Client {
    /// Seals `path` under a fresh key, uploads it (resuming after broken
    /// streams) and returns the pointer to send.
    pub async fn upload_attachment(&mut self, path: &Path) -> Result<AttachmentPointer> {
        let what = format!("cannot read {}", path.display());
        let metadata = tokio::fs::metadata(path).await.map_err(io(&what))?;
        if !metadata.is_file() {
            return Err(ClientError::Io {
                what,
                source: std::io::Error::other("not a regular file"),
            });
        }
        let size = metadata.len();
        let key = AttachmentKey::generate(&mut OsRng);
        let cipher = AttachmentCipher::new(&key, size)
            .map_err(|e| refused(&path.display().to_string(), e))?;
        let layout = *cipher.layout();
        let channel = self.attachment_channel().await?;
        let request = self
            .attachment_request(CreateUploadRequest {
                size: layout.ciphertext_len(),
            })
            .await?;
        let blob_id = AttachmentServiceClient::new(channel.clone())
            .create_upload(request)
            .await
            .map_err(|s| self.attachment_status(&s))?
            .into_inner()
            .blob_id;

        let mut hash = None;
        for _attempt in 0..TRANSFER_ATTEMPTS {
            let request = self
                .attachment_request(QueryUploadRequest {
                    blob_id: blob_id.clone(),
                })
                .await?;
            let status = AttachmentServiceClient::new(channel.clone())
                .query_upload(request)
                .await
                .map_err(|s| self.attachment_status(&s))?
                .into_inner();
            let committed = status.committed;
            // Seal every chunk in order (to feed the hash); send the bytes at
            // and after the committed offset.
            let (tx, rx) = tokio::sync::mpsc::channel::<UploadChunk>(UPLOAD_QUEUE);
            let producer = {
                let path = path.to_owned();
                let blob_id = blob_id.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let cipher = AttachmentCipher::new(&key, size)
                        .map_err(|e| ClientError::Crypto(e.to_string()))?;
                    let mut hasher = CiphertextHasher::new(&layout);
                    let mut file = tokio::fs::File::open(&path)
                        .await
                        .map_err(io(format!("cannot read {}", path.display())))?;
                    let crash = crash_after();
                    for index in 0..layout.chunk_count() {
                        let bytes = read_chunk(&mut file, &layout, index, &path).await?;
                        let sealed = cipher
                            .seal_chunk(index, &bytes)
                            .map_err(|e| ClientError::Crypto(e.to_string()))?;
                        hasher.update(&sealed);
                        let start = layout.chunk_ciphertext_offset(index);
                        let end = start + sealed.len() as u64;
                        if end <= committed {
                            continue;
                        }
                        let skip = committed.saturating_sub(start) as usize;
                        let chunk = UploadChunk {
                            blob_id: blob_id.clone(),
                            offset: start + skip as u64,
                            data: sealed[skip..].to_vec(),
                        };
                        if tx.send(chunk).await.is_err() {
                            return Ok(None);
                        }
                        if let Some(limit) = crash
                            && end >= limit
                        {
                            // Let the queued chunks reach the server first.
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            std::process::exit(crate::client::CRASH_EXIT_CODE);
                        }
                    }
                    Ok::<_, ClientError>(Some(hasher.finalize()))
                })
            };
            let request = self
                .attachment_stream_request(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?;
            let sent = AttachmentServiceClient::new(channel.clone())
                .upload(request)
                .await;
            let produced = producer
                .await
                .map_err(|e| ClientError::Protocol(format!("upload task failed: {e}")))??;
            match sent {
                Ok(_) => {
                    hash = produced;
                    if hash.is_some() {
                        break;
                    }
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Cancelled
                            | tonic::Code::Unknown
                            | tonic::Code::FailedPrecondition
                    ) =>
                {
                    continue;
                }
                Err(s) => return Err(self.attachment_status(&s)),
            }
        }
        let Some(hash) = hash else {
            return Err(ClientError::Server(
                "the upload kept breaking; try again later".into(),
            ));
        };
        let request = self
            .attachment_request(FinalizeUploadRequest {
                blob_id: blob_id.clone(),
            })
            .await?;
        AttachmentServiceClient::new(channel)
            .finalize_upload(request)
            .await
            .map_err(|s| self.attachment_status(&s))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        Ok(AttachmentPointer {
            blob_id,
            key: key.as_bytes().to_vec(),
            key_commitment: key.commitment().to_vec(),
            ciphertext_hash: hash.to_vec(),
            size,
            mime_type: guess_mime_type(path).to_owned(),
            file_name: safe_file_name(&file_name),
            thumbnail: Vec::new(),
        })
    }

    /// Downloads, verifies and saves the attachment into `dir`, resuming a
    /// `.part` file left by an earlier try; returns where it was saved.
    pub async fn download_attachment(
        &mut self,
        pointer: &AttachmentPointer,
        dir: &Path,
    ) -> Result<PathBuf> {
        let name = safe_file_name(&pointer.file_name);
        let key = AttachmentKey::from_bytes(&pointer.key).map_err(|e| refused(&name, e))?;
        key.verify_commitment(&pointer.key_commitment)
            .map_err(|e| refused(&name, e))?;
        let cipher = AttachmentCipher::new(&key, pointer.size).map_err(|e| refused(&name, e))?;
        let layout = *cipher.layout();
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("cannot create {}", dir.display())))?;
        let part = dir.join(format!(".{}.{}.part", name, hex::encode(&pointer.blob_id)));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .await
            .map_err(io(format!("cannot write {}", part.display())))?;
        // Resume after the last whole chunk already saved; re-seal those to
        // feed the hash.
        let saved = file
            .metadata()
            .await
            .map_err(io(format!("cannot read {}", part.display())))?
            .len();
        // Chunks before `saved / 64 KiB` hold only file bytes and are complete.
        let mut next = (saved / ATTACHMENT_CHUNK_LEN as u64).min(layout.chunk_count() - 1);
        file.set_len(layout.chunk_file_offset(next).min(pointer.size))
            .await
            .map_err(io(format!("cannot write {}", part.display())))?;
        let mut hasher = CiphertextHasher::new(&layout);
        for index in 0..next {
            let bytes = read_chunk(&mut file, &layout, index, &part).await?;
            let sealed = cipher
                .seal_chunk(index, &bytes)
                .map_err(|e| refused(&name, e))?;
            hasher.update(&sealed);
        }
        file.seek(std::io::SeekFrom::Start(
            layout.chunk_file_offset(next).min(pointer.size),
        ))
        .await
        .map_err(io(format!("cannot write {}", part.display())))?;

        let crash = crash_after();
        let mut pending: Vec<u8> = Vec::with_capacity(2 * ATTACHMENT_CHUNK_LEN);
        let mut attempts = 0;
        while next < layout.chunk_count() {
            attempts += 1;
            if attempts > TRANSFER_ATTEMPTS {
                return Err(ClientError::Server(format!(
                    "the download of {name:?} kept breaking; run the command again to resume it"
                )));
            }
            pending.clear();
            let channel = self.attachment_channel().await?;
            let request = self
                .attachment_request(DownloadRequest {
                    blob_id: pointer.blob_id.clone(),
                    offset: layout.chunk_ciphertext_offset(next),
                })
                .await?;
            let mut stream = match AttachmentServiceClient::new(channel)
                .download(request)
                .await
            {
                Ok(response) => response.into_inner(),
                Err(s) if s.code() == tonic::Code::Unavailable => continue,
                Err(s) => return Err(self.attachment_status(&s)),
            };
            loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                        ) =>
                    {
                        break;
                    }
                    Err(s) => return Err(self.attachment_status(&s)),
                };
                if message.size != layout.ciphertext_len() {
                    return Err(refused(
                        &name,
                        "the server's blob does not have the size the message announced",
                    ));
                }
                pending.extend_from_slice(&message.data);
                // Open every whole chunk in `pending`, then keep the rest.
                let mut used = 0;
                while next < layout.chunk_count() {
                    let len = layout
                        .chunk_ciphertext_len(next)
                        .map_err(|e| refused(&name, e))?;
                    if pending.len() - used < len {
                        break;
                    }
                    let sealed = &pending[used..used + len];
                    let opened = cipher
                        .open_chunk(next, sealed)
                        .map_err(|e| refused(&name, e))?;
                    hasher.update(sealed);
                    used += len;
                    file.write_all(&opened)
                        .await
                        .map_err(io(format!("cannot write {}", part.display())))?;
                    next += 1;
                    if let Some(limit) = crash
                        && layout.chunk_ciphertext_offset(next) >= limit
                    {
                        let _ = file.flush().await;
                        let _ = file.sync_data().await;
                        std::process::exit(crate::client::CRASH_EXIT_CODE);
                    }
                }
                pending.drain(..used);
                if !pending.is_empty() && next == layout.chunk_count() {
                    return Err(refused(
                        &name,
                        "the server sent bytes past the end of the blob",
                    ));
                }
            }
        }
        hasher
            .verify(&pointer.ciphertext_hash)
            .map_err(|e| refused(&name, e))?;
        file.sync_all()
            .await
            .map_err(io(format!("cannot write {}", part.display())))?;
        drop(file);
        let target = free_name(dir, &name).await;
        tokio::fs::rename(&part, &target)
            .await
            .map_err(io(format!("cannot save {}", target.display())))?;
        Ok(target)
    }
}

/// `dir/name`, or `dir/name (2)`, ... if taken.
async fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if tokio::fs::metadata(&first).await.is_err() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (name.to_owned(), String::new()),
    };
    for n in 2.. {
        let candidate = dir.join(format!("{stem} ({n}){ext}"));
        if tokio::fs::metadata(&candidate).await.is_err() {
            return candidate;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("a\\b\\c.txt"), "c.txt");
        assert_eq!(safe_file_name(""), "attachment");
        assert_eq!(safe_file_name(".."), "attachment..");
        assert_eq!(safe_file_name(".bashrc"), "attachment.bashrc");
        assert_eq!(safe_file_name("x\u{1b}[31my"), "x[31my");
        assert!(safe_file_name(&"é".repeat(300)).len() <= MAX_FILE_NAME_BYTES);
        assert_eq!(guess_mime_type(Path::new("a.PNG")), "image/png");
        assert_eq!(guess_mime_type(Path::new("a")), "application/octet-stream");
    }
}
