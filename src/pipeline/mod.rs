//! The pipeline runner: one run of a pipeline file, live or over a window.
//!
//! ```text
//! per sandbox:  source ──(bounded mpsc)──▶ batcher ──(bounded, per sink)──▶ sink task
//!                                            │ batch positions                 │ acks (through batch N,
//!                                            ▼                                 ▼  + sink state)
//!                                        checkpointer ──▶ SQLite (one transaction: positions + sink state)
//! ```
//! - Every channel is bounded: a slow sink blocks the batcher, which blocks the sources, which
//!   stop reading their sockets; TCP pushes back to the server. Memory stays bounded.
//! - The batcher numbers batches and records, for each, the position every touched sandbox has
//!   reached (newest cursor time and the ids at it). It tells the checkpointer *before* any sink
//!   sees the batch, so an ack never arrives for an unknown batch.
//! - Transforms: the batcher runs the pipeline's `[[transforms]]` on each closed batch (after
//!   recording positions, so a dropped event still moves its sandbox's checkpoint); each sink
//!   task runs its route and transforms on each batch before writing it. Events a transform fails
//!   on are dead-lettered, durably, before the batch goes on. A batch keeps its number however
//!   many events it lost, so acknowledgements work unchanged.
//! - A sink acknowledges "through batch N" only after N is durable, with the state entries (file
//!   lengths) that describe exactly that point.
//! - Every `commit_interval` the checkpointer finds W, the highest batch every sink has
//!   acknowledged and every file sink acknowledged *exactly* (its file lengths describe that
//!   batch; see `checkpointer::commit_point`), and commits the positions of batches ≤ W with the sinks' state
//!   as of W in one transaction. A crash at any moment leaves positions and sink state that
//!   agree.
//!
//! # Layout
//! One file per stage of the flow above, and what the stages share:
//! - `run.rs`: [`run`], wiring only: opens the store, builds the sinks, starts every stage,
//!   waits, drains, reports.
//! - `sources.rs`: a source task per sandbox (live tail or window) and how each ended.
//! - `discovery.rs`: which sandboxes a run follows; with `sandboxes = "all"`, read again every
//!   interval.
//! - `positions.rs`: where each sandbox stands as events pass, and where a source resumes.
//! - `batcher.rs`: batches, positions, the pipeline's transforms, the hand-off to every sink.
//! - `sink_task.rs`: per sink, group commit, retries, acknowledgements of durable batches.
//! - `checkpointer.rs`: the commit point and the one transaction per interval.
//! - `dead_letter.rs`: the dead-letter file and the durable send-and-wait sinks use.
//! - `dry_run.rs`: [`count_window`], a backfill counted without writing.
//! - `client.rs`, `options.rs`, `error.rs`: the API client of a pipeline, a run's options and
//!   report, and why a run stopped.

mod batcher;
mod checkpointer;
mod client;
mod dead_letter;
mod discovery;
mod dry_run;
mod error;
mod options;
mod positions;
mod run;
mod sink_task;
mod sources;

pub use client::client_for;
pub use discovery::sandboxes_to_follow;
pub use dry_run::{count_window, DryRun};
pub use error::PipelineError;
pub use options::{Given, Mode, Progress, RunOptions, RunReport, Window};
pub use run::run;
