//! Control-plane safety: metasrv's own metadata is out of reach of the public Store and Election
//! APIs, whatever a client sends.

use std::sync::Arc;
use std::time::Duration;

use metasrv::actors::cluster_view::{ListNodes, NodeStatus};
use metasrv::sim::{SimDatanode, SimDatanodeConfig};

use metasrv::client::{header, store_client};
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::election_client::ElectionClient;
use metasrv::proto::v1::router_client::RouterClient;
use metasrv::store::embedded::EmbeddedStore;
use metasrv::store::KvBackend;
use metasrv::Config;
use tonic::Code;

use crate::harness::{wait_for, EtcdProcess, TestServer};

const CLUSTER: u64 = 13;

fn config() -> Config {
    Config {
        cluster_id: CLUSTER,
        ..Config::default()
    }
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
            assert!(
                status.message().contains("metasrv's own")
                    || status.message().contains("not granted")
                    || status.message().contains("not a candidacy"),
                "{what}: the reason should say whose key it is: {status:?}"
            );
        }
        Ok(answer) => panic!("{what} should be refused, got {answer:?}"),
    }
}

fn table_name() -> pb::TableName {
    pb::TableName {
        catalog_name: "greptime".into(),
        schema_name: "public".into(),
        table_name: "guarded".into(),
    }
}

