//! Names and addresses of one cluster, derived from its name and its slot. Pure: no I/O.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// How many clusters fit side by side: 198.18.0.0/15 cut into /22s.
pub const SLOTS: u16 = 128;

/// First address of 198.18.0.0/15, the range set aside for network benchmarks.
const UNDERLAY_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);

/// Addresses per cluster (a /22).
const SLOT_SIZE: u32 = 1024;

/// Host part of the first node address on a subnet; the ones below are left for routers.
const FIRST_NODE_HOST: u32 = 10;

/// Longest cluster name; it is part of namespace names and of the cluster directory.
pub const MAX_CLUSTER_NAME: usize = 24;

/// Longest node name; it is part of a namespace name.
pub const MAX_NODE_NAME: usize = 40;

/// One of the two underlay subnets a node can sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Subnet {
    /// The first /24 for nodes.
    A,
    /// The second /24 for nodes, one routed hop away from `a`.
    B,
}

impl Subnet {
    /// Both subnets, in address order.
    pub const ALL: [Subnet; 2] = [Subnet::A, Subnet::B];

    /// The lower-case letter used in names (`br-a`, `--subnet a`).
    pub fn letter(self) -> char {
        match self {
            Subnet::A => 'a',
            Subnet::B => 'b',
        }
    }

    /// Which /24 of the cluster's /22 the subnet is (the first one is the uplink).
    fn block(self) -> u32 {
        match self {
            Subnet::A => 1,
            Subnet::B => 2,
        }
    }

    /// The bridge for this subnet in the underlay namespace.
    pub fn bridge(self) -> String {
        format!("br-{}", self.letter())
    }
}

/// The addresses of one cluster: the /22 of 198.18.0.0/15 at its slot.
///
/// ```text
/// x.x.(4s+0).0/30   uplink: .1 underlay router, .2 root namespace (API server)
/// x.x.(4s+1).0/24   subnet a: .1 router, .10 and up nodes
/// x.x.(4s+2).0/24   subnet b: .1 router, .10 and up nodes
/// x.x.(4s+3).0/24   unused
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPlan {
    slot: u16,
}

impl AddressPlan {
    /// The plan at `slot`, or `None` when the slot is past the end of 198.18.0.0/15.
    pub fn new(slot: u16) -> Option<Self> {
        (slot < SLOTS).then_some(AddressPlan { slot })
    }

    /// The slot this plan was made for.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The whole /22 of this cluster; the root namespace routes exactly this.
    pub fn range(&self) -> Ipv4Net {
        Ipv4Net::new(self.nth(0), 22).expect("22 is a valid IPv4 prefix length")
    }

    /// The /30 between the root namespace and the underlay router.
    pub fn uplink(&self) -> Ipv4Net {
        Ipv4Net::new(self.nth(0), 30).expect("30 is a valid IPv4 prefix length")
    }

    /// The underlay router's address on the uplink.
    pub fn router_uplink_address(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The root namespace's one underlay address; the API server listens here.
    pub fn root_address(&self) -> Ipv4Addr {
        self.nth(2)
    }

    /// The /24 of a node subnet.
    pub fn subnet(&self, subnet: Subnet) -> Ipv4Net {
        Ipv4Net::new(self.nth(subnet.block() * 256), 24).expect("24 is a valid IPv4 prefix length")
    }

    /// The underlay router's address on a node subnet; nodes route everything through it.
    pub fn router_address(&self, subnet: Subnet) -> Ipv4Addr {
        self.nth(subnet.block() * 256 + 1)
    }

    /// The address of the `index`th node on a subnet, or `None` when the /24 is full.
    pub fn node_address(&self, subnet: Subnet, index: u32) -> Option<Ipv4Addr> {
        let host = FIRST_NODE_HOST.checked_add(index)?;
        (host < 255).then(|| self.nth(subnet.block() * 256 + host))
    }

    /// The root namespace's veth into the underlay. Its creation claims the slot, so the
    /// name depends on the slot only (and fits the 15-byte limit of link names).
    pub fn root_link(&self) -> String {
        format!("tortie-s{}", self.slot)
    }

    fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(UNDERLAY_BASE + u32::from(self.slot) * SLOT_SIZE + offset)
    }
}

