//! Simulated cluster members for tests, examples and benchmarks.

pub mod datanode;

pub use datanode::{SimDatanode, SimDatanodeConfig, SimEvent};
