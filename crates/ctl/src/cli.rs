//! The command line, as typed: `pgwardenctl [--config PATH] [--socket PATH]
//! [--watchdog-socket PATH] [--proxy-socket PATH] [--host HOST:PORT --ca
//! PATH [--cert PATH --key PATH]] [--json] [COMMAND]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// pgwarden's admin CLI: the cluster state as the monitor sees it, the
/// watchdog cluster as the watchdog sees it, and the operator's controls over
/// backends (pgpool-II's pcp_* commands).
///
/// Exit status: 0 done; 1 the monitor refused or failed the request; 2 a
/// usage, config or connection error (unknown backend, daemon not running).
#[derive(Debug, Parser)]
#[command(name = "pgwardenctl", version)]
pub struct Cli {
    /// The node config file; only `node.runtime_dir` (where monitor.sock,
    /// watchdog.sock and proxy.sock live) is used, but the whole file is
    /// validated.
    #[arg(long, global = true, value_name = "PATH", default_value = pgwarden_config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// The monitor's socket, instead of `<node.runtime_dir>/monitor.sock`
    /// from the config (which is then not read at all).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The watchdog's socket, for `watchdog`, instead of
    /// `<node.runtime_dir>/watchdog.sock` from the config (which is then not
    /// read at all).
    #[arg(long, global = true, value_name = "PATH")]
    pub watchdog_socket: Option<PathBuf>,

    /// The proxy's socket, for `pools`, `clients`, `pause`, `resume`,
    /// `reload` and `terminate`, instead of `<node.runtime_dir>/proxy.sock`
    /// from the config (which is then not read at all).
    #[arg(long, global = true, value_name = "PATH")]
    pub proxy_socket: Option<PathBuf>,

    /// Reach the node at HOST:PORT through its remote admin API
    /// (`admin.listen`, mutual TLS) instead of the local sockets; the config
    /// is then not read. Needs `--ca`, and `--cert` with `--key` for the
    /// client certificate the node admits.
    #[arg(long, global = true, value_name = "HOST:PORT", requires = "ca",
          conflicts_with_all = ["socket", "watchdog_socket", "proxy_socket"])]
    pub host: Option<String>,

    /// With `--host`: this operator's client certificate (PEM), signed by
    /// the node's `admin.client_ca_file`.
    #[arg(long, global = true, value_name = "PATH", requires_all = ["host", "key"])]
    pub cert: Option<PathBuf>,

    /// With `--host`: the private key of `--cert` (mode 600 or 640).
    #[arg(long, global = true, value_name = "PATH", requires_all = ["host", "cert"])]
    pub key: Option<PathBuf>,

    /// With `--host`: the CA that signed the node's `admin.cert_file`,
    /// which must name HOST.
    #[arg(long, global = true, value_name = "PATH", requires = "host")]
    pub ca: Option<PathBuf>,

    /// Print JSON instead of text: the state for `status`, one state per line
    /// for `watch`, `{"message", "state"}` for the backend commands, the
    /// watchdog status for `watchdog` (one per line with `--watch`).
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do; `status` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Show every backend's role, status, lag and last check (pcp_node_info,
    /// SHOW POOL_NODES). The default command.
    Status,
    /// Print one line per new generation of the cluster state, until Ctrl-C.
    Watch,
    /// Route to a backend again (pcp_attach_node). Refused unless the backend
    /// is healthy and, for a standby, streams from the primary.
    Attach(Target),
    /// Stop routing to a backend (pcp_detach_node). Detaching the primary
    /// fails over.
    Detach(Target),
    /// Planned switchover to a standby (pcp_promote_node --switchover): the
    /// current primary is fenced (detached), then the standby is promoted.
    Promote(PromoteArgs),
    /// Make a detached backend (a former primary) a standby of the primary
    /// again (pcp_recovery_node): the monitor runs failover.rejoin_command
    /// (pg_rewind, or a new base backup), then attaches the backend once it
    /// streams from the primary.
    Rejoin(RejoinArgs),
    /// Have the monitor check every backend now.
    Recheck,
    /// Show the failovers and switchovers the monitor decided, with the
    /// time of each phase (suspect, down or switchover, promoted, repointed,
    /// completed) and the WAL the promoted standby lacked (RPO).
    History,
    /// Show the watchdog cluster as this node's watchdog sees it: members,
    /// leader, term, quorum, delegate IP holder and the committed record
    /// (pcp_watchdog_info). Asks pgwarden-watchdog, not the monitor.
    #[command(visible_alias = "wd")]
    Watchdog(WatchdogArgs),
    /// Show the proxy's server connection pools: connections held by
    /// clients, cached, and clients waiting (PgBouncer's SHOW POOLS).
    /// Asks pgwarden-proxy.
    Pools,
    /// List the clients logged in to the proxy, with the pid each was given
    /// (pcp_proc_info, PgBouncer's SHOW CLIENTS). Asks pgwarden-proxy.
    Clients,
    /// Make new sessions wait (up to proxy.pool_timeout) until `resume`;
    /// sessions already open go on. Asks pgwarden-proxy.
    Pause,
    /// Let waiting and new sessions through again after `pause`.
    Resume,
    /// Have the proxy re-read its auth file (as SIGHUP does); a broken file
    /// is reported and the old one stays in force (pcp_reload_config).
    Reload,
    /// End one client's session, as pg_terminate_backend() does (it gets
    /// SQLSTATE 57P01). The pid is the one `clients` shows.
    Terminate(TerminateArgs),
}

/// `terminate`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TerminateArgs {
    /// The client's pid, as `clients` shows it.
    pub pid: i32,
}

/// The backend a command acts on.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Target {
    /// The backend's name, or its id (its position in `[[backends]]`, from 0).
    #[arg(value_name = "ID_OR_NAME")]
    pub backend: String,
}

