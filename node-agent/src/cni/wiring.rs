//! The pod's wiring, following Calico's layout: a veth whose host end is `cali` + hash
//! with proxy ARP, a /32 (/128) host route to the pod, and inside the pod a single
//! address with a default route via a link-local gateway.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha1::{Digest, Sha1};

use super::error::{CniError, ErrorCode, kernel};
use super::netlink::{self, Netlink, errno, errno_of};

pub use crate::ROUTE_PROTOCOL;

/// The IPv4 next hop every pod uses; nobody owns it, the host veth answers by proxy ARP.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 next hop every pod uses; the host veth carries it as a link-local address.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// MAC of every host-side veth; pods never need to tell them apart.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// Prefix of host veth names.
pub const HOST_PREFIX: &str = "cali";

/// Prefix of the alias that marks a host veth as Tortie's: `tortie:<container>:<ifname>`.
pub const ALIAS_PREFIX: &str = "tortie:";

/// What ADD must build for one attachment.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The runtime's container ID.
    pub container_id: String,
    /// The host-side veth name.
    pub host_name: String,
    /// The pod-side interface name (`CNI_IFNAME`).
    pub pod_ifname: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// MTU of both ends; the kernel default when `None`.
    pub mtu: Option<u32>,
    /// The pod's addresses, installed as /32 and /128.
    pub addresses: Vec<IpAddr>,
    /// Extra destinations (besides the default) to route via the gateway in the pod.
    pub extra_routes: Vec<ipnet::IpNet>,
}

/// What ADD built, for the result.
#[derive(Clone, Debug)]
pub struct Wired {
    /// MAC of the pod-side interface.
    pub pod_mac: Option<String>,
    /// MTU of the pod-side interface.
    pub pod_mtu: Option<u32>,
}

/// The host veth name for a pod: `cali` + the first 11 hex digits of SHA-1 of
/// `<namespace>.<pod>`, or of the container ID when the runtime gave no pod name.
pub fn host_veth_name(namespace: Option<&str>, pod: Option<&str>, container_id: &str) -> String {
    let key = match (namespace, pod) {
        (Some(namespace), Some(pod)) if !pod.is_empty() => format!("{namespace}.{pod}"),
        _ => container_id.to_owned(),
    };
    let digest = hex::encode(Sha1::digest(key.as_bytes()));
    format!("{HOST_PREFIX}{}", &digest[..11])
}

/// The marker alias for a host veth.
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX}{container_id}:{ifname}")
}

/// The container ID and interface name a marker alias names; `None` if not Tortie's.
pub fn parse_owner_alias(alias: &str) -> Option<(&str, &str)> {
    alias.strip_prefix(ALIAS_PREFIX)?.split_once(':')
}

/// Builds the attachment. On failure everything made here is removed again.
pub fn wire(host: &Netlink, plan: &Plan) -> Result<Wired, CniError> {
    let namespace = netlink::open_netns(&plan.netns)?;

    create_veth_replacing_stale(host, plan, &namespace)?;

    let result = finish_wiring(host, plan, namespace);
    if result.is_err() {
        remove_host_veth(host, &plan.host_name);
    }
    result
}

/// Host and pod sides are independent once the veth exists, so they run in parallel:
/// the pod side on its own thread inside the pod's namespace.
fn finish_wiring(host: &Netlink, plan: &Plan, namespace: File) -> Result<Wired, CniError> {
    std::thread::scope(|scope| {
        let pod_side = scope.spawn(move || {
            netlink::join_netns(&namespace, &plan.netns)?;
            let pod = Netlink::connect()?;
            configure_pod(&pod, plan)
        });

        let host_side = configure_host(host, plan);

        let pod_side = pod_side
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        host_side.and(pod_side)
    })
}

fn create_veth_replacing_stale(
    host: &Netlink,
    plan: &Plan,
    namespace: &File,
) -> Result<(), CniError> {
    match create_veth(host, plan, namespace) {
        Err(error) if errno_of(&error) == Some(errno::EEXIST) => {
            let stale = host.link_by_name(&plan.host_name)?;
            let ours = stale
                .as_ref()
                .and_then(netlink::link_alias)
                .and_then(parse_owner_alias)
                .is_some();
            match stale {
                Some(link) if ours => {
                    tracing::info!(link = %plan.host_name, "removing a stale host veth left by an earlier sandbox of this pod");
                    host.delete_link(link.header.index, &plan.host_name)?;
                    create_veth(host, plan, namespace).map_err(|error| veth_error(plan, error))
                }
                Some(_) => Err(CniError::new(
                    ErrorCode::Kernel,
                    format!(
                        "host interface {} already exists and was not made by Tortie; remove it or rename it",
                        plan.host_name
                    ),
                )),
                None => Err(veth_error(plan, error)),
            }
        }
        other => other.map_err(|error| veth_error(plan, error)),
    }
}

