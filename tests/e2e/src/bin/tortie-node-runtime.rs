//! `tortie-node-runtime`: the kubelet and container runtime of a local cluster's node, and
//! the small programs it runs inside pods.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tortie_e2e::runtime::{self, RuntimeConfig, tools};

/// The node runtime of a local Tortie cluster. Start it on its node with
/// `tortie-cluster node add <name> --runtime`.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Play the kubelet on a node: report its status, run its pods. Runs until SIGTERM.
    Run {
        /// The node's name.
        #[arg(long)]
        node: String,
        /// The node's kubeconfig (`system:node:<name>`).
        #[arg(long)]
        kubeconfig: PathBuf,
        /// The node's directory (`<cluster dir>/nodes/<name>`).
        #[arg(long)]
        node_dir: PathBuf,
        /// Where the binaries of Tortie's images are; default: this binary's directory
        /// (the cargo target's `debug` directory).
        #[arg(long, env = "TORTIE_IMAGE_BIN_DIR")]
        image_bin_dir: Option<PathBuf>,
    },
    /// The test server run for images that are not Tortie's: answers with the pod's name.
    PodServer {
        /// The pod's name, sent to every client.
        #[arg(long)]
        name: String,
        /// A TCP port to listen on; repeatable.
        #[arg(long = "port")]
        ports: Vec<u16>,
    },
    /// Connect to a TCP port and print what the server says.
    Connect {
        /// The address.
        host: String,
        /// The port.
        port: u16,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
    /// One httpGet or tcpSocket probe; exit status 0 when it passes.
    Probe {
        /// The probe's kind.
        kind: ProbeKind,
        /// The address.
        #[arg(long)]
        host: String,
        /// The port.
        #[arg(long)]
        port: u16,
        /// The HTTP path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 1)]
        timeout_seconds: u64,
    },
    /// Print the pod's environment and the identity its service-account token has, then
    /// serve a health endpoint.
    Whoami {
        /// The port of the health endpoint (any path answers 200).
        #[arg(long, default_value_t = 9099)]
        health_port: u16,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProbeKind {
    Http,
    Tcp,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Action::Run {
            node,
            kubeconfig,
            node_dir,
            image_bin_dir,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .with_ansi(false)
                .init();
            let self_binary = std::env::current_exe().context("this binary's path")?;
            let image_bin_dir = match image_bin_dir {
                Some(dir) => dir,
                None => self_binary
                    .parent()
                    .context("this binary has no directory")?
                    .to_path_buf(),
            };
            let config = RuntimeConfig {
                node,
                kubeconfig,
                node_dir,
                image_bin_dir,
                self_binary,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")?
                .block_on(runtime::run(config))?;
        }
        Action::PodServer { name, ports } => tools::pod_server(&name, &ports)?,
        Action::Connect {
            host,
            port,
            timeout_seconds,
        } => {
            let reply = tools::connect(&host, port, Duration::from_secs(timeout_seconds))
                .map_err(anyhow::Error::msg)?;
            print!("{reply}");
        }
        Action::Probe {
            kind,
            host,
            port,
            path,
            timeout_seconds,
        } => {
            let timeout = Duration::from_secs(timeout_seconds);
            let outcome = match kind {
                ProbeKind::Http => tools::probe_http(&host, port, &path, timeout),
                ProbeKind::Tcp => tools::probe_tcp(&host, port, timeout),
            };
            println!("{}", outcome.map_err(anyhow::Error::msg)?);
        }
        Action::Whoami { health_port } => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?
                .block_on(tools::whoami(health_port))
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}
