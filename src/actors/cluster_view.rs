//! `ClusterView`: the leader's global picture of the datanodes. It alone owns, per node, the
//! current heartbeat session, the latest and historical stats (bounded rings), the failure
//! detector and the liveness status; per region, the latest and historical load as reported; and
//! the instruction mailbox (pending instructions with their deadlines). Nobody else touches these:
//! sessions report through `SessionOpened` / `StatsReported` / `SessionClosed`, readers ask with
//! `ListNodes`, and subscribers (the Scheduler) receive `NodeEvent`s.

use crate::clock::unix_ms;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::actors::heartbeat_session::CloseSession;
use crate::catalog::model::Peer;
use crate::catalog::ownership::RegionOwnership;
use crate::failure_detector::{FailureDetectorConfig, PhiAccrualDetector};
use crate::ids::IdMap;
use crate::metrics::Metrics;
use crate::selector::Candidate;
use crate::stats::{
    Heartbeat, InstructionOutcome, NodeStats, RegionRole, RegionStats, ReplicaStats,
};
use crate::store::{KeyValue, KvBackend};

// ---- Messages -------------------------------------------------------------------------------

/// A session received the first valid heartbeat of a node and now speaks for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionOpened {
    pub node_id: u64,
    pub addr: String,
    pub instance_id: String,
    pub session: SessionHandle,
}

/// A session forwards one validated heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StatsReported {
    pub session_id: u64,
    pub heartbeat: Heartbeat,
    pub received_at: Instant,
}

/// A session ended (stream closed, error, replaced).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionClosed {
    pub node_id: u64,
    pub session_id: u64,
}

/// Sends an instruction to a node on its heartbeat stream and waits for its result.
#[derive(Message)]
#[rtype(result = "Result<InstructionOutcome, MailboxError>")]
pub struct SendInstruction {
    pub node_id: u64,
    pub instruction: Instruction,
    /// How long the node has to answer before the instruction is reported as timed out.
    pub timeout: Duration,
}

/// A page of the known nodes, in id order: those after `after`, at most `limit`. At 10,000
/// nodes a listing is answered a page at a time, not in one answer of every node.
#[derive(Clone, Copy, Debug)]
pub struct NodePage {
    pub after: Option<u64>,
    pub limit: usize,
}

impl NodePage {
    /// Every node (in-process callers that need the whole view).
    pub const ALL: NodePage = NodePage {
        after: None,
        limit: usize::MAX,
    };
}

/// One page of a listing by node: `total` nodes are known; `next_after` is where the next
/// page starts (None: this was the last).
#[derive(Clone, Debug, Serialize)]
pub struct Paged<T> {
    pub nodes: Vec<T>,
    pub total: usize,
    pub next_after: Option<u64>,
}

/// Lists known nodes with their status, latest stats and region counts.
#[derive(Message)]
#[rtype(result = "Paged<NodeSnapshot>")]
pub struct ListNodes {
    pub page: NodePage,
}

/// One node with every region it reported (None: unknown node).
#[derive(Message)]
#[rtype(result = "Option<NodeSnapshot>")]
pub struct GetNode {
    pub node_id: u64,
}

/// The nodes that can take new regions now (alive and streaming), with their load: a light
/// query for placement decisions.
#[derive(Message)]
#[rtype(result = "Vec<Candidate>")]
pub struct ListCandidates;

/// Cordons a node (`reason`: it is no candidate for new regions) or uncordons it (`None`).
/// Sent by `registry::set_cordon`, which persists the cordon first.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetCordon {
    pub node_id: u64,
    pub reason: Option<String>,
}

/// Every node as the load planners see it (`crate::cns::snapshot`): its load in request
/// units, learned capacity, CPU share and move candidates. One small record per node.
#[derive(Message)]
#[rtype(result = "Vec<crate::cns::snapshot::NodeBrief>")]
pub struct GetLoadSnapshot;

/// Each node's latest `samples` stats samples, oldest first (the dashboard's load heatmap).
#[derive(Message)]
#[rtype(result = "Paged<NodeLoad>")]
pub struct GetLoadHistory {
    pub samples: usize,
    pub page: NodePage,
}

/// A node's recent load, as `/v1/load` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeLoad {
    pub id: u64,
    pub addr: String,
    pub status: NodeStatus,
    pub samples: Vec<NodeSample>,
}

