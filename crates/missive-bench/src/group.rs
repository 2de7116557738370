//! Group mode (`--group-size N`, issue 14): an MLS group of N single-device
//! accounts, every member device a real client store (encrypted SQLite,
//! `missive_client::group_bench` over the client's `group_state`) behind a
//! real device registered on the server and an open Receive stream.
//!
//! 1. Application messages: one member encrypts, sends with
//!    SendGroupMessage, and the time until every other member device
//!    streamed and decrypted it is measured, one message at a time; the
//!    server's SQLite file is read for the bytes a group message costs.
//! 2. Membership: the committer adds one new device to the group of N and
//!    removes it again, through the client path; a few members process each
//!    commit and the added device joins from the Welcome.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use missive_client::group_bench::{BenchAdd, BenchDevice, BenchProcessed};
use missive_proto::v1::group_service_client::GroupServiceClient;
use missive_proto::v1::{self, receive_response};
use rand::RngCore as _;
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::{Certificate, Channel};

use crate::driver::{Device, Mode, sentence};

/// Devices a setup commit adds at most: a KeyPackage with X-Wing keys is
/// ≈ 2.6 KB and a commit at most 1 MiB (`MAX_COMMIT_BYTES`).
const ADD_BATCH: usize = 250;
/// Members that process each measured add/remove commit (the cost is the
/// same for every member; processing it on all N would only repeat it).
const COMMIT_RECEIVERS: usize = 5;
/// Largest receive item: a Welcome carries the whole ratchet tree.
const MAX_ITEM: usize = 16 * 1024 * 1024;

/// What the group mode measures.
pub(crate) struct GroupArgs {
    pub(crate) size: usize,
    pub(crate) messages: usize,
    pub(crate) payload: usize,
    pub(crate) trials: usize,
    pub(crate) deadline: Duration,
    pub(crate) json: bool,
    /// Members decrypting at once (each decrypt is CPU and one fsync).
    pub(crate) decrypt_threads: usize,
}

