//! Region migration, the one way a live region moves (manual migrations, leader transfers and
//! drains all use it):
//!
//! 1. the target opens the region as a follower (unless it follows it already);
//! 2. the leader's write lease on the region is fenced (its heartbeats renew only a follower
//!    lease from now on) and it is asked to downgrade: it stops writing and answers. A leader
//!    that does not answer costs one lease: the migration waits until its last write lease has
//!    surely lapsed;
//! 3. the target is upgraded, with a first write lease;
//! 4. the route moves (version + 1): the target leads, the old leader follows (a transfer) or
//!    leaves the route (a migration);
//! 5. the old copy is closed (a migration).
//!
//! With a cooperating leader the region cannot be written from the downgrade to the upgrade:
//! two round trips on the heartbeat streams, then a route write. A failure undoes what was done
//! (the old leader upgraded again if it had downgraded, the target's copy demoted or closed), so
//! the region is left led by exactly one node. Every step is idempotent: a migration a new
//! leader resumes starts again from step 1.

use std::time::Instant;

use super::OperationContext;
use crate::actors::cluster_view::Instruction;
use crate::catalog::model::Peer;
use crate::procedure::{Procedure, ProcedureState};

/// One region to move.
#[derive(Clone, Debug)]
pub struct Migration {
    pub region_id: u64,
    /// The node that leads the region when the migration starts.
    pub from: u64,
    pub to: Peer,
    /// A leader transfer: the old leader stays a follower. Otherwise its copy is closed.
    pub keep_old_copy: bool,
}

/// What a finished migration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migrated {
    /// The route names the target as leader (version + 1).
    Moved {
        /// Whether the old leader answered the downgrade (no lease wait was needed).
        cooperative: bool,
    },
    /// The route named the target as leader already (a resumed migration that had landed).
    AlreadyThere,
}

/// Carries out `migration`, writing what it does to `steps`. The caller holds the region's
/// operation lock (`TableManager::lock_regions`). On `Err` the region is led as before (what
/// was done is undone), with the reason.
pub async fn migrate_region(
    ctx: &OperationContext,
    migration: &Migration,
    steps: &mut Vec<String>,
) -> Result<Migrated, String> {
    let Migration {
        region_id,
        from,
        ref to,
        keep_old_copy,
    } = *migration;
    let Some((entry, region)) = ctx.tables.region_route(region_id) else {
        return Err(format!(
            "region {region_id} is not routed (its table was dropped?)"
        ));
    };
    if region.leader.id == to.id {
        if !keep_old_copy && from != to.id {
            ctx.instruct_in_background(from, Instruction::CloseRegion { region_id });
        }
        return Ok(Migrated::AlreadyThere);
    }
    if region.leader.id != from {
        return Err(format!(
            "region {region_id} is led by node {}, not {from}",
            region.leader.id
        ));
    }
    let lease_millis = ctx.config.region_lease.as_millis() as u64;
    let was_follower = region.followers.iter().any(|f| f.id == to.id);
    let ownership = ctx.tables.ownership().clone();

    // 1. The target holds a copy, as a follower. Until the route names it, its reports of the
    // region are not "stale".
    if was_follower {
        ownership.begin_move(region_id, to.id);
    } else {
        if let Err(e) = ctx.open_follower(&entry.info.name, region_id, to.id).await {
            return Err(format!("the target could not open region {region_id}: {e}"));
        }
        steps.push(format!(
            "region {region_id}: opened on node {} as a follower",
            to.id
        ));
    }

    // 2. The leader stops writing: fenced first, so that no heartbeat renews its write lease
    // while it is asked.
    let last_grant = ownership.fence_region(region_id, from);
    let downgraded_at = Instant::now();
    let cooperative = match ctx
        .instruct(from, Instruction::DowngradeRegion { region_id })
        .await
    {
        Ok(()) => {
            steps.push(format!(
                "region {region_id}: node {from} downgraded in {} ms",
                downgraded_at.elapsed().as_millis()
            ));
            true
        }
        Err(e) => {
            // It may still be writing on the lease it holds: wait until that has lapsed.
            // Heartbeats since the fence renewed no write lease on this region, and nothing
            // opens it as leader there while the region is locked and fenced (a reopen of a
            // missing region skips both), so the last grant before the fence bounds every
            // write lease that matters, with any lease-granting instruction still in flight.
            ctx.wait_out_region_lease(from, region_id, last_grant).await;
            steps.push(format!(
                "region {region_id}: node {from} did not downgrade ({e}); its write lease lapsed after {} ms",
                downgraded_at.elapsed().as_millis()
            ));
            false
        }
    };
    // 3. The target leads, with a first lease.
    if let Err(e) = ctx
        .instruct(
            to.id,
            Instruction::UpgradeRegion {
                region_id,
                lease_millis,
            },
        )
        .await
    {
        roll_back(ctx, migration, was_follower).await;
        return Err(format!("the target could not lead region {region_id}: {e}"));
    }

    // 4. The route names the target.
    let mut followers: Vec<Peer> = region
        .followers
        .iter()
        .filter(|f| f.id != to.id && f.id != from)
        .cloned()
        .collect();
    if keep_old_copy {
        followers.push(region.leader.clone());
    }
    let moved = ctx
        .tables
        .move_region_leader(region_id, from, to.clone(), followers)
        .await;
    let version = match moved {
        Ok(updated) => updated.route.version,
        Err(e) => {
            let landed = ctx
                .tables
                .region_route(region_id)
                .filter(|(_, r)| r.leader.id == to.id);
            match landed {
                // The write landed although its answer was lost.
                Some(_) => entry.route.version + 1,
                None => {
                    roll_back(ctx, migration, was_follower).await;
                    return Err(format!("cannot move the route of region {region_id}: {e}"));
                }
            }
        }
    };
    ownership.unfence_region(region_id);
    ownership.end_move(region_id);
    steps.push(format!(
        "region {region_id}: led by node {} (route version {version}), {} ms after the downgrade",
        to.id,
        downgraded_at.elapsed().as_millis()
    ));

    // 5. The old copy goes (a node that misses this closes it as stale on its next heartbeat).
    if !keep_old_copy {
        ctx.instruct_in_background(from, Instruction::CloseRegion { region_id });
    }
    Ok(Migrated::Moved { cooperative })
}

