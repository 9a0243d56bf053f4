//! One NodeNetworkConfig per Node: what the node must program, computed from a snapshot
//! of the cluster by a pure function and written by the leader with server-side apply.
//!
//! # Routes and encapsulation
//!
//! A node gets a route to every block another node owns, and a /32 (or /128) route to
//! every address another node borrowed from a block it does not own. The next hop is the
//! other node's InternalIP of the block's family (else the address of its
//! `projectcalico.org/IPv4Address` or `IPv6Address` annotation). How the packets travel
//! follows the pool the destination lies in:
//!
//! - `ipipMode`/`vxlanMode` Never: a plain route through the underlay (`Direct`);
//! - Always: through the IPIP or VXLAN device;
//! - CrossSubnet: `Direct` when the other node is on this node's subnet, encapsulated
//!   otherwise. This node's subnet is the prefix of its `projectcalico.org/IPv4Address`
//!   (or `IPv6Address`) annotation, such as `198.18.1.10/24`; the other node is on it when
//!   its next-hop address lies inside. A node without that annotation has no known
//!   subnet, and its CrossSubnet traffic is encapsulated: encapsulated packets reach a
//!   node on any underlay, plain ones only a node on the same link.
//!
//! A VXLAN route needs the other node's tunnel address (annotation
//! `projectcalico.org/IPv4VXLANTunnelAddr`, or `IPv6VXLANTunnelAddr`), its gateway; until
//! that node's agent has published it, the route is left out and added on the next pass.
//!
//! A block outside every pool (its pool was deleted by hand while addresses were still
//! allocated from it) is neither owned nor routed.

// Known limitation: any change to a pool, block, affinity, node address, FelixConfiguration
// or IPAMConfig recomputes every node's config (debounced), which costs nodes × blocks
// per change; fine for hundreds of nodes, a per-node index of what changed is needed
// for thousands.
// Known limitation: every config lists a route per block of every other node, so it grows
// with the cluster (about 150 bytes a route: roughly 0.75 MB at 5,000 single-block nodes,
// under etcd's 1.5 MiB limit but not by much). Routes shared by all nodes belong in one
// shared object that configs refer to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tortie_crds::felix::{FelixConfigurationSpec, ProtoPort};
use tortie_crds::ipam::{ATTRIBUTE_NODE, AffinityState, IPAMConfigSpec};
use tortie_crds::ippool::{EncapsulationMode, IPPool};
use tortie_crds::node_network_config::{
    DataPathSettings, EndpointToHostAction, IpamSettings, IpipTunnel, NatOutgoingConfig,
    NodeNetworkConfig, NodeNetworkConfigSpec, NodeRoute, OwnedBlock, RouteEncapsulation, RouteKind,
    TunnelConfig, VxlanTunnel,
};

use crate::error::{Error, Result};
use crate::health::FirstPass;
use crate::metrics::Metrics;
use crate::run::{Backoffs, FIELD_MANAGER};
use crate::world::{Kind, Snapshot, World};

/// Annotation with a node's IPv4 address and subnet, as Calico writes it.
pub const ANNOTATION_IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
/// Annotation with a node's IPv6 address and subnet.
pub const ANNOTATION_IPV6_ADDRESS: &str = "projectcalico.org/IPv6Address";
/// Annotation with the address of a node's IPIP device.
pub const ANNOTATION_IPIP_TUNNEL_ADDRESS: &str = "projectcalico.org/IPv4IPIPTunnelAddr";
/// Annotation with the IPv4 address of a node's VXLAN device.
pub const ANNOTATION_VXLAN_TUNNEL_ADDRESS: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
/// Annotation with the IPv6 address of a node's VXLAN device.
pub const ANNOTATION_VXLAN_V6_TUNNEL_ADDRESS: &str = "projectcalico.org/IPv6VXLANTunnelAddr";
/// Annotation with the MAC address of a node's VXLAN device.
pub const ANNOTATION_VXLAN_TUNNEL_MAC: &str = "projectcalico.org/VXLANTunnelMACAddr";

