//! `RegionOwnership`: which regions the routes assign to each datanode, and in which role. The
//! leader keeps it in memory beside the catalog (rebuilt on election, updated with every route
//! change) so that every heartbeat can be answered with a region lease without a KV read.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::model::TableRoute;
use crate::ids::{IdMap, IdSet};
use crate::stats::{RegionRole, RegionStats};

pub struct RegionOwnership {
    by_node: RwLock<IdMap<IdMap<RegionRole>>>,
    /// Every region some route names.
    routed: RwLock<IdSet>,
    /// Regions being moved to a node (opened there, route not yet updated): not stale there.
    moving: RwLock<IdMap<u64>>,
    /// Tables whose stored records were quarantined at load: their regions are nobody's
    /// orphans (closing them would turn a metadata repair into an outage).
    withheld_tables: RwLock<HashSet<u64>>,
    /// When this term's ownership was built: leases granted by an earlier term (even upgrades
    /// a failed operation of it left behind) have all lapsed one lease after this.
    term_started_at: parking_lot::Mutex<Option<Instant>>,
    /// Lease grants and the fences that stop them, under one lock so that a failover knows,
    /// the moment it fences a node, the last lease that node was ever granted (see `fence`).
    grants: parking_lot::Mutex<Grants>,
    /// How long a resolved lease-granting instruction is remembered per region: past one
    /// lease (and the safety margin) no wait can need it (see `lead_grant_resolved`).
    grant_memory: Duration,
}

impl Default for RegionOwnership {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

#[derive(Default)]
struct Grants {
    /// Per node, the latest instant from which a write lease it holds may count: the arrival
    /// of the last request granted a leader region, or of the confirmation of the last
    /// `OpenRegion` as leader (whose first lease the node counts from receipt, before).
    last_grant: HashMap<u64, Instant>,
    /// Nodes being failed over: they get no leader lease on any region.
    fenced: HashSet<u64>,
    /// Regions being migrated, with their routed leader: it gets no write lease on them
    /// (only a follower lease, for reads) until the migration ends.
    fenced_regions: HashMap<u64, u64>,
    /// Per node, the lease-granting instructions (OpenRegion as leader, UpgradeRegion) sent
    /// and not answered yet, by instruction id, with their region: the node may already count
    /// a first write lease from one of them, which `last_grant` learns only when it resolves.
    /// A wait for a node's leases to lapse must outlast these too (`has_pending_lead_grant`).
    pending_lead_grants: HashMap<u64, HashMap<u64, u64>>,
    /// Per (node, region), when the last lease-granting instruction for it resolved: a first
    /// write lease it gave counts from before then.
    region_grants: HashMap<(u64, u64), Instant>,
    /// `region_grants` is pruned of entries older than `grant_memory` when it reaches this
    /// size (then twice what is left): every region a term ever opened would otherwise stay
    /// (40 MB a million regions).
    prune_region_grants_at: usize,
}

/// The least `prune_region_grants_at`: pruning a small map is not worth a pass.
const MIN_REGION_GRANTS_PRUNE: usize = 4096;

/// Regions a node reports in another role than the routes give it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMismatches {
    /// Reported leading, routed following (a promotion or upgrade whose route move failed and
    /// whose undo was lost, a transfer from a node that was away): it must not write them.
    pub leading: Vec<u64>,
    /// Reported following, routed leading (a downgrade whose migration was rolled back and
    /// whose re-upgrade was lost, a late downgrade).
    pub following: Vec<u64>,
}

/// The regions a heartbeat's lease covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrant {
    pub leader_region_ids: Vec<u64>,
    pub follower_region_ids: Vec<u64>,
}

/// What one full report calls for (see [`RegionOwnership::examine`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Examination {
    pub grant: LeaseGrant,
    pub stale: Vec<u64>,
    pub unrouted: Vec<u64>,
    pub roles: RoleMismatches,
    pub missing: Vec<(u64, RegionRole)>,
}

