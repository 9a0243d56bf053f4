//! The local cluster itself: control plane, nodes, underlay routing, RBAC, the controller
//! manager, two clusters side by side, and a teardown that leaves nothing behind.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use tortie_e2e::cluster::{self, Cluster, ClusterConfig, ClusterState};
use tortie_e2e::support::{self, TestCluster};
use tortie_e2e::{Subnet, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_nodes_rbac_controllers_and_clean_teardown() {
    let started = Instant::now();
    let Some(mut first) = TestCluster::start_local("cluster").await else {
        return;
    };
    eprintln!(
        "warm up to a ready cluster took {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // A second cluster at the same time must get its own addresses, names and API server.
    let Some(second) = TestCluster::start_local("cluster-second").await else {
        return;
    };
    let (one, two) = (
        first.cluster().state().clone(),
        second.cluster().state().clone(),
    );
    let (range_one, range_two) = (plan(&one).range(), plan(&two).range());
    assert!(!range_one.contains(&range_two.network()) && !range_two.contains(&range_one.network()));
    assert_ne!(plan(&one).root_link(), plan(&two).root_link());
    assert_ne!(one.underlay_netns, two.underlay_netns);
    second.kubectl(&["create", "namespace", "only-in-second"]);
    let elsewhere = first.kubectl_output(&["get", "namespace", "only-in-second"]);
    assert!(
        !elsewhere.status.success(),
        "the clusters share an API server"
    );

    // Three nodes, two subnets; no node runtime yet, so kubectl shows them NotReady.
    let a1 = first
        .add_node("node-a1", Subnet::A, &[("tortie.dev/role", "test")])
        .await;
    let a2 = first.add_node("node-a2", Subnet::A, &[]).await;
    let b1 = first.add_node("node-b1", Subnet::B, &[]).await;
    let listed = first.kubectl(&["get", "nodes", "--no-headers"]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    let names: BTreeSet<&str> = rows.iter().map(|row| row[0]).collect();
    assert_eq!(
        names,
        BTreeSet::from(["node-a1", "node-a2", "node-b1"]),
        "{listed}"
    );
    assert!(rows.iter().all(|row| row[1] == "NotReady"), "{listed}");
    let internal_ip = first.kubectl(&[
        "get",
        "node",
        "node-a1",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address} {.metadata.labels.tortie\\.dev/role}",
    ]);
    assert_eq!(internal_ip, format!("{} test", a1.address));

    // Across subnets through the underlay router, run "on" the node.
    let ping = |from: &tortie_e2e::NodeRecord, to: &str| {
        from.command("ping")
            .args(["-c", "1", "-W", "1", to])
            .output()
            .expect("ping runs")
            .status
            .success()
    };
    assert!(
        ping(&a1, &b1.address.to_string()),
        "node-a1 cannot reach node-b1 across subnets"
    );
    assert!(
        ping(&b1, &a2.address.to_string()),
        "node-b1 cannot reach node-a2 across subnets"
    );
    let unused = plan(&one)
        .node_address(Subnet::B, 200)
        .expect("host 210 exists");
    assert!(
        !ping(&a1, &unused.to_string()),
        "an address no node has answered"
    );

    // The node's own directories replace the machine's inside its mount namespace.
    std::fs::write(a1.dir.join("etc/cni/net.d/marker"), "").expect("node dir is writable");
    let seen = a1
        .command("ls")
        .arg("/etc/cni/net.d")
        .output()
        .expect("ls runs");
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), "marker");
    assert!(
        !std::path::Path::new("/etc/cni/net.d/marker").exists(),
        "the bind mount leaked"
    );

    // RBAC: a service account with no bindings may not list secrets; the admin may.
    first.kubectl(&["create", "namespace", "rbac-check"]);
    let applied = first.apply_yaml(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: nobody\n  namespace: rbac-check\n",
    );
    assert!(
        applied.contains("serviceaccount/nobody created"),
        "{applied}"
    );
    let as_nobody = "--as=system:serviceaccount:rbac-check:nobody";
    let denied = first.kubectl_output(&[
        "auth",
        "can-i",
        as_nobody,
        "list",
        "secrets",
        "-n",
        "rbac-check",
    ]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    let allowed = first.kubectl(&["auth", "can-i", "list", "secrets", "-n", "rbac-check"]);
    assert_eq!(allowed.trim(), "yes");

    // The namespace controller empties and removes a deleted namespace.
    first.kubectl(&[
        "create",
        "configmap",
        "content",
        "-n",
        "rbac-check",
        "--from-literal=k=v",
    ]);
    first.kubectl(&["delete", "namespace", "rbac-check", "--wait=false"]);
    wait_for(
        "namespace rbac-check to be gone",
        Duration::from_secs(60),
        || {
            let get = first.kubectl_output(&["get", "namespace", "rbac-check"]);
            String::from_utf8_lossy(&get.stderr).contains("NotFound")
        },
    );

    // Teardown leaves no process, namespace, link, address or route behind.
    let report = first.down();
    assert_eq!(report.processes.len(), 4);
    assert_nothing_left(&one);
    drop(second);
    assert_nothing_left(&two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_up_cleans_up_and_down_is_safe_after_it() {
    if let Err(reason) = support::local_prerequisites() {
        support::skip("failed-up", &reason);
        return;
    }

    // A bin dir where the API server exits at once: up must fail after etcd started.
    let real = cluster::bin_dir().expect("prerequisites found the bin dir");
    let name = format!("e2efail{}", std::process::id());
    let dir = cluster::default_cluster_dir(&name);
    let bin_dir = std::env::temp_dir().join(format!("{name}-bin"));
    std::fs::create_dir_all(&bin_dir).expect("temp dir is writable");
    for binary in cluster::REQUIRED_BINARIES {
        let target = bin_dir.join(binary);
        let _ = std::fs::remove_file(&target);
        if binary == "kube-apiserver" {
            std::fs::write(&target, "#!/bin/sh\necho refusing to start >&2\nexit 3\n")
                .expect("writable");
            let chmod = Command::new("chmod")
                .arg("+x")
                .arg(&target)
                .status()
                .expect("chmod runs");
            assert!(chmod.success());
        } else {
            std::os::unix::fs::symlink(real.join(binary), &target).expect("symlink is possible");
        }
    }
    let config = ClusterConfig {
        name: name.clone(),
        dir: dir.clone(),
        bin_dir: bin_dir.clone(),
    };

    let error = Cluster::up(&config)
        .await
        .expect_err("the API server never starts");
    let message = error.to_string();
    assert!(message.contains("kube-apiserver exited"), "{message}");
    assert!(
        message.contains("refusing to start"),
        "the log tail is missing: {message}"
    );
    // The root veth's peer lived in the underlay namespace, so the pair is gone with it.
    assert!(
        !netns_list().iter().any(|ns| ns.contains(&name)),
        "a namespace survived the failed up"
    );
    assert!(
        dir.join("logs/kube-apiserver.log").exists(),
        "the logs of a failed up are kept"
    );

    // Down after the failed up (twice) is harmless, and removes the directory.
    cluster::down(&dir, false).expect("down after a failed up");
    cluster::down(&dir, false).expect("down twice");
    assert!(!dir.exists());
    std::fs::remove_dir_all(&bin_dir).expect("temp dir is removable");
}

fn plan(state: &ClusterState) -> tortie_e2e::plan::AddressPlan {
    state.plan.expect("a cluster that is up has claimed a slot")
}

fn assert_nothing_left(state: &ClusterState) {
    for process in &state.processes {
        assert!(
            !process.is_running(),
            "{} (pid {}) still runs",
            process.name,
            process.pid
        );
    }
    let namespaces = netns_list();
    let mut made: Vec<&str> = state.nodes.iter().map(|node| node.netns.as_str()).collect();
    made.push(&state.underlay_netns);
    for netns in made {
        assert!(
            !namespaces.iter().any(|ns| ns == netns),
            "namespace {netns} remains"
        );
    }
    let plan = plan(state);
    let links = ip(&["-o", "link", "show"]);
    assert!(
        !links.contains(&format!("{}@", plan.root_link())),
        "link remains:\n{links}"
    );
    let addresses = ip(&["-o", "-4", "addr", "show"]);
    assert!(
        !addresses.contains(&plan.root_address().to_string()),
        "address remains:\n{addresses}"
    );
    let routes = ip(&["-4", "route", "show"]);
    assert!(
        !routes.contains(&plan.range().to_string()),
        "route remains:\n{routes}"
    );
    assert!(!state.dir.exists(), "{} remains", state.dir.display());
}

fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect()
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
