//! The reconciler's decisions, as pure functions of a snapshot (no clock, no I/O): the
//! Scheduler gathers the snapshot, calls these, and carries out what they return.
//!
//! Failover is level-triggered: every tick (and every liveness event) the Scheduler asks
//! [`plan_failovers`] which nodes the routes still give leader regions to although they are
//! dead, whatever happened before: a death during a leader change (the new leader seeds the
//! nodes it never heard from and they die like any other), during maintenance (planned again
//! once it is off), a second death while the first is handled, or a failover that failed
//! (retried after [`retry_delay`]). [`plan_region_moves`] then chooses, per region of a dead
//! leader, which live node takes it and how.

pub mod replicas;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::catalog::model::{Peer, RegionRoute};
use crate::selector::Candidate;
use crate::stats::ReplicaStats;

/// What the failover planner sees.
#[derive(Clone, Debug)]
pub struct FailoverSnapshot {
    /// Nodes declared dead (including nodes a new leader never heard from), each with
    /// whether the routes still make it lead any region.
    pub dead: Vec<(u64, bool)>,
    /// Nodes whose failover is running now.
    pub running: HashSet<u64>,
    /// Maintenance mode: nothing fails over.
    pub maintenance: bool,
    /// Nodes whose last failover failed, with the instant before which it is not retried.
    pub retry_not_before: HashMap<u64, Instant>,
    pub now: Instant,
}

/// A decision of the planner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// Move every region `node_id` leads to live nodes.
    FailOverNode { node_id: u64 },
}

/// The failovers to start now, in node order.
pub fn plan_failovers(snapshot: &FailoverSnapshot) -> Vec<Operator> {
    if snapshot.maintenance {
        return Vec::new();
    }
    let mut nodes: Vec<u64> = snapshot
        .dead
        .iter()
        .filter(|(node_id, leads)| {
            *leads
                && !snapshot.running.contains(node_id)
                && snapshot
                    .retry_not_before
                    .get(node_id)
                    .is_none_or(|at| *at <= snapshot.now)
        })
        .map(|(node_id, _)| *node_id)
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
        .into_iter()
        .map(|node_id| Operator::FailOverNode { node_id })
        .collect()
}

/// How long after its `attempts`-th failed try a failover is tried again: 1 s doubling up to
/// 30 s, so that a cluster without room for a node's regions is not hammered, and one that
/// gets room (a node joins) heals within 30 s.
pub fn retry_delay(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(5);
    Duration::from_secs(1 << exponent).min(Duration::from_secs(30))
}

/// How one region of a dead leader moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionMove {
    /// A live, in-sync follower becomes leader.
    Promote { region_id: u64, to: Peer },
    /// The region is opened as leader on a live node that has no copy of it (the storage is
    /// shared, so it reopens from there).
    Reopen { region_id: u64, to: Peer },
    /// No live node can take it now (retried later).
    Stuck { region_id: u64, reason: String },
}

impl RegionMove {
    pub fn region_id(&self) -> u64 {
        match self {
            RegionMove::Promote { region_id, .. }
            | RegionMove::Reopen { region_id, .. }
            | RegionMove::Stuck { region_id, .. } => *region_id,
        }
    }
}

