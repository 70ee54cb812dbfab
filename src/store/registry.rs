//! The store as a sink's [`StateRegistry`]: state a sink must have durable before it writes.

use auditship_sink::{SinkError, StateEntry, StateRegistry};

use super::{Store, StoreError};

pub(super) struct SinkRegistry {
    pub(super) store: Store,
    pub(super) pipeline: String,
    pub(super) sink: String,
}

#[async_trait::async_trait]
impl StateRegistry for SinkRegistry {
    async fn register(&self, entries: Vec<StateEntry>) -> Result<(), SinkError> {
        self.store
            .register(&self.pipeline, &self.sink, entries)
            .await
            .map_err(store_to_sink)
    }

    async fn forget(&self, keys: Vec<String>) -> Result<(), SinkError> {
        self.store
            .forget(&self.pipeline, &self.sink, keys)
            .await
            .map_err(store_to_sink)
    }
}

pub(super) fn store_to_sink(e: StoreError) -> SinkError {
    SinkError::Remote {
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}
