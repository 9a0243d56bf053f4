//! `IPPool`: an address range pods get their IPs from, with its encapsulation, NAT and node
//! selection settings.
//!
//! The block size defaults by family (26 for IPv4, 122 for IPv6), which an OpenAPI default
//! cannot say. The field stays optional in the stored object, the schema's CEL rules and
//! [`IPPoolSpec::effective_block_size`] apply the family default, and the operator reports
//! the size in force in `status.blockSize` (shown as the BLOCK SIZE column). Nothing
//! rewrites the user's spec, so `kubectl apply` never sees a field it did not write.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fields::{self, MAX_ADDRESS_LENGTH, MAX_SELECTOR_LENGTH};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Block size of an IPv4 pool that does not set one.
pub const DEFAULT_IPV4_BLOCK_SIZE: u8 = 26;
/// Block size of an IPv6 pool that does not set one.
pub const DEFAULT_IPV6_BLOCK_SIZE: u8 = 122;

/// CEL: the pool's family as an integer, 4 or 6.
const FAMILY: &str = "cidr(self.cidr).ip().family()";

/// CEL: the block size in force for `x` (`self` or `oldSelf`).
fn effective_block_size_cel(x: &str) -> String {
    format!("(has({x}.blockSize) ? {x}.blockSize : (cidr({x}.cidr).ip().family() == 4 ? 26 : 122))")
}

/// CEL: whether IPIP is on, through `ipipMode` or the deprecated `ipip` field.
const IPIP_ON: &str = "((has(self.ipipMode) && self.ipipMode != 'Never') || \
     (has(self.ipip) && has(self.ipip.enabled) && self.ipip.enabled))";

/// CEL: whether VXLAN is on.
const VXLAN_ON: &str = "(has(self.vxlanMode) && self.vxlanMode != 'Never')";

fn block_size_range_rule() -> String {
    format!(
        "!has(self.blockSize) || !isCIDR(self.cidr) || ({FAMILY} == 4 ? \
         (self.blockSize >= 20 && self.blockSize <= 32) : \
         (self.blockSize >= 116 && self.blockSize <= 128))"
    )
}

fn pool_holds_a_block_rule() -> String {
    format!(
        "(has(self.disabled) && self.disabled) || !isCIDR(self.cidr) || \
         cidr(self.cidr).prefixLength() <= {}",
        effective_block_size_cel("self")
    )
}

fn pool_holds_a_block_message() -> String {
    // `format` rather than `+` and `string()`: the API server's cost estimate treats a
    // converted value as unbounded and refuses a concatenation with it.
    format!(
        "'cidr: pool %s is smaller than one block (/%d); an enabled pool must hold at least \
         one block: use a larger cidr or set blockSize to %d or more'.format([self.cidr, {bs}, \
         cidr(self.cidr).prefixLength()])",
        bs = effective_block_size_cel("self")
    )
}

fn ipip_ipv4_only_rule() -> String {
    format!("!{IPIP_ON} || !isCIDR(self.cidr) || {FAMILY} == 4")
}

fn one_encapsulation_rule() -> String {
    format!("!({IPIP_ON} && {VXLAN_ON})")
}

fn block_size_immutable_rule() -> String {
    format!(
        "!isCIDR(self.cidr) || !isCIDR(oldSelf.cidr) || {} == {}",
        effective_block_size_cel("self"),
        effective_block_size_cel("oldSelf")
    )
}

const CIDR_IS_CIDR: &str = "isCIDR(self)";
const CIDR_IS_CIDR_MESSAGE: &str = "cidr must be a CIDR such as 10.244.0.0/16 or fd00:10:244::/48";
const CIDR_MASKED: &str = "!isCIDR(self) || cidr(self) == cidr(self).masked()";
const CIDR_MASKED_MESSAGE: &str =
    "'cidr %s has host bits set; did you mean %s?'.format([self, string(cidr(self).masked())])";
const CIDR_NOT_LINK_LOCAL: &str = "!isCIDR(self) || (cidr(self).ip().family() == 4 ? \
     !(cidr('169.254.0.0/16').containsCIDR(cidr(self)) || cidr(self).containsCIDR(cidr('169.254.0.0/16'))) : \
     !(cidr('fe80::/10').containsCIDR(cidr(self)) || cidr(self).containsCIDR(cidr('fe80::/10'))))";
const CIDR_NOT_LINK_LOCAL_MESSAGE: &str = "cidr must not overlap the link-local range \
     169.254.0.0/16 (IPv4) or fe80::/10 (IPv6), which nodes keep for their own use";
