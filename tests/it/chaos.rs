//! Seeded sequences of faults while a frontend keeps writing: datanode kills with quick or slow
//! restarts on the same address, of one node or two at the same moment, partitions short and
//! long; and, on etcd with two metasrv processes, the metasrv leader killed with datanodes.
//! After each fault the cluster must become fully writable again by itself; at the end, across
//! every node and every incarnation, no two nodes ever led a region with overlapping write
//! leases. `CHAOS_SEED=n` replays a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metasrv::catalog::model::TableName;
use metasrv::sim::{Rng, SimDatanode, WriteLog};

use crate::harness::http_get;
use crate::router::{cpu_table, create_request, node, rows, Cluster};

/// A duration between `from` and `to` milliseconds.
fn millis(rng: &mut Rng, from: u64, to: u64) -> Duration {
    Duration::from_millis(from + rng.next_u64() % (to - from + 1))
}

/// Leader periods of different incarnations overlap for no region.
pub fn assert_no_overlapping_leaders(logs: &[(String, WriteLog)]) {
    let mut periods = Vec::new();
    for (who, log) in logs {
        for (region_id, from, until) in log.leader_periods() {
            periods.push((region_id, from, until, who.as_str()));
        }
    }
    for (i, a) in periods.iter().enumerate() {
        for b in &periods[i + 1..] {
            if a.0 != b.0 || a.3 == b.3 {
                continue;
            }
            let overlap = a.1 < b.2 && b.1 < a.2;
            assert!(
                !overlap,
                "region {}: {} led it {:?}..{:?} and {} led it {:?}..{:?}",
                a.0, a.3, a.1, a.2, b.3, b.1, b.2
            );
        }
    }
}

/// The run's random source: `CHAOS_SEED=n` replays a run, `default` otherwise.
fn chaos_rng(default: u64) -> Rng {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("CHAOS_SEED={seed}");
    Rng::seeded(seed)
}

/// A frontend writing to every table without pause (errors ignored) while faults happen.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(frontend: Arc<metasrv::sim::SimFrontend>, tables: Vec<TableName>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                for table in &tables {
                    let _ = frontend.insert(rows(table, 40)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer");
    }
}

/// Each node's write log, named as its first incarnation (restarts add their own).
fn first_incarnation_logs(nodes: &[SimDatanode]) -> Vec<(String, WriteLog)> {
    nodes
        .iter()
        .map(|n| (format!("node {} (1st)", n.node_id()), n.write_log()))
        .collect()
}

/// Writes landed across the run (the no-two-writers check is about something).
fn assert_writes_landed(logs: &[(String, WriteLog)]) {
    let accepted: usize = logs
        .iter()
        .map(|(_, log)| log.accepted_writes().len())
        .sum();
    assert!(accepted > 0, "no write was accepted");
}

