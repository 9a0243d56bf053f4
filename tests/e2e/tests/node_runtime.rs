//! The node runtime on a local cluster: node readiness follows the CNI configuration, test
//! pods are wired by the real reference CNI plugins and reach each other, deletion runs CNI
//! DEL, a Tortie-image pod gets its downward-API environment, the API server's address and
//! a working service-account token, and `down` leaves nothing behind.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tortie_e2e::cluster;
use tortie_e2e::runtime::container::SERVICE_ACCOUNT_DIR;
use tortie_e2e::support::TestCluster;
use tortie_e2e::{NodeRecord, Subnet, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);

/// The test's namespace; `TEST_NS` in the manifests below.
const NAMESPACE: &str = "runtime-test";

/// Two test pods (any image that is not Tortie's runs the runtime's test server).
const WEB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: TEST_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: TEST_NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80}]
        readinessProbe: {httpGet: {port: 80, path: /}, periodSeconds: 1}
"#;

/// A Tortie image on the host network; its command runs the runtime's `whoami`.
const AGENT: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: TEST_NS}
---
apiVersion: v1
kind: Secret
metadata: {name: agent-settings, namespace: TEST_NS}
stringData: {level: debug}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: TEST_NS}
spec:
  serviceAccountName: agent
  hostNetwork: true
  nodeSelector: {kubernetes.io/hostname: rt-1}
  terminationGracePeriodSeconds: 5
  volumes:
  - {name: state, hostPath: {path: /var/lib/tortie-test, type: DirectoryOrCreate}}
  initContainers:
  - name: wait-for-api
    image: tortie/agent:dev
    command: [tortie-node-runtime, probe, tcp]
    args: [--host, $(KUBERNETES_SERVICE_HOST), --port, $(KUBERNETES_SERVICE_PORT)]
  containers:
  - name: agent
    image: tortie/agent:dev
    volumeMounts: [{name: state, mountPath: /var/run/tortie-test}]
    command: [tortie-node-runtime, whoami, --health-port, "9099"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: LOG_LEVEL, valueFrom: {secretKeyRef: {name: agent-settings, key: level}}}
    readinessProbe: {httpGet: {port: 9099, path: /ready}, periodSeconds: 1}
"#;

