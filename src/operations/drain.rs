//! Draining a node: every region copy it holds moves elsewhere (`planner::plan_drain` chooses
//! where), leaders by region migration, followers by opening a copy on the new node, moving the
//! route and closing the drained copy. Regions move in parallel (bounded); progress is kept in
//! the procedure (`total`, `moved`, `failed`) and published as it changes. The node is cordoned
//! first (persisted: no new region lands on it, and the CNS does not refill it) and stays
//! cordoned once drained, until an operator uncordons it: a drain is how a node is emptied
//! for decommissioning.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::migration::{migrate_region, Migration};
use super::OperationContext;
use crate::actors::cluster_view::{set_cordon, Instruction, ListCandidates};
use crate::catalog::model::{Peer, RegionRoute};
use crate::planner::{plan_drain, DrainMove};
use crate::procedure::{Procedure, ProcedureState};

/// Regions moved at once by one drain (the operation permits bound all operations together).
const DRAIN_PARALLELISM: usize = 32;
/// Passes over what is left before a drain gives up (a region busy with another operation, a
/// target that failed, are tried again in the next pass).
const DRAIN_PASSES: u32 = 3;
/// Tries at cordoning the drained node, 100 ms apart doubling, before the drain fails.
const CORDON_ATTEMPTS: u32 = 4;
/// The procedure record is written at most this often while regions move.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// Runs a drain procedure to its end (see the module doc). Returns the finished procedure
/// (still `Running` if this member could not record it: it no longer leads).
pub async fn run_drain(
    ctx: OperationContext,
    mut procedure: Procedure,
    resumed: bool,
    progress: watch::Sender<Procedure>,
) -> Procedure {
    let node_id = procedure.node_id;
    let started = Instant::now();
    procedure.step(if resumed {
        format!("resumed by a new leader: draining node {node_id}")
    } else {
        format!("draining node {node_id}")
    });
    if !ctx.save(&procedure, Some(&progress)).await {
        return procedure;
    }
    if let Err(e) = cordon(&ctx, node_id, &procedure.id).await {
        // Uncordoned, the regions moved off could be placed back on it as they go.
        procedure.finish(
            ProcedureState::Failed,
            format!("cannot cordon node {node_id}: {e}"),
        );
        ctx.save(&procedure, Some(&progress)).await;
        return procedure;
    }
    let mut last_save = Instant::now();
    for pass in 1..=DRAIN_PASSES {
        let regions = ctx.tables.regions_on(node_id);
        if regions.is_empty() {
            break;
        }
        if pass > 1 {
            tokio::time::sleep(ctx.config.instruction_timeout.min(Duration::from_secs(1))).await;
        }
        let candidates = match ctx.cluster_view.send(ListCandidates).await {
            Ok(candidates) => candidates,
            Err(e) => {
                procedure.step(format!("the cluster view is unavailable: {e}"));
                break;
            }
        };
        let routes: Vec<RegionRoute> = regions.into_iter().map(|(_, r)| r).collect();
        let moves = plan_drain(node_id, &routes, &candidates);
        if pass == 1 {
            // A resumed drain counts what an earlier leader moved too.
            procedure.progress.total = procedure.progress.moved + moves.len() as u64;
        }
        procedure.progress.failed = 0;
        procedure.step(format!(
            "pass {pass}: {} region copies to move",
            moves.len()
        ));
        let ctx_ref = &ctx;
        let mut outcomes = futures::stream::iter(moves)
            .map(|planned| async move {
                let region_id = planned.region_id();
                (region_id, carry_out(ctx_ref, node_id, planned).await)
            })
            .buffer_unordered(DRAIN_PARALLELISM);
        while let Some((region_id, outcome)) = outcomes.next().await {
            match outcome {
                Ok(()) => procedure.progress.moved += 1,
                Err(reason) => {
                    procedure.progress.failed += 1;
                    procedure.step(format!("region {region_id}: {reason}"));
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
    }
    let left = ctx.tables.regions_on(node_id).len();
    if left == 0 {
        procedure.finish(
            ProcedureState::Done,
            format!(
                "node {node_id} holds no region; {} copies moved in {} ms",
                procedure.progress.moved,
                started.elapsed().as_millis()
            ),
        );
    } else {
        procedure.finish(
            ProcedureState::Failed,
            format!("{left} region copies are still on node {node_id}"),
        );
    }
    ctx.save(&procedure, Some(&progress)).await;
    let _ = ctx.procedures.prune().await;
    procedure
}

/// Cordons the drained node, trying a few times (a store that blinks should not fail a drain).
async fn cordon(
    ctx: &OperationContext,
    node_id: u64,
    procedure_id: &str,
) -> crate::store::StoreResult<()> {
    let reason = format!("drained by procedure {procedure_id}");
    let store = ctx.procedures.store();
    let mut wait = Duration::from_millis(100);
    let mut attempts = 1;
    loop {
        let cordoned = set_cordon(
            store.as_ref(),
            &ctx.cluster_view,
            node_id,
            Some(reason.clone()),
        )
        .await;
        match cordoned {
            Err(e @ crate::store::StoreError::Unavailable(_)) if attempts < CORDON_ATTEMPTS => {
                tracing::warn!(node_id, "cannot cordon a drained node yet: {e}");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempts += 1;
            }
            other => return other.map(|_| ()),
        }
    }
}

/// Moves one copy off the drained node, under the region's operation lock.
async fn carry_out(ctx: &OperationContext, node_id: u64, planned: DrainMove) -> Result<(), String> {
    let region_id = planned.region_id();
    if let DrainMove::Stuck { reason, .. } = planned {
        return Err(reason);
    }
    // The permit first: a region waiting for a permit is not locked against failovers.
    let _permit = ctx.permits.acquire().await;
    let Some(_lock) = ctx.tables.lock_regions(&[region_id]) else {
        return Err("busy with another operation".into());
    };
    let mut steps = Vec::new();
    match planned {
        DrainMove::Migrate { to, .. } => {
            let migration = Migration {
                region_id,
                from: node_id,
                to,
                keep_old_copy: false,
            };
            migrate_region(ctx, &migration, &mut steps)
                .await
                .map(|_| ())
        }
        DrainMove::MoveFollower { to, .. } => {
            replace_follower(ctx, region_id, Some(node_id), Some(to)).await
        }
        DrainMove::DropFollower { .. } => {
            replace_follower(ctx, region_id, Some(node_id), None).await
        }
        DrainMove::Stuck { .. } => Ok(()),
    }
}

/// Replaces the follower copy of `region_id` on `from` with one on `to` (or with none; with no
/// `from`, adds one on `to` if the region still has fewer copies than its table asks for): the
/// new copy opens first, then the route names it, then the old copy closes. The caller holds
/// the region's operation lock.
pub(super) async fn replace_follower(
    ctx: &OperationContext,
    region_id: u64,
    from: Option<u64>,
    to: Option<Peer>,
) -> Result<(), String> {
    let (entry, region) = ctx
        .tables
        .region_route(region_id)
        .ok_or_else(|| format!("region {region_id} is not routed (its table was dropped?)"))?;
    match from {
        // Moved already (a resumed drain, a repair planned twice).
        Some(from) if !region.followers.iter().any(|f| f.id == from) => return Ok(()),
        None if 1 + region.followers.len() >= entry.info.replicas.max(1) as usize => return Ok(()),
        _ => {}
    }
    // The plan is older than the region's lock: `to` may hold a copy by now (a failover or a
    // migration put one there). Then the copy on `from` is only dropped.
    let to = to
        .filter(|to| to.id != region.leader.id && !region.followers.iter().any(|f| f.id == to.id));
    if from.is_none() && to.is_none() {
        return Ok(());
    }
    let ownership = ctx.tables.ownership();
    if let Some(to) = &to {
        ctx.open_follower(&entry.info.name, region_id, to.id)
            .await?;
    }
    let mut followers: Vec<Peer> = region
        .followers
        .iter()
        .filter(|f| Some(f.id) != from)
        .cloned()
        .collect();
    followers.extend(to.clone());
    let moved = ctx
        .tables
        .move_region_leader(
            region_id,
            region.leader.id,
            region.leader.clone(),
            followers,
        )
        .await;
    if to.is_some() {
        ownership.end_move(region_id);
    }
    if let Err(e) = moved {
        // The write may have landed although its answer was lost.
        let landed = ctx.tables.region_route(region_id).is_some_and(|(_, r)| {
            !r.followers.iter().any(|f| Some(f.id) == from)
                && to
                    .as_ref()
                    .is_none_or(|to| r.followers.iter().any(|f| f.id == to.id))
        });
        if !landed {
            if let Some(to) = &to {
                ctx.instruct_in_background(to.id, Instruction::CloseRegion { region_id });
            }
            return Err(format!("cannot move the route: {e}"));
        }
    }
    if let Some(from) = from {
        ctx.instruct_in_background(from, Instruction::CloseRegion { region_id });
    }
    Ok(())
}
