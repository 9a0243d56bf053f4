//! The node's data path: routes to pod blocks, tunnel devices, NAT for outgoing pod
//! traffic and the sysctls forwarding needs.
//!
//! [`DataplaneSpec`] is the desired state of one node, in plain Rust (the agent maps its
//! `NodeNetworkConfig` onto it). [`Dataplane::reconcile`] makes the kernel match it and can
//! be called as often as wanted: it reads what is there, computes the difference with pure
//! functions, and changes only that difference.
//!
//! Everything acts on the network namespace the [`Dataplane`] was connected in (netlink
//! sockets are bound to it when opened); the `nft` process and the `/proc/sys` writes act on
//! the namespace of the calling thread, which is the same one unless the caller moves
//! threads between namespaces.

pub mod nat;
mod netlink;
pub mod routes;
pub mod sysctl;
pub mod tunnel;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tortie_crds::validation::{FieldPath, Validate, ValidationErrors};
use tracing::{debug, info};

pub use self::routes::{RoutePlan, RouteSyncReport};
pub use self::tunnel::{VtepMac, vtep_mac};

/// The kernel's main routing table, where routes go unless the spec says otherwise.
pub const MAIN_TABLE: u32 = 254;

/// Desired data-path state of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSpec {
    /// The node's name; the local VXLAN MAC is derived from it.
    pub node_name: String,
    /// Routing table Tortie's routes live in (254 = main).
    pub route_table: u32,
    /// Blocks this node owns. Each gets a blackhole route so traffic to an address of the
    /// block that has no pod is dropped here instead of bouncing to the default route.
    pub local_blocks: Vec<Ipv4Net>,
    /// Blocks owned by other nodes, and how to reach each.
    pub remote_blocks: Vec<RemoteBlock>,
    /// The VXLAN device, when any pool uses VXLAN.
    pub vxlan: Option<VxlanSpec>,
    /// The IP-in-IP device, when any pool uses IPIP.
    pub ipip: Option<IpipSpec>,
    /// Masquerading of pod traffic that leaves the pools.
    pub nat: NatSpec,
}

/// A block owned by another node and the way to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBlock {
    /// The block's CIDR.
    pub cidr: Ipv4Net,
    /// Name of the node that owns the block (used in error messages).
    pub node_name: String,
    /// The owning node's underlay address.
    pub node_address: Ipv4Addr,
    /// How packets for the block travel.
    pub encapsulation: Encapsulation,
}

/// How packets reach a remote block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulation {
    /// Plain routing via the node's underlay address, which must be on a subnet this node
    /// shares with it.
    Direct,
    /// VXLAN: routed onlink via the remote node's tunnel address on the VXLAN device; the
    /// agent adds a static neighbour (tunnel address → VTEP MAC) and a static FDB entry
    /// (VTEP MAC → underlay address) so the kernel never floods or learns.
    Vxlan {
        /// The remote node's address on its VXLAN device.
        tunnel_address: Ipv4Addr,
        /// The remote node's VXLAN device MAC (see [`vtep_mac`]).
        vtep_mac: VtepMac,
    },
    /// IP in IP: routed onlink via the remote node's underlay address on the IPIP device.
    Ipip,
}

/// Settings of the node's VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub device: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Device MTU.
    pub mtu: u32,
    /// This node's underlay address, the source of encapsulated packets.
    pub local_address: Ipv4Addr,
    /// This node's address on the VXLAN device (assigned as a /32).
    pub tunnel_address: Ipv4Addr,
    /// The device's MAC; remote nodes put it in their neighbour and FDB entries.
    pub mac: VtepMac,
}

impl VxlanSpec {
    /// Calico's device name.
    pub const DEFAULT_DEVICE: &'static str = "vxlan.calico";
    /// Calico's VNI.
    pub const DEFAULT_VNI: u32 = 4096;
    /// The IANA VXLAN port.
    pub const DEFAULT_PORT: u16 = 4789;
    /// A 1500-byte underlay minus the 50 bytes VXLAN over IPv4 adds.
    pub const DEFAULT_MTU: u32 = 1450;

