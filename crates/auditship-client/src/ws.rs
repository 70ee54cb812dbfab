//! The per-sandbox WebSocket: `…/egress/audit/resource/{id}?token=…`, subprotocol
//! `miosa-egress-audit-v1`, frames capped at 1 MiB.
//!
//! The client side of RFC 6455 is written here rather than taken from tungstenite because the
//! read path is the live pipeline's hottest: tungstenite copies every byte from its reader into
//! its own buffer (zeroing the space first) and, while earlier frames are still held (they are
//! until the sink has written them), allocates a fresh buffer every 4 KiB and copies the partial
//! frame over. Here a busy socket reads 64 KiB per `recv` straight into the buffer that the
//! frames' payloads are then split from, without a copy; an idle socket holds no buffer at all.
//! The live benchmark's profile put tungstenite's reading at about a fifth of the process's CPU
//! (benches/HISTORY.md, change 24).
//!
//! What this side needs of the protocol is small: a client handshake, unmasked frames in (a
//! masked one is an error), masked control frames out, fragmented messages reassembled, pings
//! answered, the closing handshake echoed, and the 1 MiB cap (the Elixir SDK's; larger closes
//! with 1009). No extension is offered, so a frame with a reserved bit set is an error.
//!
//! Since it is our own, `ws/differential.rs` holds it to tokio-tungstenite: random server byte
//! streams, good and broken, read through both must give the same messages and errors.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::Stream;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Client, Error, SUBPROTOCOL};
use crate::http::{encode_segment, status_error};

/// An open audit socket.
pub(crate) type Socket = WsStream<Conn>;

/// The largest frame or message we accept (the Elixir SDK's cap; larger closes with 1009).
pub(crate) const MAX_FRAME_BYTES: usize = 1 << 20;

/// The first read of a socket, and every read of one that is not busy: a few events' worth.
const IDLE_READ_BYTES: usize = 4 * 1024;

/// The most one read takes while a socket is busy. Thousands of mostly idle sockets must not hold
/// 64 KiB each, so a socket grows to this only while reads keep filling what they are given, and
/// drops its buffer once a read finds nothing waiting.
const BUSY_READ_BYTES: usize = 64 * 1024;

/// The most an upgrade response's head may take.
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// The GUID RFC 6455 appends to the key to derive `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// A text (checked to be UTF-8) or binary message's payload.
    Data(Bytes),
    /// A ping; the pong is already queued.
    Ping,
    /// A pong to one of our pings.
    Pong,
    /// The server is closing: its code and reason, if it gave them. Our reply is queued.
    Close(Option<(u16, String)>),
}

/// Why a socket cannot go on. None of these is fixed by waiting on the same socket; the tail
/// reconnects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// Reading or writing the connection failed.
    #[error("socket i/o: {0}")]
    Io(#[from] io::Error),
    /// The server broke RFC 6455.
    #[error("socket protocol error: {0}")]
    Protocol(String),
    /// A frame or message over [`MAX_FRAME_BYTES`] (the socket is closed with 1009).
    #[error("a socket message of {size} bytes is over the {MAX_FRAME_BYTES}-byte cap")]
    Capacity {
        /// The frame's or message's length so far.
        size: usize,
    },
}

impl WsError {
    /// Whether this is a frame or message over the cap.
    pub(crate) fn is_oversized(&self) -> bool {
        matches!(self, WsError::Capacity { .. })
    }
}

