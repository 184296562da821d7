//! High availability: several metasrv processes over etcd elect one leader; the leader is
//! killed (or paused) and another takes over; datanodes and frontends follow by themselves;
//! a deposed leader cannot write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metasrv::client::{header, MetaClient};
use metasrv::proto::v1 as pb;
use metasrv::sim::{MetasrvTarget, SimDatanode, SimFrontend};

use crate::harness::{http_get, wait_for, EtcdProcess, MetasrvProcess};
use crate::router::{cpu_table, create_request, node, rows, CLUSTER};

/// Two metasrv members on a fresh etcd (election lease 1 s, environment `env`), three
/// datanodes streaming to the leader, and a table `name` of 6 regions with one copy each,
/// created through a client of both members. Fields drop in order: datanodes and the client
/// first, the etcd last.
pub struct PairWithTable {
    pub nodes: Vec<SimDatanode>,
    pub meta: Arc<MetaClient>,
    pub members: Vec<MetasrvProcess>,
    pub leader: usize,
    pub table: metasrv::catalog::model::TableName,
    /// Held to the end of the test (a `..` pattern would drop them at once).
    pub dir: tempfile::TempDir,
    pub etcd: EtcdProcess,
}

pub async fn pair_with_table(env: &[(&str, &str)], name: &str) -> PairWithTable {
    let etcd = EtcdProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let members = start_members_with_env(
        dir.path(),
        &etcd.endpoint,
        2,
        &["--election-lease-ttl", "1s"],
        env,
    );
    let refs: Vec<&MetasrvProcess> = members.iter().collect();
    let leader = wait_for_one_leader(&refs, Duration::from_secs(20)).await;
    let endpoints: Vec<String> = members.iter().map(|m| m.grpc_addr.to_string()).collect();
    let nodes = datanodes_on_leader(&members, leader, 3).await;
    let meta = Arc::new(
        MetaClient::connect(&endpoints, CLUSTER, 0)
            .await
            .expect("meta"),
    );
    let table = cpu_table(name);
    meta.create_table(create_request(&table, 6, 1))
        .await
        .expect("create");
    PairWithTable {
        nodes,
        meta,
        members,
        leader,
        table,
        dir,
        etcd,
    }
}

/// `n` metasrv processes over the etcd at `endpoints`, member ids 1..=n.
pub fn start_members(
    dir: &std::path::Path,
    etcd_endpoints: &str,
    n: u64,
    extra: &[&str],
) -> Vec<MetasrvProcess> {
    start_members_with_env(dir, etcd_endpoints, n, extra, &[])
}

