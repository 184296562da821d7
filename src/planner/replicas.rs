//! Re-replication: the copies a failover or a dead node took away are made again. A failover
//! drops the dead leader's copy from the route (the region leads on with one copy fewer than
//! its table asks for), and a follower on a node that stays dead is a copy in name only. Both
//! get a new follower on a live node that holds no copy of the region. A dead follower no live
//! node can replace stays in the route: should its node come back, the copy is there again.
//!
//! A follower's node must have been silent for `replica_repair_after` first: a datanode that
//! restarts (an upgrade, a reboot) comes back with its copies, and copying them elsewhere
//! meanwhile would only be undone. A missing copy (dropped by a failover) is made at once:
//! nothing will bring it back.

use std::collections::HashSet;

use super::{holders, LeastLoaded};
use crate::catalog::model::{Peer, RegionRoute};
use crate::selector::Candidate;

/// One repair of one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaRepair {
    /// Open a follower copy on `to` and name it in the route, in place of the follower on
    /// `replaces` (a node dead for long) if any.
    AddFollower {
        region_id: u64,
        to: Peer,
        replaces: Option<u64>,
    },
}

impl ReplicaRepair {
    pub fn region_id(&self) -> u64 {
        match self {
            ReplicaRepair::AddFollower { region_id, .. } => *region_id,
        }
    }
}

/// What the re-replication planner sees besides the routes.
#[derive(Clone, Debug, Default)]
pub struct ReplicaSnapshot {
    /// Nodes that may take a new copy (alive, streaming, not cordoned), with their load.
    pub candidates: Vec<Candidate>,
    /// Every node declared dead now.
    pub dead: HashSet<u64>,
    /// The dead nodes silent for at least `replica_repair_after`.
    pub long_dead: HashSet<u64>,
}

/// Whether `region` (of a table that asks for `copies`) may need a repair: a cheap test, so
/// that a pass over a million routed regions touches only the few that do.
pub fn needs_repair(region: &RegionRoute, copies: u32, long_dead: &HashSet<u64>) -> bool {
    1 + region.followers.len() < copies as usize
        || region.followers.iter().any(|f| long_dead.contains(&f.id))
}

/// At most `limit` repairs, one per region, for `regions` (each with the copies its table asks
/// for). A region whose leader is dead is the failover's, and is left alone. New copies go to
/// the candidate with the fewest regions that holds no copy of the region
/// ([`LeastLoaded`]). O(regions × (copies + log nodes)).
pub fn plan_replica_repairs<'a>(
    regions: impl IntoIterator<Item = (&'a RegionRoute, u32)>,
    snapshot: &ReplicaSnapshot,
    limit: usize,
) -> Vec<ReplicaRepair> {
    let mut nodes = LeastLoaded::new(&snapshot.candidates);
    let mut repairs = Vec::new();
    for (region, copies) in regions {
        if repairs.len() >= limit {
            break;
        }
        if snapshot.dead.contains(&region.leader.id)
            || !needs_repair(region, copies, &snapshot.long_dead)
        {
            continue;
        }
        let replaces = region
            .followers
            .iter()
            .map(|f| f.id)
            .find(|id| snapshot.long_dead.contains(id));
        // None: every live node holds a copy already; nothing to do until a node joins.
        if let Some(to) = nodes.take_without(&holders(region)) {
            repairs.push(ReplicaRepair::AddFollower {
                region_id: region.region_id,
                to,
                replaces,
            });
        }
    }
    repairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tests::{candidate, peer, region};

    fn snapshot(candidates: &[(u64, u64)], dead: &[u64], long_dead: &[u64]) -> ReplicaSnapshot {
        ReplicaSnapshot {
            candidates: candidates
                .iter()
                .map(|(id, n)| candidate(*id, *n))
                .collect(),
            dead: dead.iter().copied().collect(),
            long_dead: long_dead.iter().copied().collect(),
        }
    }

    #[test]
    fn a_copy_a_failover_dropped_is_made_again_on_the_least_loaded_free_node() {
        // Region 10 (2 copies wanted) leads on 2 alone after its leader 1 failed over.
        let routes = [region(10, 2, &[]), region(11, 3, &[2])];
        let s = snapshot(&[(2, 5), (3, 1), (4, 0)], &[1], &[]);
        let plan = plan_replica_repairs(routes.iter().map(|r| (r, 2)), &s, 10);
        assert_eq!(
            plan,
            vec![ReplicaRepair::AddFollower {
                region_id: 10,
                to: peer(4),
                replaces: None
            }]
        );
    }

    #[test]
    fn a_follower_on_a_node_dead_for_long_is_replaced_and_one_dead_briefly_is_not() {
        let routes = [region(10, 2, &[1]), region(11, 2, &[5])];
        // Node 1 died long ago, node 5 only just.
        let s = snapshot(&[(2, 0), (3, 0), (4, 1)], &[1, 5], &[1]);
        let plan = plan_replica_repairs(routes.iter().map(|r| (r, 2)), &s, 10);
        assert_eq!(
            plan,
            vec![ReplicaRepair::AddFollower {
                region_id: 10,
                to: peer(3),
                replaces: Some(1)
            }]
        );
    }

    #[test]
    fn new_copies_spread_and_never_land_beside_a_copy() {
        let routes = [region(10, 2, &[]), region(11, 2, &[]), region(12, 3, &[])];
        let s = snapshot(&[(2, 0), (3, 0)], &[], &[]);
        let plan = plan_replica_repairs(routes.iter().map(|r| (r, 2)), &s, 10);
        assert_eq!(
            plan,
            vec![
                ReplicaRepair::AddFollower {
                    region_id: 10,
                    to: peer(3),
                    replaces: None
                },
                ReplicaRepair::AddFollower {
                    region_id: 11,
                    to: peer(3),
                    replaces: None
                },
                ReplicaRepair::AddFollower {
                    region_id: 12,
                    to: peer(2),
                    replaces: None
                },
            ]
        );
    }

    #[test]
    fn a_dead_follower_nobody_can_replace_stays_in_the_route() {
        // Every live node holds a copy of region 10 already.
        let routes = [region(10, 2, &[3, 1])];
        let s = snapshot(&[(2, 0), (3, 0)], &[1], &[1]);
        assert_eq!(
            plan_replica_repairs(routes.iter().map(|r| (r, 3)), &s, 10),
            vec![]
        );
    }

    #[test]
    fn the_failovers_regions_fully_replicated_ones_and_the_limit_are_respected() {
        let routes = [
            // Its leader is dead: the failover's.
            region(10, 1, &[]),
            // Two copies, as asked.
            region(11, 2, &[3]),
            region(12, 2, &[]),
            region(13, 3, &[]),
        ];
        let s = snapshot(&[(2, 0), (3, 0), (4, 0)], &[1], &[]);
        let plan = plan_replica_repairs(routes.iter().map(|r| (r, 2)), &s, 1);
        assert_eq!(
            plan.iter()
                .map(ReplicaRepair::region_id)
                .collect::<Vec<_>>(),
            vec![12]
        );
        // Nothing to do when every live node already holds a copy.
        let s = snapshot(&[(2, 0)], &[], &[]);
        assert_eq!(
            plan_replica_repairs([(&region(12, 2, &[]), 2)], &s, 10),
            vec![]
        );
    }
}
