//! Integration tests: the pipeline, the binary and the client against the bundled simulator
//! over real TCP and real WebSockets, with real SQLite files. One test binary (ripgrep's
//! layout) so the workspace links once.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod client;
mod config;
mod deploy;
mod digests;
mod discovery;
mod fallback;
mod faults;
mod fuzz;
mod image;
mod jobs;
#[cfg(feature = "kafka")]
mod kafka;
mod keygen;
#[cfg(feature = "security-lake")]
mod lake;
mod layout;
mod lossyfs;
mod metrics;
mod ocsf;
mod process;
mod reconcile;
#[cfg(feature = "s3")]
mod s3;
mod shards;
mod shipping;
mod tls;
mod transforms;
mod util;
mod verify;
