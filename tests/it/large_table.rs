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

/// A failover of a node leading one region in each of about 110 tables, on etcd: the moved
/// routes go out several tables to a transaction (under etcd's 128 operations), not one
/// transaction per table; every region ends led by a live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_across_many_tables_writes_their_routes_together_on_etcd() {
    const TABLES: usize = 330;
    let etcd = EtcdProcess::start();
    let prefix = "/many_tables";
    let store: Arc<dyn KvBackend> = etcd.store(prefix, CLUSTER).await;
    let mut cluster = Cluster::start(
        store,
        crate::failover::config(),
        &[node(1), node(2), node(3)],
    )
    .await;
    let tables: Vec<_> = (0..TABLES)
        .map(|i| cpu_table(&format!("many_{i}")))
        .collect();
    let mut on_node_1 = Vec::new();
    for table in &tables {
        let (_, route) = cluster
            .meta
            .create_table(create_request(table, 1, 1))
            .await
            .expect("create");
        if route.route.regions[0].leader.id == 1 {
            on_node_1.push((table.clone(), route.info.id));
        }
    }
    assert!(
        on_node_1.len() > 100,
        "node 1 leads a region in more tables than one transaction takes: {}",
        on_node_1.len()
    );

    cluster.nodes.remove(0).kill();
    let moved: Vec<_> = on_node_1.iter().map(|(table, _)| table.clone()).collect();
    wait_for(
        "every region of node 1 led by a live node",
        Duration::from_secs(30),
        || {
            let meta = cluster.meta.clone();
            let moved = moved.clone();
            async move {
                for chunk in moved.chunks(100) {
                    for table in chunk {
                        meta.invalidate(table);
                    }
                    let routes = meta.routes(chunk).await.ok()?;
                    if routes
                        .iter()
                        .any(|r| r.route.regions.iter().any(|region| region.leader.id == 1))
                    {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;

    // Read the moved routes' revisions straight from etcd: routes written in one transaction
    // share theirs.
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("etcd client");
    let mut revisions = std::collections::BTreeSet::new();
    for (_, table_id) in &on_node_1 {
        let key = format!(
            "{prefix}/{CLUSTER}/{}",
            String::from_utf8_lossy(&keys::table_route(*table_id))
        );
        let read = client.get(key.as_str(), None).await.expect("read a route");
        let kv = read.kvs().first().expect("the route is stored");
        revisions.insert(kv.mod_revision());
    }
    // The failover moves its tables in up to 32 batches, each written as its targets
    // confirm; one transaction per table (the old way) would give one revision per route.
    assert!(
        revisions.len() * 2 <= on_node_1.len(),
        "{} moved routes were written in {} transactions: not grouped",
        on_node_1.len(),
        revisions.len()
    );
    cluster.server.stop().await;
}

/// etcd counts an "unchanged since" compare as two of its compares, and refuses a transaction
/// of more than 128: the store takes 64 such compares to etcd and refuses 65 itself, as too
/// large (callers that group writes split on that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_etcds_operation_limit_is_refused_as_too_large() {
    use metasrv::store::{Compare, StoreError, Txn, TxnOp};
    let etcd = EtcdProcess::start();
    let store: Arc<dyn KvBackend> = etcd.store("/txn_limit", CLUSTER).await;
    let txn = |compares: usize| Txn {
        compare: (0..compares)
            .map(|i| Compare::UnchangedSince {
                key: format!("k{i}").into_bytes(),
                revision: 1,
            })
            .collect(),
        success: vec![TxnOp::Put {
            key: b"done".to_vec(),
            value: b"1".to_vec(),
        }],
        failure: vec![],
    };
    let at_limit = store
        .txn(txn(64))
        .await
        .expect("128 of etcd's compares are accepted");
    assert!(
        !at_limit.succeeded,
        "the keys do not exist: the compares fail"
    );
    match store.txn(txn(65)).await {
        Err(StoreError::TooLarge(reason)) => assert!(reason.contains("130"), "{reason}"),
        other => panic!("65 compares (130 for etcd) were not refused as too large: {other:?}"),
    }
}
