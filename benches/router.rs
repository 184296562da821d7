//! Router benchmark:
//! 1. Route lookups per second against metasrv, as a ratio of a raw tonic unary echo that answers
//!    with the very same RouteResponse bytes, in the same run (64 concurrent callers).
//! 2. A cached route lookup in the client (ns), against a bare HashMap lookup.
//! 3. CreateTable latency on the etcd backend (3 simulated datanodes confirming OpenRegion), as a
//!    ratio of one etcd transaction of the same shape as the commit (compare + 3 puts).
//!
//! Run: `cargo bench --bench router` (flags: --seconds 10 --tasks 64 --creates 200).
//! Needs `etcd` on PATH (Debian's etcd-server) for part 3.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{flag, percentile, EtcdServer, ServerProcess, CLUSTER};
use metasrv::catalog::model::TableName;
use metasrv::client::{header, MetaClient};
use metasrv::proto::bench::echo_client::EchoClient;
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::router_client::RouterClient;
use metasrv::sim::{SimDatanode, SimDatanodeConfig};
use prost::Message;
use tonic::transport::Channel;

fn table(name: &str) -> TableName {
    TableName::new("greptime", "public", name)
}

fn create_request(name: &TableName, partitions: u32, replicas: u32) -> pb::CreateTableRequest {
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
                column("usage", pb::ColumnType::Float64),
            ],
            time_index: "ts".into(),
            primary_key: vec!["host".into()],
            options: Default::default(),
        }),
        partition_rule: Some(pb::PartitionRule {
            rule: Some(pb::partition_rule::Rule::Hash(pb::HashPartitioning {
                columns: vec!["host".into()],
                partitions,
            })),
        }),
        if_not_exists: false,
        replicas,
    }
}

/// Three simulated datanodes on `addr`, and a client once they can take a table.
async fn cluster(addr: &str) -> (Vec<SimDatanode>, MetaClient) {
    let channel = metasrv::client::connect(addr).await.expect("connect");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let config = SimDatanodeConfig {
            interval: Duration::from_millis(200),
            ..SimDatanodeConfig::new(CLUSTER, id)
        };
        nodes.push(
            SimDatanode::start_serving(channel.clone(), config)
                .await
                .expect("sim"),
        );
    }
    let meta = MetaClient::connect(&[addr.to_owned()], CLUSTER, 0)
        .await
        .expect("meta client");
    (nodes, meta)
}

/// Creates a table, retrying while the datanodes are still registering (bounded).
async fn create_when_ready(meta: &MetaClient, request: pb::CreateTableRequest) {
    let started = Instant::now();
    loop {
        match meta.create_table(request.clone()).await {
            Ok(_) => return,
            Err(e) if started.elapsed() < Duration::from_secs(15) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot create the benchmark table: {e}"),
        }
    }
}

#[derive(Clone, Copy)]
enum Target {
    Metasrv,
    Echo,
}

