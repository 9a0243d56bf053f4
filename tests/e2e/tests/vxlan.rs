//! VXLAN between nodes, end to end: the chart installed with a VXLAN pool, each agent
//! allocating its node's tunnel address and publishing it on the Node, the operator
//! routing other nodes' blocks through the tunnel, and pods on different nodes talking.
//!
//! - `VXLANCrossSubnet` with node-1 and node-3 on subnet a and node-2 on subnet b: traffic
//!   between a and b goes through `vxlan.calico`, traffic within a is routed plainly.
//! - `VXLAN` (Always) with both nodes on subnet a: even same-subnet traffic is tunnelled.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::path::PathBuf;
use std::time::Duration;

use tortie_e2e::Subnet;
use tortie_e2e::cluster::NodeRecord;
use tortie_e2e::demo::{self, DemoOptions};
use tortie_e2e::support::{TestCluster, wait_for};

/// The annotation with a node's VXLAN device address.
const TUNNEL_ADDRESS: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
/// The annotation with a node's VXLAN device MAC.
const TUNNEL_MAC: &str = "projectcalico.org/VXLANTunnelMACAddr";
/// The VXLAN device's name.
const VXLAN_DEVICE: &str = "vxlan.calico";
/// How long routes may take to follow a newly published tunnel address.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_cross_subnet_tunnels_between_subnets_only() {
    let Some(mut cluster) = TestCluster::start_local("vxlan-cross").await else {
        return;
    };
    let node_1 = cluster
        .add_node_with_runtime("node-1", Subnet::A, &[])
        .await;
    let node_2 = cluster
        .add_node_with_runtime("node-2", Subnet::B, &[])
        .await;
    let node_3 = cluster
        .add_node_with_runtime("node-3", Subnet::A, &[])
        .await;
    install_and_start_pods(&mut cluster, "VXLANCrossSubnet").await;

    let tunnel_1 = tunnel_address(&cluster, "node-1");
    let tunnel_2 = tunnel_address(&cluster, "node-2");
    let tunnel_3 = tunnel_address(&cluster, "node-3");
    let distinct = [&tunnel_1, &tunnel_2, &tunnel_3];
    assert!(
        distinct
            .iter()
            .enumerate()
            .all(|(i, a)| !distinct[..i].contains(a)),
        "every node has its own tunnel address: {distinct:?}"
    );

    // Across the subnets: through the tunnel, to the other node's tunnel address.
    let pod_2 = cluster.pod_ip(demo::NAMESPACE, "pod-2");
    let pod_1 = cluster.pod_ip(demo::NAMESPACE, "pod-1");
    wait_for_route(&node_1, &pod_2, |route| {
        route.contains(&format!("dev {VXLAN_DEVICE}")) && route.contains(&tunnel_2)
    });
    wait_for_route(&node_2, &pod_1, |route| {
        route.contains(&format!("dev {VXLAN_DEVICE}")) && route.contains(&tunnel_1)
    });
    // Within subnet a: node-3's block (its tunnel address lies in it) is routed plainly
    // to node-3's underlay address.
    let underlay_3 = node_3.address.to_string();
    wait_for_route(&node_1, &tunnel_3, |route| {
        !route.contains(VXLAN_DEVICE) && route.contains(&underlay_3)
    });

    pods_talk(&cluster, &pod_1, &pod_2);
    cluster.down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_always_tunnels_within_one_subnet() {
    let Some(mut cluster) = TestCluster::start_local("vxlan-always").await else {
        return;
    };
    let node_1 = cluster
        .add_node_with_runtime("node-1", Subnet::A, &[])
        .await;
    let node_2 = cluster
        .add_node_with_runtime("node-2", Subnet::A, &[])
        .await;
    install_and_start_pods(&mut cluster, "VXLAN").await;

    let tunnel_1 = tunnel_address(&cluster, "node-1");
    let tunnel_2 = tunnel_address(&cluster, "node-2");
    assert_ne!(tunnel_1, tunnel_2);
    let pod_1 = cluster.pod_ip(demo::NAMESPACE, "pod-1");
    let pod_2 = cluster.pod_ip(demo::NAMESPACE, "pod-2");
    wait_for_route(&node_1, &pod_2, |route| {
        route.contains(&format!("dev {VXLAN_DEVICE}")) && route.contains(&tunnel_2)
    });
    wait_for_route(&node_2, &pod_1, |route| {
        route.contains(&format!("dev {VXLAN_DEVICE}")) && route.contains(&tunnel_1)
    });

    pods_talk(&cluster, &pod_1, &pod_2);
    cluster.down();
}

