//! Fake PostgreSQL servers: a primary whose WAL grows every tick, standbys
//! that replay their upstream's WAL while they stream from it, servers
//! that die and come back, and links between a node's monitor and a server
//! that break on their own (one node's view alone).

use std::collections::BTreeSet;

use pgwarden_cluster::Observation;
use pgwarden_monitor::machine::{Action, Event};

/// The port of server `id` (what a standby says it streams from).
pub fn port(id: usize) -> u16 {
    5432 + id as u16
}

/// One fake server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `backends[].name`.
    pub name: String,
    /// It runs (accepts connections).
    pub alive: bool,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Its timeline.
    pub timeline: u32,
    /// Its WAL position (written on a primary, replayed on a standby).
    pub lsn: u64,
    /// The server a standby streams from.
    pub upstream: Option<usize>,
}

/// The fake servers, and which monitor cannot reach which.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The servers, by backend id.
    pub servers: Vec<Server>,
    /// (node, backend) pairs whose link is broken.
    pub cut: BTreeSet<(u64, usize)>,
}

impl Backends {
    /// `n` servers: `pg0` the primary, the others its streaming standbys.
    pub fn new(n: usize) -> Self {
        let servers = (0..n)
            .map(|id| Server {
                name: format!("pg{id}"),
                alive: true,
                in_recovery: id != 0,
                timeline: 1,
                lsn: 1000,
                upstream: (id != 0).then_some(0),
            })
            .collect();
        Backends {
            servers,
            cut: BTreeSet::new(),
        }
    }

    /// One tick of WAL: every running primary writes, every streaming
    /// standby replays what its upstream has.
    pub fn tick(&mut self) {
        for s in &mut self.servers {
            if s.alive && !s.in_recovery {
                s.lsn += 100;
            }
        }
        for id in 0..self.servers.len() {
            if let Some(up) = self.streaming_from(id) {
                self.servers[id].lsn = self.servers[id].lsn.max(self.servers[up].lsn);
            }
        }
    }

    /// The server standby `id` streams from now, if it does.
    fn streaming_from(&self, id: usize) -> Option<usize> {
        let s = &self.servers[id];
        let up = s.upstream?;
        let u = &self.servers[up];
        (s.alive && s.in_recovery && u.alive && !u.in_recovery && u.timeline >= s.timeline)
            .then_some(up)
    }

    /// What node `node`'s monitor sees when it checks backend `id`.
    pub fn check(&self, node: u64, id: usize) -> Result<Observation, String> {
        let s = &self.servers[id];
        if !s.alive || self.cut.contains(&(node, id)) {
            return Err("connection refused".to_owned());
        }
        let streaming = self.streaming_from(id);
        Ok(Observation {
            in_recovery: s.in_recovery,
            timeline: s.timeline,
            replay_lsn: s.lsn,
            flush_lsn: s.lsn,
            streaming: streaming.is_some(),
            upstream_port: s.upstream.map(port),
            replica_lag: Vec::new(),
        })
    }

    /// Carries out a failover action as the builtin actions would; its
    /// result, as the machine hears it.
    pub fn perform(&mut self, action: &Action) -> Option<Event> {
        match *action {
            Action::Publish => None,
            Action::Promote { id, .. } => {
                let s = &mut self.servers[id];
                let result = if s.alive && s.in_recovery {
                    s.in_recovery = false;
                    s.timeline += 1;
                    s.upstream = None;
                    Ok(s.timeline)
                } else if s.alive {
                    Err("not in recovery".to_owned())
                } else {
                    Err("connection refused".to_owned())
                };
                Some(Event::Promoted { id, result })
            }
            Action::Follow {
                id, new_primary, ..
            } => {
                let timeline = self.servers[new_primary].timeline;
                let s = &mut self.servers[id];
                let result = if s.alive && s.in_recovery {
                    s.upstream = Some(new_primary);
                    s.timeline = timeline;
                    Ok(())
                } else {
                    Err("cannot follow: not a running standby".to_owned())
                };
                Some(Event::Followed { id, result })
            }
            Action::SetSynchronous { id, ref set } => {
                let s = &self.servers[id];
                let result = if s.alive && !s.in_recovery {
                    Ok(s.lsn)
                } else {
                    Err("not a running primary".to_owned())
                };
                Some(Event::SynchronousSet {
                    id,
                    set: set.clone(),
                    result,
                })
            }
            Action::Rejoin { id, attempt, .. } => Some(Event::Rejoined {
                id,
                attempt,
                result: Err("no rejoin_command in the simulation".to_owned()),
            }),
        }
    }
}
