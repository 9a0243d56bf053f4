//! The agent's node loop on a local cluster: two nodes, each with a NodeNetworkConfig
//! written by hand as the operator would, and the real `tortie-agent run` on each node.
//! The agent must program the routes, install the CNI conflist, clear the Node's
//! `NetworkUnavailable`, report in the config's status, put back a route deleted by hand,
//! follow a changed config, and leave the conflist in place when stopped.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tortie_e2e::process::{self, ProcessRecord, Stopped};
use tortie_e2e::support::TestCluster;
use tortie_e2e::{NodeRecord, Subnet, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

/// How long a route deleted by hand may stay gone: far below the 90 s refresh interval,
/// so only the kernel-event path can pass this.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(15);

/// The cluster's pod range.
const POOL: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, blockSize: 26, natOutgoing: true}
"#;

/// One node's config as the operator writes it: its blocks, a direct route to each of
/// `routes` (a block and the node that owns it), MTU and NAT.
fn node_config(node: &NodeRecord, blocks: &[&str], routes: &[(&str, &NodeRecord)]) -> String {
    let blocks: Vec<String> = blocks
        .iter()
        .map(|cidr| format!("{{cidr: {cidr}, pool: default-ipv4-ippool}}"))
        .collect();
    let routes: Vec<String> = routes
        .iter()
        .map(|(destination, owner)| {
            format!(
                "{{destination: {destination}, node: {}, via: {}, encapsulation: Direct}}",
                owner.name, owner.address
            )
        })
        .collect();
    format!(
        "apiVersion: tortie.dev/v1alpha1\n\
         kind: NodeNetworkConfig\n\
         metadata: {{name: {name}}}\n\
         spec:\n\
         \x20 nodeName: {name}\n\
         \x20 blocks: [{blocks}]\n\
         \x20 routes: [{routes}]\n\
         \x20 mtu: 1450\n\
         \x20 natOutgoing: {{pools: [10.244.0.0/16], exclude: [10.244.0.0/16]}}\n",
        name = node.name,
        blocks = blocks.join(", "),
        routes = routes.join(", "),
    )
}

const BLOCK_1: &str = "10.244.1.0/26";
const BLOCK_2: &str = "10.244.2.0/26";
/// A block added to node 2 later, to see a changed config applied.
const EXTRA_BLOCK: &str = "10.244.3.0/26";

/// The agents started by the test, ended by PID when the test ends, before the cluster.
struct Agents(Vec<ProcessRecord>);

impl Drop for Agents {
    fn drop(&mut self) {
        for agent in &self.0 {
            if let Err(error) = agent.stop(Duration::from_secs(10)) {
                eprintln!("agent {}: {error}", agent.name);
            }
        }
    }
}

/// Starts `tortie-agent run` on `node`, in its network and mount namespaces.
fn start_agent(test: &TestCluster, node: &NodeRecord) -> ProcessRecord {
    let mut command = node.command(env!("CARGO_BIN_EXE_tortie-agent"));
    command
        .arg("run")
        .env("NODE_NAME", &node.name)
        .env("KUBECONFIG", test.kubeconfig())
        .env("TORTIE_LOG_LEVEL", "debug");
    let log = test
        .cluster()
        .dir()
        .join("logs")
        .join(format!("agent-{}.log", node.name));
    process::spawn(&format!("agent-{}", node.name), command, &log)
        .unwrap_or_else(|error| panic!("agent on {}: {error}", node.name))
}

/// The node config as JSON.
fn config_json(test: &TestCluster, name: &str) -> Value {
    let text = test.kubectl(&["get", "nodenetworkconfig", name, "-o", "json"]);
    serde_json::from_str(&text).expect("kubectl prints JSON")
}

/// Whether the config's status says the current generation is applied and Ready.
fn applied(test: &TestCluster, name: &str) -> bool {
    let config = config_json(test, name);
    let generation = &config["metadata"]["generation"];
    let status = &config["status"];
    let ready = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|condition| condition["type"] == "Ready");
    status["observedGeneration"] == *generation
        && ready.is_some_and(|ready| ready["status"] == "True" && ready["reason"] == "Programmed")
}