/// The stats history of one node, oldest first (empty for an unknown node).
#[derive(Message)]
#[rtype(result = "Vec<NodeSample>")]
pub struct GetNodeHistory {
    pub node_id: u64,
}

/// When the node's last possible region lease ends, by this metasrv's clock: the last request
/// it sent (each acknowledgement may renew leases) plus `region_lease`. `None` if this leader
/// never heard from the node (then no lease of it can be longer than one from a previous
/// leader, which the caller bounds separately).
#[derive(Message)]
#[rtype(result = "Option<Instant>")]
pub struct GetLeaseExpiry {
    pub node_id: u64,
    pub region_lease: Duration,
}

/// What the node's last full report this term said of its followers: `None` if it sent none
/// this term (a node a new leader never heard from), so nothing is known of their sync state.
#[derive(Message)]
#[rtype(result = "Option<Vec<ReplicaStats>>")]
pub struct GetReplicaReport {
    pub node_id: u64,
}

/// Registers a subscriber for node liveness events.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub subscriber: Recipient<NodeEvent>,
}

/// Closes every session (metasrv is stopping or losing leadership) with `status` (a redirect
/// naming the new leader when it is known).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAllSessions {
    pub status: tonic::Status,
}

/// Forgets every node, region and pending instruction (leadership changed: the view is rebuilt
/// from the heartbeats that reach this member as leader, and from [`SeedNodes`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResetView {
    /// The term that begins (0 when leadership is lost). Each term tags its instruction ids
    /// with a random 32-bit epoch in their high bits: term numbers are counted per member
    /// (every member's first term is 1, and a restarted embedded store starts again), so a
    /// late answer to another leader's or another term's instruction must not match by term.
    pub term: u64,
    /// The persisted cordons, read before the term serves (none when leadership is lost):
    /// no placement of the term can see a cordoned node as a candidate.
    pub cordons: Vec<Cordon>,
    /// The registered datanodes, read before the term serves (none when leadership is lost):
    /// seeded as [`SeedNodes`] would, so a stream that opens with the registration on record
    /// writes nothing.
    pub registered: Vec<RegisteredNode>,
}

/// A registered datanode (from `__meta/node/*`), for seeding a new term's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredNode {
    pub id: u64,
    pub addr: String,
    pub instance_id: String,
}

/// Adds the registered nodes this term has not heard from: they are watched by the failure
/// detector from now on (silent for `seed_grace` past now, they die like any node that stopped
/// heartbeating), so that a node that died just before a leader change is failed over too.
/// Nodes already known are left as they are.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SeedNodes {
    pub nodes: Vec<RegisteredNode>,
}

/// The nodes the failure detector declared dead.
#[derive(Message)]
#[rtype(result = "Vec<DeadNode>")]
pub struct ListDeadNodes;

/// A node declared dead, and for how long this leader has not heard from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadNode {
    pub node_id: u64,
    pub silent_for: Duration,
}

/// A change in a node's liveness, published to subscribers.
#[derive(Message, Clone, Debug, PartialEq)]
#[rtype(result = "()")]
pub enum NodeEvent {
    /// phi crossed the suspect threshold: the node may be failing; nothing is moved yet.
    Suspect { node_id: u64, phi: f64 },
    /// phi crossed the failure threshold: the node is considered dead.
    Dead { node_id: u64, phi: f64 },
    /// A suspected or dead node heartbeats again.
    Recovered { node_id: u64 },
}

// ---- Domain types ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Alive,
    Suspect,
    Dead,
}

/// A node as `/v1/nodes` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSnapshot {
    pub id: u64,
    pub addr: String,
    pub instance_id: String,
    pub status: NodeStatus,
    pub connected: bool,
    pub last_heartbeat_unix_ms: u64,
    pub phi: f64,
    pub stats: Option<NodeStats>,
    /// Regions in the node's last report, by role.
    pub leader_regions: u32,
    pub follower_regions: u32,
    /// The regions themselves: only for one node (`GetNode`), never in a listing (a million
    /// regions would be a 100 MB answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Arc<Vec<RegionStats>>>,
    pub history_len: usize,
    /// Why the node takes no new regions, if it is cordoned (by a drain or an operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cordoned: Option<String>,
}