/// A member: its network identity and its client store.
struct Member {
    net: Arc<Device>,
    mls: BenchDevice,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of a sorted slice.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(v: Vec<f64>) -> f64 {
    pct(&sorted(v), 50.0)
}

fn groups(channel: Channel) -> GroupServiceClient<Channel> {
    GroupServiceClient::new(channel)
        .max_decoding_message_size(MAX_ITEM)
        .max_encoding_message_size(MAX_ITEM)
}

fn random16() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

/// Server storage figures read from its SQLite file.
struct Storage {
    page_bytes: u64,
    rows: u64,
    content: u64,
    /// The records of `group_messages` and of its indexes (dbstat's
    /// `payload`: what SQLite stores of each row and index entry).
    record_bytes: u64,
    /// The bytes those b-trees use in their pages (`pgsize - unused`):
    /// records, cell headers and pointers, page headers.
    used_bytes: u64,
}

/// The b-trees holding group messages: the table (WITHOUT ROWID, so its
/// key is its own) and its indexes.
const GROUP_MESSAGE_TREES: &str = "('group_messages', 'group_messages_by_message_id', \
     'group_messages_by_expiry')";

fn read_storage(db: &Path) -> anyhow::Result<Storage> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening the server's database {}", db.display()))?;
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let freelist: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let (rows, content): (u64, u64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(content)), 0) FROM group_messages WHERE kind = 3",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (record_bytes, used_bytes): (u64, u64) = conn
        .query_row(
            &format!(
                "SELECT coalesce(sum(payload), 0), coalesce(sum(pgsize - unused), 0) \
                 FROM dbstat WHERE name IN {GROUP_MESSAGE_TREES}"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .context("reading dbstat (SQLite built with SQLITE_ENABLE_DBSTAT_VTAB)")?;
    Ok(Storage {
        page_bytes: (pages - freelist) * page_size,
        rows,
        content,
        record_bytes,
        used_bytes,
    })
}

pub(crate) async fn run(
    urls: &[String],
    ca: &Certificate,
    server_db: Option<PathBuf>,
    args: &GroupArgs,
) -> anyhow::Result<()> {
    let n = args.size;
    if n < 2 {
        bail!("--group-size must be at least 2");
    }
    let trials = args.trials.max(1);
    let started = Instant::now();
    let devices = crate::make_devices(Mode::Relay, urls, ca, n + trials, 1, 1).await?;
    eprintln!(
        "group: {} devices registered in {:.1} s",
        devices.len(),
        started.elapsed().as_secs_f64()
    );

    // Client stores: every store pins every other account (the vouching
    // check needs each member's signed device list), as a client does once
    // it fetched them.
    let stores = tempfile::tempdir()?;
    let accounts: Vec<_> = devices
        .iter()
        .map(|d| {
            d.account()
                .cloned()
                .context("a relay device 1 has its account")
        })
        .collect::<anyhow::Result<_>>()?;
    let phase = Instant::now();
    let mut members = {
        let mut out = Vec::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let mut mls = BenchDevice::open(
                &stores.path().join(format!("d{i}")),
                &d.name,
                d.device_id,
                d.identity_copy()?,
            )
            .map_err(|e| anyhow!("{}'s store: {e}", d.label()))?;
            mls.set_own_list(&accounts[i].1).map_err(|e| anyhow!(e))?;
            let others: Vec<_> = accounts
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone())
                .collect();
            mls.know(&others).map_err(|e| anyhow!(e))?;
            out.push(Member {
                net: d.clone(),
                mls,
            });
        }
        out
    };
    eprintln!(
        "group: {} client stores made, each pinning {} accounts, in {:.1} s",
        members.len(),
        members.len() - 1,
        phase.elapsed().as_secs_f64()
    );

    // KeyPackages, one per device, uploaded.
    let phase = Instant::now();
    for m in members.iter_mut().skip(1) {
        let kps = (m.mls.key_packages(1)).map_err(|e| anyhow!(e))?;
        groups(m.net.channel())
            .upload_key_packages(m.net.request(v1::UploadKeyPackagesRequest {
                key_packages: kps,
                last_resort: Vec::new(),
            }))
            .await
            .map_err(|s| anyhow!("uploading KeyPackages: {}", sentence(&s)))?;
    }
    eprintln!(
        "group: KeyPackages made and uploaded in {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    // The group: member 0 creates it and adds members 1..n in batches.
    let mut group_id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut group_id);
    let mut all = members.into_iter();
    let mut committer = all.next().context("no committer")?;
    let in_group: Vec<Member> = all.by_ref().take(n - 1).collect();
    let mut extras: Vec<Member> = all.collect();
    (committer.mls.create_group(&group_id, "bench")).map_err(|e| anyhow!(e))?;
    let gs = groups(committer.net.channel());
    gs.clone()
        .create_group(committer.net.request(v1::CreateGroupRequest {
            group_id: group_id.to_vec(),
        }))
        .await
        .map_err(|s| anyhow!("CreateGroup: {}", sentence(&s)))?;
    let phase = Instant::now();
    let mut setup_welcome = 0usize;
    for batch in in_group.chunks(ADD_BATCH) {
        let nets: Vec<&Arc<Device>> = batch.iter().map(|m| &m.net).collect();
        let adds = fetch_adds(&committer, &nets).await?;
        let made = (committer.mls.commit(&group_id, &adds, &[]))
            .map_err(|e| anyhow!("the setup commit: {e}"))?;
        setup_welcome = setup_welcome.max(made.welcome.len());
        send_commit(&gs, &committer, &group_id, made, &nets).await?;
    }
    eprintln!(
        "group: {n} members added by {} commit(s) in {:.1} s (largest Welcome {setup_welcome} B)",
        (n - 1).div_ceil(ADD_BATCH),
        phase.elapsed().as_secs_f64()
    );

    // Every member opens its stream, joins from its Welcome and processes
    // the later setup commits; then it reads the measured messages.
    let phase = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Got>();
    let cpus = Arc::new(Semaphore::new(args.decrypt_threads.max(1)));
    let mut process_ms = Vec::with_capacity((n - 1) * args.messages);
    let mut tasks = Vec::with_capacity(n - 1);
    for member in in_group {
        tasks.push(tokio::spawn(member_task(
            member,
            group_id,
            args.messages,
            cpus.clone(),
            ready_tx.clone(),
            got_tx.clone(),
        )));
    }
    drop(ready_tx);
    drop(got_tx);
    for _ in 0..n - 1 {
        tokio::time::timeout(Duration::from_secs(3600), ready_rx.recv())
            .await
            .context("members did not join within an hour")?
            .context("the members stopped")?
            .map_err(|e| anyhow!("a member failed: {e}"))?;
    }
    eprintln!(
        "group: {} members joined from their Welcome, streams open, in {:.1} s",
        n - 1,
        phase.elapsed().as_secs_f64()
    );

    // 1. Application messages, one at a time, to all n - 1 other members.
    let before = server_db.as_deref().map(read_storage).transpose()?;
    let mut delivered = Vec::with_capacity(args.messages);
    let mut decrypted = Vec::with_capacity(args.messages);
    let mut encrypt_ms = Vec::with_capacity(args.messages);
    let mut ciphertext = Vec::with_capacity(args.messages);
    let body_pad = "x".repeat(args.payload.saturating_sub(8));
    for k in 0..args.messages {
        let body = format!("{k:08}{body_pad}");
        let commitment = random16().repeat(2);
        let t0 = Instant::now();
        let (epoch, wire) = ({
            committer
                .mls
                .encrypt(&group_id, body.as_bytes(), &commitment)
        })
        .map_err(|e| anyhow!(e))?;
        encrypt_ms.push(ms(t0.elapsed()));
        ciphertext.push(wire.len() as f64);
        gs.clone()
            .send_group_message(committer.net.request(v1::SendGroupMessageRequest {
                group_id: group_id.to_vec(),
                epoch,
                message_id: random16(),
                kind: v1::GroupMessageKind::Application as i32,
                content: wire,
                franking_commitment: commitment,
                retention_secs: 0,
            }))
            .await
            .map_err(|s| anyhow!("SendGroupMessage: {}", sentence(&s)))?;
        let mut last_streamed = t0;
        let mut last_decrypted = t0;
        for _ in 0..n - 1 {
            let (index, streamed, done, took) = tokio::time::timeout(args.deadline, got_rx.recv())
                .await
                .with_context(|| format!("message {k} was not decrypted by every member in time"))?
                .context("a member stopped (see its error)")?;
            if index != k {
                bail!("a member decrypted message {index} while {k} was awaited");
            }
            process_ms.push(ms(took));
            last_streamed = last_streamed.max(streamed);
            last_decrypted = last_decrypted.max(done);
        }
        delivered.push(ms(last_streamed - t0));
        decrypted.push(ms(last_decrypted - t0));
    }
    let after = server_db.as_deref().map(read_storage).transpose()?;
    let mut in_group = Vec::with_capacity(n - 1);
    for task in tasks {
        in_group.push(task.await.context("a member task failed")??);
    }
    // Acknowledge, so the server may delete the messages.
    for (m, seq) in &in_group {
        m.net
            .messages_client(MAX_ITEM)
            .acknowledge(m.net.request(v1::AcknowledgeRequest {
                envelope_ids: Vec::new(),
                group_acks: vec![v1::GroupAck {
                    group_id: group_id.to_vec(),
                    seq: *seq,
                }],
            }))
            .await
            .map_err(|s| anyhow!("Acknowledge: {}", sentence(&s)))?;
    }
    let acked = server_db.as_deref().map(read_storage).transpose()?;
    let mut in_group: Vec<Member> = in_group.into_iter().map(|(m, _)| m).collect();

    let delivered = sorted(delivered);
    let process_ms = sorted(process_ms);
    let decrypted = sorted(decrypted);
    let ct_mean = ciphertext.iter().sum::<f64>() / ciphertext.len().max(1) as f64;
    println!(
        "group {n}: message to {} online member devices ({} messages of {} B text, {ct_mean:.0} B ciphertext, {} members decrypting at once): all streamed p50 {:.1} ms p99 {:.1} ms; all decrypted p50 {:.1} ms p99 {:.1} ms (max {:.1}); sender encrypt median {:.2} ms; one member's decrypt (process) median {:.2} ms p99 {:.2} ms",
        n - 1,
        args.messages,
        args.payload,
        args.decrypt_threads,
        pct(&delivered, 50.0),
        pct(&delivered, 99.0),
        pct(&decrypted, 50.0),
        pct(&decrypted, 99.0),
        decrypted.last().copied().unwrap_or(f64::NAN),
        median(encrypt_ms.clone()),
        pct(&process_ms, 50.0),
        pct(&process_ms, 99.0),
    );
    let mut storage_json = serde_json::Value::Null;
    if let (Some(b), Some(a), Some(z)) = (&before, &after, &acked) {
        let rows = (a.rows - b.rows).max(1) as f64;
        let per_msg = |after: u64, before: u64| (after as f64 - before as f64) / rows;
        let content_per_msg = per_msg(a.content, b.content);
        let records_per_msg = per_msg(a.record_bytes, b.record_bytes);
        let used_per_msg = per_msg(a.used_bytes, b.used_bytes);
        let pages_per_msg = per_msg(a.page_bytes, b.page_bytes);
        println!(
            "group {n}: server storage per group message: {content_per_msg:.0} B content; records (row + index entries) {records_per_msg:.1} B ({:.3} × ciphertext); used in their pages {used_per_msg:.1} B ({:.3} ×); whole database pages {pages_per_msg:.0} B ({:.2} ×); one row per message for {} recipients; after every member acknowledged: {} rows left",
            records_per_msg / ct_mean,
            used_per_msg / ct_mean,
            pages_per_msg / ct_mean,
            n - 1,
            z.rows,
        );
        storage_json = serde_json::json!({
            "content_bytes": content_per_msg,
            "record_bytes": records_per_msg,
            "used_page_bytes": used_per_msg,
            "page_bytes": pages_per_msg,
            "rows_after_ack": z.rows,
        });
    }

    // 2. Add one device to the group of n, remove it again, `trials` times.
    let mut add_ms = Vec::new();
    let mut remove_ms = Vec::new();
    let mut recv_add_ms = Vec::new();
    let mut recv_remove_ms = Vec::new();
    let mut join_ms = Vec::new();
    let mut add_commit = Vec::new();
    let mut remove_commit = Vec::new();
    let mut welcome = Vec::new();
    let receivers = COMMIT_RECEIVERS.min(in_group.len());
    for extra in extras.iter_mut() {
        let adds = fetch_adds(&committer, &[&extra.net]).await?;
        let t = Instant::now();
        let made = (committer.mls.commit(&group_id, &adds, &[]))
            .map_err(|e| anyhow!("the measured add: {e}"))?;
        add_ms.push(ms(t.elapsed()));
        add_commit.push(made.commit.len() as f64);
        welcome.push(made.welcome.len() as f64);
        for m in in_group.iter_mut().take(receivers) {
            let t = Instant::now();
            process_commit(&mut m.mls, &group_id, &made.commit)?;
            recv_add_ms.push(ms(t.elapsed()));
        }
        let t = Instant::now();
        (extra.mls.join(&made.welcome)).map_err(|e| anyhow!("the added device's join: {e}"))?;
        join_ms.push(ms(t.elapsed()));
        let remove = [(extra.net.name.clone(), extra.net.device_id)];
        let t = Instant::now();
        let made = (committer.mls.commit(&group_id, &[], &remove))
            .map_err(|e| anyhow!("the measured remove: {e}"))?;
        remove_ms.push(ms(t.elapsed()));
        remove_commit.push(made.commit.len() as f64);
        for m in in_group.iter_mut().take(receivers) {
            let t = Instant::now();
            process_commit(&mut m.mls, &group_id, &made.commit)?;
            recv_remove_ms.push(ms(t.elapsed()));
        }
    }
    println!(
        "group {n}: add 1 device to {n}: committer {:.1} ms (check KeyPackage + stage + merge, median of {trials}), each receiver {:.1} ms, commit {:.0} B, Welcome {:.0} B, joiner {:.1} ms",
        median(add_ms.clone()),
        median(recv_add_ms.clone()),
        median(add_commit.clone()),
        median(welcome.clone()),
        median(join_ms.clone()),
    );
    println!(
        "group {n}: remove 1 device from {}: committer {:.1} ms, each receiver {:.1} ms, commit {:.0} B",
        n + 1,
        median(remove_ms.clone()),
        median(recv_remove_ms.clone()),
        median(remove_commit.clone()),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "group_size": n,
                "messages": args.messages,
                "decrypt_threads": args.decrypt_threads,
                "ciphertext_bytes": ct_mean,
                "all_streamed_ms": {"p50": pct(&delivered, 50.0), "p99": pct(&delivered, 99.0)},
                "all_decrypted_ms": {"p50": pct(&decrypted, 50.0), "p99": pct(&decrypted, 99.0)},
                "member_decrypt_ms": {"p50": pct(&process_ms, 50.0), "p99": pct(&process_ms, 99.0)},
                "sender_encrypt_ms": median(encrypt_ms),
                "storage_per_message": storage_json,
                "add": {"committer_ms": median(add_ms), "receiver_ms": median(recv_add_ms),
                        "commit_bytes": median(add_commit), "welcome_bytes": median(welcome),
                        "join_ms": median(join_ms)},
                "remove": {"committer_ms": median(remove_ms), "receiver_ms": median(recv_remove_ms),
                           "commit_bytes": median(remove_commit)},
                "setup_seconds": started.elapsed().as_secs_f64(),
            })
        );
    }
    drop(stores);
    Ok(())
}

