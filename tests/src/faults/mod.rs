//! The randomized fault suite behind `bench/faults.sh` (the `faults`
//! binary): one schedule is a fresh three-host lab with writers and a
//! reader going through the delegate IP while seeded faults come and go,
//! one at a time, each followed by the cluster settling again; at the end
//! the history of acknowledgements is checked against the final primary.
//!
//! The pure parts ([`plan`], [`check`]) are unit-tested; the rest runs
//! real PostgreSQL and the real daemons in network namespaces (root).

pub mod check;
pub mod nemesis;
pub mod plan;
pub mod settle;
pub mod workload;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use crate::lab::{Fleet, FleetOptions};
use nemesis::{Frozen, VipSampler};
use settle::{Want, settle};
use workload::Workload;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// `failover.synchronous_mode` ("off", "on" or "strict").
    pub synchronous_mode: String,
    /// Faults per schedule.
    pub faults: usize,
    /// Concurrent writers.
    pub writers: i64,
    /// How long the cluster may take to settle after a fault.
    pub settle_bound: Duration,
    /// Where a failing schedule's logs are written.
    pub log_dir: std::path::PathBuf,
}

impl Options {
    /// Whether a standby is synchronous (`--sync` or `--strict`).
    pub fn synchronous(&self) -> bool {
        self.synchronous_mode != "off"
    }
}

/// What one schedule found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The schedule's seed (replay with `--seed S --schedules 1`).
    pub seed: u64,
    /// Each step as carried out.
    pub steps: Vec<String>,
    /// Writes acknowledged.
    pub acked: usize,
    /// Writes without an acknowledgement.
    pub unacked: u64,
    /// Reads answered and failed.
    pub reads: (u64, u64),
    /// Acknowledged keys missing from the final primary.
    pub lost: Vec<i64>,
    /// Writes a stale or second primary took ([`check::dual_primary`]).
    pub dual_primary: usize,
    /// What the delegate-IP sampler saw.
    pub vip: nemesis::Sampled,
    /// Acknowledged writes whose answer could not be read (they count as
    /// acknowledged, on an unknown server and timeline, and fail the
    /// schedule: the checks would be blind to them).
    pub malformed: u64,
    /// The longest time without an acknowledged write.
    pub unavailable: Duration,
    /// The longest time the cluster took to settle after a fault.
    pub settle_max: Duration,
    /// The most WAL a failover's history says the new primary lacked.
    pub rpo_bytes: u64,
    /// Why the schedule could not complete (the cluster did not settle,
    /// the lab failed...), if it did not.
    pub failure: Option<String>,
}

/// The lab's `replication_check.max_lag_bytes` (the default, 16 MiB): with
/// asynchronous replication, no failover may lose more WAL than this.
pub const MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;

impl Outcome {
    /// Whether the schedule broke nothing: in synchronous mode a lost
    /// acknowledged write breaks it; in asynchronous mode lost writes are
    /// counted, and a failover that lost more WAL than [`MAX_LAG_BYTES`]
    /// breaks it.
    pub fn ok(&self, synchronous: bool) -> bool {
        self.failure.is_none()
            && self.dual_primary == 0
            && self.vip.dual == 0
            && self.malformed == 0
            && if synchronous {
                self.lost.is_empty()
            } else {
                self.rpo_bytes <= MAX_LAG_BYTES
            }
    }
}

/// Runs the schedule `seed`.
pub async fn run(seed: u64, options: &Options) -> Outcome {
    let mut outcome = Outcome {
        seed,
        ..Outcome::default()
    };
    let fleet_options = FleetOptions {
        failover: match options.synchronous_mode.as_str() {
            "off" => Vec::new(),
            mode => vec![
                format!("synchronous_mode = \"{mode}\""),
                "synchronous_count = 1".to_owned(),
            ],
        },
        rejoin: true,
    };
    let started = std::panic::AssertUnwindSafe(async { Fleet::start_with(3, &fleet_options) })
        .catch_unwind()
        .await;
    let mut fleet = match started {
        Ok(f) => f,
        Err(p) => {
            outcome.failure = Some(format!("the lab did not start: {}", panic_text(&p)));
            return outcome;
        }
    };
    let body = std::panic::AssertUnwindSafe(schedule(&mut fleet, seed, options, &mut outcome))
        .catch_unwind()
        .await;
    match body {
        Ok(Ok(())) => {}
        Ok(Err(e)) => outcome.failure = Some(format!("{e:#}")),
        Err(p) => outcome.failure = Some(panic_text(&p)),
    }
    if !outcome.ok(options.synchronous()) || std::env::var_os("PGWARDEN_FAULTS_LOGS").is_some() {
        let path = options.log_dir.join(format!("faults-seed-{seed}.log"));
        let mut text = fleet.logs_tail(4000);
        for n in fleet.cluster.nodes() {
            text.push_str(&crate::log_tail(
                &format!("{} postgres", n.name()),
                &n.log_tail(60),
                60,
            ));
        }
        if std::fs::write(&path, text).is_ok() {
            eprintln!(
                "faults: seed {seed}: the daemons' logs are in {}",
                path.display()
            );
        }
    }
    outcome
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    let text = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned());
    text.lines().next().unwrap_or("").to_owned()
}