/// Waits (at most `bound`) until every region of every table in `tables` takes writes through
/// `frontend`; on timeout panics with the route, what each of `nodes` holds, and `diagnosis`.
async fn wait_all_writable<F, Fut>(
    frontend: &metasrv::sim::SimFrontend,
    tables: &[TableName],
    nodes: &[SimDatanode],
    bound: Duration,
    step: u32,
    diagnosis: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    for table in tables {
        let started = std::time::Instant::now();
        loop {
            let error = match frontend.insert(rows(table, 100)).await {
                Ok(_) => break,
                Err(e) => e,
            };
            if started.elapsed() > bound {
                frontend.meta().invalidate(table);
                let route = frontend.meta().route(table).await;
                let held: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "node {}: holds {:?}, leased {:?}",
                            n.node_id(),
                            n.regions(),
                            n.leased_regions()
                        )
                    })
                    .collect();
                panic!(
                    "step {step}: {table} not writable after {bound:?}: {error:?}\nroute: {route:?}\n{}\n{}",
                    held.join("\n"),
                    diagnosis().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datanode_faults_never_make_two_writers_and_the_cluster_heals() {
    let mut rng = chaos_rng(20261125);

    let (_fixture, store) = crate::store_conformance::embedded();
    let config = crate::failover::config();
    let cluster = Cluster::start(store, config, &[node(1), node(2), node(3), node(4)]).await;
    let tables = [cpu_table("chaos_single"), cpu_table("chaos_replicated")];
    for (table, replicas) in tables.iter().zip([1, 2]) {
        cluster
            .meta
            .create_table(create_request(table, 8, replicas))
            .await
            .expect("create");
    }
    let frontend = Arc::new(cluster.frontend);
    let writer = Writer::start(frontend.clone(), tables.to_vec());

    let mut nodes: Vec<SimDatanode> = cluster.nodes;
    // Every incarnation's log, kept after it dies.
    let mut logs = first_incarnation_logs(&nodes);
    let mut tables = tables.to_vec();
    for step in 1..=6 {
        // A table is created while the fault happens (its OpenRegions race the fault).
        let created = {
            let meta = cluster.meta.clone();
            let table = cpu_table(&format!("chaos_step{step}"));
            let replicas = 1 + step % 2;
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                loop {
                    let request = metasrv::proto::v1::CreateTableRequest {
                        if_not_exists: true,
                        ..create_request(&table, 4, replicas)
                    };
                    match meta.create_table(request).await {
                        Ok(_) => return table,
                        Err(e) if started.elapsed() > Duration::from_secs(40) => {
                            panic!("step {step}: cannot create {table}: {e:?}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        let victim = (rng.next_u64() % nodes.len() as u64) as usize;
        let node_id = nodes[victim].node_id();
        let outage = match rng.next_u64() % 4 {
            0 => millis(&mut rng, 50, 300),
            1 => millis(&mut rng, 300, 900),
            _ => millis(&mut rng, 900, 2000),
        };
        match rng.next_u64() % 3 {
            0 => {
                println!("step {step}: kill node {node_id}, restart after {outage:?}");
                // The old incarnation dies now (its log keeps when), the new one starts later.
                let restarted = nodes.remove(victim).restart(outage).await.expect("restart");
                logs.push((
                    format!("node {node_id} (step {step})"),
                    restarted.write_log(),
                ));
                nodes.insert(victim, restarted);
            }
            1 => {
                // Two nodes at the same moment: with two copies, some regions lose both.
                let other = (victim + 1 + (rng.next_u64() % 3) as usize) % nodes.len();
                let other_id = nodes[other].node_id();
                println!(
                    "step {step}: kill nodes {node_id} and {other_id} at once, restart after {outage:?}"
                );
                let (first, second) = (victim.min(other), victim.max(other));
                let b = nodes.remove(second);
                let a = nodes.remove(first);
                let (a, b) = tokio::join!(a.restart(outage), b.restart(outage));
                let (a, b) = (a.expect("restart"), b.expect("restart"));
                for restarted in [&a, &b] {
                    logs.push((
                        format!("node {} (step {step})", restarted.node_id()),
                        restarted.write_log(),
                    ));
                }
                nodes.insert(first, a);
                nodes.insert(second, b);
            }
            _ => {
                println!("step {step}: partition node {node_id} for {outage:?}");
                nodes[victim].stop_heartbeats();
                tokio::time::sleep(outage).await;
                nodes[victim].resume_heartbeats();
            }
        }
        tables.push(created.await.expect("create task"));
        // The cluster heals by itself: every region of every table takes writes again.
        let http = cluster.server.http_addr;
        wait_all_writable(
            &frontend,
            &tables,
            &nodes,
            Duration::from_secs(20),
            step,
            || async move {
                let (_, procedures) = http_get(http, "/v1/procedures").await;
                let (_, view) = http_get(http, "/v1/nodes").await;
                format!("procedures: {procedures}\nnodes: {view}")
            },
        )
        .await;
    }
    writer.stop().await;
    assert_no_overlapping_leaders(&logs);
    assert_writes_landed(&logs);
    cluster.server.stop().await;
}

/// The datanode faults above with the metasrv leader among them, on etcd with two metasrv
/// processes: a seeded sequence of the leader SIGKILLed at the same moment as one or two
/// datanodes, just after one (too soon for it to have noticed), or just before one (the death
/// falls in the election). The killed member restarts on its ports and campaigns again; the
/// datanodes restart after an outage. After each step every region of every table takes
/// writes again within the bound; at the end no two nodes ever led a region with overlapping
/// write leases, across every incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metasrv_leader_and_datanode_faults_together_never_make_two_writers() {
    use crate::election::{datanodes_on_leader, start_member, wait_for_one_leader};
    use crate::harness::{EtcdProcess, MetasrvProcess};

    let mut rng = chaos_rng(20261126);
    // The etcd and the directory first: bindings drop in reverse, so they outlive the rest.
    let etcd = EtcdProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("METASRV_REGION_LEASE", "2s"),
        ("METASRV_FAILOVER_SAFETY_MARGIN", "200ms"),
        ("METASRV_ACCEPTABLE_HEARTBEAT_PAUSE", "500ms"),
        ("METASRV_MIN_STD_DEVIATION", "20ms"),
    ];
    let start = |id: u64, addrs: Option<(String, String)>| {
        let mut extra = vec!["--election-lease-ttl".to_owned(), "1s".to_owned()];
        if let Some((grpc, http)) = addrs {
            extra.extend([
                "--grpc-addr".to_owned(),
                grpc,
                "--http-addr".to_owned(),
                http,
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        start_member(dir.path(), &etcd.endpoint, id, &extra, &env)
    };
    let mut members: Vec<MetasrvProcess> = vec![start(1, None), start(2, None)];
    let leader =
        wait_for_one_leader(&members.iter().collect::<Vec<_>>(), Duration::from_secs(20)).await;
    let mut nodes = datanodes_on_leader(&members, leader, 4).await;
    let endpoints: Vec<String> = members.iter().map(|m| m.grpc_addr.to_string()).collect();
    let meta = Arc::new(
        metasrv::client::MetaClient::connect(&endpoints, crate::router::CLUSTER, 0)
            .await
            .expect("meta"),
    );
    let tables = [
        cpu_table("ha_chaos_single"),
        cpu_table("ha_chaos_replicated"),
    ];
    for (table, replicas) in tables.iter().zip([1, 2]) {
        meta.create_table(create_request(table, 8, replicas))
            .await
            .expect("create");
    }
    let frontend = Arc::new(metasrv::sim::SimFrontend::new(meta.clone()));
    let writer = Writer::start(frontend.clone(), tables.to_vec());
    let mut logs = first_incarnation_logs(&nodes);

    for step in 1..=4 {
        let leader =
            wait_for_one_leader(&members.iter().collect::<Vec<_>>(), Duration::from_secs(20)).await;
        let victim = (rng.next_u64() % nodes.len() as u64) as usize;
        let outage = millis(&mut rng, 300, 2000);
        let gap = millis(&mut rng, 100, 800);
        // The datanodes that die this step (one, or two at once), restarting after `outage`.
        let victims: Vec<usize> = match rng.next_u64() % 4 {
            0 => vec![
                victim,
                (victim + 1 + (rng.next_u64() % 3) as usize) % nodes.len(),
            ],
            _ => vec![victim],
        };
        let ids: Vec<u64> = victims.iter().map(|&i| nodes[i].node_id()).collect();
        let kill_nodes = |nodes: &mut Vec<SimDatanode>| {
            let mut order = victims.clone();
            order.sort_unstable_by(|a, b| b.cmp(a));
            // Dropped at once (the restart's first poll); restarted after the outage.
            order
                .into_iter()
                .map(|i| (i, tokio::spawn(nodes.remove(i).restart(outage))))
                .collect::<Vec<_>>()
        };
        let restarting = match rng.next_u64() % 3 {
            0 => {
                println!("step {step}: kill the metasrv leader and nodes {ids:?} at once");
                let restarting = kill_nodes(&mut nodes);
                members[leader].signal_and_wait("KILL");
                restarting
            }
            1 => {
                println!("step {step}: kill nodes {ids:?}, then the metasrv leader {gap:?} later");
                let restarting = kill_nodes(&mut nodes);
                tokio::time::sleep(gap).await;
                members[leader].signal_and_wait("KILL");
                restarting
            }
            _ => {
                println!("step {step}: kill the metasrv leader, then nodes {ids:?} {gap:?} later");
                members[leader].signal_and_wait("KILL");
                tokio::time::sleep(gap).await;
                kill_nodes(&mut nodes)
            }
        };
        // The killed member comes back on its ports and campaigns behind the new leader.
        let survivor = &members[1 - leader];
        wait_for_one_leader(&[survivor], Duration::from_secs(20)).await;
        let addrs = (
            members[leader].grpc_addr.to_string(),
            members[leader].http_addr.to_string(),
        );
        members[leader] = start(leader as u64 + 1, Some(addrs));
        let mut back: Vec<(usize, SimDatanode)> = Vec::new();
        for (index, task) in restarting {
            back.push((index, task.await.expect("restart task").expect("restart")));
        }
        back.sort_unstable_by_key(|(index, _)| *index);
        for (index, node) in back {
            logs.push((
                format!("node {} (step {step})", node.node_id()),
                node.write_log(),
            ));
            nodes.insert(index, node);
        }
        // The cluster heals by itself: every region of every table takes writes again.
        let member_logs = || async {
            members
                .iter()
                .map(|m| m.log())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        };
        wait_all_writable(
            &frontend,
            &tables,
            &nodes,
            Duration::from_secs(30),
            step,
            member_logs,
        )
        .await;
    }
    writer.stop().await;
    assert_no_overlapping_leaders(&logs);
    assert_writes_landed(&logs);
}
