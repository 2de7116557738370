//! `missive chat`: the terminal messenger.
//!
//! [`ChatState`] holds everything the screen shows and is updated by plain
//! method calls, so it is tested without a terminal; [`render`] draws it on
//! any ratatui backend; [`run`] feeds it from one [`Event`] stream — the
//! terminal reader thread, the receive stream (reconnected with
//! [`Backoff`]) and a one-second tick — in one `select!` loop (the shape of
//! gurk-rs).
//!
//! Scrolling counts rendered rows ([`rows`]), so long wrapped messages never
//! hide the newest line; resizing redraws at once; a bracketed paste is one
//! message however many lines it has.

mod backoff;
pub mod rows;
mod state;
mod view;

use std::time::Duration;

use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste, KeyEvent};
use missive_proto::v1;

pub use backoff::{BACKOFF_MAX, BACKOFF_MIN, Backoff};
pub use state::{
    Action, COMMANDS_HELP, ChatState, Connection, Conversation, ConversationId, DeliveryState,
    FileItem, Focus, HELP_CONVERSATION, HELP_LIST, InlineEvent, Item, MessageItem,
    TYPING_RESEND_MS, TYPING_SHOWN_MS,
};
pub use view::render;

use crate::client::{Client, RecvEvent, Verification};
use crate::conversation::ConversationEvent;
use crate::error::{ClientError, Result};

/// How often the loop looks at the store (verification changed by another
/// process) and updates the reconnect countdown.
pub const TICK: Duration = Duration::from_secs(1);

/// One thing the chat loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A key press.
    Key(KeyEvent),
    /// A bracketed paste.
    Paste(String),
    /// The terminal was resized (redraw).
    Resize,
    /// An item from the receive stream.
    Received(Box<v1::ReceiveResponse>),
    /// The receive stream ended or failed.
    StreamLost(String),
    /// Time to (re)open the receive stream.
    Reconnect,
    /// The periodic tick.
    Tick,
}

/// How `missive chat` starts.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Open this conversation at once (else the list has the keys).
    pub open: Option<ConversationId>,
    /// Ring the terminal bell for messages in other conversations.
    pub bell: bool,
}

fn term_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Terminal(e.to_string())
}

/// The state for `client`'s account: every contact's conversation from the
/// store (with replies, reactions, edits, receipts and timers), messages
/// never shown counted unread, and `opts.open` opened. Read receipts go
/// only for what is then on screen.
pub fn initial_state(client: &mut Client, opts: &Options) -> Result<ChatState> {
    let mut state = ChatState::new(client.username(), opts.bell);
    state.tick(now_ms());
    let unshown = client.take_unshown_unread(None)?;
    let mut live = Vec::new();
    for (name, verification, _) in client.contacts()? {
        let items = client.conversation(&name)?;
        let (fresh, seen): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|ci| unshown.iter().any(|u| u.seq == ci.entry.seq));
        let id = ConversationId::Direct(name.clone());
        state.set_timer(&id, client.conversation_timer(&name)?);
        state.add_conversation_items(id, verification, &seen);
        live.extend(fresh);
    }
    let mut live_group = Vec::new();
    for g in client.group_list()? {
        let entries = client.group_history(&g.name)?;
        let (fresh, seen): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| unshown.iter().any(|u| u.seq == e.seq));
        let verification = group_verification(client, &g.members)?;
        state.add_conversation(ConversationId::Group(g.name), verification, &seen);
        live_group.extend(fresh);
    }
    if let Some(id) = &opts.open {
        if let ConversationId::Group(name) = id
            && !state.conversations().iter().any(|c| &c.id == id)
        {
            return Err(ClientError::Group(format!(
                "no group is named {name} on this device (`missive group list` shows them)"
            )));
        }
        state.open(id);
    }
    live.sort_by_key(|ci| ci.entry.seq);
    for ci in &live {
        state.push_live_item(ci);
    }
    live_group.sort_by_key(|e| e.seq);
    for e in &live_group {
        state.push_live(e);
    }
    Ok(state)
}

