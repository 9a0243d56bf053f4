//! From the node's `NodeNetworkConfig` to the data path's [`DataplaneSpec`]: a pure
//! mapping, so every rule of it is tested without a cluster or a kernel.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tortie_crds::node_network_config::{NodeNetworkConfigSpec, NodeRoute, RouteEncapsulation};
use tortie_crds::validation::{FieldPath, ValidationErrors};

use crate::dataplane::{
    DataplaneSpec, Encapsulation, IpipSpec, NatSpec, RemoteBlock, VxlanSpec, vtep_mac,
};

/// How often routes are checked again when the config does not say.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(90);

/// Bytes VXLAN over IPv4 adds to each packet (outer IPv4, UDP, VXLAN and inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Bytes IP in IP adds to each packet (the outer IPv4 header).
pub const IPIP_OVERHEAD: u32 = 20;

/// What the agent programs for one generation of its node config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The data path's desired state.
    pub dataplane: DataplaneSpec,
    /// MTU for pod interfaces, written into the CNI conflist; `None` leaves the kernel's
    /// default.
    pub pod_mtu: Option<u32>,
    /// How often to check the routes again; `None` turns the periodic check off (kernel
    /// events still trigger one).
    pub refresh_interval: Option<Duration>,
    /// Parts of the config this agent does not act on, said once per generation.
    pub ignored: Vec<String>,
}

/// What the mapping needs besides the config itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// This node's underlay IPv4 address (the Node's InternalIP); VXLAN packets leave from
    /// it.
    pub underlay_address: Option<Ipv4Addr>,
    /// MTU of the host interface that carries pod traffic, for deriving the pod MTU.
    pub host_mtu: Option<u32>,
    /// An MTU set on the agent (`TORTIE_MTU`), which wins over everything else.
    pub mtu_override: Option<u32>,
}

/// Maps a node config onto a data-path spec for `node_name`.
///
/// Errors name fields below `spec.` of the NodeNetworkConfig, so the status message points
/// at what the operator wrote.
///
/// Known limitation: the data path is IPv4 only, so IPv6 blocks, routes and pools are
/// listed in [`NodePlan::ignored`] rather than programmed.
pub fn plan(
    node_name: &str,
    config: &NodeNetworkConfigSpec,
    facts: NodeFacts,
) -> Result<NodePlan, ValidationErrors> {
    let spec_path = FieldPath::new("spec");
    let mut errors = ValidationErrors::default();
    let mut ignored = Vec::new();
    let mut dataplane = DataplaneSpec::new(node_name);

    for (i, block) in config.blocks.iter().enumerate() {
        let at = spec_path.child("blocks").index(i).child("cidr");
        match parse_net(&block.cidr, &at, &mut errors) {
            Some(IpNet::V4(net)) => dataplane.local_blocks.push(net),
            Some(IpNet::V6(net)) => ignored.push(format!("{at}: IPv6 block {net}")),
            None => {}
        }
    }

    for (i, route) in config.routes.iter().enumerate() {
        let at = spec_path.child("routes").index(i);
        if let Some(remote) = remote_block(route, config, &at, &mut errors, &mut ignored) {
            dataplane.remote_blocks.push(remote);
        }
    }

    let pod_mtu = pod_mtu(config, facts);
    let tunnel_at = spec_path.child("tunnel");
    if let Some(vxlan) = &config.tunnel.vxlan {
        let at = tunnel_at.child("vxlan");
        let tunnel_address = parse_ipv4(&vxlan.address, &at.child("address"), &mut errors);
        match facts.underlay_address {
            None => errors.push(
                &at,
                format!(
                    "VXLAN needs this node's underlay address, and Node {node_name} has no \
                     IPv4 InternalIP in status.addresses; give the node one"
                ),
            ),
            Some(local_address) => {
                if let Some(tunnel_address) = tunnel_address {
                    let mut spec = VxlanSpec::for_node(node_name, local_address, tunnel_address);
                    spec.vni = vxlan.vni;
                    spec.port = vxlan.port;
                    spec.mtu = pod_mtu.unwrap_or(VxlanSpec::DEFAULT_MTU);
                    note_mac_mismatch(&vxlan.mac, node_name, &at.child("mac"), &mut ignored);
                    dataplane.vxlan = Some(spec);
                }
            }
        }
    }
    if let Some(ipip) = &config.tunnel.ipip {
        let at = tunnel_at.child("ipip").child("address");
        if let Some(address) = parse_ipv4(&ipip.address, &at, &mut errors) {
            dataplane.ipip = Some(IpipSpec {
                mtu: pod_mtu.unwrap_or(IpipSpec::DEFAULT_MTU),
                tunnel_address: Some(address),
                ..IpipSpec::default()
            });
        }
    }

    dataplane.nat = nat(
        config,
        &spec_path.child("natOutgoing"),
        &mut errors,
        &mut ignored,
    );

    let refresh_interval = refresh_interval(config, &spec_path, &mut errors);
    errors.into_result()?;
    Ok(NodePlan {
        dataplane,
        pod_mtu,
        refresh_interval,
        ignored,
    })
}