/// The slot a cluster tries first: a hash of its name, so two clusters usually start apart.
pub fn preferred_slot(cluster: &str) -> u16 {
    // FNV-1a: stable across builds, unlike the standard library's hasher.
    let hash = cluster.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    u16::try_from(hash % u32::from(SLOTS)).expect("a value below SLOTS fits in u16")
}

/// Every slot, starting at the preferred one and wrapping around.
pub fn slot_order(cluster: &str) -> impl Iterator<Item = u16> {
    let first = preferred_slot(cluster);
    (0..SLOTS).map(move |step| (first + step) % SLOTS)
}

/// The network namespace that holds a cluster's bridges and router.
pub fn underlay_netns(cluster: &str) -> String {
    // `_` is not allowed in cluster or node names, so these names cannot collide.
    format!("tortie_{cluster}_underlay")
}

/// The network namespace of a node.
pub fn node_netns(cluster: &str, node: &str) -> String {
    format!("tortie_{cluster}_node_{node}")
}

/// The underlay end of a node's veth, named by subnet and address so it is unique in the
/// underlay namespace and short enough for a link name.
pub fn node_underlay_link(subnet: Subnet, address: Ipv4Addr) -> String {
    format!("n{}{}", subnet.letter(), address.octets()[3])
}

/// Checks that `name` is a lower-case DNS label of at most `max` characters.
pub fn validate_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if name.is_empty() || name.len() > max || !chars_ok || !ends_ok {
        return Err(format!(
            "{what} name {name:?} is invalid: it must be 1 to {max} characters of a-z, 0-9 and \
             '-', starting and ending with a letter or digit (for example \"node-1\")"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_tile_the_benchmark_range_without_overlap() {
        let whole: Ipv4Net = "198.18.0.0/15".parse().expect("a valid network");
        let first = AddressPlan::new(0).expect("slot 0 exists");
        let last = AddressPlan::new(SLOTS - 1).expect("the last slot exists");
        assert_eq!(first.range().to_string(), "198.18.0.0/22");
        assert_eq!(last.range().to_string(), "198.19.252.0/22");
        assert!(whole.contains(&last.range()));
        assert!(AddressPlan::new(SLOTS).is_none());
        let next = AddressPlan::new(1).expect("slot 1 exists");
        assert!(!first.range().contains(&next.range().network()));
    }

    #[test]
    fn every_address_of_a_plan_is_inside_its_range() {
        let plan = AddressPlan::new(5).expect("slot 5 exists");
        let range = plan.range();
        assert_eq!(plan.root_address().to_string(), "198.18.20.2");
        assert_eq!(plan.router_uplink_address().to_string(), "198.18.20.1");
        assert_eq!(plan.subnet(Subnet::A).to_string(), "198.18.21.0/24");
        assert_eq!(plan.subnet(Subnet::B).to_string(), "198.18.22.0/24");
        assert_eq!(plan.router_address(Subnet::B).to_string(), "198.18.22.1");
        assert_eq!(
            plan.node_address(Subnet::A, 0).map(|a| a.to_string()),
            Some("198.18.21.10".to_string())
        );
        assert!(
            plan.node_address(Subnet::A, 244).is_some(),
            "x.x.x.254 is the last host"
        );
        assert_eq!(plan.node_address(Subnet::A, 245), None);
        for subnet in Subnet::ALL {
            assert!(range.contains(&plan.subnet(subnet)));
            assert!(!plan.subnet(subnet).contains(&plan.root_address()));
        }
        assert!(plan.uplink().contains(&plan.root_address()));
    }

    #[test]
    fn link_names_fit_the_kernel_limit() {
        let plan = AddressPlan::new(SLOTS - 1).expect("the last slot exists");
        assert!(plan.root_link().len() <= 15);
        let node = plan
            .node_address(Subnet::B, 244)
            .expect("the last host exists");
        assert!(node_underlay_link(Subnet::B, node).len() <= 15);
    }

    #[test]
    fn slot_order_visits_every_slot_once() {
        let mut slots: Vec<u16> = slot_order("tortie").collect();
        assert_eq!(slots[0], preferred_slot("tortie"));
        slots.sort_unstable();
        assert_eq!(slots, (0..SLOTS).collect::<Vec<_>>());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("cluster", "e2e-1", MAX_CLUSTER_NAME).is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(25)] {
            assert!(
                validate_name("cluster", bad, MAX_CLUSTER_NAME).is_err(),
                "{bad:?}"
            );
        }
    }
}
