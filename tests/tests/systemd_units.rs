//! The systemd units of deploy/systemd, as the Ansible role installs them:
//! read as systemd reads them (sections, `Key=value`, `#`/`;` comments),
//! and checked with `systemd-analyze verify` where systemd is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgwarden_testkit::run_ok;

const UNITS: [&str; 3] = ["pgwarden-watchdog", "pgwarden-monitor", "pgwarden-proxy"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_path(name: &str) -> PathBuf {
    root()
        .join("deploy/systemd")
        .join(format!("{name}.service"))
}

/// Section -> key -> every value assigned, in order.
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The small part of systemd's unit syntax these files use: no line
/// continuations, no quoting, no drop-ins.
fn parse_unit(text: &str, path: &Path) -> Unit {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "{}:{}: line continuations are not expected",
            path.display(),
            n + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_owned());
            unit.entry(name.to_owned()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: not Key=value: {line}", path.display(), n + 1));
        let section = section
            .clone()
            .unwrap_or_else(|| panic!("{}:{}: a key before any section", path.display(), n + 1));
        unit.entry(section)
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

fn read_unit(name: &str) -> Unit {
    let path = unit_path(name);
    let text = std::fs::read_to_string(&path).unwrap();
    parse_unit(&text, &path)
}

/// The one value of `key` in `[section]`, failing on none or several.
fn value<'u>(unit: &'u Unit, name: &str, section: &str, key: &str) -> &'u str {
    let values = unit
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("{name}.service: no {key}= in [{section}]"));
    assert_eq!(
        values.len(),
        1,
        "{name}.service: {key}= set {} times in [{section}]",
        values.len()
    );
    &values[0]
}

/// The time span `key` in `[Service]` ([`value`]), failing on one that
/// is not a time span.
fn service_seconds(unit: &Unit, name: &str, key: &str) -> Duration {
    let v = value(unit, name, "Service", key);
    humantime_like(v).unwrap_or_else(|| panic!("{name}.service: {key}={v} is not a time span"))
}

/// systemd time spans as these units write them: "1s", "30s", "2min", "500ms", or bare seconds.
fn humantime_like(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit.trim() {
        "" | "s" | "sec" => Some(Duration::from_secs(n)),
        "ms" | "msec" => Some(Duration::from_millis(n)),
        "min" | "m" => Some(Duration::from_secs(60 * n)),
        _ => None,
    }
}

/// Issue 7, defect 7: after 5 failed starts in 10 s systemd gave up on a
/// daemon for good ("Start request repeated too quickly"), even once the
/// cause was gone. Every unit must retry forever, backing off.
#[test]
fn units_restart_forever_with_a_backoff_and_no_start_limit() {
    for name in UNITS {
        let unit = read_unit(name);
        assert_eq!(
            value(&unit, name, "Unit", "StartLimitIntervalSec"),
            "0",
            "{name}.service: StartLimitIntervalSec=0 belongs in [Unit]"
        );
        for misplaced in [
            "StartLimitIntervalSec",
            "StartLimitInterval",
            "StartLimitBurst",
        ] {
            assert!(
                !unit["Service"].contains_key(misplaced),
                "{name}.service: {misplaced}= in [Service]"
            );
        }
        assert!(
            !unit["Unit"].contains_key("StartLimitBurst"),
            "{name}.service: StartLimitBurst= would bring the limit back"
        );
        assert_eq!(value(&unit, name, "Service", "Restart"), "always", "{name}");
        let first = service_seconds(&unit, name, "RestartSec");
        assert_eq!(
            first,
            Duration::from_secs(1),
            "{name}: the first restart after 1 s"
        );
        let steps: u32 = value(&unit, name, "Service", "RestartSteps")
            .parse()
            .unwrap_or_else(|e| panic!("{name}.service: RestartSteps=: {e}"));
        assert!(
            steps >= 1,
            "{name}.service: RestartSteps={steps} does not back off"
        );
        let most = service_seconds(&unit, name, "RestartMaxDelaySec");
        assert!(
            most > first && most <= Duration::from_secs(120),
            "{name}.service: RestartMaxDelaySec={most:?} must lie above RestartSec and not leave a node down for minutes"
        );
    }
    verify_with_systemd_analyze();
}

