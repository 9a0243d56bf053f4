//! HostEndpoint: a node's interface that policy protects like a pod.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    NAME_PATTERN, check_object_name, is_dns_subdomain,
    port::{MAX_PORT_NAME_LEN, is_port_name},
    protocol::Protocol,
    schema::{ip_list, small_name_list},
};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// What Linux allows for an interface name, or `*` for all of the node's interfaces.
pub const INTERFACE_PATTERN: &str = r"^(\*|[a-zA-Z0-9_.-]{1,15})$";

/// CEL on a host endpoint spec: the node is named.
pub const NODE_REQUIRED_RULE: &str = "has(self.node) && self.node != ''";
/// CEL on a host endpoint spec: the interface can be found.
pub const INTERFACE_OR_IPS_RULE: &str = "(has(self.interfaceName) && self.interfaceName != '') \
     || (has(self.expectedIPs) && size(self.expectedIPs) > 0)";
/// CEL on an endpoint port: the protocol has ports.
pub const ENDPOINT_PORT_PROTOCOL_RULE: &str = "type(self.protocol) == string ? \
     self.protocol in ['TCP', 'UDP', 'SCTP', 'UDPLite', '6', '17', '132', '136'] : \
     self.protocol in [6, 17, 132, 136]";

const NODE_REQUIRED_MESSAGE: &str = "node is required: name the node the interface is on";
const INTERFACE_OR_IPS_MESSAGE: &str = "set interfaceName or expectedIPs (or both): \
     the endpoint must say which interface it is";
const ENDPOINT_PORT_PROTOCOL_MESSAGE: &str =
    "protocol of a named port must be TCP, UDP, SCTP or UDPLite (or 6, 17, 132, 136)";
const PORT_NAME_MESSAGE: &str = "name must be 1 to 15 lowercase letters, digits and '-', \
     with at least one letter, starting and ending with a letter or digit";

/// An interface of a node (or all of them, with `interfaceName: "*"`) that policy
/// applies to, as if it were a pod.
// kube takes one printcolumn(...) per column, so `type_` repeats by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    kind = "HostEndpoint",
    plural = "hostendpoints",
    singular = "hostendpoint",
    derive = "PartialEq",
    doc = "Calico HostEndpoint: a node's interface that policy protects like a pod.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Interface",
        type_ = "string",
        json_path = ".spec.interfaceName"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(NODE_REQUIRED_RULE)
        .message(NODE_REQUIRED_MESSAGE)
        .field_path(".node")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new(INTERFACE_OR_IPS_RULE)
        .message(INTERFACE_OR_IPS_MESSAGE)
        .field_path(".interfaceName")
        .reason(Reason::FieldValueRequired),
)]
pub struct HostEndpointSpec {
    /// The node the interface is on. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = NAME_PATTERN))]
    pub node: Option<String>,

    /// The interface's name, or `*` for every interface of the node. Unset means the
    /// interface is found by `expectedIPs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), regex(pattern = INTERFACE_PATTERN))]
    pub interface_name: Option<String>,

    /// Addresses the interface has. Policy uses them to match traffic to the endpoint
    /// from elsewhere; without interfaceName they also find the interface.
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ip_list")]
    pub expected_ips: Vec<String>,

    /// Profiles whose rules apply when no policy does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "small_name_list")]
    pub profiles: Vec<String>,

    /// Named ports on the interface, for rules that match ports by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub ports: Vec<EndpointPort>,
}

/// A named port on a host endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new(ENDPOINT_PORT_PROTOCOL_RULE)
    .message(ENDPOINT_PORT_PROTOCOL_MESSAGE)
    .field_path(".protocol"))]
pub struct EndpointPort {
    /// The name rules use to refer to the port.
    #[schemars(length(min = 1, max = MAX_PORT_NAME_LEN), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub name: String,

    /// The port's protocol: TCP, UDP, SCTP or UDPLite.
    pub protocol: Protocol,

    /// The port number.
    pub port: u16,
}

impl Validate for HostEndpointSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        match self.node.as_deref() {
            None | Some("") => errors.push(&path.child("node"), NODE_REQUIRED_MESSAGE),
            Some(node) if !is_dns_subdomain(node) => errors.push(
                &path.child("node"),
                format!("node {node:?} is not a valid node name"),
            ),
            Some(_) => {}
        }

        let has_interface = self
            .interface_name
            .as_deref()
            .is_some_and(|s| !s.is_empty());
        if !has_interface && self.expected_ips.is_empty() {
            errors.push(&path.child("interfaceName"), INTERFACE_OR_IPS_MESSAGE);
        }
        if let Some(name) = self.interface_name.as_deref()
            && !name.is_empty()
            && !is_interface_name(name)
        {
            errors.push(
                &path.child("interfaceName"),
                format!(
                    "interfaceName {name:?} must be \"*\" or 1 to 15 letters, digits, '_', '.' \
                     and '-'"
                ),
            );
        }

        let ips = path.child("expectedIPs");
        for (i, ip) in self.expected_ips.iter().enumerate() {
            if ip.parse::<std::net::IpAddr>().is_err() {
                errors.push(
                    &ips.index(i),
                    format!("{ip:?} must be an IP address such as 10.0.0.1 or fd00::1"),
                );
            }
        }

        let ports = path.child("ports");
        for (i, port) in self.ports.iter().enumerate() {
            port.validate_at(&ports.index(i), errors);
        }
    }
}

impl Validate for EndpointPort {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if !is_port_name(&self.name) {
            errors.push(
                &path.child("name"),
                format!("{:?}: {PORT_NAME_MESSAGE}", self.name),
            );
        }
        self.protocol.validate_at(&path.child("protocol"), errors);
        if !self.protocol.supports_ports() {
            errors.push(
                &path.child("protocol"),
                format!("{ENDPOINT_PORT_PROTOCOL_MESSAGE}, not {}", self.protocol),
            );
        }
    }
}

impl Validate for HostEndpoint {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_object_name(&self.metadata, "HostEndpoint", path, errors);
        self.spec.validate_at(&path.child("spec"), errors);
    }
}

fn is_interface_name(name: &str) -> bool {
    name == "*"
        || (!name.is_empty()
            && name.len() <= 15
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
}