fn process_commit(mls: &mut BenchDevice, id: &[u8], commit: &[u8]) -> anyhow::Result<()> {
    match mls.process(id, commit) {
        Ok(BenchProcessed::Commit) => Ok(()),
        Ok(other) => bail!("a commit processed as {other:?}"),
        Err(e) => bail!("processing a commit: {e}"),
    }
}

/// FetchKeyPackages for each device (its own account), as the committer.
async fn fetch_adds(committer: &Member, devices: &[&Arc<Device>]) -> anyhow::Result<Vec<BenchAdd>> {
    let gs = groups(committer.net.channel());
    let mut adds = Vec::with_capacity(devices.len());
    for d in devices {
        let answer = gs
            .clone()
            .fetch_key_packages(committer.net.request(v1::FetchKeyPackagesRequest {
                username: d.name.clone(),
            }))
            .await
            .map_err(|s| anyhow!("FetchKeyPackages {}: {}", d.name, sentence(&s)))?
            .into_inner();
        let kp = answer
            .key_packages
            .into_iter()
            .find(|k| k.device_id == d.device_id)
            .with_context(|| format!("{} has no KeyPackage left", d.label()))?;
        adds.push(BenchAdd {
            username: d.name.clone(),
            device_id: d.device_id,
            key_package: kp.key_package,
            key: d.identity_copy()?.public().clone(),
        });
    }
    Ok(adds)
}