impl RegionOwnership {
    /// `grant_memory`: at least one region lease plus the failover safety margin.
    pub fn new(grant_memory: Duration) -> Self {
        Self {
            by_node: RwLock::default(),
            routed: RwLock::default(),
            moving: RwLock::default(),
            withheld_tables: RwLock::default(),
            term_started_at: parking_lot::Mutex::default(),
            grants: parking_lot::Mutex::default(),
            grant_memory,
        }
    }

    /// Replaces everything with the assignments of `routes`.
    pub fn rebuild<'a>(&self, routes: impl IntoIterator<Item = &'a TableRoute>) {
        // A new leader builds this for a million regions before it serves: every map sized
        // once (no rehashing as it grows), and the set of routed regions on a second thread.
        let routes: Vec<&TableRoute> = routes.into_iter().collect();
        let regions: usize = routes.iter().map(|route| route.regions.len()).sum();
        let build_routed = |routes: &[&TableRoute]| {
            let mut routed = IdSet::default();
            routed.reserve(regions);
            for route in routes {
                routed.extend(route.regions.iter().map(|r| r.region_id));
            }
            routed
        };
        let (by_node, routed) = std::thread::scope(|scope| {
            let routed = std::thread::Builder::new()
                .name("routed-regions".into())
                .spawn_scoped(scope, || build_routed(&routes));
            let mut copies: IdMap<usize> = IdMap::default();
            for region in routes.iter().flat_map(|route| &route.regions) {
                *copies.entry(region.leader.id).or_default() += 1;
                for follower in &region.followers {
                    *copies.entry(follower.id).or_default() += 1;
                }
            }
            let mut by_node: IdMap<IdMap<RegionRole>> = IdMap::default();
            by_node.reserve(copies.len());
            for (node, count) in copies {
                let mut regions = IdMap::default();
                regions.reserve(count);
                by_node.insert(node, regions);
            }
            for route in &routes {
                assign(&mut by_node, route);
            }
            let routed = match routed {
                // It only inserts; were it to panic, the panic is this thread's.
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had: build it here.
                Err(_) => build_routed(&routes),
            };
            (by_node, routed)
        });
        let old_by_node = std::mem::replace(&mut *self.by_node.write(), by_node);
        let old_routed = std::mem::replace(&mut *self.routed.write(), routed);
        // Freed outside the locks.
        drop((old_by_node, old_routed));
        // A new term: its own grants, fences and moves start from nothing (an abandoned
        // failover of an earlier term may have left some).
        *self.grants.lock() = Grants::default();
        self.moving.write().clear();
        *self.term_started_at.lock() = Some(Instant::now());
    }

    /// Whether this term began at least `settle` ago (see `term_started_at`).
    pub fn term_older_than(&self, settle: std::time::Duration) -> bool {
        self.term_started_at
            .lock()
            .is_some_and(|at| at.elapsed() >= settle)
    }

    /// Whether `region_id` is fenced on `node_id`, or the whole node is.
    pub fn is_fenced(&self, node_id: u64, region_id: u64) -> bool {
        let grants = self.grants.lock();
        grants.fenced.contains(&node_id) || grants.fenced_regions.get(&region_id) == Some(&node_id)
    }

    pub fn add_route(&self, route: &TableRoute) {
        assign(&mut self.by_node.write(), route);
        self.routed
            .write()
            .extend(route.regions.iter().map(|r| r.region_id));
    }

    pub fn remove_route(&self, route: &TableRoute) {
        {
            let mut routed = self.routed.write();
            for region in &route.regions {
                routed.remove(&region.region_id);
            }
        }
        let mut by_node = self.by_node.write();
        for region in &route.regions {
            for peer in std::iter::once(&region.leader).chain(&region.followers) {
                if let Some(regions) = by_node.get_mut(&peer.id) {
                    regions.remove(&region.region_id);
                }
            }
        }
    }

    /// The regions the routes give `node_id`, with its role in each, by region id.
    pub fn regions_of(&self, node_id: u64) -> Vec<(u64, RegionRole)> {
        let mut regions: Vec<(u64, RegionRole)> = self
            .by_node
            .read()
            .get(&node_id)
            .map(|regions| regions.iter().map(|(&id, &role)| (id, role)).collect())
            .unwrap_or_default();
        regions.sort_unstable_by_key(|(id, _)| *id);
        regions
    }

    /// How many region copies (leader or follower) the routes give each node.
    pub fn region_counts(&self) -> HashMap<u64, u64> {
        self.by_node
            .read()
            .iter()
            .map(|(&node_id, regions)| (node_id, regions.len() as u64))
            .collect()
    }

    /// Whether some route names `node_id` (as leader or follower of any region).
    pub fn knows(&self, node_id: u64) -> bool {
        self.by_node
            .read()
            .get(&node_id)
            .is_some_and(|regions| !regions.is_empty())
    }

    /// The regions the routes give `node_id`, with their roles, read-locked (`None`: none).
    /// A node's own map is a few hundred entries where the set of every routed region is a
    /// million: a report's lookups stay in cache. Hold it briefly: route changes wait for it.
    pub fn routed_to(
        &self,
        node_id: u64,
    ) -> Option<parking_lot::MappedRwLockReadGuard<'_, IdMap<RegionRole>>> {
        parking_lot::RwLockReadGuard::try_map(self.by_node.read(), |by_node| by_node.get(&node_id))
            .ok()
    }

    /// Whether the routes make `node_id` lead any region.
    pub fn leads_any(&self, node_id: u64) -> bool {
        self.by_node
            .read()
            .get(&node_id)
            .is_some_and(|regions| regions.values().any(|role| *role == RegionRole::Leader))
    }

    /// The role the routes give `node_id` for `region_id`.
    pub fn role(&self, node_id: u64, region_id: u64) -> Option<RegionRole> {
        self.by_node
            .read()
            .get(&node_id)
            .and_then(|regions| regions.get(&region_id))
            .copied()
    }

    /// Marks `region_id` as being moved to `node_id` (before it is opened there).
    pub fn begin_move(&self, region_id: u64, node_id: u64) {
        self.moving.write().insert(region_id, node_id);
    }

    /// Ends a move (after the route was updated, or the move failed).
    pub fn end_move(&self, region_id: u64) {
        self.moving.write().remove(&region_id);
    }

    /// The tables whose records the last catalog load quarantined (see `withheld_tables`).
    pub fn withhold_tables(&self, tables: HashSet<u64>) {
        *self.withheld_tables.write() = tables;
    }

    /// Everything a full report of `node_id` received at `received_at` calls for, in one pass
    /// over `reported` under one acquisition of the locks: the lease it is granted, and what
    /// the node must be told to fix. A reported region the routes give the node costs one
    /// lookup; the routed regions it does not report are looked for only when some are.
    ///
    /// - `grant`: the reported regions the routes assign to it, in the routed role; no leader
    ///   region while a failover fences the node, and only a follower lease on a region a
    ///   migration fences on it;
    /// - `stale`: reported, but routed to other nodes only (it was failed over while away):
    ///   to close. Regions no route names (a create in progress) are not stale;
    /// - `unrouted`: reported, named by no route and moved to it by no operation (a create
    ///   in progress, or orphans: a refused or failed create, a drop the node missed).
    ///   Regions of withheld tables are not among them;
    /// - `roles`: reported in another role than the routes give;
    /// - `missing`: routed to it but not reported (it restarted and lost them), with the
    ///   routed role; while the node is fenced by its failover, only its follower regions.
    pub fn examine(
        &self,
        node_id: u64,
        reported: &[RegionStats],
        received_at: Instant,
    ) -> Examination {
        self.examine_at(node_id, reported, Some(received_at))
    }

    /// [`Self::examine`]; `received_at: None` grants nothing (a look that renews no lease).
    fn examine_at(
        &self,
        node_id: u64,
        reported: &[RegionStats],
        received_at: Option<Instant>,
    ) -> Examination {
        let mut found = Examination::default();
        let by_node = self.by_node.read();
        let routed = self.routed.read();
        let moving = self.moving.read();
        let withheld = self.withheld_tables.read();
        let mut grants = self.grants.lock();
        let fenced = grants.fenced.contains(&node_id);
        let empty = IdMap::default();
        let owned = by_node.get(&node_id).unwrap_or(&empty);
        let mut owned_reported = 0;
        for region in reported {
            let id = region.region_id;
            let Some(&routed_role) = owned.get(&id) else {
                if moving.get(&id) == Some(&node_id) {
                    // Being moved here: neither stale nor an orphan, and no lease yet.
                } else if routed.contains(&id) {
                    found.stale.push(id);
                } else if !withheld.contains(&super::model::table_of_region(id)) {
                    found.unrouted.push(id);
                }
                continue;
            };
            owned_reported += 1;
            match (region.role, routed_role) {
                (RegionRole::Leader, RegionRole::Follower) => found.roles.leading.push(id),
                (RegionRole::Follower, RegionRole::Leader) => found.roles.following.push(id),
                _ => {}
            }
            if received_at.is_none() {
                continue;
            }
            match routed_role {
                RegionRole::Leader if fenced => {}
                RegionRole::Leader if grants.fenced_regions.get(&id) == Some(&node_id) => {
                    found.grant.follower_region_ids.push(id)
                }
                RegionRole::Leader => found.grant.leader_region_ids.push(id),
                RegionRole::Follower => found.grant.follower_region_ids.push(id),
            }
        }
        // Report ids are unique (validated), so the count tells whether any is missing.
        if owned_reported < owned.len() {
            let reported: IdSet = reported.iter().map(|r| r.region_id).collect();
            found.missing = owned
                .iter()
                .filter(|(id, role)| {
                    let moving_away = **role == RegionRole::Leader
                        && (fenced || grants.fenced_regions.get(*id) == Some(&node_id));
                    !reported.contains(*id) && !moving_away
                })
                .map(|(id, role)| (*id, *role))
                .collect();
            found.missing.sort_unstable_by_key(|(id, _)| *id);
        }
        // Only write leases matter to a failover (it moves the regions a node leads); a
        // follower lease lets the node write nothing.
        if let Some(at) = received_at {
            if !found.grant.leader_region_ids.is_empty() {
                note(&mut grants, node_id, at);
            }
        }
        found
    }

    /// Views of [`Self::examine`] for the unit tests, which check one aspect at a time.
    #[cfg(test)]
    fn stale(&self, node_id: u64, reported: &[RegionStats]) -> Vec<u64> {
        self.examine_at(node_id, reported, None).stale
    }

    #[cfg(test)]
    fn unrouted(&self, node_id: u64, reported: &[RegionStats]) -> Vec<u64> {
        self.examine_at(node_id, reported, None).unrouted
    }

    #[cfg(test)]
    fn role_mismatches(&self, node_id: u64, reported: &[RegionStats]) -> RoleMismatches {
        self.examine_at(node_id, reported, None).roles
    }

    #[cfg(test)]
    fn missing(&self, node_id: u64, reported: &[RegionStats]) -> Vec<(u64, RegionRole)> {
        self.examine_at(node_id, reported, None).missing
    }

    #[cfg(test)]
    fn grant(&self, node_id: u64, reported: &[RegionStats], at: Instant) -> LeaseGrant {
        self.examine(node_id, reported, at).grant
    }

    /// A lease-granting instruction `instruction_id` for `region_id` was sent to `node_id`
    /// (see `pending_lead_grants`).
    pub fn lead_grant_sent(&self, node_id: u64, instruction_id: u64, region_id: u64) {
        let mut grants = self.grants.lock();
        grants
            .pending_lead_grants
            .entry(node_id)
            .or_default()
            .insert(instruction_id, region_id);
    }

    /// The lease-granting instruction `instruction_id` resolved at `at` (answered, timed out,
    /// or lost with its stream): any lease it gave counts from before `at`. One of an earlier
    /// term (gone with `rebuild`) still moves `last_grant` on, which only makes waits longer.
    pub fn lead_grant_resolved(&self, node_id: u64, instruction_id: u64, at: Instant) {
        let mut grants = self.grants.lock();
        note(&mut grants, node_id, at);
        let Some(pending) = grants.pending_lead_grants.get_mut(&node_id) else {
            return;
        };
        let region_id = pending.remove(&instruction_id);
        if pending.is_empty() {
            grants.pending_lead_grants.remove(&node_id);
        }
        if let Some(region_id) = region_id {
            let last = grants
                .region_grants
                .entry((node_id, region_id))
                .or_insert(at);
            *last = (*last).max(at);
        }
        if grants.region_grants.len() >= grants.prune_region_grants_at {
            forget_grants_before(&mut grants, at.checked_sub(self.grant_memory));
        }
    }

    /// Forgets resolved grants no lease wait can need any more (called periodically: a burst
    /// of opens is otherwise kept until the map grows again).
    pub fn forget_old_grants(&self, now: Instant) {
        let mut grants = self.grants.lock();
        if !grants.region_grants.is_empty() {
            forget_grants_before(&mut grants, now.checked_sub(self.grant_memory));
        }
    }

    /// Whether a lease-granting instruction to `node_id` is still unanswered: until it
    /// resolves, no one knows when the lease it may have given ends.
    pub fn has_pending_lead_grant(&self, node_id: u64) -> bool {
        self.grants
            .lock()
            .pending_lead_grants
            .contains_key(&node_id)
    }

    /// [`Self::has_pending_lead_grant`] for one region of the node.
    pub fn has_pending_lead_grant_on(&self, node_id: u64, region_id: u64) -> bool {
        self.grants
            .lock()
            .pending_lead_grants
            .get(&node_id)
            .is_some_and(|pending| pending.values().any(|r| *r == region_id))
    }

    /// When the last lease-granting instruction for `region_id` on `node_id` resolved.
    pub fn region_grant(&self, node_id: u64, region_id: u64) -> Option<Instant> {
        self.grants
            .lock()
            .region_grants
            .get(&(node_id, region_id))
            .copied()
    }

    /// Stops granting `node_id` leader leases (a failover is about to move its regions) and
    /// returns [`Self::last_grant`]. Heartbeat grants after this carry no leader region, so
    /// only instruction results can move `last_grant` on: the failover re-reads it before it
    /// acts.
    pub fn fence(&self, node_id: u64) -> Option<Instant> {
        let mut grants = self.grants.lock();
        grants.fenced.insert(node_id);
        grants.last_grant.get(&node_id).copied()
    }

    /// The latest instant from which a lease of `node_id` may count, if this leader ever gave
    /// it one: every lease it holds from this leader ends by then plus one lease length.
    pub fn last_grant(&self, node_id: u64) -> Option<Instant> {
        self.grants.lock().last_grant.get(&node_id).copied()
    }

    /// Stops granting `node_id` a write lease on `region_id` (a migration takes the region from
    /// it; it keeps a follower lease) and returns the instant from which its last write lease
    /// on the region may count: that lease ends by then plus one lease length.
    pub fn fence_region(&self, region_id: u64, node_id: u64) -> Option<Instant> {
        let mut grants = self.grants.lock();
        grants.fenced_regions.insert(region_id, node_id);
        grants.last_grant.get(&node_id).copied()
    }

    /// Lifts the fence of [`Self::fence_region`] (the migration ended either way).
    pub fn unfence_region(&self, region_id: u64) {
        self.grants.lock().fenced_regions.remove(&region_id);
    }

    /// Lifts the fence of `node_id` (its failover ended).
    pub fn unfence(&self, node_id: u64) {
        self.grants.lock().fenced.remove(&node_id);
    }
}

