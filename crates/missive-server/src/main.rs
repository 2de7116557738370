//! `missive-server`: the Missive relay.
#![forbid(unsafe_code)]

fn main() {}
