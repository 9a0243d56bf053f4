//! The chart after the install: `helm upgrade` with a changed value rolls every agent without
//! breaking the pods already running or the ones started afterwards, and `helm uninstall`
//! removes Tortie's workloads and RBAC, keeps the CRDs (and so the users' pools), and leaves
//! no Tortie CNI configuration on any node, because each agent's preStop hook removed it.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tortie_e2e::demo::{self, DemoOptions};
use tortie_e2e::support::{TestCluster, wait_for};

/// How long the roll and the uninstall may take: each agent's grace period is 30 s.
const TIMEOUT: Duration = Duration::from_secs(240);

/// The port of the demo's test servers.
const PORT: u16 = 8080;

/// The conflist the agent writes into each node's CNI configuration directory.
const CONFLIST: &str = "10-tortie.conflist";

/// One agent pod as `kubectl get` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Agent {
    name: String,
    node: String,
    ready: bool,
    terminating: bool,
    log_level: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_rolls_the_agents_and_uninstall_cleans_the_nodes() {
    let Some(mut cluster) = TestCluster::start_local("chart-lifecycle").await else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let options = DemoOptions::from_repository(&root);
    let report = demo::run(cluster.cluster_mut(), &options)
        .await
        .unwrap_or_else(|error| panic!("the install stopped: {error}"));
    assert!(
        report.all_passed(),
        "the install journey failed: {report:?}"
    );
    let (ip_1, ip_2) = (report.pods[0].ip.clone(), report.pods[1].ip.clone());

    let before = agents(&cluster);
    assert_eq!(before.len(), 2, "one agent per node: {before:?}");
    assert!(
        before.values().all(|agent| agent.log_level == "info"),
        "{before:?}"
    );

    // A changed value changes the agents' pod template: the DaemonSet replaces every agent.
    helm(
        &cluster,
        &[
            "upgrade",
            "tortie",
            &options.chart.to_string_lossy(),
            "-n",
            demo::TORTIE_NAMESPACE,
            "--reuse-values",
            "--set",
            "logLevel=debug",
        ],
    );
    wait_for(
        "every agent to be replaced by a Ready one with the new template",
        TIMEOUT,
        || {
            let now = agents(&cluster);
            now.len() == 2
                && now.keys().all(|uid| !before.contains_key(uid))
                && now
                    .values()
                    .all(|agent| agent.ready && !agent.terminating && agent.log_level == "debug")
        },
    );
    let after = agents(&cluster);
    let nodes: Vec<&str> = after.values().map(|agent| agent.node.as_str()).collect();
    assert!(
        nodes.contains(&"node-1") && nodes.contains(&"node-2"),
        "{after:?}"
    );
    for agent in after.values() {
        assert!(
            before.values().all(|old| old.name != agent.name),
            "agent {} kept its name across the roll: {before:?} -> {after:?}",
            agent.name
        );
    }
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        demo::TORTIE_NAMESPACE,
        "daemonset/tortie-agent",
        "--timeout=60s",
    ]);
    wait_for("every node to be Ready after the roll", TIMEOUT, || {
        nodes_ready(&cluster)
    });

    // The pods that ran through the roll still talk, both ways.
    wait_tcp(&cluster, "pod-1", &ip_2, "pod-2");
    wait_tcp(&cluster, "pod-2", &ip_1, "pod-1");

    // The new agents serve new pods: a third one gets an address from the pool and talks.
    cluster.apply_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-3\n  namespace: {ns}\nspec:\n  \
         nodeSelector:\n    kubernetes.io/hostname: node-1\n  containers:\n    - name: server\n      \
         image: busybox:stable\n      ports:\n        - containerPort: {PORT}\n",
        ns = demo::NAMESPACE
    ));
    cluster.wait_pod_ready(demo::NAMESPACE, "pod-3", TIMEOUT);
    let ip_3 = cluster.pod_ip(demo::NAMESPACE, "pod-3");
    assert!(
        ip_3.starts_with("10.244."),
        "pod-3 got {ip_3}, outside the pool"
    );
    assert!(
        ip_3 != ip_1 && ip_3 != ip_2,
        "pod-3 got an address in use: {ip_3}"
    );
    wait_tcp(&cluster, "pod-3", &ip_2, "pod-2");
    wait_tcp(&cluster, "pod-2", &ip_3, "pod-3");

    // What the uninstall must remove is there now, so its absence later means something.
    for node in ["node-1", "node-2"] {
        let conflist = conflist_path(&cluster, node);
        assert!(
            conflist.is_file(),
            "{} is missing before the uninstall",
            conflist.display()
        );
    }
    let leftovers_before = tortie_objects(&cluster);
    for expected in [
        "deployment.apps/tortie-operator",
        "daemonset.apps/tortie-agent",
        "serviceaccount/tortie-agent",
        "serviceaccount/tortie-operator",
        "clusterrole.rbac.authorization.k8s.io/tortie-agent",
        "clusterrole.rbac.authorization.k8s.io/tortie-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/tortie-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/tortie-operator",
    ] {
        assert!(
            leftovers_before.iter().any(|name| name == expected),
            "{expected} is missing before the uninstall: {leftovers_before:?}"
        );
    }

    helm(
        &cluster,
        &["uninstall", "tortie", "-n", demo::TORTIE_NAMESPACE],
    );
    wait_for("every Tortie pod to be gone", TIMEOUT, || {
        cluster
            .kubectl(&["get", "pods", "-n", demo::TORTIE_NAMESPACE, "-o", "name"])
            .trim()
            .is_empty()
    });
    let leftovers = tortie_objects(&cluster);
    assert!(leftovers.is_empty(), "the uninstall left {leftovers:?}");
    let crds = cluster.kubectl(&["get", "crd", "-o", "name"]);
    for crd in ["ippools", "ipamblocks", "blockaffinities"] {
        assert!(
            crds.contains(&format!("{crd}.crd.projectcalico.org")),
            "the CRD {crd} went with the release:\n{crds}"
        );
    }
    let pool = cluster.kubectl(&["get", "ippool", "default-ipv4-ippool", "-o", "name"]);
    assert!(
        !pool.trim().is_empty(),
        "the user's pool went with the release"
    );
    for node in ["node-1", "node-2"] {
        let conflist = conflist_path(&cluster, node);
        assert!(
            !conflist.exists(),
            "{} is still there after the uninstall; the agent's preStop hook should have \
             removed it",
            conflist.display()
        );
    }
}

