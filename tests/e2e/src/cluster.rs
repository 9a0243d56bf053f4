//! Bringing a cluster up and down, adding and removing nodes, and the state that records
//! everything made so that `down` can remove exactly that.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::netns::{self, ip, ip_in};
use crate::pki::{self, CertificateAuthority};
use crate::plan::{self, AddressPlan, MAX_CLUSTER_NAME, MAX_NODE_NAME, Subnet};
use crate::process::{self, ProcessRecord, Stopped};

/// The binaries `up` runs, looked up in the bin directory.
pub const REQUIRED_BINARIES: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// The Service range; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The `kubernetes` Service's cluster IP, named in the API server's certificate.
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// Issuer of service-account tokens.
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long `up` waits for the API server and then for the controllers.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How often readiness is checked again.
const POLL: Duration = Duration::from_millis(100);

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a node runtime gets between SIGTERM and SIGKILL: it stops its pods and
/// removes their sandboxes in about ten seconds.
const RUNTIME_STOP_GRACE: Duration = Duration::from_secs(15);

/// Directories every node gets under `<cluster dir>/nodes/<name>/`.
pub const NODE_DIRS: [&str; 5] = [
    "etc/cni/net.d",
    "opt/cni/bin",
    "var/run",
    "var/log",
    "var/lib",
];

/// The node directories that replace the machine's own inside a node's mount namespace.
const NODE_BIND_MOUNTS: [&str; 4] = ["etc/cni/net.d", "opt/cni/bin", "var/run", "var/log"];

const STATE_FILE: &str = "state.json";

/// What a cluster directory holds. Only these are ever removed from it, so a
/// `TORTIE_CLUSTER_DIR` that holds other files too loses none of them.
const CLUSTER_DIR_ENTRIES: [&str; 7] = [
    STATE_FILE,
    "state.json.tmp",
    "kubeconfig",
    "logs",
    "pki",
    "nodes",
    "etcd",
];

/// Where a cluster lives and which binaries it runs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The cluster's name; it is part of namespace names.
    pub name: String,
    /// The cluster directory (state, kubeconfig, certificates, logs, etcd data, nodes).
    pub dir: PathBuf,
    /// Where `etcd`, `kube-apiserver`, ... are.
    pub bin_dir: PathBuf,
}

impl ClusterConfig {
    /// The configuration a person gets by default: the directory is `$TORTIE_CLUSTER_DIR`
    /// or `/tmp/tortie-clusters/<name>`, the binaries are those of [`bin_dir`].
    pub fn for_name(name: &str) -> Result<Self, Error> {
        plan::validate_name("cluster", name, MAX_CLUSTER_NAME).map_err(Error::InvalidName)?;
        let dir = std::env::var_os("TORTIE_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_cluster_dir(name));
        Ok(ClusterConfig {
            name: name.to_string(),
            dir,
            bin_dir: bin_dir()?,
        })
    }
}

/// `/tmp/tortie-clusters/<name>`.
pub fn default_cluster_dir(name: &str) -> PathBuf {
    Path::new("/tmp/tortie-clusters").join(name)
}

/// The control-plane binaries: `$TORTIE_BIN_DIR`, else the cache directory that
/// `tests/e2e/scripts/build-control-plane.sh --print-dir` names.
pub fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("TORTIE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane.sh");
    let mut command = Command::new("bash");
    command.arg(script).arg("--print-dir");
    Ok(PathBuf::from(netns::run(command)?.trim()))
}

/// The `tortie-node-runtime` binary: `$TORTIE_NODE_RUNTIME`, else the one next to the
/// running program (cargo puts binaries in `target/debug`, integration tests in
/// `target/debug/deps`).
pub fn runtime_binary() -> Result<PathBuf, Error> {
    const NAME: &str = "tortie-node-runtime";
    if let Some(path) = std::env::var_os("TORTIE_NODE_RUNTIME") {
        return Ok(PathBuf::from(path));
    }
    let exe =
        std::env::current_exe().map_err(|source| Error::io(Path::new("/proc/self/exe"), source))?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(NAME))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| Error::NoRuntimeBinary {
            looked: candidates
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The required binaries that `bin_dir` lacks.
pub fn missing_binaries(bin_dir: &Path) -> Vec<&'static str> {
    REQUIRED_BINARIES
        .into_iter()
        .filter(|name| !bin_dir.join(name).is_file())
        .collect()
}

