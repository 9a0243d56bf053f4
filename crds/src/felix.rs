//! `FelixConfiguration`: data-path settings for all nodes (`default`) or one node
//! (`node.<node name>`).
//!
//! Calico's data-path agent has well over a hundred settings. The ones Tortie acts on, and
//! the common ones people set, are typed and checked here; any other field is kept as
//! written (the schema preserves unknown fields) so a configuration copied from a Calico
//! cluster applies unchanged.

// Each `printcolumn(...)` repeats `type_ = ...`, which clippy reads as a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fields::{self, Family, GoDuration, MAX_ADDRESS_LENGTH, PortRange};
use crate::validation::{FieldPath, Validate, ValidationErrors};

const LOG_LEVELS: &[&str] = &["Trace", "Debug", "Info", "Warning", "Error", "Fatal"];
const LOG_LEVEL_PATTERN: &str = "^(?i)(Trace|Debug|Info|Warning|Error|Fatal)?$";
const ACCEPT_RETURN: &[&str] = &["Accept", "Return"];
const ACCEPT_RETURN_PATTERN: &str = "^(?i)(Accept|Return)?$";
const DROP_REJECT: &[&str] = &["Drop", "Reject"];
const DROP_REJECT_PATTERN: &str = "^(?i)(Drop|Reject)?$";
const DROP_ACCEPT_RETURN: &[&str] = &["Drop", "Accept", "Return"];
const DROP_ACCEPT_RETURN_PATTERN: &str = "^(?i)(Drop|Accept|Return)?$";
const INSERT_APPEND: &[&str] = &["Insert", "Append"];
const INSERT_APPEND_PATTERN: &str = "^(?i)(Insert|Append)?$";
const IPTABLES_BACKENDS: &[&str] = &["Auto", "Legacy", "NFT"];
const IPTABLES_BACKEND_PATTERN: &str = "^(?i)(Auto|Legacy|NFT)?$";
const BPF_LOG_LEVELS: &[&str] = &["Off", "Info", "Debug"];
const BPF_LOG_LEVEL_PATTERN: &str = "^(?i)(Off|Info|Debug)?$";
const BPF_SERVICE_MODES: &[&str] = &["Tunnel", "DSR"];
const BPF_SERVICE_MODE_PATTERN: &str = "^(?i)(Tunnel|DSR)?$";
const ROUTE_SOURCES: &[&str] = &["WorkloadIPs", "CalicoIPAM"];
const ROUTE_SOURCE_PATTERN: &str = "^(?i)(WorkloadIPs|CalicoIPAM)?$";
const LOOP_PREVENTION: &[&str] = &["Drop", "Reject", "Disabled"];
const LOOP_PREVENTION_PATTERN: &str = "^(?i)(Drop|Reject|Disabled)?$";
const SOURCE_SPOOFING: &[&str] = &["Disabled", "Any"];
const SOURCE_SPOOFING_PATTERN: &str = "^(?i)(Disabled|Any)?$";
const RPF_MODES: &[&str] = &["Disabled", "Strict", "Loose"];
const RPF_MODE_PATTERN: &str = "^(?i)(Disabled|Strict|Loose)?$";
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const PROTOCOL_PATTERN: &str = "^(?i)(TCP|UDP|SCTP)$";

/// Most entries in a failsafe port list.
const MAX_FAILSAFE_PORTS: u32 = 256;

const ROUTE_TABLE_RANGE_RULE: &str = "self.min <= self.max";
const ROUTE_TABLE_RANGE_MESSAGE: &str =
    "routeTableRange: min must not be above max; write the lower table number first";

