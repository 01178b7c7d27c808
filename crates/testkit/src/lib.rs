/*!
Real PostgreSQL clusters for pgwarden's tests, demo and benchmarks.

pgwarden is tested against real servers only (no mocks of PostgreSQL). This crate
starts them:

- [`Cluster`] is a primary plus N streaming standbys, built by [`ClusterBuilder`]
  with the system's `initdb` and `pg_basebackup` (see [`pg_bin_dir`]) on free
  loopback ports ([`free_port`]) in a temp dir. When the tests run as root, every
  PostgreSQL program runs as an unprivileged user ([`os_user`]). Dropping the
  cluster stops every server and removes the temp dir.
- [`Node`] is one server of a cluster: start, stop, restart, `kill -9`, run SQL
  through `psql`, build a conninfo string.
- [`Lab`] is a private network of [`Host`]s on one machine, each host a
  network namespace (10.213.0.0/24, a bridge in a namespace of its own, no
  route out), plus a client namespace; links can be [cut](Lab::cut) and
  [healed](Lab::heal). [`ClusterBuilder::in_lab`] runs one node per host, so
  multi-host tests (the watchdog's delegate IP) get a real PostgreSQL on each
  host. Labs need root.
- [`ChildGuard`] owns a spawned process (a pgwarden daemon under test) and stops
  it on drop; [`workspace_bin`] finds the workspace's binaries next to the running
  test; [`wait_until`] polls a condition with a deadline; [`run_ok`] runs a
  command that must succeed.

The crate is synchronous on purpose: it only spawns processes and sleeps, so
tests using any runtime (or none) can call it.

The `pgwarden-cluster` binary wraps [`Cluster`] for shell scripts (bench, demo).
*/

mod child;
mod cluster;
mod lab;
mod node;
mod paths;
mod pgenv;
mod port;
mod procfs;
mod run;
mod wait;

pub use child::ChildGuard;
pub use cluster::{Cluster, ClusterBuilder, PasswordKind};
pub use lab::{Host, Lab};
pub use node::{Node, StopMode};
pub use paths::{os_user, pg_bin_dir, workspace_bin};
pub use port::free_port;
pub use run::run_ok;
pub use wait::wait_until;
