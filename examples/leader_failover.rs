//! A scripted high-availability scenario: one etcd, three metasrv members (this example re-run
//! as child processes), three simulated datanodes and a frontend that know every member. The
//! leader is killed with SIGKILL; the timeline shows the new leader, the datanodes' heartbeats
//! arriving there, and routes, DDL and writes working again.
//!
//! Run: `cargo run --example leader_failover` (needs `etcd` on PATH: Debian's etcd-server).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use metasrv::catalog::model::{TableName, Value};
use metasrv::catalog::partition::Row;
use metasrv::client::{header, MetaClient};
use metasrv::config::Backend;
use metasrv::proto::v1 as pb;
use metasrv::sim::{MetasrvTarget, SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::{Config, Listeners};

const CLUSTER: u64 = 7;

/// A child process killed on drop, with the addresses from its ready line.
struct Process {
    child: Child,
    grpc: String,
    http: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn json(addr: &str, path: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(addr, path)?).ok()
}

fn start_etcd(dir: &std::path::Path) -> anyhow::Result<(Child, String)> {
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("e1={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run etcd: install Debian's etcd-server")?;
    let endpoint = format!("127.0.0.1:{client}");
    let started = Instant::now();
    while !http_get(&endpoint, "/health").is_some_and(|b| b.contains("\"health\":\"true\"")) {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("etcd did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, endpoint))
}

fn start_member(id: u64, etcd: &str) -> anyhow::Result<Process> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--member", &id.to_string(), "--etcd", etcd])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("metasrv ready") => break line,
            Some(Ok(_)) => continue,
            _ => bail!("member {id} exited before it was ready"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    Ok(Process {
        grpc: field("grpc="),
        http: field("http="),
        child,
    })
}

/// The child side: one metasrv member on the etcd backend.
async fn run_member(id: u64, etcd: String) -> anyhow::Result<()> {
    let mut config = Config {
        cluster_id: CLUSTER,
        member_id: id,
        heartbeat_interval: Duration::from_millis(200),
        grpc_addr: "127.0.0.1:0".parse()?,
        http_addr: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    config.store.backend = Backend::Etcd;
    config.etcd.endpoints = vec![etcd];
    config.etcd.key_prefix = "/leader-failover-example".into();
    let store = metasrv::open_store(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    println!(
        "metasrv ready grpc={} http={}",
        listeners.grpc.local_addr()?,
        listeners.http.local_addr()?
    );
    metasrv::run(config, store, listeners, std::future::pending()).await?;
    Ok(())
}

/// Polls `check` every 10 ms until it returns Some, for at most `limit`.
async fn until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if started.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn serving_leader(members: &[Option<Process>]) -> Option<usize> {
    members.iter().position(|m| {
        m.as_ref()
            .and_then(|m| json(&m.http, "/v1/leader"))
            .is_some_and(|j| j["is_leader"] == true)
    })
}

fn alive_nodes(member: &Process) -> usize {
    json(&member.http, "/v1/nodes")
        .and_then(|j| {
            j["nodes"].as_array().map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| n["status"] == "alive" && n["connected"] == true)
                    .count()
            })
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--member") {
        let id: u64 = args.get(i + 1).context("--member ID")?.parse()?;
        let etcd = args
            .iter()
            .position(|a| a == "--etcd")
            .and_then(|i| args.get(i + 1))
            .context("--etcd ENDPOINT")?
            .clone();
        return run_member(id, etcd).await;
    }

    let dir = tempfile::tempdir()?;
    let (mut etcd, etcd_endpoint) = start_etcd(dir.path())?;
    let t0 = Instant::now();
    let at = || format!("{:>7.0} ms", t0.elapsed().as_secs_f64() * 1000.0);
    let mut members: Vec<Option<Process>> = Vec::new();
    for id in 1..=3 {
        members.push(Some(start_member(id, &etcd_endpoint)?));
    }
    let endpoints: Vec<String> = members.iter().flatten().map(|m| m.grpc.clone()).collect();
    println!(
        "{} started 3 metasrv members: {}",
        at(),
        endpoints.join(", ")
    );
    let leader = until("a leader", Duration::from_secs(20), || {
        serving_leader(&members)
    })
    .await?;
    println!("{} member {} is the leader", at(), leader + 1);

    let mut nodes = Vec::new();
    for id in 1..=3 {
        let config = SimDatanodeConfig {
            interval: Duration::from_millis(200),
            ..SimDatanodeConfig::new(CLUSTER, id)
        };
        nodes.push(
            SimDatanode::start_serving_on(MetasrvTarget::Cluster(endpoints.clone()), config)
                .await?,
        );
    }
    let leader_process = members[leader].as_ref().context("leader")?;
    until("3 datanodes", Duration::from_secs(10), || {
        (alive_nodes(leader_process) == 3).then_some(())
    })
    .await?;
    println!("{} 3 datanodes heartbeat to member {}", at(), leader + 1);
    let meta = Arc::new(MetaClient::connect(&endpoints, CLUSTER, 0).await?);
    let frontend = SimFrontend::new(meta.clone());
    let table = TableName::new("greptime", "public", "cpu");
    let create = |name: &TableName| pb::CreateTableRequest {
        header: header(CLUSTER, 0),
        table_name: Some(name.into()),
        schema: Some(pb::TableSchema {
            columns: vec![
                pb::ColumnDef {
                    name: "host".into(),
                    data_type: pb::ColumnType::String as i32,
                    nullable: false,
                },
                pb::ColumnDef {
                    name: "ts".into(),
                    data_type: pb::ColumnType::Timestamp as i32,
                    nullable: false,
                },
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
        if_not_exists: true,
        replicas: 1,
    };
    meta.create_table(create(&table)).await?;
    let rows = |n: usize| -> Vec<(TableName, Row)> {
        (0..n)
            .map(|i| {
                let row = Row::from([
                    ("host".to_string(), Value::String(format!("h{i}"))),
                    ("ts".to_string(), Value::Int64(i as i64)),
                ]);
                (table.clone(), row)
            })
            .collect()
    };
    frontend.insert(rows(600)).await?;
    println!("{} created {table} (6 regions) and inserted 600 rows", at());

    let killed_at = Instant::now();
    if let Some(mut process) = members[leader].take() {
        let _ = process.child.kill();
        let _ = process.child.wait();
    }
    println!("{} SIGKILL member {} (the leader)", at(), leader + 1);
    let new_leader = until("a new leader", Duration::from_secs(20), || {
        serving_leader(&members)
    })
    .await?;
    let elected = killed_at.elapsed();
    println!(
        "{} member {} is the new leader ({elected:?} after the kill)",
        at(),
        new_leader + 1
    );
    let new_process = members[new_leader].as_ref().context("new leader")?;
    until(
        "heartbeats on the new leader",
        Duration::from_secs(20),
        || (alive_nodes(new_process) == 3).then_some(()),
    )
    .await?;
    println!(
        "{} all 3 datanodes heartbeat to member {}",
        at(),
        new_leader + 1
    );
    let route = meta.route(&table).await?;
    println!(
        "{} route of {table}: version {}, {} regions (served by the new leader)",
        at(),
        route.route.version,
        route.route.regions.len()
    );
    meta.create_table(create(&TableName::new(
        "greptime",
        "public",
        "after_failover",
    )))
    .await?;
    println!("{} CREATE TABLE after_failover succeeded", at());
    let written = frontend.insert(rows(600)).await?;
    println!("{} inserted {written} more rows", at());
    println!(
        "\nleader takeover: {elected:?}; the client now talks to {}",
        meta.leader().addr
    );

    drop(nodes);
    drop(members);
    let _ = etcd.kill();
    let _ = etcd.wait();
    Ok(())
}
