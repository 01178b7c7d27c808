//! What can go wrong binding, serving or connecting a unix socket.

use std::io;
use std::path::PathBuf;

/// Errors of the unix-socket helpers; each names the socket path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdsError {
    /// The socket's directory did not exist and could not be created.
    #[error("cannot create socket directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A process accepts connections on the socket already: most likely the
    /// same daemon running twice. Its socket is left alone.
    #[error("another daemon is listening on {}", path.display())]
    AlreadyListening {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket exists at the path; it is never removed.
    #[error("{} exists and is not a socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Inspecting, removing, binding or setting the mode of the socket failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "bind".
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// No connection to the daemon's socket could be made (not running, not
    /// yet started, no permission, or the connect timed out).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why it failed.
        source: tonic::transport::Error,
    },
    /// The gRPC server failed while serving the socket.
    #[error("serving {} failed: {source}", path.display())]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// Why it failed.
        source: tonic::transport::Error,
    },
}
