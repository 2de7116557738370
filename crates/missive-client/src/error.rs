//! The one error type of the client: every variant reads as a sentence a
//! person can act on. The CLI prints `Display` and exits non-zero; nothing in
//! here ever prints key material, tokens, ciphertext or message text.

use std::path::PathBuf;

/// Everything that can go wrong in a client operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No TCP connection could be made to the server.
    #[error(
        "cannot reach the Missive server at {url}: {detail}. Is it running? Pass --server URL (or set MISSIVE_SERVER) if it lives elsewhere."
    )]
    ServerUnreachable {
        /// The server URL tried.
        url: String,
        /// Short reason (connection refused, timed out, ...).
        detail: String,
    },
    /// The TLS handshake failed because the server certificate is not trusted.
    #[error(
        "the server at {url} presented a certificate that is not trusted ({detail}). Pass the server's CA with --ca PEM (or MISSIVE_CA); a development server writes it to DATA_DIR/ca.pem."
    )]
    CertificateNotTrusted {
        /// The server URL tried.
        url: String,
        /// Short reason from the TLS layer.
        detail: String,
    },
    /// The CA file given with `--ca` could not be read.
    #[error("cannot read the CA certificate {path}: {source}")]
    CaFile {
        /// Path given.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The server URL is malformed.
    #[error("the server address {0:?} is not a valid https:// URL")]
    BadServerUrl(String),
    /// The recipient or contact does not exist on the server.
    #[error("there is no Missive user called {0:?} on this server. Check the spelling.")]
    UnknownUser(String),
    /// This home directory has no account yet.
    #[error(
        "no account in {0}. Run `missive register USERNAME` first (or pass --home / MISSIVE_HOME to use another account)."
    )]
    NotRegistered(PathBuf),
    /// This home directory already holds an account.
    #[error(
        "{home} already holds the account {username:?}. Use another --home, or run `missive delete-account` first."
    )]
    AlreadyRegistered {
        /// Home directory.
        home: PathBuf,
        /// The account it holds.
        username: String,
    },
    /// The server refused the username.
    #[error("the username {0:?} is already taken on this server. Pick another one.")]
    UsernameTaken(String),
    /// The username is not acceptable.
    #[error(
        "{0:?} is not a valid username: use 3 to 32 characters among a-z, 0-9, '.', '_' and '-'."
    )]
    BadUsername(String),
    /// The server no longer knows this device (account deleted elsewhere, or server reset).
    #[error(
        "the server no longer accepts this account ({0}). If it was deleted, remove this home directory and register again."
    )]
    AccountRejected(String),
    /// A home made by a protocol v1 client: one key for account and device.
    #[error(
        "{0} holds an account made by an older Missive (protocol v1), which this version cannot use: its account and device share one key. Register again with another --home (your contacts will see a new identity)."
    )]
    ProtocolV1Home(PathBuf),
    /// A contact's signed device list is missing, does not verify, or goes back in time.
    #[error(
        "{username}'s device list was refused: {reason}. Nothing was sent to {username}. The server may be trying to add or hide a device."
    )]
    DeviceListRefused {
        /// The contact.
        username: String,
        /// Why, a sentence.
        reason: String,
    },
    /// A device the server offered is not on the contact's signed device list.
    #[error(
        "device {device} of {username} is not on {username}'s signed device list; nothing was encrypted to it. The server may be trying to add a device that {username} never linked."
    )]
    DeviceNotListed {
        /// The contact.
        username: String,
        /// The device id.
        device: u32,
    },
    /// A step of linking a device failed (a sentence from the link protocol).
    #[error("linking failed: {0}. Nothing was changed; run `missive link` again for a new code.")]
    Link(String),
    /// No mailbox for this code on the server.
    #[error(
        "no device is waiting with this link code: it expired, was already used, or was mistyped. Run `missive link` on the new device for a new code."
    )]
    LinkCodeUnknown,
    /// The code's mailbox already has a primary.
    #[error(
        "this link code was already used by another device; run `missive link` on the new device for a new code"
    )]
    LinkCodeUsed,
    /// The other side did not answer in time.
    #[error(
        "the other device did not answer within {0} seconds; run `missive link` on the new device again"
    )]
    LinkTimedOut(u64),
    /// Another publisher stored the next device-list version first (retried
    /// internally; said only if it keeps happening).
    #[error("another device published the account's device list at the same time; try again")]
    ListRaced,
    /// A recovery code could not restore the account.
    #[error("recovery failed: {0}. Nothing was changed.")]
    Recovery(String),
    /// Only the device holding the account key signs device lists.
    #[error(
        "only the account's primary device (the one that registered it, which holds the account key) can add or remove devices"
    )]
    NotPrimary,
    /// The primary cannot remove itself.
    #[error(
        "this is the primary device; it cannot remove itself (delete the account with `missive delete-account` instead)"
    )]
    RemoveSelf,
    /// No device with this id on the list.
    #[error("this account has no device {0}; `missive devices` lists them")]
    NoSuchDevice(u32),
    /// The list is full.
    #[error(
        "this account already has {0} devices, the most it can have; remove one first with `missive devices remove ID`"
    )]
    TooManyDevices(usize),
    /// The contact's identity key differs from the pinned one.
    #[error(
        "the identity key of {username} has changed since you last talked (they reinstalled, or someone is intercepting). Nothing was sent. Compare safety numbers with `missive safety-number {username}` in person or over a trusted channel, then accept the new key with `missive trust {username} SAFETY_NUMBER`, or discard it with `missive reject {username}`."
    )]
    IdentityChanged {
        /// The contact.
        username: String,
    },
    /// The safety number typed does not match the contact's current one.
    #[error(
        "the safety number you gave does not match {username}'s current one ({detail}). Nothing was changed. Run `missive safety-number {username}` and compare again."
    )]
    SafetyNumberMismatch {
        /// The contact.
        username: String,
        /// Why.
        detail: String,
    },
    /// Two senders used one message id.
    #[error(
        "several people sent you a message with id {id} ({senders}); say which one with --from USERNAME"
    )]
    AmbiguousMessage {
        /// The id.
        id: String,
        /// The senders, comma-separated.
        senders: String,
    },
    /// An empty (or whitespace-only) message.
    #[error("the message is empty; nothing was sent")]
    EmptyMessage,
    /// A message to this account itself.
    #[error("you cannot send a message to yourself")]
    SendToSelf,
    /// A passphrase store was asked for with an empty passphrase.
    #[error(
        "the passphrase is empty; choose one, or unset MISSIVE_PASSPHRASE to keep the key in a file"
    )]
    EmptyPassphrase,
    /// A passphrase was given for a store that uses a key file.
    #[error(
        "the account in {0} is not protected by a passphrase (its key is in storage.key); unset MISSIVE_PASSPHRASE"
    )]
    NoPassphraseHere(PathBuf),
    /// No contact by that name in the local store.
    #[error(
        "{0:?} is an unknown contact: you have no conversation with them yet. Send them a message first with `missive send {0} TEXT`."
    )]
    UnknownContact(String),
    /// No message with that id in the local history.
    #[error(
        "no received message with id {0} in your history. `missive history USERNAME --json` lists ids."
    )]
    UnknownMessage(String),
    /// The message is too long.
    #[error("the message is {0} bytes long; the limit is {max} bytes.", max = crate::limits::MAX_TEXT_BYTES)]
    MessageTooLong(usize),
    /// The text read from stdin is not UTF-8.
    #[error("the message text is not valid UTF-8")]
    NotUtf8,
    /// The local store could not be opened or written.
    #[error("the local store in {path} could not be used: {detail}")]
    Store {
        /// Database path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Local secret material failed to decrypt.
    #[error(
        "cannot decrypt the local store: wrong MISSIVE_PASSPHRASE, or the key file {0} does not belong to this store"
    )]
    WrongKey(PathBuf),
    /// The store is protected by a passphrase that was not given.
    #[error("the account in {0} is protected by a passphrase: set MISSIVE_PASSPHRASE")]
    PassphraseRequired(PathBuf),
    /// An I/O error on a local file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The server answered with a status we can only pass on.
    #[error("the server refused the request: {0}")]
    Server(String),
    /// The server is rate limiting us.
    #[error("the server is busy or limiting requests ({0}). Try again in a moment.")]
    RateLimited(String),
    /// A server answer broke the protocol (malformed keys, bad signature, ...).
    #[error("the server sent something invalid: {0}")]
    Protocol(String),
    /// A cryptographic operation failed locally.
    #[error("a cryptographic operation failed: {0}")]
    Crypto(String),
    /// An established connection broke mid-request (HTTP/2 or transport
    /// error): nothing refused anything.
    #[error(
        "the connection to the Missive server at {url} broke during the request ({detail}). Try again; if it keeps happening, check the network and the server."
    )]
    ConnectionLost {
        /// The server URL.
        url: String,
        /// Short reason.
        detail: String,
    },
    /// The server said it is shutting down (a restart, usually).
    #[error(
        "the Missive server at {url} is shutting down (restarting, usually). Try again in a moment."
    )]
    ServerShuttingDown {
        /// The server URL.
        url: String,
    },
    /// A destructive command was not confirmed.
    #[error("{0}")]
    ConfirmationRequired(String),
    /// The store file exists but is empty (truncated or half-copied).
    #[error(
        "the local store {0} is empty (0 bytes): it was truncated or not copied completely. Restore it from a backup; it is left as it is so nothing is overwritten."
    )]
    EmptyStore(PathBuf),
    /// This message was already reported from this account.
    #[error("you already reported the message {0}; it is not sent twice")]
    AlreadyReported(String),
    /// The terminal UI could not run.
    #[error("the terminal chat could not run: {0}")]
    Terminal(String),
    /// A conversation action (reply, reaction, edit, unsend, timer) that
    /// cannot be done; the sentence says why.
    #[error("{0}")]
    Conversation(String),
    /// A group action that cannot be done, or a group message refused; the
    /// sentence says which and why.
    #[error("{0}")]
    Group(String),
    /// An attachment that cannot be sent or saved; the sentence says which
    /// file and why (a wrong key, a tampered or truncated chunk, a blob that
    /// does not match its hash, a quota).
    #[error("{0}")]
    Attachment(String),
}

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// Wraps a rusqlite error for the database at `path`.
    pub(crate) fn store(path: &std::path::Path, err: impl std::fmt::Display) -> Self {
        Self::Store {
            path: path.to_path_buf(),
            detail: err.to_string(),
        }
    }

    /// A short clause for this error, to be embedded in a longer sentence
    /// ("connection lost (…); reconnecting").
    pub fn brief(&self) -> String {
        match self {
            Self::ServerUnreachable { detail, .. } | Self::ConnectionLost { detail, .. } => {
                detail.clone()
            }
            Self::ServerShuttingDown { .. } => "the server is shutting down".to_owned(),
            other => other.to_string(),
        }
    }

    /// Wraps an I/O error.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// Maps a gRPC status that no call-specific handling claimed.
    pub(crate) fn from_status(status: &tonic::Status, url: &str) -> Self {
        use tonic::Code;
        let msg = crate::display::sanitize_line(status.message());
        match status.code() {
            Code::Unavailable if msg.to_ascii_lowercase().contains("shutting down") => {
                Self::ServerShuttingDown {
                    url: url.to_owned(),
                }
            }
            Code::Unknown | Code::Internal | Code::Cancelled if is_transport_text(&msg) => {
                Self::ConnectionLost {
                    url: url.to_owned(),
                    detail: short_reason(&msg),
                }
            }
            Code::Unavailable => {
                let detail = if msg.is_empty() {
                    "unavailable".to_owned()
                } else {
                    msg
                };
                classify_transport_text(url, &detail)
            }
            Code::Unauthenticated => Self::AccountRejected(msg),
            Code::ResourceExhausted => Self::RateLimited(msg),
            Code::DeadlineExceeded => Self::ServerUnreachable {
                url: url.to_owned(),
                detail: "the request timed out".to_owned(),
            },
            _ => Self::Server(if msg.is_empty() {
                format!("{:?}", status.code())
            } else {
                msg
            }),
        }
    }
}

