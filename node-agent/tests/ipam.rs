//! The agent's IPAM on a real API server with the CRDs installed: `tortie-agent` runs as a
//! child process per node (admin kubeconfig, socket in a temp dir) and is called through
//! the plugins' client code, the `tortie-cni` IPAM backend and the `tortie-ipam` binary.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless
//! TORTIE_E2E_REQUIRE=1.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use kube::Api;
use kube::api::ListParams;
use tortie_crds::ipam::{BlockAffinity, IPAMBlock, IPAMHandle};
use tortie_e2e::TestCluster;
use tortie_e2e::support::wait_for;
use tortie_node_agent::cni::agent_ipam::AgentIpam;
use tortie_node_agent::cni::config;
use tortie_node_agent::cni::invocation::{Command as CniCommand, Invocation};
use tortie_node_agent::cni::ipam::{Ipam, IpamRequest};
use tortie_node_agent::ipam::client::{AgentClient, ClientError};
use tortie_node_agent::ipam::protocol::{
    AllocateRequest, AllocateResponse, CODE_EXHAUSTED, CheckRequest, Families, ReleaseRequest,
};

const AGENT: &str = env!("CARGO_BIN_EXE_tortie-agent");
const IPAM_PLUGIN: &str = env!("CARGO_BIN_EXE_tortie-ipam");

