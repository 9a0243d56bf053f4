//! Tortie's CRDs on a real API server: they install, `kubectl explain` and `kubectl get`
//! read them, defaults are filled in, bad objects are refused with messages that name the
//! field, and the API server and the Rust rules reach the same verdict on every case.
//!
//! Needs root and the control-plane binaries; skipped otherwise unless TORTIE_E2E_REQUIRE=1.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use kube::CustomResourceExt;
use serde_json::{Value, json};
use tortie_crds::cases::{load_shared_cases, validate_value};
use tortie_crds::ippool::IPPool;
use tortie_e2e::support::TestCluster;
use tortie_e2e::wait_for;

/// The 14 kinds of Calico's classic install: kind, plural and whether it is namespaced.
const CALICO_KINDS: [(&str, &str, bool); 14] = [
    ("BGPConfiguration", "bgpconfigurations", false),
    ("BGPPeer", "bgppeers", false),
    ("BlockAffinity", "blockaffinities", false),
    ("ClusterInformation", "clusterinformations", false),
    ("FelixConfiguration", "felixconfigurations", false),
    ("GlobalNetworkPolicy", "globalnetworkpolicies", false),
    ("GlobalNetworkSet", "globalnetworksets", false),
    ("HostEndpoint", "hostendpoints", false),
    ("IPAMBlock", "ipamblocks", false),
    ("IPAMConfig", "ipamconfigs", false),
    ("IPAMHandle", "ipamhandles", false),
    ("IPPool", "ippools", false),
    ("NetworkPolicy", "networkpolicies", true),
    ("NetworkSet", "networksets", true),
];

