//! The CNS scenarios: an in-process metasrv (embedded store), simulated datanodes driven by a
//! [`LoadModel`] on a compressed clock, a starting layout arranged through the Admin service,
//! then a change of load; the timeline records the node-load imbalance (max / mean of the RU
//! per second each node's leader regions are asked, the ground truth, not metasrv's view) and
//! the Autoadmin's decisions until the end. Examples print it, tests assert on it, and the
//! `cns` benchmark compares it with the baseline (the same scenario with round-robin placement
//! and the Autoadmin in dry-run: nothing rebalances).
//!
//! - `hot_spot`: a table whose four regions sit on node 1 turns hot; the CNS spreads it.
//! - `scale_out`: a fourth datanode joins three loaded ones and receives its share.
//! - `skewed_reads`: two tables with equal read units but 30x different CPU per read, each on
//!   two of four nodes: the compute-aware unit sees the imbalance, read units alone would not.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::autoadmin::{AutoadminHandle, SetMode};
use crate::actors::cluster_view::{ListNodes, NodePage, NodeStatus};
use crate::catalog::model::{table_of_region, TableName};
use crate::client::{header, MetaClient};
use crate::cns::decisions::{Decision, DecisionStatus, Mode};
use crate::cns::planner::imbalance;
use crate::cns::unit::RuPrices;
use crate::cns::CnsConfig;
use crate::failure_detector::FailureDetectorConfig;
use crate::proto::v1 as pb;
use crate::proto::v1::admin_client::AdminClient;
use crate::selector::SelectorKind;
use crate::sim::load::{LoadModel, RegionDemand};
use crate::sim::workload::host_table;
use crate::sim::{SimDatanode, SimDatanodeConfig, WriteLog};
use crate::{Config, Listeners, Metasrv};

