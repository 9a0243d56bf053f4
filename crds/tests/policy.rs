//! The policy kinds: the shared cases, a case for every rule (valid and invalid, with the
//! field each error must name), round trips of real manifests, and the CEL rules the
//! generated schemas carry.

mod common;

use serde_json::{Value, json};
use tortie_crds::{
    policy::{
        self, GlobalNetworkPolicy, NetworkPolicy, Protocol,
        host_endpoint::{ENDPOINT_PORT_PROTOCOL_RULE, INTERFACE_OR_IPS_RULE, NODE_REQUIRED_RULE},
        network_policy::{
            DO_NOT_TRACK_FORWARD_RULE, PREDNAT_DO_NOT_TRACK_RULE, PREDNAT_EGRESS_RULE,
            PREDNAT_FORWARD_RULE, PREDNAT_TYPES_RULE,
        },
        port::{PORT_STRING_PATTERN, PORT_STRING_RULE, Port},
        protocol::PROTOCOL_RULE,
        rule::{ICMP_VERSION_RULE, ICMPV6_VERSION_RULE, family_rule, ports_rule},
        schema::{CIDR_OR_IP_RULE, IP_RULE},
        validate_value,
    },
    validation::{FieldError, Validate, ValidationErrors},
};

/// The kinds `validate_value` answers for.
const KINDS: [&str; 9] = [
    "Rule",
    "EntityRule",
    "ICMPFields",
    "Protocol",
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "HostEndpointSpec",
    "GlobalNetworkSetSpec",
    "NetworkSetSpec",
];

fn load_cases() -> Vec<Value> {
    common::load_cases("validation.json")
}

/// Whether `error` is about `field`: it names the field, or (for a missing field, which
/// serde reports at the parent) names the parent and says which field is missing.
fn is_about(error: &FieldError, field: &str) -> bool {
    if error.field.as_str() == field {
        return true;
    }
    let (parent, last) = match field.rsplit_once('.') {
        Some((parent, last)) => (parent, last),
        None => ("", field),
    };
    error.field.as_str() == parent && error.message.contains(&format!("`{last}`"))
}

/// The outcome a case expects: valid, or invalid with an error about this field.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Valid,
    Invalid(&'static str),
}
use Expect::{Invalid, Valid};

fn check(kind: &str, value: Value, expect: Expect) -> Result<(), String> {
    let result = validate_value(kind, &value)
        .ok_or_else(|| format!("validate_value does not know kind {kind}"))?;
    match (expect, result) {
        (Valid, Ok(())) => Ok(()),
        (Valid, Err(errors)) => Err(format!("{kind} {value}: expected valid, got: {errors}")),
        (Invalid(field), Ok(())) => Err(format!(
            "{kind} {value}: expected an error about {field}, got none"
        )),
        (Invalid(field), Err(errors)) => {
            if errors.0.iter().any(|e| is_about(e, field)) {
                Ok(())
            } else {
                Err(format!(
                    "{kind} {value}: expected an error about {field}, got: {errors}"
                ))
            }
        }
    }
}

fn check_all(cases: Vec<(&str, Value, Expect)>) {
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(kind, value, expect)| check(kind, value, expect).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// (a) The shared cases.

#[test]
fn shared_cases_of_policy_kinds() {
    let cases = load_cases();
    let mut seen = 0;
    let mut failures = Vec::new();

    for case in &cases {
        let kind = case["kind"].as_str().expect("every case has a kind");
        if !KINDS.contains(&kind) {
            assert!(
                validate_value(kind, &case["spec"]).is_none(),
                "validate_value must leave {kind} to other modules"
            );
            continue;
        }
        seen += 1;
        let valid = case["valid"]
            .as_bool()
            .expect("every case says valid or not");
        let result = validate_value(kind, &case["spec"]).expect("a policy kind is answered");
        let why = case["why"].as_str().unwrap_or_default();
        match (valid, result) {
            (true, Err(errors)) => failures.push(format!(
                "{kind} {}: expected valid ({why}), got: {errors}",
                case["spec"]
            )),
            (false, Ok(())) => failures.push(format!(
                "{kind} {}: expected invalid ({why}), got valid",
                case["spec"]
            )),
            (false, Err(errors)) => {
                // A broken part of a larger value must be named; a bare scalar is its
                // own field.
                let scalar = !case["spec"].is_object();
                if !scalar && errors.0.iter().all(|e| e.field.as_str().is_empty()) {
                    failures.push(format!(
                        "{kind} {}: error names no field: {errors}",
                        case["spec"]
                    ));
                }
            }
            (true, Ok(())) => {}
        }
    }

    assert!(seen > 0, "no shared case is of a policy kind");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn other_kinds_are_left_alone() {
    assert!(validate_value("IPPool", &json!({})).is_none());
    assert!(validate_value("BGPPeerSpec", &json!({})).is_none());
}

// ---------------------------------------------------------------------------------------
// (b) Every rule, valid and invalid.

#[test]
fn protocols() {
    check_all(vec![
        ("Protocol", json!("TCP"), Valid),
        ("Protocol", json!("UDP"), Valid),
        ("Protocol", json!("ICMP"), Valid),
        ("Protocol", json!("ICMPv6"), Valid),
        ("Protocol", json!("SCTP"), Valid),
        ("Protocol", json!("UDPLite"), Valid),
        ("Protocol", json!(1), Valid),
        ("Protocol", json!(255), Valid),
        ("Protocol", json!("255"), Valid),
        ("Protocol", json!(0), Invalid("")),
        ("Protocol", json!("0"), Invalid("")),
        ("Protocol", json!("00"), Invalid("")),
        ("Protocol", json!(256), Invalid("")),
        ("Protocol", json!(-6), Invalid("")),
        ("Protocol", json!("Tcp"), Invalid("")),
        ("Protocol", json!("icmp"), Invalid("")),
        ("Protocol", json!("GRE"), Invalid("")),
        ("Protocol", json!(true), Invalid("")),
    ]);
    assert!(Protocol::Number(0).validate().is_err());
}

#[test]
fn icmp_fields() {
    check_all(vec![
        ("ICMPFields", json!({"type": 8, "code": 0}), Valid),
        ("ICMPFields", json!({"type": 254}), Valid),
        ("ICMPFields", json!({"type": 3, "code": 255}), Valid),
        ("ICMPFields", json!({"type": 255}), Invalid("type")),
        ("ICMPFields", json!({"code": 1}), Invalid("code")),
        (
            "ICMPFields",
            json!({"type": 3, "code": 256}),
            Invalid("code"),
        ),
        ("ICMPFields", json!({"type": -1}), Invalid("type")),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}}),
            Invalid("icmp.code"),
        ),
        (
            "Rule",
            json!({"action": "Deny", "protocol": "ICMP", "notICMP": {"type": 255}}),
            Invalid("notICMP.type"),
        ),
    ]);
}