/// The agents by UID.
fn agents(cluster: &TestCluster) -> BTreeMap<String, Agent> {
    let template = "{range .items[*]}{.metadata.uid}{\"\\t\"}{.metadata.name}{\"\\t\"}\
                    {.spec.nodeName}{\"\\t\"}{.status.conditions[?(@.type==\"Ready\")].status}\
                    {\"\\t\"}{.metadata.deletionTimestamp}{\"\\t\"}\
                    {.spec.containers[0].env[?(@.name==\"TORTIE_LOG_LEVEL\")].value}{\"\\n\"}{end}";
    let listing = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        demo::TORTIE_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=tortie-agent",
        "-o",
        &format!("jsonpath={template}"),
    ]);
    listing
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 6, "unexpected listing line {line:?}");
            let agent = Agent {
                name: fields[1].to_string(),
                node: fields[2].to_string(),
                ready: fields[3] == "True",
                terminating: !fields[4].is_empty(),
                log_level: fields[5].to_string(),
            };
            (fields[0].to_string(), agent)
        })
        .collect()
}

/// True when every node's Ready condition is True.
fn nodes_ready(cluster: &TestCluster) -> bool {
    let statuses = cluster.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    let statuses: Vec<&str> = statuses.split_whitespace().collect();
    statuses.len() == 2 && statuses.iter().all(|status| *status == "True")
}

/// Waits until a TCP connection from `from` to `ip` is answered by `expected`; prints each
/// new wrong answer, so a timeout shows what the pod saw.
fn wait_tcp(cluster: &TestCluster, from: &str, ip: &str, expected: &str) {
    let mut last: Option<Result<String, String>> = None;
    wait_for(
        &format!("tcp {from} -> {ip}:{PORT} to reach {expected}"),
        Duration::from_secs(60),
        || {
            let answer = cluster.tcp_check((demo::NAMESPACE, from), ip, PORT);
            let reached = answer.as_deref() == Ok(expected);
            if !reached && last.as_ref() != Some(&answer) {
                eprintln!("tcp {from} -> {ip}:{PORT}: {answer:?}");
            }
            last = Some(answer);
            reached
        },
    );
}

/// Tortie's Deployments, DaemonSets, ServiceAccounts, ClusterRoles and ClusterRoleBindings,
/// as `kind/name`.
fn tortie_objects(cluster: &TestCluster) -> Vec<String> {
    let namespaced = cluster.kubectl(&[
        "get",
        "deployments,daemonsets,serviceaccounts",
        "-n",
        demo::TORTIE_NAMESPACE,
        "-o",
        "name",
    ]);
    let cluster_wide = cluster.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    namespaced
        .lines()
        .chain(cluster_wide.lines())
        .filter(|name| {
            name.split('/')
                .nth(1)
                .is_some_and(|n| n.starts_with("tortie"))
        })
        .map(str::to_string)
        .collect()
}

/// Where a node's Tortie conflist is: `<cluster dir>/nodes/<node>/etc/cni/net.d/`.
fn conflist_path(cluster: &TestCluster, node: &str) -> PathBuf {
    let record = cluster
        .cluster()
        .node(node)
        .unwrap_or_else(|| panic!("{node} is a node of this cluster"));
    record.dir.join("etc/cni/net.d").join(CONFLIST)
}

/// Runs helm against the cluster; panics with its stderr when it fails.
fn helm(cluster: &TestCluster, args: &[&str]) {
    let binary: &Path = &cluster.cluster().bin_dir().join("helm");
    let output = Command::new(binary)
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .output()
        .unwrap_or_else(|error| panic!("could not run {}: {error}", binary.display()));
    assert!(
        output.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&output.stdout).trim_end());
}
