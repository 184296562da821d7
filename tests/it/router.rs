//! Catalog, CREATE TABLE with region allocation, routes and the frontend client, end to end:
//! an in-process metasrv on each backend, simulated datanodes with a data plane, and the
//! MetaClient + simulated frontend doing the seed's Create Table, Insert and Select flows.

use std::sync::Arc;
use std::time::Duration;

use metasrv::actors::cluster_view::NodeStatus;
use metasrv::catalog::model::{TableName, Value};
use metasrv::catalog::partition::Row;
use metasrv::client::{header, MetaClient, ReadPriority};
use metasrv::proto::v1 as pb;
use metasrv::selector::SelectorKind;
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimFrontend};
use metasrv::store::KvBackend;
use metasrv::Config;
use tonic::Code;

use crate::harness::{wait_for, TestServer};

pub const CLUSTER: u64 = 4;
const INTERVAL: Duration = Duration::from_millis(100);

pub fn cluster_config() -> Config {
    Config {
        cluster_id: CLUSTER,
        heartbeat_interval: INTERVAL,
        instruction_timeout: Duration::from_secs(5),
        max_regions_per_table: 64,
        ..Config::default()
    }
}

/// A metasrv with simulated datanodes and a frontend.
pub struct Cluster {
    pub server: TestServer,
    pub nodes: Vec<SimDatanode>,
    pub meta: Arc<MetaClient>,
    pub frontend: SimFrontend,
}

impl Cluster {
    pub async fn start(
        store: Arc<dyn KvBackend>,
        config: Config,
        nodes: &[SimDatanodeConfig],
    ) -> Self {
        let server = TestServer::start(store, config).await;
        let mut sims = Vec::new();
        for node in nodes {
            sims.push(
                SimDatanode::start_serving(server.channel().await, node.clone())
                    .await
                    .expect("simulated datanode starts"),
            );
        }
        let ids: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
        let view = server.cluster_view.clone();
        wait_for("every datanode alive", Duration::from_secs(10), || {
            let view = view.clone();
            let ids = ids.clone();
            async move {
                let listed = crate::harness::listed_nodes(&view).await?;
                ids.iter()
                    .all(|id| {
                        listed
                            .iter()
                            .any(|n| n.id == *id && n.status == NodeStatus::Alive && n.connected)
                    })
                    .then_some(())
            }
        })
        .await;
        let meta = Arc::new(
            MetaClient::connect(&[server.grpc_addr.to_string()], CLUSTER, 0)
                .await
                .expect("meta client connects"),
        );
        let frontend = SimFrontend::new(meta.clone());
        Self {
            server,
            nodes: sims,
            meta,
            frontend,
        }
    }
}

/// Refetches `table`'s route (bounded by `deadline`) until `accept` holds for it.
pub async fn wait_for_route(
    meta: &Arc<MetaClient>,
    table: &TableName,
    what: &str,
    deadline: Duration,
    accept: impl Fn(&metasrv::client::CachedRoute) -> bool,
) -> Arc<metasrv::client::CachedRoute> {
    let accept = &accept;
    wait_for(what, deadline, || {
        let meta = meta.clone();
        let table = table.clone();
        async move {
            meta.invalidate(&table);
            let route = meta.route(&table).await.ok()?;
            accept(&route).then_some(route)
        }
    })
    .await
}

pub fn node(id: u64) -> SimDatanodeConfig {
    SimDatanodeConfig {
        interval: INTERVAL,
        ..SimDatanodeConfig::new(CLUSTER, id)
    }
}

pub fn cpu_table(name: &str) -> TableName {
    TableName::new("greptime", "public", name)
}

fn column(name: &str, data_type: pb::ColumnType, nullable: bool) -> pb::ColumnDef {
    pb::ColumnDef {
        name: name.into(),
        data_type: data_type as i32,
        nullable,
    }
}

pub fn schema() -> pb::TableSchema {
    pb::TableSchema {
        columns: vec![
            column("host", pb::ColumnType::String, false),
            column("ts", pb::ColumnType::Timestamp, false),
            column("cpu", pb::ColumnType::Float64, true),
        ],
        time_index: "ts".into(),
        primary_key: vec!["host".into()],
        options: Default::default(),
    }
}