/// Everything a cluster made, written to `<cluster dir>/state.json` after every step.
/// Things are recorded before they are made, so `down` after a partial `up` finds them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's name.
    pub name: String,
    /// The cluster directory.
    pub dir: PathBuf,
    /// Where the control-plane binaries are.
    pub bin_dir: PathBuf,
    /// The namespace holding the bridges and the router.
    pub underlay_netns: String,
    /// The claimed addresses; `None` until the root veth exists.
    pub plan: Option<AddressPlan>,
    /// The root namespace's veth into the underlay; `None` until it exists.
    pub root_link: Option<String>,
    /// The networks of the plan, for people reading this file: `range`, `uplink`, `a`, `b`.
    pub networks: BTreeMap<String, Ipv4Net>,
    /// etcd's client port on 127.0.0.1.
    pub etcd_client_port: u16,
    /// etcd's peer port on 127.0.0.1.
    pub etcd_peer_port: u16,
    /// The API server's port on the root namespace's underlay address.
    pub api_server_port: u16,
    /// Processes started, in start order.
    pub processes: Vec<ProcessRecord>,
    /// Nodes added.
    pub nodes: Vec<NodeRecord>,
}

/// One node: a network namespace on an underlay subnet, a directory tree, credentials and
/// a Node object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The Node's name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Which underlay subnet it is on.
    pub subnet: Subnet,
    /// Its address on `eth0`, the Node's InternalIP.
    pub address: Ipv4Addr,
    /// The underlay router's address on its subnet, its default gateway.
    pub gateway: Ipv4Addr,
    /// The underlay end of its veth.
    pub underlay_link: String,
    /// Labels added to the Node besides the usual hostname, os and arch labels.
    pub labels: BTreeMap<String, String>,
    /// `<cluster dir>/nodes/<name>`.
    pub dir: PathBuf,
    /// The node runtime running on it, if one was started.
    #[serde(default)]
    pub runtime: Option<ProcessRecord>,
}

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Each recorded process and what stopping it took.
    pub processes: Vec<(ProcessRecord, Stopped)>,
    /// Network namespaces removed (or already gone).
    pub netns: Vec<String>,
    /// Root-namespace links removed (or already gone).
    pub links: Vec<String>,
}

/// What `status` found.
#[derive(Debug)]
pub struct Status {
    /// Each recorded process and whether it still runs.
    pub processes: Vec<(ProcessRecord, bool)>,
    /// `Ok` when `/readyz` answered `ok`, else what went wrong.
    pub api: Result<(), String>,
    /// The nodes.
    pub nodes: Vec<NodeRecord>,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

/// A cluster that is up (or was, as far as its state file says).
#[derive(Debug)]
pub struct Cluster {
    state: ClusterState,
}

enum Readiness {
    Ready,
    NotYet(String),
}

impl Cluster {
    /// Brings a cluster up: underlay, certificates, etcd, API server, controller manager and
    /// scheduler, and waits until the API server is ready and both controllers hold their
    /// leader leases. On failure it removes what it made and keeps the logs.
    pub async fn up(config: &ClusterConfig) -> Result<Cluster, Error> {
        plan::validate_name("cluster", &config.name, MAX_CLUSTER_NAME)
            .map_err(Error::InvalidName)?;
        let missing = missing_binaries(&config.bin_dir);
        if !missing.is_empty() {
            return Err(Error::MissingBinaries {
                dir: config.bin_dir.clone(),
                missing: missing.join(", "),
            });
        }
        if config.dir.join(STATE_FILE).exists() {
            return Err(Error::AlreadyUp {
                name: config.name.clone(),
                dir: config.dir.clone(),
            });
        }

        // A directory without state is what `down --keep` or a failed `up` left behind.
        clear_cluster_dir(&config.dir, false)?;
        for sub in ["logs", "pki", "nodes"] {
            create_dir(&config.dir.join(sub))?;
        }
        let mut cluster = Cluster {
            state: ClusterState {
                name: config.name.clone(),
                dir: config.dir.clone(),
                bin_dir: config.bin_dir.clone(),
                underlay_netns: plan::underlay_netns(&config.name),
                plan: None,
                root_link: None,
                networks: BTreeMap::new(),
                etcd_client_port: 0,
                etcd_peer_port: 0,
                api_server_port: 0,
                processes: Vec::new(),
                nodes: Vec::new(),
            },
        };
        cluster.save()?;

        let mut progress = Progress::new(&config.name);
        match cluster.bring_up(&mut progress).await {
            Ok(()) => {
                progress.done();
                Ok(cluster)
            }
            Err(error) => {
                eprintln!(
                    "[{}] up failed; removing what it made, keeping logs in {}",
                    config.name,
                    config.dir.join("logs").display()
                );
                if let Err(cleanup) = down(&config.dir, true) {
                    eprintln!("[{}] cleanup after the failed up: {cleanup}", config.name);
                }
                Err(error)
            }
        }
    }

