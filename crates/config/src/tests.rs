//! Loading whole configs: defaults, environment overrides, every error
//! naming its key, secrets, and the example file staying in step with the
//! code.

#![allow(
    clippy::result_large_err,
    reason = "figment::Jail's closures must return figment's own (large) error"
)]

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use figment::Jail;

use super::*;

const MINIMAL: &str = r#"
[node]
name = "pg01"

[[backends]]
host = "pg01.localnet"
"#;

const EXAMPLE: &str = include_str!("../../../deploy/pgwarden.example.toml");

/// `MINIMAL` plus `extra` (which may add keys to new tables, or whole
/// tables).
fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

/// Loads `toml`, expects an error, and checks its message names `key`.
fn err_naming(toml: &str, key: &str) -> String {
    let err = Config::from_toml_str(toml).expect_err("config should be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("invalid config: {key}: ")),
        "message should name {key}: {msg}"
    );
    assert_eq!(err.key(), Some(key), "{msg}");
    msg
}

/// Each case's `MINIMAL` plus TOML must be refused with an error naming its
/// key (see [`err_naming`]).
fn refused(cases: &[(&str, &str)]) {
    for &(extra, key) in cases {
        err_naming(&with(extra), key);
    }
}

/// As [`refused`], and each message must contain the case's words.
fn refused_saying(cases: &[(&str, &str, &str)]) {
    for &(extra, key, words) in cases {
        let msg = err_naming(&with(extra), key);
        assert!(msg.contains(words), "{key}: should say {words:?}: {msg}");
    }
}

/// Loads `path`, expects an error, and returns its message.
fn load_err(path: &str) -> String {
    Config::load(Path::new(path)).unwrap_err().to_string()
}

/// Sets each environment variable in `jail`.
fn set_envs(jail: &mut Jail, vars: &[(&str, &str)]) {
    for (name, value) in vars {
        jail.set_env(name, value);
    }
}

/// The sections `MINIMAL` and the example file both leave at their defaults.
fn assert_default_sections(config: &Config) {
    assert_eq!(config.proxy, ProxyConfig::default());
    assert_eq!(config.monitor, MonitorConfig::default());
    assert_eq!(config.health_check, HealthCheckConfig::default());
    assert_eq!(config.replication_check, ReplicationCheckConfig::default());
    assert_eq!(config.failover, FailoverConfig::default());
    assert_eq!(config.watchdog, WatchdogConfig::default());
}

/// `MINIMAL` plus `before` and a `password_file` key naming `path`.
fn with_password_file(before: &str, path: &Path) -> String {
    with(&format!(
        "{before}\npassword_file = {:?}",
        path.display().to_string()
    ))
}

