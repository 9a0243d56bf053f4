//! `tortie-cni` against the real kernel: namespaces made here, the built binary run the
//! way a container runtime runs it, host-local as the IPAM delegate.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Node, Pod, Process, can_run, wait_for};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn pod_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"]
        .as_str()
        .expect("result has an address");
    address
        .split('/')
        .next()
        .expect("address has a prefix")
        .to_owned()
}

#[test]
fn add_result_is_spec_correct_for_every_version() {
    if !can_run("add_result_is_spec_correct_for_every_version") {
        return;
    }
    let node = Node::new();

    for version in VERSIONS {
        let pod = Pod::new("web");
        let config = node.default_config(version);
        let result = node.cni("ADD", Some(&pod), &config).success();

        assert_eq!(result["cniVersion"], version);
        let host = &result["interfaces"][0];
        let host_name = host["name"].as_str().expect("host interface name");
        assert!(
            host_name.starts_with("cali") && host_name.len() == 15,
            "{host_name}"
        );
        assert_eq!(host["mac"], "ee:ee:ee:ee:ee:ee");
        assert!(host.get("sandbox").is_none());
        let inside = &result["interfaces"][1];
        assert_eq!(inside["name"], "eth0");
        assert_eq!(inside["sandbox"], pod.netns.path().display().to_string());
        let pod_link = pod.netns.ip(&["link", "show", "eth0"]);
        let mac = inside["mac"].as_str().expect("pod mac");
        assert!(pod_link.contains(mac), "{pod_link} lacks {mac}");
        assert!(pod_link.contains("mtu 1400"), "{pod_link}");
        if version == "1.1.0" {
            assert_eq!(inside["mtu"], 1400);
        } else {
            assert!(
                inside.get("mtu").is_none(),
                "{version} has no interface mtu"
            );
        }

        let ip = &result["ips"][0];
        assert_eq!(result["ips"].as_array().map(Vec::len), Some(1));
        assert_eq!(ip["interface"], 1);
        assert_eq!(ip["gateway"], "169.254.1.1");
        let address = ip["address"].as_str().expect("address");
        assert!(
            address.starts_with("10.244.1.") && address.ends_with("/32"),
            "{address}"
        );
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version} tags IPs with their family");
        } else {
            assert!(ip.get("version").is_none(), "{version} has no ip version");
        }
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
        );

        assert_eq!(pod.address().as_deref(), Some(address));
        let routes = pod.netns.ip(&["route", "show"]);
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0"),
            "{routes}"
        );
        assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
        let lo = pod.netns.ip(&["link", "show", "lo"]);
        assert!(lo.contains("UP"), "{lo}");

        let ip_only = pod_ip(&result);
        let host_routes = node.tortie_routes();
        assert!(
            host_routes
                .iter()
                .any(|r| r.starts_with(&format!("{ip_only} dev {host_name} scope link"))),
            "{host_routes:?}"
        );
        let host_link = node.netns.ip(&["-d", "link", "show", host_name]);
        assert!(
            host_link.contains(&format!("alias tortie:{}:eth0", pod.container_id)),
            "{host_link}"
        );
        let proxy_arp = node.netns.exec(&[
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{host_name}/proxy_arp"),
        ]);
        assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "1");

        node.cni("DEL", Some(&pod), &config).success();
    }
    node.assert_clean();
}

#[test]
fn two_pods_reach_each_other_through_the_node() {
    if !can_run("two_pods_reach_each_other_through_the_node") {
        return;
    }
    let node = Node::new();
    let config = node.default_config("1.0.0");
    let client = Pod::new("client");
    let server = Pod::new("server");
    node.cni("ADD", Some(&client), &config).success();
    let server_ip = pod_ip(&node.cni("ADD", Some(&server), &config).success());

    let ping = client
        .netns
        .exec(&["ping", "-c", "2", "-W", "2", &server_ip]);
    assert!(
        ping.status.success(),
        "ping {server_ip} failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let listener = Process(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &server.netns.name,
                "nc",
                "-l",
                &server_ip,
                "8080",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("nc listens"),
    );
    wait_for("the listener", Duration::from_secs(5), || {
        let ss = server.netns.exec(&["ss", "-ltn"]);
        String::from_utf8_lossy(&ss.stdout).contains(":8080")
    });
    let mut sender = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.netns.name,
            "nc",
            "-N",
            "-w",
            "3",
            &server_ip,
            "8080",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nc connects");
    std::io::Write::write_all(&mut sender.stdin.take().expect("piped"), b"hello tortie\n")
        .expect("nc takes input");
    assert!(
        sender.wait().expect("nc finishes").success(),
        "TCP connect failed"
    );
    let mut listener = listener;
    let mut received = String::new();
    std::io::Read::read_to_string(&mut listener.0.stdout.take().expect("piped"), &mut received)
        .expect("listener output is read until it exits");
    assert_eq!(received, "hello tortie\n");

    node.cni("DEL", Some(&client), &config).success();
    node.cni("DEL", Some(&server), &config).success();
    node.assert_clean();
}