/// Data-path settings for every node (the object named `default`) or for one node (named
/// `node.<node name>`, overriding `default`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "FelixConfiguration",
    plural = "felixconfigurations",
    singular = "felixconfiguration",
    doc = "Data-path settings for all nodes (default) or one node (node.<name>): MTU, encapsulation ports, log level, failsafe ports and more.",
    printcolumn(
        name = "Log Level",
        type_ = "string",
        json_path = ".spec.logSeverityScreen"
    ),
    printcolumn(name = "VXLAN", type_ = "boolean", json_path = ".spec.vxlanEnabled"),
    printcolumn(name = "IPIP", type_ = "boolean", json_path = ".spec.ipipEnabled"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct FelixConfigurationSpec {
    /// Log level for standard output: Trace, Debug, Info, Warning, Error or Fatal (any
    /// case). Default Info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = LOG_LEVEL_PATTERN))]
    pub log_severity_screen: Option<String>,

    /// Log level for the log file. Default Info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = LOG_LEVEL_PATTERN))]
    pub log_severity_file: Option<String>,

    /// Log level for syslog. Default Info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = LOG_LEVEL_PATTERN))]
    pub log_severity_sys: Option<String>,

    /// Path of the log file; empty turns file logging off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file_path: Option<String>,

    /// Prefix of the log lines Calico writes for `Log` policy rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_prefix: Option<String>,

    /// Regular expression over host interface names whose MTU decides the pod MTU when
    /// the MTU is detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_iface_pattern: Option<String>,

    /// MTU of the IPv4 VXLAN device and of pod interfaces under IPv4 VXLAN; 0 detects it.
    #[serde(default, rename = "vxlanMTU", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub vxlan_mtu: Option<i32>,

    /// MTU of the IPv6 VXLAN device; 0 detects it.
    #[serde(
        default,
        rename = "vxlanMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 65535))]
    pub vxlan_mtu_v6: Option<i32>,

    /// MTU of the IPIP device and of pod interfaces under IPIP; 0 detects it.
    #[serde(default, rename = "ipipMTU", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub ipip_mtu: Option<i32>,

    /// MTU of the IPv4 WireGuard device; 0 detects it.
    #[serde(
        default,
        rename = "wireguardMTU",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 65535))]
    pub wireguard_mtu: Option<i32>,

    /// MTU of the IPv6 WireGuard device; 0 detects it.
    #[serde(
        default,
        rename = "wireguardMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 65535))]
    pub wireguard_mtu_v6: Option<i32>,

    /// Whether IPv4 VXLAN is set up; unset lets the pools decide.
    #[serde(
        default,
        rename = "vxlanEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_enabled: Option<bool>,

    /// UDP port of VXLAN traffic. Default 4789.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub vxlan_port: Option<i32>,

    /// VXLAN network identifier. Default 4096.
    #[serde(default, rename = "vxlanVNI", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vxlan_vni: Option<i32>,

    /// Whether IPIP is set up; unset lets the pools decide.
    #[serde(
        default,
        rename = "ipipEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipip_enabled: Option<bool>,

    /// Whether WireGuard encryption of IPv4 pod traffic is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_enabled: Option<bool>,

    /// Whether WireGuard encryption of IPv6 pod traffic is on.
    #[serde(
        default,
        rename = "wireguardEnabledV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_enabled_v6: Option<bool>,

    /// UDP port WireGuard listens on (IPv4). Default 51820.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub wireguard_listening_port: Option<i32>,

    /// Whether IPv6 is handled at all. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_support: Option<bool>,

    /// Host ports always open inbound, whatever the policy, so a bad policy cannot lock
    /// people out of a node. Unset keeps the defaults (SSH, BGP, etcd, the API server and
    /// others); an empty list opens none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_FAILSAFE_PORTS))]
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,

    /// Host ports always open outbound, whatever the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_FAILSAFE_PORTS))]
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,

    /// Source ports outgoing NAT may use, such as `32768:65535`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_port_range: Option<PortRange>,

    /// Source address for outgoing NAT instead of the outgoing interface's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = fields::cel_is_ip("natOutgoingAddress", None))]
    pub nat_outgoing_address: Option<String>,

    /// Which destinations outgoing NAT leaves alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_exclusions: Option<NatOutgoingExclusions>,

    /// How often routes are re-checked against the desired state, such as `90s`; `0` turns
    /// the periodic check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_refresh_interval: Option<GoDuration>,

    /// How often interfaces are re-scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_refresh_interval: Option<GoDuration>,

    /// How often packet-filter rules are re-checked against the desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_refresh_interval: Option<GoDuration>,

    /// How often address sets are re-checked against the desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsets_refresh_interval: Option<GoDuration>,

    /// How often nftables state is re-checked against the desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_refresh_interval: Option<GoDuration>,

    /// What happens to traffic from a pod to its own node after the pod's egress policy:
    /// Drop, Accept or Return (to the host's own rules). Default Drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = DROP_ACCEPT_RETURN_PATTERN))]
    pub default_endpoint_to_host_action: Option<String>,

    /// Action for traffic the mangle table allows: Accept or Return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = ACCEPT_RETURN_PATTERN))]
    pub iptables_mangle_allow_action: Option<String>,

    /// Action for traffic the filter table allows: Accept or Return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = ACCEPT_RETURN_PATTERN))]
    pub iptables_filter_allow_action: Option<String>,

    /// Action for traffic the filter table denies: Drop or Reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = DROP_REJECT_PATTERN))]
    pub iptables_filter_deny_action: Option<String>,

    /// Action for traffic the nftables filter chains allow: Accept or Return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = ACCEPT_RETURN_PATTERN))]
    pub nftables_filter_allow_action: Option<String>,

    /// Action for traffic the nftables mangle chains allow: Accept or Return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = ACCEPT_RETURN_PATTERN))]
    pub nftables_mangle_allow_action: Option<String>,

    /// Action for traffic the nftables filter chains deny: Drop or Reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = DROP_REJECT_PATTERN))]
    pub nftables_filter_deny_action: Option<String>,

    /// Whether the data path's rules go first (Insert) or last (Append) in the kernel's
    /// top-level chains. Default Insert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = INSERT_APPEND_PATTERN))]
    pub chain_insert_mode: Option<String>,

    /// Which iptables backend to use: Auto, Legacy or NFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = IPTABLES_BACKEND_PATTERN))]
    pub iptables_backend: Option<String>,

    /// Whether the nftables data path is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_mode: Option<NftablesMode>,

    /// Name prefix of pod interfaces on the host (comma-separated for several). Default
    /// `cali`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_prefix: Option<String>,

    /// Interfaces the data path leaves alone, as a comma-separated list of names or
    /// `/regex/` patterns. Default `kube-ipvs0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_exclude: Option<String>,

    /// Whether the health endpoint is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_enabled: Option<bool>,

    /// Address the health endpoint listens on. Default localhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_host: Option<String>,

    /// TCP port of the health endpoint. Default 9099.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub health_port: Option<i32>,

    /// Whether Prometheus metrics are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_enabled: Option<bool>,

    /// Address the metrics endpoint listens on; empty means every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_host: Option<String>,

    /// TCP port of the metrics endpoint. Default 9091.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub prometheus_metrics_port: Option<i32>,

    /// OpenStack region, for deployments that share one Calico datastore across regions;
    /// a DNS label of at most 63 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 63),
        regex(pattern = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$")
    )]
    pub openstack_region: Option<String>,

    /// Whether the eBPF data path is used instead of the kernel's packet filter.
    #[serde(
        default,
        rename = "bpfEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_enabled: Option<bool>,

    /// Log level of the eBPF programs: Off, Info or Debug.
    #[serde(
        default,
        rename = "bpfLogLevel",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 16), regex(pattern = BPF_LOG_LEVEL_PATTERN))]
    pub bpf_log_level: Option<String>,

    /// How the eBPF data path forwards traffic to services from outside: Tunnel or DSR.
    #[serde(
        default,
        rename = "bpfExternalServiceMode",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 16), regex(pattern = BPF_SERVICE_MODE_PATTERN))]
    pub bpf_external_service_mode: Option<String>,

    /// Reverse-path filtering of the eBPF data path: Disabled, Strict or Loose.
    #[serde(
        default,
        rename = "bpfEnforceRPF",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 16), regex(pattern = RPF_MODE_PATTERN))]
    pub bpf_enforce_rpf: Option<String>,

    /// Kernel routing tables the data path may use, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_range: Option<RouteTableRange>,

    /// Whether routes the data path did not make are removed from the interfaces it owns.
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_external_routes: Option<bool>,

    /// Where routes come from: WorkloadIPs or CalicoIPAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = ROUTE_SOURCE_PATTERN))]
    pub route_source: Option<String>,

    /// Protocol number stamped on the routes the data path makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub device_route_protocol: Option<i32>,

    /// Source address of the IPv4 routes the data path makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = fields::cel_is_ip("deviceRouteSourceAddress", Some(Family::V4)))]
    pub device_route_source_address: Option<String>,

    /// Source address of the IPv6 routes the data path makes.
    #[serde(
        default,
        rename = "deviceRouteSourceAddressIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(validation = fields::cel_is_ip("deviceRouteSourceAddressIPv6", Some(Family::V6)))]
    pub device_route_source_address_ipv6: Option<String>,

    /// How often the node reports its status, such as `30s`; `0` turns reports off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<GoDuration>,

    /// How long a status report stays valid.
    #[serde(
        default,
        rename = "reportingTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub reporting_ttl: Option<GoDuration>,

    /// Ranges of node ports Kubernetes services use, so policy can treat them specially.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub kube_node_port_ranges: Option<Vec<PortRange>>,

    /// Whether traffic from a pod to its own service address comes back (Disabled), or is
    /// dropped (Drop) or rejected (Reject) when no endpoint exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = LOOP_PREVENTION_PATTERN))]
    pub service_loop_prevention: Option<String>,

    /// Whether pods may send from addresses that are not theirs: Disabled or Any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = SOURCE_SPOOFING_PATTERN))]
    pub workload_source_spoofing: Option<String>,

    /// Whether routes for the pools are programmed by the data path (Enabled) or left to
    /// BGP (Disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_cluster_routes: Option<Toggle>,

    /// Whether IP forwarding is switched on on the node.
    #[serde(
        default,
        rename = "ipForwarding",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_forwarding: Option<Toggle>,

    /// Whether pods may send VXLAN packets themselves.
    #[serde(
        default,
        rename = "allowVXLANPacketsFromWorkloads",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_vxlan_packets_from_workloads: Option<bool>,

    /// Whether pods may send IPIP packets themselves.
    #[serde(
        default,
        rename = "allowIPIPPacketsFromWorkloads",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_ipip_packets_from_workloads: Option<bool>,

    /// Settings Tortie does not know, kept as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A protocol and port, optionally limited to a peer network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProtoPort {
    /// TCP, UDP or SCTP (any case). Default TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8), regex(pattern = PROTOCOL_PATTERN))]
    pub protocol: Option<String>,

    /// The port.
    #[schemars(range(min = 0, max = 65535))]
    pub port: u16,

    /// The peer network this applies to; every peer when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ADDRESS_LENGTH))]
    #[x_kube(
        validation = fields::cel_is_cidr("net"),
        validation = fields::cel_masked_cidr("net")
    )]
    pub net: Option<String>,
}

