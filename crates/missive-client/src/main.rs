//! `missive`: the Missive command-line client.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use missive_client::client::{RecvEvent, rfc3339};
use missive_client::{Client, ClientError, ServerConfig};

/// Missive: end-to-end encrypted messaging from the terminal.
#[derive(Parser, Debug)]
#[command(name = "missive", version, about)]
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
    /// PEM file of the CA that signed the server certificate.
    /// Default: ./missive-data/ca.pem when it exists, else the system roots.
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
        /// One JSON object per line: id, from, text, sent_at, server_time.
        #[arg(long)]
        json: bool,
        /// Keep listening for new messages up to SECS seconds.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Interactive terminal chat with USERNAME.
    Chat {
        /// Contact.
        username: String,
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
    /// Mark USERNAME verified after comparing safety numbers.
    Verify {
        /// Contact.
        username: String,
    },
    /// Accept USERNAME's changed identity key.
    Trust {
        /// Contact.
        username: String,
    },
    /// Delete this account on the server and its local data.
    DeleteAccount,
    /// Report a received message to the server's moderators, with proof it was sent.
    Report {
        /// Message id (hex, from `recv --json` or `history --json`).
        message_id: String,
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
            eprintln!("error: {e}");
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

fn print_event(ev: &RecvEvent, json: bool) {
    match ev {
        RecvEvent::Message(m) => {
            if json {
                let v = serde_json::json!({
                    "id": hex::encode(&m.message_id),
                    "from": m.contact,
                    "text": m.text,
                    "sent_at": rfc3339(m.sent_at_ms),
                    "server_time": rfc3339(m.server_ts_ms),
                });
                println!("{v}");
            } else {
                println!("[{}] {}: {}", rfc3339(m.sent_at_ms), m.contact, m.text);
            }
        }
        RecvEvent::IdentityChanged { username } => eprintln!(
            "warning: the identity key of {username} has changed (reinstall, or someone intercepting). Compare with `missive safety-number {username}`, then `missive trust {username}` to accept it; sending to {username} is blocked until then."
        ),
        RecvEvent::Dropped { sender, reason } => {
            eprintln!("warning: dropped a message from {sender}: {reason}");
        }
        RecvEvent::Warning(w) => eprintln!("warning: {w}"),
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    let home = home_dir(&cli)?;
    let server = ServerConfig {
        url: cli.server.clone(),
        ca: cli.ca.clone().or_else(ServerConfig::default_ca),
    };
    match cli.command {
        Command::Register { username } => {
            let client = Client::register(&home, server, &username).await?;
            println!(
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
            let mut client = Client::open(&home, server)?;
            let sent = client.send(&username, &text).await?;
            println!("sent {} to {}", sent.id, username.to_ascii_lowercase());
        }
        Command::Recv { json, wait } => {
            let mut client = Client::open(&home, server)?;
            client
                .recv(wait.map(Duration::from_secs), |ev| print_event(ev, json))
                .await?;
        }
        Command::Chat { username } => {
            let mut client = Client::open(&home, server)?;
            missive_client::chat::run(&mut client, &username).await?;
        }
        Command::Contacts => {
            let client = Client::open(&home, server)?;
            let contacts = client.contacts()?;
            if contacts.is_empty() {
                println!("no contacts yet");
            }
            for (name, state, fp) in contacts {
                println!("{name}\t{state}\t{}", fp.get(..16).unwrap_or(&fp));
            }
        }
        Command::History { username, json } => {
            let client = Client::open(&home, server)?;
            for m in client.history(&username)? {
                let from = if m.outgoing {
                    client.username().to_owned()
                } else {
                    m.contact.clone()
                };
                if json {
                    let v = serde_json::json!({
                        "id": hex::encode(&m.message_id),
                        "from": from,
                        "outgoing": m.outgoing,
                        "text": m.text,
                        "sent_at": rfc3339(m.sent_at_ms),
                        "server_time": rfc3339(m.server_ts_ms),
                    });
                    println!("{v}");
                } else {
                    println!("[{}] {}: {}", rfc3339(m.sent_at_ms), from, m.text);
                }
            }
        }
        Command::SafetyNumber { username } => {
            let mut client = Client::open(&home, server)?;
            let sn = client.safety_number(&username).await?;
            if sn.for_changed_identity {
                println!(
                    "{username}'s identity CHANGED; this is the safety number for the new key:"
                );
            }
            for row in sn.groups.chunks(4) {
                println!("{}", row.join(" "));
            }
            if let Ok(code) = qrcode::QrCode::new(&sn.qr_payload) {
                let qr = code
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build();
                println!("{qr}");
            }
            println!(
                "{}",
                if sn.verified {
                    "status: verified"
                } else {
                    "status: not verified; compare with your contact, then run `missive verify USERNAME`"
                }
            );
        }
        Command::Verify { username } => {
            let mut client = Client::open(&home, server)?;
            client.verify(&username)?;
            println!("{} is now marked verified", username.to_ascii_lowercase());
        }
        Command::Trust { username } => {
            let mut client = Client::open(&home, server)?;
            if client.trust(&username)? {
                println!(
                    "accepted the new identity key of {}; it is unverified until you compare safety numbers",
                    username.to_ascii_lowercase()
                );
            } else {
                println!(
                    "the identity of {} has not changed; nothing to do",
                    username.to_ascii_lowercase()
                );
            }
        }
        Command::DeleteAccount => {
            let client = Client::open(&home, server)?;
            let name = client.username().to_owned();
            client.delete_account().await?;
            println!("deleted the account {name} on the server and its local data");
        }
        Command::Report { message_id, reason } => {
            let mut client = Client::open(&home, server)?;
            let id = client.report(&message_id, &reason).await?;
            println!("report {id} accepted by the server");
        }
    }
    Ok(())
}
