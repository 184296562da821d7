//! Region leases: every heartbeat acknowledgement renews the leases of the regions the routes
//! give the node; a datanode that stops hearing from metasrv stops serving its regions once the
//! lease lapses.

use std::time::{Duration, Instant};

use metasrv::catalog::model::Value;
use metasrv::catalog::partition::Row;
use metasrv::Config;

use crate::harness::wait_for;
use crate::router::{cluster_config, cpu_table, create_request, node, rows, Cluster};

const LEASE: Duration = Duration::from_millis(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_renew_leases_and_a_cut_off_node_stops_serving() {
    let (_fixture, store) = crate::store_conformance::embedded();
    let config = Config {
        region_lease: LEASE,
        ..cluster_config()
    };
    let cluster = Cluster::start(store, config, &[node(1), node(2)]).await;
    let table = cpu_table("leased");
    let (_, route) = cluster
        .meta
        .create_table(create_request(&table, 4, 1))
        .await
        .expect("create");
    // Renewals keep every region leased well past the first lease that came with OpenRegion.
    tokio::time::sleep(LEASE * 2).await;
    let mut leased: Vec<u64> = cluster.nodes.iter().flat_map(|n| n.leased_regions()).collect();
    leased.sort_unstable();
    let mut routed: Vec<u64> = route.route.regions.iter().map(|r| r.region_id).collect();
    routed.sort_unstable();
    assert_eq!(leased, routed, "heartbeats renew the lease of every routed region");
    cluster.frontend.insert(rows(&table, 100)).await.expect("insert while leased");

    // metasrv goes away: nobody renews; the datanodes refuse writes once their leases lapse.
    let cut_at = Instant::now();
    let frontend = cluster.frontend;
    cluster.server.stop().await;
    let row = Row::from([
        ("host".to_string(), Value::String("h".into())),
        ("ts".to_string(), Value::Int64(1)),
    ]);
    wait_for("writes to be refused after the lease", Duration::from_secs(5), || {
        let batch = vec![(table.clone(), row.clone())];
        let frontend = &frontend;
        async move { frontend.insert(batch).await.is_err().then_some(()) }
    })
    .await;
    let refused_after = cut_at.elapsed();
    assert!(
        refused_after <= LEASE + Duration::from_millis(1500),
        "writes were still accepted {refused_after:?} after metasrv stopped renewing"
    );
    assert!(
        cluster.nodes.iter().all(|n| n.leased_regions().is_empty()),
        "every lease lapsed"
    );
}
