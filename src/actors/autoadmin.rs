//! `Autoadmin`: the Central Nervous System's hands. Every `cns.interval` on the serving leader
//! (once a term is `cns.settle` old) it takes a load snapshot from ClusterView, fills in the
//! routes of the move candidates from the catalog, runs the planners (`crate::cns::planner`,
//! pure) and, by mode, carries their moves out through the Scheduler (`auto`: a migration or a
//! leader transfer procedure each, the reconciler's one way to move a region), records them
//! only (`dry-run`) or holds them for an operator (`approve`). Recommendations for the platform
//! (add, remove or replace datanodes) are recorded in every mode. Everything goes to the
//! decision log (`crate::cns::decisions`), which the APIs read and stream.
//!
//! It owns the per-term planning state no one else touches: when each region last moved (the
//! cooldown), the moves it has in flight, the cluster's recent utilization and the nodes'
//! liveness flaps. A new term starts that state afresh (and reads the mode from the store).
//! It runs on its own arbiter: planning 10,000 nodes must not delay heartbeats.

use crate::clock::unix_ms;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::RwLock;

use crate::actors::cluster_view::{ClusterView, GetLoadSnapshot, NodeEvent, Subscribe};
use crate::actors::scheduler::{OperationError, OperationRequest, Scheduler, StartOperation};
use crate::catalog::TableManager;
use crate::cns::decisions::{Decision, DecisionStatus, Mode, SharedDecisionLog};
use crate::cns::planner::{loads_settled, plan, Action, PlanInput, PlanLimits, Proposal};
use crate::cns::snapshot::NodeBrief;
use crate::cns::CnsConfig;
use crate::election::{Leadership, LeadershipState};
use crate::procedure::ProcedureState;
use crate::store::{KeyValue, KvBackend};

/// Where the mode an operator set is kept (so that the next leader keeps it).
pub const MODE_KEY: &str = "__meta/cns/mode";

// ---- Messages -------------------------------------------------------------------------------

/// Carries out a decision awaiting approval.
#[derive(Message)]
#[rtype(result = "Result<Decision, AutoadminError>")]
pub struct ApproveDecision {
    pub id: u64,
}

/// Refuses a decision awaiting approval.
#[derive(Message)]
#[rtype(result = "Result<Decision, AutoadminError>")]
pub struct RejectDecision {
    pub id: u64,
    pub reason: Option<String>,
}

/// Changes the mode (kept in the store).
#[derive(Message)]
#[rtype(result = "Result<Mode, AutoadminError>")]
pub struct SetMode {
    pub mode: Mode,
}

/// Runs the planners now (tests and scenarios; the tick does it every `cns.interval`).
#[derive(Message)]
#[rtype(result = "Result<Vec<Decision>, AutoadminError>")]
pub struct PlanNow;