/// Installs the chart with the default pool in `encapsulation` mode and starts the
/// demo's pods (pod-1 on node-1, pod-2 on node-2).
async fn install_and_start_pods(cluster: &mut TestCluster, encapsulation: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let options = DemoOptions {
        pool_manifest: None,
        helm_values: vec![format!("ipPool.encapsulation={encapsulation}")],
        ..DemoOptions::from_repository(&root)
    };
    let report = demo::run(cluster.cluster_mut(), &options)
        .await
        .unwrap_or_else(|error| panic!("installing Tortie with {encapsulation} failed: {error}"));
    demo::print_summary(cluster.cluster(), &report).expect("kubectl answers");
    let mode = cluster.kubectl(&[
        "get",
        "ippool",
        demo::DEFAULT_POOL,
        "-o",
        "jsonpath={.spec.vxlanMode} {.spec.ipipMode}",
    ]);
    let expected = match encapsulation {
        "VXLAN" => "Always Never",
        _ => "CrossSubnet Never",
    };
    assert_eq!(mode.trim(), expected, "the default pool's modes");
}

/// The node's published tunnel address, once its agent has written it; checks the MAC
/// annotation is there too.
fn tunnel_address(cluster: &TestCluster, node: &str) -> String {
    let annotation = |key: &str| {
        let path = key.replace('.', "\\.");
        cluster
            .kubectl(&[
                "get",
                "node",
                node,
                "-o",
                &format!("jsonpath={{.metadata.annotations.{path}}}"),
            ])
            .trim()
            .to_owned()
    };
    wait_for(
        &format!("node {node}'s {TUNNEL_ADDRESS} annotation"),
        ROUTE_TIMEOUT,
        || !annotation(TUNNEL_ADDRESS).is_empty(),
    );
    let address = annotation(TUNNEL_ADDRESS);
    assert!(
        address.starts_with("10.244."),
        "node {node}'s tunnel address {address} lies in the pool"
    );
    let mac = annotation(TUNNEL_MAC);
    assert_eq!(
        mac.len(),
        17,
        "node {node}'s {TUNNEL_MAC} annotation: {mac:?}"
    );

    // Held by Calico's handle, in a block of the node's own.
    let handle = format!("vxlan-tunnel-addr-{node}");
    let held = cluster.kubectl(&[
        "get",
        "ipamhandle",
        &handle,
        "-o",
        "jsonpath={.spec.handleID}",
    ]);
    assert_eq!(held.trim(), handle);
    let blocks = cluster.kubectl(&[
        "get",
        "ipamblocks",
        "-o",
        "jsonpath={range .items[*]}{.spec.cidr} {.spec.affinity}{\"\\n\"}{end}",
    ]);
    let ip: std::net::IpAddr = address.parse().expect("the annotation is an address");
    let owner = blocks.lines().find_map(|line| {
        let (cidr, affinity) = line.split_once(' ')?;
        let cidr: ipnet::IpNet = cidr.parse().ok()?;
        cidr.contains(&ip).then(|| affinity.to_owned())
    });
    assert_eq!(
        owner.as_deref(),
        Some(format!("host:{node}").as_str()),
        "the block holding {address}:\n{blocks}"
    );
    address
}

/// Waits until `ip route get destination` in `node`'s namespace satisfies `wanted`.
fn wait_for_route(node: &NodeRecord, destination: &str, wanted: impl Fn(&str) -> bool) {
    let route = || {
        let output = node
            .command("ip")
            .args(["route", "get", destination])
            .output()
            .expect("ip runs in the node's namespace");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + ROUTE_TIMEOUT;
    let last = loop {
        let found = route();
        if wanted(&found) || std::time::Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let table = node
        .command("ip")
        .args(["route", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        wanted(&last),
        "the route on {} to {destination} is not as expected: {last}\nroutes:\n{table}",
        node.name
    );
}

/// Ping and TCP in both directions between the demo's pods.
fn pods_talk(cluster: &TestCluster, pod_1: &str, pod_2: &str) {
    assert!(
        cluster.ping((demo::NAMESPACE, "pod-1"), pod_2),
        "ping pod-1 -> {pod_2}"
    );
    assert!(
        cluster.ping((demo::NAMESPACE, "pod-2"), pod_1),
        "ping pod-2 -> {pod_1}"
    );
    assert_eq!(
        cluster.tcp_check((demo::NAMESPACE, "pod-1"), pod_2, 8080),
        Ok("pod-2".to_owned())
    );
    assert_eq!(
        cluster.tcp_check((demo::NAMESPACE, "pod-2"), pod_1, 8080),
        Ok("pod-1".to_owned())
    );
}
