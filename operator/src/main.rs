//! `tortie-operator`: flags, logging, and the operator's library.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tortie_operator::cli::{Args, LogFormat};
use tortie_operator::{Stopped, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|error| {
        eprintln!(
            "--log-level {:?} is not a log filter ({error}); using info",
            args.log_level
        );
        EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    match run(args).await {
        Ok(Stopped::Signal) => ExitCode::SUCCESS,
        Ok(Stopped::LostLease) => ExitCode::from(2),
        Err(error) => {
            tracing::error!(%error, "tortie-operator failed");
            ExitCode::FAILURE
        }
    }
}
