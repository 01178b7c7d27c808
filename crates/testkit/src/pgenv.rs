//! How PostgreSQL's programs are run: which binaries, as which user, with
//! which environment.

use std::env;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;

use anyhow::Context as _;
use nix::unistd::{Gid, Uid, chown};

use crate::lab::{Host, netns_command, wrapped_program};

/// Runs PostgreSQL programs from one bin dir as one OS user.
#[derive(Debug, Clone)]
pub(crate) struct PgEnv {
    /// Directory of `initdb`, `pg_ctl`, `psql`...
    pub(crate) bin_dir: PathBuf,
    /// (uid, gid) to switch to, when running as root.
    pub(crate) os_user: Option<(u32, u32)>,
    /// HOME and working directory of every program: the cluster's base dir.
    pub(crate) home: PathBuf,
}

impl PgEnv {
    /// A command for `program` from the bin dir: `PG*` variables removed, HOME
    /// and the working directory set to the base dir, C locale, and the
    /// unprivileged user when root.
    pub(crate) fn command(&self, program: &str) -> Command {
        self.command_in(None, program)
    }

    /// Like [`PgEnv::command`], but inside `host`'s network namespace when
    /// given (`ip netns exec`, then `setpriv` to the unprivileged user): a
    /// server started this way listens in that namespace.
    pub(crate) fn command_in(&self, host: Option<&Host>, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = match host {
            Some(host) => netns_command(host.name(), self.os_user, path.as_os_str()),
            None => {
                let mut cmd = Command::new(&path);
                if let Some((uid, gid)) = self.os_user {
                    cmd.uid(uid).gid(gid);
                }
                cmd
            }
        };
        for (key, _) in env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", &self.home)
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .current_dir(&self.home)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` to completion, feeding it `stdin`; fails (with its stdout and
    /// stderr) unless it exits 0. `what` names the action in errors.
    pub(crate) fn run(
        &self,
        cmd: &mut Command,
        stdin: Option<&str>,
        what: &str,
    ) -> anyhow::Result<Output> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{what}: cannot run {}", display_program(cmd)))?;
        // Feed stdin from a thread so a large input cannot deadlock against a
        // child blocked on writing a full stdout pipe.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_owned();
                Some(thread::spawn(move || pipe.write_all(input.as_bytes())))
            }
            _ => None,
        };
        let output = child
            .wait_with_output()
            .with_context(|| format!("{what}: waiting for {}", display_program(cmd)))?;
        if let Some(writer) = writer {
            // A broken pipe only means the program stopped reading (it failed,
            // which its exit status reports).
            let _ = writer.join();
        }
        if !output.status.success() {
            anyhow::bail!(
                "{what}: {} failed ({}){}{}",
                display_program(cmd),
                output.status,
                section("stderr", &output.stderr),
                section("stdout", &output.stdout),
            );
        }
        Ok(output)
    }

    /// Hands `path` to the unprivileged user (no-op when not root).
    pub(crate) fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.os_user {
            chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .with_context(|| format!("chown {} to uid {uid}", path.display()))?;
        }
        Ok(())
    }

    /// Creates `dir` (mode 0755) owned by the unprivileged user.
    pub(crate) fn create_dir(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", dir.display()))?;
        self.chown(dir)
    }

    /// Writes `path` and hands it to the unprivileged user.
    pub(crate) fn write_file(&self, path: &Path, contents: &str) -> anyhow::Result<()> {
        fs::write(path, contents).with_context(|| format!("write {}", path.display()))?;
        self.chown(path)
    }

    /// Appends to `path` (which must exist).
    pub(crate) fn append_file(&self, path: &Path, contents: &str) -> anyhow::Result<()> {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        file.write_all(contents.as_bytes())
            .with_context(|| format!("append to {}", path.display()))
    }
}

/// The program's file name, for error messages (the wrapped program for `ip
/// netns exec`).
fn display_program(cmd: &Command) -> String {
    let program = wrapped_program(cmd).unwrap_or(cmd.get_program());
    Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy()
        .into_owned()
}

/// "\n<name>:\n<text>" for non-empty output, else "".
fn section(name: &str, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("\n{name}:\n{text}")
    }
}

/// Whether an I/O error is "not found" (used to tolerate missing files).
pub(crate) fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}
