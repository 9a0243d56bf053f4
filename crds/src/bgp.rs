//! BGP: the cluster-wide `BGPConfiguration`, extra sessions in `BGPPeer`, and the BGP
//! fields Calico keeps on a node (`NodeSpec`, not a CRD of its own here).

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fields::{self, AsNumber, Family, GoDuration, MAX_ADDRESS_LENGTH, MAX_SELECTOR_LENGTH};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Most service ranges, communities or prefix advertisements one configuration holds; the
/// bound keeps the CEL cost of the cross-reference rule within the API server's budget.
const MAX_BGP_LIST: u32 = 100;

/// Most communities one prefix advertisement attaches.
const MAX_PREFIX_COMMUNITIES: u32 = 10;

/// Longest community name; with the list bounds it keeps the cross-reference rule (every
/// advertised community looked up among the named ones) within the API server's CEL budget.
const MAX_COMMUNITY_NAME: u32 = 128;

/// The text form of a community value: `aa:nn` (standard) or `aa:nn:mm` (large).
const COMMUNITY_VALUE_PATTERN: &str = "^[0-9]{1,10}:[0-9]{1,10}(:[0-9]{1,10})?$";

const LOG_LEVELS: &[&str] = &["Trace", "Debug", "Info", "Warning", "Error", "Fatal"];

fn community_value_rule() -> String {
    format!(
        "self.matches('{COMMUNITY_VALUE_PATTERN}') && (self.split(':').size() == 2 ? \
         self.split(':').all(p, int(p) <= 65535) : \
         self.split(':').all(p, int(p) <= 4294967295))"
    )
}

fn prefix_communities_rule() -> String {
    format!(
        "!has(self.prefixAdvertisements) || self.prefixAdvertisements.all(p, \
         !has(p.communities) || p.communities.all(c, c.matches('{COMMUNITY_VALUE_PATTERN}') || \
         (has(self.communities) && self.communities.exists(d, has(d.name) && d.name == c))))"
    )
}

const COMMUNITY_VALUE_MESSAGE: &str = "communities[].value must be aa:nn with 16-bit numbers \
     (standard community) or aa:nn:mm with 32-bit numbers (large community)";
const PREFIX_COMMUNITIES_MESSAGE: &str = "prefixAdvertisements[].communities: each entry must \
     be a community value (aa:nn or aa:nn:mm) or the name of an entry in communities";

const PEER_IP_RULE: &str = "isIP(self) || \
     (self.matches('^[0-9.]+:[0-9]{1,5}$') && isIP(self.split(':')[0]) && \
      ip(self.split(':')[0]).family() == 4 && \
      int(self.split(':')[1]) >= 1 && int(self.split(':')[1]) <= 65535) || \
     (self.matches('^\\\\[[0-9a-fA-F:.]+\\\\]:[0-9]{1,5}$') && \
      isIP(self.substring(1, self.indexOf(']'))) && \
      ip(self.substring(1, self.indexOf(']'))).family() == 6 && \
      int(self.substring(self.indexOf(']') + 2)) >= 1 && \
      int(self.substring(self.indexOf(']') + 2)) <= 65535)";
const PEER_IP_MESSAGE: &str = "peerIP must be an IP address, optionally with a port: \
     192.0.2.1, 192.0.2.1:1790, 2001:db8::1 or [2001:db8::1]:1790";

const PEER_IP_AND_SELECTOR_RULE: &str = "!(has(self.peerIP) && self.peerIP != '' && \
     has(self.peerSelector) && self.peerSelector != '')";
const PEER_IP_AND_SELECTOR_MESSAGE: &str = "peerIP and peerSelector cannot both be set: \
     peerIP names one peer, peerSelector picks Calico nodes as peers; remove one of them";
const NODE_AND_SELECTOR_RULE: &str =
    "!(has(self.node) && self.node != '' && has(self.nodeSelector) && self.nodeSelector != '')";
const NODE_AND_SELECTOR_MESSAGE: &str = "node and nodeSelector cannot both be set: node picks \
     one node, nodeSelector picks nodes by label; remove one of them";
const SELECTOR_AND_AS_RULE: &str =
    "!(has(self.peerSelector) && self.peerSelector != '' && has(self.asNumber))";