/// Where each region of `regions` (all led by the dead node) goes. A live follower that the
/// dead leader last reported in sync (or did not report on: datanodes that do not report
/// replica state vouch for none) is promoted; otherwise the region reopens on the live node
/// with the fewest regions that holds no copy of it (never where a lagging copy lives: that
/// would promote it in effect). `candidates` are live nodes, the dead one excluded; their
/// region counts grow with each reopen so that the regions spread.
///
/// `replicas` is `None` when the dead leader sent no report this term (it died before this
/// leader heard from it): then no follower is known to be in sync, and regions reopen on a node
/// without a copy where one exists; a follower is promoted only when every live node holds a
/// copy (the region would otherwise stay down).
pub fn plan_region_moves(
    regions: &[RegionRoute],
    candidates: &[Candidate],
    replicas: Option<&[ReplicaStats]>,
) -> Vec<RegionMove> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let unknown = replicas.is_none();
    // The dead leader's follower reports by region: one pass, not one per region.
    let mut reported_of: HashMap<u64, Vec<&ReplicaStats>> = HashMap::new();
    for replica in replicas.unwrap_or_default() {
        reported_of
            .entry(replica.region_id)
            .or_default()
            .push(replica);
    }
    // The least-loaded live node first (ties to the lowest id): a heap, so that placing the
    // regions of a node that led 10,000 among 10,000 nodes is not 10^8 comparisons.
    let peers: HashMap<u64, &Peer> = candidates.iter().map(|c| (c.peer.id, &c.peer)).collect();
    let mut load: BinaryHeap<Reverse<(u64, u64)>> = candidates
        .iter()
        .map(|c| Reverse((c.regions, c.peer.id)))
        .collect();
    let mut moves = Vec::with_capacity(regions.len());
    let mut skipped = Vec::new();
    for region in regions {
        let reported = reported_of
            .get(&region.region_id)
            .map_or(&[][..], Vec::as_slice);
        let in_sync = |follower: u64| {
            reported.is_empty()
                || reported
                    .iter()
                    .any(|r| r.peer_id == follower && r.in_sync && !r.is_learner)
        };
        let live_follower = region
            .followers
            .iter()
            .find(|f| peers.contains_key(&f.id) && (unknown || in_sync(f.id)));
        if let (Some(follower), false) = (live_follower, unknown) {
            moves.push(RegionMove::Promote {
                region_id: region.region_id,
                to: follower.clone(),
            });
            continue;
        }
        // The least-loaded node that holds no copy of the region (its followers are few).
        let best = loop {
            match load.pop() {
                Some(Reverse((count, id))) if region.followers.iter().any(|f| f.id == id) => {
                    skipped.push(Reverse((count, id)))
                }
                other => break other,
            }
        };
        load.extend(skipped.drain(..));
        match (best, live_follower) {
            (None, Some(follower)) => moves.push(RegionMove::Promote {
                region_id: region.region_id,
                to: follower.clone(),
            }),
            (Some(Reverse((count, id))), _) => {
                load.push(Reverse((count + 1, id)));
                moves.push(RegionMove::Reopen {
                    region_id: region.region_id,
                    to: peers[&id].clone(),
                });
            }
            (None, None) => moves.push(RegionMove::Stuck {
                region_id: region.region_id,
                reason: "no live node without a lagging copy to open it on".into(),
            }),
        }
    }
    moves
}

/// How one region copy leaves a node being drained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainMove {
    /// The drained node leads the region: migrate it to `to` (a node that holds no copy, so
    /// the region keeps its number of copies; a follower when every live node holds one).
    Migrate { region_id: u64, to: Peer },
    /// The drained node follows the region: a copy opens on `to`, the route names it instead,
    /// the drained copy closes.
    MoveFollower { region_id: u64, to: Peer },
    /// The drained node follows the region and every other live node holds a copy already:
    /// the drained copy closes and leaves the route.
    DropFollower { region_id: u64 },
    /// No live node can take it now.
    Stuck { region_id: u64, reason: String },
}

impl DrainMove {
    pub fn region_id(&self) -> u64 {
        match self {
            DrainMove::Migrate { region_id, .. }
            | DrainMove::MoveFollower { region_id, .. }
            | DrainMove::DropFollower { region_id }
            | DrainMove::Stuck { region_id, .. } => *region_id,
        }
    }
}

/// Live nodes by how many regions they hold, for choosing where a new copy of a region goes:
/// the node with the fewest that holds no copy of it (ties to the lower id), whose count then
/// grows by one so that the copies a plan places spread. Used by the drain and by
/// re-replication (`replicas`).
pub(crate) struct LeastLoaded<'a> {
    peers: HashMap<u64, &'a Peer>,
    by_load: BTreeSet<(u64, u64)>,
}

impl<'a> LeastLoaded<'a> {
    pub(crate) fn new(candidates: impl IntoIterator<Item = &'a Candidate>) -> Self {
        let mut peers = HashMap::new();
        let mut by_load = BTreeSet::new();
        for c in candidates {
            peers.insert(c.peer.id, &c.peer);
            by_load.insert((c.regions, c.peer.id));
        }
        Self { peers, by_load }
    }

    /// Whether `node_id` is one of the live nodes.
    pub(crate) fn contains(&self, node_id: u64) -> bool {
        self.peers.contains_key(&node_id)
    }

    /// The least-loaded node that is not among `holders`, counted as holding one more region
    /// from now on; `None` if every node holds a copy. At most `holders.len()` entries are
    /// skipped before a free one turns up: O(copies + log nodes).
    pub(crate) fn take_without(&mut self, holders: &HashSet<u64>) -> Option<Peer> {
        let (count, id) = self
            .by_load
            .iter()
            .find(|(_, id)| !holders.contains(id))
            .copied()?;
        self.by_load.remove(&(count, id));
        self.by_load.insert((count + 1, id));
        Some(self.peers[&id].clone())
    }
}

/// The nodes that hold a copy of `region` (its leader and followers).
pub(crate) fn holders(region: &RegionRoute) -> HashSet<u64> {
    std::iter::once(region.leader.id)
        .chain(region.followers.iter().map(|f| f.id))
        .collect()
}

