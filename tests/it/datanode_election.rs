//! The Election service that datanodes use to elect a writer among replicas: campaign, observe,
//! proclaim, resign, lease expiry, and refusal of bad input, on both backends.

use std::sync::Arc;
use std::time::Duration;

use metasrv::client::header;
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::election_client::ElectionClient;
use metasrv::store::KvBackend;
use metasrv::Config;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::harness::{wait_for, TestServer};

const CLUSTER: u64 = 6;

fn campaign(name: &str, value: &str, ttl_millis: u64) -> pb::CampaignRequest {
    pb::CampaignRequest {
        header: header(CLUSTER, 0),
        name: name.into(),
        value: value.into(),
        ttl_millis,
        lease: 0,
    }
}

async fn leader_value(client: &mut ElectionClient<Channel>, name: &str) -> Option<Vec<u8>> {
    let response = client
        .leader(pb::LeaderRequest {
            header: header(CLUSTER, 0),
            name: name.into(),
        })
        .await
        .expect("leader")
        .into_inner();
    response.leader.map(|_| response.value)
}

async fn next_observed(stream: &mut tonic::Streaming<pb::LeaderResponse>) -> pb::LeaderResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an observed change in time")
        .expect("the stream goes on")
        .expect("observe ok")
}

pub async fn the_election_lifecycle(store: Arc<dyn KvBackend>) {
    let server = TestServer::start(
        store,
        Config {
            cluster_id: CLUSTER,
            ..Config::default()
        },
    )
    .await;
    let channel = server.channel().await;
    let mut a = ElectionClient::new(channel.clone());
    let mut b = ElectionClient::new(channel.clone());
    let name = "region-7";

    let key_a = a
        .campaign(campaign(name, "replica-a", 2000))
        .await
        .expect("uncontested campaign wins")
        .into_inner()
        .leader
        .expect("a leader key");
    assert_eq!(
        leader_value(&mut a, name).await,
        Some(b"replica-a".to_vec())
    );

    let mut observed = ElectionClient::new(channel.clone())
        .observe(pb::LeaderRequest {
            header: header(CLUSTER, 0),
            name: name.into(),
        })
        .await
        .expect("observe")
        .into_inner();
    assert_eq!(next_observed(&mut observed).await.value, b"replica-a");

    // B waits behind A, keeping its lease alive meanwhile.
    let mut contender = tokio::spawn(async move {
        let response = b
            .campaign(campaign(name, "replica-b", 2000))
            .await
            .map(|r| r.into_inner());
        (b, response)
    });
    let mut keep = ElectionClient::new(channel.clone());
    // Not elected while A leads (an absence can only be checked for a while).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut contender)
            .await
            .is_err(),
        "B must not lead while A does"
    );

    // A keeps its lease and proclaims a new value.
    let ttl = keep
        .keep_alive(pb::KeepAliveRequest {
            header: header(CLUSTER, 0),
            lease: key_a.lease,
        })
        .await
        .expect("keep alive")
        .into_inner()
        .ttl_millis;
    assert!(ttl > 0);
    a.proclaim(pb::ProclaimRequest {
        header: header(CLUSTER, 0),
        leader: Some(key_a.clone()),
        value: b"replica-a-v2".to_vec(),
    })
    .await
    .expect("the leader proclaims");
    assert_eq!(next_observed(&mut observed).await.value, b"replica-a-v2");

    // A resigns: B leads.
    a.resign(pb::ResignRequest {
        header: header(CLUSTER, 0),
        leader: Some(key_a.clone()),
    })
    .await
    .expect("resign");
    let (b, won) = tokio::time::timeout(Duration::from_secs(10), contender)
        .await
        .expect("B is elected after A resigns")
        .expect("task");
    let key_b = won.expect("campaign").leader.expect("key");
    let seen = next_observed(&mut observed).await;
    assert_eq!(seen.value, b"replica-b");
    assert_eq!(seen.leader.map(|k| k.key), Some(key_b.key.clone()));

    // A's old key can no longer proclaim.
    let stale = a
        .proclaim(pb::ProclaimRequest {
            header: header(CLUSTER, 0),
            leader: Some(key_a),
            value: b"stale".to_vec(),
        })
        .await
        .expect_err("a resigned key cannot proclaim");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");

    // B stops renewing its lease: its leadership ends by itself.
    wait_for("B's lease to expire", Duration::from_secs(10), || {
        let mut b = b.clone();
        async move { leader_value(&mut b, name).await.is_none().then_some(()) }
    })
    .await;

    // Bad input.
    let empty = a
        .campaign(campaign("", "x", 2000))
        .await
        .expect_err("empty name");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let short = a
        .campaign(campaign("n", "x", 10))
        .await
        .expect_err("tiny ttl");
    assert_eq!(short.code(), tonic::Code::InvalidArgument);
    assert!(short.message().contains("minimum"), "{short:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service_on_embedded_backend() {
    let (_fixture, store) = crate::store_conformance::embedded();
    the_election_lifecycle(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service_on_etcd_backend() {
    let (_fixture, store) = crate::store_conformance::etcd("datanode_election").await;
    the_election_lifecycle(store).await;
}