/// A move's procedure ended (or could not start).
#[derive(Message)]
#[rtype(result = "()")]
struct MoveEnded {
    decision_id: u64,
    outcome: Result<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AutoadminError {
    #[error("not the serving leader")]
    NotLeader,
    #[error("no decision {0} (the log keeps the newest only)")]
    NotFound(u64),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
}

// ---- The actor ------------------------------------------------------------------------------

pub struct Autoadmin {
    config: CnsConfig,
    limits: PlanLimits,
    cluster_view: Addr<ClusterView>,
    scheduler: Addr<Scheduler>,
    tables: Arc<TableManager>,
    leadership: Arc<Leadership>,
    maintenance: Arc<AtomicBool>,
    store: Arc<dyn KvBackend>,
    log: SharedDecisionLog,
    /// The mode now (read by the APIs).
    mode: Arc<RwLock<Mode>>,
    /// The term this state belongs to, and when it began serving.
    term: u64,
    term_started: Option<Instant>,
    /// When each region last moved (the cooldown).
    moved_at: HashMap<u64, Instant>,
    /// When each region was last recorded in dry-run: the same proposal is not recorded
    /// again within the cooldown (forgotten when the mode changes).
    dry_run_at: HashMap<u64, (Instant, Action, f64)>,
    /// Moves running now: decision id -> (region, from, to).
    executing: HashMap<u64, (u64, u64, u64)>,
    /// The cluster's utilization at recent ticks, oldest first.
    utilization: VecDeque<f64>,
    /// Nodes that came back from suspect or dead, with when.
    flaps: VecDeque<(Instant, u64)>,
    /// Recommendations made, by what they said, with when (not repeated within `sustain`).
    recommended: HashMap<String, Instant>,
    /// A plan is being made (ticks do not overlap).
    planning: bool,
    /// Each node's RU at the previous round, and the rounds skipped in a row because loads
    /// were still moving (see `planner::loads_settled`).
    previous_loads: HashMap<u64, f64>,
    unsettled_rounds: u32,
}

/// Rounds skipped in a row for moving loads before the planners run anyway (a load that keeps
/// drifting must not stop rebalancing for good).
const MAX_UNSETTLED_ROUNDS: u32 = 3;

/// The most flaps remembered (a flapping fleet must not grow this without bound).
const MAX_FLAPS: usize = 10_000;

impl Autoadmin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: CnsConfig,
        cluster_view: Addr<ClusterView>,
        scheduler: Addr<Scheduler>,
        tables: Arc<TableManager>,
        leadership: Arc<Leadership>,
        maintenance: Arc<AtomicBool>,
        store: Arc<dyn KvBackend>,
        log: SharedDecisionLog,
        mode: Arc<RwLock<Mode>>,
    ) -> Self {
        Self {
            limits: config.limits(),
            config,
            cluster_view,
            scheduler,
            tables,
            leadership,
            maintenance,
            store,
            log,
            mode,
            term: 0,
            term_started: None,
            moved_at: HashMap::new(),
            dry_run_at: HashMap::new(),
            executing: HashMap::new(),
            utilization: VecDeque::new(),
            flaps: VecDeque::new(),
            recommended: HashMap::new(),
            planning: false,
            previous_loads: HashMap::new(),
            unsettled_rounds: 0,
        }
    }

    fn mode(&self) -> Mode {
        *self.mode.read()
    }

    /// Expires decisions that waited for approval too long.
    fn expire_proposals(&mut self) {
        let now = unix_ms();
        let timeout = self.config.approval_timeout.as_millis() as u64;
        let mut log = self.log.lock();
        let stale: Vec<u64> = log
            .open()
            .filter(|d| d.status == DecisionStatus::Proposed)
            .filter(|d| now.saturating_sub(d.at_unix_ms) >= timeout)
            .map(|d| d.id)
            .collect();
        for id in stale {
            log.update(
                id,
                DecisionStatus::Expired,
                None,
                Some("not approved in time".into()),
                now,
            );
        }
    }

    /// What the planners may not touch and what is in flight.
    fn plan_input(&mut self, mut nodes: Vec<NodeBrief>) -> PlanInput {
        let now = Instant::now();
        let cooldown = self.config.cooldown;
        self.moved_at
            .retain(|_, at| now.duration_since(*at) < cooldown);
        self.dry_run_at
            .retain(|_, (at, _, _)| now.duration_since(*at) < cooldown);
        let mut frozen: HashSet<u64> = self.moved_at.keys().copied().collect();
        if self.mode() == Mode::DryRun {
            frozen.extend(self.dry_run_at.keys());
        }
        let mut in_flight: HashMap<u64, usize> = HashMap::new();
        for &(region, from, to) in self.executing.values() {
            frozen.insert(region);
            *in_flight.entry(from).or_default() += 1;
            *in_flight.entry(to).or_default() += 1;
        }
        // Moves recorded but not made (awaiting approval, or recorded in dry-run within the
        // cooldown) count as made: the next round plans on from them, as it would in auto
        // mode, instead of proposing more moves for the same imbalance.
        let mut recorded: Vec<(Action, f64)> = Vec::new();
        for d in self.log.lock().open() {
            if let Some(region) = d.proposal.action.region_id() {
                frozen.insert(region);
            }
            if d.status == DecisionStatus::Proposed {
                let ru = d.proposal.figures.get("region_ru").copied().unwrap_or(0.0);
                recorded.push((d.proposal.action.clone(), ru));
            }
        }
        if self.mode() == Mode::DryRun {
            recorded.extend(
                self.dry_run_at
                    .values()
                    .map(|(_, action, ru)| (action.clone(), *ru)),
            );
        }
        for (action, recorded_ru) in &recorded {
            let Some((from, to)) = action.nodes() else {
                continue;
            };
            // The region's load now (its average may have grown since it was recorded).
            let ru = nodes
                .iter()
                .filter(|n| n.node_id == from)
                .flat_map(|n| n.hottest.iter().chain(&n.coldest))
                .find(|r| Some(r.region_id) == action.region_id())
                .map_or(*recorded_ru, |r| r.ru);
            let ru = &ru;
            let migrate = matches!(action, Action::Migrate { .. });
            for node in nodes.iter_mut() {
                let sign: i64 = if node.node_id == from {
                    -1
                } else if node.node_id == to {
                    1
                } else {
                    continue;
                };
                node.ru = (node.ru + sign as f64 * ru).max(0.0);
                node.leaders = (i64::from(node.leaders) + sign).max(0) as u32;
                if migrate {
                    node.regions = (i64::from(node.regions) + sign).max(0) as u32;
                }
            }
        }
        // Candidates as the routes have them now: a report can lag a move, and a region an
        // operation holds (a failover, an operator's migration) is not ours to move.
        for node in &mut nodes {
            for list in [&mut node.hottest, &mut node.coldest] {
                list.retain_mut(|region| {
                    if self.tables.is_locked(region.region_id) {
                        return false;
                    }
                    match self.tables.region_route(region.region_id) {
                        Some((_, route)) if route.leader.id == node.node_id => {
                            region.followers = route.followers.iter().map(|p| p.id).collect();
                            true
                        }
                        _ => false,
                    }
                });
            }
        }
        // The cluster's utilization: RU over capacity (unlearned capacities as the mean).
        let known: Vec<f64> = nodes.iter().filter_map(|n| n.capacity).collect();
        if !known.is_empty() {
            let mean = known.iter().sum::<f64>() / known.len() as f64;
            let live = nodes.iter().filter(|n| n.schedulable);
            let (demand, capacity) = live.fold((0.0, 0.0), |(d, c), n| {
                (d + n.ru, c + n.capacity.unwrap_or(mean))
            });
            if capacity > 0.0 {
                self.utilization.push_back(demand / capacity);
            }
        }
        while self.utilization.len() > self.limits.sustain_ticks {
            self.utilization.pop_front();
        }
        let window = self.config.sustain;
        while self
            .flaps
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.flaps.pop_front();
        }
        let mut flaps: HashMap<u64, u32> = HashMap::new();
        for (_, node) in &self.flaps {
            *flaps.entry(*node).or_default() += 1;
        }
        PlanInput {
            nodes,
            frozen,
            in_flight_total: self.executing.len(),
            in_flight,
            maintenance: self.maintenance.load(Ordering::Acquire),
            utilization_history: self.utilization.iter().copied().collect(),
            flaps,
        }
    }

    /// Records the planners' proposals and, in auto mode, starts the moves.
    fn act(&mut self, proposals: Vec<Proposal>, ctx: &mut Context<Self>) -> Vec<Decision> {
        let now = Instant::now();
        let mode = self.mode();
        let mut decisions = Vec::new();
        for proposal in proposals {
            if proposal.action.is_recommendation() {
                let key = format!("{:?}", proposal.action);
                let sustain = self.config.sustain;
                if self
                    .recommended
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < sustain)
                {
                    continue;
                }
                self.recommended
                    .retain(|_, at| now.duration_since(*at) < sustain);
                self.recommended.insert(key, now);
                let decision =
                    self.log
                        .lock()
                        .record(proposal, mode, DecisionStatus::Recommended, unix_ms());
                tracing::info!(decision = decision.id, reason = %decision.proposal.reason, "autoadmin recommends {:?}", decision.proposal.action);
                decisions.push(decision);
                continue;
            }
            let Some(region_id) = proposal.action.region_id() else {
                continue;
            };
            if mode == Mode::DryRun {
                let ru = proposal.figures.get("region_ru").copied().unwrap_or(0.0);
                self.dry_run_at
                    .insert(region_id, (now, proposal.action.clone(), ru));
            }
            let status = match mode {
                Mode::Auto => DecisionStatus::Executing,
                Mode::DryRun => DecisionStatus::DryRun,
                Mode::Approve => DecisionStatus::Proposed,
            };
            let decision = self.log.lock().record(proposal, mode, status, unix_ms());
            tracing::info!(decision = decision.id, mode = mode.name(), reason = %decision.proposal.reason, "autoadmin decides {:?}", decision.proposal.action);
            if mode == Mode::Auto {
                self.execute(&decision, ctx);
            }
            decisions.push(decision);
        }
        decisions
    }

    /// Starts a move's procedure; its end comes back as [`MoveEnded`].
    fn execute(&mut self, decision: &Decision, ctx: &mut Context<Self>) {
        let (request, region_id, from, to) = match decision.proposal.action {
            Action::Migrate {
                region_id,
                from,
                to,
            } => (
                OperationRequest::MigrateRegion { region_id, to },
                region_id,
                from,
                to,
            ),
            Action::TransferLeader {
                region_id,
                from,
                to,
            } => (
                OperationRequest::TransferLeader { region_id, to },
                region_id,
                from,
                to,
            ),
            _ => return,
        };
        self.executing.insert(decision.id, (region_id, from, to));
        self.moved_at.insert(region_id, Instant::now());
        let decision_id = decision.id;
        let scheduler = self.scheduler.clone();
        let log = self.log.clone();
        let me = ctx.address();
        actix::spawn(async move {
            let started = scheduler.send(StartOperation { request }).await;
            let mut progress = match started {
                Ok(Ok(progress)) => progress,
                Ok(Err(e)) => {
                    let refusal = match e {
                        OperationError::NotLeader => "not the serving leader".to_string(),
                        other => other.to_string(),
                    };
                    me.do_send(MoveEnded {
                        decision_id,
                        outcome: Err(format!("refused: {refusal}")),
                    });
                    return;
                }
                Err(e) => {
                    me.do_send(MoveEnded {
                        decision_id,
                        outcome: Err(format!("the scheduler is unavailable: {e}")),
                    });
                    return;
                }
            };
            let procedure_id = progress.borrow().id.clone();
            log.lock().update(
                decision_id,
                DecisionStatus::Executing,
                Some(procedure_id),
                None,
                unix_ms(),
            );
            let outcome = match progress
                .wait_for(|p| p.state != ProcedureState::Running)
                .await
            {
                Ok(done) if done.state == ProcedureState::Done => {
                    Ok(done.steps.last().cloned().unwrap_or_else(|| "done".into()))
                }
                Ok(failed) => Err(failed
                    .steps
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "failed".into())),
                Err(_) => Err(
                    "leadership changed while it ran: the next leader resumes its procedure".into(),
                ),
            };
            me.do_send(MoveEnded {
                decision_id,
                outcome,
            });
        });
    }

    /// Forgets the previous term's planning state.
    fn begin_term(&mut self, term: u64, ctx: &mut Context<Self>) {
        self.term = term;
        self.term_started = Some(Instant::now());
        self.moved_at.clear();
        self.dry_run_at.clear();
        self.executing.clear();
        self.utilization.clear();
        self.recommended.clear();
        self.previous_loads.clear();
        self.unsettled_rounds = 0;
        let store = self.store.clone();
        let configured = self.config.mode;
        let mode = self.mode.clone();
        ctx.spawn(
            async move {
                match store.batch_get(vec![MODE_KEY.as_bytes().to_vec()]).await {
                    Ok(kvs) => {
                        let stored = kvs
                            .first()
                            .and_then(|kv| std::str::from_utf8(&kv.value).ok())
                            .and_then(Mode::parse);
                        *mode.write() = stored.unwrap_or(configured);
                    }
                    Err(e) => tracing::warn!("cannot read the autoadmin mode, keeping it: {e}"),
                }
            }
            .into_actor(self),
        );
    }

    /// One planning round; `reply` gets its decisions.
    fn tick(
        &mut self,
        force: bool,
        ctx: &mut Context<Self>,
    ) -> Option<ResponseActFuture<Self, Result<Vec<Decision>, AutoadminError>>> {
        if !self.leadership.is_serving_leader() {
            return None;
        }
        let state = self.leadership.state();
        if state.term != self.term || self.term_started.is_none() {
            self.begin_term(state.term, ctx);
        }
        self.expire_proposals();
        let settled = self
            .term_started
            .is_some_and(|at| at.elapsed() >= self.config.settle);
        if self.planning || !(settled || force) {
            return None;
        }
        self.planning = true;
        let term = self.term;
        let snapshot = self.cluster_view.send(GetLoadSnapshot);
        Some(Box::pin(snapshot.into_actor(self).map(
            move |nodes, autoadmin, ctx| {
                autoadmin.planning = false;
                let nodes =
                    nodes.map_err(|e| AutoadminError::Unavailable(format!("cluster view: {e}")))?;
                if autoadmin.term != term || !autoadmin.leadership.is_serving_leader() {
                    return Err(AutoadminError::NotLeader);
                }
                let settled = loads_settled(
                    &autoadmin.previous_loads,
                    &nodes,
                    autoadmin.limits.tolerance,
                );
                autoadmin.previous_loads = nodes.iter().map(|n| (n.node_id, n.ru)).collect();
                if !settled && !force && autoadmin.unsettled_rounds < MAX_UNSETTLED_ROUNDS {
                    autoadmin.unsettled_rounds += 1;
                    return Ok(Vec::new());
                }
                autoadmin.unsettled_rounds = 0;
                let input = autoadmin.plan_input(nodes);
                let proposals = plan(&input, &autoadmin.limits);
                Ok(autoadmin.act(proposals, ctx))
            },
        )))
    }
}