/// How many `kubectl` processes check cases at once.
const PARALLEL_CHECKS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_install_explain_defaults_and_rejections() {
    let Some(cluster) = TestCluster::start("crds-install").await else {
        return;
    };
    install_crds(&cluster);

    // Group, kind, plural and scope as Calico's classic install has them.
    let listed = cluster.kubectl(&[
        "api-resources",
        "--api-group=crd.projectcalico.org",
        "--no-headers",
    ]);
    let rows: BTreeSet<(String, String, String, String)> = listed
        .lines()
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells.len(), 4, "no short names expected: {line}");
            (
                cells[0].to_string(),
                cells[1].to_string(),
                cells[2].to_string(),
                cells[3].to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> = CALICO_KINDS
        .iter()
        .map(|(kind, plural, namespaced)| {
            (
                plural.to_string(),
                "crd.projectcalico.org/v1".to_string(),
                namespaced.to_string(),
                kind.to_string(),
            )
        })
        .collect();
    assert_eq!(rows, expected, "kubectl api-resources printed:\n{listed}");
    let ours = cluster.kubectl(&["api-resources", "--api-group=tortie.dev", "--no-headers"]);
    let cells: Vec<&str> = ours.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "nodenetworkconfigs",
            "nnc",
            "tortie.dev/v1alpha1",
            "false",
            "NodeNetworkConfig"
        ],
        "{ours}"
    );

    // kubectl wraps the text to its width; the description itself is one paragraph.
    let explained = cluster.kubectl(&["explain", "ippool.spec.blockSize"]);
    let words = explained.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("DESCRIPTION: Prefix length of the blocks nodes take from this pool")
            && words.contains("(default 26, 64 addresses)"),
        "{explained}"
    );
    let lines: Vec<&str> = explained.lines().map(str::trim).collect();
    assert!(
        !lines.contains(&"(default"),
        "a line break of the source survived: {explained}"
    );

    // The classic tutorial's pool, unchanged, is stored with every schema default filled.
    let classic = "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: \
                   default-ipv4-ippool\nspec:\n  cidr: 10.244.0.0/16\n  ipipMode: Always\n  \
                   natOutgoing: true\n";
    cluster.apply_yaml(classic);
    let stored: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "ippool",
        "default-ipv4-ippool",
        "-o",
        "json",
    ]))
    .expect("kubectl prints JSON");
    let spec = &stored["spec"];
    assert_eq!(spec["cidr"], "10.244.0.0/16");
    assert_eq!(spec["ipipMode"], "Always");
    assert_eq!(spec["natOutgoing"], true);
    for (field, value) in [
        ("vxlanMode", json!("Never")),
        ("nodeSelector", json!("all()")),
        ("disabled", json!(false)),
        ("disableBGPExport", json!(false)),
        ("allowedUses", json!(["Workload", "Tunnel"])),
        ("assignmentMode", json!("Automatic")),
    ] {
        assert_eq!(spec[field], value, "default of spec.{field}: {spec}");
    }
    let schema_defaults = spec_defaults_of_ippool();
    assert!(schema_defaults.len() >= 6, "{schema_defaults:?}");
    for (field, value) in &schema_defaults {
        if !["ipipMode", "natOutgoing"].contains(&field.as_str()) {
            assert_eq!(
                &spec[field], value,
                "schema default of spec.{field}: {spec}"
            );
        }
    }

    // Refusals name the field and say what is wrong.
    let pool = |name: &str, spec: &str| {
        format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata:\n  name: {name}\nspec: {spec}\n"
        )
    };
    let refusals = [
        (
            pool("host-bits", "{cidr: 10.244.0.1/16}"),
            vec!["spec.cidr", "did you mean 10.244.0.0/16"],
        ),
        (
            pool("big-block", "{cidr: 10.245.0.0/16, blockSize: 33}"),
            vec!["spec.blockSize", "20 to 32"],
        ),
        (
            pool(
                "two-encaps",
                "{cidr: 10.246.0.0/16, ipipMode: Always, vxlanMode: Always}",
            ),
            vec!["spec.vxlanMode", "cannot both be on"],
        ),
        (
            pool(
                "ipip-v6",
                "{cidr: 'fd00::/120', blockSize: 122, ipipMode: Always}",
            ),
            vec!["spec.ipipMode", "IPv6 pool"],
        ),
        (
            pool(
                "default-ipv4-ippool",
                "{cidr: 10.247.0.0/16, ipipMode: Always, natOutgoing: true}",
            ),
            vec!["spec.cidr", "cannot change once the pool exists"],
        ),
        (
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata:\n  name: both\n\
             spec:\n  peerIP: 192.0.2.1\n  peerSelector: has(route-reflector)\n"
                .to_string(),
            vec![
                "spec.peerSelector",
                "peerIP and peerSelector cannot both be set",
            ],
        ),
    ];
    for (manifest, wanted) in &refusals {
        let output = cluster.kubectl_with_input(&["apply", "-f", "-"], manifest);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "accepted:\n{manifest}\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        for text in wanted {
            assert!(
                stderr.contains(text),
                "the refusal of\n{manifest}\ndoes not say {text:?}: {stderr}"
            );
        }
    }
    let kept = cluster.kubectl(&[
        "get",
        "ippool",
        "default-ipv4-ippool",
        "-o",
        "jsonpath={.spec.cidr}",
    ]);
    assert_eq!(kept, "10.244.0.0/16");

    // Manifests written for Calico v3.8 and for current Calico both apply.
    let applied = cluster.apply_yaml(CALICO_V3_8_OBJECTS);
    assert_eq!(applied.lines().count(), 6, "{applied}");
    let applied = cluster.apply_yaml(CALICO_CURRENT_OBJECTS);
    assert_eq!(applied.lines().count(), 6, "{applied}");

    // `kubectl get` shows the columns Tortie defines.
    let pools = cluster.kubectl(&["get", "ippools"]);
    assert_eq!(
        header(&pools),
        [
            "NAME",
            "CIDR",
            "BLOCK SIZE",
            "ENCAP",
            "NAT",
            "DISABLED",
            "SELECTOR",
            "USED",
            "READY",
            "AGE"
        ],
        "{pools}"
    );
    assert!(
        pools
            .lines()
            .any(|line| line.starts_with("default-ipv4-ippool") && line.contains("10.244.0.0/16")),
        "{pools}"
    );
    let peers = cluster.kubectl(&["get", "bgppeers"]);
    assert_eq!(
        header(&peers),
        ["NAME", "PEER IP", "PEER SELECTOR", "AS", "SCOPE", "AGE"],
        "{peers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_rust_validation_agree() {
    let Some(cluster) = TestCluster::start("crds-agree").await else {
        return;
    };
    install_crds(&cluster);

    let shared = load_shared_cases("validation.json").expect("the shared cases load");
    let mut cases: Vec<Case> = shared
        .as_array()
        .expect("validation.json is an array")
        .iter()
        .map(|case| Case {
            source: "shared",
            kind: case["kind"]
                .as_str()
                .expect("a case has a kind")
                .to_string(),
            value: case["spec"].clone(),
            valid: case["valid"].as_bool().expect("a case says valid or not"),
            why: case["why"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let own = own_cases();
    assert!(own.len() >= 40, "only {} cases of our own", own.len());
    cases.extend(own);
    let limitations = known_limitations();

    let objects: Vec<Option<Value>> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| wrap(&case.kind, &case.value, &format!("case-{i}")))
        .collect();
    let verdicts = check_with_api_server(&cluster, &objects);

    let mut disagreements = Vec::new();
    let mut limited = Vec::new();
    for (i, (case, api)) in cases.iter().zip(&verdicts).enumerate() {
        let rust = validate_value(&case.kind, &case.value)
            .unwrap_or_else(|| panic!("validate_value does not know kind {}", case.kind));
        let rust_says = match &rust {
            Ok(()) => "valid".to_string(),
            Err(errors) => format!("invalid: {errors}"),
        };
        let limitation = limitations
            .iter()
            .find(|l| l.kind == case.kind && l.value == case.value);
        let api_says = match api {
            None => "n/a (no CRD)".to_string(),
            Some(Ok(())) => "valid".to_string(),
            Some(Err(message)) => format!("invalid: {message}"),
        };
        let mut problems = Vec::new();
        if rust.is_ok() != case.valid {
            problems.push("Rust");
        }
        match (api, limitation) {
            (Some(verdict), None) if verdict.is_ok() != case.valid => problems.push("API server"),
            (Some(Ok(())), Some(limitation)) if !case.valid => {
                limited.push(format!(
                    "case-{i} {} {}: {}",
                    case.kind, case.value, limitation.reason
                ));
            }
            (Some(_), Some(_)) => problems.push("a listed limitation that does not hold"),
            _ => {}
        }
        if let Some(Err(message)) = api
            && !names_a_field(message)
        {
            problems.push("an API refusal that names no field");
        }
        if !problems.is_empty() {
            disagreements.push(format!(
                "case-{i} [{}] {} {}\n    expected: {} ({})\n    API server: {api_says}\n    \
                 Rust: {rust_says}\n    wrong: {}",
                case.source,
                case.kind,
                case.value,
                if case.valid { "valid" } else { "invalid" },
                case.why,
                problems.join(", ")
            ));
        }
    }

    let refused = verdicts
        .iter()
        .filter(|v| matches!(v, Some(Err(_))))
        .count();
    eprintln!(
        "{} cases checked: the API server refused {refused} and accepted {}; {} have no CRD \
         (Rust only); {} refused by Rust only, as listed \
         known limitations:\n  {}",
        cases.len(),
        verdicts
            .iter()
            .filter(|v| matches!(v, Some(Ok(()))))
            .count(),
        verdicts.iter().filter(|v| v.is_none()).count(),
        limited.len(),
        limited.join("\n  ")
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert_eq!(
        limited.len(),
        limitations.len(),
        "every listed limitation must be met by a case"
    );
}

/// One validation case: the kind as `validate_value` names it, the value, and the verdict
/// it should get.
struct Case {
    source: &'static str,
    kind: String,
    value: Value,
    valid: bool,
    why: String,
}

/// A case the API server cannot refuse, with the reason; the Rust rules still must.
struct Limitation {
    kind: &'static str,
    value: Value,
    reason: &'static str,
}

/// Cases where CEL cannot check what the Rust rules check.
fn known_limitations() -> Vec<Limitation> {
    // Known limitation: CEL cannot parse Calico's selector language, so the API server
    // stores a malformed selector; the Rust rules refuse it and the operator reports it.
    const SELECTOR: &str = "CEL cannot parse Calico's selector language";
    let selector = |kind: &'static str, value: Value| Limitation {
        kind,
        value,
        reason: SELECTOR,
    };
    vec![
        selector(
            "IPPoolSpec",
            json!({"cidr": "10.9.0.0/16", "nodeSelector": "has(("}),
        ),
        selector("BGPPeerSpec", json!({"peerSelector": "role == 'rr"})),
        // Known limitation: Felix's port ranges are int-or-string values whose order is a
        // Rust rule only (see `fields::PortRange`); the schema checks their shape.
        Limitation {
            kind: "FelixConfigurationSpec",
            value: json!({"natPortRange": "40000:30000"}),
            reason: "the order of a Felix port range is not a CEL rule",
        },
        selector("EntityRule", json!({"selector": "a == 'b' &&"})),
        selector(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "bad-selector"}, "spec": {"selector": "all( "}}),
        ),
    ]
}