async fn route_of_guarded_table(server: &TestServer) -> Result<pb::RouteResponse, tonic::Status> {
    RouterClient::new(server.channel().await)
        .route(pb::RouteRequest {
            header: header(CLUSTER, 0),
            table_names: vec![table_name()],
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn one_live_datanode(server: &TestServer) -> SimDatanode {
    let datanode =
        SimDatanode::start_serving(server.channel().await, SimDatanodeConfig::new(CLUSTER, 1))
            .await
            .expect("a simulated datanode starts");
    let view = server.cluster_view.clone();
    wait_for("the datanode alive", Duration::from_secs(10), || {
        let view = view.clone();
        async move {
            let nodes = view.send(ListNodes).await.ok()?;
            nodes
                .iter()
                .any(|n| n.id == 1 && n.status == NodeStatus::Alive)
                .then_some(())
        }
    })
    .await;
    datanode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_and_deletes_of_internal_keys_are_refused_and_the_catalog_survives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn KvBackend> =
        Arc::new(EmbeddedStore::open(dir.path()).expect("open the embedded store"));
    let server = TestServer::start(store, config()).await;
    let datanode = one_live_datanode(&server).await;
    RouterClient::new(server.channel().await)
        .create_table(pb::CreateTableRequest {
            header: header(CLUSTER, 0),
            table_name: Some(table_name()),
            schema: Some(crate::router::schema()),
            partition_rule: crate::router::hash_rule(4),
            if_not_exists: false,
            replicas: 1,
        })
        .await
        .expect("create a table");
    let mut client = store_client(server.channel().await);

    let put = |key: &[u8]| pb::PutRequest {
        header: header(CLUSTER, 0),
        key: key.to_vec(),
        value: b"x".to_vec(),
        prev_kv: false,
    };
    let delete_range = |key: &[u8], range_end: &[u8]| pb::DeleteRangeRequest {
        header: header(CLUSTER, 0),
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    };
    assert_denied(client.put(put(b"__meta/table/1")).await, "Put __meta/");
    assert_denied(
        client.put(put(b"__election/metasrv/1")).await,
        "Put __election/",
    );
    assert_denied(
        client
            .batch_put(pb::BatchPutRequest {
                header: header(CLUSTER, 0),
                kvs: vec![
                    pb::KeyValue {
                        key: b"user/a".to_vec(),
                        value: b"1".to_vec(),
                    },
                    pb::KeyValue {
                        key: b"__meta/maintenance".to_vec(),
                        value: b"true".to_vec(),
                    },
                ],
                prev_kv: false,
            })
            .await,
        "BatchPut with one internal key",
    );
    assert_denied(
        client
            .batch_delete(pb::BatchDeleteRequest {
                header: header(CLUSTER, 0),
                keys: vec![b"__meta/table_route/1".to_vec()],
                prev_kv: false,
            })
            .await,
        "BatchDelete",
    );
    assert_denied(
        client
            .compare_and_put(pb::CompareAndPutRequest {
                header: header(CLUSTER, 0),
                key: b"__meta/id/table".to_vec(),
                expect: Vec::new(),
                value: b"0".to_vec(),
            })
            .await,
        "CompareAndPut",
    );
    // Every key, every key from below the prefix, and a range that crosses it.
    assert_denied(
        client.delete_range(delete_range(b"\0", b"\0")).await,
        "DeleteRange of every key",
    );
    assert_denied(
        client.delete_range(delete_range(b"", b"\0")).await,
        "DeleteRange from the empty key",
    );
    assert_denied(
        client.delete_range(delete_range(b"A", b"z")).await,
        "DeleteRange across the prefix",
    );
    assert_denied(
        client.delete_range(delete_range(b"__meta/", b"")).await,
        "DeleteRange of one internal key",
    );

    // The user key space still works, including a delete that stops short of the prefix.
    client.put(put(b"user/a")).await.expect("a user put");
    let deleted = client
        .delete_range(delete_range(b"user/", b"user0"))
        .await
        .expect("a user delete")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    // Reads of internal keys are allowed (operators inspect them).
    let routes = client
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: b"__meta/table_route/".to_vec(),
            range_end: b"__meta/table_route0".to_vec(),
            limit: 0,
            keys_only: true,
        })
        .await
        .expect("read internal keys")
        .into_inner();
    assert_eq!(routes.kvs.len(), 1, "one table route: {routes:?}");

    // A restart loads the catalog intact.
    datanode.kill();
    server.stop().await;
    // The stopped server's last tasks release the file shortly after it stops.
    let store: Arc<dyn KvBackend> = Arc::new(
        wait_for(
            "the stopped server to release the embedded store",
            Duration::from_secs(10),
            || async { EmbeddedStore::open(dir.path()).ok() },
        )
        .await,
    );
    let server = TestServer::start(store, config()).await;
    let route = route_of_guarded_table(&server)
        .await
        .expect("the table survives the refused deletes and a restart");
    assert_eq!(route.routes[0].regions.len(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_clients_cannot_touch_metasrvs_own_election() {
    let etcd = EtcdProcess::start();
    let store = etcd.store("/security/election", CLUSTER).await;
    let prefix = store.as_etcd().expect("an etcd store").prefix().to_vec();
    let server = TestServer::start(store, config()).await;
    let mut client = store_client(server.channel().await);
    // What any client can read: metasrv's own candidacy.
    let own = client
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: b"__election/metasrv".to_vec(),
            range_end: b"__election/metasrv0".to_vec(),
            limit: 0,
            keys_only: false,
        })
        .await
        .expect("range")
        .into_inner();
    let relative = own.kvs.first().expect("metasrv's election key").key.clone();
    let lease_hex = String::from_utf8_lossy(&relative)
        .rsplit('/')
        .next()
        .map(str::to_owned)
        .expect("a lease suffix");
    let lease = i64::from_str_radix(&lease_hex, 16).expect("the key ends in the lease id");
    let mut full_key = prefix.clone();
    full_key.extend_from_slice(&relative);
    let mut metasrv_rev = 0;
    {
        // The revision a Resign would need, as a client could find it with etcd's own API.
        let mut raw = etcd_client::Client::connect([etcd.config("").endpoints[0].clone()], None)
            .await
            .expect("connect to etcd");
        if let Some(kv) = raw
            .get(full_key.clone(), None)
            .await
            .expect("get")
            .kvs()
            .first()
        {
            metasrv_rev = kv.create_revision();
        }
    }
    assert!(metasrv_rev > 0, "metasrv's election key exists");

    let mut election = ElectionClient::new(server.channel().await);
    let stolen = pb::LeaderKey {
        name: "metasrv".into(),
        key: full_key.clone(),
        lease,
        rev: metasrv_rev,
    };
    assert_denied(
        election
            .resign(pb::ResignRequest {
                header: header(CLUSTER, 0),
                leader: Some(stolen.clone()),
            })
            .await,
        "Resign of metasrv's key",
    );
    assert_denied(
        election
            .proclaim(pb::ProclaimRequest {
                header: header(CLUSTER, 0),
                leader: Some(stolen),
                value: b"evil".to_vec(),
            })
            .await,
        "Proclaim on metasrv's key",
    );
    assert_denied(
        election
            .keep_alive(pb::KeepAliveRequest {
                header: header(CLUSTER, 0),
                lease,
            })
            .await,
        "KeepAlive of metasrv's lease",
    );
    assert_denied(
        election
            .campaign(pb::CampaignRequest {
                header: header(CLUSTER, 0),
                name: "squatter".into(),
                value: b"x".to_vec(),
                ttl_millis: 0,
                lease,
            })
            .await,
        "Campaign on metasrv's lease",
    );

    // Nothing moved: the member still leads and its key is intact.
    assert!(route_of_guarded_table(&server)
        .await
        .is_err_and(|s| s.code() == Code::NotFound));
    let after = client
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: relative.clone(),
            range_end: Vec::new(),
            limit: 0,
            keys_only: false,
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        after.kvs.first().map(|kv| kv.value.clone()),
        own.kvs.first().map(|kv| kv.value.clone()),
        "metasrv's candidacy is untouched"
    );
    // A datanode's own lease and candidacy still work through the same calls.
    let granted = election
        .campaign(pb::CampaignRequest {
            header: header(CLUSTER, 0),
            name: "writers".into(),
            value: b"dn-1".to_vec(),
            ttl_millis: 5_000,
            lease: 0,
        })
        .await
        .expect("a datanode campaign")
        .into_inner()
        .leader
        .expect("a leader key");
    let ttl = election
        .keep_alive(pb::KeepAliveRequest {
            header: header(CLUSTER, 0),
            lease: granted.lease,
        })
        .await
        .expect("keep alive its own lease")
        .into_inner();
    assert!(ttl.ttl_millis > 0);
    election
        .resign(pb::ResignRequest {
            header: header(CLUSTER, 0),
            leader: Some(granted),
        })
        .await
        .expect("resign its own candidacy");
    server.stop().await;
}