impl Actor for Autoadmin {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.cluster_view.do_send(Subscribe {
            subscriber: ctx.address().recipient(),
        });
        ctx.add_stream(tokio_stream::wrappers::WatchStream::new(
            self.leadership.subscribe(),
        ));
        ctx.run_interval(self.config.interval, |autoadmin, ctx| {
            if let Some(round) = autoadmin.tick(false, ctx) {
                ctx.spawn(round.map(|result, _, _| {
                    if let Err(e) = result {
                        tracing::debug!("autoadmin round: {e}");
                    }
                }));
            }
        });
    }
}

impl StreamHandler<LeadershipState> for Autoadmin {
    fn handle(&mut self, state: LeadershipState, ctx: &mut Self::Context) {
        if state.serving && state.term != self.term {
            self.begin_term(state.term, ctx);
        } else if !state.serving {
            self.term_started = None;
        }
    }
}

impl Handler<NodeEvent> for Autoadmin {
    type Result = ();

    fn handle(&mut self, event: NodeEvent, _ctx: &mut Self::Context) {
        if let NodeEvent::Recovered { node_id } = event {
            if self.flaps.len() >= MAX_FLAPS {
                self.flaps.pop_front();
            }
            self.flaps.push_back((Instant::now(), node_id));
        }
    }
}

