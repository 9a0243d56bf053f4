//! `tortie-cluster`: a local Kubernetes cluster whose nodes are network namespaces.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tortie_e2e::{Cluster, ClusterConfig, Subnet, cluster};

/// A local Kubernetes cluster for Tortie: real etcd, API server, controller manager and
/// scheduler; nodes are network namespaces on a private underlay in 198.18.0.0/15.
/// Needs root.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The cluster's name. Clusters with different names can be up at once.
    #[arg(
        long,
        global = true,
        default_value = "tortie",
        env = "TORTIE_CLUSTER_NAME"
    )]
    name: String,
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Bring the cluster up and wait until it is ready.
    Up,
    /// End the cluster's processes, remove its namespaces and links, and its directory.
    Down {
        /// Keep the cluster directory (logs, certificates, etcd data).
        #[arg(long)]
        keep: bool,
    },
    /// Show the processes, API readiness and nodes.
    Status,
    /// Add or remove nodes.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Print the path of the admin kubeconfig (`export KUBECONFIG=$(tortie-cluster kubeconfig)`).
    Kubeconfig,
}

#[derive(Subcommand)]
enum NodeAction {
    /// Add a node: a network namespace on an underlay subnet and a Node object.
    Add {
        /// The node's name.
        node: String,
        /// The underlay subnet it sits on.
        #[arg(long, value_enum, default_value = "a")]
        subnet: Subnet,
        /// An extra label for the Node, as key=value; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Start the node runtime on it (`tortie-node-runtime`, found next to this binary or
        /// at $TORTIE_NODE_RUNTIME); it reports the node's status and runs its pods.
        #[arg(long)]
        runtime: bool,
    },
    /// Remove a node: its Node object, its namespace and its directory.
    Remove {
        /// The node's name.
        node: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = ClusterConfig::for_name(&cli.name)?;

    match cli.command {
        Action::Up => {
            let cluster = Cluster::up(&config).await?;
            println!("cluster {} is up", cli.name);
            println!("  API server  {}", cluster.api_server_url()?);
            println!("  kubeconfig  {}", cluster.kubeconfig().display());
            println!("  logs        {}", cluster.dir().join("logs").display());
        }
        Action::Down { keep } => {
            let report = cluster::down(&config.dir, keep)?;
            for (process, stopped) in &report.processes {
                println!("{} (pid {}): {stopped:?}", process.name, process.pid);
            }
            for netns in &report.netns {
                println!("network namespace {netns}: removed");
            }
            for link in &report.links {
                println!("link {link}: removed");
            }
            println!("cluster {} is down", cli.name);
        }
        Action::Status => {
            let cluster = Cluster::load(&config.dir)?;
            let status = cluster.status().await;
            println!("cluster {} ({})", cli.name, cluster.dir().display());
            for (process, running) in &status.processes {
                let state = if *running { "running" } else { "NOT RUNNING" };
                println!("  {:<24} pid {:<8} {state}", process.name, process.pid);
            }
            match &status.api {
                Ok(()) => println!("  API server ready at {}", cluster.api_server_url()?),
                Err(why) => println!("  API server NOT ready: {why}"),
            }
            for node in &status.nodes {
                println!(
                    "  node {:<20} {:<15} subnet {} netns {}",
                    node.name,
                    node.address,
                    node.subnet.letter(),
                    node.netns
                );
            }
            println!("  kubeconfig {}", status.kubeconfig.display());
            if status.api.is_err() || status.processes.iter().any(|(_, running)| !running) {
                bail!("cluster {} is not healthy", cli.name);
            }
        }
        Action::Node {
            action:
                NodeAction::Add {
                    node: name,
                    subnet,
                    labels,
                    runtime,
                },
        } => {
            let mut cluster = Cluster::load(&config.dir)?;
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let node = cluster.add_node(&name, subnet, &labels).await?;
            println!(
                "node {} added: {} on subnet {}, netns {}",
                node.name,
                node.address,
                subnet.letter(),
                node.netns
            );
            let prefix: Vec<String> = node
                .command_prefix()
                .iter()
                .map(|arg| cluster::shell_quote(arg))
                .collect();
            println!("  run on it: {} <command>", prefix.join(" "));
            if runtime {
                let binary = cluster::runtime_binary()?;
                let record = cluster.start_runtime(&name, &binary).await?;
                println!(
                    "  node runtime: pid {}, log {}",
                    record.pid,
                    record.log.display()
                );
            }
        }
        Action::Node {
            action: NodeAction::Remove { node: name },
        } => {
            let mut cluster = Cluster::load(&config.dir)?;
            cluster.remove_node(&name).await?;
            println!("node {name} removed");
        }
        Action::Kubeconfig => {
            let cluster = Cluster::load(&config.dir)?;
            println!("{}", cluster.kubeconfig().display());
        }
    }
    Ok(())
}

fn parse_label(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text
        .split_once('=')
        .with_context(|| format!("label {text:?} has no '='; write it as key=value"))?;
    Ok((key.to_string(), value.to_string()))
}
