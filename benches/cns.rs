//! The Central Nervous System against no rebalancing, in one run:
//!
//! 1. each scenario (`hot_spot`, `scale_out`, `skewed_reads`; see `metasrv::sim::scenario`)
//!    with the Autoadmin in auto mode, and the baseline: the same scenario with round-robin
//!    placement and the Autoadmin in dry-run (nothing rebalances). Reported: the imbalance
//!    (max / mean RU per node) after the watch window, the moves made against the minimum,
//!    and the simulated time until the imbalance stayed under 1.25 (target: within 60 s, with
//!    at most 1.5x the minimum moves). The clock is compressed 10x.
//! 2. the planners' cost at the scale targets: one round over 10,000 nodes (16 candidates
//!    each) against one over 100 nodes (the baseline).
//!
//! Run: `cargo bench --bench cns` (flag: --watch SECONDS of simulated time, default 120).
//! Without `--bench` (as `cargo test` runs it) a short smoke run: the hot spot only.

mod common;

use std::time::{Duration, Instant};

use common::flag;
use metasrv::cns::planner::{plan, PlanInput, PlanLimits};
use metasrv::cns::snapshot::{NodeBrief, RegionBrief};
use metasrv::sim::scenario::{run_scenario, ScenarioKind, ScenarioOptions, ScenarioReport};

async fn run(kind: ScenarioKind, rebalance: bool, watch: Duration) -> ScenarioReport {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = ScenarioOptions::new(kind, dir.path().join("data"));
    options.rebalance = rebalance;
    options.watch = watch;
    run_scenario(options).await.expect("the scenario runs")
}

fn converged(report: &ScenarioReport) -> String {
    report
        .converged_after
        .map_or("never".into(), |s| format!("{s:.0} s"))
}

/// A cluster of `nodes` with a hot spot on every tenth node.
fn snapshot(nodes: u64) -> PlanInput {
    let briefs = (1..=nodes)
        .map(|id| {
            let hot = id % 10 == 0;
            let regions: Vec<RegionBrief> = (0..16)
                .map(|r| RegionBrief {
                    region_id: id << 32 | r,
                    ru: if hot { 300.0 } else { 50.0 } + r as f64,
                    size: 64 << 20,
                    followers: Vec::new(),
                })
                .collect();
            NodeBrief {
                node_id: id,
                schedulable: true,
                ru: regions.iter().map(|r| r.ru).sum(),
                capacity: Some(10_000.0),
                utilization: 0.3,
                regions: 100,
                leaders: 100,
                size: 100 * (64 << 20),
                hottest: regions[8..].iter().rev().cloned().collect(),
                coldest: regions[..8].to_vec(),
            }
        })
        .collect();
    PlanInput {
        nodes: briefs,
        ..PlanInput::default()
    }
}

fn planner_cost(rounds: usize) {
    let limits = PlanLimits::default();
    let time = |nodes: u64| {
        let input = snapshot(nodes);
        let started = Instant::now();
        let mut proposals = 0;
        for _ in 0..rounds {
            proposals = plan(&input, &limits).len();
        }
        (started.elapsed() / rounds as u32, proposals)
    };
    let (small, small_moves) = time(100);
    let (large, large_moves) = time(10_000);
    println!(
        "planners, one round: 100 nodes {:.2} ms ({small_moves} proposals) | 10,000 nodes {:.1} ms ({large_moves} proposals) | ratio {:.0}x for 100x the nodes",
        small.as_secs_f64() * 1000.0,
        large.as_secs_f64() * 1000.0,
        large.as_secs_f64() / small.as_secs_f64().max(1e-9)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let watch = Duration::from_secs(flag(&args, "--watch").unwrap_or(if smoke { 40 } else { 120 }));
    let kinds = if smoke {
        vec![ScenarioKind::HotSpot]
    } else {
        vec![
            ScenarioKind::HotSpot,
            ScenarioKind::ScaleOut,
            ScenarioKind::SkewedReads,
        ]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!(
            "scenario      | baseline: imbalance after {:.0} s | CNS: imbalance after, under 1.25 after, moves (minimum)",
            watch.as_secs_f64()
        );
        for kind in kinds {
            let baseline = run(kind, false, watch).await;
            let cns = run(kind, true, watch).await;
            println!(
                "{:<13} | {:.2} -> {:.2}, {} moves | {:.2} -> {:.2}, {}, {} ({}), {:.2}x the minimum",
                kind.name(),
                baseline.imbalance_before,
                baseline.imbalance_after,
                baseline.moves,
                cns.imbalance_before,
                cns.imbalance_after,
                converged(&cns),
                cns.moves,
                cns.minimum_moves,
                cns.moves as f64 / cns.minimum_moves as f64
            );
            assert_eq!(baseline.moves, 0, "the baseline never moves");
        }
    });
    planner_cost(if smoke { 1 } else { 10 });
}
