//! `missive`: the Missive command-line client.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use missive_client::client::{RecvEvent, rfc3339};
use missive_client::conversation::{
    ConversationEvent, ConversationItem, OwnDeviceChange, Quoted, ReceiptState, format_timer,
    parse_timer,
};
use missive_client::display::{human_size, json_inert, sanitize_line, sanitize_text};
use missive_client::store::{AttachmentInfo, HistoryEntry, HistoryGroup};
use missive_client::{Client, ClientError, ServerConfig};

/// Writes a line to standard output. A closed pipe (`missive ... | head -1`)
/// ends the command quietly instead of panicking; any other write failure
/// is one sentence and a non-zero exit.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(&e);
        }
    }};
}

fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // The reader has what it wanted; whatever we did is committed.
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// Missive: end-to-end encrypted messaging from the terminal.
#[derive(Parser, Debug)]
#[command(
    name = "missive",
    version,
    about = "Missive: end-to-end encrypted messaging from the terminal."
)]
struct Cli {
    /// Directory holding this account's keys and history (0700).
    /// Default: the platform data directory, e.g. ~/.local/share/missive.
    #[arg(long, env = "MISSIVE_HOME", global = true)]
    home: Option<PathBuf>,
    /// Server URL.
    #[arg(
        long,
        env = "MISSIVE_SERVER",
        default_value = "https://127.0.0.1:7443",
        global = true
    )]
    server: String,
    /// PEM file of the CA that signed the server certificate. Remembered at
    /// `register` (in HOME/ca.pem); default: that file, else the system roots.
    #[arg(long, env = "MISSIVE_CA", global = true)]
    ca: Option<PathBuf>,
    /// Colour in `history` and `recv` output: auto (on a terminal), always
    /// or never. NO_COLOR set to anything non-empty turns colour off whatever
    /// this says.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum GroupAction {
    /// Create the group NAME with MEMBERs (usernames) and your other devices.
    Create {
        /// The group's name, shown to every member (1 to 64 bytes).
        name: String,
        /// Usernames to add.
        members: Vec<String>,
    },
    /// Add MEMBER (every device of the account) to the group NAME.
    Add {
        /// The group.
        name: String,
        /// Username.
        member: String,
    },
    /// Remove MEMBER (every device of the account) from the group NAME.
    Remove {
        /// The group.
        name: String,
        /// Username.
        member: String,
    },
    /// Leave the group NAME with this device.
    Leave {
        /// The group.
        name: String,
    },
    /// List your groups: name, members, state.
    List {
        /// One JSON object per line (`name`, `id`, `members`, `status`).
        #[arg(long)]
        json: bool,
    },
    /// The members of the group NAME, their devices and verification state.
    Info {
        /// The group.
        name: String,
        /// One JSON object per member (`username`, `devices`, `verification`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesAction {
    /// Link the new device showing CODE (from `missive link`) to this
    /// account: publishes a new signed device list naming it and gives it
    /// your contacts, end-to-end encrypted. Only on the primary device.
    Add {
        /// The code `missive link` printed (dashes and case do not matter).
        code: String,
        /// How long to wait for the new device's answer, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        wait: u64,
    },
    /// Unlink device ID: publishes a signed device list without it; the
    /// server then refuses it and deletes what was waiting for it.
    Remove {
        /// Device id, as `missive devices` lists it.
        id: u32,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an identity and prekeys locally and register USERNAME.
    Register {
        /// 3 to 32 characters among a-z, 0-9, '.', '_' and '-'.
        username: String,
    },
    /// Send TEXT to USERNAME ("-" reads the text from standard input), or
    /// a file with --file (TEXT is then its optional caption).
    Send {
        /// Recipient (not with --group, where the first argument is TEXT).
        username: String,
        /// Message text, or "-" for standard input; with --file, the caption.
        #[arg(required_unless_present_any = ["file", "group"])]
        text: Option<String>,
        /// Send TEXT to this group instead (`missive send --group NAME TEXT`).
        #[arg(long, value_name = "NAME", conflicts_with = "file")]
        group: Option<String>,
        /// Send this file, end-to-end encrypted (any size; an interrupted
        /// upload resumes when the same command is run again).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Receive, decrypt, store and acknowledge pending messages.
    Recv {
        /// One JSON object per line: id, from, text, sent_at and server_time
        /// (the server's time, which franking binds), sender_clock (the
        /// sender's claim, clamped), quarantined.
        #[arg(long)]
        json: bool,
        /// Keep listening for new messages up to SECS seconds.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Also print delivery and read receipts of your messages as they
        /// arrive (`history` always shows each message's receipt state).
        /// Reactions, edits, deletions, timer changes and typing are always
        /// printed.
        #[arg(long)]
        receipts: bool,
        /// Save received files here (default: HOME/attachments). A file is
        /// saved, and its message shown, only once verified; an existing file
        /// is never replaced.
        #[arg(long, value_name = "DIR")]
        save_dir: Option<PathBuf>,
    },
    /// List the files sent and received: name, size, who, where saved.
    Attachments {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The terminal messenger: the conversation list, or USERNAME's
    /// conversation, or a group's (`--group NAME`).
    Chat {
        /// Open the conversation with this contact (else the list).
        #[arg(conflicts_with = "group")]
        username: Option<String>,
        /// Open this group's conversation.
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// Ring the terminal bell when a message arrives in another conversation.
        #[arg(long)]
        bell: bool,
    },
    /// Group conversations (MLS, RFC 9420): create, add, remove, leave,
    /// list, info. Send with `send --group NAME TEXT`, read with `recv` and
    /// `history --group NAME`.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// List contacts with their verification state.
    Contacts,
    /// List this account's devices, from its signed device list (checked
    /// against the account key): id, name, key fingerprint. `devices add
    /// CODE` links a new device, `devices remove ID` unlinks one.
    Devices {
        /// One JSON object per line (`id`, `name`, `current`, `fingerprint`,
        /// `linked_on` and `last_seen`: the day it joined and the last day it
        /// was online, as the server recorded them).
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },
    /// On a new device (with its own --home), when the primary is lost:
    /// restore USERNAME's account key from the recovery code printed at
    /// registration (read from standard input) and join the account as a
    /// new primary.
    Recover {
        /// The account's username.
        username: String,
    },
    /// On a new device (with its own --home): show a link code and QR code,
    /// and wait for the account's primary to run `missive devices add CODE`.
    Link {
        /// How long to wait for the primary, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        wait: u64,
    },
    /// Show the conversation with USERNAME, or a group's with --group.
    History {
        /// Contact.
        #[arg(required_unless_present = "group")]
        username: Option<String>,
        /// Show this group's conversation instead.
        #[arg(long, value_name = "NAME", conflicts_with = "username")]
        group: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the safety number with USERNAME (12 groups of 5 digits and a QR code).
    SafetyNumber {
        /// Contact.
        username: String,
    },
    /// Mark USERNAME verified: give the safety number you compared.
    Verify {
        /// Contact.
        username: String,
        /// The 60 digits you compared (spaces allowed), as printed by `safety-number`.
        #[arg(required = true, num_args = 1.., value_name = "SAFETY_NUMBER")]
        safety_number: Vec<String>,
    },
    /// Accept USERNAME's changed identity key: give its safety number.
    Trust {
        /// Contact.
        username: String,
        /// The 60 digits of the new key's safety number (spaces allowed).
        #[arg(required = true, num_args = 1.., value_name = "SAFETY_NUMBER")]
        safety_number: Vec<String>,
    },
    /// Discard USERNAME's changed identity key and the messages it sent.
    Reject {
        /// Contact.
        username: String,
    },
    /// Delete this account on the server and its local data.
    DeleteAccount {
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Report a received message to the server's moderators, with proof it was sent.
    Report {
        /// Message id (hex, from `recv --json` or `history --json`).
        message_id: String,
        /// The sender, when two people sent messages with this id.
        #[arg(long, value_name = "USERNAME")]
        from: Option<String>,
        /// Why you report it.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reply to a message of the conversation with USERNAME, quoting it.
    Reply {
        /// Contact.
        username: String,
        /// Id of the message replied to (hex, or its first 4+ digits).
        message_id: String,
        /// Reply text, or "-" for standard input.
        text: String,
    },
    /// React to a message with one emoji (again to change it; --remove to take it back).
    React {
        /// Contact.
        username: String,
        /// Id of the message (hex, or its first 4+ digits).
        message_id: String,
        /// One emoji, such as 👍.
        #[arg(required_unless_present = "remove")]
        emoji: Option<String>,
        /// Remove your reaction instead.
        #[arg(long, conflicts_with = "emoji")]
        remove: bool,
    },
    /// Change the text of one of your messages (within 24 hours); it shows as edited.
    Edit {
        /// Contact.
        username: String,
        /// Id of your message (hex, or its first 4+ digits).
        message_id: String,
        /// New text, or "-" for standard input.
        text: String,
    },
    /// Delete one of your messages for everyone (within 24 hours).
    Unsend {
        /// Contact.
        username: String,
        /// Id of your message (hex, or its first 4+ digits).
        message_id: String,
    },
    /// Set the disappearing-message timer of the conversation with USERNAME.
    Timer {
        /// Contact.
        username: String,
        /// `off`, or how long messages last: 30s, 5m, 1h, 1d (1 s or more).
        #[arg(value_name = "DURATION|off")]
        duration: String,
    },
    /// Show or change this account's settings.
    Settings {
        #[command(subcommand)]
        setting: Option<Setting>,
    },
    /// Tell USERNAME you started or stopped typing (for scripts; the chat does it itself).
    #[command(hide = true)]
    Typing {
        /// Contact.
        username: String,
        /// Started or stopped.
        state: TypingState,
    },
    /// Print a shell completion script (e.g. `missive completions bash > /etc/bash_completion.d/missive`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `missive man | man -l -`).
    Man,
}

#[derive(Subcommand, Debug)]
enum Setting {
    /// Send read receipts (and see others'), as in Signal: on or off.
    ReadReceipts {
        /// on or off.
        state: OnOff,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TypingState {
    Start,
    Stop,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Whether to colour stdout: NO_COLOR (non-empty) always wins
/// (https://no-color.org).
fn use_color(choice: ColorChoice) -> bool {
    use std::io::IsTerminal as _;
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal(),
    }
}

/// How to print conversation output.
#[derive(Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
}

fn read_text_arg(text: String) -> Result<String, ClientError> {
    if text != "-" {
        return Ok(text);
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| ClientError::Io {
            what: "cannot read the message from standard input".into(),
            source: e,
        })?;
    let s = String::from_utf8(buf).map_err(|_| ClientError::NotUtf8)?;
    Ok(s.strip_suffix('\n').map(str::to_owned).unwrap_or(s))
}

/// A secret typed at a prompt without echo on a terminal, else the first
/// line of standard input.
fn read_secret_line(prompt: &str) -> Result<zeroize::Zeroizing<String>, ClientError> {
    use std::io::{BufRead as _, IsTerminal as _};
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| ClientError::Io {
                what: "cannot read from the terminal".into(),
                source: e,
            });
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| ClientError::Io {
            what: "cannot read from standard input".into(),
            source: e,
        })?;
    Ok(line)
}

fn short_id(id: &[u8]) -> String {
    hex::encode(id.get(..4).unwrap_or(id))
}

fn quoted_json(q: &Quoted) -> serde_json::Value {
    serde_json::json!({
        "id": hex::encode(&q.message_id),
        "from": q.author,
        "text": q.text,
    })
}

/// One conversation item as a JSON object: a message (with `reply_to`,
/// `reactions`, `edited`, `edit_history`, `unsent`, `receipt`,
/// `disappears_after_secs`, `expires_at`) or a timer event.
fn item_json(item: &ConversationItem, me: &str) -> serde_json::Value {
    let m = &item.entry;
    let from = if m.outgoing { me } else { m.contact.as_str() };
    if let Some(secs) = item.timer_change {
        return serde_json::json!({
            "event": "timer",
            "id": hex::encode(&m.message_id),
            "from": from,
            "disappears_after_secs": secs,
            "disappears_after": format_timer(secs),
            "server_time": rfc3339(m.server_ts_ms),
        });
    }
    let mut v = message_json(m, me);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "reply_to".into(),
            item.reply_to
                .as_ref()
                .map_or(serde_json::Value::Null, quoted_json),
        );
        o.insert(
            "reactions".into(),
            item.reactions
                .iter()
                .map(|(by, e)| serde_json::json!({"from": by, "emoji": e}))
                .collect(),
        );
        o.insert("edited".into(), (!item.edit_history.is_empty()).into());
        o.insert(
            "edit_history".into(),
            item.edit_history
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "id": hex::encode(&e.message_id),
                        "text": e.text,
                        "server_time": rfc3339(e.server_ts_ms),
                    })
                })
                .collect(),
        );
        o.insert("unsent".into(), item.unsent.into());
        o.insert(
            "receipt".into(),
            item.receipt
                .map_or(serde_json::Value::Null, |r| r.as_str().into()),
        );
        if !m.outgoing {
            o.insert("read".into(), item.read.into());
        }
        o.insert(
            "disappears_after_secs".into(),
            item.expire_after_secs.into(),
        );
        o.insert(
            "expires_at".into(),
            item.expires_at_ms
                .map_or(serde_json::Value::Null, |t| rfc3339(t).into()),
        );
    }
    v
}

