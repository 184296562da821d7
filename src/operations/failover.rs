//! The failover of a dead node: every region it leads moves to a live node (a live, in-sync
//! follower is upgraded, or the region reopens from the shared storage), never while the dead
//! node's write leases may still run. Where each region goes comes from
//! `planner::plan_region_moves`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::OperationContext;
use crate::actors::cluster_view::{GetReplicaReport, Instruction, ListCandidates};
use crate::catalog::manager::{LeaderMove, TableEntry};
use crate::catalog::model::{Peer, RegionRoute};
use crate::catalog::DdlError;
use crate::planner::{plan_region_moves, RegionMove};
use crate::procedure::{Procedure, ProcedureState};
use crate::stats::RegionRole;

/// One region of the dead node with where it goes.
type PlannedMove = (RegionMove, (Arc<TableEntry>, RegionRoute));

/// The most batches one dead node's regions move in. Each batch is a set of whole tables and
/// takes one operation permit (32 by default), and every batch moves at once, so a node's
/// regions move in one wave whatever its tables' sizes. Batching by a count of tables moved
/// a node leading 50 regions in each of 200 tables in seven waves, each as long as its slowest
/// region (7.1 s at 10,000 nodes); batching 500 regions of each of 20 tables 8 tables at a
/// time, in three.
const MAX_BATCHES: usize = 32;
/// The procedure record is written at most this often while regions move.
const SAVE_EVERY: Duration = Duration::from_millis(250);
/// How long a batch collects its targets' confirmations before writing the routes of those
/// that came (every confirmation already came: at once).
const COLLECT_FOR: Duration = Duration::from_millis(100);

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
    // A table's regions move together: their instructions go out together (a node gets its
    // share in one response) and their route moves are group committed into one or two
    // writes of the table's route, where moving them one by one wrote the route once per
    // region (10,000 regions: 5 s of route writes). Tables are packed into at most
    // MAX_BATCHES batches of about equal regions; a batch takes one operation permit (the
    // permits bound operations, not regions) and the batches move at once. The record is
    // written at most every SAVE_EVERY.
    let batches = batch_by_group(
        planned.into_iter().zip(regions),
        |(_, (entry, _)): &PlannedMove| entry.info.id,
        MAX_BATCHES,
    );
    // Each batch is a task of its own: tokio lets a task take only so many wake-ups per poll
    // (its cooperative budget), so 10,000 moves in one task saw their confirmations a hundred
    // or so per turn of a saturated runtime, seconds after they came. The recorder runs beside
    // them: recording (a save of a record of thousands of steps) inline between two outcomes
    // held every move still under way. The channel holds at most one outcome per region of the
    // node. Dropping the set (the term ended) aborts every batch.
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut moving = tokio::task::JoinSet::new();
    let expected: usize = batches.iter().map(Vec::len).sum();
    for batch in batches {
        let f = f.clone();
        let done = done.clone();
        moving.spawn(async move {
            let _permit = f.permits.acquire().await;
            for outcome in move_batch(&f, dead, batch).await {
                let _ = done.send(outcome);
            }
        });
    }
    // Once every batch has sent its outcomes the senders are gone, and the recorder ends.
    drop(done);
    let moving = async move { while moving.join_next().await.is_some() {} };
    let recording = async {
        let (mut failures, mut recorded) = (0, 0);
        let mut last_save = Instant::now();
        while let Some(outcome) = finished.recv().await {
            recorded += 1;
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
        // A batch that panicked sent nothing for the regions it had left: not moved.
        failures + expected.saturating_sub(recorded)
    };
    let ((), failures) = futures::join!(moving, recording);
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

/// Packs `items` into at most `max_batches` batches of whole groups (items with the same
/// `group`, a table) with about as many items each: largest groups first, each to the batch
/// with the fewest items so far. A group's items keep their order.
fn batch_by_group<T>(
    items: impl IntoIterator<Item = T>,
    group: impl Fn(&T) -> u64,
    max_batches: usize,
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    for item in items {
        let index = *index_of.entry(group(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[index].push(item);
    }
    // Stable: groups of equal size keep their order.
    groups.sort_by_key(|items| std::cmp::Reverse(items.len()));
    let mut batches: Vec<Vec<T>> = Vec::new();
    for items in groups {
        if batches.len() < max_batches.max(1) {
            batches.push(items);
        } else if let Some(smallest) = batches.iter_mut().min_by_key(|batch| batch.len()) {
            smallest.extend(items);
        }
    }
    batches
}

/// What a region's move returns: its step lines, as `Err` if the region was not moved.
type MoveOutcome = Result<Vec<String>, Vec<String>>;

/// Moves one batch (whole tables) of the dead node's regions: every target is instructed at
/// once, and the moves the targets confirmed are written to the routes together, once every
/// instruction has resolved or once the first unwritten confirmation has waited
/// `COLLECT_FOR`. Writing each move as its confirmation came (group committed behind the
/// write under way) wrote a 1,000-region route 20-30 times per table in one failover.
async fn move_batch(f: &OperationContext, dead: u64, batch: Vec<PlannedMove>) -> Vec<MoveOutcome> {
    use futures::stream::FuturesUnordered;
    let started = Instant::now();
    let regions = batch.len();
    let mut instructing: FuturesUnordered<_> = batch
        .into_iter()
        .map(|(planned, (entry, region))| async move {
            start_move(f, dead, &entry, &region, planned).await
        })
        .collect();
    let mut writing = FuturesUnordered::new();
    let mut confirmed: Vec<StartedMove<'_>> = Vec::new();
    let mut write_at: Option<tokio::time::Instant> = None;
    let mut outcomes = Vec::with_capacity(regions);
    let mut writes = 0;
    let mut last_confirmed = None;
    loop {
        let collected =
            instructing.is_empty() || write_at.is_some_and(|at| at <= tokio::time::Instant::now());
        if !confirmed.is_empty() && collected {
            writes += 1;
            writing.push(finish_moves(f, dead, std::mem::take(&mut confirmed)));
            write_at = None;
        }
        if instructing.is_empty() && writing.is_empty() {
            break;
        }
        tokio::select! {
            Some(started) = instructing.next(), if !instructing.is_empty() => match started {
                Ok(started) => {
                    last_confirmed = Some(started.started.elapsed());
                    write_at.get_or_insert_with(|| tokio::time::Instant::now() + COLLECT_FOR);
                    confirmed.push(started);
                }
                Err(outcome) => outcomes.push(outcome),
            },
            Some(written) = writing.next(), if !writing.is_empty() => outcomes.extend(written),
            () = sleep_until_some(write_at) => {}
        }
    }
    tracing::info!(
        node_id = dead,
        regions,
        route_writes = writes,
        last_confirmed_ms = last_confirmed.map(|d| d.as_millis() as u64),
        took_ms = started.elapsed().as_millis() as u64,
        "moved a batch of a dead node's regions"
    );
    outcomes
}

/// Waits until `at`; forever if `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A region whose target confirmed taking it: what its route write needs, and how to take
/// the lead back if that write fails. Holds the region's lock.
struct StartedMove<'a> {
    region_id: u64,
    target: Peer,
    /// The region's followers as planned (used if the region has left the routes since).
    planned_followers: Vec<Peer>,
    undo: Instruction,
    started: Instant,
    _lock: crate::catalog::manager::RegionLocks<'a>,
}

/// The first half of a region's move: instructs its planned target to lead it. `Err` holds the
/// region's outcome if it goes no further: a failure, or success if another operation moved
/// it meanwhile.
async fn start_move<'a>(
    f: &'a OperationContext,
    dead: u64,
    entry: &TableEntry,
    region: &RegionRoute,
    planned: RegionMove,
) -> Result<StartedMove<'a>, MoveOutcome> {
    let started = Instant::now();
    let mut steps = Vec::new();
    let region_id = region.region_id;
    let (target, instruction, undo) = match planned {
        RegionMove::Stuck { reason, .. } => {
            steps.push(format!("region {region_id}: {reason}"));
            return Err(Err(steps));
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
    let Some(lock) = f.tables.lock_regions(&[region_id]) else {
        steps.push(format!("region {region_id}: another procedure holds it"));
        return Err(Err(steps));
    };
    // The plan was made from the routes before this region's turn came: a migration may
    // have moved it meanwhile (after waiting out the dead node's lease itself).
    if !led_by(f, region_id, dead) {
        steps.push(format!(
            "region {region_id}: moved meanwhile by another operation"
        ));
        return Err(Ok(steps));
    }
    // Until the route names the target, its reports of the region are not "stale".
    f.tables.ownership().begin_move(region_id, target.id);
    if let Err(e) = f.instruct(target.id, instruction).await {
        f.undo_lead(target.id, region_id, undo).await;
        f.tables.ownership().end_move(region_id);
        steps.push(format!(
            "region {region_id}: node {} did not take it: {e}",
            target.id
        ));
        return Err(Err(steps));
    }
    Ok(StartedMove {
        region_id,
        target,
        planned_followers: region.followers.clone(),
        undo,
        started,
        _lock: lock,
    })
}

/// Whether the routes have `node_id` lead `region_id`.
fn led_by(f: &OperationContext, region_id: u64, node_id: u64) -> bool {
    f.tables
        .region_route(region_id)
        .is_some_and(|(_, r)| r.leader.id == node_id)
}

/// The second half of the moves of `started` (regions whose targets lead them now): their
/// route moves, in one write per table; a target whose move could not be written is told to
/// give the region up.
async fn finish_moves(
    f: &OperationContext,
    dead: u64,
    started: Vec<StartedMove<'_>>,
) -> Vec<MoveOutcome> {
    let moves = started
        .iter()
        .map(|s| {
            // The followers as they are now, under the lock (a drain may have moved one since
            // the plan): a snapshot's would bring back a moved copy and lose its replacement.
            let current_followers = f
                .tables
                .region_route(s.region_id)
                .map_or_else(|| s.planned_followers.clone(), |(_, r)| r.followers);
            LeaderMove {
                region_id: s.region_id,
                from: dead,
                leader: s.target.clone(),
                followers: current_followers
                    .into_iter()
                    .filter(|fo| fo.id != s.target.id && fo.id != dead)
                    .collect(),
            }
        })
        .collect();
    let written = f.tables.move_region_leaders(moves).await;
    futures::future::join_all(
        started
            .into_iter()
            .zip(written)
            .map(|(s, moved)| finish_move(f, dead, s, moved)),
    )
    .await
}

/// Ends one region's move once its route write has answered.
async fn finish_move(
    f: &OperationContext,
    dead: u64,
    started: StartedMove<'_>,
    moved: Result<Arc<TableEntry>, DdlError>,
) -> MoveOutcome {
    let StartedMove {
        region_id,
        target,
        undo,
        started,
        ..
    } = &started;
    let region_id = *region_id;
    match moved {
        Ok(updated) => {
            f.tables.ownership().end_move(region_id);
            tracing::info!(
                region = region_id,
                from = dead,
                to = target.id,
                version = updated.route.version,
                took_ms = started.elapsed().as_millis() as u64,
                "region failed over"
            );
            Ok(vec![format!(
                "region {region_id} now led by node {} (route version {})",
                target.id, updated.route.version
            )])
        }
        Err(e) if led_by(f, region_id, target.id) => {
            // The write landed although its answer was lost (the manager re-read the stored
            // route): the move is done.
            f.tables.ownership().end_move(region_id);
            Ok(vec![format!(
                "region {region_id} now led by node {} (the route write's answer was lost: {e})",
                target.id
            )])
        }
        Err(e) => {
            // The target took the region but the route does not say so: it must not go on
            // leading it (a second writer once the region moves elsewhere).
            f.undo_lead(target.id, region_id, undo.clone()).await;
            f.tables.ownership().end_move(region_id);
            Err(vec![format!(
                "region {region_id}: cannot move the route: {e}"
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::batch_by_group;

    /// (table, region) pairs: `tables` tables of `regions` regions each.
    fn moves(tables: u64, regions: u64) -> Vec<(u64, u64)> {
        (0..tables)
            .flat_map(|t| (0..regions).map(move |r| (t, t * 1000 + r)))
            .collect()
    }

    #[test]
    fn many_small_tables_move_in_at_most_the_batch_count_of_equal_batches() {
        let batches = batch_by_group(moves(200, 50), |(table, _)| *table, 32);
        assert_eq!(batches.len(), 32);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        // 200 tables of 50 over 32 batches: 6 or 7 tables each.
        assert!(sizes.iter().all(|&n| n == 300 || n == 350), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        // Whole tables: each table's regions are in exactly one batch, in order.
        for table in 0..200 {
            let holding: Vec<&Vec<(u64, u64)>> = batches
                .iter()
                .filter(|batch| batch.iter().any(|(t, _)| *t == table))
                .collect();
            assert_eq!(holding.len(), 1, "table {table} split across batches");
            let regions: Vec<u64> = holding[0]
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, r)| *r)
                .collect();
            assert_eq!(
                regions,
                (0..50).map(|r| table * 1000 + r).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn few_tables_take_a_batch_each_and_the_largest_go_first() {
        let mut items = moves(3, 2);
        items.extend((0..5).map(|r| (9, 9000 + r)));
        let batches = batch_by_group(items, |(table, _)| *table, 32);
        let tables: Vec<u64> = batches.iter().map(|batch| batch[0].0).collect();
        assert_eq!(tables, vec![9, 0, 1, 2]);
        assert!(batch_by_group(Vec::<(u64, u64)>::new(), |(t, _)| *t, 32).is_empty());
        // A batch count of zero still moves everything, in one batch.
        assert_eq!(batch_by_group(moves(3, 2), |(t, _)| *t, 0).len(), 1);
    }
}
