//! Region failover: a datanode holding regions dies; after its leases have surely lapsed its
//! regions are opened elsewhere (or a follower is promoted), the route version grows, writes
//! through the frontend succeed again, no region ever had two writers at overlapping times, and
//! the node, when it comes back, is told to close what it no longer owns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metasrv::failure_detector::FailureDetectorConfig;
use metasrv::sim::SimDatanodeConfig;
use metasrv::Config;

use crate::harness::{http_get, http_request, wait_for};
use crate::router::{cluster_config, cpu_table, create_request, node, rows, Cluster};

/// Fast failure detection and short leases, for failover tests.
pub fn config() -> Config {
    Config {
        region_lease: Duration::from_millis(600),
        failover_safety_margin: Duration::from_millis(200),
        failure_detector: FailureDetectorConfig {
            acceptable_heartbeat_pause: Duration::from_millis(300),
            min_std_deviation: Duration::from_millis(20),
            ..FailureDetectorConfig::default()
        },
        ..cluster_config()
    }
}

/// An in-process metasrv on the embedded store (its files live as long as the returned
/// fixture, bound first so that it is dropped last) with simulated datanodes `1..=nodes`, and
/// a table `name` created on it.
pub async fn cluster_with_table(
    config: Config,
    nodes: u64,
    name: &str,
    partitions: u32,
    replicas: u32,
) -> (
    crate::store_conformance::Fixture,
    Cluster,
    metasrv::catalog::model::TableName,
    Arc<metasrv::client::CachedRoute>,
) {
    let (fixture, store) = crate::store_conformance::embedded();
    let configs: Vec<_> = (1..=nodes).map(node).collect();
    let cluster = Cluster::start(store, config, &configs).await;
    let table = cpu_table(name);
    let (_, route) = cluster
        .meta
        .create_table(create_request(&table, partitions, replicas))
        .await
        .expect("create");
    (fixture, cluster, table, route)
}

/// The regions `node_id` leads in `route`; asserts it leads some.
fn led_by(route: &metasrv::client::CachedRoute, node_id: u64) -> Vec<u64> {
    let led: Vec<u64> = route
        .route
        .regions
        .iter()
        .filter(|r| r.leader.id == node_id)
        .map(|r| r.region_id)
        .collect();
    assert!(
        !led.is_empty(),
        "node {node_id} leads some regions: {route:?}"
    );
    led
}

/// Waits (bounded) until no region of `table` is led by `node_id`; returns that route.
async fn route_moved_off(
    meta: &Arc<metasrv::client::MetaClient>,
    table: &metasrv::catalog::model::TableName,
    node_id: u64,
) -> Arc<metasrv::client::CachedRoute> {
    crate::router::wait_for_route(
        meta,
        table,
        &format!("the route to move off node {node_id}"),
        Duration::from_secs(15),
        |route| route.route.regions.iter().all(|r| r.leader.id != node_id),
    )
    .await
}

/// No double writer, on the nodes' own lease clocks: each region of `moved` got its new leader
/// (in `moved_route`, among `nodes`) only after the old leader's last write lease ended.
fn assert_successors_began_after(
    old: &metasrv::sim::WriteLog,
    moved: &[u64],
    moved_route: &metasrv::client::CachedRoute,
    nodes: &[metasrv::sim::SimDatanode],
) {
    for region_id in moved {
        let new_leader = moved_route
            .route
            .regions
            .iter()
            .find(|r| r.region_id == *region_id)
            .map(|r| r.leader.id)
            .expect("region in route");
        let successor = nodes
            .iter()
            .find(|n| n.node_id() == new_leader)
            .expect("the new leader is a live node");
        let horizon = old
            .write_horizon(*region_id)
            .expect("the old leader led the region");
        let since = successor
            .write_log()
            .leading_since(*region_id)
            .expect("the successor leads the region");
        assert!(
            horizon < since,
            "region {region_id}: the old leader could write until {horizon:?}, node {new_leader} led from {since:?}"
        );
    }
}

/// `partition`: the node's heartbeats stop but its data plane keeps accepting what its leases
/// allow (the split-brain case); otherwise the node is killed.
async fn fail_over(replicas: u32, partition: bool) {
    let (_fixture, store) = crate::store_conformance::embedded();
    fail_over_on(store, replicas, partition).await;
}