#[test]
fn del_always_succeeds_and_leaves_nothing() {
    if !can_run("del_always_succeeds_and_leaves_nothing") {
        return;
    }
    let node = Node::new();
    let config = node.default_config("0.4.0");

    let pod = Pod::new("twice");
    node.cni("ADD", Some(&pod), &config).success();
    node.cni("DEL", Some(&pod), &config).success();
    node.assert_clean();
    node.cni("DEL", Some(&pod), &config).success();
    node.assert_clean();

    let mut gone = Pod::new("gone");
    node.cni("ADD", Some(&gone), &config).success();
    gone.netns.delete();
    node.cni("DEL", Some(&gone), &config).success();
    node.assert_clean();

    let mut blank = Pod::new("blank");
    node.cni("ADD", Some(&blank), &config).success();
    blank.netns_env = String::new();
    node.cni("DEL", Some(&blank), &config).success();
    node.assert_clean();
}

#[test]
fn failed_add_leaves_nothing_behind() {
    if !can_run("failed_add_leaves_nothing_behind") {
        return;
    }
    let node = Node::new();
    let config = node.config(
        "1.0.0",
        json!([[{"subnet": "10.244.9.0/24", "rangeStart": "10.244.9.10", "rangeEnd": "10.244.9.10"}]]),
    );

    let first = Pod::new("first");
    node.cni("ADD", Some(&first), &config).success();
    let second = Pod::new("second");
    let error = node.cni("ADD", Some(&second), &config).error();
    let msg = error["msg"].as_str().expect("msg");
    assert!(msg.contains("host-local"), "{msg}");
    assert!(error["code"].as_u64().is_some());
    assert_eq!(node.pod_links().len(), 1, "only the first pod's veth");
    let second_links = second.netns.ip(&["-o", "link", "show"]);
    assert!(!second_links.contains("eth0"), "{second_links}");
    node.cni("DEL", Some(&first), &config).success();
    node.assert_clean();

    // Fails after IPAM succeeded: the pod already has an eth0, so the veth cannot be made.
    let occupied = Pod::new("occupied");
    occupied.netns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-far",
    ]);
    let error = node.cni("ADD", Some(&occupied), &config).error();
    assert_eq!(error["code"], 100, "{error}");
    assert!(
        error["msg"].as_str().expect("msg").contains("eth0"),
        "{error}"
    );
    node.assert_clean();
}

#[test]
fn bad_input_gets_the_spec_error_codes() {
    if !can_run("bad_input_gets_the_spec_error_codes") {
        return;
    }
    let node = Node::new();
    let pod = Pod::new("bad");
    let env = |command: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), pod.container_id.clone()),
            ("CNI_NETNS".into(), pod.netns_env.clone()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), support::REFERENCE_PLUGINS.into()),
        ]
    };

    let truncated = node.run_plugin(&env("ADD"), br#"{"cniVersion":"1.0.0","name":"n"#);
    let error = truncated.error();
    assert_eq!(error["code"], 6, "{error}");
    assert!(truncated.stderr.is_empty() || !truncated.stderr.contains("panicked"));

    let mut config = node.default_config("1.0.0");
    config["cniVersion"] = json!("0.9.9");
    let error = node.cni("ADD", Some(&pod), &config).error();
    assert_eq!(error["code"], 1, "{error}");
    assert!(error["msg"].as_str().expect("msg").contains("0.9.9"));
    let details = error["details"].as_str().expect("details");
    for version in VERSIONS {
        assert!(details.contains(version), "{details} lacks {version}");
    }

    let version = node
        .run_plugin(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#)
        .success();
    assert_eq!(
        version,
        json!({"cniVersion": "1.1.0", "supportedVersions": VERSIONS})
    );

    let mut no_ifname = env("ADD");
    no_ifname.retain(|(k, _)| k != "CNI_IFNAME");
    let config = serde_json::to_vec(&node.default_config("1.0.0")).expect("encodes");
    let error = node.run_plugin(&no_ifname, &config).error();
    assert_eq!(error["code"], 4, "{error}");
    assert!(error["msg"].as_str().expect("msg").contains("CNI_IFNAME"));

    node.assert_clean();
}

#[test]
fn check_names_what_is_missing() {
    if !can_run("check_names_what_is_missing") {
        return;
    }
    let node = Node::new();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let pod = Pod::new("checked");
        let mut config = node.default_config(version);
        let result = node.cni("ADD", Some(&pod), &config).success();
        config["prevResult"] = result.clone();
        node.cni("CHECK", Some(&pod), &config).success();

        let ip = pod_ip(&result);
        let host_name = result["interfaces"][0]["name"].as_str().expect("host name");
        node.netns.ip(&["route", "del", &format!("{ip}/32")]);
        let error = node.cni("CHECK", Some(&pod), &config).error();
        let expected = format!("host route to {ip}/32 via {host_name} is missing");
        assert!(
            error["msg"].as_str().expect("msg").contains(&expected),
            "{error} lacks {expected}"
        );

        pod.netns.ip(&["route", "del", "default"]);
        let error = node.cni("CHECK", Some(&pod), &config).error();
        assert!(
            error["msg"]
                .as_str()
                .expect("msg")
                .contains("pod default route via 169.254.1.1 is missing"),
            "{error}"
        );

        node.cni("DEL", Some(&pod), &config).success();
    }
    node.assert_clean();
}

