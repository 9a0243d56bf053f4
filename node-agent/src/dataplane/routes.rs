//! Routes to pod blocks: the desired set computed from the spec, the plan that turns the
//! kernel's set into it, and reading the host's interfaces the routes refer to.
//!
//! Only routes carrying [`crate::ROUTE_PROTOCOL`] in the configured table are ever read,
//! replaced or deleted; routes made by the CNI plugin (same protocol, on a `cali*`
//! interface) are left alone.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;

use super::{DataplaneError, DataplaneSpec, Encapsulation};

/// Prefix of the host-side interface names the CNI plugin creates for pods.
pub const CNI_INTERFACE_PREFIX: &str = "cali";

/// Where a route sends packets, in the terms the reconciler compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// Drop silently (`blackhole`).
    Blackhole,
    /// Forward via a next hop on an interface.
    Gateway {
        /// The next hop.
        gateway: Ipv4Addr,
        /// The outgoing interface.
        interface_index: u32,
        /// The next hop is on the link even though no address covers it.
        onlink: bool,
    },
    /// Deliver directly on an interface (how the CNI plugin routes to a pod).
    Device {
        /// The outgoing interface.
        interface_index: u32,
    },
    /// Anything else (multipath, other route types): never desired, so always replaced.
    Other,
}

impl RouteTarget {
    /// The outgoing interface, if the route has one.
    pub fn interface_index(&self) -> Option<u32> {
        match self {
            Self::Gateway {
                interface_index, ..
            }
            | Self::Device { interface_index } => Some(*interface_index),
            Self::Blackhole | Self::Other => None,
        }
    }
}

/// A route of Tortie's protocol as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination prefix.
    pub destination: Ipv4Net,
    /// Type of service the route matches (Tortie's routes use 0).
    pub tos: u8,
    /// Route priority (metric); Tortie's routes use 0.
    pub priority: u32,
    /// Where it sends packets.
    pub target: RouteTarget,
}

/// A change the plan makes to the kernel's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Add a route that is missing. Sent with "exclusive create", so a route of another
    /// protocol with the same key makes it fail instead of being overwritten.
    Create {
        /// Destination prefix.
        destination: Ipv4Net,
        /// Where to send packets.
        target: RouteTarget,
    },
    /// Change one of Tortie's routes that points elsewhere.
    Replace {
        /// Destination prefix.
        destination: Ipv4Net,
        /// Where to send packets.
        target: RouteTarget,
    },
    /// Remove one of Tortie's routes that is no longer desired.
    Delete(KernelRoute),
}

impl RouteChange {
    /// The destination the change is about.
    pub fn destination(&self) -> Ipv4Net {
        match self {
            Self::Create { destination, .. } | Self::Replace { destination, .. } => *destination,
            Self::Delete(route) => route.destination,
        }
    }

    /// A verb for log lines and errors.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Replace { .. } => "replace",
            Self::Delete(_) => "delete",
        }
    }
}

/// The changes that turn the kernel's routes into the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Deletions first (they free keys), then replacements, then creations.
    pub changes: Vec<RouteChange>,
    /// Desired routes already present as wanted.
    pub unchanged: usize,
    /// Routes of Tortie's protocol the plan leaves alone (the CNI plugin's, or routes of
    /// blocks that cannot be routed right now).
    pub kept: usize,
}

/// A remote block no route could be computed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unroutable {
    /// The block.
    pub block: Ipv4Net,
    /// The node that owns it.
    pub node_name: String,
    /// Why, with the fix where obvious.
    pub reason: String,
}

/// One route change the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFailure {
    /// The route's destination.
    pub destination: Ipv4Net,
    /// `create`, `replace` or `delete`.
    pub verb: &'static str,
    /// The kernel's answer.
    pub error: String,
}

/// What one route reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSyncReport {
    /// Routes added.
    pub created: usize,
    /// Routes changed.
    pub replaced: usize,
    /// Routes removed.
    pub deleted: usize,
    /// Routes already right.
    pub unchanged: usize,
    /// Changes the kernel refused (the others were applied).
    pub failures: Vec<RouteFailure>,
    /// Blocks no route could be computed for.
    pub unroutable: Vec<Unroutable>,
}