async fn fail_over_on(store: Arc<dyn metasrv::store::KvBackend>, replicas: u32, partition: bool) {
    let cluster = Cluster::start(store, config(), &[node(1), node(2), node(3)]).await;
    let table = cpu_table("failing");
    let (_, route) = cluster
        .meta
        .create_table(create_request(&table, 6, replicas))
        .await
        .expect("create");
    let victim = 2u64;
    let moved = led_by(&route, victim);

    // A writer keeps inserting through the kill, ignoring failures.
    let stop = Arc::new(AtomicBool::new(false));
    let frontend = Arc::new(cluster.frontend);
    let writer = {
        let (stop, frontend, table) = (stop.clone(), frontend.clone(), table.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = frontend.insert(rows(&table, 30)).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut nodes = cluster.nodes;
    wait_for("writes on every node", Duration::from_secs(5), || {
        let busy = nodes.iter().all(|n| !n.accepted_writes().is_empty());
        async move { busy.then_some(()) }
    })
    .await;

    let victim_log = nodes[1].write_log();
    let killed_at = Instant::now();
    let removed = nodes.remove(1);
    let partitioned = if partition {
        removed.stop_heartbeats();
        Some(removed)
    } else {
        removed.kill();
        None
    };

    // Every region of node 2 gets a new leader, and writes succeed again.
    let moved_route = route_moved_off(&cluster.meta, &table, victim).await;
    assert!(
        moved_route.route.version > route.route.version,
        "the route version grew"
    );
    frontend
        .insert(rows(&table, 300))
        .await
        .expect("writes succeed after failover");
    let writable_after = killed_at.elapsed();
    println!("regions writable again {writable_after:?} after the kill");
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");

    // No double writer: the dead node's last accepted write precedes the new leader's first.
    let old = victim_log.accepted_writes();
    for region_id in &moved {
        let last_old = old
            .iter()
            .filter(|w| w.region_id == *region_id)
            .map(|w| w.at)
            .max();
        let new_leader = moved_route
            .route
            .regions
            .iter()
            .find(|r| r.region_id == *region_id)
            .map(|r| r.leader.id)
            .expect("region in route");
        let new_node = nodes
            .iter()
            .find(|n| n.node_id() == new_leader)
            .expect("the new leader is a live node");
        let first_new = new_node
            .accepted_writes()
            .iter()
            .filter(|w| w.region_id == *region_id)
            .map(|w| w.at)
            .min();
        if let (Some(last_old), Some(first_new)) = (last_old, first_new) {
            assert!(
                last_old < first_new,
                "region {region_id}: node 2 wrote until {last_old:?}, node {new_leader} from {first_new:?}"
            );
        }
        assert!(
            first_new.is_some(),
            "region {region_id} took writes on its new leader"
        );
    }
    // And on the nodes' lease clocks.
    assert_successors_began_after(&victim_log, &moved, &moved_route, &nodes);

    // The failover was a recorded procedure. Its record says done a moment after the last
    // route moved (the final save follows the moves), so wait for that, bounded.
    let http_addr = cluster.server.http_addr;
    let json = wait_for(
        "the failover procedure recorded as done",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(http_addr, "/v1/procedures").await;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            (json["procedures"][0]["state"] == "done").then_some(json)
        },
    )
    .await;
    let procedure = &json["procedures"][0];
    assert_eq!(procedure["kind"], "region_failover", "{json}");
    assert_eq!(procedure["node_id"], victim);
    assert_eq!(procedure["state"], "done", "{json}");
    assert!(
        procedure["steps"].as_array().map_or(0, Vec::len) >= 3,
        "{json}"
    );
    let (_, metrics) = http_get(cluster.server.http_addr, "/metrics").await;
    for line in [
        r#"metasrv_region_failovers_total{outcome="done"} 1"#,
        "metasrv_region_failover_duration_seconds_count 1",
        "metasrv_is_leader 1",
        "metasrv_maintenance_mode 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }

    // Node 2 comes back still holding its old regions: it is told to close them.
    drop(partitioned);
    let returning = metasrv::sim::SimDatanode::start_serving(
        cluster.server.channel().await,
        SimDatanodeConfig {
            regions: moved.clone(),
            ..node(victim)
        },
    )
    .await
    .expect("node 2 restarts");
    wait_for(
        "node 2 to close the regions it lost",
        Duration::from_secs(10),
        || {
            let held = returning.regions();
            let closed = moved.iter().all(|r| !held.contains_key(r));
            async move { closed.then_some(()) }
        },
    )
    .await;
    cluster.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_regions_reopen_elsewhere() {
    fail_over(1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leaders_follower_is_promoted() {
    fail_over(2, false).await;
}

/// The node is cut off but alive and still reachable by frontends: its leases lapse before its
/// regions are served elsewhere, so the writes it accepts and the new leader's never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_never_writes_beside_its_successor() {
    fail_over(1, true).await;
}

/// The same on the etcd backend (fenced writes for the procedure and the route move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_fails_over_on_etcd() {
    let (_fixture, store) = crate::store_conformance::etcd("failover").await;
    fail_over_on(store, 1, true).await;
}

/// In maintenance mode a dead node's regions stay where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_mode_suspends_failover() {
    let (_fixture, cluster, table, route) =
        cluster_with_table(config(), 2, "kept_in_place", 4, 1).await;
    let (code, body) = http_request(
        cluster.server.http_addr,
        "PUT",
        "/v1/maintenance?enabled=true",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = http_get(cluster.server.http_addr, "/v1/maintenance").await;
    assert!(body.contains("true"), "{body}");
    let (_, metrics) = http_get(cluster.server.http_addr, "/metrics").await;
    assert!(metrics.contains("metasrv_maintenance_mode 1"), "{metrics}");
    let mut nodes = cluster.nodes;
    nodes.remove(1).kill();
    // Well past detection, lease and margin (about 1 s here): nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.meta.invalidate(&table);
    let now = cluster.meta.route(&table).await.expect("route");
    assert_eq!(now.route, route.route, "no failover in maintenance mode");
    let (_, body) = http_get(cluster.server.http_addr, "/v1/procedures").await;
    assert!(body.contains("\"procedures\":[]"), "{body}");
    cluster.server.stop().await;
}

/// SIGKILL the metasrv leader while a failover waits for the dead node's leases: the new
/// leader finds the procedure in the KV and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finishes_a_failover_cut_by_a_crash() {
    use crate::election::{pair_with_table, wait_for_one_leader, PairWithTable};

    let env = [
        ("METASRV_REGION_LEASE", "2s"),
        ("METASRV_ACCEPTABLE_HEARTBEAT_PAUSE", "300ms"),
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
    } = pair_with_table(&env, "resumed").await;

    nodes.remove(1).kill();
    let leader_http = members[leader].http_addr;
    wait_for(
        "the failover procedure to start",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(leader_http, "/v1/procedures").await;
            body.contains("\"state\":\"running\"").then_some(())
        },
    )
    .await;
    members[leader].signal_and_wait("KILL");

    let survivor = &members[1 - leader];
    let survivors = [survivor];
    wait_for_one_leader(&survivors, Duration::from_secs(15)).await;
    let moved = wait_for(
        "the new leader to finish the failover",
        Duration::from_secs(30),
        || {
            let meta = &meta;
            let table = table.clone();
            async move {
                meta.invalidate(&table);
                let route = meta.route(&table).await.ok()?;
                route
                    .route
                    .regions
                    .iter()
                    .all(|r| r.leader.id != 2)
                    .then_some(route)
            }
        },
    )
    .await;
    assert!(moved.route.version > 1);
    // The route moved with the last region; the procedure records "done" right after.
    let survivor_http = survivor.http_addr;
    let body = wait_for(
        "the resumed procedure to be recorded done",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(survivor_http, "/v1/procedures").await;
            body.contains("\"state\":\"done\"").then_some(body)
        },
    )
    .await;
    assert!(body.contains("resumed by a new leader"), "{body}");
    drop(nodes);
}