/// Tuning of the ClusterView.
#[derive(Clone, Debug)]
pub struct ClusterViewConfig {
    pub heartbeat_interval: Duration,
    pub failure_detector: FailureDetectorConfig,
    /// Samples kept per node (at 1 s heartbeats, 120 is two minutes).
    pub node_history: usize,
    /// Reports a region's load average spans (see [`RegionLoad`]).
    pub region_history: usize,
    /// How a region's report becomes request units (the load planners' unit).
    pub ru_prices: crate::cns::unit::RuPrices,
    /// How long a registered node a new term has not heard from yet has to reach it before
    /// its silence counts (a region lease: what an earlier leader granted ends by then).
    pub seed_grace: Duration,
}

mod backlog;
mod instruction;
mod load;
pub mod mailbox;
mod queries;
mod reconnection;
mod registry;

use crate::cns::snapshot::{Best, RegionBrief, CANDIDATES_PER_NODE};
use backlog::Backlog;
pub use instruction::{Instruction, MailboxError, SessionHandle};
use load::{LeaderLoads, NodeHistory};
pub use load::{NodeSample, RegionLoad};
pub use mailbox::Mailbox;
use reconnection::Reconnections;
use registry::Registration;
pub use registry::{
    load_cordons, load_registered_nodes, node_key, set_cordon, Cordon, CORDON_PREFIX, NODE_PREFIX,
};

// ---- The actor ------------------------------------------------------------------------------

struct NodeEntry {
    addr: String,
    instance_id: String,
    status: NodeStatus,
    detector: PhiAccrualDetector,
    session: Option<SessionHandle>,
    latest: Option<NodeStats>,
    history: NodeHistory,
    last_heartbeat_unix_ms: u64,
    /// Shared with `GetNode` answers: an answer clones a pointer, not every region.
    regions: Arc<Vec<RegionStats>>,
    /// Regions of the last report by role (counted once per report, read by every listing).
    leader_regions: u32,
    follower_regions: u32,
    /// The replica states in the node's last report (for the regions it leads).
    replicas: Vec<ReplicaStats>,
    /// The load of the routed regions it leads, as of its last report.
    loads: LeaderLoads,
    /// The load planners' view of the last report: RU per second of all its routed regions,
    /// their total size, and its hottest and coldest leader regions.
    ru: f64,
    size: u64,
    hottest: Vec<RegionBrief>,
    coldest: Vec<RegionBrief>,
    /// When the last request from the node arrived: every acknowledgement may have renewed
    /// its region leases, so its leases last at most `region_lease` past this (metasrv's clock).
    last_request_at: Option<Instant>,
    /// Seeded at the term's start and not heard from since: its silence counts only once the
    /// term's reconnections settled (see [`Reconnections`]).
    awaiting_first_contact: bool,
}

impl NodeEntry {
    /// A node just heard of (or seeded), alive, with no session, stats or regions yet.
    fn new(addr: String, instance_id: String, detector: PhiAccrualDetector) -> Self {
        Self {
            addr,
            instance_id,
            status: NodeStatus::Alive,
            detector,
            session: None,
            latest: None,
            history: NodeHistory::default(),
            last_heartbeat_unix_ms: 0,
            regions: Arc::default(),
            leader_regions: 0,
            follower_regions: 0,
            replicas: Vec::new(),
            loads: LeaderLoads::default(),
            ru: 0.0,
            size: 0,
            hottest: Vec::new(),
            coldest: Vec::new(),
            last_request_at: None,
            awaiting_first_contact: false,
        }
    }
}

pub struct ClusterView {
    config: ClusterViewConfig,
    store: Arc<dyn KvBackend>,
    /// Told of every OpenRegion as leader a node confirmed (a first write lease).
    ownership: Arc<RegionOwnership>,
    metrics: Arc<Metrics>,
    /// The monotonic origin of detector times.
    epoch: Instant,
    nodes: IdMap<NodeEntry>,
    /// Entries in every node's [`LeaderLoads`] (the `region_histories` gauge).
    region_loads: usize,
    subscribers: Vec<Recipient<NodeEvent>>,
    /// The instructions in flight (shared with the sessions and the operations); its
    /// timeouts are swept here every tenth of an interval.
    mailbox: Arc<Mailbox>,
    /// Cordoned nodes (why): never candidates for new regions. Persisted by whoever cordons
    /// (a drain, an operator) and seeded again at the start of every term.
    cordoned: HashMap<u64, String>,
    /// This term's reconnections: when seeded nodes' silence starts to count.
    reconnections: Reconnections,
    /// How far behind the reports it has taken are: liveness is judged as of them.
    backlog: Backlog,
    /// When the log last said the view was behind.
    last_lag_warning: Option<Instant>,
}

