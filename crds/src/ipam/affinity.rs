//! BlockAffinity: which node owns which block.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::names;
use super::schema;
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// A node's claim on a block. A node confirms a claim after it has written itself into
/// the block's `affinity`; releasing goes through `pendingDeletion`.
// Several printer columns share a `type_`; clippy takes that for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    singular = "blockaffinity",
    doc = "A node's claim on an IPAM block (Calico's IPAM format).",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state")
)]
pub struct BlockAffinitySpec {
    /// Where the claim stands: `pending` while the node claims the block, `confirmed`
    /// once the block names the node, `pendingDeletion` while it is released.
    pub state: AffinityState,

    /// The node that owns (or claims) the block.
    pub node: String,

    /// What kind of owner `node` is: `host` for a node. Absent means `host`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub affinity_type: Option<String>,

    /// The block's CIDR, masked (for example `10.244.1.64/26`).
    #[schemars(schema_with = "schema::cidr_string")]
    pub cidr: IpNet,

    /// `"true"` just before the affinity is deleted, so that a writer holding an old copy
    /// gets a conflict. Calico stores this as a string, not a boolean.
    #[serde(default)]
    pub deleted: DeletedFlag,
}

/// Where a node's claim on a block stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AffinityState {
    /// The block names the node; the node may allocate from it.
    #[serde(rename = "confirmed")]
    Confirmed,
    /// The node is claiming the block and has not yet written the block's affinity.
    #[serde(rename = "pending")]
    Pending,
    /// The node is giving the block up.
    #[serde(rename = "pendingDeletion")]
    PendingDeletion,
}

/// A boolean that Calico stores as the string `"true"` or `"false"`. Reading accepts
/// what Go's `strconv.ParseBool` accepts, and an empty string as false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeletedFlag(pub bool);

/// The default affinity type: a node.
pub const AFFINITY_TYPE_HOST: &str = "host";

impl BlockAffinity {
    /// The affinity of `node` for the block `cidr`, named and labelled as Calico does.
    pub fn for_node(node: &str, cidr: IpNet, state: AffinityState) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(names::affinity_name(node, &cidr)),
                labels: Some(names::affinity_labels(node, AFFINITY_TYPE_HOST, &cidr)),
                ..ObjectMeta::default()
            },
            spec: BlockAffinitySpec {
                state,
                node: node.to_owned(),
                affinity_type: Some(AFFINITY_TYPE_HOST.to_owned()),
                cidr,
                deleted: DeletedFlag(false),
            },
        }
    }
}

impl BlockAffinitySpec {
    /// The affinity type, `host` when absent (older Calico releases did not write it).
    pub fn affinity_type(&self) -> &str {
        self.affinity_type.as_deref().unwrap_or(AFFINITY_TYPE_HOST)
    }
}

impl Validate for BlockAffinitySpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if self.cidr.trunc() != self.cidr {
            errors.push(
                &path.child("cidr"),
                format!(
                    "{} has bits set after the prefix; the block starting there is {}",
                    self.cidr,
                    self.cidr.trunc()
                ),
            );
        }
        if self.node.is_empty() {
            errors.push(
                &path.child("node"),
                "must name the node that owns the block",
            );
        }
        if let Some(kind) = &self.affinity_type
            && kind != AFFINITY_TYPE_HOST
            && kind != "virtual"
        {
            errors.push(
                &path.child("type"),
                format!("{kind:?} must be \"host\" or \"virtual\""),
            );
        }
    }
}

impl Validate for BlockAffinity {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        self.spec.validate_at(&path.child("spec"), errors);
        let expected = names::affinity_name(&self.spec.node, &self.spec.cidr);
        if let Some(name) = &self.metadata.name
            && *name != expected
        {
            errors.push(
                &path.child("metadata").child("name"),
                format!(
                    "must be {expected:?}, the name Calico derives from spec.node and spec.cidr"
                ),
            );
        }
    }
}

impl fmt::Display for AffinityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Confirmed => "confirmed",
            Self::Pending => "pending",
            Self::PendingDeletion => "pendingDeletion",
        })
    }
}

impl Serialize for DeletedFlag {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0 { "true" } else { "false" })
    }
}

impl<'de> Deserialize<'de> for DeletedFlag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
        match text.as_str() {
            "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Self(false)),
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Self(true)),
            other => Err(serde::de::Error::custom(format!(
                "spec.deleted: {other:?} is not \"true\" or \"false\""
            ))),
        }
    }
}

impl JsonSchema for DeletedFlag {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DeletedFlag".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "enum": ["", "0", "f", "F", "false", "FALSE", "False", "1", "t", "T", "true", "TRUE", "True"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_is_a_string_on_the_wire() {
        let affinity = BlockAffinity::for_node(
            "worker-1",
            "10.244.1.64/26".parse().expect("test CIDR parses"),
            AffinityState::Confirmed,
        );
        let json = serde_json::to_value(&affinity.spec).expect("spec serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "state": "confirmed",
                "node": "worker-1",
                "type": "host",
                "cidr": "10.244.1.64/26",
                "deleted": "false"
            })
        );
        assert_eq!(
            affinity.metadata.name.as_deref(),
            Some("worker-1-10-244-1-64-26")
        );
        assert!(affinity.validate().is_ok());
    }

    #[test]
    fn reads_what_older_calico_releases_wrote() {
        let spec: BlockAffinitySpec = serde_json::from_value(serde_json::json!({
            "state": "pendingDeletion",
            "node": "worker-2",
            "cidr": "fd00:10::/122",
            "deleted": ""
        }))
        .expect("spec without type and with an empty deleted parses");
        assert_eq!(spec.affinity_type(), "host");
        assert_eq!(spec.deleted, DeletedFlag(false));
        assert_eq!(spec.state, AffinityState::PendingDeletion);

        let deleted: DeletedFlag =
            serde_json::from_value(serde_json::json!("True")).expect("ParseBool form parses");
        assert_eq!(deleted, DeletedFlag(true));
        assert!(serde_json::from_value::<DeletedFlag>(serde_json::json!("yes")).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut affinity = BlockAffinity::for_node(
            "worker-1",
            "10.244.1.64/26".parse().expect("test CIDR parses"),
            AffinityState::Pending,
        );
        affinity.spec.cidr = "10.244.1.65/26".parse().expect("test CIDR parses");
        affinity.spec.affinity_type = Some("rack".to_owned());
        let errors = affinity
            .validate()
            .expect_err("unmasked CIDR and bad type are refused");
        let text = errors.to_string();
        assert!(
            text.contains("spec.cidr: 10.244.1.65/26 has bits set"),
            "{text}"
        );
        assert!(text.contains("spec.type"), "{text}");
        assert!(text.contains("metadata.name"), "{text}");
    }
}