fn case(kind: &str, value: Value, valid: bool, why: &str) -> Case {
    Case {
        source: "own",
        kind: kind.to_string(),
        value,
        valid,
        why: why.to_string(),
    }
}

/// Cases of our own: every CEL rule of every kind, each with a value that keeps it and one
/// that breaks it.
fn own_cases() -> Vec<Case> {
    vec![
        // IPPool
        case(
            "IPPoolSpec",
            json!({"cidr": "10.244.0.0/16"}),
            true,
            "plain pool",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.244.0.0"}),
            false,
            "no prefix length",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.244.0.1/16"}),
            false,
            "host bits",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "169.254.0.0/16"}),
            false,
            "link-local v4",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fe80::/64", "blockSize": 122}),
            false,
            "link-local v6",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "169.0.0.0/8"}),
            false,
            "contains link-local",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fd00:10::/64"}),
            true,
            "v6 pool, default block",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/16", "blockSize": 19}),
            false,
            "v4 block too big",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/16", "blockSize": 32}),
            true,
            "v4 block /32",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fd00::/64", "blockSize": 32}),
            false,
            "v6 block out of range",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fd00::/64", "blockSize": 128}),
            true,
            "v6 /128 blocks",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/28"}),
            false,
            "smaller than a /26 block",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/28", "disabled": true}),
            true,
            "disabled small pool",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/28", "blockSize": 28}),
            true,
            "block fits",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fd00::/64", "vxlanMode": "Always"}),
            true,
            "v6 VXLAN",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fd00::/64", "ipipMode": "CrossSubnet"}),
            false,
            "v6 IPIP",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "fd00::/64", "ipip": {"enabled": true}}),
            false,
            "v6 legacy IPIP",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/16", "ipip": {"enabled": true}, "vxlanMode": "CrossSubnet"}),
            false,
            "legacy IPIP and VXLAN",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/16", "ipipMode": "CrossSubnet", "vxlanMode": "Never"}),
            true,
            "one encapsulation",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workload", "LoadBalancer"], "assignmentMode": "Manual"}),
            true,
            "current fields",
        ),
        case(
            "IPPoolSpec",
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["Pods"]}),
            false,
            "unknown use",
        ),
        case(
            "IPPool",
            json!({"metadata": {"name": "whole"}, "spec": {"cidr": "10.1.0.0/16", "natOutgoing": true}}),
            true,
            "whole object",
        ),
        // BGPPeer
        case(
            "BGPPeerSpec",
            json!({"peerIP": "192.0.2.1", "asNumber": 64512}),
            true,
            "global peer",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "192.0.2.1:1790", "asNumber": 64512}),
            true,
            "v4 with port",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "[2001:db8::1]:1790", "asNumber": 64512}),
            true,
            "v6 with port",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "192.0.2.1:0", "asNumber": 64512}),
            false,
            "port 0",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "2001:db8::1:1790x"}),
            false,
            "not an address",
        ),
        case(
            "BGPPeerSpec",
            json!({"node": "n1", "nodeSelector": "all()"}),
            false,
            "node and nodeSelector",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerSelector": "has(rr)", "asNumber": 64512}),
            false,
            "selector and AS",
        ),
        case(
            "BGPPeerSpec",
            json!({"nodeSelector": "has(rr)", "peerSelector": "has(rr)"}),
            true,
            "route reflector mesh",
        ),
        case(
            "BGPPeerSpec",
            json!({"localWorkloadSelector": "has(bgp)", "asNumber": 65001}),
            true,
            "workload peering",
        ),
        case(
            "BGPPeerSpec",
            json!({"localWorkloadSelector": "has(bgp)"}),
            false,
            "workload peering needs AS",
        ),
        case(
            "BGPPeerSpec",
            json!({"localWorkloadSelector": "has(bgp)", "asNumber": 65001, "peerIP": "192.0.2.9"}),
            false,
            "workload peering with peerIP",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "192.0.2.1", "asNumber": 64512, "reachableBy": "192.0.2.254"}),
            true,
            "reachableBy",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "192.0.2.1", "asNumber": 64512, "reachableBy": "gateway"}),
            false,
            "reachableBy not an IP",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerIP": "192.0.2.1", "asNumber": 4_294_967_296u64}),
            false,
            "AS too big",
        ),
        // BGPConfiguration
        case(
            "BGPConfigurationSpec",
            json!({"asNumber": 64512, "nodeToNodeMeshEnabled": false, "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}),
            true,
            "classic settings",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"serviceExternalIPs": [{"cidr": "10.96.0.1/12"}]}),
            false,
            "service range host bits",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"serviceLoadBalancerIPs": [{"cidr": "lb"}]}),
            false,
            "service range not a CIDR",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"communities": [{"name": "low", "value": "64512:100"}], "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["low", "64512:200:300"]}]}),
            true,
            "named and literal communities",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"communities": [{"name": "big", "value": "64512:70000"}]}),
            false,
            "standard community over 16 bits",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"communities": [{"name": "large", "value": "4294967295:1:2"}]}),
            true,
            "large community",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nobody"]}]}),
            false,
            "unknown community name",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"prefixAdvertisements": [{"cidr": "10.0.0.1/8"}]}),
            false,
            "prefix host bits",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"localWorkloadPeeringIPV4": "169.254.0.179", "localWorkloadPeeringIPV6": "fe80::179"}),
            true,
            "workload peering addresses",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"localWorkloadPeeringIPV4": "fe80::179"}),
            false,
            "v6 in v4 field",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"localWorkloadPeeringIPV6": "169.254.0.179"}),
            false,
            "v4 in v6 field",
        ),
        case(
            "BGPConfigurationSpec",
            json!({"logSeverityScreen": "verbose"}),
            false,
            "unknown log level",
        ),
        // FelixConfiguration
        case(
            "FelixConfigurationSpec",
            json!({"ipipEnabled": true, "logSeverityScreen": "info", "reportingInterval": "0s"}),
            true,
            "classic settings",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"deviceRouteSourceAddress": "192.0.2.5", "deviceRouteSourceAddressIPv6": "2001:db8::5"}),
            true,
            "route sources",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"deviceRouteSourceAddress": "2001:db8::5"}),
            false,
            "v6 in v4 field",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"deviceRouteSourceAddressIPv6": "192.0.2.5"}),
            false,
            "v4 in v6 field",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"natOutgoingAddress": "192.0.2.7"}),
            true,
            "NAT address",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"natOutgoingAddress": "192.0.2.0/24"}),
            false,
            "NAT address is one IP",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 22, "net": "10.0.0.0/8"}]}),
            true,
            "failsafe port",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 22, "net": "10.0.0.1/8"}]}),
            false,
            "failsafe net host bits",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"failsafeOutboundHostPorts": [{"protocol": "UDP", "port": 53, "net": "dns"}]}),
            false,
            "failsafe net not a CIDR",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"routeTableRange": {"min": 1, "max": 250}}),
            true,
            "route tables",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"routeTableRange": {"min": 200, "max": 100}}),
            false,
            "route tables backwards",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"reportingInterval": "30 seconds"}),
            false,
            "not a duration",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"vxlanVNI": 0}),
            false,
            "VNI 0",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"natPortRange": "30000:40000", "kubeNodePortRanges": [30000, "30000:32767"]}),
            true,
            "port ranges",
        ),
        // HostEndpoint
        case(
            "HostEndpointSpec",
            json!({"node": "n1", "interfaceName": "eth0"}),
            true,
            "by interface",
        ),
        case(
            "HostEndpointSpec",
            json!({"node": "n1", "expectedIPs": ["192.0.2.1", "2001:db8::1"]}),
            true,
            "by addresses",
        ),
        case(
            "HostEndpointSpec",
            json!({"interfaceName": "eth0"}),
            false,
            "no node",
        ),
        case(
            "HostEndpointSpec",
            json!({"node": "n1"}),
            false,
            "no interface or addresses",
        ),
        case(
            "HostEndpointSpec",
            json!({"node": "n1", "expectedIPs": ["192.0.2.0/24"]}),
            false,
            "expected IP is a CIDR",
        ),
        case(
            "HostEndpointSpec",
            json!({"node": "n1", "interfaceName": "eth0", "ports": [{"name": "ssh", "protocol": "TCP", "port": 22}]}),
            true,
            "named port",
        ),
        case(
            "HostEndpointSpec",
            json!({"node": "n1", "interfaceName": "eth0", "ports": [{"name": "ping", "protocol": "ICMP", "port": 1}]}),
            false,
            "named port over ICMP",
        ),
        case(
            "HostEndpointSpec",
            json!({"node": "n1", "interfaceName": "eth0", "ports": [{"name": "x", "protocol": "tcp", "port": 1}]}),
            false,
            "lower-case protocol",
        ),
        // Network sets
        case(
            "GlobalNetworkSetSpec",
            json!({"nets": ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]}),
            true,
            "CIDRs and addresses",
        ),
        case(
            "NetworkSetSpec",
            json!({"nets": ["10.0.0.0/33"]}),
            false,
            "prefix too long",
        ),
        // Rules and their parts
        case(
            "Rule",
            json!({"action": "Deny", "protocol": "UDP", "destination": {"ports": [53, "1000:2000", "dns"]}}),
            true,
            "ports, range, named port",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["70000"]}}),
            false,
            "port over 65535",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": "TCP", "destination": {"notPorts": ["2:1"]}}),
            false,
            "notPorts range backwards",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": "ICMP", "source": {"ports": [1]}}),
            false,
            "ports with ICMP",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "source": {"notPorts": [80]}}),
            false,
            "source notPorts without protocol",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": 132, "destination": {"notPorts": [80]}}),
            true,
            "numeric SCTP",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": "ICMP", "ipVersion": 6}),
            false,
            "ICMP with v6",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": 58, "ipVersion": 6}),
            true,
            "numeric ICMPv6 with v6",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "ipVersion": 4, "destination": {"notNets": ["2001:db8::/32"]}}),
            false,
            "v6 notNets in v4 rule",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "ipVersion": 6, "destination": {"nets": ["2001:db8::/32"]}, "source": {"notNets": ["fd00::1"]}}),
            true,
            "v6 nets in v6 rule",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "destination": {"nets": ["10.0.0.0/8x"]}}),
            false,
            "net not a CIDR",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "http": {"paths": [{"exact": "/a", "prefix": "/b"}]}}),
            false,
            "path both exact and prefix",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "http": {"paths": [{"prefix": "/api"}]}}),
            true,
            "path prefix",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "protocol": "ICMP", "notICMP": {"code": 1}}),
            false,
            "notICMP code without type",
        ),
        case(
            "Rule",
            json!({"action": "Allow", "notProtocol": "sctp"}),
            false,
            "lower-case notProtocol",
        ),
        case("Rule", json!({"action": "Reject"}), false, "unknown action"),
        case(
            "ICMPFields",
            json!({"type": 3, "code": 1}),
            true,
            "type and code",
        ),
        case("ICMPFields", json!({"code": 1}), false, "code without type"),
        case(
            "ICMPFields",
            json!({"type": 8, "code": 256}),
            false,
            "code over 255",
        ),
        case("Protocol", json!(256), false, "number over 255"),
        case("Protocol", json!("UDPLite"), true, "UDPLite"),
        case(
            "EntityRule",
            json!({"nets": ["192.0.2.0/24"], "selector": "app == 'web'"}),
            true,
            "nets and selector",
        ),
        case(
            "EntityRule",
            json!({"nets": ["192.0.2.0/24"], "notNets": ["x"]}),
            false,
            "notNets not a CIDR",
        ),
        // Policies
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "pre-dnat"}, "spec": {"preDNAT": true, "applyOnForward": true, "ingress": [{"action": "Deny"}]}}),
            true,
            "pre-DNAT ingress",
        ),
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "pre-dnat"}, "spec": {"preDNAT": true}}),
            false,
            "pre-DNAT needs applyOnForward",
        ),
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "pre-dnat"}, "spec": {"preDNAT": true, "applyOnForward": true, "types": ["Ingress", "Egress"]}}),
            false,
            "pre-DNAT with Egress type",
        ),
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "untracked"}, "spec": {"doNotTrack": true, "applyOnForward": true, "egress": [{"action": "Allow"}]}}),
            true,
            "untracked",
        ),
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "tiered"}, "spec": {"tier": "default", "order": 10.5, "selector": "all()", "egress": [{"action": "Pass"}, {"action": "Log"}]}}),
            true,
            "current fields",
        ),
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "Upper"}, "spec": {}}),
            false,
            "name not a DNS subdomain",
        ),
        case(
            "NetworkPolicy",
            json!({"metadata": {"name": "egress-dns"}, "spec": {"types": ["Egress"], "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}]}}),
            true,
            "namespaced policy",
        ),
        case(
            "NetworkPolicy",
            json!({"metadata": {"name": "bad-port"}, "spec": {"egress": [{"action": "Allow", "destination": {"ports": [53]}}]}}),
            false,
            "port without protocol in egress",
        ),
        case(
            "NetworkPolicy",
            json!({"metadata": {"name": "bad-ip-version"}, "spec": {"ingress": [{"action": "Allow", "ipVersion": 4, "source": {"nets": ["fd00::/8"]}}]}}),
            false,
            "v6 source in v4 rule",
        ),
        // IPAM state and the node configuration, which Tortie writes itself
        case(
            "IPAMBlockSpec",
            json!({"cidr": "10.244.0.0/30", "allocations": [0, null, null, null], "unallocated": [1, 2, 3], "attributes": [{"handle_id": "pod-a"}]}),
            true,
            "a /30 block",
        ),
        case(
            "IPAMBlockSpec",
            json!({"cidr": "10.244.0.1/30", "allocations": [null, null, null, null], "unallocated": [0, 1, 2, 3]}),
            false,
            "block host bits",
        ),
        case(
            "BlockAffinitySpec",
            json!({"cidr": "10.244.0.64/26", "node": "n1", "state": "confirmed"}),
            true,
            "affinity",
        ),
        case(
            "BlockAffinitySpec",
            json!({"cidr": "10.244.0.65/26", "node": "n1", "state": "pending"}),
            false,
            "affinity host bits",
        ),
        case(
            "IPAMConfig",
            json!({"metadata": {"name": "default"}, "spec": {"strictAffinity": true, "maxBlocksPerHost": 4}}),
            true,
            "the one config",
        ),
        case(
            "IPAMConfig",
            json!({"metadata": {"name": "other"}, "spec": {}}),
            false,
            "only default is read",
        ),
        case(
            "NodeNetworkConfigSpec",
            json!({"nodeName": "n1", "blocks": [{"cidr": "10.244.0.0/26", "pool": "default-ipv4-ippool"}]}),
            true,
            "a node's blocks",
        ),
        case(
            "NodeNetworkConfigSpec",
            json!({"nodeName": "n1", "blocks": [{"cidr": "10.244.0.0/33", "pool": "p"}]}),
            false,
            "block not a CIDR",
        ),
        case(
            "NodeNetworkConfigSpec",
            json!({"nodeName": "n1", "blocks": [{"cidr": "10.244.0.9/26", "pool": "p"}]}),
            false,
            "block host bits",
        ),
        // NodeSpec has no CRD; Rust only.
        case(
            "NodeSpec",
            json!({"bgp": {"ipv6Address": "2001:db8::2/64", "asNumber": 65001}}),
            true,
            "v6 node address",
        ),
        case(
            "NodeSpec",
            json!({"bgp": {"routeReflectorClusterID": "2001:db8::1"}}),
            false,
            "cluster ID is IPv4",
        ),
        // Known limitations (see `known_limitations`).
        case(
            "IPPoolSpec",
            json!({"cidr": "10.9.0.0/16", "nodeSelector": "has(("}),
            false,
            "malformed selector",
        ),
        case(
            "BGPPeerSpec",
            json!({"peerSelector": "role == 'rr"}),
            false,
            "unterminated string in selector",
        ),
        case(
            "EntityRule",
            json!({"selector": "a == 'b' &&"}),
            false,
            "selector ends in &&",
        ),
        case(
            "GlobalNetworkPolicy",
            json!({"metadata": {"name": "bad-selector"}, "spec": {"selector": "all( "}}),
            false,
            "malformed policy selector",
        ),
        case(
            "FelixConfigurationSpec",
            json!({"natPortRange": "40000:30000"}),
            false,
            "NAT port range backwards",
        ),
    ]
}

/// The object the API server is asked about for a case, or `None` for a kind with no CRD.
fn wrap(kind: &str, value: &Value, name: &str) -> Option<Value> {
    let object = |kind: &str, spec: Value| {
        json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        })
    };
    let policy_with = |rule: Value| object("GlobalNetworkPolicy", json!({"ingress": [rule]}));
    let whole = value.get("metadata").is_some() && value.get("spec").is_some();
    let wrapped = match kind {
        "IPPool" | "GlobalNetworkPolicy" | "NetworkPolicy" | "IPAMConfig" if whole => {
            let mut whole = value.clone();
            whole["apiVersion"] = json!("crd.projectcalico.org/v1");
            whole["kind"] = json!(kind);
            if kind == "NetworkPolicy" {
                whole["metadata"]["namespace"] = json!("default");
            }
            whole
        }
        "IPPool" | "IPPoolSpec" => object("IPPool", value.clone()),
        "BGPPeerSpec" => object("BGPPeer", value.clone()),
        "BGPConfigurationSpec" => object("BGPConfiguration", value.clone()),
        "FelixConfigurationSpec" => object("FelixConfiguration", value.clone()),
        "HostEndpointSpec" => object("HostEndpoint", value.clone()),
        "GlobalNetworkSetSpec" => object("GlobalNetworkSet", value.clone()),
        "NetworkSetSpec" => {
            let mut set = object("NetworkSet", value.clone());
            set["metadata"]["namespace"] = json!("default");
            set
        }
        "GlobalNetworkPolicy" => object("GlobalNetworkPolicy", value.clone()),
        "Rule" => policy_with(value.clone()),
        "EntityRule" => policy_with(json!({"action": "Allow", "source": value})),
        // ICMP types and codes mean the same in both families; ICMP keeps it simple.
        "ICMPFields" => policy_with(json!({"action": "Allow", "protocol": "ICMP", "icmp": value})),
        "Protocol" => policy_with(json!({"action": "Allow", "protocol": value})),
        "IPAMBlockSpec" => object("IPAMBlock", value.clone()),
        "BlockAffinitySpec" => object("BlockAffinity", value.clone()),
        "NodeNetworkConfigSpec" => {
            let mut config = object("NodeNetworkConfig", value.clone());
            config["apiVersion"] = json!("tortie.dev/v1alpha1");
            config
        }
        "NodeSpec" => return None,
        other => panic!("no CRD object is known for case kind {other}"),
    };
    Some(wrapped)
}