const POOLS: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: main}
spec: {cidr: 10.244.0.0/16, blockSize: 26, nodeSelector: "!has(tortie.test/pool)"}
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: main-v6}
spec: {cidr: "fd00:10:244::/64", nodeSelector: "!has(tortie.test/pool)"}
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: disabled-pool}
spec: {cidr: 10.251.0.0/16, disabled: true, nodeSelector: all()}
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: special}
spec: {cidr: 10.252.0.0/24, blockSize: 28, nodeSelector: "tortie.test/pool == 'special'"}
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: tiny}
spec: {cidr: 10.250.0.0/30, blockSize: 30, nodeSelector: "tortie.test/pool == 'tiny'"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ipam_on_a_real_api_server() {
    let Some(cluster) = TestCluster::start("agent-ipam").await else {
        return;
    };
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/manifests/");
    cluster.kubectl(&["apply", "--server-side", "-f", crds]);
    cluster.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    cluster.apply_yaml(POOLS);
    for (node, labels) in [
        ("node-1", ""),
        ("node-2", ""),
        ("node-tiny", "\n  labels: {tortie.test/pool: tiny}"),
    ] {
        cluster.apply_yaml(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}{labels}\n"
        ));
    }
    let client = cluster.client().await;
    let api = Objects::new(client);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut handed_out: Vec<IpAddr> = Vec::new();

    // Socket permissions: only root may enter the directory and connect.
    let mut node1 = Agent::start(&cluster, "node-1", dir.path());
    let socket_mode = std::fs::metadata(&node1.socket)
        .expect("socket exists")
        .permissions()
        .mode();
    let dir_mode = std::fs::metadata(node1.socket.parent().expect("socket has a directory"))
        .expect("socket directory exists")
        .permissions()
        .mode();
    assert_eq!(socket_mode & 0o777, 0o600, "socket mode {socket_mode:o}");
    assert_eq!(dir_mode & 0o777, 0o700, "directory mode {dir_mode:o}");

    // 50 concurrent allocations: 50 distinct addresses from node-1's own blocks, and the
    // objects in the API add up.
    let results = allocate_many(&node1.client(), "c1", 50, V4_ONLY);
    let addresses = expect_all_ok(&results);
    assert_eq!(distinct(&addresses), 50, "{addresses:?}");
    let main: IpNet = "10.244.0.0/16".parse().expect("literal");
    assert!(addresses.iter().all(|a| main.contains(a)), "{addresses:?}");
    let blocks = api.blocks().await;
    for result in results.iter().flatten() {
        let block = &blocks[&result.addresses[0].block];
        assert_eq!(block.node(), Some("node-1"), "{:?}", block.spec.cidr);
    }
    assert_consistent(&api, "k8s-pod-network.c1-", 50, &cluster).await;
    handed_out.extend(&addresses);

    // CHECK sees each handle's address.
    let checked = node1
        .client()
        .check(&CheckRequest {
            handle_id: "k8s-pod-network.c1-7".into(),
        })
        .expect("check answers");
    let first = results[7].as_ref().expect("allocated").addresses[0].address;
    assert_eq!(checked.addresses, vec![first.addr()]);

    // 50 releases leave nothing allocated; releasing again is a no-op.
    let released = release_many(&node1.client(), "c1", 50);
    assert_eq!(released, 50);
    assert_consistent(&api, "k8s-pod-network.c1-", 0, &cluster).await;
    assert_eq!(allocated_in_api(&api).await, 0);
    let again = node1
        .client()
        .release(&ReleaseRequest {
            handle_id: "k8s-pod-network.c1-3".into(),
        })
        .expect("a second release succeeds");
    assert!(again.released.is_empty());

    // Two agents of two nodes allocating at once never share a block or an address.
    let node2 = Agent::start(&cluster, "node-2", dir.path());
    let (one, two) = std::thread::scope(|scope| {
        let one = scope.spawn(|| allocate_many(&node1.client(), "c2a", 30, V4_ONLY));
        let two = scope.spawn(|| allocate_many(&node2.client(), "c2b", 30, V4_ONLY));
        (
            one.join().expect("node-1 thread"),
            two.join().expect("node-2 thread"),
        )
    });
    let (addresses_one, addresses_two) = (expect_all_ok(&one), expect_all_ok(&two));
    let blocks_of = |results: &[Result<AllocateResponse, ClientError>]| -> BTreeSet<IpNet> {
        results
            .iter()
            .flatten()
            .map(|r| r.addresses[0].block)
            .collect()
    };
    assert!(
        blocks_of(&one).is_disjoint(&blocks_of(&two)),
        "{:?} / {:?}",
        blocks_of(&one),
        blocks_of(&two)
    );
    let mut both = addresses_one.clone();
    both.extend(&addresses_two);
    assert_eq!(distinct(&both), 60, "{both:?}");
    assert_one_owner_per_block(&api).await;
    assert_consistent(&api, "k8s-pod-network.c2", 60, &cluster).await;
    handed_out.extend(&both);
    assert_eq!(release_many(&node1.client(), "c2a", 30), 30);
    assert_eq!(release_many(&node2.client(), "c2b", 30), 30);

    // SIGKILL mid-run, restart: no address is handed out twice.
    let done = AtomicUsize::new(0);
    let client = node1.client();
    let before = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            (0..40)
                .map(|i| {
                    let result = client.allocate(&request(&format!("c3-{i}"), V4_ONLY));
                    done.fetch_add(1, Ordering::SeqCst);
                    result
                })
                .collect::<Vec<_>>()
        });
        let killer = scope.spawn(|| {
            wait_for(
                "10 allocations before the kill",
                Duration::from_secs(60),
                || done.load(Ordering::SeqCst) >= 10,
            );
            node1.kill();
        });
        killer.join().expect("killer thread");
        worker.join().expect("allocating thread")
    });
    let succeeded_before = before.iter().filter(|r| r.is_ok()).count();
    assert!(
        succeeded_before >= 10,
        "{succeeded_before} succeeded before the kill"
    );
    assert!(
        succeeded_before < 40,
        "the kill came after every allocation; nothing was cut short"
    );
    let node1 = Agent::start(&cluster, "node-1", dir.path());
    let mut owner_of: HashMap<IpAddr, String> = HashMap::new();
    let mut record = |container: String, response: &AllocateResponse| {
        let address = response.addresses[0].address.addr();
        if let Some(previous) = owner_of.insert(address, container.clone()) {
            assert_eq!(
                previous, container,
                "{address} was handed out to {previous} and to {container}"
            );
        }
    };
    for (i, result) in before.iter().enumerate() {
        let container = format!("c3-{i}");
        match result {
            Ok(response) => record(container, response),
            // The runtime retries a failed ADD with the same container.
            Err(_) => {
                let retried = node1
                    .client()
                    .allocate(&request(&container, V4_ONLY))
                    .unwrap_or_else(|error| panic!("retry of {container}: {error}"));
                record(container, &retried);
            }
        }
    }
    for i in 40..60 {
        let container = format!("c3-{i}");
        let response = node1
            .client()
            .allocate(&request(&container, V4_ONLY))
            .unwrap_or_else(|error| panic!("{container} after the restart: {error}"));
        record(container, &response);
    }
    assert_eq!(owner_of.len(), 60);
    let blocks = api.blocks().await;
    for (address, container) in &owner_of {
        let block = blocks
            .values()
            .find(|block| block.spec.cidr.contains(address))
            .expect("every address is in a block");
        let holder = block
            .owner_of(*address)
            .expect("address is in its block")
            .and_then(|owner| owner.handle().map(str::to_owned));
        assert_eq!(
            holder.as_deref(),
            Some(format!("k8s-pod-network.{container}").as_str()),
            "{address}"
        );
    }
    handed_out.extend(owner_of.keys());
    release_many(&node1.client(), "c3", 60);
    assert_eq!(allocated_in_api(&api).await, 0);
    assert!(handles(&api, "k8s-pod-network.c3-").await.is_empty());

    // Dual stack: one address of each family.
    let dual = node1
        .client()
        .allocate(&request("c4-dual", BOTH))
        .expect("dual-stack allocation");
    let v6: IpNet = "fd00:10:244::/64".parse().expect("literal");
    assert_eq!(dual.addresses.len(), 2);
    assert!(main.contains(&dual.addresses[0].address.addr()));
    assert!(v6.contains(&dual.addresses[1].address.addr()));
    assert_eq!(dual.addresses[1].address.prefix_len(), 128);
    assert_eq!(dual.addresses[1].pool, "main-v6");
    let again = node1
        .client()
        .allocate(&request("c4-dual", BOTH))
        .expect("a repeated ADD");
    assert_eq!(again, dual, "a repeated ADD returns the same addresses");
    handed_out.extend(dual.addresses.iter().map(|a| a.address.addr()));

    // Annotations: the namespace's, then the pod's, win over node selectors.
    cluster.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: annotated\n  annotations:\n    cni.projectcalico.org/ipv4pools: '[\"special\"]'\n",
    );
    let from_namespace = node1
        .client()
        .allocate(&pod_request("c5-ns", "annotated", "no-such-pod"))
        .expect("namespace annotation honoured");
    let special: IpNet = "10.252.0.0/24".parse().expect("literal");
    assert!(
        special.contains(&from_namespace.addresses[0].address.addr()),
        "{from_namespace:?}"
    );
    wait_for(
        "the default service account of namespace annotated",
        Duration::from_secs(60),
        || {
            cluster
                .kubectl_output(&["get", "serviceaccount", "default", "-n", "annotated"])
                .status
                .success()
        },
    );
    cluster.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: override\n  namespace: annotated\n  annotations:\n    cni.projectcalico.org/ipv4pools: '[\"10.244.0.0/16\"]'\nspec:\n  automountServiceAccountToken: false\n  containers:\n  - {name: c, image: registry.invalid/none}\n",
    );
    let from_pod = node1
        .client()
        .allocate(&pod_request("c5-pod", "annotated", "override"))
        .expect("pod annotation honoured");
    assert!(
        main.contains(&from_pod.addresses[0].address.addr()),
        "{from_pod:?}"
    );
    handed_out.push(from_namespace.addresses[0].address.addr());
    handed_out.push(from_pod.addresses[0].address.addr());

    // A disabled pool named in a request fails naming it and writes nothing.
    let mut disabled = request("c6-off", V4_ONLY);
    disabled.ipv4_pools = vec!["disabled-pool".into()];
    let error = node1
        .client()
        .allocate(&disabled)
        .expect_err("disabled pool");
    let ClientError::Agent(body) = error else {
        panic!("expected the agent's error, got {error}");
    };
    assert_eq!(body.code, 7, "{body:?}");
    assert!(
        body.msg.contains("\"disabled-pool\"") && body.msg.contains("disabled"),
        "{}",
        body.msg
    );
    assert!(handles(&api, "k8s-pod-network.c6-off").await.is_empty());

    // The plugin paths: tortie-cni's IPAM backend and the tortie-ipam binary.
    let via_backend = backend_add(&node1.socket, "c7-backend");
    assert!(main.contains(&via_backend), "{via_backend}");
    handed_out.push(via_backend);
    let via_binary = plugin(&node1.socket, "ADD", "c7-binary");
    assert!(via_binary.status.success(), "{via_binary:?}");
    let answer: serde_json::Value =
        serde_json::from_slice(&via_binary.stdout).expect("ADD prints JSON");
    let address: IpNet = answer["ips"][0]["address"]
        .as_str()
        .expect("an address")
        .parse()
        .expect("a CIDR");
    assert!(
        main.contains(&address.addr()) && address.prefix_len() == 32,
        "{answer}"
    );
    handed_out.push(address.addr());
    for _ in 0..2 {
        let deleted = plugin(&node1.socket, "DEL", "c7-binary");
        assert!(deleted.status.success(), "{deleted:?}");
    }
    assert!(handles(&api, "k8s-pod-network.c7-binary").await.is_empty());

    // Garbage, truncated and oversized requests get an error and change nothing.
    let snapshot = api.snapshot().await;
    let bad_requests: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", b"\x16\x03\x01 hello there\r\n\r\n".to_vec(), false),
        (
            "truncated",
            b"POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n{\"handleId\":\"k8s-pod-network.g1\",\"interf".to_vec(),
            true,
        ),
        (
            "oversized",
            format!(
                "POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n{}",
                "x".repeat(1000)
            )
            .into_bytes(),
            true,
        ),
        (
            "not json",
            b"POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{{{{".to_vec(),
            true,
        ),
        (
            "no family",
            {
                let body = r#"{"handleId":"k8s-pod-network.g2","interface":"eth0","families":{"ipv4":false,"ipv6":false}}"#;
                format!(
                    "POST /v1/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            },
            true,
        ),
        (
            "unknown version",
            b"POST /v2/allocate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
            true,
        ),
    ];
    for (what, bytes, json_error) in bad_requests {
        let answer = raw_exchange(&node1.socket, &bytes, what == "truncated");
        let status_line = answer.lines().next().unwrap_or_default().to_owned();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no HTTP status in {answer:?}"));
        assert!((400..500).contains(&status), "{what}: {answer}");
        if json_error {
            assert!(answer.contains("\"code\":"), "{what}: {answer}");
        }
    }
    assert_eq!(
        api.snapshot().await,
        snapshot,
        "a bad request changed IPAM objects"
    );
    node1.client().status().expect("the agent still serves");

    // A small pool runs out with a clear error and nothing half-written.
    let tiny_agent = Agent::start(&cluster, "node-tiny", dir.path());
    let tiny: IpNet = "10.250.0.0/30".parse().expect("literal");
    for i in 0..4 {
        let response = tiny_agent
            .client()
            .allocate(&request(&format!("c8-{i}"), V4_ONLY))
            .unwrap_or_else(|error| panic!("address {i} of the tiny pool: {error}"));
        assert!(tiny.contains(&response.addresses[0].address.addr()));
        handed_out.push(response.addresses[0].address.addr());
    }
    let snapshot = api.snapshot().await;
    let error = tiny_agent
        .client()
        .allocate(&request("c8-full", V4_ONLY))
        .expect_err("the pool is full");
    let ClientError::Agent(body) = error else {
        panic!("expected the agent's error, got {error}");
    };
    assert_eq!(body.code, CODE_EXHAUSTED, "{body:?}");
    assert!(body.msg.contains("\"tiny\""), "{}", body.msg);
    assert_eq!(
        api.snapshot().await,
        snapshot,
        "a failed allocation wrote something"
    );

    // The API server unreachable: try again later.
    let unreachable = Agent::start_with_kubeconfig(
        &unreachable_kubeconfig(&cluster, dir.path()),
        "node-1",
        &dir.path().join("unreachable"),
        false,
    );
    let error = unreachable
        .client()
        .allocate(&request("c9", V4_ONLY))
        .expect_err("no API server");
    let ClientError::Agent(body) = error else {
        panic!("expected the agent's error, got {error}");
    };
    assert_eq!(body.code, 11, "{body:?}");

    // The disabled pool was never used.
    let off: IpNet = "10.251.0.0/16".parse().expect("literal");
    assert!(handed_out.iter().all(|a| !off.contains(a)));
    assert!(
        api.blocks().await.keys().all(|block| !off.contains(block)),
        "a block of the disabled pool exists"
    );

    // SIGTERM: the agent stops cleanly and removes its socket.
    let mut node2 = node2;
    let socket = node2.socket.clone();
    let status = node2.terminate();
    assert!(status.success(), "tortie-agent exited with {status}");
    assert!(!socket.exists(), "the socket was left behind");
}

