//! Pipeline files (TOML): the model users write, `${VAR}` interpolation, and errors that name
//! the file, line and column.
//!
//! ```toml
//! [source]
//! base_url = "https://api.miosa.ai/api/v1"
//! api_key = "${MIOSA_API_KEY}"
//! sandboxes = ["sb-1", "sb-2"]
//!
//! [checkpoint]
//! path = "state/checkpoints.db"
//!
//! [sinks.archive]
//! type = "file"
//! path = "archive/{resource_id}/{date}.ndjson"
//! ```

//!
//! # Layout
//! - `model.rs`: the file as written (serde, `deny_unknown_fields`, every default named).
//! - `load.rs`: reading it: [`load`] and [`parse`], every key error in one pass.
//! - `spans.rs`: where a key is written, from the TOML parser's spans.
//! - `interpolate.rs`: a sink's `${VAR}`s, through [`crate::vars`].
//! - `resolve.rs`: from the file to a [`PipelineConfig`]: values checked, transforms compiled, sinks
//!   resolved through the registry ([`crate::sinks`]).
//! - `pipeline.rs`: the resolved [`PipelineConfig`].
//! - `errors.rs`: [`ConfigError`], with file, line and column.

mod errors;
mod interpolate;
mod load;
mod model;
mod pipeline;
mod resolve;
mod spans;

#[cfg(test)]
mod tests;

pub use crate::vars::{define_var, interpolate};
pub use errors::{ConfigError, ConfigErrors};
pub use load::{load, parse, LoadMode};
pub use model::{
    BatchConfig, CheckpointConfig, DeadLetterConfig, ManifestConfig, OrgPoll, PipelineFile, SandboxList,
    SinkEntry, SourceConfig,
};
pub use pipeline::{glob_match, Discovery, PipelineConfig, SinkRoute};