const CLUSTER: u64 = 0;
/// The imbalance the CNS must bring the cluster under.
pub const TARGET_IMBALANCE: f64 = 1.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScenarioKind {
    HotSpot,
    ScaleOut,
    SkewedReads,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::HotSpot => "hot_spot",
            Self::ScaleOut => "scale_out",
            Self::SkewedReads => "skewed_reads",
        }
    }

    /// The fewest moves that bring the load under the target with region counts even, by
    /// construction of the scenario.
    pub fn minimum_moves(self) -> usize {
        match self {
            // Three of the four hot regions leave node 1.
            Self::HotSpot => 3,
            // Each of the three loaded nodes gives the new one a region.
            Self::ScaleOut => 3,
            // Two heavy regions leave nodes 1 and 2; with counts even, two light ones come
            // back (two swaps).
            Self::SkewedReads => 4,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    pub kind: ScenarioKind,
    /// `true`: the Autoadmin in auto mode. `false`: the baseline (round-robin placement,
    /// dry-run: nothing rebalances).
    pub rebalance: bool,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Simulated time to watch after the load changes.
    pub watch: Duration,
    /// Where the embedded store lives (a temporary directory).
    pub data_dir: PathBuf,
    /// Print the timeline as it goes.
    pub print: bool,
}

impl ScenarioOptions {
    pub fn new(kind: ScenarioKind, data_dir: PathBuf) -> Self {
        Self {
            kind,
            rebalance: true,
            time_scale: 10.0,
            watch: Duration::from_secs(120),
            data_dir,
            print: false,
        }
    }
}

/// One point of the timeline.
#[derive(Clone, Debug)]
pub struct TimelinePoint {
    /// Simulated seconds since the load changed.
    pub at: f64,
    pub imbalance: f64,
    /// RU per second each node's leader regions are asked, by node id.
    pub loads: BTreeMap<u64, f64>,
    /// Moves that succeeded so far.
    pub moves: usize,
}

pub struct ScenarioReport {
    pub kind: ScenarioKind,
    pub rebalance: bool,
    pub timeline: Vec<TimelinePoint>,
    /// Right after the change, and at the end.
    pub imbalance_before: f64,
    pub imbalance_after: f64,
    /// Simulated seconds after the change from which the imbalance stayed under the target.
    pub converged_after: Option<f64>,
    /// Moves carried out (succeeded decisions).
    pub moves: usize,
    pub minimum_moves: usize,
    /// Every decision of the run.
    pub decisions: Vec<Decision>,
    /// Simulated seconds at which each region's move decisions were made.
    pub region_moves: BTreeMap<u64, Vec<f64>>,
    /// The configured cooldown, in simulated seconds.
    pub cooldown: f64,
    /// Every node's write log (for the no-double-writer check).
    pub write_logs: Vec<(String, WriteLog)>,
}

/// The CNS settings the scenarios run with: real durations, so `time_scale` times longer in
/// simulated time (10x: a plan every 3 s, a cooldown of 60 s).
fn cns_config() -> CnsConfig {
    CnsConfig {
        mode: Mode::DryRun,
        interval: Duration::from_millis(300),
        settle: Duration::ZERO,
        cooldown: Duration::from_secs(6),
        max_moves_per_node: 2,
        max_moves: 8,
        // Recommendations need sustained figures; the scenarios watch moves.
        sustain: Duration::from_secs(600),
        ..CnsConfig::default()
    }
}

fn demand(rcus: f64, wcus: f64, cpu_ms: f64, scanned_kib: f64) -> RegionDemand {
    RegionDemand {
        rcus,
        wcus,
        cpu_ms,
        scanned_bytes: scanned_kib * 1024.0,
    }
}

/// The RU per second one region is asked.
fn region_ru(prices: &RuPrices, d: &RegionDemand) -> f64 {
    prices.units(
        d.rcus as u64,
        d.wcus as u64,
        d.cpu_ms as u64,
        d.scanned_bytes as u64,
    )
}

struct Cluster {
    metasrv: Metasrv,
    addr: String,
    channel: tonic::transport::Channel,
    nodes: Vec<SimDatanode>,
    model: Arc<LoadModel>,
    meta: Arc<MetaClient>,
    time_scale: f64,
    heartbeat: Duration,
}

impl Cluster {
    async fn add_node(&mut self, id: u64) -> Result<(), String> {
        let config = SimDatanodeConfig {
            interval: self.heartbeat,
            workload: Some(self.model.clone()),
            time_scale: self.time_scale,
            cpu_cores: 8.0,
            ..SimDatanodeConfig::new(CLUSTER, id)
        };
        let node = SimDatanode::start_serving(self.channel.clone(), config)
            .await
            .map_err(|e| format!("datanode {id}: {e}"))?;
        self.nodes.push(node);
        self.wait_nodes(self.nodes.len()).await
    }

    async fn wait_nodes(&self, count: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let alive = self
                .metasrv
                .cluster_view()
                .send(ListNodes {
                    page: NodePage::ALL,
                })
                .await
                .map_err(|e| e.to_string())?
                .nodes
                .iter()
                .filter(|n| n.status == NodeStatus::Alive && n.connected)
                .count();
            if alive >= count {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {alive} of {count} datanodes joined within 20s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates `table` with `regions` regions and one copy each; its region ids.
    async fn create(&self, table: &str, regions: u32) -> Result<Vec<(u64, u64)>, String> {
        let name = TableName::new("greptime", "public", table);
        let (_, route) = self
            .meta
            .create_table(host_table(CLUSTER, &name, regions, 1))
            .await
            .map_err(|e| format!("create {table}: {e}"))?;
        Ok(route
            .route
            .regions
            .iter()
            .map(|r| (r.region_id, r.leader.id))
            .collect())
    }

    /// Moves each region to its node in `layout` (setup, before the CNS acts).
    async fn arrange(&self, layout: &[(u64, u64, u64)]) -> Result<(), String> {
        let mut admin = AdminClient::new(self.channel.clone());
        for &(region_id, from, to) in layout {
            if from == to {
                continue;
            }
            let procedure = admin
                .migrate_region(pb::MigrateRegionRequest {
                    header: header(CLUSTER, 0),
                    region_id,
                    to_node: to,
                    wait: true,
                })
                .await
                .map_err(|e| format!("arrange region {region_id} on node {to}: {e}"))?
                .into_inner()
                .procedure
                .ok_or("a migration without its procedure")?;
            if procedure.state != "done" {
                return Err(format!(
                    "arranging region {region_id} on node {to} failed: {:?}",
                    procedure.steps.last()
                ));
            }
        }
        // The nodes report the arranged layout before the load changes.
        tokio::time::sleep(self.heartbeat * 3).await;
        Ok(())
    }

    /// Ground truth: RU per second each node's leader regions are asked now.
    fn loads(&self, prices: &RuPrices) -> BTreeMap<u64, f64> {
        use crate::sim::load::Workload;
        self.nodes
            .iter()
            .map(|node| {
                let ru = node
                    .regions()
                    .iter()
                    .filter(|(_, role)| **role == crate::stats::RegionRole::Leader)
                    .map(|(region, _)| region_ru(prices, &self.model.demand(*region)))
                    .sum();
                (node.node_id(), ru)
            })
            .collect()
    }
}

/// Spreads `regions` (id, current node) over `nodes` as `place` says (index of the region in
/// the list -> node).
fn layout(regions: &[(u64, u64)], place: impl Fn(usize) -> u64) -> Vec<(u64, u64, u64)> {
    regions
        .iter()
        .enumerate()
        .map(|(i, &(region, from))| (region, from, place(i)))
        .collect()
}

/// Runs one scenario to its end.
pub async fn run_scenario(options: ScenarioOptions) -> Result<ScenarioReport, String> {
    let heartbeat = Duration::from_millis(100);
    let scale = options.time_scale.max(1.0);
    let cns = cns_config();
    let cooldown = cns.cooldown.as_secs_f64() * scale;
    let prices = cns.ru_prices.clone();
    let mut config = Config {
        cluster_id: CLUSTER,
        heartbeat_interval: heartbeat,
        region_history: 10,
        selector: if options.rebalance {
            SelectorKind::LeastLoaded
        } else {
            SelectorKind::RoundRobin
        },
        failure_detector: FailureDetectorConfig {
            acceptable_heartbeat_pause: Duration::from_secs(1),
            min_std_deviation: Duration::from_millis(20),
            ..FailureDetectorConfig::default()
        },
        cns,
        ..Config::default()
    };
    config.store.data_dir = options.data_dir.clone();
    config.grpc_addr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    config.http_addr = config.grpc_addr;
    let store = crate::open_store(&config)
        .await
        .map_err(|e| e.to_string())?;
    let listeners = Listeners::bind(&config).await.map_err(|e| e.to_string())?;
    let addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let metasrv = Metasrv::start(config, store, listeners)
        .await
        .map_err(|e| e.to_string())?;
    let channel = crate::client::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let meta = Arc::new(
        MetaClient::connect(std::slice::from_ref(&addr), CLUSTER, 0)
            .await
            .map_err(|e| e.to_string())?,
    );
    let mut cluster = Cluster {
        metasrv,
        addr,
        channel,
        nodes: Vec::new(),
        model: Arc::new(LoadModel::default()),
        meta,
        time_scale: scale,
        heartbeat,
    };
    let print = options.print;
    let say = |line: String| {
        if print {
            println!("{line}");
        }
    };
    say(format!(
        "scenario {} ({}), clock x{scale}, metasrv at {}",
        options.kind.name(),
        if options.rebalance {
            "CNS in auto mode"
        } else {
            "baseline: round-robin placement, no rebalancing"
        },
        cluster.addr
    ));

    // Setup: nodes, tables, the starting layout, the load before the change.
    let base = demand(50.0, 20.0, 100.0, 0.0);
    let change: Box<dyn Fn(&Cluster)> = match options.kind {
        ScenarioKind::HotSpot => {
            for id in 1..=4 {
                cluster.add_node(id).await?;
            }
            let base_regions = cluster.create("base", 16).await?;
            let hot = cluster.create("hot", 4).await?;
            cluster
                .model
                .set_table(table_of_region(base_regions[0].0), base);
            cluster
                .model
                .set_table(table_of_region(hot[0].0), demand(2.0, 1.0, 1.0, 0.0));
            cluster
                .arrange(&layout(&base_regions, |i| i as u64 % 4 + 1))
                .await?;
            cluster.arrange(&layout(&hot, |_| 1)).await?;
            let table = table_of_region(hot[0].0);
            say(
                "  4 nodes; table base: 16 regions, 4 a node; table hot: 4 regions, all on node 1"
                    .into(),
            );
            Box::new(move |c: &Cluster| {
                c.model
                    .set_table(table, demand(400.0, 150.0, 300.0, 2048.0));
            })
        }
        ScenarioKind::ScaleOut => {
            for id in 1..=3 {
                cluster.add_node(id).await?;
            }
            let base_regions = cluster.create("base", 12).await?;
            cluster
                .model
                .set_table(table_of_region(base_regions[0].0), base);
            cluster
                .arrange(&layout(&base_regions, |i| i as u64 % 3 + 1))
                .await?;
            say("  3 nodes; table base: 12 regions, 4 a node; node 4 joins at t=0".into());
            Box::new(|_: &Cluster| {})
        }
        ScenarioKind::SkewedReads => {
            for id in 1..=4 {
                cluster.add_node(id).await?;
            }
            let heavy = cluster.create("heavy", 4).await?;
            let light = cluster.create("light", 4).await?;
            // Equal read units (100 RCU a region); 300 ms of CPU per second of reads against
            // 10 ms: aggregations over what they scan.
            cluster
                .model
                .set_table(table_of_region(heavy[0].0), demand(100.0, 0.0, 0.0, 0.0));
            cluster
                .model
                .set_table(table_of_region(light[0].0), demand(100.0, 0.0, 0.0, 0.0));
            cluster
                .arrange(&layout(&heavy, |i| i as u64 % 2 + 1))
                .await?;
            cluster
                .arrange(&layout(&light, |i| i as u64 % 2 + 3))
                .await?;
            let (heavy, light) = (table_of_region(heavy[0].0), table_of_region(light[0].0));
            say("  4 nodes; table heavy: 4 regions on nodes 1-2; table light: 4 regions on nodes 3-4; equal RCU".into());
            Box::new(move |c: &Cluster| {
                c.model.set_table(heavy, demand(100.0, 0.0, 300.0, 4096.0));
                c.model.set_table(light, demand(100.0, 0.0, 10.0, 400.0));
            })
        }
    };

    // The change, then the Autoadmin acts (auto) or only records (baseline).
    let autoadmin: AutoadminHandle = cluster.metasrv.autoadmin().clone();
    change(&cluster);
    if options.kind == ScenarioKind::ScaleOut {
        cluster.add_node(4).await?;
    }
    if options.rebalance {
        autoadmin
            .actor
            .send(SetMode { mode: Mode::Auto })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    let sim_now = |at: Instant| at.duration_since(started).as_secs_f64() * scale;
    let first_decision = autoadmin
        .log
        .lock()
        .list(None, 1)
        .first()
        .map_or(0, |d| d.id);
    // The decisions made since the change, oldest first.
    let decisions_since_change = || -> Vec<Decision> {
        let log = autoadmin.log.lock();
        let mut all = log.list_where(None, usize::MAX, |d| d.id > first_decision);
        all.reverse();
        all
    };
    let succeeded = |decisions: &[Decision]| {
        decisions
            .iter()
            .filter(|d| d.status == DecisionStatus::Succeeded)
            .count()
    };
    let watch_real = options.watch.div_f64(scale);
    let mut timeline = Vec::new();
    let mut reported = first_decision;
    loop {
        let now = Instant::now();
        let loads = cluster.loads(&prices);
        let values: Vec<f64> = loads.values().copied().collect();
        let decisions = decisions_since_change();
        let moves = succeeded(&decisions);
        let already = reported;
        for d in decisions.iter().filter(|d| d.id > already) {
            say(format!(
                "  t={:>5.0}s  decision {} ({}): {:?}: {}",
                sim_now(now),
                d.id,
                d.proposal.planner.name(),
                d.proposal.action,
                d.proposal.reason
            ));
            reported = d.id;
        }
        let point = TimelinePoint {
            at: sim_now(now),
            imbalance: imbalance(&values),
            loads,
            moves,
        };
        say(format!(
            "  t={:>5.0}s  imbalance {:.2}  loads {}  moves {}",
            point.at,
            point.imbalance,
            point
                .loads
                .iter()
                .map(|(n, l)| format!("{n}:{l:.0}"))
                .collect::<Vec<_>>()
                .join(" "),
            point.moves
        ));
        timeline.push(point);
        if now.duration_since(started) >= watch_real {
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(5.0 / scale)).await;
    }

    // The outcome.
    let decisions = decisions_since_change();
    let mut region_moves: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let real_start = crate::clock::unix_ms() as f64 - started.elapsed().as_secs_f64() * 1000.0;
    for d in &decisions {
        if let Some(region) = d.proposal.action.region_id() {
            if matches!(
                d.status,
                DecisionStatus::Succeeded | DecisionStatus::Executing | DecisionStatus::Failed
            ) {
                region_moves
                    .entry(region)
                    .or_default()
                    .push((d.at_unix_ms as f64 - real_start) / 1000.0 * scale);
            }
        }
    }
    let imbalance_before = timeline.first().map_or(1.0, |p| p.imbalance);
    let imbalance_after = timeline.last().map_or(1.0, |p| p.imbalance);
    let converged_after = timeline
        .iter()
        .rposition(|p| p.imbalance >= TARGET_IMBALANCE)
        .map_or(Some(0.0), |last_over| {
            timeline.get(last_over + 1).map(|p| p.at)
        });
    let moves = succeeded(&decisions);
    let write_logs = cluster
        .nodes
        .iter()
        .map(|n| (format!("node {}", n.node_id()), n.write_log()))
        .collect();
    say(format!(
        "  imbalance {imbalance_before:.2} -> {imbalance_after:.2}; under {TARGET_IMBALANCE} after {}; {moves} moves (minimum {})",
        converged_after.map_or("never".to_string(), |s| format!("{s:.0} simulated seconds")),
        options.kind.minimum_moves()
    ));
    let report = ScenarioReport {
        kind: options.kind,
        rebalance: options.rebalance,
        timeline,
        imbalance_before,
        imbalance_after,
        converged_after,
        moves,
        minimum_moves: options.kind.minimum_moves(),
        decisions,
        region_moves,
        cooldown,
        write_logs,
    };
    drop(cluster.nodes);
    cluster
        .metasrv
        .serve_until(async {})
        .await
        .map_err(|e| e.to_string())?;
    Ok(report)
}

/// Regions moved twice within the cooldown (simulated seconds apart), if any.
pub fn moves_within_cooldown(report: &ScenarioReport) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    for (region, times) in &report.region_moves {
        for pair in times.windows(2) {
            if pair[1] - pair[0] < report.cooldown * 0.95 {
                out.push((*region, pair[1] - pair[0]));
            }
        }
    }
    out
}

/// The nodes' loads in the report's last point, by node.
pub fn final_loads(report: &ScenarioReport) -> HashMap<u64, f64> {
    report
        .timeline
        .last()
        .map(|p| p.loads.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default()
}
