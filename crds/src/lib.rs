//! The API Tortie speaks: every `crd.projectcalico.org/v1` kind as Rust types, Tortie's
//! own `NodeNetworkConfig`, the selector language, validation shared by the CRD schemas
//! and the operator, and the pure IPAM block logic.
#![forbid(unsafe_code)]

pub mod fields;
pub mod ippool;
pub mod selector;
pub mod validation;
