//! IPAMHandle: who holds addresses, and in which blocks.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names;
use super::schema::{self, null_as_default};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// One holder of addresses, usually one pod interface (`k8s-pod-network.<container
/// ID>`), with how many addresses it holds in each block. Written before the blocks, so
/// a crash leaves a handle to clean up instead of an address nobody knows about.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    singular = "ipamhandle",
    doc = "A holder of addresses, usually one pod interface, and how many it holds in each block (Calico's IPAM format).",
    printcolumn(name = "Handle", type_ = "string", json_path = ".spec.handleID")
)]
pub struct IPAMHandleSpec {
    /// The handle ID as the allocating plugin wrote it; the object's name is this ID in
    /// lower case.
    #[serde(rename = "handleID")]
    pub handle_id: String,

    /// How many addresses the handle holds in each block, keyed by the block's CIDR (for
    /// example `10.244.1.64/26`). Blocks where it holds nothing are left out.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "schema::count_map")]
    pub block: BTreeMap<String, u64>,

    /// Set just before the handle is deleted, so that a writer holding an old copy gets
    /// a conflict. Never set by hand.
    #[serde(default)]
    pub deleted: bool,
}

impl IPAMHandle {
    /// A handle holding nothing yet, named as Calico names it.
    pub fn new_empty(handle_id: &str) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(names::handle_name(handle_id)),
                ..ObjectMeta::default()
            },
            spec: IPAMHandleSpec {
                handle_id: handle_id.to_owned(),
                block: BTreeMap::new(),
                deleted: false,
            },
        }
    }
}

impl IPAMHandleSpec {
    /// Records `count` more addresses held in `block`.
    pub fn add(&mut self, block: &IpNet, count: u64) {
        if count > 0 {
            *self.block.entry(block.to_string()).or_default() += count;
        }
    }

    /// Records `count` fewer addresses held in `block`, dropping the entry at zero.
    /// Taking away more than is recorded leaves zero: a release must always succeed.
    pub fn remove(&mut self, block: &IpNet, count: u64) {
        let key = block.to_string();
        if let Some(held) = self.block.get_mut(&key) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                self.block.remove(&key);
            }
        }
    }

    /// How many addresses the handle holds in all blocks.
    pub fn total(&self) -> u64 {
        self.block.values().sum()
    }

    /// Whether the handle holds nothing (and can be deleted).
    pub fn is_empty(&self) -> bool {
        self.block.values().all(|&n| n == 0)
    }
}

impl Validate for IPAMHandleSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if self.handle_id.is_empty() {
            errors.push(&path.child("handleID"), "must not be empty");
        }
        for key in self.block.keys() {
            let field = path.child("block").child(key);
            match key.parse::<IpNet>() {
                Ok(cidr) if cidr.trunc() == cidr => {}
                Ok(cidr) => errors.push(
                    &field,
                    format!(
                        "key {key:?} is not a block CIDR; did you mean {}?",
                        cidr.trunc()
                    ),
                ),
                Err(_) => errors.push(
                    &field,
                    format!("key {key:?} is not a CIDR such as 10.244.1.64/26"),
                ),
            }
        }
    }
}

impl Validate for IPAMHandle {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        self.spec.validate_at(&path.child("spec"), errors);
        let expected = names::handle_name(&self.spec.handle_id);
        if let Some(name) = &self.metadata.name
            && *name != expected
        {
            errors.push(
                &path.child("metadata").child("name"),
                format!("must be {expected:?}, spec.handleID in lower case"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_block_in_calico_shape() {
        let block: IpNet = "10.244.1.64/26".parse().expect("test CIDR parses");
        let mut handle = IPAMHandle::new_empty("k8s-pod-network.ABC");
        assert_eq!(handle.metadata.name.as_deref(), Some("k8s-pod-network.abc"));

        handle.spec.add(&block, 2);
        assert_eq!(
            serde_json::to_value(&handle.spec).expect("spec serializes"),
            serde_json::json!({
                "handleID": "k8s-pod-network.ABC",
                "block": { "10.244.1.64/26": 2 },
                "deleted": false
            })
        );

        handle.spec.remove(&block, 1);
        assert_eq!(handle.spec.total(), 1);
        handle.spec.remove(&block, 5);
        assert!(handle.spec.is_empty());
        assert!(handle.spec.block.is_empty());
        assert!(handle.validate().is_ok());
    }

    #[test]
    fn bad_block_keys_are_named() {
        let mut handle = IPAMHandle::new_empty("h");
        handle.spec.block.insert("10.244.1.65/26".to_owned(), 1);
        handle.spec.block.insert("nonsense".to_owned(), 1);
        let text = handle
            .validate()
            .expect_err("bad keys are refused")
            .to_string();
        assert!(text.contains("did you mean 10.244.1.64/26"), "{text}");
        assert!(text.contains("not a CIDR"), "{text}");
    }
}
