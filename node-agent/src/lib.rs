//! Tortie's per-node pieces as a library: the CNI plugin that wires pods and the agent's
//! data path (routes, tunnels, NAT). The binaries are thin wiring over it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cni;
pub mod dataplane;

/// The route protocol number (`rtm_protocol`) that marks every route Tortie programs.
///
/// The agent's block routes and the CNI plugin's pod routes both carry it, so either can
/// tell its own routes from those of the kernel, BIRD or an administrator. 84 is unused by
/// the numbers listed in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 84;
