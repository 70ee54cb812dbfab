use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// Errors of the Miosa client. Messages never contain the API key.
///
/// [`Error::is_retryable`] says whether the same request can succeed later; the client's own
/// retry loop and the shipper's source both use it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401/403: the key was refused or lacks the `audit:read` scope. Fatal.
    #[error("the Miosa API refused the key (HTTP {status}: {message}){}; check that the key is valid and has the audit:read scope", RequestId(request_id))]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// The response's `X-Request-ID`.
        request_id: Option<String>,
    },
    /// 404: the sandbox or event does not exist (a deleted sandbox, say).
    #[error("not found: {what} (HTTP 404){}", RequestId(request_id))]
    NotFound {
        /// What was looked for.
        what: String,
        /// The response's `X-Request-ID`.
        request_id: Option<String>,
    },
    /// 429: over the key's request budget. Retryable after `retry_after`.
    #[error(
        "rate limited by the Miosa API (HTTP 429){}{}",
        RetryAfter(retry_after),
        RequestId(request_id)
    )]
    RateLimited {
        /// How long the server asked us to wait.
        retry_after: Option<Duration>,
        /// The response's `X-Request-ID`.
        request_id: Option<String>,
    },
    /// 5xx: the server failed. Retryable.
    #[error(
        "the Miosa API failed (HTTP {status}: {message}){}{}",
        RetryAfter(retry_after),
        RequestId(request_id)
    )]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// How long the server asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// The response's `X-Request-ID`.
        request_id: Option<String>,
    },
    /// Another 4xx: the request itself is wrong (a bad filter value, say). Fatal.
    #[error(
        "the Miosa API rejected the request (HTTP {status}: {message}){}",
        RequestId(request_id)
    )]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// The response's `X-Request-ID`.
        request_id: Option<String>,
    },
    /// The server's TLS certificate is not trusted. Not retryable: the fix is to trust its CA.
    #[error(
        "the Miosa API at {endpoint} presented a TLS certificate this client does not trust ({message}); if a private CA (or a TLS-inspecting proxy) signs it, give its CA certificate as tls_ca_file = \"/path/to/ca.pem\" in [source] (ClientBuilder::ca_file in the library)"
    )]
    Tls {
        /// Scheme, host and port.
        endpoint: String,
        /// What the TLS library said.
        message: String,
    },
    /// The server could not be reached or the connection broke. Retryable.
    #[error("could not reach the Miosa API at {endpoint}: {message}")]
    Transport {
        /// Scheme, host and port (never a query string).
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// A response or frame was not what the contract allows. Not retryable: the same bytes will
    /// not decode the next time. `raw` holds the payload for the dead-letter file.
    #[error("could not decode {what}: {message}")]
    Decode {
        /// What was being decoded (a list response, a socket frame…).
        what: String,
        /// Why it failed.
        message: String,
        /// The payload, when there is one.
        raw: Option<Bytes>,
    },
    /// A response was larger than the client reads. Not retryable: the same server sends the
    /// same size again; the fix is a larger limit, or a smaller page.
    #[error("{what} is larger than {limit_bytes} bytes, the most this client reads; if the API's events really are that large, raise max_response_bytes in [source] (ClientBuilder::max_response_bytes in the library)")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The limit it passed.
        limit_bytes: usize,
    },
    /// The client was configured wrongly (a bad base URL, a missing key).
    #[error("invalid Miosa client configuration: {0}")]
    Config(String),
}

impl Error {
    /// A transport failure, or [`Error::Tls`] when it is a rejected certificate.
    pub(crate) fn transport(endpoint: String, message: String) -> Error {
        // rustls says "invalid peer certificate: UnknownIssuer" (or BadSignature, Expired,
        // NotValidForName…), however deep in the chain of wrapped errors.
        if message.contains("invalid peer certificate") {
            Error::Tls { endpoint, message }
        } else {
            Error::Transport { endpoint, message }
        }
    }

    /// Whether this is one element of a list page that is not an event: a listing goes on past
    /// it. Any other error a listing yields is its last item.
    pub fn is_list_element(&self) -> bool {
        matches!(self, Error::Decode { what, .. } if what == super::event::LIST_ELEMENT)
    }

    /// Whether the same request can succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. } | Error::Server { .. } | Error::Transport { .. }
        )
    }

    /// How long the server asked us to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `X-Request-ID` of the failed response, if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Unauthorized { request_id, .. }
            | Error::NotFound { request_id, .. }
            | Error::RateLimited { request_id, .. }
            | Error::Server { request_id, .. }
            | Error::Rejected { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

struct RequestId<'a>(&'a Option<String>);

impl fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " [request id {id}]"),
            None => Ok(()),
        }
    }
}

struct RetryAfter<'a>(&'a Option<Duration>);

impl fmt::Display for RetryAfter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, ", retry after {:.1}s", d.as_secs_f64()),
            None => Ok(()),
        }
    }
}
