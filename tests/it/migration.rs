//! Region migration and the operations built on it (Admin gRPC and HTTP): a migration under
//! continuous writes pauses them for a few round trips, not a lease; a leader transfer keeps the
//! old leader as a follower; a silent old leader costs one lease wait; a target that never
//! answers leaves the region with its leader; a drain moves 100 region copies off a node with
//! progress; bad requests get reasons. After each, every region is led by exactly its routed
//! leader among the live nodes and no two nodes ever led a region with overlapping leases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metasrv::catalog::model::TableName;
use metasrv::client::{header, CachedRoute};
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::admin_client::AdminClient;
use metasrv::sim::{SimDatanode, SimFrontend};
use metasrv::stats::RegionRole;
use metasrv::store::{KeyValue, KvBackend, RangeRequest, StoreResult};
use metasrv::Config;
use tonic::Code;

use crate::chaos::assert_no_overlapping_leaders;
use crate::failover::{cluster_with_table, config};
use crate::harness::{http_get, http_request, wait_for};
use crate::reconciler::{logs_of, wait_led_by_routed_leaders};
use crate::router::{rows, Cluster, CLUSTER};

async fn admin(cluster: &Cluster) -> AdminClient<tonic::transport::Channel> {
    AdminClient::new(cluster.server.channel().await)
}

/// A region of `route` led by `leader`, and a node of `nodes` that holds no copy of it.
fn region_and_free_node(route: &CachedRoute, nodes: &[u64]) -> (u64, u64, u64) {
    for region in &route.route.regions {
        let holders: Vec<u64> = std::iter::once(region.leader.id)
            .chain(region.followers.iter().map(|f| f.id))
            .collect();
        if let Some(free) = nodes.iter().find(|n| !holders.contains(n)) {
            return (region.region_id, region.leader.id, *free);
        }
    }
    panic!("every node holds a copy of every region: {route:?}");
}

