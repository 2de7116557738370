//! `missive`: the Missive command-line client.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use missive_client::client::{RecvEvent, rfc3339};
use missive_client::display::{json_inert, sanitize_line, sanitize_text};
use missive_client::store::HistoryEntry;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an identity and prekeys locally and register USERNAME.
    Register {
        /// 3 to 32 characters among a-z, 0-9, '.', '_' and '-'.
        username: String,
    },
    /// Send TEXT to USERNAME ("-" reads the text from standard input).
    Send {
        /// Recipient.
        username: String,
        /// Message text, or "-" for standard input.
        text: String,
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
    },
    /// The terminal messenger: the conversation list, or USERNAME's conversation.
    Chat {
        /// Open the conversation with this contact (else the list).
        username: Option<String>,
        /// Ring the terminal bell when a message arrives in another conversation.
        #[arg(long)]
        bell: bool,
    },
    /// List contacts with their verification state.
    Contacts,
    /// Show the conversation with USERNAME.
    History {
        /// Contact.
        username: String,
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
    serde_json::json!({
        "id": hex::encode(&m.message_id),
        "from": if m.outgoing { me } else { m.contact.as_str() },
        "outgoing": m.outgoing,
        "text": m.text,
        // The time shown is the server's: its franking tag binds it, so a
        // report proves it. The sender's own clock is only a claim.
        "sent_at": rfc3339(m.server_ts_ms),
        "server_time": rfc3339(m.server_ts_ms),
        "sender_clock": rfc3339(m.sender_clock_ms),
        "sender_clock_clamped": m.sender_clock_clamped,
        "quarantined": m.quarantined,
    })
}

fn print_message(m: &HistoryEntry, me: &str, json: bool) {
    if json {
        out!("{}", json_inert(&message_json(m, me).to_string()));
    } else {
        out!(
            "[{}] {}: {}",
            rfc3339(m.server_ts_ms),
            sanitize_line(&shown_from(m, me)),
            sanitize_text(&m.text, "    | ")
        );
    }
}

fn print_event(ev: &RecvEvent, me: &str, json: bool) {
    match ev {
        RecvEvent::Message(m) => print_message(m, me, json),
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

const ROLLED_BACK_WARNING: &str = "warning: this account's store is older than its last use (restored from a backup?). Its sessions were archived so no message key is used twice; the next message to each contact starts a fresh session.";

fn open_client(home: &std::path::Path, server: ServerConfig) -> Result<Client, ClientError> {
    let client = Client::open(home, server)?;
    if client.was_rolled_back() {
        eprintln!("{ROLLED_BACK_WARNING}");
    }
    Ok(client)
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

async fn run(cli: Cli) -> Result<(), ClientError> {
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
        }
        Command::Send { username, text } => {
            let text = if text == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| ClientError::Io {
                        what: "cannot read the message from standard input".into(),
                        source: e,
                    })?;
                let s = String::from_utf8(buf).map_err(|_| ClientError::NotUtf8)?;
                s.strip_suffix('\n').map(str::to_owned).unwrap_or(s)
            } else {
                text
            };
            let mut client = open_client(&home, server)?;
            let sent = client.send(&username, &text).await?;
            out!("sent {} to {}", sent.id, username.to_ascii_lowercase());
        }
        Command::Recv { json, wait } => {
            let mut client = open_client(&home, server)?;
            let me = client.username().to_owned();
            client
                .recv(wait.map(Duration::from_secs), |ev| {
                    print_event(ev, &me, json)
                })
                .await?;
        }
        Command::Chat { username, bell } => {
            let mut client = open_client(&home, server)?;
            let open = username
                .map(|u| missive_client::client::normalize_username(&u))
                .transpose()?
                .map(missive_client::chat::ConversationId::Direct);
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
        Command::History { username, json } => {
            let client = open_client(&home, server)?;
            let me = client.username().to_owned();
            for m in client.history(&username)? {
                print_message(&m, &me, json);
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
            let id = client.report(&message_id, from.as_deref(), &reason).await?;
            out!("report {id} accepted by the server");
        }
    }
    Ok(())
}