/// Bytes VXLAN adds to an IPv4 packet (outer IPv4, UDP, VXLAN and Ethernet headers).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes IPIP adds (an outer IPv4 header).
pub const IPIP_OVERHEAD: u32 = 20;
/// Smallest MTU the NodeNetworkConfig schema accepts.
const MIN_MTU: u32 = 576;
/// VXLAN network identifier when FelixConfiguration sets none.
const DEFAULT_VXLAN_VNI: u32 = 4096;
/// VXLAN UDP port when FelixConfiguration sets none.
const DEFAULT_VXLAN_PORT: u16 = 4789;
/// How often every node's config is recomputed even when no watch said so.
const RESYNC: Duration = Duration::from_secs(600);

/// What the operator needs of a Node: a small projection, so that status heartbeats do
/// not count as changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// The Node's UID, for the owner reference.
    pub uid: Option<String>,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// Its InternalIP addresses.
    pub internal_ips: Vec<IpAddr>,
    /// Address and subnet from `projectcalico.org/IPv4Address`.
    pub ipv4_address: Option<IpNet>,
    /// Address and subnet from `projectcalico.org/IPv6Address`.
    pub ipv6_address: Option<IpNet>,
    /// Address of its IPIP device.
    pub ipip_tunnel_address: Option<IpAddr>,
    /// IPv4 address of its VXLAN device.
    pub vxlan_tunnel_address: Option<IpAddr>,
    /// IPv6 address of its VXLAN device.
    pub vxlan_v6_tunnel_address: Option<IpAddr>,
    /// MAC address of its VXLAN device.
    pub vxlan_tunnel_mac: Option<String>,
    /// Its `spec.podCIDRs`.
    pub pod_cidrs: Vec<IpNet>,
}

/// Settings of the operator that shape every node's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfigSettings {
    /// MTU of the nodes' uplinks.
    pub uplink_mtu: u32,
}

/// What the node-config controller shares between reconciles.
pub struct NodeConfigContext {
    /// The API client.
    pub client: Client,
    /// The caches.
    pub world: Arc<World>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Operator settings.
    pub settings: NodeConfigSettings,
    /// Per-node retry state.
    pub backoffs: Backoffs,
    /// The first pass over the nodes known at start.
    pub first_pass: Arc<FirstPass>,
}

impl NodeFacts {
    /// The projection of `node`.
    pub fn from_node(node: &Node) -> Self {
        let annotations = node.annotations();
        let net = |key: &str| annotations.get(key).and_then(|v| v.parse::<IpNet>().ok());
        let ip = |key: &str| annotations.get(key).and_then(|v| v.parse::<IpAddr>().ok());
        let status = node.status.as_ref();
        let internal_ips = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let pod_cidrs = node
            .spec
            .as_ref()
            .and_then(|s| {
                s.pod_cidrs
                    .clone()
                    .or_else(|| s.pod_cidr.clone().map(|c| vec![c]))
            })
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        Self {
            name: node.name_any(),
            uid: node.metadata.uid.clone(),
            labels: node.labels().clone(),
            internal_ips,
            ipv4_address: net(ANNOTATION_IPV4_ADDRESS),
            ipv6_address: net(ANNOTATION_IPV6_ADDRESS),
            ipip_tunnel_address: ip(ANNOTATION_IPIP_TUNNEL_ADDRESS),
            vxlan_tunnel_address: ip(ANNOTATION_VXLAN_TUNNEL_ADDRESS),
            vxlan_v6_tunnel_address: ip(ANNOTATION_VXLAN_V6_TUNNEL_ADDRESS),
            vxlan_tunnel_mac: annotations.get(ANNOTATION_VXLAN_TUNNEL_MAC).cloned(),
            pod_cidrs,
        }
    }

    /// The node's underlay address of one family: an InternalIP, else the annotation's.
    pub fn address(&self, ipv6: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|a| a.is_ipv6() == ipv6)
            .or_else(|| self.annotated(ipv6).map(|n| n.addr()))
    }

    /// The node's subnet of one family, known only from the annotation.
    pub fn subnet(&self, ipv6: bool) -> Option<IpNet> {
        self.annotated(ipv6).map(|n| n.trunc())
    }

    fn annotated(&self, ipv6: bool) -> Option<IpNet> {
        if ipv6 {
            self.ipv6_address
        } else {
            self.ipv4_address
        }
    }

    fn vxlan_tunnel(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 {
            self.vxlan_v6_tunnel_address
        } else {
            self.vxlan_tunnel_address
        }
    }
}

