//! Each rule of the CRD schemas, stated again in Rust, on valid and invalid input; every
//! rejection must name the field and say the rule.

use serde_json::{Value, json};
use tortie_crds::bgp::BGPPeerSpec;
use tortie_crds::cases::validate_value;
use tortie_crds::ippool::IPPoolSpec;
use tortie_crds::validation::{Validate, ValidationErrors};

fn check(kind: &str, value: Value) -> Result<(), ValidationErrors> {
    validate_value(kind, &value).expect("a kind Tortie knows")
}

#[track_caller]
fn assert_valid(kind: &str, value: Value) {
    if let Err(errors) = check(kind, value.clone()) {
        panic!("{kind} {value} should be valid, got: {errors}");
    }
}

/// Asserts that `value` is rejected with an error at `field` whose message contains every
/// one of `words`.
#[track_caller]
fn assert_invalid(kind: &str, value: Value, field: &str, words: &[&str]) {
    let errors = match check(kind, value.clone()) {
        Ok(()) => panic!("{kind} {value} should be invalid ({field})"),
        Err(errors) => errors,
    };
    let hit = errors
        .0
        .iter()
        .any(|e| e.field.as_str() == field && words.iter().all(|w| e.message.contains(w)));
    assert!(
        hit,
        "{kind} {value}: expected an error at {field} mentioning {words:?}, got: {errors}"
    );
}

#[test]
fn pool_cidr_must_parse() {
    assert_valid("IPPoolSpec", json!({"cidr": "10.244.0.0/16"}));
    assert_valid("IPPoolSpec", json!({"cidr": "fd00:10:244::/48"}));
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.244.0.0"}),
        "spec.cidr",
        &["not a CIDR"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.300.0.0/16"}),
        "spec.cidr",
        &["not a CIDR"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "aa:bb::/129"}),
        "spec.cidr",
        &["not a CIDR"],
    );
}

#[test]
fn pool_cidr_with_host_bits_suggests_the_network() {
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.244.1.0/16"}),
        "spec.cidr",
        &["host bits", "did you mean 10.244.0.0/16?"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "aa:bb::cc/120"}),
        "spec.cidr",
        &["did you mean aa:bb::/120?"],
    );
}

#[test]
fn pool_block_size_range_depends_on_family() {
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "blockSize": 20}),
    );
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "blockSize": 32}),
    );
    assert_valid("IPPoolSpec", json!({"cidr": "fd00::/48", "blockSize": 116}));
    assert_valid("IPPoolSpec", json!({"cidr": "fd00::/48", "blockSize": 128}));
    for (cidr, size) in [
        ("10.0.0.0/16", 19),
        ("10.0.0.0/16", 33),
        ("fd00::/48", 115),
        ("fd00::/48", 122 - 100),
    ] {
        assert_invalid(
            "IPPoolSpec",
            json!({"cidr": cidr, "blockSize": size}),
            "spec.blockSize",
            &["blockSize", "20 to 32", "116 to 128"],
        );
    }
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "blockSize": 120}),
        "spec.blockSize",
        &["20 to 32"],
    );
}

#[test]
fn enabled_pool_must_hold_one_block() {
    assert_valid("IPPoolSpec", json!({"cidr": "10.0.0.0/26"}));
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/28", "blockSize": 28}),
    );
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/27", "disabled": true}),
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/27"}),
        "spec.cidr",
        &["smaller than one block (/26)", "blockSize to 27 or more"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "fd00::/123"}),
        "spec.cidr",
        &["smaller than one block (/122)"],
    );
}

#[test]
fn ipip_is_ipv4_only() {
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "ipipMode": "CrossSubnet"}),
    );
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "fd00::/48", "vxlanMode": "Always"}),
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "fd00::/48", "ipipMode": "Always"}),
        "spec.ipipMode",
        &["IPv6", "Never"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "fd00::/48", "ipip": {"enabled": true}}),
        "spec.ipipMode",
        &["IPv6"],
    );
}

