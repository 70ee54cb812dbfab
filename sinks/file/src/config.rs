//! The file sink's side of the contract's [`SinkConfig`]: how the pipeline resolves, checks and
//! builds it, and where its archive is read back.

use std::path::Path;

use auditship_sink::{ArchiveLocation, Field, Interpolate, Sink, SinkConfig, SinkContext, SinkError};

use crate::{FileSink, FileSinkConfig, PathTemplate};

impl SinkConfig for FileSinkConfig {
    fn resolve(&mut self, vars: &mut dyn Interpolate) -> Result<(), String> {
        if vars.text("path", &mut self.path, Field::Path) {
            self.validate()?;
        }
        Ok(())
    }

    fn build(&self, ctx: SinkContext, _state_dir: &Path) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(FileSink::open(self.clone(), ctx)?))
    }

    fn appends_to(&self) -> Option<&str> {
        Some(&self.path)
    }

    fn archive(&self) -> Option<ArchiveLocation> {
        PathTemplate::parse(&self.path)
            .ok()
            .map(|t| ArchiveLocation::Dir(t.base().to_path_buf()))
    }
}
