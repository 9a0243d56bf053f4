//! Manifests written for Calico v3.8 (old fields only, no status) and for current Calico
//! read into the types, with the defaults a person expects.

mod common;

use tortie_crds::bgp::{BGPConfiguration, BGPPeer};
use tortie_crds::cluster_info::ClusterInformation;
use tortie_crds::felix::FelixConfiguration;
use tortie_crds::ippool::{AllowedUse, AssignmentMode, EncapsulationMode, IPPool};
use tortie_crds::validation::Validate;

#[test]
fn the_classic_tutorial_pool_reads_with_defaults() {
    let pool: IPPool = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  ipipMode: Always
  natOutgoing: true
",
    )
    .expect("the tutorial pool deserializes");

    assert_eq!(pool.spec.cidr, "10.244.0.0/16");
    assert_eq!(pool.spec.ipip_mode, EncapsulationMode::Always);
    assert_eq!(pool.spec.vxlan_mode, EncapsulationMode::Never);
    assert!(pool.spec.nat_outgoing);
    assert!(!pool.spec.disabled);
    assert_eq!(pool.spec.block_size, None);
    assert_eq!(pool.spec.effective_block_size(), 26);
    assert_eq!(pool.spec.node_selector, "all()");
    assert_eq!(
        pool.spec.allowed_uses,
        [AllowedUse::Workload, AllowedUse::Tunnel]
    );
    assert_eq!(pool.spec.assignment_mode, AssignmentMode::Automatic);
    assert_eq!(pool.spec.encapsulation_label(), "IPIP");
    assert!(pool.status.is_none());
    assert!(pool.validate().is_ok());
}

#[test]
fn calico_3_8_manifests_read() {
    let docs = "apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  blockSize: 26
  cidr: 192.168.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: all()
";
    let pool: IPPool = serde_saphyr::from_str(docs).expect("a v3.8 pool");
    assert_eq!(pool.spec.ipip_mode, EncapsulationMode::CrossSubnet);
    assert_eq!(pool.spec.encapsulation_label(), "IPIPCrossSubnet");
    assert!(pool.validate().is_ok());

    let legacy: IPPool = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: from-v1
spec:
  cidr: 10.10.0.0/16
  ipip:
    enabled: true
    mode: cross-subnet
  nat-outgoing: true
",
    )
    .expect("a pool with the first API's fields");
    assert_eq!(
        legacy.spec.effective_ipip_mode(),
        EncapsulationMode::CrossSubnet
    );
    assert!(legacy.spec.effective_nat_outgoing());
    let again = serde_json::to_value(&legacy.spec).expect("serializes");
    assert_eq!(
        again["nat-outgoing"], true,
        "the old field survives a round trip"
    );

    let config: BGPConfiguration = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
",
    )
    .expect("a v3.8 BGP configuration");
    assert!(!config.spec.mesh_enabled());
    assert_eq!(config.spec.effective_listen_port(), 179);
    assert!(config.spec.validate().is_ok());

    let peer: BGPPeer = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: BGPPeer
metadata:
  name: rack1-tor
spec:
  peerIP: 192.20.30.40
  asNumber: 64567
  node: rack1-host1
",
    )
    .expect("a v3.8 peer");
    assert_eq!(peer.spec.scope_label(), "rack1-host1");
    assert!(peer.spec.validate().is_ok());

    let felix: FelixConfiguration = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: FelixConfiguration
metadata:
  name: default
spec:
  ipipEnabled: true
  logSeverityScreen: Info
  reportingInterval: 0s
  bpfLogLevel: \"\"
",
    )
    .expect("a v3.8 Felix configuration");
    assert_eq!(felix.spec.ipip_enabled, Some(true));
    assert!(felix.spec.validate().is_ok());

    let info: ClusterInformation = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: ClusterInformation
metadata:
  name: default
spec:
  calicoVersion: v3.8.9
  clusterGUID: 1e3f7d1c6c3b4a8e9d0f2a1b3c4d5e6f
  clusterType: k8s,bgp,kubeadm,kdd
  datastoreReady: true
",
    )
    .expect("a v3.8 cluster information");
    assert!(info.spec.is_datastore_ready());
}

#[test]
fn current_manifests_read() {
    let pool: IPPool = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: lb-v6
spec:
  cidr: fd00:10:96::/112
  blockSize: 122
  vxlanMode: CrossSubnet
  natOutgoing: false
  disabled: false
  disableBGPExport: true
  nodeSelector: all()
  namespaceSelector: all()
  allowedUses: [LoadBalancer]
  assignmentMode: Manual
status:
  observedGeneration: 3
  blockSize: 122
  encapsulation: VXLANCrossSubnet
  capacity: \"65536\"
  allocated: 31
  blocksInUse: 2
  used: 31/65536
  conditions:
  - type: Ready
    status: \"True\"
    reason: Valid
    message: pool is valid and in use
    lastTransitionTime: \"2025-01-01T00:00:00Z\"
",
    )
    .expect("a current pool");
    assert_eq!(pool.spec.allowed_uses, [AllowedUse::LoadBalancer]);
    assert!(pool.spec.disable_bgp_export);
    let status = pool.status.as_ref().expect("status was given");
    assert_eq!(status.used.as_deref(), Some("31/65536"));
    assert_eq!(status.conditions[0].type_, "Ready");
    assert!(pool.validate().is_ok());

    let peer: BGPPeer = serde_saphyr::from_str(
        "apiVersion: crd.projectcalico.org/v1
kind: BGPPeer
metadata:
  name: tor
spec:
  nodeSelector: rack == 'a'
  peerIP: '[2001:db8::1]:1790'
  asNumber: 4200000001
  localASNumber: 64512
  password:
    secretKeyRef:
      name: bgp-secrets
      key: tor
  keepOriginalNextHop: false
  nextHopMode: Self
  sourceAddress: None
  maxRestartTime: 2m
  numAllowedLocalASNumbers: 1
  ttlSecurity: 1
  reachableBy: 2001:db8::fffe
  filters: [export-only-pods]
  reversePeering: Manual
  keepaliveTime: 30s
status:
  scope: rack == 'a'
  nodes: 4
  sessionsUp: 4
",
    )
    .expect("a current peer");
    assert_eq!(peer.spec.scope_label(), "rack == 'a'");
    assert!(peer.spec.validate().is_ok());

    let round_trip: BGPPeer =
        serde_json::from_value(serde_json::to_value(&peer).expect("serializes"))
            .expect("reads back");
    assert_eq!(round_trip, peer);
}