#[test]
fn one_encapsulation_per_pool() {
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "ipipMode": "Always", "vxlanMode": "CrossSubnet"}),
        "spec.vxlanMode",
        &["ipipMode and vxlanMode", "Never"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "ipip": {"enabled": true, "mode": "cross-subnet"}, "vxlanMode": "Always"}),
        "spec.vxlanMode",
        &["ipipMode and vxlanMode"],
    );
}

#[test]
fn pool_must_not_overlap_link_local() {
    for cidr in [
        "169.254.0.0/16",
        "169.254.5.0/24",
        "169.0.0.0/8",
        "fe80::/10",
        "fe80::/64",
        "fe00::/7",
    ] {
        assert_invalid(
            "IPPoolSpec",
            json!({"cidr": cidr}),
            "spec.cidr",
            &["link-local"],
        );
    }
    assert_valid("IPPoolSpec", json!({"cidr": "169.253.0.0/16"}));
    assert_valid("IPPoolSpec", json!({"cidr": "aa00::/10"}));
}

#[test]
fn pool_enums_name_their_field() {
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "ipipMode": "always"}),
        "spec.ipipMode",
        &["unknown variant"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "vxlanMode": "On"}),
        "spec.vxlanMode",
        &["unknown variant"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workload", "Pods"]}),
        "spec.allowedUses[1]",
        &["unknown variant"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workload", "Workload"]}),
        "spec.allowedUses[1]",
        &["twice"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "assignmentMode": "Auto"}),
        "spec.assignmentMode",
        &["unknown variant"],
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": 10}),
        "spec.cidr",
        &["invalid type"],
    );
}

#[test]
fn whole_pool_objects_name_fields_from_the_root() {
    let pool = json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPPool",
        "metadata": {"name": "p"},
        "spec": {"cidr": "10.244.1.0/16"}
    });
    assert_invalid(
        "IPPool",
        pool,
        "spec.cidr",
        &["did you mean 10.244.0.0/16?"],
    );
}

#[test]
fn pool_cidr_and_block_size_are_fixed() {
    let old: IPPoolSpec = serde_json::from_value(json!({"cidr": "10.0.0.0/16"})).expect("a pool");

    let same = old.clone();
    assert!(same.validate_update(&old).is_ok());

    let mut explicit_default = old.clone();
    explicit_default.block_size = Some(26);
    assert!(
        explicit_default.validate_update(&old).is_ok(),
        "stating the default is no change"
    );

    let mut moved = old.clone();
    moved.cidr = "10.1.0.0/16".into();
    let errors = moved.validate_update(&old).expect_err("cidr is immutable");
    assert_eq!(errors.0[0].field.as_str(), "spec.cidr");

    let mut resized = old.clone();
    resized.block_size = Some(24);
    let errors = resized
        .validate_update(&old)
        .expect_err("blockSize is immutable");
    assert_eq!(errors.0[0].field.as_str(), "spec.blockSize");
    assert!(errors.0[0].message.contains("cannot change"));
}

#[test]
fn pool_selectors_are_checked() {
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "nodeSelector": "all()"}),
    );
    assert_valid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "nodeSelector": "zone == 'a'"}),
    );
    assert_invalid(
        "IPPoolSpec",
        json!({"cidr": "10.0.0.0/16", "nodeSelector": "zone == "}),
        "spec.nodeSelector",
        &["selector"],
    );
}

#[test]
fn peer_ip_takes_an_optional_port() {
    for ip in [
        "192.0.2.1",
        "192.0.2.1:1790",
        "2001:db8::1",
        "[2001:db8::1]:1790",
    ] {
        assert_valid("BGPPeerSpec", json!({"peerIP": ip, "asNumber": 64512}));
    }
    for ip in [
        "999.999.999.999",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "2001:db8::1:179x",
        "[192.0.2.1]:179",
        "[2001:db8::1]",
        "peer.example",
    ] {
        assert_invalid(
            "BGPPeerSpec",
            json!({"peerIP": ip}),
            "spec.peerIP",
            &["peerIP must be an IP address"],
        );
    }
}

