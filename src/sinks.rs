//! The sink registry: the one place that knows every sink kind.
//!
//! A pipeline file's `[sinks.NAME]` table becomes an [`AnySink`], picked by its `type`. Past that
//! point nothing asks which kind it holds: the loader resolves and checks it, the runner builds
//! it, reconciliation and `verify` find its archive, all through the contract's
//! [`SinkConfig`] trait, which each sink crate implements for its
//! config.
//!
//! Adding a sink kind: write its crate under `sinks/` (its config implementing
//! `auditship_sink::SinkConfig`), then add its variant here, its name in [`AnySink::KINDS`] and
//! its arm in [`AnySink::from_options`], [`AnySink::config`] and [`AnySink::config_mut`] (behind
//! a feature when its dependencies are heavy, with a [`NotBuilt`] arm for builds without it).

use std::fmt;

use auditship_sink::SinkConfig;

use crate::transform::OptionsError;

/// Read a kind's options, keeping the path of an error.
fn read<T: serde::de::DeserializeOwned>(options: toml::Value) -> Result<T, OptionsError> {
    serde_path_to_error::deserialize(options)
}

/// A sink of any kind this build knows, picked by `type`.
#[derive(Clone, Debug)]
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
    /// A Security Lake custom source (OCSF Parquet).
    #[cfg(feature = "security-lake")]
    SecurityLake(auditship_sink_security_lake::SecurityLakeSinkConfig),
    /// A Security Lake sink in a build without it: loading it fails and says how to get it.
    #[cfg(not(feature = "security-lake"))]
    SecurityLake(toml::Table),
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

/// What a build without the `security-lake` feature lacks.
#[cfg(not(feature = "security-lake"))]
const NO_SECURITY_LAKE: NotBuilt = NotBuilt {
    kind: "Security Lake",
    feature: "security-lake",
};

/// What a build without the `s3` feature lacks.
#[cfg(not(feature = "s3"))]
const NO_S3: NotBuilt = NotBuilt {
    kind: "S3",
    feature: "s3",
};

impl AnySink {
    /// The kinds, as `type` names them.
    pub const KINDS: [&'static str; 4] = ["file", "kafka", "s3", "security_lake"];

    /// A sink of kind `kind` from its options (its table without `type` and the routing keys).
    /// Read this way, not through an internally tagged enum, because serde buffers a tagged
    /// table and loses the keys' paths: an error here names the key it is about. `None`: no
    /// such kind.
    pub fn from_options(kind: &str, options: toml::Value) -> Option<Result<Self, OptionsError>> {
        Some(match kind {
            // A kind this build lacks reads its options as a plain table; resolving it then
            // says how to get the kind.
            "file" => read(options).map(AnySink::File),
            "kafka" => read(options).map(AnySink::Kafka),
            "s3" => read(options).map(AnySink::S3),
            "security_lake" => read(options).map(AnySink::SecurityLake),
            _ => return None,
        })
    }

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
            #[cfg(feature = "security-lake")]
            AnySink::SecurityLake(c) => Ok(c),
            #[cfg(not(feature = "security-lake"))]
            AnySink::SecurityLake(_) => Err(NO_SECURITY_LAKE),
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
            #[cfg(feature = "security-lake")]
            AnySink::SecurityLake(c) => Ok(c),
            #[cfg(not(feature = "security-lake"))]
            AnySink::SecurityLake(_) => Err(NO_SECURITY_LAKE),
        }
    }
}

/// The Parquet schema a `security_lake` sink writes for OCSF class `class_uid`, as Parquet
/// prints it.
pub fn parquet_schema(class_uid: u32) -> Result<String, String> {
    #[cfg(feature = "security-lake")]
    {
        auditship_sink_security_lake::schema::describe(class_uid).ok_or_else(|| {
            format!(
                "no Parquet schema for OCSF class {class_uid}; the security_lake sink writes {}",
                auditship_sink_security_lake::schema::CLASSES
                    .iter()
                    .map(|(u, n)| format!("{u} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
    #[cfg(not(feature = "security-lake"))]
    {
        let _ = class_uid;
        Err(NO_SECURITY_LAKE.to_string())
    }
}
