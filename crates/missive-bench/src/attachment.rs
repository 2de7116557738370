//! Attachment mode (`--attachment-size BYTES`, issue 15): upload and download
//! throughput of the real `missive` CLI against a node started here, with
//! the peak RSS of both sides.
//!
//! Two accounts are registered with the CLI; a text message sets up their
//! session first, so no timed command runs PQXDH. For each size, `missive
//! send bob --file PATH` is the upload and `missive recv --json` (which
//! downloads, verifies and saves into HOME/attachments) the download; each
//! is timed wall-clock, start-up included. A 0-byte file sent and received
//! the same way is the baseline: size / (time − baseline time) is the
//! transfer alone. The saved file is compared byte for byte with the source.
//!
//! Peak RSS: the CLI's `VmHWM` polled every [`POLL`] while it runs (it only
//! grows, so the last read is within one poll of the peak); the node's
//! `VmHWM` is reset through `/proc/PID/clear_refs` before each command and
//! read after it, so each figure belongs to that command alone.

use std::fs::File;
use std::io::{BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;

use crate::procstat;

/// How often the CLI's peak RSS and CPU time are read while it runs.
const POLL: Duration = Duration::from_millis(5);

/// Issue 15's throughput target for a 256 MiB file, each way, in MB/s.
const TARGET_MB_PER_SEC: f64 = 200.0;

/// Issue 15's bound on either side's peak RSS, in MiB.
const TARGET_RSS_MIB: f64 = 64.0;

/// The node under measurement, as the CLI reaches it.
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) ca: PathBuf,
    /// The node's process, when missive-bench started it (else no server
    /// figures).
    pub(crate) pid: Option<u32>,
}

/// What one CLI command cost.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    seconds: f64,
    client_rss_mib: f64,
    client_cpu_seconds: f64,
    server_rss_mib: f64,
    server_cpu_seconds: f64,
}

impl Cost {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seconds": round(self.seconds, 4),
            "client_peak_rss_mib": round(self.client_rss_mib, 1),
            "client_cpu_seconds": round(self.client_cpu_seconds, 2),
            "server_peak_rss_mib": round(self.server_rss_mib, 1),
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
        })
    }
}