    /// The cluster whose state is in `dir`.
    pub fn load(dir: &Path) -> Result<Cluster, Error> {
        load_state(dir)?
            .map(|state| Cluster { state })
            .ok_or_else(|| Error::NotUp {
                dir: dir.to_path_buf(),
            })
    }

    /// Everything recorded about the cluster.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The admin kubeconfig (user `kubernetes-admin` in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.dir.join("kubeconfig")
    }

    /// The CA certificate every cluster certificate chains to.
    pub fn ca_cert(&self) -> PathBuf {
        self.pki_dir().join("ca.crt")
    }

    /// The directory with the CA, serving and client certificates and the service-account keys.
    pub fn pki_dir(&self) -> PathBuf {
        self.state.dir.join("pki")
    }

    /// The API server's URL, reachable from the root namespace and from every node.
    pub fn api_server_url(&self) -> Result<String, Error> {
        Ok(format!(
            "https://{}:{}",
            self.plan()?.root_address(),
            self.state.api_server_port
        ))
    }

    /// The `kubectl` binary the cluster was made with.
    pub fn kubectl_binary(&self) -> PathBuf {
        self.state.bin_dir.join("kubectl")
    }

    /// The nodes, in the order they were added.
    pub fn nodes(&self) -> &[NodeRecord] {
        &self.state.nodes
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.state.nodes.iter().find(|node| node.name == name)
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        client_for(&self.kubeconfig()).await
    }

    /// Adds a node: its network namespace on `subnet`, its directories, its credentials
    /// (`system:node:<name>` in `system:nodes`, in `<node dir>/kubeconfig`) and its Node
    /// object, which says NotReady until a node runtime reports.
    pub async fn add_node(
        &mut self,
        name: &str,
        subnet: Subnet,
        labels: &BTreeMap<String, String>,
    ) -> Result<NodeRecord, Error> {
        plan::validate_name("node", name, MAX_NODE_NAME).map_err(Error::InvalidName)?;
        if self.node(name).is_some() {
            return Err(Error::NodeExists {
                cluster: self.state.name.clone(),
                node: name.into(),
            });
        }
        let plan = self.plan()?;
        let address = (0..)
            .map_while(|index| plan.node_address(subnet, index))
            .find(|address| self.state.nodes.iter().all(|node| node.address != *address))
            .ok_or(Error::SubnetFull {
                cluster: self.state.name.clone(),
                subnet: subnet.letter(),
            })?;
        let node = NodeRecord {
            name: name.to_string(),
            netns: plan::node_netns(&self.state.name, name),
            subnet,
            address,
            gateway: plan.router_address(subnet),
            underlay_link: plan::node_underlay_link(subnet, address),
            labels: labels.clone(),
            dir: self.state.dir.join("nodes").join(name),
            runtime: None,
        };
        self.state.nodes.push(node.clone());
        self.save()?;

        if let Err(error) = self.make_node(&node).await {
            if let Err(cleanup) = self.remove_node(name).await {
                eprintln!("[{}] cleanup of node {name}: {cleanup}", self.state.name);
            }
            return Err(error);
        }
        Ok(node)
    }

    /// Removes a node: its Node object, its namespace and its directory.
    pub async fn remove_node(&mut self, name: &str) -> Result<(), Error> {
        let node = self.node(name).cloned().ok_or_else(|| Error::NoSuchNode {
            cluster: self.state.name.clone(),
            node: name.to_string(),
        })?;
        // The runtime first: it tears down its pods' sandboxes while the node still exists.
        if let Some(runtime) = &node.runtime {
            runtime.stop(RUNTIME_STOP_GRACE)?;
        }

        // The local parts go even when the API server cannot be reached.
        let api = match self.client().await {
            Ok(client) => match Api::<Node>::all(client)
                .delete(name, &Default::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(error) => Err(Error::Kube(error)),
            },
            Err(error) => Err(error),
        };
        netns::delete_netns(&node.netns)?;
        remove_dir_if_present(&node.dir)?;
        self.state.nodes.retain(|node| node.name != name);
        self.save()?;
        api
    }