/// A `tortie-agent` child process, killed by PID when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(cluster: &TestCluster, node: &str, dir: &Path) -> Agent {
        Self::start_with_kubeconfig(cluster.kubeconfig(), node, &dir.join(node), true)
    }

    fn start_with_kubeconfig(kubeconfig: &Path, node: &str, dir: &Path, ready: bool) -> Agent {
        std::fs::create_dir_all(dir).expect("agent directory");
        let socket = dir.join("run").join("ipam.sock");
        let log = dir.join("agent.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let child = Command::new(AGENT)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("NODE_NAME", node)
            // These agents run in the test's own namespace, several at once, and no
            // NodeNetworkConfig names their nodes, so their data path stays idle; their
            // health endpoints take free loopback ports, never a port on the machine's
            // interfaces.
            .env("TORTIE_HEALTH_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info,tortie_node_agent=debug")
            .arg("--ipam-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("tortie-agent starts");
        let mut agent = Agent { child, socket, log };
        let client = agent.client();
        wait_for(
            &format!("tortie-agent of {node} to answer"),
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = agent.child.try_wait() {
                    panic!("tortie-agent exited with {status}: {}", agent.log_text());
                }
                client.status().is_ok_and(|status| status.ready || !ready)
            },
        );
        agent
    }

    fn client(&self) -> AgentClient {
        AgentClient::new(&self.socket).with_timeout(Duration::from_secs(60))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().expect("tortie-agent is reaped")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
        self.kill();
    }
}

