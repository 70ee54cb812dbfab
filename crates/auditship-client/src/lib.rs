//! The Miosa egress-audit client: `list`, `get` and `tail` (a [`Stream`](futures_util::Stream)),
//! in the shape of the official SDK's `Miosa.Sandboxes.Audit`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), auditship_client::Error> {
//! use auditship_client::{Client, Filters, TailOptions};
//! use futures_util::StreamExt;
//!
//! let client = Client::builder()
//!     .base_url("https://api.miosa.ai/api/v1")
//!     .api_key_from_env("MIOSA_API_KEY")?
//!     .build()?;
//! let audit = client.sandbox("sb-123").audit();
//! let rejected = audit.list(&Filters { action: Some("reject".into()), ..Default::default() }).await?;
//! let first = audit.get(rejected[0].id()).await?;
//! let mut stream = audit.tail(TailOptions::default()); // from now on (StartAt::Earliest: history first)
//! while let Some(event) = stream.next().await {
//!     println!("{}", event?.json());
//! }
//! # Ok(()) }
//! ```
//!
//! Everything the contract allows is accepted: every list shape, enveloped and binary frames,
//! `next_cursor` when present and `since`-paging with de-duplication at the boundary timestamp
//! when not. Requests share one rate limiter per API key, retry 429/5xx with jittered exponential
//! backoff honouring `Retry-After`, and log the `X-Request-ID` of failures.
//!
//! # Layout
//! - `client.rs`, `builder.rs`: the [`Client`] and its settings; `views.rs`: the SDK's audit
//!   views ([`OrgAudit`], [`SandboxAudit`]); `filters.rs`: the list endpoint's [`Filters`].
//! - `tail/`: the live [`Tail`] (socket first, polling fallback, catch-up: `task.rs`), the pager
//!   behind `list_all` and `list_from` (`pager.rs`), and the ids-seen window (`seen.rs`);
//!   `org.rs`: the org-wide poller and the shared socket gate for large fleets.
//! - `ws.rs`: the client side of the WebSocket; `tls.rs`: certificate trust for REST and sockets.
//! - `event.rs`, `scan.rs`: events and pages read without a full parse; `http.rs`: responses'
//!   request ids and errors; `error.rs`: [`Error`], which says whether retrying helps.
//! - `retry.rs`, `ratelimit.rs`: backoff and the per-key request budget; `secret.rs`: the key
//!   that never prints; `observe.rs`: the [`Observer`] the client reports to.

mod builder;
mod client;
mod error;
mod event;
mod filters;
mod http;
mod observe;
mod org;
mod ratelimit;
mod retry;
mod scan;
pub mod secret;
mod tail;
mod tls;
mod views;
mod ws;

pub use builder::{is_loopback, ClientBuilder};
pub use client::{Client, Sandbox, SandboxInfo};
pub use error::Error;
pub use event::LIST_ELEMENT;
pub use event::{format_time, parse_time, AuditEvent, AuditFields, CursorText, Page};
pub use filters::Filters;
pub use observe::{NoObserver, Observer};
pub use org::{OrgPoller, SocketGate};
pub use ratelimit::RateLimiter;
pub use retry::{Backoff, RetryPolicy};
pub use tail::{ActiveTransport, Position, StartAt, Tail, TailOptions, TailStatus, Transport};
pub use tls::TlsOptions;
pub use views::{OrgAudit, SandboxAudit, SandboxHandle};

/// The default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.miosa.ai/api/v1";

/// The largest REST response body read by default: 16 MiB, some 300 times a full page of 100
/// events. A server that sends more (a broken proxy, a hostile endpoint) gets an error, not
/// the process's memory ([`ClientBuilder::max_response_bytes`]).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Socket handshakes one client runs at once.
pub(crate) const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// The socket subprotocol the server must select.
pub const SUBPROTOCOL: &str = "miosa-egress-audit-v1";

/// rustls needs one process-wide crypto provider; install ring's once (both the HTTP client and
/// the socket use rustls). [`ClientBuilder::build`] calls it; a program that makes its own
/// rustls configurations (a test server's) calls it first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