    /// Starts the node runtime on a node (through [`NodeRecord::command`], with the node's
    /// kubeconfig) and records its PID, so `down` and `node remove` end it first. Waits until
    /// it has reported the node's status once.
    pub async fn start_runtime(
        &mut self,
        name: &str,
        binary: &Path,
    ) -> Result<ProcessRecord, Error> {
        let node = self.node(name).cloned().ok_or_else(|| Error::NoSuchNode {
            cluster: self.state.name.clone(),
            node: name.to_string(),
        })?;
        if let Some(running) = node.runtime.as_ref().filter(|runtime| runtime.is_running()) {
            return Ok(running.clone());
        }
        let mut command = node.command(&binary.to_string_lossy());
        command
            .arg("run")
            .arg("--node")
            .arg(&node.name)
            .arg("--kubeconfig")
            .arg(node.kubeconfig())
            .arg("--node-dir")
            .arg(&node.dir);
        let log = self
            .state
            .dir
            .join("logs")
            .join(format!("node-runtime-{name}.log"));
        let record = process::spawn(&format!("node-runtime-{name}"), command, &log)?;
        if let Some(entry) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            entry.runtime = Some(record.clone());
        }
        self.save()?;

        let nodes: Api<Node> = Api::all(self.client().await?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !record.is_running() {
                return Err(Error::Exited {
                    name: record.name.clone(),
                    log: record.log.clone(),
                    tail: record.log_tail(20),
                });
            }
            let reason = nodes
                .get_opt(name)
                .await?
                .and_then(|node| node.status?.conditions)
                .and_then(|conditions| conditions.into_iter().find(|c| c.type_ == "Ready"))
                .and_then(|ready| ready.reason);
            match reason.as_deref() {
                Some("NodeRuntimeNotStarted") | None if Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Some("NodeRuntimeNotStarted") | None => {
                    return Err(Error::Timeout {
                        what: format!("the node runtime of {name} to report"),
                        timeout: READY_TIMEOUT,
                        last: record.log_tail(5),
                    });
                }
                Some(_) => return Ok(record),
            }
        }
    }

    /// Processes, API readiness and nodes.
    pub async fn status(&self) -> Status {
        let processes = self
            .state
            .processes
            .iter()
            .chain(
                self.state
                    .nodes
                    .iter()
                    .filter_map(|node| node.runtime.as_ref()),
            )
            .map(|process| (process.clone(), process.is_running()))
            .collect();
        let api = match tokio::time::timeout(Duration::from_secs(5), self.api_readiness()).await {
            Ok(Ok(Readiness::Ready)) => Ok(()),
            Ok(Ok(Readiness::NotYet(why))) => Err(why),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 5s".to_string()),
        };
        Status {
            processes,
            api,
            nodes: self.state.nodes.clone(),
            kubeconfig: self.kubeconfig(),
        }
    }

    async fn bring_up(&mut self, progress: &mut Progress) -> Result<(), Error> {
        self.make_underlay()?;
        let plan = self.plan()?;
        progress.step(&format!(
            "underlay {} in namespace {}, root link {} {}",
            plan.range(),
            self.state.underlay_netns,
            plan.root_link(),
            plan.root_address()
        ));

        let [client_port, peer_port] = free_ports(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let [api_port] = free_ports(IpAddr::V4(plan.root_address()))?;
        self.state.etcd_client_port = client_port;
        self.state.etcd_peer_port = peer_port;
        self.state.api_server_port = api_port;
        self.make_pki()?;
        progress.step("certificates and kubeconfigs");

        // The API server retries etcd until it answers, so both start at once; `/readyz`
        // includes etcd.
        self.start_etcd()?;
        self.start_api_server()?;
        self.wait_until("kube-apiserver /readyz", || self.api_readiness())
            .await?;
        progress.step(&format!("API server ready at {}", self.api_server_url()?));

        self.start_controller_manager()?;
        self.start_scheduler()?;
        let client = self.client().await?;
        for lease in ["kube-controller-manager", "kube-scheduler"] {
            let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
            self.wait_until(&format!("{lease} to hold its leader lease"), || async {
                let holder = leases
                    .get_opt(lease)
                    .await?
                    .and_then(|l| l.spec?.holder_identity);
                Ok(match holder {
                    Some(_) => Readiness::Ready,
                    None => Readiness::NotYet("no lease holder yet".to_string()),
                })
            })
            .await?;
        }
        progress.step("controller manager and scheduler hold their leases");
        Ok(())
    }

    fn make_underlay(&mut self) -> Result<(), Error> {
        let underlay = self.state.underlay_netns.clone();
        netns::add_netns(&underlay)?;
        // The underlay namespace is the router between the subnets; nothing else forwards.
        netns::sysctl_in(&underlay, "net.ipv4.ip_forward", "1")?;

        // Creating the root veth claims the slot: the first free name wins.
        let mut claimed = None;
        for slot in plan::slot_order(&self.state.name) {
            let plan = AddressPlan::new(slot).expect("slot_order yields slots below SLOTS");
            let link = plan.root_link();
            if netns::root_link_exists(&link) {
                continue;
            }
            match ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "uplink", "netns", &underlay,
            ]) {
                Ok(_) => {
                    claimed = Some(plan);
                    break;
                }
                // Another cluster took it between the check and the add.
                Err(_) if netns::root_link_exists(&link) => continue,
                Err(error) => return Err(error),
            }
        }
        let plan = claimed.ok_or(Error::NoFreeSlot)?;
        self.state.plan = Some(plan);
        self.state.root_link = Some(plan.root_link());
        self.state.networks = BTreeMap::from([
            ("range".to_string(), plan.range()),
            ("uplink".to_string(), plan.uplink()),
            ("a".to_string(), plan.subnet(Subnet::A)),
            ("b".to_string(), plan.subnet(Subnet::B)),
        ]);
        self.save()?;

        for subnet in Subnet::ALL {
            let bridge = subnet.bridge();
            let router = format!("{}/24", plan.router_address(subnet));
            ip_in(&underlay, &["link", "add", &bridge, "type", "bridge"])?;
            ip_in(&underlay, &["addr", "add", &router, "dev", &bridge])?;
            ip_in(&underlay, &["link", "set", &bridge, "up"])?;
        }

        let link = plan.root_link();
        let router_uplink = format!("{}/30", plan.router_uplink_address());
        ip_in(&underlay, &["addr", "add", &router_uplink, "dev", "uplink"])?;
        ip_in(&underlay, &["link", "set", "uplink", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", plan.root_address()),
            "dev",
            &link,
        ])?;
        ip(&["link", "set", &link, "up"])?;
        // Only this cluster's /22, never a default route or a pod range.
        let gateway = plan.router_uplink_address().to_string();
        ip(&[
            "route",
            "add",
            &plan.range().to_string(),
            "via",
            &gateway,
            "dev",
            &link,
        ])?;
        Ok(())
    }

    fn make_pki(&self) -> Result<(), Error> {
        let pki = self.pki_dir();
        let plan = self.plan()?;
        let ca = CertificateAuthority::generate(&self.state.name)?;
        ca.write(&pki)?;

        let serving = ca.issue_server(
            &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(plan.root_address()),
                IpAddr::V4(KUBERNETES_SERVICE_IP),
            ],
        )?;
        pki::write_issued(&pki, "apiserver", &serving)?;
        pki::write_service_account_keys(&pki)?;

        // Each control-plane client has its own identity, so RBAC's bootstrap roles apply.
        let server = self.api_server_url()?;
        let clients = [
            (
                "admin",
                "kubernetes-admin",
                vec!["system:masters"],
                self.kubeconfig(),
            ),
            (
                "controller-manager",
                "system:kube-controller-manager",
                vec![],
                pki.join("controller-manager.kubeconfig"),
            ),
            (
                "scheduler",
                "system:kube-scheduler",
                vec![],
                pki.join("scheduler.kubeconfig"),
            ),
        ];
        for (stem, user, groups, kubeconfig) in clients {
            let issued = ca.issue_client(user, &groups)?;
            let (cert, key) = pki::write_issued(&pki, stem, &issued)?;
            let text = pki::kubeconfig(&server, &self.ca_cert(), &cert, &key, user);
            std::fs::write(&kubeconfig, text).map_err(|source| Error::io(&kubeconfig, source))?;
        }
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<(), Error> {
        let client = format!("http://127.0.0.1:{}", self.state.etcd_client_port);
        let peer = format!("http://127.0.0.1:{}", self.state.etcd_peer_port);
        let data = self.state.dir.join("etcd");
        let mut command = Command::new(self.state.bin_dir.join("etcd"));
        command
            .arg("--name=default")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // A throwaway cluster: losing its data in a power cut does not matter, speed does.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        self.start("etcd", command)
    }

    fn start_api_server(&mut self) -> Result<(), Error> {
        let plan = self.plan()?;
        let pki = self.pki_dir();
        let file = |name: &str| pki.join(name).display().to_string();
        let mut command = Command::new(self.state.bin_dir.join("kube-apiserver"));
        command
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.state.etcd_client_port
            ))
            // Only the root namespace's underlay address: reachable from the root namespace
            // and, through the underlay router, from every node; not from the machine's
            // own interfaces.
            .arg(format!("--bind-address={}", plan.root_address()))
            .arg(format!("--advertise-address={}", plan.root_address()))
            .arg(format!("--secure-port={}", self.state.api_server_port))
            .arg(format!("--tls-cert-file={}", file("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", file("apiserver.key")))
            .arg(format!("--client-ca-file={}", file("ca.crt")))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!("--service-account-key-file={}", file("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file("sa.key")
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg(format!("--cert-dir={}", file("apiserver-generated")))
            .arg("--allow-privileged=true")
            .arg("--profiling=false");
        self.start("kube-apiserver", command)
    }

    fn start_controller_manager(&mut self) -> Result<(), Error> {
        let pki = self.pki_dir();
        let file = |name: &str| pki.join(name).display().to_string();
        let kubeconfig = file("controller-manager.kubeconfig");
        let mut command = Command::new(self.state.bin_dir.join("kube-controller-manager"));
        command
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            // No HTTPS endpoint at all: nothing to collide between clusters or to expose.
            .arg("--secure-port=0")
            // Every controller that is on by default: garbage collector, namespace,
            // serviceaccount-token, daemonset, deployment, replicaset, nodelifecycle, ...
            .arg("--controllers=*")
            // Each controller acts as its own service account; the bootstrap RBAC roles
            // are written for that.
            .arg("--use-service-account-credentials=true")
            .arg("--allocate-node-cidrs=false")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg(format!(
                "--service-account-private-key-file={}",
                file("sa.key")
            ))
            .arg(format!("--root-ca-file={}", file("ca.crt")))
            .arg(format!("--cluster-signing-cert-file={}", file("ca.crt")))
            .arg(format!("--cluster-signing-key-file={}", file("ca.key")))
            .arg("--profiling=false");
        self.start("kube-controller-manager", command)
    }

    fn start_scheduler(&mut self) -> Result<(), Error> {
        let kubeconfig = self
            .pki_dir()
            .join("scheduler.kubeconfig")
            .display()
            .to_string();
        let mut command = Command::new(self.state.bin_dir.join("kube-scheduler"));
        command
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--secure-port=0")
            .arg("--profiling=false");
        self.start("kube-scheduler", command)
    }

    fn start(&mut self, name: &str, command: Command) -> Result<(), Error> {
        let log = self.state.dir.join("logs").join(format!("{name}.log"));
        let record = process::spawn(name, command, &log)?;
        self.state.processes.push(record);
        self.save()
    }

    async fn make_node(&self, node: &NodeRecord) -> Result<(), Error> {
        let underlay = &self.state.underlay_netns;
        netns::add_netns(&node.netns)?;
        let link = &node.underlay_link;
        // The node end is made inside the node namespace directly: no move between namespaces.
        ip_in(
            underlay,
            &[
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ],
        )?;
        ip_in(
            underlay,
            &["link", "set", link, "master", &node.subnet.bridge(), "up"],
        )?;
        ip_in(
            &node.netns,
            &[
                "addr",
                "add",
                &format!("{}/24", node.address),
                "dev",
                "eth0",
            ],
        )?;
        ip_in(&node.netns, &["link", "set", "eth0", "up"])?;
        ip_in(
            &node.netns,
            &["route", "add", "default", "via", &node.gateway.to_string()],
        )?;

        for sub in NODE_DIRS {
            create_dir(&node.dir.join(sub))?;
        }
        let ca = CertificateAuthority::load(&self.state.name, &self.pki_dir())?;
        let user = format!("system:node:{}", node.name);
        let issued = ca.issue_client(&user, &["system:nodes"])?;
        let (cert, key) = pki::write_issued(&node.dir, "node", &issued)?;
        let text = pki::kubeconfig(&self.api_server_url()?, &self.ca_cert(), &cert, &key, &user);
        let kubeconfig = node.kubeconfig();
        std::fs::write(&kubeconfig, text).map_err(|source| Error::io(&kubeconfig, source))?;

        let nodes: Api<Node> = Api::all(self.client().await?);
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), node.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "kubernetes.io/arch".to_string(),
                kubernetes_arch().to_string(),
            ),
        ]);
        labels.extend(node.labels.clone());
        let object = Node {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        nodes.create(&PostParams::default(), &object).await?;
        let status = serde_json::json!({
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": node.address.to_string() },
                    { "type": "Hostname", "address": node.name },
                ],
                "conditions": [{
                    "type": "Ready",
                    "status": "False",
                    "reason": "NodeRuntimeNotStarted",
                    "message": "no node runtime has reported on this node yet",
                }],
            }
        });
        nodes
            .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    async fn api_readiness(&self) -> Result<Readiness, Error> {
        let client = self.client().await?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a GET with an empty body is a valid request");
        Ok(match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => Readiness::Ready,
            Ok(body) => Readiness::NotYet(body),
            Err(error) => Readiness::NotYet(error.to_string()),
        })
    }

    /// Polls `check` until it reports ready; fails early when a started process exits.
    async fn wait_until<F, Fut>(&self, what: &str, mut check: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Readiness, Error>>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(dead) = self
                .state
                .processes
                .iter()
                .find(|process| !process.is_running())
            {
                return Err(Error::Exited {
                    name: dead.name.clone(),
                    log: dead.log.clone(),
                    tail: dead.log_tail(20),
                });
            }
            let last = match check().await {
                Ok(Readiness::Ready) => return Ok(()),
                Ok(Readiness::NotYet(why)) => why,
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    timeout: READY_TIMEOUT,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn plan(&self) -> Result<AddressPlan, Error> {
        self.state.plan.ok_or_else(|| Error::NotUp {
            dir: self.state.dir.clone(),
        })
    }

    fn save(&self) -> Result<(), Error> {
        let path = self.state.dir.join(STATE_FILE);
        let temporary = self.state.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.state).expect("the state serialises to JSON");
        std::fs::write(&temporary, text).map_err(|source| Error::io(&temporary, source))?;
        std::fs::rename(&temporary, &path).map_err(|source| Error::io(&path, source))
    }
}