/// One size, both ways.
struct SizeResult {
    bytes: u64,
    upload: Cost,
    download: Cost,
    /// The same crypto in this process, without I/O.
    floor: CryptoFloor,
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// MB/s (10^6 bytes) over `seconds`; 0 when there is no time left.
fn mb_per_sec(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

/// The client's per-chunk crypto alone, in this process on one core: seal
/// and hash every chunk of a `bytes`-byte file (what an upload computes),
/// then open and hash them (a download), with no I/O. Gives the seconds of
/// each, the CPU floor of the CLI's transfer.
fn crypto_floor(bytes: u64) -> anyhow::Result<CryptoFloor> {
    use missive_crypto::attachment::{AttachmentCipher, AttachmentKey, CiphertextHasher};
    let key = AttachmentKey::generate(&mut rand::rngs::OsRng);
    let cipher = AttachmentCipher::new(&key, bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let layout = *cipher.layout();
    let mut plain = vec![0u8; missive_crypto::attachment::ATTACHMENT_CHUNK_LEN];
    rand::thread_rng().fill_bytes(&mut plain);
    let err = |e: missive_crypto::attachment::AttachmentError| anyhow::anyhow!("{e}");
    // Every chunk's ciphertext is needed to time opening; keep the last
    // full-size chunk and the final one (opening the same full chunk again
    // costs what opening a new one does).
    let started = Instant::now();
    let mut hasher = CiphertextHasher::new(&layout);
    let mut sealed = Vec::new();
    for index in 0..layout.chunk_count() {
        let len = layout.file_bytes_in_chunk(index).map_err(err)?;
        let chunk = cipher.seal_chunk(index, &plain[..len]).map_err(err)?;
        hasher.update(&chunk);
        if index == 0 || index + 1 == layout.chunk_count() {
            sealed.push((index, chunk));
        }
    }
    let _ = hasher.finalize();
    let seal = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut hasher = CiphertextHasher::new(&layout);
    let last = layout.chunk_count() - 1;
    for index in 0..layout.chunk_count() {
        let (at, chunk) = if index == last {
            &sealed[sealed.len() - 1]
        } else {
            &sealed[0]
        };
        let opened = cipher.open_chunk(*at, chunk).map_err(err)?;
        std::hint::black_box(&opened);
        hasher.update(chunk);
    }
    let _ = hasher.finalize();
    let open = started.elapsed().as_secs_f64();
    // The two halves of sealing, each alone: the chunk AEAD, and the
    // ciphertext hash (SHA-256).
    let started = Instant::now();
    for index in 0..layout.chunk_count() {
        let len = layout.file_bytes_in_chunk(index).map_err(err)?;
        std::hint::black_box(cipher.seal_chunk(index, &plain[..len]).map_err(err)?);
    }
    let aead = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut hasher = CiphertextHasher::new(&layout);
    for index in 0..layout.chunk_count() {
        hasher.update(if index == last {
            &sealed[sealed.len() - 1].1
        } else {
            &sealed[0].1
        });
    }
    let _ = std::hint::black_box(hasher.finalize());
    let hash = started.elapsed().as_secs_f64();
    Ok(CryptoFloor {
        seal,
        open,
        aead,
        hash,
    })
}

/// Seconds of the client's chunk crypto alone over one file ([`crypto_floor`]).
#[derive(Clone, Copy, Debug)]
struct CryptoFloor {
    /// Seal and hash every chunk (an upload's crypto).
    seal: f64,
    /// Open and hash every chunk (a download's).
    open: f64,
    /// Seal alone (ChaCha20-Poly1305).
    aead: f64,
    /// Hash alone (SHA-256 over the ciphertext).
    hash: f64,
}

/// Runs the attachment mode: `sizes` in the order given.
pub(crate) async fn run(server: &Server, sizes: &[u64], json: bool) -> anyhow::Result<()> {
    let client = crate::nodes::sibling_binary("missive")?;
    let dir = tempfile::tempdir()?;
    let tag: u32 = rand::thread_rng().gen_range(0..1_000_000);
    let alice = Cli::new(&client, server, dir.path(), format!("a{tag:06}"));
    let bob = Cli::new(&client, server, dir.path(), format!("b{tag:06}"));
    for user in [&alice, &bob] {
        user.run(&["register", &user.name]).await?;
    }
    // The first message runs PQXDH; the timed ones below use the session.
    alice.run(&["send", &bob.name, "hello"]).await?;
    bob.run(&["recv", "--json"]).await?;

    let files = dir.path().join("files");
    std::fs::create_dir_all(&files)?;
    let empty = files.join("empty.bin");
    File::create(&empty)?;
    let (base_up, base_down) = round_trip(&alice, &bob, &empty, 0).await?;
    eprintln!(
        "baseline (0-byte file): send {:.3} s, recv {:.3} s",
        base_up.seconds, base_down.seconds
    );

    let mut results = Vec::new();
    for (k, &bytes) in sizes.iter().enumerate() {
        let source = files.join(format!("file{k}-{bytes}.bin"));
        write_file(&source, bytes)?;
        let (upload, download) = round_trip(&alice, &bob, &source, bytes).await?;
        std::fs::remove_file(&source)?;
        let floor = crypto_floor(bytes)?;
        eprintln!(
            "{bytes} B: send {:.3} s, recv {:.3} s, byte-identical; the chunk crypto alone (one core, no I/O): seal + hash {:.3} s ({:.0} MB/s), open + hash {:.3} s ({:.0} MB/s); AEAD seal alone {:.0} MB/s, SHA-256 alone {:.0} MB/s",
            upload.seconds,
            download.seconds,
            floor.seal,
            mb_per_sec(bytes, floor.seal),
            floor.open,
            mb_per_sec(bytes, floor.open),
            mb_per_sec(bytes, floor.aead),
            mb_per_sec(bytes, floor.hash),
        );
        results.push(SizeResult {
            bytes,
            upload,
            download,
            floor,
        });
    }

    print_table(&results, base_up, base_down, server.pid.is_some());
    if json {
        let sizes: Vec<_> = results
            .iter()
            .map(|r| {
                let net_up = r.upload.seconds - base_up.seconds;
                let net_down = r.download.seconds - base_down.seconds;
                serde_json::json!({
                    "bytes": r.bytes,
                    "upload": r.upload.json(),
                    "download": r.download.json(),
                    "upload_mb_per_sec": round(mb_per_sec(r.bytes, r.upload.seconds), 1),
                    "download_mb_per_sec": round(mb_per_sec(r.bytes, r.download.seconds), 1),
                    "upload_net_mb_per_sec": round(mb_per_sec(r.bytes, net_up), 1),
                    "download_net_mb_per_sec": round(mb_per_sec(r.bytes, net_down), 1),
                    "crypto_seal_mb_per_sec": round(mb_per_sec(r.bytes, r.floor.seal), 1),
                    "crypto_open_mb_per_sec": round(mb_per_sec(r.bytes, r.floor.open), 1),
                    "crypto_aead_mb_per_sec": round(mb_per_sec(r.bytes, r.floor.aead), 1),
                    "crypto_sha256_mb_per_sec": round(mb_per_sec(r.bytes, r.floor.hash), 1),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "attachments": sizes,
                "baseline_upload": base_up.json(),
                "baseline_download": base_down.json(),
            })
        );
    }
    Ok(())
}

fn print_table(results: &[SizeResult], base_up: Cost, base_down: Cost, server_figures: bool) {
    println!(
        "{:>11} {:>4} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "bytes", "way", "secs", "MB/s", "net MB/s", "cli RSS", "cli CPU s", "srv RSS", "srv CPU s"
    );
    let row = |bytes: u64, way: &str, cost: &Cost, base: &Cost| {
        let net = if bytes == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", mb_per_sec(bytes, cost.seconds - base.seconds))
        };
        let server = |x: f64| {
            if server_figures {
                format!("{x:.1}")
            } else {
                "-".to_owned()
            }
        };
        println!(
            "{bytes:>11} {way:>4} {:>8.3} {:>8.1} {net:>9} {:>6.1} MiB {:>10.2} {:>6} MiB {:>10}",
            cost.seconds,
            mb_per_sec(bytes, cost.seconds),
            cost.client_rss_mib,
            cost.client_cpu_seconds,
            server(cost.server_rss_mib),
            server(cost.server_cpu_seconds),
        );
    };
    row(0, "up", &base_up, &base_up);
    row(0, "down", &base_down, &base_down);
    for r in results {
        row(r.bytes, "up", &r.upload, &base_up);
        row(r.bytes, "down", &r.download, &base_down);
    }
    println!(
        "(secs: the whole `missive send --file` / `missive recv --json` command, start-up and one message included; net MB/s subtracts the 0-byte baseline)"
    );
    for r in results.iter().filter(|r| r.bytes >= 256 << 20) {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let speed = mb_per_sec(r.bytes, r.upload.seconds.max(r.download.seconds));
        let rss = [r.upload, r.download]
            .iter()
            .map(|c| c.client_rss_mib.max(c.server_rss_mib))
            .fold(0.0, f64::max);
        println!(
            "{} B: >= {TARGET_MB_PER_SEC} MB/s each way {} (slower way {speed:.1} MB/s); peak RSS < {TARGET_RSS_MIB} MiB {} ({rss:.1} MiB)",
            r.bytes,
            verdict(speed >= TARGET_MB_PER_SEC),
            verdict(rss < TARGET_RSS_MIB),
        );
    }
}

/// Sends `source` from `alice` to `bob` and receives it; checks that the
/// saved file is `source`, byte for byte, and removes it.
async fn round_trip(
    alice: &Cli<'_>,
    bob: &Cli<'_>,
    source: &Path,
    bytes: u64,
) -> anyhow::Result<(Cost, Cost)> {
    let path = source.display().to_string();
    let (upload, _) = alice.run(&["send", &bob.name, "--file", &path]).await?;
    let (download, stdout) = bob.run(&["recv", "--json"]).await?;
    let saved = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            if let Some(error) = v["file_error"].as_str() {
                return Some(Err(anyhow::anyhow!("the download failed: {error}")));
            }
            v["file"].as_str().map(|p| Ok(PathBuf::from(p)))
        })
        .with_context(|| format!("`missive recv --json` reported no saved file:\n{stdout}"))??;
    let len = std::fs::metadata(&saved)?.len();
    if len != bytes {
        bail!("{} has {len} bytes, not {bytes}", saved.display());
    }
    if !same_contents(source, &saved)? {
        bail!("{} differs from {}", saved.display(), source.display());
    }
    std::fs::remove_file(&saved)?;
    Ok((upload, download))
}

/// Writes `bytes` pseudo-random bytes (ChaCha, so no period a
/// compressor or deduplicator could find) to `path`.
fn write_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(bytes);
    let mut out = BufWriter::new(File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64))?;
        rng.fill_bytes(&mut block[..n]);
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Whether two files hold the same bytes, read 1 MiB at a time.
fn same_contents(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// One account driven through the `missive` binary.
struct Cli<'a> {
    program: &'a Path,
    server: &'a Server,
    home: PathBuf,
    name: String,
}

