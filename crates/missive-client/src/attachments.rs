//! Encrypted attachments on the client: seal and upload a file, download,
//! verify and save one (docs/PROTOCOL.md, "Attachments").
//!
//! Memory is bounded whatever the file size: one 64 KiB chunk is read and
//! sealed at a time, sealed chunks leave in messages of up to 256 KiB (at
//! most [`UPLOAD_QUEUE`] of them ahead of the network), and a download
//! writes each chunk as it opens, through a 1 MiB buffer. The crypto runs
//! on blocking threads (the sealing producer, the opening worker), so the
//! network and the AEAD use different cores.
//!
//! Resumption. An upload whose stream breaks asks the server for its
//! committed offset and continues there (re-sealing the earlier chunks only
//! to feed the hash: STREAM is deterministic under the key). A download
//! writes to `NAME.part`; a later download of the same pointer continues
//! after the last whole chunk in it, re-sealing the saved chunks to feed the
//! hash, and the file gets its name only once key commitment, every chunk,
//! the padding and the hash verified.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use missive_crypto::attachment::{
    ATTACHMENT_CHUNK_LEN, AttachmentCipher, AttachmentKey, CiphertextHasher, Layout, PointerBinding,
};
use missive_proto::v1::attachment_service_client::AttachmentServiceClient;
use missive_proto::v1::{
    AttachmentPointer, CreateUploadRequest, DownloadRequest, FinalizeUploadRequest,
    QueryUploadRequest, UploadChunk,
};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;
use zeroize::Zeroize as _;

use crate::client::{Client, RecvEvent};
use crate::error::{ClientError, Result};
use crate::store::HistoryEntry;

/// Upload messages (each up to 256 KiB of sealed chunks) queued ahead of the
/// upload stream.
pub const UPLOAD_QUEUE: usize = 4;
/// Download messages (each up to 1 MiB) queued ahead of the opening worker.
const DOWNLOAD_QUEUE: usize = 4;
/// Bytes a download buffers before writing them to its `.part` file.
const DOWNLOAD_WRITE_BUFFER: usize = 1024 * 1024;
/// How much of a download is written between two page-cache drops
/// ([`Receiving::drop_written_pages`]).
const DOWNLOAD_DROP_EVERY: u64 = 8 * 1024 * 1024;
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
    ClientError::Attachment(format!("the attachment {name:?} was not saved: {error}"))
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

/// Longest MIME type accepted in a pointer, bytes.
pub const MAX_MIME_TYPE_BYTES: usize = 255;
/// Longest file name accepted in a pointer, bytes (it is cut to
/// [`MAX_FILE_NAME_BYTES`] when saved).
pub const MAX_POINTER_NAME_BYTES: usize = 1024;
/// Largest thumbnail accepted in a pointer, bytes (none is shown yet).
pub const MAX_THUMBNAIL_BYTES: usize = 64 * 1024;
/// Meta key of the uploads not yet sent (sealed like every meta value).
const META_UPLOADS: &str = "attachment_uploads";
/// An unfinished upload is forgotten after this long (the server deletes
/// uploads never finalised after 24 hours).
const UPLOAD_KEEP_MS: u64 = 24 * 3600 * 1000;
/// A claim of a download by another live process is honoured this long.
const CLAIM_TTL_MS: u64 = 3600 * 1000;

/// Checks a received pointer before anything is stored: field lengths, a
/// size the format allows, and the key against its commitment.
pub fn check_pointer(p: &AttachmentPointer) -> std::result::Result<(), String> {
    if p.blob_id.len() != 16 {
        return Err("its blob id is not 16 bytes".into());
    }
    if p.key_commitment.len() != missive_crypto::attachment::ATTACHMENT_DIGEST_LEN
        || p.ciphertext_hash.len() != missive_crypto::attachment::ATTACHMENT_DIGEST_LEN
    {
        return Err("its key commitment or ciphertext hash is not 32 bytes".into());
    }
    let key = AttachmentKey::from_bytes(&p.key).map_err(|e| e.to_string())?;
    key.verify_commitment(&p.key_commitment)
        .map_err(|e| e.to_string())?;
    Layout::new(p.size).map_err(|e| e.to_string())?;
    if p.mime_type.len() > MAX_MIME_TYPE_BYTES {
        return Err(format!(
            "its MIME type is longer than {MAX_MIME_TYPE_BYTES} bytes"
        ));
    }
    if p.file_name.len() > MAX_POINTER_NAME_BYTES {
        return Err(format!(
            "its file name is longer than {MAX_POINTER_NAME_BYTES} bytes"
        ));
    }
    if p.thumbnail.len() > MAX_THUMBNAIL_BYTES {
        return Err(format!(
            "its thumbnail is larger than {MAX_THUMBNAIL_BYTES} bytes"
        ));
    }
    Ok(())
}

