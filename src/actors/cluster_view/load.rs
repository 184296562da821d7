//! What ClusterView keeps of the load reports: a bounded ring of samples per node, and a
//! compact running summary per region a node leads.

use std::collections::VecDeque;

use crate::ids::IdMap;

use serde::Serialize;

use crate::cns::unit::CapacityTally;
use crate::stats::{NodeStats, RegionStats};

/// One point of a node's stats history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSample {
    pub at_unix_ms: u64,
    pub stats: NodeStats,
    /// Request units per second the node's regions used (see `crate::cns::unit`).
    pub ru: f64,
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
    /// Request units per second, averaged like the others (what the load planners read).
    pub avg_ru: f32,
    /// Reports folded in (saturating).
    pub reports: u32,
}

impl RegionLoad {
    /// Folds one report in: `ru_per_second` is its request units over its period; `window` is
    /// the number of reports the average spans.
    pub fn observe(
        &mut self,
        at_unix_ms: u64,
        region: &RegionStats,
        ru_per_second: f64,
        window: usize,
    ) {
        let weight = if self.reports == 0 {
            1.0
        } else {
            2.0 / (window.max(1) as f32 + 1.0)
        };
        self.avg_rcus += weight * (region.rcus as f32 - self.avg_rcus);
        self.avg_wcus += weight * (region.wcus as f32 - self.avg_wcus);
        self.avg_ru += weight * (narrow(ru_per_second) - self.avg_ru);
        self.last_unix_ms = at_unix_ms;
        self.rcus = region.rcus;
        self.wcus = region.wcus;
        self.approximate_size = region.approximate_size;
        self.reports = self.reports.saturating_add(1);
    }
}

/// The load of the regions one node leads, in the order of its last report.
///
/// Kept with the node, not in one map of every region: a million-entry map put two cache
/// misses on every region of every report (its control bytes, then the entry), 80% of the
/// time ClusterView spent on a report at 10,000 nodes. A node reports its regions in the same
/// order report after report, so folding a report in walks this vector in step with it; only
/// a report whose regions changed (a region arrived, left or moved in the order) pays for an
/// index of the old entries, once.
///
/// A region's averages are those of its current leader's reports: a region that moves starts
/// over on its new leader (from the first report's values, weight 1), which is the load that
/// node serves. Memory is bounded by the report (validation caps its regions); entries go
/// with the report that no longer names them.
#[derive(Debug, Default)]
pub(super) struct LeaderLoads {
    loads: Vec<(u64, RegionLoad)>,
}

impl LeaderLoads {
    /// Folds in the leader regions of one report, each with its request units per second;
    /// `admit` decides whether a region not held yet gets an entry (only routed ones: the ids
    /// come from the network). Regions the report does not name are dropped.
    pub fn fold<'a>(
        &mut self,
        leaders: impl IntoIterator<Item = (&'a RegionStats, f64)>,
        at_unix_ms: u64,
        window: usize,
        mut admit: impl FnMut(u64) -> bool,
    ) {
        let mut next = 0;
        let mut rebuilding: Option<Rebuild> = None;
        for (region, ru) in leaders {
            let region_id = region.region_id;
            if rebuilding.is_none() {
                if let Some((id, load)) = self.loads.get_mut(next) {
                    if *id == region_id {
                        load.observe(at_unix_ms, region, ru, window);
                        next += 1;
                        continue;
                    }
                }
                let rest = self.loads.split_off(next);
                rebuilding = Some(Rebuild {
                    index: rest
                        .iter()
                        .enumerate()
                        .map(|(i, (id, _))| (*id, i))
                        .collect(),
                    rest,
                    kept: std::mem::take(&mut self.loads),
                });
            }
            let Some(rebuild) = rebuilding.as_mut() else {
                continue;
            };
            let mut load = match rebuild.index.remove(&region_id) {
                Some(i) => rebuild.rest[i].1,
                None if admit(region_id) => RegionLoad::default(),
                None => continue,
            };
            load.observe(at_unix_ms, region, ru, window);
            rebuild.kept.push((region_id, load));
        }
        match rebuilding {
            Some(rebuild) => self.loads = rebuild.kept,
            None => self.loads.truncate(next),
        }
    }

