//! Drives a running metasrv with simulated datanodes, e.g. to watch `/v1/nodes` and `/metrics`
//! fill up: `cargo run --example sim_datanodes -- --metasrv 127.0.0.1:3002 --nodes 20`.
//! Flags: --metasrv ADDR, --nodes N, --regions R (per node), --interval-ms MS, --cluster-id ID,
//! --first-id ID. Against a secured metasrv: --ca PEM (TLS), --cert PEM --key PEM (a client
//! certificate), --domain NAME (the name in the server's certificate), and a datanode token in
//! METASRV_TOKEN (kept off the command line, where `ps` shows it). Stops on Ctrl-C.

use std::time::Duration;

use metasrv::client::{ClientSecurity, MetasrvTarget};
use metasrv::sim::{SimDatanode, SimDatanodeConfig};

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr: String = flag(&args, "--metasrv", "127.0.0.1:3002".to_owned());
    let count: u64 = flag(&args, "--nodes", 3);
    let regions: u64 = flag(&args, "--regions", 4);
    let interval = Duration::from_millis(flag(&args, "--interval-ms", 1000));
    let cluster_id: u64 = flag(&args, "--cluster-id", 0);
    let first_id: u64 = flag(&args, "--first-id", 1);

    let path = |name: &str| {
        let value: String = flag(args.as_slice(), name, String::new());
        (!value.is_empty()).then(|| value.into())
    };
    let security = ClientSecurity {
        ca: path("--ca"),
        cert: path("--cert"),
        key: path("--key"),
        domain: Some(flag(&args, "--domain", String::new())).filter(|d| !d.is_empty()),
        token: std::env::var("METASRV_TOKEN").ok(),
    };
    // Fails here, not in every node, when the settings cannot work (a key without its cert).
    metasrv::client::connect_with(&addr, &security).await?;
    let target = MetasrvTarget::SecureCluster(vec![addr.clone()], security);
    let nodes: Vec<_> = (first_id..first_id + count)
        .map(|id| {
            SimDatanode::start_on(
                target.clone(),
                SimDatanodeConfig {
                    interval,
                    regions: (0..regions).map(|r| (id << 32) | r).collect(),
                    ..SimDatanodeConfig::new(cluster_id, id)
                },
            )
        })
        .collect();
    println!("{count} simulated datanodes streaming to {addr} every {interval:?}; Ctrl-C stops");
    let mut report = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => {
                let (sent, answered) = nodes.iter().map(|n| n.counts()).fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                println!("heartbeats sent {sent}, answered {answered}");
            }
        }
    }
    Ok(())
}