/// The pod MTU: the agent's own setting, else the config's, else the host interface's minus
/// what the encapsulation in use adds.
pub fn pod_mtu(config: &NodeNetworkConfigSpec, facts: NodeFacts) -> Option<u32> {
    if let Some(mtu) = facts.mtu_override.filter(|mtu| *mtu > 0) {
        return Some(mtu);
    }
    if let Some(mtu) = config.mtu {
        return Some(mtu);
    }
    let host = facts.host_mtu?;
    let uses = |encapsulation| {
        config
            .routes
            .iter()
            .any(|route| route.encapsulation == encapsulation)
    };
    let overhead = if config.tunnel.vxlan.is_some() || uses(RouteEncapsulation::Vxlan) {
        VXLAN_OVERHEAD
    } else if config.tunnel.ipip.is_some() || uses(RouteEncapsulation::Ipip) {
        IPIP_OVERHEAD
    } else {
        0
    };
    Some(host.saturating_sub(overhead))
}

fn remote_block(
    route: &NodeRoute,
    config: &NodeNetworkConfigSpec,
    at: &FieldPath,
    errors: &mut ValidationErrors,
    ignored: &mut Vec<String>,
) -> Option<RemoteBlock> {
    let destination = parse_net(&route.destination, &at.child("destination"), errors);
    let via = parse_ip(&route.via, &at.child("via"), errors);
    let (destination, via) = match (destination?, via?) {
        (IpNet::V4(destination), IpAddr::V4(via)) => (destination, via),
        (IpNet::V6(destination), _) => {
            ignored.push(format!(
                "{at}: IPv6 route to {destination} on node {}",
                route.node
            ));
            return None;
        }
        (IpNet::V4(destination), IpAddr::V6(via)) => {
            errors.push(
                &at.child("via"),
                format!(
                    "{destination} is IPv4 but its next hop {via} is IPv6; give node {}'s \
                     IPv4 address",
                    route.node
                ),
            );
            return None;
        }
    };

    let encapsulation = match route.encapsulation {
        RouteEncapsulation::Direct => Encapsulation::Direct,
        RouteEncapsulation::Ipip => {
            if config.tunnel.ipip.is_none() {
                errors.push(
                    &at.child("encapsulation"),
                    format!(
                        "{destination} is reached by IPIP but spec.tunnel.ipip is unset; \
                         this node needs an IPIP device"
                    ),
                );
                return None;
            }
            Encapsulation::Ipip
        }
        RouteEncapsulation::Vxlan => {
            if config.tunnel.vxlan.is_none() {
                errors.push(
                    &at.child("encapsulation"),
                    format!(
                        "{destination} is reached by VXLAN but spec.tunnel.vxlan is unset; \
                         this node needs a VXLAN device"
                    ),
                );
                return None;
            }
            let Some(text) = &route.tunnel_address else {
                errors.push(
                    &at.child("tunnelAddress"),
                    format!(
                        "a VXLAN route needs node {}'s tunnel address as its gateway",
                        route.node
                    ),
                );
                return None;
            };
            let tunnel_address = parse_ipv4(text, &at.child("tunnelAddress"), errors)?;
            if let Some(mac) = &route.tunnel_mac {
                note_mac_mismatch(mac, &route.node, &at.child("tunnelMac"), ignored);
            }
            Encapsulation::Vxlan {
                tunnel_address,
                vtep_mac: vtep_mac(&route.node),
            }
        }
    };

    Some(RemoteBlock {
        cidr: destination,
        node_name: route.node.clone(),
        node_address: via,
        encapsulation,
    })
}

