//! Tortie's per-node pieces: the CNI plugin that wires pods, and (later) the agent that
//! applies the node's network config and serves IPAM to the plugin.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cni;
