//! auditship ships the egress-audit events of Miosa sandboxes to files, Kafka and S3: every
//! event once, checkpointed, resumable.
//!
//! # Layout
//! - [`client`]: the Miosa egress-audit client, its own crate (`crates/auditship-client`,
//!   re-exported): `list`, `get`, and `tail` as a `Stream` (socket first, polling fallback,
//!   catch-up after every reconnect), the API key type ([`secret`]), an observer for metrics.
//! - [`source`]: one task per sandbox, built on [`client`]'s tail; turns audit events into
//!   pipeline events with per-sandbox sequence numbers, and bad frames into dead letters.
//! - [`store`]: the checkpoint store, SQLite on one thread: per-sandbox positions and sink state,
//!   committed together; migrations from `migrations/`.
//! - [`pipeline`]: the runner, a folder with a file per stage of the flow below (`sources`,
//!   `batcher`, `sink_task`, `checkpointer`, `dead_letter`, `discovery`, `positions`,
//!   `dry_run`) and `run`, which only wires them. A checkpoint passes a batch only when every
//!   sink has made it durable.
//! - [`sinks`]: the registry, the one place that knows every sink kind.
//! - [`config`]: pipeline files (TOML): the model, loading, resolution, errors with file:line.
//! - [`vars`]: `${VAR}` and `${VAR:-default}`, for pipeline files and the transforms' keys.
//! - [`transform`]: conditions, filter/redact/set/rename/remove/dedupe, the OCSF mapping; run per
//!   pipeline in the batcher and per sink (with the sink's route) in its task.
//! - [`manifest`]: tamper-evident manifests: each sealed archive unit's SHA-256, counts and
//!   per-sandbox span, hash-chained per sink (optionally HMAC-signed), committed with the
//!   checkpoint and written next to the data.
//! - [`ops`]: operations besides running, as a library: a backfill's lifecycle (named jobs),
//!   reconciliation with the API, `verify` (every hash recomputed, the chains walked), the
//!   export and import of saved positions.
//! - [`shard`]: `--shard I/N`, rendezvous hashing of sandbox ids over processes.
//! - [`sim`]: the bundled Miosa simulator used by the demo, the tests and the benchmarks, its
//!   own crate (`crates/auditship-sim`, re-exported).
//! - [`metrics`]: counters per pipeline, per sink and of the client, `/metrics` (encoded by
//!   `prometheus-client`), `/health` and `/live`.
//! - `cli/` (the binary's, beside `main.rs`, not the library's): a file per command;
//!   `cli/exit.rs` is the one place an error chain is printed and an exit code chosen.
//! - Sinks live in their own crates under `sinks/`: the contract in `auditship-sink`, then
//!   `auditship-sink-file`, `-kafka` and `-s3` (the last two behind features).
//!
//! Events flow one way: `client` → `source` → `pipeline`'s batcher (batches, the pipeline's
//! transforms) → a sink task per sink (its route and transforms, then the sink);
//! acknowledgements flow back from the sink tasks to the checkpointer, which commits positions
//! and sink state in one transaction. Dead letters go to the dead-letter writer from every stage.
//!
//! # Names
//! One name per idea, the same in code, docs and messages:
//! - a **position** is where a sandbox stands: the newest cursor time shipped and the ids at
//!   it ([`client::Position`], what a tail resumes from). The store keeps a
//!   [`store::SavedPosition`] per sandbox and stream; the batcher tracks a pending position
//!   ahead of it as events pass (`pipeline/positions.rs`).
//! - a **checkpoint** is the commit that saves positions and sink state together (the
//!   `checkpointer` stage, the `[checkpoint]` settings, `auditship checkpoints`).
//! - a **pipeline config** ([`config::PipelineConfig`]) is a pipeline file, loaded and
//!   resolved; the **pipeline** ([`pipeline`]) is the runner that runs one.
//! - **transforms** ([`transform::Transforms`]) are a compiled list of `[[transforms]]`; a
//!   [`transform::Transformer`] runs one with its state. A **chain** is only ever a manifest's
//!   hash chain ([`manifest`]).
//!
//! # As a library
//! Programs that want audit events without running the shipper use [`client`]: the SDK's
//! `list`, `get` and `tail` (a `Stream` that prefers the socket, falls back to polling,
//! reconnects and never yields an event twice). It is the `auditship-client` crate, which a
//! program can depend on alone; its `examples/tail_sandbox.rs` tails one sandbox, and every
//! public function has a runnable example against the bundled [`sim`].
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

pub mod config;
pub mod manifest;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod shard;
pub mod sinks;
pub mod source;
pub mod store;
pub mod transform;
pub mod vars;

/// The Miosa egress-audit client: the `auditship-client` crate, which stands alone.
#[doc(inline)]
pub use auditship_client as client;
#[doc(inline)]
pub use auditship_client::secret;
/// The bundled Miosa simulator: the `auditship-sim` crate.
#[doc(inline)]
pub use auditship_sim as sim;

pub use auditship_client::install_crypto_provider;