/// `promote`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct PromoteArgs {
    /// The standby to promote.
    #[command(flatten)]
    pub target: Target,

    /// Promote even when the standby lags more than
    /// replication_check.max_lag_bytes (transactions may be lost).
    #[arg(long)]
    pub force: bool,

    /// Wait until the standby is the primary and up, printing each new
    /// generation; exit 1 if the monitor gives up on it.
    #[arg(long)]
    pub wait: bool,

    /// How long `--wait` waits (e.g. "90s", "2m").
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `rejoin`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RejoinArgs {
    /// The backend to rejoin.
    #[command(flatten)]
    pub target: Target,

    /// Wait until the backend is attached, printing its progress; exit 1
    /// if the rejoin fails.
    #[arg(long)]
    pub wait: bool,

    /// How long `--wait` waits (a base backup of a big cluster takes long).
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `watchdog`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct WatchdogArgs {
    /// Print one line per change of leader, term, quorum, delegate IP
    /// holder or committed record, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

impl Cli {
    /// The command to run: the one given, or `status`.
    pub fn command_or_status(&self) -> Command {
        self.command.clone().unwrap_or(Command::Status)
    }

    /// Whether the command waits until interrupted or done (`watch`,
    /// `watchdog --watch`, `promote --wait`, `rejoin --wait`): Ctrl-C ends
    /// those cleanly instead of killing them.
    pub fn waits(&self) -> bool {
        match self.command_or_status() {
            Command::Watch => true,
            Command::Watchdog(w) => w.watch,
            Command::Promote(p) => p.wait,
            Command::Rejoin(r) => r.wait,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("pgwardenctl").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn status_is_the_default() {
        let cli = parse(&[]);
        assert_eq!(cli.command_or_status(), Command::Status);
        assert_eq!(cli.config, PathBuf::from("/etc/pgwarden/pgwarden.toml"));
        assert!(!cli.json);
        assert!(parse(&["--json"]).json);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["status", "--json", "--config", "/x.toml"]);
        assert!(cli.json);
        assert_eq!(cli.config, PathBuf::from("/x.toml"));
        let cli = parse(&["--socket", "/run/m.sock", "detach", "pg2"]);
        assert_eq!(cli.socket, Some(PathBuf::from("/run/m.sock")));
        assert_eq!(
            cli.command_or_status(),
            Command::Detach(Target {
                backend: "pg2".into()
            })
        );
    }

    #[test]
    fn promote_flags() {
        let cli = parse(&["promote", "1", "--force", "--wait", "--timeout", "2m"]);
        let Command::Promote(p) = cli.command_or_status() else {
            panic!("{cli:?}")
        };
        assert_eq!(p.target.backend, "1");
        assert!(p.force && p.wait);
        assert_eq!(p.timeout, Duration::from_secs(120));
        let Command::Promote(p) = parse(&["promote", "pg1"]).command_or_status() else {
            panic!()
        };
        assert!(!p.force && !p.wait);
        assert_eq!(p.timeout, Duration::from_secs(60));
    }

    #[test]
    fn watchdog_and_its_alias() {
        let cli = parse(&["watchdog"]);
        assert_eq!(
            cli.command_or_status(),
            Command::Watchdog(WatchdogArgs { watch: false })
        );
        assert_eq!(cli.watchdog_socket, None);
        let cli = parse(&[
            "wd",
            "--watch",
            "--watchdog-socket",
            "/run/w.sock",
            "--json",
        ]);
        assert_eq!(
            cli.command_or_status(),
            Command::Watchdog(WatchdogArgs { watch: true })
        );
        assert_eq!(cli.watchdog_socket, Some(PathBuf::from("/run/w.sock")));
        assert_eq!(cli.socket, None);
        assert!(cli.json);
    }

    #[test]
    fn only_waiting_commands_catch_ctrl_c() {
        for (args, waits) in [
            (&["watch"][..], true),
            (&["watchdog", "--watch"], true),
            (&["watchdog"], false),
            (&["promote", "pg1", "--wait"], true),
            (&["promote", "pg1"], false),
            (&["rejoin", "pg0", "--wait"], true),
            (&["status"], false),
            (&["pools"], false),
        ] {
            assert_eq!(parse(args).waits(), waits, "{args:?}");
        }
    }

    #[test]
    fn rejoin_flags() {
        let Command::Rejoin(r) = parse(&["rejoin", "pg0", "--wait"]).command_or_status() else {
            panic!()
        };
        assert_eq!(r.target.backend, "pg0");
        assert!(r.wait);
        assert_eq!(r.timeout, Duration::from_secs(1800));
    }

    #[test]
    fn proxy_commands() {
        let cli = parse(&["terminate", "1842291877", "--proxy-socket", "/run/p.sock"]);
        assert_eq!(
            cli.command_or_status(),
            Command::Terminate(TerminateArgs { pid: 1_842_291_877 })
        );
        assert_eq!(cli.proxy_socket, Some(PathBuf::from("/run/p.sock")));
        assert_eq!(cli.socket, None);
        for (arg, command) in [
            ("pools", Command::Pools),
            ("clients", Command::Clients),
            ("pause", Command::Pause),
            ("resume", Command::Resume),
            ("reload", Command::Reload),
        ] {
            assert_eq!(parse(&[arg]).command_or_status(), command);
        }
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["attach"][..],
            &["bogus"],
            &["promote", "pg1", "--timeout", "soon"],
            &["status", "--watch"],
            &["watchdog", "pg1"],
            &["terminate"],
            &["terminate", "12x"],
            &["pools", "pg1"],
        ] {
            let argv = std::iter::once("pgwardenctl").chain(args.iter().copied());
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        <Cli as CommandFactory>::command().debug_assert();
    }
}