fn print_item(item: &ConversationItem, me: &str, json: bool, style: Style) {
    if json {
        out!("{}", json_inert(&item_json(item, me).to_string()));
        return;
    }
    let m = &item.entry;
    let who = sanitize_line(&shown_from(m, me));
    if let Some(secs) = item.timer_change {
        let what = if secs == 0 {
            "turned disappearing messages off".to_owned()
        } else {
            format!("set disappearing messages to {}", format_timer(secs))
        };
        out!(
            "[{}] {}",
            rfc3339(m.server_ts_ms),
            style.paint("2", &format!("* {who} {what}"))
        );
        return;
    }
    let text = if item.unsent {
        style.paint("2", "(deleted for everyone)")
    } else {
        sanitize_text(&m.text, "    | ")
    };
    let mut tags = Vec::new();
    if !item.edit_history.is_empty() {
        tags.push("edited".to_owned());
    }
    if let Some(r) = item.receipt {
        tags.push(r.as_str().to_owned());
    }
    if item.expire_after_secs > 0 {
        tags.push(format!(
            "disappears after {}",
            format_timer(item.expire_after_secs)
        ));
    }
    let tags = if tags.is_empty() {
        String::new()
    } else {
        format!(" {}", style.paint("2", &format!("[{}]", tags.join(", "))))
    };
    out!(
        "[{}] {}: {text}{tags}",
        rfc3339(m.server_ts_ms),
        style.paint("1", &who)
    );
    if let Some(a) = &m.attachment {
        out!("{}", attachment_line(a, m.outgoing, style));
    }
    print_item_details(
        item.reply_to.as_ref(),
        &item.reactions,
        &m.message_id,
        style,
    );
}