impl Handler<PlanNow> for Autoadmin {
    type Result = ResponseActFuture<Self, Result<Vec<Decision>, AutoadminError>>;

    fn handle(&mut self, _msg: PlanNow, ctx: &mut Self::Context) -> Self::Result {
        match self.tick(true, ctx) {
            Some(round) => round,
            None if !self.leadership.is_serving_leader() => {
                Box::pin(actix::fut::ready(Err(AutoadminError::NotLeader)))
            }
            None => Box::pin(actix::fut::ready(Err(AutoadminError::Unavailable(
                "a planning round is running".into(),
            )))),
        }
    }
}

impl Handler<MoveEnded> for Autoadmin {
    type Result = ();

    fn handle(&mut self, msg: MoveEnded, _ctx: &mut Self::Context) {
        self.executing.remove(&msg.decision_id);
        let (status, outcome) = match msg.outcome {
            Ok(done) => (DecisionStatus::Succeeded, done),
            Err(why) => (DecisionStatus::Failed, why),
        };
        tracing::info!(decision = msg.decision_id, ?status, %outcome, "autoadmin move ended");
        self.log
            .lock()
            .update(msg.decision_id, status, None, Some(outcome), unix_ms());
    }
}

impl Handler<ApproveDecision> for Autoadmin {
    type Result = Result<Decision, AutoadminError>;