/// VTEP MACs are derived from node names on both ends (see [`vtep_mac`]), so neither side
/// depends on the other having read its config; a MAC in the config that differs is said,
/// not used.
fn note_mac_mismatch(given: &str, node: &str, at: &FieldPath, ignored: &mut Vec<String>) {
    let derived = vtep_mac(node).to_string();
    if !given.is_empty() && !given.eq_ignore_ascii_case(&derived) {
        ignored.push(format!(
            "{at}: MAC {given} differs from {derived}, the MAC node {node}'s device has"
        ));
    }
}

fn nat(
    config: &NodeNetworkConfigSpec,
    at: &FieldPath,
    errors: &mut ValidationErrors,
    ignored: &mut Vec<String>,
) -> NatSpec {
    let nat = &config.nat_outgoing;
    let mut v4 = |list: &[String], name: &str| -> Vec<Ipv4Net> {
        list.iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let at = at.child(name).index(i);
                match parse_net(text, &at, errors)? {
                    IpNet::V4(net) => Some(net),
                    IpNet::V6(net) => {
                        ignored.push(format!("{at}: IPv6 pool {net}"));
                        None
                    }
                }
            })
            .collect()
    };
    let outgoing_pools = v4(&nat.pools, "pools");
    let all_pools = v4(&nat.exclude, "exclude");
    // Known limitation: the data path masquerades to the outgoing interface's address with
    // the kernel's port choice, so a fixed source address or port range is not applied.
    if let Some(address) = &nat.address {
        ignored.push(format!("{}: source address {address}", at.child("address")));
    }
    if nat.port_range.is_some() {
        ignored.push(format!("{}: source port range", at.child("portRange")));
    }
    NatSpec {
        outgoing_pools,
        all_pools,
    }
}

fn refresh_interval(
    config: &NodeNetworkConfigSpec,
    spec_path: &FieldPath,
    errors: &mut ValidationErrors,
) -> Option<Duration> {
    let Some(text) = &config.data_path.route_refresh_interval else {
        return Some(DEFAULT_REFRESH_INTERVAL);
    };
    match text.to_std() {
        Some(interval) if interval.is_zero() => None,
        Some(interval) => Some(interval),
        None => {
            errors.push(
                &spec_path.child("dataPath").child("routeRefreshInterval"),
                format!(
                    "{:?} is not a duration such as \"90s\" or \"2m\"; \"0\" turns the check off",
                    text.0
                ),
            );
            None
        }
    }
}

fn parse_net(text: &str, at: &FieldPath, errors: &mut ValidationErrors) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            errors.push(
                at,
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            );
            None
        }
        Err(_) => {
            errors.push(at, format!("{text:?} is not a CIDR such as 10.244.3.0/26"));
            None
        }
    }
}

fn parse_ip(text: &str, at: &FieldPath, errors: &mut ValidationErrors) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push(at, format!("{text:?} is not an IP address"));
            None
        }
    }
}

