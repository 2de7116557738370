//! `missive`: the Missive command-line client.
#![forbid(unsafe_code)]

fn main() {}
