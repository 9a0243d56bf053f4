//! The cluster-wide singletons: ClusterInformation `default` (created and kept) and
//! IPAMConfig `default` (created with defaults when absent, never changed after).

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tortie_crds::cluster_info::{ClusterInformation, ClusterInformationSpec};
use tortie_crds::ipam::{IPAM_CONFIG_NAME, IPAMConfig, IPAMConfigSpec};

use crate::error::Result;
use crate::run::FIELD_MANAGER;
use crate::world::World;

/// Name of the one ClusterInformation.
pub const CLUSTER_INFORMATION_NAME: &str = "default";
/// What `clusterType` says about a Tortie cluster.
pub const CLUSTER_TYPE: &str = "k8s,bgp,kdd,tortie";
/// What `variant` says.
pub const VARIANT: &str = "Tortie";

/// The ClusterInformation spec to keep, given the stored one: everything but the GUID is
/// fixed; the GUID is kept once made, else `new_guid` is used.
pub fn desired_cluster_information(
    current: Option<&ClusterInformationSpec>,
    new_guid: impl FnOnce() -> String,
) -> ClusterInformationSpec {
    let guid = current
        .and_then(|c| c.cluster_guid.clone())
        .filter(|g| !g.is_empty())
        .unwrap_or_else(new_guid);
    ClusterInformationSpec {
        cluster_guid: Some(guid),
        cluster_type: Some(CLUSTER_TYPE.to_owned()),
        calico_version: Some(version_string()),
        datastore_ready: Some(true),
        variant: Some(VARIANT.to_owned()),
    }
}

/// `tortie-<version>`, what `calicoVersion` reports.
pub fn version_string() -> String {
    format!("tortie-{}", env!("CARGO_PKG_VERSION"))
}

/// A random GUID in the 8-4-4-4-12 hex form (RFC 4122 version 4).
pub fn random_guid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Creates or corrects ClusterInformation `default` and creates IPAMConfig `default`
/// when absent. Reads the (synced) caches, writes only what differs.
pub async fn ensure(client: &Client, world: &World) -> Result<()> {
    let current = world.cluster_infos.get(CLUSTER_INFORMATION_NAME);
    let desired = desired_cluster_information(current.as_ref().map(|c| &c.spec), random_guid);
    let api = Api::<ClusterInformation>::all(client.clone());
    match current {
        None => {
            let object = ClusterInformation::new(CLUSTER_INFORMATION_NAME, desired);
            match api.create(&Default::default(), &object).await {
                Ok(_) => tracing::info!(
                    guid = ?object.spec.cluster_guid,
                    "Created ClusterInformation default"
                ),
                // Created meanwhile (by a previous leader): its GUID stands; the next
                // pass corrects the rest.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(error.into()),
            }
        }
        Some(current) if current.spec != desired => {
            let object = ClusterInformation::new(CLUSTER_INFORMATION_NAME, desired);
            api.patch(
                CLUSTER_INFORMATION_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await?;
            tracing::info!("Updated ClusterInformation default");
        }
        Some(_) => {}
    }

    if world.ipam_configs.get(IPAM_CONFIG_NAME).is_none() {
        let object = IPAMConfig::new(IPAM_CONFIG_NAME, IPAMConfigSpec::default());
        let api = Api::<IPAMConfig>::all(client.clone());
        match api.create(&Default::default(), &object).await {
            Ok(_) => tracing::info!("Created IPAMConfig default with default settings"),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_made_once_and_kept() {
        let fresh = desired_cluster_information(None, || "made".into());
        assert_eq!(fresh.cluster_guid.as_deref(), Some("made"));
        assert_eq!(fresh.datastore_ready, Some(true));
        assert_eq!(fresh.cluster_type.as_deref(), Some(CLUSTER_TYPE));
        assert!(
            fresh
                .calico_version
                .as_deref()
                .is_some_and(|v| v.starts_with("tortie-"))
        );

        let stored = ClusterInformationSpec {
            cluster_guid: Some("kept".into()),
            datastore_ready: Some(false),
            ..Default::default()
        };
        let kept = desired_cluster_information(Some(&stored), || panic!("no new GUID needed"));
        assert_eq!(kept.cluster_guid.as_deref(), Some("kept"));
        assert_eq!(kept.datastore_ready, Some(true));
    }

    #[test]
    fn random_guids_look_like_version_4_uuids() {
        let a = random_guid();
        let b = random_guid();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
