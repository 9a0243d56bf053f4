//! The local cluster and the support library for end-to-end tests.
//!
//! A cluster is a real etcd, kube-apiserver, kube-controller-manager and kube-scheduler
//! running as processes of the root namespace, plus nodes that are network namespaces.
//! `tortie-cluster` (the binary) and [`support::TestCluster`] (the tests) share this code.
//!
//! # Address plan
//!
//! Every cluster claims one /22 of 198.18.0.0/15 (the range set aside for network
//! benchmarks; 128 clusters fit). It tries the slot its name hashes to first, then the
//! next ones; creating the root veth `tortie-s<slot>` is what claims a slot, so two
//! clusters never share one. Inside slot `s` (base `198.18.0.0 + 1024·s`):
//!
//! ```text
//! base+0.0/30    uplink: .1 underlay router ("uplink"), .2 root namespace ("tortie-s<s>")
//! base+1.0/24    subnet a: .1 router (bridge br-a), nodes from .10
//! base+2.0/24    subnet b: .1 router (bridge br-b), nodes from .10
//! ```
//!
//! The root namespace gets exactly one veth into the underlay, its one address (`.2` of the
//! uplink) and one route: the cluster's /22 via the underlay router. It gets no default
//! route and no pod range, and its forwarding setting is left alone. The API server listens
//! on that address only: the root namespace reaches it locally, nodes reach it through the
//! underlay router, and nothing on the machine's own interfaces does. etcd listens on free
//! ports of 127.0.0.1; the controller manager and scheduler serve no port at all.
//!
//! # Node model
//!
//! The underlay namespace `tortie_<cluster>_underlay` holds one bridge per subnet and
//! routes between them (forwarding is on there and nowhere else). A node `<n>` is:
//!
//! - a network namespace `tortie_<cluster>_node_<n>` whose `eth0` is a veth to its
//!   subnet's bridge, addressed from the subnet, with a default route via the router;
//! - a directory `<cluster dir>/nodes/<n>/` with `etc/cni/net.d`, `opt/cni/bin`, `var/run`,
//!   `var/log` and `var/lib`; the first four replace the machine's own in a private mount
//!   namespace for anything run on the node ([`cluster::NodeRecord::command_prefix`]);
//! - credentials for `system:node:<n>` in `<node dir>/kubeconfig`, for a node runtime;
//! - a Node object with InternalIP = its address, the hostname, os and arch labels, extra
//!   labels, and a `Ready=False` condition until a node runtime reports;
//! - optionally its node runtime (`tortie-node-runtime run`, [`runtime`]), started through
//!   the node's command prefix with the node's kubeconfig: it plays the kubelet and the
//!   container runtime there, and `down` ends it before anything else.
//!
//! Everything made is recorded in `<cluster dir>/state.json` before it is made, and
//! [`cluster::down`] removes exactly what is recorded.

pub mod cluster;
pub mod netns;
pub mod pki;
pub mod plan;
pub mod process;
pub mod runtime;
pub mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cluster::{Cluster, ClusterConfig, ClusterState, DownReport, NodeRecord, Status, down};
pub use plan::Subnet;
pub use support::{TestCluster, wait_for};

/// Everything that can go wrong bringing a cluster up, using it, or taking it down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program (and its arguments, when known).
        program: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A cluster or node name breaks the naming rule.
    #[error("{0}")]
    InvalidName(String),
    /// A certificate or key could not be made or read.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A kubeconfig could not be turned into a client.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The API server refused a request or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The control-plane binaries have not been built.
    #[error(
        "control-plane binaries missing in {dir}: {missing}; build them with \
         tests/e2e/scripts/build-control-plane.sh (or point TORTIE_BIN_DIR at them)"
    )]
    MissingBinaries {
        /// Where they were looked for.
        dir: PathBuf,
        /// Which ones are missing.
        missing: String,
    },
    /// The node runtime binary was not found.
    #[error(
        "tortie-node-runtime not found (looked at {looked}); build it with \
         `cargo build -p tortie-e2e --bins` or point TORTIE_NODE_RUNTIME at it"
    )]
    NoRuntimeBinary {
        /// The paths looked at.
        looked: String,
    },
    /// `up` found the state of a cluster that is up.
    #[error(
        "cluster {name} is already up (state in {dir}); run `tortie-cluster down --name {name}` \
         first"
    )]
    AlreadyUp {
        /// The cluster.
        name: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// There is no cluster state where one was expected.
    #[error("no cluster state in {dir}; bring the cluster up first with `tortie-cluster up`")]
    NotUp {
        /// Where the state was looked for.
        dir: PathBuf,
    },
    /// No port could be picked for a control-plane process.
    #[error("no free TCP port on {address}: {source}")]
    NoFreePort {
        /// The address a port was wanted on.
        address: std::net::IpAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// Every slot of 198.18.0.0/15 is taken.
    #[error(
        "no free underlay slot: all {} /22s of 198.18.0.0/15 have a tortie-s* link in the \
         root namespace; take a cluster down first",
        plan::SLOTS
    )]
    NoFreeSlot,
    /// A control-plane process exited while `up` waited for it.
    #[error("{name} exited while the cluster was starting; last lines of {}:\n{tail}", log.display())]
    Exited {
        /// The process.
        name: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
        /// The last answer or error seen.
        last: String,
    },
    /// A process survived SIGKILL.
    #[error("{name} (pid {pid}) did not exit after SIGKILL")]
    Stuck {
        /// The process.
        name: String,
        /// Its PID.
        pid: u32,
    },
    /// A signal could not be sent.
    #[error("could not signal {name} (pid {pid}): {source}")]
    Signal {
        /// The process.
        name: String,
        /// Its PID.
        pid: u32,
        /// What the system said.
        source: std::io::Error,
    },
    /// `node add` of a name that exists.
    #[error(
        "node {node} already exists in cluster {cluster}; pick another name or remove it first"
    )]
    NodeExists {
        /// The cluster.
        cluster: String,
        /// The node.
        node: String,
    },
    /// A node that does not exist.
    #[error("node {node} does not exist in cluster {cluster}")]
    NoSuchNode {
        /// The cluster.
        cluster: String,
        /// The node.
        node: String,
    },
    /// No address left on a subnet.
    #[error("subnet {subnet} of cluster {cluster} has no free address; use the other subnet")]
    SubnetFull {
        /// The cluster.
        cluster: String,
        /// The subnet's letter.
        subnet: char,
    },
    /// The state file is not what this version writes.
    #[error("state file {path} is unreadable: {message}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// `down` could not remove everything; the state file is kept so it can run again.
    #[error("teardown left things behind (run down again once fixed):\n{0}")]
    Teardown(String),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
