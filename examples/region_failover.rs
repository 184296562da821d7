//! A scripted region failover with the production defaults (1 s heartbeats, 3 s region leases):
//! an in-process metasrv (embedded store), three simulated datanodes, a table with 6 regions and
//! a frontend writing to it. One datanode is killed; the timeline shows it suspected, declared
//! dead, its leases lapsing, its regions opened elsewhere, the route version growing and the first
//! write that succeeds again. Run: `cargo run --example region_failover`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use metasrv::actors::cluster_view::{ListNodes, NodeEvent, NodePage, NodeStatus, Subscribe};
use metasrv::actors::ActorRuntime;
use metasrv::catalog::model::TableName;
use metasrv::client::MetaClient;
use metasrv::procedure::ProcedureStore;
use metasrv::proto::v1 as pb;
use metasrv::sim::workload::{host_rows, host_table};
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::{Config, Listeners, Metasrv};
use tokio::sync::mpsc;

struct Forward(mpsc::UnboundedSender<NodeEvent>);

impl Actor for Forward {
    type Context = Context<Self>;
}

impl Handler<NodeEvent> for Forward {
    type Result = ();
    fn handle(&mut self, event: NodeEvent, _ctx: &mut Context<Self>) {
        let _ = self.0.send(event);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.store.data_dir = dir.path().join("data");
    config.grpc_addr = "127.0.0.1:0".parse()?;
    config.http_addr = "127.0.0.1:0".parse()?;
    let store = metasrv::open_store(&config).await?;
    let procedures = ProcedureStore::new(store.clone());
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.grpc.local_addr()?.to_string();
    let metasrv = Metasrv::start(config, store, listeners).await?;
    let view = metasrv.cluster_view().clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let script_actors = ActorRuntime::start(1)?;
    let forward =
        Forward::start_in_arbiter(script_actors.singletons(), move |_| Forward(events_tx));
    view.send(Subscribe {
        subscriber: forward.recipient(),
    })
    .await?;

    let channel = metasrv::client::connect(&addr).await?;
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(
            SimDatanode::start_serving(channel.clone(), SimDatanodeConfig::new(0, id)).await?,
        );
    }
    while view
        .send(ListNodes {
            page: NodePage::ALL,
        })
        .await?
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Alive)
        .count()
        < 3
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let meta = Arc::new(MetaClient::connect(std::slice::from_ref(&addr), 0, 0).await?);
    let frontend = SimFrontend::new(meta.clone());
    let table = TableName::new("greptime", "public", "cpu");
    let (_, route) = meta
        .create_table(pb::CreateTableRequest {
            if_not_exists: true,
            ..host_table(0, &table, 6, 1)
        })
        .await?;
    frontend.insert(host_rows(&table, 60)).await?;
    let victim = route.route.regions[0].leader.id;
    let owned: Vec<u64> = route
        .route
        .regions
        .iter()
        .filter(|r| r.leader.id == victim)
        .map(|r| r.region_id)
        .collect();
    println!(
        "table {table}: 6 regions, route version {}; node {victim} leads {owned:?}",
        route.route.version
    );

    let t0 = Instant::now();
    let at = || format!("{:>6} ms", t0.elapsed().as_millis());
    let index = nodes
        .iter()
        .position(|n| n.node_id() == victim)
        .unwrap_or(0);
    nodes.remove(index).kill();
    println!("{} kill datanode {victim}", at());

    let mut steps_seen = 0;
    let mut version = route.route.version;
    let mut writable = false;
    while !writable {
        while let Ok(event) = events.try_recv() {
            println!("{} {event:?}", at());
        }
        if let Some(procedure) = procedures.list().await?.into_iter().last() {
            for step in procedure.steps.iter().skip(steps_seen) {
                println!("{} procedure {}: {step}", at(), procedure.kind);
            }
            steps_seen = procedure.steps.len();
        }
        meta.invalidate(&table);
        if let Ok(current) = meta.route(&table).await {
            if current.route.version > version {
                version = current.route.version;
                println!("{} route version {version}", at());
            }
        }
        if frontend.insert(host_rows(&table, 60)).await.is_ok() {
            writable = true;
            println!("{} first successful write to every region", at());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(nodes);
    metasrv.serve_until(async {}).await?;
    drop(script_actors);
    Ok(())
}