impl<'a> Cli<'a> {
    fn new(program: &'a Path, server: &'a Server, root: &Path, name: String) -> Cli<'a> {
        Cli {
            program,
            server,
            home: root.join(&name),
            name,
        }
    }

    /// Runs `missive --home HOME --server URL --ca CA ARGS`, requires exit 0,
    /// and gives back its cost and standard output.
    async fn run(&self, args: &[&str]) -> anyhow::Result<(Cost, String)> {
        if let Some(pid) = self.server.pid {
            reset_peak_rss(pid)?;
        }
        let server_cpu = self.server.pid.and_then(procstat::cpu_seconds);
        let started = Instant::now();
        let mut child = Command::new(self.program)
            .arg("--home")
            .arg(&self.home)
            .arg("--server")
            .arg(&self.server.url)
            .arg("--ca")
            .arg(&self.server.ca)
            .args(args)
            .env_remove("MISSIVE_PASSPHRASE")
            .env_remove("MISSIVE_HOME")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", self.program.display()))?;
        let pid = child.id().context("missive exited at once")?;
        let mut stdout = child.stdout.take().context("no stdout")?;
        let mut stderr = child.stderr.take().context("no stderr")?;
        let out = tokio::spawn(async move {
            let mut s = String::new();
            stdout.read_to_string(&mut s).await.map(|_| s)
        });
        let err = tokio::spawn(async move {
            let mut s = String::new();
            stderr.read_to_string(&mut s).await.map(|_| s)
        });
        let (mut rss, mut cpu) = (0.0f64, 0.0f64);
        let status = loop {
            if let Some(x) = procstat::peak_rss_mib(pid) {
                rss = rss.max(x);
            }
            if let Some(x) = procstat::cpu_seconds(pid) {
                cpu = cpu.max(x);
            }
            tokio::select! {
                status = child.wait() => break status?,
                () = tokio::time::sleep(POLL) => {}
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let server_rss = self
            .server
            .pid
            .and_then(procstat::peak_rss_mib)
            .unwrap_or(0.0);
        let server_cpu = match (server_cpu, self.server.pid.and_then(procstat::cpu_seconds)) {
            (Some(before), Some(after)) => after - before,
            _ => 0.0,
        };
        let stdout = out.await??;
        let stderr = err.await??;
        if !status.success() {
            bail!(
                "`missive {}` as {} failed ({status}):\nstdout: {stdout}\nstderr: {stderr}",
                args.join(" "),
                self.name
            );
        }
        Ok((
            Cost {
                seconds,
                client_rss_mib: rss,
                client_cpu_seconds: cpu,
                server_rss_mib: server_rss,
                server_cpu_seconds: server_cpu,
            },
            stdout,
        ))
    }
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux ≥ 4.0).
fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("could not reset the peak RSS of process {pid}"))
}
