//! Helpers for the end-to-end tests in `tests/tests/`: they run the real
//! `missive-server` and `missive` binaries as child processes over real TLS
//! on 127.0.0.1.
//!
//! # How the binaries are found
//!
//! `env!("CARGO_BIN_EXE_...")` only exists for a package's own binaries, and a
//! library dependency does not build the binaries of its crate. So the first
//! helper call per test process runs `cargo build -p missive-server -p
//! missive-client --bins` into the very target directory and profile the test
//! executable was built in (found from [`std::env::current_exe`]:
//! `TARGET/PROFILE/deps/test-binary`), which is a no-op when they are fresh
//! and can never pick up stale binaries. Set `MISSIVE_E2E_BIN_DIR=DIR` to use
//! prebuilt binaries from `DIR` instead (no cargo invocation).
//!
//! # Endpoints
//!
//! The CLI helpers ([`User::run`], [`User::spawn`], ...) take any
//! [`Endpoint`]: the real [`Server`], or a [`liar::LyingServer`] in front of
//! one (a TLS proxy that forwards every RPC and can lie on demand). Malicious
//! *peers* (accounts that build their own ciphertext) are in [`raw`]; the
//! parsing of captured ciphertext headers is in [`wire`].
#![forbid(unsafe_code)]

pub mod liar;
pub mod raw;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a server may take to print its listening line.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths of the two binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `missive-server`.
    pub server: PathBuf,
    /// `missive`.
    pub client: PathBuf,
}

/// An error of the harness itself (not of the code under test).
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

pub(crate) fn herr(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// Something the `missive` CLI can talk to: the real [`Server`] or a
/// [`liar::LyingServer`].
pub trait Endpoint: Sync {
    /// `https://127.0.0.1:PORT`.
    fn url(&self) -> &str;
    /// PEM file of the CA that signed its TLS certificate.
    fn ca(&self) -> PathBuf;
    /// What it logged so far (shown when a CLI run fails).
    fn log(&self) -> String;
}

/// Builds (once per process) and returns the binaries.
pub fn binaries() -> Result<Binaries, HarnessError> {
    static BINS: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINS.get_or_init(|| locate_and_build().map_err(|e| e.0))
        .clone()
        .map_err(HarnessError)
}

fn locate_and_build() -> Result<Binaries, HarnessError> {
    if let Some(dir) = std::env::var_os("MISSIVE_E2E_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return Ok(Binaries {
            server: dir.join("missive-server"),
            client: dir.join("missive"),
        });
    }
    let exe = std::env::current_exe().map_err(|e| herr(format!("current_exe: {e}")))?;
    // TARGET/PROFILE/deps/name-hash
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| herr("test executable is not in TARGET/PROFILE/deps"))?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| herr("no target dir"))?
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| herr("no workspace root"))?
        .join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    // `cargo test` runs us with the e2e package's CARGO_PKG_*, CARGO_MANIFEST_*
    // ... variables; rustc records env!() reads, so inheriting them would make
    // the nested build think the binaries are stale and relink them each run.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "CARGO_TARGET_TMPDIR"
            || k == "OUT_DIR"
            || k == "CARGO_RUSTC_CURRENT_DIR"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", "missive-server", "-p", "missive-client", "--bins"])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| herr(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(herr(format!(
            "building the binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Binaries {
        server: profile_dir.join("missive-server"),
        client: profile_dir.join("missive"),
    })
}

/// A running `missive-server` on 127.0.0.1 with its own data directory.
pub struct Server {
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    url: String,
}

impl Server {
    /// Starts a server on a free port with `data_dir` (created if needed).
    /// Its stderr goes to `log` (outside the data dir).
    pub fn start(data_dir: &Path, log: &Path) -> Result<Server, HarnessError> {
        Self::start_with(data_dir, log, &[])
    }

    /// Like [`Server::start`] with extra `serve` arguments (e.g.
    /// `--disable-rate-limits`).
    pub fn start_with(data_dir: &Path, log: &Path, extra: &[&str]) -> Result<Server, HarnessError> {
        Self::start_listening(data_dir, log, "127.0.0.1:0", extra)
    }

