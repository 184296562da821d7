//! Region failover time: from SIGKILL-equivalent death of a datanode that leads regions until
//! every one of its regions takes writes again through the frontend client, over repeats, with
//! the default 1 s heartbeats, failure detector, 3 s region leases and 500 ms safety margin.
//! Also checks that no region ever had two writers at overlapping times.
//!
//! Then one large round: a node leading a third of `--large-regions` (default 3,072, in tables of
//! 1,024) dies; the time until every one of its regions is led by a live node, as a ratio of the
//! small rounds' p50 (the same detection and lease wait, so the ratio is the cost of many regions).
//!
//! Run: `cargo bench --bench region_failover` (flags: --repeats 10 --large-regions 3072).
//! In-process metasrv on the embedded store and simulated datanodes with a data plane.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{flag, percentile};
use metasrv::actors::cluster_view::{ListNodes, NodePage, NodeStatus};
use metasrv::catalog::model::TableName;
use metasrv::client::MetaClient;
use metasrv::sim::workload::{host_rows, host_table};
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::{Listeners, Metasrv};

const CLUSTER: u64 = 9;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-echo") {
        return common::serve_echo(&args);
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let repeats: usize = flag(&args, "--repeats").unwrap_or(if smoke { 1 } else { 10 });
    // Regions in the large round (the victim leads a third): 0 skips it.
    let large_regions: u32 =
        flag(&args, "--large-regions").unwrap_or(if smoke { 60 } else { 3072 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = common::in_process_config(smoke, CLUSTER, dir.path());
        let interval = config.heartbeat_interval;
        let store = metasrv::open_store(&config).await.expect("store");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let addr = listeners.grpc.local_addr().expect("addr").to_string();
        let metasrv = Metasrv::start(config, store, listeners).await.expect("metasrv");
        let view = metasrv.cluster_view().clone();
        let channel = metasrv::client::connect(&addr).await.expect("connect");
        let start_node = |id: u64| {
            let channel = channel.clone();
            async move {
                SimDatanode::start_serving(
                    channel,
                    SimDatanodeConfig {
                        interval,
                        ..SimDatanodeConfig::new(CLUSTER, id)
                    },
                )
                .await
                .expect("sim")
            }
        };
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(start_node(id).await);
        }
        let meta = Arc::new(MetaClient::connect(std::slice::from_ref(&addr), CLUSTER, 0).await.expect("meta"));
        let frontend = SimFrontend::new(meta.clone());
        let mut times = Vec::new();
        for round in 0..repeats {
            // Every node alive (the one killed last round came back).
            all_alive(&view).await;
            let table = TableName::new("greptime", "public", &format!("r{round}"));
            let (_, route) = meta.create_table(host_table(CLUSTER, &table, 6, 1)).await.expect("create");
            frontend.insert(host_rows(&table, 60)).await.expect("insert before the kill");
            let victim_id = route.route.regions[0].leader.id;
            let index = nodes.iter().position(|n| n.node_id() == victim_id).expect("victim");
            let victim = nodes.remove(index);
            let victim_log = victim.write_log();
            let killed_at = Instant::now();
            victim.kill();
            // Writes succeed again once every region of the victim is served elsewhere.
            loop {
                let last_error = match frontend.insert(host_rows(&table, 60)).await {
                    Ok(_) => break,
                    Err(e) => e.to_string(),
                };
                assert!(
                    killed_at.elapsed() < Duration::from_secs(60),
                    "regions never came back; last error: {last_error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = killed_at.elapsed();
            // No double writer: the victim's last accepted write precedes everything after.
            let last_old = victim_log.accepted_writes().iter().map(|w| w.at).max();
            let moved: Vec<u64> = route
                .route
                .regions
                .iter()
                .filter(|r| r.leader.id == victim_id)
                .map(|r| r.region_id)
                .collect();
            for node in &nodes {
                for write in node.accepted_writes().iter().filter(|w| moved.contains(&w.region_id)) {
                    assert!(
                        last_old.is_none_or(|old| old < write.at),
                        "region {} had two writers",
                        write.region_id
                    );
                }
            }
            eprintln!("round {round}: regions writable {took:?} after the kill");
            times.push(took);
            nodes.push(start_node(victim_id).await);
        }
        times.sort_unstable();

        // A node leading many regions: tables of 1,024 regions (one copy) over the three nodes;
        // the victim leads a third of them. Time from its death until every one of its regions
        // is led by a live node that has opened it as leader (inserts reaching every region
        // would need tens of thousands of rows per round).
        let mut large = Vec::new();
        if large_regions > 0 {
            all_alive(&view).await;
            let mut routes = Vec::new();
            let mut left = large_regions;
            for t in 0.. {
                if left == 0 {
                    break;
                }
                let regions = left.min(1024);
                left -= regions;
                let table = TableName::new("greptime", "public", &format!("large{t}"));
                let (_, route) = meta
                    .create_table(host_table(CLUSTER, &table, regions, 1))
                    .await
                    .expect("create a large table");
                routes.push(route);
            }
            let victim_id = 1;
            let moved: Vec<u64> = routes
                .iter()
                .flat_map(|r| r.route.regions.iter())
                .filter(|r| r.leader.id == victim_id)
                .map(|r| r.region_id)
                .collect();
            let index = nodes.iter().position(|n| n.node_id() == victim_id).expect("victim");
            let victim = nodes.remove(index);
            let killed_at = Instant::now();
            victim.kill();
            loop {
                let led: std::collections::HashSet<u64> = nodes
                    .iter()
                    .flat_map(|n| {
                        n.regions()
                            .into_iter()
                            .filter(|(_, role)| *role == metasrv::stats::RegionRole::Leader)
                            .map(|(id, _)| id)
                    })
                    .collect();
                if moved.iter().all(|id| led.contains(id)) {
                    break;
                }
                assert!(
                    killed_at.elapsed() < Duration::from_secs(120),
                    "{} of {} regions still not led",
                    moved.iter().filter(|id| !led.contains(id)).count(),
                    moved.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = killed_at.elapsed();
            eprintln!("large: {} regions led again {took:?} after the kill", moved.len());
            large.push((moved.len(), took));
            nodes.push(start_node(victim_id).await);
        }
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "| datanode kill -> all its regions writable, heartbeat {interval:?}, {repeats} rounds | ms |"
        );
        println!("|---|---|");
        println!("| p50 | {:.0} |", ms(percentile(&times, 0.5)));
        println!("| p99 | {:.0} |", ms(percentile(&times, 0.99)));
        println!("| min / max | {:.0} / {:.0} |", ms(times.first().copied()), ms(times.last().copied()));
        for (regions, took) in &large {
            println!(
                "| one node leading {regions} regions: all led again | {:.0} ({:.2}x the p50 above) |",
                ms(Some(*took)),
                ms(Some(*took)) / ms(percentile(&times, 0.5))
            );
        }
        drop(nodes);
        metasrv.serve_until(async {}).await.expect("stop");
    });
}

/// Waits (at most 30 s) until the three datanodes are alive and connected.
async fn all_alive(view: &actix::Addr<metasrv::actors::cluster_view::ClusterView>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = view
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
            == 3
        {
            return;
        }
        assert!(Instant::now() < deadline, "nodes did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