const SELECTOR_AND_AS_MESSAGE: &str = "asNumber must be unset when peerSelector is set: the \
     peers are Calico nodes and their AS numbers come from their node configuration";
const WORKLOAD_PEER_RULE: &str = "!has(self.localWorkloadSelector) || \
     self.localWorkloadSelector == '' || \
     ((!has(self.peerIP) || self.peerIP == '') && \
      (!has(self.peerSelector) || self.peerSelector == '') && has(self.asNumber))";
const WORKLOAD_PEER_MESSAGE: &str = "localWorkloadSelector: peering with local workloads needs \
     asNumber and cannot be combined with peerIP or peerSelector";

/// Cluster-wide BGP settings. The object named `default` applies to every node; one named
/// `node.<node name>` overrides it for that node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    singular = "bgpconfiguration",
    doc = "Cluster-wide BGP settings: AS number, node-to-node mesh, listen port and the service ranges to advertise.",
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(
        name = "Mesh",
        type_ = "boolean",
        json_path = ".spec.nodeToNodeMeshEnabled"
    ),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.listenPort"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(prefix_communities_rule()).message(PREFIX_COMMUNITIES_MESSAGE).field_path(".prefixAdvertisements"))]
pub struct BGPConfigurationSpec {
    /// Log level of the BGP daemon: Trace, Debug, Info, Warning, Error or Fatal (any case).
    /// Default Info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        regex(pattern = "^(?i)(Trace|Debug|Info|Warning|Error|Fatal)?$")
    )]
    pub log_severity_screen: Option<String>,

    /// Whether every node peers with every other node. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,

    /// The AS number nodes use unless their own configuration sets one. Default 64512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,

    /// Ranges of Service LoadBalancer addresses to advertise; only ingress addresses inside
    /// one of them are advertised.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = MAX_BGP_LIST))]
    pub service_load_balancer_ips: Vec<ServiceIpBlock>,

    /// Ranges of Service external IPs to advertise.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = MAX_BGP_LIST))]
    pub service_external_ips: Vec<ServiceIpBlock>,

    /// Ranges Service cluster IPs are allocated from; advertised from every node.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = MAX_BGP_LIST))]
    pub service_cluster_ips: Vec<ServiceIpBlock>,

    /// Whether LoadBalancer ranges are advertised whole (Enabled) or as one /32 or /128
    /// per service (Disabled). Default Enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_load_balancer_aggregation: Option<Toggle>,

    /// Named community values that prefix advertisements can refer to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BGP_LIST))]
    pub communities: Vec<Community>,

    /// Communities to attach to routes of given prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BGP_LIST))]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,

    /// TCP port the BGP daemon listens on. Default 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: Option<u16>,

    /// Password for the node-to-node mesh sessions (on the `default` object only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,

    /// Graceful-restart time for mesh sessions, such as `120s` (on the `default` object
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<GoDuration>,

    /// Whether the BGP daemon listens on every address (None) or only the node's own
    /// address (NodeIP). Default None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,

    /// Interfaces whose routes are not exported, as names or `*` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_BGP_LIST), inner(length(min = 1, max = 15)))]
    pub ignored_interfaces: Vec<String>,

    /// The IPv4 address a node answers on when its local workloads peer with it.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV4",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = fields::cel_is_ip("localWorkloadPeeringIPV4", Some(Family::V4)))]
    pub local_workload_peering_ipv4: Option<String>,

    /// The IPv6 address a node answers on when its local workloads peer with it.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV6",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = fields::cel_is_ip("localWorkloadPeeringIPV6", Some(Family::V6)))]
    pub local_workload_peering_ipv6: Option<String>,
}

/// A range of service addresses to advertise.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceIpBlock {
    /// The range, such as `10.96.0.0/12`, without host bits.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(
        validation = fields::cel_is_cidr("cidr"),
        validation = fields::cel_masked_cidr("cidr")
    )]
    pub cidr: String,
}

/// A named BGP community value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Community {
    /// The name prefix advertisements use to refer to this value.
    #[schemars(length(min = 1, max = MAX_COMMUNITY_NAME))]
    pub name: String,
    /// `aa:nn` with 16-bit numbers for a standard community, `aa:nn:mm` with 32-bit numbers
    /// for a large one; `aa` is an AS number.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(community_value_rule()).message(COMMUNITY_VALUE_MESSAGE))]
    pub value: String,
}