/// Writes to every region of `table` until `stop`, as fast as the frontend answers; returns the
/// longest time between two successful writes and how many succeeded.
fn spawn_writer(
    frontend: Arc<SimFrontend>,
    table: TableName,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Duration, u64)> {
    tokio::spawn(async move {
        let mut last_ok = Instant::now();
        let mut longest = Duration::ZERO;
        let mut ok = 0;
        while !stop.load(Ordering::Relaxed) {
            if frontend.insert(rows(&table, 8)).await.is_ok() {
                longest = longest.max(last_ok.elapsed());
                last_ok = Instant::now();
                ok += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        (longest, ok)
    })
}

/// Waits until `region_id` is routed to `leader` and led by it alone among `nodes`.
async fn assert_led_only_by(
    cluster: &Cluster,
    table: &TableName,
    region_id: u64,
    leader: u64,
    nodes: &[&SimDatanode],
) -> Arc<CachedRoute> {
    let route = crate::router::wait_for_route(
        &cluster.meta,
        table,
        &format!("region {region_id} routed to node {leader}"),
        Duration::from_secs(10),
        |route| {
            route
                .route
                .regions
                .iter()
                .any(|r| r.region_id == region_id && r.leader.id == leader)
        },
    )
    .await;
    wait_for(
        &format!("region {region_id} led by node {leader} alone"),
        Duration::from_secs(10),
        || {
            let leaders: Vec<u64> = nodes
                .iter()
                .filter(|n| n.regions().get(&region_id) == Some(&RegionRole::Leader))
                .map(|n| n.node_id())
                .collect();
            async move { (leaders == vec![leader]).then_some(()) }
        },
    )
    .await;
    route
}

/// Migrates `region_id` to `to` through the Admin service and waits for the outcome.
async fn migrate_and_wait(cluster: &Cluster, region_id: u64, to: u64) -> pb::ProcedureInfo {
    procedure_of(
        admin(cluster)
            .await
            .migrate_region(pb::MigrateRegionRequest {
                header: header(CLUSTER, 0),
                region_id,
                to_node: to,
                wait: true,
            })
            .await
            .expect("migration accepted"),
    )
}

fn procedure_of(response: tonic::Response<pb::OperationResponse>) -> pb::ProcedureInfo {
    response
        .into_inner()
        .procedure
        .expect("the response carries the procedure")
}

/// Transfers `region`'s leadership to its first follower through the Admin service and waits
/// for the procedure to finish.
async fn transfer_to_first_follower(
    cluster: &Cluster,
    region: &metasrv::catalog::model::RegionRoute,
) -> pb::ProcedureInfo {
    procedure_of(
        admin(cluster)
            .await
            .transfer_leader(pb::TransferLeaderRequest {
                header: header(CLUSTER, 0),
                region_id: region.region_id,
                to_node: region.followers[0].id,
                wait: true,
            })
            .await
            .expect("transfer accepted"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_under_writes_pauses_them_for_round_trips_not_a_lease() {
    let (_fixture, cluster, table, route) = cluster_with_table(config(), 3, "migrated", 4, 1).await;
    let (region_id, from, to) = region_and_free_node(&route, &[1, 2, 3]);
    let logs = logs_of(&cluster.nodes);
    let frontend = Arc::new(SimFrontend::new(cluster.meta.clone()));
    frontend
        .insert(rows(&table, 8))
        .await
        .expect("writes before");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(frontend.clone(), table.clone(), stop.clone());
    // Writes flow before the migration starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let procedure = migrate_and_wait(&cluster, region_id, to).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (longest_pause, writes) = writer.await.expect("writer");

    assert_eq!(procedure.state, "done", "{procedure:?}");
    assert_eq!(procedure.kind, "migrate_region");
    assert_eq!((procedure.node_id, procedure.target_node), (from, to));
    assert!(
        procedure.steps.iter().any(|s| s.contains("downgraded")),
        "the old leader cooperated: {:?}",
        procedure.steps
    );
    let nodes: Vec<&SimDatanode> = cluster.nodes.iter().collect();
    let route = assert_led_only_by(&cluster, &table, region_id, to, &nodes).await;
    let moved = route
        .route
        .regions
        .iter()
        .find(|r| r.region_id == region_id)
        .expect("routed");
    assert!(moved.followers.is_empty(), "one copy, moved: {moved:?}");
    let old = &cluster.nodes[(from - 1) as usize];
    wait_for("the old copy closed", Duration::from_secs(5), || {
        let closed = !old.regions().contains_key(&region_id);
        async move { closed.then_some(()) }
    })
    .await;
    // A lease is 600 ms here (plus a 200 ms margin): a cooperative migration must not wait it.
    assert!(
        longest_pause < Duration::from_millis(400),
        "writes paused {longest_pause:?} (migration took {took:?}, {writes} writes)"
    );
    assert!(writes > 20, "the writer kept writing: {writes}");
    let (_, metrics) = http_get(cluster.server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("metasrv_region_migrations_total{outcome=\"cooperative\"} 1"),
        "{metrics}"
    );
    let (code, listed) = http_get(cluster.server.http_addr, "/v1/procedures").await;
    assert_eq!(code, 200);
    assert!(listed.contains(&procedure.id), "{listed}");
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_transfer_keeps_the_old_leader_as_a_follower() {
    let (_fixture, cluster, table, route) =
        cluster_with_table(config(), 3, "transferred", 4, 2).await;
    let region = route.route.regions[0].clone();
    let (from, to) = (region.leader.id, region.followers[0].id);
    let logs = logs_of(&cluster.nodes);
    let procedure = procedure_of(
        admin(&cluster)
            .await
            .transfer_leader(pb::TransferLeaderRequest {
                header: header(CLUSTER, 0),
                region_id: region.region_id,
                to_node: to,
                wait: true,
            })
            .await
            .expect("transfer accepted"),
    );
    assert_eq!(procedure.state, "done", "{procedure:?}");
    assert_eq!(procedure.kind, "transfer_leader");
    let nodes: Vec<&SimDatanode> = cluster.nodes.iter().collect();
    let route = assert_led_only_by(&cluster, &table, region.region_id, to, &nodes).await;
    let moved = route
        .route
        .regions
        .iter()
        .find(|r| r.region_id == region.region_id)
        .expect("routed");
    assert_eq!(
        moved.followers.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![from],
        "the old leader follows: {moved:?}"
    );
    assert_eq!(
        cluster.nodes[(from - 1) as usize]
            .regions()
            .get(&region.region_id),
        Some(&RegionRole::Follower)
    );
    wait_for(
        "writes after the transfer",
        Duration::from_secs(5),
        || async { cluster.frontend.insert(rows(&table, 50)).await.ok() },
    )
    .await;
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

/// A leader that cannot be asked (its stream is cut, its data plane still serves on its lease)
/// costs one lease: the target leads only once that lease has surely lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_leader_costs_one_lease_wait_and_never_a_second_writer() {
    let config = Config {
        instruction_timeout: Duration::from_millis(500),
        ..config()
    };
    let (_fixture, cluster, table, route) = cluster_with_table(config, 3, "silent", 4, 1).await;
    let (region_id, from, to) = region_and_free_node(&route, &[1, 2, 3]);
    let logs = logs_of(&cluster.nodes);
    cluster.nodes[(from - 1) as usize].stop_heartbeats();
    let started = Instant::now();
    let procedure = migrate_and_wait(&cluster, region_id, to).await;
    let took = started.elapsed();
    assert_eq!(procedure.state, "done", "{procedure:?}");
    assert!(
        procedure
            .steps
            .iter()
            .any(|s| s.contains("did not downgrade")),
        "{:?}",
        procedure.steps
    );
    // The lease (600 ms) plus the margin (200 ms) counted from the last grant.
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    let live: Vec<&SimDatanode> = cluster
        .nodes
        .iter()
        .filter(|n| n.node_id() != from)
        .collect();
    assert_led_only_by(&cluster, &table, region_id, to, &live).await;
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

/// A target that receives instructions but never answers: the migration gives up, the old
/// leader takes its region back, and writes go on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_leaves_the_region_with_its_leader() {
    let config = Config {
        instruction_timeout: Duration::from_millis(500),
        ..config()
    };
    let (_fixture, cluster, table, route) = cluster_with_table(config, 3, "hung", 4, 1).await;
    let (region_id, from, to) = region_and_free_node(&route, &[1, 2, 3]);
    let logs = logs_of(&cluster.nodes);
    cluster.nodes[(to - 1) as usize].ignore_instructions(true);
    let procedure = migrate_and_wait(&cluster, region_id, to).await;
    assert_eq!(procedure.state, "failed", "{procedure:?}");
    assert!(
        procedure
            .steps
            .last()
            .is_some_and(|s| s.contains("could not open")),
        "{:?}",
        procedure.steps
    );
    cluster.nodes[(to - 1) as usize].ignore_instructions(false);
    let nodes: Vec<&SimDatanode> = cluster.nodes.iter().collect();
    assert_led_only_by(&cluster, &table, region_id, from, &nodes).await;
    wait_for(
        "writes after the failed migration",
        Duration::from_secs(5),
        || async { cluster.frontend.insert(rows(&table, 50)).await.ok() },
    )
    .await;
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

/// A node holding 100 region copies (leaders and followers) is drained over HTTP while writes
/// go on: its progress is visible, then no route names it, it holds nothing, every region
/// keeps its two copies and one leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_a_hundred_region_copies_off_a_node_with_progress() {
    let config = Config {
        max_regions_per_table: 1024,
        ..config()
    };
    let (_fixture, cluster, table, route) = cluster_with_table(config, 4, "drained", 200, 2).await;
    let drained = 1;
    let on_drained = route
        .route
        .regions
        .iter()
        .filter(|r| r.leader.id == drained || r.followers.iter().any(|f| f.id == drained))
        .count();
    assert_eq!(
        on_drained, 100,
        "the placement spreads 400 copies over 4 nodes"
    );
    let logs = logs_of(&cluster.nodes);
    let frontend = Arc::new(SimFrontend::new(cluster.meta.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(frontend, table.clone(), stop.clone());

    let http = cluster.server.http_addr;
    // `wait` is bounded: a drain of 100 regions outlasts a zero timeout, and the answer is
    // then the running procedure.
    let (code, body) = http_request(
        http,
        "POST",
        &format!("/v1/nodes/{drained}/drain?wait=true&timeout_ms=0"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(started["procedure"]["state"], "running", "{body}");
    let id = started["procedure"]["id"]
        .as_str()
        .expect("procedure id")
        .to_string();
    let seen_moved = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let finished = wait_for("the drain to finish", Duration::from_secs(60), || {
        let path = format!("/v1/procedures/{id}");
        let seen = seen_moved.clone();
        async move {
            let (code, body) = http_get(http, &path).await;
            assert_eq!(code, 200, "{body}");
            let procedure: serde_json::Value = serde_json::from_str(&body).ok()?;
            let procedure = procedure["procedure"].clone();
            seen.lock()
                .push(procedure["progress"]["moved"].as_u64().unwrap_or(0));
            (procedure["state"] != "running").then_some(procedure)
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (_, writes) = writer.await.expect("writer");
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["progress"]["total"], 100, "{finished}");
    assert_eq!(finished["progress"]["moved"], 100, "{finished}");
    let seen_moved = seen_moved.lock().clone();
    assert!(
        seen_moved.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {seen_moved:?}"
    );
    assert!(writes > 0, "writes went on during the drain");
    // Drained is cordoned, and stays so: no new region, nor the CNS, refills it.
    let reason = cordon_of(http, drained).await.flatten().expect("cordoned");
    assert_eq!(reason, format!("drained by procedure {id}"));

    cluster.meta.invalidate(&table);
    let route = cluster.meta.route(&table).await.expect("route");
    for region in &route.route.regions {
        let holders: Vec<u64> = std::iter::once(region.leader.id)
            .chain(region.followers.iter().map(|f| f.id))
            .collect();
        assert!(!holders.contains(&drained), "{region:?}");
        assert_eq!(holders.len(), 2, "two copies kept: {region:?}");
    }
    let node = &cluster.nodes[0];
    wait_for(
        "the drained node to hold nothing",
        Duration::from_secs(10),
        || {
            let empty = node.regions().is_empty();
            async move { empty.then_some(()) }
        },
    )
    .await;
    wait_led_by_routed_leaders(&route, &cluster.nodes).await;
    cluster
        .frontend
        .insert(rows(&table, 400))
        .await
        .expect("writes after the drain");
    assert_no_overlapping_leaders(&logs);
    cluster.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_refuse_bad_requests_with_reasons() {
    let (_fixture, cluster, _table, route) = cluster_with_table(config(), 3, "refused", 4, 2).await;
    let mut admin = admin(&cluster).await;
    let region = route.route.regions[0].clone();
    let holders: Vec<u64> = std::iter::once(region.leader.id)
        .chain(region.followers.iter().map(|f| f.id))
        .collect();
    let free = (1..=3).find(|n| !holders.contains(n)).expect("a free node");
    let migrate = |region_id: u64, to_node: u64| pb::MigrateRegionRequest {
        header: header(CLUSTER, 0),
        region_id,
        to_node,
        wait: false,
    };

    let unknown = admin
        .migrate_region(migrate(999 << 32, 2))
        .await
        .expect_err("no such region");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let to_leader = admin
        .migrate_region(migrate(region.region_id, region.leader.id))
        .await
        .expect_err("to its own leader");
    assert_eq!(to_leader.code(), Code::FailedPrecondition);
    assert!(
        to_leader.message().contains("leads region"),
        "{to_leader:?}"
    );
    let dead = admin
        .migrate_region(migrate(region.region_id, 42))
        .await
        .expect_err("to a node that does not exist");
    assert_eq!(dead.code(), Code::FailedPrecondition);
    assert!(dead.message().contains("node 42"), "{dead:?}");
    let not_follower = admin
        .transfer_leader(pb::TransferLeaderRequest {
            header: header(CLUSTER, 0),
            region_id: region.region_id,
            to_node: free,
            wait: false,
        })
        .await
        .expect_err("a transfer to a node without a copy");
    assert_eq!(not_follower.code(), Code::FailedPrecondition);
    assert!(
        not_follower.message().contains("not a follower"),
        "{not_follower:?}"
    );
    // Two operations on one region: the second is refused while the first runs (its target
    // hangs, so it runs until the instruction timeout).
    cluster.nodes[(free - 1) as usize].ignore_instructions(true);
    let first = procedure_of(
        admin
            .migrate_region(migrate(region.region_id, free))
            .await
            .expect("first migration accepted"),
    );
    assert_eq!(first.state, "running");
    let busy = admin
        .transfer_leader(pb::TransferLeaderRequest {
            header: header(CLUSTER, 0),
            region_id: region.region_id,
            to_node: region.followers[0].id,
            wait: false,
        })
        .await
        .expect_err("the region is busy");
    assert_eq!(busy.code(), Code::FailedPrecondition);
    assert!(busy.message().contains(&first.id), "{busy:?}");
    let (code, body) = http_request(
        cluster.server.http_addr,
        "POST",
        &format!("/v1/regions/{}/migrate", region.region_id),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("?to="), "{body}");
    for path in [
        "/v1/regions/abc/migrate?to=2",
        "/v1/nodes/abc/drain",
        "/v1/regions/1/transfer-leader?to=x",
    ] {
        let (code, body) = http_request(cluster.server.http_addr, "POST", path).await;
        assert_eq!(code, 400, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(error["error"].is_string(), "{path}: {body}");
    }
    let (code, body) = http_get(cluster.server.http_addr, "/v1/procedures/nope").await;
    assert_eq!(code, 404, "{body}");
    cluster.nodes[(free - 1) as usize].ignore_instructions(false);
    cluster.server.stop().await;
}

/// The stored route spelled otherwise than this leader would write it (as a route repaired on
/// load is: the stored bytes keep the repeated follower) is still this leader's route: moves
/// compare it as read and go on, instead of failing every move of the table from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_stored_in_another_spelling_still_moves() {
    let (_fixture, store) = crate::store_conformance::embedded();
    route_in_another_spelling_still_moves(store).await;
}

/// The same on etcd, where route writes compare the route's revision, not its bytes: the
/// rewrite moved the revision, the leader reads the route again, finds it equal, and moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_stored_in_another_spelling_still_moves_on_etcd() {
    let (_fixture, store) = crate::store_conformance::etcd("respelled").await;
    route_in_another_spelling_still_moves(store).await;
}

async fn route_in_another_spelling_still_moves(store: Arc<dyn KvBackend>) {
    use metasrv::catalog::manager::keys;
    let configs: Vec<_> = (1..=3).map(crate::router::node).collect();
    let cluster = Cluster::start(store.clone(), config(), &configs).await;
    let table = crate::router::cpu_table("respelled");
    let (_, route) = cluster
        .meta
        .create_table(crate::router::create_request(&table, 2, 2))
        .await
        .expect("create");
    // The same route, pretty-printed: equal as a route, different as bytes.
    let key = keys::table_route(route.info.id);
    let stored = store
        .batch_get(vec![key.clone()])
        .await
        .expect("read")
        .into_iter()
        .next()
        .expect("the route is stored");
    let parsed: serde_json::Value = serde_json::from_slice(&stored.value).expect("JSON");
    let respelled = serde_json::to_vec_pretty(&parsed).expect("JSON");
    assert_ne!(respelled, stored.value);
    store
        .put(KeyValue::new(key.clone(), respelled))
        .await
        .expect("respell");

    let region = route.route.regions[0].clone();
    let procedure = transfer_to_first_follower(&cluster, &region).await;
    assert_eq!(procedure.state, "done", "{procedure:?}");
    cluster.meta.invalidate(&table);
    let moved = cluster.meta.route(&table).await.expect("route");
    assert!(moved.route.version > route.route.version, "{moved:?}");
    assert_eq!(moved.route.regions[0].leader.id, region.followers[0].id);
    cluster.server.stop().await;
}

/// The etcd store, recording the compares of every transaction that writes a table's route.
struct RecordsRouteCompares {
    inner: Arc<dyn KvBackend>,
    compares: parking_lot::Mutex<Vec<metasrv::store::Compare>>,
}

#[async_trait::async_trait]
impl KvBackend for RecordsRouteCompares {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn as_etcd(&self) -> Option<&metasrv::store::etcd::EtcdStore> {
        self.inner.as_etcd()
    }
    async fn range(&self, req: RangeRequest) -> StoreResult<metasrv::store::RangeResponse> {
        self.inner.range(req).await
    }
    async fn put(&self, kv: KeyValue) -> StoreResult<Option<KeyValue>> {
        self.inner.put(kv).await
    }
    async fn batch_get(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>> {
        self.inner.batch_get(keys).await
    }
    async fn batch_put(&self, kvs: Vec<KeyValue>) -> StoreResult<Vec<KeyValue>> {
        self.inner.batch_put(kvs).await
    }
    async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>> {
        self.inner.batch_delete(keys).await
    }
    async fn compare_and_put(
        &self,
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> StoreResult<metasrv::store::CompareAndPutResponse> {
        self.inner.compare_and_put(key, expect, value).await
    }
    async fn delete_range(&self, range: metasrv::store::KeyRange) -> StoreResult<Vec<KeyValue>> {
        self.inner.delete_range(range).await
    }
    async fn txn(&self, txn: metasrv::store::Txn) -> StoreResult<metasrv::store::TxnResponse> {
        let route_prefix = metasrv::catalog::manager::keys::TABLE_ROUTE_PREFIX.as_bytes();
        let writes_a_route = txn.success.iter().any(|op| {
            matches!(op, metasrv::store::TxnOp::Put { key, .. } if key.starts_with(route_prefix))
        });
        if writes_a_route {
            self.compares.lock().extend(txn.compare.iter().cloned());
        }
        self.inner.txn(txn).await
    }
}

/// On etcd a route write compares the revision the leader last saw, not the route's bytes (a
/// large table's route is not sent twice). And a route changed in the store behind the
/// leader's back (by hand, or by a deposed leader's late write) is never overwritten by a move
/// computed from the leader's older copy: the compare fails and the leader reads the route
/// again. The transfer then either lands on top of the new route or reports failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_changed_behind_the_leader_is_not_overwritten_on_etcd() {
    use metasrv::catalog::manager::keys;
    use metasrv::store::Compare;
    let (_fixture, etcd) = crate::store_conformance::etcd("changed_behind").await;
    let recorder = Arc::new(RecordsRouteCompares {
        inner: etcd,
        compares: Default::default(),
    });
    let store: Arc<dyn KvBackend> = recorder.clone();
    let configs: Vec<_> = (1..=3).map(crate::router::node).collect();
    let cluster = Cluster::start(store.clone(), config(), &configs).await;
    let table = crate::router::cpu_table("changed_behind");
    let (_, created) = cluster
        .meta
        .create_table(crate::router::create_request(&table, 2, 2))
        .await
        .expect("create");
    let first = transfer_to_first_follower(&cluster, &created.route.regions[1]).await;
    assert_eq!(first.state, "done", "{first:?}");
    let compares = std::mem::take(&mut *recorder.compares.lock());
    assert!(!compares.is_empty(), "the transfer wrote the route");
    let route_prefix = keys::TABLE_ROUTE_PREFIX.as_bytes();
    let on_routes: Vec<&Compare> = compares
        .iter()
        .filter(|compare| match compare {
            Compare::ValueEquals { key, .. }
            | Compare::Absent { key }
            | Compare::UnchangedSince { key, .. } => key.starts_with(route_prefix),
        })
        .collect();
    assert!(!on_routes.is_empty(), "{compares:?}");
    for compare in on_routes {
        assert!(
            matches!(compare, Compare::UnchangedSince { revision, .. } if *revision > 0),
            "a route write compared the whole route: {compare:?}"
        );
    }

    cluster.meta.invalidate(&table);
    let before = cluster.meta.route(&table).await.expect("route");
    let key = keys::table_route(created.info.id);
    let mut changed = before.route.clone();
    changed.version += 10;
    store
        .put(KeyValue::new(
            key.clone(),
            serde_json::to_vec(&changed).expect("JSON"),
        ))
        .await
        .expect("change the route behind the leader");

    let region = before.route.regions[0].clone();
    let procedure = transfer_to_first_follower(&cluster, &region).await;
    let stored = store
        .batch_get(vec![key])
        .await
        .expect("read")
        .into_iter()
        .next()
        .expect("the route is stored");
    let stored: metasrv::catalog::model::TableRoute =
        serde_json::from_slice(&stored.value).expect("a route");
    if procedure.state == "done" {
        assert!(stored.version > changed.version, "{stored:?}");
        assert_eq!(stored.regions[0].leader.id, region.followers[0].id);
    } else {
        assert_eq!(
            stored, changed,
            "the route changed behind the leader was overwritten"
        );
    }
    // Either way the leader now serves what the store holds.
    cluster.meta.invalidate(&table);
    let served = cluster.meta.route(&table).await.expect("route");
    assert_eq!(served.route, stored, "{procedure:?}");
    cluster.server.stop().await;
}

/// The regions' leaders and followers of `route`, by node.
fn holders(route: &metasrv::catalog::model::TableRoute) -> Vec<u64> {
    route
        .regions
        .iter()
        .flat_map(|r| std::iter::once(r.leader.id).chain(r.followers.iter().map(|f| f.id)))
        .collect()
}

/// `cordoned` of node `node_id` in `/v1/nodes` (`None`: listed and not cordoned).
async fn cordon_of(http: std::net::SocketAddr, node_id: u64) -> Option<Option<String>> {
    let (code, body) = http_get(http, "/v1/nodes").await;
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let node = json["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == node_id)?
        .clone();
    Some(node["cordoned"].as_str().map(str::to_owned))
}

/// An operator cordons a node: it takes no new region, also under the next leader (a restart
/// on the same store), until uncordoned; then it does again. A node the leader has never heard
/// of cannot be cordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_node_takes_no_new_region_across_leaders_until_uncordoned() {
    let (_fixture, store) = crate::store_conformance::embedded();
    let configs: Vec<_> = (1..=3).map(crate::router::node).collect();
    let cordoned = 2;
    let cluster = Cluster::start(store.clone(), config(), &configs).await;
    let http = cluster.server.http_addr;
    let (code, body) = http_request(
        http,
        "POST",
        &format!("/v1/nodes/{cordoned}/cordon?reason=disk%20replacement"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        cordon_of(http, cordoned).await,
        Some(Some("disk replacement".into()))
    );
    assert_eq!(cordon_of(http, 1).await, Some(None));
    let (code, body) = http_request(http, "POST", "/v1/nodes/99/cordon").await;
    assert_eq!(code, 404, "{body}");

    let create = |cluster: &Cluster, name: &'static str| {
        let meta = cluster.meta.clone();
        async move {
            let table = crate::router::cpu_table(name);
            let (_, created) = meta
                .create_table(crate::router::create_request(&table, 6, 2))
                .await
                .expect("create");
            holders(&created.route)
        }
    };
    let placed = create(&cluster, "while_cordoned").await;
    assert!(!placed.contains(&cordoned), "{placed:?}");
    cluster.server.stop().await;
    drop(cluster.nodes);

    // A new leader on the same store.
    let cluster = Cluster::start(store.clone(), config(), &configs).await;
    let http = cluster.server.http_addr;
    wait_for(
        "the new leader to know the cordon",
        Duration::from_secs(10),
        || async move {
            (cordon_of(http, cordoned).await == Some(Some("disk replacement".into()))).then_some(())
        },
    )
    .await;
    let placed = create(&cluster, "after_the_leader_changed").await;
    assert!(!placed.contains(&cordoned), "{placed:?}");

    let (code, body) = http_request(http, "POST", &format!("/v1/nodes/{cordoned}/uncordon")).await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["was_cordoned"], true, "{body}");
    assert_eq!(cordon_of(http, cordoned).await, Some(None));
    // The emptiest node again: placement gives it regions.
    let placed = create(&cluster, "uncordoned").await;
    assert!(placed.contains(&cordoned), "{placed:?}");
    cluster.server.stop().await;
}

/// SIGKILL the metasrv leader while a drain waits on targets that do not answer: the new
/// leader finds the drain in the KV, resumes it, and finishes it; the node stays cordoned under
/// the new leader (the cordon is persisted), holds nothing, and every region is led by exactly
/// one live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_finishes_a_drain_cut_by_a_crash() {
    use crate::election::{pair_with_table, wait_for_one_leader, PairWithTable};

    let env = [
        ("METASRV_INSTRUCTION_TIMEOUT", "2s"),
        ("METASRV_REGION_LEASE", "2s"),
        ("METASRV_ACCEPTABLE_HEARTBEAT_PAUSE", "300ms"),
        ("METASRV_MIN_STD_DEVIATION", "20ms"),
    ];
    // The etcd and the directory first: bindings drop in reverse, so they outlive the rest.
    let PairWithTable {
        etcd: _etcd,
        dir: _dir,
        nodes,
        meta,
        mut members,
        leader,
        table,
    } = pair_with_table(&env, "drain_resumed").await;
    let drained = 1;
    let route = meta.route(&table).await.expect("route");
    assert!(
        route.route.regions.iter().any(|r| r.leader.id == drained),
        "{route:?}"
    );
    // The targets hang: the drain's first moves wait on them.
    for node in &nodes[1..] {
        node.ignore_instructions(true);
    }
    let leader_http = members[leader].http_addr;
    let (code, body) =
        http_request(leader_http, "POST", &format!("/v1/nodes/{drained}/drain")).await;
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).expect("json")["procedure"]["id"]
        .as_str()
        .expect("procedure id")
        .to_string();
    members[leader].signal_and_wait("KILL");
    for node in &nodes[1..] {
        node.ignore_instructions(false);
    }

    let survivor = &members[1 - leader];
    wait_for_one_leader(&[survivor], Duration::from_secs(15)).await;
    let survivor_http = survivor.http_addr;
    let finished = wait_for(
        "the new leader to finish the drain",
        Duration::from_secs(60),
        || {
            let path = format!("/v1/procedures/{id}");
            async move {
                let (code, body) = http_get(survivor_http, &path).await;
                let json: serde_json::Value = serde_json::from_str(&body).ok()?;
                (code == 200 && json["procedure"]["state"] != "running").then_some(json)
            }
        },
    )
    .await;
    assert_eq!(finished["procedure"]["state"], "done", "{finished}");
    let steps = finished["procedure"]["steps"].to_string();
    assert!(steps.contains("resumed by a new leader"), "{steps}");
    assert_eq!(
        cordon_of(survivor_http, drained).await.flatten(),
        Some(format!("drained by procedure {id}")),
        "the cordon outlives the leader that set it"
    );
    meta.invalidate(&table);
    let route = meta.route(&table).await.expect("route");
    assert!(
        holders(&route.route).iter().all(|n| *n != drained),
        "{route:?}"
    );
    wait_for(
        "the drained node to hold nothing",
        Duration::from_secs(10),
        || {
            let empty = nodes[0].regions().is_empty();
            async move { empty.then_some(()) }
        },
    )
    .await;
    wait_led_by_routed_leaders(&route, &nodes).await;
    drop(nodes);
}