/// An inclusive range of kernel routing table numbers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new(ROUTE_TABLE_RANGE_RULE).message(ROUTE_TABLE_RANGE_MESSAGE))]
pub struct RouteTableRange {
    /// First table.
    #[schemars(range(min = 1, max = 250))]
    pub min: i32,
    /// Last table.
    #[schemars(range(min = 1, max = 250))]
    pub max: i32,
}

/// Which destinations outgoing NAT leaves alone.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatOutgoingExclusions {
    /// Addresses in any pool.
    #[serde(rename = "IPPoolsOnly")]
    IpPoolsOnly,
    /// Addresses in any pool and the nodes' own addresses.
    #[serde(rename = "IPPoolsAndHostIPs")]
    IpPoolsAndHostIps,
}

/// Whether the nftables data path is used.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftablesMode {
    /// Not used.
    Disabled,
    /// Used.
    Enabled,
    /// Used when the kernel's packet filter is already nftables-based.
    Auto,
}

/// An on/off setting spelled the way Calico spells it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

impl Validate for FelixConfigurationSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        let keywords: [(&str, &Option<String>, &[&str]); 18] = [
            ("logSeverityScreen", &self.log_severity_screen, LOG_LEVELS),
            ("logSeverityFile", &self.log_severity_file, LOG_LEVELS),
            ("logSeveritySys", &self.log_severity_sys, LOG_LEVELS),
            (
                "defaultEndpointToHostAction",
                &self.default_endpoint_to_host_action,
                DROP_ACCEPT_RETURN,
            ),
            (
                "iptablesMangleAllowAction",
                &self.iptables_mangle_allow_action,
                ACCEPT_RETURN,
            ),
            (
                "iptablesFilterAllowAction",
                &self.iptables_filter_allow_action,
                ACCEPT_RETURN,
            ),
            (
                "iptablesFilterDenyAction",
                &self.iptables_filter_deny_action,
                DROP_REJECT,
            ),
            (
                "nftablesFilterAllowAction",
                &self.nftables_filter_allow_action,
                ACCEPT_RETURN,
            ),
            (
                "nftablesMangleAllowAction",
                &self.nftables_mangle_allow_action,
                ACCEPT_RETURN,
            ),
            (
                "nftablesFilterDenyAction",
                &self.nftables_filter_deny_action,
                DROP_REJECT,
            ),
            ("chainInsertMode", &self.chain_insert_mode, INSERT_APPEND),
            ("iptablesBackend", &self.iptables_backend, IPTABLES_BACKENDS),
            ("bpfLogLevel", &self.bpf_log_level, BPF_LOG_LEVELS),
            (
                "bpfExternalServiceMode",
                &self.bpf_external_service_mode,
                BPF_SERVICE_MODES,
            ),
            ("bpfEnforceRPF", &self.bpf_enforce_rpf, RPF_MODES),
            ("routeSource", &self.route_source, ROUTE_SOURCES),
            (
                "serviceLoopPrevention",
                &self.service_loop_prevention,
                LOOP_PREVENTION,
            ),
            (
                "workloadSourceSpoofing",
                &self.workload_source_spoofing,
                SOURCE_SPOOFING,
            ),
        ];
        for (name, value, allowed) in keywords {
            if let Some(value) = value {
                fields::check_keyword(value, allowed, &path.child(name), errors);
            }
        }

        let ranges: [(&str, Option<i32>, i64, i64); 11] = [
            ("vxlanMTU", self.vxlan_mtu, 0, 65535),
            ("vxlanMTUV6", self.vxlan_mtu_v6, 0, 65535),
            ("ipipMTU", self.ipip_mtu, 0, 65535),
            ("wireguardMTU", self.wireguard_mtu, 0, 65535),
            ("wireguardMTUV6", self.wireguard_mtu_v6, 0, 65535),
            ("vxlanPort", self.vxlan_port, 1, 65535),
            ("vxlanVNI", self.vxlan_vni, 1, 16_777_215),
            (
                "wireguardListeningPort",
                self.wireguard_listening_port,
                1,
                65535,
            ),
            ("healthPort", self.health_port, 1, 65535),
            (
                "prometheusMetricsPort",
                self.prometheus_metrics_port,
                1,
                65535,
            ),
            ("deviceRouteProtocol", self.device_route_protocol, 0, 255),
        ];
        for (name, value, min, max) in ranges {
            if let Some(value) = value {
                fields::check_range(value.into(), min, max, &path.child(name), errors);
            }
        }

        let durations = [
            ("routeRefreshInterval", &self.route_refresh_interval),
            ("interfaceRefreshInterval", &self.interface_refresh_interval),
            ("iptablesRefreshInterval", &self.iptables_refresh_interval),
            ("ipsetsRefreshInterval", &self.ipsets_refresh_interval),
            ("nftablesRefreshInterval", &self.nftables_refresh_interval),
            ("reportingInterval", &self.reporting_interval),
            ("reportingTTL", &self.reporting_ttl),
        ];
        for (name, value) in durations {
            if let Some(d) = value {
                d.check(&path.child(name), errors);
            }
        }

        for (name, list) in [
            (
                "failsafeInboundHostPorts",
                &self.failsafe_inbound_host_ports,
            ),
            (
                "failsafeOutboundHostPorts",
                &self.failsafe_outbound_host_ports,
            ),
        ] {
            let Some(list) = list else { continue };
            let at = path.child(name);
            if list.len() > MAX_FAILSAFE_PORTS as usize {
                errors.push(
                    &at,
                    format!(
                        "has {} entries; at most {MAX_FAILSAFE_PORTS} are allowed",
                        list.len()
                    ),
                );
            }
            for (i, p) in list.iter().enumerate() {
                p.validate_at(&at.index(i), errors);
            }
        }

        if let Some(region) = self.openstack_region.as_deref().filter(|r| !r.is_empty()) {
            fields::check_dns_label(region, &path.child("openstackRegion"), errors);
        }
        if let Some(ip) = &self.nat_outgoing_address {
            fields::check_ip(ip, None, &path.child("natOutgoingAddress"), errors);
        }
        if let Some(ip) = &self.device_route_source_address {
            let at = path.child("deviceRouteSourceAddress");
            fields::check_ip(ip, Some(Family::V4), &at, errors);
        }
        if let Some(ip) = &self.device_route_source_address_ipv6 {
            let at = path.child("deviceRouteSourceAddressIPv6");
            fields::check_ip(ip, Some(Family::V6), &at, errors);
        }
        if let Some(range) = &self.route_table_range {
            range.validate_at(&path.child("routeTableRange"), errors);
        }
        if let Some(ranges) = &self.kube_node_port_ranges
            && ranges.len() > 16
        {
            errors.push(
                &path.child("kubeNodePortRanges"),
                format!("has {} entries; at most 16 are allowed", ranges.len()),
            );
        }
    }
}

impl Validate for ProtoPort {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        if let Some(protocol) = &self.protocol {
            if protocol.is_empty() {
                errors.push(&path.child("protocol"), "protocol must be TCP, UDP or SCTP");
            } else {
                fields::check_keyword(protocol, PROTOCOLS, &path.child("protocol"), errors);
            }
        }
        if let Some(net) = &self.net {
            fields::check_masked_cidr(net, &path.child("net"), errors);
        }
    }
}

impl Validate for RouteTableRange {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        fields::check_range(self.min.into(), 1, 250, &path.child("min"), errors);
        fields::check_range(self.max.into(), 1, 250, &path.child("max"), errors);
        if self.min > self.max {
            errors.push(path, ROUTE_TABLE_RANGE_MESSAGE);
        }
    }
}

impl FelixConfigurationSpec {
    /// The route refresh interval in force (90 s when unset; `None` when turned off).
    pub fn effective_route_refresh_interval(&self) -> Option<std::time::Duration> {
        let interval = match &self.route_refresh_interval {
            Some(d) => d.to_std()?,
            None => std::time::Duration::from_secs(90),
        };
        (!interval.is_zero()).then_some(interval)
    }
}
