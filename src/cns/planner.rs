//! The load planners: pure functions of a load snapshot ([`PlanInput`]) that return the moves
//! and recommendations to make now ([`Proposal`]), each with its reason, the figures behind it
//! and the effect expected. No clock, no I/O: the Autoadmin gathers the snapshot and carries
//! the proposals out (or records them, in dry-run and approve modes).
//!
//! Load is request units per second over relative capacity: a node that learned it serves
//! twice the RU of the average node at full CPU counts its RU half. The planners run in order,
//! each seeing the moves of the ones before (a [`Projection`] of the loads after them):
//! 1. **evict leaders** from a node that is overloaded (CPU over `overload`) or slow (capacity
//!    under `slow_ratio` of the median);
//! 2. **hot regions**: while the most loaded node is over the band `mean x (1 + tolerance)`, move
//!    the region that brings the pair (it and the target) lowest;
//! 3. **balance leaders** by count, with leader transfers to followers;
//! 4. **balance regions** by count and size together.
//!
//! Every move must lower the higher of its two nodes' loads, so the next tick never undoes it
//! (the reverse move would raise it again); a region moved within the cooldown is frozen
//! (the caller's `frozen` set), as is one an operation holds. Limits bound the moves in flight
//! per node and in all; in maintenance mode nothing moves. Recommendations (add, remove or
//! replace datanodes) are what only the platform can do.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::snapshot::{NodeBrief, RegionBrief};

/// What the planners see.
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    pub nodes: Vec<NodeBrief>,
    /// Regions that must not move now: held by an operation, awaiting approval, or moved
    /// within the cooldown.
    pub frozen: HashSet<u64>,
    /// Moves in flight per node (as source or target).
    pub in_flight: HashMap<u64, usize>,
    pub in_flight_total: usize,
    pub maintenance: bool,
    /// The cluster's utilization (RU over capacity) at recent ticks, oldest first.
    pub utilization_history: Vec<f64>,
    /// Liveness changes (suspect or dead, then back) per node within the recent window.
    pub flaps: HashMap<u64, u32>,
}

/// The planners' tuning (from `[cns]` in the configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct PlanLimits {
    /// The band around the mean load a node may sit in.
    pub tolerance: f64,
    pub max_moves_per_node: usize,
    pub max_moves: usize,
    /// CPU share at which a node's leaders are evicted.
    pub overload: f64,
    /// A node whose capacity is under this share of the median is slow.
    pub slow_ratio: f64,
    /// Cluster utilization above which more datanodes are recommended, and below which fewer,
    /// when it held for `sustain_ticks` ticks.
    pub scale_out_at: f64,
    pub scale_in_at: f64,
    pub sustain_ticks: usize,
    /// Liveness changes in the window that make a node flapping.
    pub flap_limit: u32,
    /// Mean RU per second below which load is not worth balancing.
    pub min_mean_ru: f64,
}

impl Default for PlanLimits {
    fn default() -> Self {
        Self {
            tolerance: 0.1,
            max_moves_per_node: 2,
            max_moves: 16,
            overload: 0.9,
            slow_ratio: 0.5,
            scale_out_at: 0.75,
            scale_in_at: 0.2,
            sustain_ticks: 30,
            flap_limit: 3,
            min_mean_ru: 1.0,
        }
    }
}

/// Which planner made a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PlannerKind {
    EvictLeaders,
    HotRegions,
    BalanceLeaders,
    BalanceRegions,
    Capacity,
}

impl PlannerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::EvictLeaders => "evict_leaders",
            Self::HotRegions => "hot_regions",
            Self::BalanceLeaders => "balance_leaders",
            Self::BalanceRegions => "balance_regions",
            Self::Capacity => "capacity",
        }
    }
}

/// What a proposal does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Move the region's leadership and copy from `from` to `to` (a region migration).
    Migrate { region_id: u64, from: u64, to: u64 },
    /// Hand the region's leadership to its follower on `to`.
    TransferLeader { region_id: u64, from: u64, to: u64 },
    /// Recommendation to the platform: add `count` datanodes.
    AddDatanodes { count: u32 },
    /// Recommendation to the platform: remove these datanodes (drain them first).
    RemoveDatanodes { nodes: Vec<u64> },
    /// Recommendation to the platform: replace this datanode (slow or flapping).
    ReplaceNode { node_id: u64 },
}

impl Action {
    /// The region a move moves (`None` for a recommendation).
    pub fn region_id(&self) -> Option<u64> {
        match self {
            Self::Migrate { region_id, .. } | Self::TransferLeader { region_id, .. } => {
                Some(*region_id)
            }
            _ => None,
        }
    }

    /// The two nodes of a move.
    pub fn nodes(&self) -> Option<(u64, u64)> {
        match self {
            Self::Migrate { from, to, .. } | Self::TransferLeader { from, to, .. } => {
                Some((*from, *to))
            }
            _ => None,
        }
    }

    pub fn is_recommendation(&self) -> bool {
        self.region_id().is_none()
    }
}

