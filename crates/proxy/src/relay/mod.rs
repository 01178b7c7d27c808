//! The transaction-mode data path (`proxy.pool_mode = "transaction"`).
//!
//! A client holds a server connection only from the first message of a
//! transaction to the ReadyForQuery that ends it (status `I`: between
//! autocommit statements too), as PgBouncer's transaction pooling: 10,000
//! clients can share 20 server connections.
//!
//! - [`statements`]: the sans-IO tracker fed the client's messages and the
//!   server's reply types: protocol-level prepared statements mapped to
//!   each server connection's own, and the reply queue that keeps the
//!   answers in order.
//! - [`features`]: session state a transaction would leave on its server
//!   (temp tables, LISTEN, session advisory locks...), which *pins* the
//!   client to that server until it leaves.
//! - `standby`: which transactions may run on a standby
//!   (`proxy.load_balance`), pure; `txn` chooses the server and runs them.
//! - `txn`: the client's loop: idle without a server, a checkout per
//!   transaction, the relay, the release; `replies`: what the server's
//!   replies change on the way (the reply queue, settings, edits).
//!
//! - [`pump`]: session mode's own, simpler data path: a client and its one
//!   server connection, copy-free both ways.
//! - [`session_log`]: what a session-mode session holds that can move to
//!   another server connection (a failover), followed by the pump.

pub mod features;
pub mod pump;
mod replies;
pub mod session_log;
mod standby;
pub mod statements;
pub(crate) mod txn;

pub use statements::{ServerStatements, Tracker};
