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
