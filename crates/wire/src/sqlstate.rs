//! The SQLSTATE codes pgwarden itself raises, named as in PostgreSQL's
//! `errcodes.txt`. Server errors are relayed with the server's own code.

/// `08P01`: the peer broke the protocol (bad length, unknown message, ...).
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `08007`: the server was lost while it ran a request: whether it
/// committed is unknown.
pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
/// `08006`: the server connection failed or was lost.
pub const CONNECTION_FAILURE: &str = "08006";
/// `28P01`: wrong password or unknown user (the message never says which).
pub const INVALID_PASSWORD: &str = "28P01";
/// `28000`: the authentication exchange itself was malformed or refused.
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `53300`: `max_client_connections` reached, or no server connection in time.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `54000`: a message longer than the configured maximum.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// `57P01`: the proxy (or the server behind it) is shutting down the session.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03`: the proxy cannot take connections right now (no primary known).
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `0A000`: the client asked for something the proxy does not support.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
