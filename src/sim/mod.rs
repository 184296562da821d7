//! Simulated cluster members for tests, examples and benchmarks.

pub mod datanode;
pub mod frontend;
pub mod load;
pub mod scenario;
pub mod workload;

pub use datanode::{
    sample_request, AcceptedWrite, MetasrvTarget, Rng, SimDatanode, SimDatanodeConfig, SimEvent,
    WriteLog, ERROR_KIND_KEY, INVALID_ROUTE,
};
pub use frontend::{is_invalid_route, FrontendError, SimFrontend};
pub use load::{LoadModel, RegionDemand, Workload};