/// One request makes both ends: the peer carries the pod namespace's fd, so the kernel
/// creates it there directly, both with their MTU set and the host end up.
///
/// The peer cannot be brought up in the same request (the kernel opens it before the
/// pair is linked and refuses with ENOTCONN), and the kernel ignores an alias on
/// creation; both are set afterwards.
fn create_veth(host: &Netlink, plan: &Plan, namespace: &File) -> Result<(), rtnetlink::Error> {
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.pod_ifname.clone())
        .setns_by_fd(namespace.as_raw_fd());
    let mut veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(plan.host_name.clone())
        .up()
        .address(HOST_MAC.to_vec());
    if let Some(mtu) = plan.mtu {
        peer = peer.mtu(mtu);
        veth = veth.mtu(mtu);
    }
    let veth = veth
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    host.block_on(host.handle().link().add(veth).execute())
}

fn veth_error(plan: &Plan, error: rtnetlink::Error) -> CniError {
    kernel(
        format!(
            "could not create veth {} with peer {} in {}",
            plan.host_name,
            plan.pod_ifname,
            plan.netns.display()
        ),
        error,
    )
}

fn configure_host(host: &Netlink, plan: &Plan) -> Result<(), CniError> {
    let link = host.link_by_name(&plan.host_name)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!(
                "host interface {} vanished right after it was created",
                plan.host_name
            ),
        )
    })?;
    let index = link.header.index;

    let alias = LinkUnspec::new_with_index(index)
        .alias(owner_alias(&plan.container_id, &plan.pod_ifname))
        .build();
    host.block_on(host.handle().link().set(alias).execute())
        .map_err(|error| {
            kernel(
                format!("could not mark {} as Tortie's", plan.host_name),
                error,
            )
        })?;

    let has_v4 = plan.addresses.iter().any(IpAddr::is_ipv4);
    let has_v6 = plan.addresses.iter().any(IpAddr::is_ipv6);
    if has_v4 {
        let name = &plan.host_name;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"), "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/neigh/{name}/proxy_delay"), "0")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1")?;
    }
    if has_v6 {
        // Known limitation: IPv6 forwarding also needs net.ipv6.conf.all.forwarding=1 on
        // the node, which is the agent's to set; the plugin only prepares the interface.
        let name = &plan.host_name;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0")?;
        host.add_address(index, IpAddr::V6(GATEWAY_V6), 64, &plan.host_name)?;
    }

    for address in &plan.addresses {
        host.add_route(
            host_route(*address, index),
            &format!(
                "host route to {} via {}",
                host_prefix(*address),
                plan.host_name
            ),
        )?;
    }
    Ok(())
}

fn configure_pod(pod: &Netlink, plan: &Plan) -> Result<Wired, CniError> {
    let link = pod.link_by_name(&plan.pod_ifname)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Kernel,
            format!(
                "pod interface {} is missing in {} right after it was created",
                plan.pod_ifname,
                plan.netns.display()
            ),
        )
    })?;
    let index = link.header.index;

    for (name, up) in [
        ("lo", LinkUnspec::new_with_name("lo").up().build()),
        (
            plan.pod_ifname.as_str(),
            LinkUnspec::new_with_index(index).up().build(),
        ),
    ] {
        pod.block_on(pod.handle().link().set(up).execute())
            .map_err(|error| kernel(format!("could not bring up {name} in the pod"), error))?;
    }

    for address in &plan.addresses {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        pod.add_address(index, *address, prefix_len, &plan.pod_ifname)?;
    }

    if plan.addresses.iter().any(IpAddr::is_ipv4) {
        let gateway_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(GATEWAY_V4, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        pod.add_route(
            gateway_route,
            &format!("pod route to {GATEWAY_V4} on {}", plan.pod_ifname),
        )?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(GATEWAY_V4)
            .output_interface(index)
            .build();
        pod.add_route(default, &format!("pod default route via {GATEWAY_V4}"))?;
    }
    if plan.addresses.iter().any(IpAddr::is_ipv6) {
        let default = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(GATEWAY_V6)
            .output_interface(index)
            .build();
        pod.add_route(default, &format!("pod default route via {GATEWAY_V6}"))?;
    }
    for destination in &plan.extra_routes {
        pod.add_route(
            pod_route_via_gateway(*destination, index),
            &format!("pod route to {destination}"),
        )?;
    }

    Ok(Wired {
        pod_mac: netlink::link_mac(&link),
        pod_mtu: netlink::link_mtu(&link),
    })
}

