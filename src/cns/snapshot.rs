//! What the load planners see: each node's load in request units, its learned capacity, and a
//! few of its leader regions to move (the hottest and the coldest). ClusterView keeps the
//! candidates as reports arrive (a bounded selection per report), so a snapshot of 10,000
//! nodes is 10,000 small records, never a pass over a million regions.

use std::cmp::Ordering;

use serde::Serialize;

/// Leader regions kept per node as move candidates, at each end (hottest and coldest).
pub const CANDIDATES_PER_NODE: usize = 8;

/// A region a planner may move.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionBrief {
    pub region_id: u64,
    /// Request units per second (the region's weighted average).
    pub ru: f64,
    pub size: u64,
    /// Nodes holding a follower copy (from the route; filled in by the Autoadmin).
    pub followers: Vec<u64>,
}

/// One node as the planners see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeBrief {
    pub node_id: u64,
    /// Alive, streaming and not being drained: may give and take regions.
    pub schedulable: bool,
    /// Request units per second of every region the node reported (weighted averages).
    pub ru: f64,
    /// RU per second at full CPU, learned from the node's history; `None` until learned.
    pub capacity: Option<f64>,
    /// Share of its CPU the node used, averaged over its recent samples.
    pub utilization: f64,
    /// Region copies and leader regions in its last report, and their total size.
    pub regions: u32,
    pub leaders: u32,
    pub size: u64,
    /// Its hottest and coldest leader regions, hottest first / coldest first.
    pub hottest: Vec<RegionBrief>,
    pub coldest: Vec<RegionBrief>,
}

/// The `k` best regions of a stream by `better`, best first, in O(n log k).
#[derive(Debug)]
pub struct Best {
    k: usize,
    hottest: bool,
    kept: Vec<RegionBrief>,
}

impl Best {
    pub fn hottest(k: usize) -> Self {
        Self {
            k,
            hottest: true,
            kept: Vec::with_capacity(k),
        }
    }

    pub fn coldest(k: usize) -> Self {
        Self {
            k,
            hottest: false,
            kept: Vec::with_capacity(k),
        }
    }

    fn order(&self, a: &RegionBrief, b: &RegionBrief) -> Ordering {
        // Ties by id, so the choice does not depend on report order.
        let by_load = a.ru.total_cmp(&b.ru);
        let by_load = if self.hottest {
            by_load.reverse()
        } else {
            by_load
        };
        by_load.then(a.region_id.cmp(&b.region_id))
    }

    pub fn offer(&mut self, region_id: u64, ru: f64, size: u64) {
        let region = RegionBrief {
            region_id,
            ru,
            size,
            followers: Vec::new(),
        };
        if self.kept.len() == self.k {
            match self.kept.last() {
                Some(worst) if self.order(&region, worst) == Ordering::Less => {
                    self.kept.pop();
                }
                _ => return,
            }
        }
        let at = self
            .kept
            .partition_point(|kept| self.order(kept, &region) == Ordering::Less);
        self.kept.insert(at, region);
    }

    pub fn into_vec(self) -> Vec<RegionBrief> {
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_regions_are_kept_in_order_whatever_the_order_they_come_in() {
        let mut hot = Best::hottest(3);
        let mut cold = Best::coldest(3);
        for (id, ru) in [
            (1, 5.0),
            (2, 50.0),
            (3, 0.5),
            (4, 20.0),
            (5, 50.0),
            (6, 1.0),
        ] {
            hot.offer(id, ru, 0);
            cold.offer(id, ru, 0);
        }
        let ids = |best: Best| {
            best.into_vec()
                .iter()
                .map(|r| r.region_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(hot), [2, 5, 4]);
        assert_eq!(ids(cold), [3, 6, 1]);
    }
}
