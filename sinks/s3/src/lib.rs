//! S3 sink (in progress).