/// A follower the dead leader reported out of sync is not promoted: the region is opened on a
/// node without a copy instead; followers it did not report on are promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_is_not_promoted() {
    use metasrv::actors::cluster_view::GetReplicaReport;
    let (_fixture, cluster, table, route) = cluster_with_table(config(), 3, "lagging", 6, 2).await;
    let victim = 2u64;
    let led: Vec<_> = route
        .route
        .regions
        .iter()
        .filter(|r| r.leader.id == victim)
        .cloned()
        .collect();
    let lagging = led.first().expect("node 2 leads a region").clone();
    let lagging_follower = lagging.followers[0].id;
    let mut nodes = cluster.nodes;
    nodes[1].report_replica(lagging.region_id, lagging_follower, false);
    let view = cluster.server.cluster_view.clone();
    let lagging_region = lagging.region_id;
    wait_for(
        "the replica state to reach metasrv",
        Duration::from_secs(5),
        || {
            let view = view.clone();
            async move {
                let stats = view
                    .send(GetReplicaReport { node_id: victim })
                    .await
                    .ok()??;
                stats
                    .iter()
                    .any(|r| r.region_id == lagging_region && !r.in_sync)
                    .then_some(())
            }
        },
    )
    .await;
    nodes.remove(1).kill();
    let meta = cluster.meta.clone();
    let moved = wait_for(
        "the route to move off node 2",
        Duration::from_secs(15),
        || {
            let meta = meta.clone();
            let table = table.clone();
            async move {
                meta.invalidate(&table);
                let route = meta.route(&table).await.ok()?;
                route
                    .route
                    .regions
                    .iter()
                    .all(|r| r.leader.id != victim)
                    .then_some(route)
            }
        },
    )
    .await;
    for region in &moved.route.regions {
        let Some(before) = led.iter().find(|r| r.region_id == region.region_id) else {
            continue;
        };
        if before.region_id == lagging_region {
            assert_ne!(
                region.leader.id, lagging_follower,
                "a lagging follower was promoted"
            );
        } else {
            assert_eq!(
                region.leader.id, before.followers[0].id,
                "an in-sync follower takes over"
            );
        }
    }
    cluster.server.stop().await;
}

