//! The per-node agent: subcommands and logging, handed to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use tortie_node_agent::agent::{self, cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent::init_logging();
    let argv = cli::with_default_subcommand(std::env::args_os().collect());
    match cli::Cli::parse_from(argv).command {
        cli::Command::Run(args) => agent::run(args).await?,
        cli::Command::InstallCni(args) => cli::install_cni(&args)?,
        cli::Command::RemoveCniConfig(args) => cli::remove_cni_config(&args)?,
    }
    Ok(())
}
