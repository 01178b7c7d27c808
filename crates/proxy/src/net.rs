//! Socket options shared by client and server connections.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

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
pub fn after_read(stream: &TcpStream, n: usize, room: usize) {
    if n < room {
        let _ = stream.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
}
