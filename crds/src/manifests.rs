//! The CustomResourceDefinitions Tortie installs, in the order they are written out.
//!
//! `crdgen` writes each to `crds/manifests/<name>.yaml`; a test fails when the committed
//! files differ from what the types generate. Adding a kind is one line in [`all`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::bgp::{BGPConfiguration, BGPPeer};
use crate::cluster_info::ClusterInformation;
use crate::felix::FelixConfiguration;
use crate::ippool::IPPool;
use crate::node_network_config::NodeNetworkConfig;

/// Every CRD Tortie installs.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        IPPool::crd(),
        BGPConfiguration::crd(),
        BGPPeer::crd(),
        FelixConfiguration::crd(),
        ClusterInformation::crd(),
        NodeNetworkConfig::crd(),
    ];
    crds.extend(crate::ipam::crds());
    crds.extend(crate::policy::crds());
    crds
}

/// The file a CRD is written to: its name (`<plural>.<group>`) with `.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    let name = crd
        .metadata
        .name
        .as_deref()
        .expect("a derived CRD always has a name");
    format!("{name}.yaml")
}

/// A CRD as the YAML `crdgen` writes.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}
