//! The proxy's connections, to clients and to servers: [`Stream`], and the
//! socket options both sides share.
//!
//! Everything past the accept or the connect talks to a [`Stream`], never
//! to a bare socket: plain TCP, or TLS either way (the proxy serving a
//! client, or the client of a server), with no change to the session, the
//! relay or the pool. The data path splits a
//! stream into a [`ReadHalf`] and a [`WriteHalf`] borrowed at once, for the
//! two directions of the pump.

pub mod tls;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use pgwarden_tls::rustls;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp;

/// `AsyncRead` or `AsyncWrite` for an enum of connections with a `Closed`
/// variant: each poll goes straight to the variant's stream (no boxing, no
/// dynamic dispatch: the data path reads and writes through here). Closed,
/// a read sees the end of the stream, a write a broken pipe, and flushing
/// and shutting down are done at once.
macro_rules! through {
    (AsyncRead for $ty:ty; $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                    Self::Closed => Poll::Ready(Ok(())),
                }
            }
        }
    };
    (AsyncWrite for $ty:ty; $($variant:ident),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                    Self::Closed => Poll::Ready(Err(closed())),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)+
                    Self::Closed => Poll::Ready(Ok(())),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                    Self::Closed => Poll::Ready(Ok(())),
                }
            }
        }
    };
}

/// `Debug` for a split half: its type and variant, as `ReadHalf::Tls`, not
/// the stream (a TLS half's has none to show).
macro_rules! half_debug {
    ($half:ident; $($variant:ident),+) => {
        impl std::fmt::Debug for $half<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $(Self::$variant { .. } => concat!(stringify!($half), "::", stringify!($variant)),)+
                })
            }
        }
    };
}

/// A connection to a client or a server.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS with a client, the proxy serving (boxed: rustls' state is
    /// big, and plain connections should not pay for it).
    TlsServed(Box<pgwarden_tls::server::TlsStream<TcpStream>>),
    /// TLS with a server, the proxy its client.
    TlsClient(Box<pgwarden_tls::client::TlsStream<TcpStream>>),
    /// Nothing: what is left while a plain connection is handed to a TLS
    /// handshake (and after a failed one). Reads see the end of the
    /// stream; writes fail.
    Closed,
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Tcp(s)
    }
}

/// A TLS stream's reading and writing through one lock, for the two
/// directions of the pump (rustls' state is one for both).
type TlsHalf<'a> = tokio::io::ReadHalf<&'a mut (dyn Io + 'a)>;
type TlsWriteHalf<'a> = tokio::io::WriteHalf<&'a mut (dyn Io + 'a)>;

/// A TLS stream, either side.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Stream {
    /// Writes all of `bytes` and flushes: over TLS a write only hands the
    /// bytes to rustls, which sends what the socket takes at once and the
    /// rest on a flush. Every write of the proxy goes through here (or
    /// [`WriteHalf::send`]).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// The two directions, usable at once.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::TlsServed(s) => {
                let io: &mut dyn Io = &mut **s;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Stream::TlsClient(s) => {
                let io: &mut dyn Io = &mut **s;
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Stream::Closed => (ReadHalf::Closed, WriteHalf::Closed),
        }
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServed(_) | Stream::TlsClient(_))
    }

    /// The TCP connection under it.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::TlsServed(s) => Some(s.get_ref().0),
            Stream::TlsClient(s) => Some(s.get_ref().0),
            Stream::Closed => None,
        }
    }

    /// Takes the plain connection out for a TLS handshake, leaving
    /// [`Stream::Closed`]; `None` when it is not a plain connection.
    pub fn take_tcp(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Closed) {
            Stream::Tcp(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Waits until a read would not block (data, end of stream or an
    /// error), without reading: an idle client holds no buffer meanwhile.
    pub async fn ready_to_read(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::TlsServed(s) => {
                if has_plaintext(s.get_mut().1) {
                    return Ok(());
                }
                s.get_ref().0.readable().await
            }
            Stream::TlsClient(s) => {
                if has_plaintext(s.get_mut().1) {
                    return Ok(());
                }
                s.get_ref().0.readable().await
            }
            Stream::Closed => Ok(()),
        }
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is),
    /// dropping the cached readiness after a short read (see [`after_read`]).
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                let room = buf.capacity() - buf.len();
                let n = s.try_read_buf(buf)?;
                after_read(s, n, room);
                Ok(n)
            }
            Stream::Closed => Ok(0),
            tls => {
                // A poll that registers no one: TLS may need more bytes
                // than are there, which is `WouldBlock` to the caller.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match tokio_util::io::poll_read_buf(Pin::new(tls), &mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// True when the peer sent something or closed the connection, which a
    /// connection at rest must not have: costs one non-blocking peek (none
    /// when the reactor has seen nothing arrive).
    pub fn has_input(&mut self) -> bool {
        // Over TLS, rustls may hold decrypted bytes already read.
        let buffered = match self {
            Stream::TlsServed(s) => has_plaintext(s.get_mut().1),
            Stream::TlsClient(s) => has_plaintext(s.get_mut().1),
            _ => false,
        };
        if buffered {
            return true;
        }
        let Some(s) = self.tcp() else {
            return true;
        };
        let mut probe = [0u8; 1];
        !matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes what fits without waiting, for a last word before dropping
    /// the connection (best effort; over TLS, with a close_notify after).
    pub fn try_write_last(&mut self, bytes: &[u8]) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.try_write(bytes);
            }
            Stream::TlsServed(s) => {
                let (tcp, conn) = s.get_mut();
                last_tls_words(tcp, conn, bytes);
            }
            Stream::TlsClient(s) => {
                let (tcp, conn) = s.get_mut();
                last_tls_words(tcp, conn, bytes);
            }
            Stream::Closed => {}
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?
            .peer_addr()
    }
}

