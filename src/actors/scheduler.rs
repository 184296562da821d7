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
//!
//! It also starts the operations an operator asks for (`StartOperation`: migrate a region,
//! transfer its leadership, drain a node; see `crate::operations`), at most one per region,
//! and resumes those a previous leader left running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use actix::prelude::*;

use crate::actors::cluster_view::{
    ClusterView, ListCandidates, ListDeadNodes, Mailbox, NodeEvent, RegisteredNode, SeedNodes,
    Subscribe,
};
use crate::catalog::TableManager;
use crate::election::{Leadership, LeadershipState};
use crate::metrics::Metrics;
use crate::operations::drain::run_drain;
use crate::operations::failover::fail_over_node;
use crate::operations::migration::run_migration;
use crate::operations::OperationContext;
use crate::planner::{plan_failovers, retry_delay, FailoverSnapshot, Operator};
use crate::procedure::{
    load_maintenance, Procedure, ProcedureState, ProcedureStore, DRAIN_NODE, MIGRATE_REGION,
    REGION_FAILOVER, REPAIR_REPLICAS, TRANSFER_LEADER,
};
use crate::selector::{Placement, Selector, SelectorKind};

mod replicas;

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

/// An operation an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationRequest {
    /// Move the region's leadership and copy to `to` (which opens it first).
    MigrateRegion { region_id: u64, to: u64 },
    /// Hand the region's leadership to its follower `to`.
    TransferLeader { region_id: u64, to: u64 },
    /// Move every region copy off `node_id`.
    DrainNode { node_id: u64 },
}

/// Starts an operation as a procedure; answers with its progress (the procedure as it is
/// recorded, updated as it goes; the sender is dropped if this member stops leading).
#[derive(Message)]
#[rtype(result = "Result<watch::Receiver<Procedure>, OperationError>")]
pub struct StartOperation {
    pub request: OperationRequest,
}

/// The progress of a procedure running on this member, if it is one.
#[derive(Message)]
#[rtype(result = "Option<watch::Receiver<Procedure>>")]
pub struct WatchProcedure {
    pub id: String,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("not the serving leader (or it is still starting its term)")]
    NotLeader,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
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
    /// How long a node stays dead before its follower copies are made again elsewhere.
    pub replica_repair_after: Duration,
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
    /// Where the operations' instructions go.
    mailbox: Arc<Mailbox>,
    selector: Selector,
    leadership: Arc<Leadership>,
    failover: FailoverConfig,
    tables: Option<Arc<TableManager>>,
    procedures: ProcedureStore,
    /// Maintenance mode: no automatic failover while set (shared with the HTTP toggle).
    maintenance: Arc<AtomicBool>,
    /// Bounds the regions moved at once.
    permits: Arc<Semaphore>,
    /// The server's runtime, where failovers run (off this actor's thread); None: this
    /// actor's own.
    background: Option<tokio::runtime::Handle>,
    /// Nodes whose regions are being failed over now, with the task doing it.
    failing_over: HashMap<u64, SpawnHandle>,
    /// The leadership term the running failovers belong to (0: none).
    serving_term: u64,
    /// The term's start-up work (resuming procedures, seeding nodes) is done: the reconciler
    /// may plan (before, it could start a failover beside one about to be resumed).
    ready: bool,
    /// Failed failovers: attempts so far, when the next may start, and the procedure record
    /// the next attempt goes on with (one record per failover, not one per attempt).
    retries: HashMap<u64, Retry>,
    /// Re-replication's state (`scheduler/replicas.rs`).
    repairs: replicas::RepairState,
    /// Operations asked for by operators (migrations, transfers, drains) running now, by
    /// procedure id.
    operations: HashMap<String, RunningOperation>,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Debug)]
struct Retry {
    attempts: u32,
    not_before: Instant,
    procedure: Procedure,
}

struct RunningOperation {
    task: SpawnHandle,
    progress: watch::Receiver<Procedure>,
}

/// An operation's task, as `track_operation` runs it.
type OperationFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Procedure>>>;

/// A task on another runtime, awaited from an actor: dropping it (the actor cancelled the
/// future that awaits it) aborts the task.
struct OnRuntime<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> OnRuntime<T> {
    fn spawn(
        runtime: &tokio::runtime::Handle,
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Self {
        Self(runtime.spawn(task))
    }
}

impl<T> std::future::Future for OnRuntime<T> {
    /// `None` if the task panicked.
    type Output = Option<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

impl<T> Drop for OnRuntime<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Scheduler {
    // Every one is a separate shared part the server wires in (one call site).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster_view: Addr<ClusterView>,
        mailbox: Arc<Mailbox>,
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
            mailbox,
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
            repairs: Default::default(),
            operations: HashMap::new(),
            metrics,
            background: None,
        }
    }

