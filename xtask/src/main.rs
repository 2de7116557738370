//! `cargo xtask`: everything a developer or CI repeats, in one place.
//!
//! - `cargo xtask ci`: exactly what `.ci/run` runs (fmt, clippy, tests).
//! - `cargo xtask bench [ARGS]`: the crypto benches, or `missive-bench ARGS`.
//! - `cargo xtask demo`: a server and two clients exchanging a message.

use std::env;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    let result = match task.as_deref() {
        Some("ci") => ci(),
        Some("bench") => bench(&rest),
        Some("demo") => demo(),
        _ => {
            eprintln!("usage: cargo xtask <ci | bench [missive-bench args] | demo>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The test command named in README.md; `.ci/run` relies on this staying in step.
const TEST_COMMAND: &[&str] = &["test", "--workspace"];

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(TEST_COMMAND)
}

fn bench(args: &[String]) -> Result<(), String> {
    if args.is_empty() {
        return cargo(&["bench", "-p", "missive-crypto"]);
    }
    // missive-bench starts the server binary that sits next to it, and in
    // attachment mode the `missive` CLI too.
    if args.iter().any(|a| a.starts_with("--attachment-size")) {
        cargo(&[
            "build",
            "--release",
            "--bin",
            "missive-server",
            "--bin",
            "missive",
        ])?;
    } else {
        cargo(&["build", "--release", "--bin", "missive-server"])?;
    }
    let mut full = vec!["run", "--release", "-p", "missive-bench", "--"];
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}

fn demo() -> Result<(), String> {
    cargo(&[
        "build",
        "--release",
        "--bin",
        "missive-server",
        "--bin",
        "missive",
    ])?;
    let status = Command::new("bash")
        .arg("scripts/demo.sh")
        .status()
        .map_err(|e| format!("could not run scripts/demo.sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("demo failed ({status})"))
    }
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .map_err(|e| format!("could not start {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}