#[test]
fn rule_actions_and_ip_versions() {
    check_all(vec![
        ("Rule", json!({"action": "Allow"}), Valid),
        ("Rule", json!({"action": "Deny"}), Valid),
        ("Rule", json!({"action": "Log"}), Valid),
        ("Rule", json!({"action": "Pass"}), Valid),
        ("Rule", json!({"action": "allow"}), Invalid("action")),
        ("Rule", json!({"action": "Drop"}), Invalid("action")),
        ("Rule", json!({}), Invalid("action")),
        ("Rule", json!({"action": "Allow", "ipVersion": 4}), Valid),
        ("Rule", json!({"action": "Allow", "ipVersion": 6}), Valid),
        (
            "Rule",
            json!({"action": "Allow", "ipVersion": 5}),
            Invalid("ipVersion"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "tcp"}),
            Invalid("protocol"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "notProtocol": 0}),
            Invalid("notProtocol"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "notProtocol": "UDP"}),
            Valid,
        ),
    ]);
}

#[test]
fn ports_need_a_protocol_with_ports() {
    let rule = |protocol: Value, side: &str, list: &str| {
        let mut r = json!({"action": "Allow", side: {list: [80]}});
        if !protocol.is_null() {
            r["protocol"] = protocol;
        }
        r
    };
    let mut cases = Vec::new();
    for protocol in [
        json!("TCP"),
        json!("UDP"),
        json!("SCTP"),
        json!("UDPLite"),
        json!(6),
        json!(17),
        json!(132),
        json!(136),
        json!("6"),
    ] {
        cases.push(("Rule", rule(protocol.clone(), "source", "ports"), Valid));
        cases.push(("Rule", rule(protocol, "destination", "notPorts"), Valid));
    }
    cases.extend([
        (
            "Rule",
            rule(Value::Null, "source", "ports"),
            Invalid("source.ports"),
        ),
        (
            "Rule",
            rule(Value::Null, "destination", "ports"),
            Invalid("destination.ports"),
        ),
        (
            "Rule",
            rule(json!("ICMP"), "destination", "ports"),
            Invalid("destination.ports"),
        ),
        (
            "Rule",
            rule(json!(100), "source", "notPorts"),
            Invalid("source.notPorts"),
        ),
        (
            "Rule",
            rule(json!("ICMPv6"), "destination", "notPorts"),
            Invalid("destination.notPorts"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "destination": {"ports": []}}),
            Valid,
        ),
    ]);
    check_all(cases);
}

