//! `HeartbeatSession`: one actor per datanode heartbeat stream. It owns the stream's two ends:
//! it reads and validates requests, forwards each valid heartbeat to `ClusterView`, and writes
//! every response (acknowledgements, instructions, the closing status) to the outbound channel.
//! It dies with the stream; a bad request closes the stream with `InvalidArgument` and the
//! reason, without touching any other session.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::actors::cluster_view::{
    ClusterView, Instruction, Mailbox, SessionClosed, SessionHandle, SessionOpened, StatsReported,
};
use crate::catalog::model::table_of_region;
use crate::catalog::ownership::{RegionOwnership, RoleMismatches};
use crate::catalog::TableManager;
use crate::election::{Leadership, Standing};
use crate::ids::IdSet;
use crate::metrics::Metrics;
use crate::proto::v1 as pb;
use crate::stats;

// ---- Messages -------------------------------------------------------------------------------

/// Writes an instruction to the node's stream now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverInstruction {
    pub instruction: pb::Instruction,
}

/// Ends the stream with `status` (replaced by a newer stream, metasrv stopping...).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub status: Status,
}

// ---- The actor ------------------------------------------------------------------------------

/// The most instructions one response carries.
pub const INSTRUCTIONS_PER_RESPONSE: usize = 256;
/// How long a closing status waits for room on a full stream before the stream ends without it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The most instructions queued for one node before its stream is closed.
const MAX_QUEUED_INSTRUCTIONS: usize = 100_000;

/// One message for the node's stream, boxed: tokio's channel allocates its slots 32 at a time,
/// and at ~170 bytes a response that was two 5 KiB blocks per stream (100 MB at 10,000 nodes)
/// where 8-byte items take 256 bytes a block.
pub type Outgoing = Box<Result<pb::HeartbeatResponse, Status>>;

pub type Outbound = mpsc::Sender<Outgoing>;

/// What every session of one metasrv shares.
#[derive(Clone)]
pub struct SessionContext {
    pub cluster_id: u64,
    pub heartbeat_interval_millis: u64,
    /// Length of the region leases granted on acknowledgements.
    pub region_lease_millis: u64,
    /// How long a node has to close a stale region.
    pub instruction_timeout: Duration,
    /// How long a node may report a region no route names before it is told to close it.
    pub orphan_region_grace: Duration,
    pub ownership: Arc<RegionOwnership>,
    /// To name the table of a region the node must open again.
    pub tables: Arc<TableManager>,
    pub cluster_view: Addr<ClusterView>,
    /// The instructions in flight: results are resolved here, as they are read.
    pub mailbox: Arc<Mailbox>,
    pub metrics: Arc<Metrics>,
    pub leadership: Arc<Leadership>,
}

pub struct HeartbeatSession {
    session_id: u64,
    cluster_id: u64,
    heartbeat_interval_millis: u64,
    region_lease_millis: u64,
    ownership: Arc<RegionOwnership>,
    cluster_view: Addr<ClusterView>,
    mailbox: Arc<Mailbox>,
    /// A report was handed to ClusterView and not taken yet.
    report_in_flight: bool,
    /// The newest report that came meanwhile (it replaces an older one: see `forward`).
    next_report: Option<StatsReported>,
    outbound: Outbound,
    metrics: Arc<Metrics>,
    /// Set by the first valid heartbeat; the stream may not change it later.
    node_id: Option<u64>,
    /// Stale regions this session already asked the node to close.
    asked_to_close: HashSet<u64>,
    /// Routed regions this session asked the node to open again (it did not report them).
    asked_to_open: HashSet<u64>,
    /// Regions this node was asked to demote or upgrade on this stream (`reconcile_roles`).
    asked_to_demote: HashSet<u64>,
    /// Regions the node reports that no route names, with when this stream first saw each
    /// (at most the regions of one report, which validation caps).
    unrouted_since: HashMap<u64, Instant>,
    orphan_region_grace: Duration,
    /// Instructions waiting for room on the stream (bounded by [`MAX_QUEUED_INSTRUCTIONS`]).
    queued: VecDeque<pb::Instruction>,
    /// A task is waiting for room to write what waits.
    flushing: bool,
    tables: Arc<TableManager>,
    instruction_timeout: Duration,
    leadership: Arc<Leadership>,
}