impl RouteSyncReport {
    pub(crate) fn new(
        plan: &RoutePlan,
        failures: Vec<(usize, io::Error)>,
        unroutable: Vec<Unroutable>,
    ) -> Self {
        let mut report = Self {
            unchanged: plan.unchanged,
            unroutable,
            ..Self::default()
        };
        let mut failed = vec![false; plan.changes.len()];
        for (index, error) in failures {
            let Some(change) = plan.changes.get(index) else {
                continue;
            };
            failed[index] = true;
            let error = if error.raw_os_error() == Some(17) {
                "a route with this destination but another protocol exists; Tortie leaves \
                 it alone: remove it or change the pool"
                    .to_owned()
            } else {
                error.to_string()
            };
            report.failures.push(RouteFailure {
                destination: change.destination(),
                verb: change.verb(),
                error,
            });
        }
        for (change, failed) in plan.changes.iter().zip(failed) {
            if failed {
                continue;
            }
            match change {
                RouteChange::Create { .. } => report.created += 1,
                RouteChange::Replace { .. } => report.replaced += 1,
                RouteChange::Delete(_) => report.deleted += 1,
            }
        }
        report
    }

    /// Whether every change was applied and every block routed.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty() && self.unroutable.is_empty()
    }

    /// One line for logs and status: how many problems, and the first one.
    pub fn summary(&self) -> String {
        let problems = self.failures.len() + self.unroutable.len();
        let first = if let Some(failure) = self.failures.first() {
            format!(
                "cannot {} route {}: {}",
                failure.verb, failure.destination, failure.error
            )
        } else if let Some(unroutable) = self.unroutable.first() {
            format!(
                "no route for block {} of node {}: {}",
                unroutable.block, unroutable.node_name, unroutable.reason
            )
        } else {
            return format!(
                "routes in sync ({} created, {} replaced, {} deleted, {} unchanged)",
                self.created, self.replaced, self.deleted, self.unchanged
            );
        };
        format!("{problems} route problem(s), first: {first}")
    }

    /// `Err` carrying the report when anything failed.
    pub fn into_result(self) -> Result<Self, DataplaneError> {
        if self.is_complete() {
            Ok(self)
        } else {
            Err(DataplaneError::Routes(Box::new(self)))
        }
    }
}

/// The host's interfaces as far as routes care: names, indexes and IPv4 subnets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInterfaces {
    index_by_name: HashMap<String, u32>,
    cni_owned: HashSet<u32>,
    addresses: Vec<(u32, Ipv4Net)>,
}

impl HostInterfaces {
    /// Records an interface.
    pub fn add_interface(&mut self, index: u32, name: impl Into<String>) {
        let name = name.into();
        if name.starts_with(CNI_INTERFACE_PREFIX) {
            self.cni_owned.insert(index);
        }
        self.index_by_name.insert(name, index);
    }

    /// Records an IPv4 address (with its prefix) of an interface.
    pub fn add_address(&mut self, index: u32, address: Ipv4Net) {
        self.addresses.push((index, address));
    }

    /// The index of the interface called `name`.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.index_by_name.get(name).copied()
    }

    /// Whether the interface is a pod's host side, whose routes belong to the CNI plugin.
    pub fn is_cni_owned(&self, index: u32) -> bool {
        self.cni_owned.contains(&index)
    }

    /// The interface whose subnet holds `address` (longest prefix wins), ignoring host
    /// addresses (/32), which share no subnet with anyone.
    fn on_link_interface(&self, address: Ipv4Addr) -> Result<u32, String> {
        if self.addresses.iter().any(|(_, net)| net.addr() == address) {
            return Err(format!("{address} is an address of this node itself"));
        }
        self.addresses
            .iter()
            .filter(|(_, net)| net.prefix_len() < 32 && net.contains(&address))
            .max_by_key(|(_, net)| net.prefix_len())
            .map(|(index, _)| *index)
            .ok_or_else(|| {
                format!(
                    "{address} is on no subnet this node has an address in; direct routing \
                     needs a shared subnet, use VXLAN or IPIP encapsulation for this pool"
                )
            })
    }
}

