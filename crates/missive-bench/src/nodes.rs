//! Server processes the bench starts for itself, and their resource figures.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::procstat;

/// One child server process.
pub(crate) struct Node {
    pub(crate) url: String,
    child: Child,
    pid: u32,
    cpu_at_start: f64,
    program: PathBuf,
    args: Vec<String>,
    /// CPU seconds of earlier incarnations (before a restart).
    cpu_before: f64,
    /// Peak RSS of earlier incarnations.
    rss_before: f64,
}

impl Node {
    /// Spawns `program args…` and waits for its `listening on https://…` line.
    pub(crate) async fn spawn(program: &Path, args: &[String]) -> anyhow::Result<Node> {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {}", program.display()))?;
        let pid = child.id().context("server exited at once")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split_once("listening on ") {
                    return Ok::<_, anyhow::Error>(rest.1.trim().to_owned());
                }
            }
            bail!("{} exited before listening", program.display())
        })
        .await
        .context("server did not start listening within 60 s")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let cpu_at_start = procstat::cpu_seconds(pid).unwrap_or(0.0);
        Ok(Node {
            url,
            child,
            pid,
            cpu_at_start,
            program: program.to_owned(),
            args: args.to_vec(),
            cpu_before: 0.0,
            rss_before: 0.0,
        })
    }

    /// SIGKILLs the node and starts it again with the same arguments (same
    /// data directory and database) on the same address.
    pub(crate) async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.cpu_before += self.cpu_seconds_this_run();
        self.rss_before = self.rss_before.max(self.peak_rss_mib_this_run());
        self.child
            .start_kill()
            .context("could not SIGKILL the node")?;
        let _ = self.child.wait().await;
        let address = self
            .url
            .strip_prefix("https://")
            .context("the node's URL is not https://")?
            .to_owned();
        let mut args = self.args.clone();
        match args.iter().position(|a| a == "--listen") {
            Some(i) if i + 1 < args.len() => args[i + 1] = address,
            _ => args.extend(["--listen".to_owned(), address]),
        }
        // The port may stay busy for a moment after the kill.
        let mut attempt = 0;
        let restarted = loop {
            match Node::spawn(&self.program, &args).await {
                Ok(node) => break node,
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => return Err(error.context("could not restart the killed node")),
            }
        };
        if restarted.url != self.url {
            bail!(
                "the restarted node listens on {} instead of {}",
                restarted.url,
                self.url
            );
        }
        let Node {
            child,
            pid,
            cpu_at_start,
            ..
        } = restarted;
        self.child = child;
        self.pid = pid;
        self.cpu_at_start = cpu_at_start;
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds used since the node started listening (all incarnations).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.cpu_before + self.cpu_seconds_this_run()
    }

    fn cpu_seconds_this_run(&self) -> f64 {
        procstat::cpu_seconds(self.pid).unwrap_or(0.0) - self.cpu_at_start
    }

    /// The largest peak RSS of any incarnation.
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        self.rss_before.max(self.peak_rss_mib_this_run())
    }

    fn peak_rss_mib_this_run(&self) -> f64 {
        procstat::peak_rss_mib(self.pid).unwrap_or(0.0)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Finds a sibling binary of this executable (same cargo target directory).
pub(crate) fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let candidate = dir.join(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "{name} was not found next to {}; build it first: cargo build --release --bin {name}",
        exe.display()
    )
}
