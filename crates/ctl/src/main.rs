//! The `pgwardenctl` binary: parses flags, runs the library on stdout with
//! Ctrl-C as the interrupt, and maps the outcome to an exit status.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use pgwardenctl::CtlError;
use pgwardenctl::cli::Cli;

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
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler: never interrupted, as without one.
            std::future::pending::<()>().await;
        }
    };
    runtime.block_on(pgwardenctl::run(cli, &mut out, interrupt))?;
    Ok(())
}

/// Reports `reason` on one line and returns `code`.
fn fail(reason: &str, code: u8) -> ExitCode {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("pgwardenctl: {reason}");
    ExitCode::from(code)
}