/// A pod whose environment names a secret that does not exist, and one whose liveness
/// probe always fails (nothing listens on port 81).
const FAULTY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: unresolved, namespace: TEST_NS}
spec:
  nodeSelector: {kubernetes.io/hostname: rt-1}
  containers:
  - name: app
    image: busybox
    env:
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: absent, key: token}}}
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy, namespace: TEST_NS}
spec:
  nodeSelector: {kubernetes.io/hostname: rt-1}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: busybox
    ports: [{containerPort: 80}]
    livenessProbe: {tcpSocket: {port: 81}, periodSeconds: 1, failureThreshold: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_runtime_runs_pods_with_real_cni_and_leaves_nothing_behind() {
    let Some(mut test) = TestCluster::start_local("node-runtime").await else {
        return;
    };
    let node = test.add_node_with_runtime("rt-1", Subnet::A, &[]).await;
    let runtime = node.runtime.clone().expect("the node runtime was started");

    // (a) No CNI configuration: the runtime reports NotReady with the kubelet's reason.
    assert_eq!(node_status(&test, "rt-1"), "NotReady");
    let reason = test.kubectl(&[
        "get",
        "node",
        "rt-1",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
    ]);
    assert_eq!(reason, "NetworkPluginNotReady");
    let lease = test.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-node-lease",
        "rt-1",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "rt-1", "the runtime renews the node's lease");

    // A conflist of the reference plugins makes the node Ready. The plugins themselves are
    // installed only later, so the first sandboxes fail and are retried.
    let networks = node.dir.join("var/lib/cni/networks");
    write_conflist(&node, &networks);
    wait_for("rt-1 to be Ready", TIMEOUT, || {
        node_status(&test, "rt-1") == "Ready"
    });

    // (b) Two test pods. Without the plugins, ADD fails and the runtime says so in an event.
    test.apply_yaml(&WEB.replace("TEST_NS", NAMESPACE));
    wait_for("a FailedCreatePodSandBox event", TIMEOUT, || {
        test.kubectl(&[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            "reason=FailedCreatePodSandBox",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .contains("CNI plugin \"ptp\" not found")
    });
    for plugin in ["ptp", "host-local", "loopback"] {
        let target = node.dir.join("opt/cni/bin").join(plugin);
        std::fs::copy(Path::new("/usr/lib/cni").join(plugin), &target)
            .unwrap_or_else(|error| panic!("copy {plugin} to {}: {error}", target.display()));
    }
    let pods = wait_for_pods(&test, "app=web", 2);
    for pod in &pods {
        test.wait_pod_ready(NAMESPACE, pod, TIMEOUT);
    }
    let (first, second) = (pods[0].as_str(), pods[1].as_str());
    let (first_ip, second_ip) = (
        test.pod_ip(NAMESPACE, first),
        test.pod_ip(NAMESPACE, second),
    );
    assert_ne!(first_ip, second_ip);
    for ip in [&first_ip, &second_ip] {
        assert!(
            ip.starts_with("10.88.1."),
            "{ip} is from the node's host-local range"
        );
    }
    assert_eq!(
        test.tcp_check((NAMESPACE, first), &second_ip, 80)
            .as_deref(),
        Ok(second)
    );
    assert_eq!(
        test.tcp_check((NAMESPACE, second), &first_ip, 80)
            .as_deref(),
        Ok(first)
    );
    assert!(
        test.ping((NAMESPACE, first), &second_ip),
        "ping {first} -> {second}"
    );

    // Deleting a pod runs CNI DEL: its address is released and its veth is gone, and the
    // runtime deletes the Pod object itself.
    let reserved_before = reservations(&networks);
    assert!(reserved_before.contains(&second_ip), "{reserved_before:?}");
    let (first_veth, second_veth) = (host_veth(&node, first), host_veth(&node, second));
    assert!(node_veths(&node).contains(&second_veth));
    test.kubectl(&["delete", "pod", "-n", NAMESPACE, second, "--wait=false"]);
    wait_for(&format!("pod {second} to disappear"), TIMEOUT, || {
        !test.pod_exists(NAMESPACE, second)
    });
    let reserved_after = reservations(&networks);
    assert!(
        !reserved_after.contains(&second_ip),
        "{second_ip} is still reserved: {reserved_after:?}"
    );
    assert!(reserved_after.contains(&first_ip));
    let veths_after = node_veths(&node);
    assert!(
        !veths_after.contains(&second_veth),
        "{second_veth} left: {veths_after:?}"
    );
    assert!(
        veths_after.contains(&first_veth),
        "{first_veth} went too: {veths_after:?}"
    );

    // (c) A Tortie image on the host network runs the local binary named by command[0] with
    // the downward API, the API server's address and its own service-account token.
    test.apply_yaml(&AGENT.replace("TEST_NS", NAMESPACE));
    test.wait_pod_ready(NAMESPACE, "agent", TIMEOUT);
    let uid = test.pod_field(NAMESPACE, "agent", "{.metadata.uid}");
    let log = test.pod_log(NAMESPACE, "agent", "agent");
    let api_url = test.cluster().api_server_url().expect("the cluster is up");
    let (api_host, api_port) = api_url
        .trim_start_matches("https://")
        .split_once(':')
        .expect("the URL has a port");
    for line in [
        "env POD_NAME=agent".to_string(),
        format!("env POD_NAMESPACE={NAMESPACE}"),
        format!("env POD_UID={uid}"),
        "env NODE_NAME=rt-1".to_string(),
        format!("env POD_IP={}", node.address),
        format!("env HOST_IP={}", node.address),
        format!("env KUBERNETES_SERVICE_HOST={api_host}"),
        format!("env KUBERNETES_SERVICE_PORT={api_port}"),
        format!("identity system:serviceaccount:{NAMESPACE}:agent"),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "{line:?} missing from the agent's log:\n{log}"
        );
    }
    assert_eq!(test.pod_ip(NAMESPACE, "agent"), node.address.to_string());
    let init = test.pod_field(
        NAMESPACE,
        "agent",
        "{.status.initContainerStatuses[0].state.terminated.reason}",
    );
    assert_eq!(
        init, "Completed",
        "the init container ran to completion first"
    );
    let init_log = test.pod_log(NAMESPACE, "agent", "wait-for-api");
    assert!(
        init_log.contains(&format!("connected to {api_host}:{api_port}")),
        "$(VAR) references in args are expanded: {init_log}"
    );

    // The hostPath is the node's own /var/lib, bound where the container asked for it.
    std::fs::write(node.dir.join("var/lib/tortie-test/marker"), "from the node")
        .expect("the hostPath was made under the node's var/lib");
    let marker = test.exec_in_pod(NAMESPACE, "agent", &["cat", "/var/run/tortie-test/marker"]);
    assert_eq!(String::from_utf8_lossy(&marker.stdout), "from the node");

    let agent_pid = test.pod_record(NAMESPACE, "agent").containers["agent"];
    let environ = std::fs::read(format!("/proc/{agent_pid}/environ")).unwrap_or_default();
    assert!(
        environ
            .split(|byte| *byte == 0)
            .any(|entry| entry == b"LOG_LEVEL=debug"),
        "secretKeyRef read with the node's identity"
    );

    // A reference that cannot be resolved keeps the container waiting with the reason; a
    // failing liveness probe restarts a container.
    test.apply_yaml(&FAULTY.replace("TEST_NS", NAMESPACE));
    wait_for("the unresolved secret to be reported", TIMEOUT, || {
        test.pod_field(
            NAMESPACE,
            "unresolved",
            "{.status.containerStatuses[0].state.waiting.reason} \
             {.status.containerStatuses[0].state.waiting.message}",
        )
        .starts_with(&format!(
            "CreateContainerConfigError env TOKEN: secret {NAMESPACE}/absent"
        ))
    });
    wait_for("the unhealthy container to be restarted", TIMEOUT, || {
        test.pod_field(
            NAMESPACE,
            "unhealthy",
            "{.status.containerStatuses[0].restartCount}",
        )
        .parse::<u32>()
        .is_ok_and(|restarts| restarts >= 1)
    });

    // Each pod sees its own token in its own mount namespace; the node sees none.
    let read = |pod: &str, file: &str| {
        let output = test.exec_in_pod(
            NAMESPACE,
            pod,
            &["cat", &format!("{SERVICE_ACCOUNT_DIR}/{file}")],
        );
        assert!(
            output.status.success(),
            "{pod}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(read("agent", "namespace"), NAMESPACE);
    assert!(read("agent", "ca.crt").contains("BEGIN CERTIFICATE"));
    let (agent_token, web_token) = (read("agent", "token"), read(first, "token"));
    assert!(
        !agent_token.is_empty() && agent_token != web_token,
        "the pods share a token"
    );
    let node_view = node
        .dir
        .join("var/run/secrets/kubernetes.io/serviceaccount");
    let visible: Vec<PathBuf> = std::fs::read_dir(&node_view)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        visible.is_empty(),
        "the node's own view shows pod files: {visible:?}"
    );

    // (d) `down` stops the runtime first; it ends every pod process, runs CNI DEL for every
    // sandbox and removes the namespaces it made before it exits.
    let mut pods = wait_for_pods(&test, "app=web", 2);
    pods.push("agent".to_string());
    let pod_pids: Vec<u32> = pods
        .iter()
        .flat_map(|pod| test.pod_record(NAMESPACE, pod).containers.into_values())
        .collect();
    let netns_dir = node.dir.join("var/run/netns");
    assert!(
        !entries(&netns_dir).is_empty(),
        "the web pods have namespaces of their own"
    );
    let dir = test.cluster().dir().to_path_buf();
    let report = cluster::down(&dir, true).expect("down leaves nothing behind");
    let (_, stopped) = report
        .processes
        .iter()
        .find(|(process, _)| process.pid == runtime.pid)
        .expect("down stopped the node runtime");
    assert_eq!(
        *stopped,
        tortie_e2e::process::Stopped::Terminated,
        "the runtime exited on SIGTERM"
    );
    assert_eq!(
        report.processes[0].0.pid, runtime.pid,
        "the runtime is stopped first"
    );
    assert!(!runtime.is_running());
    for pid in &pod_pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("tortie-node-runtime"),
            "pod process {pid} survived"
        );
    }
    assert!(
        entries(&netns_dir).is_empty(),
        "pod netns left: {:?}",
        entries(&netns_dir)
    );
    assert!(
        reservations(&networks).is_empty(),
        "addresses left reserved: {:?}",
        reservations(&networks)
    );
    let sandboxes = node.dir.join("var/lib/tortie-node-runtime/sandboxes");
    assert!(
        entries(&sandboxes).is_empty(),
        "sandbox records left: {:?}",
        entries(&sandboxes)
    );
    assert!(
        !Path::new("/run/netns").join(&node.netns).exists(),
        "node netns (and its veths) left"
    );
    let runtime_log = std::fs::read_to_string(&runtime.log).unwrap_or_default();
    assert!(
        runtime_log.contains("node runtime stopped"),
        "{runtime_log}"
    );
    // Dropping the test cluster removes the directory `down` kept for these checks.
}