    /// Each region held with its load, in the order of the last report.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, RegionLoad)> {
        self.loads.iter()
    }

    pub fn len(&self) -> usize {
        self.loads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    /// Keeps only the regions `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.loads.retain(|(region_id, _)| keep(*region_id));
    }

    pub fn clear(&mut self) {
        self.loads = Vec::new();
    }
}

/// A fold gone out of step with the held loads, from the first region out of step on.
struct Rebuild {
    /// This report's entries so far, in its order.
    kept: Vec<(u64, RegionLoad)>,
    /// The old entries from the first out of step on, and where each id is among them.
    rest: Vec<(u64, RegionLoad)>,
    index: IdMap<usize>,
}

/// A node's stats history: the newest `capacity` reports, oldest first. Stored packed (40
/// bytes a sample, where a [`NodeSample`] is 88: times as offsets from a base, the node's cores
/// once for all samples) in a ring that grows by doubling but never past
/// `capacity`: at 10,000 nodes and 300 samples a full history is 120 MB, where unpacked samples
/// in a ring left to double (to 512 places) took 370 MB. It is not allocated at its full size
/// up front: a leader that takes over would fault in (and the kernel zero) all of it at once,
/// in the burst of 10,000 reconnecting nodes. Counts saturate at `u32::MAX` (4 billion units
/// or regions in one period) and rates keep `f32` precision, which is what a planner reads
/// them with anyway.
#[derive(Debug, Default)]
pub(super) struct NodeHistory {
    ring: VecDeque<PackedSample>,
    /// Sample times are milliseconds after this (rebased every 49 days).
    base_unix_ms: u64,
    /// The cores of the latest report: a node's cores change with a restart on another
    /// machine at most, and a sample's CPU share is read against them.
    cpu_cores: f32,
    /// [`NodeHistory::work`] of every sample, summed for the capacity.
    tally: CapacityTally,
}

#[derive(Clone, Copy, Debug)]
struct PackedSample {
    after_base_ms: u32,
    rcus: u32,
    wcus: u32,
    table_num: u32,
    region_num: u32,
    cpu_usage: f32,
    load: f32,
    read_io_rate: f32,
    write_io_rate: f32,
    ru: f32,
}

fn saturate(count: u64) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// A rate as `f32`, clamped: validation lets finite values up to `f64::MAX` through, and an
/// infinity would be written as JSON `null` where the API promises a number.
fn narrow(rate: f64) -> f32 {
    rate.clamp(f32::MIN as f64, f32::MAX as f64) as f32
}

impl PackedSample {
    fn pack(after_base_ms: u32, stats: &NodeStats, ru: f64) -> Self {
        Self {
            after_base_ms,
            rcus: saturate(stats.rcus),
            wcus: saturate(stats.wcus),
            table_num: saturate(stats.table_num),
            region_num: saturate(stats.region_num),
            cpu_usage: narrow(stats.cpu_usage),
            load: narrow(stats.load),
            read_io_rate: narrow(stats.read_io_rate),
            write_io_rate: narrow(stats.write_io_rate),
            ru: narrow(ru),
        }
    }

    fn unpack(&self, base_unix_ms: u64, cpu_cores: f32) -> NodeSample {
        NodeSample {
            at_unix_ms: base_unix_ms + u64::from(self.after_base_ms),
            ru: self.ru.into(),
            stats: NodeStats {
                rcus: self.rcus.into(),
                wcus: self.wcus.into(),
                table_num: self.table_num.into(),
                region_num: self.region_num.into(),
                cpu_usage: self.cpu_usage.into(),
                load: self.load.into(),
                read_io_rate: self.read_io_rate.into(),
                write_io_rate: self.write_io_rate.into(),
                cpu_cores: cpu_cores.into(),
            },
        }
    }
}

