//! Command mode: pgpool-II's placeholders expanded, and end to end, a hook
//! script receiving them as arguments exactly as `failover.command` would
//! pass them.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use pgwarden_monitor::actions::ActionError;
use pgwarden_monitor::actions::Target;
use pgwarden_monitor::actions::command::{Placeholders, expand, run_hook};

fn target(id: usize, host: &str, port: u16, data_dir: &str) -> Target {
    Target {
        id,
        name: format!("pg{id}"),
        host: host.to_owned(),
        port,
        data_dir: PathBuf::from(data_dir),
    }
}

/// pg2 the node, pg1 the new main, pg0 the old primary and old main.
fn placeholders() -> Placeholders {
    Placeholders {
        node: target(2, "pg2.localnet", 5434, "/data/pg2"),
        new_main: target(1, "pg1.localnet", 5433, "/data/pg1"),
        old_main_id: 0,
        old_primary: target(0, "pg0.localnet", 5432, "/data/pg0"),
    }
}

#[test]
fn expands_every_placeholder() {
    assert_eq!(
        expand(
            "f.sh %d %h %p %D %m %H %M %P %r %R %N %S %%",
            &placeholders()
        ),
        "f.sh 2 pg2.localnet 5434 /data/pg2 1 pg1.localnet 0 0 5433 /data/pg1 \
         pg0.localnet 5432 %"
    );
}

#[test]
fn keeps_unknown_and_escaped_percents() {
    let p = placeholders();
    assert_eq!(expand("%x %d%%d %%%d", &p), "%x 2%d %2");
    assert_eq!(expand("50% done %", &p), "50% done %");
    assert_eq!(expand("%é%", &p), "%é%");
    assert_eq!(expand("", &p), "");
    assert_eq!(expand("no placeholders", &p), "no placeholders");
}

/// A script that writes each of its arguments on a line of `args` next to
/// itself, and says how many it got.
fn recording_script(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    let script = dir.join("record.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         out=\"$(dirname \"$0\")/args\"\n\
         : > \"$out\"\n\
         for arg in \"$@\"; do printf '%s\\n' \"$arg\" >> \"$out\"; done\n\
         echo \"recorded $# arguments\"\n",
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

#[tokio::test]
async fn failover_command_gets_every_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let script = recording_script(dir.path()).unwrap();
    // Every value distinct, so a swapped placeholder shows.
    let p = Placeholders {
        node: target(2, "10.213.0.12", 5434, "/u01/pg15/data2"),
        new_main: target(1, "10.213.0.11", 5433, "/u01/pg15/data1"),
        old_main_id: 4,
        old_primary: target(0, "10.213.0.10", 5432, "/u01/pg15/data0"),
    };
    // The placeholders, in groups, and the arguments each group must become.
    let groups: [(&str, &[&str]); 8] = [
        // The failed node's id, host, port and data dir.
        (
            "%d %h %p %D",
            &["2", "10.213.0.12", "5434", "/u01/pg15/data2"],
        ),
        // The new main's id and host.
        ("%m %H", &["1", "10.213.0.11"]),
        // The old main id, then the old primary id.
        ("%M", &["4"]),
        ("%P", &["0"]),
        // The new main's port and data dir.
        ("%r %R", &["5433", "/u01/pg15/data1"]),
        // The old primary's host and port.
        ("%N %S", &["10.213.0.10", "5432"]),
        // A literal %, and an unknown placeholder kept.
        ("%%", &["%"]),
        ("%x", &["%x"]),
    ];
    let placeholders: Vec<&str> = groups.iter().map(|(p, _)| *p).collect();
    let command = expand(
        &format!("{} {}", script.display(), placeholders.join(" ")),
        &p,
    );
    let out = run_hook("failover.command", &command, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.status, 0);
    assert_eq!(out.output, "recorded 14 arguments\n");
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let want: Vec<&str> = groups.iter().flat_map(|(_, a)| a.iter().copied()).collect();
    assert_eq!(args, want);
}

#[tokio::test]
async fn failing_script_reports_status_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fail.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"promoting node $1\"\necho \"ssh: connect to host $2: No route to host\" >&2\nexit 255\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Placeholders {
        node: target(0, "10.213.0.10", 5432, "/data"),
        new_main: target(1, "10.213.0.11", 5432, "/data"),
        old_main_id: 0,
        old_primary: target(0, "10.213.0.10", 5432, "/data"),
    };
    let command = expand(&format!("{} %m %H", script.display()), &p);
    let err = run_hook("failover.command", &command, Duration::from_secs(10))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, ActionError::HookFailed { status, .. } if status == "exit status 255"),
        "{err:?}"
    );
    assert!(message.contains("promoting node 1"), "{message}");
    assert!(
        message.contains("10.213.0.11: No route to host"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
}
