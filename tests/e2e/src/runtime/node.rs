//! The Node's status and Lease: what keeps the node lifecycle controller from marking the
//! node unreachable, and what tells the scheduler whether pods can be placed on it.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use super::NodeContext;

/// How often the status and lease are written when nothing changes (the kubelet's default
/// lease renewal interval).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// How often the CNI configuration directory is looked at, so Ready follows it quickly.
const CONF_POLL: Duration = Duration::from_secs(1);

/// The lease's duration; the node lifecycle controller's grace period is longer.
const LEASE_SECONDS: i32 = 40;

/// The directory a container runtime reads CNI network configurations from (node view).
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// Where CNI plugins are (node view).
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";

/// The Node's InternalIP.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|address| address.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// `Ok` when the directory holds a CNI network configuration; else the message the Ready
/// condition carries.
pub fn network_readiness(conf_dir: &Path) -> Result<(), String> {
    let found = std::fs::read_dir(conf_dir).ok().is_some_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            entry.path().is_file() && super::cni::is_config_file(&name)
        })
    });
    if found {
        Ok(())
    } else {
        Err(format!(
            "container runtime network not ready: no CNI configuration in {}; a network plugin \
             must write a .conflist or .conf file there",
            conf_dir.display()
        ))
    }
}

/// The condition entries the runtime owns, as a strategic-merge patch list: Ready from the
/// network's readiness, and the three pressure conditions (always False: nothing here
/// measures pressure). `previous` holds the last written `(type, status, transition time)`
/// so a transition time only moves when the status does.
pub fn conditions(
    network: &Result<(), String>,
    now: Timestamp,
    previous: &mut Vec<(String, String, Timestamp)>,
) -> Vec<Value> {
    let (ready, reason, message) = match network {
        Ok(()) => (
            "True",
            "KubeletReady",
            "node runtime is posting ready status".to_string(),
        ),
        Err(message) => ("False", "NetworkPluginNotReady", message.clone()),
    };
    let entries = [
        ("Ready", ready, reason, message),
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "nothing here limits memory".to_string(),
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "nothing here limits disk".to_string(),
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "nothing here limits PIDs".to_string(),
        ),
    ];
    entries
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let transition = match previous.iter_mut().find(|(t, _, _)| t == type_) {
                Some((_, last_status, time)) if last_status == status => *time,
                Some(entry) => {
                    *entry = (type_.to_string(), status.to_string(), now);
                    now
                }
                None => {
                    previous.push((type_.to_string(), status.to_string(), now));
                    now
                }
            };
            json!({
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now.to_string(),
                "lastTransitionTime": transition.to_string(),
            })
        })
        .collect()
}

/// Writes the node's status and renews its lease every [`HEARTBEAT`], and at once when the
/// CNI configuration appears or disappears. Runs until shutdown.
pub async fn heartbeat(ctx: Arc<NodeContext>, node: Node, mut shutdown: watch::Receiver<bool>) {
    let name = ctx.config.node.clone();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    let mut previous: Vec<(String, String, Timestamp)> = node
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| Some((c.type_, c.status, c.last_transition_time?.0)))
        .collect();
    let mut last_network: Option<Result<(), String>> = None;
    let mut last_beat: Option<tokio::time::Instant> = None;
    loop {
        let network = network_readiness(Path::new(CNI_CONF_DIR));
        let changed = last_network.as_ref() != Some(&network);
        let due = last_beat.is_none_or(|at| at.elapsed() >= HEARTBEAT);
        if changed || due {
            if changed {
                info!(node = %name, ready = network.is_ok(), "network readiness changed");
            }
            let now = Timestamp::now();
            let patch = status_patch(&ctx, conditions(&network, now, &mut previous));
            match nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    last_network = Some(network);
                    last_beat = Some(tokio::time::Instant::now());
                }
                Err(error) => warn!(node = %name, %error, "node status could not be written"),
            }
            if let Err(error) = renew_lease(&leases, &name, &node_uid, now).await {
                warn!(node = %name, %error, "node lease could not be renewed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CONF_POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn status_patch(ctx: &NodeContext, conditions: Vec<Value>) -> Value {
    // Capacity is what the scheduler needs to place pods at all; the numbers are nominal.
    let capacity =
        json!({ "cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi" });
    json!({
        "status": {
            "conditions": conditions,
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {
                "architecture": super::super::cluster::kubernetes_arch(),
                "operatingSystem": "linux",
                "kubeletVersion": "v0.0.0-tortie-node-runtime",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "tortie-node-runtime://0",
                "osImage": "network namespace on the local machine",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "addresses": [
                { "type": "InternalIP", "address": ctx.address.to_string() },
                { "type": "Hostname", "address": ctx.config.node },
            ],
        }
    })
}

async fn renew_lease(
    leases: &Api<Lease>,
    node: &str,
    node_uid: &str,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let renew = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now);
    match leases.get_opt(node).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(node.to_string());
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            spec.renew_time = Some(renew);
            leases.replace(node, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {
                    "name": node,
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid,
                    }],
                },
                "spec": {
                    "holderIdentity": node,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": renew,
                },
            }))
            .expect("a lease built from literals deserialises");
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_follows_the_network_and_transition_times_only_move_on_change() {
        let mut previous = Vec::new();
        let t0: Timestamp = "2025-01-01T00:00:00Z".parse().expect("a valid timestamp");
        let t1: Timestamp = "2025-01-01T00:00:10Z".parse().expect("a valid timestamp");
        let t2: Timestamp = "2025-01-01T00:00:20Z".parse().expect("a valid timestamp");
        let not_ready = Err("no CNI configuration".to_string());

        let first = conditions(&not_ready, t0, &mut previous);
        assert_eq!(first[0]["type"], "Ready");
        assert_eq!(first[0]["status"], "False");
        assert_eq!(first[0]["reason"], "NetworkPluginNotReady");

        let same = conditions(&not_ready, t1, &mut previous);
        assert_eq!(same[0]["lastTransitionTime"], t0.to_string());
        assert_eq!(same[0]["lastHeartbeatTime"], t1.to_string());

        let ready = conditions(&Ok(()), t2, &mut previous);
        assert_eq!(ready[0]["status"], "True");
        assert_eq!(ready[0]["lastTransitionTime"], t2.to_string());
        assert_eq!(
            ready[1]["lastTransitionTime"],
            t0.to_string(),
            "MemoryPressure did not change"
        );
    }

    #[test]
    fn only_configuration_files_make_the_network_ready() {
        let dir = std::env::temp_dir().join(format!("tortie-netready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let readiness = network_readiness(&dir);
        assert!(
            readiness
                .as_ref()
                .is_err_and(|m| m.contains("no CNI configuration")),
            "{readiness:?}"
        );
        std::fs::write(dir.join("README"), "").expect("temp dir is writable");
        assert!(network_readiness(&dir).is_err());
        std::fs::write(dir.join("10-pods.conflist"), "{}").expect("temp dir is writable");
        assert!(network_readiness(&dir).is_ok());
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }
}