async fn send_commit(
    gs: &GroupServiceClient<Channel>,
    committer: &Member,
    id: &[u8; 16],
    made: missive_client::group_bench::BenchCommit,
    added: &[&Arc<Device>],
) -> anyhow::Result<()> {
    gs.clone()
        .commit(
            committer.net.request(v1::CommitRequest {
                group_id: id.to_vec(),
                epoch: made.epoch,
                message_id: random16(),
                commit: made.commit,
                welcome: made.welcome,
                added: added
                    .iter()
                    .map(|d| v1::DeviceAddress {
                        username: d.name.clone(),
                        device_id: d.device_id,
                    })
                    .collect(),
                removed: Vec::new(),
            }),
        )
        .await
        .map_err(|s| anyhow!("Commit: {}", sentence(&s)))?;
    Ok(())
}

/// What a member reports per decrypted message: (index, streamed at,
/// decrypted at, time its `process` took).
type Got = (usize, Instant, Instant, Duration);

/// One member's stream: join from the Welcome, process the setup commits,
/// say it is ready at the end of the backlog, then decrypt `messages`
/// application messages, reporting each. Gives the member back with the
/// last seq it read.
async fn member_task(
    member: Member,
    id: [u8; 16],
    messages: usize,
    cpus: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    got: mpsc::UnboundedSender<Got>,
) -> anyhow::Result<(Member, u64)> {
    let label = member.net.label();
    match member_loop(member, id, messages, cpus, &ready, got).await {
        Ok(done) => Ok(done),
        Err(e) => {
            let why = format!("member {label}: {e:#}");
            eprintln!("group: {why}");
            let _ = ready.send(Err(why));
            Err(e)
        }
    }
}