fn print_item_details(
    reply_to: Option<&Quoted>,
    reactions: &[(String, String)],
    id: &[u8],
    style: Style,
) {
    if let Some(q) = reply_to {
        let quoted =
            q.text
                .as_deref()
                .map_or("(a message this device does not have)".to_owned(), |t| {
                    let first: String = t.chars().take(80).collect();
                    sanitize_line(&first)
                });
        out!(
            "    {} {}: {quoted}",
            style.paint("2", "> replying to"),
            sanitize_line(&q.author)
        );
    }
    if !reactions.is_empty() {
        let list: Vec<String> = reactions
            .iter()
            .map(|(by, e)| format!("{} {}", sanitize_line(by), sanitize_line(e)))
            .collect();
        out!("    reactions: {}", list.join(", "));
    }
    let _ = id;
}

/// Extras of received messages, said by the conversation hook before the
/// message itself is printed.
type Details =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, (Option<Quoted>, u64)>>>;

fn event_json(ev: &ConversationEvent) -> Option<serde_json::Value> {
    let hexes = |ids: &[Vec<u8>]| ids.iter().map(hex::encode).collect::<Vec<_>>();
    Some(match ev {
        ConversationEvent::Receipt {
            from,
            state,
            message_ids,
        } => {
            serde_json::json!({"event": "receipt", "from": from, "state": state.as_str(), "ids": hexes(message_ids)})
        }
        ConversationEvent::Typing { from, started } => {
            serde_json::json!({"event": "typing", "from": from, "started": started})
        }
        ConversationEvent::Reaction {
            from,
            target,
            emoji,
        } => {
            serde_json::json!({"event": "reaction", "from": from, "target": hex::encode(target), "emoji": emoji})
        }
        ConversationEvent::Edited { from, target, text } => {
            serde_json::json!({"event": "edit", "from": from, "target": hex::encode(target), "text": text})
        }
        ConversationEvent::Unsent { from, target } => {
            serde_json::json!({"event": "unsend", "from": from, "target": hex::encode(target)})
        }
        ConversationEvent::TimerChanged {
            from,
            expire_after_secs,
        } => {
            serde_json::json!({"event": "timer", "from": from, "disappears_after_secs": expire_after_secs, "disappears_after": format_timer(*expire_after_secs)})
        }
        ConversationEvent::Expired {
            contact,
            message_ids,
        } => serde_json::json!({"event": "expired", "contact": contact, "ids": hexes(message_ids)}),
        ConversationEvent::FromOwnDevice { contact, change } => {
            let mut v = match change {
                OwnDeviceChange::Reaction { target, emoji } => {
                    serde_json::json!({"event": "reaction", "target": hex::encode(target), "emoji": emoji})
                }
                OwnDeviceChange::Edited { target, text } => {
                    serde_json::json!({"event": "edit", "target": hex::encode(target), "text": text})
                }
                OwnDeviceChange::Unsent { target } => {
                    serde_json::json!({"event": "unsend", "target": hex::encode(target)})
                }
                OwnDeviceChange::TimerChanged { expire_after_secs } => {
                    serde_json::json!({"event": "timer", "disappears_after_secs": expire_after_secs, "disappears_after": format_timer(*expire_after_secs)})
                }
                OwnDeviceChange::Read { message_ids } => {
                    serde_json::json!({"event": "read", "ids": hexes(message_ids)})
                }
            };
            if let Some(o) = v.as_object_mut() {
                o.insert("own_device".into(), true.into());
                o.insert("contact".into(), contact.as_str().into());
            }
            v
        }
        ConversationEvent::MessageDetails { .. } => return None,
    })
}

