//! Simulated cluster members for tests, examples and benchmarks.

pub mod datanode;

pub use datanode::{sample_request, SimDatanode, SimDatanodeConfig, SimEvent};