    /// The defaults for a node, with its MAC derived from its name.
    pub fn for_node(node_name: &str, local_address: Ipv4Addr, tunnel_address: Ipv4Addr) -> Self {
        Self {
            device: Self::DEFAULT_DEVICE.to_owned(),
            vni: Self::DEFAULT_VNI,
            port: Self::DEFAULT_PORT,
            mtu: Self::DEFAULT_MTU,
            local_address,
            tunnel_address,
            mac: vtep_mac(node_name),
        }
    }
}

/// Settings of the node's IP-in-IP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipSpec {
    /// Device name; `tunl0` is the kernel's catch-all IPIP device, the one Calico uses.
    pub device: String,
    /// Device MTU.
    pub mtu: u32,
    /// This node's address on the IPIP device (assigned as a /32), if it has one.
    pub tunnel_address: Option<Ipv4Addr>,
}

impl IpipSpec {
    /// Calico's device name.
    pub const DEFAULT_DEVICE: &'static str = "tunl0";
    /// A 1500-byte underlay minus the 20-byte outer IPv4 header.
    pub const DEFAULT_MTU: u32 = 1480;
}

impl Default for IpipSpec {
    fn default() -> Self {
        Self {
            device: Self::DEFAULT_DEVICE.to_owned(),
            mtu: Self::DEFAULT_MTU,
            tunnel_address: None,
        }
    }
}

/// Which pod traffic is masqueraded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSpec {
    /// Pools with `natOutgoing`: traffic from them to outside every pool is masqueraded.
    pub outgoing_pools: Vec<Ipv4Net>,
    /// Every pool of the cluster; traffic to any of them is never masqueraded.
    pub all_pools: Vec<Ipv4Net>,
}

impl DataplaneSpec {
    /// An empty spec for a node, routing in the main table.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            route_table: MAIN_TABLE,
            local_blocks: Vec::new(),
            remote_blocks: Vec::new(),
            vxlan: None,
            ipip: None,
            nat: NatSpec::default(),
        }
    }
}

