//! Arbitrary envelopes from a hostile server against a live account store:
//! nothing may panic, and a refused envelope changes no session.
#![no_main]

use std::sync::Mutex;

use missive_client::fuzzing::Fixture;

static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut guard = FIXTURE.lock().unwrap_or_else(|p| p.into_inner());
    let fixture = guard.get_or_insert_with(|| {
        let home = std::env::temp_dir().join(format!("missive-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        Fixture::create(&home).unwrap_or_else(|e| panic!("fixture: {e}"))
    });
    if let Err(e) = fixture.feed(data) {
        if e.to_string().contains("refused envelope changed") {
            panic!("{e}");
        }
    }
});