/// Issue 12, item 1: the daemons say when they are ready and alive (see
/// `systemd_notify`), so the units wait for READY=1, accept it from the
/// main process only (the watchdog's VIP guard is a child), and restart a
/// daemon whose main loop stops pinging; and they stay sandboxed
/// (`systemd-analyze security` exposure 8.5, 8.6 and 6.4 before the
/// hardening, at most 2.5 since).
#[test]
fn units_wait_for_readiness_restart_a_stuck_daemon_and_stay_sandboxed() {
    for name in UNITS {
        let unit = read_unit(name);
        assert_eq!(value(&unit, name, "Service", "Type"), "notify", "{name}");
        assert_eq!(
            value(&unit, name, "Service", "NotifyAccess"),
            "main",
            "{name}"
        );
        let watchdog = service_seconds(&unit, name, "WatchdogSec");
        // Longer than the longest wait inside a daemon's loop (a proposal
        // to the watchdogs, 10 s), short enough to matter.
        assert!(
            (Duration::from_secs(15)..=Duration::from_secs(120)).contains(&watchdog),
            "{name}.service: WatchdogSec={watchdog:?}"
        );
    }
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_path("pgwarden-proxy"))
        .output()
    else {
        eprintln!(
            "systemd-analyze not installed: the sandbox's exposure not measured (the checks above ran)"
        );
        return;
    };
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--offline") {
        eprintln!(
            "systemd-analyze before 250 has no --offline: the sandbox's exposure not measured"
        );
        return;
    }
    for name in UNITS {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit_path(name))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name}.service: no exposure level in systemd-analyze security: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("{name}.service: exposure {exposure}");
        assert!(
            exposure <= 2.5,
            "{name}.service: exposure {exposure}:\n{text}"
        );
    }
}

/// Issue 12, item 1: `pgwarden.target` groups the node's daemons (each
/// joins it when enabled and follows its stop and restart), and the
/// sysusers.d file creates the user the units run as.
#[test]
fn the_target_groups_the_daemons_and_sysusers_creates_their_user() {
    let target = parse_unit(
        &std::fs::read_to_string(root().join("deploy/systemd/pgwarden.target")).unwrap(),
        &root().join("deploy/systemd/pgwarden.target"),
    );
    assert_eq!(
        value(&target, "pgwarden", "Install", "WantedBy"),
        "multi-user.target"
    );
    assert!(
        !target["Unit"].contains_key("Wants") && !target["Unit"].contains_key("Requires"),
        "the target must not pull in a daemon that is not enabled (the watchdog without watchdog.enabled)"
    );
    for name in UNITS {
        let unit = read_unit(name);
        assert_eq!(
            value(&unit, name, "Unit", "PartOf"),
            "pgwarden.target",
            "{name}"
        );
        let wanted: Vec<&str> = value(&unit, name, "Install", "WantedBy")
            .split_whitespace()
            .collect();
        assert!(
            wanted.contains(&"pgwarden.target") && wanted.contains(&"multi-user.target"),
            "{name}.service: WantedBy={wanted:?}"
        );
        assert_eq!(value(&unit, name, "Service", "User"), "pgwarden", "{name}");
    }
    let Ok(sysusers) = Command::new("systemd-sysusers").arg("--version").output() else {
        eprintln!(
            "systemd-sysusers not installed: the sysusers.d file not applied (the checks above ran)"
        );
        return;
    };
    assert!(sysusers.status.success());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    run_ok(
        "systemd-sysusers",
        Command::new("systemd-sysusers")
            .arg("--root")
            .arg(dir.path())
            .arg(root().join("deploy/systemd/pgwarden.sysusers")),
    );
    let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("pgwarden:"))
        .unwrap_or_else(|| panic!("no pgwarden user: {passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[5], "/var/lib/pgwarden", "{line}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{line}");
    let group = std::fs::read_to_string(dir.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("pgwarden:")), "{group}");
}