/// Communities to attach to the routes of one prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PrefixAdvertisement {
    /// The prefix, without host bits.
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(
        validation = fields::cel_is_cidr("prefixAdvertisements[].cidr"),
        validation = fields::cel_masked_cidr("prefixAdvertisements[].cidr")
    )]
    pub cidr: String,
    /// Community values, or names from `communities`.
    #[serde(default)]
    #[schemars(length(max = MAX_PREFIX_COMMUNITIES), inner(length(max = MAX_COMMUNITY_NAME)))]
    pub communities: Vec<String>,
}

/// A BGP password, read from a Secret in the namespace Tortie runs in.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BgpPassword {
    /// The Secret and key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
}

/// A key of a Secret, in the shape of Kubernetes' own `SecretKeySelector`, with bounds on
/// its strings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(max = 253))]
    pub key: String,
    /// Whether a missing Secret or key is tolerated (the session then has no password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Which addresses the BGP daemon listens on.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// Every address of the node.
    None,
    /// Only the node's own BGP address.
    #[serde(rename = "NodeIP")]
    NodeIp,
}

/// An on/off setting spelled the way Calico spells it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

/// An extra BGP session: with a router outside the cluster, or between selected nodes
/// (for route reflectors). Without `node` or `nodeSelector` every node holds it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "BGPPeer",
    plural = "bgppeers",
    singular = "bgppeer",
    status = "BGPPeerStatus",
    doc = "An extra BGP session: with a router outside the cluster, or between selected nodes.",
    printcolumn(name = "Peer IP", type_ = "string", json_path = ".spec.peerIP"),
    printcolumn(
        name = "Peer Selector",
        type_ = "string",
        json_path = ".spec.peerSelector"
    ),
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".status.scope"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(PEER_IP_AND_SELECTOR_RULE).message(PEER_IP_AND_SELECTOR_MESSAGE).field_path(".peerSelector"),
    validation = Rule::new(NODE_AND_SELECTOR_RULE).message(NODE_AND_SELECTOR_MESSAGE).field_path(".nodeSelector"),
    validation = Rule::new(SELECTOR_AND_AS_RULE).message(SELECTOR_AND_AS_MESSAGE).field_path(".asNumber"),
    validation = Rule::new(WORKLOAD_PEER_RULE).message(WORKLOAD_PEER_MESSAGE).field_path(".localWorkloadSelector")
)]
pub struct BGPPeerSpec {
    /// The one node that holds this session. Empty with no `nodeSelector`: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node: Option<String>,

    /// The nodes that hold this session, as a Calico selector over node labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LENGTH))]
    pub node_selector: Option<String>,

    /// The peer's address, optionally with a port: `192.0.2.1`, `192.0.2.1:1790`,
    /// `2001:db8::1` or `[2001:db8::1]:1790`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = Rule::new(PEER_IP_RULE).message(PEER_IP_MESSAGE))]
    pub peer_ip: Option<String>,

    /// The peer's AS number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,

    /// The AS number this side uses for the session, instead of the node's.
    #[serde(
        default,
        rename = "localASNumber",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_as_number: Option<AsNumber>,

    /// Peer with the Calico nodes this selector picks, instead of one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LENGTH))]
    pub peer_selector: Option<String>,

    /// Pass routes on with their original next hop (deprecated; use `nextHopMode: Keep`).
    #[serde(default)]
    pub keep_original_next_hop: bool,

    /// How the next hop of routes sent to the peer is set; overrides
    /// `keepOriginalNextHop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,

    /// Password for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,

    /// Whether the node's address is the session's source address. Default UseNodeIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,

    /// Graceful-restart time, such as `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<GoDuration>,

    /// How many times the local AS may appear in a received path (turns off loop
    /// prevention; use only when the topology needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub num_allowed_local_as_numbers: Option<i32>,

    /// Hops to the peer for the TTL security check (GTSM); unset turns it off.
    #[serde(
        default,
        rename = "ttlSecurity",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl_security: Option<u8>,

    /// Gateway through which the peer is reached; a /32 (or /128) route to the peer via it
    /// keeps the session from flapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = fields::cel_is_ip("reachableBy", None))]
    pub reachable_by: Option<String>,

