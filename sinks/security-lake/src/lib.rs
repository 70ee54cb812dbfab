//! auditship's Amazon Security Lake sink (`type = "security_lake"`): OCSF events as Parquet
//! in a Security Lake custom source.
//!
//! # What it writes
//! Security Lake takes, per custom source, one OCSF event class as Parquet files under
//! `ext/SOURCE/region=REGION/accountId=ACCOUNT/eventDay=YYYYMMDD/`. This sink is one custom
//! source: it takes the events of its `class_uid` (after the sink's `ocsf` transform), checks
//! each against that class's fixed Arrow schema as it arrives ([`schema`]; an event that does
//! not fit is dead-lettered with the attribute named, never written with a field dropped), and
//! seals them into zstd Parquet files, one per partition and `batch_max_events`,
//! `batch_max_bytes` or `batch_timeout_ms`.
//!
//! # How it delivers
//! It is the S3 sink with another [`ObjectLayout`](auditship_sink_s3::ObjectLayout): the same
//! staging (fsync'd before the object is registered), create-only uploads carrying the body's
//! SHA-256, Object Lock and legal hold, crash recovery (an object registered before a crash is
//! put in place and its events are not written again) and manifests. Manifest entries and
//! digests go under `ext/SOURCE/_auditship/`, outside the partitions Athena and the crawler
//! read (a JSON file among the Parquet ones breaks queries); the event ids of a staged object
//! are kept beside it, since `metadata.uid` may be a redacted digest.
//!
//! # Layout
//! - `config.rs`: [`SecurityLakeSinkConfig`], its checks and the contract's `SinkConfig`.
//! - `schema.rs`: the Arrow schema of each OCSF class ([`schema::schema_for`]).
//! - `layout.rs`: [`ParquetLayout`]: partitions, the per-event check, the Parquet encoding.

mod config;
mod layout;
pub mod schema;

pub use config::SecurityLakeSinkConfig;
pub use layout::{uids, ParquetLayout, OWN_DIR};

#[cfg(test)]
mod tests;