impl Validate for DataplaneSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if matches!(self.route_table, 0 | 253 | 255) {
            errors.push(
                &path.child("routeTable"),
                format!(
                    "table {} is reserved by the kernel; use 254 (main) or a table of your own",
                    self.route_table
                ),
            );
        }

        // Paths are only built for errors: specs can list tens of thousands of blocks.
        let block_path = |at: BlockAt| match at {
            BlockAt::Local(i) => path.child("localBlocks").index(i),
            BlockAt::Remote(i) => path.child("remoteBlocks").index(i).child("cidr"),
        };
        let mut blocks: Vec<(Ipv4Net, BlockAt)> = self
            .local_blocks
            .iter()
            .enumerate()
            .map(|(i, block)| (*block, BlockAt::Local(i)))
            .chain(
                self.remote_blocks
                    .iter()
                    .enumerate()
                    .map(|(i, remote)| (remote.cidr, BlockAt::Remote(i))),
            )
            .collect();
        for (block, at) in &blocks {
            if block.trunc() != *block {
                errors.push(
                    &block_path(*at),
                    format!("{block} has host bits set; did you mean {}?", block.trunc()),
                );
            }
        }
        blocks.sort_unstable();
        for pair in blocks.windows(2) {
            if pair[0].0 == pair[1].0 {
                errors.push(
                    &block_path(pair[1].1),
                    format!(
                        "block {} is listed twice (also at {}); a block has one route",
                        pair[0].0,
                        block_path(pair[0].1)
                    ),
                );
            }
        }

        for (i, remote) in self.remote_blocks.iter().enumerate() {
            let at = || path.child("remoteBlocks").index(i);
            match remote.encapsulation {
                Encapsulation::Vxlan { .. } if self.vxlan.is_none() => errors.push(
                    &at().child("encapsulation"),
                    format!(
                        "block {} of node {} is reached by VXLAN but this node has no VXLAN \
                         device; set vxlan",
                        remote.cidr, remote.node_name
                    ),
                ),
                Encapsulation::Ipip if self.ipip.is_none() => errors.push(
                    &at().child("encapsulation"),
                    format!(
                        "block {} of node {} is reached by IPIP but this node has no IPIP \
                         device; set ipip",
                        remote.cidr, remote.node_name
                    ),
                ),
                _ => {}
            }
        }

        let mut vteps: HashMap<Ipv4Addr, (VtepMac, Ipv4Addr)> = HashMap::new();
        for (i, remote) in self.remote_blocks.iter().enumerate() {
            if let Encapsulation::Vxlan {
                tunnel_address,
                vtep_mac,
            } = remote.encapsulation
            {
                let entry = (vtep_mac, remote.node_address);
                if let Some(seen) = vteps.insert(tunnel_address, entry)
                    && seen != entry
                {
                    errors.push(
                        &path.child("remoteBlocks").index(i).child("encapsulation"),
                        format!(
                            "tunnel address {tunnel_address} is given two different VTEPs \
                             ({} at {} and {} at {}); one remote node has one VTEP",
                            seen.0, seen.1, vtep_mac, remote.node_address
                        ),
                    );
                }
            }
        }

        if let Some(vxlan) = &self.vxlan {
            let at = path.child("vxlan");
            check_device_name(&vxlan.device, &at.child("device"), errors);
            if vxlan.vni == 0 || vxlan.vni >= 1 << 24 {
                errors.push(&at.child("vni"), "a VNI is between 1 and 16777215");
            }
            if vxlan.port == 0 {
                errors.push(&at.child("port"), "the VXLAN port must not be 0");
            }
            check_mtu(vxlan.mtu, &at.child("mtu"), errors);
        }
        if let Some(ipip) = &self.ipip {
            let at = path.child("ipip");
            check_device_name(&ipip.device, &at.child("device"), errors);
            check_mtu(ipip.mtu, &at.child("mtu"), errors);
        }
    }
}

/// Where a block is listed in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BlockAt {
    Local(usize),
    Remote(usize),
}

fn check_device_name(name: &str, at: &FieldPath, errors: &mut ValidationErrors) {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace);
    if !valid {
        errors.push(
            at,
            format!(
                "{name:?} is not a Linux interface name (1 to 15 bytes, no '/', ':' or spaces)"
            ),
        );
    }
}

fn check_mtu(mtu: u32, at: &FieldPath, errors: &mut ValidationErrors) {
    if !(68..=65535).contains(&mtu) {
        errors.push(at, format!("MTU {mtu} is outside 68..=65535"));
    }
}

