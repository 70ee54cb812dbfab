//! The per-sandbox WebSocket: `…/egress/audit/resource/{id}?token=…`, subprotocol
//! `miosa-egress-audit-v1`, frames capped at 1 MiB.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{encode_segment, request_id, status_error, Client, Error, SUBPROTOCOL};

/// An open audit socket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The largest frame or message we accept (the Elixir SDK's cap; larger closes with 1009).
pub(crate) const MAX_FRAME_BYTES: usize = 1 << 20;

/// Open the socket for `resource_id`. Any failure (connect error, HTTP status >= 400, a missing
/// or different subprotocol, the connect timeout) is an `Err`: the caller falls back to polling.
pub(crate) async fn connect(client: &Client, resource_id: &str) -> Result<Socket, Error> {
    let base = client.base_url();
    let mut url = base.clone();
    let scheme = if base.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|_| Error::Config(format!("cannot derive a socket URL from {}", base)))?;
    let path = format!(
        "{}/egress/audit/resource/{}",
        base.path().trim_end_matches('/'),
        encode_segment(resource_id)
    );
    url.set_path(&path);
    url.query_pairs_mut().append_pair("token", client.key().expose());
    let endpoint = format!(
        "{scheme}://{}{}",
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    let redact = |e: &dyn std::fmt::Display| client.key().redact(&e.to_string());

    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Config(format!("socket request: {}", redact(&e))))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
    // A 4 KiB read buffer instead of tungstenite's 128 KiB: thousands of mostly idle sockets
    // should not cost 128 KiB each; a busy socket just reads more often (a 64 KiB buffer, tried,
    // saved about 5% of the live case's CPU, within the noise, and would hold 64 KiB per socket).
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(4 * 1024);
    let timeout = client.inner.connect_timeout;
    // Handshakes wait their turn (the 5 s timeout starts with it): a thousand sandboxes
    // connecting at once would overflow a server's accept queue and all fall back to polling.
    let _turn = client.inner.handshakes.acquire().await;
    let connector = client
        .inner
        .socket_tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (socket, response) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(Error::Transport {
                endpoint,
                message: format!("socket handshake timed out after {} ms", timeout.as_millis()),
            })
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            return Err(status_error(
                resp.status().as_u16(),
                "socket upgrade refused".into(),
                None,
                request_id(resp.headers()),
                &format!("audit socket of {resource_id}"),
            ));
        }
        Ok(Err(e)) => {
            return Err(Error::transport(
                endpoint,
                format!("socket handshake failed: {}", redact(&e)),
            ))
        }
        Ok(Ok(pair)) => pair,
    };
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if selected != Some(SUBPROTOCOL) {
        return Err(Error::Transport {
            endpoint,
            message: format!(
                "socket server selected subprotocol {:?}, not {SUBPROTOCOL:?}",
                selected.unwrap_or("(none)")
            ),
        });
    }
    Ok(socket)
}
