//! The API Tortie speaks: every `crd.projectcalico.org/v1` kind as Rust types, Tortie's
//! own `NodeNetworkConfig`, the selector language, validation shared by the CRD schemas
//! and the operator, and the pure IPAM block logic.
#![forbid(unsafe_code)]

pub mod bgp;
pub mod cases;
pub mod cluster_info;
pub mod felix;
pub mod fields;
pub mod ipam;
pub mod ippool;
pub mod manifests;
pub mod node_network_config;
pub mod policy;
pub mod selector;
pub mod validation;