/// The host route to a pod address: `/32` (`/128`) out of the host veth, scope link,
/// tagged with [`ROUTE_PROTOCOL`].
pub fn host_route(address: IpAddr, host_index: u32) -> RouteMessage {
    match address {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(v4, 32)
            .output_interface(host_index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(v6, 128)
            .output_interface(host_index)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build(),
    }
}

fn pod_route_via_gateway(destination: ipnet::IpNet, index: u32) -> RouteMessage {
    match destination {
        ipnet::IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(GATEWAY_V4)
            .output_interface(index)
            .build(),
        ipnet::IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(GATEWAY_V6)
            .output_interface(index)
            .build(),
    }
}

/// `a.b.c.d/32` or `x::y/128`, as error messages and results show a pod address.
pub fn host_prefix(address: IpAddr) -> String {
    let prefix_len = if address.is_ipv4() { 32 } else { 128 };
    format!("{address}/{prefix_len}")
}

/// Removes the host veth (its pod end and its routes go with it). Used on rollback,
/// where the original error matters more than a failure to clean up, which is logged.
pub fn remove_host_veth(host: &Netlink, host_name: &str) {
    let removed = host.link_by_name(host_name).and_then(|link| match link {
        Some(link) => host.delete_link(link.header.index, host_name),
        None => Ok(false),
    });
    if let Err(error) = removed {
        tracing::warn!(link = %host_name, error = %error, details = %error.details, "rollback could not remove the host veth");
    }
}

/// DEL's kernel part: removes the host veth when it belongs to this container.
/// Returns whether something was removed.
///
/// The pod end and the host routes go away with the host end, so there is nothing else
/// to delete. A link of the same name owned by another container (the pod's newer
/// sandbox) is left alone.
pub fn unwire(
    host: &Netlink,
    host_name: &str,
    container_id: &str,
    ifname: &str,
) -> Result<bool, CniError> {
    let Some(link) = host.link_by_name(host_name)? else {
        return Ok(false);
    };
    match netlink::link_alias(&link).and_then(parse_owner_alias) {
        Some((owner, owner_ifname)) if owner == container_id && owner_ifname == ifname => {
            host.delete_link(link.header.index, host_name)
        }
        Some((owner, _)) => {
            tracing::info!(link = %host_name, owner = %owner, "host veth belongs to another container; leaving it");
            Ok(false)
        }
        None => {
            tracing::warn!(link = %host_name, "host interface has no Tortie marker; leaving it");
            Ok(false)
        }
    }
}

/// CHECK's kernel part: every difference from what ADD builds, each named.
pub fn inspect(host: &Netlink, plan: &Plan) -> Result<Vec<String>, CniError> {
    let mut problems = Vec::new();

    match host.link_by_name(&plan.host_name)? {
        None => problems.push(format!("host interface {} is missing", plan.host_name)),
        Some(link) => {
            inspect_host_link(&link, plan, &mut problems);
            inspect_host_routes(host, plan, link.header.index, &mut problems)?;
        }
    }

    let netns = plan.netns.clone();
    let pod_problems = netlink::in_netns(&netns, |pod| inspect_pod(pod, plan))?;
    problems.extend(pod_problems);
    Ok(problems)
}

fn inspect_host_link(link: &LinkMessage, plan: &Plan, problems: &mut Vec<String>) {
    if !netlink::link_is_up(link) {
        problems.push(format!("host interface {} is down", plan.host_name));
    }
    match netlink::link_alias(link).and_then(parse_owner_alias) {
        Some((owner, ifname)) if owner == plan.container_id && ifname == plan.pod_ifname => {}
        Some((owner, _)) => problems.push(format!(
            "host interface {} belongs to container {owner}, not {}",
            plan.host_name, plan.container_id
        )),
        None => problems.push(format!(
            "host interface {} lacks Tortie's marker alias",
            plan.host_name
        )),
    }
}

fn inspect_host_routes(
    host: &Netlink,
    plan: &Plan,
    index: u32,
    problems: &mut Vec<String>,
) -> Result<(), CniError> {
    let mut v4_routes = None;
    let mut v6_routes = None;
    for address in &plan.addresses {
        let routes = if address.is_ipv4() {
            v4_routes.get_or_insert(host.routes(AddressFamily::Inet)?)
        } else {
            v6_routes.get_or_insert(host.routes(AddressFamily::Inet6)?)
        };
        let full = if address.is_ipv4() { 32 } else { 128 };
        let present = routes.iter().any(|route| {
            netlink::route_destination(route) == Some(*address)
                && route.header.destination_prefix_length == full
                && netlink::route_oif(route) == Some(index)
                && u8::from(route.header.protocol) == ROUTE_PROTOCOL
        });
        if !present {
            problems.push(format!(
                "host route to {} via {} is missing",
                host_prefix(*address),
                plan.host_name
            ));
        }
    }
    Ok(())
}

fn inspect_pod(pod: &Netlink, plan: &Plan) -> Result<Vec<String>, CniError> {
    let mut problems = Vec::new();
    let Some(link) = pod.link_by_name(&plan.pod_ifname)? else {
        problems.push(format!(
            "pod interface {} is missing in {}",
            plan.pod_ifname,
            plan.netns.display()
        ));
        return Ok(problems);
    };
    let index = link.header.index;
    if !netlink::link_is_up(&link) {
        problems.push(format!("pod interface {} is down", plan.pod_ifname));
    }

    let addresses = pod.addresses(index)?;
    for address in &plan.addresses {
        let full = if address.is_ipv4() { 32 } else { 128 };
        let present = addresses.iter().any(|message| {
            netlink::address_of(message) == Some(*address) && message.header.prefix_len == full
        });
        if !present {
            problems.push(format!(
                "pod interface {} lacks address {}",
                plan.pod_ifname,
                host_prefix(*address)
            ));
        }
    }

    if plan.addresses.iter().any(IpAddr::is_ipv4) {
        let routes = pod.routes(AddressFamily::Inet)?;
        let on_link = routes.iter().any(|route| {
            netlink::route_destination(route) == Some(IpAddr::V4(GATEWAY_V4))
                && route.header.destination_prefix_length == 32
                && netlink::route_oif(route) == Some(index)
        });
        if !on_link {
            problems.push(format!(
                "pod route to {GATEWAY_V4} on {} is missing",
                plan.pod_ifname
            ));
        }
        if !has_default_via(&routes, IpAddr::V4(GATEWAY_V4), index) {
            problems.push(format!("pod default route via {GATEWAY_V4} is missing"));
        }
    }
    if plan.addresses.iter().any(IpAddr::is_ipv6) {
        let routes = pod.routes(AddressFamily::Inet6)?;
        if !has_default_via(&routes, IpAddr::V6(GATEWAY_V6), index) {
            problems.push(format!("pod default route via {GATEWAY_V6} is missing"));
        }
    }
    Ok(problems)
}

fn has_default_via(routes: &[RouteMessage], gateway: IpAddr, index: u32) -> bool {
    routes.iter().any(|route| {
        route.header.destination_prefix_length == 0
            && netlink::route_gateway(route) == Some(gateway)
            && netlink::route_oif(route) == Some(index)
    })
}

/// GC's kernel part: deletes Tortie's host veths whose container is not in `valid`.
/// Returns the names removed.
pub fn collect_stale_links(
    host: &Netlink,
    is_valid: impl Fn(&str, &str) -> bool,
) -> Result<Vec<String>, CniError> {
    let mut removed = Vec::new();
    for link in host.links()? {
        let Some(name) = netlink::link_name(&link) else {
            continue;
        };
        if !name.starts_with(HOST_PREFIX) {
            continue;
        }
        let Some((container_id, ifname)) = netlink::link_alias(&link).and_then(parse_owner_alias)
        else {
            continue;
        };
        if is_valid(container_id, ifname) {
            continue;
        }
        if host.delete_link(link.header.index, name)? {
            tracing::info!(link = %name, container = %container_id, "GC removed a host veth of a gone attachment");
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

fn write_sysctl(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value)
        .map_err(|error| kernel(format!("could not set {path} to {value}"), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_calicos_scheme() {
        let name = host_veth_name(Some("default"), Some("web-0"), "abc");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with("cali"));
        let expected = hex::encode(Sha1::digest(b"default.web-0"));
        assert_eq!(&name[4..], &expected[..11]);
        assert_eq!(
            host_veth_name(None, None, "abc"),
            host_veth_name(Some("ns"), None, "abc")
        );
        assert_ne!(name, host_veth_name(None, None, "abc"));
    }

    #[test]
    fn owner_alias_round_trips() {
        let alias = owner_alias("0123abcd", "eth0");
        assert_eq!(parse_owner_alias(&alias), Some(("0123abcd", "eth0")));
        assert_eq!(parse_owner_alias("calico"), None);
        assert!(alias.len() <= 255);
    }

    #[test]
    fn host_routes_carry_tortie_protocol() {
        let route = host_route("10.244.1.5".parse().expect("literal"), 7);
        assert_eq!(u8::from(route.header.protocol), ROUTE_PROTOCOL);
        assert_eq!(route.header.destination_prefix_length, 32);
        assert_eq!(netlink::route_oif(&route), Some(7));
    }
}
