//! Missive client library: the local store, the connection to the server,
//! the messaging logic behind the `missive` CLI, and the terminal chat.
//!
//! Start at [`client::Client`]. Errors are [`error::ClientError`], whose
//! `Display` is a sentence for the person at the keyboard.
#![forbid(unsafe_code)]

pub mod attachments;
pub mod chat;
pub mod client;
pub mod conversation;
pub mod display;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod group_bench;
pub mod limits;
pub mod net;
mod proto_conv;
pub mod store;

pub use client::{Client, RecvEvent, Sent, Verification};
pub use error::ClientError;
pub use net::ServerConfig;