/// What the franking commitment binds of `p`.
pub fn binding(p: &AttachmentPointer) -> PointerBinding<'_> {
    PointerBinding {
        blob_id: &p.blob_id,
        key_commitment: &p.key_commitment,
        ciphertext_hash: &p.ciphertext_hash,
        plaintext_len: p.size,
        mime_type: &p.mime_type,
        file_name: &p.file_name,
    }
}

/// An upload begun but not yet sent in a message, kept in the encrypted
/// store (its key never reaches a plain file) so that `send --file` after a
/// killed client resumes at the server's committed offset.
#[derive(Clone, Serialize, Deserialize)]
struct PendingUpload {
    /// The file, canonical path.
    path: String,
    size: u64,
    /// Modification time, ns since the epoch: a changed file starts afresh.
    mtime_ns: u128,
    blob_id: String,
    key: String,
    created_ms: u64,
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn pending_uploads(db: &crate::store::Db<'_>) -> Result<Vec<PendingUpload>> {
    Ok(match db.get_meta(META_UPLOADS)? {
        Some(json) => serde_json::from_slice(&json).unwrap_or_default(),
        None => Vec::new(),
    })
}

fn put_pending_uploads(db: &crate::store::Db<'_>, list: &[PendingUpload]) -> Result<()> {
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(list).map_err(|e| ClientError::Attachment(e.to_string()))?,
    );
    db.set_meta(META_UPLOADS, &json)
}

/// A progress bar on standard error when `show` and it is a terminal
/// (bytes, rate, ETA); hidden otherwise.
fn progress_bar(show: bool, total: u64, start: u64, label: &str) -> ProgressBar {
    use std::io::IsTerminal as _;
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(crate::display::sanitize_line(label));
    // A resumed transfer starts where it stands; its rate counts from now.
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// Whether process `pid` is alive (Linux: /proc; elsewhere assumed alive,
/// and the claim expires after [`CLAIM_TTL_MS`]).
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.exists() || proc.join(pid.to_string()).exists()
}

/// One step of a transfer said to the caller (`Client::set_transfer_notes`).
fn note(client: &Client, line: String) {
    if client.transfer_notes() {
        eprintln!("{}", crate::display::sanitize_line(&line));
    }
}

/// Most sealed bytes in one upload message (the server takes up to 1 MiB).
const UPLOAD_MESSAGE_BYTES: usize = 256 * 1024;

/// Sends `batch` as one upload message at `offset` and empties it; false
/// once the stream is gone. Called from the blocking sealing thread.
fn flush(
    tx: &tokio::sync::mpsc::Sender<UploadChunk>,
    blob_id: &[u8],
    batch: &mut Vec<u8>,
    offset: &mut u64,
    bar: &ProgressBar,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let len = batch.len();
    let chunk = UploadChunk {
        blob_id: blob_id.to_vec(),
        offset: *offset,
        data: std::mem::replace(batch, Vec::with_capacity(UPLOAD_MESSAGE_BYTES)),
    };
    if tx.blocking_send(chunk).is_err() {
        return false;
    }
    *offset += len as u64;
    bar.inc(len as u64);
    true
}

