//! What end-to-end tests use: a cluster per test that is removed when the test ends (also
//! when it panics), `kubectl`, and waiting for conditions.
//!
//! Environment:
//! - `TORTIE_E2E_KUBECONFIG`: use that cluster (for example kind) instead of starting one;
//!   [`TestCluster::start`] only. Tests then run against whatever that kubeconfig points
//!   at, so point it at a throwaway cluster. A plain `KUBECONFIG` is deliberately ignored:
//!   tests must never touch a person's everyday cluster by accident.
//! - `TORTIE_E2E_REQUIRE=1`: a missing prerequisite (root, control-plane binaries) fails
//!   the test instead of skipping it.
//! - `TORTIE_BIN_DIR`: where the control-plane binaries are (default: the build cache).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::{self, Cluster, ClusterConfig, DownReport, NodeRecord};
use crate::plan::Subnet;
use crate::runtime::{self, PodRecord};

/// How often `wait_for` checks its condition.
const POLL: Duration = Duration::from_millis(100);

/// A cluster for one test. A local one is taken down on drop; its directory is kept when
/// the test panicked, so the logs can be read.
pub struct TestCluster {
    local: Option<Cluster>,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl TestCluster {
    /// The cluster named by `TORTIE_E2E_KUBECONFIG`, or else a fresh local one.
    /// `None` means the test is skipped (the reason is printed).
    pub async fn start(test: &str) -> Option<TestCluster> {
        let external = std::env::var_os("TORTIE_E2E_KUBECONFIG").filter(|value| !value.is_empty());
        match external {
            Some(kubeconfig) => {
                eprintln!(
                    "[{test}] using the cluster of kubeconfig {}",
                    kubeconfig.to_string_lossy()
                );
                let kubectl = cluster::bin_dir()
                    .map(|dir| dir.join("kubectl"))
                    .ok()
                    .filter(|path| path.is_file())
                    .unwrap_or_else(|| PathBuf::from("kubectl"));
                Some(TestCluster {
                    local: None,
                    kubeconfig: kubeconfig.into(),
                    kubectl,
                })
            }
            None => TestCluster::start_local(test).await,
        }
    }

    /// A fresh local cluster with a unique name, whatever the environment says; for tests of
    /// the local cluster itself and of anything that needs its nodes' namespaces.
    pub async fn start_local(test: &str) -> Option<TestCluster> {
        if let Err(reason) = local_prerequisites() {
            skip(test, &reason);
            return None;
        }
        let name = unique_name();
        let config = ClusterConfig {
            dir: cluster::default_cluster_dir(&name),
            name,
            bin_dir: cluster::bin_dir().expect("local_prerequisites found the bin dir"),
        };
        let cluster = Cluster::up(&config).await.unwrap_or_else(|error| {
            panic!("[{test}] cluster {} did not come up: {error}", config.name)
        });
        Some(TestCluster {
            kubeconfig: cluster.kubeconfig(),
            kubectl: cluster.kubectl_binary(),
            local: Some(cluster),
        })
    }

    /// The local cluster, or `None` on an external one.
    pub fn local(&self) -> Option<&Cluster> {
        self.local.as_ref()
    }

    /// The local cluster; panics on an external one (the test needs node namespaces).
    pub fn cluster(&self) -> &Cluster {
        self.local
            .as_ref()
            .expect("this test needs a local cluster (TestCluster::start_local)")
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl against this cluster and returns what it printed, whatever the outcome.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("could not run {}: {error}", self.kubectl.display()))
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args);
        assert!(
            output.status.success(),
            "kubectl {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs kubectl with `input` on its stdin and returns what it printed, whatever the
    /// outcome: for `-f -` commands, and for checking what the API server refuses.
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("could not run {}: {error}", self.kubectl.display()));
        child
            .stdin
            .take()
            .expect("stdin was piped")
            .write_all(input.as_bytes())
            .expect("kubectl reads its stdin");
        child
            .wait_with_output()
            .expect("kubectl runs to completion")
    }

    /// `kubectl apply -f -` with `yaml` on stdin; returns kubectl's stdout.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        let output = self.kubectl_with_input(&["apply", "-f", "-"], yaml);
        assert!(
            output.status.success(),
            "kubectl apply failed ({}): {}\n--- manifest ---\n{yaml}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        cluster::client_for(&self.kubeconfig)
            .await
            .unwrap_or_else(|error| panic!("no client for {}: {error}", self.kubeconfig.display()))
    }

    /// Adds a node to the local cluster.
    pub async fn add_node(
        &mut self,
        name: &str,
        subnet: Subnet,
        labels: &[(&str, &str)],
    ) -> NodeRecord {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        self.local
            .as_mut()
            .expect("add_node needs a local cluster (TestCluster::start_local)")
            .add_node(name, subnet, &labels)
            .await
            .unwrap_or_else(|error| panic!("node {name} could not be added: {error}"))
    }

    /// Adds a node to the local cluster and starts its node runtime; returns once the
    /// runtime has reported the node's status.
    pub async fn add_node_with_runtime(
        &mut self,
        name: &str,
        subnet: Subnet,
        labels: &[(&str, &str)],
    ) -> NodeRecord {
        self.add_node(name, subnet, labels).await;
        let binary = cluster::runtime_binary().unwrap_or_else(|error| panic!("{error}"));
        let cluster = self
            .local
            .as_mut()
            .expect("add_node_with_runtime needs a local cluster");
        cluster
            .start_runtime(name, &binary)
            .await
            .unwrap_or_else(|error| panic!("node runtime of {name} did not start: {error}"));
        cluster
            .node(name)
            .cloned()
            .expect("the node was just added")
    }

    /// One field of a pod, by JSONPath (`{.status.podIP}`); empty when the pod is missing.
    pub fn pod_field(&self, namespace: &str, pod: &str, jsonpath: &str) -> String {
        let output = self.kubectl_output(&[
            "get",
            "pod",
            "-n",
            namespace,
            pod,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// True while the Pod object exists; false once the API server says NotFound. Panics on
    /// any other answer, so a failing kubectl is not mistaken for a deleted pod.
    pub fn pod_exists(&self, namespace: &str, pod: &str) -> bool {
        let output = self.kubectl_output(&["get", "pod", "-n", namespace, pod, "-o", "name"]);
        if output.status.success() {
            return true;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("NotFound"),
            "kubectl get pod {namespace}/{pod}: {stderr}"
        );
        false
    }

    /// The pod's address from its status.
    pub fn pod_ip(&self, namespace: &str, pod: &str) -> String {
        let ip = self.pod_field(namespace, pod, "{.status.podIP}");
        assert!(!ip.is_empty(), "pod {namespace}/{pod} has no podIP");
        ip
    }

    /// Waits until the pod's phase is Running.
    pub fn wait_pod_running(&self, namespace: &str, pod: &str, timeout: Duration) {
        wait_for(
            &format!("pod {namespace}/{pod} to be Running"),
            timeout,
            || self.pod_field(namespace, pod, "{.status.phase}") == "Running",
        );
    }

    /// Waits until the pod's Ready condition is True.
    pub fn wait_pod_ready(&self, namespace: &str, pod: &str, timeout: Duration) {
        wait_for(
            &format!("pod {namespace}/{pod} to be Ready"),
            timeout,
            || {
                self.pod_field(
                    namespace,
                    pod,
                    "{.status.conditions[?(@.type==\"Ready\")].status}",
                ) == "True"
            },
        );
    }

    /// The node a pod runs on, from the local cluster's records.
    pub fn pod_node(&self, namespace: &str, pod: &str) -> NodeRecord {
        let node = self.pod_field(namespace, pod, "{.spec.nodeName}");
        self.cluster().node(&node).cloned().unwrap_or_else(|| {
            panic!("pod {namespace}/{pod} is on {node:?}, not a node of this cluster")
        })
    }

    /// What the node runtime recorded about a running pod (its netns, address, PIDs).
    pub fn pod_record(&self, namespace: &str, pod: &str) -> PodRecord {
        let node = self.pod_node(namespace, pod);
        let uid = self.pod_field(namespace, pod, "{.metadata.uid}");
        let path = runtime::pod_record_path(&node.dir, &uid);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "pod {namespace}/{pod}: no runtime record at {}: {error}",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// The log file of one of the pod's containers on its node.
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        let node = self.pod_node(namespace, pod);
        let uid = self.pod_field(namespace, pod, "{.metadata.uid}");
        let path = node
            .dir
            .join("var/log/pods")
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(format!("{container}.log"));
        std::fs::read_to_string(&path).unwrap_or_default()
    }

    /// Runs a command inside a pod: in the network and mount namespaces of its first running
    /// container, on its node. Returns the output whatever the outcome.
    pub fn exec_in_pod(&self, namespace: &str, pod: &str, command: &[&str]) -> Output {
        let record = self.pod_record(namespace, pod);
        let pid = record
            .containers
            .values()
            .next()
            .unwrap_or_else(|| panic!("pod {namespace}/{pod} has no running container"));
        Command::new("nsenter")
            .args(["--target", &pid.to_string(), "--mount", "--net", "--"])
            .args(command)
            .output()
            .unwrap_or_else(|error| panic!("nsenter into pod {namespace}/{pod}: {error}"))
    }

    /// Connects from a pod to `ip:port` and returns what the server said (the test server
    /// answers with its pod's name), or what went wrong.
    pub fn tcp_check(&self, from: (&str, &str), ip: &str, port: u16) -> Result<String, String> {
        let binary = cluster::runtime_binary().unwrap_or_else(|error| panic!("{error}"));
        let output = self.exec_in_pod(
            from.0,
            from.1,
            &[&binary.to_string_lossy(), "connect", ip, &port.to_string()],
        );
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    /// True when one ping from a pod to `ip` is answered.
    pub fn ping(&self, from: (&str, &str), ip: &str) -> bool {
        self.exec_in_pod(from.0, from.1, &["ping", "-c", "1", "-W", "2", ip])
            .status
            .success()
    }

    /// Takes the local cluster down now and says what that did (drop does the same
    /// silently). Panics when teardown leaves something behind.
    pub fn down(mut self) -> DownReport {
        let cluster = self.local.take().expect("down needs a local cluster");
        cluster::down(cluster.dir(), false)
            .unwrap_or_else(|error| panic!("cluster {} teardown: {error}", cluster.state().name))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let Some(cluster) = self.local.take() else {
            return;
        };
        let keep = std::thread::panicking();
        match cluster::down(cluster.dir(), keep) {
            Ok(_) if keep => eprintln!(
                "[{}] cluster removed after a failure; logs kept in {}",
                cluster.state().name,
                cluster.dir().join("logs").display()
            ),
            Ok(_) => {}
            Err(error) => eprintln!("[{}] teardown failed: {error}", cluster.state().name),
        }
    }
}

/// Polls `condition` every 100 ms until it holds; panics after `timeout` naming what was
/// waited for.
pub fn wait_for(description: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {description}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] with an async condition.
pub async fn wait_for_async<F, Fut>(description: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {description}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Why a local cluster cannot start here, if it cannot.
pub fn local_prerequisites() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root (network namespaces, veths, bind mounts)".to_string());
    }
    let bin_dir = cluster::bin_dir().map_err(|error| error.to_string())?;
    let missing = cluster::missing_binaries(&bin_dir);
    if !missing.is_empty() {
        return Err(format!(
            "control-plane binaries missing in {}: {}; run tests/e2e/scripts/build-control-plane.sh",
            bin_dir.display(),
            missing.join(", ")
        ));
    }
    Ok(())
}

/// Skips a test with its reason, or fails it when `TORTIE_E2E_REQUIRE=1`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("TORTIE_E2E_REQUIRE").is_ok_and(|value| value == "1") {
        panic!("[{test}] prerequisite missing and TORTIE_E2E_REQUIRE=1: {reason}");
    }
    // Straight to the stderr handle: the test harness hides `eprintln!` of passing tests,
    // and a skip should be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED [{test}]: {reason} (set TORTIE_E2E_REQUIRE=1 to fail instead)"
    );
}

/// A cluster name no other test in this or another test process uses.
fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "e2e{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
