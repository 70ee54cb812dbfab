//! The S3 sink's side of the contract's [`SinkConfig`]: how the pipeline resolves, checks and
//! builds it, and where its archive is read back.

use std::path::Path;

use auditship_sink::{ArchiveLocation, Field, Interpolate, Sink, SinkConfig, SinkContext, SinkError};

use crate::{S3Sink, S3SinkConfig};

impl SinkConfig for S3SinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        let mut resolved = true;
        for (field, value) in [
            ("bucket", Some(&mut self.bucket)),
            ("key_prefix", Some(&mut self.key_prefix)),
            ("endpoint", self.endpoint.as_mut()),
            ("region", self.region.as_mut()),
            ("staging_dir", self.staging_dir.as_mut()),
        ] {
            if let Some(value) = value {
                resolved &= vars.text(field, value, Field::Setting);
            }
        }
        if resolved {
            self.validate()?;
        }
        Ok(())
    }

    fn build(&self, ctx: SinkContext, state_dir: &Path) -> Result<Box<dyn Sink>, SinkError> {
        // Staged objects live beside the checkpoint database that names them.
        let staging = state_dir.join("s3-staging").join(&ctx.pipeline).join(&ctx.sink);
        Ok(Box::new(S3Sink::open(self.clone(), ctx, staging)?))
    }

    fn archive(&self) -> Option<ArchiveLocation> {
        Some(ArchiveLocation::S3 {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.force_path_style,
        })
    }
}