pub fn hash_rule(partitions: u32) -> Option<pb::PartitionRule> {
    Some(pb::PartitionRule {
        rule: Some(pb::partition_rule::Rule::Hash(pb::HashPartitioning {
            columns: vec!["host".into()],
            partitions,
        })),
    })
}

pub fn create_request(name: &TableName, partitions: u32, replicas: u32) -> pb::CreateTableRequest {
    pb::CreateTableRequest {
        header: header(CLUSTER, 0),
        table_name: Some(name.into()),
        schema: Some(schema()),
        partition_rule: hash_rule(partitions),
        if_not_exists: false,
        replicas,
    }
}

pub fn rows(table: &TableName, count: usize) -> Vec<(TableName, Row)> {
    (0..count)
        .map(|i| {
            let row = Row::from([
                ("host".to_string(), Value::String(format!("host-{i}"))),
                ("ts".to_string(), Value::Int64(1_700_000_000_000 + i as i64)),
                ("cpu".to_string(), Value::Float64(i as f64 / 10.0)),
            ]);
            (table.clone(), row)
        })
        .collect()
}

/// Route answers NotFound for `table`.
async fn assert_no_route(
    router: &mut metasrv::proto::v1::router_client::RouterClient<metasrv::client::AuthedChannel>,
    table: &TableName,
) {
    let result = router
        .route(pb::RouteRequest {
            header: header(CLUSTER, 0),
            table_names: vec![table.into()],
        })
        .await;
    assert_status(result, Code::NotFound, "does not exist");
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "{:?} should mention {needle:?}",
                status.message()
            );
        }
        Ok(value) => panic!("expected {code:?} ({needle}), got {value:?}"),
    }
}

pub mod cases {
    use super::*;