/// A report that waited this long in the mailbox is worth a line in the log.
const LAG_WORTH_A_WARNING: Duration = Duration::from_millis(250);

impl ClusterView {
    pub fn new(
        config: ClusterViewConfig,
        store: Arc<dyn KvBackend>,
        ownership: Arc<RegionOwnership>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            mailbox: Arc::new(Mailbox::new(ownership.clone(), metrics.clone())),
            config,
            store,
            ownership,
            metrics,
            epoch: Instant::now(),
            nodes: IdMap::default(),
            region_loads: 0,
            subscribers: Vec::new(),
            cordoned: HashMap::new(),
            reconnections: Reconnections::default(),
            backlog: Backlog::default(),
            last_lag_warning: None,
        }
    }

    fn ms_since_epoch(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0
    }

    fn publish(&mut self, event: NodeEvent) {
        tracing::info!(?event, "node liveness changed");
        self.subscribers.retain(|s| s.connected());
        for subscriber in &self.subscribers {
            subscriber.do_send(event.clone());
        }
    }

    /// Publishes how long a report waited in the mailbox, and says so in the log (once a second
    /// at most) when it waited long enough to slow liveness and instructions down.
    fn note_lag(&mut self, lag: Duration, now: Instant) {
        self.metrics.cluster_view_lag_ms.set(lag.as_millis() as i64);
        if lag >= LAG_WORTH_A_WARNING
            && self
                .last_lag_warning
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            self.last_lag_warning = Some(now);
            tracing::warn!(
                lag_ms = lag.as_millis() as u64,
                "the cluster view is behind the heartbeats"
            );
        }
    }

    /// The instructions in flight, for the sessions and the operations to share.
    pub fn mailbox(&self) -> Arc<Mailbox> {
        self.mailbox.clone()
    }

    /// Re-evaluates phi of every node that is not already dead.
    fn check_liveness(&mut self) {
        let wall = Instant::now();
        // As of the reports taken so far: one still in the mailbox is no silence.
        let now = self.ms_since_epoch(self.backlog.judge_at(wall));
        let threshold = self.config.failure_detector.threshold;
        let suspect = self.config.failure_detector.suspect_threshold;
        let mut events = Vec::new();
        let reconnecting = !self.reconnections.settled(wall, self.config.seed_grace);
        for (&node_id, node) in &mut self.nodes {
            if node.status == NodeStatus::Dead || (reconnecting && node.awaiting_first_contact) {
                continue;
            }
            let phi = node.detector.phi(now);
            if phi >= threshold {
                node.status = NodeStatus::Dead;
                // Its regions move: their load starts over on their new leaders.
                self.region_loads -= node.loads.len();
                node.loads.clear();
                events.push(NodeEvent::Dead { node_id, phi });
            } else if phi >= suspect && node.status == NodeStatus::Alive {
                node.status = NodeStatus::Suspect;
                events.push(NodeEvent::Suspect { node_id, phi });
            }
        }
        self.metrics.region_histories.set(self.region_loads as i64);
        for event in events {
            self.publish(event);
        }
        self.update_status_gauges();
    }

    fn update_status_gauges(&self) {
        let mut counts = [0i64; 3];
        for node in self.nodes.values() {
            counts[node.status as usize] += 1;
        }
        for (status, count) in ["alive", "suspect", "dead"].iter().zip(counts) {
            self.metrics.nodes.with_label_values(&[status]).set(count);
        }
    }

    /// Persists the node's registration; only on first sight or when address or instance
    /// change, so heartbeats themselves never touch the KV.
    fn persist_registration(&self, node_id: u64, addr: &str, instance_id: &str) {
        let value = serde_json::to_vec(&Registration {
            id: node_id,
            addr: addr.to_owned(),
            instance_id: instance_id.to_owned(),
            registered_at_unix_ms: unix_ms(),
        })
        // A struct of numbers and strings always serializes.
        .unwrap_or_default();
        let store = self.store.clone();
        // A task of its own, not a future of this actor's context: actix polls every such
        // future each time the actor wakes, and 10,000 nodes register at once.
        actix_rt::spawn(async move {
            if let Err(e) = store.put(KeyValue::new(node_key(node_id), value)).await {
                tracing::warn!(node_id, "cannot persist node registration: {e}");
            }
        });
    }
}

