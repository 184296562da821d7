//! The Central Nervous System's scenarios on a compressed clock (10 simulated seconds per real
//! second): an in-process metasrv, simulated datanodes driven by a workload, a change of load,
//! and the Autoadmin rebalancing. Each prints its timeline (the node-load imbalance, max / mean
//! RU per node, every few simulated seconds, and each decision with its reason) and the
//! imbalance before and after.
//! Run: `cargo run --example cns_scenarios [hot_spot|scale_out|skewed_reads] [--baseline]`
//! (all three by default; `--baseline` runs them without rebalancing, for comparison).

use std::time::Duration;

use metasrv::sim::scenario::{run_scenario, ScenarioKind, ScenarioOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let baseline = args.iter().any(|a| a == "--baseline");
    let mut kinds: Vec<ScenarioKind> = args
        .iter()
        .filter_map(|a| match a.as_str() {
            "hot_spot" => Some(ScenarioKind::HotSpot),
            "scale_out" => Some(ScenarioKind::ScaleOut),
            "skewed_reads" => Some(ScenarioKind::SkewedReads),
            _ => None,
        })
        .collect();
    if kinds.is_empty() {
        kinds = vec![
            ScenarioKind::HotSpot,
            ScenarioKind::ScaleOut,
            ScenarioKind::SkewedReads,
        ];
    }
    for kind in kinds {
        let dir = tempfile::tempdir()?;
        let mut options = ScenarioOptions::new(kind, dir.path().join("data"));
        options.rebalance = !baseline;
        options.watch = Duration::from_secs(90);
        options.print = true;
        run_scenario(options).await.map_err(anyhow::Error::msg)?;
        println!();
    }
    Ok(())
}