impl NodeRecord {
    /// The node's kubeconfig (user `system:node:<name>`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The argv prefix that runs a command "on the node": in its network namespace, in a
    /// private mount namespace where the node's own `etc/cni/net.d`, `opt/cni/bin`,
    /// `var/run` and `var/log` replace the machine's, and with the node's name as hostname
    /// (a private UTS namespace). Append the command and its arguments.
    ///
    /// Known limitation: `/etc/cni/net.d` and `/opt/cni/bin` must exist as mount points, so
    /// they are created in the machine's filesystem when missing (empty, and left in place,
    /// since other nodes and clusters may be using them).
    pub fn command_prefix(&self) -> Vec<String> {
        let mut script = String::from("set -e; mkdir -p /etc/cni/net.d /opt/cni/bin; ");
        for sub in NODE_BIND_MOUNTS {
            let source = shell_quote(&self.dir.join(sub).to_string_lossy());
            script.push_str(&format!("mount --bind {source} /{sub}; "));
        }
        script.push_str(&format!(
            "hostname {}; exec \"$@\"",
            shell_quote(&self.name)
        ));
        [
            "ip",
            "netns",
            "exec",
            &self.netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            // `$0` of the script, shown by `ps`.
            &format!("tortie-node-{}", self.name),
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// A [`Command`] that runs `program` on the node (see [`NodeRecord::command_prefix`]).
    pub fn command(&self, program: &str) -> Command {
        let prefix = self.command_prefix();
        let mut command = Command::new(&prefix[0]);
        command.args(&prefix[1..]).arg(program);
        command
    }
}

/// Takes a cluster down: ends exactly the processes `up` started (verified by PID and start
/// time), deletes the namespaces and the root link it made, and removes the cluster
/// directory unless `keep`. Safe to run twice and after a partial `up`.
pub fn down(dir: &Path, keep: bool) -> Result<DownReport, Error> {
    let mut report = DownReport::default();
    let Some(state) = load_state(dir)? else {
        if !keep {
            clear_cluster_dir(dir, true)?;
        }
        return Ok(report);
    };

    // Keep going after a failure, so one stuck piece does not leave everything else behind.
    let mut failures = Vec::new();
    // Node runtimes first, while the API server and the node namespaces are still there:
    // each stops its pods and removes their sandboxes on SIGTERM.
    for runtime in state.nodes.iter().filter_map(|node| node.runtime.as_ref()) {
        match runtime.stop(RUNTIME_STOP_GRACE) {
            Ok(stopped) => report.processes.push((runtime.clone(), stopped)),
            Err(error) => failures.push(error.to_string()),
        }
    }
    for process in state.processes.iter().rev() {
        match process.stop(STOP_GRACE) {
            Ok(stopped) => report.processes.push((process.clone(), stopped)),
            Err(error) => failures.push(error.to_string()),
        }
    }
    let mut namespaces: Vec<&str> = state.nodes.iter().map(|node| node.netns.as_str()).collect();
    namespaces.push(&state.underlay_netns);
    if let Some(link) = state.root_link {
        // Deleting the root end takes the underlay end along.
        match netns::delete_root_link(&link) {
            Ok(()) => report.links.push(link),
            Err(error) => failures.push(error.to_string()),
        }
    }
    for name in namespaces {
        match netns::delete_netns(name) {
            Ok(()) => report.netns.push(name.to_string()),
            Err(error) => failures.push(error.to_string()),
        }
    }
    if !failures.is_empty() {
        return Err(Error::Teardown(failures.join("\n")));
    }

    let state_file = dir.join(STATE_FILE);
    std::fs::remove_file(&state_file).map_err(|source| Error::io(&state_file, source))?;
    if !keep {
        clear_cluster_dir(dir, true)?;
    }
    Ok(report)
}

/// A client for the cluster a kubeconfig file points at.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client, Error> {
    let config_error = |message: String| Error::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        message,
    };
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| config_error(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| config_error(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}

fn load_state(dir: &Path) -> Result<Option<ClusterState>, Error> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::io(&path, source)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| Error::State {
            path,
            message: error.to_string(),
        })
}