/// How often grants that can no longer matter are forgotten, and loads of regions the routes
/// no longer give their node dropped.
const PRUNE_PERIOD: Duration = Duration::from_secs(10);

impl ClusterView {
    /// Drops the loads of regions the routes no longer give the node that reports them (a
    /// dropped table whose close the node missed, a leader a migration left behind): a
    /// region is checked against the routes when it arrives in a node's report, not while it
    /// stays there. Each node is looked up in its own routed regions.
    fn prune_loads(&mut self) {
        for (&node_id, node) in &mut self.nodes {
            if node.loads.is_empty() {
                continue;
            }
            let before = node.loads.len();
            let routed = self.ownership.routed_to(node_id);
            node.loads.retain(|region_id| {
                routed
                    .as_ref()
                    .is_some_and(|regions| regions.contains_key(&region_id))
            });
            drop(routed);
            self.region_loads -= before - node.loads.len();
        }
        self.metrics.region_histories.set(self.region_loads as i64);
    }
}

impl Actor for ClusterView {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Check often enough that detection lags phi by at most a tenth of an interval.
        let period = (self.config.heartbeat_interval / 10).max(Duration::from_millis(10));
        ctx.run_interval(period, |view, _| view.check_liveness());
        ctx.run_interval(period, |view, _| view.mailbox.expire(Instant::now()));
        ctx.run_interval(PRUNE_PERIOD, |view, _| {
            view.ownership.forget_old_grants(Instant::now());
            view.prune_loads();
        });
    }
}

impl Handler<SessionOpened> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: SessionOpened, _ctx: &mut Self::Context) {
        let SessionOpened {
            node_id,
            addr,
            instance_id,
            session,
        } = msg;
        // Instructions go to the newest stream; those written to the one it replaces fail.
        self.mailbox.set_session(node_id, Some(session.clone()));
        let changed = match self.nodes.get_mut(&node_id) {
            Some(node) => {
                if std::mem::take(&mut node.awaiting_first_contact) {
                    self.reconnections.arrived(Instant::now());
                }
                if let Some(old) = node.session.replace(session.clone()) {
                    if old.session_id != session.session_id {
                        tracing::info!(
                            node_id,
                            old = old.session_id,
                            new = session.session_id,
                            "a newer stream replaces the node's session"
                        );
                        old.close.do_send(CloseSession {
                            status: tonic::Status::aborted(
                                "replaced by a newer heartbeat stream of the same node",
                            ),
                        });
                    }
                }
                let changed = node.addr != addr || node.instance_id != instance_id;
                if node.instance_id != instance_id || node.status == NodeStatus::Dead {
                    if node.instance_id != instance_id {
                        tracing::info!(node_id, %addr, old = %node.instance_id, new = %instance_id, "node restarted with a new instance");
                    }
                    // A fresh start: the silence while it was down must not widen the detector's
                    // tolerance for the next failure.
                    node.detector = PhiAccrualDetector::new(
                        &self.config.failure_detector,
                        self.config.heartbeat_interval,
                    );
                }
                node.addr = addr.clone();
                node.instance_id = instance_id.clone();
                changed
            }
            None => {
                tracing::info!(node_id, %addr, %instance_id, "node registered");
                self.reconnections.arrived(Instant::now());
                let detector = PhiAccrualDetector::new(
                    &self.config.failure_detector,
                    self.config.heartbeat_interval,
                );
                let mut entry = NodeEntry::new(addr.clone(), instance_id.clone(), detector);
                entry.session = Some(session);
                self.nodes.insert(node_id, entry);
                true
            }
        };
        if changed {
            self.persist_registration(node_id, &addr, &instance_id);
        }
        // The status gauges follow at the next liveness check (a tenth of an interval): counting
        // every node at every stream opened was quadratic when 10,000 reconnect at once.
    }
}