/// One decision of the planners.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Proposal {
    pub planner: PlannerKind,
    pub action: Action,
    /// Why, in a sentence.
    pub reason: String,
    /// The figures behind it (loads before, the band, the region's RU, ...).
    pub figures: BTreeMap<String, f64>,
    /// What should follow, in a sentence.
    pub expected: String,
}

/// Loads below this difference are equal (RU per second).
const EPSILON: f64 = 1e-9;
/// A load move must lower the higher load of its pair by this share of the mean at least.
const MIN_GAIN: f64 = 0.02;
/// Learned capacities within this share of the median count as the median.
const CAPACITY_NOISE: f64 = 0.25;

/// The median of positive values, if any.
fn median_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut known: Vec<f64> = values.filter(|v| *v > 0.0 && v.is_finite()).collect();
    if known.is_empty() {
        return None;
    }
    known.sort_by(f64::total_cmp);
    Some(known[known.len() / 2])
}

/// The cluster as the planners change it: loads after the moves proposed so far.
struct Projection<'a> {
    input: &'a PlanInput,
    limits: &'a PlanLimits,
    /// Index by node id into `input.nodes`.
    index: HashMap<u64, usize>,
    /// Capacity relative to the median learned capacity (1 where not learned or near it).
    relative: Vec<f64>,
    ru: Vec<f64>,
    regions: Vec<f64>,
    leaders: Vec<f64>,
    size: Vec<f64>,
    in_flight: Vec<usize>,
    in_flight_total: usize,
    /// Regions moved by this plan (never twice in one plan).
    moved: HashSet<u64>,
    /// The proposals so far, in order.
    out: Vec<Proposal>,
}

impl<'a> Projection<'a> {
    fn new(input: &'a PlanInput, limits: &'a PlanLimits) -> Self {
        // Learned capacities count only where they differ from the median by more than
        // CAPACITY_NOISE: within it, differences are measurement and workload mix, and
        // equal nodes are better taken as equal.
        let median = median_of(input.nodes.iter().filter_map(|n| n.capacity));
        let relative = input
            .nodes
            .iter()
            .map(|n| match (n.capacity, median) {
                (Some(c), Some(m)) if c > 0.0 && ((c / m) - 1.0).abs() > CAPACITY_NOISE => c / m,
                _ => 1.0,
            })
            .collect();
        Self {
            input,
            limits,
            index: input
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.node_id, i))
                .collect(),
            relative,
            ru: input.nodes.iter().map(|n| n.ru).collect(),
            regions: input.nodes.iter().map(|n| f64::from(n.regions)).collect(),
            leaders: input.nodes.iter().map(|n| f64::from(n.leaders)).collect(),
            size: input.nodes.iter().map(|n| n.size as f64).collect(),
            in_flight: input
                .nodes
                .iter()
                .map(|n| input.in_flight.get(&n.node_id).copied().unwrap_or(0))
                .collect(),
            in_flight_total: input.in_flight_total,
            moved: HashSet::new(),
            out: Vec::new(),
        }
    }

    fn load(&self, i: usize) -> f64 {
        self.ru[i] / self.relative[i]
    }

    fn schedulable(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.input.nodes.len()).filter(|&i| self.input.nodes[i].schedulable)
    }

    fn mean(&self, value: impl Fn(usize) -> f64) -> f64 {
        let (sum, count) = self
            .schedulable()
            .fold((0.0, 0usize), |(s, c), i| (s + value(i), c + 1));
        if count == 0 {
            0.0
        } else {
            sum / count as f64
        }
    }

    fn has_budget(&self, i: usize) -> bool {
        self.in_flight[i] < self.limits.max_moves_per_node
    }

    fn cluster_has_budget(&self) -> bool {
        self.in_flight_total < self.limits.max_moves
    }

    fn movable(&self, region: &RegionBrief) -> bool {
        !self.input.frozen.contains(&region.region_id) && !self.moved.contains(&region.region_id)
    }

    /// The node's move candidates: hottest and coldest leader regions, each once.
    fn candidates(&self, i: usize) -> Vec<&'a RegionBrief> {
        let node = &self.input.nodes[i];
        let mut seen = HashSet::new();
        node.hottest
            .iter()
            .chain(&node.coldest)
            .filter(|r| seen.insert(r.region_id))
            .filter(|r| self.movable(r))
            .collect()
    }

    /// Records a move of `region` from node `s` to node `t`.
    fn apply(
        &mut self,
        planner: PlannerKind,
        region: &RegionBrief,
        s: usize,
        t: usize,
        reason: String,
        mut figures: BTreeMap<String, f64>,
    ) {
        let (from, to) = (self.input.nodes[s].node_id, self.input.nodes[t].node_id);
        let transfer = region.followers.contains(&to);
        let (load_s, load_t) = (self.load(s), self.load(t));
        self.ru[s] -= region.ru;
        self.ru[t] += region.ru;
        self.leaders[s] -= 1.0;
        self.leaders[t] += 1.0;
        if !transfer {
            self.regions[s] -= 1.0;
            self.regions[t] += 1.0;
            self.size[s] -= region.size as f64;
            self.size[t] += region.size as f64;
        }
        self.in_flight[s] += 1;
        self.in_flight[t] += 1;
        self.in_flight_total += 1;
        self.moved.insert(region.region_id);
        figures.insert("region_ru".into(), region.ru);
        figures.insert("source_load".into(), load_s);
        figures.insert("target_load".into(), load_t);
        figures.insert("source_load_after".into(), self.load(s));
        figures.insert("target_load_after".into(), self.load(t));
        let action = if transfer {
            Action::TransferLeader {
                region_id: region.region_id,
                from,
                to,
            }
        } else {
            Action::Migrate {
                region_id: region.region_id,
                from,
                to,
            }
        };
        let expected = format!(
            "node {from} load {:.1} -> {:.1} RU/s, node {to} {:.1} -> {:.1} RU/s",
            load_s,
            self.load(s),
            load_t,
            self.load(t)
        );
        self.out.push(Proposal {
            planner,
            action,
            reason,
            figures,
            expected,
        });
    }

    /// The move of one of node `s`'s candidates that brings the higher load of the pair
    /// lowest, if any lowers it by at least `min_gain`.
    fn best_move_from(&self, s: usize, min_gain: f64) -> Option<(&'a RegionBrief, usize)> {
        let load_s = self.load(s);
        type Key = (f64, f64, bool, u64, u64, u64);
        let mut best: Option<(Key, &'a RegionBrief, usize)> = None;
        for region in self.candidates(s) {
            for t in self.schedulable() {
                if t == s || !self.has_budget(t) {
                    continue;
                }
                let new_s = (self.ru[s] - region.ru) / self.relative[s];
                let new_t = (self.ru[t] + region.ru) / self.relative[t];
                let peak = new_s.max(new_t);
                // The pair's higher load must fall, by a share of the mean worth a move:
                // then the reverse move would raise it again, so no later tick undoes this.
                if peak > load_s - min_gain {
                    continue;
                }
                let to = self.input.nodes[t].node_id;
                // Lowest peak; then the target left lowest; then a transfer (no copy to open)
                // over a migration; then the smaller region; then ids, for a choice that does
                // not depend on map order.
                let key = (
                    peak,
                    new_t,
                    !region.followers.contains(&to),
                    region.size,
                    region.region_id,
                    to,
                );
                if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                    best = Some((key, region, t));
                }
            }
        }
        best.map(|(_, region, t)| (region, t))
    }
}