/// Each object sent with `kubectl create --dry-run=server`: `Ok` when stored, else what
/// kubectl said; `None` where there was no object.
fn check_with_api_server(
    cluster: &TestCluster,
    objects: &[Option<Value>],
) -> Vec<Option<Result<(), String>>> {
    let mut verdicts: Vec<Option<Result<(), String>>> = vec![None; objects.len()];
    let indexed: Vec<(usize, &Value)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, object)| object.as_ref().map(|object| (i, object)))
        .collect();
    for chunk in indexed.chunks(PARALLEL_CHECKS) {
        let outputs: Vec<(usize, Output)> = std::thread::scope(|scope| {
            let running: Vec<_> = chunk
                .iter()
                .map(|(i, object)| {
                    let input = object.to_string();
                    let handle = scope.spawn(move || {
                        cluster.kubectl_with_input(
                            &["create", "--dry-run=server", "-o", "name", "-f", "-"],
                            &input,
                        )
                    });
                    (*i, handle)
                })
                .collect();
            running
                .into_iter()
                .map(|(i, handle)| (i, handle.join().expect("a kubectl thread does not panic")))
                .collect()
        });
        for (i, output) in outputs {
            verdicts[i] = Some(if output.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
            });
        }
    }
    verdicts
}

/// Whether an API server refusal names the field it is about.
fn names_a_field(message: &str) -> bool {
    message.contains("spec.") || message.contains("metadata.name")
}