impl NodeHistory {
    /// Appends a report (`ru` request units per second), dropping the oldest once `capacity`
    /// are kept.
    pub fn push(&mut self, at_unix_ms: u64, stats: &NodeStats, ru: f64, capacity: usize) {
        let capacity = capacity.max(1);
        if self.ring.is_empty() {
            self.base_unix_ms = at_unix_ms;
        }
        // A wall clock set back gives an offset of 0, not a wrapped one.
        let mut after_base = at_unix_ms.saturating_sub(self.base_unix_ms);
        if after_base > u64::from(u32::MAX) {
            self.rebase(at_unix_ms);
            after_base = at_unix_ms - self.base_unix_ms;
        }
        let cores = narrow(stats.cpu_cores);
        if cores != self.cpu_cores {
            // Every sample's share changes with the cores: count them again.
            self.cpu_cores = cores;
            self.tally = CapacityTally::default();
            let work: Vec<(f64, f64)> = self.work(usize::MAX).collect();
            for (ru, share) in work {
                self.tally.add(ru, share);
            }
        }
        if self.ring.len() == self.ring.capacity() && self.ring.len() < capacity {
            let grown = (self.ring.len() * 2).max(4).min(capacity);
            self.ring.reserve_exact(grown - self.ring.len());
        }
        while self.ring.len() >= capacity {
            if let Some(oldest) = self.ring.pop_front() {
                if let Some((ru, share)) = self.work_of(&oldest) {
                    self.tally.remove(ru, share);
                }
            }
        }
        let sample = PackedSample::pack(after_base as u32, stats, ru);
        if let Some((ru, share)) = self.work_of(&sample) {
            self.tally.add(ru, share);
        }
        self.ring.push_back(sample);
    }

    /// What `sample` says of the node's work, if its cores are known.
    fn work_of(&self, sample: &PackedSample) -> Option<(f64, f64)> {
        let cores = f64::from(self.cpu_cores);
        (cores > 0.0).then(|| {
            (
                f64::from(sample.ru),
                crate::cns::unit::utilization(sample.cpu_usage.into(), cores),
            )
        })
    }

    /// The node's capacity learned from its whole history (`cns::unit::learn_capacity`).
    pub fn capacity(&self) -> Option<f64> {
        self.tally.capacity()
    }

    /// Moves the base to the oldest sample still within reach of `at_unix_ms` (a node that has
    /// reported for 49 days): samples older than that keep the new base as their time.
    fn rebase(&mut self, at_unix_ms: u64) {
        let new_base = at_unix_ms - u64::from(u32::MAX) / 2;
        for sample in &mut self.ring {
            let at = self.base_unix_ms + u64::from(sample.after_base_ms);
            sample.after_base_ms = at.saturating_sub(new_base) as u32;
        }
        self.base_unix_ms = new_base;
    }