    /// Runs failovers on `runtime` (the server's) rather than on this actor's thread.
    pub fn with_operation_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.background = Some(runtime);
        self
    }

    fn operation_context(&self) -> Option<OperationContext> {
        Some(OperationContext {
            metrics: self.metrics.clone(),
            tables: self.tables.clone()?,
            cluster_view: self.cluster_view.clone(),
            mailbox: self.mailbox.clone(),
            procedures: self.procedures.clone(),
            permits: self.permits.clone(),
            config: self.failover.clone(),
        })
    }

    /// Runs (or resumes) an operator's procedure: a migration, a transfer or a drain.
    fn run_operation(
        &mut self,
        procedure: Procedure,
        resumed: bool,
        ctx: &mut Context<Self>,
    ) -> Option<watch::Receiver<Procedure>> {
        let operation = self.operation_context()?;
        Some(self.track_operation(
            procedure,
            ctx,
            move |procedure, progress| {
                if procedure.kind == DRAIN_NODE {
                    Box::pin(run_drain(operation, procedure, resumed, progress))
                } else {
                    Box::pin(run_migration(operation, procedure, resumed, progress))
                }
            },
            |_, _| {},
        ))
    }

    /// Runs `start(procedure, progress)` as an operation of this term: listed with its live
    /// progress, cancelled when the term ends.
    fn track_operation(
        &mut self,
        procedure: Procedure,
        ctx: &mut Context<Self>,
        start: impl FnOnce(Procedure, watch::Sender<Procedure>) -> OperationFuture,
        on_done: impl FnOnce(&mut Scheduler, &Procedure) + 'static,
    ) -> watch::Receiver<Procedure> {
        let id = procedure.id.clone();
        let (progress, watcher) = watch::channel(procedure.clone());
        let fut = start(procedure, progress);
        let done_id = id.clone();
        let task = ctx.spawn(fut.into_actor(self).map(move |finished, scheduler, _| {
            scheduler.operations.remove(&done_id);
            on_done(scheduler, &finished);
        }));
        self.operations.insert(
            id,
            RunningOperation {
                task,
                progress: watcher.clone(),
            },
        );
        watcher
    }

    /// The running operation that holds `region_id` or drains `node_id`, if any.
    fn operation_on(&self, region_id: Option<u64>, node_id: Option<u64>) -> Option<String> {
        self.operations.iter().find_map(|(id, op)| {
            let p = op.progress.borrow();
            let same_region = region_id.is_some_and(|r| p.region_id == r && p.kind != DRAIN_NODE);
            let same_drain = node_id.is_some_and(|n| p.kind == DRAIN_NODE && p.node_id == n);
            (same_region || same_drain).then(|| id.clone())
        })
    }

    /// Runs (or resumes) the failover `procedure` unless one already runs for its node.
    fn run_failover(&mut self, procedure: Procedure, resumed: bool, ctx: &mut Context<Self>) {
        let Some(operation) = self.operation_context() else {
            return;
        };
        let node_id = procedure.node_id;
        if self.failing_over.contains_key(&node_id) {
            return;
        }
        // A failover goes first: a repair pass holding region locks and permits would make
        // its moves fail and wait out a backoff.
        self.interrupt_replica_repair("a failover started", ctx);
        // On the server's runtime, not this actor's thread: ClusterView shares it, and a
        // 10,000-region failover's route writes and bookkeeping would queue every heartbeat
        // and every instruction result it waits for behind them. Cancelling the term's
        // future (the term ended) aborts the task.
        let runtime = self
            .background
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        // The task stops itself the moment the term ends, before the Scheduler (whose thread
        // ClusterView shares) gets to cancel it: a member re-elected at once holds a new fence
        // its writes would pass, and this term's lease waits are not the next term's.
        let mut leadership = self.leadership.subscribe();
        let term = self.serving_term;
        let work = fail_over_node(procedure.clone(), resumed, operation);
        let task = OnRuntime::spawn(&runtime, async move {
            tokio::select! {
                biased;
                _ = leadership.wait_for(|state| !state.serving || state.term != term) => None,
                done = work => Some(done),
            }
        });
        // Panicked or stopped with its term: counts as interrupted (the next term resumes it).
        let fut = async move { task.await.flatten().unwrap_or(procedure) };
        let task = ctx.spawn(fut.into_actor(self).map(move |procedure, scheduler, _| {
            scheduler.failing_over.remove(&node_id);
            if scheduler.serving_term != term {
                return;
            }
            // Its regions lead on with one copy fewer.
            scheduler.repairs.wanted = true;
            match procedure.state {
                ProcedureState::Done => {
                    scheduler.retries.remove(&node_id);
                }
                // Interrupted (it could not record its progress) counts as a failed attempt:
                // no restart on every tick while the store refuses.
                ProcedureState::Failed | ProcedureState::Running => {
                    let retry = scheduler.retries.entry(node_id).or_insert(Retry {
                        attempts: 0,
                        not_before: Instant::now(),
                        procedure: procedure.clone(),
                    });
                    retry.attempts += 1;
                    retry.not_before = Instant::now() + retry_delay(retry.attempts);
                    retry.procedure = procedure;
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
                    .map(|dead| (dead.node_id, tables.ownership().leads_any(dead.node_id)))
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
                        // A retry goes on in the record of the failed attempt.
                        let procedure = match scheduler.retries.get(&node_id) {
                            Some(retry) => {
                                let mut procedure = retry.procedure.clone();
                                procedure.state = ProcedureState::Running;
                                procedure.attempts = retry.attempts + 1;
                                procedure.step(format!("attempt {}", procedure.attempts));
                                procedure
                            }
                            None => Procedure::region_failover(node_id),
                        };
                        scheduler.run_failover(procedure, false, ctx)
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
        ctx.run_interval(replicas::check_every(&self.failover), |scheduler, ctx| {
            scheduler.check_replicas(ctx)
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
            for (id, operation) in self.operations.drain() {
                tracing::info!(procedure = %id, "leadership changed: abandoning an operation in progress");
                ctx.cancel_future(operation.task);
            }
            self.serving_term = 0;
            self.ready = false;
            self.retries.clear();
            self.repairs = Default::default();
        }
        if !state.serving || state.term == self.serving_term {
            return;
        }
        self.serving_term = state.term;
        let procedures = self.procedures.clone();
        let maintenance = self.maintenance.clone();
        let view = self.cluster_view.clone();
        let tables = self.tables.clone();
        let load = async move {
            // Nodes the routes name that have not reached this leader (yet) and were never
            // registered (a registration is written best effort): watched from now on, so that
            // one that died before this term began dies here too. The registered ones were
            // seeded with the term's state, before it served.
            // A pass over every route (a million regions at scale): off this actor's thread,
            // which ClusterView shares, while the term's first reports arrive.
            let nodes = match tables {
                Some(tables) => tokio::task::spawn_blocking(move || nodes_named_by_routes(&tables))
                    .await
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let running: Vec<Procedure> = match procedures.list().await {
                Ok(all) => all
                    .into_iter()
                    .filter(|p| p.state == ProcedureState::Running)
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
            (nodes, running)
        };
        let term = state.term;
        ctx.spawn(load.into_actor(self).map(move |(nodes, running), scheduler, ctx| {
            // A term that ended meanwhile seeds nothing (its view is another term's now).
            if scheduler.serving_term != term {
                return;
            }
            view.do_send(SeedNodes { nodes });
            for procedure in running {
                match procedure.kind.as_str() {
                    REGION_FAILOVER => {
                        if scheduler.failing_over.contains_key(&procedure.node_id) {
                            continue;
                        }
                        tracing::info!(procedure = %procedure.id, node_id = procedure.node_id, "resuming a failover left by the previous leader");
                        scheduler.run_failover(procedure, true, ctx);
                    }
                    MIGRATE_REGION | TRANSFER_LEADER | DRAIN_NODE => {
                        tracing::info!(procedure = %procedure.id, kind = %procedure.kind, "resuming an operation left by the previous leader");
                        scheduler.run_operation(procedure, true, ctx);
                    }
                    // Level-triggered: this term's own checks plan whatever is left.
                    REPAIR_REPLICAS => scheduler.record_interrupted_repair(
                        procedure,
                        "the leader that ran it is gone",
                        ctx,
                    ),
                    other => {
                        tracing::warn!(procedure = %procedure.id, kind = other, "unknown procedure kind left running; ignored");
                    }
                }
            }
            scheduler.ready = true;
            scheduler.repairs.term_began(Instant::now());
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

impl Handler<WatchProcedure> for Scheduler {
    type Result = Option<watch::Receiver<Procedure>>;

    fn handle(&mut self, msg: WatchProcedure, _ctx: &mut Self::Context) -> Self::Result {
        self.operations.get(&msg.id).map(|op| op.progress.clone())
    }
}

impl Handler<StartOperation> for Scheduler {
    type Result = ResponseActFuture<Self, Result<watch::Receiver<Procedure>, OperationError>>;

    fn handle(&mut self, msg: StartOperation, _ctx: &mut Self::Context) -> Self::Result {
        // Checked now for a quick refusal, and again once the candidates are in: other
        // messages (a second request for the same region) run meanwhile.
        if let Err(e) = self.check_operation(&msg.request) {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let candidates = self.cluster_view.send(ListCandidates);
        let term = self.serving_term;
        let request = msg.request;
        Box::pin(candidates.into_actor(self).map(
            move |candidates, scheduler, ctx| {
                let procedure = scheduler.check_operation(&request)?;
                if scheduler.serving_term != term {
                    return Err(OperationError::NotLeader);
                }
                let candidates = candidates
                    .map_err(|e| OperationError::Unavailable(format!("cluster view: {e}")))?;
                if procedure.kind != DRAIN_NODE
                    && !candidates
                        .iter()
                        .any(|c| c.peer.id == procedure.target_node)
                {
                    return Err(OperationError::FailedPrecondition(format!(
                        "node {} is not a live datanode that can take regions (dead, unknown, or cordoned)",
                        procedure.target_node
                    )));
                }
                tracing::info!(procedure = %procedure.id, kind = %procedure.kind, node = procedure.node_id, region = procedure.region_id, target = procedure.target_node, "operation started");
                scheduler
                    .run_operation(procedure, false, ctx)
                    .ok_or(OperationError::Unavailable("the catalog is not attached yet".into()))
            },
        ))
    }
}

impl Scheduler {
    /// The procedure `request` starts, if this leader may start it now: the checks that need
    /// no other actor (the region's route, the region or node not busy).
    fn check_operation(&self, request: &OperationRequest) -> Result<Procedure, OperationError> {
        if !self.ready || !self.leadership.is_serving_leader() {
            return Err(OperationError::NotLeader);
        }
        let tables = self
            .tables
            .as_ref()
            .ok_or_else(|| OperationError::Unavailable("the catalog is not attached yet".into()))?;
        let (region_id, to, transfer) = match *request {
            OperationRequest::DrainNode { node_id } => {
                if node_id == 0 {
                    return Err(OperationError::InvalidArgument(
                        "node_id must not be 0".into(),
                    ));
                }
                if let Some(id) = self.operation_on(None, Some(node_id)) {
                    return Err(OperationError::FailedPrecondition(format!(
                        "node {node_id} is being drained already (procedure {id})"
                    )));
                }
                if self.failing_over.contains_key(&node_id) {
                    return Err(OperationError::FailedPrecondition(format!(
                        "node {node_id} is dead and being failed over"
                    )));
                }
                if !tables.ownership().knows(node_id) {
                    return Err(OperationError::NotFound(format!(
                        "no route names node {node_id}"
                    )));
                }
                return Ok(Procedure::drain(node_id));
            }
            OperationRequest::MigrateRegion { region_id, to } => (region_id, to, false),
            OperationRequest::TransferLeader { region_id, to } => (region_id, to, true),
        };
        let (_, region) = tables.region_route(region_id).ok_or_else(|| {
            OperationError::NotFound(format!("no table routes region {region_id}"))
        })?;
        if region.leader.id == to {
            return Err(OperationError::FailedPrecondition(format!(
                "node {to} leads region {region_id} already"
            )));
        }
        if transfer && !region.followers.iter().any(|f| f.id == to) {
            return Err(OperationError::FailedPrecondition(format!(
                "node {to} is not a follower of region {region_id} (its followers: {:?}); migrate the region instead",
                region.followers.iter().map(|f| f.id).collect::<Vec<_>>()
            )));
        }
        if self.failing_over.contains_key(&region.leader.id) {
            return Err(OperationError::FailedPrecondition(format!(
                "node {}, the leader of region {region_id}, is dead and being failed over",
                region.leader.id
            )));
        }
        if let Some(id) = self.operation_on(Some(region_id), None) {
            return Err(OperationError::FailedPrecondition(format!(
                "region {region_id} is busy with procedure {id}"
            )));
        }
        if tables.is_locked(region_id) {
            return Err(OperationError::FailedPrecondition(format!(
                "region {region_id} is busy with another operation (a failover, a drain or a DDL)"
            )));
        }
        Ok(Procedure::region_migration(
            region_id,
            region.leader.id,
            to,
            transfer,
        ))
    }
}
