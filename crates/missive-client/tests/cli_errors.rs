//! The `missive` binary turns failures into sentences and a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn missive(home: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_missive"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("MISSIVE_PASSPHRASE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn commands_before_register_say_how_to_register() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["recv"][..],
        &["send", "bob", "hi"],
        &["contacts"],
        &["history", "bob"],
        &["safety-number", "bob"],
        &["delete-account"],
    ] {
        let (code, err) = missive(dir.path(), args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("missive register USERNAME"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unreachable_server_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let (code, err) = missive(
        &dir.path().join("h"),
        &["--server", "https://127.0.0.1:1", "register", "alice"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the Missive server"), "{err}");
    assert!(!dir.path().join("h").join("missive.db").exists());
}

#[test]
fn bad_username_and_url_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = missive(dir.path(), &["register", "X!"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a valid username"), "{err}");
    let (code, err) = missive(
        &dir.path().join("h"),
        &["--server", "http://127.0.0.1:1", "register", "alice"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn help_is_headed_for_people_not_with_the_crate_description() {
    let out = Command::new(env!("CARGO_BIN_EXE_missive"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        help.lines().next(),
        Some("Missive: end-to-end encrypted messaging from the terminal."),
        "{help}"
    );
    assert!(!help.contains("client library"), "{help}");
}

#[test]
fn a_zero_byte_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missive.db");
    std::fs::write(&db, b"").unwrap();
    for args in [&["contacts"][..], &["history", "bob"]] {
        let (code, err) = missive(dir.path(), args);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("is empty (0 bytes)"), "{err}");
    }
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}