/// Ports free right now on `address`, all different. Another program could take one
/// before the process that is meant to gets it; a clash shows up as that process exiting.
fn free_ports<const N: usize>(address: IpAddr) -> Result<[u16; N], Error> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let no_port = |source| Error::NoFreePort { address, source };
        let listener = TcpListener::bind((address, 0)).map_err(no_port)?;
        *port = listener.local_addr().map_err(no_port)?.port();
        // Held until all are chosen, so the kernel cannot hand out one twice.
        listeners.push(listener);
    }
    Ok(ports)
}

/// The Kubernetes name of this machine's architecture (`amd64`, `arm64`, ...).
pub fn kubernetes_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `text` quoted for `sh` (left alone when it needs no quoting).
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn create_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::io(path, source))
}

/// Removes what a cluster puts in its directory, then the directory itself if asked and
/// empty.
fn clear_cluster_dir(dir: &Path, remove_dir: bool) -> Result<(), Error> {
    for entry in CLUSTER_DIR_ENTRIES {
        let path = dir.join(entry);
        if path.is_dir() {
            remove_dir_if_present(&path)?;
        } else if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Error::io(&path, error));
        }
    }
    if !remove_dir {
        return Ok(());
    }
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            eprintln!(
                "left {} in place: it holds files the cluster did not make",
                dir.display()
            );
            Ok(())
        }
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dir, error)),
        _ => Ok(()),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, error)),
        _ => Ok(()),
    }
}