const CIDR_IMMUTABLE_MESSAGE: &str = "cidr cannot change once the pool exists: create a new \
     pool with the new range, move workloads to it, then disable and delete this one";
const BLOCK_SIZE_RANGE_MESSAGE: &str =
    "blockSize must be 20 to 32 for an IPv4 pool and 116 to 128 for an IPv6 pool";
const BLOCK_SIZE_IMMUTABLE_MESSAGE: &str = "blockSize cannot change once the pool exists \
     (26 for IPv4 and 122 for IPv6 when unset); create a new pool with the new block size";
const IPIP_IPV4_ONLY_MESSAGE: &str = "ipipMode: IPIP carries only IPv4, so an IPv6 pool must \
     use ipipMode Never; use vxlanMode for an IPv6 overlay";
const ONE_ENCAPSULATION_MESSAGE: &str = "ipipMode and vxlanMode cannot both be on: a pool uses \
     one encapsulation; set one of them to Never";

/// An IP pool: a range pods (and tunnel and load-balancer addresses) are allocated from, in
/// blocks owned by nodes. Encapsulation, outgoing NAT and which nodes may use the pool are
/// set here.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    status = "IPPoolStatus",
    doc = "An address range that pods get their IPs from, with its encapsulation, outgoing NAT and node selection.",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(
        name = "Block Size",
        type_ = "integer",
        json_path = ".status.blockSize"
    ),
    printcolumn(name = "Encap", type_ = "string", json_path = ".status.encapsulation"),
    printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(name = "Selector", type_ = "string", json_path = ".spec.nodeSelector"),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.used"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(block_size_range_rule()).message(BLOCK_SIZE_RANGE_MESSAGE).field_path(".blockSize"),
    validation = Rule::new(pool_holds_a_block_rule()).message(Message::Expression(pool_holds_a_block_message())).field_path(".cidr"),
    validation = Rule::new(ipip_ipv4_only_rule()).message(IPIP_IPV4_ONLY_MESSAGE).field_path(".ipipMode"),
    validation = Rule::new(one_encapsulation_rule()).message(ONE_ENCAPSULATION_MESSAGE).field_path(".vxlanMode"),
    validation = Rule::new(block_size_immutable_rule()).message(BLOCK_SIZE_IMMUTABLE_MESSAGE).field_path(".blockSize")
)]
pub struct IPPoolSpec {
    /// The pool's range, for example `10.244.0.0/16`. No host bits may be set, it must not
    /// overlap the link-local ranges, and it cannot change after the pool is created.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(
        validation = Rule::new(CIDR_IS_CIDR).message(CIDR_IS_CIDR_MESSAGE),
        validation = Rule::new(CIDR_MASKED).message(Message::Expression(CIDR_MASKED_MESSAGE.into())),
        validation = Rule::new(CIDR_NOT_LINK_LOCAL).message(CIDR_NOT_LINK_LOCAL_MESSAGE),
        validation = Rule::new("self == oldSelf").message(CIDR_IMMUTABLE_MESSAGE)
    )]
    pub cidr: String,

    /// Prefix length of the blocks nodes take from this pool: 20 to 32 for IPv4 (default
    /// 26, 64 addresses) and 116 to 128 for IPv6 (default 122). Fixed once the pool exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 20, max = 128))]
    pub block_size: Option<i32>,

    /// When pod traffic to another node is wrapped in IPIP (IPv4 pools only).
    #[serde(default)]
    pub ipip_mode: EncapsulationMode,

    /// When pod traffic to another node is wrapped in VXLAN.
    #[serde(default)]
    pub vxlan_mode: EncapsulationMode,

    /// Masquerade traffic from pods of this pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,

    /// Stop allocating new addresses from this pool; existing ones stay.
    #[serde(default)]
    pub disabled: bool,

    /// Do not advertise this pool's routes over BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,

    /// Which nodes may take blocks from this pool, as a Calico selector over node labels.
    // Known limitation: the API server cannot parse Calico selectors, so a malformed one is
    // stored; the Rust rules reject it and the operator reports it in the pool's status.
    #[serde(default = "default_node_selector")]
    #[schemars(length(max = MAX_SELECTOR_LENGTH))]
    pub node_selector: String,

    /// Which namespaces' pods may get addresses from this pool, as a Calico selector over
    /// namespace labels. Both this and `nodeSelector` must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LENGTH))]
    pub namespace_selector: Option<String>,

    /// What addresses from this pool are for. Empty means Workload and Tunnel.
    #[serde(default = "default_allowed_uses")]
    #[schemars(length(max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_uses: Vec<AllowedUse>,

    /// Whether addresses are handed out automatically or only on explicit request.
    #[serde(default)]
    pub assignment_mode: AssignmentMode,

    /// Deprecated form of `ipipMode` from Calico's first API, still honoured when found in
    /// stored objects: `enabled: true` means `ipipMode: Always` (or `CrossSubnet` with
    /// `mode: cross-subnet`) when `ipipMode` is Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip: Option<LegacyIpip>,

    /// Deprecated form of `natOutgoing` from Calico's first API; `true` turns outgoing NAT
    /// on.
    #[serde(
        default,
        rename = "nat-outgoing",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub legacy_nat_outgoing: bool,
}

