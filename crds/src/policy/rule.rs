//! A policy rule and the parts it is made of.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    MAX_NETS_PER_ENTITY, MAX_PORTS_PER_ENTITY, MAX_SELECTOR_LEN, check_selector, net_family,
    port::Port,
    protocol::Protocol,
    schema::{entity_nets, small_name_list},
};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// What happens to traffic a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Accept the traffic; later rules and policies are not consulted.
    Allow,
    /// Drop the traffic.
    Deny,
    /// Log the packet and go on with the next rule.
    Log,
    /// Skip the rest of this tier and go on with the next one (or the profiles).
    Pass,
}

/// CEL on a rule: `<side>.<list>` (ports or notPorts) needs a protocol that has ports.
pub fn ports_rule(side: &str, list: &str) -> String {
    format!(
        "!has(self.{side}) || !has(self.{side}.{list}) || size(self.{side}.{list}) == 0 || \
         (has(self.protocol) && (type(self.protocol) == string ? \
         self.protocol in ['TCP', 'UDP', 'SCTP', 'UDPLite', '6', '17', '132', '136'] : \
         self.protocol in [6, 17, 132, 136]))"
    )
}

fn ports_message(side: &str, list: &str) -> String {
    format!("{side}.{list} {PORTS_MESSAGE_TAIL}")
}

/// CEL on a rule: ICMPv6 only with IPv6.
pub const ICMPV6_VERSION_RULE: &str = "!has(self.ipVersion) || !has(self.protocol) || \
     self.ipVersion == 6 || !(self.protocol == 'ICMPv6' || self.protocol == 58 || \
     self.protocol == '58')";
/// CEL on a rule: ICMP only with IPv4.
pub const ICMP_VERSION_RULE: &str = "!has(self.ipVersion) || !has(self.protocol) || \
     self.ipVersion == 4 || !(self.protocol == 'ICMP' || self.protocol == 1 || \
     self.protocol == '1')";

/// CEL on a rule: every entry of `<side>.<list>` is of the family `ipVersion` names.
/// Entries that are no address at all are reported by the entry's own rule.
pub fn family_rule(side: &str, list: &str) -> String {
    format!(
        "!has(self.ipVersion) || !has(self.{side}) || !has(self.{side}.{list}) || \
         self.{side}.{list}.all(n, (isCIDR(n) ? cidr(n).ip().family() : \
         (isIP(n) ? ip(n).family() : self.ipVersion)) == self.ipVersion)"
    )
}

fn family_message(side: &str, list: &str) -> String {
    format!(
        "{side}.{list}: every CIDR must be of the IP family ipVersion names \
         (IPv4 for 4, IPv6 for 6); remove ipVersion or the other family's CIDRs"
    )
}

const PORTS_MESSAGE_TAIL: &str = "need protocol TCP, UDP, SCTP or UDPLite (or 6, 17, 132, 136); \
     set protocol or remove the ports";

/// One rule of a policy: an action and what traffic it applies to.
///
/// Every match field that is set must match; unset fields match everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(ports_rule("source", "ports"))
        .message(ports_message("source", "ports").as_str())
        .field_path(".source.ports"),
    validation = Rule::new(ports_rule("source", "notPorts"))
        .message(ports_message("source", "notPorts").as_str())
        .field_path(".source.notPorts"),
    validation = Rule::new(ports_rule("destination", "ports"))
        .message(ports_message("destination", "ports").as_str())
        .field_path(".destination.ports"),
    validation = Rule::new(ports_rule("destination", "notPorts"))
        .message(ports_message("destination", "notPorts").as_str())
        .field_path(".destination.notPorts"),
    validation = Rule::new(ICMPV6_VERSION_RULE)
        .message("ipVersion must be 6 (or unset) when protocol is ICMPv6")
        .field_path(".ipVersion"),
    validation = Rule::new(ICMP_VERSION_RULE)
        .message("ipVersion must be 4 (or unset) when protocol is ICMP")
        .field_path(".ipVersion"),
    validation = Rule::new(family_rule("source", "nets"))
        .message(family_message("source", "nets").as_str())
        .field_path(".source.nets"),
    validation = Rule::new(family_rule("source", "notNets"))
        .message(family_message("source", "notNets").as_str())
        .field_path(".source.notNets"),
    validation = Rule::new(family_rule("destination", "nets"))
        .message(family_message("destination", "nets").as_str())
        .field_path(".destination.nets"),
    validation = Rule::new(family_rule("destination", "notNets"))
        .message(family_message("destination", "notNets").as_str())
        .field_path(".destination.notNets"),
)]
pub struct Rule {
    /// What to do with matching traffic: Allow, Deny, Log or Pass.
    pub action: Action,

