//! Carrying out one pass of re-replication (`planner::replicas` decides): each repair opens a
//! follower copy on its node and names it in the route, in place of a follower on a node dead
//! for long if there is one (told to close its copy, should it come back). Repairs run in
//! parallel (bounded), each under its region's operation lock and an operation permit, and
//! only onto a node that is still alive, streaming and uncordoned when its turn comes. A
//! repair that fails is planned again by a later check (`actors::scheduler::replicas`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::drain::replace_follower;
use super::OperationContext;
use crate::actors::cluster_view::{GetNode, NodeStatus};
use crate::planner::replicas::ReplicaRepair;
use crate::procedure::{Procedure, ProcedureState, Progress};

/// Repairs under way at once: a quarter of the default operation permits, so that a pass
/// never takes them all (and a failover interrupts it anyway).
const PARALLELISM: usize = 8;
/// The procedure record is written at most this often while copies are made.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// Runs one pass's `repairs` in `procedure`; returns it finished (still `Running` if this
/// member could not record it: it no longer leads).
pub async fn run_replica_repair(
    ctx: OperationContext,
    mut procedure: Procedure,
    repairs: Vec<ReplicaRepair>,
    progress: watch::Sender<Procedure>,
) -> Procedure {
    let started = Instant::now();
    procedure.progress.total = repairs.len() as u64;
    procedure.step(format!(
        "{} regions have fewer live copies than their tables ask for",
        repairs.len()
    ));
    if !ctx.save(&procedure, Some(&progress)).await {
        return procedure;
    }
    let ctx_ref = &ctx;
    let mut outcomes = futures::stream::iter(repairs)
        .map(|repair| async move { (repair.clone(), carry_out(ctx_ref, repair).await) })
        .buffer_unordered(PARALLELISM);
    let mut last_save = Instant::now();
    while let Some((repair, outcome)) = outcomes.next().await {
        match outcome {
            Ok(()) => {
                procedure.progress.moved += 1;
                let ReplicaRepair::AddFollower {
                    region_id,
                    to,
                    replaces,
                } = &repair;
                tracing::info!(
                    region = region_id,
                    to = to.id,
                    replaces = ?replaces,
                    "a region copy made again"
                );
            }
            Err(reason) => {
                procedure.progress.failed += 1;
                procedure.step(format!("region {}: {reason}", repair.region_id()));
            }
        }
        progress.send_replace(procedure.clone());
        if last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            if !ctx.save(&procedure, None).await {
                return procedure;
            }
        }
    }
    let Progress { moved, failed, .. } = procedure.progress;
    if failed == 0 {
        procedure.finish(
            ProcedureState::Done,
            format!(
                "{moved} regions repaired in {} ms",
                started.elapsed().as_millis()
            ),
        );
    } else {
        procedure.finish(
            ProcedureState::Failed,
            format!("{failed} regions not repaired; the next check plans them again"),
        );
    }
    ctx.save(&procedure, Some(&progress)).await;
    let _ = ctx.procedures.prune().await;
    procedure
}

/// One repair, under the region's operation lock.
async fn carry_out(ctx: &OperationContext, repair: ReplicaRepair) -> Result<(), String> {
    let region_id = repair.region_id();
    // The permit first: a region waiting for a permit is not locked against failovers.
    let _permit = ctx.permits.acquire().await;
    let Some(_lock) = ctx.tables.lock_regions(&[region_id]) else {
        return Err("busy with another operation".into());
    };
    let ReplicaRepair::AddFollower { to, replaces, .. } = repair;
    // The plan is older than the lock: the target may have died or been cordoned since.
    let target = ctx.cluster_view.send(GetNode { node_id: to.id }).await;
    match target {
        Ok(Some(node))
            if node.status == NodeStatus::Alive && node.connected && node.cordoned.is_none() => {}
        Ok(_) => return Err(format!("node {} can no longer take a copy", to.id)),
        Err(e) => return Err(format!("the cluster view is unavailable: {e}")),
    }
    replace_follower(ctx, region_id, replaces, Some(to)).await
}