/// Everything `node` must program, computed from `snapshot` alone.
pub fn desired_config(
    node: &NodeFacts,
    snapshot: &Snapshot,
    settings: &NodeConfigSettings,
) -> NodeNetworkConfigSpec {
    let pools: Vec<(IpNet, &IPPool)> = snapshot
        .pools
        .iter()
        .filter_map(|p| Some((p.spec.cidr.parse::<IpNet>().ok()?.trunc(), p.as_ref())))
        .collect();
    let pool_of = |cidr: &IpNet| {
        pools
            .iter()
            .find(|(net, _)| net.contains(&cidr.network()))
            .map(|(_, p)| *p)
    };
    let owners = block_owners(snapshot);

    let blocks = owners
        .iter()
        .filter(|(_, owner)| **owner == node.name)
        .filter_map(|(cidr, _)| {
            Some(OwnedBlock {
                cidr: cidr.to_string(),
                pool: pool_of(cidr)?.name_any(),
            })
        })
        .collect();

    let mut routes = Vec::new();
    let mut route_to = |destination: IpNet, kind: RouteKind, owner: &str| {
        if owner == node.name {
            return;
        }
        let (Some(pool), Some(remote)) = (pool_of(&destination), snapshot.nodes.get(owner)) else {
            return;
        };
        let ipv6 = destination.addr().is_ipv6();
        let Some(via) = remote.address(ipv6) else {
            return;
        };
        let same_subnet = node.subnet(ipv6).is_some_and(|s| s.contains(&via));
        let encapsulation = route_encapsulation(pool, same_subnet);
        let (tunnel_address, tunnel_mac) = if encapsulation == RouteEncapsulation::Vxlan {
            let Some(address) = remote.vxlan_tunnel(ipv6) else {
                tracing::debug!(node = %node.name, other = %owner, "No VXLAN tunnel address yet");
                return;
            };
            (Some(address.to_string()), remote.vxlan_tunnel_mac.clone())
        } else {
            (None, None)
        };
        routes.push(NodeRoute {
            destination: destination.to_string(),
            kind,
            node: owner.to_owned(),
            via: via.to_string(),
            encapsulation,
            tunnel_address,
            tunnel_mac,
        });
    };
    for (cidr, owner) in &owners {
        route_to(*cidr, RouteKind::Block, owner);
    }
    for (address, holder) in borrowed_addresses(snapshot, &owners) {
        route_to(IpNet::from(address), RouteKind::Borrowed, &holder);
    }
    routes.sort_by(|a, b| {
        (a.destination.as_str(), a.node.as_str()).cmp(&(b.destination.as_str(), b.node.as_str()))
    });

    let felix = snapshot.felix_for(&node.name);
    let uses = |mode: fn(&IPPool) -> EncapsulationMode| {
        pools
            .iter()
            .any(|(_, p)| mode(p) != EncapsulationMode::Never)
    };
    let ipip = uses(|p| p.spec.effective_ipip_mode());
    let vxlan = uses(|p| p.spec.vxlan_mode);

    let tunnel = TunnelConfig {
        ipip: node
            .ipip_tunnel_address
            .filter(|_| ipip)
            .map(|a| IpipTunnel {
                address: a.to_string(),
            }),
        vxlan: match (vxlan, node.vxlan_tunnel_address, &node.vxlan_tunnel_mac) {
            (true, Some(address), Some(mac)) => Some(VxlanTunnel {
                vni: felix
                    .vxlan_vni
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(DEFAULT_VXLAN_VNI),
                port: felix
                    .vxlan_port
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(DEFAULT_VXLAN_PORT),
                mac: mac.clone(),
                address: address.to_string(),
            }),
            _ => None,
        },
    };

    let mut nat_pools = BTreeSet::new();
    let mut all_pools = BTreeSet::new();
    for (net, pool) in &pools {
        all_pools.insert(*net);
        if pool.spec.effective_nat_outgoing() {
            nat_pools.insert(*net);
        }
    }
    let nat_outgoing = NatOutgoingConfig {
        pools: nat_pools.iter().map(ToString::to_string).collect(),
        exclude: all_pools.iter().map(ToString::to_string).collect(),
        address: felix.nat_outgoing_address.clone(),
        port_range: felix.nat_port_range,
    };

    let ipam_config = snapshot
        .ipam_config
        .as_ref()
        .map(|c| c.spec.clone())
        .unwrap_or_default();

    NodeNetworkConfigSpec {
        node_name: node.name.clone(),
        blocks,
        routes,
        tunnel,
        mtu: Some(pod_mtu(settings.uplink_mtu, &felix, ipip, vxlan)),
        nat_outgoing,
        ipam: ipam_settings(&ipam_config),
        data_path: data_path_settings(&felix),
        // Known limitation: BGP sessions are not computed yet, so `bgp` stays unset and
        // agents run no BGP speaker.
        bgp: None,
        policy: Default::default(),
    }
}

