//! A scripted region migration and node drain with the production defaults (1 s heartbeats,
//! 3 s region leases): an in-process metasrv (embedded store), four simulated datanodes, a
//! table with 24 regions and 2 copies each, and a frontend writing to it all the time. One
//! region is migrated through the `Admin` gRPC service (the timeline shows the procedure's
//! steps and the region's write pause), then node 1 is drained over HTTP-equivalent Admin
//! calls with its progress printed until it holds nothing.
//! Run: `cargo run --example migration_and_drain`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metasrv::actors::cluster_view::{ListNodes, NodePage, NodeStatus};
use metasrv::catalog::model::TableName;
use metasrv::client::{header, MetaClient};
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::admin_client::AdminClient;
use metasrv::sim::workload::{host_rows, host_table};
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::{Config, Listeners, Metasrv};

const CLUSTER: u64 = 0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.store.data_dir = dir.path().join("data");
    config.grpc_addr = "127.0.0.1:0".parse()?;
    config.http_addr = "127.0.0.1:0".parse()?;
    let store = metasrv::open_store(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.grpc.local_addr()?.to_string();
    let metasrv = Metasrv::start(config, store, listeners).await?;
    let channel = metasrv::client::connect(&addr).await?;
    let mut nodes = Vec::new();
    for id in 1..=4 {
        nodes.push(
            SimDatanode::start_serving(channel.clone(), SimDatanodeConfig::new(CLUSTER, id))
                .await?,
        );
    }
    let view = metasrv.cluster_view().clone();
    while view
        .send(ListNodes {
            page: NodePage::ALL,
        })
        .await?
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Alive && n.connected)
        .count()
        < 4
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let meta = Arc::new(MetaClient::connect(std::slice::from_ref(&addr), CLUSTER, 0).await?);
    let table = TableName::new("greptime", "public", "cpu");
    let (_, route) = meta
        .create_table(host_table(CLUSTER, &table, 24, 2))
        .await?;
    println!("table {table}: 24 regions x 2 copies on 4 datanodes");

    let start = Instant::now();
    let at = move || format!("{:>8.1} ms", start.elapsed().as_secs_f64() * 1000.0);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let frontend = SimFrontend::new(meta.clone());
        let (table, stop) = (table.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match frontend.insert(host_rows(&table, 96)).await {
                    Ok(_) => ok += 1,
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Migrate one region of node 1 to a node that holds no copy of it.
    let region = route
        .route
        .regions
        .iter()
        .find(|r| r.leader.id == 1)
        .expect("node 1 leads a region")
        .clone();
    let to = (2..=4)
        .find(|n| !region.followers.iter().any(|f| f.id == *n))
        .expect("a node without a copy");
    let logs: Vec<_> = nodes.iter().map(SimDatanode::write_log).collect();
    println!(
        "{}  migrate region {} from node 1 to node {to}",
        at(),
        region.region_id
    );
    let mut admin = AdminClient::new(channel.clone());
    let before = Instant::now();
    let migrated = admin
        .migrate_region(pb::MigrateRegionRequest {
            header: header(CLUSTER, 0),
            region_id: region.region_id,
            to_node: to,
            wait: true,
        })
        .await?
        .into_inner()
        .procedure
        .expect("procedure");
    for step in &migrated.steps {
        println!("{}    {step}", at());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut writes: Vec<Instant> = logs
        .iter()
        .flat_map(|log| log.accepted_writes())
        .filter(|w| w.region_id == region.region_id && w.at >= before)
        .map(|w| w.at)
        .collect();
    writes.sort_unstable();
    let pause = writes
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "{}  {}: the region's longest write pause was {:.1} ms",
        at(),
        migrated.state,
        pause.as_secs_f64() * 1000.0
    );

    // 2. Drain node 1.
    let drain = admin
        .drain_node(pb::DrainNodeRequest {
            header: header(CLUSTER, 0),
            node_id: 1,
            wait: false,
        })
        .await?
        .into_inner()
        .procedure
        .expect("procedure");
    println!("{}  drain node 1: procedure {}", at(), drain.id);
    let mut last = u64::MAX;
    let finished = loop {
        let procedure = admin
            .get_procedure(pb::GetProcedureRequest {
                header: header(CLUSTER, 0),
                procedure_id: drain.id.clone(),
            })
            .await?
            .into_inner()
            .procedure
            .expect("procedure");
        if procedure.moved != last {
            last = procedure.moved;
            println!(
                "{}    {} / {} copies moved, {} failed",
                at(),
                procedure.moved,
                procedure.total,
                procedure.failed
            );
        }
        if procedure.state != "running" {
            break procedure;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "{}  {}: {}",
        at(),
        finished.state,
        finished.steps.last().cloned().unwrap_or_default()
    );
    while !nodes[0].regions().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{}  node 1 holds no region", at());
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = writer.await?;
    println!("writes during the run: {ok} inserts succeeded, {failed} retried after an error");
    drop(nodes);
    metasrv.serve_until(async {}).await?;
    Ok(())
}