/// Everything that can stop a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The spec contradicts itself; nothing was changed.
    #[error("invalid data-path spec: {0}")]
    InvalidSpec(#[from] ValidationErrors),
    /// A netlink socket could not be opened or used.
    #[error("netlink {operation}: {source}")]
    Netlink {
        /// What was being done.
        operation: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A tunnel device could not be set up.
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    /// NAT could not be applied.
    #[error(transparent)]
    Nat(#[from] nat::NatError),
    /// A sysctl could not be written.
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    /// Some routes could not be programmed or computed; the others were applied. The
    /// report says which.
    #[error("{}", .0.summary())]
    Routes(Box<RouteSyncReport>),
}

impl DataplaneError {
    pub(crate) fn netlink(operation: impl Into<String>, source: std::io::Error) -> Self {
        Self::Netlink {
            operation: operation.into(),
            source,
        }
    }
}

/// A connection to the kernel of one network namespace, and the state the reconciler keeps
/// between passes.
pub struct Dataplane {
    handle: rtnetlink::Handle,
    routes: netlink::RouteSocket,
    connection_task: tokio::task::JoinHandle<()>,
}

impl Dataplane {
    /// Opens the netlink sockets in the calling thread's network namespace.
    ///
    /// Must be called inside a Tokio runtime: the sockets register with its reactor.
    pub fn connect() -> Result<Self, DataplaneError> {
        let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()
            .map_err(|e| DataplaneError::netlink("open rtnetlink connection", e))?;
        let connection_task = tokio::spawn(connection);
        let routes = netlink::RouteSocket::open()
            .map_err(|e| DataplaneError::netlink("open route socket", e))?;
        Ok(Self {
            handle,
            routes,
            connection_task,
        })
    }

    /// Makes the kernel match `spec`: sysctls, tunnel devices, routes and NAT, in that order
    /// (routes name the tunnel devices, so those must exist first).
    pub async fn reconcile(
        &mut self,
        spec: &DataplaneSpec,
    ) -> Result<RouteSyncReport, DataplaneError> {
        spec.validate()?;

        sysctl::apply(&sysctl::desired_sysctls(spec))?;

        tunnel::ensure_vxlan(&self.handle, spec.vxlan.as_ref()).await?;
        tunnel::ensure_ipip(&self.handle, spec.ipip.as_ref()).await?;
        // Device sysctls can only be written once the devices exist.
        sysctl::apply(&sysctl::desired_device_sysctls(spec))?;

        let report = self.reconcile_routes_validated(spec).await?;

        if let Some(vxlan) = &spec.vxlan {
            tunnel::sync_vxlan_peers(&self.handle, vxlan, &tunnel::desired_vxlan_peers(spec))
                .await?;
        }

        nat::apply(&spec.nat).await?;

        // Info only when the kernel was changed: periodic passes that find nothing to do
        // would otherwise fill the log.
        let changed = report.created + report.replaced + report.deleted;
        if changed > 0 {
            info!(
                node = %spec.node_name,
                created = report.created,
                replaced = report.replaced,
                deleted = report.deleted,
                unchanged = report.unchanged,
                "Data path reconciled"
            );
        } else {
            debug!(node = %spec.node_name, unchanged = report.unchanged, "Data path in sync");
        }
        report.into_result()
    }

    /// Only the route part of [`Dataplane::reconcile`]: what a route-change event triggers.
    pub async fn reconcile_routes(
        &mut self,
        spec: &DataplaneSpec,
    ) -> Result<RouteSyncReport, DataplaneError> {
        spec.validate()?;
        let report = self.reconcile_routes_validated(spec).await?;
        debug!(node = %spec.node_name, ?report, "Routes reconciled");
        report.into_result()
    }

    async fn reconcile_routes_validated(
        &mut self,
        spec: &DataplaneSpec,
    ) -> Result<RouteSyncReport, DataplaneError> {
        let interfaces = routes::read_interfaces(&self.handle).await?;
        let (desired, unroutable) = routes::desired_routes(spec, &interfaces);

        let current = self
            .routes
            .dump(spec.route_table, crate::ROUTE_PROTOCOL)
            .await
            .map_err(|e| DataplaneError::netlink("dump routes", e))?;

        // Routes of blocks that cannot be computed right now stay as they are rather than
        // being deleted: the old path may still work, and the report names the block.
        let unroutable_blocks: HashSet<Ipv4Net> = unroutable.iter().map(|u| u.block).collect();
        let plan = routes::plan(&desired, &current, |route| {
            unroutable_blocks.contains(&route.destination)
                || route
                    .target
                    .interface_index()
                    .is_some_and(|index| interfaces.is_cni_owned(index))
        });
        let failures = self
            .routes
            .apply(&plan, spec.route_table, crate::ROUTE_PROTOCOL)
            .await
            .map_err(|e| DataplaneError::netlink("program routes", e))?;

        Ok(RouteSyncReport::new(&plan, failures, unroutable))
    }

    /// Removes Tortie's NAT table (the agent calls this when it is uninstalled).
    pub async fn remove_nat(&self) -> Result<(), DataplaneError> {
        nat::remove().await?;
        Ok(())
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.connection_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(cidr: &str, encapsulation: Encapsulation) -> RemoteBlock {
        RemoteBlock {
            cidr: cidr.parse().expect("test CIDR"),
            node_name: "node-b".into(),
            node_address: Ipv4Addr::new(198, 18, 0, 2),
            encapsulation,
        }
    }

    fn messages(spec: &DataplaneSpec) -> Vec<String> {
        match spec.validate() {
            Ok(()) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_consistent_spec_is_valid() {
        let mut spec = DataplaneSpec::new("node-a");
        spec.local_blocks = vec!["10.244.1.0/26".parse().expect("test CIDR")];
        spec.remote_blocks = vec![remote("10.244.2.0/26", Encapsulation::Direct)];
        assert_eq!(messages(&spec), Vec::<String>::new());
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        let mut spec = DataplaneSpec::new("node-a");
        spec.route_table = 255;
        spec.local_blocks = vec!["10.244.1.0/26".parse().expect("test CIDR")];
        spec.remote_blocks = vec![
            remote("10.244.1.0/26", Encapsulation::Direct),
            remote("10.244.2.7/26", Encapsulation::Ipip),
            remote(
                "10.244.3.0/26",
                Encapsulation::Vxlan {
                    tunnel_address: Ipv4Addr::new(10, 244, 3, 0),
                    vtep_mac: vtep_mac("node-b"),
                },
            ),
        ];
        assert_eq!(
            messages(&spec),
            vec![
                "routeTable: table 255 is reserved by the kernel; use 254 (main) or a table of \
                 your own",
                "remoteBlocks[1].cidr: 10.244.2.7/26 has host bits set; did you mean \
                 10.244.2.0/26?",
                "remoteBlocks[0].cidr: block 10.244.1.0/26 is listed twice (also at \
                 localBlocks[0]); a block has one route",
                "remoteBlocks[1].encapsulation: block 10.244.2.7/26 of node node-b is reached \
                 by IPIP but this node has no IPIP device; set ipip",
                "remoteBlocks[2].encapsulation: block 10.244.3.0/26 of node node-b is reached \
                 by VXLAN but this node has no VXLAN device; set vxlan",
            ]
        );
    }

    #[test]
    fn vxlan_settings_are_checked() {
        let mut spec = DataplaneSpec::new("node-a");
        let mut vxlan = VxlanSpec::for_node(
            "node-a",
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(10, 244, 1, 0),
        );
        vxlan.vni = 1 << 24;
        vxlan.device = "a-name-longer-than-15".into();
        vxlan.mtu = 20;
        spec.vxlan = Some(vxlan);
        assert_eq!(
            messages(&spec),
            vec![
                "vxlan.device: \"a-name-longer-than-15\" is not a Linux interface name (1 to 15 \
                 bytes, no '/', ':' or spaces)",
                "vxlan.vni: a VNI is between 1 and 16777215",
                "vxlan.mtu: MTU 20 is outside 68..=65535",
            ]
        );
    }

    #[test]
    fn one_tunnel_address_cannot_have_two_vteps() {
        let mut spec = DataplaneSpec::new("node-a");
        spec.vxlan = Some(VxlanSpec::for_node(
            "node-a",
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(10, 244, 1, 0),
        ));
        let tunnel_address = Ipv4Addr::new(10, 244, 2, 0);
        spec.remote_blocks = vec![
            remote(
                "10.244.2.0/26",
                Encapsulation::Vxlan {
                    tunnel_address,
                    vtep_mac: vtep_mac("node-b"),
                },
            ),
            remote(
                "10.244.2.64/26",
                Encapsulation::Vxlan {
                    tunnel_address,
                    vtep_mac: vtep_mac("node-c"),
                },
            ),
        ];
        let found = messages(&spec);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("remoteBlocks[1].encapsulation: tunnel address 10.244.2.0"));
    }
}