fn print_conversation_event(ev: &ConversationEvent, json: bool, style: Style, details: &Details) {
    if let ConversationEvent::MessageDetails {
        message_id,
        reply_to,
        expire_after_secs,
        ..
    } = ev
    {
        if let Ok(mut d) = details.lock() {
            d.insert(message_id.clone(), (reply_to.clone(), *expire_after_secs));
        }
        return;
    }
    if json {
        if let Some(v) = event_json(ev) {
            out!("{}", json_inert(&v.to_string()));
        }
        return;
    }
    let line = match ev {
        ConversationEvent::Receipt {
            from,
            state,
            message_ids,
        } => {
            let ids: Vec<String> = message_ids.iter().map(|i| short_id(i)).collect();
            let what = if *state == ReceiptState::Read {
                "read"
            } else {
                "received"
            };
            format!(
                "{} {what} your message {}",
                sanitize_line(from),
                ids.join(", ")
            )
        }
        ConversationEvent::Typing { from, started } => format!(
            "{} {} typing",
            sanitize_line(from),
            if *started { "is" } else { "stopped" }
        ),
        ConversationEvent::Reaction {
            from,
            target,
            emoji: Some(e),
        } => format!(
            "{} reacted {} to message {}",
            sanitize_line(from),
            sanitize_line(e),
            short_id(target)
        ),
        ConversationEvent::Reaction {
            from,
            target,
            emoji: None,
        } => format!(
            "{} removed their reaction to message {}",
            sanitize_line(from),
            short_id(target)
        ),
        ConversationEvent::Edited { from, target, text } => format!(
            "{} edited message {}: {}",
            sanitize_line(from),
            short_id(target),
            sanitize_text(text, "    | ")
        ),
        ConversationEvent::Unsent { from, target } => format!(
            "{} deleted message {} for everyone",
            sanitize_line(from),
            short_id(target)
        ),
        ConversationEvent::TimerChanged {
            from,
            expire_after_secs: 0,
        } => format!("{} turned disappearing messages off", sanitize_line(from)),
        ConversationEvent::TimerChanged {
            from,
            expire_after_secs,
        } => format!(
            "{} set disappearing messages to {}",
            sanitize_line(from),
            format_timer(*expire_after_secs)
        ),
        ConversationEvent::Expired {
            contact,
            message_ids,
        } => format!(
            "{} disappearing message(s) with {} reached their time and were deleted",
            message_ids.len(),
            sanitize_line(contact)
        ),
        ConversationEvent::FromOwnDevice { contact, change } => {
            let contact = sanitize_line(contact);
            let what = match change {
                OwnDeviceChange::Reaction {
                    target,
                    emoji: Some(e),
                } => format!(
                    "reacted {} to message {}",
                    sanitize_line(e),
                    short_id(target)
                ),
                OwnDeviceChange::Reaction {
                    target,
                    emoji: None,
                } => format!("removed your reaction to message {}", short_id(target)),
                OwnDeviceChange::Edited { target, text } => format!(
                    "edited message {}: {}",
                    short_id(target),
                    sanitize_text(text, "    | ")
                ),
                OwnDeviceChange::Unsent { target } => {
                    format!("deleted message {} for everyone", short_id(target))
                }
                OwnDeviceChange::TimerChanged {
                    expire_after_secs: 0,
                } => "turned disappearing messages off".to_owned(),
                OwnDeviceChange::TimerChanged { expire_after_secs } => format!(
                    "set disappearing messages to {}",
                    format_timer(*expire_after_secs)
                ),
                OwnDeviceChange::Read { message_ids } => {
                    format!("read {} message(s)", message_ids.len())
                }
            };
            format!("your other device {what} in the conversation with {contact}")
        }
        ConversationEvent::MessageDetails { .. } => return,
    };
    out!("{}", style.paint("2", &format!("* {line}")));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Error sentences can quote server text: never raw to the terminal.
            eprintln!("error: {}", sanitize_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn home_dir(cli: &Cli) -> Result<PathBuf, ClientError> {
    if let Some(h) = &cli.home {
        return Ok(h.clone());
    }
    directories::ProjectDirs::from("", "", "missive")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| ClientError::Io {
            what: "cannot find a data directory; pass --home DIR".into(),
            source: std::io::Error::other("no home directory"),
        })
}

/// Who a history line is from, as shown.
fn shown_from(m: &HistoryEntry, me: &str) -> String {
    if m.outgoing {
        me.to_owned()
    } else if m.quarantined {
        format!("an unverified new key of {}", m.contact)
    } else {
        m.contact.clone()
    }
}

fn message_json(m: &HistoryEntry, me: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": hex::encode(&m.message_id),
        "from": if m.outgoing { me } else { m.contact.as_str() },
        "outgoing": m.outgoing,
        // The conversation: the recipient of what we sent, or ourselves.
        "to": if m.outgoing { m.contact.as_str() } else { me },
        "text": m.text,
        // The time shown is the server's: its franking tag binds it, so a
        // report proves it. The sender's own clock is only a claim.
        "sent_at": rfc3339(m.server_ts_ms),
        "server_time": rfc3339(m.server_ts_ms),
        "sender_clock": rfc3339(m.sender_clock_ms),
        "sender_clock_clamped": m.sender_clock_clamped,
        "quarantined": m.quarantined,
    });
    if let (Some(a), Some(o)) = (&m.attachment, v.as_object_mut()) {
        o.insert(
            "file".into(),
            a.saved_path.as_ref().map_or(serde_json::Value::Null, |p| {
                p.to_string_lossy().into_owned().into()
            }),
        );
        o.insert("file_name".into(), a.file_name.clone().into());
        o.insert("size".into(), a.size.into());
        o.insert("mime_type".into(), a.mime_type.clone().into());
        o.insert(
            "file_error".into(),
            a.error
                .clone()
                .map_or(serde_json::Value::Null, serde_json::Value::from),
        );
    }
    v
}

