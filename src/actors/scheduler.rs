//! `Scheduler`: decides where regions go. It owns the placement policy and its state (the
//! round-robin cursor), the set of nodes being failed over and the retry state of failed
//! failovers; it reads the live nodes and their load from `ClusterView` for each decision. For
//! new tables the caller (the DDL layer) carries the decision out.
//!
//! Failover is level-triggered (a reconciler): on every liveness event and on a periodic tick
//! it compares the routes with the observed nodes (`planner::plan_failovers`) and fails over
//! every dead node the routes still make lead a region, whatever was missed before (a death
//! during a leader change or maintenance, a failed attempt: retried with backoff). At the
//! start of a term it seeds ClusterView with the registered nodes, so that one that died
//! before this leader heard from it dies here too. A failover waits until the node's region
//! leases have surely lapsed, then promotes a live follower or opens the region on a live node
//! (`planner::plan_region_moves`), and moves the route (version + 1) through the
//! `TableManager`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use actix::prelude::*;

use crate::actors::cluster_view::{
    load_registered_nodes, ClusterView, GetLeaseExpiry, GetReplicaReport, Instruction,
    ListCandidates, ListDeadNodes, NodeEvent, RegisteredNode, SeedNodes, SendInstruction,
    Subscribe,
};
use crate::catalog::model::{table_of_region, Peer, RegionRoute};
use crate::catalog::TableManager;
use crate::election::{Leadership, LeadershipState};
use crate::metrics::Metrics;
use crate::planner::{
    plan_failovers, plan_region_moves, retry_delay, FailoverSnapshot, Operator, RegionMove,
};
use crate::procedure::{load_maintenance, Procedure, ProcedureState, ProcedureStore};
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
    /// At most this many regions are being moved at once (across all dead nodes).
    pub max_concurrent: usize,
    /// The length of region leases granted to datanodes.
    pub region_lease: Duration,
    /// Extra wait past a dead node's last possible lease, for clock rate differences.
    pub safety_margin: Duration,
    /// How long a datanode has to confirm a promotion or an open.
    pub instruction_timeout: Duration,
    /// How often the reconciler compares routes with the cluster even without an event.
    pub reconcile_interval: Duration,
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
    procedures: ProcedureStore,
    /// Maintenance mode: no automatic failover while set (shared with the HTTP toggle).
    maintenance: Arc<AtomicBool>,
    /// Bounds the regions moved at once.
    permits: Arc<Semaphore>,
    /// Nodes whose regions are being failed over now, with the task doing it.
    failing_over: HashMap<u64, SpawnHandle>,
    /// The leadership term the running failovers belong to (0: none).
    serving_term: u64,
    /// The term's start-up work (resuming procedures, seeding nodes) is done: the reconciler
    /// may plan (before, it could start a failover beside one about to be resumed).
    ready: bool,
    /// Failed failovers: attempts so far and when the next may start.
    retries: HashMap<u64, Retry>,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    attempts: u32,
    not_before: Instant,
}