fn node_status(test: &TestCluster, node: &str) -> String {
    let listed = test.kubectl(&["get", "node", node, "--no-headers"]);
    listed
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn write_conflist(node: &NodeRecord, networks: &Path) {
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "runtime-test",
        "plugins": [{
            "type": "ptp",
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.88.1.0/24" }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": networks,
            },
        }],
    });
    let path = node.dir.join("etc/cni/net.d/10-runtime-test.conflist");
    std::fs::write(&path, conflist.to_string())
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}

fn wait_for_pods(test: &TestCluster, selector: &str, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    wait_for(
        &format!("{count} pods {selector} with an address"),
        TIMEOUT,
        || {
            let listed = test.kubectl(&[
                "get",
                "pods",
                "-n",
                NAMESPACE,
                "-l",
                selector,
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
            ]);
            names = listed
                .lines()
                .filter(|line| line.split_whitespace().count() == 2)
                .map(|line| {
                    line.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            names.len() == count
        },
    );
    names
}

/// Addresses host-local holds (one file per address in the network's directory).
fn reservations(networks: &Path) -> BTreeSet<String> {
    entries(&networks.join("runtime-test"))
        .into_iter()
        .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// Host-side veths in the node's namespace (its own `eth0` is the underlay link).
fn node_veths(node: &NodeRecord) -> BTreeSet<String> {
    let listed = tortie_e2e::netns::ip_in(&node.netns, &["-o", "link", "show", "type", "veth"])
        .expect("ip link runs in the node namespace");
    listed
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name != "eth0")
        .collect()
}

/// The host side of a pod's veth, from the CNI result the runtime keeps for DEL.
fn host_veth(node: &NodeRecord, pod: &str) -> String {
    let dir = node.dir.join("var/lib/tortie-node-runtime/sandboxes");
    for name in entries(&dir) {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if record["pod"] != pod {
            continue;
        }
        let interfaces = record["result"]["interfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(host) = interfaces.iter().find(|i| i.get("sandbox").is_none()) {
            return host["name"].as_str().unwrap_or_default().to_string();
        }
    }
    panic!(
        "no sandbox record with a host-side interface for pod {pod} in {}",
        dir.display()
    );
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