/// Every proposal for this tick, in planner order.
pub fn plan(input: &PlanInput, limits: &PlanLimits) -> Vec<Proposal> {
    let mut projection = Projection::new(input, limits);
    if !input.maintenance {
        evict_leaders(&mut projection);
        hot_regions(&mut projection);
        balance_leaders(&mut projection);
        balance_regions(&mut projection);
    }
    let mut out = projection.out;
    out.extend(recommend(input, limits));
    out
}

/// Capacities learned, and their median (at least three, or no one is called slow).
fn median_capacity(input: &PlanInput) -> Option<f64> {
    let known = input.nodes.iter().filter_map(|n| n.capacity);
    if known.clone().count() < 3 {
        return None;
    }
    median_of(known)
}

fn is_slow(node: &NodeBrief, median: Option<f64>, limits: &PlanLimits) -> bool {
    matches!((node.capacity, median), (Some(c), Some(m)) if c < m * limits.slow_ratio)
}

/// Leaders off overloaded nodes (until their projected CPU share is back under the
/// threshold less the tolerance) and off slow ones (all of them).
fn evict_leaders(p: &mut Projection) {
    let median = median_capacity(p.input);
    let input = p.input;
    for s in 0..input.nodes.len() {
        let node = &input.nodes[s];
        let slow = is_slow(node, median, p.limits);
        let overloaded = node.utilization >= p.limits.overload;
        if !(slow || overloaded) || node.ru <= EPSILON {
            continue;
        }
        let goal = p.limits.overload * (1.0 - p.limits.tolerance.min(0.5));
        loop {
            if !p.has_budget(s) || !p.cluster_has_budget() {
                break;
            }
            // The share of CPU left is taken as proportional to the RU left.
            let projected = node.utilization * p.ru[s] / node.ru;
            let done = if slow {
                p.leaders[s] < 0.5
            } else {
                projected < goal
            };
            if done {
                break;
            }
            // The hottest candidate to the least loaded schedulable node that stays in band.
            let mean = p.mean(|i| p.load(i));
            let band = mean * (1.0 + p.limits.tolerance);
            let Some((region, t)) = p.candidates(s).into_iter().find_map(|r| {
                let t = p
                    .schedulable()
                    .filter(|&t| t != s && p.has_budget(t))
                    .filter(|&t| !is_slow(&p.input.nodes[t], median, p.limits))
                    .filter(|&t| p.input.nodes[t].utilization < goal)
                    .filter(|&t| (p.ru[t] + r.ru) / p.relative[t] <= band.max(p.load(s)))
                    .min_by(|&a, &b| {
                        let follows = |t: usize| !r.followers.contains(&p.input.nodes[t].node_id);
                        (follows(a), p.load(a))
                            .partial_cmp(&(follows(b), p.load(b)))
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })?;
                Some((r, t))
            }) else {
                break;
            };
            let mut figures = BTreeMap::new();
            figures.insert("cpu_share".into(), node.utilization);
            if let Some(c) = node.capacity {
                figures.insert("capacity_ru".into(), c);
            }
            if let Some(m) = median {
                figures.insert("median_capacity_ru".into(), m);
            }
            let reason = if slow {
                format!(
                    "node {} is slow: it serves {:.0} RU/s at full CPU, under {:.0}% of the median",
                    node.node_id,
                    node.capacity.unwrap_or_default(),
                    p.limits.slow_ratio * 100.0
                )
            } else {
                format!(
                    "node {} is overloaded: {:.0}% CPU, over {:.0}%",
                    node.node_id,
                    node.utilization * 100.0,
                    p.limits.overload * 100.0
                )
            };
            let region = region.clone();
            p.apply(PlannerKind::EvictLeaders, &region, s, t, reason, figures);
        }
    }
}