/// [`start_members`] with extra environment variables.
pub fn start_members_with_env(
    dir: &std::path::Path,
    etcd_endpoints: &str,
    n: u64,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<MetasrvProcess> {
    (1..=n)
        .map(|id| start_member(dir, etcd_endpoints, id, extra, env))
        .collect()
}

/// Member `id` of the cluster [`start_members`] starts (e.g. to restart one on its ports, given
/// `--grpc-addr` and `--http-addr` in `extra`).
pub fn start_member(
    dir: &std::path::Path,
    etcd_endpoints: &str,
    id: u64,
    extra: &[&str],
    env: &[(&str, &str)],
) -> MetasrvProcess {
    let id = id.to_string();
    let mut args = vec![
        "--backend",
        "etcd",
        "--etcd-endpoints",
        etcd_endpoints,
        "--etcd-key-prefix",
        "/ha",
        "--cluster-id",
        "4",
        "--member-id",
        id.as_str(),
        "--heartbeat-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    MetasrvProcess::start(dir, &args, env)
}

/// What a member's /v1/leader says: (is it leader, the leader's id).
pub async fn leader_view(member: &MetasrvProcess) -> Option<(bool, Option<u64>)> {
    let (code, body) = http_get(member.http_addr, "/v1/leader").await;
    if code != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((json["is_leader"] == true, json["leader"]["id"].as_u64()))
}

/// Waits until exactly one of `members` serves as leader and the others name it; returns its
/// index. On timeout the panic shows what each member said and the tail of its log.
pub async fn wait_for_one_leader(members: &[&MetasrvProcess], deadline: Duration) -> usize {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for member in members {
            views.push(leader_view(member).await);
        }
        if let Some(leader) = agreed_leader(&views) {
            return leader;
        }
        if started.elapsed() > deadline {
            let logs: Vec<String> = members.iter().map(|m| m.log()).collect();
            panic!(
                "no agreed leader after {deadline:?}; views (is_leader, leader id): {views:?}; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn agreed_leader(views: &[Option<(bool, Option<u64>)>]) -> Option<usize> {
    let views: Vec<(bool, Option<u64>)> = views.iter().copied().collect::<Option<_>>()?;
    let leaders: Vec<usize> = views
        .iter()
        .enumerate()
        .filter(|(_, (is_leader, _))| *is_leader)
        .map(|(i, _)| i)
        .collect();
    let [leader] = leaders.as_slice() else {
        return None;
    };
    let leader_id = views[*leader].1?;
    views
        .iter()
        .all(|(_, id)| *id == Some(leader_id))
        .then_some(*leader)
}

pub async fn alive_nodes(member: &MetasrvProcess) -> usize {
    let (_, body) = http_get(member.http_addr, "/v1/nodes").await;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|json| {
            json["nodes"].as_array().map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| n["status"] == "alive" && n["connected"] == true)
                    .count()
            })
        })
        .unwrap_or(0)
}

/// Simulated datanodes `1..=count` that know every member (not which leads), once the leader
/// `members[leader]` sees them all alive (bounded wait).
pub async fn datanodes_on_leader(
    members: &[MetasrvProcess],
    leader: usize,
    count: u64,
) -> Vec<SimDatanode> {
    let endpoints: Vec<String> = members.iter().map(|m| m.grpc_addr.to_string()).collect();
    let mut nodes = Vec::new();
    for id in 1..=count {
        nodes.push(
            SimDatanode::start_serving_on(MetasrvTarget::Cluster(endpoints.clone()), node(id))
                .await
                .expect("sim"),
        );
    }
    wait_for(
        &format!("{count} datanodes on the leader"),
        Duration::from_secs(10),
        || {
            let leader = &members[leader];
            async move { (alive_nodes(leader).await == count as usize).then_some(()) }
        },
    )
    .await;
    nodes
}