/// Whether a status message describes a broken connection (tonic reports
/// these as `Unknown`/`Internal`/`Cancelled` with the HTTP/2 or hyper text)
/// rather than an answer of the server.
fn is_transport_text(msg: &str) -> bool {
    let lower = msg.to_ascii_lowercase();
    [
        "h2 protocol error",
        "transport error",
        "connection reset",
        "broken pipe",
        "connection closed",
        "error reading a body",
        "operation was canceled",
        "stream no longer needed",
        "unexpected eof",
    ]
    .iter()
    .any(|t| lower.contains(t))
}

/// Turns a transport-level failure description into the right variant.
pub(crate) fn classify_transport_text(url: &str, detail: &str) -> ClientError {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("invalid peer")
        || lower.contains("notvalidforname")
        || lower.contains("tls")
    {
        ClientError::CertificateNotTrusted {
            url: url.to_owned(),
            detail: short_reason(detail),
        }
    } else {
        ClientError::ServerUnreachable {
            url: url.to_owned(),
            detail: short_reason(detail),
        }
    }
}

/// The innermost, most specific part of an error description, kept short.
fn short_reason(detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("connection refused") {
        return "connection refused".to_owned();
    }
    if lower.contains("unknownissuer") {
        return "unknown issuer".to_owned();
    }
    if lower.contains("timed out") {
        return "timed out".to_owned();
    }
    if lower.contains("connection reset") {
        return "connection reset".to_owned();
    }
    let mut s: String =
        crate::display::sanitize_line(&detail.chars().take(200).collect::<String>());
    if s.is_empty() {
        s = "unknown error".to_owned();
    }
    s
}