/// A new temporary directory holding file `name` with `contents` and
/// permission bits `mode`; the directory goes when the first is dropped.
fn secret_file(name: &str, contents: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

// === defaults ===

#[test]
fn minimal_config_gets_defaults() {
    let config = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(config.node.name, "pg01");
    assert_eq!(config.node.runtime_dir, Path::new("/run/pgwarden"));
    assert_eq!(config.node.state_dir, Path::new("/var/lib/pgwarden"));
    assert_default_sections(&config);
    assert_eq!(config.server_tls, ServerTlsConfig::default());
    assert_eq!(
        config.backends,
        vec![Backend {
            id: 0,
            name: "pg01.localnet:5432".to_owned(),
            host: "pg01.localnet".to_owned(),
            port: 5432,
            data_dir: "".into(),
            weight: 1,
            allow_failover: true,
        }]
    );
}

#[test]
fn defaults_match_the_design() {
    let p = ProxyConfig::default();
    assert_eq!(p.listen, "0.0.0.0:9999".parse::<SocketAddr>().unwrap());
    assert_eq!(p.max_client_connections, 1000);
    assert_eq!(p.pool_mode, PoolMode::Session);
    assert_eq!(p.pool_size, 20);
    assert_eq!(p.auth_file, Path::new("/etc/pgwarden/users.txt"));
    assert_eq!(p.auth_type, AuthType::ScramSha256);
    assert_eq!(p.server_reset_query, "DISCARD ALL");
    assert_eq!(
        p.metrics_listen,
        "127.0.0.1:9930".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(p.pool_timeout, Duration::from_secs(30));
    assert_eq!(p.server_connect_timeout, Duration::from_secs(5));
    assert_eq!(p.failover_hold_timeout, Duration::from_secs(10));
    assert_eq!(p.server_idle_timeout, Duration::from_secs(600));
    assert_eq!(p.server_lifetime, Duration::from_secs(3600));
    assert_eq!(p.client_login_timeout, Duration::from_secs(60));
    assert_eq!(p.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(p.max_message_bytes, 1_073_741_823);
    assert!(p.tcp_keepalive);

    let h = HealthCheckConfig::default();
    assert_eq!(
        (h.period, h.timeout),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
    assert_eq!(
        (h.max_retries, h.retry_delay),
        (2, Duration::from_millis(500))
    );
    assert_eq!(
        (h.user.as_str(), h.database.as_str()),
        ("pgwarden", "postgres")
    );
    assert_eq!(h.password, None);

    assert_eq!(ReplicationCheckConfig::default().max_lag_bytes, 16_777_216);

    let f = FailoverConfig::default();
    assert_eq!(f.mode, FailoverMode::Builtin);
    assert_eq!(f.user, "postgres");
    assert_eq!(f.command_timeout, Duration::from_secs(60));

    let w = WatchdogConfig::default();
    assert!(!w.enabled);
    assert_eq!(w.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(w.priority, 1);
    assert_eq!(w.delegate_ip, None);
    assert_eq!(
        w.metrics_listen,
        "127.0.0.1:9932".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn typed_values_parse() {
    let config = Config::from_toml_str(&with(
        r#"
[[backends]]
name = "pg02"
host = "::1"
port = 5433
data_dir = "/u01/pg15/data"
weight = 0
allow_failover = false

[proxy]
pool_mode = "session"
auth_type = "md5"
server_idle_timeout = "0s"
pool_timeout = "1m 30s"

[failover]
mode = "command"
command = "/etc/pgwarden/failover.sh %d %H"

[watchdog]
enabled = true
peers = ["pg02.localnet:9000", "[fe80::2]:9000"]
delegate_ip = "192.168.122.99"
"#,
    ))
    .unwrap();
    assert_eq!(config.proxy.pool_mode, PoolMode::Session);
    assert_eq!(config.proxy.auth_type, AuthType::Md5);
    assert_eq!(config.proxy.server_idle_timeout, Duration::ZERO);
    assert_eq!(config.proxy.pool_timeout, Duration::from_secs(90));
    assert_eq!(config.failover.mode, FailoverMode::Command);
    assert_eq!(
        config.watchdog.delegate_ip,
        Some("192.168.122.99".parse().unwrap())
    );
    let pg02 = config.backend(1).unwrap();
    assert_eq!((pg02.id, pg02.name.as_str(), pg02.port), (1, "pg02", 5433));
    assert_eq!(pg02.addr(), "[::1]:5433");
    assert_eq!(config.backends[0].addr(), "pg01.localnet:5432");
    assert!(!pg02.allow_failover);
}

// === environment ===

#[test]
fn env_overrides_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "pgwarden.toml",
            &with("[proxy]\nlisten = \"0.0.0.0:5000\"\npool_size = 3"),
        )?;
        set_envs(
            jail,
            &[
                ("PGWARDEN_PROXY__LISTEN", "127.0.0.1:7000"),
                ("PGWARDEN_HEALTH_CHECK__PERIOD", "2s"),
                ("PGWARDEN_WATCHDOG__PEERS", "[\"pg02:9000\",\"pg03:9000\"]"),
                ("PGWARDEN_NODE__NAME", "pg09"),
                // Not a config key (no `__`): left alone rather than "unknown key".
                ("PGWARDEN_LOG", "debug"),
            ],
        );
        let config = Config::load(Path::new("pgwarden.toml")).unwrap();
        assert_eq!(
            config.proxy.listen,
            "127.0.0.1:7000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.proxy.pool_size, 3, "file value kept");
        assert_eq!(config.health_check.period, Duration::from_secs(2));
        assert_eq!(config.watchdog.peers, ["pg02:9000", "pg03:9000"]);
        assert_eq!(config.node.name, "pg09");
        Ok(())
    });
}

#[test]
fn env_values_stay_text_for_string_keys() {
    Jail::expect_with(|jail| {
        jail.create_file("pgwarden.toml", MINIMAL)?;
        set_envs(
            jail,
            &[
                ("PGWARDEN_HEALTH_CHECK__PASSWORD", "0123"),
                ("PGWARDEN_HEALTH_CHECK__USER", "true"),
                ("PGWARDEN_NODE__NAME", "42"),
                ("PGWARDEN_PROXY__TCP_KEEPALIVE", "false"),
                ("PGWARDEN_REPLICATION_CHECK__MAX_LAG_BYTES", "1024"),
            ],
        );
        let config = Config::load(Path::new("pgwarden.toml")).unwrap();
        assert_eq!(config.health_check.password.unwrap().expose(), "0123");
        assert_eq!(config.health_check.user, "true");
        assert_eq!(config.node.name, "42");
        assert!(!config.proxy.tcp_keepalive);
        assert_eq!(config.replication_check.max_lag_bytes, 1024);
        Ok(())
    });
}

#[test]
fn bad_password_value_is_not_quoted() {
    for (extra, key) in [
        (
            "[health_check]\npassword = 918273645",
            "health_check.password",
        ),
        (
            "[failover]\npassword = [\"x918273645\"]",
            "failover.password",
        ),
    ] {
        let msg = err_naming(&with(extra), key);
        assert!(!msg.contains("918273645"), "{msg}");
    }
    let msg = err_naming(&with("[proxy]\npassword = \"x\""), "proxy.password");
    assert!(msg.contains("unknown key"), "{msg}");
}

#[test]
fn env_errors_name_key_and_variable() {
    Jail::expect_with(|jail| {
        jail.create_file("pgwarden.toml", MINIMAL)?;
        jail.set_env("PGWARDEN_PROXY__POOL_SIZE", "-1");
        let msg = load_err("pgwarden.toml");
        assert!(msg.contains("invalid config: proxy.pool_size: "), "{msg}");
        assert!(
            msg.contains("from environment variable PGWARDEN_PROXY__POOL_SIZE"),
            "{msg}"
        );

        jail.set_env("PGWARDEN_PROXY__POOL_SIZE", "4");
        jail.set_env("PGWARDEN_PROXY__POOL_SISE", "4");
        let msg = load_err("pgwarden.toml");
        assert!(
            msg.contains("invalid config: proxy.pool_sise: unknown key"),
            "{msg}"
        );
        Ok(())
    });
}

#[test]
fn file_errors_name_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("pgwarden.toml", &with("[proxy]\nlisten = \"nowhere\""))?;
        let msg = load_err("pgwarden.toml");
        assert!(msg.starts_with("invalid config: proxy.listen: "), "{msg}");
        assert!(msg.contains("pgwarden.toml"), "{msg}");
        Ok(())
    });
}

#[test]
fn missing_file_is_an_error_naming_it() {
    Jail::expect_with(|_| {
        let err = Config::load(Path::new("/nonexistent/pgwarden.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/pgwarden.toml"),
            "{err}"
        );
        assert_eq!(err.key(), None);
        Ok(())
    });
}

// === errors name the key ===

#[test]
fn unknown_key_in_section() {
    let msg = err_naming(&with("[proxy]\npool_sise = 4"), "proxy.pool_sise");
    assert!(msg.contains("unknown key"), "{msg}");
    assert!(msg.contains("pool_size"), "lists the valid keys: {msg}");
}

#[test]
fn unknown_top_level_table() {
    err_naming(&with("[poxy]\nlisten = \"0.0.0.0:1\""), "poxy");
}

#[test]
fn unknown_key_in_backend() {
    err_naming(
        &with("[[backends]]\nhost = \"pg02\"\nhostname = \"pg02\""),
        "backends[1].hostname",
    );
}

#[test]
fn bad_duration() {
    refused_saying(&[(
        "[health_check]\nperiod = \"1 fortnight\"",
        "health_check.period",
        "unit",
    )]);
    refused(&[
        ("[health_check]\nperiod = 5", "health_check.period"),
        ("[proxy]\npool_timeout = \"0s\"", "proxy.pool_timeout"),
    ]);
}

#[test]
fn bad_socket_address() {
    refused(&[
        ("[proxy]\nlisten = \"0.0.0.0\"", "proxy.listen"),
        (
            "[monitor]\nmetrics_listen = \"localhost:9931\"",
            "monitor.metrics_listen",
        ),
        ("[watchdog]\nlisten = \"0.0.0.0:99999\"", "watchdog.listen"),
    ]);
}

#[test]
fn pool_size_zero_or_negative() {
    let msg = err_naming(&with("[proxy]\npool_size = 0"), "proxy.pool_size");
    assert_eq!(
        msg,
        "invalid config: proxy.pool_size: must be at least 1 (got 0)"
    );
    refused(&[
        ("[proxy]\npool_size = -5", "proxy.pool_size"),
        (
            "[proxy]\nmax_client_connections = 0",
            "proxy.max_client_connections",
        ),
        (
            "[health_check]\nmax_retries = -1",
            "health_check.max_retries",
        ),
    ]);
}

#[test]
fn missing_or_empty_backends() {
    let msg = err_naming("[node]\nname = \"pg01\"", "backends");
    assert!(msg.contains("at least one"), "{msg}");
    err_naming("backends = []\n[node]\nname = \"pg01\"", "backends");
}

#[test]
fn backend_errors() {
    refused(&[
        ("[[backends]]\nport = 5432", "backends[1].host"),
        (
            "[[backends]]\nhost = \"pg02\"\nport = 70000",
            "backends[1].port",
        ),
        (
            "[[backends]]\nhost = \"pg02\"\nport = 0",
            "backends[1].port",
        ),
        (
            "[[backends]]\nhost = \"pg02\"\nweight = -1",
            "backends[1].weight",
        ),
        ("[[backends]]\nhost = \"pg02:5432\"", "backends[1].host"),
        (
            "[[backends]]\nhost = \"pg02\"\nname = \"\"",
            "backends[1].name",
        ),
    ]);
    refused_saying(&[(
        "[[backends]]\nhost = \"pg02\"\nname = \"pg01.localnet:5432\"",
        "backends[1].name",
        "duplicate",
    )]);
    refused(&[(
        "[[backends]]\nhost = \"pg01.localnet\"\nname = \"x\"",
        "backends[1].host",
    )]);
}

#[test]
fn node_errors() {
    for (toml, key) in [
        ("[[backends]]\nhost = \"pg01\"", "node"),
        ("[node]\n[[backends]]\nhost = \"pg01\"", "node.name"),
        (
            "[node]\nname = \" \"\n[[backends]]\nhost = \"pg01\"",
            "node.name",
        ),
    ] {
        err_naming(toml, key);
    }
}

#[test]
fn enum_errors() {
    let msg = err_naming(
        &with("[proxy]\npool_mode = \"statement\""),
        "proxy.pool_mode",
    );
    assert!(msg.contains("\"session\", \"transaction\""), "{msg}");
    refused(&[
        ("[proxy]\nauth_type = \"trust\"", "proxy.auth_type"),
        ("[failover]\nmode = \"manual\"", "failover.mode"),
        (
            "[failover]\nsynchronous_mode = \"quorum\"",
            "failover.synchronous_mode",
        ),
    ]);
}

#[test]
fn synchronous_mode_is_read_and_needs_a_user_and_a_count() {
    let c = Config::from_toml_str(&with(
        "[failover]\nsynchronous_mode = \"strict\"\nsynchronous_count = 2",
    ))
    .unwrap();
    assert_eq!(c.failover.synchronous_mode, SynchronousMode::Strict);
    assert_eq!(c.failover.synchronous_count, 2);
    err_naming(
        &with("[failover]\nsynchronous_count = 0"),
        "failover.synchronous_count",
    );
    // Command mode sets synchronous_standby_names over SQL too.
    err_naming(
        &with(
            "[failover]\nmode = \"command\"\nuser = \"\"\ncommand = \"x\"\nsynchronous_mode = \"on\"",
        ),
        "failover.user",
    );
}

#[test]
fn command_mode_needs_a_command() {
    let msg = err_naming(&with("[failover]\nmode = \"command\""), "failover.command");
    assert!(msg.contains("failover.mode = \"command\""), "{msg}");
    err_naming(&with("[failover]\nuser = \"\""), "failover.user");
    // In command mode the builtin user is unused.
    Config::from_toml_str(&with(
        "[failover]\nmode = \"command\"\nuser = \"\"\ncommand = \"x\"",
    ))
    .unwrap();
}

#[test]
fn watchdog_errors() {
    refused(&[
        (
            "[watchdog]\npeers = [\"pg02:9000\", \"pg03\"]",
            "watchdog.peers[1]",
        ),
        (
            "[watchdog]\npeers = [\"pg02:9000\", \"pg02:9000\"]",
            "watchdog.peers[1]",
        ),
        (
            "[watchdog]\ndelegate_ip = \"192.168.1\"",
            "watchdog.delegate_ip",
        ),
    ]);
}

#[test]
fn toml_syntax_error() {
    let err = Config::from_toml_str("[node\nname = 1").unwrap_err();
    assert!(err.to_string().starts_with("invalid config: "), "{err}");
}

// === secrets ===

#[test]
fn world_readable_password_file_is_refused() {
    let (_dir, path) = secret_file("hc.pass", "s3cret\n", 0o644);
    let toml = with_password_file("[health_check]", &path);
    let err = Config::from_toml_str(&toml).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Secret { .. }), "{err:?}");
    assert!(msg.contains("health_check.password_file"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("0644"), "{msg}");

    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let config = Config::from_toml_str(&toml).unwrap();
    assert_eq!(config.health_check.password.unwrap().expose(), "s3cret");
}