#[test]
fn peer_ip_and_peer_selector_exclude_each_other() {
    assert_invalid(
        "BGPPeerSpec",
        json!({"peerIP": "192.0.2.1", "peerSelector": "has(rr)"}),
        "spec.peerSelector",
        &["peerIP and peerSelector"],
    );
}

#[test]
fn node_and_node_selector_exclude_each_other() {
    assert_valid(
        "BGPPeerSpec",
        json!({"node": "n1", "peerIP": "192.0.2.1", "asNumber": 65000}),
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"node": "n1", "nodeSelector": "has(rr)", "peerIP": "192.0.2.1"}),
        "spec.nodeSelector",
        &["node and nodeSelector"],
    );
}

#[test]
fn peer_selector_takes_as_numbers_from_nodes() {
    assert_invalid(
        "BGPPeerSpec",
        json!({"peerSelector": "has(rr)", "asNumber": 64512}),
        "spec.asNumber",
        &["asNumber must be unset"],
    );
}

#[test]
fn as_numbers_are_32_bit() {
    assert_valid(
        "BGPPeerSpec",
        json!({"peerIP": "192.0.2.1", "asNumber": 4294967295u64}),
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"peerIP": "192.0.2.1", "asNumber": 4294967296u64}),
        "spec.asNumber",
        &["invalid value"],
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"peerIP": "192.0.2.1", "asNumber": -1}),
        "spec.asNumber",
        &["invalid value"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"asNumber": "lots"}),
        "spec.asNumber",
        &["invalid type"],
    );
}

#[test]
fn peer_durations_and_gateway() {
    assert_valid(
        "BGPPeerSpec",
        json!({"peerIP": "192.0.2.1", "maxRestartTime": "2m", "keepaliveTime": "30s", "reachableBy": "192.0.2.254"}),
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"maxRestartTime": "2 minutes"}),
        "spec.maxRestartTime",
        &["not a duration"],
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"reachableBy": "gateway"}),
        "spec.reachableBy",
        &["not an IP address"],
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"sourceAddress": "NodeIP"}),
        "spec.sourceAddress",
        &["unknown variant"],
    );
    assert_invalid(
        "BGPPeerSpec",
        json!({"nextHopMode": "self"}),
        "spec.nextHopMode",
        &["unknown variant"],
    );
}

#[test]
fn peer_scope_label() {
    let global: BGPPeerSpec =
        serde_json::from_value(json!({"peerIP": "192.0.2.1"})).expect("a peer");
    assert_eq!(global.scope_label(), "(global)");
    let node: BGPPeerSpec = serde_json::from_value(json!({"node": "n1"})).expect("a peer");
    assert_eq!(node.scope_label(), "n1");
    let selected: BGPPeerSpec =
        serde_json::from_value(json!({"nodeSelector": "has(rr)"})).expect("a peer");
    assert_eq!(selected.scope_label(), "has(rr)");
    let with_port: BGPPeerSpec =
        serde_json::from_value(json!({"peerIP": "[2001:db8::1]:1790"})).expect("a peer");
    assert_eq!(
        with_port.peer_address().map(|(_, port)| port),
        Some(Some(1790))
    );
}

