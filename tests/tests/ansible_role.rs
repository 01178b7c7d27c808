//! The Ansible role's pure part: which part of pgwarden.toml each daemon
//! reads (`deploy/ansible/roles/pgwarden/filter_plugins/pgwarden_config.py`).
//! The role restarts a daemon only when its part changed, so a key missing
//! from a daemon's view is a change the role would not apply until some
//! other change restarts it.
//!
//! Runs the plugin with python3 (as Ansible runs it, on the control machine).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::process::Command;

use pgwarden_testkit::run_ok;

const DAEMONS: [&str; 3] = ["pgwarden-watchdog", "pgwarden-monitor", "pgwarden-proxy"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn plugin_dir() -> PathBuf {
    root().join("deploy/ansible/roles/pgwarden/filter_plugins")
}

/// Runs `script` with the plugin importable, `input` on stdin; its stdout.
fn python(script: &str, input: &str) -> String {
    let mut stdin = tempfile::tempfile().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.rewind().unwrap();
    let out = run_ok(
        "python3 (the role's filter plugin runs in Ansible's Python)",
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .env("PYTHONPATH", plugin_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(stdin),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Each daemon's digest of `config`.
fn views(config: &str) -> BTreeMap<String, String> {
    let out = python(
        "import json, sys\n\
         from pgwarden_config import pgwarden_config_view as v\n\
         text = sys.stdin.read()\n\
         print(json.dumps({d: v(text, d) for d in ['pgwarden-watchdog', 'pgwarden-monitor', 'pgwarden-proxy']}))",
        config,
    );
    serde_json::from_str(&out).unwrap()
}

/// The daemons whose view differs between `a` and `b`.
fn restarted(a: &str, b: &str) -> Vec<&'static str> {
    assert_ne!(a, b, "the edit changed nothing");
    let (va, vb) = (views(a), views(b));
    DAEMONS.into_iter().filter(|d| va[*d] != vb[*d]).collect()
}

fn example() -> String {
    std::fs::read_to_string(root().join("deploy/pgwarden.example.toml")).unwrap()
}

/// `text` with the first line that starts with `key =` after the header
/// `section` replaced by `line`.
fn set(text: &str, section: &str, key: &str, line: &str) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    let mut done = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            inside = t == section;
        }
        if inside && !done && t.starts_with(&format!("{key} =")) {
            out.push(line.to_owned());
            done = true;
        } else {
            out.push(l.to_owned());
        }
    }
    assert!(done, "no {key} in {section}");
    out.join("\n") + "\n"
}

#[test]
fn a_config_change_restarts_only_the_daemons_that_read_it() {
    let base = example();
    let cases: [(&str, String, &[&str]); 9] = [
        (
            "proxy.max_client_connections",
            set(
                &base,
                "[proxy]",
                "max_client_connections",
                "max_client_connections = 1001",
            ),
            &["pgwarden-proxy"],
        ),
        (
            "watchdog.metrics_listen",
            set(
                &base,
                "[watchdog]",
                "metrics_listen",
                "metrics_listen = \"127.0.0.1:9933\"",
            ),
            &["pgwarden-watchdog"],
        ),
        (
            "watchdog.enabled",
            set(&base, "[watchdog]", "enabled", "enabled = true"),
            &DAEMONS,
        ),
        (
            "failover.mode",
            set(&base, "[failover]", "mode", "mode = \"command\""),
            &["pgwarden-monitor"],
        ),
        (
            "health_check.period",
            set(&base, "[health_check]", "period", "period = \"2s\""),
            &["pgwarden-monitor", "pgwarden-proxy"],
        ),
        (
            "node.name",
            set(&base, "[node]", "name", "name = \"pg09\""),
            &DAEMONS,
        ),
        (
            "a backend's port",
            set(&base, "[[backends]]", "port", "port = 5433"),
            &["pgwarden-monitor", "pgwarden-proxy"],
        ),
        (
            "a section the plugin does not know",
            format!("{base}\n[future]\nkey = 1\n"),
            &DAEMONS,
        ),
        (
            "an array over several lines in [watchdog]",
            set(
                &base,
                "[watchdog]",
                "peers",
                "peers = [\n  \"10.0.0.2:9000\",\n  \"10.0.0.3:9000\",\n]",
            ),
            &["pgwarden-watchdog"],
        ),
    ];
    for (what, changed, expected) in cases {
        assert_eq!(restarted(&base, &changed), expected, "changing {what}");
    }
    // Comments, blank lines and indentation restart nothing.
    let cosmetic = base.replace("\n[proxy]\n", "\n\n# the proxy\n[proxy]\n");
    assert_eq!(views(&base), views(&cosmetic));
}

/// The sections (and, for a section a daemon reads one key of, the keys)
/// each daemon's settings.rs reads from the parsed config `c`.
fn read_by(daemon: &str) -> BTreeSet<String> {
    let krate = daemon.trim_start_matches("pgwarden-");
    let text =
        std::fs::read_to_string(root().join(format!("crates/{krate}/src/settings.rs"))).unwrap();
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("c.") {
        if text[..i]
            .chars()
            .next_back()
            .is_some_and(|p| p.is_alphanumeric() || p == '_')
        {
            continue;
        }
        let path: String = text[i + 2..]
            .chars()
            .take_while(|ch| ch.is_ascii_lowercase() || *ch == '_' || *ch == '.')
            .collect();
        let mut parts = path.split('.').filter(|p| !p.is_empty());
        if let Some(section) = parts.next() {
            match parts.next() {
                Some(key) => found.insert(format!("{section}.{key}")),
                None => found.insert(section.to_owned()),
            };
        }
    }
    found
}

#[test]
fn each_daemons_view_covers_what_its_settings_read() {
    let out = python(
        "import json\n\
         from pgwarden_config import VIEWS, KNOWN\n\
         print(json.dumps({'views': {d: sorted(v) for d, v in VIEWS.items()}, 'known': sorted(KNOWN)}))",
        "",
    );
    let plugin: serde_json::Value = serde_json::from_str(&out).unwrap();
    let known: BTreeSet<String> = plugin["known"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    for daemon in DAEMONS {
        let view: BTreeSet<String> = plugin["views"][daemon]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        let reads = read_by(daemon);
        assert!(
            reads.iter().any(|r| r.starts_with("node")),
            "{daemon}: found nothing its settings read ({reads:?}): the scan is broken"
        );
        for r in &reads {
            let section = r.split('.').next().unwrap();
            if !known.contains(section) {
                // Not a config section (a local variable named c?): the
                // plugin counts unknown sections for everyone anyway.
                continue;
            }
            assert!(
                view.contains(section) || view.contains(r.as_str()),
                "{daemon}'s settings read {r}, which its view in pgwarden_config.py leaves out: \
                 the role would not restart it when that changes"
            );
        }
    }
}