/// While the most loaded node is over the band, the move that brings it and its target lowest.
fn hot_regions(p: &mut Projection) {
    let mut exhausted = HashSet::new();
    while p.cluster_has_budget() {
        let mean = p.mean(|i| p.load(i));
        if mean < p.limits.min_mean_ru {
            return;
        }
        let band = mean * (1.0 + p.limits.tolerance);
        let Some(s) = p
            .schedulable()
            .filter(|&i| p.load(i) > band + EPSILON && p.has_budget(i) && !exhausted.contains(&i))
            .max_by(|&a, &b| p.load(a).total_cmp(&p.load(b)).then(b.cmp(&a)))
        else {
            return;
        };
        let min_gain = (mean * MIN_GAIN).max(EPSILON);
        let Some((region, t)) = p.best_move_from(s, min_gain) else {
            exhausted.insert(s);
            continue;
        };
        let mut figures = BTreeMap::new();
        figures.insert("mean_load".into(), mean);
        figures.insert("band".into(), band);
        let reason = format!(
            "node {} carries {:.1} RU/s, over the band {:.1} (mean {:.1} + {:.0}%)",
            p.input.nodes[s].node_id,
            p.load(s),
            band,
            mean,
            p.limits.tolerance * 100.0
        );
        let region = region.clone();
        p.apply(PlannerKind::HotRegions, &region, s, t, reason, figures);
    }
}

/// Leader counts: a transfer to a follower on a node with fewer leaders, if it keeps the
/// target's load in band.
fn balance_leaders(p: &mut Projection) {
    let mut exhausted = HashSet::new();
    while p.cluster_has_budget() {
        let mean = p.mean(|i| p.leaders[i]);
        let high = mean * (1.0 + p.limits.tolerance);
        let Some(s) = p
            .schedulable()
            .filter(|&i| {
                p.leaders[i] > high + EPSILON && p.has_budget(i) && !exhausted.contains(&i)
            })
            .max_by(|&a, &b| p.leaders[a].total_cmp(&p.leaders[b]).then(b.cmp(&a)))
        else {
            return;
        };
        let load_mean = p.mean(|i| p.load(i));
        let band = load_mean * (1.0 + p.limits.tolerance);
        let choice = p
            .candidates(s)
            .into_iter()
            .rev()
            .filter_map(|r| {
                let t = r
                    .followers
                    .iter()
                    .filter_map(|f| p.index.get(f).copied())
                    .filter(|&t| p.input.nodes[t].schedulable && p.has_budget(t))
                    .filter(|&t| p.leaders[t] + 1.0 < p.leaders[s] - EPSILON)
                    .filter(|&t| (p.ru[t] + r.ru) / p.relative[t] <= band.max(p.load(s)) + EPSILON)
                    .min_by(|&a, &b| p.leaders[a].total_cmp(&p.leaders[b]).then(a.cmp(&b)))?;
                Some((r, t))
            })
            .min_by(|a, b| {
                a.0.ru
                    .total_cmp(&b.0.ru)
                    .then(a.0.region_id.cmp(&b.0.region_id))
            });
        let Some((region, t)) = choice else {
            exhausted.insert(s);
            continue;
        };
        let mut figures = BTreeMap::new();
        figures.insert("mean_leaders".into(), mean);
        figures.insert("source_leaders".into(), p.leaders[s]);
        figures.insert("target_leaders".into(), p.leaders[t]);
        let reason = format!(
            "node {} leads {} regions, over {:.1} (mean {:.1})",
            p.input.nodes[s].node_id, p.leaders[s], high, mean
        );
        let region = region.clone();
        p.apply(PlannerKind::BalanceLeaders, &region, s, t, reason, figures);
    }
}

