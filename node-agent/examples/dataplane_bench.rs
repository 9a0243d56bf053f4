//! Route programming speed: Tortie's reconciler against `ip -batch`, in a network namespace
//! this program makes and removes. Needs root.
//!
//! Run with `cargo run -p tortie-node-agent --example dataplane-bench` (add `--release` for
//! numbers that mean something). Prints one table.

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane_support::Netns;
use ipnet::Ipv4Net;
use tortie_node_agent::ROUTE_PROTOCOL;
use tortie_node_agent::dataplane::{Dataplane, DataplaneSpec, Encapsulation, RemoteBlock};

const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const WRONG_NEXT_HOP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// The `i`-th /26 of 10.0.0.0/8.
fn block(i: usize) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i as u32) * 64;
    Ipv4Net::new(Ipv4Addr::from(base), 26).expect("a /26 inside 10.0.0.0/8")
}

fn spec(routes: usize) -> DataplaneSpec {
    let mut spec = DataplaneSpec::new("bench");
    spec.remote_blocks = (0..routes)
        .map(|i| RemoteBlock {
            cidr: block(i),
            node_name: "peer".into(),
            node_address: NEXT_HOP,
            encapsulation: Encapsulation::Direct,
        })
        .collect();
    spec
}

/// A namespace with one veth whose subnet holds the next hops.
fn bench_namespace() -> Netns {
    let netns = Netns::new("bench");
    netns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    netns.ip(&["addr", "add", "198.18.0.1/24", "dev", "d0"]);
    netns.ip(&["link", "set", "d0", "up"]);
    netns.ip(&["link", "set", "d1", "up"]);
    netns
}

/// Runs `ip -n <ns> -batch -` over `commands`; returns the wall time including the process.
fn ip_batch(netns: &Netns, commands: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["-n", &netns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("ip runs");
    child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(commands.as_bytes())
        .expect("ip reads its batch");
    let status = child.wait().expect("ip finishes");
    let elapsed = start.elapsed();
    assert!(status.success(), "ip -batch failed");
    elapsed
}

fn route_lines(verb: &str, routes: usize, next_hop: Ipv4Addr) -> String {
    (0..routes)
        .map(|i| {
            format!(
                "route {verb} {} via {next_hop} dev d0 proto {ROUTE_PROTOCOL}\n",
                block(i)
            )
        })
        .collect()
}

fn count_routes(netns: &Netns) -> usize {
    netns
        .ip(&["route", "show", "proto", &ROUTE_PROTOCOL.to_string()])
        .lines()
        .count()
}

/// Tortie: one reconcile pass on an already connected dataplane.
fn tortie_pass(netns: &Netns, spec: &DataplaneSpec, passes: usize) -> Vec<(Duration, usize)> {
    netns.block_on(|| async {
        let mut dataplane = Dataplane::connect().expect("connect inside the bench namespace");
        let mut times = Vec::new();
        for _ in 0..passes {
            let start = Instant::now();
            let report = dataplane
                .reconcile_routes(spec)
                .await
                .expect("reconcile succeeds");
            times.push((
                start.elapsed(),
                report.created + report.replaced + report.deleted,
            ));
        }
        times
    })
}

/// Makes 1% of the routes wrong: half deleted, half pointing at another next hop.
fn drift(netns: &Netns, routes: usize) -> usize {
    let drifted = routes / 100;
    let mut commands = String::new();
    for k in 0..drifted {
        let i = (k * 7919) % routes;
        if k % 2 == 0 {
            commands.push_str(&format!("route del {} proto {ROUTE_PROTOCOL}\n", block(i)));
        } else {
            commands.push_str(&format!(
                "route replace {} via {WRONG_NEXT_HOP} dev d0 proto {ROUTE_PROTOCOL}\n",
                block(i)
            ));
        }
    }
    ip_batch(netns, &commands);
    drifted
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    if let Some(reason) = dataplane_support::skip_reason() {
        eprintln!("dataplane-bench cannot run: {reason}");
        std::process::exit(2);
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();

    for routes in [10_000, 100_000] {
        let netns = bench_namespace();
        let (time, changed) = tortie_pass(&netns, &spec(routes), 1)[0];
        assert_eq!((changed, count_routes(&netns)), (routes, routes));
        drop(netns);

        let netns = bench_namespace();
        let ip_time = ip_batch(&netns, &route_lines("add", routes, NEXT_HOP));
        assert_eq!(count_routes(&netns), routes);
        rows.push((
            format!("cold install, {routes} routes"),
            ms(time),
            ms(ip_time),
        ));
    }

    let routes = 65_536;
    let spec = spec(routes);
    let netns = bench_namespace();
    tortie_pass(&netns, &spec, 1);
    let steady: Vec<Duration> = tortie_pass(&netns, &spec, 5)
        .into_iter()
        .map(|(time, changed)| {
            assert_eq!(changed, 0, "nothing to change on a steady resync");
            time
        })
        .collect();
    let replace_all = route_lines("replace", routes, NEXT_HOP);
    let ip_steady = median((0..3).map(|_| ip_batch(&netns, &replace_all)).collect());
    rows.push((
        format!("resync {routes} routes, 0% drift (median of 5 / 3)"),
        ms(median(steady)),
        ms(ip_steady),
    ));

    let drifted = drift(&netns, routes);
    let (time, changed) = tortie_pass(&netns, &spec, 1)[0];
    assert_eq!(changed, drifted, "exactly the drifted routes are fixed");
    drift(&netns, routes);
    let ip_drift = ip_batch(&netns, &replace_all);
    assert_eq!(count_routes(&netns), routes);
    rows.push((
        format!("resync {routes} routes, 1% drift ({drifted} wrong)"),
        ms(time),
        ms(ip_drift),
    ));

    let read_start = Instant::now();
    let listed = count_routes(&netns);
    rows.push((
        format!("for reference: `ip route show proto 84` ({listed} routes)"),
        "-".into(),
        ms(read_start.elapsed()),
    ));
    drop(netns);

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("Route programming in a test namespace ({profile} build)");
    println!("`ip -batch` resyncs by replacing every route: it cannot diff.\n");
    println!(
        "| {:<55} | {:>12} | {:>12} |",
        "case", "tortie", "ip -batch"
    );
    println!("|{:-<57}|{:->14}|{:->14}|", "", "", "");
    for (case, tortie, ip) in rows {
        println!("| {case:<55} | {tortie:>12} | {ip:>12} |");
    }
}
