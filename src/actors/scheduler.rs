//! `Scheduler`: decides where regions go. It owns the placement policy and its state (the
//! round-robin cursor); it reads the live nodes and their load from `ClusterView` for each
//! decision and never writes metadata itself: the caller (the DDL layer) carries the decision
//! out. Failover and rebalancing decisions land here too.

use std::collections::HashMap;

use actix::prelude::*;

use crate::actors::cluster_view::{ClusterView, ListNodes, NodeStatus};
use crate::catalog::model::Peer;
use crate::selector::{Candidate, Placement, Selector, SelectorKind};

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
        let nodes = self.cluster_view.send(ListNodes);
        Box::pin(nodes.into_actor(self).map(move |nodes, scheduler, _| {
            let nodes = nodes.map_err(|e| SchedulerError::ClusterView(e.to_string()))?;
            // Only nodes that are alive and streaming can be told to open a region.
            let candidates: Vec<Candidate> = nodes
                .into_iter()
                .filter(|n| n.status == NodeStatus::Alive && n.connected)
                .map(|n| {
                    let reported = n.stats.as_ref().map_or(0, |s| s.region_num);
                    let routed = msg.routed_regions.get(&n.id).copied().unwrap_or(0);
                    Candidate {
                        peer: Peer {
                            id: n.id,
                            addr: n.addr,
                        },
                        regions: reported.max(routed),
                        rcus: n.stats.as_ref().map_or(0, |s| s.rcus),
                        wcus: n.stats.as_ref().map_or(0, |s| s.wcus),
                    }
                })
                .collect();
            scheduler
                .selector
                .place(&candidates, msg.regions, msg.replicas)
                .map_err(SchedulerError::NoCapacity)
        }))
    }
}
