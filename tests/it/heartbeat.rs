//! The heartbeat pipeline end to end: simulated datanodes stream to an in-process metasrv;
//! registration, liveness (dead within the bound, alive again), the instruction mailbox with its
//! timeout, refusal of bad streams, replacement of a node's stream, and graceful shutdown.

use serde_json::json;
use std::time::{Duration, Instant};

use std::sync::Arc;

use actix::{Actor, Context, Handler};
use metasrv::actors::cluster_view::{
    CloseAllSessions, Instruction, MailboxError, NodeEvent, NodeStatus, SendInstruction, Subscribe,
};
use metasrv::actors::ActorRuntime;
use metasrv::client::{header, HeartbeatLink, LinkEvent, MetasrvTarget};
use metasrv::failure_detector::FailureDetectorConfig;
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::heartbeat_client::HeartbeatClient;
use metasrv::sim::{SimDatanode, SimDatanodeConfig, SimEvent};
use metasrv::store::{KeyRange, RangeRequest};
use metasrv::Config;
use parking_lot::Mutex;
use tokio_stream::StreamExt;

use crate::harness::{http_get, node_status, wait_for, wait_status, TestServer};
use crate::store_conformance::embedded;

const CLUSTER: u64 = 3;
const INTERVAL: Duration = Duration::from_millis(100);
/// With these settings a silent node is dead after roughly 100 + 300 + 5 * 20 ms = 0.5 s.
const PAUSE: Duration = Duration::from_millis(300);
/// The bound the tests hold the detector to: generous against a loaded CI machine, yet far
/// below what a stuck detector would give.
const DEAD_BOUND: Duration = Duration::from_secs(3);

fn config() -> Config {
    Config {
        cluster_id: CLUSTER,
        heartbeat_interval: INTERVAL,
        failure_detector: FailureDetectorConfig {
            acceptable_heartbeat_pause: PAUSE,
            min_std_deviation: Duration::from_millis(20),
            ..FailureDetectorConfig::default()
        },
        ..Config::default()
    }
}

