//! The pool made when the cluster has none, and where its range comes from.
//!
//! In order: the `--default-pool-cidr` flag; kubeadm's `networking.podSubnet` (the
//! `ClusterConfiguration` key of the `kubeadm-config` ConfigMap in `kube-system`, set by
//! `kubeadm init --pod-network-cidr`); the smallest range covering every Node's
//! `spec.podCIDRs`, widened to a /16 when narrower (node ranges are carved from a cluster
//! range, and a pool that covers only today's nodes would leave tomorrow's out); and
//! last 192.168.0.0/16, Calico's own default. The choice and the reason are logged and
//! recorded as an Event on the pool.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use tortie_crds::ippool::{EncapsulationMode, IPPool, IPPoolSpec};

use crate::error::Result;
use crate::world::World;

/// Name of the default IPv4 pool, as Calico names it.
pub const DEFAULT_IPV4_POOL_NAME: &str = "default-ipv4-ippool";
/// Name of the default IPv6 pool, as Calico names it.
pub const DEFAULT_IPV6_POOL_NAME: &str = "default-ipv6-ippool";
/// The range used when nothing says otherwise.
pub const FALLBACK_CIDR: &str = "192.168.0.0/16";
/// Namespace and name of kubeadm's configuration.
const KUBEADM_NAMESPACE: &str = "kube-system";
const KUBEADM_CONFIG_MAP: &str = "kubeadm-config";
const KUBEADM_KEY: &str = "ClusterConfiguration";
/// Most specific prefix a range derived from node ranges gets.
const NODE_RANGE_MIN_PREFIX: u8 = 16;

/// Encapsulation of the default pool, named as `status.encapsulation` shows it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolEncapsulation {
    /// `ipipMode: Always`.
    #[value(name = "IPIP")]
    Ipip,
    /// `ipipMode: CrossSubnet`.
    #[value(name = "IPIPCrossSubnet")]
    IpipCrossSubnet,
    /// `vxlanMode: Always`.
    #[value(name = "VXLAN")]
    Vxlan,
    /// `vxlanMode: CrossSubnet`.
    #[value(name = "VXLANCrossSubnet")]
    VxlanCrossSubnet,
    /// No encapsulation.
    #[value(name = "None")]
    None,
}

/// Where the default pool's range came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrSource {
    /// The `--default-pool-cidr` flag.
    Flag,
    /// kubeadm's `networking.podSubnet`.
    Kubeadm,
    /// The Nodes' `spec.podCIDRs`.
    NodePodCidrs {
        /// How many node ranges were covered.
        ranges: usize,
    },
    /// Nothing said; Calico's default.
    Fallback,
}

/// The default pool's range and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultCidr {
    /// The range.
    pub cidr: IpNet,
    /// Where it came from.
    pub source: CidrSource,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ClusterConfiguration {
    networking: Networking,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Networking {
    pod_subnet: Option<String>,
}

impl PoolEncapsulation {
    /// The `(ipipMode, vxlanMode)` pair.
    pub fn modes(self) -> (EncapsulationMode, EncapsulationMode) {
        use EncapsulationMode::{Always, CrossSubnet, Never};
        match self {
            PoolEncapsulation::Ipip => (Always, Never),
            PoolEncapsulation::IpipCrossSubnet => (CrossSubnet, Never),
            PoolEncapsulation::Vxlan => (Never, Always),
            PoolEncapsulation::VxlanCrossSubnet => (Never, CrossSubnet),
            PoolEncapsulation::None => (Never, Never),
        }
    }
}

impl DefaultCidr {
    /// Why this range, in a sentence for the Event and the log.
    pub fn reason(&self) -> String {
        match &self.source {
            CidrSource::Flag => format!("{} was given with --default-pool-cidr", self.cidr),
            CidrSource::Kubeadm => format!(
                "{} is the cluster's pod subnet (networking.podSubnet in ConfigMap \
                 {KUBEADM_NAMESPACE}/{KUBEADM_CONFIG_MAP}, set by kubeadm init \
                 --pod-network-cidr)",
                self.cidr
            ),
            CidrSource::NodePodCidrs { ranges } => format!(
                "{} covers the {ranges} pod range(s) in the Nodes' spec.podCIDRs (no \
                 --default-pool-cidr and no kubeadm podSubnet were found)",
                self.cidr
            ),
            CidrSource::Fallback => format!(
                "{} is the default: no --default-pool-cidr, no kubeadm podSubnet and no \
                 Node spec.podCIDRs were found",
                self.cidr
            ),
        }
    }
}

/// The first IPv4 range of kubeadm's `networking.podSubnet` (a comma-separated list on
/// dual-stack clusters), from the `ClusterConfiguration` YAML; `Ok(None)` when unset.
pub fn pod_subnet_from_kubeadm(cluster_configuration: &str) -> Result<Option<IpNet>, String> {
    let config: ClusterConfiguration = serde_saphyr::from_str(cluster_configuration)
        .map_err(|error| format!("ClusterConfiguration is not valid YAML: {error}"))?;
    let Some(subnets) = config.networking.pod_subnet else {
        return Ok(None);
    };
    let mut first_v6 = None;
    for text in subnets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net: IpNet = text.parse().map_err(|_| {
            format!("networking.podSubnet: {text:?} is not a CIDR such as 10.244.0.0/16")
        })?;
        match net {
            IpNet::V4(_) => return Ok(Some(net.trunc())),
            IpNet::V6(_) => first_v6 = first_v6.or(Some(net.trunc())),
        }
    }
    Ok(first_v6)
}

