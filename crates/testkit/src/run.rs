//! Running a command that must succeed.

use std::process::{Command, Output};

/// Runs `cmd` to its end and returns its output; panics, naming `what`,
/// with its exit status and stderr unless it exited 0.
///
/// Tests run `psql`, `pgbench`, `systemd-analyze` and the like as steps that
/// must work, not as what is under test: this checks them one way, with a
/// failure message that says what failed and what it printed.
pub fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_output_of_a_command_that_succeeds() {
        let out = run_ok("echo", Command::new("echo").arg("hello"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    }

    #[test]
    #[should_panic(expected = "sh -c: exit status: 3\nwhy\n")]
    fn panics_with_stderr_when_a_command_fails() {
        run_ok(
            "sh -c",
            Command::new("sh").args(["-c", "echo why >&2; exit 3"]),
        );
    }
}
