//! Missive client library.
#![forbid(unsafe_code)]
