//! What a schedule's history of writes says, as pure code: acknowledged
//! writes missing from the final primary, writes a stale primary accepted,
//! and the longest time without an acknowledgement.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

/// One write a client got an answer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The row's unique key.
    pub key: i64,
    /// When the client sent it (since the schedule began).
    pub sent: Duration,
    /// When the commit was acknowledged.
    pub acked: Duration,
    /// The server that took it (`inet_server_addr()`).
    pub server: String,
    /// The timeline it was written on (the primary's current one).
    pub timeline: u32,
}

/// The timeline in a WAL file name (`pg_walfile_name()`: its first 8 hex
/// digits).
pub fn timeline_of(walfile: &str) -> Option<u32> {
    u32::from_str_radix(walfile.get(..8)?, 16).ok()
}

/// The acknowledged keys missing from `present` (the final primary's rows).
pub fn lost(acks: &[Ack], present: &HashSet<i64>) -> Vec<i64> {
    acks.iter()
        .map(|a| a.key)
        .filter(|k| !present.contains(k))
        .collect()
}

/// Writes that show two servers taking writes through pgwarden at once:
/// a write acknowledged on a timeline some other server also wrote on
/// (two standbys promoted to one timeline), or one sent after a write on a
/// newer timeline was acknowledged and yet acknowledged on an older one (an
/// old primary still taking writes after the new one did). Each such
/// write once. Writes on an unknown timeline (0) are left out.
pub fn dual_primary(acks: &[Ack]) -> Vec<Ack> {
    let known: Vec<Ack> = acks.iter().filter(|a| a.timeline != 0).cloned().collect();
    let acks = known.as_slice();
    let mut servers: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for a in acks {
        servers.entry(a.timeline).or_default().insert(&a.server);
    }
    let mut by_ack: Vec<&Ack> = acks.iter().collect();
    by_ack.sort_by_key(|a| a.acked);
    // newest[i]: the highest timeline among the first i acknowledgements.
    let mut newest = Vec::with_capacity(by_ack.len() + 1);
    newest.push(0);
    for a in &by_ack {
        let last = newest.last().copied().unwrap_or(0);
        newest.push(last.max(a.timeline));
    }
    acks.iter()
        .filter(|a| {
            let before = by_ack.partition_point(|b| b.acked < a.sent);
            let shared = servers.get(&a.timeline).is_some_and(|s| s.len() > 1);
            shared || newest.get(before).is_some_and(|n| *n > a.timeline)
        })
        .cloned()
        .collect()
}

/// The longest stretch between `from` and `to` without any write
/// acknowledged.
pub fn longest_gap(acks: &[Ack], from: Duration, to: Duration) -> Duration {
    let mut times: Vec<Duration> = acks
        .iter()
        .map(|a| a.acked)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    times.sort();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(to)) {
        gap = gap.max(t.saturating_sub(last));
        last = t;
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(key: i64, sent_ms: u64, acked_ms: u64, server: &str, timeline: u32) -> Ack {
        Ack {
            key,
            sent: Duration::from_millis(sent_ms),
            acked: Duration::from_millis(acked_ms),
            server: server.into(),
            timeline,
        }
    }

    #[test]
    fn timelines_come_from_the_wal_file_name() {
        assert_eq!(timeline_of("000000030000000000000007"), Some(3));
        assert_eq!(timeline_of("0000001A0000000000000007"), Some(26));
        assert_eq!(timeline_of("xyz"), None);
    }

    #[test]
    fn only_acknowledged_keys_missing_from_the_primary_are_lost() {
        let acks = [
            ack(1, 0, 1, "a", 1),
            ack(2, 0, 1, "a", 1),
            ack(3, 0, 1, "b", 2),
        ];
        let present: HashSet<i64> = [1, 3, 99].into_iter().collect();
        assert_eq!(lost(&acks, &present), vec![2]);
    }

    #[test]
    fn a_failover_with_no_overlap_is_not_a_dual_primary() {
        let acks = [
            ack(1, 0, 10, "a", 1),
            ack(2, 5, 20, "a", 1),
            // Sent before the new primary's first ack: the old one may
            // still have taken it.
            ack(3, 25, 3000, "a", 1),
            ack(4, 2000, 2100, "b", 2),
            ack(5, 2200, 2300, "b", 2),
        ];
        assert_eq!(dual_primary(&acks), vec![]);
    }

    #[test]
    fn an_old_primary_taking_a_write_after_the_new_one_did_is_caught() {
        let acks = [
            ack(1, 0, 10, "a", 1),
            ack(2, 2000, 2100, "b", 2),
            ack(3, 2200, 2250, "a", 1),
        ];
        assert_eq!(dual_primary(&acks), vec![acks[2].clone()]);
    }

    #[test]
    fn two_servers_on_one_timeline_are_caught() {
        let acks = [
            ack(1, 0, 10, "b", 2),
            ack(2, 0, 12, "c", 2),
            ack(3, 0, 5, "a", 1),
        ];
        assert_eq!(dual_primary(&acks), vec![acks[0].clone(), acks[1].clone()]);
    }

    #[test]
    fn the_longest_gap_counts_the_edges() {
        let acks = [
            ack(1, 0, 1000, "a", 1),
            ack(2, 0, 1500, "a", 1),
            ack(3, 0, 5000, "b", 2),
        ];
        let gap = |from, to| {
            longest_gap(
                &acks,
                Duration::from_millis(from),
                Duration::from_millis(to),
            )
        };
        assert_eq!(gap(0, 6000), Duration::from_millis(3500));
        assert_eq!(gap(0, 12000), Duration::from_millis(7000));
        assert_eq!(gap(6000, 8000), Duration::from_millis(2000));
    }
}
