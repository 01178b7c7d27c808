//! Carrying faults out on a [`Fleet`] and undoing them, and the sampler of
//! delegate-IP holders.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pgwarden_testkit::Host;

use super::plan::{Fault, Target};
use crate::lab::{Daemon, Fleet};

/// A fault in force, with what undoes it.
#[derive(Debug)]
pub enum InForce {
    /// Host cut: healed.
    Cut(usize),
    /// Host `0` drops what it sends to address `1`: the route removed.
    OneWay(usize, Ipv4Addr),
    /// Daemon killed: started again.
    Killed(usize, Daemon),
    /// Server killed: started again.
    KilledPostgres(usize),
    /// Daemon stopped: continued.
    Stopped(usize, Daemon),
    /// Every process of the host stopped and its link cut, like a paused
    /// virtual machine: continued, then (once it let go of the delegate IP)
    /// plugged in again.
    Frozen(usize, Vec<i32>),
    /// Nothing to undo (a restart, a switchover), with what happened.
    Done(String),
}

/// The host of the watchdog leader, as the first watchdog that knows
/// one says.
pub async fn leader_host(fleet: &Fleet) -> Option<usize> {
    for i in 0..fleet.nodes.len() {
        if let Some(s) = fleet.watchdog(i).await
            && s.leader_id != 0
        {
            return Some(fleet.host_of_raft_id(s.leader_id));
        }
    }
    None
}

/// The current primary's backend id (= its host), as the first monitor
/// that answers says.
pub async fn primary_host(fleet: &Fleet) -> Option<usize> {
    for i in 0..fleet.nodes.len() {
        if let Some(s) = fleet.cluster_state(i).await
            && let Some(p) = s.primary_id
        {
            return Some(p as usize);
        }
    }
    None
}

/// The host a target names now (host 0 when the cluster cannot say).
pub async fn resolve(fleet: &Fleet, target: Target) -> usize {
    let primary = primary_host(fleet).await.unwrap_or(0);
    match target {
        Target::Leader => leader_host(fleet).await.unwrap_or(0),
        Target::PrimaryHost => primary,
        Target::Standby(n) => {
            let standbys: Vec<usize> = (0..fleet.nodes.len()).filter(|i| *i != primary).collect();
            standbys
                .get(n % standbys.len().max(1))
                .copied()
                .unwrap_or(0)
        }
    }
}

/// Starts `fault`; what is returned undoes it ([`undo`]).
pub async fn apply(fleet: &mut Fleet, fault: Fault, frozen: &Frozen) -> anyhow::Result<InForce> {
    Ok(match fault {
        Fault::Cut(t) => {
            let h = resolve(fleet, t).await;
            fleet.lab.cut(h)?;
            InForce::Cut(h)
        }
        Fault::OneWay(from, to) => {
            let (a, b) = (resolve(fleet, from).await, resolve(fleet, to).await);
            let b = if a == b {
                (a + 1) % fleet.nodes.len()
            } else {
                b
            };
            let ip = fleet.lab.host(b).ip();
            fleet
                .lab
                .host(a)
                .sh(&format!("ip route add blackhole {ip}/32"))?;
            InForce::OneWay(a, ip)
        }
        Fault::KillDaemon(t, d) => {
            let h = resolve(fleet, t).await;
            fleet.kill_daemon(h, d);
            InForce::Killed(h, d)
        }
        Fault::KillPostgres(t) => {
            let h = resolve(fleet, t).await;
            let node = fleet.cluster.node(h);
            if node.is_running() {
                node.kill9()?;
            }
            InForce::KilledPostgres(h)
        }
        Fault::StopDaemon(t, d) => {
            let h = resolve(fleet, t).await;
            fleet.signal_daemon(h, d, Signal::SIGSTOP);
            InForce::Stopped(h, d)
        }
        Fault::FreezeHost(t) => {
            let h = resolve(fleet, t).await;
            let pids = host_pids(fleet.lab.host(h))?;
            frozen.set(h, true);
            for p in &pids {
                let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
            }
            // A paused machine's kernel does not answer either (a stopped
            // host's would, for the delegate IP it still has).
            fleet.lab.cut(h)?;
            InForce::Frozen(h, pids)
        }
        Fault::RestartDaemon(t, d) => {
            let h = resolve(fleet, t).await;
            tokio::task::block_in_place(|| fleet.restart_daemon(h, d));
            InForce::Done(format!("restarted {} on host {h}", d.bin()))
        }
        Fault::Switchover(t) => {
            let to = resolve(fleet, t).await;
            let on = leader_host(fleet).await.unwrap_or(0);
            let config = fleet.config(on);
            let name = fleet.cluster.node(to).name().to_owned();
            let run = tokio::task::spawn_blocking(move || {
                crate::pgwardenctl(&config, &["promote", &name, "--wait", "--timeout", "60s"])
            })
            .await?;
            InForce::Done(if run.code == 0 {
                format!("switched over to host {to}")
            } else {
                format!(
                    "switchover to host {to} refused: {}",
                    run.stderr.lines().last().unwrap_or("").trim()
                )
            })
        }
    })
}