#[test]
fn port_forms() {
    let rule = |port: Value| json!({"action": "Allow", "protocol": "TCP", "destination": {"ports": [port]}});
    check_all(vec![
        ("Rule", rule(json!(0)), Valid),
        ("Rule", rule(json!(65535)), Valid),
        ("Rule", rule(json!("8080")), Valid),
        ("Rule", rule(json!("1:65535")), Valid),
        ("Rule", rule(json!("100:100")), Valid),
        ("Rule", rule(json!("http")), Valid),
        ("Rule", rule(json!("web-8080")), Valid),
        ("Rule", rule(json!(65536)), Invalid("destination.ports[0]")),
        (
            "Rule",
            rule(json!("65536")),
            Invalid("destination.ports[0]"),
        ),
        ("Rule", rule(json!(-1)), Invalid("destination.ports[0]")),
        (
            "Rule",
            rule(json!("200:100")),
            Invalid("destination.ports[0]"),
        ),
        (
            "Rule",
            rule(json!("1:65536")),
            Invalid("destination.ports[0]"),
        ),
        ("Rule", rule(json!("HTTP")), Invalid("destination.ports[0]")),
        ("Rule", rule(json!("-web")), Invalid("destination.ports[0]")),
        (
            "Rule",
            rule(json!("1:2:3")),
            Invalid("destination.ports[0]"),
        ),
        (
            "Rule",
            rule(json!("a-name-far-too-long")),
            Invalid("destination.ports[0]"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "UDP",
                   "source": {"notPorts": [53, "100:50"]}}),
            Invalid("source.notPorts[1]"),
        ),
    ]);
}

#[test]
fn icmp_protocols_and_ip_versions() {
    check_all(vec![
        (
            "Rule",
            json!({"action": "Allow", "protocol": "ICMPv6", "ipVersion": 6}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "ICMPv6"}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "ICMP", "ipVersion": 4}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "ICMPv6", "ipVersion": 4}),
            Invalid("ipVersion"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": 58, "ipVersion": 4}),
            Invalid("ipVersion"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "ICMP", "ipVersion": 6}),
            Invalid("ipVersion"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "protocol": "1", "ipVersion": 6}),
            Invalid("ipVersion"),
        ),
    ]);
}

#[test]
fn nets_are_cidrs_of_the_rule_family() {
    check_all(vec![
        (
            "Rule",
            json!({"action": "Allow", "ipVersion": 4,
                   "source": {"nets": ["10.0.0.0/8", "192.168.1.1"]}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "ipVersion": 6,
                   "destination": {"notNets": ["fd00::/64", "::1"]}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "source": {"nets": ["10.0.0.0/8", "fd00::/8"]}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "ipVersion": 4, "source": {"notNets": ["fd00::/8"]}}),
            Invalid("source.notNets[0]"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "ipVersion": 6,
                   "destination": {"nets": ["fd00::/8", "10.0.0.1"]}}),
            Invalid("destination.nets[1]"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "ipVersion": 4,
                   "destination": {"notNets": ["10.0.0.0/8", "2001:db8::/32"]}}),
            Invalid("destination.notNets[1]"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "source": {"nets": ["10.0.0.0/33"]}}),
            Invalid("source.nets[0]"),
        ),
        (
            "EntityRule",
            json!({"nets": ["garbage"]}),
            Invalid("nets[0]"),
        ),
        (
            "EntityRule",
            json!({"notNets": ["10.0.0.0/8", "10.0.0.0/"]}),
            Invalid("notNets[1]"),
        ),
        ("EntityRule", json!({"nets": ["10.1.2.3/16"]}), Valid),
    ]);
}

#[test]
fn rule_parts_without_selectors() {
    check_all(vec![
        (
            "Rule",
            json!({"action": "Allow", "protocol": "TCP",
                   "http": {"methods": ["GET", "PUT"], "paths": [{"prefix": "/api"}, {"exact": "/"}]}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "http": {"paths": [{"exact": "/a", "prefix": "/b"}]}}),
            Invalid("http.paths[0]"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "http": {"paths": [{}]}}),
            Invalid("http.paths[0]"),
        ),
        (
            "Rule",
            json!({"action": "Allow",
                   "destination": {"services": {"name": "kubernetes", "namespace": "default"}}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "source": {"serviceAccounts": {"names": ["api", "web"]}}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Log", "metadata": {"annotations": {"owner": "team-a"}}}),
            Valid,
        ),
        (
            "Rule",
            json!({"action": "Allow", "source": {"nets": "10.0.0.0/8"}}),
            Invalid("source.nets"),
        ),
    ]);
}

#[test]
fn bad_selectors_are_named() {
    check_all(vec![
        (
            "EntityRule",
            json!({"selector": "app =="}),
            Invalid("selector"),
        ),
        (
            "EntityRule",
            json!({"notSelector": "has("}),
            Invalid("notSelector"),
        ),
        (
            "EntityRule",
            json!({"namespaceSelector": "a == 'b' &&"}),
            Invalid("namespaceSelector"),
        ),
        (
            "EntityRule",
            json!({"serviceAccounts": {"selector": "x in {"}}),
            Invalid("serviceAccounts.selector"),
        ),
        (
            "Rule",
            json!({"action": "Allow", "destination": {"selector": "!"}}),
            Invalid("destination.selector"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"selector": "role == 'db"}),
            Invalid("selector"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"namespaceSelector": "((("}),
            Invalid("namespaceSelector"),
        ),
        (
            "NetworkPolicy",
            json!({"serviceAccountSelector": "a ="}),
            Invalid("serviceAccountSelector"),
        ),
        // An empty selector is read as no selector, as Calico does.
        ("EntityRule", json!({"selector": ""}), Valid),
    ]);
}

