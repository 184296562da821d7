//! Actors (actix), one per file, each with the messages it handles at the top of its file.
//!
//! The heartbeat pipeline (`HeartbeatSession`, `ClusterView`), the `Scheduler` and the
//! `ElectionActor` land here; see ARCHITECTURE.md for which exist today.