fn parse_ipv4(text: &str, at: &FieldPath, errors: &mut ValidationErrors) -> Option<Ipv4Addr> {
    match parse_ip(text, at, errors)? {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => {
            errors.push(at, format!("{ip} is IPv6; an IPv4 address is needed here"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use tortie_crds::fields::GoDuration;
    use tortie_crds::node_network_config::{
        IpipTunnel, NatOutgoingConfig, OwnedBlock, RouteKind, TunnelConfig, VxlanTunnel,
    };

    use super::*;

    const NODE: &str = "node-a";

    fn net(text: &str) -> Ipv4Net {
        text.parse().expect("test CIDR")
    }

    fn route(destination: &str, node: &str, via: &str, encap: RouteEncapsulation) -> NodeRoute {
        NodeRoute {
            destination: destination.into(),
            kind: RouteKind::Block,
            node: node.into(),
            via: via.into(),
            encapsulation: encap,
            tunnel_address: None,
            tunnel_mac: None,
        }
    }

    fn direct_config() -> NodeNetworkConfigSpec {
        NodeNetworkConfigSpec {
            node_name: NODE.into(),
            blocks: vec![OwnedBlock {
                cidr: "10.244.1.0/26".into(),
                pool: "default-ipv4-ippool".into(),
            }],
            routes: vec![route(
                "10.244.2.0/26",
                "node-b",
                "198.18.1.11",
                RouteEncapsulation::Direct,
            )],
            mtu: Some(1450),
            nat_outgoing: NatOutgoingConfig {
                pools: vec!["10.244.0.0/16".into()],
                exclude: vec!["10.244.0.0/16".into(), "10.245.0.0/16".into()],
                ..NatOutgoingConfig::default()
            },
            ..NodeNetworkConfigSpec::default()
        }
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            underlay_address: Some(Ipv4Addr::new(198, 18, 1, 10)),
            host_mtu: Some(1500),
            mtu_override: None,
        }
    }

    fn errors_of(config: &NodeNetworkConfigSpec, facts: NodeFacts) -> Vec<String> {
        match plan(NODE, config, facts) {
            Ok(plan) => panic!("expected errors, got {plan:?}"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn direct_routes_blocks_and_nat() {
        let plan = plan(NODE, &direct_config(), facts()).expect("valid config");
        let mut expected = DataplaneSpec::new(NODE);
        expected.local_blocks = vec![net("10.244.1.0/26")];
        expected.remote_blocks = vec![RemoteBlock {
            cidr: net("10.244.2.0/26"),
            node_name: "node-b".into(),
            node_address: Ipv4Addr::new(198, 18, 1, 11),
            encapsulation: Encapsulation::Direct,
        }];
        expected.nat = NatSpec {
            outgoing_pools: vec![net("10.244.0.0/16")],
            all_pools: vec![net("10.244.0.0/16"), net("10.245.0.0/16")],
        };
        assert_eq!(plan.dataplane, expected);
        assert_eq!(plan.pod_mtu, Some(1450));
        assert_eq!(plan.refresh_interval, Some(DEFAULT_REFRESH_INTERVAL));
        assert!(plan.ignored.is_empty(), "{:?}", plan.ignored);
    }

    #[test]
    fn vxlan_routes_use_derived_vtep_macs_and_the_underlay_address() {
        let mut config = direct_config();
        config.mtu = None;
        config.tunnel = TunnelConfig {
            vxlan: Some(VxlanTunnel {
                vni: 4097,
                port: 8472,
                mac: vtep_mac(NODE).to_string(),
                address: "10.244.1.0".into(),
            }),
            ipip: None,
        };
        let mut vxlan_route = route(
            "10.244.2.0/26",
            "node-b",
            "198.18.1.11",
            RouteEncapsulation::Vxlan,
        );
        vxlan_route.tunnel_address = Some("10.244.2.0".into());
        vxlan_route.tunnel_mac = Some("02:00:00:00:00:01".into());
        config.routes = vec![vxlan_route];

        let plan = plan(NODE, &config, facts()).expect("valid config");
        assert_eq!(
            plan.dataplane.remote_blocks[0].encapsulation,
            Encapsulation::Vxlan {
                tunnel_address: Ipv4Addr::new(10, 244, 2, 0),
                vtep_mac: vtep_mac("node-b"),
            }
        );
        let vxlan = plan.dataplane.vxlan.expect("VXLAN device");
        assert_eq!(vxlan.vni, 4097);
        assert_eq!(vxlan.port, 8472);
        assert_eq!(vxlan.local_address, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(vxlan.tunnel_address, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(vxlan.mac, vtep_mac(NODE));
        // 1500 on the host minus what VXLAN adds.
        assert_eq!(vxlan.mtu, 1450);
        assert_eq!(plan.pod_mtu, Some(1450));
        // The route's MAC differs from the derived one: said, not used.
        assert_eq!(plan.ignored.len(), 1, "{:?}", plan.ignored);
        assert!(plan.ignored[0].starts_with("spec.routes[0].tunnelMac"));
    }

    #[test]
    fn ipip_device_and_mtu() {
        let mut config = direct_config();
        config.mtu = None;
        config.tunnel.ipip = Some(IpipTunnel {
            address: "10.244.1.1".into(),
        });
        config.routes[0].encapsulation = RouteEncapsulation::Ipip;
        let plan = plan(NODE, &config, facts()).expect("valid config");
        assert_eq!(
            plan.dataplane.ipip,
            Some(IpipSpec {
                device: IpipSpec::DEFAULT_DEVICE.into(),
                mtu: 1480,
                tunnel_address: Some(Ipv4Addr::new(10, 244, 1, 1)),
            })
        );
        assert_eq!(
            plan.dataplane.remote_blocks[0].encapsulation,
            Encapsulation::Ipip
        );
    }

    #[test]
    fn mtu_precedence() {
        let mut config = direct_config();
        let mut facts = facts();
        facts.mtu_override = Some(9000);
        assert_eq!(pod_mtu(&config, facts), Some(9000));
        facts.mtu_override = Some(0);
        assert_eq!(pod_mtu(&config, facts), Some(1450));
        config.mtu = None;
        assert_eq!(pod_mtu(&config, facts), Some(1500));
        facts.host_mtu = None;
        assert_eq!(pod_mtu(&config, facts), None);
    }

    #[test]
    fn refresh_interval_from_the_config() {
        let mut config = direct_config();
        config.data_path.route_refresh_interval = Some(GoDuration("10s".into()));
        let found = plan(NODE, &config, facts()).expect("valid config");
        assert_eq!(found.refresh_interval, Some(Duration::from_secs(10)));
        config.data_path.route_refresh_interval = Some(GoDuration("0".into()));
        let found = plan(NODE, &config, facts()).expect("valid config");
        assert_eq!(found.refresh_interval, None);
    }

    #[test]
    fn borrowed_addresses_are_routed_like_blocks() {
        let mut config = direct_config();
        let mut borrowed = route(
            "10.244.1.7/32",
            "node-b",
            "198.18.1.11",
            RouteEncapsulation::Direct,
        );
        borrowed.kind = RouteKind::Borrowed;
        config.routes.push(borrowed);
        let plan = plan(NODE, &config, facts()).expect("valid config");
        assert_eq!(plan.dataplane.remote_blocks[1].cidr, net("10.244.1.7/32"));
    }

    #[test]
    fn ipv6_parts_are_listed_as_ignored() {
        let mut config = direct_config();
        config.blocks.push(OwnedBlock {
            cidr: "fd00:10:244:1::/122".into(),
            pool: "v6".into(),
        });
        config.routes.push(route(
            "fd00:10:244:2::/122",
            "node-b",
            "fd00::b",
            RouteEncapsulation::Direct,
        ));
        config.nat_outgoing.pools.push("fd00:10:244::/48".into());
        let plan = plan(NODE, &config, facts()).expect("valid config");
        assert_eq!(plan.dataplane.local_blocks.len(), 1);
        assert_eq!(plan.dataplane.remote_blocks.len(), 1);
        assert_eq!(
            plan.ignored,
            vec![
                "spec.blocks[1].cidr: IPv6 block fd00:10:244:1::/122",
                "spec.routes[1]: IPv6 route to fd00:10:244:2::/122 on node node-b",
                "spec.natOutgoing.pools[1]: IPv6 pool fd00:10:244::/48",
            ]
        );
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let mut config = direct_config();
        config.blocks[0].cidr = "10.244.1.5/26".into();
        config.routes = vec![
            route(
                "10.244.2.0/26",
                "node-b",
                "nowhere",
                RouteEncapsulation::Direct,
            ),
            route(
                "10.244.3.0/26",
                "node-c",
                "198.18.1.12",
                RouteEncapsulation::Vxlan,
            ),
            route(
                "10.244.4.0/26",
                "node-d",
                "fd00::d",
                RouteEncapsulation::Direct,
            ),
        ];
        config.data_path.route_refresh_interval = Some(GoDuration("often".into()));
        assert_eq!(
            errors_of(&config, facts()),
            vec![
                "spec.blocks[0].cidr: 10.244.1.5/26 has host bits set; did you mean \
                 10.244.1.0/26?",
                "spec.routes[0].via: \"nowhere\" is not an IP address",
                "spec.routes[1].encapsulation: 10.244.3.0/26 is reached by VXLAN but \
                 spec.tunnel.vxlan is unset; this node needs a VXLAN device",
                "spec.routes[2].via: 10.244.4.0/26 is IPv4 but its next hop fd00::d is IPv6; \
                 give node node-d's IPv4 address",
                "spec.dataPath.routeRefreshInterval: \"often\" is not a duration such as \
                 \"90s\" or \"2m\"; \"0\" turns the check off",
            ]
        );
    }

    #[test]
    fn vxlan_without_an_underlay_address_is_an_error() {
        let mut config = direct_config();
        config.tunnel.vxlan = Some(VxlanTunnel {
            vni: 4096,
            port: 4789,
            mac: String::new(),
            address: "10.244.1.0".into(),
        });
        let mut facts = facts();
        facts.underlay_address = None;
        let found = errors_of(&config, facts);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("spec.tunnel.vxlan: VXLAN needs this node's underlay address"),
            "{found:?}"
        );
    }
}
