//! What a sink kind's configuration does for the pipeline, so that the pipeline never asks which
//! kind it holds: resolve its `${VAR}`s and check itself, say which files it appends to and where
//! its archive can be read back, and build the running sink (as Vector's `SinkConfig::build`).
//!
//! The shipper's registry (`src/sinks.rs`) lists the kinds; everything else goes through this
//! trait.

use std::path::{Path, PathBuf};

use crate::{Sink, SinkContext, SinkError};

/// Resolves `${VAR}` and `${VAR:-default}` in a sink config's text fields, and collects what
/// is worth a warning. The pipeline loader implements it: it knows the file, the line and the
/// sink's name, so messages given here name only the field.
pub trait Interpolate {
    /// Resolve `value` (the field `field`, e.g. `path` or `options."sasl.password"`) in place.
    /// `false`: it could not be resolved (the loader has reported why, as `kind` says); the
    /// value is unchanged.
    fn text(&mut self, field: &str, value: &mut String, kind: Field) -> bool;

    /// A warning about field `field` of this sink.
    fn warn(&mut self, field: &str, message: &str);

    /// Whether the pipeline is only being validated or inspected, not run: unset variables are
    /// then warnings, and a secret written literally in the file is worth one.
    fn offline(&self) -> bool;
}

/// What a field holds, which decides what an unset variable in it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A path: it must resolve, even to validate the file (what it names is checked).
    Path,
    /// A connection setting (brokers, a bucket): one unset while only validating is a warning,
    /// since the environment that runs the pipeline may set it.
    Setting,
    /// A credential: as [`Field::Setting`], and the resolved text is scrubbed from every log
    /// line.
    Secret,
}

/// Where a sink's archive can be read back (reconciliation compares it with the API; `verify`
/// checks its hashes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// Files under this directory: the fixed part of the sink's path template.
    Dir(PathBuf),
    /// Objects in an S3 bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// An S3-compatible endpoint; `None`: AWS.
        endpoint: Option<String>,
        /// The region; `None`: the AWS chain's.
        region: Option<String>,
        /// Path-style addressing.
        path_style: bool,
    },
}

/// A sink kind's configuration: what the pipeline file's `[sinks.NAME]` table became.
pub trait SinkConfig: Send + Sync {
    /// Resolve the fields that may use `${VAR}` through `vars`, then check the configuration as
    /// far as its fields are resolved. `Err`: what is wrong (the loader adds the file, line and
    /// sink name). Warnings go to [`Interpolate::warn`].
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String>;

    /// Build the running sink. `state_dir` is the directory of the checkpoint database: a sink
    /// that stages data locally keeps it in a directory of its own there (named after its kind,
    /// pipeline and sink).
    fn build(&self, ctx: SinkContext, state_dir: &Path) -> Result<Box<dyn Sink>, SinkError>;

    /// The path template of the files this sink appends to, if it writes files: two sinks (or
    /// two pipelines run together) must never share one, or each would roll back the other's
    /// bytes after a crash.
    fn appends_to(&self) -> Option<&str> {
        None
    }

    /// Where this sink's archive can be read back, if it keeps one.
    fn archive(&self) -> Option<ArchiveLocation> {
        None
    }
}