    /// `(ru per second, CPU share)` of the newest `count` samples, for learning capacity;
    /// none if the node does not say its cores: a share of an unknown whole would call a busy
    /// many-core node overloaded.
    pub fn work(&self, count: usize) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.ring
            .iter()
            .skip(self.ring.len().saturating_sub(count))
            .filter_map(|sample| self.work_of(sample))
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// The newest `count` samples, oldest first.
    pub fn newest(&self, count: usize) -> impl Iterator<Item = NodeSample> + '_ {
        self.ring
            .iter()
            .skip(self.ring.len().saturating_sub(count))
            .map(|sample| sample.unpack(self.base_unix_ms, self.cpu_cores))
    }
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
            scanned_bytes: 0,
            cpu_time_ms: 0,
            role: RegionRole::Leader,
        }
    }

    #[test]
    fn a_region_load_starts_at_its_first_report_and_averages_over_the_window() {
        let mut load = RegionLoad::default();
        load.observe(10, &report(100, 40), 7.0, 3);
        assert_eq!(
            (load.avg_rcus, load.avg_wcus, load.reports),
            (100.0, 40.0, 1)
        );
        // Window 3: each report weighs 2 / (3 + 1) = 0.5.
        load.observe(20, &report(200, 0), 9.0, 3);
        assert_eq!(
            (load.avg_rcus, load.avg_wcus, load.avg_ru),
            (150.0, 20.0, 8.0)
        );
        assert_eq!((load.last_unix_ms, load.rcus, load.wcus), (20, 200, 0));
        // A steady load converges to itself.
        for at in 0..50 {
            load.observe(30 + at, &report(80, 80), 1.0, 3);
        }
        assert!((load.avg_rcus - 80.0).abs() < 0.01, "{load:?}");
        assert_eq!(load.reports, 52);
    }

    /// Folds a report of `regions` (id, rcus) into `loads`, admitting ids below 100; returns
    /// the ids `admit` was asked about.
    fn fold(loads: &mut LeaderLoads, regions: &[(u64, u64)]) -> Vec<u64> {
        let stats: Vec<RegionStats> = regions
            .iter()
            .map(|&(region_id, rcus)| RegionStats {
                region_id,
                ..report(rcus, 0)
            })
            .collect();
        let mut asked = Vec::new();
        loads.fold(stats.iter().map(|r| (r, r.rcus as f64)), 7, 3, |id| {
            asked.push(id);
            id < 100
        });
        asked
    }

    fn held(loads: &LeaderLoads) -> Vec<(u64, f32, u32)> {
        loads
            .iter()
            .map(|(id, load)| (*id, load.avg_ru, load.reports))
            .collect()
    }

    #[test]
    fn leader_loads_follow_the_report_and_keep_each_regions_average() {
        let mut loads = LeaderLoads::default();
        // Regions not held yet are admitted only if routed (here: ids below 100).
        assert_eq!(
            fold(&mut loads, &[(1, 10), (2, 20), (500, 1), (3, 30)]),
            [1, 2, 500, 3]
        );
        assert_eq!(held(&loads), [(1, 10.0, 1), (2, 20.0, 1), (3, 30.0, 1)]);
        // The same regions again: folded in step, nothing asked.
        assert_eq!(
            fold(&mut loads, &[(1, 30), (2, 40), (3, 50)]),
            Vec::<u64>::new()
        );
        assert_eq!(held(&loads), [(1, 20.0, 2), (2, 30.0, 2), (3, 40.0, 2)]);
        // One arrives in the middle, one leaves, the order changes: each kept region keeps
        // its average, only the newcomer is asked about.
        assert_eq!(fold(&mut loads, &[(3, 40), (4, 8), (1, 20)]), [4]);
        assert_eq!(held(&loads), [(3, 40.0, 3), (4, 8.0, 1), (1, 20.0, 3)]);
        assert_eq!(loads.len(), 3);
        // A shorter report in the same order drops the tail.
        assert!(fold(&mut loads, &[(3, 40)]).is_empty());
        assert_eq!(held(&loads), [(3, 40.0, 4)]);
        // A region named twice is held at most twice (bounded by the report), and an empty
        // report empties it.
        fold(&mut loads, &[(3, 40), (3, 40)]);
        assert!(loads.len() <= 2);
        fold(&mut loads, &[]);
        assert_eq!(loads.len(), 0);
        // Pruning keeps the order of what it keeps.
        fold(&mut loads, &[(1, 10), (2, 20), (3, 30)]);
        loads.retain(|id| id != 2);
        assert_eq!(held(&loads), [(1, 10.0, 1), (3, 30.0, 1)]);
    }

    #[test]
    fn a_node_history_keeps_the_newest_samples_and_grows_to_exactly_its_size() {
        let stats = |rcus: u64| NodeStats {
            rcus,
            wcus: 2,
            table_num: 3,
            region_num: 4,
            cpu_usage: 12.5,
            load: 0.25,
            read_io_rate: 1024.0,
            write_io_rate: 2048.0,
            cpu_cores: 4.0,
        };
        let mut history = NodeHistory::default();
        for at in 0..5 {
            history.push(at, &stats(at), at as f64, 3);
        }
        assert_eq!(history.ring.capacity(), 3, "never past its size");
        let mut growing = NodeHistory::default();
        for at in 0..40 {
            growing.push(at, &stats(at), 0.0, 300);
        }
        assert_eq!(growing.ring.capacity(), 64, "by doubling while it fills");
        for at in 40..1000 {
            growing.push(at, &stats(at), 0.0, 300);
        }
        assert_eq!((growing.len(), growing.ring.capacity()), (300, 300));
        let kept: Vec<NodeSample> = history.newest(usize::MAX).collect();
        assert_eq!(
            kept,
            (2..5)
                .map(|at| NodeSample {
                    at_unix_ms: at,
                    stats: stats(at),
                    ru: at as f64,
                })
                .collect::<Vec<_>>(),
            "values that fit come back exactly"
        );
        assert_eq!(
            history.newest(1).map(|s| s.at_unix_ms).collect::<Vec<_>>(),
            [4]
        );
        // A count beyond u32 saturates instead of wrapping; a rate beyond f32 is clamped, not
        // turned into an infinity.
        let huge = NodeStats {
            load: f64::MAX,
            ..stats(u64::MAX)
        };
        history.push(9, &huge, 0.0, 3);
        let newest = history.newest(1).next().expect("a sample");
        assert_eq!(newest.stats.rcus, u64::from(u32::MAX));
        assert_eq!(newest.stats.load, f64::from(f32::MAX));
        // A smaller setting takes effect at the next report.
        history.push(10, &stats(1), 0.0, 2);
        assert_eq!(history.len(), 2);
    }

    #[test]
    fn sample_times_survive_a_history_longer_than_an_offset_reaches() {
        let stats = NodeStats::default();
        let mut history = NodeHistory::default();
        let start = 1_700_000_000_000;
        history.push(start, &stats, 1.0, 3);
        let later = start + 60 * 24 * 3_600_000; // 60 days on: past u32 milliseconds
        history.push(later, &stats, 2.0, 3);
        let times: Vec<u64> = history.newest(3).map(|s| s.at_unix_ms).collect();
        assert_eq!(times[1], later);
        assert!(times[0] <= later && times[0] >= start, "{times:?}");
        // A clock set back gives the base, not a wrapped time.
        let mut back = NodeHistory::default();
        back.push(start, &stats, 0.0, 3);
        back.push(start - 5, &stats, 0.0, 3);
        assert_eq!(back.newest(1).next().map(|s| s.at_unix_ms), Some(start));
    }

    #[test]
    fn the_kept_capacity_is_what_the_whole_history_teaches() {
        let mut history = NodeHistory::default();
        for at in 0..200u64 {
            let stats = NodeStats {
                // Busy and idle spells, so samples both count and do not.
                cpu_usage: if at % 7 < 2 {
                    2.0
                } else {
                    50.0 + (at % 13) as f64 * 10.0
                },
                cpu_cores: if at < 120 { 4.0 } else { 8.0 },
                ..NodeStats::default()
            };
            history.push(at, &stats, 100.0 + (at % 11) as f64 * 25.0, 60);
            let learned = crate::cns::unit::learn_capacity(history.work(usize::MAX));
            match (history.capacity(), learned) {
                (Some(kept), Some(learned)) => {
                    assert!(
                        (kept - learned).abs() < 1e-6 * learned,
                        "{at}: {kept} {learned}"
                    )
                }
                (kept, learned) => assert_eq!(kept, learned, "at {at}"),
            }
        }
        // Unknown cores: nothing to learn from.
        history.push(300, &NodeStats::default(), 100.0, 60);
        assert_eq!(history.capacity(), None);
        assert_eq!(history.work(usize::MAX).count(), 0);
    }

    #[test]
    fn a_packed_sample_is_40_bytes() {
        assert_eq!(std::mem::size_of::<PackedSample>(), 40);
    }
}