async fn schedule(
    fleet: &mut Fleet,
    seed: u64,
    options: &Options,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let want = Want {
        synchronous: options.synchronous(),
    };
    fleet.wait_serving().await;
    settle(fleet, want, options.settle_bound)
        .await
        .map_err(|e| anyhow::anyhow!("before the first fault: {e}"))?;
    fleet.cluster.primary().psql_db(
        "app",
        "CREATE TABLE acks (k bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); \
         ALTER TABLE acks OWNER TO alice",
    )?;
    let frozen = Arc::new(Frozen::default());
    let sampler = VipSampler::start(
        fleet.lab.hosts().to_vec(),
        fleet.lab.delegate_ip(),
        Arc::clone(&frozen),
    );
    let epoch = Instant::now();
    let clients = Workload::start(
        fleet.lab.client(),
        fleet.lab.delegate_ip(),
        options.writers,
        epoch,
    );
    let result = faults(fleet, seed, options, want, &clients, &frozen, outcome).await;
    let end = epoch.elapsed();
    let seen = clients.stop();
    outcome.vip = sampler.stop();
    outcome.malformed = seen.malformed;
    outcome.acked = seen.acks.len();
    outcome.unacked = seen.unacked;
    outcome.reads = (seen.reads, seen.failed_reads);
    let first = seen.acks.iter().map(|a| a.acked).min().unwrap_or(end);
    outcome.unavailable = check::longest_gap(&seen.acks, first, end);
    outcome.dual_primary = check::dual_primary(&seen.acks).len();
    if let Some(path) = std::env::var_os("PGWARDEN_FAULTS_ACKS") {
        let mut text = String::from("key,sent_ms,acked_ms,server,timeline\n");
        for a in &seen.acks {
            text.push_str(&format!(
                "{},{},{},{},{}\n",
                a.key,
                a.sent.as_millis(),
                a.acked.as_millis(),
                a.server,
                a.timeline
            ));
        }
        let _ = std::fs::write(path, text);
    }
    result?;
    // Settled after the last fault: the final primary has the last word.
    let primary = nemesis::primary_host(fleet)
        .await
        .ok_or_else(|| anyhow::anyhow!("no monitor names a primary at the end"))?;
    let rows = fleet
        .cluster
        .node(primary)
        .psql_db("app", "SELECT k FROM acks")?;
    let present: HashSet<i64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    outcome.lost = check::lost(&seen.acks, &present);
    outcome.rpo_bytes = rpo_bytes(fleet, primary)?;
    Ok(())
}

async fn faults(
    fleet: &mut Fleet,
    seed: u64,
    options: &Options,
    want: Want,
    clients: &Workload,
    frozen: &Frozen,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let wait_ack = |after: Duration| async move {
        let deadline = Instant::now() + options.settle_bound;
        while Instant::now() < deadline {
            if clients.last_ack().is_some_and(|t| t > after) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    anyhow::ensure!(
        wait_ack(Duration::ZERO).await,
        "no write was acknowledged before the first fault"
    );
    for step in plan::plan(seed, options.faults) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let in_force = nemesis::apply(fleet, step.fault, frozen).await?;
        tokio::time::sleep(step.hold).await;
        nemesis::undo(fleet, &in_force, frozen)?;
        let note = match &in_force {
            nemesis::InForce::Done(what) => format!("{step} ({what})"),
            other => format!("{step} ({})", host_of(other)),
        };
        let before_settling = newest_ack(clients);
        let settled = settle(fleet, want, options.settle_bound).await;
        outcome.steps.push(note.clone());
        let took = settled.map_err(|e| anyhow::anyhow!("after {note}: {e}"))?;
        outcome.settle_max = outcome.settle_max.max(took);
        anyhow::ensure!(
            wait_ack(before_settling).await,
            "after {note}: no write acknowledged within {:?} of the cluster settling",
            options.settle_bound
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// The time of the newest acknowledgement, as a point to wait past.
fn newest_ack(clients: &Workload) -> Duration {
    clients.last_ack().unwrap_or(Duration::ZERO)
}

fn host_of(f: &nemesis::InForce) -> String {
    use nemesis::InForce::*;
    match f {
        Cut(h) | Killed(h, _) | KilledPostgres(h) | Stopped(h, _) | Frozen(h, _) => {
            format!("host {h}")
        }
        OneWay(h, ip) => format!("host {h} -> {ip}"),
        Done(what) => what.clone(),
    }
}

/// The largest `rpo_bytes` in the history, as the node of `host` says.
fn rpo_bytes(fleet: &Fleet, host: usize) -> anyhow::Result<u64> {
    let run = crate::pgwardenctl(&fleet.config(host), &["--json", "history"]);
    anyhow::ensure!(run.code == 0, "pgwardenctl history: {}", run.stderr.trim());
    let v: serde_json::Value = serde_json::from_str(&run.stdout)?;
    let records = v["records"].as_array().ok_or_else(|| {
        anyhow::anyhow!("pgwardenctl --json history: no records in {}", run.stdout)
    })?;
    Ok(records
        .iter()
        .filter_map(|r| r["rpo_bytes"].as_u64())
        .max()
        .unwrap_or(0))
}
