//! IPAM for the pods of one node: the agent allocates addresses from Calico's IPAM
//! objects and serves them to the plugins over a unix socket.
//!
//! - [`protocol`]: the versioned JSON-over-HTTP protocol on the socket;
//! - [`client`]: the plugins' blocking client of that socket;
//! - [`server`]: the agent's side of the socket;
//! - [`pools`]: which pools an allocation may use (pure);
//! - [`allocator`]: blocks, affinities and handles, written with compare-and-swap;
//! - [`store`]: the API calls the allocator makes.

pub mod allocator;
pub mod client;
pub mod pools;
pub mod protocol;
pub mod server;
pub mod store;
