//! Faults in combination, healed by the level-triggered reconciler: two datanodes dying at the
//! same moment (one and two copies per region), a death during maintenance (healed once it
//! ends), a datanode that dies just before the metasrv leader (the new leader never heard from
//! it), and a 1,024-region table whose burst of instructions must not cut any stream. After
//! each fault every region is led by exactly one live node, takes writes, and no two nodes
//! ever led a region with overlapping write leases.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use metasrv::catalog::model::TableName;
use metasrv::sim::{SimDatanode, SimEvent, WriteLog};
use metasrv::stats::RegionRole;

use crate::chaos::assert_no_overlapping_leaders;
use crate::failover::{cluster_with_table, config};
use crate::harness::{http_get, http_request, wait_for};
use crate::router::{cpu_table, create_request, node, rows, Cluster};

/// Waits (bounded) until every region of `table` is routed to a leader among `live` and led
/// there by exactly that node (no other live node reports it as leader), then writes to every
/// region through the frontend.
async fn assert_healed(
    cluster_meta: &Arc<metasrv::client::MetaClient>,
    frontend: &metasrv::sim::SimFrontend,
    table: &TableName,
    live: &[SimDatanode],
    deadline: Duration,
) {
    let live_ids: HashSet<u64> = live.iter().map(SimDatanode::node_id).collect();
    let route = crate::router::wait_for_route(
        cluster_meta,
        table,
        &format!("every region of {table} to be led by one of {live_ids:?}"),
        deadline,
        |route| {
            route
                .route
                .regions
                .iter()
                .all(|r| live_ids.contains(&r.leader.id))
        },
    )
    .await;
    wait_led_by_routed_leaders(&route, live).await;
    wait_for(
        &format!("writes to every region of {table}"),
        Duration::from_secs(10),
        || async move { frontend.insert(rows(table, 200)).await.ok() },
    )
    .await;
}

/// Waits (bounded) until each region of `route` is led by exactly its routed leader among
/// `nodes` (no other of them reports leading it).
pub async fn wait_led_by_routed_leaders(
    route: &metasrv::client::CachedRoute,
    nodes: &[SimDatanode],
) {
    wait_for(
        "each region to be led by exactly its routed leader among the live nodes",
        Duration::from_secs(10),
        || {
            let ok = route.route.regions.iter().all(|r| {
                let leaders: Vec<u64> = nodes
                    .iter()
                    .filter(|n| n.regions().get(&r.region_id) == Some(&RegionRole::Leader))
                    .map(SimDatanode::node_id)
                    .collect();
                leaders == vec![r.leader.id]
            });
            async move { ok.then_some(()) }
        },
    )
    .await;
}

pub fn logs_of(nodes: &[SimDatanode]) -> Vec<(String, WriteLog)> {
    nodes
        .iter()
        .map(|n| (format!("node {}", n.node_id()), n.write_log()))
        .collect()
}