impl Handler<StatsReported> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: StatsReported, _ctx: &mut Self::Context) {
        let StatsReported {
            session_id,
            heartbeat,
            received_at,
        } = msg;
        let now_ms = self.ms_since_epoch(received_at);
        let taken_at = Instant::now();
        self.backlog.taken(received_at, taken_at);
        self.note_lag(taken_at.saturating_duration_since(received_at), taken_at);
        let at_unix_ms = unix_ms();
        let Some(node) = self.nodes.get_mut(&heartbeat.node_id) else {
            return;
        };
        // A replaced session may still deliver a last message; only the current one counts.
        if node.session.as_ref().map(|s| s.session_id) != Some(session_id) {
            return;
        }
        // The detector models the periodic heartbeat: extra requests (instruction results, the
        // report a node sends on reconnecting) closer than half an interval to the previous
        // sample would skew its statistics and slow detection, so they are not samples.
        let min_gap_ms = self.config.heartbeat_interval.as_secs_f64() * 500.0;
        if node
            .detector
            .last_heartbeat_ms()
            .is_none_or(|last| now_ms - last >= min_gap_ms)
        {
            node.detector.heartbeat(now_ms);
        }
        node.last_request_at = Some(received_at);
        node.last_heartbeat_unix_ms = at_unix_ms;
        let recovered = node.status != NodeStatus::Alive;
        node.status = NodeStatus::Alive;
        let node_id = heartbeat.node_id;
        // Instruction results were resolved by the session, through the mailbox.
        if let Some(report) = heartbeat.report {
            // A node's leader regions keep their load with the node (`LeaderLoads`): folding a
            // report in walks it in step with the report. Only a region the node did not lead
            // at its last report asks whether the routes give it to this node (ids come from
            // the network: a node reporting regions no route gives it gets no entry for them;
            // one being moved here gets one once the route names it).
            let window = self.config.region_history;
            let seconds = report
                .period_ms
                .map_or(self.config.heartbeat_interval.as_secs_f64(), |ms| {
                    ms as f64 / 1000.0
                })
                .max(0.001);
            let prices = &self.config.ru_prices;
            let mut ru_now = 0.0;
            let mut leaders = Vec::with_capacity(report.regions.len());
            for region in &report.regions {
                let ru = prices.units(
                    region.rcus,
                    region.wcus,
                    region.cpu_time_ms.into(),
                    region.scanned_bytes,
                ) / seconds;
                // Every copy's work counts toward what the node served (its capacity is
                // learned from it), but a region's load is its leader's: a follower's report
                // would fold another copy's (smaller) load into the same average, and moving
                // a region moves what its leader serves.
                ru_now += ru;
                if region.role == RegionRole::Leader {
                    leaders.push((region, ru));
                }
            }
            let leader_count = leaders.len();
            let Some(node) = self.nodes.get_mut(&node_id) else {
                return;
            };
            let held_before = node.loads.len();
            let ownership = &self.ownership;
            let mut routed_here = None;
            node.loads.fold(leaders, at_unix_ms, window, |region_id| {
                routed_here
                    .get_or_insert_with(|| ownership.routed_to(node_id))
                    .as_ref()
                    .is_some_and(|regions| regions.contains_key(&region_id))
            });
            drop(routed_here);
            self.region_loads = self.region_loads + node.loads.len() - held_before;
            let (mut ru_avg, mut size) = (0.0, 0u64);
            let mut hottest = Best::hottest(CANDIDATES_PER_NODE);
            let mut coldest = Best::coldest(CANDIDATES_PER_NODE);
            for (region_id, load) in node.loads.iter() {
                let average = f64::from(load.avg_ru);
                ru_avg += average;
                size = size.saturating_add(load.approximate_size);
                hottest.offer(*region_id, average, load.approximate_size);
                coldest.offer(*region_id, average, load.approximate_size);
            }
            node.history
                .push(at_unix_ms, &report.node, ru_now, self.config.node_history);
            node.latest = Some(report.node);
            node.ru = ru_avg;
            node.size = size;
            node.hottest = hottest.into_vec();
            node.coldest = coldest.into_vec();
            self.metrics.region_histories.set(self.region_loads as i64);
            node.leader_regions = leader_count as u32;
            node.follower_regions = (report.regions.len() - leader_count) as u32;
            node.regions = Arc::new(report.regions);
            node.replicas = report.replicas;
        }
        if recovered {
            self.publish(NodeEvent::Recovered { node_id });
        }
    }
}