fn sim(node_id: u64, regions: &[u64]) -> SimDatanodeConfig {
    SimDatanodeConfig {
        interval: INTERVAL,
        regions: regions.to_vec(),
        ..SimDatanodeConfig::new(CLUSTER, node_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_listings_come_a_page_at_a_time_in_id_order() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let channel = server.channel().await;
    let _nodes: Vec<SimDatanode> = [5, 1, 3]
        .into_iter()
        .map(|id| SimDatanode::start(channel.clone(), sim(id, &[])))
        .collect();
    wait_for("three nodes listed", Duration::from_secs(10), || async {
        let (_, body) = http_get(server.http_addr, "/v1/nodes").await;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (json["total"] == 3).then_some(())
    })
    .await;
    let page = |path: &'static str| async move {
        let (code, body) = http_get(server.http_addr, path).await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (code, json)
    };
    let ids = |json: &serde_json::Value| -> Vec<u64> {
        json["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_u64())
            .collect()
    };
    let (code, first) = page("/v1/nodes?limit=2").await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(ids(&first), [1, 3], "{first}");
    assert_eq!(
        (&first["total"], &first["next_after"]),
        (&json!(3), &json!(3))
    );
    let (_, second) = page("/v1/nodes?after=3&limit=2").await;
    assert_eq!(ids(&second), [5], "{second}");
    assert_eq!(second["next_after"], json!(null), "the last page");
    // The load heatmap pages alike.
    let (code, load) = page("/v1/load?samples=5&after=1&limit=1").await;
    assert_eq!(code, 200, "{load}");
    assert_eq!((ids(&load), &load["next_after"]), (vec![3], &json!(3)));
    // A page size out of bounds, or not a number, is refused with the reason.
    for (path, reason) in [
        ("/v1/nodes?limit=0", "limit must be 1 to 1000"),
        ("/v1/nodes?limit=1001", "limit must be 1 to 1000"),
        ("/v1/load?limit=5000", "limit must be 1 to 1000"),
        ("/v1/nodes?after=x", "after"),
        ("/v1/nodes/x", "Cannot parse"),
    ] {
        let (code, json) = page(path).await;
        assert_eq!(code, 400, "{path}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| e.contains(reason)),
            "{path}: {json}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_and_its_stats_are_served() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store.clone(), config()).await;
    let node = SimDatanode::start(server.channel().await, sim(1, &[11, 12, 13]));

    // Enough heartbeats for a history.
    wait_for("5 heartbeat responses", Duration::from_secs(10), || {
        let (_, responses) = node.counts();
        async move { (responses >= 5).then_some(()) }
    })
    .await;
    let (code, body) = http_get(server.http_addr, "/v1/nodes").await;
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let entry = &json["nodes"][0];
    assert_eq!(entry["id"], 1);
    assert_eq!(entry["addr"], "127.0.0.1:14001");
    assert_eq!(entry["instance_id"], node.instance_id());
    assert_eq!(entry["status"], "alive");
    assert_eq!(entry["connected"], true);
    assert!(
        entry["last_heartbeat_unix_ms"].as_u64().unwrap_or(0) > 0,
        "{entry}"
    );
    assert!(entry["phi"].as_f64().is_some(), "{entry}");
    assert_eq!(entry["stats"]["region_num"], 3);
    assert_eq!(
        (&entry["leader_regions"], &entry["follower_regions"]),
        (&json!(3), &json!(0)),
        "{entry}"
    );
    assert!(
        entry["regions"].is_null(),
        "a listing counts regions: {entry}"
    );
    assert!(entry["history_len"].as_u64().unwrap_or(0) >= 4, "{entry}");
    assert_eq!(
        (&json["total"], &json["next_after"]),
        (&json!(1), &json!(null))
    );
    // One node's answer lists its regions.
    let (code, body) = http_get(server.http_addr, "/v1/nodes/1").await;
    assert_eq!(code, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        one["node"]["regions"].as_array().map(Vec::len),
        Some(3),
        "{one}"
    );
    let (code, body) = http_get(server.http_addr, "/v1/nodes/9").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("node 9 is not known"), "{body}");

    // The registration is persisted, once, in the KV.
    let registered = wait_for(
        "the node registration in the KV",
        Duration::from_secs(5),
        || {
            let store = store.clone();
            async move {
                let kvs = store
                    .range(RangeRequest {
                        range: KeyRange::single(b"__meta/node/1".to_vec()),
                        ..Default::default()
                    })
                    .await
                    .expect("range")
                    .kvs;
                kvs.into_iter().next()
            }
        },
    )
    .await;
    let value: serde_json::Value = serde_json::from_slice(&registered.value).expect("JSON");
    assert_eq!(value["addr"], "127.0.0.1:14001");
    assert_eq!(value["instance_id"], node.instance_id());

    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("metasrv_heartbeats_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metasrv_heartbeat_sessions 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metasrv_heartbeat_handle_seconds_bucket"),
        "{metrics}"
    );
    server.stop().await;
}

/// A subscriber that records the events it receives.
struct EventLog(Arc<Mutex<Vec<NodeEvent>>>);

impl Actor for EventLog {
    type Context = Context<Self>;
}

impl Handler<NodeEvent> for EventLog {
    type Result = ();

    fn handle(&mut self, event: NodeEvent, _ctx: &mut Context<Self>) {
        self.0.lock().push(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_dead_within_the_bound_and_alive_when_back() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let test_actors = ActorRuntime::start(1).expect("actor runtime");
    let log = events.clone();
    let subscriber = EventLog::start_in_arbiter(test_actors.singletons(), move |_| EventLog(log));
    server
        .cluster_view
        .send(Subscribe {
            subscriber: subscriber.recipient(),
        })
        .await
        .expect("subscribed");
    let channel = server.channel().await;
    let node = SimDatanode::start(channel.clone(), sim(7, &[1]));
    let other = SimDatanode::start(channel.clone(), sim(8, &[2]));
    wait_status(&server, 7, NodeStatus::Alive, Duration::from_secs(5)).await;
    wait_for("20 heartbeats from node 7", Duration::from_secs(10), || {
        let (_, responses) = node.counts();
        async move { (responses >= 20).then_some(()) }
    })
    .await;
    // Regular heartbeats raise no suspicion.
    assert_eq!(node_status(&server, 7).await, Some(NodeStatus::Alive));

    let killed_at = Instant::now();
    node.kill();
    wait_status(&server, 7, NodeStatus::Dead, DEAD_BOUND).await;
    let detected = killed_at.elapsed();
    // Not before the acceptable pause: the detector must not be trigger-happy either.
    assert!(detected >= PAUSE, "declared dead after only {detected:?}");
    // The other node is undisturbed.
    assert_eq!(node_status(&server, 8).await, Some(NodeStatus::Alive));

    // The node stays down a while (a scenario step, not synchronisation): a long silence that
    // must not widen the detector's tolerance once the node is back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = SimDatanode::start(channel, sim(7, &[1]));
    wait_status(&server, 7, NodeStatus::Alive, Duration::from_secs(5)).await;
    let nodes = crate::harness::listed_nodes(&server.cluster_view)
        .await
        .expect("list");
    let entry = nodes.iter().find(|n| n.id == 7).expect("node 7 listed");
    assert_eq!(
        entry.instance_id,
        back.instance_id(),
        "the new instance is recorded"
    );

    // Subscribers saw node 7 go (suspect, then) dead, then recover; nothing about node 8.
    let node_7: Vec<_> = wait_for("the recovery event", Duration::from_secs(5), || {
        let events = events.lock().clone();
        async move {
            events
                .iter()
                .any(|e| matches!(e, NodeEvent::Recovered { node_id: 7 }))
                .then_some(events)
        }
    })
    .await;
    let kinds: Vec<&str> = node_7
        .iter()
        .map(|e| match e {
            NodeEvent::Suspect { node_id: 7, .. } => "suspect",
            NodeEvent::Dead { node_id: 7, .. } => "dead",
            NodeEvent::Recovered { node_id: 7 } => "recovered",
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert!(
        kinds == ["suspect", "dead", "recovered"] || kinds == ["dead", "recovered"],
        "events: {node_7:?}"
    );

    // The silence while it was down must not make the next failure slower to detect.
    wait_for(
        "20 heartbeats from the returned node",
        Duration::from_secs(10),
        || {
            let (_, responses) = back.counts();
            async move { (responses >= 20).then_some(()) }
        },
    )
    .await;
    let killed_again = Instant::now();
    back.kill();
    wait_status(&server, 7, NodeStatus::Dead, DEAD_BOUND).await;
    let detected_again = killed_again.elapsed();
    assert!(
        detected_again < detected + Duration::from_millis(500),
        "the second failure took {detected_again:?} to detect, the first {detected:?}"
    );
    drop(other);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instructions_are_delivered_answered_or_timed_out() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let channel = server.channel().await;
    let obedient = SimDatanode::start(channel.clone(), sim(1, &[100, 101]));
    let silent = SimDatanode::start(
        channel,
        SimDatanodeConfig {
            obey_instructions: false,
            ..sim(2, &[200])
        },
    );
    wait_status(&server, 1, NodeStatus::Alive, Duration::from_secs(5)).await;
    wait_status(&server, 2, NodeStatus::Alive, Duration::from_secs(5)).await;

    // An obedient node carries the instruction out and reports success.
    let outcome = server
        .cluster_view
        .send(SendInstruction {
            node_id: 1,
            instruction: Instruction::CloseRegion { region_id: 100 },
            timeout: Duration::from_secs(5),
        })
        .await
        .expect("mailbox answers")
        .expect("node 1 answers");
    assert!(outcome.success, "{outcome:?}");
    assert!(!obedient.regions().contains_key(&100));
    let failed = server
        .cluster_view
        .send(SendInstruction {
            node_id: 1,
            instruction: Instruction::PromoteToLeader { region_id: 999 },
            timeout: Duration::from_secs(5),
        })
        .await
        .expect("mailbox answers")
        .expect("node 1 answers");
    assert!(!failed.success);
    assert!(failed.error.unwrap_or_default().contains("999"));

    // A node that never answers: the instruction reaches it, and the caller sees the timeout.
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = server
        .cluster_view
        .send(SendInstruction {
            node_id: 2,
            instruction: Instruction::CloseRegion { region_id: 200 },
            timeout,
        })
        .await
        .expect("mailbox answers");
    match result {
        Err(MailboxError::Timeout { node_id: 2, .. }) => {}
        other => panic!("expected a timeout from node 2, got {other:?}"),
    }
    assert!(
        started.elapsed() >= timeout,
        "timed out early: {:?}",
        started.elapsed()
    );
    silent
        .wait_for_event("the instruction", Duration::from_secs(5), |events| {
            events
                .iter()
                .any(|e| matches!(e, SimEvent::Instruction(i) if i.kind.is_some()))
        })
        .await
        .expect("the silent node received the instruction");
    assert!(
        silent.regions().contains_key(&200),
        "a silent node changes nothing"
    );

    // A node whose stream ends before it answers: the caller learns at once, not at the
    // timeout (the answer cannot come any more).
    let long_timeout = Duration::from_secs(30);
    let waiting = {
        let view = server.cluster_view.clone();
        tokio::spawn(async move {
            view.send(SendInstruction {
                node_id: 2,
                instruction: Instruction::CloseRegion { region_id: 200 },
                timeout: long_timeout,
            })
            .await
        })
    };
    silent
        .wait_for_event("the second instruction", Duration::from_secs(5), |events| {
            events
                .iter()
                .filter(|e| matches!(e, SimEvent::Instruction(i) if i.kind.is_some()))
                .count()
                >= 2
        })
        .await
        .expect("the silent node received the second instruction");
    let ended_at = Instant::now();
    silent.kill();
    let result = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the caller is told well before the instruction's timeout")
        .expect("task")
        .expect("mailbox answers");
    assert_eq!(result, Err(MailboxError::StreamEnded(2)));
    assert!(ended_at.elapsed() < long_timeout);

    // A node with no stream cannot be instructed.
    let result = server
        .cluster_view
        .send(SendInstruction {
            node_id: 42,
            instruction: Instruction::InvalidateRouteCache { table_ids: vec![1] },
            timeout,
        })
        .await
        .expect("mailbox answers");
    assert_eq!(result, Err(MailboxError::NodeNotConnected(42)));

    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"metasrv_instructions_total{kind="close_region",outcome="timeout"} 1"#),
        "{metrics}"
    );
    server.stop().await;
}

/// Opens a raw stream, sends `request`, and returns the status the stream ends with.
async fn refused_with(server: &TestServer, request: pb::HeartbeatRequest) -> tonic::Status {
    let mut client = HeartbeatClient::new(server.channel().await);
    let mut responses = client
        .heartbeat(tokio_stream::iter([request]).chain(tokio_stream::pending()))
        .await
        .expect("the stream opens")
        .into_inner();
    let deadline = Duration::from_secs(5);
    match tokio::time::timeout(deadline, responses.next()).await {
        Ok(Some(Ok(response))) => panic!("a bad heartbeat was accepted: {response:?}"),
        Ok(Some(Err(status))) => status,
        Ok(None) => panic!("the stream ended without a status"),
        Err(_) => panic!("no answer to a bad heartbeat within {deadline:?}"),
    }
}

fn good_request(node_id: u64) -> pb::HeartbeatRequest {
    crate::harness::raw_heartbeat(CLUSTER, node_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_closed_with_a_reason_without_disturbing_others() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let good = SimDatanode::start(server.channel().await, sim(1, &[1]));
    wait_status(&server, 1, NodeStatus::Alive, Duration::from_secs(5)).await;
    let (_, before) = good.counts();

    let mut nan = good_request(9);
    nan.node_stat = Some(pb::NodeStat {
        cpu_usage: f64::NAN,
        ..Default::default()
    });
    let mut duplicate = good_request(9);
    let region = pb::RegionStat {
        region_id: 5,
        role: pb::RegionRole::Leader as i32,
        ..Default::default()
    };
    duplicate.region_stats = vec![region.clone(), region];
    let cases = [
        (
            "no peer",
            pb::HeartbeatRequest {
                peer: None,
                ..good_request(9)
            },
        ),
        ("peer.id is 0", good_request(0)),
        (
            "cluster",
            pb::HeartbeatRequest {
                header: header(CLUSTER + 1, 9),
                ..good_request(9)
            },
        ),
        (
            "no header",
            pb::HeartbeatRequest {
                header: None,
                ..good_request(9)
            },
        ),
        ("cpu_usage", nan),
        ("twice", duplicate),
    ];
    for (needle, request) in cases {
        let status = refused_with(&server, request).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{needle}: {status:?}"
        );
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }

    // A stream that changes its node id mid-way is closed too.
    let mut client = HeartbeatClient::new(server.channel().await);
    let mut responses = client
        .heartbeat(
            tokio_stream::iter([good_request(20), good_request(21)]).chain(tokio_stream::pending()),
        )
        .await
        .expect("stream opens")
        .into_inner();
    let first = responses
        .next()
        .await
        .expect("a response")
        .expect("first is fine");
    assert_eq!(first.header.map(|h| h.cluster_id), Some(CLUSTER));
    let status = responses
        .next()
        .await
        .expect("an answer")
        .expect_err("the second is refused");
    assert!(
        status.message().contains("belongs to node 20"),
        "{status:?}"
    );

    // The good node kept going the whole time and was never cut off.
    wait_for(
        "more heartbeats from the good node",
        Duration::from_secs(5),
        || {
            let (_, now) = good.counts();
            async move { (now >= before + 3).then_some(()) }
        },
    )
    .await;
    assert_never_cut_off(&server, &good).await;
    server.stop().await;
}

/// `node` never lost its stream and is alive.
async fn assert_never_cut_off(server: &TestServer, node: &SimDatanode) {
    assert!(
        !node
            .events()
            .iter()
            .any(|e| matches!(e, SimEvent::Disconnected { .. })),
        "{:?}",
        node.events()
    );
    assert_eq!(
        node_status(server, node.node_id()).await,
        Some(NodeStatus::Alive)
    );
}

/// A node that writes heartbeats as fast as it can and never reads its answers: metasrv stops
/// reading its stream once the answers back up (its writes wait on the stream's flow control,
/// nothing piles up in metasrv), and cuts it off once it has read nothing for a region lease.
/// The other nodes carry on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_reads_its_stream_is_slowed_then_cut_off_alone() {
    let (_fixture, store) = embedded();
    let config = Config {
        region_lease: Duration::from_secs(1),
        ..config()
    };
    let server = TestServer::start(store, config).await;
    let good = SimDatanode::start(server.channel().await, sim(1, &[1]));
    wait_status(&server, 1, NodeStatus::Alive, Duration::from_secs(5)).await;

    // A small receive window: the unread answers fill it after a few dozen.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr))
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024));
    let channel = endpoint.connect().await.expect("connects");
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let flood = tokio_stream::iter(std::iter::repeat_with(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        good_request(9)
    }));
    let responses = HeartbeatClient::new(channel)
        .heartbeat(flood)
        .await
        .expect("the stream opens")
        .into_inner();
    wait_status(&server, 9, NodeStatus::Alive, Duration::from_secs(5)).await;

    // Cut off: the node is no longer connected, within the lease and a generous margin.
    let started = Instant::now();
    wait_for(
        "the node that does not read to be cut off",
        Duration::from_secs(10),
        || {
            let view = server.cluster_view.clone();
            async move {
                let nodes = crate::harness::listed_nodes(&view).await?;
                nodes
                    .iter()
                    .any(|n| n.id == 9 && !n.connected)
                    .then_some(())
            }
        },
    )
    .await;
    // Slowed by its own stream: metasrv read about as many heartbeats as answers fit in the
    // stream's queue and the node's window (~150 here), of the tens of thousands it offered.
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    let read = metric_value(&metrics, r#"metasrv_heartbeats_total{outcome="ok"}"#);
    let offered = sent.load(std::sync::atomic::Ordering::Relaxed) as f64;
    assert!(
        read < 1_000.0,
        "metasrv read {read} heartbeats of {offered} offered in {:?}: its reading was not paused",
        started.elapsed()
    );
    assert!(
        metrics.contains("metasrv_heartbeat_sessions 1"),
        "only the good node's stream is left: {metrics}"
    );
    drop(responses);

    // The good node was never cut off and is still alive.
    assert_never_cut_off(&server, &good).await;
    server.stop().await;
}

/// The value of the sample named `name` (with its labels) in a Prometheus text page.
fn metric_value(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {page}"))
}

/// A leader change cuts streams several times over (the old leader dies, the new one is not
/// serving yet); a link that reopened only with the datanode's next request would add up to a
/// heartbeat interval to each attempt. This datanode sends one request, ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_reopens_a_cut_stream_without_waiting_for_the_datanodes_next_request() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let mut link = HeartbeatLink::start(MetasrvTarget::Channel(server.channel().await), CLUSTER, 9);
    link.send(good_request(9)).await.expect("link runs");
    async fn next_of(link: &mut HeartbeatLink) -> LinkEvent {
        tokio::time::timeout(Duration::from_secs(5), link.next_event())
            .await
            .expect("an event within 5 s")
            .expect("the link runs")
    }
    assert!(matches!(next_of(&mut link).await, LinkEvent::Connected));
    assert!(matches!(
        next_of(&mut link).await,
        LinkEvent::Response { .. }
    ));
    wait_status(&server, 9, NodeStatus::Alive, Duration::from_secs(5)).await;
    for cut in 0..3 {
        server.cluster_view.do_send(CloseAllSessions {
            status: tonic::Status::unavailable("cut by the test"),
        });
        let event = next_of(&mut link).await;
        assert!(
            matches!(&event, LinkEvent::Disconnected { reason: Some(s) } if s.message() == "cut by the test"),
            "cut {cut}: {event:?}"
        );
        assert!(
            matches!(next_of(&mut link).await, LinkEvent::Connected),
            "cut {cut}"
        );
        // The greeting that reopened the stream reports nothing, so it is granted nothing.
        match next_of(&mut link).await {
            LinkEvent::Response { response, .. } => {
                assert_eq!(response.region_lease, None, "cut {cut}: {response:?}")
            }
            other => panic!("cut {cut}: {other:?}"),
        }
    }
    wait_for("node 9 connected again", Duration::from_secs(5), || {
        let server = &server;
        async move {
            let nodes = crate::harness::listed_nodes(&server.cluster_view).await?;
            nodes.iter().any(|n| n.id == 9 && n.connected).then_some(())
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_for_the_same_node_replaces_the_first() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let channel = server.channel().await;
    let first = SimDatanode::start(channel.clone(), sim(5, &[1]));
    first
        .wait_for_event("connected", Duration::from_secs(5), |e| {
            e.iter().any(|e| matches!(e, SimEvent::Connected))
        })
        .await
        .expect("first connects");
    wait_status(&server, 5, NodeStatus::Alive, Duration::from_secs(5)).await;
    let second = SimDatanode::start(channel, sim(5, &[1]));
    first
        .wait_for_event("being replaced", Duration::from_secs(5), |events| {
            events.iter().any(|e| {
                matches!(e, SimEvent::Disconnected { reason: Some(s) }
                    if s.code() == tonic::Code::Aborted && s.message().contains("replaced"))
            })
        })
        .await
        .expect("the first stream is closed as replaced");
    wait_for(
        "the second instance to be the node's",
        Duration::from_secs(5),
        || {
            let view = server.cluster_view.clone();
            let instance = second.instance_id().to_owned();
            async move {
                let nodes = crate::harness::listed_nodes(&view).await?;
                nodes
                    .iter()
                    .any(|n| n.id == 5 && n.instance_id == instance && n.connected)
                    .then_some(())
            }
        },
    )
    .await;
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("metasrv_heartbeat_sessions 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_leader_names_this_member_and_shutdown_closes_streams() {
    let (_fixture, store) = embedded();
    let server = TestServer::start(
        store,
        Config {
            member_id: 9,
            ..config()
        },
    )
    .await;
    let mut client = HeartbeatClient::new(server.channel().await);
    let leader = client
        .ask_leader(pb::AskLeaderRequest {
            header: header(CLUSTER, 0),
            ..Default::default()
        })
        .await
        .expect("ask leader")
        .into_inner()
        .leader
        .expect("a leader");
    assert_eq!(leader.id, 9);
    assert_eq!(leader.addr, server.grpc_addr.to_string());
    // A caller that lost a leader asks to wait for another: an answer naming a different leader
    // comes at once; one naming the lost leader only after the wait (no change came).
    let ask_after_losing = |lost: String| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let leader = client
                .ask_leader(pb::AskLeaderRequest {
                    header: header(CLUSTER, 0),
                    unreachable_leader: lost,
                    wait_millis: 400,
                })
                .await
                .expect("ask leader")
                .into_inner()
                .leader
                .expect("a leader");
            (leader.id, started.elapsed())
        }
    };
    let (id, took) = ask_after_losing("127.0.0.1:1".into()).await;
    assert_eq!(id, 9);
    assert!(
        took < Duration::from_millis(400),
        "answered at once: {took:?}"
    );
    let (id, took) = ask_after_losing(server.grpc_addr.to_string()).await;
    assert_eq!(id, 9, "still the only leader");
    assert!(
        took >= Duration::from_millis(400),
        "waited for a change: {took:?}"
    );
    // The wait is the caller's choice, not AskLeader's latency: the histogram holds no
    // request of 400 ms.
    let (_, metrics) = crate::harness::http_get(server.http_addr, "/metrics").await;
    let latency_sum = metrics
        .lines()
        .find(|line| {
            line.starts_with("metasrv_grpc_request_duration_seconds_sum")
                && line.contains("method=\"AskLeader\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|sum| sum.parse::<f64>().ok())
        .expect("AskLeader's latency sum in /metrics");
    assert!(
        latency_sum < 0.3,
        "three AskLeaders, one waited 400 ms, took {latency_sum} s in all: {metrics}"
    );

    let node = SimDatanode::start(server.channel().await, sim(1, &[1]));
    wait_status(&server, 1, NodeStatus::Alive, Duration::from_secs(5)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited for the heartbeat stream: {:?}",
        started.elapsed()
    );
    node.wait_for_event("the shutdown status", Duration::from_secs(5), |events| {
        events.iter().any(|e| {
            matches!(e, SimEvent::Disconnected { reason: Some(s) }
                if s.code() == tonic::Code::Unavailable && s.message().contains("shutting down"))
        })
    })
    .await
    .expect("the node is told metasrv is shutting down");
}

/// A careless (or hostile) datanode reports 100,000 fresh region ids no table owns (the most a
/// heartbeat may carry) in every heartbeat: each is answered, and metasrv keeps no state for
/// any of them (region loads are kept for routed regions only), so its memory does not grow
/// with what it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_regions_in_heartbeats_leave_no_state_behind() {
    const HEARTBEATS: u64 = 5;
    const REGIONS: u64 = metasrv::stats::MAX_REGIONS_PER_HEARTBEAT as u64;
    let (_dir, store) = embedded();
    let server = TestServer::start(store, config()).await;
    let requests = (0..HEARTBEATS).map(|beat| {
        let mut request = good_request(30);
        request.region_stats = (0..REGIONS)
            .map(|i| pb::RegionStat {
                // Never the same id twice: (table 1,000,000 + beat) << 32 | i.
                region_id: ((1_000_000 + beat) << 32) | i,
                role: pb::RegionRole::Leader as i32,
                ..Default::default()
            })
            .collect();
        request
    });
    let mut client = HeartbeatClient::new(server.channel().await);
    let mut responses = client
        .heartbeat(tokio_stream::iter(requests.collect::<Vec<_>>()).chain(tokio_stream::pending()))
        .await
        .expect("stream opens")
        .into_inner();
    for beat in 0..HEARTBEATS {
        let response = responses
            .next()
            .await
            .expect("a response")
            .unwrap_or_else(|status| panic!("heartbeat {beat} refused: {status:?}"));
        let lease = response.region_lease.expect("a lease answer");
        assert!(
            lease.leader_region_ids.is_empty() && lease.follower_region_ids.is_empty(),
            "no lease on regions no table owns"
        );
    }
    // Every report reached the ClusterView (it is the latest the node view shows).
    wait_for(
        "the last report to reach the cluster view",
        Duration::from_secs(10),
        || async {
            let (_, body) = http_get(server.http_addr, "/v1/nodes/30").await;
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            let first = json["node"]["regions"].as_array()?.first()?["region_id"].as_u64()?;
            (first >> 32 == 1_000_000 + HEARTBEATS - 1).then_some(())
        },
    )
    .await;
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("metasrv_region_histories 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("region_histories"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    server.stop().await;
}