/// The datanode registrations stored under the members' prefix, with each one's modification
/// revision: a registration written again has a new one.
async fn stored_registrations(etcd_endpoints: &str) -> Vec<(String, i64)> {
    let endpoints: Vec<&str> = etcd_endpoints.split(',').collect();
    let mut client = etcd_client::Client::connect(endpoints, None)
        .await
        .expect("connect to etcd");
    let found = client
        .get(
            "/ha/4/__meta/node/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("read the registrations");
    found
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_over_heartbeats_routes_and_ddl() {
    let etcd = crate::harness::EtcdCluster::start(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut members = start_members(dir.path(), &etcd.endpoints(), 3, &[]);
    let refs: Vec<&MetasrvProcess> = members.iter().collect();
    let leader = wait_for_one_leader(&refs, Duration::from_secs(20)).await;
    let endpoints: Vec<String> = members.iter().map(|m| m.grpc_addr.to_string()).collect();

    // Datanodes and a frontend that know every member, not the leader.
    let nodes = datanodes_on_leader(&members, leader, 3).await;
    let meta = Arc::new(
        MetaClient::connect(&endpoints, CLUSTER, 0)
            .await
            .expect("meta"),
    );
    let frontend = SimFrontend::new(meta.clone());
    let mut acked = Vec::new();
    for name in ["t1", "t2", "t3"] {
        let (_, route) = meta
            .create_table(create_request(&cpu_table(name), 4, 1))
            .await
            .expect("create");
        acked.push((cpu_table(name), route.info.id));
    }
    frontend
        .insert(rows(&cpu_table("t1"), 100))
        .await
        .expect("insert");

    // Followers answer routes from the KV and redirect writes.
    let follower = (leader + 1) % 3;
    let follower_meta = MetaClient::connect(std::slice::from_ref(&endpoints[follower]), CLUSTER, 0)
        .await
        .expect("connect through a follower");
    assert_eq!(
        follower_meta.leader().id,
        leader as u64 + 1,
        "AskLeader names the leader"
    );
    let mut follower_router = metasrv::proto::v1::router_client::RouterClient::new(
        metasrv::client::connect(&endpoints[follower])
            .await
            .expect("connect"),
    );
    let routed = follower_router
        .route(pb::RouteRequest {
            header: header(CLUSTER, 0),
            table_names: vec![(&cpu_table("t1")).into()],
        })
        .await
        .expect("a follower serves Route")
        .into_inner();
    assert_eq!(routed.routes[0].table_id, acked[0].1);
    let redirect = follower_router
        .create_table(create_request(&cpu_table("nope"), 1, 1))
        .await
        .expect_err("a follower refuses DDL");
    assert_eq!(redirect.code(), tonic::Code::Unavailable);
    assert_eq!(
        metasrv::election::redirect_target(&redirect),
        Some(endpoints[leader].clone()),
        "the redirect names the leader"
    );

    // The datanodes registered once; a new leader finds them on record and writes nothing.
    let etcd_endpoints = etcd.endpoints();
    let registered = wait_for(
        "the three datanodes' registrations",
        Duration::from_secs(10),
        || {
            let endpoints = etcd_endpoints.clone();
            async move {
                let stored = stored_registrations(&endpoints).await;
                (stored.len() == 3).then_some(stored)
            }
        },
    )
    .await;

    // Kill the leader.
    let killed_at = Instant::now();
    members[leader].signal_and_wait("KILL");
    let survivors: Vec<&MetasrvProcess> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m)
        .collect();
    let new_leader = wait_for_one_leader(&survivors, Duration::from_secs(15)).await;
    let takeover = killed_at.elapsed();
    let new_leader = survivors[new_leader];
    wait_for(
        "heartbeats to reach the new leader",
        Duration::from_secs(10),
        || async move { (alive_nodes(new_leader).await == 3).then_some(()) },
    )
    .await;
    let heartbeats_back = killed_at.elapsed();
    println!("takeover: leader after {takeover:?}, heartbeats after {heartbeats_back:?}");
    assert_eq!(
        stored_registrations(&etcd.endpoints()).await,
        registered,
        "the new leader wrote the datanodes' registrations again"
    );
    // Default lease TTL 2 s: the target is a leader within 3 s; allow slack for a loaded CI box.
    assert!(
        takeover < Duration::from_secs(6),
        "takeover took {takeover:?}"
    );

    // Every table acknowledged before the kill is there; DDL and writes work again.
    for (name, id) in &acked {
        let route = meta.route(name).await.expect("route after failover");
        assert_eq!(route.info.id, *id);
    }
    let (created, _) = meta
        .create_table(create_request(&cpu_table("after"), 2, 1))
        .await
        .expect("DDL on the new leader");
    assert!(created);
    assert_eq!(meta.leader().addr, new_leader.grpc_addr.to_string());
    frontend
        .insert(rows(&cpu_table("after"), 50))
        .await
        .expect("insert after failover");
    // The dead member's candidacy expired with its lease.
    let (_, body) = http_get(new_leader.http_addr, "/v1/members").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["members"].as_array().map(Vec::len), Some(2), "{json}");
    drop(nodes);
    drop(members);
    drop(etcd);
}

/// A leader paused (SIGSTOP) past its lease is replaced. Its datanodes leave it for the new
/// leader by themselves (their heartbeats go unacknowledged). When it resumes, a write it was
/// asked to do while paused does not land, and a heartbeat that waited in its socket is not
/// acknowledged (an acknowledgement would renew region leases the new leader may have moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_write_after_it_resumes() {
    let etcd = EtcdProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let members = start_members(
        dir.path(),
        &etcd.endpoint,
        2,
        &["--election-lease-ttl", "1s"],
    );
    let refs: Vec<&MetasrvProcess> = members.iter().collect();
    let leader = wait_for_one_leader(&refs, Duration::from_secs(20)).await;
    let other = 1 - leader;
    let mut old_leader_store = metasrv::proto::v1::store_client::StoreClient::new(
        metasrv::client::connect(&members[leader].grpc_addr.to_string())
            .await
            .expect("connect"),
    );
    let put = |key: &str| pb::PutRequest {
        header: header(CLUSTER, 0),
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        prev_kv: false,
    };
    old_leader_store
        .put(put("before"))
        .await
        .expect("the leader writes");
    // A datanode that knows both members, and a raw heartbeat stream to the leader.
    let _datanode = datanodes_on_leader(&members, leader, 1).await;
    let (raw_requests, raw_inbound) = tokio::sync::mpsc::channel(4);
    let raw_request = |node_id: u64| crate::harness::raw_heartbeat(CLUSTER, node_id);
    raw_requests.send(raw_request(9)).await.expect("queue");
    let mut raw_responses = metasrv::proto::v1::heartbeat_client::HeartbeatClient::new(
        metasrv::client::connect(&members[leader].grpc_addr.to_string())
            .await
            .expect("connect"),
    )
    .heartbeat(tokio_stream::wrappers::ReceiverStream::new(raw_inbound))
    .await
    .expect("the leader takes the stream")
    .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), raw_responses.message())
        .await
        .expect("an answer from the leader");
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    // A frontend that follows the leader, with a table it will look up again.
    let all: Vec<String> = members.iter().map(|m| m.grpc_addr.to_string()).collect();
    let meta = MetaClient::connect(&all, CLUSTER, 0).await.expect("meta");
    meta.create_table(create_request(&cpu_table("paused"), 1, 1))
        .await
        .expect("create on the first leader");

    members[leader].signal("STOP");
    let refs = [&members[other]];
    wait_for_one_leader(&refs, Duration::from_secs(15)).await;
    // The datanode notices that nobody acknowledges it and finds the new leader.
    wait_for(
        "the datanode to move to the new leader",
        Duration::from_secs(15),
        || {
            let new_leader = &members[other];
            async move { (alive_nodes(new_leader).await == 1).then_some(()) }
        },
    )
    .await;
    // The frontend's calls to the paused leader hang; it gives up on them and finds the new one.
    meta.invalidate(&cpu_table("paused"));
    let looked_up = tokio::time::timeout(Duration::from_secs(15), meta.route(&cpu_table("paused")))
        .await
        .expect("a frontend is not held by a paused leader");
    looked_up.expect("the new leader serves the route");
    // The paused leader gets a write and a heartbeat; they sit in its sockets until it resumes.
    let pending = tokio::spawn(async move { old_leader_store.put(put("from-the-deposed")).await });
    raw_requests.send(raw_request(9)).await.expect("queue");
    tokio::time::sleep(Duration::from_millis(200)).await;
    members[leader].signal("CONT");
    let result = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the resumed member answers")
        .expect("task");
    let status = result.expect_err("a deposed leader's write is refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // It may answer in doubt (no lease) until it learns it was deposed; it never grants, and
    // it closes the stream once it knows.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match raw_responses.message().await {
                Err(status) => return status,
                Ok(Some(response)) => assert!(
                    response.region_lease.is_none(),
                    "a deposed leader granted a lease: {response:?}"
                ),
                Ok(None) => panic!("the stream ended without a redirect"),
            }
        }
    })
    .await
    .expect("the resumed member closes the stream");
    assert_eq!(closed.code(), tonic::Code::Unavailable, "{closed:?}");

    let mut new_leader_store = metasrv::proto::v1::store_client::StoreClient::new(
        metasrv::client::connect(&members[other].grpc_addr.to_string())
            .await
            .expect("connect"),
    );
    let got = new_leader_store
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: b"from-the-deposed".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert!(
        got.kvs.is_empty(),
        "the deposed leader's write landed: {:?}",
        got.kvs
    );
    // And the resumed member settles as a follower of the new leader.
    let refs: Vec<&MetasrvProcess> = members.iter().collect();
    let settled = wait_for_one_leader(&refs, Duration::from_secs(15)).await;
    assert_eq!(settled, other);
}