/// Needs the selector parser: with the placeholder that refuses everything these fail.
#[test]
fn good_selectors_are_accepted() {
    check_all(vec![
        ("EntityRule", json!({"selector": "app == 'web'"}), Valid),
        (
            "EntityRule",
            json!({"selector": "has(calico/k8s_NS-.1/role)"}),
            Valid,
        ),
        (
            "EntityRule",
            json!({"notSelector": "!has(quarantine)"}),
            Valid,
        ),
        ("EntityRule", json!({"namespaceSelector": "all()"}), Valid),
        (
            "EntityRule",
            json!({"serviceAccounts": {"names": ["api"], "selector": "team in {'a', 'b'}"}}),
            Valid,
        ),
        (
            "GlobalNetworkPolicy",
            json!({"selector": "role == 'db'", "namespaceSelector": "env != 'dev'",
                   "serviceAccountSelector": "all()"}),
            Valid,
        ),
        (
            "NetworkPolicy",
            json!({"selector": "app == 'web' && tier in {'a'}"}),
            Valid,
        ),
    ]);
}

#[test]
fn global_policy_forwarding_rules() {
    let ingress = json!([{"action": "Allow"}]);
    check_all(vec![
        (
            "GlobalNetworkPolicy",
            json!({"preDNAT": true, "applyOnForward": true, "ingress": ingress}),
            Valid,
        ),
        (
            "GlobalNetworkPolicy",
            json!({"doNotTrack": true, "applyOnForward": true, "ingress": ingress,
                   "egress": [{"action": "Deny"}]}),
            Valid,
        ),
        (
            "GlobalNetworkPolicy",
            json!({"applyOnForward": true}),
            Valid,
        ),
        (
            "GlobalNetworkPolicy",
            json!({"preDNAT": true}),
            Invalid("preDNAT"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"doNotTrack": true}),
            Invalid("doNotTrack"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"preDNAT": true, "doNotTrack": true, "applyOnForward": true}),
            Invalid("preDNAT"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"preDNAT": true, "applyOnForward": true, "egress": [{"action": "Allow"}]}),
            Invalid("egress"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"preDNAT": true, "applyOnForward": true, "types": ["Ingress", "Egress"]}),
            Invalid("types"),
        ),
        (
            "GlobalNetworkPolicy",
            json!({"preDNAT": "yes"}),
            Invalid("preDNAT"),
        ),
    ]);
}

#[test]
fn policy_spec_fields() {
    let mut cases = Vec::new();
    for kind in ["GlobalNetworkPolicy", "NetworkPolicy"] {
        cases.extend([
            (
                kind,
                json!({"tier": "security", "order": 10.5, "types": ["Ingress", "Egress"],
                       "performanceHints": ["AssumeNeededOnEveryNode"]}),
                Valid,
            ),
            (kind, json!({"order": 100}), Valid),
            (kind, json!({"tier": "Security_Team"}), Invalid("tier")),
            (kind, json!({"order": "first"}), Invalid("order")),
            (
                kind,
                json!({"types": ["Ingress", "Ingress"]}),
                Invalid("types"),
            ),
            (kind, json!({"types": ["Sideways"]}), Invalid("types[0]")),
            (
                kind,
                json!({"performanceHints": ["Fast"]}),
                Invalid("performanceHints[0]"),
            ),
            (
                kind,
                json!({"ingress": [{"action": "Allow"}, {"action": "Allow"},
                                   {"action": "Allow", "destination": {"ports": [80]}}]}),
                Invalid("ingress[2].destination.ports"),
            ),
            (
                kind,
                json!({"egress": [{"action": "Allow", "protocol": "ICMP", "ipVersion": 6}]}),
                Invalid("egress[0].ipVersion"),
            ),
            (
                kind,
                json!({"egress": [{"action": "Permit"}]}),
                Invalid("egress[0].action"),
            ),
        ]);
    }
    check_all(cases);
}

#[test]
fn too_many_rules_are_refused() {
    let rules: Vec<Value> = (0..=policy::MAX_RULES_PER_DIRECTION)
        .map(|_| json!({"action": "Allow"}))
        .collect();
    check_all(vec![(
        "NetworkPolicy",
        json!({"ingress": rules}),
        Invalid("ingress"),
    )]);
}

