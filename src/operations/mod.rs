//! The leader's multi-step operations on regions, each run as a persisted procedure
//! (`crate::procedure`): the failover of a dead node ([`failover`]), the migration of a region
//! and the transfer of its leadership ([`migration`]), and the drain of a node ([`drain`]).
//! They decide nothing of their own: where regions go comes from `crate::planner`; they carry
//! it out step by step (instructions on the heartbeat streams, route moves through the
//! `TableManager`), record their steps, and undo an executed step when a later one fails. The
//! Scheduler starts them, bounds them to the term they began in, and retries them.

pub mod drain;
pub mod failover;
pub mod migration;
pub mod replicas;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::{watch, Semaphore};

use crate::actors::cluster_view::{ClusterView, GetLeaseExpiry, Instruction, Mailbox};
use crate::actors::scheduler::FailoverConfig;
use crate::catalog::TableManager;
use crate::metrics::Metrics;
use crate::procedure::{Procedure, ProcedureStore};

/// How often a wait for leases checks whether a lease-granting instruction has resolved.
const PENDING_GRANT_POLL: Duration = Duration::from_millis(50);

/// What every operation needs.
#[derive(Clone)]
pub struct OperationContext {
    pub metrics: Arc<Metrics>,
    pub tables: Arc<TableManager>,
    pub cluster_view: Addr<ClusterView>,
    /// Where instructions go (straight to the nodes' streams, not through ClusterView).
    pub mailbox: Arc<Mailbox>,
    pub procedures: ProcedureStore,
    /// Bounds the regions moved at once, across every operation.
    pub permits: Arc<Semaphore>,
    pub config: FailoverConfig,
}

impl OperationContext {
    /// Sends `instruction` to `node_id` and waits for its result: `Err` with the reason when the
    /// node did not carry it out (refused, not connected, no answer in time).
    pub async fn instruct(&self, node_id: u64, instruction: Instruction) -> Result<(), String> {
        let kind = instruction.kind();
        match self
            .mailbox
            .send(node_id, instruction, self.config.instruction_timeout)
            .await
        {
            Ok(result) if result.success => Ok(()),
            Ok(result) => Err(format!(
                "node {node_id} refused {kind}: {}",
                result.error.unwrap_or_default()
            )),
            Err(e) => Err(format!("{kind}: {e}")),
        }
    }

    /// Sends `instruction` without waiting for its result (an undo or a clean-up whose failure
    /// leaves nothing unsafe: the session closes stale regions anyway).
    pub fn instruct_in_background(&self, node_id: u64, instruction: Instruction) {
        // On its way once sent; nobody waits for the answer.
        let _answer = self
            .mailbox
            .send(node_id, instruction, self.config.instruction_timeout);
    }

    /// Opens `region_id` of `table` on `to` as a follower, marked as moving there (so that its
    /// reports of the region are not "stale" until the route names it). On failure the copy
    /// is closed again and the mark removed; on success the caller ends the move.
    pub async fn open_follower(
        &self,
        table: &crate::catalog::model::TableName,
        region_id: u64,
        to: u64,
    ) -> Result<(), String> {
        let ownership = self.tables.ownership();
        ownership.begin_move(region_id, to);
        let opened = self
            .instruct(
                to,
                Instruction::OpenRegion {
                    region_id,
                    table: table.into(),
                    role: crate::stats::RegionRole::Follower,
                    lease_millis: self.config.region_lease.as_millis() as u64,
                },
            )
            .await;
        if opened.is_err() {
            self.instruct_in_background(to, Instruction::CloseRegion { region_id });
            ownership.end_move(region_id);
        }
        opened
    }

    /// Takes back a lead `node_id` may have been given (an upgrade or an open as leader that
    /// failed, or whose route move failed): `undo` (a demote or a close) must be confirmed,
    /// or else every write lease the node may hold must have lapsed, before the caller lets
    /// anyone else lead the region. The caller holds the region's lock throughout.
    pub async fn undo_lead(&self, node_id: u64, region_id: u64, undo: Instruction) {
        if let Err(e) = self.instruct(node_id, undo).await {
            tracing::warn!(
                node_id,
                region_id,
                "an undo was not confirmed ({e}): waiting until the node's write lease has lapsed"
            );
            // The lead to undo came from an instruction that has resolved (or a grant before
            // now): its lease counts from before the region's last resolution.
            let noted = self.tables.ownership().last_grant(node_id);
            self.wait_out_region_lease(node_id, region_id, noted).await;
        }
    }

    /// Waits until every write lease a **fenced** `node_id` may hold has lapsed, counting from
    /// `noted` (its `last_grant` when it was fenced), from any grant that landed since, and
    /// from any lease-granting instruction still in flight to it (OpenRegion as leader,
    /// UpgradeRegion: the node counts their lease from receipt, which this leader learns only
    /// when they resolve). Fenced, the node gets no grant from heartbeats, so this ends; a live
    /// node's grants go on, and its waits are per region (`wait_out_region_lease`).
    pub async fn wait_out_write_leases(&self, node_id: u64, mut noted: Option<Instant>) {
        let ownership = self.tables.ownership();
        loop {
            let until = self.lease_end(node_id, noted).await;
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            // Resolution is bounded by the instruction timeout (answer, timeout or lost stream).
            while ownership.has_pending_lead_grant(node_id) {
                tokio::time::sleep(PENDING_GRANT_POLL).await;
            }
            let latest = ownership.last_grant(node_id);
            if latest <= noted {
                return;
            }
            noted = latest;
        }
    }

    /// Waits until a write lease of `node_id` on `region_id` has surely lapsed: one counting
    /// from `noted` (the node's last grant while it could still be given one on the region),
    /// or one a lease-granting instruction for the region gave it (waited for until it
    /// resolves). Grants of its other regions do not matter, so a live node cannot hold this
    /// wait up.
    pub async fn wait_out_region_lease(
        &self,
        node_id: u64,
        region_id: u64,
        noted: Option<Instant>,
    ) {
        let ownership = self.tables.ownership();
        let until = self.lease_end(node_id, noted).await;
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        while ownership.has_pending_lead_grant_on(node_id, region_id) {
            tokio::time::sleep(PENDING_GRANT_POLL).await;
        }
        let granted = ownership.region_grant(node_id, region_id);
        if granted > noted {
            let until = self.lease_end(node_id, granted).await;
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
    }

    /// When every write lease of `node_id` counting from `last_grant` (or, if this leader
    /// never granted it one, from a previous leader) has surely ended, by this member's clock.
    pub async fn lease_end(&self, node_id: u64, last_grant: Option<Instant>) -> Instant {
        let lease = self.config.region_lease;
        let end = match last_grant {
            Some(last) => last + lease,
            // A previous leader's leases end within one lease of our election, so within one
            // lease of now or of the node's last request to us.
            None => self
                .cluster_view
                .send(GetLeaseExpiry {
                    node_id,
                    region_lease: lease,
                })
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| Instant::now() + lease),
        };
        end + self.config.safety_margin
    }

    /// Records `procedure` (and publishes it to `progress`, if given); false if it could not be
    /// written, which means this member no longer leads: the operation must stop.
    pub async fn save(
        &self,
        procedure: &Procedure,
        progress: Option<&watch::Sender<Procedure>>,
    ) -> bool {
        if let Err(e) = self.procedures.save(procedure).await {
            tracing::error!(procedure = %procedure.id, "cannot record the procedure: {e}");
            return false;
        }
        // Watchers learn only what is recorded (a next leader would otherwise redo what a
        // client was told had finished).
        if let Some(progress) = progress {
            progress.send_replace(procedure.clone());
        }
        true
    }
}