#[test]
fn bgp_configuration_rules() {
    assert_valid(
        "BGPConfigurationSpec",
        json!({
            "logSeverityScreen": "info",
            "nodeToNodeMeshEnabled": false,
            "asNumber": 63400,
            "listenPort": 1790,
            "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
            "serviceExternalIPs": [{"cidr": "192.0.2.0/24"}],
            "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
            "communities": [{"name": "internal", "value": "64512:100"}, {"name": "big", "value": "4200000000:1:2"}],
            "prefixAdvertisements": [{"cidr": "10.244.0.0/16", "communities": ["internal", "64512:200"]}],
            "nodeMeshPassword": {"secretKeyRef": {"name": "bgp", "key": "password"}},
            "nodeMeshMaxRestartTime": "120s",
            "bindMode": "NodeIP",
            "ignoredInterfaces": ["docker*"],
            "localWorkloadPeeringIPV4": "169.254.0.179",
            "localWorkloadPeeringIPV6": "fe80::179"
        }),
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"logSeverityScreen": "Loud"}),
        "spec.logSeverityScreen",
        &["Info"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"listenPort": 0}),
        "spec.listenPort",
        &["1 to 65535"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"listenPort": 70000}),
        "spec.listenPort",
        &["invalid value"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"serviceClusterIPs": [{"cidr": "10.96.0.1/12"}]}),
        "spec.serviceClusterIPs[0].cidr",
        &["did you mean 10.96.0.0/12?"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"communities": [{"name": "x", "value": "70000:1"}]}),
        "spec.communities[0].value",
        &["16-bit"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nosuch"]}]}),
        "spec.prefixAdvertisements[0].communities[0]",
        &["name of an entry in communities"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"bindMode": "Any"}),
        "spec.bindMode",
        &["unknown variant"],
    );
    assert_invalid(
        "BGPConfigurationSpec",
        json!({"localWorkloadPeeringIPV4": "fe80::1"}),
        "spec.localWorkloadPeeringIPV4",
        &["wrong IP family"],
    );
}

#[test]
fn node_bgp_addresses_have_the_right_family() {
    assert_valid(
        "NodeSpec",
        json!({"bgp": {"ipv4Address": "192.0.2.10/24", "ipv6Address": "2001:db8::10/64", "asNumber": 65001, "ipv4IPIPTunnelAddr": "10.244.3.1", "routeReflectorClusterID": "224.0.0.1"}}),
    );
    assert_valid("NodeSpec", json!({"bgp": {"ipv4Address": "192.0.2.10"}}));
    assert_invalid(
        "NodeSpec",
        json!({"bgp": {"ipv4Address": "2001:db8::10/64"}}),
        "spec.bgp.ipv4Address",
        &["wrong IP family"],
    );
    assert_invalid(
        "NodeSpec",
        json!({"bgp": {"ipv6Address": "192.0.2.10/24"}}),
        "spec.bgp.ipv6Address",
        &["wrong IP family"],
    );
    assert_invalid(
        "NodeSpec",
        json!({"bgp": {"ipv4Address": "192.0.2.10/33"}}),
        "spec.bgp.ipv4Address",
        &["not an address"],
    );
    assert_invalid(
        "NodeSpec",
        json!({"bgp": {"routeReflectorClusterID": "rr1"}}),
        "spec.bgp.routeReflectorClusterID",
        &["IPv4"],
    );
    assert_invalid(
        "NodeSpec",
        json!({"bgp": {"ipv4IPIPTunnelAddr": "fd00::1"}}),
        "spec.bgp.ipv4IPIPTunnelAddr",
        &["wrong IP family"],
    );
}

#[test]
fn felix_keywords_ignore_case_but_not_spelling() {
    assert_valid(
        "FelixConfigurationSpec",
        json!({
            "logSeverityScreen": "debug",
            "iptablesMangleAllowAction": "Return",
            "iptablesFilterAllowAction": "ACCEPT",
            "iptablesFilterDenyAction": "Reject",
            "defaultEndpointToHostAction": "Accept",
            "chainInsertMode": "Append"
        }),
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"iptablesMangleAllowAction": "Drop"}),
        "spec.iptablesMangleAllowAction",
        &["Accept, Return"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"iptablesFilterDenyAction": "Accept"}),
        "spec.iptablesFilterDenyAction",
        &["Drop, Reject"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"defaultEndpointToHostAction": "Allow"}),
        "spec.defaultEndpointToHostAction",
        &["Drop, Accept, Return"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"chainInsertMode": "Prepend"}),
        "spec.chainInsertMode",
        &["Insert, Append"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"logSeverityScreen": "Verbose"}),
        "spec.logSeverityScreen",
        &["Info"],
    );
}

