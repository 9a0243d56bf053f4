//! NetworkSet and GlobalNetworkSet: named lists of CIDRs that policy selectors match by
//! the set's labels.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MAX_NETS_PER_SET, check_nets, check_object_name, schema::set_nets};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Addresses that the policies of one namespace can select by this set's labels.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    kind = "NetworkSet",
    plural = "networksets",
    singular = "networkset",
    namespaced,
    derive = "PartialEq",
    doc = "Calico NetworkSet: a labelled list of CIDRs that the policies of its namespace \
           can select."
)]
pub struct NetworkSetSpec {
    /// The CIDRs in the set; a bare IP address stands for a /32 or /128.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "set_nets")]
    pub nets: Vec<String>,
}

/// Addresses that policies anywhere can select by this set's labels.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    kind = "GlobalNetworkSet",
    plural = "globalnetworksets",
    singular = "globalnetworkset",
    derive = "PartialEq",
    doc = "Calico GlobalNetworkSet: a labelled list of CIDRs that policies in every \
           namespace can select."
)]
pub struct GlobalNetworkSetSpec {
    /// The CIDRs in the set; a bare IP address stands for a /32 or /128.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "set_nets")]
    pub nets: Vec<String>,
}

impl Validate for NetworkSetSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_nets(&self.nets, MAX_NETS_PER_SET, &path.child("nets"), errors);
    }
}

impl Validate for GlobalNetworkSetSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_nets(&self.nets, MAX_NETS_PER_SET, &path.child("nets"), errors);
    }
}

impl Validate for NetworkSet {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_object_name(&self.metadata, "NetworkSet", path, errors);
        self.spec.validate_at(&path.child("spec"), errors);
    }
}

impl Validate for GlobalNetworkSet {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_object_name(&self.metadata, "GlobalNetworkSet", path, errors);
        self.spec.validate_at(&path.child("spec"), errors);
    }
}