/// Describes an error together with its source chain, for classification.
pub(crate) fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    const URL: &str = "https://127.0.0.1:7443";

    fn said(code: Code, msg: &str) -> String {
        ClientError::from_status(&Status::new(code, msg), URL).to_string()
    }

    #[test]
    fn transport_failures_are_not_refusals() {
        for (code, msg) in [
            (
                Code::Unknown,
                "h2 protocol error: error reading a body from connection",
            ),
            (Code::Unknown, "transport error"),
            (Code::Internal, "h2 protocol error: stream no longer needed"),
            (Code::Cancelled, "operation was canceled: connection closed"),
        ] {
            let s = said(code, msg);
            assert!(!s.contains("refused"), "{msg}: {s}");
            assert!(s.contains("broke during the request"), "{msg}: {s}");
            assert!(s.contains(URL), "{s}");
        }
    }

    #[test]
    fn shutting_down_is_said_as_such() {
        let s = said(
            Code::Unavailable,
            "the server is shutting down; reconnect shortly",
        );
        assert!(s.contains("is shutting down"), "{s}");
        assert!(!s.contains("Is it running?"), "{s}");
        assert!(!s.contains("cannot reach"), "{s}");
    }

    #[test]
    fn real_refusals_stay_refusals() {
        let s = said(Code::InvalidArgument, "message too large");
        assert!(
            s.contains("refused") && s.contains("message too large"),
            "{s}"
        );
    }
}
