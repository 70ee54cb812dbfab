//! How the client tells its user what it is doing, without depending on any metrics system.
//!
//! The shipper counts API responses, retries, socket frames and drops, and how many tails are on
//! each transport; a program that only wants events counts nothing. So the client calls an
//! [`Observer`] that its builder was given ([`ClientBuilder::observer`](crate::ClientBuilder::observer)),
//! and by default one whose every method does nothing. Every method has a default body, so an
//! observer implements only what it wants, and a method added later breaks no observer.
//!
//! The calls are made on the client's hot paths (one [`Observer::frame_received`] per socket
//! frame): an observer must return quickly and never block (an atomic add is the model).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use auditship_client::{Client, Observer};
//! use auditship_client::secret::ApiKey;
//!
//! #[derive(Default)]
//! struct Responses(AtomicU64);
//!
//! impl Observer for Responses {
//!     fn api_response(&self, _status: u16) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! let responses = Arc::new(Responses::default());
//! let client = Client::builder()
//!     .api_key(ApiKey::new("msk_example"))
//!     .observer(responses.clone())
//!     .build()?;
//! # let _ = client;
//! # Ok::<(), auditship_client::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;

use crate::ActiveTransport;

/// Receives what a [`Client`](crate::Client) and its tails do. Every method does nothing unless
/// implemented.
pub trait Observer: Send + Sync + 'static {
    /// An API request got a response with this HTTP status; 0 when it got none (a transport
    /// error, a timeout).
    fn api_response(&self, status: u16) {
        let _ = status;
    }

    /// A `list` or `get` request failed in a way that a retry can mend, and is retried.
    fn api_retry(&self) {}

    /// A tail's socket delivered a data frame (an event or not).
    fn frame_received(&self) {}

    /// A tail's socket closed or failed after its handshake; the tail reconnects.
    fn socket_dropped(&self) {}

    /// A tail moved from one transport state to another (`from != to`). A new tail starts with
    /// a move from [`ActiveTransport::Stopped`] to [`ActiveTransport::Connecting`], and an ended
    /// one (dropped, aborted or stopped) makes a last move to [`ActiveTransport::Stopped`]; so a
    /// gauge per state, raised on `to` and lowered on `from`, counts the tails in each.
    fn tail_transport(&self, from: ActiveTransport, to: ActiveTransport) {
        let _ = (from, to);
    }
}

/// The observer a client has when its builder was given none.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// The observer a client holds: shared by its clones and its tails.
#[derive(Clone)]
pub(crate) struct SharedObserver(pub(crate) Arc<dyn Observer>);

impl Default for SharedObserver {
    fn default() -> Self {
        SharedObserver(Arc::new(NoObserver))
    }
}

impl fmt::Debug for SharedObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

impl std::ops::Deref for SharedObserver {
    type Target = dyn Observer;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