/// How traffic to a destination in `pool` travels; `same_subnet` says whether the other
/// node is known to share this node's subnet.
pub fn route_encapsulation(pool: &IPPool, same_subnet: bool) -> RouteEncapsulation {
    let pick = |mode: EncapsulationMode, tunnel: RouteEncapsulation| match mode {
        EncapsulationMode::Always => Some(tunnel),
        EncapsulationMode::CrossSubnet if same_subnet => Some(RouteEncapsulation::Direct),
        EncapsulationMode::CrossSubnet => Some(tunnel),
        EncapsulationMode::Never => None,
    };
    pick(pool.spec.effective_ipip_mode(), RouteEncapsulation::Ipip)
        .or_else(|| pick(pool.spec.vxlan_mode, RouteEncapsulation::Vxlan))
        .unwrap_or(RouteEncapsulation::Direct)
}

/// The pod MTU: FelixConfiguration's per-encapsulation MTU when set, else the uplink's
/// less the encapsulation's overhead; the smallest over the encapsulations in use.
pub fn pod_mtu(uplink: u32, felix: &FelixConfigurationSpec, ipip: bool, vxlan: bool) -> u32 {
    let configured = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|&v| v > 0);
    let mut mtu = uplink;
    if vxlan {
        mtu = mtu.min(configured(felix.vxlan_mtu).unwrap_or(uplink.saturating_sub(VXLAN_OVERHEAD)));
    }
    if ipip {
        mtu = mtu.min(configured(felix.ipip_mtu).unwrap_or(uplink.saturating_sub(IPIP_OVERHEAD)));
    }
    mtu.max(MIN_MTU)
}

/// Which node owns each block: the node the IPAMBlock's affinity names, or, for a block
/// whose IPAMBlock is not written yet, the node of a confirmed BlockAffinity.
pub fn block_owners(snapshot: &Snapshot) -> BTreeMap<IpNet, String> {
    let mut owners = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for block in &snapshot.blocks {
        if block.spec.deleted {
            continue;
        }
        seen.insert(block.cidr());
        if let Some(node) = block.node() {
            owners.insert(block.cidr(), node.to_owned());
        }
    }
    for affinity in &snapshot.affinities {
        let spec = &affinity.spec;
        if spec.state == AffinityState::Confirmed
            && !spec.deleted.0
            && spec.affinity_type() == tortie_crds::ipam::AFFINITY_TYPE_HOST
            && !seen.contains(&spec.cidr)
        {
            owners.insert(spec.cidr, spec.node.clone());
        }
    }
    owners
}

/// Addresses held for a pod on another node than the block's owner, with that node.
fn borrowed_addresses(
    snapshot: &Snapshot,
    owners: &BTreeMap<IpNet, String>,
) -> Vec<(IpAddr, String)> {
    let mut borrowed = Vec::new();
    for block in &snapshot.blocks {
        let owner = owners.get(&block.cidr());
        for (address, holder) in block.allocations() {
            if let Some(node) = holder.secondary.get(ATTRIBUTE_NODE)
                && owner != Some(node)
                && !node.is_empty()
            {
                borrowed.push((address, node.clone()));
            }
        }
    }
    borrowed
}

fn ipam_settings(config: &IPAMConfigSpec) -> IpamSettings {
    IpamSettings {
        strict_affinity: config.strict_affinity,
        auto_allocate_blocks: config.auto_allocate_blocks,
        max_blocks_per_host: config.block_limit().unwrap_or(0),
    }
}

