//! Query cancellation through the proxy.
//!
//! Each client gets its own BackendKeyData (a random process id and secret)
//! instead of the server's, so a key never reveals or reaches a server the
//! client is not using. A CancelRequest quoting that key is forwarded, with
//! the server's real key, to the server connection the client holds now.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where a cancel for one client key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    secret: i32,
    server: Option<(SocketAddr, i32, i32)>,
}

/// The live client keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<i32, Target>>,
}

/// A client's registered key; unregisters on drop.
#[derive(Debug)]
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    /// The process id the client was given.
    pub pid: i32,
    /// The secret the client was given.
    pub secret: i32,
}

impl CancelRegistry {
    /// Issues a fresh key for a client session.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Positive, like real process ids, so tools that print them look sane.
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !keys.contains_key(&pid) {
                let secret = rand::random::<i32>();
                keys.insert(
                    pid,
                    Target {
                        secret,
                        server: None,
                    },
                );
                return CancelKey {
                    registry: Arc::clone(self),
                    pid,
                    secret,
                };
            }
        }
    }

    fn lookup(&self, pid: i32, secret: i32) -> Option<(SocketAddr, i32, i32)> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(&pid)
            .filter(|t| t.secret == secret)
            .and_then(|t| t.server)
    }

    /// Forwards a client's CancelRequest to its server, if the key is live.
    /// Like PostgreSQL, nothing is reported back either way.
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration) {
        let Some((addr, server_pid, server_secret)) = self.lookup(pid, secret) else {
            tracing::debug!(pid, "cancel request for an unknown key ignored");
            return;
        };
        let send = async {
            let mut s = TcpStream::connect(addr).await?;
            let mut buf = BytesMut::with_capacity(16);
            frontend::cancel_request(server_pid, server_secret, &mut buf);
            s.write_all(&buf).await?;
            s.shutdown().await
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(())) => tracing::debug!(pid, %addr, "cancel forwarded"),
            Ok(Err(e)) => {
                tracing::warn!(pid, %addr, error = %e, "could not forward a cancel request")
            }
            Err(_) => tracing::warn!(pid, %addr, "forwarding a cancel request timed out"),
        }
    }
}

impl CancelKey {
    /// Points the key at the server connection the client now holds.
    pub fn set_server(&self, addr: SocketAddr, server_key: (i32, i32)) {
        self.update(Some((addr, server_key.0, server_key.1)));
    }

    /// The client holds no server connection.
    pub fn clear_server(&self) {
        self.update(None);
    }

    fn update(&self, server: Option<(SocketAddr, i32, i32)>) {
        let mut keys = self.registry.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = keys.get_mut(&self.pid) {
            t.server = server;
        }
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        let mut keys = self.registry.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_only_with_the_right_secret_and_vanish_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register();
        assert_eq!(reg.lookup(key.pid, key.secret), None, "no server yet");
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        key.set_server(addr, (77, 88));
        assert_eq!(reg.lookup(key.pid, key.secret), Some((addr, 77, 88)));
        assert_eq!(reg.lookup(key.pid, key.secret.wrapping_add(1)), None);
        let (pid, secret) = (key.pid, key.secret);
        drop(key);
        assert_eq!(reg.lookup(pid, secret), None);
    }
}