#[test]
fn felix_numbers_and_addresses() {
    assert_valid(
        "FelixConfigurationSpec",
        json!({
            "vxlanMTU": 1450, "vxlanMTUV6": 1430, "ipipMTU": 1480, "wireguardMTU": 1420,
            "vxlanEnabled": true, "vxlanPort": 4789, "vxlanVNI": 4096, "ipipEnabled": false,
            "healthEnabled": true, "healthPort": 9099, "prometheusMetricsEnabled": true,
            "prometheusMetricsPort": 9091, "natPortRange": "32768:65535",
            "natOutgoingAddress": "192.0.2.50", "routeRefreshInterval": "90s",
            "reportingInterval": "0", "routeTableRange": {"min": 1, "max": 250},
            "openstackRegion": "region-one", "bpfEnabled": false, "removeExternalRoutes": true,
            "interfacePrefix": "cali", "mtuIfacePattern": "^(en|eth).*",
            "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}, {"protocol": "UDP", "port": 68, "net": "0.0.0.0/0"}],
            "failsafeOutboundHostPorts": []
        }),
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"vxlanVNI": 0}),
        "spec.vxlanVNI",
        &["1 to 16777215"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"vxlanVNI": 16777216}),
        "spec.vxlanVNI",
        &["1 to 16777215"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"vxlanPort": 0}),
        "spec.vxlanPort",
        &["1 to 65535"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"healthPort": 65536}),
        "spec.healthPort",
        &["1 to 65535"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"natPortRange": "65535:32768"}),
        "spec.natPortRange",
        &["starts after it ends"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"natOutgoingAddress": "me"}),
        "spec.natOutgoingAddress",
        &["not an IP address"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"routeRefreshInterval": "90"}),
        "spec.routeRefreshInterval",
        &["not a duration"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"routeTableRange": {"min": 200, "max": 100}}),
        "spec.routeTableRange",
        &["min must not be above max"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"routeTableRange": {"min": 0, "max": 100}}),
        "spec.routeTableRange.min",
        &["1 to 250"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"openstackRegion": "FOO"}),
        "spec.openstackRegion",
        &["DNS label"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"failsafeInboundHostPorts": [{"protocol": "icmp", "port": 1}]}),
        "spec.failsafeInboundHostPorts[0].protocol",
        &["TCP, UDP, SCTP"],
    );
    assert_invalid(
        "FelixConfigurationSpec",
        json!({"failsafeInboundHostPorts": [{"port": 22, "net": "10.0.0.1/8"}]}),
        "spec.failsafeInboundHostPorts[0].net",
        &["did you mean 10.0.0.0/8?"],
    );
}

#[test]
fn felix_keeps_fields_it_does_not_know() {
    let value = json!({"logSeverityScreen": "Info", "bpfMapSizeRoute": 262144, "someFutureSetting": {"a": 1}});
    assert_valid("FelixConfigurationSpec", value.clone());
    let spec: tortie_crds::felix::FelixConfigurationSpec =
        serde_json::from_value(value.clone()).expect("unknown fields are accepted");
    assert_eq!(serde_json::to_value(&spec).expect("serializes"), value);
}

#[test]
fn node_network_config_rules() {
    let spec: tortie_crds::node_network_config::NodeNetworkConfigSpec = serde_json::from_value(json!({
        "nodeName": "n1",
        "blocks": [{"cidr": "10.244.1.0/26", "pool": "default"}, {"cidr": "10.244.1.65/26", "pool": "default"}],
        "routes": [{"destination": "10.244.2.0/26", "node": "n2", "via": "198.18.0.2", "encapsulation": "Vxlan"}],
        "bgp": {"enabled": true, "asNumber": 64512, "routerId": "198.18.0.1", "listenPort": 179,
                "sessions": [{"name": "mesh-n2", "peerIP": "198.18.0.2", "asNumber": 64512, "kind": "Mesh"},
                             {"name": "mesh-n2", "peerIP": "198.18.0.3", "asNumber": 64512, "kind": "Mesh"}]}
    })).expect("a node config");
    let errors = spec.validate().expect_err("three rules are broken");
    let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "blocks[1].cidr",
            "routes[0].tunnelAddress",
            "bgp.sessions[1].name"
        ],
        "{errors}"
    );
}
