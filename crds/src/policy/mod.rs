//! Calico's policy kinds: NetworkPolicy, GlobalNetworkPolicy, NetworkSet,
//! GlobalNetworkSet and HostEndpoint, with the rules their schemas state (as OpenAPI
//! constraints and CEL) written once more in Rust.
//!
//! Field names and wire formats follow Calico's v3 API, a superset of v3.8, so manifests
//! written for Calico apply unchanged.
//!
//! Known limitation: CEL cannot parse Calico's selector language, so the API server stores
//! a policy with a malformed selector; [`Validate`] refuses it, and the operator reports it
//! in the policy's status.

#![warn(missing_docs)]

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;

use crate::{
    selector::Selector,
    validation::{FieldPath, Validate, ValidationErrors},
};

pub mod host_endpoint;
pub mod network_policy;
pub mod network_set;
pub mod port;
pub mod protocol;
pub mod rule;
pub mod schema;

pub use host_endpoint::{EndpointPort, HostEndpoint, HostEndpointSpec};
pub use network_policy::{
    GlobalNetworkPolicy, GlobalNetworkPolicySpec, NetworkPolicy, NetworkPolicySpec,
    PerformanceHint, PolicyStatus, PolicyType,
};
pub use network_set::{GlobalNetworkSet, GlobalNetworkSetSpec, NetworkSet, NetworkSetSpec};
pub use port::Port;
pub use protocol::{Protocol, ProtocolName};
pub use rule::{
    Action, EntityRule, HttpMatch, HttpPath, IcmpFields, Rule, RuleMetadata, ServiceAccountMatch,
    ServiceMatch,
};

/// Longest selector string. Long enough for generated `in {...}` lists; bounded so no
/// single object grows without limit.
pub const MAX_SELECTOR_LEN: usize = 4096;
/// Most rules per direction of one policy (bounds the CEL cost estimate).
pub const MAX_RULES_PER_DIRECTION: usize = 256;
/// Most entries in one `nets` or `notNets` list of a rule (bounds the CEL cost estimate).
pub const MAX_NETS_PER_ENTITY: usize = 128;
/// Most entries in one `ports` or `notPorts` list of a rule (bounds the CEL cost estimate).
pub const MAX_PORTS_PER_ENTITY: usize = 64;
/// Most CIDRs in one network set.
pub const MAX_NETS_PER_SET: usize = 10_000;
/// Longest CIDR string: the longest IPv6 form with a prefix is 49 characters.
pub const MAX_NET_LEN: usize = 64;
/// A DNS subdomain (RFC 1123), what Kubernetes and Calico allow for these names.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The CustomResourceDefinitions of the policy kinds.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        NetworkPolicy::crd(),
        GlobalNetworkPolicy::crd(),
        NetworkSet::crd(),
        GlobalNetworkSet::crd(),
        HostEndpoint::crd(),
    ]
}

/// Reads `value` as the kind (or part of a kind) `kind` names and checks it.
///
/// `kind` is a whole kind (`GlobalNetworkPolicy`, `NetworkPolicy`: a whole object when
/// `value` has `metadata` and `spec`, else its spec), a spec (`HostEndpointSpec`,
/// `NetworkSetSpec`, `GlobalNetworkSetSpec`) or a part of a policy (`Rule`, `EntityRule`,
/// `ICMPFields`, `Protocol`). `None` when `kind` is not one of these.
pub fn validate_value(
    kind: &str,
    value: &serde_json::Value,
) -> Option<Result<(), ValidationErrors>> {
    let whole = is_whole_object(value);
    let result = match kind {
        "Rule" => check::<Rule>(value),
        "EntityRule" => check::<EntityRule>(value),
        "ICMPFields" => check::<IcmpFields>(value),
        "Protocol" => check::<Protocol>(value),
        "GlobalNetworkPolicy" if whole => check::<GlobalNetworkPolicy>(value),
        "GlobalNetworkPolicy" => check::<GlobalNetworkPolicySpec>(value),
        "NetworkPolicy" if whole => check::<NetworkPolicy>(value),
        "NetworkPolicy" => check::<NetworkPolicySpec>(value),
        "HostEndpoint" if whole => check::<HostEndpoint>(value),
        "HostEndpoint" | "HostEndpointSpec" => check::<HostEndpointSpec>(value),
        "GlobalNetworkSet" if whole => check::<GlobalNetworkSet>(value),
        "GlobalNetworkSet" | "GlobalNetworkSetSpec" => check::<GlobalNetworkSetSpec>(value),
        "NetworkSet" if whole => check::<NetworkSet>(value),
        "NetworkSet" | "NetworkSetSpec" => check::<NetworkSetSpec>(value),
        _ => return None,
    };
    Some(result)
}

