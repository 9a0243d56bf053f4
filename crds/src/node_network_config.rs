//! `NodeNetworkConfig` (`tortie.dev/v1alpha1`): everything one node must program, computed
//! by the operator and applied by that node's agent, which reports back in the status.
//!
//! What many nodes share (the addresses a policy selector matches) is not copied in here:
//! rules name shared address-set objects, so the object stays small as the cluster grows.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fields::{self, AsNumber, Family, GoDuration, MAX_ADDRESS_LENGTH, PortRange};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Most blocks one node may own; far above any real `maxBlocksPerHost`, and a bound for the
/// CEL cost of the per-block rules.
const MAX_BLOCKS: u32 = 1024;

/// The desired network state of one node: its blocks, routes to the other nodes, tunnel,
/// MTU, NAT, IPAM, data-path, BGP and policy settings. Written by the operator, applied by
/// the node's agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "tortie.dev",
    version = "v1alpha1",
    derive = "PartialEq",
    kind = "NodeNetworkConfig",
    plural = "nodenetworkconfigs",
    singular = "nodenetworkconfig",
    shortname = "nnc",
    status = "NodeNetworkConfigStatus",
    doc = "The desired network state of one node, written by the Tortie operator and applied by the node's agent.",
    printcolumn(
        name = "Blocks",
        type_ = "string",
        json_path = ".status.summary.blocks"
    ),
    printcolumn(name = "BGP", type_ = "string", json_path = ".status.summary.bgp"),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.summary.applied"
    ),
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
pub struct NodeNetworkConfigSpec {
    /// The Kubernetes Node this configuration is for.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,

    /// Address blocks this node owns and allocates pod addresses from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BLOCKS))]
    pub blocks: Vec<OwnedBlock>,

    /// Routes to the blocks (and borrowed addresses) of the other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<NodeRoute>,

    /// This node's tunnel devices.
    #[serde(default)]
    pub tunnel: TunnelConfig,

    /// MTU of pod interfaces; unset lets the agent derive it from the host interface and
    /// the encapsulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 65535))]
    pub mtu: Option<u32>,

    /// Outgoing NAT for pods.
    #[serde(default)]
    pub nat_outgoing: NatOutgoingConfig,

    /// Address management settings the agent's IPAM service follows.
    #[serde(default)]
    pub ipam: IpamSettings,

    /// Data-path settings taken from FelixConfiguration.
    #[serde(default)]
    pub data_path: DataPathSettings,

    /// BGP settings and sessions; unset when the node runs no BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpConfig>,

    /// Policy for this node's endpoints.
    #[serde(default)]
    pub policy: NodePolicy,
}

/// A block this node owns.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OwnedBlock {
    /// The block, such as `10.244.3.0/26`.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(
        validation = fields::cel_is_cidr("blocks[].cidr"),
        validation = fields::cel_masked_cidr("blocks[].cidr")
    )]
    pub cidr: String,
    /// Name of the IPPool the block belongs to.
    #[schemars(length(max = 253))]
    pub pool: String,
}

/// A route to addresses on another node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoute {
    /// The destination: a block of the other node, or one address it borrowed from a
    /// block it does not own (a /32 or /128).
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub destination: String,
    /// Whether the destination is a whole block or a borrowed address.
    #[serde(default)]
    pub kind: RouteKind,
    /// Name of the node the destination lives on.
    #[schemars(length(max = 253))]
    pub node: String,
    /// That node's underlay address, the next hop of direct and IPIP routes.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub via: String,
    /// How packets reach that node.
    pub encapsulation: RouteEncapsulation,
    /// For VXLAN: the other node's tunnel address, the route's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub tunnel_address: Option<String>,
    /// For VXLAN: the MAC address of the other node's tunnel device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 17))]
    pub tunnel_mac: Option<String>,
}

/// What a route's destination is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A block the other node owns.
    #[default]
    Block,
    /// A single address the other node borrowed from a block it does not own.
    Borrowed,
}

/// How packets reach another node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteEncapsulation {
    /// Plain routing through the underlay.
    Direct,
    /// VXLAN through this node's VXLAN device.
    Vxlan,
    /// IPIP through this node's IPIP device.
    Ipip,
}

/// This node's tunnel devices.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct TunnelConfig {
    /// The VXLAN device, when any pool uses VXLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanTunnel>,
    /// The IPIP device, when any pool uses IPIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip: Option<IpipTunnel>,
}

/// Settings of the VXLAN device.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct VxlanTunnel {
    /// VXLAN network identifier.
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: u32,
    /// UDP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// MAC address of the device.
    #[schemars(length(max = 17))]
    pub mac: String,
    /// Address of the device, taken from a pool that allows Tunnel use.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub address: String,
}

/// Settings of the IPIP device.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct IpipTunnel {
    /// Address of the device, taken from a pool that allows Tunnel use.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub address: String,
}

/// Outgoing NAT for pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatOutgoingConfig {
    /// CIDRs of the pools with outgoing NAT on; traffic from them is masqueraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// CIDRs of every pool: traffic to them is never masqueraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Source address to use instead of the outgoing interface's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Source ports to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

