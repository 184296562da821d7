//! Carrying out one pass of re-replication (`planner::replicas` decides): each repair opens a
//! follower copy on its node and names it in the route, in place of a follower on a node dead
//! for long if there is one (told to close its copy, should it come back); a dead follower no
//! live node can replace only leaves the route. Repairs run in parallel (bounded), each under
//! its region's operation lock and an operation permit. A repair that fails is planned again
//! by the next check, which is level-triggered like the failovers.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::drain::replace_follower;
use super::OperationContext;
use crate::planner::replicas::ReplicaRepair;
use crate::procedure::{Procedure, ProcedureState, Progress};

/// Repairs under way at once (the operation permits bound all operations together).
const PARALLELISM: usize = 32;
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
                if let ReplicaRepair::AddFollower {
                    region_id,
                    to,
                    replaces,
                } = &repair
                {
                    tracing::info!(
                        region = region_id,
                        to = to.id,
                        replaces = ?replaces,
                        "a region copy made again"
                    );
                }
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
    match repair {
        ReplicaRepair::AddFollower { to, replaces, .. } => {
            replace_follower(ctx, region_id, replaces, Some(to)).await
        }
        ReplicaRepair::DropFollower { node_id, .. } => {
            replace_follower(ctx, region_id, Some(node_id), None).await
        }
    }
}