/// How long a host woken from a freeze may take to let go of a delegate IP
/// it held: its guard notices at once (it checks every 50 ms against
/// `CLOCK_BOOTTIME`) and runs `if_down_cmd`. Until then, or this long, it
/// stays cut off and is not sampled; past it, it counts again.
const THAW_RELEASE: Duration = Duration::from_secs(2);

/// Undoes a fault in force.
pub fn undo(fleet: &mut Fleet, f: &InForce, frozen: &Frozen) -> anyhow::Result<()> {
    match f {
        InForce::Cut(h) => fleet.lab.heal(*h)?,
        InForce::OneWay(h, ip) => {
            fleet
                .lab
                .host(*h)
                .sh(&format!("ip route del blackhole {ip}/32"))?;
        }
        InForce::Killed(h, d) => fleet.start_daemon(*h, *d),
        InForce::KilledPostgres(h) => fleet.cluster.node(*h).start()?,
        InForce::Stopped(h, d) => fleet.signal_daemon(*h, *d, Signal::SIGCONT),
        InForce::Frozen(h, pids) => {
            for p in pids {
                let _ = kill(Pid::from_raw(*p), Signal::SIGCONT);
            }
            let (host, vip) = (fleet.lab.host(*h), fleet.lab.delegate_ip());
            let _ = pgwarden_testkit::wait_until(
                THAW_RELEASE,
                "the woken host to let go of the IP",
                || host.addresses().is_ok_and(|a| !a.contains(&vip)),
            );
            frozen.set(*h, false);
            fleet.lab.heal(*h)?;
        }
        InForce::Done(_) => {}
    }
    Ok(())
}

/// The processes of a lab host (`ip netns pids`).
fn host_pids(host: &Host) -> anyhow::Result<Vec<i32>> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", host.name()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip netns pids {}: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| *p != std::process::id() as i32)
        .collect())
}

/// Which hosts are frozen (they cannot run code, and are cut off like a
/// paused machine, so an address left on them is no second holder).
#[derive(Debug, Default)]
pub struct Frozen(AtomicU64);

impl Frozen {
    fn set(&self, host: usize, on: bool) {
        let bit = 1u64 << host;
        if on {
            self.0.fetch_or(bit, Ordering::SeqCst);
        } else {
            self.0.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    fn is(&self, host: usize) -> bool {
        self.0.load(Ordering::SeqCst) & (1u64 << host) != 0
    }
}

/// What the delegate-IP sampler saw.
#[derive(Debug, Default)]
pub struct Sampled {
    /// Samples taken.
    pub samples: u64,
    /// Samples with two holders (seen again in a second pass).
    pub dual: u64,
    /// The first few of those.
    pub seen: Vec<String>,
    /// Reads of a host's addresses that failed (that host unknown in
    /// that sample).
    pub unreadable: u64,
}

/// Samples who holds the delegate IP every 50 ms until stopped.
pub struct VipSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Sampled>>,
}

impl VipSampler {
    /// Starts sampling `hosts` for `vip`, leaving out frozen hosts.
    pub fn start(hosts: Vec<Host>, vip: Ipv4Addr, frozen: Arc<Frozen>) -> VipSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut out = Sampled::default();
            let epoch = std::time::Instant::now();
            let holders = |order: &mut dyn Iterator<Item = usize>, unreadable: &mut u64| {
                let mut h = Vec::new();
                for i in order.filter(|i| !frozen.is(*i)) {
                    match hosts[i].addresses() {
                        Ok(a) if a.contains(&vip) => h.push(i),
                        Ok(_) => {}
                        Err(_) => *unreadable += 1,
                    }
                }
                h.sort_unstable();
                h
            };
            while !s.load(Ordering::Relaxed) {
                out.samples += 1;
                let first = holders(&mut (0..hosts.len()), &mut out.unreadable);
                // Two holders read one after the other may be a hand-over
                // between the reads: a second pass in the other order
                // must see both again.
                if first.len() > 1 {
                    let again = holders(&mut (0..hosts.len()).rev(), &mut out.unreadable);
                    if again.len() > 1 && again == first {
                        out.dual += 1;
                        if out.seen.len() < 5 {
                            let at = epoch.elapsed().as_secs_f64();
                            out.seen.push(format!("hosts {first:?} at {at:.1}s"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            out
        });
        VipSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling: what it saw.
    pub fn stop(mut self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}