/// The file bytes of chunk `index`. Blocking: sealing runs on a blocking
/// thread, where a read is one system call rather than a hop to one.
fn read_chunk(
    file: &mut std::fs::File,
    layout: &Layout,
    index: u64,
    path: &Path,
) -> Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let len = layout
        .file_bytes_in_chunk(index)
        .map_err(|e| ClientError::Crypto(e.to_string()))?;
    let mut buffer = vec![0u8; len];
    if len > 0 {
        file.seek(std::io::SeekFrom::Start(layout.chunk_file_offset(index)))
            .map_err(io(format!("cannot read {}", path.display())))?;
        file.read_exact(&mut buffer).map_err(io(format!(
            "{} changed while it was being sent",
            path.display()
        )))?;
    }
    Ok(buffer)
}

/// Feeds the hash with the first `chunks` chunks of `path`, re-sealed
/// (STREAM is deterministic under the key), on a blocking thread.
async fn rehash_saved_chunks(
    key: &AttachmentKey,
    size: u64,
    path: &Path,
    chunks: u64,
    name: &str,
) -> Result<CiphertextHasher> {
    let key = key.clone();
    let path = path.to_owned();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let cipher = AttachmentCipher::new(&key, size).map_err(|e| refused(&name, e))?;
        let layout = *cipher.layout();
        let mut hasher = CiphertextHasher::new(&layout);
        if chunks == 0 {
            return Ok(hasher);
        }
        let mut file =
            std::fs::File::open(&path).map_err(io(format!("cannot read {}", path.display())))?;
        for index in 0..chunks {
            let bytes = read_chunk(&mut file, &layout, index, &path)?;
            let sealed = cipher
                .seal_chunk(index, &bytes)
                .map_err(|e| refused(&name, e))?;
            hasher.update(&sealed);
        }
        Ok(hasher)
    })
    .await
    .map_err(|e| ClientError::Protocol(format!("hashing task failed: {e}")))?
}

impl Client {
    /// Seals `path` under a fresh key, uploads it (resuming after broken
    /// streams) and returns the pointer to send. An upload of the same file
    /// (same path, size and modification time) that a killed process left
    /// unfinished is resumed at the server's committed offset: its blob id
    /// and key are in the encrypted store until the message is sent
    /// ([`Client::forget_upload`]).
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
        let canonical = tokio::fs::canonicalize(path)
            .await
            .map_err(io(&what))?
            .to_string_lossy()
            .into_owned();
        let mtime = mtime_ns(&metadata);
        let shown_name = path.display().to_string();
        let channel = self.attachment_channel().await?;