impl HeartbeatSession {
    /// Instructs this stream's node: registered in the mailbox as written to this stream and
    /// queued here, without a round through ClusterView (which may not have taken this stream
    /// as the node's yet). Written at the next flush; nobody waits for the result.
    fn instruct_node(&mut self, node_id: u64, instruction: Instruction) {
        if self.queued.len() >= MAX_QUEUED_INSTRUCTIONS {
            // Bounded like the instructions of others (see DeliverInstruction): the stream
            // closes at the next delivery; until then these are not sent.
            return;
        }
        let (id, _answer) = self.mailbox.register(
            node_id,
            self.session_id,
            &instruction,
            self.instruction_timeout,
        );
        self.queued.push_back(instruction.to_pb(id));
    }

    /// Regions the node has reported for longer than the grace while no route named them and
    /// no move targeted them (what a refused or failed create opened, also on a node that was
    /// away when it was refused; a drop the node missed): it is told to close them, once.
    fn close_orphans(&mut self, node_id: u64, unrouted: Vec<u64>, now: Instant) {
        if unrouted.is_empty() {
            self.unrouted_since.clear();
            return;
        }
        let current: HashSet<u64> = unrouted.iter().copied().collect();
        self.unrouted_since.retain(|id, _| current.contains(id));
        for region_id in unrouted {
            let since = *self.unrouted_since.entry(region_id).or_insert(now);
            if now.saturating_duration_since(since) < self.orphan_region_grace
                || !self.asked_to_close.insert(region_id)
            {
                continue;
            }
            tracing::warn!(
                node_id,
                region_id,
                "closing an orphan region: no route has named it for {:?}",
                self.orphan_region_grace
            );
            self.instruct_node(node_id, Instruction::CloseRegion { region_id });
        }
    }

    /// Role reconciliation, both ways, for regions no operation holds (a failover or a
    /// migration upgrades its target before the route names it, and downgrades the leader
    /// before the route moves):
    /// - a node that reports leading a region the routes make it follow is told to demote
    ///   (demoting never makes two writers);
    /// - a node that reports following a region the routes make it lead is told to upgrade,
    ///   but only once this term is two leases old (an earlier term's failed operation may have
    ///   left another node a write lease; operations of this term take back what they gave
    ///   before they let the region go) and while the region is not fenced on it.
    ///
    /// Each is asked once per stream while the node goes on reporting so.
    fn reconcile_roles(&mut self, node_id: u64, mismatches: RoleMismatches) {
        let (wrong_leaders, wrong_followers) = (mismatches.leading, mismatches.following);
        self.asked_to_demote
            .retain(|id| wrong_leaders.contains(id) || wrong_followers.contains(id));
        let settled = self
            .ownership
            .term_older_than(Duration::from_millis(2 * self.region_lease_millis));
        let fixes = wrong_leaders
            .into_iter()
            .map(|id| (id, stats::RegionRole::Follower))
            .chain(
                wrong_followers
                    .into_iter()
                    .filter(|_| settled)
                    .map(|id| (id, stats::RegionRole::Leader)),
            );
        for (region_id, routed_role) in fixes {
            // The lock first: an operation that moved the route updated the ownership before
            // it let the region go, so a role read after an unlocked region is current.
            if self.tables.is_locked(region_id)
                || self.ownership.role(node_id, region_id) != Some(routed_role)
                || self.ownership.is_fenced(node_id, region_id)
                || !self.asked_to_demote.insert(region_id)
            {
                continue;
            }
            let instruction = match routed_role {
                stats::RegionRole::Follower => Instruction::DemoteToFollower { region_id },
                stats::RegionRole::Leader => Instruction::UpgradeRegion {
                    region_id,
                    lease_millis: self.region_lease_millis,
                },
            };
            tracing::warn!(
                node_id,
                region_id,
                ?routed_role,
                "the node reports another role than the routes give it: reconciling"
            );
            self.instruct_node(node_id, instruction);
        }
    }