    fn handle(&mut self, msg: ApproveDecision, ctx: &mut Self::Context) -> Self::Result {
        if !self.leadership.is_serving_leader() {
            return Err(AutoadminError::NotLeader);
        }
        let decision = self.waiting(msg.id)?;
        // The cluster may have changed while it waited: the region must still be led from
        // where the decision moves it.
        if let Some((region, (from, _))) = decision
            .proposal
            .action
            .region_id()
            .zip(decision.proposal.action.nodes())
        {
            let leader = self.tables.region_route(region).map(|(_, r)| r.leader.id);
            if leader != Some(from) {
                let why = match leader {
                    Some(now) => {
                        format!("no longer possible: node {now} leads region {region} now")
                    }
                    None => format!("no longer possible: region {region} has no route"),
                };
                self.log.lock().update(
                    decision.id,
                    DecisionStatus::Expired,
                    None,
                    Some(why.clone()),
                    unix_ms(),
                );
                return Err(AutoadminError::FailedPrecondition(why));
            }
        }
        let decision = self
            .log
            .lock()
            .update(
                decision.id,
                DecisionStatus::Executing,
                None,
                Some("approved".into()),
                unix_ms(),
            )
            .ok_or(AutoadminError::NotFound(msg.id))?;
        self.execute(&decision, ctx);
        Ok(decision)
    }
}

