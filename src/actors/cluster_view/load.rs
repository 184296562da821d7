//! What ClusterView keeps of the load reports: a bounded ring of samples per node, and a
//! compact running summary per routed region.

use std::collections::VecDeque;

use serde::Serialize;

use crate::stats::{NodeStats, RegionStats};

/// One point of a node's stats history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSample {
    pub at_unix_ms: u64,
    pub stats: NodeStats,
}

/// A routed region's load as the planners read it: its last report, and averages over about
/// `region_history` reports (exponentially weighted: `2 / (window + 1)` for each new report).
/// 48 bytes, where a ring of 60 samples was 2 KiB: at a million regions that is 48 MB, not
/// 2 GiB, and the weighted average is what a hot-region planner reads anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RegionLoad {
    pub last_unix_ms: u64,
    pub rcus: u64,
    pub wcus: u64,
    pub approximate_size: u64,
    pub avg_rcus: f32,
    pub avg_wcus: f32,
    /// Reports folded in (saturating).
    pub reports: u32,
}

impl RegionLoad {
    /// Folds one report in; `window` is the number of reports the average spans.
    pub fn observe(&mut self, at_unix_ms: u64, region: &RegionStats, window: usize) {
        let weight = if self.reports == 0 {
            1.0
        } else {
            2.0 / (window.max(1) as f32 + 1.0)
        };
        self.avg_rcus += weight * (region.rcus as f32 - self.avg_rcus);
        self.avg_wcus += weight * (region.wcus as f32 - self.avg_wcus);
        self.last_unix_ms = at_unix_ms;
        self.rcus = region.rcus;
        self.wcus = region.wcus;
        self.approximate_size = region.approximate_size;
        self.reports = self.reports.saturating_add(1);
    }
}

/// Appends `item`, dropping the oldest once `capacity` samples are kept.
pub(super) fn push_bounded<T>(ring: &mut VecDeque<T>, item: T, capacity: usize) {
    if ring.len() >= capacity.max(1) {
        ring.pop_front();
    }
    ring.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::RegionRole;

    fn report(rcus: u64, wcus: u64) -> RegionStats {
        RegionStats {
            region_id: 1,
            rcus,
            wcus,
            approximate_size: 100,
            approximate_rows: 1,
            role: RegionRole::Leader,
        }
    }

    #[test]
    fn a_region_load_starts_at_its_first_report_and_averages_over_the_window() {
        let mut load = RegionLoad::default();
        load.observe(10, &report(100, 40), 3);
        assert_eq!(
            (load.avg_rcus, load.avg_wcus, load.reports),
            (100.0, 40.0, 1)
        );
        // Window 3: each report weighs 2 / (3 + 1) = 0.5.
        load.observe(20, &report(200, 0), 3);
        assert_eq!((load.avg_rcus, load.avg_wcus), (150.0, 20.0));
        assert_eq!((load.last_unix_ms, load.rcus, load.wcus), (20, 200, 0));
        // A steady load converges to itself.
        for at in 0..50 {
            load.observe(30 + at, &report(80, 80), 3);
        }
        assert!((load.avg_rcus - 80.0).abs() < 0.01, "{load:?}");
        assert_eq!(load.reports, 52);
    }

    #[test]
    fn a_ring_keeps_the_newest_samples() {
        let mut ring = VecDeque::new();
        for i in 0..5 {
            push_bounded(&mut ring, i, 3);
        }
        assert_eq!(ring, [2, 3, 4]);
    }
}