impl Scheduler {
    pub fn new(
        cluster_view: Addr<ClusterView>,
        selector: SelectorKind,
        leadership: Arc<Leadership>,
        failover: FailoverConfig,
        procedures: ProcedureStore,
        maintenance: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(failover.max_concurrent.max(1)));
        Self {
            cluster_view,
            selector: Selector::new(selector),
            leadership,
            failover,
            tables: None,
            procedures,
            maintenance,
            permits,
            failing_over: HashMap::new(),
            serving_term: 0,
            ready: false,
            retries: HashMap::new(),
            metrics,
        }
    }

    /// Runs (or resumes) the failover `procedure` unless one already runs for its node.
    fn run_failover(&mut self, procedure: Procedure, resumed: bool, ctx: &mut Context<Self>) {
        let Some(tables) = self.tables.clone() else {
            return;
        };
        let node_id = procedure.node_id;
        if self.failing_over.contains_key(&node_id) {
            return;
        }
        let fut = fail_over_node(
            procedure,
            resumed,
            Failover {
                metrics: self.metrics.clone(),
                tables,
                cluster_view: self.cluster_view.clone(),
                procedures: self.procedures.clone(),
                permits: self.permits.clone(),
                config: self.failover.clone(),
            },
        );
        let term = self.serving_term;
        let task = ctx.spawn(fut.into_actor(self).map(move |state, scheduler, _| {
            scheduler.failing_over.remove(&node_id);
            if scheduler.serving_term != term {
                return;
            }
            match state {
                ProcedureState::Done => {
                    scheduler.retries.remove(&node_id);
                }
                // Interrupted (it could not record its progress) counts as a failed attempt:
                // no restart on every tick while the store refuses.
                ProcedureState::Failed | ProcedureState::Running => {
                    let retry = scheduler.retries.entry(node_id).or_insert(Retry {
                        attempts: 0,
                        not_before: Instant::now(),
                    });
                    retry.attempts += 1;
                    retry.not_before = Instant::now() + retry_delay(retry.attempts);
                    tracing::warn!(
                        node_id,
                        attempts = retry.attempts,
                        "failover incomplete; it is planned again after a backoff"
                    );
                }
            }
        }));
        self.failing_over.insert(node_id, task);
    }

    /// Compares the routes with the cluster and starts the failovers they call for.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if !self.ready || !self.leadership.is_serving_leader() {
            return;
        }
        let Some(tables) = self.tables.clone() else {
            return;
        };
        let term = self.serving_term;
        let dead = self.cluster_view.send(ListDeadNodes);
        ctx.spawn(dead.into_actor(self).map(move |dead, scheduler, ctx| {
            let Ok(dead) = dead else {
                return;
            };
            if scheduler.serving_term != term {
                return;
            }
            let snapshot = FailoverSnapshot {
                dead: dead
                    .into_iter()
                    .map(|node_id| (node_id, tables.ownership().leads_any(node_id)))
                    .collect(),
                running: scheduler.failing_over.keys().copied().collect(),
                maintenance: scheduler.maintenance.load(Ordering::Relaxed),
                retry_not_before: scheduler
                    .retries
                    .iter()
                    .map(|(node_id, retry)| (*node_id, retry.not_before))
                    .collect(),
                now: Instant::now(),
            };
            for operator in plan_failovers(&snapshot) {
                match operator {
                    Operator::FailOverNode { node_id } => {
                        scheduler.run_failover(Procedure::region_failover(node_id), false, ctx)
                    }
                }
            }
        }));
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.cluster_view.do_send(Subscribe {
            subscriber: ctx.address().recipient(),
        });
        // Leadership changes arrive as a stream: on becoming the serving leader, load the
        // maintenance flag and resume the procedures a previous leader left running.
        ctx.add_stream(tokio_stream::wrappers::WatchStream::new(
            self.leadership.subscribe(),
        ));
        // Level-triggered: whatever an event missed, the next tick sees.
        ctx.run_interval(self.failover.reconcile_interval, |scheduler, ctx| {
            scheduler.reconcile(ctx)
        });
    }
}

