//! A scripted cluster scenario: an in-process metasrv (embedded store, 200 ms heartbeats) and
//! three simulated datanodes. One node is killed; the timeline shows when ClusterView suspects
//! it, declares it dead, and sees it recover after a restart. Then an instruction goes through
//! the mailbox. Run: `cargo run --example node_failure`.

use std::time::{Duration, Instant};

use actix::{Actor, Context, Handler};
use metasrv::actors::cluster_view::{
    Instruction, ListNodes, NodeEvent, NodePage, SendInstruction, Subscribe,
};
use metasrv::actors::ActorRuntime;
use metasrv::failure_detector::FailureDetectorConfig;
use metasrv::sim::{SimDatanode, SimDatanodeConfig};
use metasrv::{Config, Listeners, Metasrv};
use tokio::sync::mpsc;

/// Forwards ClusterView's events to the script.
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
    let interval = Duration::from_millis(200);
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        cluster_id: 1,
        heartbeat_interval: interval,
        failure_detector: FailureDetectorConfig {
            acceptable_heartbeat_pause: Duration::from_millis(500),
            min_std_deviation: Duration::from_millis(50),
            ..FailureDetectorConfig::default()
        },
        ..Config::default()
    };
    config.store.data_dir = dir.path().join("data");
    config.grpc_addr = "127.0.0.1:0".parse()?;
    config.http_addr = "127.0.0.1:0".parse()?;
    let store = metasrv::open_store(&config).await?;
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

    let t0 = Instant::now();
    let at = || format!("{:>6} ms", t0.elapsed().as_millis());
    let node = |id: u64| SimDatanodeConfig {
        interval,
        regions: vec![id * 10, id * 10 + 1],
        ..SimDatanodeConfig::new(1, id)
    };
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(SimDatanode::connect(&addr, node(id)).await?);
    }
    tokio::time::sleep(interval * 5).await;
    println!("{} cluster view:", at());
    for n in view
        .send(ListNodes {
            page: NodePage::ALL,
        })
        .await?
        .nodes
    {
        println!(
            "           node {} at {} {:?}, phi {:.2}, {} regions, cpu {:.0}%",
            n.id,
            n.addr,
            n.status,
            n.phi,
            n.leader_regions + n.follower_regions,
            n.stats.map(|s| s.cpu_usage).unwrap_or_default()
        );
    }

    let victim = nodes.remove(1);
    println!("{} kill node {}", at(), victim.node_id());
    victim.kill();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(event)) => {
                println!("{} event: {event:?}", at());
                if matches!(event, NodeEvent::Dead { .. }) {
                    break;
                }
            }
            _ => anyhow::bail!("node 2 was not declared dead within 10 s"),
        }
    }
    println!("{} restart node 2 (new instance)", at());
    nodes.push(SimDatanode::connect(&addr, node(2)).await?);
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(event)) => println!("{} event: {event:?}", at()),
        _ => anyhow::bail!("node 2 did not recover within 10 s"),
    }

    let outcome = view
        .send(SendInstruction {
            node_id: 1,
            instruction: Instruction::CloseRegion { region_id: 10 },
            timeout: Duration::from_secs(5),
        })
        .await?;
    println!("{} close region 10 on node 1: {outcome:?}", at());
    println!(
        "{} node 1 now holds {:?}",
        at(),
        nodes[0].regions().keys().collect::<Vec<_>>()
    );

    drop(nodes);
    metasrv.serve_until(async {}).await?;
    drop(script_actors);
    Ok(())
}
