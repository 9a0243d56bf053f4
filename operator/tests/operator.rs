//! The operator binary against a real control plane: pool status, node configs, the
//! default pool, overlap reporting, leader election and IPAM garbage collection.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless
//! TORTIE_E2E_REQUIRE=1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tortie_crds::ipam::{AffinityState, AllocationAttribute, BlockAffinity, IPAMBlock, IPAMHandle};
use tortie_e2e::support::{TestCluster, wait_for};
use tortie_e2e::{NodeRecord, Subnet};

/// Generous bound for anything the operator does in reaction to a change.
const REACT: Duration = Duration::from_secs(60);

/// A `tortie-operator` process, killed by its PID when dropped.
struct Operator {
    name: String,
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl Operator {
    /// Starts the operator against `cluster` with its admin kubeconfig, logging into the
    /// cluster's log directory (kept when a test fails).
    fn start(cluster: &TestCluster, name: &str, extra: &[&str]) -> Operator {
        let metrics = free_port();
        let log_dir = cluster.cluster().dir().join("logs");
        std::fs::create_dir_all(&log_dir).expect("log dir can be made");
        let log = log_dir.join(format!("operator-{name}.log"));
        let file = std::fs::File::create(&log).expect("log file can be made");
        let child = Command::new(env!("CARGO_BIN_EXE_tortie-operator"))
            .env("KUBECONFIG", cluster.kubeconfig())
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .args(["--pod-name", name])
            .args(["--lease-namespace", "tortie-system"])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--log-level", "info,tortie_operator=debug"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("the operator binary starts");
        Operator {
            name: name.to_owned(),
            child,
            log,
            metrics,
        }
    }

    /// GET `path` from the operator's metrics and health server.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics, path)
    }

    fn wait_ready(&self) {
        wait_for(&format!("operator {} /readyz", self.name), REACT, || {
            self.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
    }

    fn is_leader(&self) -> bool {
        self.get("/metrics")
            .is_some_and(|(_, body)| body.lines().any(|l| l == "tortie_operator_leader 1"))
    }

    /// Sends SIGTERM by PID and waits for the exit; true when it exited successfully.
    fn terminate(&mut self) -> bool {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .expect("the operator can be signalled");
        let mut status = None;
        wait_for(&format!("operator {} to exit", self.name), REACT, || {
            status = self.child.try_wait().expect("the exit status can be read");
            status.is_some()
        });
        status.is_some_and(|s| s.success())
    }

    /// Kills the process with SIGKILL by its PID and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of operator {} ({}) ---",
                self.name,
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port is free");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// A cluster with Tortie's CRDs and the operator's namespace, or `None` when skipped.
async fn cluster(test: &str) -> Option<TestCluster> {
    let cluster = TestCluster::start_local(test).await?;
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/manifests");
    cluster.kubectl(&["apply", "--server-side", "-f", manifests]);
    for crd in ["ippools", "nodenetworkconfigs"] {
        let group = if crd == "nodenetworkconfigs" {
            "tortie.dev"
        } else {
            "crd.projectcalico.org"
        };
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}.{group}"),
        ]);
    }
    cluster.kubectl(&["create", "namespace", "tortie-system"]);
    Some(cluster)
}

/// The value under `column` of the row of `name` in `kubectl get` output, found by the
/// header's character positions (headers such as BLOCK SIZE contain spaces).
fn column(table: &str, name: &str, column: &str) -> Option<String> {
    let mut lines = table.lines();
    let header = lines.next()?;
    let at = header.find(column)?;
    let row = lines.find(|l| l.split_whitespace().next() == Some(name))?;
    row.get(at..)?.split_whitespace().next().map(str::to_owned)
}

