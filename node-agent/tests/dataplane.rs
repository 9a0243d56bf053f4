//! The data path against real kernels: nodes, pods and an outside host are network
//! namespaces these tests make (and remove again). Needs root; skipped otherwise.

mod dataplane_support;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use dataplane_support::{
    Cluster, OUTSIDE_ADDRESS, block, node_address, pod_address, pod_interface, skip,
};
use tortie_node_agent::ROUTE_PROTOCOL;
use tortie_node_agent::dataplane::tunnel::TunnelError;
use tortie_node_agent::dataplane::watch::RouteWatch;
use tortie_node_agent::dataplane::{
    Dataplane, DataplaneError, DataplaneSpec, Encapsulation, IpipSpec, MAIN_TABLE, RemoteBlock,
    RouteSyncReport, VxlanSpec, vtep_mac,
};

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The spec node `i` gets in a two-node cluster where each reaches the other by `mode`.
fn spec(i: usize, mode: Mode) -> DataplaneSpec {
    let other = 1 - i;
    let mut spec = DataplaneSpec::new(node_name(i));
    spec.local_blocks = vec![block(i)];
    let encapsulation = match mode {
        Mode::Direct => Encapsulation::Direct,
        Mode::Vxlan => Encapsulation::Vxlan {
            tunnel_address: block(other).network(),
            vtep_mac: vtep_mac(&node_name(other)),
        },
        Mode::Ipip => Encapsulation::Ipip,
    };
    match mode {
        Mode::Vxlan => {
            spec.vxlan = Some(VxlanSpec::for_node(
                &node_name(i),
                node_address(i),
                block(i).network(),
            ));
        }
        Mode::Ipip => {
            spec.ipip = Some(IpipSpec {
                tunnel_address: Some(block(i).network()),
                ..IpipSpec::default()
            });
        }
        Mode::Direct => {}
    }
    spec.remote_blocks = vec![RemoteBlock {
        cidr: block(other),
        node_name: node_name(other),
        node_address: node_address(other),
        encapsulation,
    }];
    spec
}

#[derive(Clone, Copy)]
enum Mode {
    Direct,
    Vxlan,
    Ipip,
}

fn reconcile(
    cluster: &Cluster,
    i: usize,
    spec: &DataplaneSpec,
) -> Result<RouteSyncReport, DataplaneError> {
    cluster.nodes[i].block_on(|| async {
        let mut dataplane = Dataplane::connect()?;
        dataplane.reconcile(spec).await
    })
}

fn routes_of(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let mut full = vec!["route", "show"];
    full.extend_from_slice(args);
    cluster.nodes[i].ip(&full)
}

fn tortie_routes(cluster: &Cluster, i: usize) -> String {
    routes_of(cluster, i, &["proto", &ROUTE_PROTOCOL.to_string()])
}

