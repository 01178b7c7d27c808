//! The Debian package (`deploy/deb/build.sh`), built from the binaries the
//! tests run and taken apart: what an operator gets with `apt install
//! ./pgwarden_*.deb` (issue 12, item 2).

use std::path::{Path, PathBuf};
use std::process::Command;

use pgwarden_testkit::{run_ok, workspace_bin};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd`, which must succeed: its stdout.
fn run(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    String::from_utf8(run_ok(&what, cmd).stdout).unwrap()
}

#[test]
fn the_package_holds_stripped_binaries_the_units_and_what_they_need() {
    let bin_dir = workspace_bin("pgwarden-proxy")
        .parent()
        .unwrap()
        .to_path_buf();
    let out = tempfile::tempdir().unwrap();
    let deb = run(Command::new(root().join("deploy/deb/build.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .args(["--compress", "none"]));
    let deb = PathBuf::from(deb.trim());
    assert!(deb.exists(), "{}", deb.display());

    let info = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    for field in ["Package: pgwarden", "Version: 0.1.0", "Depends: libc6"] {
        assert!(info.contains(field), "no {field}: {info}");
    }

    let x = out.path().join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    for b in [
        "pgwarden-proxy",
        "pgwarden-monitor",
        "pgwarden-watchdog",
        "pgwardenctl",
    ] {
        let path = x.join("usr/bin").join(b);
        let sections = run(Command::new("readelf").arg("-S").arg(&path));
        assert!(
            !sections.contains(".debug_info") && !sections.contains(".symtab"),
            "{b} is not stripped"
        );
        let version = run(Command::new(&path).arg("--version"));
        assert!(version.contains(b), "{b} --version: {version}");
    }
    // Each unit starts a binary the package holds, and is the unit shipped.
    for u in ["pgwarden-proxy", "pgwarden-monitor", "pgwarden-watchdog"] {
        let name = format!("{u}.service");
        let unit = std::fs::read_to_string(x.join("lib/systemd/system").join(&name)).unwrap();
        let shipped = std::fs::read_to_string(root().join("deploy/systemd").join(&name)).unwrap();
        assert_eq!(unit, shipped, "{name} differs from deploy/systemd");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .and_then(|l| l.split_whitespace().next())
            .unwrap();
        assert!(
            x.join(exec.trim_start_matches('/')).exists(),
            "{name}: ExecStart={exec} is not in the package"
        );
    }
    assert!(x.join("lib/systemd/system/pgwarden.target").exists());
    assert!(x.join("usr/lib/sysusers.d/pgwarden.conf").exists());
    assert!(
        x.join("usr/share/doc/pgwarden/examples/pgwarden.toml")
            .exists()
    );
    let rejoin = x.join("usr/lib/pgwarden/pgwarden-rejoin");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&rejoin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // The maintainer scripts are valid shell.
    let control = out.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    for script in ["postinst", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
}