fn condition(cluster: &TestCluster, pool: &str, type_: &str, field: &str) -> String {
    cluster.kubectl(&[
        "get",
        "ippool",
        pool,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].{field}}}"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_pool_status_node_configs_and_overlap() {
    let Some(mut cluster) = cluster("operator-classic").await else {
        return;
    };
    cluster.apply_yaml(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: classic\n\
         spec:\n  cidr: 10.244.0.0/16\n  ipipMode: Always\n  natOutgoing: true\n",
    );
    let a1 = cluster.add_node("node-a1", Subnet::A, &[]).await;
    let _a2 = cluster.add_node("node-a2", Subnet::A, &[]).await;
    let b1 = cluster.add_node("node-b1", Subnet::B, &[]).await;
    // The block below names a pod that does not exist; garbage collection must not take
    // its address while this test counts it.
    let operator = Operator::start(&cluster, "op-1", &["--ipam-gc-grace", "3600"]);

    wait_for("pool classic READY True and USED 0/65536", REACT, || {
        let table = cluster.kubectl(&["get", "ippools"]);
        column(&table, "classic", "READY").as_deref() == Some("True")
            && column(&table, "classic", "USED").as_deref() == Some("0/65536")
    });
    let table = cluster.kubectl(&["get", "ippools"]);
    assert_eq!(
        column(&table, "classic", "ENCAP").as_deref(),
        Some("IPIP"),
        "{table}"
    );
    assert_eq!(
        column(&table, "classic", "BLOCK SIZE").as_deref(),
        Some("26"),
        "{table}"
    );
    assert_eq!(
        table.lines().count(),
        2,
        "no default pool next to classic: {table}"
    );
    operator.wait_ready();

    // One config per node, each owned by its Node.
    wait_for("three NodeNetworkConfigs", REACT, || {
        cluster
            .kubectl(&["get", "nodenetworkconfigs", "--no-headers"])
            .lines()
            .count()
            == 3
    });
    let owners = cluster.kubectl(&[
        "get",
        "nodenetworkconfigs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller} {end}",
    ]);
    for node in ["node-a1", "node-a2", "node-b1"] {
        assert!(
            owners.contains(&format!("{node}=Node/{node}/true")),
            "{owners}"
        );
    }

    // The cluster singletons.
    let info = cluster.kubectl(&[
        "get",
        "clusterinformation",
        "default",
        "-o",
        "jsonpath={.spec.datastoreReady} {.spec.calicoVersion} {.spec.clusterGUID}",
    ]);
    let parts: Vec<&str> = info.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "{info}");
    assert_eq!(parts[0], "true");
    assert!(parts[1].starts_with("tortie-"), "{info}");
    cluster.kubectl(&["get", "ipamconfig", "default"]);

    // A block of node-a1 with one pod: the pool counts it, node-a1 owns it, and the other
    // nodes route to it through IPIP via node-a1's address.
    let mut block =
        IPAMBlock::new_empty("10.244.0.0/26".parse().expect("CIDR"), Some("node-a1"), 1)
            .expect("block is valid");
    let owner =
        AllocationAttribute::for_pod("k8s-pod-network.abc", "node-a1", "default", "web", "t");
    block.allocate(1, &owner).expect("block has room");
    Api::<IPAMBlock>::all(cluster.client().await)
        .create(&PostParams::default(), &block)
        .await
        .expect("block is created");
    wait_for("USED 1/65536", REACT, || {
        column(&cluster.kubectl(&["get", "ippools"]), "classic", "USED").as_deref()
            == Some("1/65536")
    });
    let route = |node: &NodeRecord| {
        cluster.kubectl(&[
            "get",
            "nodenetworkconfig",
            &node.name,
            "-o",
            "jsonpath={range .spec.routes[*]}{.destination} {.via} {.encapsulation};{end}",
        ])
    };
    wait_for("node-b1 routes to node-a1's block", REACT, || {
        route(&b1) == format!("10.244.0.0/26 {} Ipip;", a1.address)
    });
    let owned = cluster.kubectl(&[
        "get",
        "nodenetworkconfig",
        "node-a1",
        "-o",
        "jsonpath={.spec.blocks[*].cidr} {.spec.mtu}",
    ]);
    assert_eq!(owned, "10.244.0.0/26 1480");
    assert_eq!(route(&a1), "", "no route to its own block");

    // A config that is up to date is not rewritten.
    let version = || {
        cluster.kubectl(&[
            "get",
            "nodenetworkconfig",
            "node-b1",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let up_to_date = || {
        operator
            .log_text()
            .lines()
            .filter(|l| l.contains("Node config up to date"))
            .count()
    };
    let before = version();
    let passes = up_to_date();
    cluster.kubectl(&["label", "node", "node-a2", "unrelated=yes"]);
    wait_for("a no-op pass over every node", REACT, || {
        up_to_date() >= passes + 3
    });
    assert_eq!(before, version(), "an unchanged config was written again");

    // A second pool overlapping the first: Overlapping=True naming the first, not
    // allocatable; the first stays allocatable.
    cluster.apply_yaml(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: second\n\
         spec:\n  cidr: 10.244.128.0/17\n",
    );
    wait_for("second Overlapping=True", REACT, || {
        condition(&cluster, "second", "Overlapping", "status") == "True"
    });
    let message = condition(&cluster, "second", "Overlapping", "message");
    assert!(
        message.contains("pool classic (10.244.0.0/16)"),
        "{message}"
    );
    assert_eq!(
        condition(&cluster, "second", "Allocatable", "status"),
        "False"
    );
    assert_eq!(
        condition(&cluster, "second", "Ready", "reason"),
        "Overlapping"
    );
    wait_for("classic Overlapping=True", REACT, || {
        condition(&cluster, "classic", "Overlapping", "status") == "True"
    });
    assert_eq!(
        condition(&cluster, "classic", "Allocatable", "status"),
        "True"
    );
    let events = cluster.kubectl(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "reason=Overlapping,involvedObject.name=second",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("classic"), "{events}");

    // Deleting the pool with an allocated address is held, and says by what.
    cluster.kubectl(&["delete", "ippool", "classic", "--wait=false"]);
    wait_for("classic Ready reason Deleting", REACT, || {
        condition(&cluster, "classic", "Ready", "reason") == "Deleting"
    });
    let message = condition(&cluster, "classic", "Ready", "message");
    assert!(message.contains("1 on node-a1"), "{message}");
    Api::<IPAMBlock>::all(cluster.client().await)
        .delete("10-244-0-0-26", &Default::default())
        .await
        .expect("block is deleted");
    wait_for("classic gone once its address is released", REACT, || {
        !cluster
            .kubectl_output(&["get", "ippool", "classic"])
            .status
            .success()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_pool_from_kubeadm_then_fallback() {
    let Some(cluster) = cluster("operator-default").await else {
        return;
    };
    cluster.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kubeadm-config\n  namespace: kube-system\n\
         data:\n  ClusterConfiguration: |\n    apiVersion: kubeadm.k8s.io/v1beta3\n    \
         kind: ClusterConfiguration\n    networking:\n      dnsDomain: cluster.local\n      \
         podSubnet: 10.96.128.0/17\n      serviceSubnet: 10.96.0.0/17\n",
    );
    let cidr = || {
        cluster
            .kubectl_output(&[
                "get",
                "ippool",
                "default-ipv4-ippool",
                "-o",
                "jsonpath={.spec.cidr}",
            ])
            .stdout
    };
    let first = Operator::start(&cluster, "op-kubeadm", &[]);
    wait_for("default pool from kubeadm's podSubnet", REACT, || {
        cidr() == b"10.96.128.0/17"
    });
    let why = |cluster: &TestCluster| {
        cluster.kubectl(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "reason=DefaultPoolCreated,involvedObject.name=default-ipv4-ippool",
            "-o",
            "jsonpath={.items[*].message}",
        ])
    };
    wait_for("an Event saying why", REACT, || {
        why(&cluster).contains("kubeadm-config")
    });
    assert!(first.log_text().contains("Created the default pool"));
    let encap = cluster.kubectl(&[
        "get",
        "ippool",
        "default-ipv4-ippool",
        "-o",
        "jsonpath={.spec.ipipMode} {.spec.natOutgoing}",
    ]);
    assert_eq!(encap, "Always true");

    // Without the ConfigMap and without any pool, a restarted operator falls back.
    cluster.kubectl(&["delete", "ippool", "default-ipv4-ippool"]);
    cluster.kubectl(&["delete", "configmap", "-n", "kube-system", "kubeadm-config"]);
    let mut first = first;
    assert!(first.terminate(), "SIGTERM ends the operator cleanly");
    assert!(
        first.log_text().contains("Released the lease"),
        "{}",
        first.log_text()
    );
    let _second = Operator::start(&cluster, "op-fallback", &[]);
    wait_for("default pool 192.168.0.0/16", REACT, || {
        cidr() == b"192.168.0.0/16"
    });
    wait_for("an Event saying it is the fallback", REACT, || {
        why(&cluster).contains("192.168.0.0/16 is the default")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_handover_within_the_lease() {
    let Some(cluster) = cluster("operator-lease").await else {
        return;
    };
    let lease_seconds = 6;
    let timings = ["--lease-duration", "6", "--lease-renew-grace", "2"];
    let mut replicas = [
        Operator::start(&cluster, "op-a", &timings),
        Operator::start(&cluster, "op-b", &timings),
    ];
    let holder = || {
        cluster
            .kubectl_output(&[
                "get",
                "lease",
                "-n",
                "tortie-system",
                "tortie-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .stdout
    };
    wait_for("a lease holder", REACT, || {
        matches!(holder().as_slice(), b"op-a" | b"op-b")
    });
    let leader = if holder() == b"op-a" { 0 } else { 1 };
    let standby = 1 - leader;
    wait_for("the leader's metrics say so", REACT, || {
        replicas[leader].is_leader()
    });
    replicas[standby].wait_ready();
    assert!(!replicas[standby].is_leader(), "two leaders");
    assert_eq!(
        String::from_utf8_lossy(&holder()),
        replicas[leader].name,
        "the holder changed without a failure"
    );

    let killed = Instant::now();
    replicas[leader].kill();
    let new_name = replicas[standby].name.clone();
    // The standby takes over when the claim runs out; it renews up to `lease_seconds`
    // before the kill, and waits up to a second more to avoid collisions.
    wait_for(
        "the standby to take the lease",
        Duration::from_secs(lease_seconds + 5),
        || holder() == new_name.as_bytes(),
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(lease_seconds + 2),
        "handover took {took:?}, more than the lease duration ({lease_seconds}s) and slack"
    );
    wait_for("the new leader works", REACT, || {
        replicas[standby].is_leader()
    });
    replicas[standby].wait_ready();
    wait_for("the new leader wrote the cluster objects", REACT, || {
        cluster
            .kubectl_output(&["get", "clusterinformation", "default"])
            .status
            .success()
    });

    // Someone else takes the lease: the leader must stop writing, and does so by exiting
    // non-zero.
    let leases = Api::<Lease>::namespaced(cluster.client().await, "tortie-system");
    let mut lease = leases
        .get("tortie-operator")
        .await
        .expect("the lease exists");
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("someone-else".into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(600);
    leases
        .replace("tortie-operator", &PostParams::default(), &lease)
        .await
        .expect("the lease can be taken over");
    let survivor = &mut replicas[standby];
    wait_for(
        "the leader to exit after losing the lease",
        Duration::from_secs(2 * lease_seconds + 5),
        || survivor.child.try_wait().ok().flatten().is_some(),
    );
    let status = survivor
        .child
        .try_wait()
        .expect("the exit status can be read")
        .expect("the process exited");
    assert!(
        !status.success(),
        "exited with {status} after losing the lease"
    );
    assert!(survivor.log_text().contains("Lost the lease"));
}

/// The value of a metric line `name value` on the operator's `/metrics`.
fn metric(operator: &Operator, name: &str) -> Option<f64> {
    let (_, body) = operator.get("/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_garbage_of_gone_pods_and_nodes_is_collected() {
    let Some(cluster) = cluster("operator-ipam-gc").await else {
        return;
    };
    let client = cluster.client().await;
    for node in ["node-1", "node-2"] {
        cluster.apply_yaml(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n"
        ));
    }
    cluster.apply_yaml(
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: gc\n\
         spec:\n  cidr: 10.245.0.0/16\n",
    );
    // A pod that exists; unschedulable, so it stays unbound and is deleted at once.
    let live_pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: live\n  namespace: default\n\
                    spec:\n  automountServiceAccountToken: false\n  nodeSelector:\n    \
                    tortie.dev/nowhere: \"true\"\n  containers:\n  - name: pause\n    \
                    image: registry.k8s.io/pause:3.10\n";
    wait_for("pod default/live created", REACT, || {
        cluster
            .kubectl_with_input(&["apply", "-f", "-"], live_pod)
            .status
            .success()
    });

    // IPAM state as node-2's agent writes it: two pods that do not exist and one that
    // does, each with its handle, and a handle that holds nothing.
    let cidr = "10.245.0.0/26".parse().expect("test CIDR");
    let mut block = IPAMBlock::new_empty(cidr, Some("node-2"), 1).expect("block is valid");
    let pods = [("aaa", "gone-a"), ("bbb", "gone-b"), ("ccc", "live")];
    let handles = Api::<IPAMHandle>::all(client.clone());
    for (container, pod) in pods {
        let handle_id = format!("k8s-pod-network.{container}");
        let owner = AllocationAttribute::for_pod(
            &handle_id,
            "node-2",
            "default",
            pod,
            "2026-01-01 00:00:00 +0000 UTC",
        );
        block.allocate(1, &owner).expect("block has room");
        let mut handle = IPAMHandle::new_empty(&handle_id);
        handle.spec.add(&cidr, 1);
        handles
            .create(&PostParams::default(), &handle)
            .await
            .expect("handle is created");
    }
    let mut orphan = IPAMHandle::new_empty("k8s-pod-network.ddd");
    orphan.spec.add(&cidr, 1);
    handles
        .create(&PostParams::default(), &orphan)
        .await
        .expect("handle is created");
    let blocks = Api::<IPAMBlock>::all(client.clone());
    blocks
        .create(&PostParams::default(), &block)
        .await
        .expect("block is created");
    Api::<BlockAffinity>::all(client.clone())
        .create(
            &PostParams::default(),
            &BlockAffinity::for_node("node-2", cidr, AffinityState::Confirmed),
        )
        .await
        .expect("affinity is created");

    let operator = Operator::start(
        &cluster,
        "op-gc",
        &["--ipam-gc-grace", "2", "--ipam-gc-interval", "3"],
    );
    cluster.kubectl(&["delete", "node", "node-2"]);

    let names = |kind: &str| {
        cluster
            .kubectl(&["get", kind, "-o", "jsonpath={.items[*].metadata.name}"])
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_for(
        "the gone pods' addresses and handles released",
        REACT,
        || names("ipamhandles") == ["k8s-pod-network.ccc"],
    );
    let held = blocks
        .get("10-245-0-0-26")
        .await
        .expect("the block with a live pod's address stays");
    let owners: Vec<(String, String)> = held
        .allocations()
        .map(|(address, owner)| {
            (
                address.to_string(),
                owner.secondary.get("pod").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(owners, [("10.245.0.2".to_owned(), "live".to_owned())]);
    assert_eq!(
        names("blockaffinities"),
        ["node-2-10-245-0-0-26"],
        "the affinity stays with its non-empty block"
    );
    wait_for("USED 1/65536", REACT, || {
        column(&cluster.kubectl(&["get", "ippools"]), "gc", "USED").as_deref() == Some("1/65536")
    });
    let log = operator.log_text();
    for pod in ["gone-a", "gone-b"] {
        assert!(
            log.lines()
                .any(|l| l.contains("Released addresses of a pod that is gone")
                    && l.contains(&format!("pod={pod}"))),
            "no release logged for {pod}:\n{log}"
        );
    }
    wait_for("release metrics", REACT, || {
        metric(
            &operator,
            "tortie_operator_ipam_gc_released_addresses_total",
        ) == Some(2.0)
            && metric(&operator, "tortie_operator_ipam_gc_deleted_handles_total") == Some(3.0)
    });
    assert_eq!(
        metric(&operator, "tortie_operator_ipam_gc_released_blocks_total"),
        Some(0.0)
    );

    // The live pod goes: its address, then the empty block of the gone node and its
    // affinity are released, and the pool is empty again.
    cluster.kubectl(&["delete", "pod", "-n", "default", "live", "--wait=true"]);
    wait_for("the gone node's block and affinity released", REACT, || {
        names("ipamblocks").is_empty() && names("blockaffinities").is_empty()
    });
    assert!(
        names("ipamhandles").is_empty(),
        "{:?}",
        names("ipamhandles")
    );
    wait_for("USED 0/65536", REACT, || {
        column(&cluster.kubectl(&["get", "ippools"]), "gc", "USED").as_deref() == Some("0/65536")
    });
    wait_for("block metric", REACT, || {
        metric(&operator, "tortie_operator_ipam_gc_released_blocks_total") == Some(1.0)
            && metric(
                &operator,
                "tortie_operator_ipam_gc_released_addresses_total",
            ) == Some(3.0)
    });
    assert!(
        operator
            .log_text()
            .contains("Released the empty block of a node that is gone"),
        "{}",
        operator.log_text()
    );
}