/// The IPAM objects, read back for checking.
struct Objects {
    blocks: Api<IPAMBlock>,
    handles: Api<IPAMHandle>,
    affinities: Api<BlockAffinity>,
}

impl Objects {
    fn new(client: kube::Client) -> Self {
        Self {
            blocks: Api::all(client.clone()),
            handles: Api::all(client.clone()),
            affinities: Api::all(client),
        }
    }

    async fn blocks(&self) -> BTreeMap<IpNet, IPAMBlock> {
        self.blocks
            .list(&ListParams::default())
            .await
            .expect("list blocks")
            .items
            .into_iter()
            .map(|block| (block.spec.cidr, block))
            .collect()
    }

    /// Every IPAM object's name and resourceVersion.
    async fn snapshot(&self) -> BTreeSet<(String, String, String)> {
        let mut all = BTreeSet::new();
        let entry =
            |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                (
                    kind.to_owned(),
                    meta.name.clone().unwrap_or_default(),
                    meta.resource_version.clone().unwrap_or_default(),
                )
            };
        let lp = ListParams::default();
        for block in self.blocks.list(&lp).await.expect("list blocks").items {
            all.insert(entry("block", &block.metadata));
        }
        for handle in self.handles.list(&lp).await.expect("list handles").items {
            all.insert(entry("handle", &handle.metadata));
        }
        for affinity in self
            .affinities
            .list(&lp)
            .await
            .expect("list affinities")
            .items
        {
            all.insert(entry("affinity", &affinity.metadata));
        }
        all
    }
}

