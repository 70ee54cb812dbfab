//! The per-sandbox WebSocket: `…/egress/audit/resource/{id}?token=…`, subprotocol
//! `miosa-egress-audit-v1`, frames capped at 1 MiB.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{encode_segment, request_id, status_error, Client, Error, SUBPROTOCOL};

/// An open audit socket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<ReadAhead<TcpStream>>>;

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
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let connecting = async move {
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
        tcp.set_nodelay(true)
            .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
        tokio_tungstenite::client_async_tls_with_config(request, ReadAhead::new(tcp), Some(config), connector)
            .await
    };
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

/// The most one read from the network takes while a socket is busy.
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// A read-ahead buffer under the socket that exists only while the socket is busy.
///
/// tungstenite reads through a 4 KiB buffer (a 128 KiB one would cost 128 KiB per idle socket,
/// and there may be thousands), so a busy socket took one `recv` per 4 KiB: about 7 events per
/// system call in the live benchmark. Once a read fills the caller's buffer (more is probably
/// waiting), this takes up to 64 KiB per `recv` and serves the small reads from memory; once the
/// socket has nothing waiting, the buffer is freed. An idle or slow socket never allocates it.
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Read ahead, `READ_AHEAD_BYTES` long while busy, empty otherwise.
    buf: Vec<u8>,
    /// `buf[pos..filled]` has not been handed on yet.
    pos: usize,
    filled: usize,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
        }
    }

    fn idle(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        self.filled = 0;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.filled {
            let n = out.remaining().min(this.filled - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        if this.buf.is_empty() || out.remaining() >= READ_AHEAD_BYTES {
            // Not busy (or the caller's buffer is as large): read straight into the caller's.
            this.idle();
            let wanted = out.remaining();
            let before = out.filled().len();
            let r = Pin::new(&mut this.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = r {
                if wanted > 0 && out.filled().len() - before == wanted && wanted < READ_AHEAD_BYTES {
                    // The read filled the caller's buffer: the socket is busy.
                    this.buf = vec![0; READ_AHEAD_BYTES];
                }
            }
            return r;
        }
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                if n < out.remaining() {
                    // Less than the caller asked for: hand it on directly and stop reading ahead.
                    out.put_slice(&this.buf[..n]);
                    this.idle();
                } else {
                    let k = out.remaining();
                    out.put_slice(&this.buf[..k]);
                    this.pos = k;
                    this.filled = n;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.idle();
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                // Nothing waiting: an idle socket holds no buffer.
                this.idle();
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A socket holding `waiting` bytes: reads take what fits, then it is pending.
    struct Fake {
        waiting: VecDeque<u8>,
        reads: usize,
    }

    impl AsyncRead for Fake {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.reads += 1;
            if this.waiting.is_empty() {
                return Poll::Pending;
            }
            let n = out.remaining().min(this.waiting.len());
            let bytes: Vec<u8> = this.waiting.drain(..n).collect();
            out.put_slice(&bytes);
            Poll::Ready(Ok(()))
        }
    }

    /// Read with a 4 KiB buffer (tungstenite's) until pending; what came, in order.
    fn drain(r: &mut ReadAhead<Fake>, out: &mut Vec<u8>) {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            let mut chunk = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *r).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => return,
            }
        }
    }

    fn pattern(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31 + seed) % 251) as u8).collect()
    }

    #[test]
    fn a_busy_socket_reads_64_kib_at_a_time_and_every_byte_arrives_in_order() {
        let sent = pattern(1_000_000, 7);
        let mut r = ReadAhead::new(Fake {
            waiting: sent.iter().copied().collect(),
            reads: 0,
        });
        let mut got = Vec::new();
        drain(&mut r, &mut got);
        assert_eq!(got, sent);
        // One 4 KiB read finds the socket busy; then 64 KiB each, and the final pending one.
        let expected = 1 + (1_000_000 - 4096usize).div_ceil(READ_AHEAD_BYTES) + 1;
        assert_eq!(r.inner.reads, expected);
        assert_eq!(r.buf.capacity(), 0, "a drained socket holds no read-ahead buffer");
    }

    #[test]
    fn a_slow_socket_never_allocates_the_buffer() {
        let mut r = ReadAhead::new(Fake {
            waiting: VecDeque::new(),
            reads: 0,
        });
        let mut got = Vec::new();
        let mut sent = Vec::new();
        for round in 0..50 {
            // A few events at a time, less than tungstenite's 4 KiB.
            let part = pattern(100 + round * 61, round);
            r.inner.waiting.extend(part.iter().copied());
            sent.extend(part);
            drain(&mut r, &mut got);
            assert_eq!(r.buf.capacity(), 0);
        }
        assert_eq!(got, sent);
        assert_eq!(
            r.inner.reads, 100,
            "one read per arrival and one that finds nothing"
        );
    }

    #[test]
    fn bursts_of_any_size_arrive_whole_and_in_order() {
        let mut r = ReadAhead::new(Fake {
            waiting: VecDeque::new(),
            reads: 0,
        });
        let (mut got, mut sent) = (Vec::new(), Vec::new());
        for (i, size) in [
            4096, 1, 4095, 65_536, 65_537, 70_000, 3, 200_000, 4097, 0, 131_072,
        ]
        .into_iter()
        .enumerate()
        {
            let part = pattern(size, i);
            r.inner.waiting.extend(part.iter().copied());
            sent.extend(part);
            drain(&mut r, &mut got);
            assert_eq!(got, sent, "after a burst of {size} bytes");
            assert_eq!(r.buf.capacity(), 0);
        }
    }
}
