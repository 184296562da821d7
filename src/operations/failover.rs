//! The failover of a dead node: every region it leads moves to a live node (a live, in-sync
//! follower is upgraded, or the region reopens from the shared storage), never while the dead
//! node's write leases may still run. Where each region goes comes from
//! `planner::plan_region_moves`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::OperationContext;
use crate::actors::cluster_view::{GetReplicaReport, Instruction, ListCandidates};
use crate::catalog::manager::TableEntry;
use crate::catalog::model::{Peer, RegionRoute};
use crate::planner::{plan_region_moves, RegionMove};
use crate::procedure::{Procedure, ProcedureState};
use crate::stats::RegionRole;

/// One region of the dead node with where it goes.
type PlannedMove = (RegionMove, (Arc<TableEntry>, RegionRoute));

/// Tables whose regions of one dead node move at once (each also takes an operation permit,
/// 32 by default). 8 at a time moved a node leading 500 regions in each of 20 tables in three
/// waves, each as long as its slowest region (about 0.9 s apiece at 10,000 nodes); all 20 at
/// once moved them in one of 1.4 s.
const TABLES_AT_ONCE: usize = 32;
/// The procedure record is written at most this often while regions move.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// Moves every region the procedure's node leads to a live node, never letting two nodes serve
/// a region at once: nothing is instructed before the dead node's last lease has lapsed. Each
/// step is recorded in the procedure; a resumed procedure redoes only what is left.
pub async fn fail_over_node(procedure: Procedure, resumed: bool, f: OperationContext) -> Procedure {
    let dead = procedure.node_id;
    let tables = f.tables.clone();
    let metrics = f.metrics.clone();
    let started = Instant::now();
    let procedure = move_regions_of_dead_node(procedure, resumed, f).await;
    let outcome = match procedure.state {
        ProcedureState::Done => "done",
        ProcedureState::Failed => "failed",
        // It could not record its progress: this member no longer leads.
        ProcedureState::Running => "interrupted",
    };
    tables.ownership().unfence(dead);
    metrics.region_failovers.with_label_values(&[outcome]).inc();
    metrics
        .region_failover_seconds
        .observe(started.elapsed().as_secs_f64());
    procedure
}

async fn move_regions_of_dead_node(
    mut procedure: Procedure,
    resumed: bool,
    f: OperationContext,
) -> Procedure {
    let dead = procedure.node_id;
    if resumed {
        procedure.step("resumed by a new leader");
    } else {
        procedure.step(format!("node {dead} declared dead"));
    }
    // Recorded before anything moves, so that a new leader finds it; a member that cannot
    // write it is no longer the leader and must not go on.
    if !f.save(&procedure, None).await {
        return procedure;
    }
    // From here on the node gets no lease on the regions it leads, even if it comes back while
    // we wait: so the last lease this leader granted it bounds every lease that matters. If this
    // leader never granted it one, a previous leader may have: those end within one lease of
    // our election, so within one lease from now (or from the node's last request to us).
    // Fenced, the node gets no new leader lease from heartbeats; but an OpenRegion or an
    // UpgradeRegion in flight when it was fenced may give one: the wait covers those too.
    let noted = f.tables.ownership().fence(dead);
    f.wait_out_write_leases(dead, noted).await;
    procedure.step("the dead node's region leases have lapsed");

    let mut candidates = match f.cluster_view.send(ListCandidates).await {
        Ok(candidates) => candidates,
        Err(e) => {
            procedure.finish(
                ProcedureState::Failed,
                format!("cluster view unavailable: {e}"),
            );
            f.save(&procedure, None).await;
            return procedure;
        }
    };
    if resumed && candidates.iter().any(|c| c.peer.id == dead) {
        procedure.finish(
            ProcedureState::Done,
            format!("node {dead} is alive again; nothing moved"),
        );
        f.save(&procedure, None).await;
        return procedure;
    }
    candidates.retain(|c| c.peer.id != dead);
    let regions = f.tables.regions_led_by(dead);
    tracing::warn!(
        node_id = dead,
        regions = regions.len(),
        "failing over the regions of a dead node"
    );
    if candidates.is_empty() && !regions.is_empty() {
        procedure.finish(ProcedureState::Failed, "no live datanode to fail over to");
        f.save(&procedure, None).await;
        return procedure;
    }
    // Which followers the dead leader last reported in sync.
    let replicas = f
        .cluster_view
        .send(GetReplicaReport { node_id: dead })
        .await
        .ok()
        .flatten();
    let routes: Vec<RegionRoute> = regions.iter().map(|(_, region)| region.clone()).collect();
    let planned = plan_region_moves(&routes, &candidates, replicas.as_deref());
    // Regions move a table at a time, a table's regions all at once: their instructions go out
    // together (a node gets its share in one response) and their route moves are group
    // committed into one or two writes of the table's route, where moving them one by one
    // wrote the route once per region (10,000 regions: 5 s of route writes). A table's batch
    // takes one operation permit (the permits bound operations, not regions) and several
    // tables move at once; the record is written at most every SAVE_EVERY.
    let mut by_table: Vec<Vec<PlannedMove>> = Vec::new();
    let mut table_index: std::collections::HashMap<u64, usize> = Default::default();
    for (planned, (entry, region)) in planned.into_iter().zip(regions) {
        let index = *table_index.entry(entry.info.id).or_insert_with(|| {
            by_table.push(Vec::new());
            by_table.len() - 1
        });
        by_table[index].push((planned, (entry, region)));
    }
    let f_ref = &f;
    let mut outcomes = futures::stream::iter(by_table)
        .map(|batch| async move {
            let _permit = f_ref.permits.acquire().await;
            futures::future::join_all(batch.into_iter().map(
                |(planned, (entry, region))| async move {
                    move_region(f_ref, dead, &entry, &region, planned).await
                },
            ))
            .await
        })
        .buffer_unordered(TABLES_AT_ONCE)
        .flat_map(futures::stream::iter);
    let mut failures = 0;
    let mut last_save = Instant::now();
    while let Some(outcome) = outcomes.next().await {
        let steps = match outcome {
            Ok(steps) => steps,
            Err(steps) => {
                failures += 1;
                steps
            }
        };
        for step in steps {
            procedure.step(step);
        }
        if last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            f.save(&procedure, None).await;
        }
    }
    if failures == 0 {
        procedure.finish(ProcedureState::Done, "every region moved");
    } else {
        procedure.finish(
            ProcedureState::Failed,
            format!("{failures} regions were not moved"),
        );
    }
    f.save(&procedure, None).await;
    let _ = f.procedures.prune().await;
    procedure
}

