//! The generated schemas carry the CEL rules, ranges and bounds the API server enforces.

use kube::CustomResourceExt;
use serde_json::Value;
use tortie_crds::bgp::BGPPeer;
use tortie_crds::ippool::IPPool;
use tortie_crds::manifests;
use tortie_crds::node_network_config::NodeNetworkConfig;

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a derived CRD has a schema");
    serde_json::to_value(schema).expect("serializes")
}

fn rules_at(schema: &Value, pointer: &str) -> Vec<String> {
    schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"))
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| r["rule"].as_str().expect("a rule is text").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_has_rule(rules: &[String], needle: &str) {
    assert!(
        rules.iter().any(|r| r.contains(needle)),
        "no rule contains {needle:?}: {rules:#?}"
    );
}

#[test]
fn ippool_schema_states_every_pool_rule() {
    let schema = schema_of(&IPPool::crd());
    let cidr = rules_at(&schema, "/properties/spec/properties/cidr");
    assert_has_rule(&cidr, "isCIDR(self)");
    assert_has_rule(&cidr, "cidr(self) == cidr(self).masked()");
    assert_has_rule(&cidr, "169.254.0.0/16");
    assert_has_rule(&cidr, "fe80::/10");
    assert_has_rule(&cidr, "self == oldSelf");

    let spec = rules_at(&schema, "/properties/spec");
    assert_has_rule(&spec, "self.blockSize >= 20 && self.blockSize <= 32");
    assert_has_rule(&spec, "self.blockSize >= 116 && self.blockSize <= 128");
    assert_has_rule(&spec, "cidr(self.cidr).prefixLength() <=");
    assert_has_rule(&spec, "cidr(self.cidr).ip().family() == 4");
    assert_has_rule(&spec, "self.vxlanMode != 'Never'");
    assert_has_rule(&spec, "oldSelf.blockSize");

    let masked = &schema["properties"]["spec"]["properties"]["cidr"]["x-kubernetes-validations"][1];
    assert!(
        masked["messageExpression"]
            .as_str()
            .is_some_and(|m| m.contains("did you mean")),
        "the host-bits rule suggests the masked CIDR: {masked}"
    );

    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["ipipMode"]["default"], "Never");
    assert_eq!(spec["vxlanMode"]["default"], "Never");
    assert_eq!(spec["nodeSelector"]["default"], "all()");
    assert_eq!(
        spec["ipipMode"]["enum"],
        serde_json::json!(["Never", "Always", "CrossSubnet"])
    );
    assert!(
        spec["blockSize"].get("default").is_none(),
        "the block size default depends on the family"
    );
}

#[test]
fn bgppeer_schema_states_the_exclusions() {
    let schema = schema_of(&BGPPeer::crd());
    let spec = rules_at(&schema, "/properties/spec");
    assert_has_rule(&spec, "has(self.peerIP)");
    assert_has_rule(&spec, "has(self.nodeSelector)");
    let peer_ip = rules_at(&schema, "/properties/spec/properties/peerIP");
    assert_has_rule(&peer_ip, "isIP(self)");
    let asn = &schema["properties"]["spec"]["properties"]["asNumber"];
    assert_eq!(asn["maximum"].as_f64(), Some(4_294_967_295.0));
    assert_eq!(asn["minimum"].as_f64(), Some(0.0));
}

#[test]
fn printer_columns_show_what_people_look_for() {
    let columns = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| -> Vec<String> {
        crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .expect("printer columns")
            .iter()
            .map(|c| c.name.to_uppercase())
            .collect()
    };
    assert_eq!(
        columns(IPPool::crd()),
        [
            "CIDR",
            "BLOCK SIZE",
            "ENCAP",
            "NAT",
            "DISABLED",
            "SELECTOR",
            "USED",
            "READY",
            "AGE"
        ]
    );
    assert_eq!(
        columns(BGPPeer::crd()),
        ["PEER IP", "PEER SELECTOR", "AS", "SCOPE", "AGE"]
    );
    assert_eq!(
        columns(NodeNetworkConfig::crd()),
        ["BLOCKS", "BGP", "APPLIED", "READY", "AGE"]
    );
    let nnc = NodeNetworkConfig::crd();
    assert_eq!(nnc.spec.names.short_names, Some(vec!["nnc".to_owned()]));
    assert_eq!(nnc.spec.group, "tortie.dev");
}

/// Walks every schema node, calling `visit` with its path.
fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(&format!("{path}.{name}"), child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
}

#[test]
fn cel_rules_only_see_bounded_strings_and_lists() {
    let kinds = [
        IPPool::crd(),
        BGPPeer::crd(),
        tortie_crds::bgp::BGPConfiguration::crd(),
        tortie_crds::felix::FelixConfiguration::crd(),
        tortie_crds::cluster_info::ClusterInformation::crd(),
        NodeNetworkConfig::crd(),
    ];
    for crd in kinds {
        let schema = schema_of(&crd);
        let mut unbounded = Vec::new();
        let mut in_rule_scope = Vec::new();
        walk("", &schema, &mut |path, node| {
            if node.get("x-kubernetes-validations").is_some() {
                in_rule_scope.push(path.to_owned());
            }
        });
        walk("", &schema, &mut |path, node| {
            let under_rule = in_rule_scope
                .iter()
                .any(|scope| path.starts_with(scope.as_str()));
            let ty = node.get("type").and_then(Value::as_str);
            if under_rule
                && ty == Some("string")
                && node.get("maxLength").is_none()
                && node.get("enum").is_none()
                && node.get("format").is_none()
            {
                unbounded.push(format!("{path} (string without maxLength)"));
            }
            if under_rule && ty == Some("array") && node.get("maxItems").is_none() {
                unbounded.push(format!("{path} (list without maxItems)"));
            }
        });
        let ours: Vec<_> = unbounded
            .into_iter()
            .filter(|p| !p.starts_with(".metadata"))
            .collect();
        assert!(
            ours.is_empty(),
            "{}: CEL rules reach unbounded values, which strains the API server's cost budget: {ours:#?}",
            manifests::file_name(&crd)
        );
    }
}
