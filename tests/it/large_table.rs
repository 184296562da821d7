//! The largest table metasrv accepts, on etcd with its default limits (128 operations per
//! transaction, 1.5 MiB per request): 1,024 regions with 3 copies each is created, a node
//! holding a quarter of its copies is drained, and the table is dropped. Every step commits,
//! the drain's many route moves are written in a few group commits, and the drop leaves
//! nothing of the table in etcd or on the datanodes.

use std::sync::Arc;
use std::time::Duration;

use metasrv::catalog::manager::keys;
use metasrv::proto::v1 as pb;
use metasrv::store::KvBackend;

use crate::harness::{http_get, http_request, wait_for, EtcdProcess};
use crate::router::{cluster_config, cpu_table, create_request, node, Cluster, CLUSTER};

const REGIONS: u32 = 1024;
const COPIES: u32 = 3;
const PREFIX: &str = "/large_table";

/// The table's three records (name, info, route) that are still stored.
async fn records_of_table(
    store: &Arc<dyn KvBackend>,
    table_id: u64,
    name: &metasrv::catalog::model::TableName,
) -> Vec<String> {
    let keys = vec![
        keys::table_name(name),
        keys::table(table_id),
        keys::table_route(table_id),
    ];
    let stored = store
        .batch_get(keys)
        .await
        .expect("read the table's records");
    stored
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1024_region_table_with_3_copies_is_created_drained_and_dropped_on_etcd() {
    let etcd = EtcdProcess::start();
    let store: Arc<dyn KvBackend> = etcd.store(PREFIX, CLUSTER).await;
    let config = metasrv::Config {
        max_regions_per_table: REGIONS,
        instruction_timeout: Duration::from_secs(20),
        ..cluster_config()
    };
    let nodes: Vec<_> = (1..=4).map(node).collect();
    let cluster = Cluster::start(store.clone(), config, &nodes).await;
    let table = cpu_table("largest");

    // Created: the route of 3,072 copies is written with the table's other records in one
    // transaction, under etcd's request limit.
    let (_, route) = cluster
        .meta
        .create_table(create_request(&table, REGIONS, COPIES))
        .await
        .expect("a 1,024 x 3 create commits on etcd");
    let table_id = route.info.id;
    assert_eq!(route.route.regions.len(), REGIONS as usize);
    for region in &route.route.regions {
        let mut holders: Vec<u64> = std::iter::once(region.leader.id)
            .chain(region.followers.iter().map(|f| f.id))
            .collect();
        holders.sort_unstable();
        holders.dedup();
        assert_eq!(holders.len(), COPIES as usize, "{region:?}");
    }
    let on_node_1 = route
        .route
        .regions
        .iter()
        .filter(|r| r.leader.id == 1 || r.followers.iter().any(|f| f.id == 1))
        .count();
    let per_node: Vec<usize> = (1..=4)
        .map(|id| {
            route
                .route
                .regions
                .iter()
                .filter(|r| r.leader.id == id || r.followers.iter().any(|f| f.id == id))
                .count()
        })
        .collect();
    assert_eq!(
        on_node_1, 768,
        "3,072 copies spread evenly over 4 nodes: copies per node {per_node:?}"
    );

    // Drained: node 1's 768 copies move to the one node of each region that has none.
    let http = cluster.server.http_addr;
    let (code, body) = http_request(http, "POST", "/v1/nodes/1/drain").await;
    assert_eq!(code, 202, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).expect("json");
    let id = started["procedure"]["id"]
        .as_str()
        .expect("procedure id")
        .to_owned();
    let finished = wait_for("the drain to finish", Duration::from_secs(90), || {
        let path = format!("/v1/procedures/{id}");
        async move {
            let (_, body) = http_get(http, &path).await;
            let procedure: serde_json::Value = serde_json::from_str(&body).ok()?;
            let procedure = procedure["procedure"].clone();
            (procedure["state"] != "running").then_some(procedure)
        }
    })
    .await;
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["progress"]["moved"], 768, "{finished}");
    cluster.meta.invalidate(&table);
    let drained = cluster
        .meta
        .route(&table)
        .await
        .expect("route after the drain");
    assert!(
        drained.route.version > route.route.version,
        "the drain moved the route"
    );
    // Group commit: 768 moves of one table's route took far fewer writes than moves.
    let writes = drained.route.version - route.route.version;
    assert!(
        writes < 768 / 4,
        "768 route moves took {writes} route writes: moves are not group committed"
    );
    for region in &drained.route.regions {
        let holders: Vec<u64> = std::iter::once(region.leader.id)
            .chain(region.followers.iter().map(|f| f.id))
            .collect();
        assert!(!holders.contains(&1), "{region:?}");
        assert_eq!(
            holders.len(),
            COPIES as usize,
            "three copies kept: {region:?}"
        );
    }
    cluster
        .frontend
        .insert(crate::router::rows(&table, 2048))
        .await
        .expect("writes after the drain");

    // Dropped: the table's records go in one transaction, its regions are closed everywhere.
    let mut router = cluster.meta.router();
    let dropped = router
        .drop_table(pb::DropTableRequest {
            header: metasrv::client::header(CLUSTER, 0),
            table_name: Some((&table).into()),
            if_exists: false,
        })
        .await
        .expect("a 1,024 x 3 drop commits on etcd")
        .into_inner();
    assert!(dropped.dropped);
    cluster.meta.invalidate(&table);
    let gone = cluster.meta.route(&table).await;
    assert!(gone.is_err(), "the dropped table still routes: {gone:?}");
    wait_for(
        "every datanode to close the table's regions",
        Duration::from_secs(30),
        || {
            let held: usize = cluster.nodes.iter().map(|n| n.regions().len()).sum();
            async move { (held == 0).then_some(()) }
        },
    )
    .await;
    let left = records_of_table(&store, table_id, &table).await;
    assert!(left.is_empty(), "the drop left keys behind: {left:?}");
    cluster.server.stop().await;
}
