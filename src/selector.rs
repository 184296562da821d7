//! Region placement policies: pure functions of the live nodes and their load, returning a
//! leader and followers per region. The `Scheduler` actor asks ClusterView for the nodes and calls
//! these; tests assert their exact output.

use serde::{Deserialize, Serialize};

use crate::catalog::model::Peer;

/// A live datanode that may receive regions.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub peer: Peer,
    /// Regions the node holds (from routes, or its own report if higher).
    pub regions: u64,
    /// Read and write capacity units in its latest report.
    pub rcus: u64,
    pub wcus: u64,
}

/// Where one region's copies go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub leader: Peer,
    pub followers: Vec<Peer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum SelectorKind {
    /// Nodes in turn, by id.
    RoundRobin,
    /// The node with the fewest regions and least RCU/WCU load first.
    #[default]
    LeastLoaded,
}

/// A placement policy with its state (the round-robin cursor).
#[derive(Clone, Debug)]
pub struct Selector {
    kind: SelectorKind,
    cursor: usize,
}

impl Selector {
    pub fn new(kind: SelectorKind) -> Self {
        Self { kind, cursor: 0 }
    }

    /// Places `regions` regions with `replicas` copies each (1 = leader only) on `candidates`.
    pub fn place(
        &mut self,
        candidates: &[Candidate],
        regions: u32,
        replicas: u32,
    ) -> Result<Vec<Placement>, String> {
        let replicas = replicas.max(1) as usize;
        if candidates.len() < replicas {
            return Err(format!(
                "{replicas} copies of each region need {replicas} live datanodes; {} are available",
                candidates.len()
            ));
        }
        let mut nodes: Vec<&Candidate> = candidates.iter().collect();
        nodes.sort_by_key(|c| c.peer.id);
        Ok(match self.kind {
            SelectorKind::RoundRobin => (0..regions)
                .map(|_| {
                    let start = self.cursor;
                    self.cursor = self.cursor.wrapping_add(1);
                    let mut copies =
                        (0..replicas).map(|k| nodes[(start + k) % nodes.len()].peer.clone());
                    let leader = copies.next().expect("replicas >= 1");
                    Placement {
                        leader,
                        followers: copies.collect(),
                    }
                })
                .collect(),
            SelectorKind::LeastLoaded => least_loaded(&nodes, regions, replicas),
        })
    }
}

/// Greedy: each copy goes to the node with the lowest score, where a region counts 1 and a node's
/// RCU+WCU counts 1 per cluster-average load; a node's score grows as it receives copies, so one
/// create spreads over the cluster. A min-heap keeps the order: O(regions x replicas x log
/// nodes), not a sort of every node per region (a 1,024-region create on 10,000 nodes).
fn least_loaded(nodes: &[&Candidate], regions: u32, replicas: usize) -> Vec<Placement> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let total_load: u64 = nodes.iter().map(|c| c.rcus + c.wcus).sum();
    let average_load = (total_load as f64 / nodes.len() as f64).max(1.0);
    // Lowest score first; ties to the lower node id (nodes are sorted by id).
    let mut heap: BinaryHeap<Reverse<(Score, usize)>> = nodes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let score = c.regions as f64 + (c.rcus + c.wcus) as f64 / average_load;
            Reverse((Score(score), i))
        })
        .collect();
    let mut chosen = Vec::with_capacity(replicas);
    (0..regions)
        .map(|_| {
            chosen.clear();
            for _ in 0..replicas {
                let Some(Reverse(lowest)) = heap.pop() else {
                    break;
                };
                chosen.push(lowest);
            }
            // Each chosen node's score grows by the copy it received.
            for &(Score(score), i) in &chosen {
                heap.push(Reverse((Score(score + 1.0), i)));
            }
            Placement {
                leader: nodes[chosen[0].1].peer.clone(),
                followers: chosen[1..]
                    .iter()
                    .map(|&(_, i)| nodes[i].peer.clone())
                    .collect(),
            }
        })
        .collect()
}

