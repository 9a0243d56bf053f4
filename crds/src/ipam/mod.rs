//! Calico's IPAM kinds (IPAMBlock, BlockAffinity, IPAMHandle, IPAMConfig) and the pure
//! logic of a block.
//!
//! IPAM state is kept in Calico's own format, field for field and name for name, so a
//! cluster can move between Calico and Tortie without renumbering a single pod.

mod affinity;
mod block;
mod config;
mod handle;
pub mod names;
mod schema;

#[cfg(test)]
mod block_tests;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use affinity::{
    AFFINITY_TYPE_HOST, AffinityState, BlockAffinity, BlockAffinitySpec, DeletedFlag,
};
pub use block::{
    ATTRIBUTE_NAMESPACE, ATTRIBUTE_NODE, ATTRIBUTE_POD, ATTRIBUTE_TIMESTAMP, ATTRIBUTE_TYPE,
    AllocationAttribute, BlockError, IPAMBlock, IPAMBlockSpec, MAX_BLOCK_HOST_BITS, Release,
    WINDOWS_RESERVED_HANDLE, block_cidr, block_cidr_for_address, block_count, pool_blocks,
};
pub use config::{
    IPAM_CONFIG_NAME, IPAMConfig, IPAMConfigSpec, MAX_BLOCKS_PER_HOST_LIMIT,
    MAX_IP_COOLDOWN_SECONDS, VmAddressPersistence,
};
pub use handle::{IPAMHandle, IPAMHandleSpec};

/// The CustomResourceDefinitions of the four IPAM kinds.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        IPAMBlock::crd(),
        BlockAffinity::crd(),
        IPAMHandle::crd(),
        IPAMConfig::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_calico_names_and_cluster_scope() {
        let names: Vec<(String, String, String, String)> = crds()
            .into_iter()
            .map(|crd| {
                assert_eq!(crd.spec.group, "crd.projectcalico.org");
                assert_eq!(crd.spec.scope, "Cluster");
                assert_eq!(crd.spec.versions.len(), 1);
                assert_eq!(crd.spec.versions[0].name, "v1");
                (
                    crd.metadata.name.unwrap_or_default(),
                    crd.spec.names.kind,
                    crd.spec.names.plural,
                    crd.spec.names.singular.unwrap_or_default(),
                )
            })
            .collect();
        let expected = [
            ("ipamblocks", "IPAMBlock", "ipamblock"),
            ("blockaffinities", "BlockAffinity", "blockaffinity"),
            ("ipamhandles", "IPAMHandle", "ipamhandle"),
            ("ipamconfigs", "IPAMConfig", "ipamconfig"),
        ];
        for ((name, kind, plural, singular), (e_plural, e_kind, e_singular)) in
            names.iter().zip(expected)
        {
            assert_eq!(name, &format!("{e_plural}.crd.projectcalico.org"));
            assert_eq!(kind, e_kind);
            assert_eq!(plural, e_plural);
            assert_eq!(singular, e_singular);
        }
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn allocation_entries_are_nullable_integers() {
        let crd = serde_json::to_value(IPAMBlock::crd()).expect("crd serializes");
        let items = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["allocations"]["items"];
        assert_eq!(items["type"], "integer");
        assert_eq!(items["nullable"], true);
    }

    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
                return;
            };
            for (name, field) in properties {
                let here = format!("{path}.{name}");
                if field.get("description").is_none() && name != "metadata" {
                    missing.push(here.clone());
                }
                walk(&here, field, missing);
                if let Some(items) = field.get("items") {
                    walk(&here, items, missing);
                }
            }
        }
        let mut missing = Vec::new();
        for crd in crds() {
            let value = serde_json::to_value(&crd).expect("crd serializes");
            walk(
                &crd.spec.names.kind,
                &value["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
                &mut missing,
            );
        }
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}