#[test]
fn direct_routes_carry_pod_traffic() {
    if skip("direct_routes_carry_pod_traffic") {
        return;
    }
    let cluster = Cluster::new(2);
    assert!(
        !cluster.pods[0].pings(pod_address(1)),
        "pods must not reach each other before any route is programmed"
    );
    // That attempt left a failed entry for the pod's gateway (no proxy ARP without
    // forwarding); start the real check from a clean cache.
    cluster.pods[0].ip(&["neigh", "flush", "all"]);

    for i in 0..2 {
        let report = reconcile(&cluster, i, &spec(i, Mode::Direct)).expect("reconcile succeeds");
        assert_eq!(
            (report.created, report.deleted, report.replaced),
            (2, 0, 0),
            "{report:?}"
        );
    }

    let routes = tortie_routes(&cluster, 0);
    assert!(routes.contains("blackhole 10.244.1.0/26"), "{routes}");
    assert!(
        routes.contains("10.244.2.0/26 via 198.18.0.2 dev eth0"),
        "{routes}"
    );
    assert!(
        cluster.pods[0].pings(pod_address(1)),
        "pod 0 reaches pod 1 through direct routes\n{}",
        cluster.diagnostics()
    );

    let again = reconcile(&cluster, 0, &spec(0, Mode::Direct)).expect("second reconcile succeeds");
    assert_eq!(
        (
            again.created,
            again.replaced,
            again.deleted,
            again.unchanged
        ),
        (0, 0, 0, 2)
    );
    assert_eq!(
        cluster.nodes[0]
            .exec_ok("cat", &["/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );
}

fn link_stats(cluster: &Cluster, i: usize, device: &str) -> u64 {
    let json = cluster.nodes[i].ip(&["-s", "-j", "link", "show", device]);
    // The tx packet count sits in "stats64":{"rx":{...},"tx":{"bytes":N,"packets":N,...
    let tx = json
        .split("\"tx\":{")
        .nth(1)
        .expect("ip -s -j prints tx stats");
    let packets = tx
        .split("\"packets\":")
        .nth(1)
        .expect("tx stats have a packet count");
    packets
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the packet count is a number")
}

#[test]
fn vxlan_routes_carry_pod_traffic_encapsulated() {
    if skip("vxlan_routes_carry_pod_traffic_encapsulated") {
        return;
    }
    let cluster = Cluster::new(2);
    for i in 0..2 {
        reconcile(&cluster, i, &spec(i, Mode::Vxlan)).expect("reconcile succeeds");
    }

    let details = cluster.nodes[0].ip(&["-d", "link", "show", "vxlan.calico"]);
    assert!(details.contains("vxlan id 4096"), "{details}");
    assert!(details.contains("local 198.18.0.1"), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("nolearning"), "{details}");
    assert!(
        details.contains(&vtep_mac("node-0").to_string()),
        "{details}"
    );
    assert!(details.contains("mtu 1450"), "{details}");

    let route = cluster.nodes[0].ip(&["route", "get", &pod_address(1).to_string()]);
    assert!(route.contains("via 10.244.2.0 dev vxlan.calico"), "{route}");
    let neighbours = cluster.nodes[0].ip(&["neigh", "show", "dev", "vxlan.calico"]);
    assert!(
        neighbours.contains(&format!(
            "10.244.2.0 lladdr {} PERMANENT",
            vtep_mac("node-1")
        )),
        "{neighbours}"
    );
    let fdb = cluster.nodes[0].exec_ok("bridge", &["fdb", "show", "dev", "vxlan.calico"]);
    assert!(
        fdb.contains(&format!(
            "{} dst 198.18.0.2 self permanent",
            vtep_mac("node-1")
        )),
        "{fdb}"
    );

    let sent_before = link_stats(&cluster, 0, "vxlan.calico");
    assert!(
        cluster.pods[0].pings(pod_address(1)),
        "pod 0 reaches pod 1 through VXLAN"
    );
    let sent_after = link_stats(&cluster, 0, "vxlan.calico");
    assert!(
        sent_after >= sent_before + 3,
        "the three echo requests left through vxlan.calico ({sent_before} -> {sent_after})"
    );

    // A second pass changes nothing, also for the device, neighbours and FDB.
    let again = reconcile(&cluster, 0, &spec(0, Mode::Vxlan)).expect("second reconcile succeeds");
    assert_eq!((again.created, again.replaced, again.deleted), (0, 0, 0));
    assert_eq!(
        cluster.nodes[0].ip(&["neigh", "show", "dev", "vxlan.calico"]),
        neighbours
    );

    // The pool moves to direct routing and the MTU changes: the device is updated in place
    // and its static entries for the old peer go.
    let index_before = cluster.nodes[0].ip(&["-o", "link", "show", "vxlan.calico"]);
    let mut moved = spec(0, Mode::Direct);
    let mut vxlan = spec(0, Mode::Vxlan)
        .vxlan
        .expect("the VXLAN spec has a device");
    vxlan.mtu = 1400;
    moved.vxlan = Some(vxlan);
    let report = reconcile(&cluster, 0, &moved).expect("reconcile after the move succeeds");
    assert_eq!(report.replaced, 1, "{report:?}");
    let index_after = cluster.nodes[0].ip(&["-o", "link", "show", "vxlan.calico"]);
    assert!(index_after.contains("mtu 1400"), "{index_after}");
    assert_eq!(
        index_before.split(':').next(),
        index_after.split(':').next(),
        "same device, not a new one"
    );
    let neighbours = cluster.nodes[0].ip(&["neigh", "show", "dev", "vxlan.calico"]);
    assert!(neighbours.trim().is_empty(), "{neighbours}");
    let fdb = cluster.nodes[0].exec_ok("bridge", &["fdb", "show", "dev", "vxlan.calico"]);
    assert!(!fdb.contains(&vtep_mac("node-1").to_string()), "{fdb}");
}

#[test]
fn resync_restores_deleted_routes_and_leaves_foreign_ones_alone() {
    if skip("resync_restores_deleted_routes_and_leaves_foreign_ones_alone") {
        return;
    }
    let cluster = Cluster::new(2);
    let node = &cluster.nodes[0];
    let proto = ROUTE_PROTOCOL.to_string();

    // Someone else's routes: one elsewhere, one on a prefix Tortie will want.
    node.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "198.18.0.2",
        "proto",
        "static",
    ]);
    node.ip(&[
        "route",
        "add",
        "10.244.3.0/26",
        "via",
        "198.18.0.2",
        "proto",
        "static",
    ]);
    // Tortie's own leftovers: a stale block and a block pointing the wrong way.
    node.ip(&[
        "route",
        "add",
        "10.244.77.0/26",
        "via",
        "198.18.0.2",
        "proto",
        &proto,
    ]);
    node.ip(&[
        "route",
        "add",
        "10.244.2.0/26",
        "via",
        "198.18.0.9",
        "proto",
        &proto,
    ]);

    let mut wanted = spec(0, Mode::Direct);
    wanted.remote_blocks.push(RemoteBlock {
        cidr: "10.244.3.0/26".parse().expect("test CIDR"),
        node_name: "node-2".into(),
        node_address: Ipv4Addr::new(198, 18, 0, 3),
        encapsulation: Encapsulation::Direct,
    });

    let error = reconcile(&cluster, 0, &wanted)
        .expect_err("the foreign route on a wanted prefix is reported");
    let DataplaneError::Routes(report) = error else {
        panic!("expected a route report, got {error}");
    };
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].destination.to_string(), "10.244.3.0/26");
    assert!(
        report.failures[0].error.contains("another protocol"),
        "{report:?}"
    );
    assert_eq!(
        (report.created, report.replaced, report.deleted),
        (1, 1, 1),
        "{report:?}"
    );

    let foreign = routes_of(&cluster, 0, &["proto", "static"]);
    assert!(foreign.contains("10.99.0.0/24 via 198.18.0.2"), "{foreign}");
    assert!(
        foreign.contains("10.244.3.0/26 via 198.18.0.2"),
        "{foreign}"
    );
    let ours = tortie_routes(&cluster, 0);
    assert!(!ours.contains("10.244.77.0"), "stale block removed: {ours}");
    assert!(
        ours.contains("10.244.2.0/26 via 198.18.0.2"),
        "wrong next hop replaced: {ours}"
    );
    assert!(
        ours.contains(&format!("{} dev {}", pod_address(0), pod_interface(0))),
        "the CNI plugin's pod route stays: {ours}"
    );

    // The foreign route goes away; now everything programs cleanly.
    node.ip(&["route", "del", "10.244.3.0/26", "proto", "static"]);
    reconcile(&cluster, 0, &wanted).expect("reconcile succeeds once the conflict is gone");

    // A route deleted by hand is noticed and comes back on the next route resync.
    let restored = node.block_on(|| async {
        let mut watch = RouteWatch::subscribe().expect("subscribe to route changes");
        let mut dataplane = Dataplane::connect().expect("connect to the node's kernel");
        dataplane_support::run(
            "ip",
            &[
                "-n",
                &node.name,
                "route",
                "del",
                "10.244.2.0/26",
                "proto",
                &proto,
            ],
        );
        let noticed = tokio::time::timeout(Duration::from_secs(5), watch.changed(MAIN_TABLE))
            .await
            .expect("the deletion is reported within 5 s");
        assert!(noticed);
        dataplane
            .reconcile_routes(&wanted)
            .await
            .expect("route resync succeeds")
    });
    assert_eq!(
        (restored.created, restored.replaced, restored.deleted),
        (1, 0, 0),
        "{restored:?}"
    );
    assert!(tortie_routes(&cluster, 0).contains("10.244.2.0/26 via 198.18.0.2"));
    assert!(routes_of(&cluster, 0, &["proto", "static"]).contains("10.99.0.0/24"));
}