    /// Names of BGPFilter objects applied to the session, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    pub filters: Vec<String>,

    /// Peer with local workloads this selector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LENGTH))]
    pub local_workload_selector: Option<String>,

    /// For sessions between Calico nodes: whether the reverse session is set up
    /// automatically (Auto) or needs its own BGPPeer (Manual). Default Auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_peering: Option<ReversePeering>,

    /// BGP keepalive time, such as `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<GoDuration>,
}

/// How the next hop of routes sent to a peer is set.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHopMode {
    /// BGP's default behaviour.
    Auto,
    /// This node is the next hop.
    #[serde(rename = "Self")]
    SelfHop,
    /// Keep the next hop the route arrived with.
    Keep,
}

/// Source address of a session.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceAddress {
    /// The node's own address.
    #[serde(rename = "UseNodeIP")]
    UseNodeIp,
    /// Let the kernel choose.
    None,
}

/// Whether the reverse of a node-to-node session is made automatically.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReversePeering {
    /// Made automatically.
    Auto,
    /// Needs its own BGPPeer.
    Manual,
}

/// What the operator observed about a peer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the peer applies: the node's name, the node selector, or `(global)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,

    /// How many nodes hold a session for this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u32>,

    /// How many of those sessions are established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_up: Option<u32>,

    /// `Ready` (valid and applied) and `Established` (every session is up), with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The BGP fields Calico keeps on a node (in its Node resource); a plain type, not a CRD.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The node's BGP settings; unset on nodes that do not run BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBGPSpec>,

    /// Address of the node's VXLAN tunnel interface (IPv4).
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<String>,

    /// MAC address of the node's VXLAN tunnel interface (IPv4).
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr: Option<String>,
}

/// A node's BGP identity.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
pub struct NodeBGPSpec {
    /// The node's AS number; the cluster default when unset.
    #[serde(default, rename = "asNumber", skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,

    /// The node's IPv4 address with its subnet's prefix length, such as `192.0.2.10/24`.
    #[serde(
        default,
        rename = "ipv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address: Option<String>,

    /// The node's IPv6 address with its subnet's prefix length.
    #[serde(
        default,
        rename = "ipv6Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_address: Option<String>,

    /// Address of the node's IPIP tunnel interface.
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_ipip_tunnel_addr: Option<String>,

    /// Cluster ID when this node is a route reflector, written as an IPv4 address.
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

impl BGPConfigurationSpec {
    /// Whether the node-to-node mesh is on (the default).
    pub fn mesh_enabled(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// The AS number in force (64512 when unset).
    pub fn effective_as_number(&self) -> AsNumber {
        self.as_number.unwrap_or(AsNumber(64512))
    }

    /// The listen port in force (179 when unset).
    pub fn effective_listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(179)
    }
}

impl BGPPeerSpec {
    /// Where the peer applies, as shown in `status.scope`: the node's name, the node
    /// selector, or `(global)`.
    pub fn scope_label(&self) -> String {
        match (non_empty(&self.node), non_empty(&self.node_selector)) {
            (Some(node), _) => node.to_owned(),
            (None, Some(selector)) => selector.to_owned(),
            (None, None) => "(global)".to_owned(),
        }
    }