#[test]
fn whole_policy_objects() {
    let long = "a".repeat(254);
    let just_fits = format!("{}.b", "a".repeat(251));
    let mut cases = Vec::new();
    for kind in ["GlobalNetworkPolicy", "NetworkPolicy"] {
        cases.extend([
            (
                kind,
                json!({"metadata": {"name": "allow-dns"}, "spec": {"order": 10}}),
                Valid,
            ),
            (
                kind,
                json!({"metadata": {"name": just_fits}, "spec": {}}),
                Valid,
            ),
            (
                kind,
                json!({"metadata": {"name": "default.allow-dns"}, "spec": {}}),
                Valid,
            ),
            (
                kind,
                json!({"metadata": {"generateName": "tmp-"}, "spec": {}}),
                Valid,
            ),
            (
                kind,
                json!({"metadata": {"name": long}, "spec": {}}),
                Invalid("metadata.name"),
            ),
            (
                kind,
                json!({"metadata": {"name": "Allow_DNS"}, "spec": {}}),
                Invalid("metadata.name"),
            ),
            (
                kind,
                json!({"metadata": {"name": "-x"}, "spec": {}}),
                Invalid("metadata.name"),
            ),
            (
                kind,
                json!({"metadata": {}, "spec": {}}),
                Invalid("metadata.name"),
            ),
            (
                kind,
                json!({"metadata": {"name": "p"},
                       "spec": {"ingress": [{"action": "Allow", "ipVersion": 7}]}}),
                Invalid("spec.ingress[0].ipVersion"),
            ),
            (
                kind,
                json!({"metadata": {"name": "p"},
                       "spec": {"ingress": [{"action": "Allow", "protocol": "TCP",
                                             "source": {"ports": [70000]}}]}}),
                Invalid("spec.ingress[0].source.ports[0]"),
            ),
        ]);
    }
    cases.push((
        "GlobalNetworkPolicy",
        json!({"metadata": {"name": "p"}, "spec": {"doNotTrack": true}}),
        Invalid("spec.doNotTrack"),
    ));
    check_all(cases);
}

#[test]
fn host_endpoints() {
    let port = |p: Value| json!({"node": "node-1", "interfaceName": "eth0", "ports": [p]});
    check_all(vec![
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "interfaceName": "eth0"}),
            Valid,
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "interfaceName": "*"}),
            Valid,
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "expectedIPs": ["10.0.0.1", "fd00::1"]}),
            Valid,
        ),
        (
            "HostEndpointSpec",
            json!({"node": "n.example.com", "interfaceName": "bond0.100",
                   "expectedIPs": ["198.18.0.1"], "profiles": ["kns.default"]}),
            Valid,
        ),
        (
            "HostEndpointSpec",
            json!({"interfaceName": "eth0"}),
            Invalid("node"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "", "interfaceName": "eth0"}),
            Invalid("node"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "Node_1", "interfaceName": "eth0"}),
            Invalid("node"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1"}),
            Invalid("interfaceName"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "expectedIPs": []}),
            Invalid("interfaceName"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "interfaceName": "a-name-too-long0"}),
            Invalid("interfaceName"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "interfaceName": "eth 0"}),
            Invalid("interfaceName"),
        ),
        (
            "HostEndpointSpec",
            json!({"node": "node-1", "expectedIPs": ["10.0.0.0/8"]}),
            Invalid("expectedIPs[0]"),
        ),
        (
            "HostEndpointSpec",
            port(json!({"name": "http", "protocol": "TCP", "port": 80})),
            Valid,
        ),
        (
            "HostEndpointSpec",
            port(json!({"name": "dns", "protocol": 17, "port": 53})),
            Valid,
        ),
        (
            "HostEndpointSpec",
            port(json!({"protocol": "TCP", "port": 80})),
            Invalid("ports[0].name"),
        ),
        (
            "HostEndpointSpec",
            port(json!({"name": "HTTP", "protocol": "TCP", "port": 80})),
            Invalid("ports[0].name"),
        ),
        (
            "HostEndpointSpec",
            port(json!({"name": "ping", "protocol": "ICMP", "port": 0})),
            Invalid("ports[0].protocol"),
        ),
        (
            "HostEndpointSpec",
            port(json!({"name": "http", "protocol": "TCP", "port": 70000})),
            Invalid("ports[0].port"),
        ),
        (
            "HostEndpointSpec",
            port(json!({"name": "http", "port": 80})),
            Invalid("ports[0].protocol"),
        ),
    ]);
}

#[test]
fn whole_host_endpoints() {
    let spec = json!({"node": "node-1", "interfaceName": "eth0"});
    check_all(vec![
        (
            "HostEndpoint",
            json!({"metadata": {"name": "node-1-eth0"}, "spec": spec}),
            Valid,
        ),
        (
            "HostEndpoint",
            json!({"metadata": {"name": "node-1/eth0"}, "spec": spec}),
            Invalid("metadata.name"),
        ),
        (
            "HostEndpoint",
            json!({"metadata": {"name": "x".repeat(254)}, "spec": spec}),
            Invalid("metadata.name"),
        ),
        (
            "HostEndpoint",
            json!({"metadata": {"name": "h"}, "spec": {"node": "node-1"}}),
            Invalid("spec.interfaceName"),
        ),
    ]);
}

#[test]
fn network_sets() {
    let mut cases = Vec::new();
    for kind in ["NetworkSetSpec", "GlobalNetworkSetSpec"] {
        cases.extend([
            (kind, json!({}), Valid),
            (
                kind,
                json!({"nets": ["10.0.0.0/8", "fd00::/8", "192.168.1.1", "2001:db8::1"]}),
                Valid,
            ),
            (
                kind,
                json!({"nets": ["10.0.0.0/8", "nope"]}),
                Invalid("nets[1]"),
            ),
            (kind, json!({"nets": ["10.0.0.0/99"]}), Invalid("nets[0]")),
            (kind, json!({"nets": [42]}), Invalid("nets[0]")),
        ]);
    }
    cases.push((
        "NetworkSet",
        json!({"metadata": {"name": "Bad Name"}, "spec": {"nets": ["10.0.0.0/8"]}}),
        Invalid("metadata.name"),
    ));
    cases.push((
        "GlobalNetworkSet",
        json!({"metadata": {"name": "cloud"}, "spec": {"nets": ["x"]}}),
        Invalid("spec.nets[0]"),
    ));
    check_all(cases);
}

