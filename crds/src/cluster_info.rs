//! `ClusterInformation`: facts about the cluster as a whole, in one object named
//! `default`.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Facts about the cluster as a whole: its GUID, the kind of installation, the version
/// running, and whether the datastore is ready for use.
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "ClusterInformation",
    plural = "clusterinformations",
    singular = "clusterinformation",
    doc = "Facts about the cluster as a whole: GUID, installation type, version and datastore readiness.",
    printcolumn(name = "GUID", type_ = "string", json_path = ".spec.clusterGUID"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.calicoVersion"),
    printcolumn(name = "Ready", type_ = "boolean", json_path = ".spec.datastoreReady"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct ClusterInformationSpec {
    /// A random identifier of this cluster, made once at installation.
    #[serde(
        default,
        rename = "clusterGUID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 64))]
    pub cluster_guid: Option<String>,

    /// Comma-separated words describing the installation, such as `k8s,bgp,kubeadm`.
    #[serde(
        default,
        rename = "clusterType",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 256))]
    pub cluster_type: Option<String>,

    /// Version of the networking release running the cluster.
    #[serde(
        default,
        rename = "calicoVersion",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 64))]
    pub calico_version: Option<String>,

    /// False while a datastore migration is under way; node agents wait until it is true.
    #[serde(
        default,
        rename = "datastoreReady",
        skip_serializing_if = "Option::is_none"
    )]
    pub datastore_ready: Option<bool>,

    /// Which variant of the networking product runs the cluster, such as `Calico` or
    /// `Tortie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub variant: Option<String>,
}

impl ClusterInformationSpec {
    /// Whether node agents may use the datastore; an unset flag counts as ready.
    pub fn is_datastore_ready(&self) -> bool {
        self.datastore_ready.unwrap_or(true)
    }
}