/// A failover locks each region while it moves it: DropTable of the table is refused with a
/// retryable error until the move ends (here: the chosen node never answers, so the move gives
/// up after the instruction timeout and releases the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_whose_region_is_moving_cannot_be_dropped() {
    use metasrv::client::header;
    use metasrv::proto::v1 as pb;
    use metasrv::sim::{SimDatanode, SimEvent};

    let config = Config {
        instruction_timeout: Duration::from_secs(3),
        ..config()
    };
    let (_fixture, cluster, table, route) = cluster_with_table(config, 2, "locked", 4, 1).await;
    assert!(route.route.regions.iter().any(|r| r.leader.id == 2));
    // A node with no regions joins; it takes heartbeats but never answers instructions. The
    // failover picks it (least loaded) and waits on it while holding the region's lock.
    let silent = SimDatanode::start_serving(
        cluster.server.channel().await,
        SimDatanodeConfig {
            obey_instructions: false,
            ..node(3)
        },
    )
    .await
    .expect("sim");
    wait_for("node 3 alive", Duration::from_secs(10), || {
        let http = cluster.server.http_addr;
        async move {
            let (_, body) = http_get(http, "/v1/nodes").await;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            json["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["id"] == 3 && n["status"] == "alive")
                .then_some(())
        }
    })
    .await;
    let mut nodes = cluster.nodes;
    nodes.remove(1).kill();
    silent
        .wait_for_event(
            "the failover's OpenRegion",
            Duration::from_secs(10),
            |events| events.iter().any(|e| matches!(e, SimEvent::Instruction(_))),
        )
        .await
        .expect("node 3 is asked to open a region");

    let drop_request = pb::DropTableRequest {
        header: header(crate::router::CLUSTER, 0),
        table_name: Some((&table).into()),
        if_exists: false,
    };
    let mut router = cluster.meta.router();
    let refused = router
        .drop_table(drop_request.clone())
        .await
        .expect_err("a table whose region is moving cannot be dropped");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("failover is moving regions"),
        "{refused:?}"
    );

    // The move gives up after the instruction timeout and releases the lock.
    let dropped = wait_for("the lock to be released", Duration::from_secs(15), || {
        let mut router = router.clone();
        let request = drop_request.clone();
        async move { router.drop_table(request).await.ok() }
    })
    .await;
    assert!(dropped.into_inner().dropped);
    // The move that was never confirmed is undone on the node, in case it opened late.
    silent
        .wait_for_event(
            "the undo of the unconfirmed open",
            Duration::from_secs(10),
            |events| {
                events.iter().any(|e| {
                    matches!(e, SimEvent::Instruction(i)
                    if matches!(i.kind, Some(pb::instruction::Kind::CloseRegion(_))))
                })
            },
        )
        .await
        .expect("the unconfirmed OpenRegion is followed by a CloseRegion");
    cluster.server.stop().await;
}