impl Handler<RejectDecision> for Autoadmin {
    type Result = Result<Decision, AutoadminError>;

    fn handle(&mut self, msg: RejectDecision, _ctx: &mut Self::Context) -> Self::Result {
        if !self.leadership.is_serving_leader() {
            return Err(AutoadminError::NotLeader);
        }
        let decision = self.waiting(msg.id)?;
        let why = msg
            .reason
            .unwrap_or_else(|| "rejected by an operator".into());
        self.log
            .lock()
            .update(
                decision.id,
                DecisionStatus::Rejected,
                None,
                Some(why),
                unix_ms(),
            )
            .ok_or(AutoadminError::NotFound(msg.id))
    }
}

impl Autoadmin {
    /// Decision `id`, if it awaits approval.
    fn waiting(&self, id: u64) -> Result<Decision, AutoadminError> {
        let log = self.log.lock();
        let decision = log.get(id).ok_or(AutoadminError::NotFound(id))?;
        if decision.status != DecisionStatus::Proposed {
            return Err(AutoadminError::FailedPrecondition(format!(
                "decision {id} is {:?}, not awaiting approval",
                decision.status
            )));
        }
        Ok(decision.clone())
    }
}

impl Handler<SetMode> for Autoadmin {
    type Result = ResponseActFuture<Self, Result<Mode, AutoadminError>>;

    fn handle(&mut self, msg: SetMode, _ctx: &mut Self::Context) -> Self::Result {
        if !self.leadership.is_serving_leader() {
            return Box::pin(actix::fut::ready(Err(AutoadminError::NotLeader)));
        }
        let store = self.store.clone();
        let mode = msg.mode;
        let saved = async move {
            store
                .put(KeyValue::new(
                    MODE_KEY.as_bytes().to_vec(),
                    mode.name().as_bytes().to_vec(),
                ))
                .await
        };
        Box::pin(saved.into_actor(self).map(move |saved, autoadmin, _| {
            saved.map_err(|e| AutoadminError::Unavailable(format!("cannot save the mode: {e}")))?;
            *autoadmin.mode.write() = mode;
            // What dry-run recorded was never done: the new mode plans afresh.
            autoadmin.dry_run_at.clear();
            tracing::info!(mode = mode.name(), "autoadmin mode set");
            Ok(mode)
        }))
    }
}

/// How long a caller waits for a planning round it asked for.
pub const PLAN_NOW_TIMEOUT: Duration = Duration::from_secs(10);

/// The Autoadmin and what the APIs read of it without asking it.
#[derive(Clone)]
pub struct AutoadminHandle {
    pub actor: Addr<Autoadmin>,
    pub log: SharedDecisionLog,
    pub mode: Arc<RwLock<Mode>>,
}