/// Applies every generated CRD and waits until each is served.
fn install_crds(cluster: &TestCluster) {
    let dir = manifests_dir();
    let dir = dir.to_str().expect("the repository path is UTF-8");
    cluster.kubectl(&["apply", "--server-side", "-f", dir]);
    let names: Vec<String> = tortie_crds::manifests::all()
        .iter()
        .map(|crd| crd.metadata.name.clone().expect("a CRD has a name"))
        .collect();
    assert_eq!(names.len(), 15);
    for name in &names {
        cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{name}"),
        ]);
    }
    // Established can come a moment before discovery lists the kinds.
    wait_for(
        "discovery to list every kind",
        Duration::from_secs(30),
        || {
            let listed = cluster.kubectl_output(&[
                "api-resources",
                "--api-group=crd.projectcalico.org",
                "-o",
                "name",
            ]);
            String::from_utf8_lossy(&listed.stdout).lines().count() == CALICO_KINDS.len()
        },
    );
}

fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds/manifests")
}

/// The defaults the IPPool schema states for the fields of `spec`.
fn spec_defaults_of_ippool() -> Vec<(String, Value)> {
    let crd = serde_json::to_value(IPPool::crd()).expect("a CRD serialises");
    let properties = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    properties
        .as_object()
        .expect("the spec has properties")
        .iter()
        .filter_map(|(field, schema)| {
            schema
                .get("default")
                .map(|default| (field.clone(), default.clone()))
        })
        .collect()
}

