//! Command mode end to end: a hook script receives pgpool-II's placeholders
//! as arguments, exactly as `failover.command` would pass them.

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
    let command = expand(
        &format!(
            "{} %d %h %p %D %m %H %M %P %r %R %N %S %% %x",
            script.display()
        ),
        &p,
    );
    let out = run_hook("failover.command", &command, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.status, 0);
    assert_eq!(out.output, "recorded 14 arguments\n");
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args,
        [
            "2",               // %d failed node id
            "10.213.0.12",     // %h failed node host
            "5434",            // %p failed node port
            "/u01/pg15/data2", // %D failed node data dir
            "1",               // %m new main id
            "10.213.0.11",     // %H new main host
            "4",               // %M old main id
            "0",               // %P old primary id
            "5433",            // %r new main port
            "/u01/pg15/data1", // %R new main data dir
            "10.213.0.10",     // %N old primary host
            "5432",            // %S old primary port
            "%",               // %%
            "%x",              // unknown, kept
        ]
    );
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
