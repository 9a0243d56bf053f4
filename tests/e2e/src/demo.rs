//! The main job, as a person would do it: install Tortie with its Helm chart on a cluster
//! whose nodes have no network yet, wait for the operator and the agents, apply an IPPool
//! written the way a Calico user writes one, start a pod on each of two nodes and check
//! that they reach each other. `tortie-cluster demo` runs it on a fresh local cluster and
//! leaves it running; the main-job end-to-end test runs the same code and asserts on the
//! report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::Error as ClusterError;
use crate::cluster::{Cluster, runtime_binary};
use crate::plan::Subnet;

/// What the demo needs to know.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The chart to install (`charts/tortie`).
    pub chart: PathBuf,
    /// The IPPool manifest applied after the install; `None` keeps the default pool the
    /// operator makes from the chart's `ipPool` values.
    pub pool_manifest: Option<PathBuf>,
    /// The pod network given to the chart.
    pub pool_cidr: String,
    /// More `--set` values for the chart, such as `ipPool.encapsulation=VXLAN`.
    pub helm_values: Vec<String>,
    /// How long to wait for each step.
    pub timeout: Duration,
}

impl DemoOptions {
    /// The chart and pool manifest of this repository, the classic 10.244.0.0/16 network.
    pub fn from_repository(root: &Path) -> Self {
        Self {
            chart: root.join("charts/tortie"),
            pool_manifest: Some(root.join("examples/ippool.yaml")),
            pool_cidr: "10.244.0.0/16".to_string(),
            helm_values: Vec::new(),
            timeout: Duration::from_secs(180),
        }
    }
}

/// What the demo saw, for a person to read and a test to assert on.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// The two test pods: namespace/name, node and address.
    pub pods: Vec<DemoPod>,
    /// Whether a ping from the first pod reached the second.
    pub ping: bool,
    /// What the second pod answered on TCP, or why the connection failed.
    pub tcp: Result<String, String>,
    /// The same in the other direction.
    pub tcp_back: Result<String, String>,
}

/// One of the demo's test pods.
#[derive(Clone, Debug)]
pub struct DemoPod {
    pub name: String,
    pub node: String,
    pub ip: String,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("timed out after {seconds}s waiting for {what}; last answer: {last}")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
    },
    #[error("{0}")]
    Other(String),
}

/// The namespace the demo's test pods live in.
pub const NAMESPACE: &str = "demo";
/// The namespace Tortie is installed into.
pub const TORTIE_NAMESPACE: &str = "tortie-system";
/// The pool the operator makes from the chart's `ipPool` values.
pub const DEFAULT_POOL: &str = "default-ipv4-ippool";
/// The port each test pod's server listens on.
const PORT: u16 = 8080;