/// `tasks` callers doing Route in a closed loop for `duration`; returns (rate, sorted µs).
async fn route_load(
    addr: &str,
    target: Target,
    tasks: usize,
    duration: Duration,
) -> (f64, Vec<u32>) {
    let channels: Vec<Channel> = {
        let mut channels = Vec::new();
        for _ in 0..tasks.div_ceil(16) {
            channels.push(metasrv::client::connect(addr).await.expect("connect"));
        }
        channels
    };
    let request = pb::RouteRequest {
        header: header(CLUSTER, 0),
        table_names: vec![(&table("bench")).into()],
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut router = RouterClient::new(channel.clone());
                let mut echo = EchoClient::new(channel);
                while started.elapsed() < duration {
                    let sent = Instant::now();
                    let ok = match target {
                        Target::Metasrv => router.route(request.clone()).await.is_ok(),
                        Target::Echo => echo.route(request.clone()).await.is_ok(),
                    };
                    assert!(ok, "a route call failed");
                    latencies.push(sent.elapsed().as_micros() as u32);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    (all.len() as f64 / elapsed.as_secs_f64(), all)
}

fn ms(us: Option<u32>) -> f64 {
    us.map_or(f64::NAN, |us| us as f64 / 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-echo") {
        return common::serve_echo(&args);
    }
    // `cargo bench` passes --bench; under `cargo test` this runs as a seconds-long smoke test.
    let smoke = !args.iter().any(|a| a == "--bench");
    let seconds: u64 = flag(&args, "--seconds").unwrap_or(if smoke { 1 } else { 10 });
    let tasks: usize = flag(&args, "--tasks").unwrap_or(if smoke { 4 } else { 64 });
    let creates: usize = flag(&args, "--creates").unwrap_or(if smoke { 5 } else { 200 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // 1. Route lookups.
        let metasrv = ServerProcess::metasrv(&["--heartbeat-interval", "200ms"]);
        let (_nodes, meta) = cluster(&metasrv.addr).await;
        create_when_ready(&meta, create_request(&table("bench"), 8, 2)).await;
        let canned = RouterClient::new(
            metasrv::client::connect(&metasrv.addr)
                .await
                .expect("connect"),
        )
        .route(pb::RouteRequest {
            header: header(CLUSTER, 0),
            table_names: vec![(&table("bench")).into()],
        })
        .await
        .expect("route")
        .into_inner();
        let canned_path = std::env::temp_dir().join(format!("route-{}.bin", std::process::id()));
        std::fs::write(&canned_path, canned.encode_to_vec()).expect("write canned response");
        let echo = ServerProcess::echo(&["--route-response", &canned_path.to_string_lossy()]);
        let duration = Duration::from_secs(seconds);
        let (echo_rate, echo_lat) = route_load(&echo.addr, Target::Echo, tasks, duration).await;
        drop(echo);
        let _ = std::fs::remove_file(&canned_path);
        let (meta_rate, meta_lat) =
            route_load(&metasrv.addr, Target::Metasrv, tasks, duration).await;
        assert!(echo_rate > 0.0 && meta_rate > 0.0);
        println!(
            "| Route, {tasks} callers, {} B response | raw echo | metasrv | ratio |",
            canned.encoded_len()
        );
        println!("|---|---|---|---|");
        println!(
            "| lookups/s | {echo_rate:.0} | {meta_rate:.0} | {:.0}% |",
            100.0 * meta_rate / echo_rate
        );
        println!(
            "| p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | |",
            ms(percentile(&echo_lat, 0.5)),
            ms(percentile(&echo_lat, 0.99)),
            ms(percentile(&meta_lat, 0.5)),
            ms(percentile(&meta_lat, 0.99))
        );

        // 2. Cached lookups in the client.
        let name = table("bench");
        meta.route(&name).await.expect("cache the route");
        let iterations = if smoke { 10_000 } else { 2_000_000 };
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(meta.cached(black_box(&name)));
        }
        let cached_ns = started.elapsed().as_nanos() as f64 / iterations as f64;
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(meta.route(black_box(&name)).await.expect("cached"));
        }
        let route_ns = started.elapsed().as_nanos() as f64 / iterations as f64;
        let plain: HashMap<TableName, Arc<u64>> = HashMap::from([(name.clone(), Arc::new(1))]);
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(plain.get(black_box(&name)).cloned());
        }
        let plain_ns = started.elapsed().as_nanos() as f64 / iterations as f64;
        println!();
        println!("| cached route lookup in the client | ns/op | vs a bare HashMap get |");
        println!("|---|---|---|");
        println!("| HashMap get + Arc clone (baseline) | {plain_ns:.1} | 1.0x |");
        println!(
            "| MetaClient::cached | {cached_ns:.1} | {:.1}x |",
            cached_ns / plain_ns
        );
        println!(
            "| MetaClient::route (cache hit) | {route_ns:.1} | {:.1}x |",
            route_ns / plain_ns
        );
        drop(metasrv);

        // 3. CreateTable on etcd against one etcd transaction.
        let etcd = EtcdServer::start();
        let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .expect("etcd client");
        let metasrv = ServerProcess::metasrv(&[
            "--heartbeat-interval",
            "200ms",
            "--backend",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint,
        ]);
        let (_nodes, meta) = cluster(&metasrv.addr).await;
        create_when_ready(&meta, create_request(&table("warmup"), 1, 1)).await;
        // Baseline and CreateTable alternate, so both see the same etcd (size, compaction) and
        // the same background load (heartbeats, lease keepalives) on these shared cores.
        let mut txn_us = Vec::new();
        let mut create_us = Vec::new();
        let mut rpc_us = Vec::new();
        let mut router = meta.router();
        for i in 0..creates {
            let name_key = format!("/bench/txn/name/{i}");
            let txn = etcd_client::Txn::new()
                .when([etcd_client::Compare::version(
                    name_key.clone(),
                    etcd_client::CompareOp::Equal,
                    0,
                )])
                .and_then([
                    etcd_client::TxnOp::put(name_key, i.to_string(), None),
                    etcd_client::TxnOp::put(format!("/bench/txn/table/{i}"), vec![b'x'; 300], None),
                    etcd_client::TxnOp::put(format!("/bench/txn/route/{i}"), vec![b'y'; 200], None),
                ]);
            let sent = Instant::now();
            client.txn(txn).await.expect("txn");
            txn_us.push(sent.elapsed().as_micros() as u32);

            let request = create_request(&table(&format!("t{i}")), 1, 1);
            let sent = Instant::now();
            meta.create_table(request).await.expect("create table");
            create_us.push(sent.elapsed().as_micros() as u32);

            // One plain metasrv round trip (Route of the warmup table, from memory): the part of
            // CreateTable's latency that is the client's RPC, not metasrv's work.
            let sent = Instant::now();
            router
                .route(pb::RouteRequest {
                    header: header(CLUSTER, 0),
                    table_names: vec![(&table("warmup")).into()],
                })
                .await
                .expect("route");
            rpc_us.push(sent.elapsed().as_micros() as u32);
        }
        txn_us.sort_unstable();
        rpc_us.sort_unstable();
        create_us.sort_unstable();
        let txn_p50 = ms(percentile(&txn_us, 0.5));
        let create_p50 = ms(percentile(&create_us, 0.5));
        println!();
        println!("| {creates} sequential calls on etcd | p50 ms | p99 ms | p50 ratio |");
        println!("|---|---|---|---|");
        println!(
            "| etcd txn (compare + 3 puts, baseline) | {txn_p50:.2} | {:.2} | 1.0x |",
            ms(percentile(&txn_us, 0.99))
        );
        println!(
            "| CreateTable (1 region, OpenRegion confirmed) | {create_p50:.2} | {:.2} | {:.2}x |",
            ms(percentile(&create_us, 0.99)),
            create_p50 / txn_p50
        );
        println!(
            "| Route RPC (one metasrv round trip, reference) | {:.2} | {:.2} | {:.2}x |",
            ms(percentile(&rpc_us, 0.5)),
            ms(percentile(&rpc_us, 0.99)),
            ms(percentile(&rpc_us, 0.5)) / txn_p50
        );
    });
}