#[test]
fn failover_password_file() {
    let (_dir, path) = secret_file("fo.pass", "pw\r\n", 0o640);
    let toml = with_password_file("[failover]", &path);
    let config = Config::from_toml_str(&toml).unwrap();
    assert_eq!(config.failover.password.unwrap().expose(), "pw");

    let missing = with("[failover]\npassword_file = \"/nonexistent/fo.pass\"");
    let msg = err_naming(&missing, "failover.password_file");
    assert!(msg.contains("/nonexistent/fo.pass"), "{msg}");
}

#[test]
fn password_and_password_file_together_are_refused() {
    let (_dir, path) = secret_file("p", "x", 0o600);
    for section in ["health_check", "failover"] {
        let toml = with_password_file(&format!("[{section}]\npassword = \"inline\""), &path);
        let msg = err_naming(&toml, &format!("{section}.password_file"));
        assert!(msg.contains("not both"), "{msg}");
    }
}

#[test]
fn debug_never_shows_passwords() {
    let (_dir, path) = secret_file("p", "file-secret-value", 0o600);
    let toml = with_password_file(
        "[health_check]\npassword = \"inline-secret-value\"\n[failover]",
        &path,
    );
    let config = Config::from_toml_str(&toml).unwrap();
    assert_eq!(
        config.health_check.password.as_ref().unwrap().expose(),
        "inline-secret-value"
    );
    let debug = format!("{config:?} {config:#?}");
    assert!(!debug.contains("secret-value"), "{debug}");
    assert!(debug.contains("***"));
}