    /// Match only IPv4 (4) or only IPv6 (6) traffic. Unset matches both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [4, 6]))]
    pub ip_version: Option<u8>,

    /// Match only this IP protocol. Needed for `ports` and `notPorts` (TCP, UDP, SCTP or
    /// UDPLite) and for `icmp` (ICMP or ICMPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// Match only this ICMP type and code. Meaningful with protocol ICMP or ICMPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,

    /// Match every protocol but this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,

    /// Match every ICMP type and code but this one.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,

    /// Where the traffic comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,

    /// Where the traffic goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,

    /// Match HTTP requests by method and path. Needs an HTTP-aware data path to take
    /// effect; the kernel data path cannot see requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMatch>,

    /// Free-form data about the rule, kept with it and shown in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

/// An ICMP type and code to match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.code) || has(self.type)")
    .message("icmp code needs a type: the data path can only match a code within a type; set type")
    .field_path(".code"))]
pub struct IcmpFields {
    /// The ICMP type, 0 to 254 (for example 8 is echo request).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 254))]
    pub icmp_type: Option<u8>,

    /// The ICMP code within the type, 0 to 255. Needs `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub code: Option<u8>,
}

/// The source or destination side of a rule. Every field that is set must match.
///
/// Known limitation: a side holds at most 128 CIDRs and 64 ports per list, so the API
/// server's cost estimate for the CEL rules stays within its budget; put longer address
/// lists in a NetworkSet and select it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// Match addresses in these CIDRs (a bare IP is a /32 or /128).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "entity_nets")]
    pub nets: Vec<String>,

    /// Match endpoints (and network sets) whose labels this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub selector: Option<String>,

    /// Look for `selector` matches in the namespaces this selector matches, instead of
    /// the policy's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub namespace_selector: Option<String>,

    /// Match traffic to or from these Kubernetes services' endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceMatch>,

    /// Match these ports. Needs protocol TCP, UDP, SCTP or UDPLite on the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PORTS_PER_ENTITY))]
    pub ports: Vec<Port>,

    /// Match addresses outside these CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "entity_nets")]
    pub not_nets: Vec<String>,

    /// Match endpoints whose labels this selector does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub not_selector: Option<String>,

    /// Match every port but these. Needs protocol TCP, UDP, SCTP or UDPLite on the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PORTS_PER_ENTITY))]
    pub not_ports: Vec<Port>,

    /// Match pods running as these service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
}

/// Service accounts a rule matches, by name, by label, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceAccountMatch {
    /// Match service accounts with these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "small_name_list")]
    pub names: Vec<String>,

    /// Match service accounts whose labels this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub selector: Option<String>,
}

/// A Kubernetes service, by name and namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceMatch {
    /// The service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,

    /// The service's namespace; unset means the policy's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

/// HTTP request attributes a rule matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HttpMatch {
    /// Match requests with one of these methods (GET, POST, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32)))]
    pub methods: Vec<String>,

    /// Match requests whose path matches one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub paths: Vec<HttpPath>,
}

/// One HTTP path to match: exactly one of `exact` or `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.exact) != has(self.prefix)")
    .message("http path must set exactly one of exact or prefix"))]
pub struct HttpPath {
    /// Match this path exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,

    /// Match paths that start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
}

/// Data kept with a rule that does not change what it matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RuleMetadata {
    /// Free-form key/value pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    /// A rule with this action that matches all traffic.
    pub fn new(action: Action) -> Self {
        Self {
            action,
            ip_version: None,
            protocol: None,
            icmp: None,
            not_protocol: None,
            not_icmp: None,
            source: None,
            destination: None,
            http: None,
            metadata: None,
        }
    }
}

impl Validate for Rule {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(v) = self.ip_version
            && v != 4
            && v != 6
        {
            errors.push(
                &path.child("ipVersion"),
                format!("ipVersion must be 4 or 6, not {v}"),
            );
        }

        for (name, protocol) in [
            ("protocol", &self.protocol),
            ("notProtocol", &self.not_protocol),
        ] {
            if let Some(p) = protocol {
                p.validate_at(&path.child(name), errors);
            }
        }
        self.check_icmp_version(path, errors);

