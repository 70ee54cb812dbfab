//! Why a pipeline stopped, and whether running it again can help.

use crate::store::StoreError;
use auditship_sink::SinkError;

/// Errors that stop a pipeline. [`PipelineError::is_retryable`] says whether running it again
/// later can help (cron uses the exit code built from it).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sink failed in a way waiting will not fix.
    #[error("sink {sink:?}: {source}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// What failed.
        #[source]
        source: SinkError,
    },
    /// The Miosa API refused us in a way waiting will not fix (a bad key, say).
    #[error("sandbox {resource_id}: {source}")]
    Source {
        /// The sandbox.
        resource_id: String,
        /// What failed.
        #[source]
        source: crate::client::Error,
    },
    /// Building the client failed.
    #[error(transparent)]
    Client(#[from] crate::client::Error),
    /// The signed digests could not pick up where the checkpoint database stands.
    #[error(transparent)]
    Digests(#[from] crate::manifest::CutterError),
}

impl PipelineError {
    /// Whether running again later can succeed without a change of configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Config(_) | PipelineError::Client(_) => false,
            PipelineError::Store(e) => e.is_retryable() || matches!(e, StoreError::Locked { .. }),
            PipelineError::Sink { source, .. } => source.is_retryable(),
            PipelineError::Source { source, .. } => source.is_retryable(),
            PipelineError::Digests(e) => e.is_retryable(),
        }
    }
}
