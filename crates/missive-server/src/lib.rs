//! The Missive relay.
#![forbid(unsafe_code)]