/// The smallest IPv4 range covering every IPv4 range in `ranges`, widened to a /16 when
/// narrower; `None` without IPv4 ranges.
pub fn covering_cidr(ranges: &[IpNet]) -> Option<IpNet> {
    let v4: Vec<Ipv4Net> = ranges
        .iter()
        .filter_map(|r| match r {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        })
        .collect();
    let first = v4.first()?;
    let mut prefix = v4
        .iter()
        .map(|n| n.prefix_len())
        .min()
        .unwrap_or(32)
        .min(NODE_RANGE_MIN_PREFIX);
    loop {
        let candidate = Ipv4Net::new(first.network(), prefix)
            .expect("a prefix of at most 32 is valid")
            .trunc();
        if v4.iter().all(|n| candidate.contains(n)) || prefix == 0 {
            return Some(IpNet::V4(candidate));
        }
        prefix -= 1;
    }
}

/// Picks the default range from what was found, in the documented order.
pub fn choose_cidr(
    flag: Option<IpNet>,
    kubeadm: Option<IpNet>,
    node_ranges: &[IpNet],
) -> DefaultCidr {
    if let Some(cidr) = flag {
        return DefaultCidr {
            cidr: cidr.trunc(),
            source: CidrSource::Flag,
        };
    }
    if let Some(cidr) = kubeadm {
        return DefaultCidr {
            cidr,
            source: CidrSource::Kubeadm,
        };
    }
    if let Some(cidr) = covering_cidr(node_ranges) {
        return DefaultCidr {
            cidr,
            source: CidrSource::NodePodCidrs {
                ranges: node_ranges.iter().filter(|r| r.addr().is_ipv4()).count(),
            },
        };
    }
    DefaultCidr {
        cidr: FALLBACK_CIDR
            .parse()
            .expect("the fallback CIDR literal parses"),
        source: CidrSource::Fallback,
    }
}

/// The default pool over `cidr` with the configured encapsulation, block size, outgoing
/// NAT and node selector (IPIP modes become Never on an IPv6 range, which IPIP cannot
/// carry).
pub fn default_pool(cidr: IpNet, settings: &DefaultPoolSettings) -> IPPool {
    let (mut ipip, vxlan) = settings.encapsulation.modes();
    if matches!(cidr.addr(), IpAddr::V6(_)) {
        ipip = EncapsulationMode::Never;
    }
    let name = match cidr {
        IpNet::V4(_) => DEFAULT_IPV4_POOL_NAME,
        IpNet::V6(_) => DEFAULT_IPV6_POOL_NAME,
    };
    let mut spec = IPPoolSpec::new(cidr.to_string());
    spec.ipip_mode = ipip;
    spec.vxlan_mode = vxlan;
    spec.nat_outgoing = settings.nat_outgoing;
    spec.block_size = settings.block_size;
    if let Some(selector) = &settings.node_selector {
        spec.node_selector = selector.clone();
    }
    IPPool::new(name, spec)
}