/// Region copies by count and size together (each a half of the weight, over its mean): a
/// cold region from the heaviest node to the lightest one that holds no copy, if it keeps the
/// target's load in band.
fn balance_regions(p: &mut Projection) {
    let mut exhausted = HashSet::new();
    while p.cluster_has_budget() {
        let mean_regions = p.mean(|i| p.regions[i]).max(EPSILON);
        let mean_size = p.mean(|i| p.size[i]).max(1.0);
        let weight = |p: &Projection, i: usize| {
            0.5 * p.regions[i] / mean_regions + 0.5 * p.size[i] / mean_size
        };
        let high = 1.0 + p.limits.tolerance;
        let Some(s) = p
            .schedulable()
            .filter(|&i| {
                weight(p, i) > high + EPSILON && p.has_budget(i) && !exhausted.contains(&i)
            })
            .filter(|&i| p.regions[i] >= 2.0)
            .max_by(|&a, &b| weight(p, a).total_cmp(&weight(p, b)).then(b.cmp(&a)))
        else {
            return;
        };
        let load_mean = p.mean(|i| p.load(i));
        let band = load_mean * (1.0 + p.limits.tolerance);
        let node_s = p.input.nodes[s].node_id;
        let mut best: Option<(f64, &RegionBrief, usize)> = None;
        for region in p
            .candidates(s)
            .into_iter()
            .filter(|r| r.followers.is_empty())
        {
            let step = |p: &Projection, i: usize, sign: f64| {
                0.5 * (p.regions[i] + sign) / mean_regions
                    + 0.5 * (p.size[i] + sign * region.size as f64) / mean_size
            };
            for t in p.schedulable() {
                if t == s || !p.has_budget(t) {
                    continue;
                }
                let peak = step(p, s, -1.0).max(step(p, t, 1.0));
                if peak >= weight(p, s) - EPSILON
                    || (p.ru[t] + region.ru) / p.relative[t] > band.max(p.load(s)) + EPSILON
                {
                    continue;
                }
                if best.as_ref().is_none_or(|(b, r, bt)| {
                    (peak, region.region_id, p.input.nodes[t].node_id)
                        < (*b, r.region_id, p.input.nodes[*bt].node_id)
                }) {
                    best = Some((peak, region, t));
                }
            }
        }
        let Some((_, region, t)) = best else {
            exhausted.insert(s);
            continue;
        };
        let mut figures = BTreeMap::new();
        figures.insert("mean_regions".into(), mean_regions);
        figures.insert("source_regions".into(), p.regions[s]);
        figures.insert("target_regions".into(), p.regions[t]);
        figures.insert("source_weight".into(), weight(p, s));
        let reason = format!(
            "node {node_s} holds {} regions and {} bytes: {:.2} of the mean by count and size, over {high:.2}",
            p.regions[s],
            p.size[s],
            weight(p, s)
        );
        let region = region.clone();
        p.apply(PlannerKind::BalanceRegions, &region, s, t, reason, figures);
    }
}

/// What only the platform can do: more or fewer datanodes when the cluster's utilization held
/// out of range, and a new node for one that is slow or flapping.
fn recommend(input: &PlanInput, limits: &PlanLimits) -> Vec<Proposal> {
    let mut out = Vec::new();
    let live: Vec<&NodeBrief> = input.nodes.iter().filter(|n| n.schedulable).collect();
    let known: Vec<f64> = live.iter().filter_map(|n| n.capacity).collect();
    let recent = input
        .utilization_history
        .len()
        .checked_sub(limits.sustain_ticks)
        .map(|start| &input.utilization_history[start..]);
    if let (false, Some(recent)) = (known.is_empty() || live.is_empty(), recent) {
        let mean_capacity = known.iter().sum::<f64>() / known.len() as f64;
        let demand: f64 = live.iter().map(|n| n.ru).sum();
        let target = (limits.scale_out_at + limits.scale_in_at) / 2.0;
        let needed = (demand / (target * mean_capacity)).ceil().max(1.0) as usize;
        let mut figures = BTreeMap::new();
        figures.insert("demand_ru".into(), demand);
        figures.insert("mean_capacity_ru".into(), mean_capacity);
        figures.insert(
            "utilization".into(),
            recent.last().copied().unwrap_or_default(),
        );
        figures.insert("nodes".into(), live.len() as f64);
        figures.insert("nodes_needed".into(), needed as f64);
        if recent.iter().all(|u| *u >= limits.scale_out_at) && needed > live.len() {
            let count = (needed - live.len()) as u32;
            out.push(Proposal {
                planner: PlannerKind::Capacity,
                action: Action::AddDatanodes { count },
                reason: format!(
                    "the cluster used over {:.0}% of its learned capacity for {} ticks",
                    limits.scale_out_at * 100.0,
                    limits.sustain_ticks
                ),
                figures: figures.clone(),
                expected: format!(
                    "{count} more datanodes bring utilization to about {:.0}%",
                    target * 100.0
                ),
            });
        } else if recent.iter().all(|u| *u <= limits.scale_in_at) && needed < live.len() {
            let mut idle: Vec<&NodeBrief> = live.clone();
            idle.sort_by(|a, b| a.ru.total_cmp(&b.ru).then(a.node_id.cmp(&b.node_id)));
            let nodes: Vec<u64> = idle
                .iter()
                .take(live.len() - needed)
                .map(|n| n.node_id)
                .collect();
            out.push(Proposal {
                planner: PlannerKind::Capacity,
                expected: format!(
                    "{} datanodes serve the demand at about {:.0}% utilization",
                    needed,
                    target * 100.0
                ),
                action: Action::RemoveDatanodes { nodes },
                reason: format!(
                    "the cluster used under {:.0}% of its learned capacity for {} ticks",
                    limits.scale_in_at * 100.0,
                    limits.sustain_ticks
                ),
                figures,
            });
        }
    }
    let median = median_capacity(input);
    for node in &input.nodes {
        let flaps = input.flaps.get(&node.node_id).copied().unwrap_or(0);
        let slow = is_slow(node, median, limits);
        if !(slow || flaps >= limits.flap_limit) {
            continue;
        }
        let mut figures = BTreeMap::new();
        figures.insert("flaps".into(), f64::from(flaps));
        if let (Some(c), Some(m)) = (node.capacity, median) {
            figures.insert("capacity_ru".into(), c);
            figures.insert("median_capacity_ru".into(), m);
        }
        let reason = if slow {
            format!(
                "node {} is slow: its capacity is under {:.0}% of the median",
                node.node_id,
                limits.slow_ratio * 100.0
            )
        } else {
            format!(
                "node {} is flapping: {flaps} liveness changes in the window",
                node.node_id
            )
        };
        out.push(Proposal {
            planner: PlannerKind::Capacity,
            action: Action::ReplaceNode {
                node_id: node.node_id,
            },
            reason,
            figures,
            expected: "a healthy node takes its regions (drain it, then remove it)".into(),
        });
    }
    out
}