/// A group is shown verified when every other member account is.
fn group_verification(client: &Client, members: &[String]) -> Result<Verification> {
    let mut all = true;
    for m in members.iter().filter(|m| m.as_str() != client.username()) {
        all &= client.verification(m)? == Some(Verification::Verified);
    }
    Ok(if all {
        Verification::Verified
    } else {
        Verification::Unverified
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Conversation events the client said during the last call, in order.
type Said = std::sync::Arc<std::sync::Mutex<Vec<ConversationEvent>>>;

fn apply_said(said: &Said, state: &mut ChatState) {
    let events = said
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for ev in &events {
        state.apply_conversation(ev);
    }
}

/// Sends the read receipts for what is now on screen.
async fn send_read(client: &mut Client, state: &mut ChatState) {
    let due = state.take_read_due();
    if due.is_empty() {
        return;
    }
    for (contact, ids) in &due {
        client.mark_read(contact, ids);
    }
    if let Some(w) = client.send_pending_receipts().await.into_iter().next() {
        state.status = Some(w);
    }
}

/// Carries out a chat action other than quitting.
async fn perform(client: &mut Client, state: &mut ChatState, action: &Action) {
    let outcome = match action {
        Action::Send(id, text) => {
            let outcome = match id {
                ConversationId::Direct(to) => client.send(to, text).await,
                ConversationId::Group(name) => client.send_group(name, text).await,
            };
            state.sent(id, outcome.map_err(|e| e.to_string()));
            return;
        }
        Action::Typing(ConversationId::Direct(to), started) => {
            // Best effort: a lost indicator is not worth a status line.
            let _ = client.send_typing(to, *started).await;
            return;
        }
        // The chat offers groups only text (state.rs refuses the rest).
        Action::Typing(ConversationId::Group(_), _) => return,
        Action::Reply {
            to: ConversationId::Group(_),
            ..
        }
        | Action::React {
            to: ConversationId::Group(_),
            ..
        }
        | Action::Edit {
            to: ConversationId::Group(_),
            ..
        }
        | Action::Unsend {
            to: ConversationId::Group(_),
            ..
        }
        | Action::Save {
            to: ConversationId::Group(_),
            ..
        }
        | Action::SendFile {
            to: ConversationId::Group(_),
            ..
        }
        | Action::Timer(ConversationId::Group(_), _) => {
            Err("this is not available in group conversations yet".to_owned())
        }
        Action::Reply {
            to: ConversationId::Direct(name),
            target,
            text,
        } => match client.send_text(name, text, Some(target)).await {
            Ok(sent) => show_sent(client, state, name, &sent.id),
            Err(e) => Err(e.to_string()),
        },
        Action::React {
            to: ConversationId::Direct(name),
            target,
            emoji,
        } => client
            .react(name, target, emoji.as_deref())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Action::Edit {
            to: ConversationId::Direct(name),
            target,
            text,
        } => client
            .edit(name, target, text)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Action::Unsend {
            to: ConversationId::Direct(name),
            target,
        } => client
            .unsend(name, target)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Action::Save {
            to: to @ ConversationId::Direct(name),
            target,
        } => {
            let dir = client
                .attachment_dir()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(|| client.default_attachment_dir());
            let outcome = client.save_attachment(name, target, &dir).await;
            state.file_saved(to, target, outcome);
            return;
        }
        Action::SendFile {
            to: ConversationId::Direct(name),
            path,
        } => {
            let file = std::path::Path::new(path);
            match client.send_file(name, file, "").await {
                Ok(sent) => show_sent(client, state, name, &sent.id),
                Err(e) => Err(e.to_string()),
            }
        }
        Action::Timer(ConversationId::Direct(name), secs) => client
            .set_timer(name, *secs)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Action::Quit => return,
    };
    state.done(action, outcome);
}

/// Shows our message `id` to `name` as the store has it (with its quote or
/// its file).
fn show_sent(
    client: &mut Client,
    state: &mut ChatState,
    name: &str,
    id: &str,
) -> std::result::Result<(), String> {
    let items = client.conversation(name).map_err(|e| e.to_string())?;
    if let Some(ci) = items
        .iter()
        .rev()
        .find(|ci| ci.entry.outgoing && hex::encode(&ci.entry.message_id) == id)
    {
        state.push_live_item(ci);
    }
    Ok(())
}

/// Describes a lost receive stream in a short clause.
fn lost_reason(client: &Client, status: &tonic::Status) -> String {
    ClientError::from_status(status, client.server_url()).brief()
}

async fn next_item(
    stream: &mut Option<tonic::Streaming<v1::ReceiveResponse>>,
    client: &Client,
) -> Event {
    match stream {
        Some(s) => match s.message().await {
            Ok(Some(r)) => Event::Received(Box::new(r)),
            Ok(None) => Event::StreamLost("the server closed the connection".to_owned()),
            Err(status) => Event::StreamLost(lost_reason(client, &status)),
        },
        None => std::future::pending().await,
    }
}

/// Short reason for a failed connection attempt.
fn attempt_reason(e: &ClientError) -> String {
    e.brief()
}

/// Runs the chat until the user quits.
pub async fn run(client: &mut Client, opts: Options) -> Result<()> {
    let mut state = initial_state(client, &opts)?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    std::thread::spawn(move || {
        loop {
            let ev = match crossterm::event::read() {
                Ok(crossterm::event::Event::Key(k)) => Event::Key(k),
                Ok(crossterm::event::Event::Paste(p)) => Event::Paste(p),
                Ok(crossterm::event::Event::Resize(..)) => Event::Resize,
                Ok(_) => continue,
                Err(_) => break,
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });

    let mut terminal = ratatui::try_init().map_err(term_err)?;
    let _ = crossterm::execute!(std::io::stdout(), EnableBracketedPaste);
    let result = event_loop(client, &mut state, &mut terminal, &mut rx).await;
    let _ = crossterm::execute!(std::io::stdout(), DisableBracketedPaste);
    ratatui::restore();
    result
}

async fn event_loop(
    client: &mut Client,
    state: &mut ChatState,
    terminal: &mut ratatui::DefaultTerminal,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Result<()> {
    let mut stream: Option<tonic::Streaming<v1::ReceiveResponse>> = None;
    let mut backoff = Backoff::new();
    let mut reconnect_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = rand::rngs::StdRng::from_entropy();
    use rand::SeedableRng as _;
    let said: Said = Said::default();
    let hook = std::sync::Arc::clone(&said);
    client.set_conversation_hook(move |ev| {
        if let Ok(mut v) = hook.lock() {
            v.push(ev.clone());
        }
    });
    send_read(client, state).await;
    loop {
        terminal.draw(|f| render(state, f)).map_err(term_err)?;
        if state.take_bell() {
            use std::io::Write as _;
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x07").and_then(|()| out.flush());
        }
        let ev = tokio::select! {
            t = rx.recv() => match t {
                Some(e) => e,
                // The terminal is gone.
                None => return Ok(()),
            },
            e = next_item(&mut stream, client) => e,
            () = tokio::time::sleep_until(reconnect_at), if stream.is_none() => Event::Reconnect,
            _ = tick.tick() => Event::Tick,
        };
        match ev {
            Event::Key(k) => match state.handle_key(k) {
                Some(Action::Quit) => return Ok(()),
                Some(action) => {
                    terminal.draw(|f| render(state, f)).map_err(term_err)?;
                    perform(client, state, &action).await;
                }
                None => {}
            },
            Event::Paste(p) => state.handle_paste(&p),
            Event::Resize => {
                let _ = terminal.autoresize();
            }
            Event::Received(resp) => {
                backoff.reset();
                let processed = match resp.item {
                    Some(v1::receive_response::Item::Envelope(env)) => {
                        Some(client.process_envelope(env).await)
                    }
                    Some(v1::receive_response::Item::GroupMessage(gm)) => {
                        Some(client.process_group_message(gm).await)
                    }
                    _ => None,
                };
                if let Some(processed) = processed {
                    match processed {
                        Ok(events) => {
                            for ev in &events {
                                state.apply(ev);
                            }
                        }
                        Err(e) => {
                            state.status = Some(format!("receiving failed: {e}"));
                            stream = None;
                            let d = backoff.next_delay(&mut rng);
                            reconnect_at = tokio::time::Instant::now() + d;
                            state.set_connection(Connection::Offline {
                                reason: attempt_reason(&e),
                                retry_in_s: d.as_secs(),
                            });
                        }
                    }
                    // Details said before the message itself is shown.
                    apply_said(&said, state);
                    // Everything stored and not yet shown, from anyone: a
                    // third contact's message lands in its own conversation.
                    for e in client.take_unshown_unread(None)? {
                        state.apply(&RecvEvent::Message(e));
                    }
                }
            }
            Event::StreamLost(reason) => {
                stream = None;
                let d = backoff.next_delay(&mut rng);
                reconnect_at = tokio::time::Instant::now() + d;
                state.set_connection(Connection::Offline {
                    reason,
                    retry_in_s: d.as_secs().max(1),
                });
            }
            Event::Reconnect => match client.open_stream().await {
                Ok(s) => {
                    stream = Some(s);
                    state.set_connection(Connection::Connected);
                }
                Err(e @ ClientError::AccountRejected(_)) => return Err(e),
                Err(e) => {
                    let d = backoff.next_delay(&mut rng);
                    reconnect_at = tokio::time::Instant::now() + d;
                    state.set_connection(Connection::Offline {
                        reason: attempt_reason(&e),
                        retry_in_s: d.as_secs().max(1),
                    });
                }
            },
            Event::Tick => {
                if let Connection::Offline { reason, .. } = &state.connection {
                    let left = reconnect_at
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs();
                    let reason = reason.clone();
                    state.connection = Connection::Offline {
                        reason,
                        retry_in_s: left,
                    };
                }
                refresh_verification(client, state)?;
                state.tick(now_ms());
                if let Err(e) = client.expire_disappeared() {
                    state.status = Some(format!("could not delete disappeared messages: {e}"));
                }
            }
        }
        apply_said(&said, state);
        send_read(client, state).await;
    }
}

/// Reads every conversation's verification state from the store (another
/// shell may have run `missive verify` or `trust`).
fn refresh_verification(client: &Client, state: &mut ChatState) -> Result<()> {
    let ids: Vec<ConversationId> = state.conversations().iter().map(|c| c.id.clone()).collect();
    for id in ids {
        // A group's state is its members' (initial_state); not polled.
        if let ConversationId::Direct(name) = &id
            && let Some(v) = client.verification(name)?
        {
            state.set_verification(&id, v);
        }
    }
    Ok(())
}

/// The verification a new conversation starts with.
pub fn verification_or_default(v: Option<Verification>) -> Verification {
    v.unwrap_or(Verification::Unverified)
}