/// Adds two nodes with node runtimes to `cluster` (when it has fewer), installs Tortie,
/// applies the pool, starts a pod on each node and checks they talk. Progress goes to
/// stderr.
pub async fn run(cluster: &mut Cluster, options: &DemoOptions) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let step = |what: &str| eprintln!("[demo +{:>3}s] {what}", started.elapsed().as_secs());

    let runtime = runtime_binary()?;
    for name in ["node-1", "node-2"] {
        if cluster.node(name).is_none() {
            step(&format!(
                "adding {name} (a network namespace) with its node runtime"
            ));
            cluster
                .add_node(name, Subnet::A, &Default::default())
                .await?;
            cluster.start_runtime(name, &runtime).await?;
        }
    }
    let kubectl = Kubectl::of(cluster);
    kubectl.show("the nodes have no network yet", &["get", "nodes"])?;

    step("helm install tortie charts/tortie (the operator and one agent per node)");
    let helm = cluster.bin_dir().join("helm");
    let pool_value = format!("ipPool.cidr={}", options.pool_cidr);
    let mut install = Command::new(&helm);
    install
        .args(["upgrade", "--install", "tortie"])
        .arg(&options.chart)
        .args([
            "-n",
            TORTIE_NAMESPACE,
            "--create-namespace",
            "--set",
            &pool_value,
        ]);
    for value in &options.helm_values {
        install.args(["--set", value]);
    }
    install.arg("--kubeconfig").arg(cluster.kubeconfig());
    let output = run_command(install)?;
    eprintln!("{}", String::from_utf8_lossy(&output.stdout).trim_end());

    step("waiting for the operator and the agents to be Running");
    kubectl.wait_until(
        "the operator Deployment to be available",
        options.timeout,
        &[
            "wait",
            "-n",
            TORTIE_NAMESPACE,
            "--for=condition=Available",
            "deployment/tortie-operator",
            "--timeout=5s",
        ],
    )?;
    kubectl.wait_until(
        "one ready agent per node",
        options.timeout,
        &[
            "rollout",
            "status",
            "-n",
            TORTIE_NAMESPACE,
            "daemonset/tortie-agent",
            "--timeout=5s",
        ],
    )?;
    step("waiting for every node to be Ready");
    kubectl.wait_until(
        "every node to be Ready",
        options.timeout,
        &[
            "wait",
            "--for=condition=Ready",
            "nodes",
            "--all",
            "--timeout=5s",
        ],
    )?;

    match &options.pool_manifest {
        Some(manifest) => {
            step("kubectl apply -f examples/ippool.yaml (a pool as a Calico user writes it)");
            let manifest = manifest.to_string_lossy().into_owned();
            kubectl.run(&["apply", "-f", &manifest])?;
            kubectl.wait_until(
                "the pool to be Ready",
                options.timeout,
                &[
                    "wait",
                    "--for=condition=Ready",
                    "-f",
                    &manifest,
                    "--timeout=5s",
                ],
            )?;
        }
        None => {
            step("waiting for the default pool the operator made from the chart's values");
            kubectl.wait_until(
                "the default pool to be Ready",
                options.timeout,
                &[
                    "wait",
                    "--for=condition=Ready",
                    &format!("ippool/{DEFAULT_POOL}"),
                    "--timeout=5s",
                ],
            )?;
        }
    }

    step("starting a test pod on each node");
    kubectl.apply(&test_pods_manifest(&["node-1", "node-2"]))?;
    let mut pods = Vec::new();
    for (pod, node) in [("pod-1", "node-1"), ("pod-2", "node-2")] {
        kubectl.wait_until(
            &format!("pod {NAMESPACE}/{pod} to be Ready"),
            options.timeout,
            &[
                "wait",
                "-n",
                NAMESPACE,
                "--for=condition=Ready",
                &format!("pod/{pod}"),
                "--timeout=5s",
            ],
        )?;
        let ip = kubectl.run(&[
            "get",
            "pod",
            "-n",
            NAMESPACE,
            pod,
            "-o",
            "jsonpath={.status.podIP}",
        ])?;
        pods.push(DemoPod {
            name: pod.to_string(),
            node: node.to_string(),
            ip: ip.trim().to_string(),
        });
    }

    step("checking the pods reach each other across nodes");
    let (one, two) = (&pods[0], &pods[1]);
    let ping = exec_in_pod(
        cluster,
        &kubectl,
        &one.name,
        &["ping", "-c", "3", "-W", "2", &two.ip],
    )
    .map(|output| output.status.success())
    .unwrap_or(false);
    let runtime_path = runtime.to_string_lossy().into_owned();
    let port = PORT.to_string();
    let tcp = connect(cluster, &kubectl, &one.name, &runtime_path, &two.ip, &port);
    let tcp_back = connect(cluster, &kubectl, &two.name, &runtime_path, &one.ip, &port);

    Ok(DemoReport {
        pods,
        ping,
        tcp,
        tcp_back,
    })
}

/// Prints what a person would look at after the install, and the checks' results.
pub fn print_summary(cluster: &Cluster, report: &DemoReport) -> Result<(), DemoError> {
    let kubectl = Kubectl::of(cluster);
    kubectl.show(
        "kubectl get pods -A -o wide",
        &["get", "pods", "-A", "-o", "wide"],
    )?;
    kubectl.show("kubectl get nodes", &["get", "nodes", "-o", "wide"])?;
    kubectl.show("kubectl get ippools", &["get", "ippools"])?;
    kubectl.show(
        "kubectl get nodenetworkconfigs",
        &["get", "nodenetworkconfigs"],
    )?;
    let (one, two) = (&report.pods[0], &report.pods[1]);
    println!();
    println!(
        "ping {} ({}, {}) -> {} ({}, {}): {}",
        one.name,
        one.node,
        one.ip,
        two.name,
        two.node,
        two.ip,
        if report.ping { "ok" } else { "FAILED" }
    );
    for (from, to, result) in [(one, two, &report.tcp), (two, one, &report.tcp_back)] {
        match result {
            Ok(reply) => println!(
                "tcp  {} -> {}:{PORT}: connected, the server said {reply:?}",
                from.name, to.ip
            ),
            Err(why) => println!("tcp  {} -> {}:{PORT}: FAILED: {why}", from.name, to.ip),
        }
    }
    Ok(())
}

