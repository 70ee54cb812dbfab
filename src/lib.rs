//! auditship ships the egress-audit events of Miosa sandboxes to files, Kafka and S3: every
//! event once, checkpointed, resumable.
//!
//! # Layout
//! - [`client`]: the Miosa egress-audit client, usable on its own: `list`, `get`, and `tail` as
//!   a `Stream` (socket first, polling fallback, catch-up after every reconnect).
//! - [`source`]: one task per sandbox, built on [`client`]'s tail; turns audit events into
//!   pipeline events with per-sandbox sequence numbers, and bad frames into dead letters.
//! - [`checkpoint`]: the SQLite store (one writer thread): per-sandbox positions and sink state,
//!   committed together; migrations from `migrations/`.
//! - [`pipeline`]: the runner. Sources → batcher → every sink → acknowledgements → checkpointer.
//!   A checkpoint passes a batch only when every sink has made it durable.
//! - [`config`]: pipeline files (TOML): the model, `${VAR}` interpolation, errors with file:line.
//! - [`transform`]: conditions, filter/redact/set/rename/remove/dedupe, the OCSF mapping; run per
//!   pipeline in the batcher and per sink (with the sink's route) in its task.
//! - [`reconcile`]: hour-by-hour comparison of what was shipped (ledger, file archives) with the
//!   API, and shipping exactly what is missing.
//! - [`manifest`]: tamper-evident manifests: each sealed archive unit's SHA-256, counts and
//!   per-sandbox span, hash-chained per sink (optionally HMAC-signed), committed with the
//!   checkpoint and written next to the data.
//! - [`verify`]: `auditship verify`: recompute every hash, walk the chains, report what was
//!   altered, removed, added, duplicated or is missing.
//! - [`shard`]: `--shard I/N`, rendezvous hashing of sandbox ids over processes.
//! - [`sim`]: the bundled Miosa simulator used by the demo, the tests and the benchmarks.
//! - [`secret`]: the API key type that never prints, and redaction.
//! - [`metrics`]: process-wide counters.
//! - Sinks live in their own crates under `sinks/`: the contract in `auditship-sink`, the file
//!   sink in `auditship-sink-file`.
//!
//! Events flow one way: `client` → `source` → `pipeline` (batches, transforms) → sinks; acknowledgements
//! flow back from sinks to the checkpointer, which commits positions and sink state in one
//! transaction.
//!
//! # As a library
//! Programs that want audit events without running the shipper use [`client`]: the SDK's
//! `list`, `get` and `tail` (a `Stream` that prefers the socket, falls back to polling,
//! reconnects and never yields an event twice). `examples/tail_sandbox.rs` tails one sandbox;
//! every public function of the client has a runnable example against the bundled [`sim`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let sim = auditship::sim::Simulator::start(auditship::sim::SimConfig { backlog_per_sandbox: 3, ..Default::default() }).await?;
//! use auditship::client::{Client, Filters};
//! use auditship::secret::ApiKey;
//!
//! let client = Client::builder().base_url(sim.base_url()).api_key(ApiKey::new(sim.api_key())).build()?;
//! for event in client.sandbox("sb-1").audit().list(&Filters::default()).await? {
//!     println!("{} {}", event.id(), event.json());
//! }
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod client;
pub mod config;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod reconcile;
pub mod secret;
pub mod shard;
pub mod sim;
pub mod source;
pub mod transform;
pub mod verify;

/// rustls needs one process-wide crypto provider; install ring's once (both the HTTP client and
/// the socket use rustls).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
