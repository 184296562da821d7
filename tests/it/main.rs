//! The one integration-test binary (one link, many modules).

mod chaos;
mod cns;
mod ctl;
mod dashboard;
mod datanode_election;
mod election;
mod etcd_security;
mod failover;
mod fuzz_inputs;
mod grpc_store;
mod harness;
mod heartbeat;
mod large_catalog;
mod large_table;
mod leadership;
mod lease;
mod migration;
mod process;
mod reconciler;
mod router;
mod security;
mod standby;
mod store_conformance;