fn forget_grants_before(grants: &mut Grants, horizon: Option<Instant>) {
    if let Some(horizon) = horizon {
        grants
            .region_grants
            .retain(|_, resolved| *resolved > horizon);
        // Only once mostly empty: a map shrunk to fit regrows with the next grant.
        if grants.region_grants.capacity() > 4 * grants.region_grants.len().max(1024) {
            grants.region_grants.shrink_to_fit();
        }
    }
    grants.prune_region_grants_at = (2 * grants.region_grants.len()).max(MIN_REGION_GRANTS_PRUNE);
}

fn note(grants: &mut Grants, node_id: u64, at: Instant) {
    let last = grants.last_grant.entry(node_id).or_insert(at);
    *last = (*last).max(at);
}

fn assign(by_node: &mut IdMap<IdMap<RegionRole>>, route: &TableRoute) {
    for region in &route.regions {
        by_node
            .entry(region.leader.id)
            .or_default()
            .insert(region.region_id, RegionRole::Leader);
        for follower in &region.followers {
            by_node
                .entry(follower.id)
                .or_default()
                .insert(region.region_id, RegionRole::Follower);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{Peer, RegionRoute};

    fn peer(id: u64) -> Peer {
        Peer {
            id,
            addr: format!("127.0.0.1:{}", 4000 + id),
        }
    }

    /// Regions 1..=n of table 1, region i led by `leaders[i]` with `followers[i]`.
    fn route(version: u64, copies: &[(u64, &[u64])]) -> TableRoute {
        TableRoute {
            table_id: 1,
            version,
            regions: copies
                .iter()
                .enumerate()
                .map(|(i, (leader, followers))| RegionRoute {
                    region_id: i as u64 + 1,
                    region_number: i as u32,
                    leader: peer(*leader),
                    followers: followers.iter().map(|f| peer(*f)).collect(),
                })
                .collect(),
        }
    }

    fn reported(ids: &[u64]) -> Vec<RegionStats> {
        ids.iter()
            .map(|&region_id| RegionStats {
                region_id,
                rcus: 0,
                wcus: 0,
                approximate_size: 0,
                approximate_rows: 0,
                scanned_bytes: 0,
                cpu_time_ms: 0,
                role: RegionRole::Leader,
            })
            .collect()
    }

    #[test]
    fn counts_grants_and_stale_regions_follow_the_routes() {
        let ownership = RegionOwnership::default();
        let before = route(1, &[(1, &[2]), (2, &[]), (1, &[3])]);
        ownership.add_route(&before);
        let counts = ownership.region_counts();
        assert_eq!(counts.get(&1), Some(&2));
        assert_eq!(counts.get(&2), Some(&2));
        assert_eq!(counts.get(&3), Some(&1));

        // Node 2 is granted what the routes give it, in that role, among what it reports.
        let now = Instant::now();
        let grant = ownership.grant(2, &reported(&[1, 2, 3]), now);
        assert_eq!(grant.leader_region_ids, vec![2]);
        assert_eq!(grant.follower_region_ids, vec![1]);
        assert_eq!(ownership.stale(2, &reported(&[1, 2, 3])), vec![3]);

        // Region 2 moves from node 2 to node 3: while it moves, node 3's copy is not stale.
        ownership.begin_move(2, 3);
        assert!(ownership.stale(3, &reported(&[2])).is_empty());
        let after = route(2, &[(1, &[2]), (3, &[]), (1, &[3])]);
        ownership.remove_route(&before);
        ownership.add_route(&after);
        ownership.end_move(2);
        assert_eq!(ownership.stale(2, &reported(&[2])), vec![2]);
        assert!(ownership
            .grant(2, &reported(&[2]), now)
            .leader_region_ids
            .is_empty());
        assert_eq!(ownership.region_counts().get(&2), Some(&1));
        assert_eq!(ownership.region_counts().get(&3), Some(&2));
        // A region no route names (a create in progress) is never stale.
        assert!(ownership.stale(2, &reported(&[99])).is_empty());
    }

    #[test]
    fn routed_regions_a_node_does_not_report_are_missing_unless_fenced() {
        let ownership = RegionOwnership::default();
        ownership.add_route(&route(1, &[(1, &[2]), (1, &[]), (2, &[1])]));
        assert_eq!(
            ownership.missing(1, &reported(&[1])),
            vec![(2, RegionRole::Leader), (3, RegionRole::Follower)]
        );
        assert!(ownership.missing(1, &reported(&[1, 2, 3, 99])).is_empty());
        assert!(ownership.missing(4, &reported(&[])).is_empty());
        ownership.fence(1);
        assert_eq!(
            ownership.missing(1, &reported(&[])),
            vec![(3, RegionRole::Follower)],
            "regions being failed over are not reopened on the node"
        );
    }

    #[test]
    fn a_region_being_migrated_gets_only_a_follower_lease_on_its_leader() {
        let ownership = RegionOwnership::default();
        ownership.add_route(&route(1, &[(1, &[2]), (1, &[2])]));
        let early = Instant::now();
        assert_eq!(
            ownership
                .grant(1, &reported(&[1, 2]), early)
                .leader_region_ids,
            vec![1, 2]
        );
        assert_eq!(ownership.fence_region(2, 1), Some(early));
        let grant = ownership.grant(1, &reported(&[1, 2]), early);
        assert_eq!(
            grant.leader_region_ids,
            vec![1],
            "region 1 is not migrating"
        );
        assert_eq!(grant.follower_region_ids, vec![2], "reads go on");
        // The follower of the region is not affected by the leader's fence.
        let follower = ownership.grant(2, &reported(&[2]), early);
        assert_eq!(follower.follower_region_ids, vec![2]);
        ownership.unfence_region(2);
        assert_eq!(
            ownership.grant(1, &reported(&[2]), early).leader_region_ids,
            vec![2]
        );
    }

    #[test]
    fn roles_that_differ_from_the_routes_and_fenced_regions_are_named() {
        let ownership = RegionOwnership::default();
        ownership.add_route(&route(1, &[(1, &[2]), (2, &[1])]));
        let mut report = reported(&[1, 2]);
        report[0].role = RegionRole::Follower; // routed leader of region 1
        report[1].role = RegionRole::Leader; // routed follower of region 2
        let mismatches = ownership.role_mismatches(1, &report);
        assert_eq!(mismatches.following, vec![1]);
        assert_eq!(mismatches.leading, vec![2]);
        assert_eq!(
            ownership.role_mismatches(3, &report),
            RoleMismatches::default()
        );
        // A region being migrated off its leader is not reopened there as leader.
        ownership.fence_region(1, 1);
        assert!(ownership.is_fenced(1, 1));
        assert!(!ownership.is_fenced(2, 1));
        assert_eq!(
            ownership.missing(1, &reported(&[])),
            vec![(2, RegionRole::Follower)]
        );
        ownership.unfence_region(1);
        assert_eq!(
            ownership.missing(1, &reported(&[])),
            vec![(1, RegionRole::Leader), (2, RegionRole::Follower)]
        );
    }

    #[test]
    fn a_fenced_node_gets_no_lease_on_the_regions_it_led() {
        let ownership = RegionOwnership::default();
        ownership.add_route(&route(1, &[(1, &[2]), (2, &[1])]));
        let early = Instant::now();
        assert_eq!(
            ownership
                .grant(1, &reported(&[1, 2]), early)
                .leader_region_ids,
            vec![1]
        );
        assert_eq!(ownership.fence(3), None, "never granted anything");
        // The fence returns the start of the last lease granted, and stops leader leases.
        assert_eq!(ownership.fence(1), Some(early));
        let later = early + std::time::Duration::from_secs(1);
        let grant = ownership.grant(1, &reported(&[1, 2]), later);
        assert!(grant.leader_region_ids.is_empty(), "{grant:?}");
        assert_eq!(grant.follower_region_ids, vec![2], "follower leases go on");
        assert_eq!(
            ownership.last_grant(1),
            Some(early),
            "a follower lease is no write lease"
        );
        // An OpenRegion as leader or an UpgradeRegion in flight: the lease it may give is
        // unknown until it resolves, and then counts from its resolution.
        ownership.lead_grant_sent(1, 41, 7);
        ownership.lead_grant_sent(1, 42, 8);
        assert!(ownership.has_pending_lead_grant(1));
        assert!(!ownership.has_pending_lead_grant(2));
        assert!(ownership.has_pending_lead_grant_on(1, 7));
        assert!(!ownership.has_pending_lead_grant_on(1, 9));
        assert_eq!(ownership.last_grant(1), Some(early), "nothing known yet");
        let confirmed = later + std::time::Duration::from_secs(1);
        ownership.lead_grant_resolved(1, 41, confirmed);
        assert!(ownership.has_pending_lead_grant(1), "42 is still out");
        assert!(!ownership.has_pending_lead_grant_on(1, 7));
        assert_eq!(ownership.region_grant(1, 7), Some(confirmed));
        assert_eq!(ownership.region_grant(1, 8), None);
        assert_eq!(ownership.last_grant(1), Some(confirmed));
        ownership.lead_grant_resolved(1, 42, later);
        assert!(!ownership.has_pending_lead_grant(1));
        assert_eq!(ownership.last_grant(1), Some(confirmed), "never moves back");
        ownership.unfence(1);
        let grant = ownership.grant(1, &reported(&[1, 2]), later);
        assert_eq!(grant.leader_region_ids, vec![1]);
    }

    #[test]
    fn resolved_grants_are_forgotten_once_no_lease_wait_needs_them() {
        let memory = Duration::from_secs(10);
        let ownership = RegionOwnership::new(memory);
        let start = Instant::now();
        // A term that opened many regions long ago, then a few lately.
        let old = MIN_REGION_GRANTS_PRUNE as u64 - 1;
        for region in 0..old {
            ownership.lead_grant_sent(1, region, region);
            ownership.lead_grant_resolved(1, region, start);
        }
        assert_eq!(
            ownership.region_grant(1, 0),
            Some(start),
            "below the prune size"
        );
        let late = start + memory + Duration::from_secs(1);
        for region in old..old + 3 {
            ownership.lead_grant_sent(1, region, region);
            ownership.lead_grant_resolved(1, region, late);
        }
        // The map reached the prune size at the first late one: the old are gone, the late
        // kept, and the next prune waits for the map to grow again.
        assert_eq!(ownership.region_grant(1, 0), None);
        assert_eq!(ownership.region_grant(1, old - 1), None);
        for region in old..old + 3 {
            assert_eq!(ownership.region_grant(1, region), Some(late));
        }
        assert_eq!(ownership.grants.lock().region_grants.len(), 3);
        assert_eq!(
            ownership.grants.lock().prune_region_grants_at,
            MIN_REGION_GRANTS_PRUNE
        );
        // The periodic pass forgets what a burst left once it is old enough.
        ownership.forget_old_grants(late + memory - Duration::from_millis(1));
        assert_eq!(ownership.region_grant(1, old), Some(late));
        ownership.forget_old_grants(late + memory);
        assert_eq!(ownership.region_grant(1, old), None);
        assert!(ownership.grants.lock().region_grants.is_empty());
    }

    #[test]
    fn regions_of_withheld_tables_are_no_orphans() {
        let ownership = RegionOwnership::default();
        ownership.add_route(&route(1, &[(1, &[])]));
        let orphan = crate::catalog::model::region_id(8, 0);
        let withheld = crate::catalog::model::region_id(9, 3);
        let reports = reported(&[1, orphan, withheld]);
        assert_eq!(ownership.unrouted(1, &reports), vec![orphan, withheld]);
        ownership.withhold_tables([9].into());
        assert_eq!(ownership.unrouted(1, &reports), vec![orphan]);
    }
}