/// Tortie's routes (protocol 84) in the node's main table, as `ip -j` prints them.
fn tortie_routes(node: &NodeRecord) -> Vec<Value> {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &node.netns, "ip", "-j", "route", "show"])
        .output()
        .expect("ip runs");
    assert!(output.status.success(), "ip route in {}", node.netns);
    let routes: Vec<Value> = serde_json::from_slice(&output.stdout).expect("ip -j prints JSON");
    routes
        .into_iter()
        .filter(|route| route["protocol"] == "84" || route["protocol"] == 84)
        .collect()
}

/// Whether the node has a Tortie blackhole route for `block`.
fn has_blackhole(node: &NodeRecord, block: &str) -> bool {
    tortie_routes(node)
        .iter()
        .any(|route| route["dst"] == block && route["type"] == "blackhole")
}

/// Whether the node has a Tortie route to `block` via `gateway`.
fn has_route_via(node: &NodeRecord, block: &str, gateway: &str) -> bool {
    tortie_routes(node)
        .iter()
        .any(|route| route["dst"] == block && route["gateway"] == gateway)
}

fn conflist_path(node: &NodeRecord) -> PathBuf {
    node.dir.join("etc/cni/net.d/10-tortie.conflist")
}

fn ipam_socket(node: &NodeRecord) -> PathBuf {
    node.dir.join("var/run/tortie/ipam.sock")
}

/// The Node's `NetworkUnavailable` condition as `status/reason`.
fn network_unavailable(test: &TestCluster, node: &str) -> String {
    test.kubectl(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"NetworkUnavailable\")].status}/\
         {.status.conditions[?(@.type==\"NetworkUnavailable\")].reason}",
    ])
}

/// `/readyz` of the agent on `node`, through curl in the node's namespace.
fn readyz(node: &NodeRecord) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.netns,
            "curl",
            "-sf",
            "--max-time",
            "2",
        ])
        .arg("http://127.0.0.1:9099/readyz")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs a one-shot `tortie-agent` subcommand on `node` and asserts it exits 0.
