//! Publishes the node's underlay address with its prefix length as the Node annotation
//! `projectcalico.org/IPv4Address`, as Calico's node agent does. The operator reads it to
//! decide, for `CrossSubnet` pools, which other nodes share this node's subnet (routed
//! directly) and which do not (encapsulated).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::node_loop::internal_ipv4;

/// The annotation holding `<address>/<prefix length>` of the node's IPv4 underlay.
pub const IPV4_ADDRESS_ANNOTATION: &str = "projectcalico.org/IPv4Address";

/// How often the annotation is checked again once published (an address can change).
const RECHECK: Duration = Duration::from_secs(300);
/// Backoff bounds while the Node, its InternalIP or the API are not there yet.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Keeps the annotation in step with the kernel until `stop` turns true.
pub async fn run(client: kube::Client, node_name: String, mut stop: watch::Receiver<bool>) {
    let nodes: Api<Node> = Api::all(client);
    let mut retry = FIRST_RETRY;
    loop {
        let wait = match publish(&nodes, &node_name).await {
            Ok(()) => {
                retry = FIRST_RETRY;
                RECHECK
            }
            Err(why) => {
                warn!(node = %node_name, %why, retry_in = ?retry, "Could not publish the node's address");
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

/// Reads the Node's InternalIP, finds its prefix on the local interface that holds it, and
/// writes the annotation when it differs.
async fn publish(nodes: &Api<Node>, name: &str) -> Result<(), String> {
    let node = nodes
        .get(name)
        .await
        .map_err(|e| format!("reading Node {name}: {e}"))?;
    let address = internal_ipv4(&node)
        .ok_or_else(|| format!("Node {name} has no IPv4 InternalIP in status.addresses"))?;
    let prefix = local_prefix(address)
        .await
        .ok_or_else(|| format!("no local interface holds {address}, the Node's InternalIP"))?;
    let value = format!("{address}/{prefix}");

    let current = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(IPV4_ADDRESS_ANNOTATION));
    if current == Some(&value) {
        debug!(node = name, address = %value, "Node address annotation is current");
        return Ok(());
    }
    let patch = json!({"metadata": {"annotations": {IPV4_ADDRESS_ANNOTATION: value}}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("annotating Node {name}: {e}"))?;
    info!(node = name, address = %value, "Published the node's underlay address");
    Ok(())
}

/// The prefix length of `address` on the local interface that holds it.
async fn local_prefix(address: Ipv4Addr) -> Option<u8> {
    use netlink_packet_route::address::AddressAttribute;

    let (connection, handle, _) = rtnetlink::new_connection().ok()?;
    let connection = tokio::spawn(connection);
    let mut messages = handle.address().get().execute();
    let mut found = None;
    while let Ok(Some(message)) = messages.try_next().await {
        let holds = message.attributes.iter().any(|attribute| {
            matches!(attribute, AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)
        });
        if holds {
            found = Some(message.header.prefix_len);
            break;
        }
    }
    connection.abort();
    found
}