// === the example file ===

#[test]
fn example_file_parses_and_documents_the_defaults() {
    let config = Config::from_toml_str(EXAMPLE).unwrap();
    assert_eq!(config.node.runtime_dir, Path::new(DEFAULT_RUNTIME_DIR));
    assert_eq!(config.node.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_default_sections(&config);

    // The first backend spells out every default but name and host.
    let first = config.backend(0).unwrap();
    let defaults = Config::from_toml_str(&format!(
        "[node]\nname = \"x\"\n[[backends]]\nname = {:?}\nhost = {:?}",
        first.name, first.host
    ))
    .unwrap();
    assert_eq!(first, &defaults.backends[0]);
    assert_eq!(config.backends.len(), 2);
}

/// The keys serde accepts in a table, read from the "unknown key" error.
fn accepted_keys(table_header: &str) -> Vec<String> {
    let toml = if table_header == "[node]" {
        MINIMAL.replace("[node]", "[node]\nzzz_not_a_key = 1")
    } else {
        format!("{MINIMAL}\n{table_header}\nzzz_not_a_key = 1\n")
    };
    let err = Figment::from(Toml::string(&toml))
        .extract::<RawConfig>()
        .unwrap_err();
    match err.kind {
        figment::error::Kind::UnknownField(_, expected) => {
            expected.iter().map(|s| (*s).to_owned()).collect()
        }
        other => panic!("{table_header}: {other}"),
    }
}

#[test]
fn example_file_documents_every_key() {
    let mut missing = Vec::new();
    for header in [
        "[node]",
        "[proxy]",
        "[monitor]",
        "[[backends]]\nhost = \"x\"",
        "[health_check]",
        "[replication_check]",
        "[failover]",
        "[watchdog]",
        "[server_tls]",
    ] {
        let table = header.lines().next().unwrap();
        assert!(EXAMPLE.contains(&format!("\n{table}\n")), "{table} missing");
        for key in accepted_keys(header) {
            let set = format!("\n{key} = ");
            let commented = format!("\n# {key} = ");
            if !EXAMPLE.contains(&set) && !EXAMPLE.contains(&commented) {
                missing.push(format!("{table} {key}"));
            }
        }
    }
    // Top-level tables, from an unknown top-level key.
    let err = Figment::from(Toml::string(&format!("zzz_not_a_key = 1\n{MINIMAL}")))
        .extract::<RawConfig>()
        .unwrap_err();
    let figment::error::Kind::UnknownField(_, tables) = err.kind else {
        panic!("{err}");
    };
    for table in tables {
        if !EXAMPLE.contains(&format!("\n[{table}]\n"))
            && !EXAMPLE.contains(&format!("\n[[{table}]]\n"))
        {
            missing.push(format!("[{table}]"));
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented in deploy/pgwarden.example.toml: {missing:?}"
    );
}

#[test]
fn watchdog_members_and_advertised_address() {
    let c = Config::from_toml_str(&with(
        "[watchdog]\nlisten = \"0.0.0.0:9000\"\npeers = [\"pg03:9000\", \"pg02:9000\"]\n",
    ))
    .unwrap();
    let name = c.node.name.clone();
    assert_eq!(c.watchdog.advertised(&name), format!("{name}:9000"));
    let mut expected = vec![
        "pg02:9000".to_owned(),
        "pg03:9000".to_owned(),
        format!("{name}:9000"),
    ];
    expected.sort();
    assert_eq!(c.watchdog.members(&name), expected);

    let c = Config::from_toml_str(&with(
        "[watchdog]\nlisten = \"10.0.0.1:9000\"\npeers = [\"10.0.0.2:9000\"]\n",
    ))
    .unwrap();
    assert_eq!(c.watchdog.advertised("x"), "10.0.0.1:9000");

    refused_saying(&[(
        "[watchdog]\nadvertise = \"10.0.0.1:9000\"\npeers = [\"10.0.0.1:9000\"]\n",
        "watchdog.peers[0]",
        "own watchdog.advertise",
    )]);
}

#[test]
fn transaction_pooling_and_its_statement_cache_are_configurable() {
    let c = Config::from_toml_str(&with(
        "[proxy]\npool_mode = \"transaction\"\nmax_prepared_statements = 0\n",
    ))
    .unwrap();
    assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
    assert_eq!(c.proxy.max_prepared_statements, 0);
    let e = err_naming(
        &with("[proxy]\nmax_prepared_statements = -1\n"),
        "proxy.max_prepared_statements",
    );
    assert!(!e.is_empty());
}

#[test]
fn the_proxy_runs_on_one_thread_unless_told_otherwise() {
    let c = Config::from_toml_str(&with("")).unwrap();
    assert_eq!(c.proxy.worker_threads, 1);
    let c = Config::from_toml_str(&with("[proxy]\nworker_threads = 4\n")).unwrap();
    assert_eq!(c.proxy.worker_threads, 4);
    refused_saying(&[(
        "[proxy]\nworker_threads = 0\n",
        "proxy.worker_threads",
        "at least 1",
    )]);
}

#[test]
fn tls_keys_need_their_files_and_name_themselves() {
    let c = Config::from_toml_str(&with("")).unwrap();
    assert_eq!(c.proxy.client_tls_mode, ClientTlsMode::Disable);
    assert_eq!(c.server_tls.mode, ServerTlsMode::Prefer);
    refused_saying(&[
        (
            "[proxy]\nclient_tls_mode = \"require\"\n",
            "proxy.client_tls_cert_file",
            "required when proxy.client_tls_mode is \"require\"",
        ),
        (
            "[server_tls]\nmode = \"verify-full\"\n",
            "server_tls.ca_file",
            "verify-full",
        ),
    ]);
    refused(&[
        (
            "[proxy]\nclient_tls_mode = \"allow\"\nclient_tls_cert_file = \"/c\"\n",
            "proxy.client_tls_key_file",
        ),
        (
            "[proxy]\nclient_tls_mode = \"sometimes\"\n",
            "proxy.client_tls_mode",
        ),
        ("[server_tls]\ncert_file = \"/c\"\n", "server_tls.key_file"),
        ("[server_tls]\nmode = \"on\"\n", "server_tls.mode"),
    ]);
    let c = Config::from_toml_str(&with(
        "[server_tls]\nmode = \"verify-ca\"\nca_file = \"/ca.pem\"\n",
    ))
    .unwrap();
    assert_eq!(c.server_tls.mode, ServerTlsMode::VerifyCa);
    assert!(c.server_tls.mode.required());
}

#[test]
fn watchdog_tls_and_the_admin_api_need_all_their_files() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(
        c.admin.listen, None,
        "the remote admin API is off by default"
    );
    assert!(!c.watchdog.tls());
    for (missing, given) in [
        (
            "watchdog.tls_key_file",
            "tls_cert_file = \"/c\"\ntls_ca_file = \"/ca\"\n",
        ),
        (
            "watchdog.tls_ca_file",
            "tls_cert_file = \"/c\"\ntls_key_file = \"/k\"\n",
        ),
        ("watchdog.tls_cert_file", "tls_ca_file = \"/ca\"\n"),
    ] {
        err_naming(&with(&format!("[watchdog]\n{given}")), missing);
    }
    let c = Config::from_toml_str(&with(
        "[watchdog]\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ntls_ca_file = \"/ca\"\n",
    ))
    .unwrap();
    assert!(c.watchdog.tls());

    refused_saying(&[(
        "[admin]\nlisten = \"0.0.0.0:9898\"\n",
        "admin.cert_file",
        "mutual TLS",
    )]);
    refused(&[
        (
            "[admin]\nlisten = \"0.0.0.0:9898\"\ncert_file = \"/c\"\nkey_file = \"/k\"\n",
            "admin.client_ca_file",
        ),
        ("[admin]\nlisten = \"9898\"\n", "admin.listen"),
    ]);
    let c = Config::from_toml_str(&with(
        "[admin]\nlisten = \"0.0.0.0:9898\"\ncert_file = \"/c\"\nkey_file = \"/k\"\nclient_ca_file = \"/ca\"\n",
    ))
    .unwrap();
    assert_eq!(c.admin.listen, Some("0.0.0.0:9898".parse().unwrap()));
}

#[test]
fn a_config_every_user_can_read_may_not_hold_a_password_inline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgwarden.toml");
    fs::write(&path, with("[health_check]\npassword = \"hunter2\"\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Config::load(&path).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.key(), Some("health_check.password"), "{msg}");
    assert!(
        msg.contains("0644") && msg.contains("password_file"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    // Owner and group only: fine.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(Config::load(&path).is_ok());
    // No inline password: any mode.
    fs::write(&path, with("[health_check]\nuser = \"pgwarden\"\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(Config::load(&path).is_ok());
    // failover.password likewise.
    fs::write(&path, with("[failover]\npassword = \"pw\"\n")).unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.key(), Some("failover.password"), "{err}");
}

#[test]
fn load_balancing_keys_parse_and_default_to_off() {
    let c = Config::from_toml_str(MINIMAL).expect("minimal config");
    assert_eq!(c.proxy.load_balance, crate::LoadBalance::Off);
    assert!(c.proxy.read_your_writes);
    assert!(c.proxy.read_only_functions.is_empty());
    assert_eq!(
        c.replication_check.max_lag_time,
        std::time::Duration::from_secs(10)
    );
    let c = Config::from_toml_str(&with(
        "[proxy]\npool_mode = \"transaction\"\nload_balance = \"statement\"\nread_your_writes = false\nread_only_functions = [\"my_report\"]\n[replication_check]\nmax_lag_time = \"2s\"",
    ))
    .expect("load balancing config");
    assert_eq!(c.proxy.load_balance, crate::LoadBalance::Statement);
    assert!(!c.proxy.read_your_writes);
    assert_eq!(c.proxy.read_only_functions, vec!["my_report".to_owned()]);
    assert_eq!(
        c.replication_check.max_lag_time,
        std::time::Duration::from_secs(2)
    );
    assert_eq!(c.proxy.read_only_listen, None);
    let c = Config::from_toml_str(&with(
        "[proxy]\npool_mode = \"transaction\"\nread_only_listen = \"127.0.0.1:9998\"",
    ))
    .expect("read-only listener config");
    assert_eq!(
        c.proxy.read_only_listen,
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9998)))
    );
}

#[test]
fn load_balancing_errors_name_their_key() {
    refused_saying(&[
        // Session pool mode keeps one server per client: it cannot balance.
        (
            "[proxy]\nload_balance = \"session\"",
            "proxy.load_balance",
            "pool_mode",
        ),
        (
            "[proxy]\nread_only_listen = \"127.0.0.1:9998\"",
            "proxy.read_only_listen",
            "pool_mode",
        ),
    ]);
    refused(&[
        ("[proxy]\nload_balance = \"reads\"", "proxy.load_balance"),
        (
            "[proxy]\npool_mode = \"transaction\"\nread_only_functions = [\"f()\"]",
            "proxy.read_only_functions[0]",
        ),
        (
            "[replication_check]\nmax_lag_time = \"0s\"",
            "replication_check.max_lag_time",
        ),
        (
            "[proxy]\npool_mode = \"transaction\"\nlisten = \"127.0.0.1:9999\"\nread_only_listen = \"127.0.0.1:9999\"",
            "proxy.read_only_listen",
        ),
        (
            "[proxy]\npool_mode = \"transaction\"\nread_only_listen = \"nowhere\"",
            "proxy.read_only_listen",
        ),
    ]);
}

#[test]
fn the_status_page_is_off_unless_monitor_http_listen_names_an_address() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.monitor.http_listen, None);
    let c = Config::from_toml_str(&with("[monitor]\nhttp_listen = \"\"\n")).unwrap();
    assert_eq!(c.monitor.http_listen, None);
    let c = Config::from_toml_str(&with("[monitor]\nhttp_listen = \"127.0.0.1:9933\"\n")).unwrap();
    assert_eq!(
        c.monitor.http_listen,
        Some("127.0.0.1:9933".parse().unwrap())
    );
    refused(&[
        ("[monitor]\nhttp_listen = \"9933\"\n", "monitor.http_listen"),
        (
            "[monitor]\nmetrics_listen = \"0.0.0.0:9931\"\nhttp_listen = \"127.0.0.1:9931\"\n",
            "monitor.http_listen",
        ),
    ]);
    let c = Config::from_toml_str(&with(
        "[monitor]\nmetrics_listen = \"0.0.0.0:9931\"\nhttp_listen = \"0.0.0.0:9931\"\n",
    ))
    .unwrap();
    assert_eq!(c.monitor.http_listen, Some(c.monitor.metrics_listen));
}