/// When traffic between nodes is encapsulated.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EncapsulationMode {
    /// Never encapsulate; routes to other nodes' blocks are plain routes.
    #[default]
    Never,
    /// Always encapsulate traffic to other nodes.
    Always,
    /// Encapsulate only traffic to nodes in another subnet.
    CrossSubnet,
}

/// What a pool's addresses are used for.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllowedUse {
    /// Pod interfaces.
    Workload,
    /// Node tunnel interfaces (IPIP, VXLAN).
    Tunnel,
    /// Service load-balancer addresses.
    LoadBalancer,
}

/// How addresses are assigned from a pool.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AssignmentMode {
    /// Addresses are handed out to anyone the selectors allow.
    #[default]
    Automatic,
    /// Addresses are handed out only when asked for by pool or address.
    Manual,
}

/// The IPIP setting of Calico's first API.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct LegacyIpip {
    /// Whether IPIP is on.
    #[serde(default)]
    pub enabled: bool,
    /// `always` or `cross-subnet`; empty means `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LegacyIpipMode>,
}

/// The IPIP modes of Calico's first API.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyIpipMode {
    /// Not set, which means always.
    #[serde(rename = "")]
    Unspecified,
    /// Always encapsulate.
    #[serde(rename = "always")]
    Always,
    /// Encapsulate between subnets only.
    #[serde(rename = "cross-subnet")]
    CrossSubnet,
}

/// What the operator observed about a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (the pool is valid and in use) and `Overlapping` (it overlaps another pool),
    /// with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The block size in force: the spec's, or the family default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,

    /// The encapsulation in force, for display: `None`, `IPIP`, `IPIPCrossSubnet`, `VXLAN`
    /// or `VXLANCrossSubnet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encapsulation: Option<String>,

    /// Number of addresses in the pool, in decimal (an IPv6 pool can exceed 64 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,

    /// Number of addresses allocated from the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,

    /// Number of the pool's blocks that nodes own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks_in_use: Option<u64>,

    /// Allocated over capacity, for display, for example `31/65536`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
}

fn default_node_selector() -> String {
    "all()".to_owned()
}

fn default_allowed_uses() -> Vec<AllowedUse> {
    vec![AllowedUse::Workload, AllowedUse::Tunnel]
}

impl IPPoolSpec {
    /// A pool over `cidr` with every other setting at its default.
    pub fn new(cidr: impl Into<String>) -> Self {
        Self {
            cidr: cidr.into(),
            block_size: None,
            ipip_mode: EncapsulationMode::Never,
            vxlan_mode: EncapsulationMode::Never,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
            node_selector: default_node_selector(),
            namespace_selector: None,
            allowed_uses: default_allowed_uses(),
            assignment_mode: AssignmentMode::Automatic,
            ipip: None,
            legacy_nat_outgoing: false,
        }
    }

    /// Whether the pool is IPv6, judged from the CIDR text so that it answers even for a
    /// CIDR that does not parse.
    pub fn is_ipv6(&self) -> bool {
        self.cidr.contains(':')
    }

    /// The block size in force: `blockSize` when set, else 26 for IPv4 and 122 for IPv6.
    pub fn effective_block_size(&self) -> u8 {
        match self.block_size.and_then(|b| u8::try_from(b).ok()) {
            Some(size) => size,
            None if self.is_ipv6() => DEFAULT_IPV6_BLOCK_SIZE,
            None => DEFAULT_IPV4_BLOCK_SIZE,
        }
    }

