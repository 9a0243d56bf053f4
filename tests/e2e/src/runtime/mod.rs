//! The node runtime: one small process per node of the local cluster that plays the parts
//! of the kubelet and of the container runtime, so the cluster's nodes can run pods.
//!
//! What it does, on its node (it runs "on" the node: in the node's network namespace and
//! private mount namespace, with the node's `system:node:<name>` credentials):
//!
//! - reports the Node's conditions (Ready only while a CNI network configuration exists in
//!   `/etc/cni/net.d`) and renews the node's Lease in `kube-node-lease`;
//! - runs the pods bound to the node. Tortie's own images (`.../operator`, `.../agent`) run
//!   as the locally built binary named by the container's `command[0]`, with the
//!   container's arguments, environment, volumes and a projected service-account token;
//!   every other image runs as a small test server (`pod-server`) that answers on each
//!   container port with the pod's name;
//! - gives a pod that is not `hostNetwork` a network namespace of its own and wires it by
//!   calling the CNI plugins of the first configuration in `/etc/cni/net.d`, exactly as a
//!   container runtime does (ADD, chained `prevResult`, DEL in reverse order);
//! - restarts containers with backoff, runs readiness and liveness probes (httpGet,
//!   tcpSocket, exec) and writes the pod's status;
//! - on a pod's deletion, runs each running container's preStop hook (exec or sleep) with
//!   the pod's grace period as its deadline, then stops its processes, runs CNI DEL,
//!   removes its namespace and deletes the Pod object; on its own SIGTERM, stops every pod
//!   the same way but without hooks and without deleting the objects, and exits.
//!
//! What it is not: there are no images (a container's image only picks which binary runs),
//! no cgroups or resource limits, no user, PID or IPC namespaces, no security contexts, no
//! `kubectl logs`, `exec`, `attach` or `port-forward` (container output goes to plain files
//! at `<node dir>/var/log/pods/<namespace>_<pod>_<uid>/<container>.log`), no startup or
//! gRPC probes, no postStart hooks and no httpGet or tcpSocket preStop hooks (logged and
//! skipped), no static pods, no Services (nothing plays kube-proxy), no volume types
//! besides hostPath, emptyDir, configMap, secret and projected, and no recovery of running
//! pods across its own restart (it tears down what a previous run left and starts the pods
//! again).

pub mod cni;
pub mod container;
pub mod hook;
pub mod node;
pub mod pod;
pub mod probe;
pub mod sandbox;
pub mod tools;
pub mod volume;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How long the runtime's own shutdown may take before it gives up on pods still stopping.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(9);

/// Where the runtime keeps its own files, under the node directory.
const STATE_DIR: &str = "var/lib/tortie-node-runtime";

/// Everything that can go wrong in the node runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused a request or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The node's kubeconfig could not be turned into a client.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The Node object has no InternalIP address.
    #[error("node {0} has no InternalIP in status.addresses; add the node with tortie-cluster")]
    NoNodeAddress(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A command could not be started or failed.
    #[error(transparent)]
    Command(#[from] crate::Error),
    /// A CNI network configuration is unreadable or a plugin failed.
    #[error(transparent)]
    Cni(#[from] cni::CniError),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How the runtime is started.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The node it plays the kubelet for.
    pub node: String,
    /// The node's kubeconfig (`system:node:<name>`).
    pub kubeconfig: PathBuf,
    /// The node's directory (`<cluster dir>/nodes/<name>`), for logs and the runtime's state.
    pub node_dir: PathBuf,
    /// Where the binaries of Tortie's images are (the cargo target's `debug` directory).
    pub image_bin_dir: PathBuf,
    /// This binary, for the `pod-server` and `probe` subcommands run inside pods.
    pub self_binary: PathBuf,
}

/// What every pod worker needs to know about its node.
pub struct NodeContext {
    /// The runtime's configuration.
    pub config: RuntimeConfig,
    /// A client with the node's identity.
    pub client: kube::Client,
    /// The node's InternalIP: a hostNetwork pod's address and every pod's hostIP.
    pub address: IpAddr,
    /// The API server's host, as pods see it in `KUBERNETES_SERVICE_HOST`.
    pub api_host: String,
    /// The API server's port, as pods see it in `KUBERNETES_SERVICE_PORT`.
    pub api_port: u16,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("config", &self.config)
            .field("address", &self.address)
            .field("api_host", &self.api_host)
            .field("api_port", &self.api_port)
            .finish_non_exhaustive()
    }
}

impl NodeContext {
    /// The runtime's own state directory under the node directory.
    pub fn state_dir(&self) -> PathBuf {
        self.config.node_dir.join(STATE_DIR)
    }

    /// The directory of one pod's files (volumes, state record).
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.state_dir().join("pods").join(uid)
    }
}

/// What the runtime records about a running pod, for people and tests that want to enter
/// it: `<node dir>/var/lib/tortie-node-runtime/pods/<uid>/pod.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    pub uid: String,
    /// The pod's network namespace on the node (`/var/run/netns/<name>` in the node's mount
    /// namespace); `None` for a hostNetwork pod.
    pub netns: Option<String>,
    /// The pod's address.
    pub pod_ip: Option<IpAddr>,
    /// The PID of each running container's process, by container name.
    pub containers: std::collections::BTreeMap<String, u32>,
}

/// The path of a pod's record under a node directory.
pub fn pod_record_path(node_dir: &Path, uid: &str) -> PathBuf {
    node_dir
        .join(STATE_DIR)
        .join("pods")
        .join(uid)
        .join("pod.json")
}

