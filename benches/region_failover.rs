//! Region failover time: from SIGKILL-equivalent death of a datanode that leads regions until
//! every one of its regions takes writes again through the frontend client, over repeats, with
//! the default 1 s heartbeats, failure detector, 3 s region leases and 500 ms safety margin.
//! Also checks that no region ever had two writers at overlapping times.
//!
//! Run: `cargo bench --bench region_failover` (flags: --repeats 10). In-process metasrv on the
//! embedded store and simulated datanodes with a data plane.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{flag, percentile};
use metasrv::actors::cluster_view::{ListNodes, NodeStatus};
use metasrv::catalog::model::{TableName, Value};
use metasrv::catalog::partition::Row;
use metasrv::client::{header, MetaClient};
use metasrv::failure_detector::FailureDetectorConfig;
use metasrv::proto::v1 as pb;
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::{Config, Listeners, Metasrv};

const CLUSTER: u64 = 9;

fn create(name: &TableName) -> pb::CreateTableRequest {
    let column = |n: &str, t: pb::ColumnType| pb::ColumnDef {
        name: n.into(),
        data_type: t as i32,
        nullable: false,
    };
    pb::CreateTableRequest {
        header: header(CLUSTER, 0),
        table_name: Some(name.into()),
        schema: Some(pb::TableSchema {
            columns: vec![
                column("host", pb::ColumnType::String),
                column("ts", pb::ColumnType::Timestamp),
            ],
            time_index: "ts".into(),
            primary_key: vec!["host".into()],
            options: Default::default(),
        }),
        partition_rule: Some(pb::PartitionRule {
            rule: Some(pb::partition_rule::Rule::Hash(pb::HashPartitioning {
                columns: vec!["host".into()],
                partitions: 6,
            })),
        }),
        if_not_exists: false,
        replicas: 1,
    }
}

fn rows(table: &TableName) -> Vec<(TableName, Row)> {
    (0..60)
        .map(|i| {
            let row = Row::from([
                ("host".to_string(), Value::String(format!("h{i}"))),
                ("ts".to_string(), Value::Int64(i)),
            ]);
            (table.clone(), row)
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-echo") {
        return common::serve_echo(&args);
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let repeats: usize = flag(&args, "--repeats").unwrap_or(if smoke { 1 } else { 10 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        // The production defaults (1 s heartbeats); a fast variant for the smoke run.
        let mut config = if smoke {
            Config {
                heartbeat_interval: Duration::from_millis(100),
                region_lease: Duration::from_millis(600),
                failover_safety_margin: Duration::from_millis(200),
                failure_detector: FailureDetectorConfig {
                    acceptable_heartbeat_pause: Duration::from_millis(300),
                    min_std_deviation: Duration::from_millis(20),
                    ..FailureDetectorConfig::default()
                },
                ..Config::default()
            }
        } else {
            Config::default()
        };
        config.cluster_id = CLUSTER;
        config.store.data_dir = dir.path().join("data");
        config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
        config.http_addr = "127.0.0.1:0".parse().expect("addr");
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
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let listed = view.send(ListNodes).await.expect("view");
                if listed.iter().filter(|n| n.status == NodeStatus::Alive && n.connected).count() == 3 {
                    break;
                }
                assert!(Instant::now() < deadline, "nodes did not come back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let table = TableName::new("greptime", "public", &format!("r{round}"));
            let (_, route) = meta.create_table(create(&table)).await.expect("create");
            frontend.insert(rows(&table)).await.expect("insert before the kill");
            let victim_id = route.route.regions[0].leader.id;
            let index = nodes.iter().position(|n| n.node_id() == victim_id).expect("victim");
            let victim = nodes.remove(index);
            let victim_log = victim.write_log();
            let killed_at = Instant::now();
            victim.kill();
            // Writes succeed again once every region of the victim is served elsewhere.
            loop {
                let last_error = match frontend.insert(rows(&table)).await {
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
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "| datanode kill -> all its regions writable, heartbeat {interval:?}, {repeats} rounds | ms |"
        );
        println!("|---|---|");
        println!("| p50 | {:.0} |", ms(percentile(&times, 0.5)));
        println!("| p99 | {:.0} |", ms(percentile(&times, 0.99)));
        println!("| min / max | {:.0} / {:.0} |", ms(times.first().copied()), ms(times.last().copied()));
        drop(nodes);
        metasrv.serve_until(async {}).await.expect("stop");
    });
}