impl Handler<SessionClosed> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: SessionClosed, _ctx: &mut Self::Context) {
        if let Some(node) = self.nodes.get_mut(&msg.node_id) {
            if node.session.as_ref().map(|s| s.session_id) == Some(msg.session_id) {
                node.session = None;
            }
        }
        self.mailbox.stream_ended(msg.node_id, msg.session_id);
    }
}

impl Handler<SendInstruction> for ClusterView {
    type Result = ResponseFuture<Result<InstructionOutcome, MailboxError>>;

    fn handle(&mut self, msg: SendInstruction, _ctx: &mut Self::Context) -> Self::Result {
        let SendInstruction {
            node_id,
            instruction,
            timeout,
        } = msg;
        Box::pin(self.mailbox.send(node_id, instruction, timeout))
    }
}

impl Handler<SetCordon> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: SetCordon, _ctx: &mut Self::Context) {
        match msg.reason {
            Some(reason) => self.cordoned.insert(msg.node_id, reason),
            None => self.cordoned.remove(&msg.node_id),
        };
    }
}

impl Handler<Subscribe> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        self.subscribers.push(msg.subscriber);
    }
}

impl Handler<ResetView> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: ResetView, _ctx: &mut Self::Context) {
        // Every instruction in flight ends; this term's ids get a new epoch.
        self.mailbox.reset(msg.term);
        for node in self.nodes.values_mut() {
            if let Some(session) = node.session.take() {
                session.close.do_send(CloseSession {
                    status: tonic::Status::unavailable("metasrv leadership changed"),
                });
            }
        }
        self.nodes.clear();
        self.region_loads = 0;
        self.metrics.region_histories.set(0);
        self.backlog = Backlog::default();
        self.reconnections = if msg.term == 0 {
            Reconnections::default()
        } else {
            Reconnections::term_started(Instant::now())
        };
        self.cordoned = msg
            .cordons
            .into_iter()
            .map(|cordon| (cordon.node_id, cordon.reason))
            .collect();
        self.seed_nodes(msg.registered);
        self.update_status_gauges();
    }
}

impl Handler<SeedNodes> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: SeedNodes, _ctx: &mut Self::Context) {
        self.seed_nodes(msg.nodes);
    }
}

impl ClusterView {
    /// Watches `nodes` this term has not heard from (see [`SeedNodes`]).
    fn seed_nodes(&mut self, nodes: Vec<RegisteredNode>) {
        let now = Instant::now();
        let silent_from = self.ms_since_epoch(now + self.config.seed_grace);
        let mut seeded = 0;
        for node in nodes {
            if self.nodes.contains_key(&node.id) {
                continue;
            }
            let mut detector = PhiAccrualDetector::new(
                &self.config.failure_detector,
                self.config.heartbeat_interval,
            );
            // A heartbeat at the end of the grace: phi stays 0 until then and grows after.
            detector.heartbeat(silent_from);
            let mut entry = NodeEntry::new(node.addr, node.instance_id, detector);
            // Leases an earlier leader granted it began before this term did, so they end
            // within one lease of now (and this leader granted none).
            entry.last_request_at = Some(now);
            entry.awaiting_first_contact = true;
            self.nodes.insert(node.id, entry);
            seeded += 1;
        }
        if seeded > 0 {
            tracing::info!(
                seeded,
                "watching registered nodes this term has not heard from yet"
            );
            self.update_status_gauges();
        }
    }
}

impl Handler<CloseAllSessions> for ClusterView {
    type Result = ();

    fn handle(&mut self, msg: CloseAllSessions, _ctx: &mut Self::Context) {
        for (node_id, node) in self.nodes.iter_mut() {
            if let Some(session) = node.session.take() {
                self.mailbox.set_session(*node_id, None);
                session.close.do_send(CloseSession {
                    status: msg.status.clone(),
                });
            }
        }
    }
}