/// The line under a message that carries a file.
fn attachment_line(a: &AttachmentInfo, outgoing: bool, style: Style) -> String {
    let name = sanitize_line(&a.file_name);
    let size = human_size(a.size);
    let state = match (&a.saved_path, &a.error) {
        (Some(p), _) if outgoing => {
            format!("sent from {}", sanitize_line(&p.display().to_string()))
        }
        (Some(p), _) => format!("saved to {}", sanitize_line(&p.display().to_string())),
        (None, Some(e)) => format!("REFUSED, not saved: {}", sanitize_line(e)),
        (None, None) => "not saved yet (`missive recv` saves it)".to_owned(),
    };
    format!(
        "    {} {name} ({size}), {state}",
        style.paint("2", "[file]")
    )
}

/// A message or event of a group conversation.
fn print_group_message(m: &HistoryEntry, group: &HistoryGroup, me: &str, json: bool) {
    let from = if m.outgoing { me } else { m.contact.as_str() };
    if json {
        let v = serde_json::json!({
            "group": group.name,
            "group_id": group.id,
            "id": hex::encode(&m.message_id),
            "from": from,
            "outgoing": m.outgoing,
            "event": group.event,
            "text": m.text,
            "sent_at": rfc3339(m.server_ts_ms),
            "server_time": rfc3339(m.server_ts_ms),
            "sender_clock": rfc3339(m.sender_clock_ms),
        });
        out!("{}", json_inert(&v.to_string()));
    } else if group.event {
        out!(
            "[{}] [{}] * {}",
            rfc3339(m.server_ts_ms),
            sanitize_line(&group.name),
            sanitize_line(&m.text)
        );
    } else {
        out!(
            "[{}] [{}] {}: {}",
            rfc3339(m.server_ts_ms),
            sanitize_line(&group.name),
            sanitize_line(from),
            sanitize_text(&m.text, "    | ")
        );
    }
}

fn print_message(m: &HistoryEntry, me: &str, json: bool) {
    if let Some(group) = &m.group {
        print_group_message(m, group, me, json);
        return;
    }
    if json {
        out!("{}", json_inert(&message_json(m, me).to_string()));
    } else {
        // `recv` shows what another device of ours sent, and to whom.
        let who = if m.outgoing {
            format!("{me} (to {})", m.contact)
        } else {
            shown_from(m, me)
        };
        out!(
            "[{}] {}: {}",
            rfc3339(m.server_ts_ms),
            sanitize_line(&who),
            sanitize_text(&m.text, "    | ")
        );
        if let Some(a) = &m.attachment {
            out!("{}", attachment_line(a, m.outgoing, Style { color: false }));
        }
    }
}

fn print_event(ev: &RecvEvent, me: &str, json: bool, style: Style, details: &Details) {
    match ev {
        RecvEvent::Message(m) if m.group.is_some() => print_message(m, me, json),
        RecvEvent::Message(m) => {
            let extra = details
                .lock()
                .ok()
                .and_then(|mut d| d.remove(&m.message_id));
            match extra {
                None if !style.color => print_message(m, me, json),
                extra => {
                    let (reply_to, secs) = extra.unwrap_or((None, 0));
                    let item = ConversationItem {
                        entry: m.clone(),
                        timer_change: None,
                        reply_to,
                        reactions: Vec::new(),
                        edit_history: Vec::new(),
                        unsent: false,
                        receipt: None,
                        read: false,
                        expires_at_ms: None,
                        expire_after_secs: secs,
                    };
                    print_item(&item, me, json, style);
                }
            }
        }
        RecvEvent::IdentityChanged { username } => eprintln!(
            "warning: the identity key of {username} has changed (reinstall, or someone intercepting). Its messages are kept apart, shown as from \"an unverified new key of {username}\". Compare with `missive safety-number {username}`, then `missive trust {username} SAFETY_NUMBER` to accept it or `missive reject {username}` to discard it; sending to {username} is blocked until then."
        ),
        RecvEvent::Dropped { sender, reason } => {
            eprintln!(
                "warning: dropped a message from {}: {}",
                sanitize_line(sender),
                sanitize_line(reason)
            );
        }
        // Said once by `open_client`.
        RecvEvent::RolledBack => {}
        RecvEvent::Warning(w) => eprintln!("warning: {}", sanitize_line(w)),
    }
}

