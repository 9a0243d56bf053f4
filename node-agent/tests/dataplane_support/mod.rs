//! Network namespaces for data-path tests: made by the test, removed on drop (also when a
//! test panics), and a way to run code inside one.

#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Why kernel tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Some(format!(
            "needs root to make network namespaces (effective uid {uid})"
        ));
    }
    for tool in ["ip", "nft", "ping"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!("needs the `{tool}` command"));
        }
    }
    None
}

/// Prints the skip reason and returns true when the test must not run.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            eprintln!("skipped {test}: {reason}");
            true
        }
        None => false,
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with `lo` up; `role` makes the name readable.
    pub fn new(role: &str) -> Self {
        let name = format!(
            "tdp-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Runs `ip -n <ns> args...`, panicking with its error output on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace and returns its output, whatever the status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .expect("the ip command runs (checked by skip_reason)")
    }

    /// Like [`Netns::exec`] but panics on failure.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let output = self.exec(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file =
                        File::open(&path).expect("the namespace file exists while Netns lives");
                    setns(file, CloneFlags::CLONE_NEWNET)
                        .expect("root may enter a network namespace");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs the future made by `f` on a single-threaded Tokio runtime inside this namespace
    /// (sockets, `nft` children and `/proc/sys` writes all land here).
    pub fn block_on<F: Future>(&self, f: impl FnOnce() -> F + Send) -> F::Output
    where
        F::Output: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime can be built")
                .block_on(f())
        })
    }

    /// Whether `ping` from this namespace reaches `target` (3 probes, any reply counts).
    pub fn pings(&self, target: Ipv4Addr) -> bool {
        self.exec(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "2", "-q", &target.to_string()],
        )
        .status
        .success()
    }

    /// Opens a TCP listener on `address` inside this namespace.
    pub fn listen(&self, address: SocketAddr) -> TcpListener {
        self.run(|| {
            TcpListener::bind(address).expect("the test address is free in a fresh namespace")
        })
    }

    /// Connects from inside this namespace; the address the server saw is checked by the
    /// caller on the listener side.
    pub fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        self.run(|| TcpStream::connect_timeout(&address, Duration::from_secs(3)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes every link, route and nftables table in it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command, panicking with its error output on failure.
pub fn run(program: &str, args: &[&str]) -> String {
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

/// Two "nodes" (and an "outside" host) on a shared underlay bridge, each node with one
/// "pod": a namespace wired the way the CNI plugin wires one (a `cali*` veth, /32 address,
/// default route via 169.254.1.1 answered by proxy ARP, a /32 route back with Tortie's
/// route protocol).
///
/// Fields drop in reverse order of declaration; pods and nodes go before the underlay.
pub struct Cluster {
    pub pods: Vec<Netns>,
    pub nodes: Vec<Netns>,
    pub outside: Netns,
    pub underlay: Netns,
}

/// Underlay address of node `i` (0-based).
pub fn node_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 1 + i as u8)
}

/// Underlay address of the outside host.
pub const OUTSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// Block of node `i`: 10.244.(i+1).0/26.
pub fn block(i: usize) -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, 1 + i as u8, 0), 26).expect("valid test block")
}

/// The pod address of node `i`: the fifth address of its block.
pub fn pod_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1 + i as u8, 5)
}

/// Host-side interface name of node `i`'s pod.
pub fn pod_interface(i: usize) -> String {
    format!("calitest{i}")
}

impl Cluster {
    pub fn new(nodes: usize) -> Self {
        let underlay = Netns::new("u");
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&["link", "set", "br0", "up"]);

        let attach = |netns: &Netns, port: &str, address: Ipv4Addr| {
            underlay.ip(&[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns.name,
            ]);
            underlay.ip(&["link", "set", port, "master", "br0", "up"]);
            netns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
            netns.ip(&["link", "set", "eth0", "up"]);
        };

        let outside = Netns::new("out");
        attach(&outside, "pout", OUTSIDE_ADDRESS);

        let mut node_list = Vec::new();
        let mut pods = Vec::new();
        for i in 0..nodes {
            let node = Netns::new(&format!("n{i}"));
            attach(&node, &format!("p{i}"), node_address(i));
            // Like a real node, a default gateway (the outside host). Proxy ARP answers the
            // pod's 169.254.1.1 only for addresses the node has a route to.
            node.ip(&[
                "route",
                "add",
                "default",
                "via",
                &OUTSIDE_ADDRESS.to_string(),
            ]);

            let pod = Netns::new(&format!("pod{i}"));
            let host_side = pod_interface(i);
            node.ip(&[
                "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns",
                &pod.name,
            ]);
            node.ip(&["link", "set", &host_side, "up"]);
            node.sysctl(&format!("net.ipv4.conf.{host_side}.proxy_arp"), "1");
            node.ip(&[
                "route",
                "add",
                &format!("{}/32", pod_address(i)),
                "dev",
                &host_side,
                "proto",
                &tortie_node_agent::ROUTE_PROTOCOL.to_string(),
                "scope",
                "link",
            ]);
            pod.ip(&[
                "addr",
                "add",
                &format!("{}/32", pod_address(i)),
                "dev",
                "eth0",
            ]);
            pod.ip(&["link", "set", "eth0", "up"]);
            pod.ip(&[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            pod.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);

            node_list.push(node);
            pods.push(pod);
        }

        Self {
            pods,
            nodes: node_list,
            outside,
            underlay,
        }
    }
}

impl Cluster {
    /// Routes, neighbours and forwarding state of every node and pod, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for netns in self.nodes.iter().chain(&self.pods) {
            let forward = netns.exec_ok("cat", &["/proc/sys/net/ipv4/ip_forward"]);
            out.push_str(&format!(
                "== {} (ip_forward {})\n{}{}{}",
                netns.name,
                forward.trim(),
                netns.ip(&["-br", "addr"]),
                netns.ip(&["route", "show", "table", "all"]),
                netns.ip(&["neigh"]),
            ));
        }
        out
    }
}
