//! Command-line flags, each also settable through the environment.

use std::net::SocketAddr;

use clap::Parser;
use ipnet::IpNet;

use crate::default_pool::PoolEncapsulation;

/// The Tortie operator: validates Calico's objects, reports on them, and writes one
/// NodeNetworkConfig per node. Only the holder of the lease writes.
#[derive(Parser, Debug, Clone)]
#[command(name = "tortie-operator", version, about)]
pub struct Args {
    /// Where `/metrics`, `/healthz` and `/readyz` are served. Loopback by default; a
    /// Deployment sets `0.0.0.0:9090` so the kubelet's probes reach it.
    #[arg(long, env = "TORTIE_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,

    /// Namespace of the leader-election Lease; in a pod, the pod's own namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tortie-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "TORTIE_LEASE_NAME", default_value = "tortie-operator")]
    pub lease_name: String,

    /// How long a lease holder's claim lasts without renewal, in seconds; a standby takes
    /// over at most this long after the holder stops renewing.
    #[arg(long, env = "TORTIE_LEASE_DURATION", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lease_duration: u64,

    /// How long before its claim runs out the holder renews it, in seconds; must be less
    /// than the lease duration.
    #[arg(long, env = "TORTIE_LEASE_RENEW_GRACE", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=599))]
    pub lease_renew_grace: u64,

    /// This replica's identity in the Lease; in a pod, the pod's name. A random name is
    /// made when unset.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// CIDR of the pool created when the cluster has no IPPool. When unset it is taken
    /// from kubeadm's `networking.podSubnet`, else from the Nodes' `spec.podCIDRs`, else
    /// 192.168.0.0/16.
    #[arg(long, env = "TORTIE_DEFAULT_POOL_CIDR")]
    pub default_pool_cidr: Option<IpNet>,

    /// Encapsulation of the default pool: IPIP, IPIPCrossSubnet, VXLAN,
    /// VXLANCrossSubnet or None.
    #[arg(
        long,
        env = "TORTIE_DEFAULT_POOL_ENCAPSULATION",
        default_value = "IPIP"
    )]
    pub default_pool_encapsulation: PoolEncapsulation,

    /// Block size of the default pool; unset means the family default (26 for IPv4).
    #[arg(long, env = "TORTIE_DEFAULT_BLOCK_SIZE",
          value_parser = clap::value_parser!(i32).range(20..=128))]
    pub default_block_size: Option<i32>,

    /// Whether the default pool masquerades traffic leaving the pools (`natOutgoing`).
    #[arg(long, env = "TORTIE_DEFAULT_POOL_NAT_OUTGOING", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub default_pool_nat_outgoing: bool,

    /// Node selector of the default pool (Calico selector syntax); unset means all().
    #[arg(long, env = "TORTIE_DEFAULT_POOL_NODE_SELECTOR")]
    pub default_pool_node_selector: Option<String>,

    /// MTU of the nodes' uplink interfaces, from which pod MTUs are derived when
    /// FelixConfiguration does not set them.
    #[arg(long, env = "TORTIE_UPLINK_MTU", default_value_t = 1500,
          value_parser = clap::value_parser!(u32).range(1280..=65535))]
    pub uplink_mtu: u32,

    /// Seconds between IPAM garbage collection passes. A pass also runs soon after a Node
    /// is deleted and when something suspected of leaking has been so for the grace.
    #[arg(long, env = "TORTIE_IPAM_GC_INTERVAL", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub ipam_gc_interval: u64,

    /// Seconds an allocation, handle, block or affinity must look leaked, pass after pass,
    /// before garbage collection releases it.
    #[arg(long, env = "TORTIE_IPAM_GC_GRACE", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub ipam_gc_grace: u64,

    /// Log filter, such as `info` or `tortie_operator=debug,kube=info`.
    #[arg(long, env = "TORTIE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: `text` or `json`.
    #[arg(long, env = "TORTIE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags_parse() {
        let args = Args::try_parse_from(["tortie-operator"]).expect("defaults parse");
        assert_eq!(args.metrics_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(args.default_pool_encapsulation, PoolEncapsulation::Ipip);
        assert_eq!(args.uplink_mtu, 1500);
        assert_eq!((args.ipam_gc_interval, args.ipam_gc_grace), (30, 60));

        let args = Args::try_parse_from([
            "tortie-operator",
            "--default-pool-cidr",
            "10.244.0.0/16",
            "--default-pool-encapsulation",
            "VXLANCrossSubnet",
            "--default-block-size",
            "24",
        ])
        .expect("flags parse");
        assert_eq!(
            args.default_pool_cidr,
            Some("10.244.0.0/16".parse().expect("test CIDR parses"))
        );
        assert_eq!(
            args.default_pool_encapsulation,
            PoolEncapsulation::VxlanCrossSubnet
        );
        assert_eq!(args.default_block_size, Some(24));

        assert!(Args::try_parse_from(["tortie-operator", "--default-block-size", "8"]).is_err());
    }
}
