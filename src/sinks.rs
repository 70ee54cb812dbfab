//! The sink registry: the one place that knows every sink kind and builds it from its config.

use std::path::Path;

use auditship_sink::{Sink, SinkContext, SinkError};

use crate::config::SinkConfig;

#[cfg_attr(not(feature = "s3"), allow(unused_variables))]
pub(crate) fn build_sink(
    cfg: &SinkConfig,
    ctx: SinkContext,
    checkpoint_path: &Path,
) -> Result<Box<dyn Sink>, SinkError> {
    match cfg {
        #[cfg(feature = "s3")]
        SinkConfig::S3(c) => {
            // Staged objects live beside the checkpoint database that names them.
            let staging = checkpoint_path
                .parent()
                .unwrap_or(Path::new("."))
                .join("s3-staging")
                .join(&ctx.pipeline)
                .join(&ctx.sink);
            Ok(Box::new(auditship_sink_s3::S3Sink::open(
                c.clone(),
                ctx,
                staging,
            )?))
        }
        #[cfg(not(feature = "s3"))]
        SinkConfig::S3(_) => Err(SinkError::Config(
            "this auditship was built without S3 support; rebuild it with the `s3` feature".into(),
        )),
        SinkConfig::File(c) => Ok(Box::new(auditship_sink_file::FileSink::open(c.clone(), ctx)?)),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(c) => Ok(Box::new(auditship_sink_kafka::KafkaSink::open(c.clone(), ctx)?)),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => Err(SinkError::Config(
            "this auditship was built without Kafka support; rebuild it with the `kafka` feature".into(),
        )),
    }
}