/// Kills `killed` of `killed + 3` datanodes at the same moment.
async fn datanodes_die_at_once(killed: u64, replicas: u32) {
    let (_fixture, store) = crate::store_conformance::embedded();
    let configs: Vec<_> = (1..=killed + 3).map(node).collect();
    let cluster = Cluster::start(store, config(), &configs).await;
    let table = cpu_table("two_at_once");
    cluster
        .meta
        .create_table(create_request(&table, 12, replicas))
        .await
        .expect("create");
    cluster
        .frontend
        .insert(rows(&table, 200))
        .await
        .expect("writes before the fault");
    let mut nodes = cluster.nodes;
    let logs = logs_of(&nodes);
    // Nodes 2.. die together: with two copies, some regions lose every copy.
    let victims: Vec<SimDatanode> = nodes.drain(1..=killed as usize).collect();
    drop(victims);
    assert_healed(
        &cluster.meta,
        &cluster.frontend,
        &table,
        &nodes,
        Duration::from_secs(20),
    )
    .await;
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datanodes_dying_at_once_strand_no_region_with_one_copy() {
    datanodes_die_at_once(2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datanodes_dying_at_once_strand_no_region_with_two_copies() {
    datanodes_die_at_once(2, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datanodes_dying_at_once_strand_no_region_with_one_copy() {
    datanodes_die_at_once(3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_datanodes_dying_at_once_strand_no_region_with_two_copies() {
    datanodes_die_at_once(3, 2).await;
}

/// A failover whose target dies while a region is being moved to it: the move times out and is
/// undone, the failover is retried, and every region (the first dead node's and the target's)
/// ends on the one node left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_whose_target_dies_mid_move_heals_on_the_next_attempt() {
    let config = metasrv::Config {
        instruction_timeout: Duration::from_millis(800),
        ..config()
    };
    let (_fixture, cluster, table, _route) =
        cluster_with_table(config, 3, "target_dies", 8, 1).await;
    let mut nodes = cluster.nodes;
    let logs = logs_of(&nodes);
    // Node 3 hangs (heartbeats go on, instructions get no answer): it stays a candidate.
    nodes[2].ignore_instructions(true);
    let instructions_before = nodes[2]
        .events()
        .iter()
        .filter(|e| matches!(e, SimEvent::Instruction(_)))
        .count();
    let first = nodes.remove(0);
    first.kill();
    // As soon as a move reaches node 3, it dies.
    nodes[1]
        .wait_for_event(
            "a failover instruction",
            Duration::from_secs(20),
            |events| {
                events
                    .iter()
                    .filter(|e| matches!(e, SimEvent::Instruction(_)))
                    .count()
                    > instructions_before
            },
        )
        .await
        .expect("the failover picks node 3 for some region");
    let target = nodes.remove(1);
    target.kill();
    assert_healed(
        &cluster.meta,
        &cluster.frontend,
        &table,
        &nodes,
        Duration::from_secs(30),
    )
    .await;
    assert_no_overlapping_leaders(&logs);
    let (_, procedures) = http_get(cluster.server.http_addr, "/v1/procedures").await;
    assert!(
        procedures.contains("did not take it"),
        "the interrupted move is recorded: {procedures}"
    );
    cluster.server.stop().await;
}

/// A node that dies during maintenance is left alone while it lasts, and failed over as soon
/// as it ends: nothing waits for an event that already passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_during_maintenance_is_failed_over_once_it_ends() {
    let (_fixture, cluster, table, route) =
        cluster_with_table(config(), 3, "maintained", 6, 1).await;
    let http = cluster.server.http_addr;
    let (code, body) = http_request(http, "PUT", "/v1/maintenance?enabled=true").await;
    assert_eq!(code, 200, "{body}");
    let mut nodes = cluster.nodes;
    let logs = logs_of(&nodes);
    nodes.remove(1).kill();
    wait_for(
        "node 2 to be declared dead",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(http, "/v1/nodes").await;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            json["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == 2 && n["status"] == "dead")
                .then_some(())
        },
    )
    .await;
    // Dead, and past its lease and margin (600 + 200 ms): maintenance keeps it in place.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.meta.invalidate(&table);
    let held = cluster.meta.route(&table).await.expect("route");
    assert_eq!(held.route, route.route, "no failover in maintenance mode");

    let (code, body) = http_request(http, "PUT", "/v1/maintenance?enabled=false").await;
    assert_eq!(code, 200, "{body}");
    assert_healed(
        &cluster.meta,
        &cluster.frontend,
        &table,
        &nodes,
        Duration::from_secs(10),
    )
    .await;
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

/// A 1,024-region table on 3 datanodes: its OpenRegion burst travels batched and waits for
/// room on each stream; no stream is cut, every region opens once, and the create commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1024_region_table_is_created_without_cutting_a_stream() {
    let (_fixture, store) = crate::store_conformance::embedded();
    // The default failure detector: this is about the burst, not about failover.
    let config = metasrv::Config {
        max_regions_per_table: 1024,
        instruction_timeout: Duration::from_secs(20),
        ..crate::router::cluster_config()
    };
    let cluster = Cluster::start(store, config, &[node(1), node(2), node(3)]).await;
    let table = cpu_table("wide_partitioned");
    let (_, route) = cluster
        .meta
        .create_table(create_request(&table, 1024, 1))
        .await
        .expect("a 1,024-region create");
    assert_eq!(route.route.regions.len(), 1024);
    for n in &cluster.nodes {
        let cut: Vec<SimEvent> = n
            .events()
            .into_iter()
            .filter(|e| matches!(e, SimEvent::Disconnected { .. }))
            .collect();
        assert!(
            cut.is_empty(),
            "node {} lost its stream: {cut:?}",
            n.node_id()
        );
    }
    // Each region of the table is open on its routed leader, and on no other node.
    for region in &route.route.regions {
        let holders: Vec<u64> = cluster
            .nodes
            .iter()
            .filter(|n| n.regions().contains_key(&region.region_id))
            .map(SimDatanode::node_id)
            .collect();
        assert_eq!(
            holders,
            vec![region.leader.id],
            "region {}",
            region.region_id
        );
    }
    let held: usize = cluster.nodes.iter().map(|n| n.regions().len()).sum();
    assert_eq!(held, 1024, "no region of a failed attempt is left open");
    cluster
        .frontend
        .insert(rows(&table, 2000))
        .await
        .expect("writes to the new table");
    cluster.server.stop().await;
}

/// A datanode dies one second before the metasrv leader (SIGKILL), too soon for the leader to
/// declare it dead. The new leader never hears from it: it watches the registered nodes from
/// the start of its term, declares the silent one dead and fails its regions over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanode_dying_just_before_the_leader_is_failed_over_by_the_next() {
    use crate::election::{pair_with_table, wait_for_one_leader, PairWithTable};

    // Detection slower than the gap between the two kills: the old leader dies unaware.
    let env = [
        ("METASRV_REGION_LEASE", "2s"),
        ("METASRV_ACCEPTABLE_HEARTBEAT_PAUSE", "2s"),
        ("METASRV_MIN_STD_DEVIATION", "20ms"),
    ];
    // The etcd and the directory first: bindings drop in reverse, so they outlive the rest.
    let PairWithTable {
        etcd: _etcd,
        dir: _dir,
        mut nodes,
        meta,
        mut members,
        leader,
        table,
    } = pair_with_table(&env, "orphaned_by_two_deaths").await;
    let logs = logs_of(&nodes);

    nodes.remove(1).kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader_http = members[leader].http_addr;
    let (_, procedures) = http_get(leader_http, "/v1/procedures").await;
    assert!(
        procedures.contains("\"procedures\":[]"),
        "the old leader must not have noticed yet: {procedures}"
    );
    members[leader].signal_and_wait("KILL");

    let survivor = &members[1 - leader];
    wait_for_one_leader(&[survivor], Duration::from_secs(15)).await;
    let frontend = metasrv::sim::SimFrontend::new(meta.clone());
    assert_healed(&meta, &frontend, &table, &nodes, Duration::from_secs(30)).await;
    let (_, procedures) = http_get(survivor.http_addr, "/v1/procedures").await;
    assert!(
        procedures.contains("\"node_id\":2"),
        "the new leader failed node 2 over: {procedures}"
    );
    assert_no_overlapping_leaders(&logs);
}

/// A region a datanode holds that no route names (what a refused create opened while the node
/// was away, a drop it missed) is closed once the grace has passed; routed regions stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_region_is_closed_after_the_grace() {
    let config = metasrv::Config {
        instruction_timeout: Duration::from_millis(500),
        orphan_region_grace: Duration::from_millis(1500),
        ..config()
    };
    let (_fixture, store) = crate::store_conformance::embedded();
    let orphan = (777u64 << 32) | 3;
    let mut holder = node(1);
    holder.regions = vec![orphan];
    // Before the node's first report: the grace counts from that report, later.
    let started = std::time::Instant::now();
    let cluster = Cluster::start(store, config, &[holder, node(2)]).await;
    let table = cpu_table("beside_an_orphan");
    let (_, route) = cluster
        .meta
        .create_table(create_request(&table, 4, 1))
        .await
        .expect("create");
    let node = &cluster.nodes[0];
    assert!(node.regions().contains_key(&orphan));
    node.wait_for_event("the orphan closed", Duration::from_secs(10), |events| {
        events.iter().any(|e| {
            matches!(e, SimEvent::Instruction(i) if matches!(
                &i.kind,
                Some(metasrv::proto::v1::instruction::Kind::CloseRegion(c)) if c.region_id == orphan
            ))
        })
    })
    .await
    .expect("the orphan is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before the grace: {:?}",
        started.elapsed()
    );
    assert!(!node.regions().contains_key(&orphan));
    for region in &route.route.regions {
        let holder = &cluster.nodes[(region.leader.id - 1) as usize];
        assert_eq!(
            holder.regions().get(&region.region_id),
            Some(&RegionRole::Leader),
            "routed regions stay open"
        );
    }
    cluster
        .frontend
        .insert(rows(&table, 100))
        .await
        .expect("the table takes writes");
    cluster.server.stop().await;
}

/// Copies lost with a dead datanode are made again: a region whose leader failed over (it led
/// on with one copy of the two its table asks for) gets a new follower, and a follower on the
/// dead node is replaced once the node has stayed dead for `replica_repair_after`. Afterwards
/// every region has two copies on live nodes, each open on its node in its role, and takes
/// writes; the repair is a procedure like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_lost_with_a_dead_datanode_are_made_again() {
    let (_fixture, store) = crate::store_conformance::embedded();
    // Three nodes: placement then makes each lead some regions and follow others.
    let configs: Vec<_> = (1..=3).map(node).collect();
    let config = metasrv::Config {
        replica_repair_after: Duration::from_secs(2),
        ..config()
    };
    let cluster = Cluster::start(store, config, &configs).await;
    let table = cpu_table("repaired");
    let (_, created) = cluster
        .meta
        .create_table(create_request(&table, 12, 2))
        .await
        .expect("create");
    let dead = 1;
    let leads = created.route.regions.iter().any(|r| r.leader.id == dead);
    let follows = created
        .route
        .regions
        .iter()
        .any(|r| r.followers.iter().any(|f| f.id == dead));
    assert!(
        leads && follows,
        "node {dead} leads and follows: {created:?}"
    );
    cluster
        .frontend
        .insert(rows(&table, 200))
        .await
        .expect("writes before the fault");
    let mut nodes = cluster.nodes;
    let logs = logs_of(&nodes);
    drop(nodes.remove(0));

    let live: HashSet<u64> = nodes.iter().map(SimDatanode::node_id).collect();
    let route = crate::router::wait_for_route(
        &cluster.meta,
        &table,
        "every region to have two copies on live nodes",
        Duration::from_secs(30),
        |route| {
            route.route.regions.iter().all(|r| {
                live.contains(&r.leader.id)
                    && r.followers.len() == 1
                    && live.contains(&r.followers[0].id)
                    && r.followers[0].id != r.leader.id
            })
        },
    )
    .await;
    wait_for(
        "each follower copy to be open on its node",
        Duration::from_secs(10),
        || {
            let open = route.route.regions.iter().all(|r| {
                nodes
                    .iter()
                    .find(|n| n.node_id() == r.followers[0].id)
                    .is_some_and(|n| n.regions().get(&r.region_id) == Some(&RegionRole::Follower))
            });
            async move { open.then_some(()) }
        },
    )
    .await;
    wait_led_by_routed_leaders(&route, &nodes).await;
    cluster
        .frontend
        .insert(rows(&table, 200))
        .await
        .expect("writes after the repair");
    assert_no_overlapping_leaders(&logs);
    let (code, body) = http_get(cluster.server.http_addr, "/v1/procedures").await;
    assert_eq!(code, 200, "{body}");
    let procedures: serde_json::Value = serde_json::from_str(&body).expect("json");
    let repairs: Vec<&serde_json::Value> = procedures["procedures"]
        .as_array()
        .expect("procedures")
        .iter()
        .filter(|p| p["kind"] == "repair_replicas")
        .collect();
    assert!(
        repairs.iter().any(|p| p["state"] == "done"),
        "a finished repair is listed: {body}"
    );
    cluster.server.stop().await;
}