    /// The seed's flows: create with 8 partitions on 3 nodes, insert through the route cache,
    /// read by priority.
    pub async fn create_insert_and_select(store: Arc<dyn KvBackend>) {
        let cluster = Cluster::start(store, cluster_config(), &[node(1), node(2), node(3)]).await;
        let table = cpu_table("cpu");
        let (created, route) = cluster
            .meta
            .create_table(create_request(&table, 8, 2))
            .await
            .expect("create table");
        assert!(created);
        assert_eq!(route.route.version, 1);
        assert_eq!(route.route.regions.len(), 8);
        // Each region's copies are on distinct nodes, and each node holds what the route says.
        for region in &route.route.regions {
            assert_eq!(region.followers.len(), 1);
            assert_ne!(region.leader.id, region.followers[0].id);
            let leader = &cluster.nodes[region.leader.id as usize - 1];
            assert_eq!(leader.addr(), region.leader.addr);
            assert!(leader.regions().contains_key(&region.region_id));
            let follower = &cluster.nodes[region.followers[0].id as usize - 1];
            assert!(follower.regions().contains_key(&region.region_id));
        }
        // Least-loaded placement spreads 8 leaders over 3 empty nodes as 3/3/2.
        let mut leaders = [0; 3];
        for region in &route.route.regions {
            leaders[region.leader.id as usize - 1] += 1;
        }
        leaders.sort_unstable();
        assert_eq!(leaders, [2, 3, 3]);

        let written = cluster
            .frontend
            .insert(rows(&table, 1000))
            .await
            .expect("insert");
        assert_eq!(written, 1000);
        assert_eq!(
            cluster.meta.route_fetches(),
            0,
            "the create cached the route"
        );
        let per_node: usize = cluster
            .nodes
            .iter()
            .map(|n| {
                n.accepted_writes()
                    .iter()
                    .map(|w| w.rows as usize)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(per_node, 1000);
        assert_eq!(cluster.frontend.invalid_routes(), 0);

        // A second client fetches the same route lazily, once.
        let other = MetaClient::connect(&[cluster.server.grpc_addr.to_string()], CLUSTER, 0)
            .await
            .expect("connect");
        let fetched = other.route(&table).await.expect("route");
        assert_eq!(fetched.route, route.route);
        other.route(&table).await.expect("route again");
        assert_eq!(other.route_fetches(), 1);

        // Reads: leader first reads the leader; followers preferred reads a follower.
        let (peer, read) = cluster
            .frontend
            .read_region(&table, 0, ReadPriority::LeaderFirst)
            .await
            .expect("read");
        assert_eq!(peer, route.route.regions[0].leader);
        assert!(read.is_leader);
        let (peer, read) = cluster
            .frontend
            .read_region(&table, 0, ReadPriority::FollowersPreferred)
            .await
            .expect("read");
        assert_eq!(peer, route.route.regions[0].followers[0]);
        assert!(!read.is_leader);

        // Catalog calls.
        let mut router = cluster.meta.router();
        router
            .create_schema(pb::CreateSchemaRequest {
                header: header(CLUSTER, 0),
                catalog: "greptime".into(),
                name: "metrics".into(),
                if_not_exists: false,
            })
            .await
            .expect("create schema");
        let schemas = router
            .list_schemas(pb::ListSchemasRequest {
                header: header(CLUSTER, 0),
                catalog: "greptime".into(),
            })
            .await
            .expect("list")
            .into_inner()
            .names;
        assert_eq!(schemas, vec!["metrics", "public"]);
        cluster.server.stop().await;
    }

    /// A stale cached route (the table was dropped and recreated elsewhere) gets InvalidRoute
    /// from the datanode; the frontend refetches and the insert succeeds.
    pub async fn invalid_route_makes_the_frontend_refetch(store: Arc<dyn KvBackend>) {
        let cluster = Cluster::start(store, cluster_config(), &[node(1), node(2), node(3)]).await;
        let table = cpu_table("moving");
        cluster
            .meta
            .create_table(create_request(&table, 4, 1))
            .await
            .expect("create");
        cluster
            .frontend
            .insert(rows(&table, 100))
            .await
            .expect("insert");

        // Another frontend drops and recreates the table: new id, new regions.
        let other = MetaClient::connect(&[cluster.server.grpc_addr.to_string()], CLUSTER, 0)
            .await
            .expect("connect");
        let mut router = other.router();
        router
            .drop_table(pb::DropTableRequest {
                header: header(CLUSTER, 0),
                table_name: Some((&table).into()),
                if_exists: false,
            })
            .await
            .expect("drop");
        let (_, recreated) = other
            .create_table(create_request(&table, 4, 1))
            .await
            .expect("recreate");
        // The old regions get closed on the datanodes.
        let old = cluster.meta.cached(&table).expect("still cached");
        assert_ne!(old.info.id, recreated.info.id);
        for region in &old.route.regions {
            let holder = &cluster.nodes[region.leader.id as usize - 1];
            wait_for(
                "the dropped region to close",
                Duration::from_secs(5),
                || {
                    let closed = !holder.regions().contains_key(&region.region_id);
                    async move { closed.then_some(()) }
                },
            )
            .await;
        }

        let fetches_before = cluster.meta.route_fetches();
        let written = cluster
            .frontend
            .insert(rows(&table, 100))
            .await
            .expect("insert after refetch");
        assert_eq!(written, 100);
        assert!(
            cluster.frontend.invalid_routes() > 0,
            "a datanode said InvalidRoute"
        );
        assert_eq!(
            cluster.meta.route_fetches(),
            fetches_before + 1,
            "one refetch"
        );
        assert_eq!(
            cluster.meta.cached(&table).map(|c| c.info.id),
            Some(recreated.info.id)
        );
        cluster.server.stop().await;
    }

    /// Concurrent creates of one name: exactly one wins; the others get AlreadyExists (or the
    /// winner's table with if_not_exists); losers' regions are closed again.
    pub async fn concurrent_creates_have_one_winner(store: Arc<dyn KvBackend>) {
        let cluster = Cluster::start(store, cluster_config(), &[node(1), node(2), node(3)]).await;
        let table = cpu_table("contended");
        let attempts: Vec<_> = (0..6)
            .map(|_| {
                let mut router = cluster.meta.router();
                let request = create_request(&table, 2, 1);
                tokio::spawn(async move { router.create_table(request).await })
            })
            .collect();
        let mut winners = Vec::new();
        for attempt in attempts {
            match attempt.await.expect("task") {
                Ok(response) => winners.push(response.into_inner()),
                Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one create succeeds");
        let winner_id = winners[0].route.as_ref().map(|r| r.table_id);

        let with_if_not_exists: Vec<_> = (0..4)
            .map(|_| {
                let mut router = cluster.meta.router();
                let mut request = create_request(&table, 2, 1);
                request.if_not_exists = true;
                tokio::spawn(async move { router.create_table(request).await })
            })
            .collect();
        for attempt in with_if_not_exists {
            let response = attempt
                .await
                .expect("task")
                .expect("if_not_exists succeeds")
                .into_inner();
            assert!(!response.created);
            assert_eq!(response.route.map(|r| r.table_id), winner_id);
        }

        // Only the winner's regions stay open.
        let winner_regions: Vec<u64> = winners[0]
            .route
            .as_ref()
            .map(|r| r.regions.iter().map(|g| g.region_id).collect())
            .unwrap_or_default();
        wait_for(
            "the losers' regions to close",
            Duration::from_secs(10),
            || {
                let open: Vec<u64> = cluster
                    .nodes
                    .iter()
                    .flat_map(|n| n.regions().into_keys())
                    .collect();
                let only_winner = open.len() == winner_regions.len()
                    && open.iter().all(|r| winner_regions.contains(r));
                async move { only_winner.then_some(()) }
            },
        )
        .await;
        cluster.server.stop().await;
    }

    /// Bad definitions and impossible requests are refused with the reason.
    pub async fn invalid_requests_are_refused(store: Arc<dyn KvBackend>) {
        let cluster = Cluster::start(store, cluster_config(), &[node(1), node(2)]).await;
        let mut router = cluster.meta.router();
        let table = cpu_table("bad");
        let mut cases: Vec<(pb::CreateTableRequest, Code, &str)> = Vec::new();
        let mut bad_name = create_request(&cpu_table("no such name!"), 2, 1);
        bad_name.if_not_exists = false;
        cases.push((bad_name, Code::InvalidArgument, "may only use"));
        let mut no_time_index = create_request(&table, 2, 1);
        if let Some(s) = no_time_index.schema.as_mut() {
            s.time_index.clear();
        }
        cases.push((no_time_index, Code::InvalidArgument, "no time index"));
        cases.push((
            create_request(&table, 0, 1),
            Code::InvalidArgument,
            "zero regions",
        ));
        cases.push((
            create_request(&table, 65, 1),
            Code::InvalidArgument,
            "over the limit",
        ));
        let range = |bounds: Vec<(Option<&str>, Option<&str>)>| {
            let mut request = create_request(&table, 1, 1);
            request.partition_rule = Some(pb::PartitionRule {
                rule: Some(pb::partition_rule::Rule::Range(pb::RangePartitioning {
                    column: "host".into(),
                    partitions: bounds
                        .into_iter()
                        .map(|(l, u)| pb::RangeBound {
                            lower: l.map(|v| pb::Value {
                                value: Some(pb::value::Value::StringValue(v.into())),
                            }),
                            upper: u.map(|v| pb::Value {
                                value: Some(pb::value::Value::StringValue(v.into())),
                            }),
                        })
                        .collect(),
                })),
            });
            request
        };
        cases.push((
            range(vec![(None, Some("m")), (Some("p"), None)]),
            Code::InvalidArgument,
            "gap",
        ));
        cases.push((
            range(vec![(None, Some("p")), (Some("m"), None)]),
            Code::InvalidArgument,
            "overlap",
        ));
        cases.push((
            range(vec![(None, Some("m")), (Some("m"), Some("z"))]),
            Code::InvalidArgument,
            "cover the key space",
        ));
        cases.push((
            create_request(&table, 2, 3),
            Code::FailedPrecondition,
            "need 3 live datanodes",
        ));
        cases.push((
            create_request(&TableName::new("greptime", "nope", "t"), 1, 1),
            Code::NotFound,
            "schema greptime.nope",
        ));
        for (request, code, needle) in cases {
            assert_status(router.create_table(request).await, code, needle);
        }
        assert_no_route(&mut router, &table).await;
        assert_status(
            router
                .drop_table(pb::DropTableRequest {
                    header: header(CLUSTER, 0),
                    table_name: Some((&table).into()),
                    if_exists: false,
                })
                .await,
            Code::NotFound,
            "does not exist",
        );
        // Nothing of the refused tables was opened anywhere.
        assert!(cluster.nodes.iter().all(|n| n.regions().is_empty()));
        cluster.server.stop().await;
    }

    /// A datanode that never confirms OpenRegion: the create fails cleanly, writes nothing, and
    /// the regions that did open are closed again.
    pub async fn unconfirmed_create_rolls_back(store: Arc<dyn KvBackend>) {
        let config = Config {
            instruction_timeout: Duration::from_millis(500),
            selector: SelectorKind::RoundRobin,
            ..cluster_config()
        };
        let silent = SimDatanodeConfig {
            obey_instructions: false,
            ..node(3)
        };
        let cluster = Cluster::start(store.clone(), config, &[node(1), node(2), silent]).await;
        let table = cpu_table("unconfirmed");
        let mut router = cluster.meta.router();
        assert_status(
            router.create_table(create_request(&table, 3, 1)).await,
            Code::Unavailable,
            "did not answer",
        );
        wait_for(
            "opened regions to close again",
            Duration::from_secs(10),
            || {
                let open = cluster.nodes[..2].iter().any(|n| !n.regions().is_empty());
                async move { (!open).then_some(()) }
            },
        )
        .await;
        assert_no_route(&mut router, &table).await;
        assert_no_table_keys(&store).await;
        cluster.server.stop().await;
    }
}

/// No table name, info or route is in the store.
pub async fn assert_no_table_keys(store: &Arc<dyn KvBackend>) {
    use metasrv::store::{KeyRange, RangeRequest};
    for prefix in ["__meta/table_name/", "__meta/table/", "__meta/table_route/"] {
        let kvs = store
            .range(RangeRequest {
                range: KeyRange::prefix(prefix),
                ..Default::default()
            })
            .await
            .expect("range")
            .kvs;
        assert!(kvs.is_empty(), "{prefix} holds {kvs:?}");
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_fixture, store) = crate::store_conformance::embedded();
                    super::cases::$case(store).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_fixture, store) = crate::store_conformance::etcd(stringify!($case)).await;
                    super::cases::$case(store).await;
                }
            )*
        }
    };
}

