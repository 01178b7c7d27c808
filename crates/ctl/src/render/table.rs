//! `pgwardenctl status`: a header line and one row per backend, like
//! pgpool-II's `pcp_node_info` / `SHOW POOL_NODES`.

use std::fmt::Write as _;

use pgwarden_proto::lsn::lsn_to_string;
use pgwarden_proto::v1::{BackendState, ClusterState, Role};

use super::units::{address, age, bytes, role, seconds, status};

const HEADER: [&str; 12] = [
    "ID",
    "NAME",
    "ADDRESS",
    "ROLE",
    "STATUS",
    "LAG",
    "REPLAY LSN",
    "RECEIVED LSN",
    "SYNC",
    "TIMELINE",
    "LAST CHECK",
    "REASON",
];

/// The whole `status` output, newline-terminated, ages relative to `now_ms`
/// (Unix milliseconds):
///
/// ```text
/// generation 4, primary pg1 (id 1), monitor node1
/// ID  NAME  ADDRESS         ROLE     STATUS    LAG  REPLAY LSN  RECEIVED LSN  SYNC  TIMELINE  LAST CHECK  REASON
/// 0   pg0   127.0.0.1:5432  primary  detached  -    0/3000148   0/3000148     -     1         0.4s ago    switched over to pg1
/// 1   pg1   127.0.0.1:5433  primary  up        -    0/3000A10   0/3000A10     -     2         0.2s ago
/// ```
///
/// `REPLAY LSN` is what a standby replayed (what its reads see);
/// `RECEIVED LSN` the WAL it received and flushed, which a promotion keeps
/// and failover candidates rank by (on a primary: its current and flushed
/// WAL). `SYNC` marks the generation's synchronous standbys
/// (`failover.synchronous_mode`). `LAG` is the replay lag. A failover that
/// cannot promote anyone says why on a line of its own (`failover blocked:
/// no safe candidate: ...`).
pub fn status_text(state: &ClusterState, now_ms: i64) -> String {
    let mut out = header_line(state);
    out.push('\n');
    if state.failover_in_progress {
        out.push_str("failover in progress\n");
    }
    if !state.failover_blocked.is_empty() {
        let _ = writeln!(
            out,
            "failover blocked: {}",
            one_line(&state.failover_blocked)
        );
    }
    let mut rows = vec![HEADER.map(str::to_owned)];
    rows.extend(state.backends.iter().map(|b| row(b, now_ms)));
    out.push_str(&align(&rows));
    out
}

/// `generation 4, primary pg1 (id 1), monitor node1`.
fn header_line(state: &ClusterState) -> String {
    let mut line = format!("generation {}", state.generation);
    match state.primary_id {
        Some(id) => match state.backends.iter().find(|b| b.id == id) {
            Some(b) => {
                let _ = write!(line, ", primary {} (id {id})", b.name);
            }
            None => {
                let _ = write!(line, ", primary id {id} (not among the backends)");
            }
        },
        None => line.push_str(", no primary"),
    }
    if !state.monitor.is_empty() {
        let _ = write!(line, ", monitor {}", state.monitor);
    }
    line
}

fn row(b: &BackendState, now_ms: i64) -> [String; 12] {
    [
        b.id.to_string(),
        b.name.clone(),
        address(b),
        role(b).to_owned(),
        status(b).to_owned(),
        lag(b),
        lsn(b.replay_lsn),
        lsn(b.flush_lsn),
        if b.synchronous { "sync" } else { "-" }.to_owned(),
        if b.timeline == 0 {
            "-".to_owned()
        } else {
            b.timeline.to_string()
        },
        age(now_ms, b.last_check_unix_ms),
        one_line(&b.reason),
    ]
}

/// An LSN, `-` when unknown (0).
fn lsn(lsn: u64) -> String {
    if lsn == 0 {
        "-".to_owned()
    } else {
        lsn_to_string(lsn)
    }
}

/// Standbys: bytes behind, and seconds when they show (`1.5 MiB (2.3s)`,
/// not `0 B (0.0s)`); `-` for anything else.
fn lag(b: &BackendState) -> String {
    if b.role() != Role::Standby {
        return "-".to_owned();
    }
    let mut lag = bytes(b.lag_bytes);
    let secs = seconds(b.lag_seconds);
    if secs != seconds(0.0) {
        let _ = write!(lag, " ({secs})");
    }
    lag
}