/// Whether the nodes' loads held since the previous round (`previous`: RU per node then): no
/// node's moved by more than `tolerance` of the mean. Region loads are averages that take a
/// few reports to follow a change; planning on them mid-way moves the wrong regions (the ones
/// whose average caught up first).
pub fn loads_settled(previous: &HashMap<u64, f64>, nodes: &[NodeBrief], tolerance: f64) -> bool {
    let mean = nodes.iter().map(|n| n.ru).sum::<f64>() / nodes.len().max(1) as f64;
    nodes.iter().all(|n| {
        previous
            .get(&n.node_id)
            .is_some_and(|before| (n.ru - before).abs() <= tolerance * mean)
    })
}

/// The imbalance of a set of node loads: max over mean (1 when balanced or idle).
pub fn imbalance(loads: &[f64]) -> f64 {
    if loads.is_empty() {
        return 1.0;
    }
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    if mean <= EPSILON {
        return 1.0;
    }
    loads.iter().copied().fold(0.0, f64::max) / mean
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedulable node leading `regions` (id, RU per second), each 100 bytes.
    fn node(node_id: u64, regions: &[(u64, f64)]) -> NodeBrief {
        let briefs: Vec<RegionBrief> = regions
            .iter()
            .map(|&(region_id, ru)| RegionBrief {
                region_id,
                ru,
                size: 100,
                followers: Vec::new(),
            })
            .collect();
        let mut hottest = briefs.clone();
        hottest.sort_by(|a, b| b.ru.total_cmp(&a.ru).then(a.region_id.cmp(&b.region_id)));
        let mut coldest = briefs;
        coldest.sort_by(|a, b| a.ru.total_cmp(&b.ru).then(a.region_id.cmp(&b.region_id)));
        NodeBrief {
            node_id,
            schedulable: true,
            ru: regions.iter().map(|r| r.1).sum(),
            capacity: None,
            utilization: 0.2,
            regions: regions.len() as u32,
            leaders: regions.len() as u32,
            size: 100 * regions.len() as u64,
            hottest,
            coldest,
        }
    }

    fn input(nodes: Vec<NodeBrief>) -> PlanInput {
        PlanInput {
            nodes,
            ..PlanInput::default()
        }
    }

    fn actions(proposals: &[Proposal]) -> Vec<(PlannerKind, Action)> {
        proposals
            .iter()
            .map(|p| (p.planner, p.action.clone()))
            .collect()
    }

    fn migrate(region_id: u64, from: u64, to: u64) -> Action {
        Action::Migrate {
            region_id,
            from,
            to,
        }
    }

    fn hot_cluster() -> Vec<NodeBrief> {
        vec![
            node(1, &[(11, 100.0), (12, 100.0), (13, 100.0)]),
            node(2, &[(21, 100.0)]),
            node(3, &[(31, 100.0)]),
        ]
    }

    #[test]
    fn a_node_over_the_band_gives_the_region_that_evens_it_with_the_least_loaded() {
        let plan = plan(&input(hot_cluster()), &PlanLimits::default());
        assert_eq!(
            actions(&plan),
            [(PlannerKind::HotRegions, migrate(11, 1, 2))],
            "one move: 300/100/100 becomes 200/200/100, and no further move lowers a peak"
        );
        let figures = &plan[0].figures;
        assert_eq!(figures["source_load"], 300.0);
        assert_eq!(figures["target_load_after"], 200.0);
        assert!(
            plan[0].reason.contains("node 1 carries 300.0 RU/s"),
            "{}",
            plan[0].reason
        );
        assert!(
            plan[0].expected.contains("node 2 100.0 -> 200.0"),
            "{}",
            plan[0].expected
        );
    }

    #[test]
    fn the_next_tick_does_not_undo_a_move() {
        // The cluster once the move above is done.
        let after = vec![
            node(1, &[(12, 100.0), (13, 100.0)]),
            node(2, &[(21, 100.0), (11, 100.0)]),
            node(3, &[(31, 100.0)]),
        ];
        assert_eq!(plan(&input(after), &PlanLimits::default()), []);
    }

    #[test]
    fn the_mean_gets_the_regions_it_needs_and_no_more() {
        // 400 RU/s on one node of four: the minimum is three moves of 100 (to 100 each).
        let nodes = vec![
            node(1, &[(11, 100.0), (12, 100.0), (13, 100.0), (14, 100.0)]),
            node(2, &[]),
            node(3, &[]),
            node(4, &[]),
        ];
        let limits = PlanLimits {
            max_moves_per_node: 8,
            ..PlanLimits::default()
        };
        assert_eq!(
            actions(&plan(&input(nodes), &limits)),
            [
                (PlannerKind::HotRegions, migrate(11, 1, 2)),
                (PlannerKind::HotRegions, migrate(12, 1, 3)),
                (PlannerKind::HotRegions, migrate(13, 1, 4)),
            ]
        );
    }

    #[test]
    fn frozen_regions_maintenance_and_limits_hold_moves_back() {
        let mut frozen = input(hot_cluster());
        frozen.frozen = [11, 12, 13].into();
        assert_eq!(
            plan(&frozen, &PlanLimits::default()),
            [],
            "cooldown or busy"
        );
        let mut maintenance = input(hot_cluster());
        maintenance.maintenance = true;
        assert_eq!(plan(&maintenance, &PlanLimits::default()), []);
        let mut busy = input(hot_cluster());
        busy.in_flight = [(1, 2)].into();
        busy.in_flight_total = 2;
        assert_eq!(
            plan(&busy, &PlanLimits::default()),
            [],
            "node 1 has no budget"
        );
        let mut full = input(hot_cluster());
        full.in_flight_total = 16;
        assert_eq!(
            plan(&full, &PlanLimits::default()),
            [],
            "the cluster has none"
        );
    }

    #[test]
    fn a_follower_takes_leadership_rather_than_a_new_copy_opening() {
        let mut nodes = hot_cluster();
        nodes[0].hottest[0].followers = vec![3];
        nodes[0].coldest[0].followers = vec![3];
        let hot: Vec<_> = actions(&plan(&input(nodes), &PlanLimits::default()))
            .into_iter()
            .filter(|(planner, _)| *planner == PlannerKind::HotRegions)
            .collect();
        assert_eq!(
            hot,
            [(
                PlannerKind::HotRegions,
                Action::TransferLeader {
                    region_id: 11,
                    from: 1,
                    to: 3
                }
            )]
        );
    }

    #[test]
    fn load_is_read_against_learned_capacity() {
        // Node 1 serves twice the RU at full CPU: 200 RU/s there weighs what 100 does on the
        // others, so nothing is out of balance.
        let mut nodes = vec![
            node(1, &[(11, 100.0), (12, 50.0), (13, 50.0)]),
            node(2, &[(21, 100.0)]),
            node(3, &[(31, 100.0)]),
        ];
        nodes[0].capacity = Some(2_000.0);
        nodes[1].capacity = Some(1_000.0);
        nodes[2].capacity = Some(1_000.0);
        assert_eq!(plan(&input(nodes.clone()), &PlanLimits::default()), []);
        // Taken as equal, node 1 would be over the band.
        for n in &mut nodes {
            n.capacity = None;
        }
        assert_eq!(
            actions(&plan(&input(nodes), &PlanLimits::default())),
            [(PlannerKind::HotRegions, migrate(12, 1, 2))]
        );
    }

    #[test]
    fn an_overloaded_node_sheds_leaders_until_its_cpu_is_back_in_band() {
        let mut nodes = vec![
            node(1, &[(11, 60.0), (12, 40.0)]),
            node(2, &[(21, 50.0)]),
            node(3, &[(31, 50.0)]),
        ];
        nodes[0].utilization = 0.95;
        // 100/50/50 is within... no: the band is 73.3, so node 1 is also hot; evicting comes
        // first and its one move (40 RU/s: CPU 0.95 -> 0.57) leaves nothing for the others.
        let plan = plan(&input(nodes), &PlanLimits::default());
        assert_eq!(
            actions(&plan),
            [(PlannerKind::EvictLeaders, migrate(12, 1, 2))]
        );
        assert!(
            plan[0].reason.contains("overloaded: 95% CPU"),
            "{}",
            plan[0].reason
        );
    }

    #[test]
    fn a_slow_node_loses_its_leaders_and_its_replacement_is_recommended() {
        let mut nodes = vec![
            node(1, &[(11, 10.0)]),
            node(2, &[(21, 10.0)]),
            node(3, &[(31, 10.0)]),
            node(4, &[(41, 5.0), (42, 5.0)]),
        ];
        for (n, capacity) in nodes.iter_mut().zip([1_000.0, 1_000.0, 1_000.0, 300.0]) {
            n.capacity = Some(capacity);
        }
        let limits = PlanLimits {
            tolerance: 10.0,
            ..PlanLimits::default()
        };
        assert_eq!(
            actions(&plan(&input(nodes), &limits)),
            [
                (PlannerKind::EvictLeaders, migrate(41, 4, 1)),
                (PlannerKind::EvictLeaders, migrate(42, 4, 2)),
                (PlannerKind::Capacity, Action::ReplaceNode { node_id: 4 }),
            ]
        );
    }

    #[test]
    fn leaders_are_evened_by_transfers_to_followers() {
        // Six leaders on node 1 (all followed on node 2 or 3), none elsewhere; no load.
        let regions: Vec<(u64, f64)> = (11..17).map(|r| (r, 0.0)).collect();
        let mut nodes = vec![node(1, &regions), node(2, &[]), node(3, &[])];
        let first = &mut nodes[0];
        for brief in first.hottest.iter_mut().chain(first.coldest.iter_mut()) {
            brief.followers = vec![2 + brief.region_id % 2];
        }
        nodes[1].regions = 3;
        nodes[2].regions = 3;
        let limits = PlanLimits {
            max_moves_per_node: 8,
            ..PlanLimits::default()
        };
        let transfer = |region_id, to| {
            (
                PlannerKind::BalanceLeaders,
                Action::TransferLeader {
                    region_id,
                    from: 1,
                    to,
                },
            )
        };
        assert_eq!(
            actions(&plan(&input(nodes), &limits)),
            [
                transfer(11, 3),
                transfer(12, 2),
                transfer(13, 3),
                transfer(14, 2)
            ],
            "6/0/0 becomes 2/2/2"
        );
    }

    #[test]
    fn region_copies_are_evened_by_count_and_size() {
        let regions: Vec<(u64, f64)> = (11..15).map(|r| (r, 0.0)).collect();
        let nodes = vec![
            node(1, &regions),
            node(2, &[(21, 0.0)]),
            node(3, &[(31, 0.0)]),
        ];
        let limits = PlanLimits {
            max_moves_per_node: 8,
            ..PlanLimits::default()
        };
        // 4/1/1: one move makes 3/2/1, a second 2/2/2.
        assert_eq!(
            actions(&plan(&input(nodes), &limits)),
            [
                (PlannerKind::BalanceRegions, migrate(11, 1, 2)),
                (PlannerKind::BalanceRegions, migrate(12, 1, 3)),
            ]
        );
    }

    #[test]
    fn sustained_demand_recommends_more_or_fewer_datanodes() {
        let mut nodes = vec![node(1, &[(11, 900.0)]), node(2, &[(21, 900.0)])];
        for n in &mut nodes {
            n.capacity = Some(1_000.0);
        }
        let limits = PlanLimits {
            sustain_ticks: 3,
            tolerance: 10.0,
            ..PlanLimits::default()
        };
        let mut busy = input(nodes.clone());
        busy.utilization_history = vec![0.5, 0.9, 0.9, 0.9];
        // 1,800 RU/s at a target of (0.75 + 0.2) / 2 of 1,000 each: 4 nodes, 2 more.
        assert_eq!(
            actions(&plan(&busy, &limits)),
            [(PlannerKind::Capacity, Action::AddDatanodes { count: 2 })]
        );
        busy.utilization_history = vec![0.9, 0.9, 0.5];
        assert_eq!(plan(&busy, &limits), [], "not sustained");
        for n in &mut nodes {
            n.ru = 50.0;
        }
        nodes[0].ru = 40.0;
        let mut idle = input(nodes);
        idle.utilization_history = vec![0.05; 3];
        assert_eq!(
            actions(&plan(&idle, &limits)),
            [(
                PlannerKind::Capacity,
                Action::RemoveDatanodes { nodes: vec![1] }
            )]
        );
    }

    #[test]
    fn a_flapping_node_is_to_be_replaced() {
        let mut flapping = input(vec![node(1, &[]), node(2, &[])]);
        flapping.flaps = [(2, 3)].into();
        assert_eq!(
            actions(&plan(&flapping, &PlanLimits::default())),
            [(PlannerKind::Capacity, Action::ReplaceNode { node_id: 2 })]
        );
    }

    #[test]
    fn loads_that_still_move_are_not_planned_on() {
        let nodes = vec![node(1, &[(11, 100.0)]), node(2, &[(21, 100.0)])];
        let held: HashMap<u64, f64> = [(1, 95.0), (2, 100.0)].into();
        assert!(loads_settled(&held, &nodes, 0.1));
        let rising: HashMap<u64, f64> = [(1, 50.0), (2, 100.0)].into();
        assert!(!loads_settled(&rising, &nodes, 0.1));
        let joined: HashMap<u64, f64> = [(1, 100.0)].into();
        assert!(!loads_settled(&joined, &nodes, 0.1), "node 2 is new");
    }

    #[test]
    fn imbalance_is_max_over_mean() {
        assert_eq!(imbalance(&[100.0, 100.0]), 1.0);
        assert_eq!(imbalance(&[300.0, 100.0, 200.0]), 1.5);
        assert_eq!(imbalance(&[]), 1.0);
        assert_eq!(imbalance(&[0.0, 0.0]), 1.0);
    }
}
