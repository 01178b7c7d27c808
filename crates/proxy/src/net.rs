//! The proxy's connections, to clients and to servers: [`Stream`], and the
//! socket options both sides share.
//!
//! Everything past the accept or the connect talks to a [`Stream`], never
//! to a bare socket, so another transport (TLS) is one more variant here and
//! no change to the session, the relay or the pool. The data path splits a
//! stream into a [`ReadHalf`] and a [`WriteHalf`] borrowed at once, for the
//! two directions of the pump.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp;

/// A connection to a client or a server.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Tcp(s)
    }
}

impl Stream {
    /// The two directions, usable at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
        }
    }

    /// Waits until a read would not block (data, end of stream or an
    /// error), without reading: an idle client holds no buffer meanwhile.
    pub async fn ready_to_read(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
        }
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is),
    /// dropping the cached readiness after a short read (see [`after_read`]).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                let room = buf.capacity() - buf.len();
                let n = s.try_read_buf(buf)?;
                after_read(s, n, room);
                Ok(n)
            }
        }
    }

    /// True when the peer sent something or closed the connection, which a
    /// connection at rest must not have: costs one non-blocking peek.
    pub fn has_input(&self) -> bool {
        match self {
            Stream::Tcp(s) => {
                let mut probe = [0u8; 1];
                !matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes what fits without waiting, for a last word before dropping
    /// the connection (best effort).
    pub fn try_write_last(&self, bytes: &[u8]) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.try_write(bytes);
            }
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The reading direction of a split [`Stream`].
#[derive(Debug)]
pub enum ReadHalf<'a> {
    /// Plain TCP.
    Tcp(tcp::ReadHalf<'a>),
}

impl ReadHalf<'_> {
    /// Call after a read of `n` bytes into `room` bytes of space (see
    /// [`after_read`]).
    pub fn after_read(&self, n: usize, room: usize) {
        match self {
            ReadHalf::Tcp(r) => after_read(r.as_ref(), n, room),
        }
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The writing direction of a split [`Stream`].
#[derive(Debug)]
pub enum WriteHalf<'a> {
    /// Plain TCP.
    Tcp(tcp::WriteHalf<'a>),
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Disables Nagle (every protocol message is latency-bound) and, when asked,
/// turns on TCP keepalive so dead peers are noticed in minutes, not hours.
pub fn tune(stream: &TcpStream, keepalive: bool) {
    let _ = stream.set_nodelay(true);
    if keepalive {
        let ka = TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10))
            .with_retries(6);
        let _ = SockRef::from(stream).set_tcp_keepalive(&ka);
    }
}

/// Call after a read of `n` bytes into `room` bytes of space: when the read
/// came back short, the socket was drained, so its cached readiness is
/// dropped and the next read waits for the reactor instead of first trying
/// (a `recv` that fails with EAGAIN, one per message without this). Safe
/// with edge-triggered readiness: new data either sets a newer readiness
/// (which this leaves alone) or raises an event still to come.
fn after_read(stream: &TcpStream, n: usize, room: usize) {
    if n < room {
        let _ = stream.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
}
