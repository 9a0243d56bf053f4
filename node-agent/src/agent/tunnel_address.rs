//! Gives the node's VXLAN device an address and publishes it on the Node, as Calico's node
//! agent does: `projectcalico.org/IPv4VXLANTunnelAddr` with the address and
//! `projectcalico.org/VXLANTunnelMACAddr` with the device's MAC (derived from the node's
//! name, see [`vtep_mac`]). The operator reads both: this node's config gets its tunnel
//! device, and the other nodes' configs get VXLAN routes through it.
//!
//! The address comes from a pool [`vxlan_tunnel_pools`] picks for the node, through the
//! node's own allocator, held by the handle `vxlan-tunnel-addr-<node>`; asking again with
//! that handle returns the same address, so restarts keep it.

// Known limitation: the address is not given back when the last VXLAN pool is deleted or
// switched to vxlanMode Never; it stays allocated (and annotated) until the node's handle
// is released by hand or by IPAM garbage collection.
// Known limitation: IPv6 VXLAN (`IPv6VXLANTunnelAddr`) is not allocated; the data path
// programs IPv4 only.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tortie_crds::ippool::IPPool;
use tracing::{debug, info, warn};

use crate::dataplane::vtep_mac;
use crate::ipam::allocator::Allocator;
use crate::ipam::pools::vxlan_tunnel_pools;

/// The annotation holding the IPv4 address of the node's VXLAN device.
pub const VXLAN_TUNNEL_ADDRESS_ANNOTATION: &str = "projectcalico.org/IPv4VXLANTunnelAddr";
/// The annotation holding the MAC address of the node's VXLAN device.
pub const VXLAN_TUNNEL_MAC_ANNOTATION: &str = "projectcalico.org/VXLANTunnelMACAddr";

/// How often the pools are looked at while no VXLAN pool applies to the node: a pool
/// switched to VXLAN is noticed within this time.
const POLL: Duration = Duration::from_secs(10);
/// How often the annotations are checked once published.
const RECHECK: Duration = Duration::from_secs(60);
/// Backoff bounds while the Node, the pools or the API are not there yet.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The IPAM handle of `node`'s VXLAN device address, as Calico names it.
pub fn vxlan_tunnel_handle(node: &str) -> String {
    format!("vxlan-tunnel-addr-{node}")
}

/// Keeps the tunnel address allocated and annotated until `stop` turns true.
pub async fn run(client: kube::Client, allocator: Arc<Allocator>, mut stop: watch::Receiver<bool>) {
    let nodes: Api<Node> = Api::all(client.clone());
    let pools: Api<IPPool> = Api::all(client);
    let node_name = allocator.node().to_owned();
    let mut retry = FIRST_RETRY;
    loop {
        let wait = match ensure(&nodes, &pools, &allocator).await {
            Ok(Some(_)) => {
                retry = FIRST_RETRY;
                RECHECK
            }
            Ok(None) => {
                retry = FIRST_RETRY;
                POLL
            }
            Err(why) => {
                warn!(node = %node_name, %why, retry_in = ?retry, "Could not set up the VXLAN tunnel address");
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Allocates (or finds) the tunnel address when a VXLAN pool applies to the node and
/// writes the annotations that differ. `None` when no pool applies.
async fn ensure(
    nodes: &Api<Node>,
    pools: &Api<IPPool>,
    allocator: &Allocator,
) -> Result<Option<IpAddr>, String> {
    let name = allocator.node();
    let node = nodes
        .get(name)
        .await
        .map_err(|e| format!("reading Node {name}: {e}"))?;
    let pools = pools
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing IPPools: {e}"))?
        .items;
    let chosen = vxlan_tunnel_pools(&pools, node.labels());
    if chosen.is_empty() {
        debug!(
            node = name,
            "No VXLAN pool applies to this node; no tunnel address"
        );
        return Ok(None);
    }
    let address = allocator
        .allocate_vxlan_tunnel(&vxlan_tunnel_handle(name), chosen)
        .await
        .map_err(|e| format!("allocating the VXLAN tunnel address of node {name}: {e}"))?;

    let wanted = tunnel_annotations(name, address);
    let annotations = node.annotations();
    let stale: serde_json::Map<String, serde_json::Value> = wanted
        .iter()
        .filter(|(key, value)| annotations.get(*key) != Some(value))
        .map(|(key, value)| ((*key).to_owned(), json!(value)))
        .collect();
    if stale.is_empty() {
        debug!(node = name, %address, "VXLAN tunnel annotations are current");
        return Ok(Some(address));
    }
    let patch = json!({"metadata": {"annotations": stale}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("annotating Node {name}: {e}"))?;
    info!(node = name, %address, "Published the VXLAN tunnel address");
    Ok(Some(address))
}

/// The annotations that describe `node`'s VXLAN device with `address`.
pub fn tunnel_annotations(node: &str, address: IpAddr) -> [(&'static str, String); 2] {
    [
        (VXLAN_TUNNEL_ADDRESS_ANNOTATION, address.to_string()),
        (VXLAN_TUNNEL_MAC_ANNOTATION, vtep_mac(node).to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_and_annotations_follow_calico_names() {
        assert_eq!(vxlan_tunnel_handle("node-1"), "vxlan-tunnel-addr-node-1");
        let [address, mac] = tunnel_annotations("node-1", "10.244.0.1".parse().expect("IP"));
        assert_eq!(
            address,
            (
                "projectcalico.org/IPv4VXLANTunnelAddr",
                "10.244.0.1".to_owned()
            )
        );
        assert_eq!(mac.0, "projectcalico.org/VXLANTunnelMACAddr");
        assert_eq!(mac.1, vtep_mac("node-1").to_string());
    }
}