#[test]
fn every_error_is_reported_at_once() {
    let value = json!({"action": "Allow", "ipVersion": 4, "protocol": "ICMPv6",
                       "icmp": {"code": 1}, "source": {"nets": ["fd00::/8"], "ports": [1]}});
    let errors: ValidationErrors = validate_value("Rule", &value)
        .expect("Rule is a policy kind")
        .expect_err("the rule breaks four rules");
    for field in ["ipVersion", "icmp.code", "source.nets[0]", "source.ports"] {
        assert!(
            errors.0.iter().any(|e| is_about(e, field)),
            "no error about {field} in: {errors}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// (c) Round trips of real manifests.

/// JSON values equal up to how a number is written (100 and 100.0 are the same order).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn round_trip<T>(yaml: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let original: Value = serde_saphyr::from_str(yaml).expect("test manifest is YAML");
    let typed: T = serde_saphyr::from_str(yaml).expect("test manifest has the kind's shape");
    let written = serde_json::to_value(&typed).expect("the kind serialises");
    assert!(
        same(&original, &written),
        "round trip changed the object\nbefore: {original:#}\nafter:  {written:#}"
    );
    typed
}

const CALICO_V3_8_POLICY: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata:
  name: allow-tcp-6379
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
      nets:
      - 10.244.0.0/16
    destination:
      ports:
      - 6379
      - "7000:7010"
  - action: Allow
    protocol: ICMP
    icmp:
      type: 8
    ipVersion: 4
  - action: Deny
    protocol: UDP
    notProtocol: TCP
    source:
      notNets:
      - 192.0.2.0/24
      notSelector: quarantine == 'true'
      namespaceSelector: has(projectcalico.org/name)
  egress:
  - action: Allow
    protocol: UDP
    destination:
      ports:
      - 53
      notPorts:
      - dns-alt
  - action: Log
  - action: Pass
  doNotTrack: false
  preDNAT: false
  applyOnForward: true
"#;

const CURRENT_POLICY: &str = r#"
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata:
  name: security.allow-api
  namespace: shop
spec:
  tier: security
  order: 10.5
  selector: app == 'api'
  serviceAccountSelector: team == 'shop'
  performanceHints:
  - AssumeNeededOnEveryNode
  types:
  - Ingress
  ingress:
  - action: Allow
    protocol: TCP
    ipVersion: 6
    source:
      serviceAccounts:
        names:
        - frontend
        selector: tier == 'web'
      services:
        name: gateway
        namespace: ingress
      nets:
      - fd00:10::/64
    destination:
      ports:
      - http
      - 8443
    http:
      methods:
      - GET
      - POST
      paths:
      - exact: /healthz
      - prefix: /api/v1
    metadata:
      annotations:
        reason: only the gateway talks to the API
  - action: Deny
    protocol: ICMPv6
    notICMP:
      type: 128
      code: 0
status:
  observedGeneration: 3
  nodesProgrammed: 5
  summary: Programmed
  warnings:
  - selector app == 'api' matches no endpoint in tier security yet
  conditions:
  - type: Programmed
    status: "True"
    reason: AllNodes
    message: programmed on 5 of 5 nodes
    lastTransitionTime: "2026-01-02T03:04:05Z"
    observedGeneration: 3
"#;

#[test]
fn calico_v3_8_policy_round_trips() {
    let policy: GlobalNetworkPolicy = round_trip(CALICO_V3_8_POLICY);
    assert_eq!(policy.spec.ingress.len(), 3);
    let ports = &policy.spec.ingress[0]
        .destination
        .as_ref()
        .expect("the first rule has a destination")
        .ports;
    assert_eq!(
        ports,
        &[
            Port::Number(6379),
            Port::Range {
                min: 7000,
                max: 7010
            }
        ]
    );
    // The v3.8 manifest is also valid, apart from its selectors, which need the parser.
    let errors = policy.validate().err().unwrap_or_default();
    assert!(
        errors.0.iter().all(|e| e.message.contains("selector")),
        "unexpected errors: {errors}"
    );
}

#[test]
fn current_policy_round_trips() {
    let policy: NetworkPolicy = round_trip(CURRENT_POLICY);
    assert_eq!(policy.spec.tier.as_deref(), Some("security"));
    let status = policy.status.as_ref().expect("the manifest has a status");
    assert_eq!(status.nodes_programmed, Some(5));
    assert_eq!(status.conditions[0].type_, "Programmed");
    let errors = policy.validate().err().unwrap_or_default();
    assert!(
        errors.0.iter().all(|e| e.message.contains("selector")),
        "unexpected errors: {errors}"
    );
}

#[test]
fn numeric_protocol_strings_are_written_as_numbers() {
    let value = json!({"action": "Allow", "protocol": "17", "notProtocol": "UDPLite"});
    let rule: policy::Rule = serde_json::from_value(value).expect("a valid rule");
    let written = serde_json::to_value(&rule).expect("a rule serialises");
    assert_eq!(written["protocol"], json!(17));
    assert_eq!(written["notProtocol"], json!("UDPLite"));
}

proptest::proptest! {
    #[test]
    fn ports_round_trip(min in 0u16.., max in 0u16..) {
        for port in [Port::Number(min), Port::Range { min, max }] {
            let text = serde_json::to_string(&port).expect("a port serialises");
            let back: Port = serde_json::from_str(&text).expect("a written port reads back");
            proptest::prop_assert_eq!(&back, &port);
            proptest::prop_assert_eq!(back.validate().is_ok(), min <= max || matches!(port, Port::Number(_)));
        }
    }

    #[test]
    fn protocol_numbers_round_trip(n in 1u8..) {
        let p = Protocol::Number(n);
        let back: Protocol = serde_json::from_value(json!(n.to_string())).expect("a numeric string");
        proptest::prop_assert_eq!(back.number(), n);
        proptest::prop_assert_eq!(serde_json::to_value(p).expect("serialises"), json!(n));
    }
}

// ---------------------------------------------------------------------------------------
// (d) The generated schemas.

fn crd(kind: &str) -> Value {
    let crd = policy::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("crds() has no {kind}"));
    serde_json::to_value(crd).expect("a CRD serialises")
}

fn spec_schema(kind: &str) -> Value {
    crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

/// The CEL rules at `schema`, as (rule, fieldPath) pairs; every one must have a message.
fn rules_at(schema: &Value) -> Vec<(String, String)> {
    schema["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    assert!(
                        r["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "rule without a message: {r}"
                    );
                    (
                        r["rule"].as_str().unwrap_or_default().to_owned(),
                        r["fieldPath"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_rule(schema: &Value, rule: &str, field_path: &str) -> bool {
    rules_at(schema)
        .iter()
        .any(|(r, f)| r == rule && f == field_path)
}

#[test]
fn crds_have_calico_names_and_scopes() {
    let expected = [
        (
            "NetworkPolicy",
            "networkpolicies",
            "networkpolicy",
            "Namespaced",
        ),
        (
            "GlobalNetworkPolicy",
            "globalnetworkpolicies",
            "globalnetworkpolicy",
            "Cluster",
        ),
        ("NetworkSet", "networksets", "networkset", "Namespaced"),
        (
            "GlobalNetworkSet",
            "globalnetworksets",
            "globalnetworkset",
            "Cluster",
        ),
        ("HostEndpoint", "hostendpoints", "hostendpoint", "Cluster"),
    ];
    let crds = policy::crds();
    assert_eq!(crds.len(), expected.len());
    for (kind, plural, singular, scope) in expected {
        let crd = crds
            .iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} CRD"));
        assert_eq!(crd.spec.group, "crd.projectcalico.org");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(crd.spec.names.singular.as_deref(), Some(singular));
        assert_eq!(crd.spec.scope, scope);
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1");
    }
}

#[test]
fn policy_printer_columns_and_status() {
    for kind in ["NetworkPolicy", "GlobalNetworkPolicy"] {
        let version = &crd(kind)["spec"]["versions"][0];
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .expect("policies have printer columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            columns,
            ["Order", "Selector", "Programmed", "Status", "Age"]
        );
        assert!(version["subresources"]["status"].is_object());

        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        for field in [
            "observedGeneration",
            "conditions",
            "nodesProgrammed",
            "warnings",
            "summary",
        ] {
            assert!(status[field].is_object(), "{kind} status has no {field}");
        }
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        assert_eq!(
            status["conditions"]["x-kubernetes-list-map-keys"],
            json!(["type"])
        );
    }
}

#[test]
fn rule_schema_carries_its_cel_rules() {
    for kind in ["NetworkPolicy", "GlobalNetworkPolicy"] {
        let spec = spec_schema(kind);
        for direction in ["ingress", "egress"] {
            let rule = &spec["properties"][direction]["items"];
            assert!(has_rule(rule, ICMPV6_VERSION_RULE, ".ipVersion"));
            assert!(has_rule(rule, ICMP_VERSION_RULE, ".ipVersion"));
            for side in ["source", "destination"] {
                for list in ["nets", "notNets"] {
                    let path = format!(".{side}.{list}");
                    assert!(has_rule(rule, &family_rule(side, list), &path), "{path}");
                    let entity = &rule["properties"][side]["properties"];
                    assert!(has_rule(&entity[list]["items"], CIDR_OR_IP_RULE, ""));
                }
                for list in ["ports", "notPorts"] {
                    let path = format!(".{side}.{list}");
                    assert!(has_rule(rule, &ports_rule(side, list), &path), "{path}");
                    let port = &rule["properties"][side]["properties"][list]["items"];
                    assert_eq!(port["x-kubernetes-int-or-string"], true);
                    assert_eq!(port["pattern"], PORT_STRING_PATTERN);
                    assert!(has_rule(port, PORT_STRING_RULE, ""));
                }
            }
            for field in ["protocol", "notProtocol"] {
                let protocol = &rule["properties"][field];
                assert_eq!(protocol["x-kubernetes-int-or-string"], true);
                assert!(has_rule(protocol, PROTOCOL_RULE, ""));
            }
            for field in ["icmp", "notICMP"] {
                let icmp = &rule["properties"][field];
                assert!(has_rule(icmp, "!has(self.code) || has(self.type)", ".code"));
                assert_eq!(icmp["properties"]["type"]["maximum"], json!(254.0));
            }
            assert_eq!(rule["properties"]["ipVersion"]["enum"], json!([4, 6]));
            assert_eq!(
                rule["properties"]["action"]["enum"],
                json!(["Allow", "Deny", "Log", "Pass"])
            );
            let path = &rule["properties"]["http"]["properties"]["paths"]["items"];
            assert!(has_rule(path, "has(self.exact) != has(self.prefix)", ""));
        }
    }
}

#[test]
fn global_policy_schema_carries_forwarding_rules() {
    let global = spec_schema("GlobalNetworkPolicy");
    assert!(has_rule(&global, PREDNAT_DO_NOT_TRACK_RULE, ".preDNAT"));
    assert!(has_rule(&global, DO_NOT_TRACK_FORWARD_RULE, ".doNotTrack"));
    assert!(has_rule(&global, PREDNAT_FORWARD_RULE, ".preDNAT"));
    assert!(has_rule(&global, PREDNAT_EGRESS_RULE, ".egress"));
    assert!(has_rule(&global, PREDNAT_TYPES_RULE, ".types"));
    for field in [
        "namespaceSelector",
        "applyOnForward",
        "doNotTrack",
        "preDNAT",
    ] {
        assert!(
            global["properties"][field].is_object(),
            "global policy lacks {field}"
        );
    }

    let namespaced = spec_schema("NetworkPolicy");
    assert!(rules_at(&namespaced).is_empty());
    for field in [
        "namespaceSelector",
        "applyOnForward",
        "doNotTrack",
        "preDNAT",
    ] {
        assert!(
            namespaced["properties"][field].is_null(),
            "namespaced policy has {field}"
        );
    }
    assert_eq!(
        namespaced["properties"]["types"]["x-kubernetes-list-type"],
        "set"
    );
}

#[test]
fn host_endpoint_and_set_schemas_carry_their_rules() {
    let hep = spec_schema("HostEndpoint");
    assert!(has_rule(&hep, NODE_REQUIRED_RULE, ".node"));
    assert!(has_rule(&hep, INTERFACE_OR_IPS_RULE, ".interfaceName"));
    assert!(has_rule(
        &hep["properties"]["expectedIPs"]["items"],
        IP_RULE,
        ""
    ));
    let port = &hep["properties"]["ports"]["items"];
    assert!(has_rule(port, ENDPOINT_PORT_PROTOCOL_RULE, ".protocol"));
    let mut required: Vec<&str> = port["required"]
        .as_array()
        .expect("an endpoint port has required fields")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    required.sort_unstable();
    assert_eq!(required, ["name", "port", "protocol"]);

    for kind in ["NetworkSet", "GlobalNetworkSet"] {
        let nets = &spec_schema(kind)["properties"]["nets"];
        assert!(has_rule(&nets["items"], CIDR_OR_IP_RULE, ""));
        assert_eq!(nets["maxItems"], json!(policy::MAX_NETS_PER_SET));
    }
}

/// Every list and string in a spec is bounded, or the API server cannot estimate the cost
/// of the CEL rules over them (maps of free-form annotations are not reached by CEL).
#[test]
fn every_spec_list_and_string_is_bounded() {
    fn walk(schema: &Value, path: &str, unbounded: &mut Vec<String>) {
        match schema["type"].as_str() {
            Some("array") if schema["maxItems"].is_null() => unbounded.push(path.to_owned()),
            Some("string") if schema["maxLength"].is_null() && schema["enum"].is_null() => {
                unbounded.push(path.to_owned())
            }
            _ => {}
        }
        if schema["x-kubernetes-int-or-string"] == true && schema["maxLength"].is_null() {
            unbounded.push(path.to_owned());
        }
        if let Some(properties) = schema["properties"].as_object() {
            for (name, child) in properties {
                walk(child, &format!("{path}.{name}"), unbounded);
            }
        }
        if schema["items"].is_object() {
            walk(&schema["items"], &format!("{path}[]"), unbounded);
        }
    }

    let mut unbounded = Vec::new();
    for kind in [
        "NetworkPolicy",
        "GlobalNetworkPolicy",
        "NetworkSet",
        "GlobalNetworkSet",
        "HostEndpoint",
    ] {
        walk(&spec_schema(kind), &format!("{kind}.spec"), &mut unbounded);
    }
    assert!(unbounded.is_empty(), "unbounded: {unbounded:?}");
}
