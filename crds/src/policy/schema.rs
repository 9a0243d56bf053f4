//! Schemas for list fields whose entries carry their own CEL rule, so the API server names
//! the entry (`spec.nets[3]`) rather than the whole list.

use schemars::{Schema, SchemaGenerator, json_schema};

use super::{MAX_NET_LEN, MAX_NETS_PER_ENTITY, MAX_NETS_PER_SET};

/// CEL on a CIDR entry.
pub const CIDR_OR_IP_RULE: &str = "isCIDR(self) || isIP(self)";
/// CEL on an IP address entry.
pub const IP_RULE: &str = "isIP(self)";

const CIDR_MESSAGE: &str = "must be a CIDR such as 10.0.0.0/8 or fd00::/8, or a single IP address";
const IP_MESSAGE: &str = "must be an IP address such as 10.0.0.1 or fd00::1";

fn string_list(
    description: &str,
    max_items: usize,
    max_len: usize,
    rule: &str,
    message: &str,
) -> Schema {
    json_schema!({
        "description": description,
        "type": "array",
        "maxItems": max_items,
        "items": {
            "type": "string",
            "maxLength": max_len,
            "x-kubernetes-validations": [{ "rule": rule, "message": message }]
        }
    })
}

/// `nets` and `notNets` of a rule's source or destination.
pub fn entity_nets(_: &mut SchemaGenerator) -> Schema {
    string_list(
        "CIDRs (or single IP addresses) to match.",
        MAX_NETS_PER_ENTITY,
        MAX_NET_LEN,
        CIDR_OR_IP_RULE,
        CIDR_MESSAGE,
    )
}

/// `nets` of a NetworkSet or GlobalNetworkSet.
pub fn set_nets(_: &mut SchemaGenerator) -> Schema {
    string_list(
        "The CIDRs (or single IP addresses) in the set.",
        MAX_NETS_PER_SET,
        MAX_NET_LEN,
        CIDR_OR_IP_RULE,
        CIDR_MESSAGE,
    )
}

/// `expectedIPs` of a host endpoint.
pub fn ip_list(_: &mut SchemaGenerator) -> Schema {
    string_list(
        "IP addresses the interface is expected to have.",
        64,
        MAX_NET_LEN,
        IP_RULE,
        IP_MESSAGE,
    )
}

/// A short list of object names (service accounts, profiles).
pub fn small_name_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 256,
        "items": { "type": "string", "maxLength": 253 }
    })
}
