//! The instructions in flight to datanodes, shared rather than kept behind ClusterView's
//! mailbox. Operations send through it directly, and each heartbeat session resolves the results
//! its node sends the moment it reads them. When every instruction and every result went through
//! ClusterView's one mailbox, they queued behind the reports of 10,000 nodes: a failover of
//! 10,000 regions on a saturated machine saw its confirmations take up to 2.3 s, and nodes whose
//! results waited there missed their own acknowledgement timeouts and dropped their streams.
//!
//! ClusterView still decides which stream is a node's (it tells the mailbox), sweeps the
//! timeouts and starts each term's ids.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::instruction::{Deadlines, MailboxError, SessionHandle};
use super::Instruction;
use crate::actors::heartbeat_session::DeliverInstruction;
use crate::catalog::ownership::RegionOwnership;
use crate::ids::{IdMap, IdSet};
use crate::metrics::Metrics;
use crate::stats::{InstructionOutcome, RegionRole};

/// An instruction sent and not yet answered.
struct PendingInstruction {
    node_id: u64,
    /// OpenRegion as leader or UpgradeRegion: the node may hold a write lease once it carries
    /// it out, counted from its receipt, which this leader learns only from the result (if the
    /// answer never comes), which a failover of the node must wait out.
    opens_leader: bool,
    /// The stream it was written to: if that stream ends, no answer can come (a datanode
    /// answers on the stream it is on, and requests of a broken stream are lost).
    session_id: u64,
    kind: &'static str,
    /// How long the node had to answer (for the timeout's message).
    timeout: Duration,
    reply: oneshot::Sender<Result<InstructionOutcome, MailboxError>>,
}

#[derive(Default)]
struct State {
    /// Each node's current stream, as ClusterView decided.
    sessions: IdMap<SessionHandle>,
    pending: IdMap<PendingInstruction>,
    /// The pending instructions of each stream (by node and session id), so that a stream's end fails
    /// its own without a walk over every node's (10,000 streams ending at once while a
    /// failover has 10,000 instructions out would be 10^8 steps).
    by_stream: HashMap<(u64, u64), IdSet, foldhash::fast::RandomState>,
    /// When each pending instruction times out.
    deadlines: Deadlines,
    /// The low 32 bits of the next instruction id; the high 32 are the term's epoch.
    next_instruction_id: u64,
    /// The high 32 bits of this term's instruction ids.
    id_epoch: u64,
}

impl State {
    /// Takes instruction `id` out of the pending ones (and its stream's index).
    fn take(&mut self, id: u64) -> Option<PendingInstruction> {
        let pending = self.pending.remove(&id)?;
        let stream = (pending.node_id, pending.session_id);
        if let Some(ids) = self.by_stream.get_mut(&stream) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_stream.remove(&stream);
            }
        }
        Some(pending)
    }
}

pub struct Mailbox {
    state: Mutex<State>,
    /// Told of every lease-granting instruction sent and resolved.
    ownership: Arc<RegionOwnership>,
    metrics: Arc<Metrics>,
}