/// Accepts one connection on `listener` and returns the address it came from.
fn peer_of_next_connection(listener: std::net::TcpListener) -> std::thread::JoinHandle<IpAddr> {
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept the test connection");
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte);
        peer.ip()
    })
}

/// The source address a server at `server` sees for a connection from pod 0.
fn seen_source(
    cluster: &Cluster,
    server_ns: &dataplane_support::Netns,
    server: SocketAddr,
) -> IpAddr {
    let listener = server_ns.listen(server);
    let accepted = peer_of_next_connection(listener);
    let stream = cluster.pods[0]
        .connect(server)
        .expect("pod 0 connects to the server");
    drop(stream);
    accepted
        .join()
        .expect("the accepting thread does not panic")
}

#[test]
fn nat_outgoing_masquerades_only_traffic_leaving_the_pools() {
    if skip("nat_outgoing_masquerades_only_traffic_leaving_the_pools") {
        return;
    }
    let cluster = Cluster::new(2);
    // The outside host can answer pods directly, so un-NATed connections complete too.
    cluster.outside.ip(&[
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        &node_address(0).to_string(),
    ]);
    // A table that is not Tortie's must survive everything below.
    cluster.nodes[0].exec_ok("nft", &["add", "table", "ip", "someone-elses"]);

    let pool = "10.244.0.0/16".parse().expect("test CIDR");
    let mut with_nat = spec(0, Mode::Direct);
    with_nat.nat.outgoing_pools = vec![pool];
    with_nat.nat.all_pools = vec![pool];
    reconcile(&cluster, 0, &with_nat).expect("reconcile with NAT succeeds");
    reconcile(&cluster, 1, &spec(1, Mode::Direct)).expect("reconcile of node 1 succeeds");

    let outside = SocketAddr::new(OUTSIDE_ADDRESS.into(), 18080);
    assert_eq!(
        seen_source(&cluster, &cluster.outside, outside),
        IpAddr::from(node_address(0)),
        "leaving the pools, the pod is masqueraded behind its node"
    );
    let to_pod = SocketAddr::new(pod_address(1).into(), 18081);
    assert_eq!(
        seen_source(&cluster, &cluster.pods[1], to_pod),
        IpAddr::from(pod_address(0)),
        "pod-to-pod traffic keeps the pod's address"
    );

    // Applying the same NAT again is a no-op in effect (one table, same rules).
    reconcile(&cluster, 0, &with_nat).expect("second reconcile with NAT succeeds");
    let tables = cluster.nodes[0].exec_ok("nft", &["list", "tables"]);
    assert_eq!(tables.matches("tortie-nat").count(), 1, "{tables}");

    reconcile(&cluster, 0, &spec(0, Mode::Direct)).expect("reconcile without NAT succeeds");
    let outside = SocketAddr::new(OUTSIDE_ADDRESS.into(), 18082);
    assert_eq!(
        seen_source(&cluster, &cluster.outside, outside),
        IpAddr::from(pod_address(0)),
        "without NAT the outside host sees the pod"
    );
    let tables = cluster.nodes[0].exec_ok("nft", &["list", "tables"]);
    assert!(
        !tables.contains("tortie-nat"),
        "Tortie's table is gone: {tables}"
    );
    assert!(
        tables.contains("someone-elses"),
        "the other table is untouched: {tables}"
    );
}

