//! IPAM by asking the node agent over its unix socket (`ipam.type: tortie-ipam`, or no
//! `ipam` section at all).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use tortie_crds::ipam::names::pod_handle_id;

use super::config::IpamConfig;
use super::error::{CniError, ErrorCode};
use super::ipam::{Ipam, IpamRequest};
use super::result::{CniResult, IpConfig};
use crate::ipam::client::{AgentClient, ClientError};
use crate::ipam::protocol::{
    AllocateRequest, CheckRequest, DEFAULT_SOCKET, Families, ReleaseRequest,
};

/// The node agent as the IPAM backend.
#[derive(Clone, Debug)]
pub struct AgentIpam {
    client: AgentClient,
    families: Families,
    ipv4_pools: Vec<String>,
    ipv6_pools: Vec<String>,
}

impl AgentIpam {
    /// The backend the `ipam` section describes (the defaults when there is none): IPv4
    /// only unless `assign_ipv6` is true, as in Calico.
    pub fn from_config(ipam: Option<&IpamConfig>) -> Self {
        let default = IpamConfig::default();
        let ipam = ipam.unwrap_or(&default);
        let socket = ipam
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Self {
            client: AgentClient::new(socket),
            families: Families {
                ipv4: ipam.assign_ipv4.unwrap_or(true),
                ipv6: ipam.assign_ipv6.unwrap_or(false),
            },
            ipv4_pools: ipam.ipv4_pools.clone(),
            ipv6_pools: ipam.ipv6_pools.clone(),
        }
    }

    /// The same backend talking to another socket.
    pub fn with_client(mut self, client: AgentClient) -> Self {
        self.client = client;
        self
    }

    /// The allocate request for an invocation.
    pub fn allocate_request(&self, request: IpamRequest<'_>) -> AllocateRequest {
        let invocation = request.invocation;
        AllocateRequest {
            handle_id: pod_handle_id(&invocation.container_id),
            namespace: invocation.pod.namespace.clone(),
            pod: invocation.pod.name.clone(),
            node: None,
            interface: invocation.ifname.clone(),
            families: self.families,
            ipv4_pools: self.ipv4_pools.clone(),
            ipv6_pools: self.ipv6_pools.clone(),
        }
    }

    fn cni_error(&self, error: ClientError, operation: &str) -> CniError {
        match error {
            ClientError::Agent(body) => CniError::new(ErrorCode::from_number(body.code), body.msg)
                .with_details(body.details),
            ClientError::NotListening { .. } | ClientError::Io { .. } => CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "IPAM {operation}: the Tortie agent is not answering on {}; try again once \
                     tortie-agent runs on this node",
                    self.client.socket().display()
                ),
            )
            .with_details(error.to_string()),
            ClientError::BadResponse { .. } => CniError::new(
                ErrorCode::IpamDelegate,
                format!("IPAM {operation}: the Tortie agent gave an answer the plugin cannot read"),
            )
            .with_details(error.to_string()),
        }
    }
}

impl Ipam for AgentIpam {
    fn add(&self, request: IpamRequest<'_>) -> Result<CniResult, CniError> {
        let answer = self
            .client
            .allocate(&self.allocate_request(request))
            .map_err(|error| self.cni_error(error, "ADD"))?;
        if answer.addresses.is_empty() {
            return Err(CniError::new(
                ErrorCode::IpamDelegate,
                "IPAM ADD: the Tortie agent assigned no address",
            ));
        }
        let ips = answer
            .addresses
            .iter()
            .map(|allocated| IpConfig {
                interface: None,
                address: IpNet::from(allocated.address.addr()),
                gateway: None,
            })
            .collect();
        Ok(CniResult {
            ips,
            ..CniResult::default()
        })
    }

    fn del(&self, request: IpamRequest<'_>) -> Result<(), CniError> {
        let release = ReleaseRequest {
            handle_id: pod_handle_id(&request.invocation.container_id),
        };
        self.client
            .release(&release)
            .map(drop)
            .map_err(|error| self.cni_error(error, "DEL"))
    }

    fn check(&self, request: IpamRequest<'_>) -> Result<(), CniError> {
        let handle_id = pod_handle_id(&request.invocation.container_id);
        let held: BTreeSet<IpAddr> = self
            .client
            .check(&CheckRequest {
                handle_id: handle_id.clone(),
            })
            .map_err(|error| self.cni_error(error, "CHECK"))?
            .addresses
            .into_iter()
            .collect();
        let expected: Vec<IpAddr> = match &request.config.config.prev_result {
            Some(prev) => CniResult::from_json(prev)?
                .ips
                .iter()
                .map(|ip| ip.address.addr())
                .collect(),
            None => Vec::new(),
        };
        let missing: Vec<String> = expected
            .iter()
            .filter(|address| !held.contains(address))
            .map(IpAddr::to_string)
            .collect();
        if held.is_empty() || !missing.is_empty() {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                format!(
                    "IPAM CHECK: handle {handle_id} does not hold {}",
                    if missing.is_empty() {
                        "any address".to_owned()
                    } else {
                        missing.join(", ")
                    }
                ),
            ));
        }
        Ok(())
    }

    fn status(&self, _request: IpamRequest<'_>) -> Result<(), CniError> {
        let unavailable = |msg: String| CniError::new(ErrorCode::PluginNotAvailable, msg);
        match self.client.status() {
            Ok(status) if status.ready => Ok(()),
            Ok(status) => Err(unavailable(format!(
                "the Tortie agent of node {} cannot allocate: {}",
                status.node, status.message
            ))),
            Err(error) => Err(unavailable(self.cni_error(error, "STATUS").msg)),
        }
    }

    fn gc(&self, _request: IpamRequest<'_>) -> Result<(), CniError> {
        // Known limitation: the agent does not yet release the handles of attachments
        // missing from a GC request; the runtime's DELs and the operator's IPAM garbage
        // collection free those addresses.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::cni::config;
    use crate::cni::invocation::{Command, Invocation};

    #[test]
    fn an_agent_that_is_not_listening_is_try_again_later_naming_the_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("absent.sock");
        let config = config::parse(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tortie-cni",
                    "ipam":{{"type":"tortie-ipam","socket":"{}"}}}}"#,
                socket.display()
            )
            .into_bytes(),
        )
        .expect("valid config");
        let env: HashMap<String, String> = [
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let invocation = Invocation::from_env(Command::Add, &env).expect("valid env");
        let ipam = AgentIpam::from_config(config.config.ipam.as_ref());
        let request = IpamRequest {
            invocation: &invocation,
            config: &config,
        };

        let built = ipam.allocate_request(request);
        assert_eq!(built.handle_id, "k8s-pod-network.abc123");
        assert_eq!(built.pod.as_deref(), Some("web-0"));
        assert!(built.families.ipv4 && !built.families.ipv6);

        for error in [
            ipam.add(request).expect_err("no agent"),
            ipam.del(request).expect_err("no agent"),
        ] {
            assert_eq!(error.code, ErrorCode::TryAgainLater);
            assert!(
                error.msg.contains(&socket.display().to_string()),
                "{}",
                error.msg
            );
        }
        let status = ipam.status(request).expect_err("no agent");
        assert_eq!(status.code, ErrorCode::PluginNotAvailable);
    }
}