    /// The peer's address and port, when `peerIP` is set and valid.
    pub fn peer_address(&self) -> Option<(std::net::IpAddr, Option<u16>)> {
        parse_peer_ip(non_empty(&self.peer_ip)?)
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Parses `ip`, `ipv4:port` or `[ipv6]:port`.
pub fn parse_peer_ip(s: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    if let Some(ip) = fields::parse_ip(s) {
        return Some((ip, None));
    }
    let (ip, port, family) = match s.strip_prefix('[') {
        Some(rest) => {
            let (ip, port) = rest.split_once("]:")?;
            (ip, port, Family::V6)
        }
        None => {
            let (ip, port) = s.split_once(':')?;
            (ip, port, Family::V4)
        }
    };
    let ip = fields::parse_ip(ip).filter(|ip| Family::of(ip) == family)?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p >= 1)?;
    Some((ip, Some(port)))
}

impl Validate for BGPConfigurationSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(level) = &self.log_severity_screen {
            fields::check_keyword(level, LOG_LEVELS, &path.child("logSeverityScreen"), errors);
        }
        if let Some(port) = self.listen_port {
            fields::check_range(port.into(), 1, 65535, &path.child("listenPort"), errors);
        }
        for (name, list) in [
            ("serviceLoadBalancerIPs", &self.service_load_balancer_ips),
            ("serviceExternalIPs", &self.service_external_ips),
            ("serviceClusterIPs", &self.service_cluster_ips),
        ] {
            check_list_len(list.len(), MAX_BGP_LIST, &path.child(name), errors);
            for (i, block) in list.iter().enumerate() {
                let at = path.child(name).index(i).child("cidr");
                fields::check_masked_cidr(&block.cidr, &at, errors);
            }
        }
        check_list_len(
            self.communities.len(),
            MAX_BGP_LIST,
            &path.child("communities"),
            errors,
        );
        for (i, c) in self.communities.iter().enumerate() {
            let at = path.child("communities").index(i);
            if c.name.is_empty() {
                errors.push(&at.child("name"), "name must not be empty");
            }
            if !is_community_value(&c.value) {
                errors.push(&at.child("value"), COMMUNITY_VALUE_MESSAGE);
            }
        }
        let prefixes = path.child("prefixAdvertisements");
        check_list_len(
            self.prefix_advertisements.len(),
            MAX_BGP_LIST,
            &prefixes,
            errors,
        );
        for (i, p) in self.prefix_advertisements.iter().enumerate() {
            let at = prefixes.index(i);
            fields::check_masked_cidr(&p.cidr, &at.child("cidr"), errors);
            let at = at.child("communities");
            check_list_len(p.communities.len(), MAX_PREFIX_COMMUNITIES, &at, errors);
            for (j, c) in p.communities.iter().enumerate() {
                let known = self.communities.iter().any(|d| &d.name == c);
                if !known && !is_community_value_text(c) {
                    errors.push(
                        &at.index(j),
                        format!(
                            "{c:?} is neither a community value (aa:nn or aa:nn:mm) nor the \
                             name of an entry in communities"
                        ),
                    );
                }
            }
        }
        if let Some(password) = &self.node_mesh_password {
            password.validate_at(&path.child("nodeMeshPassword"), errors);
        }
        if let Some(d) = &self.node_mesh_max_restart_time {
            d.check(&path.child("nodeMeshMaxRestartTime"), errors);
        }
        for (i, name) in self.ignored_interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 {
                errors.push(
                    &path.child("ignoredInterfaces").index(i),
                    "an interface name or pattern has 1 to 15 characters",
                );
            }
        }
        if let Some(ip) = &self.local_workload_peering_ipv4 {
            let at = path.child("localWorkloadPeeringIPV4");
            fields::check_ip(ip, Some(Family::V4), &at, errors);
        }
        if let Some(ip) = &self.local_workload_peering_ipv6 {
            let at = path.child("localWorkloadPeeringIPV6");
            fields::check_ip(ip, Some(Family::V6), &at, errors);
        }
    }
}

/// Whether `s` has the shape of a community value (what the CEL pattern checks).
fn is_community_value_text(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `s` is a community value with numbers in range.
fn is_community_value(s: &str) -> bool {
    if !is_community_value_text(s) {
        return false;
    }
    let limit: u64 = if s.split(':').count() == 2 {
        65535
    } else {
        4_294_967_295
    };
    s.split(':')
        .all(|p| p.parse::<u64>().is_ok_and(|n| n <= limit))
}

fn check_list_len(len: usize, max: u32, path: &FieldPath, errors: &mut ValidationErrors) {
    if len > max as usize {
        errors.push(
            path,
            format!("has {len} entries; at most {max} are allowed"),
        );
    }
}

impl Validate for BgpPassword {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(r) = &self.secret_key_ref {
            let at = path.child("secretKeyRef");
            if r.name.is_empty() {
                errors.push(&at.child("name"), "name of the Secret must not be empty");
            }
            if r.key.is_empty() {
                errors.push(&at.child("key"), "key within the Secret must not be empty");
            }
        }
    }
}

