//! Where reads may go: the servers eligible for load-balanced reads, as
//! the monitor last measured them, and the weighted choice among them.
//!
//! A standby is eligible while the monitor reports it up, a standby,
//! streaming, and within `replication_check.max_lag_bytes` and
//! `max_lag_time`, with a nonzero `backends[].weight`; the primary takes
//! its own weight's share. The list is made afresh from each cluster
//! state the proxy hears of (a new generation at once, and the monitor's
//! measurements every `replication_check.period`), so a standby that falls
//! behind or goes down takes no new reads from the next check on.

use std::sync::Arc;

use pgwarden_proto::v1::{ClusterState, Role, Status};

use crate::settings::BackendAddr;
pub use crate::settings::LagBounds;

/// One server that may take reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// Its address.
    pub addr: Arc<BackendAddr>,
    /// Its share (`backends[].weight`).
    pub weight: u32,
    /// The WAL it had replayed at the monitor's last check (the primary's
    /// is `u64::MAX`: it has everything).
    pub replay_lsn: u64,
    /// It is the primary of `generation`.
    pub primary: bool,
}

/// The servers reads may go to, by the cluster state of `generation`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readers {
    /// The generation of the state they come from: reads are balanced
    /// only while the route is of the same one.
    pub generation: u64,
    /// Eligible servers, in backend id order.
    pub list: Vec<Reader>,
}

impl Readers {
    /// The eligible servers of `state`, whose backends are `ours` (this
    /// proxy's config; a backend the state names otherwise is skipped).
    pub fn of(state: &ClusterState, ours: &[BackendAddr], bounds: LagBounds) -> Readers {
        let mut list = Vec::new();
        if state.no_quorum || state.failover_in_progress {
            return Readers {
                generation: state.generation,
                list,
            };
        }
        for b in &state.backends {
            let Some(addr) = ours.get(b.id as usize).filter(|a| a.name == b.name) else {
                continue;
            };
            if addr.weight == 0 || b.status != Status::Up as i32 {
                continue;
            }
            let primary = state.primary_id == Some(b.id);
            let eligible = primary
                || (b.role == Role::Standby as i32
                    && b.streaming
                    && b.lag_bytes <= bounds.bytes
                    && b.lag_seconds.is_finite()
                    && b.lag_seconds <= bounds.time.as_secs_f64());
            if eligible {
                list.push(Reader {
                    addr: Arc::new(addr.clone()),
                    weight: addr.weight,
                    replay_lsn: if primary { u64::MAX } else { b.replay_lsn },
                    primary,
                });
            }
        }
        Readers {
            generation: state.generation,
            list,
        }
    }

    /// The server at `draw` (uniform in `0..total()`) of the weighted
    /// choice; `None` when there is none.
    pub fn pick(&self, draw: u64) -> Option<&Reader> {
        let mut left = draw;
        for r in &self.list {
            let w = u64::from(r.weight);
            if left < w {
                return Some(r);
            }
            left -= w;
        }
        None
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.list.iter().map(|r| u64::from(r.weight)).sum()
    }

    /// Whether backend `id` is eligible.
    pub fn has(&self, id: usize) -> Option<&Reader> {
        self.list.iter().find(|r| r.addr.id == id)
    }