impl StreamHandler<LeadershipState> for Scheduler {
    fn handle(&mut self, state: LeadershipState, ctx: &mut Self::Context) {
        if !state.serving || state.term != self.serving_term {
            // Leader-only work stops with the term it belongs to: a failover of an earlier term
            // must not go on with that term's view (who was dead, whose leases lapsed). Its
            // procedure stays recorded, and whoever leads next resumes it from its own view.
            for (node_id, task) in self.failing_over.drain() {
                tracing::info!(
                    node_id,
                    "leadership changed: abandoning a failover in progress"
                );
                ctx.cancel_future(task);
            }
            self.serving_term = 0;
            self.ready = false;
            self.retries.clear();
        }
        if !state.serving || state.term == self.serving_term {
            return;
        }
        self.serving_term = state.term;
        let procedures = self.procedures.clone();
        let maintenance = self.maintenance.clone();
        let view = self.cluster_view.clone();
        let grace = self.failover.region_lease;
        let tables = self.tables.clone();
        let load = async move {
            // Nodes the routes may name that have not reached this leader (yet): watched from
            // now on, so that one that died before this term began dies here too. The routes
            // name them too (a registration is written best effort), so both count.
            let mut nodes = match load_registered_nodes(procedures.store().as_ref()).await {
                Ok(nodes) => nodes,
                Err(e) => {
                    tracing::error!("cannot read the registered nodes: {e}");
                    Vec::new()
                }
            };
            if let Some(tables) = tables {
                nodes.extend(nodes_named_by_routes(&tables));
            }
            view.do_send(SeedNodes { nodes, grace });
            let running: Vec<Procedure> = match procedures.list().await {
                Ok(all) => all
                    .into_iter()
                    .filter(|p| p.state == ProcedureState::Running && p.kind == "region_failover")
                    .collect(),
                Err(e) => {
                    tracing::error!("cannot read procedures to resume: {e}");
                    Vec::new()
                }
            };
            match load_maintenance(procedures.store().as_ref()).await {
                Ok(on) => maintenance.store(on, Ordering::Relaxed),
                Err(e) => tracing::error!("cannot read the maintenance flag: {e}"),
            }
            running
        };
        let term = state.term;
        ctx.spawn(load.into_actor(self).map(move |running, scheduler, ctx| {
            if scheduler.serving_term != term {
                return;
            }
            for procedure in running {
                if scheduler.failing_over.contains_key(&procedure.node_id) {
                    continue;
                }
                tracing::info!(procedure = %procedure.id, node_id = procedure.node_id, "resuming a failover left by the previous leader");
                scheduler.run_failover(procedure, true, ctx);
            }
            scheduler.ready = true;
            scheduler.reconcile(ctx);
        }));
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The leadership channel never closes while metasrv runs; keep the actor alive.
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
        if let NodeEvent::Recovered { node_id } = event {
            // Its next death starts afresh.
            self.retries.remove(&node_id);
        }
        if let NodeEvent::Dead { node_id, .. } = event {
            if self.maintenance.load(Ordering::Relaxed) {
                tracing::warn!(
                    node_id,
                    "maintenance mode: a dead node is failed over only once it ends"
                );
            }
            self.reconcile(ctx);
        }
    }
}

/// What a failover needs.
struct Failover {
    metrics: Arc<Metrics>,
    tables: Arc<TableManager>,
    cluster_view: Addr<ClusterView>,
    procedures: ProcedureStore,
    permits: Arc<Semaphore>,
    config: FailoverConfig,
}

/// Moves every region the procedure's node leads to a live node, never letting two nodes serve
/// a region at once: nothing is instructed before the dead node's last lease has lapsed. Each
/// step is recorded in the procedure; a resumed procedure redoes only what is left.
async fn fail_over_node(procedure: Procedure, resumed: bool, f: Failover) -> ProcedureState {
    let dead = procedure.node_id;
    let tables = f.tables.clone();
    let metrics = f.metrics.clone();
    let started = Instant::now();
    let state = move_regions_of_dead_node(procedure, resumed, f).await;
    let outcome = match state {
        ProcedureState::Done => "done",
        ProcedureState::Failed => "failed",
        // It could not record its progress: this member no longer leads.
        ProcedureState::Running => "interrupted",
    };
    tables.ownership().unfence(dead);
    metrics.region_failovers.with_label_values(&[outcome]).inc();
    metrics
        .region_failover_seconds
        .observe(started.elapsed().as_secs_f64());
    state
}

