//! The Missive relay: a gRPC service over TLS that stores and forwards
//! ciphertext it cannot read.
//!
//! Start a node in-process (tests, benchmarks, the binary):
//!
//! ```no_run
//! # async fn demo() -> Result<(), missive_server::ServerError> {
//! let mut config = missive_server::Config::new("/tmp/missive-data");
//! config.listen = "127.0.0.1:0".parse().expect("address");
//! let server = missive_server::start(config).await?;
//! println!("{} trusts {:?}", server.url(), server.ca_path());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod auth;
pub mod blobs;
pub mod checks;
pub mod config_file;
pub mod error;
pub mod export;
pub mod fanout;
pub mod franking;
pub mod layers;
pub mod limits;
pub mod mls_frame;
pub mod moderation;
pub mod preflight;
pub mod proxy;
pub mod ratelimit;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod time;
pub mod tls;

pub use server::{Config, RouteHook, RunningServer, ServerError, start, start_on, start_with};