/// Reads `value` as a `T`; a value of the wrong shape is reported with the path of the
/// field that broke, like any other broken rule.
pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ValidationErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            FieldPath::root()
        } else {
            FieldPath::new(&path)
        };
        let mut errors = ValidationErrors::default();
        errors.push(&field, e.into_inner().to_string());
        errors
    })
}

fn check<T: DeserializeOwned + Validate>(
    value: &serde_json::Value,
) -> Result<(), ValidationErrors> {
    from_value::<T>(value)?.validate()
}

fn is_whole_object(value: &serde_json::Value) -> bool {
    value.get("metadata").is_some() && value.get("spec").is_some()
}

/// Whether `name` is a DNS subdomain: at most 253 lowercase letters, digits, '-' and
/// '.', in dot-separated parts that start and end with a letter or digit.
pub fn is_dns_subdomain(name: &str) -> bool {
    let part_ok = |part: &str| {
        let b = part.as_bytes();
        let end_ok =
            |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        end_ok(b.first())
            && end_ok(b.last())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(part_ok)
}

/// The IP family (4 or 6) of a CIDR or bare address; `None` when it is neither.
pub fn net_family(net: &str) -> Option<u8> {
    let ip = match net.parse::<IpNet>() {
        Ok(n) => n.addr(),
        Err(_) => net.parse::<IpAddr>().ok()?,
    };
    Some(if ip.is_ipv4() { 4 } else { 6 })
}

pub(crate) fn check_nets(
    nets: &[String],
    max: usize,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    if nets.len() > max {
        errors.push(
            path,
            format!("at most {max} CIDRs; put longer lists in a NetworkSet"),
        );
    }
    for (i, net) in nets.iter().enumerate() {
        if net.len() > MAX_NET_LEN || net_family(net).is_none() {
            errors.push(
                &path.index(i),
                format!(
                    "{net:?} must be a CIDR such as 10.0.0.0/8 or fd00::/8, or a single IP \
                     address"
                ),
            );
        }
    }
}

pub(crate) fn check_selector(
    selector: Option<&str>,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    // Calico reads an empty selector as no selector.
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return;
    };
    if selector.len() > MAX_SELECTOR_LEN {
        errors.push(
            path,
            format!("selector is longer than {MAX_SELECTOR_LEN} characters"),
        );
        return;
    }
    if let Err(e) = Selector::parse(selector) {
        errors.push(path, format!("not a valid selector: {e}"));
    }
}

pub(crate) fn check_object_name(
    meta: &ObjectMeta,
    kind: &str,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    let name_path = path.child("metadata").child("name");
    match meta.name.as_deref() {
        None if meta.generate_name.is_some() => {}
        None | Some("") => errors.push(&name_path, format!("a {kind} needs metadata.name")),
        Some(name) if !is_dns_subdomain(name) => errors.push(
            &name_path,
            format!(
                "{kind} name {name:?} must be at most 253 lowercase letters, digits, '-' and \
                 '.', starting and ending with a letter or digit"
            ),
        ),
        Some(_) => {}
    }
}
