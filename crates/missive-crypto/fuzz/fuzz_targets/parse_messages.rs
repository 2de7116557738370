//! Every parser Missive exposes, on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    missive_crypto::fuzzing::parse_messages(data);
});
