//! The `vipvisor` binary: parse, run, print. Errors go to stderr with exit code 1
//! (usage errors: 2, from clap; a speaker's address conflict: 3); nothing reaches stdout
//! on error.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use vipvisor_core::announce::SpeakerError;
use vipvisor_core::cli::{run, Cli, Command};

/// Exit code of a speaker that found an address conflict.
const EXIT_CONFLICT: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running modes log what they do; one-shot commands only warnings.
    let default = if matches!(cli.command, Command::Speaker(_) | Command::Controller(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VIPVISOR_LOG").unwrap_or_else(|_| default.into()))
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<SpeakerError>() {
                Some(SpeakerError::Conflict { .. }) => ExitCode::from(EXIT_CONFLICT),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