        for (name, icmp) in [("icmp", &self.icmp), ("notICMP", &self.not_icmp)] {
            if let Some(icmp) = icmp {
                icmp.validate_at(&path.child(name), errors);
            }
        }

        for (name, side) in [("source", &self.source), ("destination", &self.destination)] {
            let Some(side) = side else { continue };
            let side_path = path.child(name);
            side.validate_at(&side_path, errors);
            self.check_ports_protocol(name, side, &side_path, errors);
            self.check_families(name, side, &side_path, errors);
        }

        if let Some(http) = &self.http {
            http.validate_at(&path.child("http"), errors);
        }
    }
}

impl Rule {
    fn check_icmp_version(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        let (Some(version), Some(protocol)) = (self.ip_version, self.protocol) else {
            return;
        };
        if protocol.is_icmp_v6() && version != 6 {
            errors.push(
                &path.child("ipVersion"),
                format!(
                    "ipVersion must be 6 (or unset) when protocol is {protocol}, not {version}"
                ),
            );
        }
        if protocol.is_icmp_v4() && version != 4 {
            errors.push(
                &path.child("ipVersion"),
                format!(
                    "ipVersion must be 4 (or unset) when protocol is {protocol}, not {version}"
                ),
            );
        }
    }

    fn check_ports_protocol(
        &self,
        side_name: &str,
        side: &EntityRule,
        side_path: &FieldPath,
        errors: &mut ValidationErrors,
    ) {
        if self.protocol.is_some_and(Protocol::supports_ports) {
            return;
        }
        let protocol = match self.protocol {
            Some(p) => format!("protocol {p}"),
            None => "no protocol".to_owned(),
        };
        for (list, ports) in [("ports", &side.ports), ("notPorts", &side.not_ports)] {
            if !ports.is_empty() {
                errors.push(
                    &side_path.child(list),
                    format!("{side_name}.{list} with {protocol}: ports {PORTS_MESSAGE_TAIL}"),
                );
            }
        }
    }

    fn check_families(
        &self,
        side_name: &str,
        side: &EntityRule,
        side_path: &FieldPath,
        errors: &mut ValidationErrors,
    ) {
        let Some(version) = self.ip_version else {
            return;
        };
        for (list, nets) in [("nets", &side.nets), ("notNets", &side.not_nets)] {
            for (i, net) in nets.iter().enumerate() {
                if let Some(family) = net_family(net)
                    && family != version
                {
                    errors.push(
                        &side_path.child(list).index(i),
                        format!(
                            "{net:?} is IPv{family} but ipVersion is {version}: {}",
                            family_message(side_name, list)
                        ),
                    );
                }
            }
        }
    }
}

impl Validate for IcmpFields {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(t) = self.icmp_type
            && t > 254
        {
            errors.push(
                &path.child("type"),
                format!("icmp type must be from 0 to 254, not {t}"),
            );
        }
        if self.code.is_some() && self.icmp_type.is_none() {
            errors.push(
                &path.child("code"),
                "icmp code needs a type: the data path can only match a code within a type; \
                 set type",
            );
        }
    }
}

impl Validate for EntityRule {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        for (name, nets) in [("nets", &self.nets), ("notNets", &self.not_nets)] {
            super::check_nets(nets, MAX_NETS_PER_ENTITY, &path.child(name), errors);
        }

        for (name, selector) in [
            ("selector", &self.selector),
            ("notSelector", &self.not_selector),
            ("namespaceSelector", &self.namespace_selector),
        ] {
            check_selector(selector.as_deref(), &path.child(name), errors);
        }

        for (name, ports) in [("ports", &self.ports), ("notPorts", &self.not_ports)] {
            let list_path = path.child(name);
            if ports.len() > MAX_PORTS_PER_ENTITY {
                errors.push(
                    &list_path,
                    format!("{name} may hold at most {MAX_PORTS_PER_ENTITY} entries"),
                );
            }
            for (i, port) in ports.iter().enumerate() {
                port.validate_at(&list_path.index(i), errors);
            }
        }

        if let Some(accounts) = &self.service_accounts {
            check_selector(
                accounts.selector.as_deref(),
                &path.child("serviceAccounts").child("selector"),
                errors,
            );
        }
    }
}

impl Validate for HttpMatch {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        for (i, p) in self.paths.iter().enumerate() {
            if p.exact.is_some() == p.prefix.is_some() {
                errors.push(
                    &path.child("paths").index(i),
                    "http path must set exactly one of exact or prefix",
                );
            }
        }
    }
}