on_both_backends!(
    create_insert_and_select,
    invalid_route_makes_the_frontend_refetch,
    concurrent_creates_have_one_winner,
    invalid_requests_are_refused,
    unconfirmed_create_rolls_back,
);

/// Every table info and route in the store has a name pointing at it: no half-written table.
async fn assert_catalog_consistent(
    store: &mut metasrv::proto::v1::store_client::StoreClient<tonic::transport::Channel>,
) -> Vec<String> {
    let scan = |prefix: &str| pb::RangeRequest {
        header: header(CLUSTER, 0),
        key: prefix.as_bytes().to_vec(),
        range_end: metasrv::store::prefix_end(prefix.as_bytes()),
        limit: 0,
        keys_only: false,
    };
    let names = store
        .range(scan("__meta/table_name/"))
        .await
        .expect("range")
        .into_inner()
        .kvs;
    let ids: Vec<String> = names
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect();
    for prefix in ["__meta/table/", "__meta/table_route/"] {
        let kvs = store
            .range(scan(prefix))
            .await
            .expect("range")
            .into_inner()
            .kvs;
        let mut found: Vec<String> = kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect();
        let mut expected = ids.clone();
        found.sort();
        expected.sort();
        assert_eq!(
            found, expected,
            "{prefix} entries must match the named tables"
        );
    }
    names
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// SIGKILL the metasrv while a CreateTable waits for datanodes: after a restart the table does
/// not exist, nothing of it is in the store, earlier tables are intact, and the name is free.
async fn crash_mid_create(dir: &std::path::Path, backend_args: &[&str]) {
    use crate::harness::{http_get, MetasrvProcess};
    use metasrv::proto::v1::store_client::StoreClient;
    use metasrv::sim::SimEvent;

    let env = [
        ("METASRV_SELECTOR", "round_robin"),
        ("METASRV_INSTRUCTION_TIMEOUT", "60s"),
        ("METASRV_ORPHAN_REGION_GRACE", "120s"),
    ];
    let mut args = vec!["--cluster-id", "4", "--heartbeat-interval", "100ms"];
    args.extend_from_slice(backend_args);
    let mut metasrv = MetasrvProcess::start(dir, &args, &env);
    metasrv.wait_until_leader().await;
    let grpc = metasrv.grpc_addr.to_string();
    let channel = metasrv::client::connect(&grpc).await.expect("connect");
    let silent = SimDatanodeConfig {
        obey_instructions: false,
        ..node(3)
    };
    let mut nodes = Vec::new();
    for config in [node(1), node(2), silent] {
        nodes.push(
            SimDatanode::start_serving(channel.clone(), config)
                .await
                .expect("sim starts"),
        );
    }
    let http = metasrv.http_addr;
    let all_alive = || async move {
        let (_, body) = http_get(http, "/v1/nodes").await;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let alive = json["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "alive" && n["connected"] == true)
            .count();
        (alive == 3).then_some(())
    };
    wait_for("3 alive datanodes", Duration::from_secs(10), all_alive).await;
    let meta = MetaClient::connect(std::slice::from_ref(&grpc), CLUSTER, 0)
        .await
        .expect("meta");
    // Round robin from node 1: "kept" lands on nodes 1 and 2, which confirm.
    let (_, kept) = meta
        .create_table(create_request(&cpu_table("kept"), 2, 1))
        .await
        .expect("create kept");

    // "doomed" needs node 3, which never confirms: the create waits.
    let mut router = meta.router();
    let doomed = tokio::spawn(async move {
        router
            .create_table(create_request(&cpu_table("doomed"), 3, 1))
            .await
    });
    for sim in &nodes {
        sim.wait_for_event(
            "the doomed table's OpenRegion",
            Duration::from_secs(10),
            |events| {
                events
                    .iter()
                    .filter(|e| matches!(e, SimEvent::Instruction(_)))
                    .count()
                    >= if sim.node_id() == 3 { 1 } else { 2 }
            },
        )
        .await
        .expect("every node got its OpenRegion");
    }
    metasrv.signal_and_wait("KILL");
    assert!(
        doomed.await.expect("task").is_err(),
        "a create cut by a crash must not report success"
    );
    drop(metasrv);

    // Restart on the same address so the simulated datanodes reconnect by themselves.
    let mut restart_args = args.clone();
    restart_args.extend_from_slice(&["--grpc-addr", grpc.as_str()]);
    let metasrv = MetasrvProcess::start(dir, &restart_args, &env);
    metasrv.wait_until_leader().await;
    let channel = metasrv::client::connect(&grpc).await.expect("reconnect");
    let mut store = StoreClient::new(channel);
    let names = assert_catalog_consistent(&mut store).await;
    assert_eq!(names, vec!["__meta/table_name/greptime/public/kept"]);

    let meta = MetaClient::connect(std::slice::from_ref(&grpc), CLUSTER, 0)
        .await
        .expect("meta");
    let route = meta.route(&cpu_table("kept")).await.expect("kept survives");
    assert_eq!(route.route, kept.route);
    match meta.route(&cpu_table("doomed")).await {
        Err(metasrv::client::ClientError::Status(s)) => assert_eq!(s.code(), Code::NotFound),
        other => panic!("doomed must not exist: {other:?}"),
    }
    // The name is free again once the datanodes are back.
    let http = metasrv.http_addr;
    let two_alive = || async move {
        let (_, body) = http_get(http, "/v1/nodes").await;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let alive = json["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "alive" && n["connected"] == true && n["id"] != 3)
            .count();
        (alive == 2).then_some(())
    };
    wait_for(
        "the obedient datanodes to reconnect",
        Duration::from_secs(15),
        two_alive,
    )
    .await;
    let (created, _) = meta
        .create_table(create_request(&cpu_table("doomed"), 2, 1))
        .await
        .expect("the name can be created after the crash");
    assert!(created);
    assert_catalog_consistent(&mut store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_create_leaves_nothing_embedded() {
    let dir = tempfile::tempdir().expect("temp dir");
    crash_mid_create(dir.path(), &["--data-dir", "data"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_create_leaves_nothing_etcd() {
    let etcd = crate::harness::EtcdProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoint = etcd.endpoint.clone();
    crash_mid_create(
        dir.path(),
        &[
            "--backend",
            "etcd",
            "--etcd-endpoints",
            endpoint.as_str(),
            "--etcd-key-prefix",
            "/crash",
        ],
    )
    .await;
}
