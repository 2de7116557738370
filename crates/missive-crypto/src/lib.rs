//! Sans-I/O protocol core of Missive.
#![forbid(unsafe_code)]