const V4_ONLY: Families = Families {
    ipv4: true,
    ipv6: false,
};
const BOTH: Families = Families {
    ipv4: true,
    ipv6: true,
};

fn request(container: &str, families: Families) -> AllocateRequest {
    AllocateRequest {
        handle_id: format!("k8s-pod-network.{container}"),
        namespace: Some("default".into()),
        pod: Some(format!("pod-{container}")),
        node: None,
        interface: "eth0".into(),
        families,
        ipv4_pools: Vec::new(),
        ipv6_pools: Vec::new(),
    }
}

fn pod_request(container: &str, namespace: &str, pod: &str) -> AllocateRequest {
    AllocateRequest {
        namespace: Some(namespace.into()),
        pod: Some(pod.into()),
        ..request(container, V4_ONLY)
    }
}

/// `count` allocations for containers `<prefix>-<i>`, all at once.
fn allocate_many(
    client: &AgentClient,
    prefix: &str,
    count: usize,
    families: Families,
) -> Vec<Result<AllocateResponse, ClientError>> {
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for i in 0..count {
            let results = &results;
            scope.spawn(move || {
                let result = client.allocate(&request(&format!("{prefix}-{i}"), families));
                results.lock().expect("results lock").insert(i, result);
            });
        }
    });
    results
        .into_inner()
        .expect("results lock")
        .into_values()
        .collect()
}