/// The column titles of `kubectl get` output (separated by two or more spaces).
fn header(table: &str) -> Vec<String> {
    let first = table.lines().next().unwrap_or_default();
    first
        .split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .map(str::to_string)
        .collect()
}

/// Objects written for Calico v3.8, with only the fields that release had.
const CALICO_V3_8_OBJECTS: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: v38-pool
spec:
  cidr: 10.250.0.0/16
  blockSize: 24
  ipipMode: CrossSubnet
  natOutgoing: true
  disabled: false
  nodeSelector: all()
---
apiVersion: crd.projectcalico.org/v1
kind: BGPPeer
metadata:
  name: v38-rack-tor
spec:
  node: rack1-host1
  peerIP: 192.0.2.1
  asNumber: 64567
---
apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: true
  asNumber: 63400
  serviceClusterIPs:
  - cidr: 10.96.0.0/12
  serviceExternalIPs:
  - cidr: 104.244.42.129/32
---
apiVersion: crd.projectcalico.org/v1
kind: FelixConfiguration
metadata:
  name: default
spec:
  ipipEnabled: true
  ipipMTU: 1440
  logSeverityScreen: Info
  reportingInterval: 0s
  ipv6Support: false
  chainInsertMode: Insert
  defaultEndpointToHostAction: Drop
  iptablesRefreshInterval: 60s
  failsafeInboundHostPorts:
  - protocol: tcp
    port: 22
  - protocol: udp
    port: 68
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata:
  name: v38-allow-ping