/// A reason on one line, so a row stays one row.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Left-aligned columns two spaces apart, no trailing spaces.
pub(super) fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgwarden_proto::v1::Status;

    /// The state after a switchover from pg0 to pg1, checked at 10 s.
    pub(crate) fn switched_over() -> ClusterState {
        let backend = |id: u32, role: Role, status: Status| BackendState {
            id,
            name: format!("pg{id}"),
            host: "127.0.0.1".into(),
            port: 5432 + id,
            role: role as i32,
            status: status as i32,
            replay_lsn: 0x300_0A10,
            flush_lsn: 0x300_0A10,
            timeline: 2,
            streaming: role == Role::Standby,
            last_check_unix_ms: 9_800,
            ..Default::default()
        };
        let mut pg0 = backend(0, Role::Primary, Status::Detached);
        pg0.reason = "switched over to pg1: rejoin it as a standby, then attach it".into();
        pg0.replay_lsn = 0x300_0148;
        pg0.timeline = 1;
        pg0.last_check_unix_ms = 9_600;
        let pg1 = backend(1, Role::Primary, Status::Up);
        let mut pg2 = backend(2, Role::Standby, Status::Down);
        pg2.reason = "not streaming\nfrom the primary".into();
        pg2.lag_bytes = 1536;
        pg2.flush_lsn = 0x300_0F00;
        pg2.lag_seconds = 2.34;
        let mut pg3 = backend(3, Role::Standby, Status::Up);
        pg3.lag_seconds = 0.04;
        pg3.last_check_unix_ms = 0;
        pg3.replay_lsn = 0;
        pg3.flush_lsn = 0;
        pg3.timeline = 0;
        pg3.synchronous = true;
        ClusterState {
            generation: 4,
            primary_id: Some(1),
            backends: vec![pg0, pg1, pg2, pg3],
            failover_in_progress: false,
            monitor: "node1".into(),
            no_quorum: false,
            switchover_in_progress: false,
            failover_blocked: String::new(),
        }
    }

    #[test]
    fn table() {
        let text = status_text(&switched_over(), 10_000);
        let expected = "\
generation 4, primary pg1 (id 1), monitor node1
ID  NAME  ADDRESS         ROLE     STATUS    LAG             REPLAY LSN  RECEIVED LSN  SYNC  TIMELINE  LAST CHECK  REASON
0   pg0   127.0.0.1:5432  primary  detached  -               0/3000148   0/3000A10     -     1         0.4s ago    switched over to pg1: rejoin it as a standby, then attach it
1   pg1   127.0.0.1:5433  primary  up        -               0/3000A10   0/3000A10     -     2         0.2s ago
2   pg2   127.0.0.1:5434  standby  down      1.5 KiB (2.3s)  0/3000A10   0/3000F00     -     2         0.2s ago    not streaming from the primary
3   pg3   127.0.0.1:5435  standby  up        0 B             -           -             sync  -         never
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn no_primary_and_failover_in_progress() {
        let mut state = switched_over();
        state.primary_id = None;
        state.failover_in_progress = true;
        state.monitor.clear();
        let text = status_text(&state, 10_000);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("generation 4, no primary"));
        assert_eq!(lines.next(), Some("failover in progress"));
        assert!(lines.next().is_some_and(|l| l.starts_with("ID  NAME")));

        state.primary_id = Some(9);
        let text = status_text(&state, 10_000);
        assert!(
            text.starts_with("generation 4, primary id 9 (not among the backends)\n"),
            "{text}"
        );
    }

    #[test]
    fn no_backends() {
        let text = status_text(&ClusterState::default(), 0);
        assert_eq!(
            text,
            "generation 0, no primary\nID  NAME  ADDRESS  ROLE  STATUS  LAG  REPLAY LSN  RECEIVED LSN  SYNC  TIMELINE  LAST CHECK  REASON\n"
        );
    }

    #[test]
    fn a_blocked_failover_says_why_on_a_line_of_its_own() {
        let mut state = switched_over();
        state.failover_blocked =
            "no safe candidate: 0 of the synchronous standbys (pg3)\nanswer".into();
        let text = status_text(&state, 10_000);
        assert_eq!(
            text.lines().nth(1),
            Some("failover blocked: no safe candidate: 0 of the synchronous standbys (pg3) answer")
        );
    }
}