/// Address management settings, from IPAMConfig.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IpamSettings {
    /// Only allocate from blocks this node owns (never borrow).
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks when the owned ones are full.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// Most blocks this node may own; 0 means no limit.
    #[serde(default)]
    pub max_blocks_per_host: u32,
}

impl Default for IpamSettings {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

/// Data-path settings taken from FelixConfiguration (the node's own object over
/// `default`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataPathSettings {
    /// Log level of the agent: Trace, Debug, Info, Warning, Error or Fatal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity: Option<String>,
    /// Host ports open inbound whatever the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub failsafe_inbound_host_ports: Vec<crate::felix::ProtoPort>,
    /// Host ports open outbound whatever the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub failsafe_outbound_host_ports: Vec<crate::felix::ProtoPort>,
    /// How often the agent re-checks its routes; `0` turns the check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_refresh_interval: Option<GoDuration>,
    /// What happens to traffic from a pod to its own node after the pod's egress policy.
    #[serde(default)]
    pub default_endpoint_to_host_action: EndpointToHostAction,
}

/// What happens to traffic from a pod to its own node.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EndpointToHostAction {
    /// Dropped.
    #[default]
    Drop,
    /// Accepted.
    Accept,
    /// Handed to the host's own rules.
    Return,
}

/// This node's BGP speaker.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeBgpConfig {
    /// Whether the agent runs BGP at all.
    pub enabled: bool,
    /// The node's AS number.
    #[serde(rename = "asNumber")]
    pub as_number: AsNumber,
    /// BGP router ID, an IPv4 address (usually the node's).
    #[schemars(length(max = 15))]
    pub router_id: String,
    /// TCP port BGP listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: u16,
    /// Route reflector cluster ID when this node is a route reflector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<String>,
    /// Sessions to hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<BgpSession>,
    /// Prefixes to advertise, with their communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertised_prefixes: Vec<AdvertisedPrefix>,
}

/// One BGP session.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpSession {
    /// Stable name of the session, unique on this node; status entries use it.
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// The peer's address.
    #[serde(rename = "peerIP")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub peer_ip: String,
    /// The peer's port, when not 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// The peer's AS number.
    #[serde(rename = "asNumber")]
    pub as_number: AsNumber,
    /// This side's AS number for the session, when not the node's.
    #[serde(
        default,
        rename = "localASNumber",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_as_number: Option<AsNumber>,
    /// Why the session exists.
    pub kind: SessionKind,
    /// Where the session's password is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretRef>,
    /// Pass routes on with their original next hop.
    #[serde(default)]
    pub keep_original_next_hop: bool,
    /// Source address for the session; unset lets the kernel choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// Graceful-restart time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<GoDuration>,
    /// Keepalive time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<GoDuration>,
    /// Hops for the TTL security check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// How often the local AS may appear in a received path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_allowed_local_as_numbers: Option<u32>,
    /// Gateway for a /32 (or /128) route to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_by: Option<String>,
    /// The peer is a route-reflector client of this node.
    #[serde(default)]
    pub route_reflector_client: bool,
}

/// Why a BGP session exists.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// Part of the node-to-node mesh.
    Mesh,
    /// From a BGPPeer that applies to every node.
    Global,
    /// From a BGPPeer that applies to this node by name or selector.
    Node,
    /// With a route reflector, or with a client when this node reflects.
    Reflector,
}

/// A key in a Secret.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Name of the Secret, in the namespace Tortie runs in.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A prefix to advertise over BGP.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
pub struct AdvertisedPrefix {
    /// The prefix.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    pub cidr: String,
    /// Community values (`aa:nn` or `aa:nn:mm`) attached to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
}

/// Policy for this node's endpoints, by reference: rules name shared address-set objects
/// instead of listing addresses, so the object stays small.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicy {
    /// Policy of each endpoint (pod interface or host interface) on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointPolicy>,
    /// Names of every address-set object the rules refer to, so the agent watches those
    /// and no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address_sets: Vec<String>,
}

/// The compiled policy of one endpoint.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPolicy {
    /// Host-side interface name, such as `cali1a2b3c4d5e6`.
    #[schemars(length(min = 1, max = 15))]
    pub interface: String,
    /// The workload behind the interface, as `namespace/pod`, for logs and status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Rules for traffic into the endpoint, in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<CompiledRule>,
    /// Rules for traffic out of the endpoint, in order; the first match decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<CompiledRule>,
}

/// One rule, with peers given as names of shared address sets.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompiledRule {
    /// What to do with matching traffic.
    pub action: RuleAction,
    /// Protocol name or number; any protocol when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Address sets the source must be in (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_sets: Vec<String>,
    /// Address sets the source must not be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_source_sets: Vec<String>,
    /// Address sets the destination must be in (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_sets: Vec<String>,
    /// Address sets the destination must not be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_sets: Vec<String>,
    /// Destination ports; any port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<PortRange>,
    /// The policy the rule came from, as `namespace/name` or `name`, for counters and logs.
    pub policy: String,
}

/// What a rule does with matching traffic.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Let it through.
    Allow,
    /// Drop it.
    Deny,
    /// Skip the rest of this policy's tier.
    Pass,
    /// Log it and go on.
    Log,
}

