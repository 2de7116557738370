//! Replays the receive fuzz corpus (crates/missive-client/fuzz/corpus/receive)
//! and random inputs against a live account store: no input from the server
//! or a peer may panic the client or change a session by being refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use missive_client::fuzzing::Fixture;
use proptest::prelude::*;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/receive");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn corpus_replays_without_panic_or_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut fixture = Fixture::create(&dir.path().join("alice")).unwrap();
    let files = corpus();
    assert!(files.len() >= 10, "the seed corpus is committed");
    for (name, data) in files {
        fixture
            .feed(&data)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_envelopes_never_panic(inputs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = Fixture::create(&dir.path().join("alice")).unwrap();
        for data in inputs {
            prop_assert!(fixture.feed(&data).is_ok());
        }
    }
}