/// What the default pool is made from.
pub struct DefaultPoolSettings {
    /// `--default-pool-cidr`.
    pub cidr: Option<IpNet>,
    /// `--default-pool-encapsulation`.
    pub encapsulation: PoolEncapsulation,
    /// `--default-block-size`.
    pub block_size: Option<i32>,
    /// `--default-pool-nat-outgoing`.
    pub nat_outgoing: bool,
    /// `--default-pool-node-selector`; `None` keeps the schema's `all()`.
    pub node_selector: Option<String>,
}

/// Creates the default pool when the (synced) caches hold no pool at all.
pub async fn ensure_default_pool(
    client: &Client,
    world: &World,
    settings: &DefaultPoolSettings,
    recorder: &Recorder,
) -> Result<()> {
    if !world.pools.is_empty() {
        return Ok(());
    }
    let kubeadm = match settings.cidr {
        Some(_) => None,
        None => kubeadm_pod_subnet(client).await?,
    };
    let node_ranges: Vec<IpNet> = world
        .nodes
        .list()
        .iter()
        .flat_map(|n| n.pod_cidrs.clone())
        .collect();
    let chosen = choose_cidr(settings.cidr, kubeadm, &node_ranges);
    let pool = default_pool(chosen.cidr, settings);

    let api = Api::<IPPool>::all(client.clone());
    let created = match api.create(&Default::default(), &pool).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(pool = %pool.metadata.name.as_deref().unwrap_or_default(), "Default pool already exists");
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    let reason = chosen.reason();
    tracing::info!(
        pool = %created.metadata.name.as_deref().unwrap_or_default(),
        cidr = %chosen.cidr,
        why = %reason,
        "Created the default pool"
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "DefaultPoolCreated".into(),
        note: Some(format!("Created pool {}: {reason}", chosen.cidr)),
        action: "Create".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &created.object_ref(&())).await {
        tracing::warn!(%error, "Could not record the default pool's Event");
    }
    Ok(())
}