/// On a 3-member etcd cluster: losing one member does not disturb service; losing quorum makes
/// writes fail with Unavailable (no hang, no panic); service recovers when quorum returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_loss_and_quorum_loss() {
    use crate::harness::EtcdCluster;
    let mut etcd = EtcdCluster::start(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let endpoints = etcd.endpoints();
    let members = start_members(dir.path(), &endpoints, 3, &[]);
    let refs: Vec<&MetasrvProcess> = members.iter().collect();
    let leader = wait_for_one_leader(&refs, Duration::from_secs(20)).await;
    let grpc: Vec<String> = members.iter().map(|m| m.grpc_addr.to_string()).collect();
    let nodes = datanodes_on_leader(&members, leader, 2).await;
    let meta = MetaClient::connect(&grpc, CLUSTER, 0).await.expect("meta");
    meta.create_table(create_request(&cpu_table("before"), 2, 1))
        .await
        .expect("create with 3 etcd members");

    // One etcd member down: still a quorum; same leader, DDL works.
    etcd.stop_member(2);
    meta.create_table(create_request(&cpu_table("one_down"), 2, 1))
        .await
        .expect("create with 2 of 3 etcd members");
    assert_eq!(
        wait_for_one_leader(&refs, Duration::from_secs(10)).await,
        leader,
        "losing one etcd member does not move leadership"
    );

    // Quorum lost: a write fails with Unavailable within a bounded time.
    etcd.stop_member(1);
    let mut store = metasrv::proto::v1::store_client::StoreClient::new(
        metasrv::client::connect(&grpc[leader])
            .await
            .expect("connect"),
    );
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        store.put(pb::PutRequest {
            header: header(CLUSTER, 0),
            key: b"no-quorum".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        }),
    )
    .await
    .expect("a write without quorum is answered, not left hanging");
    let status = outcome.expect_err("a write without quorum fails");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    println!(
        "no quorum: write refused after {:?}: {}",
        started.elapsed(),
        status.message()
    );

    // Quorum back: a leader again, DDL works, earlier tables are intact.
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_healthy();
    let leader = wait_for_one_leader(&refs, Duration::from_secs(30)).await;
    wait_for(
        "the datanodes back on the leader",
        Duration::from_secs(15),
        || {
            let leader = &members[leader];
            async move { (alive_nodes(leader).await == 2).then_some(()) }
        },
    )
    .await;
    // Right after the outage a commit can land while its answer is lost; the client retries,
    // so the create is made idempotent as the client's docs say (if_not_exists).
    let recovered = pb::CreateTableRequest {
        if_not_exists: true,
        ..create_request(&cpu_table("recovered"), 2, 1)
    };
    if let Err(e) = meta.create_table(recovered).await {
        let logs: Vec<String> = members.iter().map(|m| m.log()).collect();
        panic!(
            "create after quorum returns failed: {e:?}; leader {leader}; logs:\n{}",
            logs.join("\n-----\n")
        );
    }
    for name in ["before", "one_down", "recovered"] {
        meta.route(&cpu_table(name)).await.expect("table present");
    }
    drop(nodes);
}
