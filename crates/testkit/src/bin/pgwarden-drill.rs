//! `pgwarden-drill`: a failover drill. Writes one row every `--interval-ms`
//! through a PostgreSQL endpoint (pgwarden-proxy, pgpool-II...), runs
//! `--kill-cmd` after `--kill-after` seconds, and reports how long it took
//! until a write was acknowledged by another server, and how many
//! acknowledged rows the new primary does not have.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Failover drill: steady writes, a killed primary, the time to recover and the rows lost.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// libpq conninfo of the endpoint under test.
    #[arg(long)]
    conninfo: String,
    /// Seconds of steady writes before the kill.
    #[arg(long, default_value_t = 5)]
    kill_after: u64,
    /// Shell command that kills the primary.
    #[arg(long)]
    kill_cmd: String,
    /// Milliseconds between writes.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Acknowledged writes on the new primary before the drill ends.
    #[arg(long, default_value_t = 20)]
    after_writes: u32,
    /// Give up this many seconds after the kill.
    #[arg(long, default_value_t = 90)]
    timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgwarden-drill: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgwarden-drill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls),
    )
    .await??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let setup = connect(&args.conninfo).await?;
    setup
        .batch_execute("DROP TABLE IF EXISTS drill; CREATE TABLE drill (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;
    drop(setup);

    let start = Instant::now();
    let interval = Duration::from_millis(args.interval_ms);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut acked = BTreeSet::new();
    let (mut killed_at, mut old_port, mut first_ok, mut after, mut errors) =
        (None, None, None, 0u32, 0u32);
    let mut last_error = String::new();
    for id in 0i64.. {
        let tick = Instant::now();
        if killed_at.is_none() && start.elapsed() >= Duration::from_secs(args.kill_after) {
            let status = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&args.kill_cmd)
                .status()?;
            anyhow::ensure!(status.success(), "--kill-cmd failed: {status}");
            killed_at = Some(Instant::now());
        }
        if let Some(k) = killed_at
            && k.elapsed() > Duration::from_secs(args.timeout)
        {
            anyhow::bail!(
                "no write acknowledged by a new primary within {}s; last error: {last_error}",
                args.timeout
            );
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&args.conninfo)
                .await
                .map_err(|e| last_error = format!("{e:#}"))
                .ok();
        }
        if let Some(c) = &client {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let write = c.query_one(
                "INSERT INTO drill (id) VALUES ($1) RETURNING inet_server_port()",
                &params,
            );
            match tokio::time::timeout(Duration::from_secs(3), write).await {
                Ok(Ok(row)) => {
                    acked.insert(id);
                    let port: Option<i32> = row.get(0);
                    match killed_at {
                        None => old_port = port,
                        Some(k) if port != old_port => {
                            first_ok.get_or_insert(k.elapsed());
                            after += 1;
                        }
                        Some(_) => {}
                    }
                }
                Ok(Err(e)) => {
                    errors += 1;
                    last_error = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                    client = None;
                }
                Err(_) => {
                    errors += 1;
                    last_error = "write timed out after 3s".into();
                    client = None;
                }
            }
        } else {
            errors += 1;
        }
        if after >= args.after_writes {
            break;
        }
        tokio::time::sleep(interval.saturating_sub(tick.elapsed())).await;
    }
    let c = connect(&args.conninfo).await?;
    let present: BTreeSet<i64> = c
        .query("SELECT id FROM drill", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = acked.difference(&present).count();
    let secs = first_ok.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "failover_seconds={secs:.2} acked={} lost={lost} failed_attempts={errors} last_error={last_error:?}",
        acked.len()
    );
    Ok(())
}