spec:
  order: 200
  selector: all()
  types:
  - Ingress
  ingress:
  - action: Allow
    protocol: ICMP
    icmp:
      type: 8
  - action: Allow
    protocol: TCP
    source:
      nets:
      - 192.0.2.0/24
    destination:
      ports:
      - 22
      - "8000:8080"
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata:
  name: v38-allow-frontend
  namespace: default
spec:
  order: 100
  selector: role == 'database'
  types:
  - Ingress
  - Egress
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports:
      - 6379
  egress:
  - action: Allow
"#;

/// Objects with the fields current Calico added.
const CALICO_CURRENT_OBJECTS: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: current-pool
spec:
  cidr: fd00:10:244::/48
  blockSize: 122
  vxlanMode: CrossSubnet
  natOutgoing: true
  allowedUses:
  - Workload
  - LoadBalancer
  assignmentMode: Manual
  disableBGPExport: true
  namespaceSelector: tenant == 'blue'
---
apiVersion: crd.projectcalico.org/v1
kind: BGPPeer
metadata:
  name: current-reflectors
spec:
  nodeSelector: has(route-reflector)
  peerSelector: has(route-reflector)
  keepOriginalNextHop: true
  maxRestartTime: 120s
  password:
    secretKeyRef:
      name: bgp-secrets
      key: reflector