/// The routes the spec asks for, sorted by destination with one route per destination
/// (the first listing wins; the spec's validation rejects duplicates), and the blocks that
/// cannot be routed with the interfaces the host has.
pub fn desired_routes(
    spec: &DataplaneSpec,
    interfaces: &HostInterfaces,
) -> (Vec<(Ipv4Net, RouteTarget)>, Vec<Unroutable>) {
    let mut desired = Vec::with_capacity(spec.local_blocks.len() + spec.remote_blocks.len());
    let mut unroutable = Vec::new();

    for block in &spec.local_blocks {
        desired.push((*block, RouteTarget::Blackhole));
    }

    let vxlan_index = spec
        .vxlan
        .as_ref()
        .map(|v| (v.device.as_str(), interfaces.index_of(&v.device)));
    let ipip_index = spec
        .ipip
        .as_ref()
        .map(|v| (v.device.as_str(), interfaces.index_of(&v.device)));
    for remote in &spec.remote_blocks {
        let target = match remote.encapsulation {
            Encapsulation::Direct => {
                interfaces
                    .on_link_interface(remote.node_address)
                    .map(|interface_index| RouteTarget::Gateway {
                        gateway: remote.node_address,
                        interface_index,
                        onlink: false,
                    })
            }
            Encapsulation::Vxlan { tunnel_address, .. } => {
                tunnel_target(vxlan_index, "VXLAN", tunnel_address)
            }
            Encapsulation::Ipip => tunnel_target(ipip_index, "IPIP", remote.node_address),
        };
        match target {
            Ok(target) => desired.push((remote.cidr, target)),
            Err(reason) => unroutable.push(Unroutable {
                block: remote.cidr,
                node_name: remote.node_name.clone(),
                reason,
            }),
        }
    }

    // Stable sort, so of two listings of one destination the first stays first.
    desired.sort_by_key(|(destination, _)| *destination);
    desired.dedup_by_key(|(destination, _)| *destination);
    (desired, unroutable)
}

fn tunnel_target(
    device: Option<(&str, Option<u32>)>,
    kind: &str,
    gateway: Ipv4Addr,
) -> Result<RouteTarget, String> {
    match device {
        Some((_, Some(interface_index))) => Ok(RouteTarget::Gateway {
            gateway,
            interface_index,
            onlink: true,
        }),
        Some((name, None)) => Err(format!("the {kind} device {name} does not exist")),
        None => Err(format!("this node has no {kind} device configured")),
    }
}

/// The changes that make `current` (the kernel's routes of Tortie's protocol in the table)
/// equal to `desired` (sorted by destination, one route each, as [`desired_routes`] makes
/// it). Routes for which `keep` is true are neither replaced nor deleted.
///
/// A merge of two sorted lists rather than hash lookups: resyncs compare tens of thousands
/// of routes, and sorting the kernel's list is cheaper than hashing both.
pub fn plan(
    desired: &[(Ipv4Net, RouteTarget)],
    current: &[KernelRoute],
    keep: impl Fn(&KernelRoute) -> bool,
) -> RoutePlan {
    let mut deletes = Vec::new();
    let mut replaces = Vec::new();
    let mut creates = Vec::new();
    let mut unchanged = 0;
    let mut kept = 0;

    let mut present: Vec<&KernelRoute> = Vec::with_capacity(current.len());
    for route in current {
        if keep(route) {
            kept += 1;
        } else {
            present.push(route);
        }
    }
    // Within one destination the primary route (TOS 0, priority 0) sorts first.
    present.sort_unstable_by_key(|route| (route.destination, route.tos, route.priority));

    let mut present = present.into_iter().peekable();
    for (destination, target) in desired {
        while let Some(route) = present.next_if(|route| route.destination < *destination) {
            deletes.push(RouteChange::Delete(*route));
        }
        let primary = present.next_if(|route| {
            route.destination == *destination && route.tos == 0 && route.priority == 0
        });
        match primary {
            Some(route) if route.target == *target => unchanged += 1,
            Some(_) => replaces.push(RouteChange::Replace {
                destination: *destination,
                target: *target,
            }),
            None => creates.push(RouteChange::Create {
                destination: *destination,
                target: *target,
            }),
        }
        // Further routes for a wanted prefix with another metric or TOS would shadow or
        // back up Tortie's own.
        while let Some(route) = present.next_if(|route| route.destination == *destination) {
            deletes.push(RouteChange::Delete(*route));
        }
    }
    deletes.extend(present.map(|route| RouteChange::Delete(*route)));

    let mut changes = deletes;
    changes.extend(replaces);
    changes.extend(creates);
    RoutePlan {
        changes,
        unchanged,
        kept,
    }
}

/// Reads interface names, indexes and IPv4 addresses.
pub(crate) async fn read_interfaces(
    handle: &rtnetlink::Handle,
) -> Result<HostInterfaces, DataplaneError> {
    let mut interfaces = HostInterfaces::default();

    let mut links = handle.link().get().execute();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("list links", rtnetlink_io(e)))?
    {
        let name = link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
        if let Some(name) = name {
            interfaces.add_interface(link.header.index, name);
        }
    }

    let mut addresses = handle.address().get().execute();
    while let Some(address) = addresses
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("list addresses", rtnetlink_io(e)))?
    {
        let local = address
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
        if let Some(ip) = local
            && let Ok(net) = Ipv4Net::new(ip, address.header.prefix_len)
        {
            interfaces.add_address(address.header.index, net);
        }
    }

    Ok(interfaces)
}