/// Every node the routes name (as leader or follower), with the address they give.
fn nodes_named_by_routes(tables: &TableManager) -> Vec<RegisteredNode> {
    let mut named: HashMap<u64, String> = HashMap::new();
    for entry in tables.tables() {
        for region in &entry.route.regions {
            for peer in std::iter::once(&region.leader).chain(&region.followers) {
                named.entry(peer.id).or_insert_with(|| peer.addr.clone());
            }
        }
    }
    named
        .into_iter()
        .map(|(id, addr)| RegisteredNode {
            id,
            addr,
            instance_id: String::new(),
        })
        .collect()
}

async fn move_regions_of_dead_node(
    mut procedure: Procedure,
    resumed: bool,
    f: Failover,
) -> ProcedureState {
    let dead = procedure.node_id;
    let save = |procedure: &Procedure| {
        let procedures = f.procedures.clone();
        let procedure = procedure.clone();
        async move {
            if let Err(e) = procedures.save(&procedure).await {
                tracing::error!(procedure = %procedure.id, "cannot record the procedure: {e}");
                return false;
            }
            true
        }
    };
    if resumed {
        procedure.step("resumed by a new leader");
    } else {
        procedure.step(format!("node {dead} declared dead"));
    }
    // Recorded before anything moves, so that a new leader finds it; a member that cannot
    // write it is no longer the leader and must not go on.
    if !save(&procedure).await {
        return procedure.state;
    }
    // From here on the node gets no lease on the regions it leads, even if it comes back while
    // we wait: so the last lease this leader granted it bounds every lease that matters. If this
    // leader never granted it one, a previous leader may have: those end within one lease of
    // our election, so within one lease from now (or from the node's last request to us).
    let mut expiry = match f.tables.ownership().fence(dead) {
        Some(last_grant) => last_grant + f.config.region_lease,
        None => f
            .cluster_view
            .send(GetLeaseExpiry {
                node_id: dead,
                region_lease: f.config.region_lease,
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| Instant::now() + f.config.region_lease),
    };
    loop {
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            expiry + f.config.safety_margin,
        ))
        .await;
        // Fenced, the node gets no new leader lease from heartbeats; but an OpenRegion it
        // confirmed meanwhile (a create or a reopen in flight when it was fenced) began one.
        match f.tables.ownership().last_grant(dead) {
            Some(last) if last + f.config.region_lease > expiry => {
                expiry = last + f.config.region_lease;
            }
            _ => break,
        }
    }
    procedure.step("the dead node's region leases have lapsed");

    let mut candidates = match f.cluster_view.send(ListCandidates).await {
        Ok(candidates) => candidates,
        Err(e) => {
            procedure.finish(
                ProcedureState::Failed,
                format!("cluster view unavailable: {e}"),
            );
            save(&procedure).await;
            return procedure.state;
        }
    };
    if resumed && candidates.iter().any(|c| c.peer.id == dead) {
        procedure.finish(
            ProcedureState::Done,
            format!("node {dead} is alive again; nothing moved"),
        );
        save(&procedure).await;
        return procedure.state;
    }
    candidates.retain(|c| c.peer.id != dead);
    let regions = f.tables.regions_led_by(dead);
    tracing::warn!(
        node_id = dead,
        regions = regions.len(),
        "failing over the regions of a dead node"
    );
    if candidates.is_empty() && !regions.is_empty() {
        procedure.finish(ProcedureState::Failed, "no live datanode to fail over to");
        save(&procedure).await;
        return procedure.state;
    }
    // Which followers the dead leader last reported in sync.
    let replicas = f
        .cluster_view
        .send(GetReplicaReport { node_id: dead })
        .await
        .ok()
        .flatten();
    let routes: Vec<RegionRoute> = regions.iter().map(|(_, region)| region.clone()).collect();
    let mut failures = 0;
    for (planned, (entry, region)) in plan_region_moves(&routes, &candidates, replicas.as_deref())
        .into_iter()
        .zip(&regions)
    {
        let region_id = region.region_id;
        let (target, instruction, undo) = match planned {
            RegionMove::Stuck { reason, .. } => {
                failures += 1;
                procedure.step(format!("region {region_id}: {reason}"));
                continue;
            }
            // If the target does not confirm, it may still carry the instruction out (late):
            // the undo, sent on the same ordered stream, keeps it from leading the region
            // beside whatever moves it next.
            RegionMove::Promote { to, .. } => (
                to,
                Instruction::PromoteToLeader { region_id },
                Instruction::DemoteToFollower { region_id },
            ),
            RegionMove::Reopen { to, .. } => (
                to,
                Instruction::OpenRegion {
                    region_id,
                    table: (&entry.info.name).into(),
                    role: RegionRole::Leader,
                    lease_millis: f.config.region_lease.as_millis() as u64,
                },
                Instruction::CloseRegion { region_id },
            ),
        };
        let _permit = f.permits.acquire().await;
        // The region is ours until moved: a DropTable of its table waits, and another
        // procedure cannot move it at the same time.
        let Some(_lock) = f.tables.lock_regions(&[region_id]) else {
            failures += 1;
            procedure.step(format!("region {region_id}: another procedure holds it"));
            continue;
        };
        // Until the route names the target, its reports of the region are not "stale".
        f.tables.ownership().begin_move(region_id, target.id);
        let outcome = f
            .cluster_view
            .send(SendInstruction {
                node_id: target.id,
                instruction,
                timeout: f.config.instruction_timeout,
            })
            .await;
        let undo = |f: &Failover| {
            f.cluster_view.do_send(SendInstruction {
                node_id: target.id,
                instruction: undo.clone(),
                timeout: f.config.instruction_timeout,
            });
            f.tables.ownership().end_move(region_id);
        };
        match outcome {
            Ok(Ok(result)) if result.success => {}
            other => {
                undo(&f);
                failures += 1;
                procedure.step(format!(
                    "region {region_id}: node {} did not take it: {other:?}",
                    target.id
                ));
                save(&procedure).await;
                continue;
            }
        }
        let followers: Vec<Peer> = region
            .followers
            .iter()
            .filter(|fo| fo.id != target.id && fo.id != dead)
            .cloned()
            .collect();
        let moved = f
            .tables
            .move_region_leader(region_id, dead, target.clone(), followers)
            .await;
        match moved {
            Ok(updated) => {
                f.tables.ownership().end_move(region_id);
                tracing::info!(
                    region = region_id,
                    from = dead,
                    to = target.id,
                    version = updated.route.version,
                    "region failed over"
                );
                procedure.step(format!(
                    "region {region_id} now led by node {} (route version {})",
                    target.id, updated.route.version
                ));
            }
            Err(e) => {
                let landed = f
                    .tables
                    .entry_by_id(table_of_region(region_id))
                    .is_some_and(|t| {
                        t.route
                            .regions
                            .iter()
                            .any(|r| r.region_id == region_id && r.leader.id == target.id)
                    });
                if landed {
                    // The write landed although its answer was lost (the manager re-read
                    // the stored route): the move is done.
                    f.tables.ownership().end_move(region_id);
                    procedure.step(format!(
                        "region {region_id} now led by node {} (the route write's answer was lost: {e})",
                        target.id
                    ));
                } else {
                    // The target took the region but the route does not say so: it must
                    // not go on leading it (a second writer once the region moves elsewhere).
                    undo(&f);
                    failures += 1;
                    procedure.step(format!("region {region_id}: cannot move the route: {e}"));
                }
            }
        }
        save(&procedure).await;
    }
    if failures == 0 {
        procedure.finish(ProcedureState::Done, "every region moved");
    } else {
        procedure.finish(
            ProcedureState::Failed,
            format!("{failures} regions were not moved"),
        );
    }
    save(&procedure).await;
    let _ = f.procedures.prune().await;
    procedure.state
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