#[test]
fn concurrent_adds_get_distinct_addresses_and_dels_clean_up() {
    if !can_run("concurrent_adds_get_distinct_addresses_and_dels_clean_up") {
        return;
    }
    let node = Node::new();
    let config = node.default_config("1.0.0");
    let pods: Vec<Pod> = (0..20).map(|i| Pod::new(&format!("crowd{i}"))).collect();

    let addresses: Vec<String> = std::thread::scope(|scope| {
        let adds: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(|| node.cni("ADD", Some(pod), &config)))
            .collect();
        adds.into_iter()
            .map(|add| pod_ip(&add.join().expect("ADD thread").success()))
            .collect()
    });
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "{addresses:?}");
    assert_eq!(node.pod_links().len(), 20);
    assert_eq!(node.tortie_routes().len(), 20);

    std::thread::scope(|scope| {
        let dels: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(|| node.cni("DEL", Some(pod), &config)))
            .collect();
        for del in dels {
            del.join().expect("DEL thread").success();
        }
    });
    node.assert_clean();
}

#[test]
fn gc_removes_only_links_of_gone_attachments_and_status_reports_ready() {
    if !can_run("gc_removes_only_links_of_gone_attachments_and_status_reports_ready") {
        return;
    }
    let node = Node::new();
    let config = node.default_config("1.1.0");
    let kept = Pod::new("kept");
    let stale = Pod::new("stale");
    let kept_result = node.cni("ADD", Some(&kept), &config).success();
    let stale_result = node.cni("ADD", Some(&stale), &config).success();
    // A cali link that is not Tortie's must survive GC.
    node.netns.ip(&[
        "link",
        "add",
        "cali0foreign000",
        "type",
        "veth",
        "peer",
        "name",
        "foreign-far",
    ]);

    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": kept.container_id, "ifname": "eth0"}]);
    node.cni("GC", None, &gc).success();

    let links = node.pod_links();
    let kept_name = kept_result["interfaces"][0]["name"].as_str().expect("name");
    let stale_name = stale_result["interfaces"][0]["name"]
        .as_str()
        .expect("name");
    assert!(links.iter().any(|l| l == kept_name), "{links:?}");
    assert!(!links.iter().any(|l| l == stale_name), "{links:?}");
    assert!(links.iter().any(|l| l == "cali0foreign000"), "{links:?}");
    assert!(links.iter().any(|l| l == "foreign-far"), "{links:?}");

    node.cni("STATUS", None, &config).success();
    let mut broken = config.clone();
    broken["ipam"]["type"] = json!("no-such-ipam");
    let error = node.cni("STATUS", None, &broken).error();
    assert_eq!(error["code"], 50, "{error}");

    node.netns.ip(&["link", "del", "cali0foreign000"]);
    node.cni("DEL", Some(&kept), &config).success();
    node.cni("DEL", Some(&stale), &config).success();
    node.assert_clean();
}

#[test]
fn dual_stack_pods_get_both_families() {
    if !can_run("dual_stack_pods_get_both_families") {
        return;
    }
    let node = Node::new();
    // IPv6 forwarding is global in the kernel; on a real node the agent turns it on.
    node.netns
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let config = node.config(
        "1.0.0",
        json!([[{"subnet": "10.244.2.0/24"}], [{"subnet": "fd00:10:244:2::/64"}]]),
    );
    let a = Pod::new("v6a");
    let b = Pod::new("v6b");
    node.cni("ADD", Some(&a), &config).success();
    let result = node.cni("ADD", Some(&b), &config).success();

    let v6 = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .find_map(|ip| ip["address"].as_str().filter(|a| a.contains(':')))
        .expect("an IPv6 address");
    assert!(v6.ends_with("/128"), "{v6}");
    let routes = b.netns.ip(&["-6", "route", "show"]);
    assert!(routes.contains("default via fe80::1 dev eth0"), "{routes}");
    let b_v6 = v6.trim_end_matches("/128");
    let ping = a.netns.exec(&["ping", "-6", "-c", "2", "-W", "2", b_v6]);
    assert!(
        ping.status.success(),
        "ping {b_v6} failed: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        node.log()
    );

    node.cni("DEL", Some(&a), &config).success();
    node.cni("DEL", Some(&b), &config).success();
    node.assert_clean();
}

