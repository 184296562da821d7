//! Re-replication on the Scheduler: when to look for regions short of copies, and one pass at
//! a time (`planner::replicas` decides, `operations::replicas` carries out).
//!
//! The routes are scanned (one cheap test per routed region) only when something may have
//! taken copies away: the term began, a failover ended (its regions lead on with a copy
//! fewer), a pass left repairs undone, or a node the routes name has been dead for
//! `replica_repair_after`. A failover interrupts a running pass: it needs the region locks and
//! the permits first. Failed passes back off. How long a node has been dead counts from when
//! this leader last heard from it, or from the start of its term: a leader change restarts the
//! count, so followers are never replaced early, only late.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{FailoverConfig, Scheduler};
use crate::actors::cluster_view::{ListCandidates, ListDeadNodes};
use crate::operations::replicas::run_replica_repair;
use crate::planner::replicas::{needs_repair, plan_replica_repairs, ReplicaSnapshot};
use crate::procedure::{Procedure, ProcedureState};

/// The most repairs one pass plans (the next check plans the rest).
const REPAIRS_PER_PASS: usize = 4096;
/// How often, at most, the check runs (more often when `replica_repair_after` is short: a
/// quarter of it).
const CHECK_EVERY_AT_MOST: Duration = Duration::from_secs(10);
/// The longest wait after passes that failed, and after a scan that found long-dead nodes'
/// copies but nowhere to put them (a node that joins is then used within this).
const RETRY_AT_MOST: Duration = Duration::from_secs(300);

pub(super) fn check_every(config: &FailoverConfig) -> Duration {
    (config.replica_repair_after / 4).clamp(Duration::from_millis(100), CHECK_EVERY_AT_MOST)
}

/// 2 s doubling up to [`RETRY_AT_MOST`].
fn failed_pass_backoff(passes: u32) -> Duration {
    Duration::from_secs(1u64 << passes.clamp(1, 9)).min(RETRY_AT_MOST)
}

#[derive(Default)]
pub(super) struct RepairState {
    /// Something may have left regions short of copies since the last scan: the next check
    /// scans the routes.
    pub wanted: bool,
    /// A check is gathering its snapshot.
    checking: bool,
    /// The pass running now (its procedure id).
    running: Option<String>,
    /// Passes in a row that left repairs undone, and when the next check may run.
    failed_passes: u32,
    not_before: Option<Instant>,
    /// The long-dead nodes of the last scan that planned nothing, and until when the same set
    /// is not scanned for again.
    fruitless: Option<(BTreeSet<u64>, Instant)>,
    /// When this term began serving: nodes report their loads before they count as targets.
    term_began: Option<Instant>,
}

impl RepairState {
    pub fn term_began(&mut self, now: Instant) {
        self.term_began = Some(now);
        self.wanted = true;
    }
}