    /// The IPIP mode in force, honouring the deprecated `ipip` field when `ipipMode` is
    /// Never.
    pub fn effective_ipip_mode(&self) -> EncapsulationMode {
        if self.ipip_mode != EncapsulationMode::Never {
            return self.ipip_mode;
        }
        match &self.ipip {
            Some(LegacyIpip {
                enabled: true,
                mode: Some(LegacyIpipMode::CrossSubnet),
            }) => EncapsulationMode::CrossSubnet,
            Some(LegacyIpip { enabled: true, .. }) => EncapsulationMode::Always,
            _ => EncapsulationMode::Never,
        }
    }

    /// Whether outgoing NAT is on, honouring the deprecated `nat-outgoing` field.
    pub fn effective_nat_outgoing(&self) -> bool {
        self.nat_outgoing || self.legacy_nat_outgoing
    }

    /// The uses in force: `allowedUses`, or Workload and Tunnel when it is empty.
    pub fn effective_allowed_uses(&self) -> Vec<AllowedUse> {
        if self.allowed_uses.is_empty() {
            default_allowed_uses()
        } else {
            self.allowed_uses.clone()
        }
    }

    /// The encapsulation in force as shown in `status.encapsulation`.
    pub fn encapsulation_label(&self) -> &'static str {
        match (self.effective_ipip_mode(), self.vxlan_mode) {
            (EncapsulationMode::Always, _) => "IPIP",
            (EncapsulationMode::CrossSubnet, _) => "IPIPCrossSubnet",
            (_, EncapsulationMode::Always) => "VXLAN",
            (_, EncapsulationMode::CrossSubnet) => "VXLANCrossSubnet",
            _ => "None",
        }
    }

    /// Checks the rules that compare an update with the stored pool: the CIDR and the block
    /// size in force cannot change.
    pub fn validate_update(&self, old: &IPPoolSpec) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let spec = FieldPath::new("spec");
        if self.cidr != old.cidr {
            errors.push(&spec.child("cidr"), CIDR_IMMUTABLE_MESSAGE);
        }
        if self.effective_block_size() != old.effective_block_size() {
            errors.push(&spec.child("blockSize"), BLOCK_SIZE_IMMUTABLE_MESSAGE);
        }
        errors.into_result()
    }
}

impl Validate for IPPoolSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        let cidr_path = path.child("cidr");
        let net = fields::check_masked_cidr(&self.cidr, &cidr_path, errors);

        if let Some(net) = net {
            let link_local: ipnet::IpNet = if net.addr().is_ipv4() {
                "169.254.0.0/16"
                    .parse()
                    .expect("a literal IPv4 CIDR parses")
            } else {
                "fe80::/10".parse().expect("a literal IPv6 CIDR parses")
            };
            if link_local.contains(&net) || net.contains(&link_local) {
                errors.push(&cidr_path, CIDR_NOT_LINK_LOCAL_MESSAGE);
            }
        }

        let block_size_path = path.child("blockSize");
        if let Some(size) = self.block_size {
            let range = if self.is_ipv6() { 116..=128 } else { 20..=32 };
            if !range.contains(&size) {
                errors.push(&block_size_path, BLOCK_SIZE_RANGE_MESSAGE);
            }
        }

        if let Some(net) = net
            && !self.disabled
            && net.prefix_len() > self.effective_block_size()
        {
            errors.push(
                &cidr_path,
                format!(
                    "pool {} is smaller than one block (/{}); an enabled pool must hold at \
                     least one block: use a larger cidr or set blockSize to {} or more",
                    self.cidr,
                    self.effective_block_size(),
                    net.prefix_len()
                ),
            );
        }

        let ipip_on = self.effective_ipip_mode() != EncapsulationMode::Never;
        if ipip_on && net.is_some() && self.is_ipv6() {
            errors.push(&path.child("ipipMode"), IPIP_IPV4_ONLY_MESSAGE);
        }
        if ipip_on && self.vxlan_mode != EncapsulationMode::Never {
            errors.push(&path.child("vxlanMode"), ONE_ENCAPSULATION_MESSAGE);
        }

        fields::check_selector(&self.node_selector, &path.child("nodeSelector"), errors);
        if let Some(selector) = &self.namespace_selector {
            fields::check_selector(selector, &path.child("namespaceSelector"), errors);
        }

        for (i, a) in self.allowed_uses.iter().enumerate() {
            if self.allowed_uses[..i].contains(a) {
                errors.push(
                    &path.child("allowedUses").index(i),
                    format!("{a:?} is listed twice; list each use once"),
                );
            }
        }
    }
}

impl Validate for IPPool {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        self.spec.validate_at(&path.child("spec"), errors);
    }
}
