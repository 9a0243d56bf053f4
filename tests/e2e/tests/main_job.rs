//! The main job end to end, exactly as `make demo` does it: two nodes with no network, the
//! Helm chart installed with `ipPool.cidr=10.244.0.0/16`, the operator and one agent per
//! node running, every node Ready, a Calico-style IPPool applied unchanged, and a pod on
//! each node reaching the other by ping and TCP.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::path::PathBuf;

use tortie_e2e::demo::{self, DemoOptions};
use tortie_e2e::support::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_brings_pods_on_two_nodes_together() {
    let Some(mut cluster) = TestCluster::start_local("main-job").await else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let options = DemoOptions::from_repository(&root);

    let report = demo::run(cluster.cluster_mut(), &options)
        .await
        .unwrap_or_else(|error| panic!("the main job stopped: {error}"));
    demo::print_summary(cluster.cluster(), &report).expect("kubectl answers");

    // Every node is Ready and every Tortie pod Running, as a person checks them.
    let nodes = cluster.kubectl(&["get", "nodes", "--no-headers"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");
    assert!(
        nodes
            .lines()
            .all(|line| line.split_whitespace().nth(1) == Some("Ready")),
        "{nodes}"
    );
    let pods = cluster.kubectl(&["get", "pods", "-n", demo::TORTIE_NAMESPACE, "--no-headers"]);
    let agents = pods
        .lines()
        .filter(|line| line.starts_with("tortie-agent-"))
        .count();
    assert_eq!(agents, 2, "one agent per node:\n{pods}");
    assert!(
        pods.lines()
            .filter(|line| line.starts_with("tortie-agent-"))
            .all(|line| line.contains("Running")),
        "{pods}"
    );

    // The pool applied as a Calico user wrote it is READY with its defaults and usage.
    let pool = cluster.kubectl(&["get", "ippool", "default-ipv4-ippool", "--no-headers"]);
    assert!(pool.contains("10.244.0.0/16"), "{pool}");
    let ready = cluster.kubectl(&[
        "get",
        "ippool",
        "default-ipv4-ippool",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.vxlanMode} {.spec.nodeSelector}",
    ]);
    assert_eq!(ready.trim(), "True Never all()", "{pool}");

    // Both pods got addresses from the pool, on different nodes, and they talk.
    let (one, two) = (&report.pods[0], &report.pods[1]);
    assert_ne!(one.node, two.node);
    for pod in &report.pods {
        assert!(pod.ip.starts_with("10.244."), "{pod:?} is outside the pool");
    }
    assert_ne!(one.ip, two.ip);
    assert!(report.ping, "ping {} -> {} failed", one.ip, two.ip);
    assert_eq!(report.tcp.as_deref(), Ok("pod-2"));
    assert_eq!(report.tcp_back.as_deref(), Ok("pod-1"));
}