/// Removes `/var/lib/cni` (libcni's result cache) on drop if the test created it.
struct CacheDirGuard {
    created: bool,
}

impl Drop for CacheDirGuard {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_dir_all("/var/lib/cni");
        }
    }
}

#[test]
fn cnitool_adds_and_deletes_through_a_conflist() {
    if !can_run("cnitool_adds_and_deletes_through_a_conflist") {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/scripts/build-control-plane.sh"
    );
    let bin_dir = Command::new("bash")
        .args([script, "--print-dir"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let cnitool = std::path::Path::new(&bin_dir).join("cnitool");
    if !cnitool.is_file() {
        println!(
            "skipping cnitool_adds_and_deletes_through_a_conflist: {} is not built (run tests/e2e/scripts/build-control-plane.sh)",
            cnitool.display()
        );
        return;
    }
    let _cache = CacheDirGuard {
        created: !std::path::Path::new("/var/lib/cni").exists(),
    };

    let node = Node::new();
    let plugins = node.dir.path().join("bin");
    let confs = node.dir.path().join("net.d");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::create_dir_all(&confs).expect("conf dir");
    std::os::unix::fs::symlink(support::PLUGIN, plugins.join("tortie-cni")).expect("symlink");
    std::os::unix::fs::symlink(
        format!("{}/host-local", support::REFERENCE_PLUGINS),
        plugins.join("host-local"),
    )
    .expect("symlink");
    let mut plugin = node.default_config("1.0.0");
    let plugin_object = plugin.as_object_mut().expect("config is an object");
    plugin_object.remove("cniVersion");
    plugin_object.remove("name");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": node.network,
        "plugins": [plugin],
    });
    std::fs::write(
        confs.join("10-tortie.conflist"),
        serde_json::to_vec_pretty(&conflist).expect("encodes"),
    )
    .expect("conflist written");

    let pod = Pod::new("tool");
    let run = |verb: &str| {
        Command::new("ip")
            .args(["netns", "exec", &node.netns.name])
            .arg(&cnitool)
            .args([verb, &node.network, &pod.netns.path().display().to_string()])
            .env("NETCONFPATH", &confs)
            .env("CNI_PATH", &plugins)
            .output()
            .expect("cnitool runs")
    };

    let add = run("add");
    assert!(
        add.status.success(),
        "cnitool add failed: {}{}",
        String::from_utf8_lossy(&add.stdout),
        String::from_utf8_lossy(&add.stderr)
    );
    let result: Value = serde_json::from_slice(&add.stdout).expect("cnitool prints the result");
    let address = result["ips"][0]["address"].as_str().expect("address");
    assert_eq!(pod.address().as_deref(), Some(address));
    assert_eq!(node.pod_links().len(), 1);

    let check = run("check");
    assert!(
        check.status.success(),
        "cnitool check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let del = run("del");
    assert!(
        del.status.success(),
        "cnitool del failed: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    node.assert_clean();
}

#[test]
fn a_new_sandbox_of_the_same_pod_replaces_the_stale_veth() {
    if !can_run("a_new_sandbox_of_the_same_pod_replaces_the_stale_veth") {
        return;
    }
    let node = Node::new();
    let config = node.default_config("1.0.0");
    let old = Pod::new("restarted");
    let mut new = Pod::new("restarted");
    new.name = old.name.clone();

    let old_result = node.cni("ADD", Some(&old), &config).success();
    let new_result = node.cni("ADD", Some(&new), &config).success();
    let host_name = new_result["interfaces"][0]["name"].as_str().expect("name");
    assert_eq!(
        old_result["interfaces"][0]["name"], host_name,
        "same pod, same veth name"
    );
    assert_eq!(node.pod_links().len(), 1, "the stale veth was replaced");

    // The runtime's late DEL of the old sandbox must not touch the new one's veth.
    node.cni("DEL", Some(&old), &config).success();
    assert_eq!(node.pod_links(), vec![host_name.to_owned()]);
    let new_ip = pod_ip(&new_result);
    assert!(
        node.tortie_routes().iter().any(|r| r.starts_with(&new_ip)),
        "{:?}",
        node.tortie_routes()
    );

    node.cni("DEL", Some(&new), &config).success();
    node.assert_clean();
}