fn one_shot(node: &NodeRecord, subcommand: &str) {
    let output = node
        .command(env!("CARGO_BIN_EXE_tortie-agent"))
        .arg(subcommand)
        .output()
        .expect("tortie-agent runs");
    assert!(
        output.status.success(),
        "tortie-agent {subcommand} on {}: {}",
        node.name,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/manifests")
}

/// A local cluster with Tortie's CRDs and the pod pool; `None` when the test is skipped.
async fn cluster_with_crds(test_name: &str) -> Option<TestCluster> {
    let test = TestCluster::start_local(test_name).await?;
    test.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &crds_dir().to_string_lossy(),
    ]);
    test.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/nodenetworkconfigs.tortie.dev",
        "crd/ippools.crd.projectcalico.org",
    ]);
    test.apply_yaml(POOL);
    Some(test)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_programs_its_node_and_reports() {
    let Some(mut test) = cluster_with_crds("agent-loop").await else {
        return;
    };
    let one = test.add_node("agent-1", Subnet::A, &[]).await;
    let two = test.add_node("agent-2", Subnet::A, &[]).await;
    test.apply_yaml(&node_config(&one, &[BLOCK_1], &[(BLOCK_2, &two)]));
    test.apply_yaml(&node_config(&two, &[BLOCK_2], &[(BLOCK_1, &one)]));

    // The init container's job: plugins installed executable, forwarding on.
    one_shot(&one, "install-cni");
    for plugin in ["tortie-cni", "tortie-ipam"] {
        let path = one.dir.join("opt/cni/bin").join(plugin);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{}", path.display());
    }
    let forwarding = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &one.netns,
            "sysctl",
            "-n",
            "net.ipv4.ip_forward",
        ])
        .output()
        .expect("sysctl runs");
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");

    let mut agents = Agents(vec![start_agent(&test, &one), start_agent(&test, &two)]);

    // Each node is programmed and says so.
    for (node, own, other, other_block) in [
        (&one, BLOCK_1, &two, BLOCK_2),
        (&two, BLOCK_2, &one, BLOCK_1),
    ] {
        wait_for(
            &format!("NodeNetworkConfig {} to report Ready", node.name),
            TIMEOUT,
            || applied(&test, &node.name),
        );
        let status = &config_json(&test, &node.name)["status"];
        assert_eq!(status["summary"]["applied"], "1/1", "{status}");
        assert_eq!(status["summary"]["blocks"], own, "{status}");
        assert!(status.get("error").is_none(), "{status}");

        assert!(has_blackhole(node, own), "{:?}", tortie_routes(node));
        let gateway = other.address.to_string();
        assert!(
            has_route_via(node, other_block, &gateway),
            "{:?}",
            tortie_routes(node)
        );

        let conflist: Value = serde_json::from_str(
            &std::fs::read_to_string(conflist_path(node)).expect("conflist written"),
        )
        .expect("conflist is JSON");
        assert_eq!(conflist["name"], "k8s-pod-network");
        assert_eq!(conflist["plugins"][0]["type"], "tortie-cni");
        assert_eq!(conflist["plugins"][0]["mtu"], 1450);
        assert_eq!(conflist["plugins"][0]["ipam"]["type"], "tortie-ipam");

        wait_for(
            &format!("Node {} to get NetworkUnavailable=False", node.name),
            TIMEOUT,
            || network_unavailable(&test, &node.name) == "False/TortieIsUp",
        );
        // The patch merged by condition type: the condition written at node creation stays.
        let ready = test.kubectl(&[
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ]);
        assert_eq!(ready, "NodeRuntimeNotStarted");
        wait_for(
            &format!("the agent on {} to be ready", node.name),
            TIMEOUT,
            || readyz(node),
        );
    }

    // A route deleted by hand comes back, long before the periodic resync.
    let gateway = two.address.to_string();
    let deleted = std::process::Command::new("ip")
        .args(["netns", "exec", &one.netns, "ip", "route", "del", BLOCK_2])
        .status()
        .expect("ip runs");
    assert!(deleted.success(), "the route to {BLOCK_2} could be deleted");
    wait_for("the deleted route to come back", RESTORE_TIMEOUT, || {
        has_route_via(&one, BLOCK_2, &gateway)
    });

    // A changed config is applied and the status follows its generation.
    test.apply_yaml(&node_config(
        &one,
        &[BLOCK_1],
        &[(BLOCK_2, &two), (EXTRA_BLOCK, &two)],
    ));
    wait_for("the new route to be programmed", TIMEOUT, || {
        has_route_via(&one, EXTRA_BLOCK, &gateway)
    });
    wait_for("the status to follow generation 2", TIMEOUT, || {
        applied(&test, &one.name)
    });
    let config = config_json(&test, &one.name);
    assert_eq!(config["metadata"]["generation"], 2);
    assert_eq!(config["status"]["summary"]["applied"], "2/2");

    // SIGTERM: the agent stops, removes its socket and leaves the conflist for the preStop
    // hook.
    assert!(ipam_socket(&one).exists(), "the IPAM socket is served");
    let first = agents.0.remove(0);
    let stopped = first
        .stop(Duration::from_secs(15))
        .expect("the agent stops");
    assert_eq!(stopped, Stopped::Terminated, "{}", first.log_tail(20));
    assert!(
        !ipam_socket(&one).exists(),
        "the socket is removed on SIGTERM"
    );
    assert!(conflist_path(&one).exists(), "the conflist stays");
    // The routes stay too: pods keep working while the agent restarts.
    assert!(has_route_via(&one, BLOCK_2, &gateway));

    // The preStop hook's job, twice: the second finds nothing and still succeeds.
    one_shot(&one, "remove-cni-config");
    assert!(!conflist_path(&one).exists(), "the conflist is removed");
    one_shot(&one, "remove-cni-config");

    drop(agents);
}