---
apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata:
  name: node.rack1-host1
spec:
  listenPort: 1790
  bindMode: NodeIP
  serviceLoadBalancerIPs:
  - cidr: 198.51.100.0/24
  communities:
  - name: internal
    value: "64512:100"
  prefixAdvertisements:
  - cidr: 198.51.100.0/24
    communities:
    - internal
    - "64512:300:1"
  ignoredInterfaces:
  - "docker*"
---
apiVersion: crd.projectcalico.org/v1
kind: FelixConfiguration
metadata:
  name: node.rack1-host1
spec:
  bpfEnabled: false
  nftablesMode: Enabled
  wireguardEnabled: true
  vxlanVNI: 4096
  routeTableRange:
    min: 1
    max: 250
  natOutgoingAddress: 192.0.2.50
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata:
  name: default.current-allow-api
spec:
  tier: default
  order: 10
  selector: app == 'api'
  serviceAccountSelector: role == 'api'
  performanceHints:
  - AssumeNeededOnEveryNode
  ingress:
  - action: Allow
    protocol: TCP
    http:
      methods:
      - GET
      paths:
      - prefix: /v1/
    destination:
      ports:
      - http
  egress:
  - action: Allow
    destination:
      services:
        name: kube-dns
        namespace: kube-system
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata:
  name: default.current-web
  namespace: default
spec:
  tier: default
  selector: app == 'web'
  ingress:
  - action: Allow
    metadata:
      annotations:
        purpose: from the load balancers
    source:
      serviceAccounts:
        names:
        - lb
"#;