/// Open the socket for `resource_id`. Any failure (connect error, HTTP status >= 400, a missing
/// or different subprotocol, the connect timeout) is an `Err`: the caller falls back to polling.
pub(crate) async fn connect(client: &Client, resource_id: &str) -> Result<Socket, Error> {
    let base = client.base_url();
    let mut url = base.clone();
    let tls = base.scheme() == "https";
    let scheme = if tls { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|_| Error::Config(format!("cannot derive a socket URL from {}", base)))?;
    let path = format!(
        "{}/egress/audit/resource/{}",
        base.path().trim_end_matches('/'),
        encode_segment(resource_id)
    );
    url.set_path(&path);
    url.query_pairs_mut().append_pair("token", client.key().expose());
    let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_string();
    let endpoint = format!("{scheme}://{authority}");
    let redact = |e: &dyn std::fmt::Display| client.key().redact(&e.to_string());
    let target = url[url::Position::BeforePath..url::Position::AfterQuery].to_string();

    let timeout = client.inner.connect_timeout;
    // Handshakes wait their turn (the 5 s timeout starts with it): a thousand sandboxes
    // connecting at once would overflow a server's accept queue and all fall back to polling.
    let _turn = client.inner.handshakes.acquire().await;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let tls_config = tls.then(|| client.inner.socket_tls.clone());
    let connecting = async move {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, port)).await.map_err(Handshake::Io)?;
        tcp.set_nodelay(true).map_err(Handshake::Io)?;
        let mut conn = match tls_config {
            None => Conn::Plain(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                    .map_err(|e| Handshake::Invalid(format!("{bare:?} is not a TLS server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(Handshake::Io)?;
                Conn::Tls(Box::new(tls))
            }
        };
        let rest = handshake(&mut conn, &authority, &target).await?;
        Ok::<_, Handshake>(WsStream::new(conn, rest))
    };
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(Error::Transport {
            endpoint,
            message: format!("socket handshake timed out after {} ms", timeout.as_millis()),
        }),
        Ok(Err(Handshake::Status { status, request_id })) => Err(status_error(
            status,
            "socket upgrade refused".into(),
            None,
            request_id,
            &format!("audit socket of {resource_id}"),
        )),
        Ok(Err(Handshake::Subprotocol(selected))) => Err(Error::Transport {
            endpoint,
            message: format!(
                "socket server selected subprotocol {:?}, not {SUBPROTOCOL:?}",
                selected.as_deref().unwrap_or("(none)")
            ),
        }),
        Ok(Err(e)) => Err(Error::transport(
            endpoint,
            format!("socket handshake failed: {}", redact(&e)),
        )),
        Ok(Ok(socket)) => Ok(socket),
    }
}

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
enum Handshake {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("HTTP {status}")]
    Status { status: u16, request_id: Option<String> },
    #[error("subprotocol {0:?}")]
    Subprotocol(Option<String>),
    #[error("{0}")]
    Invalid(String),
}

/// The client's opening handshake on `io`: the upgrade request for `target` (path and query) at
/// `authority`, then the server's answer. Returns what the server sent after its head (frames
/// may follow the 101 at once).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    authority: &str,
    target: &str,
) -> Result<BytesMut, Handshake> {
    let key = data_encoding::BASE64.encode(&rand::random::<[u8; 16]>());
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;

    let mut buf = BytesMut::with_capacity(IDLE_READ_BYTES);
    let head_len = loop {
        if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() >= MAX_RESPONSE_HEAD_BYTES {
            return Err(Handshake::Invalid(format!(
                "the upgrade response's head is over {MAX_RESPONSE_HEAD_BYTES} bytes"
            )));
        }
        buf.reserve(IDLE_READ_BYTES);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Handshake::Invalid(
                "the server closed the connection before answering the upgrade".into(),
            ));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        // Not reached: the head ends with its blank line.
        Ok(httparse::Status::Partial) => {
            return Err(Handshake::Invalid(
                "the upgrade response's head is cut short".into(),
            ))
        }
        Err(e) => {
            return Err(Handshake::Invalid(format!(
                "the upgrade response is not HTTP: {e}"
            )))
        }
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(Handshake::Status {
            status,
            request_id: header("x-request-id").map(str::to_string),
        });
    }
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(Handshake::Invalid(
            "the 101 response lacks `Upgrade: websocket`".into(),
        ));
    }
    if !header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))) {
        return Err(Handshake::Invalid(
            "the 101 response lacks `Connection: Upgrade`".into(),
        ));
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID);
    let expected = data_encoding::BASE64.encode(&sha.finalize());
    if header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(Handshake::Invalid(
            "the 101 response's Sec-WebSocket-Accept does not match the key sent".into(),
        ));
    }
    let selected = header("sec-websocket-protocol");
    if selected != Some(SUBPROTOCOL) {
        return Err(Handshake::Subprotocol(selected.map(str::to_string)));
    }
    if header("sec-websocket-extensions").is_some() {
        return Err(Handshake::Invalid(
            "the server accepted an extension none was offered".into(),
        ));
    }
    buf.advance(head_len);
    Ok(buf)
}

/// The connection under a socket: plain TCP or TLS over it.
pub(crate) enum Conn {
    /// `ws://`
    Plain(TcpStream),
    /// `wss://`
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where a socket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The server sent a close frame (our reply is queued) or we failed it: once the queued
    /// frames are written, the stream ends.
    Closing,
    Ended,
}