/// Two test pods, one on each node.
const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: agent-loop}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-1, namespace: agent-loop}
spec:
  nodeSelector: {kubernetes.io/hostname: pods-1}
  terminationGracePeriodSeconds: 1
  containers: [{name: web, image: nginx:1.27, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: pod-2, namespace: agent-loop}
spec:
  nodeSelector: {kubernetes.io/hostname: pods-2}
  terminationGracePeriodSeconds: 1
  containers: [{name: web, image: nginx:1.27, ports: [{containerPort: 80}]}]
"#;

/// The confirmed block of each node, from the BlockAffinity objects.
fn affine_blocks(test: &TestCluster) -> Vec<(String, String)> {
    let text = test.kubectl(&["get", "blockaffinities", "-o", "json"]);
    let list: Value = serde_json::from_str(&text).expect("kubectl prints JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["spec"]["state"] == "confirmed")
        .filter_map(|item| {
            Some((
                item["spec"]["node"].as_str()?.to_owned(),
                item["spec"]["cidr"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The main job end to end: node runtimes read the agent's conflist, pods get addresses
/// from the agent's IPAM, and once the configs route each node's block to the other, the
/// pods reach each other across nodes.
#[tokio::test(flavor = "multi_thread")]
async fn pods_on_two_nodes_reach_each_other() {
    if let Err(error) = tortie_e2e::cluster::runtime_binary() {
        tortie_e2e::support::skip("agent-pods", &error.to_string());
        return;
    }
    let Some(mut test) = cluster_with_crds("agent-pods").await else {
        return;
    };
    let one = test.add_node_with_runtime("pods-1", Subnet::A, &[]).await;
    let two = test.add_node_with_runtime("pods-2", Subnet::A, &[]).await;
    for node in [&one, &two] {
        one_shot(node, "install-cni");
        // No blocks yet: the agent's IPAM claims them, as it does on a fresh cluster.
        test.apply_yaml(&node_config(node, &[], &[]));
    }
    let agents = Agents(vec![start_agent(&test, &one), start_agent(&test, &two)]);
    for node in [&one, &two] {
        wait_for(
            &format!("NodeNetworkConfig {} to report Ready", node.name),
            TIMEOUT,
            || applied(&test, &node.name),
        );
    }

    test.apply_yaml(PODS);
    for pod in ["pod-1", "pod-2"] {
        test.wait_pod_running("agent-loop", pod, TIMEOUT);
    }
    let ip_1 = test.pod_ip("agent-loop", "pod-1");
    let ip_2 = test.pod_ip("agent-loop", "pod-2");

    // Without routes between the nodes the pods cannot reach each other: the underlay
    // knows no pod range.
    assert!(
        !test.ping(("agent-loop", "pod-1"), &ip_2),
        "pod-1 reached pod-2 before any route to it was configured"
    );

    // What the operator would do next: route each node's claimed block to it.
    let blocks = affine_blocks(&test);
    let block_of = |node: &NodeRecord| -> String {
        blocks
            .iter()
            .find(|(owner, _)| *owner == node.name)
            .map(|(_, cidr)| cidr.clone())
            .unwrap_or_else(|| panic!("node {} claimed no block: {blocks:?}", node.name))
    };
    let (block_1, block_2) = (block_of(&one), block_of(&two));
    for (ip, block) in [(&ip_1, &block_1), (&ip_2, &block_2)] {
        let block: ipnet::Ipv4Net = block.parse().expect("a block CIDR");
        let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 pod address");
        assert!(block.contains(&ip), "{ip} is in its node's block {block}");
    }
    test.apply_yaml(&node_config(&one, &[&block_1], &[(&block_2, &two)]));
    test.apply_yaml(&node_config(&two, &[&block_2], &[(&block_1, &one)]));
    for node in [&one, &two] {
        wait_for(
            &format!("NodeNetworkConfig {} to apply generation 2", node.name),
            TIMEOUT,
            || {
                applied(&test, &node.name)
                    && config_json(&test, &node.name)["metadata"]["generation"] == 2
            },
        );
    }

    wait_for("pod-1 to ping pod-2", TIMEOUT, || {
        test.ping(("agent-loop", "pod-1"), &ip_2)
    });
    assert!(
        test.ping(("agent-loop", "pod-2"), &ip_1),
        "pod-2 pings pod-1"
    );

    // Pods go while the agents still serve IPAM, so their addresses are released.
    test.kubectl(&[
        "delete",
        "namespace",
        "agent-loop",
        "--wait=true",
        "--timeout=60s",
    ]);
    drop(agents);
}
