//! A follower keeps a standby copy of the catalog and leads with it. Every change made while it
//! stood by is in what it serves: tables created and dropped, a region migrated, a record
//! corrupted behind metasrv's back (quarantined, as a load from the store would), and a table
//! created the moment before the hand-over.

use std::time::Duration;

use metasrv::catalog::manager::keys;
use metasrv::client::{header, MetaClient};
use metasrv::proto::v1 as pb;
use metasrv::store::KeyValue;

use crate::election::{pair_with_table, wait_for_one_leader};
use crate::harness::{http_get, http_request, wait_for, MetasrvProcess};
use crate::router::{cpu_table, create_request, CLUSTER};

/// A route of `table` as `member` serves it to a client that has cached nothing.
async fn fresh_route(
    member: &MetasrvProcess,
    table: &metasrv::catalog::model::TableName,
) -> Result<metasrv::catalog::model::TableRoute, String> {
    let meta = MetaClient::connect(&[member.grpc_addr.to_string()], CLUSTER, 0)
        .await
        .map_err(|e| e.to_string())?;
    let cached = meta.route(table).await.map_err(|e| e.to_string())?;
    Ok(cached.route.clone())
}

/// Migrates `region` through `member`'s HTTP API to the next of the three datanodes, waits
/// for it to finish, and returns the node it moved to.
async fn migrate_to_next_node(
    member: &MetasrvProcess,
    region: &metasrv::catalog::model::RegionRoute,
) -> u64 {
    let to = (region.leader.id % 3) + 1;
    let (code, body) = http_request(
        member.http_addr,
        "POST",
        &format!("/v1/regions/{}/migrate?to={to}&wait=true", region.region_id),
    )
    .await;
    assert_eq!(
        code, 200,
        "migration of region {} on member {}: {body}",
        region.region_id, member.http_addr
    );
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_over_with_its_standby_copy_and_serves_every_change() {
    let pair = pair_with_table(&[], "standby_first").await;
    let leader = &pair.members[pair.leader];
    let successor = 1 - pair.leader;
    let meta = &pair.meta;

    // Changes while the other member stands by.
    let created = ["standby_a", "standby_b", "standby_c"].map(cpu_table);
    for table in &created {
        meta.create_table(create_request(table, 4, 1))
            .await
            .expect("create");
    }
    let mut router = pb::router_client::RouterClient::new(
        metasrv::client::connect(&leader.grpc_addr.to_string())
            .await
            .expect("connect to the leader"),
    );
    let dropped = router
        .drop_table(pb::DropTableRequest {
            header: header(CLUSTER, 0),
            table_name: Some((&created[1]).into()),
            if_exists: false,
        })
        .await
        .expect("drop")
        .into_inner();
    assert!(dropped.dropped);
    let moved = fresh_route(leader, &created[0]).await.expect("a route");
    let to = migrate_to_next_node(leader, &moved.regions[0]).await;
    let moved = fresh_route(leader, &created[0]).await.expect("a route");
    assert_eq!(
        moved.regions[0].leader.id, to,
        "the migration moved the route"
    );

    // A table written behind metasrv's back with a route nobody can read.
    let store = pair.etcd.store("/ha", CLUSTER).await;
    let first_id = moved.table_id;
    let info = store
        .batch_get(vec![keys::table(first_id)])
        .await
        .expect("read an info");
    let mut info: serde_json::Value =
        serde_json::from_slice(&info[0].value).expect("a stored info is JSON");
    let corrupt_id = 900_000u64;
    let corrupt = cpu_table("standby_corrupt");
    info["id"] = corrupt_id.into();
    info["name"]["table"] = "standby_corrupt".into();
    store
        .batch_put(vec![
            KeyValue::new(keys::table_name(&corrupt), corrupt_id.to_string()),
            KeyValue::new(keys::table(corrupt_id), info.to_string()),
            KeyValue::new(keys::table_route(corrupt_id), "{\"not\": \"a route"),
        ])
        .await
        .expect("write the corrupt table");

    // The last table, created the moment before the hand-over.
    let last = cpu_table("standby_last");
    meta.create_table(create_request(&last, 4, 1))
        .await
        .expect("create");
    let served = [
        pair.table.clone(),
        created[0].clone(),
        created[2].clone(),
        last.clone(),
    ];
    let mut before = Vec::new();
    for table in &served {
        before.push(fresh_route(leader, table).await.expect("a route"));
    }
    let (code, body) = http_request(leader.http_addr, "POST", "/v1/leader/resign").await;
    assert_eq!(code, 200, "resign: {body}");

    let refs: Vec<&MetasrvProcess> = pair.members.iter().collect();
    let new_leader = wait_for_one_leader(&refs, Duration::from_secs(20)).await;
    assert_eq!(new_leader, successor, "the member that stood by leads");
    let successor = &pair.members[successor];
    let (_, health) = http_get(successor.http_addr, "/health").await;
    let health: serde_json::Value = serde_json::from_str(&health).expect("health is JSON");
    assert_eq!(
        health["catalog_load"]["source"],
        "standby",
        "the new leader used its standby copy: {health}\n{}",
        successor.log()
    );
    assert_eq!(health["catalog_load"]["tables"], served.len(), "{health}");
    let quarantined: Vec<&str> = health["quarantined"]
        .as_array()
        .expect("a quarantine list")
        .iter()
        .filter_map(|record| record["key"].as_str())
        .collect();
    let key = |key: Vec<u8>| String::from_utf8(key).expect("utf-8 key");
    assert_eq!(
        quarantined,
        vec![
            key(keys::table_name(&corrupt)),
            key(keys::table_route(corrupt_id))
        ],
        "the corrupt table is set aside as a load from the store sets it aside"
    );

    for (table, before) in served.iter().zip(&before) {
        let after = wait_for(
            &format!("{table} served by the new leader"),
            Duration::from_secs(10),
            || async { fresh_route(successor, table).await.ok() },
        )
        .await;
        assert_eq!(&after, before, "{table}'s route after the hand-over");
    }
    let gone = fresh_route(successor, &created[1])
        .await
        .expect_err("the dropped table is gone");
    assert!(gone.contains("does not exist"), "{gone}");
    // The new leader writes with what it holds: DDL, and a route move compared by revision.
    meta.create_table(create_request(&cpu_table("standby_after"), 2, 1))
        .await
        .expect("DDL on the new leader");
    let to = migrate_to_next_node(successor, &before[1].regions[1]).await;
    let moved = fresh_route(successor, &created[0]).await.expect("a route");
    assert_eq!(moved.regions[1].leader.id, to);
}
