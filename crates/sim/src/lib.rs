//! One in-process simulation of a pgwarden cluster, as raft-rs's harness:
//! every node's watchdog [`Core`](pgwarden_watchdog::core::Core) and
//! monitor [`Coordinator`](pgwarden_monitor::coordinator::Coordinator),
//! wired as their daemons wire them, over an in-memory network that loses,
//! delays and reorders messages and can isolate a node, with fake servers
//! ([`backends`]) that die and come back. A seeded schedule injects the
//! faults: partitions, message loss, watchdog crashes and restarts (from
//! what their disks kept), a dead monitor, a dead primary, a server one
//! node alone cannot reach, operator promotions on any node (followers'
//! go through the leader). After every step [`World`] checks: one leader
//! per term, one delegate-IP holder, one primary per generation, no
//! primary replaced from one node's view alone. No sockets, no clock, no
//! root: the same seed replays the same run.

mod backends;
mod node;
mod world;

pub use world::{Stats, Violation, World};

/// Runs the schedule of `seed` on three nodes.
pub fn run(seed: u64, ticks: u64) -> Result<Stats, Violation> {
    let mut world = World::new(3, seed);
    world
        .run(ticks, 200)
        .map_err(|Violation(v)| Violation(format!("seed {seed}: {v}")))?;
    Ok(world.stats)
}
