//! `Scheduler`: decides where regions go. It owns the placement policy and its state (the
//! round-robin cursor); it reads the live nodes and their load from `ClusterView` for each
//! decision and never writes metadata itself: the caller (the DDL layer) carries the decision
//! out. Failover and rebalancing decisions land here too.

use std::collections::HashMap;

use actix::prelude::*;

use crate::actors::cluster_view::{ClusterView, ListCandidates};
use crate::selector::{Placement, Selector, SelectorKind};

// ---- Messages -------------------------------------------------------------------------------

/// Chooses a leader (and followers) for each of `regions` new regions.
#[derive(Message)]
#[rtype(result = "Result<Vec<Placement>, SchedulerError>")]
pub struct AllocateRegions {
    pub regions: u32,
    /// Copies of each region, leader included (at least 1).
    pub replicas: u32,
    /// Regions each node holds according to the routes (node id -> count); the heartbeat's own
    /// count lags behind a burst of creates.
    pub routed_regions: HashMap<u64, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Not enough live datanodes for the request.
    #[error("cannot place regions: {0}")]
    NoCapacity(String),
    #[error("the cluster view is unavailable: {0}")]
    ClusterView(String),
}

// ---- The actor ------------------------------------------------------------------------------

pub struct Scheduler {
    cluster_view: Addr<ClusterView>,
    selector: Selector,
}

impl Scheduler {
    pub fn new(cluster_view: Addr<ClusterView>, selector: SelectorKind) -> Self {
        Self {
            cluster_view,
            selector: Selector::new(selector),
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

impl Handler<AllocateRegions> for Scheduler {
    type Result = ResponseActFuture<Self, Result<Vec<Placement>, SchedulerError>>;

    fn handle(&mut self, msg: AllocateRegions, _ctx: &mut Self::Context) -> Self::Result {
        let candidates = self.cluster_view.send(ListCandidates);
        Box::pin(
            candidates
                .into_actor(self)
                .map(move |candidates, scheduler, _| {
                    let mut candidates =
                        candidates.map_err(|e| SchedulerError::ClusterView(e.to_string()))?;
                    // The heartbeat's own region count lags behind a burst of creates.
                    for candidate in &mut candidates {
                        let routed = msg
                            .routed_regions
                            .get(&candidate.peer.id)
                            .copied()
                            .unwrap_or(0);
                        candidate.regions = candidate.regions.max(routed);
                    }
                    scheduler
                        .selector
                        .place(&candidates, msg.regions, msg.replicas)
                        .map_err(SchedulerError::NoCapacity)
                }),
        )
    }
}