async fn run_group(
    home: &std::path::Path,
    server: ServerConfig,
    action: GroupAction,
    color: bool,
) -> Result<(), ClientError> {
    let mut client = open_client(home, server)?;
    let style = Style { color };
    match action {
        GroupAction::Create { name, members } => {
            let g = client.create_group(&name, &members).await?;
            out!(
                "created the group {} with {}",
                sanitize_line(&g.name),
                g.members.join(", ")
            );
        }
        GroupAction::Add { name, member } => {
            client.group_add(&name, &member).await?;
            out!(
                "added {} to {}",
                member.to_ascii_lowercase(),
                sanitize_line(&name)
            );
        }
        GroupAction::Remove { name, member } => {
            client.group_remove(&name, &member).await?;
            out!(
                "removed {} from {}",
                member.to_ascii_lowercase(),
                sanitize_line(&name)
            );
        }
        GroupAction::Leave { name } => {
            client.group_leave(&name).await?;
            out!("left {}", sanitize_line(&name));
        }
        GroupAction::List { json } => {
            for g in client.group_list()? {
                if json {
                    out!(
                        "{}",
                        json_inert(
                            &serde_json::json!({
                                "name": g.name,
                                "id": g.id,
                                "members": g.members,
                                "status": g.status,
                            })
                            .to_string()
                        )
                    );
                } else {
                    out!(
                        "{}\t{}\t{}",
                        sanitize_line(&g.name),
                        g.members.join(", "),
                        sanitize_line(&g.status)
                    );
                }
            }
        }
        GroupAction::Info { name, json } => {
            let (g, members) = client.group_info(&name)?;
            if !json {
                out!(
                    "{} ({}), {}",
                    style.paint("1", &sanitize_line(&g.name)),
                    g.id,
                    sanitize_line(&g.status)
                );
            }
            for m in members {
                let devices: Vec<String> = m.devices.iter().map(u32::to_string).collect();
                if json {
                    out!(
                        "{}",
                        serde_json::json!({
                            "username": m.username,
                            "devices": m.devices,
                            "verification": m.verification,
                        })
                    );
                } else {
                    out!(
                        "  {}\tdevices {}\t{}",
                        m.username,
                        devices.join(", "),
                        m.verification
                    );
                }
            }
        }
    }
    for notice in client.take_notices() {
        eprintln!("note: {}", sanitize_line(&notice));
    }
    Ok(())
}

const ROLLED_BACK_WARNING: &str = "warning: this account's store is older than its last use (restored from a backup?). Its sessions were archived so no message key is used twice; the next message to each contact starts a fresh session.";

fn open_client(home: &std::path::Path, server: ServerConfig) -> Result<Client, ClientError> {
    let client = Client::open(home, server)?;
    if client.was_rolled_back() {
        eprintln!("{ROLLED_BACK_WARNING}");
    }
    Ok(client)
}

/// Shows a link code as a QR code (on a terminal) and on a line of its own
/// that scripts can read.
fn print_link_code(code: &str) {
    use std::io::{IsTerminal as _, Write as _};
    let mut stdout = std::io::stdout();
    if stdout.is_terminal()
        && let Ok(qr) = qrcode::QrCode::new(code.as_bytes())
    {
        let _ = writeln!(
            stdout,
            "{}",
            qr.render::<qrcode::render::unicode::Dense1x2>().build()
        );
    }
    let _ = writeln!(
        stdout,
        "On the account's primary device, run: missive devices add CODE"
    );
    let _ = writeln!(stdout, "link code: {code}");
    let _ = stdout.flush();
}

/// Asks on the terminal before `delete-account`; without a terminal, refuses
/// (the caller must say `--yes`).
fn confirm_delete(name: &str, server: &str) -> Result<(), ClientError> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::ConfirmationRequired(format!(
            "deleting the account {name} cannot be undone; standard input is not a terminal, so pass --yes to confirm"
        )));
    }
    eprint!(
        "This deletes the account {name} on {server} and all its local keys and history; it cannot be undone.\nType the username to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| ClientError::Io {
            what: "cannot read the confirmation".into(),
            source: e,
        })?;
    if line.trim() == name {
        Ok(())
    } else {
        Err(ClientError::ConfirmationRequired(format!(
            "not confirmed; the account {name} was not deleted"
        )))
    }
}

