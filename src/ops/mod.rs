//! Operations on a pipeline besides running it, callable as a library; the CLI's commands of
//! the same names are their thin front ends.
//!
//! # Layout
//! - [`backfill`]: a backfill's lifecycle: named jobs, resumable windows, the command that
//!   resumes one.
//! - [`reconcile`]: hour-by-hour comparison of what was shipped (ledger, file archives) with
//!   the API, and shipping exactly what is missing.
//! - [`verify`]: an archive checked against its manifests: every hash recomputed, the chains
//!   walked, what was altered, removed, added, duplicated or is missing reported.
//! - [`bundle`]: evidence bundles: a window of an archive with exactly the manifest entries,
//!   signed digests and public key that prove it (`auditship export`), checked offline
//!   (`auditship verify-export`).
//! - [`completeness`]: the signed completeness report of a reconciliation
//!   (`auditship reconcile --report`), checked offline (`auditship verify-report`).
//! - [`gap_findings`]: one OCSF Detection Finding per gap a reconciliation found, shipped into
//!   a sink (`auditship reconcile --gap-findings-to SINK`).
//! - [`positions`]: the saved positions of a pipeline exported and imported, one JSON object a
//!   line (`auditship checkpoints --export/--import`).

pub mod backfill;
pub mod bundle;
pub mod completeness;
pub mod gap_findings;
pub mod positions;
pub mod reconcile;
pub mod verify;