async fn member_loop(
    member: Member,
    id: [u8; 16],
    messages: usize,
    cpus: Arc<Semaphore>,
    ready: &mpsc::UnboundedSender<Result<(), String>>,
    got: mpsc::UnboundedSender<Got>,
) -> anyhow::Result<(Member, u64)> {
    let Member { net, mut mls } = member;
    let mut stream = net
        .messages_client(MAX_ITEM)
        .receive(net.request(v1::ReceiveRequest {}))
        .await
        .map_err(|s| anyhow!("opening the receive stream: {}", sentence(&s)))?
        .into_inner();
    let mut joined = false;
    let mut seen = 0usize;
    let mut last_seq = 0;
    let mut decrypted = BTreeSet::new();
    while seen < messages {
        let item = stream
            .message()
            .await
            .map_err(|s| anyhow!("the receive stream failed: {}", sentence(&s)))?
            .context("the receive stream closed")?;
        let streamed = Instant::now();
        let message = match item.item {
            Some(receive_response::Item::GroupMessage(g)) => g,
            Some(receive_response::Item::QueueEmpty(_)) => {
                if !joined {
                    bail!("the backlog held no Welcome");
                }
                let _ = ready.send(Ok(()));
                continue;
            }
            _ => continue,
        };
        last_seq = last_seq.max(message.seq);
        let kind = v1::GroupMessageKind::try_from(message.kind)
            .map_err(|_| anyhow!("unknown group message kind {}", message.kind))?;
        // Each store call runs on a blocking thread, at most as many at once
        // as the machine has cores, so that reading the streams (the
        // server's delivery) does not queue behind the members' crypto.
        let permit = cpus.clone().acquire_owned().await?;
        let content = message.content;
        let (back, outcome, took) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let outcome = match kind {
                v1::GroupMessageKind::Welcome => mls.join(&content).map(|_| None),
                v1::GroupMessageKind::Commit if joined => mls.process(&id, &content).map(|_| None),
                v1::GroupMessageKind::Application => mls.process(&id, &content).map(Some),
                _ => Ok(None),
            };
            (mls, outcome, t.elapsed())
        })
        .await?;
        drop(permit);
        mls = back;
        let outcome = outcome.map_err(|e| anyhow!("processing a {kind:?} message: {e}"))?;
        match (kind, outcome) {
            (v1::GroupMessageKind::Welcome, _) => joined = true,
            (v1::GroupMessageKind::Application, Some(BenchProcessed::Application(plaintext))) => {
                let index: usize = std::str::from_utf8(plaintext.get(..8).unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .context("a message without its index")?;
                if !decrypted.insert(index) {
                    bail!("message {index} decrypted twice");
                }
                seen += 1;
                let _ = got.send((index, streamed, Instant::now(), took));
            }
            (v1::GroupMessageKind::Application, other) => {
                bail!("an application message processed as {other:?}")
            }
            _ => {}
        }
    }
    Ok((Member { net, mls }, last_seq))
}