/// A placement score, totally ordered (`f64::total_cmp`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, regions: u64, load: u64) -> Candidate {
        Candidate {
            peer: Peer {
                id,
                addr: format!("n{id}:4001"),
            },
            regions,
            rcus: load,
            wcus: 0,
        }
    }

    fn ids(placements: &[Placement]) -> Vec<(u64, Vec<u64>)> {
        placements
            .iter()
            .map(|p| (p.leader.id, p.followers.iter().map(|f| f.id).collect()))
            .collect()
    }

    #[test]
    fn round_robin_cycles_by_node_id_and_continues_across_calls() {
        let nodes = [node(3, 0, 0), node(1, 0, 0), node(2, 0, 0)];
        let mut selector = Selector::new(SelectorKind::RoundRobin);
        let first = selector.place(&nodes, 4, 2).expect("place");
        assert_eq!(
            ids(&first),
            vec![(1, vec![2]), (2, vec![3]), (3, vec![1]), (1, vec![2])]
        );
        let next = selector.place(&nodes, 1, 1).expect("place");
        assert_eq!(ids(&next), vec![(2, vec![])]);
    }

    #[test]
    fn least_loaded_prefers_empty_and_idle_nodes_and_spreads() {
        let nodes = [node(1, 10, 0), node(2, 0, 0), node(3, 0, 5000)];
        let mut selector = Selector::new(SelectorKind::LeastLoaded);
        let placements = selector.place(&nodes, 3, 1).expect("place");
        // Node 2 (empty, idle) first; node 3 is empty but busy (its load counts as regions).
        assert_eq!(ids(&placements)[0], (2, vec![]));
        assert!(ids(&placements).iter().all(|(leader, _)| *leader != 1));
        let spread = selector
            .place(&[node(1, 0, 0), node(2, 0, 0), node(3, 0, 0)], 6, 1)
            .expect("place");
        let mut per_node = [0; 4];
        for p in &spread {
            per_node[p.leader.id as usize] += 1;
        }
        assert_eq!(&per_node[1..], &[2, 2, 2]);
    }

    #[test]
    fn copies_of_a_region_go_to_distinct_nodes() {
        let nodes = [node(1, 0, 0), node(2, 0, 0), node(3, 0, 0)];
        for kind in [SelectorKind::RoundRobin, SelectorKind::LeastLoaded] {
            for p in Selector::new(kind).place(&nodes, 5, 3).expect("place") {
                let mut all: Vec<u64> = p.followers.iter().map(|f| f.id).collect();
                all.push(p.leader.id);
                all.sort_unstable();
                all.dedup();
                assert_eq!(all.len(), 3, "{kind:?}: {p:?}");
            }
        }
    }

    #[test]
    fn too_few_nodes_for_the_replicas_is_an_error() {
        let err = Selector::new(SelectorKind::LeastLoaded)
            .place(&[node(1, 0, 0)], 1, 2)
            .expect_err("2 copies on 1 node");
        assert!(err.contains("need 2 live datanodes"), "{err}");
        assert!(Selector::new(SelectorKind::RoundRobin)
            .place(&[], 1, 1)
            .is_err());
    }

    /// The sort-every-node-per-region greedy this module used before the heap: the heap must
    /// place exactly as it did.
    fn least_loaded_by_sorting(
        nodes: &[&Candidate],
        regions: u32,
        replicas: usize,
    ) -> Vec<Placement> {
        let total_load: u64 = nodes.iter().map(|c| c.rcus + c.wcus).sum();
        let average_load = (total_load as f64 / nodes.len() as f64).max(1.0);
        let mut scores: Vec<f64> = nodes
            .iter()
            .map(|c| c.regions as f64 + (c.rcus + c.wcus) as f64 / average_load)
            .collect();
        (0..regions)
            .map(|_| {
                let mut order: Vec<usize> = (0..nodes.len()).collect();
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
                let chosen = &order[..replicas];
                for &i in chosen {
                    scores[i] += 1.0;
                }
                Placement {
                    leader: nodes[chosen[0]].peer.clone(),
                    followers: chosen[1..].iter().map(|&i| nodes[i].peer.clone()).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn the_heap_places_exactly_as_sorting_every_node_did() {
        let mut rng = crate::sim::Rng::seeded(7);
        for round in 0..200u64 {
            let count = 1 + (rng.next_u64() % 40) as usize;
            let candidates: Vec<Candidate> = (0..count as u64)
                .map(|id| node(id + 1, rng.next_u64() % 50, rng.next_u64() % 5_000))
                .collect();
            let nodes: Vec<&Candidate> = candidates.iter().collect();
            let replicas = 1 + (rng.next_u64() as usize % count.min(3));
            let regions = (rng.next_u64() % 300) as u32;
            assert_eq!(
                ids(&least_loaded(&nodes, regions, replicas)),
                ids(&least_loaded_by_sorting(&nodes, regions, replicas)),
                "round {round}: {count} nodes, {regions} regions x {replicas}"
            );
        }
    }
}
