//! The Store service over gRPC: round trips, refusal of bad input with a clear status, health,
//! reflection and the HTTP endpoints. Runs an in-process metasrv on port-0 listeners.

use std::sync::Arc;

use metasrv::client::{header, store_client};
use metasrv::proto::v1 as pb;
use metasrv::store::KvBackend;
use metasrv::Config;
use tonic::Code;

use crate::harness::{http_get, EtcdProcess, TestServer};
use crate::store_conformance::{embedded, etcd};

const CLUSTER: u64 = 42;

fn config() -> Config {
    Config {
        cluster_id: CLUSTER,
        max_request_bytes: 64 * 1024,
        max_batch_ops: 8,
        ..Config::default()
    }
}

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        header: header(CLUSTER, 0),
        key: key.into(),
        value: value.into(),
        prev_kv: true,
    }
}

fn range(key: &str, range_end: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        header: header(CLUSTER, 0),
        key: key.into(),
        range_end: range_end.to_vec(),
        limit: 0,
        keys_only: false,
    }
}

fn assert_refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "status {status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} should mention {needle:?}",
                status.message()
            );
        }
        Ok(response) => panic!("expected {code:?} ({needle}), got {response:?}"),
    }
}

async fn round_trip_and_refusals(store: Arc<dyn KvBackend>) {
    let server = TestServer::start(store, config()).await;
    let mut client = store_client(server.channel().await);

    // Round trip.
    let first = client.put(put("k1", "v1")).await.expect("put").into_inner();
    assert_eq!(first.prev_kv, None);
    assert_eq!(first.header.map(|h| h.cluster_id), Some(CLUSTER));
    let second = client.put(put("k1", "v2")).await.expect("put").into_inner();
    assert_eq!(second.prev_kv.map(|kv| kv.value), Some(b"v1".to_vec()));
    let got = client
        .range(range("k", b"l"))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
    assert_eq!(got.kvs[0].value, b"v2");
    let cas = client
        .compare_and_put(pb::CompareAndPutRequest {
            header: header(CLUSTER, 0),
            key: b"k1".to_vec(),
            expect: b"v2".to_vec(),
            value: b"v3".to_vec(),
        })
        .await
        .expect("cas")
        .into_inner();
    assert!(cas.success);

    // Wrong cluster, no header.
    let mut wrong = put("k2", "v");
    wrong.header = header(CLUSTER + 1, 0);
    assert_refused(client.put(wrong).await, Code::InvalidArgument, "cluster 43");
    let mut headless = put("k2", "v");
    headless.header = None;
    assert_refused(
        client.put(headless).await,
        Code::InvalidArgument,
        "no header",
    );

    // Empty key, inverted range, negative limit.
    assert_refused(
        client.put(put("", "v")).await,
        Code::InvalidArgument,
        "key is empty",
    );
    assert_refused(
        client.range(range("z", b"a")).await,
        Code::InvalidArgument,
        "inverted",
    );
    let mut negative = range("a", b"");
    negative.limit = -1;
    assert_refused(
        client.range(negative).await,
        Code::InvalidArgument,
        "negative",
    );
    assert_refused(
        client
            .delete_range(pb::DeleteRangeRequest {
                header: header(CLUSTER, 0),
                key: b"z".to_vec(),
                range_end: b"a".to_vec(),
                prev_kv: false,
            })
            .await,
        Code::InvalidArgument,
        "inverted",
    );

    // Over the size limit (64 KiB here): refused, nothing written.
    let big = "x".repeat(100 * 1024);
    assert_refused(
        client.put(put("big", &big)).await,
        Code::InvalidArgument,
        "over the limit",
    );
    // Over the batch limit (8 here), or with a bad key inside: refused whole, nothing written.
    let batch = |n: usize, bad: Option<&str>| pb::BatchPutRequest {
        header: header(CLUSTER, 0),
        kvs: (0..n)
            .map(|i| pb::KeyValue {
                key: format!("batch/{i}").into_bytes(),
                value: b"v".to_vec(),
            })
            .chain(bad.map(|k| pb::KeyValue {
                key: k.as_bytes().to_vec(),
                value: b"v".to_vec(),
            }))
            .collect(),
        prev_kv: false,
    };
    assert_refused(
        client.batch_put(batch(9, None)).await,
        Code::InvalidArgument,
        "max_batch_ops",
    );
    assert_refused(
        client.batch_put(batch(3, Some(""))).await,
        Code::InvalidArgument,
        "key is empty",
    );
    assert_refused(
        client.batch_put(batch(3, Some("batch/1"))).await,
        Code::InvalidArgument,
        "twice",
    );
    let leftovers = client
        .range(range("batch/", b"batch0"))
        .await
        .expect("range")
        .into_inner();
    assert!(
        leftovers.kvs.is_empty(),
        "a refused batch wrote {:?}",
        leftovers.kvs
    );
    let big_present = client
        .range(range("big", b""))
        .await
        .expect("range")
        .into_inner();
    assert!(big_present.kvs.is_empty(), "a refused put was written");

    // A good batch still works after the refusals.
    client.batch_put(batch(8, None)).await.expect("batch of 8");
    let written = client
        .range(range("batch/", b"batch0"))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(written.kvs.len(), 8);
    server.stop().await;
}

#[tokio::test]
async fn store_service_on_embedded_backend() {
    let (_fixture, store) = embedded();
    round_trip_and_refusals(store).await;
}

#[tokio::test]
async fn store_service_on_etcd_backend() {
    let (_fixture, store) = etcd("grpc_store").await;
    round_trip_and_refusals(store).await;
}

#[tokio::test]
async fn health_reflection_and_http_endpoints_work() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let channel = server.channel().await;

    // grpc.health.v1: overall and per service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "metasrv.v1.Store"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }

    // Reflection lists our services, as grpcurl's `list` would.
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one reflection response")
        .expect("reflection ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "metasrv.v1.Store",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }

    // The same through v1alpha, which older grpcurl builds and grpcio-reflection speak.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let response = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("v1alpha reflection stream")
            .into_inner()
            .next()
            .await
            .expect("one v1alpha reflection response")
            .expect("v1alpha reflection ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected v1alpha reflection response {response:?}");
        };
        assert!(
            list.service.iter().any(|s| s.name == "metasrv.v1.Router"),
            "{list:?}"
        );
    }

    // HTTP: /health says serving; /metrics counts the request we make first.
    let mut client = store_client(channel);
    client.put(put("m", "1")).await.expect("put");
    let (code, body) = http_get(server.http_addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(health["status"], "serving");
    assert_eq!(health["backend"], "embedded");
    assert_eq!(health["cluster_id"], CLUSTER);
    let (code, body) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains(r#"metasrv_grpc_requests_total{code="Ok",method="Put",service="Store"} 1"#),
        "metrics:\n{body}"
    );
    server.stop().await;
}

/// `/health` turns 503 with the reason when etcd goes away, instead of hanging or lying.
#[tokio::test]
async fn http_health_reports_an_unreachable_etcd() {
    let etcd = EtcdProcess::start();
    let mut etcd_config = etcd.config("/health");
    etcd_config.request_timeout = std::time::Duration::from_secs(1);
    let store = metasrv::store::etcd::EtcdStore::connect(&etcd_config, CLUSTER)
        .await
        .expect("connect");
    let server = TestServer::start(Arc::new(store), config()).await;
    let (code, _) = http_get(server.http_addr, "/health").await;
    assert_eq!(code, 200);
    drop(etcd);
    let (code, body) = http_get(server.http_addr, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not_serving"), "{body}");
    server.stop().await;
}