/// Prints a completion script or the man page; true when it did.
fn generated_output(cli: &Cli) -> Result<bool, ClientError> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "missive", &mut out);
            Ok(true)
        }
        Command::Man => {
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|source| ClientError::Io {
                    what: "cannot write the man page".into(),
                    source,
                })?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    if generated_output(&cli)? {
        return Ok(());
    }
    let home = home_dir(&cli)?;
    let server = ServerConfig {
        url: cli.server.clone(),
        ca: ServerConfig::resolve_ca(&home, cli.ca.clone()),
    };
    match cli.command {
        Command::Register { username } => {
            let client = Client::register(&home, server, &username).await?;
            out!(
                "registered {} on {}; your identity fingerprint is {}",
                client.username(),
                cli.server,
                client.public_identity().fingerprint()
            );
            if let Some(code) = client.recovery_code() {
                out!(
                    "Write down this recovery code and keep it offline; it is shown only this once. With it, `missive recover {}` restores your account on a new device if this one is lost:",
                    client.username()
                );
                out!("recovery code: {}", code.as_str());
            }
        }
        Command::Send {
            username,
            text,
            group: Some(group),
            ..
        } => {
            // With --group, the first argument is the text.
            let text = read_text_arg(match text {
                Some(_) => {
                    return Err(ClientError::Group(
                        "with --group, give only the text: missive send --group NAME TEXT".into(),
                    ));
                }
                None => username,
            })?;
            let mut client = open_client(&home, server)?;
            let sent = client.send_group(&group, &text).await?;
            out!("sent {} to the group {}", sent.id, sanitize_line(&group));
            for notice in client.take_notices() {
                eprintln!("note: {}", sanitize_line(&notice));
            }
        }
        Command::Group { action } => run_group(&home, server, action, use_color(cli.color)).await?,
        Command::Send {
            username,
            text,
            file,
            group: None,
        } => {
            let text = text.map(read_text_arg).transpose()?.unwrap_or_default();
            let mut client = open_client(&home, server)?;
            client.set_progress(true);
            match file {
                Some(path) => {
                    let sent = client.send_file(&username, &path, &text).await?;
                    out!(
                        "sent {} with the file {} to {}",
                        sent.id,
                        sanitize_line(&path.display().to_string()),
                        username.to_ascii_lowercase()
                    );
                }
                None => {
                    let sent = client.send(&username, &text).await?;
                    out!("sent {} to {}", sent.id, username.to_ascii_lowercase());
                }
            }
            for notice in client.take_notices() {
                eprintln!("note: {}", sanitize_line(&notice));
            }
        }
        Command::Recover { username } => {
            let code = read_secret_line("recovery code: ")?;
            let client = Client::recover(&home, server, &username, &code).await?;
            out!(
                "recovered {} as device {}; this device now holds the account key. If a device is lost, remove it with `missive devices remove ID` (see `missive devices`).",
                client.username(),
                client.device_id()
            );
        }
        Command::Link { wait } => {
            let client =
                Client::link_new_device(&home, server, Duration::from_secs(wait), |code| {
                    print_link_code(code)
                })
                .await?;
            out!(
                "linked as device {} of {}; the account's fingerprint is {}",
                client.device_id(),
                client.username(),
                client.public_identity().fingerprint()
            );
        }
        Command::Devices {
            action: Some(DevicesAction::Add { code, wait }),
            ..
        } => {
            let mut client = open_client(&home, server)?;
            let added = client.add_device(&code, Duration::from_secs(wait)).await?;
            out!(
                "linked device {} (key fingerprint {}); it received {} contacts",
                added.id,
                added.fingerprint.get(..16).unwrap_or(&added.fingerprint),
                added.contacts
            );
        }
        Command::Devices {
            action: Some(DevicesAction::Remove { id }),
            ..
        } => {
            let mut client = open_client(&home, server)?;
            client.remove_device(id).await?;
            out!("removed device {id}; the server no longer accepts it");
        }
        Command::Devices { json, action: None } => {
            let mut client = open_client(&home, server)?;
            for d in client.devices().await? {
                if json {
                    out!(
                        "{}",
                        serde_json::json!({
                            "id": d.id,
                            "name": d.name,
                            "current": d.current,
                            "fingerprint": d.fingerprint,
                            "linked_on": d.linked_on,
                            "last_seen": d.last_seen,
                        })
                    );
                } else {
                    let mark = if d.current { " (this device)" } else { "" };
                    out!(
                        "{}\t{}{mark}\tlinked {}\tlast seen {}\t{}",
                        d.id,
                        d.name,
                        d.linked_on.as_deref().unwrap_or("?"),
                        d.last_seen.as_deref().unwrap_or("?"),
                        d.fingerprint.get(..16).unwrap_or(&d.fingerprint)
                    );
                }
            }
        }
        Command::Attachments { json } => {
            let client = open_client(&home, server)?;
            let me = client.username().to_owned();
            let list = client.attachments()?;
            if list.is_empty() && !json {
                out!("no attachments yet");
            }
            for m in list {
                let Some(a) = &m.attachment else { continue };
                if json {
                    let mut v = message_json(&m, &me);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("text");
                        o.insert(
                            "to".into(),
                            if m.outgoing {
                                m.contact.as_str()
                            } else {
                                me.as_str()
                            }
                            .into(),
                        );
                    }
                    out!("{}", json_inert(&v.to_string()));
                } else {
                    let who = if m.outgoing {
                        format!("to {}", sanitize_line(&m.contact))
                    } else {
                        format!("from {}", sanitize_line(&shown_from(&m, &me)))
                    };
                    let place = match (&a.saved_path, &a.error) {
                        (Some(p), _) => sanitize_line(&p.display().to_string()),
                        (None, Some(e)) => format!("refused: {}", sanitize_line(e)),
                        (None, None) => "not saved yet".to_owned(),
                    };
                    out!(
                        "{}\t{}\t{who}\t{}\t{place}",
                        short_id(&m.message_id),
                        sanitize_line(&a.file_name),
                        human_size(a.size)
                    );
                }
            }
        }
        Command::Recv {
            json,
            wait,
            receipts,
            save_dir,
        } => {
            let mut client = open_client(&home, server)?;
            client.set_progress(true);
            let dir = save_dir.unwrap_or_else(|| client.default_attachment_dir());
            client.set_attachment_dir(Some(dir));
            let me = client.username().to_owned();
            let style = Style {
                color: use_color(cli.color),
            };
            let details = Details::default();
            let hook_details = details.clone();
            client.set_conversation_hook(move |ev| {
                if receipts || !matches!(ev, ConversationEvent::Receipt { .. }) {
                    print_conversation_event(ev, json, style, &hook_details)
                }
            });
            client.emit_conversation_events();
            client
                .recv(wait.map(Duration::from_secs), |ev| {
                    print_event(ev, &me, json, style, &details)
                })
                .await?;
        }
        Command::Chat {
            username,
            group,
            bell,
        } => {
            let mut client = open_client(&home, server)?;
            let open = match group {
                Some(name) => Some(missive_client::chat::ConversationId::Group(name)),
                None => username
                    .map(|u| missive_client::client::normalize_username(&u))
                    .transpose()?
                    .map(missive_client::chat::ConversationId::Direct),
            };
            missive_client::chat::run(&mut client, missive_client::chat::Options { open, bell })
                .await?;
        }
        Command::Contacts => {
            let client = open_client(&home, server)?;
            let contacts = client.contacts()?;
            if contacts.is_empty() {
                out!("no contacts yet");
            }
            for (name, state, fp) in contacts {
                out!("{name}\t{state}\t{}", fp.get(..16).unwrap_or(&fp));
            }
        }
        Command::History {
            group: Some(group),
            json,
            ..
        } => {
            let client = open_client(&home, server)?;
            let me = client.username().to_owned();
            for m in client.group_history(&group)? {
                print_message(&m, &me, json);
            }
        }
        Command::History {
            username,
            json,
            group: None,
        } => {
            let username = username.ok_or_else(|| {
                ClientError::Conversation("name a contact, or a group with --group".into())
            })?;
            let mut client = open_client(&home, server)?;
            let me = client.username().to_owned();
            let style = Style {
                color: use_color(cli.color),
            };
            for item in client.conversation(&username)? {
                print_item(&item, &me, json, style);
            }
        }
        Command::SafetyNumber { username } => {
            let mut client = open_client(&home, server)?;
            let sn = client.safety_number(&username).await?;
            if sn.for_changed_identity {
                out!("{username}'s identity CHANGED; this is the safety number for the new key:");
            }
            for row in sn.groups.chunks(4) {
                out!("{}", row.join(" "));
            }
            if let Ok(code) = qrcode::QrCode::new(&sn.qr_payload) {
                let qr = code
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build();
                out!("{qr}");
            }
            if sn.verified {
                out!("status: verified");
            } else {
                out!(
                    "status: not verified; compare with your contact, then run `missive verify {} SAFETY_NUMBER` with the digits above",
                    username.to_ascii_lowercase()
                );
            }
        }
        Command::Verify {
            username,
            safety_number,
        } => {
            let mut client = open_client(&home, server)?;
            client.verify(&username, &safety_number.join(" "))?;
            out!("{} is now marked verified", username.to_ascii_lowercase());
        }
        Command::Trust {
            username,
            safety_number,
        } => {
            let mut client = open_client(&home, server)?;
            if client.trust(&username, &safety_number.join(" "))? {
                out!(
                    "accepted the new identity key of {}; it is unverified until you compare safety numbers",
                    username.to_ascii_lowercase()
                );
            } else {
                out!(
                    "the identity of {} has not changed; nothing to do",
                    username.to_ascii_lowercase()
                );
            }
        }
        Command::Reject { username } => {
            let mut client = open_client(&home, server)?;
            if client.reject(&username)? {
                out!(
                    "discarded the changed identity key of {} and the messages it sent; the key you had pinned stays",
                    username.to_ascii_lowercase()
                );
            } else {
                out!(
                    "the identity of {} has not changed; nothing to do",
                    username.to_ascii_lowercase()
                );
            }
        }
        Command::DeleteAccount { yes } => {
            let client = open_client(&home, server)?;
            let name = client.username().to_owned();
            if !yes {
                confirm_delete(&name, &cli.server)?;
            }
            client.delete_account().await?;
            out!("deleted the account {name} on the server and its local data");
        }
        Command::Report {
            message_id,
            from,
            reason,
        } => {
            let mut client = open_client(&home, server)?;
            let ids = client
                .report_versions(&message_id, from.as_deref(), &reason)
                .await?;
            match ids.as_slice() {
                [id] => out!("report {id} accepted by the server"),
                [id, edits @ ..] => {
                    let edits: Vec<String> = edits.iter().map(u64::to_string).collect();
                    out!(
                        "report {id} accepted by the server, with the message's {} edit(s) as reports {}",
                        edits.len(),
                        edits.join(", ")
                    );
                }
                [] => {}
            }
        }
        Command::Reply {
            username,
            message_id,
            text,
        } => {
            let text = read_text_arg(text)?;
            let mut client = open_client(&home, server)?;
            let sent = client
                .send_text(&username, &text, Some(&message_id))
                .await?;
            out!("sent {} to {}", sent.id, username.to_ascii_lowercase());
        }
        Command::React {
            username,
            message_id,
            emoji,
            remove,
        } => {
            let mut client = open_client(&home, server)?;
            let emoji = if remove { None } else { emoji };
            client
                .react(&username, &message_id, emoji.as_deref())
                .await?;
            match emoji {
                Some(e) => out!(
                    "reacted {} to message {}",
                    sanitize_line(&e),
                    sanitize_line(&message_id)
                ),
                None => out!(
                    "removed your reaction to message {}",
                    sanitize_line(&message_id)
                ),
            }
        }
        Command::Edit {
            username,
            message_id,
            text,
        } => {
            let text = read_text_arg(text)?;
            let mut client = open_client(&home, server)?;
            client.edit(&username, &message_id, &text).await?;
            out!("edited message {}", sanitize_line(&message_id));
        }
        Command::Unsend {
            username,
            message_id,
        } => {
            let mut client = open_client(&home, server)?;
            client.unsend(&username, &message_id).await?;
            out!(
                "deleted message {} for everyone",
                sanitize_line(&message_id)
            );
        }
        Command::Timer { username, duration } => {
            let secs = parse_timer(&duration)?;
            let mut client = open_client(&home, server)?;
            client.set_timer(&username, secs).await?;
            let who = username.to_ascii_lowercase();
            if secs == 0 {
                out!("disappearing messages with {who} are off");
            } else {
                out!(
                    "messages with {who} now disappear {} after they are sent or received",
                    format_timer(secs)
                );
            }
        }
        Command::Settings { setting } => {
            let mut client = open_client(&home, server)?;
            if let Some(Setting::ReadReceipts { state }) = setting {
                client.set_read_receipts(state == OnOff::On)?;
            }
            let on = client.read_receipts()?;
            out!("read-receipts\t{}", if on { "on" } else { "off" });
        }
        Command::Typing { username, state } => {
            let mut client = open_client(&home, server)?;
            client
                .send_typing(&username, state == TypingState::Start)
                .await?;
        }
        // Printed by `generated_output` before any account is opened.
        Command::Completions { .. } | Command::Man => {}
    }
    Ok(())
}