fn data_path_settings(felix: &FelixConfigurationSpec) -> DataPathSettings {
    let action = match felix
        .default_endpoint_to_host_action
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("accept") => EndpointToHostAction::Accept,
        Some("return") => EndpointToHostAction::Return,
        _ => EndpointToHostAction::Drop,
    };
    DataPathSettings {
        log_severity: felix.log_severity_screen.clone(),
        failsafe_inbound_host_ports: felix
            .failsafe_inbound_host_ports
            .clone()
            .unwrap_or_else(|| default_failsafe(&[("TCP", 22), ("UDP", 68)])),
        failsafe_outbound_host_ports: felix
            .failsafe_outbound_host_ports
            .clone()
            .unwrap_or_else(|| default_failsafe(&[("UDP", 53), ("UDP", 67)])),
        route_refresh_interval: felix.route_refresh_interval.clone(),
        default_endpoint_to_host_action: action,
    }
}

/// Calico's default failsafe ports: the given ones plus BGP, etcd, Typha and the API
/// server, which a node must reach whatever the policy says.
fn default_failsafe(first: &[(&str, u16)]) -> Vec<ProtoPort> {
    let shared = [
        ("TCP", 179),
        ("TCP", 2379),
        ("TCP", 2380),
        ("TCP", 5473),
        ("TCP", 6443),
        ("TCP", 6666),
        ("TCP", 6667),
    ];
    first
        .iter()
        .chain(shared.iter())
        .map(|(protocol, port)| ProtoPort {
            protocol: Some((*protocol).to_owned()),
            port: *port,
            net: None,
        })
        .collect()
}

/// Runs the node-config controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<NodeConfigContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let nodes = Api::<DeserializeGuard<Node>>::all(ctx.client.clone());
    let configs = Api::<DeserializeGuard<NodeNetworkConfig>>::all(ctx.client.clone());
    let everything = ctx.world.changes(&[
        Kind::IPPool,
        Kind::IPAMBlock,
        Kind::BlockAffinity,
        Kind::Node,
        Kind::FelixConfiguration,
        Kind::IPAMConfig,
    ]);
    Controller::new(nodes, watcher::Config::default())
        .owns(configs, watcher::Config::default())
        .reconcile_all_on(everything)
        .with_config(
            kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(
    node: Arc<DeserializeGuard<Node>>,
    ctx: Arc<NodeConfigContext>,
) -> Result<Action> {
    let started = Instant::now();
    let name = node.name_any();
    let result = reconcile_node(&node, &ctx).await;
    ctx.metrics.reconciled(
        Kind::NodeNetworkConfig.as_str(),
        started.elapsed(),
        result.is_err(),
    );
    match &result {
        Ok(_) => ctx.backoffs.reset(&name),
        Err(error) if error.is_permanent() => ctx.first_pass.done(&name),
        Err(_) => {}
    }
    if result.is_ok() {
        ctx.first_pass.done(&name);
    }
    result
}

async fn reconcile_node(node: &DeserializeGuard<Node>, ctx: &NodeConfigContext) -> Result<Action> {
    let node = match &node.0 {
        Ok(node) => node,
        Err(invalid) => {
            return Err(Error::Malformed {
                kind: "Node",
                name: invalid.metadata.name.clone().unwrap_or_default(),
                message: invalid.error.clone(),
            });
        }
    };
    if node.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the config with its owner.
        return Ok(Action::await_change());
    }
    let facts = NodeFacts::from_node(node);
    let Some(uid) = facts.uid.clone() else {
        return Ok(Action::await_change());
    };
    let snapshot = ctx.world.snapshot();
    let spec = desired_config(&facts, &snapshot, &ctx.settings);

    let current = ctx.world.node_configs.get(&facts.name);
    if current
        .as_ref()
        .is_some_and(|c| c.spec == spec && c.owner_uid.as_deref() == Some(uid.as_str()))
    {
        tracing::debug!(node = %facts.name, "Node config up to date");
        return Ok(Action::requeue(RESYNC));
    }

    let mut config = NodeNetworkConfig::new(&facts.name, spec);
    config.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: facts.name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    let api = Api::<NodeNetworkConfig>::all(ctx.client.clone());
    api.patch(
        &facts.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&config),
    )
    .await?;
    tracing::info!(
        node = %facts.name,
        blocks = config.spec.blocks.len(),
        routes = config.spec.routes.len(),
        "Wrote node config"
    );
    Ok(Action::requeue(RESYNC))
}

