//! The per-node agent: flags and logging, handed to the library.
#![forbid(unsafe_code)]

use clap::Parser;
use tortie_node_agent::agent::{self, Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent::init_logging();
    let args = Args::parse();
    agent::run(args).await?;
    Ok(())
}