#[test]
fn ipip_routes_carry_pod_traffic_when_the_kernel_has_ipip() {
    if skip("ipip_routes_carry_pod_traffic_when_the_kernel_has_ipip") {
        return;
    }
    let cluster = Cluster::new(2);
    match reconcile(&cluster, 0, &spec(0, Mode::Ipip)) {
        Err(DataplaneError::Tunnel(error @ TunnelError::IpipUnsupported { .. })) => {
            eprintln!("skipped ipip_routes_carry_pod_traffic_when_the_kernel_has_ipip: {error}");
            return;
        }
        other => {
            other.expect("reconcile with IPIP succeeds");
        }
    }
    reconcile(&cluster, 1, &spec(1, Mode::Ipip)).expect("reconcile of node 1 with IPIP succeeds");
    let route = cluster.nodes[0].ip(&["route", "get", &pod_address(1).to_string()]);
    assert!(route.contains("via 198.18.0.2 dev tunl0"), "{route}");
    let sent_before = link_stats(&cluster, 0, "tunl0");
    assert!(
        cluster.pods[0].pings(pod_address(1)),
        "pod 0 reaches pod 1 through IPIP"
    );
    assert!(link_stats(&cluster, 0, "tunl0") > sent_before);
}

#[test]
fn resync_loop_restores_a_route_deleted_by_hand() {
    if skip("resync_loop_restores_a_route_deleted_by_hand") {
        return;
    }
    let cluster = Cluster::new(2);
    let node = &cluster.nodes[0];
    let proto = ROUTE_PROTOCOL.to_string();
    let route_present = || {
        !node
            .ip(&["route", "show", "10.244.2.0/26", "proto", &proto])
            .trim()
            .is_empty()
    };

    node.block_on(|| async {
        let (specs, spec_updates) = tokio::sync::watch::channel(spec(0, Mode::Direct));
        let (results, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
        let dataplane = Dataplane::connect().expect("connect to the node's kernel");
        // A period long enough that only the first tick and kernel events drive it.
        let resync = tokio::spawn(tortie_node_agent::dataplane::watch::run(
            dataplane,
            spec_updates,
            Duration::from_secs(3600),
            move |result| {
                let _ = results.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            },
        ));
        next_outcome(&mut outcomes).await;
        assert!(route_present(), "the first pass programs the route");

        dataplane_support::run(
            "ip",
            &[
                "-n",
                &node.name,
                "route",
                "del",
                "10.244.2.0/26",
                "proto",
                &proto,
            ],
        );
        // Resyncs also follow the loop's own changes; wait for the one that restores it.
        while !route_present() {
            next_outcome(&mut outcomes).await;
        }

        drop(specs);
        tokio::time::timeout(Duration::from_secs(5), resync)
            .await
            .expect("the loop ends when the spec sender goes")
            .expect("the loop task does not panic")
            .expect("the loop ends cleanly");
    });
}

/// The next resync outcome of the loop, which must come within 5 s and be a success.
async fn next_outcome(outcomes: &mut tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>) {
    tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
        .await
        .expect("a resync happens within 5 s")
        .expect("the loop is running")
        .expect("the resync succeeds");
}