fn error_policy(
    node: Arc<DeserializeGuard<Node>>,
    error: &Error,
    ctx: Arc<NodeConfigContext>,
) -> Action {
    ctx.backoffs
        .after_error("node config", &node.name_any(), error)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tortie_crds::felix::FelixConfiguration;
    use tortie_crds::ipam::{AllocationAttribute, BlockAffinity, IPAMBlock, IPAMConfig};
    use tortie_crds::ippool::IPPoolSpec;
    use tortie_crds::validation::Validate;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR parses")
    }

    fn node(name: &str, ip: &str, annotated_subnet: Option<&str>) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            internal_ips: vec![ip.parse().expect("test IP parses")],
            ipv4_address: annotated_subnet.map(net),
            ..NodeFacts::default()
        }
    }

    fn pool(cidr: &str, ipip: EncapsulationMode, vxlan: EncapsulationMode) -> Arc<IPPool> {
        let mut spec = IPPoolSpec::new(cidr);
        spec.ipip_mode = ipip;
        spec.vxlan_mode = vxlan;
        spec.nat_outgoing = true;
        Arc::new(IPPool::new("pool", spec))
    }

    fn block(cidr: &str, owner: &str) -> Arc<IPAMBlock> {
        Arc::new(IPAMBlock::new_empty(net(cidr), Some(owner), 1).expect("test block is valid"))
    }

    /// Three nodes: a1 and a2 on 198.18.1.0/24, b1 on 198.18.2.0/24, one block each.
    fn world(pool: Arc<IPPool>) -> Snapshot {
        let nodes = [
            node("a1", "198.18.1.10", Some("198.18.1.10/24")),
            node("a2", "198.18.1.11", Some("198.18.1.11/24")),
            node("b1", "198.18.2.10", Some("198.18.2.10/24")),
        ];
        Snapshot {
            pools: vec![pool],
            blocks: vec![
                block("10.244.0.0/26", "a1"),
                block("10.244.0.64/26", "a2"),
                block("10.244.0.128/26", "b1"),
            ],
            nodes: nodes
                .into_iter()
                .map(|n| (n.name.clone(), Arc::new(n)))
                .collect(),
            ..Snapshot::default()
        }
    }

    fn settings() -> NodeConfigSettings {
        NodeConfigSettings { uplink_mtu: 1500 }
    }

    fn encapsulations(spec: &NodeNetworkConfigSpec) -> BTreeMap<String, RouteEncapsulation> {
        spec.routes
            .iter()
            .map(|r| (r.node.clone(), r.encapsulation))
            .collect()
    }

    #[test]
    fn never_routes_directly_to_every_other_block() {
        use EncapsulationMode::Never;
        let snapshot = world(pool("10.244.0.0/16", Never, Never));
        let spec = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        assert_eq!(spec.node_name, "a1");
        assert_eq!(
            spec.blocks,
            [OwnedBlock {
                cidr: "10.244.0.0/26".into(),
                pool: "pool".into()
            }]
        );
        assert_eq!(spec.routes.len(), 2);
        assert_eq!(spec.routes[0].destination, "10.244.0.128/26");
        assert_eq!(spec.routes[0].via, "198.18.2.10");
        assert_eq!(spec.routes[0].kind, RouteKind::Block);
        assert!(
            spec.routes
                .iter()
                .all(|r| r.encapsulation == RouteEncapsulation::Direct)
        );
        assert_eq!(spec.mtu, Some(1500));
        assert_eq!(spec.nat_outgoing.pools, ["10.244.0.0/16"]);
        assert_eq!(spec.nat_outgoing.exclude, ["10.244.0.0/16"]);
        assert!(spec.validate().is_ok(), "{:?}", spec.validate());
    }

    #[test]
    fn always_ipip_encapsulates_everything_and_lowers_the_mtu() {
        use EncapsulationMode::{Always, Never};
        let mut snapshot = world(pool("10.244.0.0/16", Always, Never));
        let mut a1 = (*snapshot.nodes["a1"]).clone();
        a1.ipip_tunnel_address = Some("10.244.0.1".parse().expect("test IP parses"));
        snapshot.nodes.insert("a1".into(), Arc::new(a1));
        let spec = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        assert_eq!(
            encapsulations(&spec),
            BTreeMap::from([
                ("a2".into(), RouteEncapsulation::Ipip),
                ("b1".into(), RouteEncapsulation::Ipip)
            ])
        );
        assert_eq!(spec.mtu, Some(1480));
        assert_eq!(
            spec.tunnel.ipip.as_ref().map(|t| t.address.as_str()),
            Some("10.244.0.1")
        );
    }

    #[test]
    fn cross_subnet_encapsulates_only_across_subnets() {
        use EncapsulationMode::{CrossSubnet, Never};
        let snapshot = world(pool("10.244.0.0/16", CrossSubnet, Never));
        let spec = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        assert_eq!(
            encapsulations(&spec),
            BTreeMap::from([
                ("a2".into(), RouteEncapsulation::Direct),
                ("b1".into(), RouteEncapsulation::Ipip)
            ])
        );

        // Without the subnet annotation the subnet is unknown: encapsulate.
        let mut unknown = snapshot.clone();
        unknown
            .nodes
            .insert("a1".into(), Arc::new(node("a1", "198.18.1.10", None)));
        let spec = desired_config(&unknown.nodes["a1"], &unknown, &settings());
        assert!(
            spec.routes
                .iter()
                .all(|r| r.encapsulation == RouteEncapsulation::Ipip)
        );
    }

    #[test]
    fn vxlan_routes_wait_for_the_tunnel_address() {
        use EncapsulationMode::{Always, Never};
        let mut snapshot = world(pool("10.244.0.0/16", Never, Always));
        let spec = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        assert!(spec.routes.is_empty(), "no tunnel addresses published yet");
        assert_eq!(spec.mtu, Some(1450));

        let mut b1 = (*snapshot.nodes["b1"]).clone();
        b1.vxlan_tunnel_address = Some("10.244.0.129".parse().expect("test IP parses"));
        b1.vxlan_tunnel_mac = Some("66:00:00:00:00:01".into());
        snapshot.nodes.insert("b1".into(), Arc::new(b1));
        let spec = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        assert_eq!(spec.routes.len(), 1);
        let route = &spec.routes[0];
        assert_eq!(route.encapsulation, RouteEncapsulation::Vxlan);
        assert_eq!(route.tunnel_address.as_deref(), Some("10.244.0.129"));
        assert_eq!(route.via, "198.18.2.10");
        assert!(spec.validate().is_ok());
        assert!(spec.tunnel.vxlan.is_none(), "a1 has published no address");

        // a1's own device follows its annotations, with Felix's defaults.
        let mut a1 = (*snapshot.nodes["a1"]).clone();
        a1.vxlan_tunnel_address = Some("10.244.0.1".parse().expect("test IP parses"));
        a1.vxlan_tunnel_mac = Some("66:00:00:00:00:02".into());
        snapshot.nodes.insert("a1".into(), Arc::new(a1));
        let spec = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        assert_eq!(
            spec.tunnel.vxlan,
            Some(VxlanTunnel {
                vni: 4096,
                port: 4789,
                mac: "66:00:00:00:00:02".into(),
                address: "10.244.0.1".into(),
            })
        );
        let spec = desired_config(&snapshot.nodes["b1"], &snapshot, &settings());
        assert_eq!(
            spec.routes.len(),
            1,
            "b1 reaches a1, the other node with an address"
        );
        assert_eq!(spec.routes[0].tunnel_address.as_deref(), Some("10.244.0.1"));
    }

    #[test]
    fn mtu_follows_felix_overrides_and_the_smallest_encapsulation() {
        let mut felix = FelixConfigurationSpec::default();
        assert_eq!(pod_mtu(1500, &felix, false, false), 1500);
        assert_eq!(pod_mtu(1500, &felix, true, false), 1480);
        assert_eq!(pod_mtu(1500, &felix, false, true), 1450);
        assert_eq!(pod_mtu(1500, &felix, true, true), 1450);
        assert_eq!(pod_mtu(9000, &felix, true, false), 8980);
        felix.ipip_mtu = Some(1400);
        assert_eq!(pod_mtu(1500, &felix, true, false), 1400);
        felix.vxlan_mtu = Some(0);
        assert_eq!(pod_mtu(1500, &felix, false, true), 1450, "0 means unset");
    }

    #[test]
    fn felix_node_settings_override_the_default() {
        use EncapsulationMode::{Always, Never};
        let mut snapshot = world(pool("10.244.0.0/16", Always, Never));
        let default = FelixConfigurationSpec {
            ipip_mtu: Some(1400),
            log_severity_screen: Some("Info".into()),
            ..Default::default()
        };
        let own = FelixConfigurationSpec {
            ipip_mtu: Some(1300),
            ..Default::default()
        };
        snapshot.felix = BTreeMap::from([
            (
                "default".to_owned(),
                Arc::new(FelixConfiguration::new("default", default)),
            ),
            (
                "node.b1".to_owned(),
                Arc::new(FelixConfiguration::new("node.b1", own)),
            ),
        ]);
        let a1 = desired_config(&snapshot.nodes["a1"], &snapshot, &settings());
        let b1 = desired_config(&snapshot.nodes["b1"], &snapshot, &settings());
        assert_eq!(a1.mtu, Some(1400));
        assert_eq!(b1.mtu, Some(1300));
        assert_eq!(b1.data_path.log_severity.as_deref(), Some("Info"));
        assert!(!b1.data_path.failsafe_inbound_host_ports.is_empty());
    }

    #[test]
    fn ipam_settings_and_affinities_and_borrowed_addresses() {
        use EncapsulationMode::Never;
        let mut snapshot = world(pool("10.244.0.0/16", Never, Never));
        snapshot.ipam_config = Some(Arc::new(IPAMConfig::new(
            "default",
            IPAMConfigSpec {
                strict_affinity: true,
                max_blocks_per_host: 4,
                ..IPAMConfigSpec::default()
            },
        )));
        // A confirmed affinity whose block is not written yet still counts.
        snapshot.affinities = vec![Arc::new(BlockAffinity::for_node(
            "a2",
            net("10.244.1.0/26"),
            AffinityState::Confirmed,
        ))];
        // b1 borrowed an address from a1's block.
        let mut lent = (*snapshot.blocks[0]).clone();
        let owner = AllocationAttribute::for_pod("h.x", "b1", "default", "x", "t");
        lent.allocate(1, &owner).expect("test block has room");
        snapshot.blocks[0] = Arc::new(lent);

        let a2 = desired_config(&snapshot.nodes["a2"], &snapshot, &settings());
        assert!(a2.ipam.strict_affinity);
        assert_eq!(a2.ipam.max_blocks_per_host, 4);
        assert_eq!(a2.blocks.len(), 2);
        let borrowed: Vec<_> = a2
            .routes
            .iter()
            .filter(|r| r.kind == RouteKind::Borrowed)
            .collect();
        assert_eq!(borrowed.len(), 1);
        assert_eq!(borrowed[0].destination, "10.244.0.0/32");
        assert_eq!(borrowed[0].node, "b1");

        let b1 = desired_config(&snapshot.nodes["b1"], &snapshot, &settings());
        assert!(
            b1.routes.iter().all(|r| r.kind == RouteKind::Block),
            "no route to its own borrowed address"
        );
    }

    #[test]
    fn node_facts_read_addresses_and_annotations() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "n1",
                "uid": "u1",
                "annotations": {
                    ANNOTATION_IPV4_ADDRESS: "198.18.1.10/24",
                    ANNOTATION_IPIP_TUNNEL_ADDRESS: "10.244.0.1"
                }
            },
            "spec": {"podCIDRs": ["10.244.3.0/24"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "198.18.1.10"}
            ]}
        }))
        .expect("test node parses");
        let facts = NodeFacts::from_node(&node);
        assert_eq!(
            facts.address(false),
            Some("198.18.1.10".parse().expect("IP"))
        );
        assert_eq!(facts.address(true), None);
        assert_eq!(facts.subnet(false), Some(net("198.18.1.0/24")));
        assert_eq!(facts.pod_cidrs, [net("10.244.3.0/24")]);
        assert!(facts.ipip_tunnel_address.is_some());
    }
}