/// Turns an rtnetlink error into the `io::Error` the kernel meant, keeping the errno.
pub(crate) fn rtnetlink_io(error: rtnetlink::Error) -> io::Error {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{RemoteBlock, VxlanSpec, vtep_mac};

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn host() -> HostInterfaces {
        let mut interfaces = HostInterfaces::default();
        interfaces.add_interface(1, "lo");
        interfaces.add_interface(2, "eth0");
        interfaces.add_interface(3, "vxlan.calico");
        interfaces.add_interface(7, "cali1234567890a");
        interfaces.add_address(1, net("127.0.0.1/8"));
        interfaces.add_address(2, net("198.18.0.1/24"));
        interfaces.add_address(3, net("10.244.1.0/32"));
        interfaces
    }

    fn remote(cidr: &str, address: &str, encapsulation: Encapsulation) -> RemoteBlock {
        RemoteBlock {
            cidr: net(cidr),
            node_name: "node-b".into(),
            node_address: ip(address),
            encapsulation,
        }
    }

    #[test]
    fn desired_routes_cover_every_mode() {
        let mut spec = DataplaneSpec::new("node-a");
        spec.local_blocks = vec![net("10.244.1.0/26")];
        spec.vxlan = Some(VxlanSpec::for_node(
            "node-a",
            ip("198.18.0.1"),
            ip("10.244.1.0"),
        ));
        spec.remote_blocks = vec![
            remote("10.244.2.0/26", "198.18.0.2", Encapsulation::Direct),
            remote(
                "10.244.3.0/26",
                "198.18.7.3",
                Encapsulation::Vxlan {
                    tunnel_address: ip("10.244.3.0"),
                    vtep_mac: vtep_mac("node-c"),
                },
            ),
            remote("10.244.4.0/26", "198.19.0.9", Encapsulation::Direct),
            remote("10.244.5.0/26", "198.19.0.9", Encapsulation::Ipip),
        ];

        let (desired, unroutable) = desired_routes(&spec, &host());

        assert_eq!(
            desired,
            vec![
                (net("10.244.1.0/26"), RouteTarget::Blackhole),
                (
                    net("10.244.2.0/26"),
                    RouteTarget::Gateway {
                        gateway: ip("198.18.0.2"),
                        interface_index: 2,
                        onlink: false
                    }
                ),
                (
                    net("10.244.3.0/26"),
                    RouteTarget::Gateway {
                        gateway: ip("10.244.3.0"),
                        interface_index: 3,
                        onlink: true
                    }
                ),
            ]
        );
        let blocks: Vec<_> = unroutable.iter().map(|u| u.block).collect();
        assert_eq!(blocks, vec![net("10.244.4.0/26"), net("10.244.5.0/26")]);
        assert!(
            unroutable[0].reason.contains("shared subnet"),
            "{}",
            unroutable[0].reason
        );
        assert!(
            unroutable[1].reason.contains("no IPIP device"),
            "{}",
            unroutable[1].reason
        );
    }

    #[test]
    fn direct_next_hop_that_is_our_own_address_is_refused() {
        let mut spec = DataplaneSpec::new("node-a");
        spec.remote_blocks = vec![remote("10.244.2.0/26", "198.18.0.1", Encapsulation::Direct)];
        let (desired, unroutable) = desired_routes(&spec, &host());
        assert!(desired.is_empty());
        assert!(unroutable[0].reason.contains("this node itself"));
    }

    fn kernel(destination: &str, target: RouteTarget) -> KernelRoute {
        KernelRoute {
            destination: net(destination),
            tos: 0,
            priority: 0,
            target,
        }
    }

    #[test]
    fn plan_changes_only_the_difference() {
        let via_b = RouteTarget::Gateway {
            gateway: ip("198.18.0.2"),
            interface_index: 2,
            onlink: false,
        };
        let via_c = RouteTarget::Gateway {
            gateway: ip("198.18.0.3"),
            interface_index: 2,
            onlink: false,
        };
        let desired = [
            (net("10.244.1.0/26"), RouteTarget::Blackhole),
            (net("10.244.2.0/26"), via_b),
            (net("10.244.3.0/26"), via_c),
        ];
        let pod = kernel("10.244.1.5/32", RouteTarget::Device { interface_index: 7 });
        let current = vec![
            kernel("10.244.1.0/26", RouteTarget::Blackhole),
            kernel("10.244.2.0/26", via_c),
            kernel("10.244.9.0/26", via_b),
            pod,
        ];
        let interfaces = host();

        let plan = plan(&desired, &current, |route| match route.target {
            RouteTarget::Device { interface_index } => interfaces.is_cni_owned(interface_index),
            _ => false,
        });

        assert_eq!(
            plan.changes,
            vec![
                RouteChange::Delete(kernel("10.244.9.0/26", via_b)),
                RouteChange::Replace {
                    destination: net("10.244.2.0/26"),
                    target: via_b
                },
                RouteChange::Create {
                    destination: net("10.244.3.0/26"),
                    target: via_c
                },
            ]
        );
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.kept, 1);
    }

    #[test]
    fn a_second_metric_for_a_wanted_prefix_is_removed() {
        let desired = [(net("10.244.1.0/26"), RouteTarget::Blackhole)];
        let mut shadow = kernel("10.244.1.0/26", RouteTarget::Blackhole);
        shadow.priority = 10;
        let plan = plan(&desired, &[shadow], |_| false);
        assert_eq!(
            plan.changes,
            vec![
                RouteChange::Delete(shadow),
                RouteChange::Create {
                    destination: net("10.244.1.0/26"),
                    target: RouteTarget::Blackhole
                },
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn target() -> impl Strategy<Value = RouteTarget> {
            prop_oneof![
                Just(RouteTarget::Blackhole),
                (0u8..4, 1u32..4, any::<bool>()).prop_map(|(host, interface_index, onlink)| {
                    RouteTarget::Gateway {
                        gateway: Ipv4Addr::new(198, 18, 0, host),
                        interface_index,
                        onlink,
                    }
                }),
                Just(RouteTarget::Other),
            ]
        }

        fn desired_routes() -> impl Strategy<Value = Vec<(Ipv4Net, RouteTarget)>> {
            proptest::collection::btree_map(
                (0u8..64).prop_map(|i| net(&format!("10.244.{i}.0/26"))),
                target().prop_filter("never desired", |t| *t != RouteTarget::Other),
                0..40,
            )
            .prop_map(|routes| routes.into_iter().collect())
        }

        /// Kernel routes keyed by destination and priority (0 = Tortie's primary).
        fn kernel_routes() -> impl Strategy<Value = HashMap<(Ipv4Net, u32), RouteTarget>> {
            proptest::collection::hash_map(
                (
                    (0u8..64).prop_map(|i| net(&format!("10.244.{i}.0/26"))),
                    prop_oneof![3 => Just(0u32), 1 => Just(10u32)],
                ),
                target(),
                0..40,
            )
        }

        proptest! {
            /// Applying the plan to the current set yields exactly the desired set, and a
            /// second plan against the result is empty.
            #[test]
            fn plan_converges(desired in desired_routes(), current in kernel_routes()) {
                let as_kernel = |state: &HashMap<(Ipv4Net, u32), RouteTarget>| -> Vec<KernelRoute> {
                    state
                        .iter()
                        .map(|((destination, priority), target)| KernelRoute {
                            destination: *destination,
                            tos: 0,
                            priority: *priority,
                            target: *target,
                        })
                        .collect()
                };

                let first = plan(&desired, &as_kernel(&current), |_| false);
                let mut kernel_state = current.clone();
                for change in &first.changes {
                    match change {
                        RouteChange::Delete(route) => {
                            let key = (route.destination, route.priority);
                            prop_assert!(kernel_state.remove(&key).is_some());
                        }
                        RouteChange::Replace { destination, target } => {
                            let key = (*destination, 0);
                            prop_assert!(kernel_state.insert(key, *target).is_some());
                        }
                        RouteChange::Create { destination, target } => {
                            let key = (*destination, 0);
                            prop_assert!(kernel_state.insert(key, *target).is_none());
                        }
                    }
                }
                let wanted: HashMap<_, _> =
                    desired.iter().map(|(d, t)| ((*d, 0), *t)).collect();
                prop_assert_eq!(&kernel_state, &wanted);

                let second = plan(&desired, &as_kernel(&kernel_state), |_| false);
                prop_assert!(second.changes.is_empty());
                prop_assert_eq!(second.unchanged, desired.len());
            }
        }
    }
}
