//! Decryption of arbitrary bytes against a live session; a failure must not
//! change the session.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = missive_crypto::fuzzing::decrypt(data);
});