/// Where each copy `node_id` holds of `regions` goes when the node is drained: to the live node
/// with the fewest regions that holds no copy of the region ([`LeastLoaded`]).
/// O(regions × (copies + log nodes)).
pub fn plan_drain(
    node_id: u64,
    regions: &[RegionRoute],
    candidates: &[Candidate],
) -> Vec<DrainMove> {
    let mut nodes = LeastLoaded::new(candidates.iter().filter(|c| c.peer.id != node_id));
    let mut moves = Vec::with_capacity(regions.len());
    for region in regions {
        let leads = region.leader.id == node_id;
        if !leads && !region.followers.iter().any(|f| f.id == node_id) {
            continue;
        }
        if let Some(to) = nodes.take_without(&holders(region)) {
            moves.push(if leads {
                DrainMove::Migrate {
                    region_id: region.region_id,
                    to,
                }
            } else {
                DrainMove::MoveFollower {
                    region_id: region.region_id,
                    to,
                }
            });
            continue;
        }
        if !leads {
            moves.push(DrainMove::DropFollower {
                region_id: region.region_id,
            });
            continue;
        }
        let follower = region
            .followers
            .iter()
            .filter(|f| nodes.contains(f.id))
            .min_by_key(|f| f.id);
        moves.push(match follower {
            Some(follower) => DrainMove::Migrate {
                region_id: region.region_id,
                to: follower.clone(),
            },
            None => DrainMove::Stuck {
                region_id: region.region_id,
                reason: "no other live node to move it to".into(),
            },
        });
    }
    moves
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn peer(id: u64) -> Peer {
        Peer {
            id,
            addr: format!("10.0.0.{id}:4001"),
        }
    }

    pub(crate) fn candidate(id: u64, regions: u64) -> Candidate {
        Candidate {
            peer: peer(id),
            regions,
            rcus: 0,
            wcus: 0,
        }
    }

    pub(crate) fn region(region_id: u64, leader: u64, followers: &[u64]) -> RegionRoute {
        RegionRoute {
            region_id,
            region_number: region_id as u32,
            leader: peer(leader),
            followers: followers.iter().map(|f| peer(*f)).collect(),
        }
    }

    fn snapshot(dead: &[(u64, bool)]) -> FailoverSnapshot {
        FailoverSnapshot {
            dead: dead.to_vec(),
            running: HashSet::new(),
            maintenance: false,
            retry_not_before: HashMap::new(),
            now: Instant::now(),
        }
    }

    #[test]
    fn every_dead_leader_fails_over_however_it_died() {
        // Two nodes died at once (or one before a leader change: seeded, never heard, dead
        // like any other); node 5 is dead but leads nothing.
        let plan = plan_failovers(&snapshot(&[(3, true), (2, true), (5, false)]));
        assert_eq!(
            plan,
            vec![
                Operator::FailOverNode { node_id: 2 },
                Operator::FailOverNode { node_id: 3 }
            ]
        );
    }

    #[test]
    fn maintenance_plans_nothing_and_its_end_plans_again() {
        let mut s = snapshot(&[(2, true)]);
        s.maintenance = true;
        assert_eq!(plan_failovers(&s), vec![]);
        s.maintenance = false;
        assert_eq!(
            plan_failovers(&s),
            vec![Operator::FailOverNode { node_id: 2 }]
        );
    }

    #[test]
    fn a_running_failover_is_not_started_twice() {
        let mut s = snapshot(&[(2, true), (3, true)]);
        s.running.insert(2);
        assert_eq!(
            plan_failovers(&s),
            vec![Operator::FailOverNode { node_id: 3 }]
        );
    }

    #[test]
    fn a_failed_failover_is_retried_after_its_backoff() {
        let mut s = snapshot(&[(2, true)]);
        s.retry_not_before.insert(2, s.now + Duration::from_secs(1));
        assert_eq!(plan_failovers(&s), vec![]);
        s.now += Duration::from_secs(1);
        assert_eq!(
            plan_failovers(&s),
            vec![Operator::FailOverNode { node_id: 2 }]
        );
    }

    #[test]
    fn retry_delays_double_up_to_thirty_seconds() {
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn an_in_sync_live_follower_is_promoted() {
        let moves = plan_region_moves(
            &[region(10, 1, &[2, 3])],
            &[candidate(3, 0), candidate(4, 0)],
            Some(&[]),
        );
        assert_eq!(
            moves,
            vec![RegionMove::Promote {
                region_id: 10,
                to: peer(3)
            }]
        );
    }

    #[test]
    fn a_lagging_follower_is_skipped_and_its_node_is_not_used() {
        let lagging = ReplicaStats {
            region_id: 10,
            peer_id: 2,
            in_sync: false,
            is_learner: false,
        };
        let moves = plan_region_moves(
            &[region(10, 1, &[2])],
            &[candidate(2, 0), candidate(3, 5)],
            Some(&[lagging]),
        );
        assert_eq!(
            moves,
            vec![RegionMove::Reopen {
                region_id: 10,
                to: peer(3)
            }]
        );
    }

    #[test]
    fn with_every_copy_dead_regions_reopen_spread_over_the_least_loaded() {
        // Leader 1 and follower 2 both died (2 is no candidate): reopen on 3 or 4, spreading.
        let moves = plan_region_moves(
            &[
                region(10, 1, &[2]),
                region(11, 1, &[2]),
                region(12, 1, &[2]),
            ],
            &[candidate(3, 1), candidate(4, 0)],
            Some(&[]),
        );
        assert_eq!(
            moves,
            vec![
                RegionMove::Reopen {
                    region_id: 10,
                    to: peer(4)
                },
                RegionMove::Reopen {
                    region_id: 11,
                    to: peer(3)
                },
                RegionMove::Reopen {
                    region_id: 12,
                    to: peer(4)
                },
            ]
        );
    }

    #[test]
    fn a_region_with_no_possible_target_is_stuck() {
        let lagging = ReplicaStats {
            region_id: 10,
            peer_id: 2,
            in_sync: false,
            is_learner: false,
        };
        let moves = plan_region_moves(&[region(10, 1, &[2])], &[candidate(2, 0)], Some(&[lagging]));
        assert_eq!(
            moves,
            vec![RegionMove::Stuck {
                region_id: 10,
                reason: "no live node without a lagging copy to open it on".into()
            }]
        );
        assert_eq!(
            plan_region_moves(&[region(11, 1, &[])], &[], Some(&[])).len(),
            1
        );
    }

    #[test]
    fn a_leader_never_heard_this_term_vouches_for_no_follower() {
        // It died before this leader started: reopen where no copy lives...
        let moves = plan_region_moves(
            &[region(10, 1, &[2])],
            &[candidate(2, 0), candidate(3, 9)],
            None,
        );
        assert_eq!(
            moves,
            vec![RegionMove::Reopen {
                region_id: 10,
                to: peer(3)
            }]
        );
        // ...and promote only when every live node holds a copy.
        let moves = plan_region_moves(&[region(10, 1, &[2])], &[candidate(2, 0)], None);
        assert_eq!(
            moves,
            vec![RegionMove::Promote {
                region_id: 10,
                to: peer(2)
            }]
        );
    }

    #[test]
    fn a_drain_spreads_leaders_and_followers_over_nodes_without_a_copy() {
        let regions = vec![
            region(1, 9, &[]),
            region(2, 9, &[2]),
            region(3, 2, &[9]),
            region(4, 1, &[]), // not on the drained node: left alone
            region(5, 9, &[]),
        ];
        let candidates = vec![
            candidate(9, 0),
            candidate(1, 5),
            candidate(2, 0),
            candidate(3, 1),
        ];
        assert_eq!(
            plan_drain(9, &regions, &candidates),
            vec![
                DrainMove::Migrate {
                    region_id: 1,
                    to: peer(2)
                },
                // Node 2 follows region 2 already: the next least loaded without a copy.
                DrainMove::Migrate {
                    region_id: 2,
                    to: peer(3)
                },
                // Node 2 leads region 3: its follower copy goes to node 3.
                DrainMove::MoveFollower {
                    region_id: 3,
                    to: peer(3)
                },
                // Node 2 has 1 region now, node 3 has 3.
                DrainMove::Migrate {
                    region_id: 5,
                    to: peer(2)
                },
            ]
        );
    }

    #[test]
    fn a_drain_with_no_free_node_hands_leaders_to_followers_and_drops_follower_copies() {
        let regions = vec![region(1, 9, &[2]), region(2, 2, &[9]), region(3, 9, &[])];
        let candidates = vec![candidate(9, 0), candidate(2, 0)];
        assert_eq!(
            plan_drain(9, &regions, &candidates),
            vec![
                DrainMove::Migrate {
                    region_id: 1,
                    to: peer(2)
                },
                DrainMove::DropFollower { region_id: 2 },
                DrainMove::Migrate {
                    region_id: 3,
                    to: peer(2)
                },
            ]
        );
        assert_eq!(
            plan_drain(9, &regions, &[candidate(9, 0)]),
            vec![
                DrainMove::Stuck {
                    region_id: 1,
                    reason: "no other live node to move it to".into()
                },
                DrainMove::DropFollower { region_id: 2 },
                DrainMove::Stuck {
                    region_id: 3,
                    reason: "no other live node to move it to".into()
                },
            ]
        );
    }
}