/// kubeadm's pod subnet, when the cluster was made by kubeadm and it set one.
async fn kubeadm_pod_subnet(client: &Client) -> Result<Option<IpNet>> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), KUBEADM_NAMESPACE);
    let config_map = match api.get_opt(KUBEADM_CONFIG_MAP).await {
        Ok(found) => found,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::info!(
                "Not allowed to read ConfigMap {KUBEADM_NAMESPACE}/{KUBEADM_CONFIG_MAP}; \
                 not using kubeadm's pod subnet"
            );
            None
        }
        Err(error) => return Err(error.into()),
    };
    let Some(yaml) = config_map
        .and_then(|c| c.data)
        .and_then(|mut d| d.remove(KUBEADM_KEY))
    else {
        return Ok(None);
    };
    match pod_subnet_from_kubeadm(&yaml) {
        Ok(subnet) => Ok(subnet),
        Err(message) => {
            tracing::warn!(
                config_map = %format!("{KUBEADM_NAMESPACE}/{KUBEADM_CONFIG_MAP}"),
                %message,
                "Ignoring kubeadm's configuration"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR parses")
    }

    const KUBEADM: &str = "apiServer:\n  certSANs:\n  - 10.0.0.1\napiVersion: kubeadm.k8s.io/v1beta3\n\
        clusterName: kubernetes\nkind: ClusterConfiguration\nkubernetesVersion: v1.30.0\n\
        networking:\n  dnsDomain: cluster.local\n  podSubnet: 10.96.128.0/17\n  \
        serviceSubnet: 10.96.0.0/17\n";

    #[test]
    fn kubeadm_pod_subnet_is_read() {
        assert_eq!(
            pod_subnet_from_kubeadm(KUBEADM),
            Ok(Some(net("10.96.128.0/17")))
        );
    }

    #[test]
    fn kubeadm_dual_stack_prefers_ipv4_and_absent_is_none() {
        let dual = "networking:\n  podSubnet: \"fd00:10:244::/56, 10.244.0.0/16\"\n";
        assert_eq!(
            pod_subnet_from_kubeadm(dual),
            Ok(Some(net("10.244.0.0/16")))
        );
        let v6 = "networking:\n  podSubnet: fd00:10:244::/56\n";
        assert_eq!(
            pod_subnet_from_kubeadm(v6),
            Ok(Some(net("fd00:10:244::/56")))
        );
        let none = "kind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n";
        assert_eq!(pod_subnet_from_kubeadm(none), Ok(None));
        assert_eq!(pod_subnet_from_kubeadm(""), Ok(None));
    }

    #[test]
    fn kubeadm_garbage_is_an_error_naming_the_field() {
        let bad = "networking:\n  podSubnet: ten-dot-something\n";
        let error = pod_subnet_from_kubeadm(bad).expect_err("not a CIDR");
        assert!(error.contains("networking.podSubnet"), "{error}");
        assert!(pod_subnet_from_kubeadm("networking: [").is_err());
    }

    #[test]
    fn node_ranges_are_covered_and_widened_to_a_16() {
        let ranges = [
            net("10.244.0.0/24"),
            net("10.244.1.0/24"),
            net("10.244.7.0/24"),
        ];
        assert_eq!(covering_cidr(&ranges), Some(net("10.244.0.0/16")));
        let wide = [net("10.244.0.0/24"), net("10.245.0.0/24")];
        assert_eq!(covering_cidr(&wide), Some(net("10.244.0.0/15")));
        assert_eq!(covering_cidr(&[net("fd00::/64")]), None);
        assert_eq!(covering_cidr(&[]), None);
    }

    #[test]
    fn sources_are_taken_in_order() {
        let nodes = [net("10.244.3.0/24")];
        let flag = choose_cidr(Some(net("10.1.0.0/16")), Some(net("10.2.0.0/16")), &nodes);
        assert_eq!(flag.source, CidrSource::Flag);
        assert_eq!(flag.cidr, net("10.1.0.0/16"));

        let kubeadm = choose_cidr(None, Some(net("10.96.128.0/17")), &nodes);
        assert_eq!(kubeadm.source, CidrSource::Kubeadm);
        assert!(
            kubeadm.reason().contains("kubeadm-config"),
            "{}",
            kubeadm.reason()
        );

        let from_nodes = choose_cidr(None, None, &nodes);
        assert_eq!(from_nodes.source, CidrSource::NodePodCidrs { ranges: 1 });
        assert_eq!(from_nodes.cidr, net("10.244.0.0/16"));

        let fallback = choose_cidr(None, None, &[]);
        assert_eq!(fallback.source, CidrSource::Fallback);
        assert_eq!(fallback.cidr, net("192.168.0.0/16"));
        assert!(fallback.reason().contains("192.168.0.0/16"));
    }

    fn settings(encapsulation: PoolEncapsulation, block_size: Option<i32>) -> DefaultPoolSettings {
        DefaultPoolSettings {
            cidr: None,
            encapsulation,
            block_size,
            nat_outgoing: true,
            node_selector: None,
        }
    }

    #[test]
    fn default_pool_is_named_like_calicos_and_nats() {
        let pool = default_pool(
            net("10.244.0.0/16"),
            &settings(PoolEncapsulation::Ipip, None),
        );
        assert_eq!(pool.metadata.name.as_deref(), Some(DEFAULT_IPV4_POOL_NAME));
        assert!(pool.spec.nat_outgoing);
        assert_eq!(pool.spec.ipip_mode, EncapsulationMode::Always);
        assert_eq!(pool.spec.encapsulation_label(), "IPIP");

        let v6 = default_pool(
            net("fd00:10::/48"),
            &settings(PoolEncapsulation::Ipip, Some(120)),
        );
        assert_eq!(v6.metadata.name.as_deref(), Some(DEFAULT_IPV6_POOL_NAME));
        assert_eq!(v6.spec.ipip_mode, EncapsulationMode::Never);
        assert_eq!(v6.spec.block_size, Some(120));

        let vx = default_pool(
            net("10.0.0.0/16"),
            &settings(PoolEncapsulation::VxlanCrossSubnet, None),
        );
        assert_eq!(vx.spec.encapsulation_label(), "VXLANCrossSubnet");
    }

    #[test]
    fn default_pool_takes_nat_and_node_selector_from_the_settings() {
        let mut chosen = settings(PoolEncapsulation::None, None);
        chosen.nat_outgoing = false;
        chosen.node_selector = Some("pool == 'a'".to_string());
        let pool = default_pool(net("10.244.0.0/16"), &chosen);
        assert!(!pool.spec.nat_outgoing);
        assert_eq!(pool.spec.node_selector, "pool == 'a'");
        assert_eq!(pool.spec.encapsulation_label(), "None");
    }
}