/// Releases containers `<prefix>-<i>` at once; returns how many addresses were freed.
fn release_many(client: &AgentClient, prefix: &str, count: usize) -> usize {
    let freed = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for i in 0..count {
            let freed = &freed;
            scope.spawn(move || {
                let released = client
                    .release(&ReleaseRequest {
                        handle_id: format!("k8s-pod-network.{prefix}-{i}"),
                    })
                    .unwrap_or_else(|error| panic!("release of {prefix}-{i}: {error}"));
                freed.fetch_add(released.released.len(), Ordering::SeqCst);
            });
        }
    });
    freed.into_inner()
}

fn expect_all_ok(results: &[Result<AllocateResponse, ClientError>]) -> Vec<IpAddr> {
    results
        .iter()
        .enumerate()
        .map(|(i, result)| match result {
            Ok(response) => response.addresses[0].address.addr(),
            Err(error) => panic!("allocation {i} failed: {error}"),
        })
        .collect()
}

fn distinct(addresses: &[IpAddr]) -> usize {
    addresses.iter().collect::<BTreeSet<_>>().len()
}

async fn handles(api: &Objects, prefix: &str) -> Vec<IPAMHandle> {
    api.handles
        .list(&ListParams::default())
        .await
        .expect("list handles")
        .items
        .into_iter()
        .filter(|handle| handle.spec.handle_id.starts_with(prefix))
        .collect()
}

async fn allocated_in_api(api: &Objects) -> usize {
    api.blocks().await.values().map(IPAMBlock::used_count).sum()
}