/// A node declared dead comes back while its failover waits for its leases to lapse (a short
/// partition): it must not get its leader leases renewed, or it would still write its regions
/// when their new leaders open them. Checked on the nodes' own lease clocks: each new leader
/// starts leading after the old node's last write lease ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_during_its_failover_never_writes_beside_its_successor() {
    let config = Config {
        // A wide margin: the node is surely back before anything is opened elsewhere.
        failover_safety_margin: Duration::from_millis(1500),
        ..config()
    };
    let (_fixture, cluster, table, route) = cluster_with_table(config, 3, "flapping", 6, 1).await;
    let victim = 2u64;
    let moved = led_by(&route, victim);
    let mut nodes = cluster.nodes;
    wait_for("node 2 to hold leases", Duration::from_secs(5), || {
        let leased = nodes[1].leased_regions();
        let all = moved.iter().all(|r| leased.contains(r));
        async move { all.then_some(()) }
    })
    .await;
    let victim_log = nodes[1].write_log();

    nodes[1].stop_heartbeats();
    let http = cluster.server.http_addr;
    wait_for(
        "a failover of node 2 to start",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(http, "/v1/procedures").await;
            body.contains("\"state\":\"running\"").then_some(())
        },
    )
    .await;
    nodes[1].resume_heartbeats();

    let moved_route = route_moved_off(&cluster.meta, &table, victim).await;
    assert_successors_began_after(&victim_log, &moved, &moved_route, &nodes);
    // The returned node is alive and is told to close what it lost.
    wait_for(
        "node 2 to close the regions it lost",
        Duration::from_secs(10),
        || {
            let held = nodes[1].regions();
            let closed = moved.iter().all(|r| !held.contains_key(r));
            async move { closed.then_some(()) }
        },
    )
    .await;
    cluster.server.stop().await;
}

/// A datanode restarts (a new instance on the same address, its regions gone) faster than the
/// failure detector would call it dead: metasrv sees routed regions it does not report and asks
/// it to open them again, so the table is writable again with the route unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_asked_to_reopen_its_regions() {
    let config = Config {
        failure_detector: FailureDetectorConfig {
            // Never dead within this test: the reopen, not a failover, must bring writes back.
            acceptable_heartbeat_pause: Duration::from_secs(30),
            ..FailureDetectorConfig::default()
        },
        ..cluster_config()
    };
    let (_fixture, cluster, table, route) = cluster_with_table(config, 2, "restarted", 4, 1).await;
    let reopened = led_by(&route, 2);
    cluster
        .frontend
        .insert(rows(&table, 100))
        .await
        .expect("writes before the restart");

    let mut nodes = cluster.nodes;
    let restarted = nodes
        .remove(1)
        .restart(Duration::ZERO)
        .await
        .expect("node 2 restarts");
    assert!(
        restarted.regions().is_empty(),
        "a restart loses the regions"
    );
    wait_for(
        "node 2 to open its routed regions again",
        Duration::from_secs(10),
        || {
            let held = restarted.regions();
            let leased = restarted.leased_regions();
            let back = reopened.iter().all(|r| {
                held.get(r) == Some(&metasrv::stats::RegionRole::Leader) && leased.contains(r)
            });
            async move { back.then_some(()) }
        },
    )
    .await;
    cluster.meta.invalidate(&table);
    let now = cluster.meta.route(&table).await.expect("route");
    assert_eq!(
        now.route, route.route,
        "no failover: the route is unchanged"
    );
    // The frontend's connection to the old process fails once; it reconnects and writes.
    let frontend = &cluster.frontend;
    wait_for(
        "writes after the restart",
        Duration::from_secs(10),
        || async { frontend.insert(rows(&table, 100)).await.ok() },
    )
    .await;
    let accepted: std::collections::HashSet<u64> = restarted
        .accepted_writes()
        .iter()
        .map(|w| w.region_id)
        .collect();
    assert!(
        reopened.iter().any(|r| accepted.contains(r)),
        "the restarted node took writes for its regions"
    );
    cluster.server.stop().await;
}
