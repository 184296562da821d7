//! Region leases: every heartbeat acknowledgement renews the leases of the regions the routes
//! give the node; a datanode that stops hearing from metasrv stops serving its regions once the
//! lease lapses.

use std::time::{Duration, Instant};

use metasrv::proto::sim::datanode_client::DatanodeClient;
use metasrv::proto::sim::WriteRequest;
use metasrv::sim::is_invalid_route;
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
    let mut leased: Vec<u64> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.leased_regions())
        .collect();
    leased.sort_unstable();
    let mut routed: Vec<u64> = route.route.regions.iter().map(|r| r.region_id).collect();
    routed.sort_unstable();
    assert_eq!(
        leased, routed,
        "heartbeats renew the lease of every routed region"
    );
    cluster
        .frontend
        .insert(rows(&table, 100))
        .await
        .expect("insert while leased");

    // metasrv goes away: nobody renews; the datanodes refuse writes once their leases lapse.
    let cut_at = Instant::now();
    cluster.server.stop().await;
    let mut clients = Vec::new();
    for region in &route.route.regions {
        let channel = metasrv::client::connect(&region.leader.addr)
            .await
            .expect("connect to the datanode");
        clients.push((DatanodeClient::new(channel), region.region_id));
    }
    wait_for(
        "every region to refuse writes",
        Duration::from_secs(5),
        || {
            let clients = clients.clone();
            async move {
                for (mut client, region_id) in clients {
                    let refused = client
                        .write(WriteRequest {
                            region_id,
                            route_version: 1,
                            rows: 1,
                        })
                        .await
                        .err()
                        .filter(is_invalid_route);
                    refused.as_ref()?;
                }
                Some(())
            }
        },
    )
    .await;
    let refused_after = cut_at.elapsed();
    assert!(
        refused_after <= LEASE + Duration::from_millis(500),
        "writes were still accepted {refused_after:?} after metasrv stopped renewing"
    );
    assert!(
        cluster.nodes.iter().all(|n| n.leased_regions().is_empty()),
        "every lease lapsed"
    );
}
