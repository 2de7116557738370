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
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
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

fn herr(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
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
        let bins = binaries()?;
        std::fs::create_dir_all(data_dir).map_err(|e| herr(format!("data dir: {e}")))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| herr(format!("log file: {e}")))?;
        let mut child = Command::new(&bins.server)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
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
    pub fn run(&self, server: &Server, args: &[&str]) -> Result<Run, HarnessError> {
        self.run_with(server, args, &[], None)
    }

    /// Like [`User::run`] with extra environment and optional stdin.
    pub fn run_with(
        &self,
        server: &Server,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Result<Run, HarnessError> {
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
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| herr(format!("cannot run missive: {e}")))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            pipe.write_all(text.as_bytes())
                .map_err(|e| herr(format!("stdin: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| herr(format!("missive: {e}")))?;
        Ok(Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs and requires exit 0.
    pub fn ok(&self, server: &Server, args: &[&str]) -> Result<Run, HarnessError> {
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
