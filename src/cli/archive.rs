//! An archive named on the command line: a directory, or `s3://BUCKET/PREFIX` with the flags
//! that say where that is served (`verify`, `export`).

use std::path::Path;

use auditship::config::PipelineConfig;
use auditship::ops::verify::{Archive, DirArchive};
#[cfg(feature = "s3")]
use auditship_sink::ArchiveLocation;

/// Where an `s3://` archive is served.
// Without S3 support the flags are parsed but have nothing to configure.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
#[derive(clap::Args, Debug, Clone, Default)]
pub struct S3Flags {
    /// For s3:// archives: an S3-compatible endpoint (default: the pipeline's S3 sink for
    /// that bucket, else AWS). Credentials come from the AWS chain.
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// For s3:// archives: the region.
    #[arg(long)]
    s3_region: Option<String>,
    /// For s3:// archives: path-style addressing (most S3-compatible stores need it).
    #[arg(long)]
    s3_path_style: bool,
}

/// `s3://BUCKET/PREFIX` as (bucket, prefix), or `None` for a directory.
pub fn s3_location(path: &Path) -> Option<(String, String)> {
    let text = path.to_string_lossy();
    text.strip_prefix("s3://").map(|rest| {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (bucket.to_string(), prefix.to_string())
    })
}

impl S3Flags {
    /// The archive at `path`: a directory, or an S3 prefix reached as the flags say, else as
    /// `pipeline`'s S3 sink for that bucket does, else with the AWS defaults.
    pub async fn archive(
        &self,
        path: &Path,
        pipeline: Option<&PipelineConfig>,
    ) -> Result<Box<dyn Archive + Send>, String> {
        match s3_location(path) {
            None => Ok(Box::new(DirArchive::new(path))),
            Some((bucket, prefix)) => self.open(pipeline, &bucket, &prefix).await,
        }
    }

    /// The S3 archive `s3://bucket/prefix`.
    #[cfg(feature = "s3")]
    pub async fn open(
        &self,
        pipeline: Option<&PipelineConfig>,
        bucket: &str,
        prefix: &str,
    ) -> Result<Box<dyn Archive + Send>, String> {
        if bucket.is_empty() {
            return Err("give the archive as s3://BUCKET/PREFIX".into());
        }
        // The pipeline's sink writing to that bucket, if any: where and how it reaches it.
        let (mut endpoint, mut region, mut path_style) = (None, None, false);
        let sinks = pipeline.into_iter().flat_map(|p| p.sinks.values());
        for location in sinks.filter_map(|s| s.config().ok()?.archive()) {
            if let ArchiveLocation::S3 {
                bucket: b,
                endpoint: e,
                region: r,
                path_style: ps,
            } = location
            {
                if b == bucket {
                    (endpoint, region, path_style) = (e, r, ps);
                    break;
                }
            }
        }
        let endpoint = self.s3_endpoint.clone().or(endpoint);
        let region = self.s3_region.clone().or(region);
        let path_style = self.s3_path_style || path_style;
        let client =
            auditship_sink_s3::connect(region.as_deref(), endpoint.as_deref(), path_style, None).await;
        Ok(Box::new(auditship::ops::verify::S3Archive::new(
            client,
            bucket,
            prefix,
            tokio::runtime::Handle::current(),
        )))
    }

    /// Without S3 support there is no S3 archive to read.
    #[cfg(not(feature = "s3"))]
    pub async fn open(
        &self,
        _pipeline: Option<&PipelineConfig>,
        _bucket: &str,
        _prefix: &str,
    ) -> Result<Box<dyn Archive + Send>, String> {
        Err("this auditship was built without S3 support; rebuild it with the `s3` feature".into())
    }
}