impl Mailbox {
    pub fn new(ownership: Arc<RegionOwnership>, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(State {
                next_instruction_id: 1,
                ..State::default()
            }),
            ownership,
            metrics,
        }
    }

    /// Writes `instruction` to `node_id`'s current stream; the future resolves with its result,
    /// or why none came (no stream, `timeout`, the stream ended, a new term). The instruction
    /// is on its way when this returns: awaiting the future only waits for the answer.
    pub fn send(
        &self,
        node_id: u64,
        instruction: Instruction,
        timeout: Duration,
    ) -> impl Future<Output = Result<InstructionOutcome, MailboxError>> + Send + 'static {
        let written = {
            let mut state = self.state.lock();
            let session = state.sessions.get(&node_id).cloned();
            // Looked up and registered under one lock: a stream replaced in between would
            // get an instruction whose failure waits for that stream's end.
            session.map(|session| {
                let registered = self.register_in(
                    &mut state,
                    node_id,
                    session.session_id,
                    &instruction,
                    timeout,
                );
                (session, registered)
            })
        };
        let written = written.map(|(session, (id, answer))| {
            session.deliver.do_send(DeliverInstruction {
                instruction: instruction.to_pb(id),
            });
            answer
        });
        if written.is_none() {
            self.metrics
                .instructions
                .with_label_values(&[instruction.kind(), "not_connected"])
                .inc();
        }
        async move {
            match written {
                Some(answer) => answer.await,
                None => Err(MailboxError::NodeNotConnected(node_id)),
            }
        }
    }

    /// Registers `instruction` as written to stream `session_id` of `node_id` (the caller
    /// writes it, with the returned id); the future resolves with its result. A session uses
    /// this for what it instructs its own node: it need not wait until ClusterView has made it
    /// the node's stream.
    pub fn register(
        &self,
        node_id: u64,
        session_id: u64,
        instruction: &Instruction,
        timeout: Duration,
    ) -> (
        u64,
        impl Future<Output = Result<InstructionOutcome, MailboxError>> + Send + 'static,
    ) {
        let mut state = self.state.lock();
        self.register_in(&mut state, node_id, session_id, instruction, timeout)
    }

    /// [`Self::register`], with the state locked by the caller.
    fn register_in(
        &self,
        state: &mut State,
        node_id: u64,
        session_id: u64,
        instruction: &Instruction,
        timeout: Duration,
    ) -> (
        u64,
        impl Future<Output = Result<InstructionOutcome, MailboxError>> + Send + 'static,
    ) {
        let kind = instruction.kind();
        let (reply, answer) = oneshot::channel();
        let id = (state.id_epoch << 32) | (state.next_instruction_id & 0xffff_ffff);
        state.next_instruction_id = (state.next_instruction_id + 1) & 0xffff_ffff;
        if state.next_instruction_id == 0 {
            state.next_instruction_id = 1;
        }
        // Both start a first write lease on the node, counted from its receipt: noted before
        // the node can receive it.
        let opens_leader = match instruction {
            Instruction::OpenRegion {
                region_id,
                role: RegionRole::Leader,
                ..
            }
            | Instruction::UpgradeRegion { region_id, .. } => {
                self.ownership.lead_grant_sent(node_id, id, *region_id);
                true
            }
            _ => false,
        };
        state
            .by_stream
            .entry((node_id, session_id))
            .or_default()
            .insert(id);
        state.pending.insert(
            id,
            PendingInstruction {
                node_id,
                opens_leader,
                session_id,
                kind,
                timeout,
                reply,
            },
        );
        // A timeout too long to add (a misconfiguration) never fires; the stream's end or a
        // new term still ends the instruction.
        if let Some(deadline) = Instant::now().checked_add(timeout) {
            state.deadlines.push(deadline, id);
        }
        let State {
            pending, deadlines, ..
        } = state;
        deadlines.compact(pending.len(), |id| pending.contains_key(&id));
        tracing::debug!(node_id, instruction_id = id, kind, "instruction sent");
        let answer = async move { answer.await.unwrap_or(Err(MailboxError::Closed(node_id))) };
        (id, answer)
    }

    /// Results `node_id` sent on stream `session_id`, received at `received_at`: each answers
    /// an instruction written to that stream.
    pub fn resolve(
        &self,
        node_id: u64,
        session_id: u64,
        results: Vec<InstructionOutcome>,
        received_at: Instant,
    ) {
        if results.is_empty() {
            return;
        }
        let mut answered = Vec::with_capacity(results.len());
        {
            let mut state = self.state.lock();
            for outcome in results {
                match state.pending.get(&outcome.instruction_id) {
                    // A datanode answers on the stream it was instructed on.
                    Some(pending)
                        if pending.node_id == node_id && pending.session_id == session_id =>
                    {
                        if let Some(pending) = state.take(outcome.instruction_id) {
                            answered.push((pending, outcome));
                        }
                    }
                    Some(_) => {
                        // Another node, or another stream, answered for this id: keep waiting
                        // for the right one (or the stream's end).
                        tracing::warn!(
                            node_id,
                            session_id,
                            instruction_id = outcome.instruction_id,
                            "result from the wrong node or stream ignored"
                        );
                    }
                    None => tracing::debug!(
                        node_id,
                        instruction_id = outcome.instruction_id,
                        "result for an unknown or expired instruction"
                    ),
                }
            }
        }
        for (pending, outcome) in answered {
            if pending.opens_leader {
                self.ownership
                    .lead_grant_resolved(node_id, outcome.instruction_id, received_at);
            }
            let label = if outcome.success {
                "success"
            } else {
                "failure"
            };
            self.metrics
                .instructions
                .with_label_values(&[pending.kind, label])
                .inc();
            let _ = pending.reply.send(Ok(outcome));
        }
    }

    /// Makes `session` the stream instructions to `node_id` go to (`None`: it has none). The
    /// instructions written to a stream it replaces fail: their answers cannot come.
    pub fn set_session(&self, node_id: u64, session: Option<SessionHandle>) {
        let new_id = session.as_ref().map(|s| s.session_id);
        let replaced = {
            let mut state = self.state.lock();
            match session {
                Some(session) => state.sessions.insert(node_id, session),
                None => state.sessions.remove(&node_id),
            }
        };
        // The same stream told again is not replaced.
        if let Some(old) = replaced.filter(|old| Some(old.session_id) != new_id) {
            self.stream_ended(node_id, old.session_id);
        }
    }

    /// Stream `session_id` of `node_id` ended: it is no longer the node's, and what was written
    /// to it fails.
    pub fn stream_ended(&self, node_id: u64, session_id: u64) {
        let lost: Vec<(u64, PendingInstruction)> = {
            let mut state = self.state.lock();
            if state.sessions.get(&node_id).map(|s| s.session_id) == Some(session_id) {
                state.sessions.remove(&node_id);
            }
            let ids = state
                .by_stream
                .remove(&(node_id, session_id))
                .unwrap_or_default();
            ids.into_iter()
                .filter_map(|id| state.take(id).map(|p| (id, p)))
                .collect()
        };
        let now = Instant::now();
        for (id, pending) in lost {
            tracing::info!(
                node_id,
                instruction_id = id,
                kind = pending.kind,
                "instruction lost with its stream"
            );
            self.fail(
                id,
                pending,
                "stream_ended",
                MailboxError::StreamEnded(node_id),
                now,
            );
        }
    }

    /// Fails the instructions whose node did not answer by `now`.
    pub fn expire(&self, now: Instant) {
        let expired: Vec<(u64, PendingInstruction)> = {
            let mut state = self.state.lock();
            let due = state.deadlines.take_due(now);
            // Answered ones left the pending map already.
            due.into_iter()
                .filter_map(|id| state.take(id).map(|p| (id, p)))
                .collect()
        };
        for (id, pending) in expired {
            let (node_id, kind, timeout) = (pending.node_id, pending.kind, pending.timeout);
            tracing::warn!(
                node_id,
                instruction_id = id,
                kind,
                ?timeout,
                "instruction timed out"
            );
            let error = MailboxError::Timeout {
                node_id,
                instruction_id: id,
                timeout,
            };
            self.fail(id, pending, "timeout", error, now);
        }
    }

    /// A new term (`term` 0: none): ids get a new epoch, no stream is any node's, and every
    /// pending instruction ends (its callers are told the mailbox closed). A lease-granting one
    /// may still have given a lease: it counts as resolved now (waits only lengthen).
    pub fn reset(&self, term: u64) {
        let dropped: Vec<(u64, PendingInstruction)> = {
            let mut state = self.state.lock();
            state.id_epoch = if term == 0 {
                0
            } else {
                // Non-zero, so no id of a term is ever 0 in its high half.
                u64::from((uuid::Uuid::new_v4().as_u128() as u32).max(1))
            };
            state.next_instruction_id = 1;
            state.sessions.clear();
            state.deadlines.clear();
            state.by_stream.clear();
            state.pending.drain().collect()
        };
        let now = Instant::now();
        for (id, pending) in dropped {
            if pending.opens_leader {
                self.ownership.lead_grant_resolved(pending.node_id, id, now);
            }
            let _ = pending
                .reply
                .send(Err(MailboxError::Closed(pending.node_id)));
        }
    }

    /// Ends `pending` (instruction `id`) with `error`, counted under `outcome`.
    fn fail(
        &self,
        id: u64,
        pending: PendingInstruction,
        outcome: &str,
        error: MailboxError,
        now: Instant,
    ) {
        if pending.opens_leader {
            self.ownership.lead_grant_resolved(pending.node_id, id, now);
        }
        self.metrics
            .instructions
            .with_label_values(&[pending.kind, outcome])
            .inc();
        let _ = pending.reply.send(Err(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox() -> Mailbox {
        Mailbox::new(
            Arc::new(RegionOwnership::new(Duration::from_secs(10))),
            Arc::new(Metrics::new()),
        )
    }

    fn upgrade(region_id: u64) -> Instruction {
        Instruction::UpgradeRegion {
            region_id,
            lease_millis: 3000,
        }
    }

    fn outcome(instruction_id: u64) -> InstructionOutcome {
        InstructionOutcome {
            instruction_id,
            success: true,
            error: None,
        }
    }

    #[tokio::test]
    async fn a_result_counts_only_from_the_stream_its_instruction_was_written_to() {
        let mailbox = mailbox();
        let (id, answer) = mailbox.register(7, 1, &upgrade(70), Duration::from_secs(5));
        assert!(mailbox.ownership.has_pending_lead_grant(7));
        // Another stream of the node, and another node on the same stream number: ignored.
        mailbox.resolve(7, 2, vec![outcome(id)], Instant::now());
        mailbox.resolve(8, 1, vec![outcome(id)], Instant::now());
        assert!(mailbox.ownership.has_pending_lead_grant(7));
        mailbox.resolve(7, 1, vec![outcome(id)], Instant::now());
        assert_eq!(answer.await, Ok(outcome(id)));
        assert!(!mailbox.ownership.has_pending_lead_grant(7));
    }

    #[tokio::test]
    async fn a_node_without_a_stream_is_not_connected() {
        let answer = mailbox().send(9, upgrade(90), Duration::from_secs(5));
        assert_eq!(answer.await, Err(MailboxError::NodeNotConnected(9)));
    }

    #[tokio::test]
    async fn what_a_stream_held_fails_when_it_ends_and_nothing_else() {
        let mailbox = mailbox();
        let (_, lost) = mailbox.register(7, 1, &upgrade(70), Duration::from_secs(5));
        let (kept_id, kept) = mailbox.register(7, 2, &upgrade(71), Duration::from_secs(5));
        mailbox.stream_ended(7, 1);
        assert_eq!(lost.await, Err(MailboxError::StreamEnded(7)));
        mailbox.resolve(7, 2, vec![outcome(kept_id)], Instant::now());
        assert_eq!(kept.await, Ok(outcome(kept_id)));
        // Nothing is left behind in the index of streams.
        assert!(mailbox.state.lock().by_stream.is_empty());
    }

    #[tokio::test]
    async fn unanswered_instructions_time_out_and_a_new_term_ends_the_rest() {
        let mailbox = mailbox();
        let start = Instant::now();
        let (id, late) = mailbox.register(7, 1, &upgrade(70), Duration::from_millis(100));
        let (_, cut) = mailbox.register(8, 1, &upgrade(80), Duration::from_secs(60));
        mailbox.expire(start + Duration::from_secs(1));
        assert_eq!(
            late.await,
            Err(MailboxError::Timeout {
                node_id: 7,
                instruction_id: id,
                timeout: Duration::from_millis(100),
            })
        );
        assert!(mailbox.ownership.has_pending_lead_grant(8));
        mailbox.reset(2);
        assert_eq!(cut.await, Err(MailboxError::Closed(8)));
        assert!(!mailbox.ownership.has_pending_lead_grant(8));
        // The new term's ids carry its epoch in their high half.
        let (next, _) = mailbox.register(7, 3, &upgrade(70), Duration::from_secs(5));
        assert_ne!(next >> 32, 0);
        assert_eq!(next & 0xffff_ffff, 1);
        // An instruction that timed out left its stream's index.
        mailbox.reset(3);
        let (id, _late) = mailbox.register(7, 1, &upgrade(70), Duration::from_millis(100));
        mailbox.expire(Instant::now() + Duration::from_secs(1));
        assert!(!mailbox.state.lock().pending.contains_key(&id));
        assert!(mailbox.state.lock().by_stream.is_empty());
    }
}