/// What the agent applied, written by the agent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkConfigStatus {
    /// The spec generation the agent last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the agent last finished applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,

    /// `Ready` (the node is programmed as the spec says) and `BGPEstablished`, with
    /// reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// State of each BGP session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub bgp_sessions: Vec<BgpSessionStatus>,

    /// The last error the agent hit while applying, if the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,

    /// Short strings for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<NodeNetworkConfigSummary>,
}

/// State of one BGP session.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpSessionStatus {
    /// The session's name from the spec.
    pub name: String,
    /// The peer's address.
    pub peer: String,
    /// BGP state: Idle, Connect, Active, OpenSent, OpenConfirm or Established.
    pub state: String,
    /// When the session entered that state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The last error the BGP daemon reported for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Short strings for `kubectl get nodenetworkconfigs`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct NodeNetworkConfigSummary {
    /// The node's blocks, such as `10.244.3.0/26` or `10.244.3.0/26 +2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<String>,
    /// Sessions up over sessions, such as `2/2 up`; `off` without BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<String>,
    /// Applied over desired generation, such as `7/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
}

fn default_true() -> bool {
    true
}

impl NodeNetworkConfigSummary {
    /// The summary of a node that owns `blocks`, has `up` of `sessions` BGP sessions
    /// established (`None` without BGP) and applied generation `applied` of `desired`.
    pub fn new(
        blocks: &[OwnedBlock],
        bgp: Option<(usize, usize)>,
        applied: Option<i64>,
        desired: Option<i64>,
    ) -> Self {
        let blocks = match blocks {
            [] => "none".to_owned(),
            [one] => one.cidr.clone(),
            [first, rest @ ..] => format!("{} +{}", first.cidr, rest.len()),
        };
        let bgp = match bgp {
            Some((up, total)) => format!("{up}/{total} up"),
            None => "off".to_owned(),
        };
        let generation = |g: Option<i64>| g.map_or_else(|| "-".to_owned(), |g| g.to_string());
        Self {
            blocks: Some(blocks),
            bgp: Some(bgp),
            applied: Some(format!("{}/{}", generation(applied), generation(desired))),
        }
    }
}

impl Validate for NodeNetworkConfigSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if self.node_name.is_empty() {
            errors.push(&path.child("nodeName"), "nodeName must name the node");
        }
        if self.blocks.len() > MAX_BLOCKS as usize {
            errors.push(
                &path.child("blocks"),
                format!(
                    "has {} blocks; at most {MAX_BLOCKS} are allowed",
                    self.blocks.len()
                ),
            );
        }
        for (i, block) in self.blocks.iter().enumerate() {
            let at = path.child("blocks").index(i).child("cidr");
            fields::check_masked_cidr(&block.cidr, &at, errors);
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = path.child("routes").index(i);
            fields::check_masked_cidr(&route.destination, &at.child("destination"), errors);
            fields::check_ip(&route.via, None, &at.child("via"), errors);
            if route.encapsulation == RouteEncapsulation::Vxlan {
                match &route.tunnel_address {
                    Some(a) => {
                        fields::check_ip(a, None, &at.child("tunnelAddress"), errors);
                    }
                    None => errors.push(
                        &at.child("tunnelAddress"),
                        "a VXLAN route needs the other node's tunnel address",
                    ),
                }
            }
        }
        if let Some(vxlan) = &self.tunnel.vxlan {
            let at = path.child("tunnel").child("vxlan");
            fields::check_range(vxlan.vni.into(), 1, 16_777_215, &at.child("vni"), errors);
            fields::check_range(vxlan.port.into(), 1, 65535, &at.child("port"), errors);
            fields::check_ip(&vxlan.address, None, &at.child("address"), errors);
        }
        if let Some(ipip) = &self.tunnel.ipip {
            let at = path.child("tunnel").child("ipip").child("address");
            fields::check_ip(&ipip.address, Some(Family::V4), &at, errors);
        }
        if let Some(mtu) = self.mtu {
            fields::check_range(mtu.into(), 576, 65535, &path.child("mtu"), errors);
        }
        for (name, list) in [
            ("pools", &self.nat_outgoing.pools),
            ("exclude", &self.nat_outgoing.exclude),
        ] {
            for (i, cidr) in list.iter().enumerate() {
                let at = path.child("natOutgoing").child(name).index(i);
                fields::check_masked_cidr(cidr, &at, errors);
            }
        }
        if let Some(bgp) = &self.bgp {
            let at = path.child("bgp");
            fields::check_ip(
                &bgp.router_id,
                Some(Family::V4),
                &at.child("routerId"),
                errors,
            );
            for (i, s) in bgp.sessions.iter().enumerate() {
                let at = at.child("sessions").index(i);
                fields::check_ip(&s.peer_ip, None, &at.child("peerIP"), errors);
                if bgp.sessions[..i].iter().any(|o| o.name == s.name) {
                    errors.push(
                        &at.child("name"),
                        format!(
                            "session name {:?} is used twice; names must be unique",
                            s.name
                        ),
                    );
                }
            }
        }
    }
}
