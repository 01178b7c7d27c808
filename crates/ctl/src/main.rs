//! The `pgwardenctl` binary: parses flags, runs the library on stdout with
//! Ctrl-C as the interrupt, and maps the outcome to an exit status.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use pgwardenctl::CtlError;
use pgwardenctl::cli::Cli;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<CtlError>() {
            // `pgwardenctl watch | head`: the reader had enough.
            Some(ctl) if ctl.is_broken_pipe() => ExitCode::SUCCESS,
            Some(ctl) => fail(&ctl.to_string(), ctl.exit_code()),
            None => fail(&format!("{e:#}"), pgwardenctl::EXIT_FAILED),
        },
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = io::stdout().lock();
    runtime.block_on(async {
        // Commands that wait (watch, --watch, --wait) end cleanly on Ctrl-C;
        // their handler is installed here, before anything is printed: a
        // SIGINT sent as soon as the first line appears must end the command,
        // not kill it (`ctrl_c()` would install it only when first polled).
        // Other commands keep the default: Ctrl-C kills them at once.
        let mut sigint = if cli.waits() {
            signal(SignalKind::interrupt()).ok()
        } else {
            None
        };
        let interrupt = async move {
            match sigint.as_mut() {
                Some(sigint) => {
                    sigint.recv().await;
                }
                // No SIGINT handler: never interrupted, as without one.
                None => std::future::pending::<()>().await,
            }
        };
        pgwardenctl::run(cli, &mut out, interrupt).await
    })?;
    Ok(())
}

/// Reports `reason` on one line and returns `code`.
fn fail(reason: &str, code: u8) -> ExitCode {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("pgwardenctl: {reason}");
    ExitCode::from(code)
}