    /// Stops the server and starts it again on the same port and data
    /// directory: clients that reconnect find it where it was.
    pub fn restart_same_port(&mut self) -> Result<(), HarnessError> {
        let listen = self
            .url
            .strip_prefix("https://")
            .ok_or_else(|| herr(format!("unexpected server url {}", self.url)))?
            .to_owned();
        self.stop();
        let mut last = None;
        // The port was just released; give the kernel a moment if needed.
        for _ in 0..20 {
            match Self::start_listening(&self.data_dir, &self.log, &listen, &[]) {
                Ok(s) => {
                    *self = s;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(last.unwrap_or_else(|| herr("server did not restart")))
    }

    fn start_listening(
        data_dir: &Path,
        log: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Result<Server, HarnessError> {
        let bins = binaries()?;
        std::fs::create_dir_all(data_dir).map_err(|e| herr(format!("data dir: {e}")))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| herr(format!("log file: {e}")))?;
        let mut child = Command::new(&bins.server)
            .arg("serve")
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| herr(format!("cannot start {}: {e}", bins.server.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| herr("no server stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(url) = line.strip_prefix("missive-server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            url: String::new(),
        };
        match rx.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(url) => server.url = url,
            Err(_) => {
                server.stop();
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(herr(format!(
                    "server did not print its listening line; log:\n{log}"
                )));
            }
        }
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The development CA the server wrote.
    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server: SIGTERM (graceful), then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `missive-server ARGS --data-dir DIR` (e.g. `export-account`).
    pub fn admin(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let bins = binaries()?;
        Command::new(&bins.server)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| herr(format!("cannot run missive-server: {e}")))
    }
}

impl Endpoint for Server {
    fn url(&self) -> &str {
        Server::url(self)
    }

    fn ca(&self) -> PathBuf {
        Server::ca(self)
    }

    fn log(&self) -> String {
        Server::log(self)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One user: a home directory for the `missive` CLI.
pub struct User {
    /// Username.
    pub name: String,
    /// Home directory.
    pub home: PathBuf,
}

/// Result of one CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Parses stdout as JSON lines.
    pub fn json_lines(&self) -> Result<Vec<serde_json::Value>, HarnessError> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| herr(format!("bad JSON {l:?}: {e}"))))
            .collect()
    }
}

impl User {
    /// A user whose home is `root/name`.
    pub fn new(root: &Path, name: &str) -> User {
        User {
            name: name.to_owned(),
            home: root.join(name),
        }
    }

    /// Runs `missive --home HOME --server URL --ca CA ARGS`.
    pub fn run<E: Endpoint + ?Sized>(
        &self,
        server: &E,
        args: &[&str],
    ) -> Result<Run, HarnessError> {
        self.run_with(server, args, &[], None)
    }

    /// Like [`User::run`] with extra environment and optional stdin.
    pub fn run_with<E: Endpoint + ?Sized>(
        &self,
        server: &E,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Result<Run, HarnessError> {
        let mut running = self.spawn_with(server, args, env, stdin.is_some())?;
        if let Some(text) = stdin {
            running.write_stdin(text)?;
        }
        running.wait()
    }

    /// Runs and requires exit 0.
    pub fn ok<E: Endpoint + ?Sized>(&self, server: &E, args: &[&str]) -> Result<Run, HarnessError> {
        let r = self.run(server, args)?;
        if r.ok() {
            Ok(r)
        } else {
            Err(herr(format!(
                "`missive {}` as {} failed ({:?}):\nstdout: {}\nstderr: {}\nserver log:\n{}",
                args.join(" "),
                self.name,
                r.code,
                r.stdout,
                r.stderr,
                server.log()
            )))
        }
    }

    /// Starts `missive ... ARGS` without waiting: for long-running commands
    /// such as `recv --wait N` or `chat`. Collect it with [`Running::wait`]
    /// (or [`Running::wait_timeout`]); dropping a [`Running`] kills it.
    ///
    /// Its stdio are pipes, not a terminal: `chat` (ratatui/crossterm) needs
    /// a pty, which this harness does not provide yet, and exits with an
    /// error without one.
    pub fn spawn<E: Endpoint + ?Sized>(
        &self,
        server: &E,
        args: &[&str],
    ) -> Result<Running, HarnessError> {
        self.spawn_with(server, args, &[], false)
    }

    /// Like [`User::spawn`] with extra environment and, with `stdin`, a pipe
    /// to write to ([`Running::write_stdin`]); otherwise stdin is empty.
    pub fn spawn_with<E: Endpoint + ?Sized>(
        &self,
        server: &E,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: bool,
    ) -> Result<Running, HarnessError> {
        let bins = binaries()?;
        let mut cmd = Command::new(&bins.client);
        cmd.arg("--home")
            .arg(&self.home)
            .arg("--server")
            .arg(server.url())
            .arg("--ca")
            .arg(server.ca())
            .args(args)
            .env_remove("MISSIVE_PASSPHRASE")
            .env_remove("MISSIVE_HOME")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| herr(format!("cannot run missive: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Ok(Running {
            child,
            stdin,
            stdout,
            stderr,
        })
    }
}

/// What a pipe has delivered so far, and the thread reading it to its end
/// (so a chatty child never blocks).
struct Drained {
    seen: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

fn drain(mut pipe: impl std::io::Read + Send + 'static) -> Drained {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    Drained { seen, reader }
}

impl Drained {
    fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    fn finish(self) -> String {
        let Drained { seen, reader } = self;
        let _ = reader.join();
        String::from_utf8_lossy(&seen.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// A `missive` child process started by [`User::spawn`].
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<Drained>,
    stderr: Option<Drained>,
}

impl Running {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Writes to its standard input (only if spawned with a stdin pipe).
    pub fn write_stdin(&mut self, text: &str) -> Result<(), HarnessError> {
        use std::io::Write as _;
        let pipe = self
            .stdin
            .as_mut()
            .ok_or_else(|| herr("spawned without a stdin pipe"))?;
        pipe.write_all(text.as_bytes())
            .and_then(|()| pipe.flush())
            .map_err(|e| herr(format!("stdin: {e}")))
    }

    /// What it printed on standard output so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout
            .as_ref()
            .map(Drained::so_far)
            .unwrap_or_default()
    }

    /// Waits up to `limit` for a line of its standard output starting with
    /// `prefix`, and returns the rest of that line.
    pub fn wait_for_line(&self, prefix: &str, limit: Duration) -> Result<String, HarnessError> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let out = self.stdout_so_far();
            if let Some(rest) = out.lines().find_map(|l| l.strip_prefix(prefix)) {
                return Ok(rest.trim().to_owned());
            }
            if std::time::Instant::now() >= deadline {
                return Err(herr(format!(
                    "no line {prefix:?} within {limit:?}; stdout: {out}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes its standard input (end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether it has exited.
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Closes stdin and waits for it to exit.
    pub fn wait(mut self) -> Result<Run, HarnessError> {
        self.stdin = None;
        let status = self
            .child
            .wait()
            .map_err(|e| herr(format!("missive: {e}")))?;
        Ok(self.collect(status.code()))
    }

    /// Waits at most `limit`, then kills it (the [`Run`] then has
    /// `code: None`).
    pub fn wait_timeout(mut self, limit: Duration) -> Result<Run, HarnessError> {
        self.stdin = None;
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(self.collect(status.code())),
                Ok(None) if std::time::Instant::now() >= deadline => return Ok(self.kill()),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(herr(format!("missive: {e}"))),
            }
        }
    }

    /// Kills it (SIGKILL) and returns what it printed.
    pub fn kill(mut self) -> Run {
        let _ = self.child.kill();
        let code = self.child.wait().ok().and_then(|s| s.code());
        self.collect(code)
    }

    fn collect(&mut self, code: Option<i32>) -> Run {
        Run {
            code,
            stdout: self.stdout.take().map(Drained::finish).unwrap_or_default(),
            stderr: self.stderr.take().map(Drained::finish).unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The 60 digits of a `missive safety-number` output, as 12 groups of five
/// separated by spaces (the lines of the QR code are left out).
pub fn safety_digits(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            !parts.is_empty()
                && parts
                    .iter()
                    .all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A job for [`concurrently`].
pub type Job<'a, T> = Box<dyn FnOnce() -> T + Send + 'a>;

/// Runs every job on its own thread, all at once, and returns their results
/// in order. A panicking job (a failed assertion inside it) is re-raised
/// here with its own message.
///
/// ```ignore
/// let runs = concurrently(vec![
///     Box::new(|| bob.run(&liar, &["recv"])) as Job<'_, _>,
///     Box::new(|| bob.run(&liar, &["recv"])),
/// ]);
/// ```
pub fn concurrently<'a, T: Send + 'a>(jobs: Vec<Job<'a, T>>) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(v) => v,
                Err(payload) => std::panic::resume_unwind(payload),
            })
            .collect()
    })
}

/// Runs `future` to completion on a fresh single-threaded runtime, for the
/// blocking tests. Do not use for anything that must outlive the call (a
/// tonic `Channel` created inside dies with the runtime): use
/// [`raw::BlockingRawPeer`] or a runtime of your own for that.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, HarnessError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| herr(format!("tokio runtime: {e}")))?;
    Ok(rt.block_on(future))
}

/// Whether `needle` occurs in any file under `dir` (recursively).
pub fn dir_contains(dir: &Path, needle: &[u8]) -> Result<Option<PathBuf>, HarnessError> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| herr(format!("{}: {e}", d.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| herr(e.to_string()))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}
