//! metasrv: the metadata, routing and scheduling server of a distributed time-series database.
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod actors;
pub mod catalog;
pub mod client;
pub mod clock;
pub mod cns;
pub mod config;
pub mod ctl;
pub mod election;
pub mod failure_detector;
pub mod grpc;
pub mod http;
pub mod ids;
pub mod inputs;
pub mod metrics;
pub mod operations;
pub mod planner;
pub mod procedure;
pub mod proto;
pub mod security;
pub mod selector;
pub mod server;
pub mod sim;
pub mod stats;
pub mod store;

pub use config::Config;
pub use server::{open_store, run, Listeners, Metasrv};
