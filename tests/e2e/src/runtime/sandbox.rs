//! A pod sandbox: the pod's network namespace, wired by the CNI plugins. Its record is
//! written before anything is made, so a sandbox is torn down even after a crash.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::cni::{self, CniError, Invocation, NetworkList, PortMapping};
use super::node::{CNI_BIN_DIR, CNI_CONF_DIR};
use super::{Error, NodeContext};
use crate::netns;

/// Where network namespaces are mounted (node view; the node's own `var/run/netns`).
const NETNS_DIR: &str = "/var/run/netns";

/// A pod's network namespace and what the plugins made in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    /// The sandbox ID (`CNI_CONTAINERID`).
    pub id: String,
    /// The network namespace's name in the node's `/var/run/netns`.
    pub netns: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// The network configuration ADD used; DEL must use the same.
    pub network: Option<NetworkList>,
    /// Whether the `loopback` plugin brought `lo` up (then DEL calls it too).
    pub loopback_plugin: bool,
    /// The last plugin's ADD result.
    pub result: Option<Value>,
    /// The pod's host ports, for plugins with the `portMappings` capability.
    pub port_mappings: Vec<PortMapping>,
}

impl Sandbox {
    /// A sandbox for `pod` with a fresh ID; nothing is made yet.
    pub fn new(pod: &Pod) -> Sandbox {
        let id = super::random_id(32);
        Sandbox {
            netns: format!("tortie-pod-{}", &id[..12]),
            id,
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            network: None,
            loopback_plugin: false,
            result: None,
            port_mappings: port_mappings(pod),
        }
    }

    /// The network namespace's path, as `CNI_NETNS` and `nsenter` want it.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// Makes the namespace and runs CNI ADD; returns the pod's address. On failure,
    /// everything made so far is removed again (DEL included) before the error returns.
    pub async fn create(&mut self, ctx: &NodeContext) -> Result<IpAddr, Error> {
        match self.try_create(ctx).await {
            Ok(address) => Ok(address),
            Err(error) => {
                if let Err(cleanup) = self.destroy(ctx).await {
                    warn!(
                        pod = %self.pod,
                        sandbox = %self.id,
                        error = %cleanup,
                        "cleanup after a failed sandbox",
                    );
                }
                Err(error)
            }
        }
    }

    async fn try_create(&mut self, ctx: &NodeContext) -> Result<IpAddr, Error> {
        self.network = Some(cni::first_config(Path::new(CNI_CONF_DIR))?);
        self.loopback_plugin = Path::new(CNI_BIN_DIR).join("loopback").is_file();
        self.save(ctx)?;
        netns::ip(&["netns", "add", &self.netns])?;

        // Like containerd, `lo` is brought up by the loopback plugin when it is installed.
        if self.loopback_plugin {
            cni::add(&loopback_list(), &self.invocation("lo"), &[]).await?;
        } else {
            netns::ip_in(&self.netns, &["link", "set", "lo", "up"])?;
        }
        let network = self.network.clone().expect("the network was set above");
        let result = cni::add(&network, &self.invocation("eth0"), &self.port_mappings).await?;
        self.result = Some(result.clone());
        self.save(ctx)?;
        let address =
            cni::result_ips(&result)
                .into_iter()
                .next()
                .ok_or_else(|| CniError::Plugin {
                    plugin: network
                        .plugins
                        .last()
                        .and_then(|p| p["type"].as_str())
                        .unwrap_or_default()
                        .into(),
                    command: "ADD",
                    code: None,
                    message: format!(
                        "the result of network {:?} has no IP address: {result}",
                        network.name
                    ),
                })?;
        info!(
            pod = %self.pod,
            namespace = %self.namespace,
            sandbox = %self.id,
            %address,
            "sandbox ready",
        );
        Ok(address)
    }

    /// Runs CNI DEL (reverse order, with the ADD result), deletes the namespace and the
    /// record. Goes on after a failed step; returns the first error.
    pub async fn destroy(&self, ctx: &NodeContext) -> Result<(), Error> {
        let mut first_error: Option<Error> = None;
        if let Some(network) = &self.network
            && let Err(error) = cni::del(
                network,
                &self.invocation("eth0"),
                self.result.as_ref(),
                &self.port_mappings,
            )
            .await
        {
            first_error.get_or_insert(error.into());
        }
        if self.loopback_plugin
            && let Err(error) = cni::del(&loopback_list(), &self.invocation("lo"), None, &[]).await
        {
            first_error.get_or_insert(error.into());
        }
        if self.netns_path().exists()
            && let Err(error) = netns::ip(&["netns", "delete", &self.netns])
        {
            first_error.get_or_insert(error.into());
        }
        if first_error.is_none() {
            let record = self.record_path(ctx);
            if let Err(error) = std::fs::remove_file(&record)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                first_error.get_or_insert(Error::io(&record, error));
            }
            info!(
                pod = %self.pod,
                namespace = %self.namespace,
                sandbox = %self.id,
                "sandbox removed",
            );
        }
        first_error.map_or(Ok(()), Err)
    }

    fn invocation(&self, ifname: &str) -> Invocation {
        Invocation {
            container_id: self.id.clone(),
            netns: self.netns_path(),
            ifname: ifname.to_string(),
            args: cni::cni_args(&self.namespace, &self.pod, &self.id, &self.uid),
            bin_dir: PathBuf::from(CNI_BIN_DIR),
        }
    }

    fn record_path(&self, ctx: &NodeContext) -> PathBuf {
        sandboxes_dir(ctx).join(format!("{}.json", self.id))
    }

    fn save(&self, ctx: &NodeContext) -> Result<(), Error> {
        let path = self.record_path(ctx);
        write_atomically(
            &path,
            &serde_json::to_vec_pretty(self).expect("a sandbox serialises"),
        )
    }
}

/// Tears down every sandbox whose record a previous run of the runtime left.
pub async fn remove_stale(ctx: &NodeContext) {
    let Ok(entries) = std::fs::read_dir(sandboxes_dir(ctx)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let sandbox: Option<Sandbox> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        match sandbox {
            Some(sandbox) => {
                info!(
                    pod = %sandbox.pod,
                    sandbox = %sandbox.id,
                    "removing a sandbox a previous run left",
                );
                if let Err(error) = sandbox.destroy(ctx).await {
                    warn!(
                        sandbox = %sandbox.id,
                        %error,
                        "stale sandbox could not be removed completely",
                    );
                }
            }
            None => warn!(path = %path.display(), "unreadable sandbox record skipped"),
        }
    }
}

/// Writes a file through a temporary name and a rename, so readers never see half of it.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).map_err(|e| Error::io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| Error::io(path, e))
}

fn sandboxes_dir(ctx: &NodeContext) -> PathBuf {
    ctx.state_dir().join("sandboxes")
}

fn loopback_list() -> NetworkList {
    let plugin = json!({ "type": "loopback" });
    NetworkList {
        source: PathBuf::from("(built in)"),
        name: "cni-loopback".into(),
        cni_version: "1.0.0".into(),
        plugins: vec![plugin.as_object().expect("a literal object").clone()],
    }
}

/// The pod's `hostPort`s, as the portmap plugin reads them.
fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|container| container.ports.iter().flatten())
        .filter_map(|port| {
            Some(PortMapping {
                host_port: port.host_port.filter(|p| *p > 0)?,
                container_port: port.container_port,
                protocol: port.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                host_ip: port.host_ip.clone().filter(|ip| !ip.is_empty()),
            })
        })
        .collect()
}