    /// Starts a session on `arbiter` reading `inbound` and writing to `outbound`.
    pub fn start_on<S>(
        arbiter: &actix::ArbiterHandle,
        session_id: u64,
        context: SessionContext,
        inbound: S,
        outbound: Outbound,
    ) -> Addr<Self>
    where
        S: Stream<Item = Result<pb::HeartbeatRequest, Status>> + Send + 'static,
    {
        Self::start_in_arbiter(arbiter, move |ctx| {
            ctx.add_stream(inbound);
            Self {
                session_id,
                cluster_id: context.cluster_id,
                heartbeat_interval_millis: context.heartbeat_interval_millis,
                region_lease_millis: context.region_lease_millis,
                ownership: context.ownership,
                cluster_view: context.cluster_view,
                mailbox: context.mailbox,
                report_in_flight: false,
                next_report: None,
                outbound,
                metrics: context.metrics,
                node_id: None,
                asked_to_close: HashSet::new(),
                asked_to_open: HashSet::new(),
                asked_to_demote: HashSet::new(),
                unrouted_since: HashMap::new(),
                orphan_region_grace: context.orphan_region_grace,
                queued: VecDeque::new(),
                flushing: false,
                tables: context.tables,
                instruction_timeout: context.instruction_timeout,
                leadership: context.leadership,
            }
        })
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            error: None,
        })
    }

    /// Writes an acknowledgement. If the stream is full (the node reads slower than it writes,
    /// or a burst of instructions is on its way to it), the stream's next request is read only
    /// once this acknowledgement is written: the node's own writes then wait on the stream's
    /// flow control, and nothing piles up here however fast it sends. Pausing the reads, rather
    /// than queueing acknowledgements and cutting the stream when too many wait, keeps a node
    /// that reads, only slower than it sends (results-only requests answered one by one while
    /// a 1,024-region create's instructions fill its stream), connected: cutting it failed the
    /// create. A node that reads nothing for a region lease is cut off (its lease has run out
    /// on its side anyway).
    fn send_ack(&mut self, response: pb::HeartbeatResponse, ctx: &mut Context<Self>) {
        let outgoing = match self.outbound.try_send(Box::new(Ok(response))) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(outgoing)) => outgoing,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                ctx.stop();
                return;
            }
        };
        let outbound = self.outbound.clone();
        let patience = Duration::from_millis(self.region_lease_millis.max(1));
        ctx.wait(
            async move { tokio::time::timeout(patience, outbound.reserve_owned()).await }
                .into_actor(self)
                .map(move |room, session, ctx| match room {
                    Ok(Ok(permit)) => {
                        permit.send(outgoing);
                    }
                    // The stream is gone.
                    Ok(Err(_)) => ctx.stop(),
                    Err(_) => {
                        tracing::warn!(session = session.session_id, node = ?session.node_id, ?patience, "node does not read its heartbeat stream; closing it");
                        ctx.stop();
                    }
                }),
        );
    }

    fn refuse(&mut self, reason: String, ctx: &mut Context<Self>) {
        tracing::warn!(session = self.session_id, node = ?self.node_id, %reason, "closing a heartbeat stream on bad input");
        self.metrics
            .heartbeats
            .with_label_values(&["invalid"])
            .inc();
        self.close_with(Status::invalid_argument(reason), ctx);
    }

    /// Ends the stream with `status`. If the stream is full, the status waits a moment for
    /// room (a redirect to the new leader, "replaced", a reason for a refusal are worth a
    /// wait: without them the node only sees its stream end), then the stream ends anyway.
    fn close_with(&mut self, status: Status, ctx: &mut Context<Self>) {
        let outgoing = match self.outbound.try_send(Box::new(Err(status))) {
            Err(mpsc::error::TrySendError::Full(outgoing)) => outgoing,
            _ => {
                ctx.stop();
                return;
            }
        };
        let outbound = self.outbound.clone();
        ctx.wait(
            async move {
                if let Ok(Ok(permit)) =
                    tokio::time::timeout(CLOSE_GRACE, outbound.reserve_owned()).await
                {
                    permit.send(outgoing);
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }

    fn on_request(&mut self, request: pb::HeartbeatRequest, ctx: &mut Context<Self>) {
        let received_at = Instant::now();
        // Checked on every request, not only when the stream opened: an acknowledgement renews
        // region leases, which only the serving leader may grant. A member that lost its
        // leadership closes the stream with a redirect to the leader it knows, even before the
        // ElectionActor closes every session. One that only doubts it (its election lease was
        // not renewed in time) answers without a lease and keeps the stream: a momentary etcd
        // hiccup must not make every datanode reconnect.
        let in_doubt = match self.leadership.standing() {
            Standing::Leading => false,
            Standing::InDoubt => true,
            Standing::NotLeading(redirect) => {
                tracing::info!(session = self.session_id, node = ?self.node_id, "not the leader: closing a heartbeat stream");
                self.close_with(redirect, ctx);
                return;
            }
        };
        let heartbeat = match stats::validate(request, self.cluster_id) {
            Ok(heartbeat) => heartbeat,
            Err(reason) => return self.refuse(reason, ctx),
        };
        match self.node_id {
            None => {
                self.node_id = Some(heartbeat.node_id);
                self.cluster_view.do_send(SessionOpened {
                    node_id: heartbeat.node_id,
                    addr: heartbeat.addr.clone(),
                    instance_id: heartbeat.instance_id.clone(),
                    session: SessionHandle {
                        session_id: self.session_id,
                        deliver: ctx.address().recipient(),
                        close: ctx.address().recipient(),
                    },
                });
            }
            Some(node_id) if node_id != heartbeat.node_id => {
                return self.refuse(
                    format!(
                        "this stream belongs to node {node_id}; it cannot report as node {}",
                        heartbeat.node_id
                    ),
                    ctx,
                );
            }
            Some(_) => {}
        }
        if in_doubt {
            // Stats still count (liveness), but nothing is granted or scheduled.
            return self.acknowledge(heartbeat, received_at, None, "in_doubt", ctx);
        }
        // A report is answered with the lease of the regions the routes give this node; a
        // results-only request leaves the lease as it was.
        let region_lease = heartbeat.report.as_ref().map(|report| {
            let found = self
                .ownership
                .examine(heartbeat.node_id, &report.regions, received_at);
            // A region asked to close and no longer reported may be asked again if it turns
            // up stale again later (it moved back and away).
            if !self.asked_to_close.is_empty() {
                let reported: IdSet = report.regions.iter().map(|r| r.region_id).collect();
                self.asked_to_close.retain(|id| reported.contains(id));
            }
            self.reopen_missing_regions(heartbeat.node_id, found.missing);
            self.reconcile_roles(heartbeat.node_id, found.roles);
            self.close_orphans(heartbeat.node_id, found.unrouted, received_at);
            // Regions the routes now give to others (it was failed over while away): close.
            for region_id in found.stale {
                if self.asked_to_close.insert(region_id) {
                    tracing::info!(
                        node_id = heartbeat.node_id,
                        region_id,
                        "closing a region the node no longer owns"
                    );
                    self.instruct_node(heartbeat.node_id, Instruction::CloseRegion { region_id });
                }
            }
            pb::RegionLease {
                leader_region_ids: found.grant.leader_region_ids,
                follower_region_ids: found.grant.follower_region_ids,
                duration_millis: self.region_lease_millis,
            }
        });
        self.acknowledge(heartbeat, received_at, region_lease, "ok", ctx);
    }

    /// Forwards the stats and answers the request with `region_lease` (None: no grant).
    fn acknowledge(
        &mut self,
        mut heartbeat: stats::Heartbeat,
        received_at: Instant,
        region_lease: Option<pb::RegionLease>,
        outcome: &str,
        ctx: &mut Context<Self>,
    ) {
        // Results first, and here: a create or a failover waits on them, and they must not
        // queue behind 10,000 nodes' reports in ClusterView's mailbox.
        self.mailbox.resolve(
            heartbeat.node_id,
            self.session_id,
            std::mem::take(&mut heartbeat.results),
            received_at,
        );
        self.forward(
            StatsReported {
                session_id: self.session_id,
                heartbeat,
                received_at,
            },
            ctx,
        );
        let response = pb::HeartbeatResponse {
            header: self.header(),
            instructions: Vec::new(),
            heartbeat_interval_millis: self.heartbeat_interval_millis,
            region_lease,
        };
        self.send_ack(response, ctx);
        // Instructions this request gave rise to (instruct_node) follow the acknowledgement.
        self.flush(ctx);
        self.metrics.heartbeats.with_label_values(&[outcome]).inc();
        self.metrics
            .heartbeat_handle_seconds
            .observe(received_at.elapsed().as_secs_f64());
    }
}

impl HeartbeatSession {
    /// Hands `reported` to ClusterView, one at a time: while one waits in its mailbox, the
    /// newest that came meanwhile waits here and replaces an older one (a report is the node's
    /// state as of then; the newest says everything the dropped one said about liveness and
    /// load). A results-only request does not replace a report (its results were resolved
    /// already). So a stream has at most one message in ClusterView's mailbox and one here,
    /// and, unlike waiting for ClusterView before reading the next request, a backlog there
    /// never delays this stream's acknowledgements and results: with 10,000 nodes on a
    /// saturated machine that wait ran past the nodes' acknowledgement timeouts, and they
    /// dropped their streams in the middle of a failover.
    fn forward(&mut self, reported: StatsReported, ctx: &mut Context<Self>) {
        if self.report_in_flight {
            let waiting_is_report = self
                .next_report
                .as_ref()
                .map(|waiting| waiting.heartbeat.report.is_some());
            if replaces_waiting(waiting_is_report, reported.heartbeat.report.is_some()) {
                self.next_report = Some(reported);
            }
            return;
        }
        self.report_in_flight = true;
        ctx.spawn(
            self.cluster_view
                .send(reported)
                .into_actor(self)
                .map(|_, session, ctx| {
                    session.report_in_flight = false;
                    if let Some(next) = session.next_report.take() {
                        session.forward(next, ctx);
                    }
                }),
        );
    }

    /// Regions the routes give the node that it does not report (it restarted, or lost them):
    /// it is asked once per stream to open them again, in the routed role. Reported regions
    /// leave the asked set, so a region lost again later is asked for again.
    fn reopen_missing_regions(&mut self, node_id: u64, missing: Vec<(u64, stats::RegionRole)>) {
        self.asked_to_open
            .retain(|id| missing.iter().any(|(missing_id, _)| missing_id == id));
        for (region_id, role) in missing {
            // An operation moving the region opens, closes and fences it itself.
            if self.tables.is_locked(region_id) || !self.asked_to_open.insert(region_id) {
                continue;
            }
            let Some(entry) = self.tables.entry_by_id(table_of_region(region_id)) else {
                continue;
            };
            tracing::info!(
                node_id,
                region_id,
                ?role,
                "asking a node to open a routed region it does not report"
            );
            self.instruct_node(
                node_id,
                Instruction::OpenRegion {
                    region_id,
                    table: (&entry.info.name).into(),
                    role,
                    lease_millis: self.region_lease_millis,
                },
            );
        }
    }
}

impl Actor for HeartbeatSession {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.metrics.heartbeat_sessions.inc();
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics.heartbeat_sessions.dec();
        if let Some(node_id) = self.node_id {
            tracing::debug!(
                session = self.session_id,
                node_id,
                "heartbeat stream closed"
            );
            self.cluster_view.do_send(SessionClosed {
                node_id,
                session_id: self.session_id,
            });
        }
    }
}

impl StreamHandler<Result<pb::HeartbeatRequest, Status>> for HeartbeatSession {
    fn handle(&mut self, item: Result<pb::HeartbeatRequest, Status>, ctx: &mut Self::Context) {
        match item {
            Ok(request) => self.on_request(request, ctx),
            Err(status) => {
                // The node went away or sent undecodable bytes; tell it why if it still listens.
                tracing::debug!(session = self.session_id, node = ?self.node_id, %status, "heartbeat stream failed");
                self.close_with(status, ctx);
            }
        }
    }
}

impl Handler<DeliverInstruction> for HeartbeatSession {
    type Result = ();

    fn handle(&mut self, msg: DeliverInstruction, ctx: &mut Self::Context) {
        if self.queued.len() >= MAX_QUEUED_INSTRUCTIONS {
            // Bounded: a node this far behind cannot be scheduled; its pending instructions
            // fail with the stream, and it reconnects.
            tracing::warn!(session = self.session_id, node = ?self.node_id, "too many instructions queued for a node; closing its stream");
            self.close_with(
                Status::resource_exhausted(
                    "too many instructions are queued for this node; reconnect",
                ),
                ctx,
            );
            return;
        }
        self.queued.push_back(msg.instruction);
        self.flush(ctx);
    }
}

impl HeartbeatSession {
    /// Writes queued instructions as room frees on the stream, one response per free slot, up
    /// to [`INSTRUCTIONS_PER_RESPONSE`] in one response. A burst (a 1,024-region create, a
    /// node's failover) waits for room instead of overflowing the channel and cutting the
    /// stream, and travels in a few responses instead of one each. Instructions go in
    /// responses of their own: acknowledgements stay one per request, in order (the
    /// datanode's contract); they may overtake queued instructions, which nothing depends on.
    /// One slot at a time: a waiter for several slots would be handed every freed slot first
    /// and starve the acknowledgements (`send_ack`).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.queued.is_empty() {
            return;
        }
        self.flushing = true;
        let outbound = self.outbound.clone();
        ctx.spawn(
            async move { outbound.reserve_owned().await.ok() }
                .into_actor(self)
                .map(|permit, session, ctx| {
                    session.flushing = false;
                    let Some(permit) = permit else {
                        // The stream is gone.
                        ctx.stop();
                        return;
                    };
                    // Instructions may carry a write lease (OpenRegion as leader,
                    // UpgradeRegion): only a leader sure of its election sends any. In doubt
                    // they wait for the next flush (each heartbeat flushes); a member that
                    // stops leading closes the stream and drops them.
                    if !session.leadership.is_serving_leader() {
                        return;
                    }
                    let take = session.queued.len().min(INSTRUCTIONS_PER_RESPONSE);
                    let response = pb::HeartbeatResponse {
                        header: session.header(),
                        instructions: session.queued.drain(..take).collect(),
                        heartbeat_interval_millis: session.heartbeat_interval_millis,
                        region_lease: None,
                    };
                    permit.send(Box::new(Ok(response)));
                    session.flush(ctx);
                }),
        );
    }
}

/// Whether a request's stats (a report, or results only: `incoming_is_report`) take the place
/// of those waiting to go to ClusterView (`None`: nothing waits). The newest wins, except that
/// results alone never displace a report: their results were resolved already, and the report
/// says all the results-only request would (the node was alive then) and its stats too.
fn replaces_waiting(waiting_is_report: Option<bool>, incoming_is_report: bool) -> bool {
    incoming_is_report || waiting_is_report != Some(true)
}

impl Handler<CloseSession> for HeartbeatSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.close_with(msg.status, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::replaces_waiting;

    #[test]
    fn the_newest_report_waits_and_results_alone_never_displace_one() {
        // Nothing waits: whatever comes waits.
        assert!(replaces_waiting(None, true));
        assert!(replaces_waiting(None, false));
        // A newer report replaces an older report or a results-only request.
        assert!(replaces_waiting(Some(true), true));
        assert!(replaces_waiting(Some(false), true));
        // Results alone replace results alone, never a report.
        assert!(replaces_waiting(Some(false), false));
        assert!(!replaces_waiting(Some(true), false));
    }
}
