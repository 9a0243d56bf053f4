//! The Tortie operator: the cluster-wide brain. It watches Calico's kinds and Nodes,
//! validates what the API server's schemas cannot, writes status with conditions and
//! usage, creates the cluster's default objects, collects leaked IPAM state, and computes
//! one NodeNetworkConfig per node for that node's agent to apply.
//!
//! Every replica watches; only the holder of the leader-election Lease writes. Pure
//! computations ([`pool::pool_report`], [`node_config::desired_config`],
//! [`default_pool::choose_cidr`], [`ipam_gc::leaks`]) take a snapshot of the cluster and
//! return data, and are tested without a cluster.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster_objects;
pub mod default_pool;
pub mod error;
pub mod health;
pub mod ipam_gc;
pub mod metrics;
pub mod node_config;
pub mod pool;
pub mod run;
pub mod world;

pub use cli::Args;
pub use error::{Error, Result};
pub use run::{Stopped, run};