/// The blocks hold exactly `expected` addresses of handles starting with `prefix`, each
/// handle counts exactly its addresses, and kubectl sees the same blocks.
async fn assert_consistent(api: &Objects, prefix: &str, expected: usize, cluster: &TestCluster) {
    let blocks = api.blocks().await;
    let mut held: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for block in blocks.values() {
        for (_, owner) in block.allocations() {
            let handle = owner.handle().unwrap_or_default();
            if handle.starts_with(prefix) {
                *held
                    .entry(handle.to_owned())
                    .or_default()
                    .entry(block.spec.cidr.to_string())
                    .or_default() += 1;
            }
        }
    }
    let total: u64 = held.values().flat_map(|blocks| blocks.values()).sum();
    assert_eq!(total, expected as u64, "addresses held by {prefix}*");
    let recorded: BTreeMap<String, BTreeMap<String, u64>> = handles(api, prefix)
        .await
        .into_iter()
        .map(|handle| (handle.spec.handle_id.clone(), handle.spec.block.clone()))
        .collect();
    assert_eq!(recorded, held, "IPAMHandles and IPAMBlocks disagree");

    let json = cluster.kubectl(&["get", "ipamblocks", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&json).expect("kubectl prints JSON");
    let in_kubectl: usize = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|block| {
            let attributes = block["spec"]["attributes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            block["spec"]["allocations"]
                .as_array()
                .expect("allocations")
                .iter()
                .filter_map(serde_json::Value::as_u64)
                .filter(|&index| {
                    attributes[index as usize]["handle_id"]
                        .as_str()
                        .is_some_and(|handle| handle.starts_with(prefix))
                })
                .count()
        })
        .sum();
    assert_eq!(in_kubectl, expected, "kubectl get ipamblocks disagrees");
}

/// No block has two owners, and each confirmed affinity matches its block.
async fn assert_one_owner_per_block(api: &Objects) {
    let blocks = api.blocks().await;
    let affinities = api
        .affinities
        .list(&ListParams::default())
        .await
        .expect("list affinities")
        .items;
    let mut owners: BTreeMap<IpNet, BTreeSet<String>> = BTreeMap::new();
    for affinity in &affinities {
        owners
            .entry(affinity.spec.cidr)
            .or_default()
            .insert(affinity.spec.node.clone());
    }
    for (cidr, nodes) in &owners {
        assert_eq!(nodes.len(), 1, "block {cidr} has affinities of {nodes:?}");
        let block = &blocks[cidr];
        assert_eq!(block.node(), nodes.iter().next().map(String::as_str));
    }
}

/// One request written as raw bytes. A cut-short request closes the write side, so the
/// agent sees the body end early (as when a plugin dies mid-request).
fn raw_exchange(socket: &Path, bytes: &[u8], cut_short: bool) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the agent");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The agent may answer and close before reading everything; that is fine.
    let _ = stream.write_all(bytes);
    if cut_short {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn cni_env(command: &str, container: &str) -> HashMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", "/var/run/netns/not-used-by-ipam"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=plugin-pod",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn network_config(socket: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"bridge",
            "log_file":"/dev/null",
            "ipam":{{"type":"tortie-ipam","socket":"{}"}}}}"#,
        socket.display()
    )
}

/// ADD through the IPAM backend `tortie-cni` uses, then DEL; returns the address.
fn backend_add(socket: &Path, container: &str) -> IpAddr {
    let parsed = config::parse(network_config(socket).into_bytes()).expect("valid config");
    let env = cni_env("ADD", container);
    let invocation = Invocation::from_env(CniCommand::Add, &env).expect("valid env");
    let ipam = AgentIpam::from_config(parsed.config.ipam.as_ref());
    let request = IpamRequest {
        invocation: &invocation,
        config: &parsed,
    };
    let result = ipam.add(request).expect("backend ADD");
    let address = result.ips[0].address.addr();
    ipam.status(request).expect("backend STATUS");
    ipam.del(request).expect("backend DEL");
    ipam.del(request).expect("a second DEL");
    address
}

/// Runs the `tortie-ipam` binary as a runtime would.
fn plugin(socket: &Path, command: &str, container: &str) -> std::process::Output {
    let mut child = Command::new(IPAM_PLUGIN)
        .env_clear()
        .envs(cni_env(command, container))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tortie-ipam runs");
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(network_config(socket).as_bytes())
        .expect("write config");
    child.wait_with_output().expect("tortie-ipam finishes")
}

/// The admin kubeconfig pointed at a port where nothing listens.
fn unreachable_kubeconfig(cluster: &TestCluster, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(cluster.kubeconfig()).expect("kubeconfig");
    let rewritten: String = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("server:") {
                "    server: \"https://127.0.0.1:1\"".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("unreachable.kubeconfig");
    std::fs::write(&path, rewritten).expect("write kubeconfig");
    path
}
