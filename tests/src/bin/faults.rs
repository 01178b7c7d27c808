//! `bench/faults.sh`'s engine: runs seeded fault schedules on the
//! three-host network-namespace lab (needs root) and prints one line per
//! schedule, then
//! `faults: schedules=N lost_acked=X dual_primary=Y dual_vip=Z max_unavailable_s=T`.
//!
//! ```text
//! faults --schedules N [--seed S] [--sync | --strict] [--faults K] [--log-dir DIR] [--plan]
//! ```
//!
//! `--plan` prints each schedule's faults without running them.
//!
//! Schedule i of a run has seed S + i; a failing one prints its seed,
//! which `--seed <that seed> --schedules 1` replays. Exit status 0 when no
//! schedule broke an invariant, 1 when one did, 2 on bad arguments.

use std::process::ExitCode;
use std::time::Duration;

use pgwarden_e2e::faults::{self, Options};

struct Args {
    schedules: u64,
    plan_only: bool,
    seed: u64,
    options: Options,
}

const USAGE: &str = "usage: faults --schedules N [--seed S] [--sync | --strict] [--faults K] [--log-dir DIR] [--plan]";

fn parse() -> Result<Args, String> {
    let mut args = Args {
        schedules: 5,
        plan_only: false,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 100_000)
            .unwrap_or(1),
        options: Options {
            synchronous_mode: "off".into(),
            faults: 3,
            writers: 3,
            settle_bound: Duration::from_secs(120),
            log_dir: std::env::temp_dir(),
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--schedules" => {
                args.schedules = value("--schedules")?
                    .parse()
                    .map_err(|e| format!("--schedules: {e}"))?
            }
            "--seed" => {
                args.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--faults" => {
                args.options.faults = value("--faults")?
                    .parse()
                    .map_err(|e| format!("--faults: {e}"))?
            }
            "--log-dir" => args.options.log_dir = value("--log-dir")?.into(),
            "--plan" => args.plan_only = true,
            "--sync" => args.options.synchronous_mode = "on".into(),
            "--strict" => args.options.synchronous_mode = "strict".into(),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.schedules == 0 {
        return Err("--schedules must be at least 1".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::from(2);
        }
    };
    if args.plan_only {
        for i in 0..args.schedules {
            let seed = args.seed + i;
            let steps: Vec<String> = faults::plan::plan(seed, args.options.faults)
                .iter()
                .map(|s| s.to_string())
                .collect();
            println!("seed={seed} | {}", steps.join("; "));
        }
        return ExitCode::SUCCESS;
    }
    if let Some(why) = pgwarden_e2e::lab::unavailable() {
        eprintln!("faults: the three-host lab cannot start here: {why}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faults: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sync = args.options.synchronous();
    println!(
        "faults: {} schedules from seed {}, synchronous_mode={}, {} faults each",
        args.schedules, args.seed, args.options.synchronous_mode, args.options.faults
    );
    let (mut lost, mut dual_primary, mut dual_vip) = (0usize, 0usize, 0u64);
    let mut worst = Duration::ZERO;
    let mut failed = Vec::new();
    for i in 0..args.schedules {
        let seed = args.seed + i;
        let o = rt.block_on(faults::run(seed, &args.options));
        lost += o.lost.len();
        dual_primary += o.dual_primary;
        dual_vip += o.vip.dual;
        worst = worst.max(o.unavailable);
        let verdict = if o.ok(sync) {
            "ok".to_owned()
        } else {
            failed.push(seed);
            match &o.failure {
                Some(f) => format!("FAILED ({f})"),
                None => "FAILED".to_owned(),
            }
        };
        println!(
            "schedule {}/{} seed={seed} {verdict}: acked={} unacked={} lost={} dual_primary={} dual_vip={}/{} \
             unavailable_s={:.1} settle_max_s={:.1} rpo_bytes={} reads={}/{} | {}",
            i + 1,
            args.schedules,
            o.acked,
            o.unacked,
            o.lost.len(),
            o.dual_primary,
            o.vip.dual,
            o.vip.samples,
            o.unavailable.as_secs_f64(),
            o.settle_max.as_secs_f64(),
            o.rpo_bytes,
            o.reads.0,
            o.reads.0 + o.reads.1,
            o.steps.join("; "),
        );
        if !o.vip.seen.is_empty() {
            println!("  two delegate-IP holders: {}", o.vip.seen.join(", "));
        }
        if o.vip.unreadable > 0 || o.malformed > 0 {
            println!(
                "  unreadable: {} reads of a host's addresses, {} answers to acknowledged writes",
                o.vip.unreadable, o.malformed
            );
        }
        if !o.lost.is_empty() {
            let some: Vec<String> = o.lost.iter().take(10).map(|k| k.to_string()).collect();
            println!("  lost acknowledged keys: {}", some.join(", "));
        }
    }
    if !failed.is_empty() {
        let seeds: Vec<String> = failed.iter().map(|s| s.to_string()).collect();
        println!(
            "faults: failed seeds: {} (replay one: --seed S --schedules 1)",
            seeds.join(" ")
        );
    }
    println!(
        "faults: schedules={} lost_acked={lost} dual_primary={dual_primary} dual_vip={dual_vip} max_unavailable_s={:.1}",
        args.schedules,
        worst.as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
