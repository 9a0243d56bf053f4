//! The CNI operations, each tying IPAM and the kernel wiring together.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::agent_ipam::AgentIpam;
use super::config::AGENT_IPAM_TYPE;
use super::config::ParsedConfig;
use super::error::{CniError, ErrorCode};
use super::invocation::Invocation;
use super::ipam::{Delegate, Ipam, IpamRequest};
use super::netlink::Netlink;
use super::result::{CniResult, Interface, IpConfig, Route};
use super::version::{SUPPORTED_VERSIONS, SpecVersion};
use super::wiring::{self, GATEWAY_V4, GATEWAY_V6, Plan};

/// VERSION's answer: exactly the versions this plugin speaks.
pub fn version() -> Value {
    let supported: Vec<&str> = SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect();
    json!({
        "cniVersion": SpecVersion::LATEST.as_str(),
        "supportedVersions": supported,
    })
}

/// ADD: allocate, wire, and report; on failure release and unwire whatever was done.
pub fn add(invocation: &Invocation, config: &ParsedConfig) -> Result<CniResult, CniError> {
    let ipam = delegate_for(invocation, config)?;
    let request = IpamRequest { invocation, config };
    let allocation = ipam.add(request)?;

    let outcome = wire_allocation(invocation, config, &allocation);
    if outcome.is_err()
        && let Err(error) = ipam.del(request)
    {
        tracing::warn!(container = %invocation.container_id, error = %error, "rollback could not release the addresses");
    }
    outcome
}

fn wire_allocation(
    invocation: &Invocation,
    config: &ParsedConfig,
    allocation: &CniResult,
) -> Result<CniResult, CniError> {
    let netns = invocation
        .netns
        .clone()
        .expect("ADD's environment check requires CNI_NETNS");
    let plan = Plan {
        container_id: invocation.container_id.clone(),
        host_name: host_name(invocation),
        pod_ifname: invocation.ifname.clone(),
        netns,
        mtu: config.config.mtu,
        addresses: allocation.ips.iter().map(|ip| ip.address.addr()).collect(),
        extra_routes: allocation
            .routes
            .iter()
            .map(|route| route.dst)
            .filter(|dst| dst.prefix_len() > 0)
            .collect(),
    };
    tracing::debug!(container = %plan.container_id, link = %plan.host_name, addresses = ?plan.addresses, "wiring pod");

    let host = Netlink::connect()?;
    let wired = wiring::wire(&host, &plan)?;
    tracing::info!(container = %plan.container_id, link = %plan.host_name, addresses = ?plan.addresses, "pod wired");

    let mtu = plan.mtu.or(wired.pod_mtu);
    let interfaces = vec![
        Interface {
            name: plan.host_name.clone(),
            mac: Some(super::netlink::format_mac(&wiring::HOST_MAC)),
            mtu,
            ..Interface::default()
        },
        Interface {
            name: plan.pod_ifname.clone(),
            mac: wired.pod_mac,
            mtu,
            sandbox: Some(plan.netns.display().to_string()),
            ..Interface::default()
        },
    ];
    let ips = plan
        .addresses
        .iter()
        .map(|address| IpConfig {
            interface: Some(1),
            address: ipnet::IpNet::from(*address),
            gateway: Some(gateway_for(*address)),
        })
        .collect();
    let mut routes: Vec<Route> = Vec::new();
    for default in default_routes(&plan.addresses) {
        routes.push(default);
    }
    for dst in &plan.extra_routes {
        routes.push(route_via(*dst, gateway_for(dst.addr())));
    }
    let dns = if allocation.dns.is_empty() {
        config.config.dns.clone().unwrap_or_default()
    } else {
        allocation.dns.clone()
    };

    Ok(CniResult {
        interfaces,
        ips,
        routes,
        dns,
    })
}

/// DEL: remove our host veth if it is this container's, then release the addresses.
/// Both are attempted even if one fails; nothing left is success.
pub fn del(invocation: &Invocation, config: &ParsedConfig) -> Result<(), CniError> {
    let host_name = host_name(invocation);
    let unwired = Netlink::connect().and_then(|host| {
        wiring::unwire(
            &host,
            &host_name,
            &invocation.container_id,
            &invocation.ifname,
        )
    });
    match &unwired {
        Ok(true) => {
            tracing::info!(container = %invocation.container_id, link = %host_name, "host veth removed")
        }
        Ok(false) => {
            tracing::debug!(container = %invocation.container_id, link = %host_name, "no host veth of this container")
        }
        Err(error) => {
            tracing::warn!(container = %invocation.container_id, error = %error, "could not remove the host veth")
        }
    }

    let released = delegate_for(invocation, config)
        .and_then(|ipam| ipam.del(IpamRequest { invocation, config }));
    unwired.map(drop).and(released)
}

