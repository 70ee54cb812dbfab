//! The HTTP endpoint of `--metrics-addr`: `/metrics`, `/health` and `/live`.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use super::{health, render};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be listened on.
    #[error("cannot listen on {addr} for metrics: {source}; pick another --metrics-addr")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Listen on `addr` (before returning, so a taken port is reported at once) and serve
/// `/metrics`, `/health` and `/live` until `shutdown`. Returns the bound address.
pub async fn serve(addr: SocketAddr, shutdown: CancellationToken) -> Result<SocketAddr, ServeError> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    )],
                    render(),
                )
            }),
        )
        .route(
            "/health",
            get(|| async {
                let (ready, body) = health();
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, axum::Json(body))
            }),
        )
        .route("/live", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /health and /live");
    Ok(bound)
}