struct Worker {
    pod: watch::Sender<Option<Arc<Pod>>>,
    task: JoinHandle<()>,
}

/// Runs the node runtime until SIGTERM or SIGINT, then stops every pod and returns.
pub async fn run(config: RuntimeConfig) -> Result<(), Error> {
    let kube_config = load_kubeconfig(&config.kubeconfig).await?;
    let url = kube_config.cluster_url.clone();
    let api_host = url.host().unwrap_or_default().to_string();
    let api_port = url.port_u16().unwrap_or(443);
    let client = kube::Client::try_from(kube_config)?;
    let node = Api::<Node>::all(client.clone()).get(&config.node).await?;
    let address =
        node::internal_ip(&node).ok_or_else(|| Error::NoNodeAddress(config.node.clone()))?;
    let ctx = Arc::new(NodeContext {
        config,
        client,
        address,
        api_host,
        api_port,
    });
    info!(node = %ctx.config.node, %address, api_server = %url, "node runtime starting");

    // Sandboxes a previous run left behind (it was killed) are torn down before anything
    // else, so their addresses and links do not leak.
    sandbox::remove_stale(&ctx).await;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let heartbeat = tokio::spawn(node::heartbeat(ctx.clone(), node, shutdown.clone()));
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| Error::io(Path::new("SIGTERM"), e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| Error::io(Path::new("SIGINT"), e))?;

    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.config.node);
    let stream =
        watcher::watcher(pods, watcher::Config::default().fields(&selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // UIDs whose worker has finished: a late event for them must not start another.
    let mut finished: HashSet<String> = HashSet::new();
    let mut listing: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            event = stream.next() => match event {
                None => break,
                Some(Err(error)) => warn!(%error, "pod watch failed; it retries"),
                Some(Ok(Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod) | Event::Apply(pod))) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    if let Some(listed) = listing.as_mut() {
                        listed.insert(uid.clone());
                    }
                    if !finished.contains(&uid) {
                        dispatch(&ctx, &mut workers, &shutdown, pod);
                    }
                }
                Some(Ok(Event::Delete(pod))) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    if let Some(worker) = workers.get(&uid) {
                        worker.pod.send_replace(None);
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    let listed = listing.take().unwrap_or_default();
                    for (uid, worker) in &workers {
                        if !listed.contains(uid) {
                            worker.pod.send_replace(None);
                        }
                    }
                }
            },
        }
        workers.retain(|uid, worker| {
            let done = worker.task.is_finished();
            if done {
                finished.insert(uid.clone());
            }
            !done
        });
    }

    info!(
        pods = workers.len(),
        "node runtime stopping: ending pods and removing their sandboxes"
    );
    shutdown_tx.send_replace(true);
    let tasks = futures::future::join_all(workers.into_values().map(|worker| worker.task));
    if tokio::time::timeout(SHUTDOWN_BUDGET, tasks).await.is_ok() {
        // Sandboxes whose teardown failed earlier (a plugin was missing, say) get one more DEL.
        sandbox::remove_stale(&ctx).await;
    } else {
        warn!(
            budget = ?SHUTDOWN_BUDGET,
            "some pods were still stopping when the shutdown budget ran out",
        );
    }
    heartbeat.abort();
    info!("node runtime stopped");
    Ok(())
}

fn dispatch(
    ctx: &Arc<NodeContext>,
    workers: &mut HashMap<String, Worker>,
    shutdown: &watch::Receiver<bool>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(worker) = workers.get(&uid) {
        worker.pod.send_replace(Some(Arc::new(pod)));
        return;
    }
    let (tx, rx) = watch::channel(Some(Arc::new(pod)));
    let task = tokio::spawn(pod::run(ctx.clone(), rx, shutdown.clone()));
    workers.insert(uid, Worker { pod: tx, task });
}

async fn load_kubeconfig(path: &Path) -> Result<kube::Config, Error> {
    let config_error = |message: String| Error::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let file = Kubeconfig::read_from(path).map_err(|e| config_error(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| config_error(e.to_string()))
}

/// True when an image is one of Tortie's own: the last path segment of its repository is
/// `operator` or `agent` (`tortie/agent:dev`, `ghcr.io/x/tortie/operator@sha256:...`).
pub fn is_tortie_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repository = last.split(':').next().unwrap_or(last);
    matches!(repository, "operator" | "agent")
}

/// A random hex identifier of `bytes` bytes (sandbox and container IDs).
pub fn random_id(bytes: usize) -> String {
    use std::io::Read;
    let mut buffer = vec![0_u8; bytes];
    let read =
        std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut buffer));
    if read.is_err() {
        // Unique enough for names on one node: the time and the process.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        for (index, byte) in buffer.iter_mut().enumerate() {
            *byte = (seed >> ((index % 16) * 8)) as u8;
        }
    }
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tortie_images_are_recognised_by_their_last_repository_segment() {
        for image in [
            "tortie/agent:dev",
            "ghcr.io/x/tortie/agent",
            "localhost:5000/tortie/operator:v1",
            "registry.example/tortie/operator@sha256:abcd",
            "agent",
        ] {
            assert!(is_tortie_image(image), "{image}");
        }
        for image in [
            "busybox",
            "nginx:1.27",
            "tortie/agent-helper:dev",
            "operator/nginx",
            "localhost:5000/x",
        ] {
            assert!(!is_tortie_image(image), "{image}");
        }
    }

    #[test]
    fn random_ids_have_the_asked_length_and_differ() {
        let (one, two) = (random_id(16), random_id(16));
        assert_eq!(one.len(), 32);
        assert_ne!(one, two);
    }
}