/// CHECK: the IPAM delegate's check, then every piece of wiring against `prevResult`.
pub fn check(invocation: &Invocation, config: &ParsedConfig) -> Result<(), CniError> {
    if !config.version.has_check() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "CHECK needs cniVersion 0.4.0 or later; the configuration says {}",
                config.version
            ),
        ));
    }
    let prev = config.config.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!(
                "CHECK of network {:?} needs prevResult in the configuration",
                config.config.name
            ),
        )
    })?;
    let prev = CniResult::from_json(prev)?;
    let addresses = pod_addresses(&prev, &invocation.ifname);
    if addresses.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!(
                "prevResult names no address on interface {}",
                invocation.ifname
            ),
        ));
    }

    delegate_for(invocation, config)?.check(IpamRequest { invocation, config })?;

    let plan = Plan {
        container_id: invocation.container_id.clone(),
        host_name: host_name(invocation),
        pod_ifname: invocation.ifname.clone(),
        netns: invocation
            .netns
            .clone()
            .expect("CHECK's environment check requires CNI_NETNS"),
        mtu: config.config.mtu,
        addresses,
        extra_routes: Vec::new(),
    };
    let host = Netlink::connect()?;
    let problems = wiring::inspect(&host, &plan)?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::CheckFailed,
        format!(
            "container {}: {}",
            invocation.container_id,
            problems.join("; ")
        ),
    ))
}

/// STATUS: ready when the IPAM delegate is.
pub fn status(invocation: &Invocation, config: &ParsedConfig) -> Result<(), CniError> {
    require_1_1(config, "STATUS")?;
    let ipam = delegate_for(invocation, config).map_err(|error| CniError {
        code: ErrorCode::PluginNotAvailable,
        ..error
    })?;
    ipam.status(IpamRequest { invocation, config })
}

/// GC: remove Tortie's host veths of attachments the runtime no longer knows, then let
/// the IPAM delegate release their addresses.
pub fn gc(invocation: &Invocation, config: &ParsedConfig) -> Result<(), CniError> {
    require_1_1(config, "GC")?;
    let valid = config.config.valid_attachments.clone().unwrap_or_default();
    let host = Netlink::connect()?;
    let removed = wiring::collect_stale_links(&host, |container_id, ifname| {
        valid
            .iter()
            .any(|a| a.container_id == container_id && a.ifname == ifname)
    })?;
    tracing::info!(
        removed = removed.len(),
        valid = valid.len(),
        "GC finished with links"
    );
    delegate_for(invocation, config)?.gc(IpamRequest { invocation, config })
}

fn require_1_1(config: &ParsedConfig, command: &str) -> Result<(), CniError> {
    if config.version.has_status_and_gc() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!(
            "{command} needs cniVersion 1.1.0; the configuration says {}",
            config.version
        ),
    ))
}

/// The node agent when `ipam` is absent or `tortie-ipam`, else the named delegate.
fn delegate_for(invocation: &Invocation, config: &ParsedConfig) -> Result<Box<dyn Ipam>, CniError> {
    match &config.config.ipam {
        None => Ok(Box::new(AgentIpam::from_config(None))),
        Some(ipam) if ipam.plugin_type == AGENT_IPAM_TYPE => {
            Ok(Box::new(AgentIpam::from_config(Some(ipam))))
        }
        Some(ipam) => Ok(Box::new(Delegate::find(
            &ipam.plugin_type,
            &invocation.cni_path,
        )?)),
    }
}

fn host_name(invocation: &Invocation) -> String {
    wiring::host_veth_name(
        invocation.pod.namespace.as_deref(),
        invocation.pod.name.as_deref(),
        &invocation.container_id,
    )
}

fn gateway_for(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

fn default_routes(addresses: &[IpAddr]) -> Vec<Route> {
    let mut routes = Vec::new();
    if addresses.iter().any(IpAddr::is_ipv4) {
        routes.push(route_via(
            "0.0.0.0/0".parse().expect("literal prefix"),
            IpAddr::V4(GATEWAY_V4),
        ));
    }
    if addresses.iter().any(IpAddr::is_ipv6) {
        routes.push(route_via(
            "::/0".parse().expect("literal prefix"),
            IpAddr::V6(GATEWAY_V6),
        ));
    }
    routes
}

fn route_via(dst: ipnet::IpNet, gw: IpAddr) -> Route {
    Route {
        dst,
        gw: Some(gw),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    }
}

/// The addresses a result puts on the pod interface `ifname` (all, when it names none).
fn pod_addresses(result: &CniResult, ifname: &str) -> Vec<IpAddr> {
    result
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(index) => result
                .interfaces
                .get(index)
                .is_none_or(|interface| interface.name == ifname),
            None => true,
        })
        .map(|ip| ip.address.addr())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_exactly_the_supported_versions() {
        let answer = version();
        assert_eq!(answer["cniVersion"], "1.1.0");
        assert_eq!(
            answer["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn pod_addresses_follow_interface_indexes() {
        let result: CniResult = serde_json::from_value(json!({
            "interfaces": [{"name": "calix"}, {"name": "eth0", "sandbox": "/x"}, {"name": "net1", "sandbox": "/x"}],
            "ips": [
                {"interface": 1, "address": "10.244.1.5/32"},
                {"interface": 2, "address": "10.9.0.1/32"},
                {"address": "fd00::5/128"}
            ]
        }))
        .expect("literal result");
        let addresses = pod_addresses(&result, "eth0");
        assert_eq!(
            addresses,
            vec![
                "10.244.1.5".parse::<IpAddr>().expect("literal"),
                "fd00::5".parse::<IpAddr>().expect("literal")
            ]
        );
    }

    #[test]
    fn dual_stack_gets_two_default_routes() {
        let routes = default_routes(&[
            "10.0.0.1".parse().expect("literal"),
            "fd00::1".parse().expect("literal"),
        ]);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].gw, Some(IpAddr::V6(GATEWAY_V6)));
    }
}