    /// A weighted random choice among the standbys alone (for a
    /// read-only client, the primary's weight aside).
    pub fn choose_standby(&self) -> Option<&Reader> {
        let standbys = self.list.iter().filter(|r| !r.primary);
        let total: u64 = standbys.clone().map(|r| u64::from(r.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut left = rand::random_range(0..total);
        for r in standbys {
            let w = u64::from(r.weight);
            if left < w {
                return Some(r);
            }
            left -= w;
        }
        None
    }

    /// A weighted random choice.
    pub fn choose(&self) -> Option<&Reader> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        self.pick(rand::random_range(0..total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_proto::v1::BackendState;
    use std::time::Duration;

    fn ours(weights: &[u32]) -> Vec<BackendAddr> {
        weights
            .iter()
            .enumerate()
            .map(|(id, w)| BackendAddr {
                id,
                name: format!("pg{id}"),
                host: "127.0.0.1".into(),
                port: 5432,
                weight: *w,
            })
            .collect()
    }

    fn state(backends: Vec<BackendState>) -> ClusterState {
        ClusterState {
            generation: 7,
            primary_id: Some(0),
            backends,
            ..Default::default()
        }
    }

    fn backend(id: u32, role: Role, lag_bytes: u64, lag_seconds: f64) -> BackendState {
        BackendState {
            id,
            name: format!("pg{id}"),
            role: role as i32,
            status: Status::Up as i32,
            lag_bytes,
            lag_seconds,
            streaming: role == Role::Standby,
            replay_lsn: 1000,
            ..Default::default()
        }
    }

    const BOUNDS: LagBounds = LagBounds {
        bytes: 1024,
        time: Duration::from_secs(10),
    };

    #[test]
    fn standbys_behind_either_bound_down_or_weightless_take_no_reads() {
        let mut down = backend(4, Role::Standby, 0, 0.0);
        down.status = Status::Down as i32;
        let mut not_streaming = backend(5, Role::Standby, 0, 0.0);
        not_streaming.streaming = false;
        let s = state(vec![
            backend(0, Role::Primary, 0, 0.0),
            backend(1, Role::Standby, 10, 0.1),
            backend(2, Role::Standby, 4096, 0.1),
            backend(3, Role::Standby, 10, 30.0),
            down,
            not_streaming,
            backend(6, Role::Standby, 0, 0.0),
        ]);
        let r = Readers::of(&s, &ours(&[1, 1, 1, 1, 1, 1, 0]), BOUNDS);
        let ids: Vec<usize> = r.list.iter().map(|r| r.addr.id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert!(r.list[0].primary && r.list[0].replay_lsn == u64::MAX);
        assert_eq!(r.generation, 7);
    }

    #[test]
    fn the_choice_follows_the_weights() {
        let s = state(vec![
            backend(0, Role::Primary, 0, 0.0),
            backend(1, Role::Standby, 0, 0.0),
            backend(2, Role::Standby, 0, 0.0),
        ]);
        let r = Readers::of(&s, &ours(&[0, 1, 3]), BOUNDS);
        assert_eq!(r.total(), 4);
        let picks: Vec<usize> = (0..4)
            .map(|d| r.pick(d).map_or(99, |r| r.addr.id))
            .collect();
        assert_eq!(picks, vec![1, 2, 2, 2]);
        assert!(r.pick(4).is_none());
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            if let Some(x) = r.choose() {
                counts[x.addr.id] += 1;
            }
        }
        assert_eq!(counts[0], 0);
        // 1000 and 3000 expected; far outside chance otherwise.
        assert!((800..1200).contains(&counts[1]), "{counts:?}");

        // A read-only client's choice leaves the primary out, whatever
        // its weight.
        let r = Readers::of(&s, &ours(&[5, 1, 0]), BOUNDS);
        for _ in 0..100 {
            assert_eq!(r.choose_standby().map(|x| x.addr.id), Some(1));
        }
        let r = Readers::of(&s, &ours(&[5, 0, 0]), BOUNDS);
        assert!(r.choose_standby().is_none());
    }

    #[test]
    fn no_reads_are_balanced_without_quorum_or_during_a_failover() {
        let mut s = state(vec![
            backend(0, Role::Primary, 0, 0.0),
            backend(1, Role::Standby, 0, 0.0),
        ]);
        s.failover_in_progress = true;
        assert!(Readers::of(&s, &ours(&[1, 1]), BOUNDS).list.is_empty());
        s.failover_in_progress = false;
        s.no_quorum = true;
        assert!(Readers::of(&s, &ours(&[1, 1]), BOUNDS).list.is_empty());
    }
}