/// Gives a region back to its leader after a failed step 3 or 4: the target's lead is taken
/// back first (its demote or close confirmed, or its write lease waited out: an upgrade it
/// carried out late must not overlap the old leader's), then the old leader is upgraded again
/// (whether or not it answered the downgrade: a late downgrade would leave the region without
/// a writer; if this upgrade is lost, role reconciliation upgrades the routed leader later).
async fn roll_back(ctx: &OperationContext, migration: &Migration, was_follower: bool) {
    let region_id = migration.region_id;
    let undo = if was_follower {
        Instruction::DemoteToFollower { region_id }
    } else {
        Instruction::CloseRegion { region_id }
    };
    ctx.undo_lead(migration.to.id, migration.region_id, undo)
        .await;
    let ownership = ctx.tables.ownership();
    ownership.end_move(region_id);
    ownership.unfence_region(region_id);
    let restored = ctx
        .instruct(
            migration.from,
            Instruction::UpgradeRegion {
                region_id,
                lease_millis: ctx.config.region_lease.as_millis() as u64,
            },
        )
        .await;
    if let Err(e) = restored {
        tracing::warn!(
            region_id,
            node_id = migration.from,
            "the old leader did not take its region back: {e}"
        );
    }
}

/// Runs a migration or leader transfer procedure to its end: records it, takes the region's
/// operation lock, migrates, and records the outcome. A resumed procedure starts over (its
/// steps are idempotent). Returns the finished procedure (still `Running` if this member could
/// not record it: it no longer leads).
pub async fn run_migration(
    ctx: OperationContext,
    mut procedure: Procedure,
    resumed: bool,
    progress: tokio::sync::watch::Sender<Procedure>,
) -> Procedure {
    let region_id = procedure.region_id;
    let started = Instant::now();
    if resumed {
        procedure.step("resumed by a new leader: starting over");
    }
    if !ctx.save(&procedure, Some(&progress)).await {
        return procedure;
    }
    if resumed {
        // The previous leader may have upgraded the target (or left the old leader a lease)
        // before it died: nothing it granted outlives one lease from now.
        tokio::time::sleep(ctx.config.region_lease + ctx.config.safety_margin).await;
    }
    let Some((_, region)) = ctx.tables.region_route(region_id) else {
        procedure.finish(
            ProcedureState::Failed,
            format!("region {region_id} is not routed"),
        );
        ctx.save(&procedure, Some(&progress)).await;
        return procedure;
    };
    // A resumed migration's target may not have reconnected to this leader yet.
    let patience = if resumed {
        ctx.config.instruction_timeout
    } else {
        std::time::Duration::ZERO
    };
    let Some(to) = live_peer(&ctx, procedure.target_node, patience).await else {
        procedure.finish(
            ProcedureState::Failed,
            format!("node {} is not a live datanode", procedure.target_node),
        );
        ctx.save(&procedure, Some(&progress)).await;
        return procedure;
    };
    let migration = Migration {
        region_id,
        // A resumed migration that has not moved the route finds the same leader; one that
        // has finds the target (done).
        from: if region.leader.id == to.id {
            procedure.node_id
        } else {
            region.leader.id
        },
        to,
        keep_old_copy: procedure.kind == crate::procedure::TRANSFER_LEADER,
    };
    let outcome = {
        // The permit first: a region waiting for a permit is not locked against failovers.
        let _permit = ctx.permits.acquire().await;
        let Some(_lock) = ctx.tables.lock_regions(&[region_id]) else {
            procedure.finish(
                ProcedureState::Failed,
                format!("region {region_id} is busy with another operation"),
            );
            ctx.save(&procedure, Some(&progress)).await;
            return procedure;
        };
        let mut steps = Vec::new();
        let outcome = migrate_region(&ctx, &migration, &mut steps).await;
        for step in steps {
            procedure.step(step);
        }
        outcome
    };
    let label = match &outcome {
        Ok(Migrated::Moved { cooperative: true }) => "cooperative",
        Ok(Migrated::Moved { cooperative: false }) => "lease_wait",
        Ok(Migrated::AlreadyThere) => "already_there",
        Err(_) => "failed",
    };
    ctx.metrics
        .region_migrations
        .with_label_values(&[label])
        .inc();
    match outcome {
        Ok(_) => procedure.finish(
            ProcedureState::Done,
            format!("done in {} ms", started.elapsed().as_millis()),
        ),
        Err(reason) => procedure.finish(ProcedureState::Failed, reason),
    }
    ctx.save(&procedure, Some(&progress)).await;
    let _ = ctx.procedures.prune().await;
    procedure
}

/// `node_id` as a live candidate for regions, waiting up to `patience` for it to become one.
async fn live_peer(
    ctx: &OperationContext,
    node_id: u64,
    patience: std::time::Duration,
) -> Option<Peer> {
    let deadline = Instant::now() + patience;
    loop {
        let found = ctx
            .cluster_view
            .send(crate::actors::cluster_view::ListCandidates)
            .await
            .ok()
            .and_then(|c| c.into_iter().find(|c| c.peer.id == node_id))
            .map(|c| c.peer);
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
