//! The per-node agent: it serves IPAM to the plugins on its node and, beside that, runs the
//! node loop ([`node_loop`]) that applies the node's config to the kernel.

pub mod cli;
pub mod cni_config;
pub mod health;
pub mod node_address;
pub mod node_config;
pub mod node_loop;
pub mod node_status;
pub mod tunnel_address;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::ipam::allocator::Allocator;
use crate::ipam::protocol::DEFAULT_SOCKET;
use crate::ipam::server::{self, ServeError};
use crate::ipam::store::Store;

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The agent's command line; every flag can also come from the environment.
#[derive(Parser, Debug, Clone)]
#[command(name = "tortie-agent", version, about = "Tortie's per-node agent")]
pub struct Args {
    /// The name of the Node this agent runs on (the Downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Where to serve IPAM to the plugins. The directory is made root-only (0700) and
    /// the socket 0600.
    #[arg(long, env = "TORTIE_IPAM_SOCKET", default_value = DEFAULT_SOCKET)]
    pub ipam_socket: PathBuf,

    /// Settings of the node loop.
    #[command(flatten)]
    pub node_loop: node_loop::LoopArgs,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No API client could be built (no in-cluster config and no usable KUBECONFIG).
    #[error(
        "cannot reach the Kubernetes API: {0}; run in a pod with a service account or set KUBECONFIG"
    )]
    Client(#[source] kube::Error),
    /// The IPAM socket could not be set up or served.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A signal handler could not be installed.
    #[error("cannot watch for {signal}: {source}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The node loop could not start.
    #[error(transparent)]
    NodeLoop(#[from] node_loop::StartError),
    /// The node name is empty.
    #[error("--node-name (NODE_NAME) is empty; set it to this node's name")]
    NoNodeName,
}

/// Runs the agent until SIGTERM or SIGINT, then removes its socket.
pub async fn run(args: Args) -> Result<(), AgentError> {
    if args.node_name.trim().is_empty() {
        return Err(AgentError::NoNodeName);
    }
    let client = kube::Client::try_default()
        .await
        .map_err(AgentError::Client)?;
    let allocator = Arc::new(Allocator::new(
        Store::new(client.clone()),
        args.node_name.clone(),
    ));

    let shutdown = shutdown_signal()?;
    let node_loop = node_loop::NodeLoop::start(
        client.clone(),
        &args.node_name,
        &args.ipam_socket,
        &args.node_loop,
    )
    .await?;
    let (stop_tunnel, stopped) = tokio::sync::watch::channel(false);
    let tunnel = tokio::spawn(tunnel_address::run(client, allocator.clone(), stopped));
    let listener = server::bind(&args.ipam_socket)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %args.node_name,
        socket = %args.ipam_socket.display(),
        "tortie-agent serving IPAM"
    );
    let served = server::serve(listener, allocator, shutdown, SHUTDOWN_GRACE).await;
    let _ = stop_tunnel.send(true);
    let abort = tunnel.abort_handle();
    if tokio::time::timeout(SHUTDOWN_GRACE, tunnel).await.is_err() {
        abort.abort();
    }
    node_loop.stop().await;
    server::remove_socket(&args.ipam_socket);
    tracing::info!("tortie-agent stopped");
    served.map_err(AgentError::from)
}

/// Completes on the first SIGTERM (what the kubelet sends) or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, AgentError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| AgentError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| AgentError::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
    })
}

/// Logs to stderr; `TORTIE_LOG_LEVEL`, else `RUST_LOG`, picks the level (`info` when
/// neither is set).
pub fn init_logging() {
    let filter = cli::log_filter(
        std::env::var("TORTIE_LOG_LEVEL").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_defaults() {
        let args = Args::try_parse_from(["tortie-agent", "--node-name", "worker-1"])
            .expect("node name is enough");
        assert_eq!(args.node_name, "worker-1");
        assert_eq!(args.ipam_socket, PathBuf::from(DEFAULT_SOCKET));
        let args = Args::try_parse_from([
            "tortie-agent",
            "--node-name",
            "w",
            "--ipam-socket",
            "/tmp/x.sock",
        ])
        .expect("socket flag");
        assert_eq!(args.ipam_socket, PathBuf::from("/tmp/x.sock"));
    }
}