/// Moves one region of the dead node to its planned target; returns the step lines, as `Err`
/// if the region was not moved.
async fn move_region(
    f: &OperationContext,
    dead: u64,
    entry: &TableEntry,
    region: &RegionRoute,
    planned: RegionMove,
) -> Result<Vec<String>, Vec<String>> {
    let mut steps = Vec::new();
    let region_id = region.region_id;
    let (target, instruction, undo) = match planned {
        RegionMove::Stuck { reason, .. } => {
            steps.push(format!("region {region_id}: {reason}"));
            return Err(steps);
        }
        // If the target does not confirm, it may still carry the instruction out (late):
        // the undo, sent on the same ordered stream, keeps it from leading the region
        // beside whatever moves it next.
        RegionMove::Promote { to, .. } => (
            to,
            // An upgrade carries a first write lease (a promotion would leave the follower
            // unable to write until its next heartbeat).
            Instruction::UpgradeRegion {
                region_id,
                lease_millis: f.config.region_lease.as_millis() as u64,
            },
            Instruction::DemoteToFollower { region_id },
        ),
        RegionMove::Reopen { to, .. } => (
            to,
            Instruction::OpenRegion {
                region_id,
                table: (&entry.info.name).into(),
                role: RegionRole::Leader,
                lease_millis: f.config.region_lease.as_millis() as u64,
            },
            Instruction::CloseRegion { region_id },
        ),
    };
    // The region is ours until moved: a DropTable of its table waits, and another
    // procedure cannot move it at the same time.
    let Some(_lock) = f.tables.lock_regions(&[region_id]) else {
        steps.push(format!("region {region_id}: another procedure holds it"));
        return Err(steps);
    };
    // The plan was made from the routes before this region's turn came: a migration may
    // have moved it meanwhile (after waiting out the dead node's lease itself).
    let led_by = |node_id: u64| {
        f.tables
            .region_route(region_id)
            .is_some_and(|(_, r)| r.leader.id == node_id)
    };
    if !led_by(dead) {
        steps.push(format!(
            "region {region_id}: moved meanwhile by another operation"
        ));
        return Ok(steps);
    }
    // Until the route names the target, its reports of the region are not "stale".
    f.tables.ownership().begin_move(region_id, target.id);
    if let Err(e) = f.instruct(target.id, instruction).await {
        f.undo_lead(target.id, region_id, undo.clone()).await;
        f.tables.ownership().end_move(region_id);
        steps.push(format!(
            "region {region_id}: node {} did not take it: {e}",
            target.id
        ));
        return Err(steps);
    }
    // The followers as they are now, under the lock (a drain may have moved one since the
    // plan): a snapshot's would bring back a moved copy and lose its replacement.
    let current_followers = f
        .tables
        .region_route(region_id)
        .map_or_else(|| region.followers.clone(), |(_, r)| r.followers);
    let followers: Vec<Peer> = current_followers
        .iter()
        .filter(|fo| fo.id != target.id && fo.id != dead)
        .cloned()
        .collect();
    let moved = f
        .tables
        .move_region_leader(region_id, dead, target.clone(), followers)
        .await;
    match moved {
        Ok(updated) => {
            f.tables.ownership().end_move(region_id);
            tracing::info!(
                region = region_id,
                from = dead,
                to = target.id,
                version = updated.route.version,
                "region failed over"
            );
            steps.push(format!(
                "region {region_id} now led by node {} (route version {})",
                target.id, updated.route.version
            ));
        }
        Err(e) => {
            if led_by(target.id) {
                // The write landed although its answer was lost (the manager re-read
                // the stored route): the move is done.
                f.tables.ownership().end_move(region_id);
                steps.push(format!(
                        "region {region_id} now led by node {} (the route write's answer was lost: {e})",
                        target.id
                    ));
            } else {
                // The target took the region but the route does not say so: it must
                // not go on leading it (a second writer once the region moves elsewhere).
                f.undo_lead(target.id, region_id, undo.clone()).await;
                f.tables.ownership().end_move(region_id);
                steps.push(format!("region {region_id}: cannot move the route: {e}"));
                return Err(steps);
            }
        }
    }
    Ok(steps)
}