impl DemoReport {
    /// True when every check passed.
    pub fn all_passed(&self) -> bool {
        self.ping
            && self.tcp.as_ref().is_ok_and(|reply| reply.contains("pod-2"))
            && self
                .tcp_back
                .as_ref()
                .is_ok_and(|reply| reply.contains("pod-1"))
    }
}

/// A test pod pinned to each node, each with a server on [`PORT`].
fn test_pods_manifest(nodes: &[&str]) -> String {
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    for (i, node) in nodes.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{n}\n  namespace: {NAMESPACE}\n  \
             labels:\n    app: demo\nspec:\n  nodeSelector:\n    kubernetes.io/hostname: {node}\n  \
             containers:\n    - name: server\n      image: busybox:stable\n      \
             ports:\n        - containerPort: {PORT}\n",
            n = i + 1
        ));
    }
    yaml
}

/// Runs `command` in the pod's network and mount namespaces on its node.
fn exec_in_pod(
    cluster: &Cluster,
    kubectl: &Kubectl,
    pod: &str,
    command: &[&str],
) -> Result<Output, DemoError> {
    let field = |path: &str| {
        kubectl
            .run(&[
                "get",
                "pod",
                "-n",
                NAMESPACE,
                pod,
                "-o",
                &format!("jsonpath={path}"),
            ])
            .map(|value| value.trim().to_string())
    };
    let (node, uid) = (field("{.spec.nodeName}")?, field("{.metadata.uid}")?);
    let mut exec = cluster.pod_command(&node, &uid)?;
    exec.args(command);
    exec.output()
        .map_err(|e| DemoError::Other(format!("running {command:?} in pod {pod}: {e}")))
}

/// A TCP connection from `pod` to `ip:port`: the server's answer, or why it failed.
fn connect(
    cluster: &Cluster,
    kubectl: &Kubectl,
    pod: &str,
    runtime: &str,
    ip: &str,
    port: &str,
) -> Result<String, String> {
    let output = exec_in_pod(cluster, kubectl, pod, &[runtime, "connect", ip, port])
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// kubectl with the cluster's admin kubeconfig.
struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn of(cluster: &Cluster) -> Self {
        Self {
            binary: cluster.kubectl_binary(),
            kubeconfig: cluster.kubeconfig(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
    }

    /// Runs kubectl and returns its stdout; a non-zero exit is an error with its stderr.
    fn run(&self, args: &[&str]) -> Result<String, DemoError> {
        let output = run_command(self.command(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Prints a heading and kubectl's output.
    fn show(&self, heading: &str, args: &[&str]) -> Result<(), DemoError> {
        println!("\n$ {heading}\n{}", self.run(args)?.trim_end());
        Ok(())
    }

    fn apply(&self, yaml: &str) -> Result<(), DemoError> {
        use std::io::Write;
        let mut child = self
            .command(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| DemoError::Other(format!("starting kubectl apply: {e}")))?;
        child
            .stdin
            .take()
            .expect("stdin was piped above")
            .write_all(yaml.as_bytes())
            .map_err(|e| DemoError::Other(format!("writing to kubectl apply: {e}")))?;
        let output = child
            .wait_with_output()
            .map_err(|e| DemoError::Other(format!("kubectl apply: {e}")))?;
        check("kubectl apply -f -", output).map(drop)
    }

    /// Repeats a kubectl command that itself waits briefly (`--timeout=5s`) until it
    /// succeeds or `timeout` has passed: the condition is checked, not slept on.
    fn wait_until(&self, what: &str, timeout: Duration, args: &[&str]) -> Result<(), DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.command(args).output().map_err(|e| {
                DemoError::Other(format!("running kubectl {}: {e}", args.join(" ")))
            })?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout {
                    what: what.to_string(),
                    seconds: timeout.as_secs(),
                    last: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                });
            }
            // kubectl returns at once when the object does not exist yet; do not spin.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn run_command(mut command: Command) -> Result<Output, DemoError> {
    let description = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| DemoError::Other(format!("{description}: {e}")))?;
    check(&description, output)
}

fn check(description: &str, output: Output) -> Result<Output, DemoError> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(DemoError::Command {
            command: description.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