/// A client WebSocket over `S` after its handshake: a [`Stream`] of the server's messages.
pub(crate) struct WsStream<S> {
    io: S,
    /// Read, not yet taken. Payloads are split off and frozen, so they share its allocation
    /// until the last of them is dropped.
    buf: BytesMut,
    /// The last read filled what it was given: read `BUSY_READ_BYTES` next.
    busy: bool,
    /// A fragmented message being put together: whether it is text, and the payload so far.
    partial: Option<(bool, BytesMut)>,
    /// Of a fragmented text message, the bytes so far known to be UTF-8 (checked as each
    /// fragment comes, so a message that can no longer be UTF-8 fails at once, as
    /// tungstenite does, not after every fragment of up to 1 MiB was taken).
    partial_checked: usize,
    /// Frames to write (pongs, close replies): written before reading on.
    out: Vec<u8>,
    /// We queued a close frame: never queue another.
    close_sent: bool,
    state: State,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// A socket whose handshake is done; `read` is what arrived after it.
    pub(crate) fn new(io: S, read: BytesMut) -> Self {
        WsStream {
            io,
            buf: read,
            busy: false,
            partial: None,
            partial_checked: 0,
            out: Vec::new(),
            close_sent: false,
            state: State::Open,
        }
    }

    /// Send a ping (the server answers with a pong, which shows the connection is alive).
    pub(crate) async fn ping(&mut self) -> Result<(), WsError> {
        queue_frame(&mut self.out, OP_PING, &[]);
        self.write_out().await
    }

    /// Start the closing handshake (no code), write it, and wait for the server to finish it:
    /// its close frame, then the end of the TCP stream, which RFC 6455 (7.1.1) has the server
    /// close first. Messages still arriving meanwhile are dropped (whoever closes wants no
    /// more). Unbounded here: the caller bounds it in time.
    pub(crate) async fn close(&mut self) -> Result<(), WsError> {
        if !self.close_sent {
            self.close_sent = true;
            queue_frame(&mut self.out, OP_CLOSE, &[]);
        }
        let closing = self.state;
        self.state = State::Ended;
        self.write_out().await?;
        if closing == State::Ended {
            return Ok(());
        }
        let done = self.await_server_close(closing == State::Closing).await;
        self.state = State::Ended;
        done
    }

    /// Read until the server's close frame (unless `close_seen`), then until its end of stream.
    async fn await_server_close(&mut self, mut close_seen: bool) -> Result<(), WsError> {
        self.partial = None;
        loop {
            let needed = if close_seen {
                // After its close frame a server sends nothing; whatever comes is dropped.
                self.buf.clear();
                1
            } else {
                match self.parse() {
                    Ok(Ok(Message::Close(_))) => {
                        close_seen = true;
                        continue;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(needed)) => needed,
                    // A server that breaks the protocol while we close: closed enough.
                    Err(_) => return Ok(()),
                }
            };
            if std::future::poll_fn(|cx| self.poll_fill(cx, needed)).await? == 0 {
                return Ok(());
            }
        }
    }

    async fn write_out(&mut self) -> Result<(), WsError> {
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await
    }

