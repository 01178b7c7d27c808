//! Binding a daemon's socket without ever stealing a live one.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use super::UdsError;

/// Mode of a socket directory this module creates: the daemons' group may
/// enter it, others may not.
const DIR_MODE: u32 = 0o750;
/// Mode of a bound socket: the daemons' user and group may connect.
const SOCKET_MODE: u32 = 0o660;
/// How long the probe of an existing socket may take. A live daemon accepts
/// at once; the kernel refuses at once when nobody listens.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds a listening unix socket at `path`, ready for [`serve`](super::serve).
///
/// - A missing parent directory is created (mode 0750).
/// - An existing socket file is probed: when a process accepts on it
///   ([`UdsError::AlreadyListening`]) it is left alone; when nobody does (a
///   daemon that crashed or was killed left it behind) it is removed.
/// - Anything else at the path (a file, a directory, a symlink) is refused
///   with [`UdsError::NotASocket`], never removed.
/// - The socket gets mode 0660.
///
/// Must be called within a tokio runtime.
pub async fn bind(path: &Path) -> Result<UnixListener, UdsError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        create_dir(dir)?;
    }
    clear_stale(path).await?;
    let listener = UnixListener::bind(path).map_err(|source| io_error("bind", path, source))?;
    fs::set_permissions(path, Permissions::from_mode(SOCKET_MODE))
        .map_err(|source| io_error("set the mode of", path, source))?;
    tracing::debug!(path = %path.display(), "socket bound");
    Ok(listener)
}

/// Creates `dir` (and its missing ancestors) when it does not exist, giving
/// `dir` itself mode 0750 whatever the umask. An existing directory is left
/// as it is: its owner (systemd's `RuntimeDirectory=`, an operator) chose its
/// mode.
fn create_dir(dir: &Path) -> Result<(), UdsError> {
    if dir.is_dir() {
        return Ok(());
    }
    let failed = |source| UdsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    match DirBuilder::new()
        .recursive(false)
        .mode(DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            // Missing ancestors: create them, then this directory.
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(failed)?;
        }
        // Another process created it meanwhile.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(err) => return Err(failed(err)),
    }
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(failed)
}

/// Makes way for a new socket at `path`: nothing there is fine, a stale
/// socket is removed, a live socket or a non-socket is an error.
async fn clear_stale(path: &Path) -> Result<(), UdsError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_error("inspect", path, source)),
    };
    if !metadata.file_type().is_socket() {
        return Err(UdsError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match is_live(path).await {
        Ok(true) => Err(UdsError::AlreadyListening {
            path: path.to_path_buf(),
        }),
        Ok(false) => {
            tracing::info!(path = %path.display(), "removing stale socket");
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(io_error("remove stale socket", path, source)),
            }
        }
        Err(source) => Err(io_error("probe existing socket", path, source)),
    }
}

/// Whether a process accepts connections on the socket at `path`: `false`
/// when the kernel refuses (nobody listens: the socket is stale) or the
/// file is gone, `true` when a connection is made or the listener is merely
/// too busy to take it now.
pub(super) async fn is_live(path: &Path) -> io::Result<bool> {
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(_)) | Err(_) => Ok(true),
        Ok(Err(err)) => match err.kind() {
            io::ErrorKind::WouldBlock => Ok(true),
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Ok(false),
            _ => Err(err),
        },
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> UdsError {
    UdsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