impl Validate for BGPPeerSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        let node = non_empty(&self.node);
        let node_selector = non_empty(&self.node_selector);
        let peer_ip = non_empty(&self.peer_ip);
        let peer_selector = non_empty(&self.peer_selector);
        let workload_selector = non_empty(&self.local_workload_selector);

        if let Some(ip) = peer_ip
            && parse_peer_ip(ip).is_none()
        {
            errors.push(&path.child("peerIP"), format!("{ip:?}: {PEER_IP_MESSAGE}"));
        }
        if peer_ip.is_some() && peer_selector.is_some() {
            errors.push(&path.child("peerSelector"), PEER_IP_AND_SELECTOR_MESSAGE);
        }
        if node.is_some() && node_selector.is_some() {
            errors.push(&path.child("nodeSelector"), NODE_AND_SELECTOR_MESSAGE);
        }
        if peer_selector.is_some() && self.as_number.is_some() {
            errors.push(&path.child("asNumber"), SELECTOR_AND_AS_MESSAGE);
        }
        if workload_selector.is_some()
            && (peer_ip.is_some() || peer_selector.is_some() || self.as_number.is_none())
        {
            errors.push(&path.child("localWorkloadSelector"), WORKLOAD_PEER_MESSAGE);
        }

        for (name, selector) in [
            ("nodeSelector", node_selector),
            ("peerSelector", peer_selector),
            ("localWorkloadSelector", workload_selector),
        ] {
            if let Some(s) = selector {
                fields::check_selector(s, &path.child(name), errors);
            }
        }
        if let Some(password) = &self.password {
            password.validate_at(&path.child("password"), errors);
        }
        if let Some(d) = &self.max_restart_time {
            d.check(&path.child("maxRestartTime"), errors);
        }
        if let Some(d) = &self.keepalive_time {
            d.check(&path.child("keepaliveTime"), errors);
        }
        if let Some(n) = self.num_allowed_local_as_numbers {
            let at = path.child("numAllowedLocalASNumbers");
            fields::check_range(n.into(), 0, 10, &at, errors);
        }
        if let Some(gw) = &self.reachable_by {
            fields::check_ip(gw, None, &path.child("reachableBy"), errors);
        }
        check_list_len(self.filters.len(), 32, &path.child("filters"), errors);
    }
}

impl Validate for NodeSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(bgp) = &self.bgp {
            bgp.validate_at(&path.child("bgp"), errors);
        }
        if let Some(ip) = &self.ipv4_vxlan_tunnel_addr {
            let at = path.child("ipv4VXLANTunnelAddr");
            fields::check_ip(ip, Some(Family::V4), &at, errors);
        }
        if let Some(mac) = &self.vxlan_tunnel_mac_addr
            && !is_mac(mac)
        {
            errors.push(
                &path.child("vxlanTunnelMACAddr"),
                format!("{mac:?} is not a MAC address such as 66:2b:0e:8a:1f:9c"),
            );
        }
    }
}

impl Validate for NodeBGPSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(a) = &self.ipv4_address {
            check_interface_address(a, Family::V4, &path.child("ipv4Address"), errors);
        }
        if let Some(a) = &self.ipv6_address {
            check_interface_address(a, Family::V6, &path.child("ipv6Address"), errors);
        }
        if let Some(a) = &self.ipv4_ipip_tunnel_addr {
            let at = path.child("ipv4IPIPTunnelAddr");
            fields::check_ip(a, Some(Family::V4), &at, errors);
        }
        if let Some(id) = &self.route_reflector_cluster_id {
            let at = path.child("routeReflectorClusterID");
            fields::check_ip(id, Some(Family::V4), &at, errors);
        }
    }
}

/// Checks an interface address: an address of `family`, optionally with a prefix length
/// (host bits are expected here, since it is the node's own address).
fn check_interface_address(
    value: &str,
    family: Family,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    let ip = match value.split_once('/') {
        Some(_) => fields::parse_cidr(value).map(|net| net.addr()),
        None => fields::parse_ip(value),
    };
    match ip {
        Some(ip) if Family::of(&ip) == family => {}
        Some(_) => errors.push(
            path,
            format!(
                "{value} is the wrong IP family; this field takes an {} address",
                if family == Family::V4 { "IPv4" } else { "IPv6" }
            ),
        ),
        None => errors.push(
            path,
            format!(
                "{value:?} is not an address with optional prefix length, such as 192.0.2.10/24"
            ),
        ),
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