impl Scheduler {
    /// Starts one pass of re-replication if regions are short of copies (see the module doc).
    pub(super) fn check_replicas(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let settled = self
            .repairs
            .term_began
            .is_some_and(|at| now.duration_since(at) >= self.failover.region_lease);
        if !self.ready
            || !settled
            || !self.leadership.is_serving_leader()
            || self.maintenance.load(Ordering::Relaxed)
            || self.repairs.checking
            || self.repairs.running.is_some()
            || !self.failing_over.is_empty()
            || !self.retries.is_empty()
            || self.repairs.not_before.is_some_and(|at| now < at)
        {
            return;
        }
        let Some(tables) = self.tables.clone() else {
            return;
        };
        self.repairs.checking = true;
        let term = self.serving_term;
        let view = self.cluster_view.clone();
        let repair_after = self.failover.replica_repair_after;
        let wanted = self.repairs.wanted;
        let fruitless = self.repairs.fruitless.clone();
        let routes = tables.clone();
        let gather = async move {
            let dead = view.send(ListDeadNodes).await.ok()?;
            let long_dead: HashSet<u64> = dead
                .iter()
                .filter(|d| d.silent_for >= repair_after)
                .map(|d| d.node_id)
                .collect();
            let ownership = routes.ownership();
            let named_long_dead: BTreeSet<u64> = long_dead
                .iter()
                .copied()
                .filter(|node_id| ownership.knows(*node_id))
                .collect();
            let fruitless_again = fruitless
                .is_some_and(|(nodes, until)| nodes == named_long_dead && Instant::now() < until);
            // Nothing may have taken copies away: no scan, nor the list of every live node.
            if !wanted && (named_long_dead.is_empty() || fruitless_again) {
                return None;
            }
            let candidates = view.send(ListCandidates).await.ok()?;
            let snapshot = ReplicaSnapshot {
                candidates,
                long_dead,
                dead: dead.iter().map(|d| d.node_id).collect(),
            };
            Some((snapshot, named_long_dead))
        };
        ctx.spawn(gather.into_actor(self).map(move |gathered, scheduler, ctx| {
            scheduler.repairs.checking = false;
            let Some((snapshot, named_long_dead)) = gathered else {
                return;
            };
            if scheduler.serving_term != term
                || scheduler.maintenance.load(Ordering::Relaxed)
                || !scheduler.failing_over.is_empty()
            {
                return;
            }
            let now = Instant::now();
            scheduler.repairs.wanted = false;
            // One cheap test per routed region; a region an operation holds waits for the
            // next check.
            let entries = tables.tables();
            let regions = entries.iter().flat_map(|entry| {
                let copies = entry.info.replicas.max(1);
                let (tables, long_dead) = (&tables, &snapshot.long_dead);
                entry
                    .route
                    .regions
                    .iter()
                    .filter(move |r| {
                        needs_repair(r, copies, long_dead) && !tables.is_locked(r.region_id)
                    })
                    .map(move |r| (r, copies))
            });
            let repairs = plan_replica_repairs(regions, &snapshot, REPAIRS_PER_PASS);
            if repairs.is_empty() {
                scheduler.repairs.fruitless = Some((named_long_dead, now + RETRY_AT_MOST));
                return;
            }
            scheduler.repairs.fruitless = None;
            let Some(operation) = scheduler.operation_context() else {
                return;
            };
            let procedure = Procedure::replica_repair();
            tracing::info!(procedure = %procedure.id, regions = repairs.len(), "making lost region copies again");
            scheduler.repairs.running = Some(procedure.id.clone());
            scheduler.track_operation(
                procedure,
                ctx,
                move |procedure, progress| {
                    Box::pin(run_replica_repair(operation, procedure, repairs, progress))
                },
                |scheduler, finished| scheduler.replica_pass_ended(finished),
            );
        }));
    }

    fn replica_pass_ended(&mut self, finished: &Procedure) {
        if self.repairs.running.as_deref() != Some(finished.id.as_str()) {
            return;
        }
        self.repairs.running = None;
        if finished.state == ProcedureState::Done {
            self.repairs.failed_passes = 0;
            self.repairs.not_before = None;
        } else {
            self.repairs.failed_passes += 1;
            let wait = failed_pass_backoff(self.repairs.failed_passes);
            self.repairs.not_before = Some(Instant::now() + wait);
            self.repairs.wanted = true;
            tracing::warn!(
                procedure = %finished.id,
                passes = self.repairs.failed_passes,
                ?wait,
                "a replica repair left regions short of copies; checking again after a backoff"
            );
        }
    }

    /// Stops the running pass, if any (its region locks and permits go with it; a copy it
    /// opened but did not route is an orphan, closed after the grace), and records why.
    pub(super) fn interrupt_replica_repair(&mut self, why: &str, ctx: &mut Context<Self>) {
        let Some(id) = self.repairs.running.take() else {
            return;
        };
        self.repairs.wanted = true;
        let Some(operation) = self.operations.remove(&id) else {
            return;
        };
        ctx.cancel_future(operation.task);
        let procedure = operation.progress.borrow().clone();
        tracing::info!(procedure = %id, "replica repair interrupted: {why}");
        self.record_interrupted_repair(procedure, why, ctx);
    }

    /// Records a pass that will not go on (a failover interrupted it, or the leader that ran it
    /// is gone) as failed: what it left is planned again by a later check, not resumed.
    pub(super) fn record_interrupted_repair(
        &mut self,
        mut procedure: Procedure,
        why: &str,
        ctx: &mut Context<Self>,
    ) {
        procedure.finish(
            ProcedureState::Failed,
            format!("interrupted: {why}; a later check plans what is left"),
        );
        let procedures = self.procedures.clone();
        ctx.spawn(
            async move {
                if let Err(e) = procedures.save(&procedure).await {
                    tracing::warn!("cannot record an interrupted replica repair: {e}");
                }
            }
            .into_actor(self),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passes_back_off_from_two_seconds_to_five_minutes() {
        let waits: Vec<u64> = (1..=10).map(|n| failed_pass_backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }
}