        // An unfinished upload of this very file, if the server still has it.
        let now = crate::store::now_ms();
        let earlier = self.store_mut().write(|db| {
            let mut list = pending_uploads(db)?;
            let before = list.len();
            list.retain(|u| now.saturating_sub(u.created_ms) < UPLOAD_KEEP_MS);
            if list.len() != before {
                put_pending_uploads(db, &list)?;
            }
            Ok(list
                .into_iter()
                .find(|u| u.path == canonical && u.size == size && u.mtime_ns == mtime))
        })?;
        let mut resumed = None;
        if let Some(u) = earlier
            && let Ok(blob_id) = hex::decode(&u.blob_id)
            && let Ok(raw) = hex::decode(&u.key).map(zeroize::Zeroizing::new)
            && let Ok(key) = AttachmentKey::from_bytes(&raw)
        {
            let request = self
                .attachment_request(QueryUploadRequest {
                    blob_id: blob_id.clone(),
                })
                .await?;
            if let Ok(status) = AttachmentServiceClient::new(channel.clone())
                .query_upload(request)
                .await
            {
                let status = status.into_inner();
                let layout = Layout::new(size).map_err(|e| refused(&shown_name, e))?;
                if status.size == layout.ciphertext_len() {
                    note(
                        self,
                        format!(
                            "resuming the upload of {shown_name} at {} of {} bytes (the server kept them)",
                            status.committed,
                            layout.ciphertext_len()
                        ),
                    );
                    resumed = Some((blob_id, key, status.finalized));
                }
            }
        }
        let (blob_id, key, finalized) = match resumed {
            Some(r) => r,
            None => {
                let key = AttachmentKey::generate(&mut OsRng);
                let layout = Layout::new(size).map_err(|e| refused(&shown_name, e))?;
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
                let entry = PendingUpload {
                    path: canonical.clone(),
                    size,
                    mtime_ns: mtime,
                    blob_id: hex::encode(&blob_id),
                    key: hex::encode(key.as_bytes()),
                    created_ms: now,
                };
                self.store_mut().write(|db| {
                    let mut list = pending_uploads(db)?;
                    list.retain(|u| u.path != canonical);
                    list.push(entry.clone());
                    put_pending_uploads(db, &list)
                })?;
                (blob_id, key, false)
            }
        };
        let cipher = AttachmentCipher::new(&key, size).map_err(|e| refused(&shown_name, e))?;
        let layout = *cipher.layout();
        let show = self.progress();
        let bar = progress_bar(
            show,
            layout.ciphertext_len(),
            0,
            &format!("sending {shown_name}"),
        );

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
            let committed = if finalized || status.finalized {
                layout.ciphertext_len()
            } else {
                status.committed
            };
            bar.set_position(committed);
            bar.reset_eta();
            // Seal every chunk in order (to feed the hash); send the bytes at
            // and after the committed offset.
            let (tx, rx) = tokio::sync::mpsc::channel::<UploadChunk>(UPLOAD_QUEUE);
            let producer = {
                let path = path.to_owned();
                let blob_id = blob_id.clone();
                let key = key.clone();
                let bar = bar.clone();
                tokio::task::spawn_blocking(move || {
                    let cipher = AttachmentCipher::new(&key, size)
                        .map_err(|e| ClientError::Crypto(e.to_string()))?;
                    let mut hasher = CiphertextHasher::new(&layout);
                    let mut file = std::fs::File::open(&path)
                        .map_err(io(format!("cannot read {}", path.display())))?;
                    let crash = crash_after();
                    // Sealed chunks go out in messages of up to
                    // UPLOAD_MESSAGE_BYTES: fewer messages, fewer writes on
                    // the server.
                    let mut batch: Vec<u8> = Vec::with_capacity(UPLOAD_MESSAGE_BYTES);
                    let mut batch_offset = committed;
                    for index in 0..layout.chunk_count() {
                        let bytes = read_chunk(&mut file, &layout, index, &path)?;
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
                        if batch.len() + sealed.len() - skip > UPLOAD_MESSAGE_BYTES
                            && !flush(&tx, &blob_id, &mut batch, &mut batch_offset, &bar)
                        {
                            return Ok(None);
                        }
                        batch.extend_from_slice(&sealed[skip..]);
                        let last = index + 1 == layout.chunk_count();
                        let crashing = crash.is_some_and(|limit| end >= limit);
                        if (last || crashing)
                            && !flush(&tx, &blob_id, &mut batch, &mut batch_offset, &bar)
                        {
                            return Ok(None);
                        }
                        if crashing {
                            // Let the queued chunks reach the server first.
                            std::thread::sleep(std::time::Duration::from_millis(500));
                            std::process::exit(crate::client::CRASH_EXIT_CODE);
                        }
                    }
                    Ok::<_, ClientError>(Some(hasher.finalize()))
                })
            };
            let sent = if committed < layout.ciphertext_len() {
                let request = self
                    .attachment_stream_request(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?;
                AttachmentServiceClient::new(channel.clone())
                    .upload(request)
                    .await
                    .map(|_| ())
            } else {
                // Everything is on the server: only the hash is computed.
                drop(rx);
                Ok(())
            };
            let produced = producer
                .await
                .map_err(|e| ClientError::Protocol(format!("upload task failed: {e}")))??;
            match sent {
                Ok(()) => {
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
        bar.finish_and_clear();
        let Some(hash) = hash else {
            return Err(ClientError::Server(
                "the upload kept breaking; run the command again to resume it".into(),
            ));
        };
        if !finalized {
            let request = self
                .attachment_request(FinalizeUploadRequest {
                    blob_id: blob_id.clone(),
                })
                .await?;
            let done = AttachmentServiceClient::new(channel)
                .finalize_upload(request)
                .await;
            // Finalised by an earlier try whose answer was lost: fine.
            if let Err(s) = done
                && s.code() != tonic::Code::FailedPrecondition
            {
                return Err(self.attachment_status(&s));
            }
        }
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

    /// Forgets the unfinished upload of `path` (its message was sent).
    pub fn forget_upload(&mut self, path: &Path) -> Result<()> {
        let canonical = std::fs::canonicalize(path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.store_mut().write(|db| {
            let mut list = pending_uploads(db)?;
            let before = list.len();
            list.retain(|u| u.path != canonical);
            if list.len() != before {
                put_pending_uploads(db, &list)?;
            }
            Ok(())
        })
    }

    /// Uploads `path` and sends it to `recipient` with `caption` (may be
    /// empty) in one message.
    pub async fn send_file(
        &mut self,
        recipient: &str,
        path: &Path,
        caption: &str,
    ) -> Result<crate::client::Sent> {
        let recipient = crate::client::normalize_username(recipient)?;
        if recipient == self.username() {
            return Err(ClientError::SendToSelf);
        }
        let pointer = self.upload_attachment(path).await?;
        let sent = self
            .send_text_with(&recipient, caption, None, Some((&pointer, path)))
            .await?;
        self.forget_upload(path)?;
        Ok(sent)
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
        let next = (saved / ATTACHMENT_CHUNK_LEN as u64).min(layout.chunk_count() - 1);
        file.set_len(layout.chunk_file_offset(next).min(pointer.size))
            .await
            .map_err(io(format!("cannot write {}", part.display())))?;
        if next > 0 {
            note(
                self,
                format!(
                    "resuming the download of {name} at {} of {} bytes",
                    layout.chunk_ciphertext_offset(next),
                    layout.ciphertext_len()
                ),
            );
        }
        let bar = progress_bar(
            self.progress(),
            layout.ciphertext_len(),
            layout.chunk_ciphertext_offset(next),
            &format!("receiving {name}"),
        );
        let hasher = rehash_saved_chunks(&key, pointer.size, &part, next, &name).await?;
        file.seek(std::io::SeekFrom::Start(
            layout.chunk_file_offset(next).min(pointer.size),
        ))
        .await
        .map_err(io(format!("cannot write {}", part.display())))?;
        // Opening, hashing and writing run on a blocking thread, beside the
        // network on the runtime; one write per MiB.
        let mut state = Receiving {
            cipher,
            hasher,
            file: std::io::BufWriter::with_capacity(DOWNLOAD_WRITE_BUFFER, file.into_std().await),
            next,
            undropped: 0,
        };

        let crash = crash_after();
        let mut attempts = 0;
        while state.next < layout.chunk_count() {
            attempts += 1;
            if attempts > TRANSFER_ATTEMPTS {
                return Err(ClientError::Server(format!(
                    "the download of {name:?} kept breaking; run the command again to resume it"
                )));
            }
            let channel = self.attachment_channel().await?;
            let request = self
                .attachment_request(DownloadRequest {
                    blob_id: pointer.blob_id.clone(),
                    offset: layout.chunk_ciphertext_offset(state.next),
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
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(DOWNLOAD_QUEUE);
            let worker = {
                let (bar, name, part) = (bar.clone(), name.clone(), part.clone());
                tokio::task::spawn_blocking(move || {
                    let opened = state.open_stream(&mut rx, &bar, crash, &name, &part);
                    (state, opened)
                })
            };
            let received: Result<()> = loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break Ok(()),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                        ) =>
                    {
                        break Ok(());
                    }
                    Err(s) => break Err(self.attachment_status(&s)),
                };
                if message.size != layout.ciphertext_len() {
                    break Err(refused(
                        &name,
                        "the server's blob does not have the size the message announced",
                    ));
                }
                if tx.send(message.data).await.is_err() {
                    // The worker stopped: its error says why.
                    break Ok(());
                }
            };
            drop(tx);
            let (returned, opened) = worker
                .await
                .map_err(|e| ClientError::Protocol(format!("download task failed: {e}")))?;
            state = returned;
            opened?;
            received?;
        }
        bar.finish_and_clear();
        let Receiving { hasher, file, .. } = state;
        let file = file
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io(format!("cannot write {}", part.display())))?;
        let file = tokio::fs::File::from_std(file);
        if let Err(e) = hasher.verify(&pointer.ciphertext_hash) {
            // Nothing of it is kept: a later try starts from scratch.
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(refused(&name, e));
        }
        file.sync_all()
            .await
            .map_err(io(format!("cannot write {}", part.display())))?;
        drop(file);
        save_as_new(&part, dir, &name).await
    }
}

/// A download in progress: what the blocking worker of each attempt takes
/// and gives back.
struct Receiving {
    cipher: AttachmentCipher,
    hasher: CiphertextHasher,
    file: std::io::BufWriter<std::fs::File>,
    /// The next chunk to open.
    next: u64,
    /// Bytes written since the written pages were last dropped.
    undropped: u64,
}

impl Receiving {
    /// Opens, hashes and writes every whole chunk of the messages in `rx`,
    /// in order, until the stream of one attempt ends. A partial chunk left
    /// when it ends is dropped: the next attempt starts at `next`.
    fn open_stream(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
        bar: &ProgressBar,
        crash: Option<u64>,
        name: &str,
        part: &Path,
    ) -> Result<()> {
        // Bytes of a chunk split across two messages (the server sends whole
        // chunks, so normally none).
        let mut pending: Vec<u8> = Vec::new();
        while let Some(data) = rx.blocking_recv() {
            if pending.is_empty() {
                let used = self.open_whole_chunks(&data, bar, crash, name, part)?;
                pending.extend_from_slice(&data[used..]);
            } else {
                pending.extend_from_slice(&data);
                let used = self.open_whole_chunks(&pending, bar, crash, name, part)?;
                pending.drain(..used);
            }
            if !pending.is_empty() && self.next == self.cipher.layout().chunk_count() {
                return Err(refused(
                    name,
                    "the server sent bytes past the end of the blob",
                ));
            }
        }
        Ok(())
    }

    /// Opens the whole chunks at the start of `bytes`; returns how many bytes
    /// they took.
    fn open_whole_chunks(
        &mut self,
        bytes: &[u8],
        bar: &ProgressBar,
        crash: Option<u64>,
        name: &str,
        part: &Path,
    ) -> Result<usize> {
        use std::io::Write as _;
        let layout = *self.cipher.layout();
        let mut used = 0;
        while self.next < layout.chunk_count() {
            let len = layout
                .chunk_ciphertext_len(self.next)
                .map_err(|e| refused(name, e))?;
            if bytes.len() - used < len {
                break;
            }
            let sealed = &bytes[used..used + len];
            let opened = self
                .cipher
                .open_chunk(self.next, sealed)
                .map_err(|e| refused(name, e))?;
            self.hasher.update(sealed);
            bar.inc(len as u64);
            used += len;
            self.file
                .write_all(&opened)
                .map_err(io(format!("cannot write {}", part.display())))?;
            self.next += 1;
            self.undropped += opened.len() as u64;
            if self.undropped >= DOWNLOAD_DROP_EVERY {
                self.undropped = 0;
                self.drop_written_pages()
                    .map_err(io(format!("cannot write {}", part.display())))?;
            }
            if let Some(limit) = crash
                && layout.chunk_ciphertext_offset(self.next) >= limit
            {
                let _ = self.file.flush();
                let _ = self.file.get_ref().sync_data();
                std::process::exit(crate::client::CRASH_EXIT_CODE);
            }
        }
        Ok(used)
    }
}

impl Receiving {
    /// Asks the kernel to start writing back what the file holds so far and
    /// to drop its pages once clean (the previous round's by now).
    ///
    /// Nothing reads the file back until it is finished, so a big download
    /// need not fill the page cache. On this project's VM that matters for
    /// speed, not only memory: pages new to the page cache can be faulted in
    /// from the host (a 256 MiB file written plainly took 0.6–1.5 s, with the
    /// pages dropped every 8 MiB 0.29 s, fsync included; docs/BENCHMARKS.md),
    /// while dropped pages are reused at once.
    fn drop_written_pages(&mut self) -> std::io::Result<()> {
        use std::io::Write as _;
        self.file.flush()?;
        #[cfg(target_os = "linux")]
        rustix::fs::fadvise(self.file.get_ref(), 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
}

/// The outcome of saving one received attachment.
enum Saved {
    /// Saved or refused for good: the entry to show.
    Done(Box<HistoryEntry>, Option<String>),
    /// Not now (another process is saving it, or it is not pending).
    Skipped,
}

const RECORD_AT: &str = "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE seq = ?1";

impl Client {
    /// Saves received files into `dir` (`recv` does, into
    /// `HOME/attachments` unless `--save-dir`); `None` leaves them on the
    /// server for later.
    pub fn set_attachment_dir(&mut self, dir: Option<PathBuf>) {
        self.attachment_dir = dir;
    }

    /// The directory received files are saved into, if any.
    pub fn attachment_dir(&self) -> Option<&Path> {
        self.attachment_dir.as_deref()
    }

    /// Where files are saved unless told otherwise: `HOME/attachments`.
    pub fn default_attachment_dir(&self) -> PathBuf {
        self.home().join("attachments")
    }

    /// Shows progress bars (on standard error, only when it is a terminal)
    /// and says on standard error when a transfer resumes.
    pub fn set_progress(&mut self, on: bool) {
        self.progress = on;
    }

    pub(crate) fn progress(&self) -> bool {
        self.progress
    }

    pub(crate) fn transfer_notes(&self) -> bool {
        self.progress
    }

    /// Downloads, verifies and saves into `dir` the file of `contact`'s
    /// message `message_id` (hex, as the CLI and the chat take it) and
    /// returns where it is; one already saved is not fetched again. A file
    /// that failed verification stays refused (its error is returned).
    pub async fn save_attachment(
        &mut self,
        contact: &str,
        message_id: &str,
        dir: &Path,
    ) -> Result<PathBuf> {
        let contact = crate::client::normalize_username(contact)?;
        let id = hex::decode(message_id).map_err(|_| {
            ClientError::Conversation(format!("{message_id:?} is not a message id"))
        })?;
        let found = self
            .store()
            .db()
            .find_messages(&contact, &id)?
            .into_iter()
            .find(|(_, r)| !r.outgoing && r.attachment.is_some());
        let Some((seq, rec)) = found else {
            return Err(ClientError::Conversation(format!(
                "{contact} sent no file in message {message_id}"
            )));
        };
        if let Some(a) = &rec.attachment {
            if let Some(p) = &a.saved_path {
                return Ok(PathBuf::from(p));
            }
            if let Some(why) = &a.error {
                return Err(ClientError::Attachment(why.clone()));
            }
        }
        match self.save_one(seq, dir).await? {
            Saved::Done(entry, None) => entry
                .attachment
                .and_then(|a| a.saved_path)
                .ok_or_else(|| ClientError::Attachment("the file was not saved".into())),
            Saved::Done(_, Some(why)) => Err(ClientError::Attachment(why)),
            Saved::Skipped => Err(ClientError::Conversation(
                "another missive process is saving this file now; try again when it is done".into(),
            )),
        }
    }

    /// Every attachment of this account, sent and received (quarantined
    /// messages excluded), oldest first.
    pub fn attachments(&self) -> Result<Vec<HistoryEntry>> {
        let db = self.store().db();
        let mut out = Vec::new();
        for (seq, rec) in db.records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE quarantined = 0 ORDER BY seq",
            &[],
        )? {
            if rec.attachment.is_some() && !rec.conv.is_event() {
                out.push(db.entry(seq, &rec)?);
            }
        }
        Ok(out)
    }

    /// Downloads, verifies and saves every received attachment not yet
    /// saved (including those a killed process left half-way: their `.part`
    /// files are resumed), telling `sink` each message once its file is
    /// saved or refused. Two processes on one home never save one file
    /// twice: each claims a file in the store before fetching it.
    pub async fn save_pending_attachments(&mut self, sink: &mut impl FnMut(&RecvEvent)) {
        let Some(dir) = self.attachment_dir.clone() else {
            return;
        };
        let pending: Vec<i64> = match self.store().db().records(
            "SELECT seq, contact_tag, id_tag, sealed FROM messages WHERE quarantined = 0 ORDER BY seq",
            &[],
        ) {
            Ok(rows) => rows
                .into_iter()
                .filter(|(_, r)| !r.outgoing && r.attachment.as_ref().is_some_and(|a| a.pending()))
                .map(|(seq, _)| seq)
                .collect(),
            Err(e) => {
                sink(&RecvEvent::Warning(format!("cannot list received files: {e}")));
                return;
            }
        };
        for seq in pending {
            match self.save_one(seq, &dir).await {
                Ok(Saved::Done(entry, refusal)) => {
                    if let Some(why) = refusal {
                        sink(&RecvEvent::Warning(format!(
                            "the file from {} was refused and not saved: {why}",
                            entry.contact
                        )));
                    }
                    sink(&RecvEvent::Message(*entry));
                }
                Ok(Saved::Skipped) => {}
                Err(e) => sink(&RecvEvent::Warning(format!(
                    "a received file is not saved yet ({}); `missive recv` resumes it",
                    e.brief()
                ))),
            }
        }
    }

    async fn save_one(&mut self, seq: i64, dir: &Path) -> Result<Saved> {
        let me = std::process::id();
        let now = crate::store::now_ms();
        let claimed = self.store_mut().write(|db| {
            let Some((_, mut rec)) = db.records(RECORD_AT, &[&seq])?.pop() else {
                return Ok(None);
            };
            let Some(a) = rec.attachment.as_mut() else {
                return Ok(None);
            };
            if !a.pending() {
                return Ok(None);
            }
            if let Some((pid, since)) = a.claim
                && pid != me
                && alive(pid)
                && now.saturating_sub(since) < CLAIM_TTL_MS
            {
                return Ok(None);
            }
            a.claim = Some((me, now));
            let pointer = a.pointer()?;
            db.reseal_message(seq, &rec)?;
            Ok(Some(pointer))
        })?;
        let Some(pointer) = claimed else {
            return Ok(Saved::Skipped);
        };
        let result = self.download_attachment(&pointer, dir).await;
        let (saved, refusal) = match result {
            Ok(path) => (Some(path), None),
            // Verification failures and a blob the server no longer has are final.
            Err(ClientError::Attachment(why)) => (None, Some(why)),
            Err(e) => {
                // Let another try (this process or another) take it.
                self.store_mut().write(|db| {
                    if let Some((_, mut rec)) = db.records(RECORD_AT, &[&seq])?.pop()
                        && let Some(a) = rec.attachment.as_mut()
                    {
                        a.claim = None;
                        db.reseal_message(seq, &rec)?;
                    }
                    Ok(())
                })?;
                return Err(e);
            }
        };
        let entry = self.store_mut().write(|db| {
            let Some((_, mut rec)) = db.records(RECORD_AT, &[&seq])?.pop() else {
                return Ok(None);
            };
            if let Some(a) = rec.attachment.as_mut() {
                a.claim = None;
                a.saved_path = saved.as_ref().map(|p| p.to_string_lossy().into_owned());
                a.error = refusal.clone();
            }
            db.reseal_message(seq, &rec)?;
            db.entry(seq, &rec).map(Some)
        })?;
        Ok(match entry {
            Some(e) => Saved::Done(Box::new(e), refusal),
            // Deleted meanwhile (disappeared, or the contact rejected).
            None => Saved::Skipped,
        })
    }
}

/// Gives the verified `part` its name in `dir`: `name`, or `name (2)`, ...
/// Never replaces a file, even one another process creates meanwhile (a
/// hard link fails if the name exists).
async fn save_as_new(part: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    for _ in 0..1000 {
        let target = free_name(dir, name).await;
        match tokio::fs::hard_link(part, &target).await {
            Ok(()) => {
                let _ = tokio::fs::remove_file(part).await;
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                // No hard links here (some file systems): a rename that does
                // not replace what free_name just found free.
                if tokio::fs::metadata(&target).await.is_err() {
                    tokio::fs::rename(part, &target)
                        .await
                        .map_err(io(format!("cannot save {}", target.display())))?;
                    return Ok(target);
                }
                return Err(ClientError::Io {
                    what: format!("cannot save {}", target.display()),
                    source: e,
                });
            }
        }
    }
    Err(ClientError::Attachment(format!(
        "cannot find a free name for {name:?} in {}",
        dir.display()
    )))
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
