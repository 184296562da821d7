//! Region migration and recovery, with the production defaults (1 s heartbeats, 3 s region
//! leases, 500 ms safety margin), an in-process metasrv on the embedded store and simulated
//! datanodes with a data plane, a frontend writing all the time:
//!
//! 1. the write pause of a manual migration with a live, cooperating old leader: per migrated
//!    region, the time from its last write accepted on the old leader to its first on the new
//!    one; the baseline is the same gap between consecutive writes of a region that does not
//!    move (the writer's own rhythm);
//! 2. the time until every region takes writes again after two datanodes are killed at the
//!    same moment (2 copies per region), against one datanode killed (the baseline);
//! 3. a drain of a node holding 100 region copies, against one migration.
//!
//! Run: `cargo bench --bench migration` (flags: --migrations 50 --kills 5). Without `--bench`
//! (as `cargo test` runs it) a short smoke run with fast timings.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{flag, percentile};
use metasrv::actors::cluster_view::{ListNodes, NodePage, NodeStatus};
use metasrv::catalog::model::TableName;
use metasrv::client::{header, MetaClient};
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::admin_client::AdminClient;
use metasrv::sim::workload::{host_rows, host_table};
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend, WriteLog};
use metasrv::{Listeners, Metasrv};

const CLUSTER: u64 = 11;

struct Bench {
    metasrv: Metasrv,
    channel: tonic::transport::Channel,
    meta: Arc<MetaClient>,
    interval: Duration,
    nodes: Vec<SimDatanode>,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start(smoke: bool, nodes: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = common::in_process_config(smoke, CLUSTER, dir.path());
        config.max_regions_per_table = 1024;
        let interval = config.heartbeat_interval;
        let store = metasrv::open_store(&config).await.expect("store");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let addr = listeners.grpc.local_addr().expect("addr").to_string();
        let metasrv = Metasrv::start(config, store, listeners)
            .await
            .expect("metasrv");
        let channel = metasrv::client::connect(&addr).await.expect("connect");
        let meta = Arc::new(
            MetaClient::connect(std::slice::from_ref(&addr), CLUSTER, 0)
                .await
                .expect("meta"),
        );
        let mut bench = Self {
            metasrv,
            channel,
            meta,
            interval,
            nodes: Vec::new(),
            _dir: dir,
        };
        for id in 1..=nodes {
            bench.start_node(id).await;
        }
        bench.wait_alive(nodes as usize).await;
        bench
    }

    async fn start_node(&mut self, id: u64) {
        let node = SimDatanode::start_serving(
            self.channel.clone(),
            SimDatanodeConfig {
                interval: self.interval,
                ..SimDatanodeConfig::new(CLUSTER, id)
            },
        )
        .await
        .expect("sim");
        self.nodes.push(node);
    }

