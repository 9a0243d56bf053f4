//! Real network namespaces and a runtime-like way to run `tortie-cni` in them.
//!
//! Everything a test makes (namespaces, processes, temp dirs) is owned by a guard that
//! removes it on drop, also when the test panics.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The plugin under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_tortie-cni");

/// Where Debian installs the reference plugins (host-local among them).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// True when the test may touch the kernel; prints why not otherwise.
pub fn can_run(test: &str) -> bool {
    if !nix_is_root() {
        println!("skipping {test}: needs root to create network namespaces");
        return false;
    }
    if !Path::new(REFERENCE_PLUGINS).join("host-local").is_file() {
        println!(
            "skipping {test}: {REFERENCE_PLUGINS}/host-local is missing (install containernetworking-plugins)"
        );
        return false;
    }
    true
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command, panicking with its stderr when it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn unique_name(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("tcni{}-{n}-{tag}", std::process::id())
}

/// A network namespace made by the test, deleted on drop.
pub struct Netns {
    /// `ip netns` name.
    pub name: String,
    deleted: bool,
}

impl Netns {
    /// Makes a fresh namespace.
    pub fn new(tag: &str) -> Self {
        let name = unique_name(tag);
        sh("ip", &["netns", "add", &name]);
        Self {
            name,
            deleted: false,
        }
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs a program inside the namespace and returns its output, failing or not.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec runs")
    }

    /// Deletes the namespace now (to test DEL after the pod's namespace is gone).
    pub fn delete(&mut self) {
        if !self.deleted {
            sh("ip", &["netns", "del", &self.name]);
            self.deleted = true;
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// A process started by the test, killed by PID on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node: its namespace, an uplink with a default route (as a real node has, which
/// proxy ARP relies on), and a temp dir for host-local's state and the plugin's log.
pub struct Node {
    /// The node's namespace; the plugin runs inside it.
    pub netns: Netns,
    /// host-local data dir, log file and anything else of this node.
    pub dir: tempfile::TempDir,
    /// The CNI network name.
    pub network: String,
}

impl Node {
    /// A node with an uplink addressed from 198.18.0.0/15 (inside its own namespace).
    pub fn new() -> Self {
        let netns = Netns::new("node");
        netns.ip(&["link", "set", "lo", "up"]);
        // A veth pair standing in for the node's NIC (the kernel may lack `dummy`).
        netns.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "uplink-far",
        ]);
        netns.ip(&["addr", "add", "198.18.0.1/24", "dev", "uplink"]);
        netns.ip(&["link", "set", "uplink", "up"]);
        netns.ip(&["link", "set", "uplink-far", "up"]);
        netns.ip(&["route", "add", "default", "dev", "uplink"]);
        Self {
            netns,
            dir: tempfile::tempdir().expect("temp dir"),
            network: "tortie-test".into(),
        }
    }

    /// A network config for `version` with a host-local range.
    pub fn config(&self, version: &str, ranges: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": self.network,
            "type": "tortie-cni",
            "mtu": 1400,
            "log_file": self.dir.path().join("cni.log"),
            "log_level": "debug",
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.path().join("ipam"),
                "ranges": ranges,
            },
        })
    }

    /// The usual config: a /24 from 10.244.0.0/16.
    pub fn default_config(&self, version: &str) -> Value {
        self.config(version, json!([[{"subnet": "10.244.1.0/24"}]]))
    }

    /// Runs the plugin inside the node as a runtime does: env vars and config on stdin.
    pub fn cni(&self, command: &str, pod: Option<&Pod>, config: &Value) -> CniOutput {
        let mut env: Vec<(String, String)> = vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_PATH".into(), REFERENCE_PLUGINS.into()),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ];
        if let Some(pod) = pod {
            env.push(("CNI_CONTAINERID".into(), pod.container_id.clone()));
            env.push(("CNI_NETNS".into(), pod.netns_env.clone()));
            env.push(("CNI_IFNAME".into(), "eth0".into()));
            env.push((
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.name, pod.container_id
                ),
            ));
        }
        self.run_plugin(&env, &serde_json::to_vec(config).expect("config encodes"))
    }

    /// Runs the plugin with exactly `env` and raw `stdin`.
    pub fn run_plugin(&self, env: &[(String, String)], stdin: &[u8]) -> CniOutput {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns.name, PLUGIN])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("plugin starts");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(stdin)
            .expect("plugin reads stdin");
        let output = child.wait_with_output().expect("plugin finishes");
        CniOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Names of the node's links other than `lo` and the uplink pair.
    pub fn pod_links(&self) -> Vec<String> {
        self.netns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .filter(|name| !matches!(name.as_str(), "lo" | "uplink" | "uplink-far"))
            .collect()
    }

    /// The node's routes tagged with Tortie's protocol.
    pub fn tortie_routes(&self) -> Vec<String> {
        self.netns
            .ip(&["route", "show", "proto", "84"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Addresses host-local holds reserved.
    pub fn reservations(&self) -> Vec<String> {
        let dir = self.dir.path().join("ipam").join(&self.network);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
            .collect()
    }

    /// Asserts nothing of any pod remains on the node.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.pod_links(),
            Vec::<String>::new(),
            "links left on the node"
        );
        assert_eq!(
            self.tortie_routes(),
            Vec::<String>::new(),
            "routes left on the node"
        );
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "host-local reservations left"
        );
    }

    /// The plugin's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cni.log")).unwrap_or_default()
    }
}

/// A pod: its namespace and the runtime's names for it.
pub struct Pod {
    /// The pod's namespace.
    pub netns: Netns,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// What the runtime passes as `CNI_NETNS` (a test may blank it).
    pub netns_env: String,
}

impl Pod {
    /// A pod with a fresh namespace.
    pub fn new(name: &str) -> Self {
        let netns = Netns::new("pod");
        let container_id = format!("{:x}{}", std::process::id(), netns.name.replace('-', ""));
        let netns_env = netns.path().display().to_string();
        Self {
            netns,
            container_id,
            name: format!("{name}-{}", std::process::id()),
            netns_env,
        }
    }

    /// The address on the pod's eth0, if any.
    pub fn address(&self) -> Option<String> {
        let out = self.netns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        out.split_whitespace()
            .skip_while(|word| *word != "inet")
            .nth(1)
            .map(str::to_owned)
    }
}

/// The plugin's exit code and output.
#[derive(Debug)]
pub struct CniOutput {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl CniOutput {
    /// Asserts success and returns stdout parsed (or `Null` when empty).
    pub fn success(&self) -> Value {
        assert_eq!(self.code, Some(0), "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.stdout).expect("stdout is JSON")
        }
    }

    /// Asserts failure and returns the error JSON.
    pub fn error(&self) -> Value {
        assert_ne!(
            self.code,
            Some(0),
            "plugin unexpectedly succeeded: {self:?}"
        );
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not error JSON ({e}): {self:?}"))
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
