//! The seed's Create Table and Insert flows, end to end on one machine: an embedded metasrv
//! (in-process, temp dir), three simulated datanodes with a data plane, a table with 8 hash
//! partitions and 2 copies per region, rows inserted through the frontend client (split by the
//! cached route), and the route table printed. Run: `cargo run --example create_table_and_insert`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metasrv::actors::cluster_view::{ListNodes, NodePage, NodeStatus};
use metasrv::catalog::model::{TableName, Value};
use metasrv::catalog::partition::Row;
use metasrv::client::{header, MetaClient};
use metasrv::proto::v1 as pb;
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::{Config, Listeners, Metasrv};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        heartbeat_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.store.data_dir = dir.path().join("data");
    config.grpc_addr = "127.0.0.1:0".parse()?;
    config.http_addr = "127.0.0.1:0".parse()?;
    let store = metasrv::open_store(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.grpc.local_addr()?.to_string();
    let metasrv = Metasrv::start(config, store, listeners).await?;
    println!("metasrv (embedded store) on {addr}");

    let channel = metasrv::client::connect(&addr).await?;
    let mut datanodes = Vec::new();
    for id in 1..=3 {
        let node = SimDatanode::start_serving(
            channel.clone(),
            SimDatanodeConfig {
                interval: Duration::from_millis(200),
                ..SimDatanodeConfig::new(0, id)
            },
        )
        .await?;
        println!("datanode {id} serving on {}", node.addr());
        datanodes.push(node);
    }
    // Wait (bounded) until metasrv sees all three alive.
    let view = metasrv.cluster_view().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = view
            .send(ListNodes {
                page: NodePage::ALL,
            })
            .await?
            .nodes;
        if nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Alive)
            .count()
            == 3
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "datanodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let meta = Arc::new(MetaClient::connect(std::slice::from_ref(&addr), 0, 0).await?);
    let table = TableName::new("greptime", "public", "cpu");
    let column = |name: &str, data_type: pb::ColumnType| pb::ColumnDef {
        name: name.into(),
        data_type: data_type as i32,
        nullable: false,
    };
    let (_, route) = meta
        .create_table(pb::CreateTableRequest {
            header: header(0, 0),
            table_name: Some((&table).into()),
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
                    partitions: 8,
                })),
            }),
            if_not_exists: true,
            replicas: 2,
        })
        .await
        .context("CREATE TABLE")?;

    let frontend = SimFrontend::new(meta.clone());
    let rows: Vec<(TableName, Row)> = (0..10_000)
        .map(|i| {
            let row = Row::from([
                (
                    "host".to_string(),
                    Value::String(format!("host-{}", i % 500)),
                ),
                ("ts".to_string(), Value::Int64(1_700_000_000_000 + i)),
                ("usage".to_string(), Value::Float64((i % 100) as f64)),
            ]);
            (table.clone(), row)
        })
        .collect();
    let written = frontend.insert(rows).await?;
    println!(
        "\ninserted {written} rows into {table} (route fetches: {})",
        meta.route_fetches()
    );

    println!(
        "\nroute of {table} (table id {}, version {}):",
        route.info.id, route.route.version
    );
    println!(
        "{:<8} {:<16} {:<26} {:<54} rows",
        "region", "region id", "mutate endpoint", "select endpoints"
    );
    for region in &route.route.regions {
        let leader = &datanodes[region.leader.id as usize - 1];
        let rows: u64 = leader
            .accepted_writes()
            .iter()
            .filter(|w| w.region_id == region.region_id)
            .map(|w| u64::from(w.rows))
            .sum();
        let selects: Vec<String> = std::iter::once(&region.leader)
            .chain(&region.followers)
            .map(|p| format!("{}@{}", p.id, p.addr))
            .collect();
        println!(
            "{:<8} {:<16} {:<26} {:<54} {rows}",
            region.region_number,
            region.region_id,
            format!("{}@{}", region.leader.id, region.leader.addr),
            selects.join(",")
        );
    }
    drop(datanodes);
    metasrv.serve_until(async {}).await?;
    Ok(())
}
