//! Where things are: PostgreSQL's programs, the workspace's binaries, the OS
//! user PostgreSQL runs as.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::unistd::{User, geteuid};

/// Finds the directory holding PostgreSQL's server programs (`initdb`,
/// `pg_ctl`, `postgres`, `pg_basebackup`, `psql`).
///
/// Debian-like systems keep the server binaries off `PATH`, so the lookup is:
/// env `PGWARDEN_PG_BIN`, else the directory of `initdb` on `PATH` (symlinks
/// resolved), else the highest version under `/usr/lib/postgresql/*/bin`. The
/// directory must also hold `pg_ctl`, `postgres`, `pg_basebackup`, `psql` and
/// `pg_isready`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = env::var_os("PGWARDEN_PG_BIN") {
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            has_all_programs(&dir),
            "PGWARDEN_PG_BIN={} lacks one of {}",
            dir.display(),
            PROGRAMS.join(", ")
        );
        return Ok(dir);
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            // Resolve symlinks: /usr/local/bin/initdb may point into a bin dir
            // that also holds psql and pg_basebackup.
            let Ok(initdb) = dir.join("initdb").canonicalize() else {
                continue;
            };
            if let Some(bin) = initdb.parent()
                && has_all_programs(bin)
            {
                return Ok(bin.to_path_buf());
            }
        }
    }
    highest_versioned_bin(Path::new("/usr/lib/postgresql")).with_context(|| {
        "no PostgreSQL server binaries found: set PGWARDEN_PG_BIN, put initdb on PATH \
         or install them under /usr/lib/postgresql/<version>/bin"
    })
}

/// The programs the testkit runs.
const PROGRAMS: [&str; 6] = [
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "psql",
    "pg_isready",
];

/// Whether `dir` holds every program the testkit runs.
fn has_all_programs(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

/// `<root>/<highest numeric version>/bin`, if it holds the programs.
fn highest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = parse_version(&name)?;
            let bin = e.path().join("bin");
            has_all_programs(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The unprivileged user (uid, gid) PostgreSQL's programs run as.
///
/// PostgreSQL refuses to run as root, and CI runs the tests as root (the
/// multi-node tests need network namespaces). Returns `None` when the process
/// is not root (programs then run as the current user). As root: the user named
/// by env `PGWARDEN_TEST_USER` (`None` if it does not exist), else `postgres`,
/// else `nobody`.
pub fn os_user() -> Option<(u32, u32)> {
    if !geteuid().is_root() {
        return None;
    }
    let lookup = |name: &str| {
        User::from_name(name)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
    };
    match env::var("PGWARDEN_TEST_USER") {
        Ok(name) if !name.is_empty() => lookup(&name),
        _ => lookup("postgres").or_else(|| lookup("nobody")),
    }
}

/// Path of a workspace binary (e.g. `"pgwarden-proxy"`) built into the same
/// target directory as the running test or binary.
///
/// End-to-end tests run the real daemons. Cargo only builds (and names through
/// `CARGO_BIN_EXE_*`) the binaries of the package under test, so this looks next
/// to `std::env::current_exe()` instead: `target/debug/deps/test-1234` ->
/// `target/debug/<name>`. Env `PGWARDEN_BIN_DIR` overrides the directory.
///
/// # Panics
/// When the binary does not exist, with the hint
/// `build it first: cargo build --workspace --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = match env::var_os("PGWARDEN_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match env::current_exe() {
            Ok(exe) => target_dir_of(&exe),
            Err(e) => panic!("cannot locate {name}: current_exe() failed: {e}"),
        },
    };
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "workspace binary {name} not found at {}: build it first: cargo build --workspace --bins",
            path.display()
        );
    }
    path
}

/// The profile directory (`target/debug`) an executable was built into.
fn target_dir_of(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_from_test_and_binary() {
        assert_eq!(
            target_dir_of(Path::new("/w/target/debug/deps/cluster-0123")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            target_dir_of(Path::new("/w/target/debug/pgwarden-cluster")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            target_dir_of(Path::new("/w/target/release/examples/demo")),
            PathBuf::from("/w/target/release")
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("15").unwrap() > parse_version("9.6").unwrap());
        assert!(parse_version("16").unwrap() > parse_version("15").unwrap());
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn finds_some_postgres() {
        let dir = pg_bin_dir().unwrap();
        assert!(dir.join("pg_ctl").is_file());
    }

    #[test]
    #[should_panic(expected = "build it first: cargo build --workspace --bins")]
    fn missing_binary_panics_with_hint() {
        workspace_bin("no-such-pgwarden-binary");
    }
}
