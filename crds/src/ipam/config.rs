//! IPAMConfig: cluster-wide IPAM settings, in the one object named `default`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{is_zero, null_as_default};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// The only name an IPAMConfig may have; Calico reads no other.
pub const IPAM_CONFIG_NAME: &str = "default";

/// Most blocks `maxBlocksPerHost` can allow (Go's largest `int32`).
pub const MAX_BLOCKS_PER_HOST_LIMIT: i32 = i32::MAX;

/// Longest `ipCooldownSeconds` Calico accepts (20 minutes).
pub const MAX_IP_COOLDOWN_SECONDS: i32 = 1200;

/// Cluster-wide IPAM settings. There is one, named `default`; without it, nodes borrow
/// from other nodes' blocks when their own are full and claim new blocks as needed.
// Several printer columns share a `type_`; clippy takes that for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "IPAMConfig",
    plural = "ipamconfigs",
    singular = "ipamconfig",
    doc = "Cluster-wide IPAM settings; the one object is named default.",
    validation = Rule::new("self.metadata.name == 'default'")
        .message("metadata.name: must be default; only the IPAMConfig named default is read"),
    printcolumn(name = "Strict affinity", type_ = "boolean", json_path = ".spec.strictAffinity"),
    printcolumn(name = "Auto-allocate", type_ = "boolean", json_path = ".spec.autoAllocateBlocks"),
    printcolumn(name = "Max blocks", type_ = "integer", json_path = ".spec.maxBlocksPerHost")
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    /// When true, a node hands out addresses only from blocks it owns, never from another
    /// node's block. Needed where routes are per block, such as on Windows nodes.
    #[serde(default)]
    pub strict_affinity: bool,

    /// When true (the default), a node claims a new block of a pool when its own blocks
    /// are full. When false, blocks must be assigned ahead of time.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub auto_allocate_blocks: bool,

    /// The most blocks one node may own; 0 means no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0))]
    pub max_blocks_per_host: i32,

    /// Whether KubeVirt virtual machines keep their address when their pod is
    /// re-created (reboot, eviction, live migration): `Enabled` (the default when absent)
    /// or `Disabled`.
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "null_as_default"
    )]
    pub kube_virt_vm_address_persistence: Option<VmAddressPersistence>,

    /// How long (0 to 1200 seconds) a released address stays out of use before it is
    /// handed out again; 0 reuses addresses at once (still least recently used first).
    #[serde(rename = "ipCooldownSeconds", default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 0, max = 1200))]
    pub ip_cooldown_seconds: i32,
}

/// Whether KubeVirt virtual machines keep their address across pod re-creation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VmAddressPersistence {
    /// A virtual machine keeps its address.
    Enabled,
    /// A virtual machine gets a new address with each new pod; live migration is refused.
    Disabled,
}

impl Default for IPAMConfigSpec {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            kube_virt_vm_address_persistence: None,
            ip_cooldown_seconds: 0,
        }
    }
}

impl IPAMConfigSpec {
    /// The cooldown as an unsigned count, 0 when the value is out of range.
    pub fn cooldown_seconds(&self) -> u32 {
        u32::try_from(self.ip_cooldown_seconds.clamp(0, MAX_IP_COOLDOWN_SECONDS)).unwrap_or(0)
    }

    /// The block limit per node, `None` for no limit.
    pub fn block_limit(&self) -> Option<u32> {
        u32::try_from(self.max_blocks_per_host)
            .ok()
            .filter(|&n| n > 0)
    }
}

fn default_true() -> bool {
    true
}

impl Validate for IPAMConfigSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if self.max_blocks_per_host < 0 {
            errors.push(
                &path.child("maxBlocksPerHost"),
                format!(
                    "{} is negative; use 0 for no limit or a positive number of blocks",
                    self.max_blocks_per_host
                ),
            );
        }
        if !(0..=MAX_IP_COOLDOWN_SECONDS).contains(&self.ip_cooldown_seconds) {
            errors.push(
                &path.child("ipCooldownSeconds"),
                format!(
                    "{} is outside 0..={MAX_IP_COOLDOWN_SECONDS}",
                    self.ip_cooldown_seconds
                ),
            );
        }
    }
}

impl Validate for IPAMConfig {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if self.metadata.name.as_deref() != Some(IPAM_CONFIG_NAME) {
            errors.push(
                &path.child("metadata").child("name"),
                format!(
                    "must be {IPAM_CONFIG_NAME:?}; Calico and Tortie read only the IPAMConfig named {IPAM_CONFIG_NAME:?}"
                ),
            );
        }
        self.spec.validate_at(&path.child("spec"), errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_calico() {
        let spec: IPAMConfigSpec =
            serde_json::from_value(serde_json::json!({})).expect("empty spec parses");
        assert_eq!(spec, IPAMConfigSpec::default());
        assert!(spec.auto_allocate_blocks);
        assert_eq!(spec.block_limit(), None);
        assert_eq!(
            serde_json::to_value(&spec).expect("spec serializes"),
            serde_json::json!({ "strictAffinity": false, "autoAllocateBlocks": true })
        );
    }

    #[test]
    fn reads_every_field_by_calico_name() {
        let spec: IPAMConfigSpec = serde_json::from_value(serde_json::json!({
            "strictAffinity": true,
            "autoAllocateBlocks": false,
            "maxBlocksPerHost": 4,
            "kubeVirtVMAddressPersistence": "Disabled",
            "ipCooldownSeconds": 30
        }))
        .expect("full spec parses");
        assert!(spec.strict_affinity);
        assert!(!spec.auto_allocate_blocks);
        assert_eq!(spec.block_limit(), Some(4));
        assert_eq!(
            spec.kube_virt_vm_address_persistence,
            Some(VmAddressPersistence::Disabled)
        );
        assert_eq!(spec.cooldown_seconds(), 30);
    }

    #[test]
    fn negative_limit_and_wrong_name_are_refused() {
        let config = IPAMConfig::new(
            "other",
            IPAMConfigSpec {
                max_blocks_per_host: -1,
                ip_cooldown_seconds: 5000,
                ..IPAMConfigSpec::default()
            },
        );
        let text = config
            .validate()
            .expect_err("bad config is refused")
            .to_string();
        assert!(
            text.contains("metadata.name: must be \"default\""),
            "{text}"
        );
        assert!(
            text.contains("spec.maxBlocksPerHost: -1 is negative"),
            "{text}"
        );
        assert!(text.contains("spec.ipCooldownSeconds: 5000"), "{text}");

        let good = IPAMConfig::new(IPAM_CONFIG_NAME, IPAMConfigSpec::default());
        assert!(good.validate().is_ok());
    }
}
