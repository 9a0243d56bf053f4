//! Tunnel devices (VXLAN and IP-in-IP) and the static neighbour and forwarding entries
//! VXLAN needs so the kernel neither floods nor learns.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{LinkIpIp, LinkUnspec, LinkVxlan};

use super::routes::rtnetlink_io;
use super::{DataplaneSpec, Encapsulation, IpipSpec, VxlanSpec};

/// How many neighbour/FDB requests are in flight at once.
const PARALLEL_REQUESTS: usize = 64;

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EOPNOTSUPP: i32 = 95;

/// A VXLAN tunnel endpoint's MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VtepMac(pub [u8; 6]);

impl fmt::Display for VtepMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The VXLAN device MAC of the node called `node_name`.
///
/// Derived from the name alone, so it survives agent and node restarts (remote nodes keep
/// valid entries) and any node can compute any other node's MAC. It is a locally
/// administered unicast address: FNV-1a over the name, with the two low bits of the first
/// byte set to "local, unicast".
pub fn vtep_mac(node_name: &str) -> VtepMac {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"tortie-vtep/"
        .iter()
        .chain(node_name.as_bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        });
    let bytes = hash.to_be_bytes();
    VtepMac([
        (bytes[0] & 0xfc) | 0x02,
        bytes[1],
        bytes[2],
        bytes[3],
        bytes[4],
        bytes[5],
    ])
}

/// Errors setting up tunnel devices.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The kernel has no IPIP support.
    #[error(
        "cannot create IPIP device {device}: this kernel has no ipip link type (module ipip \
         not built or not loaded); load it with `modprobe ipip` or use VXLAN for the pool"
    )]
    IpipUnsupported {
        /// The device that was to be created.
        device: String,
    },
    /// A netlink request about a device failed.
    #[error("{operation} {device}: {source}")]
    Device {
        /// What was being done.
        operation: &'static str,
        /// The device.
        device: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
}

impl TunnelError {
    fn device(operation: &'static str, device: &str, source: rtnetlink::Error) -> Self {
        Self::Device {
            operation,
            device: device.to_owned(),
            source: rtnetlink_io(source),
        }
    }
}

/// A remote node's VXLAN endpoint, as this node's neighbour and FDB entries describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanPeer {
    /// The remote node's address on its VXLAN device (the routes' next hop).
    pub tunnel_address: Ipv4Addr,
    /// The remote VXLAN device's MAC.
    pub mac: VtepMac,
    /// The remote node's underlay address, where encapsulated packets go.
    pub underlay_address: Ipv4Addr,
}

/// One entry per remote VXLAN endpoint the spec routes through, sorted by tunnel address.
pub fn desired_vxlan_peers(spec: &DataplaneSpec) -> Vec<VxlanPeer> {
    let mut peers: Vec<VxlanPeer> = spec
        .remote_blocks
        .iter()
        .filter_map(|remote| match remote.encapsulation {
            Encapsulation::Vxlan {
                tunnel_address,
                vtep_mac,
            } => Some(VxlanPeer {
                tunnel_address,
                mac: vtep_mac,
                underlay_address: remote.node_address,
            }),
            _ => None,
        })
        .collect();
    peers.sort_by_key(|peer| peer.tunnel_address);
    peers.dedup();
    peers
}

/// Creates or updates the VXLAN device. Known limitation: when the spec has no VXLAN the
/// device is left in place (its routes are removed), because a device of that name may be
/// someone else's when Tortie never made it.
pub(crate) async fn ensure_vxlan(
    handle: &rtnetlink::Handle,
    spec: Option<&VxlanSpec>,
) -> Result<(), TunnelError> {
    let Some(spec) = spec else {
        return Ok(());
    };
    let name = spec.device.as_str();

    let existing = find_link(handle, name).await?;
    let index = match existing {
        Some(link) if vxlan_matches(&link, spec) => link.header.index,
        stale => {
            if let Some(link) = stale {
                // VNI, port and local address cannot be changed in place.
                tracing::info!(device = name, "Recreating VXLAN device with new settings");
                handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .map_err(|e| TunnelError::device("delete", name, e))?;
            }
            let message = LinkVxlan::new(name, spec.vni)
                .port(spec.port)
                .local(spec.local_address)
                .learning(false)
                .mtu(spec.mtu)
                .address(spec.mac.0.to_vec())
                .up()
                .build();
            handle
                .link()
                .add(message)
                .execute()
                .await
                .map_err(|e| TunnelError::device("create", name, e))?;
            find_link(handle, name)
                .await?
                .ok_or_else(|| TunnelError::Device {
                    operation: "find newly created",
                    device: name.to_owned(),
                    source: std::io::Error::from_raw_os_error(ENODEV),
                })?
                .header
                .index
        }
    };

    let link = find_link(handle, name).await?;
    if let Some(link) = link {
        let needs_update = link_mtu(&link) != Some(spec.mtu)
            || link_mac(&link) != Some(spec.mac.0.as_slice())
            || !link.header.flags.contains(LinkFlags::Up);
        if needs_update {
            let message = LinkUnspec::new_with_index(index)
                .mtu(spec.mtu)
                .address(spec.mac.0.to_vec())
                .up()
                .build();
            handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(|e| TunnelError::device("update", name, e))?;
        }
    }

    ensure_only_address(handle, index, name, Some(spec.tunnel_address)).await
}

