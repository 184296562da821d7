//! `Scheduler`: decides where regions go. It owns the placement policy and its state (the
//! round-robin cursor) and the set of nodes being failed over; it reads the live nodes and their
//! load from `ClusterView` for each decision. For new tables the caller (the DDL layer) carries
//! the decision out. For a dead node it runs the failover itself: wait until the node's region
//! leases have surely lapsed, then promote a live follower or open the region on a live node,
//! and move the route (version + 1) through the `TableManager`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::cluster_view::{
    ClusterView, GetLeaseExpiry, Instruction, ListCandidates, NodeEvent, SendInstruction, Subscribe,
};
use crate::catalog::model::Peer;
use crate::catalog::TableManager;
use crate::election::Leadership;
use crate::selector::{Placement, Selector, SelectorKind};
use crate::stats::RegionRole;

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

/// Gives the scheduler the catalog it fails regions over in (set once, after both exist).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachTables {
    pub tables: Arc<TableManager>,
}

/// Tuning of region failover.
#[derive(Clone, Debug)]
pub struct FailoverConfig {
    /// The length of region leases granted to datanodes.
    pub region_lease: Duration,
    /// Extra wait past a dead node's last possible lease, for clock rate differences.
    pub safety_margin: Duration,
    /// How long a datanode has to confirm a promotion or an open.
    pub instruction_timeout: Duration,
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
    leadership: Arc<Leadership>,
    failover: FailoverConfig,
    tables: Option<Arc<TableManager>>,
    /// Nodes whose regions are being failed over now.
    failing_over: HashSet<u64>,
}

impl Scheduler {
    pub fn new(
        cluster_view: Addr<ClusterView>,
        selector: SelectorKind,
        leadership: Arc<Leadership>,
        failover: FailoverConfig,
    ) -> Self {
        Self {
            cluster_view,
            selector: Selector::new(selector),
            leadership,
            failover,
            tables: None,
            failing_over: HashSet::new(),
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.cluster_view.do_send(Subscribe {
            subscriber: ctx.address().recipient(),
        });
    }
}

impl Handler<AttachTables> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: AttachTables, _ctx: &mut Self::Context) {
        self.tables = Some(msg.tables);
    }
}

impl Handler<NodeEvent> for Scheduler {
    type Result = ();

    fn handle(&mut self, event: NodeEvent, ctx: &mut Self::Context) {
        let NodeEvent::Dead { node_id, .. } = event else {
            return;
        };
        let Some(tables) = self.tables.clone() else {
            return;
        };
        if !self.leadership.is_serving_leader() || !self.failing_over.insert(node_id) {
            return;
        }
        let fut = fail_over_node(
            node_id,
            tables,
            self.cluster_view.clone(),
            self.failover.clone(),
        );
        ctx.spawn(fut.into_actor(self).map(move |(), scheduler, _| {
            scheduler.failing_over.remove(&node_id);
        }));
    }
}

/// Moves every region `dead` leads to a live node, never letting two nodes serve a region at
/// once: nothing is instructed before the dead node's last lease has lapsed.
async fn fail_over_node(
    dead: u64,
    tables: Arc<TableManager>,
    cluster_view: Addr<ClusterView>,
    config: FailoverConfig,
) {
    let regions = tables.regions_led_by(dead);
    if regions.is_empty() {
        return;
    }
    tracing::warn!(
        node_id = dead,
        regions = regions.len(),
        "failing over the regions of a dead node"
    );
    // This leader's view of the node's last lease; if it never heard from the node (it became
    // leader after the node went silent), any lease of it ends within one lease from now.
    let expiry = cluster_view
        .send(GetLeaseExpiry {
            node_id: dead,
            region_lease: config.region_lease,
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| Instant::now() + config.region_lease);
    let safe_at = expiry + config.safety_margin;
    tokio::time::sleep_until(tokio::time::Instant::from_std(safe_at)).await;

    let mut candidates = match cluster_view.send(ListCandidates).await {
        Ok(candidates) => candidates,
        Err(e) => {
            tracing::error!("failover of node {dead} stopped: cluster view unavailable: {e}");
            return;
        }
    };
    candidates.retain(|c| c.peer.id != dead);
    if candidates.is_empty() {
        tracing::error!(node_id = dead, "no live datanode to fail over to");
        return;
    }
    for (entry, region) in regions {
        // A live follower takes over; otherwise the least loaded live node opens the region.
        let live_follower = region
            .followers
            .iter()
            .find(|f| candidates.iter().any(|c| c.peer.id == f.id))
            .cloned();
        let (target, instruction) = match &live_follower {
            Some(follower) => (
                follower.clone(),
                Instruction::PromoteToLeader {
                    region_id: region.region_id,
                },
            ),
            None => {
                let Some(best) = candidates.iter_mut().min_by_key(|c| (c.regions, c.peer.id))
                else {
                    return;
                };
                best.regions += 1;
                (
                    best.peer.clone(),
                    Instruction::OpenRegion {
                        region_id: region.region_id,
                        table: (&entry.info.name).into(),
                        role: RegionRole::Leader,
                        lease_millis: config.region_lease.as_millis() as u64,
                    },
                )
            }
        };
        let outcome = cluster_view
            .send(SendInstruction {
                node_id: target.id,
                instruction,
                timeout: config.instruction_timeout,
            })
            .await;
        match outcome {
            Ok(Ok(result)) if result.success => {}
            other => {
                tracing::error!(
                    region = region.region_id,
                    target = target.id,
                    ?other,
                    "failover step failed"
                );
                continue;
            }
        }
        let followers: Vec<Peer> = region
            .followers
            .iter()
            .filter(|f| f.id != target.id && f.id != dead)
            .cloned()
            .collect();
        // Re-read the entry: other regions of the table may have moved meanwhile.
        let current = tables.entry_by_id(entry.info.id).unwrap_or(entry);
        match tables
            .move_region_leader(&current, region.region_id, target.clone(), followers)
            .await
        {
            Ok(updated) => tracing::info!(
                region = region.region_id,
                from = dead,
                to = target.id,
                version = updated.route.version,
                "region failed over"
            ),
            Err(e) => tracing::error!(region = region.region_id, "cannot move the route: {e}"),
        }
    }
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
