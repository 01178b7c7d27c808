//! The clients of a fault schedule: writers of unique keys through the
//! delegate IP, each acknowledgement recorded with the server and timeline
//! that took it, and a reader; all inside the lab's client namespace.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwarden_testkit::Host;

use super::check::{Ack, timeline_of};
use crate::ALICE;

/// How long a client waits for a connection or an answer before it counts
/// the attempt as failed (its outcome unknown) and connects again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A writer's pause between two writes (bounds the load on 2 cores).
const WRITE_PAUSE: Duration = Duration::from_millis(20);

/// The reader's pause between two reads.
const READ_PAUSE: Duration = Duration::from_millis(100);

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every acknowledged write.
    pub acks: Vec<Ack>,
    /// Writes that failed or got no answer in time (not acknowledged:
    /// they may or may not have committed).
    pub unacked: u64,
    /// Writes acknowledged whose answer could not be read (in `acks`, on
    /// server `?` and timeline 0).
    pub malformed: u64,
    /// Reads answered.
    pub reads: u64,
    /// Reads that failed.
    pub failed_reads: u64,
}

/// Running clients; [`Workload::stop`] ends them and returns what they saw.
pub struct Workload {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workload {
    /// Starts `writers` writers and one reader in `client`, connecting to
    /// `vip`:9999 as alice; times count from `epoch`.
    pub fn start(client: &Host, vip: Ipv4Addr, writers: i64, epoch: Instant) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let conninfo = format!(
            "host={vip} port=9999 user={} password={} dbname=app connect_timeout=3",
            ALICE.0, ALICE.1
        );
        let (host, s, st) = (client.clone(), Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let entered = host.enter(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the clients");
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for w in 1..=writers {
                        tasks.push(tokio::spawn(writer(
                            w,
                            conninfo.clone(),
                            Arc::clone(&st),
                            Arc::clone(&s),
                            epoch,
                        )));
                    }
                    tasks.push(tokio::spawn(reader(
                        conninfo,
                        Arc::clone(&st),
                        Arc::clone(&s),
                    )));
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            });
            if let Err(e) = entered {
                eprintln!("faults: the clients could not enter the client namespace: {e:#}");
            }
        });
        Workload {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// When the newest acknowledgement came (since the epoch), if any.
    pub fn last_ack(&self) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.acks.iter().map(|a| a.acked).max()
    }

    /// Stops the clients (each finishes or gives up its statement in
    /// [`ANSWER_TIMEOUT`]) and returns what they saw.
    pub fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *seen)
    }
}

async fn connect(conninfo: &str) -> Option<tokio_postgres::Client> {
    match tokio::time::timeout(
        ANSWER_TIMEOUT,
        tokio_postgres::connect(conninfo, tokio_postgres::NoTls),
    )
    .await
    {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Some(client)
        }
        _ => None,
    }
}

/// Writes keys `w * 10^9 + 1, + 2, ...` one transaction each, until
/// stopped; a failure or a statement without an answer in time ends the
/// session and the writer connects again.
async fn writer(
    w: i64,
    conninfo: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    epoch: Instant,
) {
    let mut seq = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = connect(&conninfo).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let key = w * 1_000_000_000 + seq;
            let sent = epoch.elapsed();
            let answer = tokio::time::timeout(
                ANSWER_TIMEOUT,
                client.query_one(
                    "INSERT INTO acks (k) VALUES ($1) \
                     RETURNING host(inet_server_addr()), pg_walfile_name(pg_current_wal_lsn())",
                    &[&key],
                ),
            )
            .await;
            let acked = epoch.elapsed();
            let ok = {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                match answer {
                    Ok(Ok(row)) => {
                        let server = row.try_get::<_, String>(0).ok();
                        let timeline = row
                            .try_get::<_, String>(1)
                            .ok()
                            .and_then(|w| timeline_of(&w));
                        if server.is_none() || timeline.is_none() {
                            s.malformed += 1;
                        }
                        s.acks.push(Ack {
                            key,
                            sent,
                            acked,
                            server: server.unwrap_or_else(|| "?".to_owned()),
                            timeline: timeline.unwrap_or(0),
                        });
                        true
                    }
                    _ => {
                        s.unacked += 1;
                        false
                    }
                }
            };
            if !ok {
                break;
            }
            tokio::time::sleep(WRITE_PAUSE).await;
        }
    }
}

/// Counts the rows now and then, until stopped.
async fn reader(conninfo: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    while !stop.load(Ordering::Relaxed) {
        let Some(client) = connect(&conninfo).await else {
            seen.lock().unwrap_or_else(|p| p.into_inner()).failed_reads += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let answer = tokio::time::timeout(
                ANSWER_TIMEOUT,
                client.query_one("SELECT count(*) FROM acks", &[]),
            )
            .await;
            let ok = matches!(answer, Ok(Ok(_)));
            {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                if ok {
                    s.reads += 1;
                } else {
                    s.failed_reads += 1;
                }
            }
            if !ok {
                break;
            }
            tokio::time::sleep(READ_PAUSE).await;
        }
    }
}
