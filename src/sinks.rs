//! The sink registry: the one place that knows every sink kind.
//!
//! A pipeline file's `[sinks.NAME]` table becomes an [`AnySink`], picked by its `type`. Past that
//! point nothing asks which kind it holds: the loader resolves and checks it, the runner builds
//! it, reconciliation and `verify` find its archive, all through the contract's
//! [`SinkConfig`] trait, which each sink crate implements for its
//! config.
//!
//! Adding a sink kind: write its crate under `sinks/` (its config implementing
//! `auditship_sink::SinkConfig`), then add its variant here and its arm in [`AnySink::config`]
//! and [`AnySink::config_mut`] (behind a feature when its dependencies are heavy, with a
//! [`NotBuilt`] variant for builds without it).

use std::fmt;

use auditship_sink::SinkConfig;
use serde::Deserialize;

/// A sink of any kind this build knows, picked by `type`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AnySink {
    /// NDJSON files.
    File(auditship_sink_file::FileSinkConfig),
    /// Kafka topics.
    #[cfg(feature = "kafka")]
    Kafka(auditship_sink_kafka::KafkaSinkConfig),
    /// A Kafka sink in a build without Kafka support: loading it fails and says how to get it.
    #[cfg(not(feature = "kafka"))]
    Kafka(toml::Table),
    /// S3 objects.
    #[cfg(feature = "s3")]
    S3(auditship_sink_s3::S3SinkConfig),
    /// An S3 sink in a build without S3 support: loading it fails and says how to get it.
    #[cfg(not(feature = "s3"))]
    S3(toml::Table),
}

/// A sink kind this build was compiled without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotBuilt {
    /// The kind, as people name it.
    pub kind: &'static str,
    /// The cargo feature that builds it.
    pub feature: &'static str,
}

impl fmt::Display for NotBuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this auditship was built without {} support; rebuild it with the `{}` feature (on by default): cargo build --release --features {}",
            self.kind, self.feature, self.feature
        )
    }
}

impl std::error::Error for NotBuilt {}

/// What a build without the `kafka` feature lacks.
#[cfg(not(feature = "kafka"))]
const NO_KAFKA: NotBuilt = NotBuilt {
    kind: "Kafka",
    feature: "kafka",
};

/// What a build without the `s3` feature lacks.
#[cfg(not(feature = "s3"))]
const NO_S3: NotBuilt = NotBuilt {
    kind: "S3",
    feature: "s3",
};

impl AnySink {
    /// The sink's configuration, through the contract every kind implements.
    pub fn config(&self) -> Result<&dyn SinkConfig, NotBuilt> {
        match self {
            AnySink::File(c) => Ok(c),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(c) => Ok(c),
            #[cfg(feature = "s3")]
            AnySink::S3(c) => Ok(c),
            #[cfg(not(feature = "kafka"))]
            AnySink::Kafka(_) => Err(NO_KAFKA),
            #[cfg(not(feature = "s3"))]
            AnySink::S3(_) => Err(NO_S3),
        }
    }

    /// [`AnySink::config`], to resolve it in place.
    pub fn config_mut(&mut self) -> Result<&mut dyn SinkConfig, NotBuilt> {
        match self {
            AnySink::File(c) => Ok(c),
            #[cfg(feature = "kafka")]
            AnySink::Kafka(c) => Ok(c),
            #[cfg(feature = "s3")]
            AnySink::S3(c) => Ok(c),
            #[cfg(not(feature = "kafka"))]
            AnySink::Kafka(_) => Err(NO_KAFKA),
            #[cfg(not(feature = "s3"))]
            AnySink::S3(_) => Err(NO_S3),
        }
    }
}
