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