/// Progress lines with the time of each step and the total.
struct Progress {
    name: String,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(name: &str) -> Self {
        let now = Instant::now();
        eprintln!("[{name}] bringing the cluster up");
        Progress {
            name: name.to_string(),
            start: now,
            last: now,
        }
    }

    fn step(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "[{}] {what} (+{:.1}s, {:.1}s total)",
            self.name,
            (now - self.last).as_secs_f64(),
            (now - self.start).as_secs_f64()
        );
        self.last = now;
    }

    fn done(&self) {
        eprintln!(
            "[{}] up in {:.1}s",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_command_prefix_binds_the_node_dirs_and_runs_the_command() {
        let node = NodeRecord {
            name: "n1".into(),
            netns: "tortie_c_node_n1".into(),
            subnet: Subnet::A,
            address: Ipv4Addr::new(198, 18, 1, 10),
            gateway: Ipv4Addr::new(198, 18, 1, 1),
            underlay_link: "na10".into(),
            labels: BTreeMap::new(),
            dir: PathBuf::from("/tmp/it's/nodes/n1"),
            runtime: None,
        };
        let prefix = node.command_prefix();
        assert_eq!(&prefix[..4], ["ip", "netns", "exec", "tortie_c_node_n1"]);
        let script = &prefix[11];
        assert!(
            script.contains(r"mount --bind '/tmp/it'\''s/nodes/n1/var/run' /var/run;"),
            "{script}"
        );
        assert!(script.ends_with("exec \"$@\""));
    }
}