    async fn wait_alive(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listed = self
                .metasrv
                .cluster_view()
                .send(ListNodes {
                    page: NodePage::ALL,
                })
                .await
                .expect("view")
                .nodes;
            if listed
                .iter()
                .filter(|n| n.status == NodeStatus::Alive && n.connected)
                .count()
                >= count
            {
                return;
            }
            assert!(Instant::now() < deadline, "nodes did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs(&self) -> Vec<WriteLog> {
        self.nodes.iter().map(SimDatanode::write_log).collect()
    }

    /// Writes to every region of `table` until the returned flag is set.
    fn writer(&self, table: &TableName) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let frontend = SimFrontend::new(self.meta.clone());
        let (table, flag) = (table.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                if frontend.insert(host_rows(&table, 24)).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        (stop, task)
    }

    /// Kills the nodes with `ids` at once; returns how long until every region of `table`
    /// takes writes again.
    async fn kill_and_recover(&mut self, table: &TableName, ids: &[u64]) -> Duration {
        let frontend = SimFrontend::new(self.meta.clone());
        let victims: Vec<SimDatanode> = {
            let (victims, kept) = std::mem::take(&mut self.nodes)
                .into_iter()
                .partition(|n| ids.contains(&n.node_id()));
            self.nodes = kept;
            victims
        };
        let killed_at = Instant::now();
        drop(victims);
        loop {
            if frontend.insert(host_rows(table, 48)).await.is_ok() {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "regions never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed_at.elapsed()
    }
}

/// Accepted write instants of `region_id` on each node.
fn writes_of(logs: &[WriteLog], region_id: u64) -> Vec<Vec<Instant>> {
    logs.iter()
        .map(|log| {
            log.accepted_writes()
                .iter()
                .filter(|w| w.region_id == region_id)
                .map(|w| w.at)
                .collect()
        })
        .collect()
}

/// The longest gap between consecutive accepted writes of a region, over every node's log.
fn longest_gap(logs: &[WriteLog], region_id: u64, from: Instant) -> Duration {
    let mut all: Vec<Instant> = writes_of(logs, region_id)
        .into_iter()
        .flatten()
        .filter(|at| *at >= from)
        .collect();
    all.sort_unstable();
    all.windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn migration_pause(smoke: bool, migrations: usize) {
    let bench = Bench::start(smoke, 3).await;
    let table = TableName::new("greptime", "public", "migrated");
    let (_, route) = bench
        .meta
        .create_table(host_table(CLUSTER, &table, 6, 1))
        .await
        .expect("create");
    let logs = bench.logs();
    let (stop, writer) = bench.writer(&table);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut admin = AdminClient::new(bench.channel.clone());
    // Region 0 moves around the nodes; region 1 stays put (the baseline rhythm).
    let moving = route.route.regions[0].region_id;
    let still = route.route.regions[1].region_id;
    let mut leader = route.route.regions[0].leader.id;
    let mut pauses = Vec::new();
    let mut baselines = Vec::new();
    let mut totals = Vec::new();
    for _ in 0..migrations {
        let to = leader % 3 + 1;
        let before = Instant::now();
        let response = admin
            .migrate_region(pb::MigrateRegionRequest {
                header: header(CLUSTER, 0),
                region_id: moving,
                to_node: to,
                wait: true,
            })
            .await
            .expect("migration")
            .into_inner();
        let procedure = response.procedure.expect("procedure");
        assert_eq!(procedure.state, "done", "{procedure:?}");
        totals.push(before.elapsed());
        // Let writes land on the new leader before measuring.
        tokio::time::sleep(Duration::from_millis(200)).await;
        pauses.push(longest_gap(&logs, moving, before));
        baselines.push(longest_gap(&logs, still, before));
        leader = to;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    pauses.sort_unstable();
    baselines.sort_unstable();
    totals.sort_unstable();
    println!(
        "| {migrations} migrations under writes, live old leader | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|");
    for (name, samples) in [
        ("write pause of the migrated region", &pauses),
        ("longest gap of a region that stays (baseline)", &baselines),
        ("MigrateRegion call (wait = true)", &totals),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.99)),
            ms(samples.last().copied())
        );
    }
    let ratio = ms(percentile(&pauses, 0.99)) / ms(percentile(&baselines, 0.99));
    println!("pause p99 / baseline p99: {ratio:.1}x");
    bench.metasrv.serve_until(async {}).await.expect("stop");
}

async fn recovery(smoke: bool, kills: usize) {
    let mut bench = Bench::start(smoke, 5).await;
    let mut one = Vec::new();
    let mut two = Vec::new();
    for round in 0..kills {
        for count in [1usize, 2] {
            let table = TableName::new("greptime", "public", &format!("k{round}_{count}"));
            let (_, route) = bench
                .meta
                .create_table(host_table(CLUSTER, &table, 12, 2))
                .await
                .expect("create");
            // The node that leads the most regions of the table dies, and with it (two kills)
            // the node holding most of the other copies: some regions lose every copy.
            let mut led: HashMap<u64, usize> = HashMap::new();
            let mut held: HashMap<u64, usize> = HashMap::new();
            for region in &route.route.regions {
                *led.entry(region.leader.id).or_default() += 1;
                for follower in &region.followers {
                    *held.entry(follower.id).or_default() += 1;
                }
            }
            let first = led
                .iter()
                .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
                .map(|(id, _)| *id)
                .expect("a leader");
            let mut victims = vec![first];
            if count == 2 {
                let second = held
                    .iter()
                    .chain(led.iter())
                    .filter(|(id, _)| **id != first)
                    .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
                    .map(|(id, _)| *id)
                    .expect("another holder");
                victims.push(second);
            }
            let victims = &victims[..];
            SimFrontend::new(bench.meta.clone())
                .insert(host_rows(&table, 48))
                .await
                .expect("writes before");
            let took = bench.kill_and_recover(&table, victims).await;
            eprintln!(
                "round {round}: {} killed, writable after {took:?}",
                victims.len()
            );
            if victims.len() == 1 {
                one.push(took)
            } else {
                two.push(took)
            }
            for id in victims {
                bench.start_node(*id).await;
            }
            bench.wait_alive(5).await;
        }
    }
    one.sort_unstable();
    two.sort_unstable();
    println!("| kill -> every region writable, {kills} rounds, 5 nodes, 12 regions x 2 copies | p50 ms | p99 ms |");
    println!("|---|---|---|");
    println!(
        "| one datanode (baseline) | {:.0} | {:.0} |",
        ms(percentile(&one, 0.5)),
        ms(percentile(&one, 0.99))
    );
    println!(
        "| two datanodes at once | {:.0} | {:.0} |",
        ms(percentile(&two, 0.5)),
        ms(percentile(&two, 0.99))
    );
    println!(
        "two / one at p99: {:.2}x",
        ms(percentile(&two, 0.99)) / ms(percentile(&one, 0.99))
    );
    bench.metasrv.serve_until(async {}).await.expect("stop");
}

async fn drain(smoke: bool) {
    let bench = Bench::start(smoke, 4).await;
    let table = TableName::new("greptime", "public", "drained");
    let (_, route) = bench
        .meta
        .create_table(host_table(CLUSTER, &table, 200, 2))
        .await
        .expect("create");
    let held: HashMap<u64, usize> = route.route.regions.iter().fold(HashMap::new(), |mut m, r| {
        for id in std::iter::once(r.leader.id).chain(r.followers.iter().map(|f| f.id)) {
            *m.entry(id).or_default() += 1;
        }
        m
    });
    let (stop, writer) = bench.writer(&table);
    let mut admin = AdminClient::new(bench.channel.clone());
    // The baseline: one migration of a region of node 1 to a node without a copy.
    let region = route
        .route
        .regions
        .iter()
        .find(|r| r.leader.id == 1)
        .expect("node 1 leads a region");
    let free = (2..=4)
        .find(|n| !region.followers.iter().any(|f| f.id == *n))
        .expect("a free node");
    let one = Instant::now();
    admin
        .migrate_region(pb::MigrateRegionRequest {
            header: header(CLUSTER, 0),
            region_id: region.region_id,
            to_node: free,
            wait: true,
        })
        .await
        .expect("migration");
    let one = one.elapsed();
    let copies = held.get(&1).copied().unwrap_or(0) - 1;
    let started = Instant::now();
    let response = admin
        .drain_node(pb::DrainNodeRequest {
            header: header(CLUSTER, 0),
            node_id: 1,
            wait: true,
        })
        .await
        .expect("drain")
        .into_inner();
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let procedure = response.procedure.expect("procedure");
    assert_eq!(procedure.state, "done", "{procedure:?}");
    println!("| drain under writes | ms |");
    println!("|---|---|");
    println!("| one migration (baseline) | {:.1} |", ms(Some(one)));
    println!(
        "| drain of {} copies ({copies} held) | {:.1} |",
        procedure.moved,
        ms(Some(took))
    );
    println!(
        "drain / (copies x one migration): {:.2}",
        took.as_secs_f64() / (one.as_secs_f64() * procedure.moved.max(1) as f64)
    );
    bench.metasrv.serve_until(async {}).await.expect("stop");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let migrations: usize = flag(&args, "--migrations").unwrap_or(if smoke { 3 } else { 50 });
    let kills: usize = flag(&args, "--kills").unwrap_or(if smoke { 1 } else { 5 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        migration_pause(smoke, migrations).await;
        recovery(smoke, kills).await;
        drain(smoke).await;
    });
}