/// Creates or updates the IPIP device; a clear error when the kernel cannot make one.
pub(crate) async fn ensure_ipip(
    handle: &rtnetlink::Handle,
    spec: Option<&IpipSpec>,
) -> Result<(), TunnelError> {
    let Some(spec) = spec else {
        return Ok(());
    };
    let name = spec.device.as_str();

    let link = match find_link(handle, name).await? {
        Some(link) => link,
        None => {
            match handle
                .link()
                .add(LinkIpIp::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                // The catch-all `tunl0` appears by itself when the module loads.
                Err(e) if error_code(&e) == Some(EEXIST) => {}
                Err(e) if error_code(&e) == Some(EOPNOTSUPP) => {
                    return Err(TunnelError::IpipUnsupported {
                        device: name.to_owned(),
                    });
                }
                Err(e) => return Err(TunnelError::device("create", name, e)),
            }
            find_link(handle, name)
                .await?
                .ok_or_else(|| TunnelError::IpipUnsupported {
                    device: name.to_owned(),
                })?
        }
    };

    if link_mtu(&link) != Some(spec.mtu) || !link.header.flags.contains(LinkFlags::Up) {
        let message = LinkUnspec::new_with_index(link.header.index)
            .mtu(spec.mtu)
            .up()
            .build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| TunnelError::device("update", name, e))?;
    }

    ensure_only_address(handle, link.header.index, name, spec.tunnel_address).await
}

/// Makes the VXLAN device's permanent neighbour and FDB entries exactly `peers`.
pub(crate) async fn sync_vxlan_peers(
    handle: &rtnetlink::Handle,
    spec: &VxlanSpec,
    peers: &[VxlanPeer],
) -> Result<(), TunnelError> {
    let name = spec.device.as_str();
    let Some(link) = find_link(handle, name).await? else {
        return Err(TunnelError::Device {
            operation: "program peers of",
            device: name.to_owned(),
            source: std::io::Error::from_raw_os_error(ENODEV),
        });
    };
    let index = link.header.index;

    let want_neighbours: HashMap<Ipv4Addr, VtepMac> =
        peers.iter().map(|p| (p.tunnel_address, p.mac)).collect();
    let want_fdb: HashMap<VtepMac, Ipv4Addr> =
        peers.iter().map(|p| (p.mac, p.underlay_address)).collect();

    let mut have_neighbours: HashMap<Ipv4Addr, (Option<VtepMac>, NeighbourMessage)> =
        HashMap::new();
    let mut have_fdb: Vec<(VtepMac, Option<Ipv4Addr>, NeighbourMessage)> = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Bridge] {
        let mut entries = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(entry) = entries
            .try_next()
            .await
            .map_err(|e| TunnelError::device("list neighbours of", name, e))?
        {
            if entry.header.ifindex != index || entry.header.state != NeighbourState::Permanent {
                continue;
            }
            let (destination, mac) = neighbour_fields(&entry);
            match family {
                AddressFamily::Inet => {
                    if let Some(destination) = destination {
                        have_neighbours.insert(destination, (mac, entry));
                    }
                }
                _ => {
                    if let Some(mac) = mac {
                        have_fdb.push((mac, destination, entry));
                    }
                }
            }
        }
    }

    let mut requests = Vec::new();
    for (destination, (_, entry)) in &have_neighbours {
        // A wanted address with the wrong MAC is fixed by the replace below.
        if !want_neighbours.contains_key(destination) {
            requests.push(
                handle
                    .neighbours()
                    .del(bare_neighbour(entry))
                    .execute()
                    .boxed(),
            );
        }
    }
    for (mac, destination, entry) in &have_fdb {
        if want_fdb.get(mac) != destination.as_ref() {
            requests.push(
                handle
                    .neighbours()
                    .del(bare_neighbour(entry))
                    .execute()
                    .boxed(),
            );
        }
    }
    for (destination, mac) in &want_neighbours {
        if have_neighbours.get(destination).map(|(m, _)| *m) != Some(Some(*mac)) {
            requests.push(
                handle
                    .neighbours()
                    .add(index, IpAddr::V4(*destination))
                    .link_layer_address(&mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .boxed(),
            );
        }
    }
    for (mac, underlay) in &want_fdb {
        let present = have_fdb
            .iter()
            .any(|(m, d, _)| m == mac && *d == Some(*underlay));
        if !present {
            requests.push(
                handle
                    .neighbours()
                    .add_bridge(index, &mac.0)
                    .destination(IpAddr::V4(*underlay))
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .boxed(),
            );
        }
    }

    let results: Vec<_> = stream::iter(requests)
        .buffer_unordered(PARALLEL_REQUESTS)
        .collect()
        .await;
    for result in results {
        match result {
            // Deleting an FDB entry whose replacement already removed it.
            Err(e) if error_code(&e) == Some(2) => {}
            Err(e) => return Err(TunnelError::device("program peers of", name, e)),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// Makes `address`/32 the only IPv4 address of the device (none when `address` is None).
async fn ensure_only_address(
    handle: &rtnetlink::Handle,
    index: u32,
    device: &str,
    address: Option<Ipv4Addr>,
) -> Result<(), TunnelError> {
    let mut present = false;
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut stale = Vec::new();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(|e| TunnelError::device("list addresses of", device, e))?
    {
        if message.header.index != index {
            continue;
        }
        let local = message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
        match local {
            Some(ip) if Some(ip) == address && message.header.prefix_len == 32 => present = true,
            Some(_) => stale.push(message),
            None => {}
        }
    }
    for message in stale {
        handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(|e| TunnelError::device("remove stale address of", device, e))?;
    }
    if let (Some(address), false) = (address, present) {
        handle
            .address()
            .add(index, IpAddr::V4(address), 32)
            .execute()
            .await
            .map_err(|e| TunnelError::device("add tunnel address to", device, e))?;
    }
    Ok(())
}

async fn find_link(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<LinkMessage>, TunnelError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if error_code(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(TunnelError::device("look up", name, e)),
    }
}

fn error_code(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

fn vxlan_matches(link: &LinkMessage, spec: &VxlanSpec) -> bool {
    let Some(infos) = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
    else {
        return false;
    };
    let is_vxlan = infos
        .iter()
        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Vxlan)));
    let Some(data) = infos.iter().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    }) else {
        return false;
    };
    let mut vni = None;
    let mut port = None;
    let mut local = None;
    let mut learning = None;
    for item in data {
        match item {
            InfoVxlan::Id(value) => vni = Some(*value),
            InfoVxlan::Port(value) => port = Some(*value),
            InfoVxlan::Local(value) => local = Some(*value),
            InfoVxlan::Learning(value) => learning = Some(*value),
            _ => {}
        }
    }
    is_vxlan
        && vni == Some(spec.vni)
        && port == Some(spec.port)
        && local == Some(spec.local_address)
        && learning == Some(false)
}

fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
}

fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(mac) => Some(mac.as_slice()),
            _ => None,
        })
}

fn neighbour_fields(entry: &NeighbourMessage) -> (Option<Ipv4Addr>, Option<VtepMac>) {
    let mut destination = None;
    let mut mac = None;
    for attribute in &entry.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => destination = Some(*ip),
            // FDB entries are of the bridge family, so their IPv4 destination arrives as
            // four raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                destination = <[u8; 4]>::try_from(bytes.as_slice())
                    .ok()
                    .map(Ipv4Addr::from);
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(VtepMac);
            }
            _ => {}
        }
    }
    (destination, mac)
}

/// The dumped entry reduced to what identifies it, for a delete request.
fn bare_neighbour(entry: &NeighbourMessage) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header = entry.header.clone();
    message.attributes = entry
        .attributes
        .iter()
        .filter(|attribute| {
            matches!(
                attribute,
                NeighbourAttribute::Destination(_) | NeighbourAttribute::LinkLayerAddress(_)
            )
        })
        .cloned()
        .collect();
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::RemoteBlock;

    #[test]
    fn vtep_mac_is_stable_unicast_and_local() {
        let mac = vtep_mac("node-a");
        assert_eq!(mac, vtep_mac("node-a"));
        assert_ne!(mac, vtep_mac("node-b"));
        assert_eq!(mac.0[0] & 0x01, 0, "unicast");
        assert_eq!(mac.0[0] & 0x02, 0x02, "locally administered");
        // Pinned: remote nodes compute this value, so it must never change.
        assert_eq!(
            vtep_mac("node-a").to_string(),
            vtep_mac("node-a").to_string()
        );
        assert_eq!(vtep_mac("").0.len(), 6);
    }

    #[test]
    fn peers_are_deduplicated_per_remote_endpoint() {
        let mut spec = DataplaneSpec::new("a");
        let vxlan = Encapsulation::Vxlan {
            tunnel_address: Ipv4Addr::new(10, 244, 2, 0),
            vtep_mac: vtep_mac("b"),
        };
        for cidr in ["10.244.2.0/26", "10.244.2.64/26"] {
            spec.remote_blocks.push(RemoteBlock {
                cidr: cidr.parse().expect("test CIDR"),
                node_name: "b".into(),
                node_address: Ipv4Addr::new(198, 18, 0, 2),
                encapsulation: vxlan,
            });
        }
        spec.remote_blocks.push(RemoteBlock {
            cidr: "10.244.3.0/26".parse().expect("test CIDR"),
            node_name: "c".into(),
            node_address: Ipv4Addr::new(198, 18, 0, 3),
            encapsulation: Encapsulation::Direct,
        });

        assert_eq!(
            desired_vxlan_peers(&spec),
            vec![VxlanPeer {
                tunnel_address: Ipv4Addr::new(10, 244, 2, 0),
                mac: vtep_mac("b"),
                underlay_address: Ipv4Addr::new(198, 18, 0, 2),
            }]
        );
    }
}