/// `systemd-analyze verify` on copies of the units whose ExecStart= points
/// at stand-in executables (the real ones need not be installed here). Any
/// complaint fails, except the keys systemd < 254 does not know yet (the
/// units document that they are ignored there).
fn verify_with_systemd_analyze() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "systemd-analyze not installed: `systemd-analyze verify` not run (the unit checks above ran)"
        );
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let mut paths = Vec::new();
    for name in UNITS {
        let stub = bin.join(name);
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = std::fs::read_to_string(unit_path(name)).unwrap();
        let from = format!("ExecStart=/usr/bin/{name} ");
        assert!(text.contains(&from), "{name}.service: no {from}");
        let text = text.replace(&from, &format!("ExecStart={} ", stub.display()));
        let path = dir.path().join(format!("{name}.service"));
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let target = dir.path().join("pgwarden.target");
    std::fs::copy(root().join("deploy/systemd/pgwarden.target"), &target).unwrap();
    paths.push(target);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        // Other packages' units on this machine (pgpool2's, say) are not ours.
        .filter(|l| !l.starts_with("/lib/systemd/") && !l.starts_with("/usr/lib/systemd/"))
        .filter(|l| {
            let too_new = l.contains("Unknown key")
                && (l.contains("'RestartSteps'") || l.contains("'RestartMaxDelaySec'"));
            !(too_new && major < 254)
        })
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify (systemd {major}) on the units: {}\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("systemd-analyze verify (systemd {major}): the three units and the target pass");
}

/// The role must install these files as they are: a copy of
/// deploy/systemd/<unit>.service for each of the three, and a drop-in
/// that sets ExecStart= only, so the restart policy above is what runs.
#[test]
fn the_ansible_role_installs_the_units_unchanged() {
    let role = root().join("deploy/ansible/roles/pgwarden");
    let vars = std::fs::read_to_string(role.join("vars/main.yml")).unwrap();
    let services = vars
        .split("\npgwarden_services:\n")
        .nth(1)
        .expect("pgwarden_services in vars/main.yml");
    let listed: Vec<&str> = services
        .lines()
        .map_while(|l| l.trim().strip_prefix("- "))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let mut expected = UNITS.to_vec();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "pgwarden_services in vars/main.yml");

    let tasks = std::fs::read_to_string(role.join("tasks/service.yml")).unwrap();
    let install = tasks
        .split("\n- name: ")
        .find(|t| t.starts_with("Install the systemd units"))
        .expect("an 'Install the systemd units' task");
    assert!(
        install.contains("ansible.builtin.copy:")
            && install
                .contains("src: \"{{ pgwarden_source_dir }}/deploy/systemd/{{ item }}.service\"")
            && install.contains("dest: /etc/systemd/system/{{ item }}.service")
            && install.contains("loop: \"{{ pgwarden_services }}\""),
        "the units are not copied as they are:\n{install}"
    );
    assert!(
        tasks.contains("src: \"{{ pgwarden_source_dir }}/deploy/systemd/pgwarden.target\"")
            && tasks.contains("dest: /etc/systemd/system/pgwarden.target"),
        "the role does not install pgwarden.target"
    );
    // Nothing else in the role edits a unit, and the one drop-in only
    // repoints ExecStart=.
    for dir in ["tasks", "handlers"] {
        for entry in std::fs::read_dir(role.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for editing in [
                "lineinfile",
                "ini_file",
                "blockinfile",
                "ansible.builtin.replace",
            ] {
                assert!(
                    !text.contains(editing),
                    "{}: {editing} may change an installed unit",
                    path.display()
                );
            }
        }
    }
    let dropin = std::fs::read_to_string(role.join("templates/bin-dir.conf.j2")).unwrap();
    let keys: Vec<&str> = dropin
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("{%"))
        .collect();
    assert_eq!(keys.first(), Some(&"[Service]"), "{dropin}");
    assert!(
        keys.iter().skip(1).all(|l| l.starts_with("ExecStart=")),
        "the drop-in sets more than ExecStart=: {keys:?}"
    );
}

#[test]
fn the_unit_parser_reads_sections_and_comments() {
    let unit = parse_unit(
        "# c\n[Unit]\nA=1\n; c\n[Service]\nB = x y\nB=z\n",
        Path::new("t"),
    );
    assert_eq!(unit["Unit"]["A"], ["1"]);
    assert_eq!(unit["Service"]["B"], ["x y", "z"]);
    assert_eq!(humantime_like("30s"), Some(Duration::from_secs(30)));
    assert_eq!(humantime_like("2min"), Some(Duration::from_secs(120)));
    assert_eq!(humantime_like("1x"), None);
}