    /// Write the queued frames.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.out.drain(..n);
        }
        Pin::new(&mut self.io).poll_flush(cx).map_err(WsError::from)
    }

    /// Read more into `buf`: `Ready(Ok(0))` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, needed: usize) -> Poll<io::Result<usize>> {
        let want = if self.busy {
            BUSY_READ_BYTES
        } else {
            IDLE_READ_BYTES
        };
        let spare = self.buf.capacity() - self.buf.len();
        if spare < needed.min(want).max(1) || spare < IDLE_READ_BYTES / 4 {
            // A frame longer than a read is reserved whole, so it is read in one piece.
            self.buf.reserve(want.max(needed));
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
            Poll::Pending => {
                if self.buf.is_empty() && self.partial.is_none() {
                    // Nothing waiting and nothing half read: an idle socket holds no buffer.
                    self.buf = BytesMut::new();
                    self.busy = false;
                }
                return Poll::Pending;
            }
            Poll::Ready(r) => r?,
        };
        self.busy = n == spare || n >= IDLE_READ_BYTES;
        Poll::Ready(Ok(n))
    }

    /// Take the next message from `buf`, if a whole one is there. `Err(needed)`: bytes `buf`
    /// must hold before a frame can be taken.
    fn parse(&mut self) -> Result<Result<Message, usize>, WsError> {
        loop {
            let b = &self.buf[..];
            if b.len() < 2 {
                return Ok(Err(2));
            }
            let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
            let masked = b[1] & 0x80 != 0;
            let (len, head) = match b[1] & 0x7f {
                126 if b.len() < 4 => return Ok(Err(4)),
                126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                127 if b.len() < 10 => return Ok(Err(10)),
                127 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(n), 10)
                }
                n => (u64::from(n), 2),
            };
            if rsv != 0 {
                return Err(protocol(
                    "a frame has a reserved bit set, and no extension was agreed",
                ));
            }
            if masked {
                return Err(protocol("the server sent a masked frame"));
            }
            // Before the size cap: an oversized control frame breaks the protocol (1002), it
            // is not a message too big to take (1009).
            if opcode >= 8 && (len > 125 || !fin) {
                return Err(protocol("a control frame is fragmented or over 125 bytes"));
            }
            let len = match usize::try_from(len) {
                Ok(n) if n <= MAX_FRAME_BYTES => n,
                _ => {
                    return Err(WsError::Capacity {
                        size: usize::try_from(len).unwrap_or(usize::MAX),
                    })
                }
            };
            if b.len() < head + len {
                return Ok(Err(head + len));
            }
            self.buf.advance(head);
            let payload = self.buf.split_to(len);
            match opcode {
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(protocol("a new message began inside a fragmented one"));
                    }
                    if fin {
                        return finish(opcode == OP_TEXT, payload).map(Ok);
                    }
                    self.partial_checked = 0;
                    if opcode == OP_TEXT {
                        self.partial_checked = utf8_so_far(&payload, 0)?;
                    }
                    self.partial = Some((opcode == OP_TEXT, payload));
                }
                OP_CONTINUATION => {
                    let Some((text, mut so_far)) = self.partial.take() else {
                        return Err(protocol("a continuation frame came with no message to continue"));
                    };
                    if so_far.len() + len > MAX_FRAME_BYTES {
                        return Err(WsError::Capacity {
                            size: so_far.len() + len,
                        });
                    }
                    so_far.extend_from_slice(&payload);
                    if fin {
                        return finish(text, so_far).map(Ok);
                    }
                    if text {
                        self.partial_checked = utf8_so_far(&so_far, self.partial_checked)?;
                    }
                    self.partial = Some((text, so_far));
                }
                OP_PING => {
                    // A server that pings and never reads what we write would grow the queue
                    // without end: past a bound, pings go unanswered (a pong answers the latest
                    // ping anyway, RFC 6455 5.5.3), and the server is read on.
                    if !self.close_sent && self.out.len() < MAX_QUEUED_BYTES {
                        queue_frame(&mut self.out, OP_PONG, &payload);
                    }
                    return Ok(Ok(Message::Ping));
                }
                OP_PONG => return Ok(Ok(Message::Pong)),
                OP_CLOSE => {
                    let frame = match payload.len() {
                        0 => None,
                        1 => return Err(protocol("a close frame with a one-byte body")),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            if !close_code_may_be_sent(code) {
                                return Err(protocol(&format!(
                                    "a close frame with code {code}, which no endpoint may send"
                                )));
                            }
                            let reason = std::str::from_utf8(&payload[2..])
                                .map_err(|_| protocol("a close frame's reason is not UTF-8"))?;
                            Some((code, reason.to_string()))
                        }
                    };
                    if !self.close_sent {
                        // Echo the code, as RFC 6455 (5.5.1) asks.
                        self.close_sent = true;
                        let echo = frame.as_ref().map(|(c, _)| c.to_be_bytes());
                        queue_frame(&mut self.out, OP_CLOSE, echo.as_ref().map_or(&[][..], |c| &c[..]));
                    }
                    self.state = State::Closing;
                    return Ok(Ok(Message::Close(frame)));
                }
                other => return Err(protocol(&format!("unknown opcode {other:#x}"))),
            }
        }
    }

    /// Fail the connection: queue a close frame with `code` and stop reading.
    fn fail(&mut self, code: u16) {
        if !self.close_sent {
            self.close_sent = true;
            queue_frame(&mut self.out, OP_CLOSE, &code.to_be_bytes());
        }
        self.state = State::Closing;
        self.partial = None;
        self.buf = BytesMut::new();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsStream<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                match this.poll_write_out(cx) {
                    // A write that cannot go on yet does not hold up reading.
                    Poll::Pending | Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) if this.state == State::Open => {
                        this.state = State::Ended;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Err(_)) => this.state = State::Ended,
                }
            }
            match this.state {
                State::Open => {}
                State::Closing if this.out.is_empty() => {
                    this.state = State::Ended;
                    return Poll::Ready(None);
                }
                // The close reply is still being written.
                State::Closing => return Poll::Pending,
                State::Ended => return Poll::Ready(None),
            }
            let needed = match this.parse() {
                Ok(Ok(message)) => {
                    if matches!(message, Message::Close(_)) {
                        // The caller usually drops the socket on a close: answer it now.
                        let _ = this.poll_write_out(cx);
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(Err(needed)) => needed,
                Err(e) => {
                    this.fail(match e {
                        WsError::Capacity { .. } => 1009,
                        _ => 1002,
                    });
                    // Best effort: the close frame goes out if the connection takes it now.
                    let _ = this.poll_write_out(cx);
                    this.state = State::Ended;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match ready!(this.poll_fill(cx, needed)) {
                Ok(0) => {
                    this.state = State::Ended;
                    return Poll::Ready(Some(Err(WsError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection without a closing handshake",
                    )))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.state = State::Ended;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// Bytes of pongs and close frames queued for writing beyond which pings are not answered.
const MAX_QUEUED_BYTES: usize = 4096;

/// Whether a peer may put `code` in a close frame (RFC 6455 7.4 and the IANA registry): 1000-1003,
/// 1007-1014, and 3000-4999 for libraries and applications. 1005, 1006 and 1015 only report
/// what happened locally and are never sent; the rest are reserved or undefined.
fn close_code_may_be_sent(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn protocol(what: &str) -> WsError {
    WsError::Protocol(what.to_string())
}

/// How much of `so_far`, the start of a text message, is UTF-8 (from `checked`, known to be):
/// an error if what follows cannot begin a character, only a character cut at the end is
/// let pass, since the next fragment may complete it.
fn utf8_so_far(so_far: &[u8], checked: usize) -> Result<usize, WsError> {
    match std::str::from_utf8(&so_far[checked..]) {
        Ok(_) => Ok(so_far.len()),
        Err(e) if e.error_len().is_none() => Ok(checked + e.valid_up_to()),
        Err(_) => Err(protocol("a text message is not UTF-8")),
    }
}

/// A whole message's payload; a text message must be UTF-8 (RFC 6455 8.1).
fn finish(text: bool, payload: BytesMut) -> Result<Message, WsError> {
    if text && std::str::from_utf8(&payload).is_err() {
        return Err(protocol("a text message is not UTF-8"));
    }
    Ok(Message::Data(payload.freeze()))
}

/// Append a final client frame (masked, as RFC 6455 requires of a client) to `out`.
fn queue_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(0x80 | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(0x80 | 127);
            out.put_u64(n as u64);
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::DuplexStream;

    /// A server frame (unmasked).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 65_535 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Unmask the client frames in `bytes`: (opcode, payload) each.
    fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0] & 0x80, 0x80, "client frames are final");
            assert_eq!(bytes[1] & 0x80, 0x80, "client frames are masked");
            let (len, mut at) = match bytes[1] & 0x7f {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                n => (n as usize, 2),
            };
            let mask = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            at += 4;
            let payload = bytes[at..at + len]
                .iter()
                .zip(mask.iter().cycle())
                .map(|(b, m)| b ^ m)
                .collect();
            frames.push((bytes[0] & 0x0f, payload));
            bytes = &bytes[at + len..];
        }
        frames
    }

    fn pair() -> (WsStream<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(1 << 22);
        (WsStream::new(client, BytesMut::new()), server)
    }

    fn event(i: usize) -> Vec<u8> {
        format!("{{\"id\":\"evt_{i}\",\"pad\":\"{}\"}}", "x".repeat(i % 700)).into_bytes()
    }

    #[tokio::test]
    async fn messages_arrive_whole_however_the_bytes_are_split() {
        let (mut ws, mut server) = pair();
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for i in 0..400 {
            let e = event(i);
            if i % 7 == 3 {
                // Fragmented in three (text, continuation, continuation), a ping between.
                let (a, rest) = e.split_at(e.len() / 3);
                let (b, c) = rest.split_at(rest.len() / 2);
                wire.extend(frame(false, OP_TEXT, a));
                wire.extend(frame(true, OP_PING, b"p"));
                wire.extend(frame(false, OP_CONTINUATION, b));
                wire.extend(frame(true, OP_CONTINUATION, c));
            } else {
                wire.extend(frame(true, if i % 2 == 0 { OP_TEXT } else { OP_BINARY }, &e));
            }
            sent.push(e);
        }
        wire.extend(frame(true, OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']));
        let writer = tokio::spawn(async move {
            // Odd-sized pieces, so headers and payloads straddle reads.
            for piece in wire.chunks(977) {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            let mut back = Vec::new();
            server.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        let mut pings = 0;
        let mut close = None;
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                Message::Data(b) => got.push(b.to_vec()),
                Message::Ping => pings += 1,
                Message::Close(c) => close = c,
                Message::Pong => panic!("no pong was sent"),
            }
        }
        assert_eq!(got, sent);
        assert_eq!(pings, (0..400).filter(|i| i % 7 == 3).count());
        assert_eq!(close, Some((1000, "bye".into())));
        drop(ws);
        let back = client_frames(&writer.await.unwrap());
        let pongs = back.iter().filter(|(op, p)| *op == OP_PONG && p == b"p").count();
        assert_eq!(pongs, pings, "every ping is answered with its payload");
        assert_eq!(
            back.last(),
            Some(&(OP_CLOSE, vec![0x03, 0xe8])),
            "the close is echoed"
        );
    }

    #[tokio::test]
    async fn a_busy_socket_reads_big_and_an_idle_one_holds_no_buffer() {
        let (mut ws, mut server) = pair();
        let mut wire = Vec::new();
        for i in 0..2000 {
            wire.extend(frame(true, OP_TEXT, &event(i)));
        }
        server.write_all(&wire).await.unwrap();
        for _ in 0..1000 {
            assert!(matches!(ws.next().await, Some(Ok(Message::Data(_)))));
        }
        assert!(ws.busy, "reads that fill the buffer mark the socket busy");
        assert!(
            ws.buf.capacity() > IDLE_READ_BYTES,
            "a busy socket reads more than 4 KiB at once"
        );
        for _ in 1000..2000 {
            assert!(matches!(ws.next().await, Some(Ok(Message::Data(_)))));
        }
        // Nothing waiting: the next poll is pending and gives the buffer back.
        assert!(futures_util::FutureExt::now_or_never(ws.next()).is_none());
        assert_eq!(ws.buf.capacity(), 0, "an idle socket holds no read buffer");
        assert!(!ws.busy);
        // A small arrival is read with a small buffer.
        server.write_all(&frame(true, OP_TEXT, b"{}")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Data(Bytes::from_static(b"{}"))
        );
        assert!(ws.buf.capacity() <= IDLE_READ_BYTES);
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_fails_the_socket_with_1009() {
        let (mut ws, mut server) = pair();
        let mut wire = frame(true, OP_TEXT, b"{\"id\":\"evt_1\"}");
        // Only the header: the cap is enforced before the payload is read.
        wire.extend(&frame(true, OP_BINARY, &vec![0; MAX_FRAME_BYTES + 1])[..10]);
        server.write_all(&wire).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Data(_)))));
        let e = ws.next().await.unwrap().unwrap_err();
        assert!(e.is_oversized(), "{e}");
        assert!(ws.next().await.is_none());
        drop(ws);
        let mut back = Vec::new();
        server.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            client_frames(&back),
            vec![(OP_CLOSE, 1009u16.to_be_bytes().to_vec())]
        );
    }

    #[tokio::test]
    async fn a_fragmented_message_over_the_cap_is_refused_too() {
        let (mut ws, mut server) = pair();
        let half = vec![b'a'; MAX_FRAME_BYTES / 2 + 1];
        let mut wire = frame(false, OP_TEXT, &half);
        wire.extend(frame(true, OP_CONTINUATION, &half));
        server.write_all(&wire).await.unwrap();
        assert!(ws.next().await.unwrap().unwrap_err().is_oversized());
    }

    #[tokio::test]
    async fn every_close_code_a_peer_may_send_is_echoed() {
        for code in [1000u16, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            let (mut ws, mut server) = pair();
            server
                .write_all(&frame(true, OP_CLOSE, &code.to_be_bytes()))
                .await
                .unwrap();
            match ws.next().await {
                Some(Ok(Message::Close(Some((got, _))))) => assert_eq!(got, code),
                other => panic!("{code}: {other:?}"),
            }
            drop(ws);
            let mut back = Vec::new();
            server.read_to_end(&mut back).await.unwrap();
            assert_eq!(
                client_frames(&back),
                vec![(OP_CLOSE, code.to_be_bytes().to_vec())],
                "{code}"
            );
        }
    }

    /// A server that pings without reading what we write: the pongs queued for it stay
    /// bounded, and its pings are still read.
    #[tokio::test]
    async fn pongs_to_a_server_that_never_reads_stay_bounded() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut ws = WsStream::new(client, BytesMut::new());
        let pings = 5_000;
        let writer = tokio::spawn(async move {
            let ping = frame(true, OP_PING, &[7; 125]);
            for _ in 0..pings {
                server.write_all(&ping).await.unwrap();
            }
            server
        });
        for i in 0..pings {
            match ws.next().await {
                Some(Ok(Message::Ping)) => {}
                other => panic!("ping {i}: {other:?}"),
            }
            assert!(
                ws.out.len() <= 4096 + 131,
                "{} bytes queued after {i} pings",
                ws.out.len()
            );
        }
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn protocol_breaches_fail_the_socket_with_1002() {
        let masked = {
            let mut f = frame(true, OP_TEXT, b"abcd");
            f[1] |= 0x80;
            f.splice(2..2, [1, 2, 3, 4]);
            f
        };
        let mut rsv = frame(true, OP_TEXT, b"{}");
        rsv[0] |= 0x40;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("masked", masked),
            ("reserved bit", rsv),
            ("text not UTF-8", frame(true, OP_TEXT, &[0xff, 0xfe])),
            ("continuation first", frame(true, OP_CONTINUATION, b"x")),
            ("long ping", frame(true, OP_PING, &[0; 126])),
            // Over the message cap as well: still a protocol breach (1002), not 1009.
            ("a 2 MiB ping", {
                let mut h = vec![0x80 | OP_PING, 127];
                h.extend_from_slice(&(2u64 << 20).to_be_bytes());
                h
            }),
            ("close code 1005", frame(true, OP_CLOSE, &1005u16.to_be_bytes())),
            ("close code 1006", frame(true, OP_CLOSE, &1006u16.to_be_bytes())),
            ("close code 1015", frame(true, OP_CLOSE, &1015u16.to_be_bytes())),
            ("close code 999", frame(true, OP_CLOSE, &999u16.to_be_bytes())),
            ("close code 1004", frame(true, OP_CLOSE, &1004u16.to_be_bytes())),
            ("close code 2999", frame(true, OP_CLOSE, &2999u16.to_be_bytes())),
            ("close code 5000", frame(true, OP_CLOSE, &5000u16.to_be_bytes())),
            ("unknown opcode", frame(true, 0x3, b"x")),
            ("new message inside a fragmented one", {
                let mut w = frame(false, OP_TEXT, b"a");
                w.extend(frame(true, OP_TEXT, b"b"));
                w
            }),
        ];
        for (what, wire) in cases {
            let (mut ws, mut server) = pair();
            server.write_all(&wire).await.unwrap();
            match ws.next().await {
                Some(Err(WsError::Protocol(_))) => {}
                other => panic!("{what}: {other:?}"),
            }
            assert!(ws.next().await.is_none(), "{what}: the stream ends");
            drop(ws);
            let mut back = Vec::new();
            server.read_to_end(&mut back).await.unwrap();
            assert_eq!(
                client_frames(&back),
                vec![(OP_CLOSE, 1002u16.to_be_bytes().to_vec())],
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn a_close_is_answered_even_if_the_socket_is_dropped_at_once() {
        let (mut ws, mut server) = pair();
        server
            .write_all(&frame(true, OP_CLOSE, &[0x03, 0xe9]))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Close(Some((1001, String::new())))
        );
        drop(ws);
        let mut back = Vec::new();
        server.read_to_end(&mut back).await.unwrap();
        assert_eq!(client_frames(&back), vec![(OP_CLOSE, vec![0x03, 0xe9])]);
    }

    #[tokio::test]
    async fn a_connection_cut_without_a_close_frame_is_an_error() {
        let (mut ws, mut server) = pair();
        server.write_all(&frame(true, OP_TEXT, b"{}")).await.unwrap();
        // Half a frame, then the end.
        server
            .write_all(&frame(true, OP_TEXT, b"{\"id\":1}")[..5])
            .await
            .unwrap();
        drop(server);
        assert!(matches!(ws.next().await, Some(Ok(Message::Data(_)))));
        match ws.next().await {
            Some(Err(WsError::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
        assert!(ws.next().await.is_none());
    }

    #[tokio::test]
    async fn ping_and_close_are_written_masked() {
        let (mut ws, mut server) = pair();
        ws.ping().await.unwrap();
        server.write_all(&frame(true, OP_PONG, b"")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong);
        // The server answers the close and ends the connection, as a server does.
        server.write_all(&frame(true, OP_CLOSE, b"")).await.unwrap();
        server.shutdown().await.unwrap();
        ws.close().await.unwrap();
        assert!(ws.next().await.is_none(), "a closed socket is not read further");
        drop(ws);
        let mut back = Vec::new();
        server.read_to_end(&mut back).await.unwrap();
        assert_eq!(client_frames(&back), vec![(OP_PING, vec![]), (OP_CLOSE, vec![])]);
    }

    /// RFC 6455 7.1.1: the server closes the TCP connection first, so `close` waits for the
    /// server's close frame and then for the end of the stream; what arrives meanwhile is
    /// dropped.
    #[tokio::test]
    async fn close_waits_for_the_servers_close_and_its_end_of_stream() {
        let (mut ws, mut server) = pair();
        let closing = tokio::spawn(async move { ws.close().await });
        // Our close frame arrives; the close is not done while the server has not answered.
        let mut head = [0u8; 6];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(client_frames(&head), vec![(OP_CLOSE, vec![])]);
        server.write_all(&frame(true, OP_TEXT, &event(1))).await.unwrap();
        server.write_all(&frame(true, OP_PING, b"p")).await.unwrap();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!closing.is_finished(), "done before the server's close frame");
        server
            .write_all(&frame(true, OP_CLOSE, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !closing.is_finished(),
            "done before the server ended the connection"
        );
        server.write_all(b"after the close").await.unwrap();
        server.shutdown().await.unwrap();
        closing.await.unwrap().unwrap();
        // Nothing was written after our close: no pong, no second close.
        let mut back = Vec::new();
        server.read_to_end(&mut back).await.unwrap();
        assert!(back.is_empty(), "{back:?}");
    }

    /// Serve one upgrade on `server`: check the request, answer with `respond(key)`.
    async fn serve_upgrade(mut server: DuplexStream, respond: impl FnOnce(&str) -> Vec<u8>) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_string();
        server.write_all(&respond(&key)).await.unwrap();
        head
    }

    fn accept(key: &str) -> String {
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(ACCEPT_GUID);
        data_encoding::BASE64.encode(&sha.finalize())
    }

    #[tokio::test]
    async fn the_handshake_checks_the_accept_key_and_keeps_early_frames() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = tokio::spawn(serve_upgrade(server, |key| {
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
                 sec-websocket-accept: {}\r\nsec-websocket-protocol: {SUBPROTOCOL}\r\n\r\n",
                accept(key)
            )
            .into_bytes();
            answer.extend(frame(true, OP_TEXT, b"{\"early\":1}"));
            answer
        }));
        let rest = handshake(&mut client, "127.0.0.1:9", "/a/b?token=k")
            .await
            .unwrap();
        let head = serving.await.unwrap();
        assert!(
            head.starts_with("GET /a/b?token=k HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")));
        let mut ws = WsStream::new(client, rest);
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Data(Bytes::from_static(b"{\"early\":1}")),
            "a frame sent with the 101 is not lost"
        );
    }

    #[tokio::test]
    async fn a_refused_or_wrong_upgrade_is_an_error() {
        type Respond = fn(&str) -> Vec<u8>;
        let cases: [(&str, Respond); 4] = [
            ("status", |_| {
                "HTTP/1.1 401 Unauthorized\r\nx-request-id: req_7\r\ncontent-length: 0\r\n\r\n".into()
            }),
            ("accept", |_| {
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                     sec-websocket-accept: AAAA\r\nsec-websocket-protocol: {SUBPROTOCOL}\r\n\r\n"
                )
                .into_bytes()
            }),
            ("subprotocol", |key| {
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                     sec-websocket-accept: {}\r\n\r\n",
                    accept(key)
                )
                .into_bytes()
            }),
            ("not http", |_| "SSH-2.0-OpenSSH\r\n\r\n".into()),
        ];
        for (what, respond) in cases {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let serving = tokio::spawn(serve_upgrade(server, respond));
            let e = handshake(&mut client, "h", "/").await.unwrap_err();
            serving.await.unwrap();
            match (what, &e) {
                (
                    "status",
                    Handshake::Status {
                        status: 401,
                        request_id,
                    },
                ) => {
                    assert_eq!(request_id.as_deref(), Some("req_7"))
                }
                ("accept", Handshake::Invalid(m)) => assert!(m.contains("Sec-WebSocket-Accept"), "{m}"),
                ("subprotocol", Handshake::Subprotocol(None)) => {}
                ("not http", Handshake::Invalid(m)) => assert!(m.contains("not HTTP"), "{m}"),
                _ => panic!("{what}: {e:?}"),
            }
        }
    }
}
