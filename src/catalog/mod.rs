//! Catalogs, schemas, tables and routes: the metadata model, its validation and partitioning
//! (pure, shared with the client), and the `TableManager` that runs DDL on the leader.

pub(crate) mod load;
pub mod manager;
pub mod model;
pub mod ownership;
pub mod partition;
pub mod quarantine;
pub mod standby;

pub use manager::{DdlError, TableEntry, TableManager};
pub use standby::StandbyCatalog;