/// True when rustls holds decrypted bytes not read yet (or the peer's
/// close), so a read needs nothing from the socket.
fn has_plaintext<D>(conn: &mut rustls::ConnectionCommon<D>) -> bool {
    match conn.process_new_packets() {
        Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
        // The read reports it.
        Err(_) => true,
    }
}

/// Encrypts `bytes` and a close_notify and writes what the socket takes now.
fn last_tls_words<D>(tcp: &TcpStream, conn: &mut rustls::ConnectionCommon<D>, bytes: &[u8]) {
    use std::io::Write;
    struct Now<'a>(&'a TcpStream);
    impl Write for Now<'_> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.try_write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let _ = conn.writer().write_all(bytes);
    conn.send_close_notify();
    while conn.wants_write() {
        if conn.write_tls(&mut Now(tcp)).is_err() {
            break;
        }
    }
}

through!(AsyncRead for Stream; Tcp, TlsServed, TlsClient);

fn closed() -> io::Error {
    io::ErrorKind::BrokenPipe.into()
}

through!(AsyncWrite for Stream; Tcp, TlsServed, TlsClient);

/// One direction of a split [`Stream`]: a [`ReadHalf`] or a [`WriteHalf`].
pub enum Half<T, S> {
    /// Plain TCP.
    Tcp(T),
    /// TLS.
    Tls(S),
    /// Nothing: reads see the end of the stream, writes fail.
    Closed,
}

/// The reading direction of a split [`Stream`].
pub type ReadHalf<'a> = Half<tcp::ReadHalf<'a>, TlsHalf<'a>>;

half_debug!(ReadHalf; Tcp, Tls, Closed);

impl ReadHalf<'_> {
    /// Call after a read of `n` bytes into `room` bytes of space (see
    /// [`after_read`]; nothing to do over TLS, whose reads rustls buffers).
    pub fn after_read(&self, n: usize, room: usize) {
        if let ReadHalf::Tcp(r) = self {
            after_read(r.as_ref(), n, room);
        }
    }
}

through!(AsyncRead for ReadHalf<'_>; Tcp, Tls);

/// The writing direction of a split [`Stream`].
pub type WriteHalf<'a> = Half<tcp::WriteHalf<'a>, TlsWriteHalf<'a>>;

half_debug!(WriteHalf; Tcp, Tls, Closed);

impl WriteHalf<'_> {
    /// Writes all of `bytes` and flushes (see [`Stream::send`]).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }
}

through!(AsyncWrite for WriteHalf<'_>; Tcp, Tls);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// Regression: over TLS a write only hands bytes to rustls, which sends
    /// what the socket takes; without the flush in [`Stream::send`] the
    /// tail of a reply stayed in rustls once the socket was full, and the
    /// client waited for it forever.
    #[tokio::test]
    async fn a_tls_send_delivers_everything_through_a_full_socket() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (crt_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&crt_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let served = pgwarden_tls::server_tls(
            pgwarden_tls::PemFile {
                key: "c",
                path: &crt_path,
            },
            pgwarden_tls::PemFile {
                key: "k",
                path: &key_path,
            },
            None,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        const TOTAL: usize = 1 << 20;
        let reader = tokio::spawn(async move {
            let config =
                pgwarden_tls::client_config(pgwarden_tls::Verify::Nothing, None, None).unwrap();
            // A small receive window too: the data waits in the sender.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let tcp = socket.connect(addr).await.unwrap();
            let mut s = pgwarden_tls::TlsConnector::from(Arc::clone(&config))
                .connect(pgwarden_tls::server_name("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let mut got = 0usize;
            let mut chunk = vec![0u8; 4096];
            while got < TOTAL {
                // A slow reader: the proxy's socket stays full.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed after {got} bytes");
                got += n;
            }
            got
        });
        let (tcp, _) = listener.accept().await.unwrap();
        // A small send buffer fills at once.
        SockRef::from(&tcp).set_send_buffer_size(4096).unwrap();
        let tls = served.acceptor.accept(tcp).await.unwrap();
        let mut stream = Stream::TlsServed(Box::new(tls));
        let block = vec![7u8; 32 * 1024];
        for _ in 0..TOTAL / block.len() {
            stream.send(&block).await.unwrap();
        }
        // Nothing more is written: what was sent must arrive alone.
        let got = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the tail of the data never arrived")
            .unwrap();
        assert_eq!(got, TOTAL);
    }
}
