//! The Central Nervous System: each scenario (a hot spot, a scale-out, skewed reads) run on a
//! compressed clock against an in-process metasrv with simulated datanodes, asserting that the
//! node-load imbalance falls under the target within 60 simulated seconds with at most 1.5x
//! the minimum moves, that no region moves twice within its cooldown, and that no region ever
//! had two writers; the baseline (dry-run) moves nothing; and through the APIs, approve mode
//! executes exactly the approved decision while the decision stream shows every change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metasrv::catalog::model::TableName;
use metasrv::client::{header, MetaClient};
use metasrv::cns::decisions::Mode;
use metasrv::cns::CnsConfig;
use metasrv::failure_detector::FailureDetectorConfig;
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::autoadmin_client::AutoadminClient;
use metasrv::sim::scenario::{
    moves_within_cooldown, run_scenario, ScenarioKind, ScenarioOptions, ScenarioReport,
    TARGET_IMBALANCE,
};
use metasrv::sim::workload::host_table;
use metasrv::sim::{LoadModel, RegionDemand, SimDatanode, SimDatanodeConfig};
use metasrv::Config;
use serde_json::Value;

use crate::chaos::assert_no_overlapping_leaders;
use crate::harness::{http_get, http_request, TestServer};
use crate::store_conformance::embedded;

async fn scenario(kind: ScenarioKind, rebalance: bool) -> ScenarioReport {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = ScenarioOptions::new(kind, dir.path().join("data"));
    options.rebalance = rebalance;
    options.watch = Duration::from_secs(70);
    run_scenario(options).await.expect("the scenario runs")
}

fn timeline(report: &ScenarioReport) -> String {
    report
        .timeline
        .iter()
        .map(|p| {
            format!(
                "t={:.0}s imbalance {:.2} moves {}",
                p.at, p.imbalance, p.moves
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What every rebalancing scenario must show.
fn assert_rebalanced(report: &ScenarioReport) {
    let name = report.kind.name();
    assert!(
        report.imbalance_before > TARGET_IMBALANCE,
        "{name}: the change must unbalance the cluster first:\n{}",
        timeline(report)
    );
    let converged = report.converged_after.unwrap_or(f64::INFINITY);
    assert!(
        converged <= 60.0,
        "{name}: imbalance must fall under {TARGET_IMBALANCE} within 60 simulated seconds (took {converged}):\n{}",
        timeline(report)
    );
    assert!(
        report.moves as f64 <= 1.5 * report.minimum_moves as f64,
        "{name}: {} moves, more than 1.5x the minimum {}: {:#?}",
        report.moves,
        report.minimum_moves,
        report
            .decisions
            .iter()
            .map(|d| (&d.proposal.action, &d.proposal.reason))
            .collect::<Vec<_>>()
    );
    let thrash = moves_within_cooldown(report);
    assert!(
        thrash.is_empty(),
        "{name}: regions moved twice within the cooldown: {thrash:?}"
    );
    assert_no_overlapping_leaders(&report.write_logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_spot_is_spread_over_the_cluster() {
    assert_rebalanced(&scenario(ScenarioKind::HotSpot, true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_datanode_receives_its_share() {
    assert_rebalanced(&scenario(ScenarioKind::ScaleOut, true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_cost_more_cpu_weigh_more_than_their_read_units() {
    let report = scenario(ScenarioKind::SkewedReads, true).await;
    assert_rebalanced(&report);
    // The moves took heavy regions off the nodes that had them: by read units alone the
    // layout was already even (every region reads 100 RCU).
    let moved_heavy = report
        .decisions
        .iter()
        .filter(|d| d.proposal.planner == metasrv::cns::planner::PlannerKind::HotRegions)
        .count();
    assert!(
        moved_heavy >= 2,
        "the compute-aware unit must move heavy regions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_in_dry_run_records_decisions_and_moves_nothing() {
    let report = scenario(ScenarioKind::HotSpot, false).await;
    assert_eq!(report.moves, 0, "dry-run moves nothing");
    assert!(
        !report.decisions.is_empty()
            && report
                .decisions
                .iter()
                .all(|d| d.status == metasrv::cns::decisions::DecisionStatus::DryRun),
        "dry-run records what it would do: {:?}",
        report
            .decisions
            .iter()
            .map(|d| d.status)
            .collect::<Vec<_>>()
    );
    assert!(
        report.imbalance_after > TARGET_IMBALANCE,
        "nothing rebalanced:\n{}",
        timeline(&report)
    );
    // Recorded moves count as made for the next round: dry-run records what auto would do
    // (the moves, again once their cooldown has passed, and the moves they lead to), not the
    // same moves again every round (11 decisions in this window before they counted). Checked
    // per region, against the cooldown, rather than by a total: how many cooldowns fit in the
    // window depends on when the first plan came, which a loaded machine shifts.
    let cooldown_ms = report.cooldown * 1000.0
        / ScenarioOptions::new(ScenarioKind::HotSpot, "x".into()).time_scale;
    let mut last_at: std::collections::HashMap<u64, u64> = Default::default();
    for d in &report.decisions {
        let Some(region) = d.proposal.action.region_id() else {
            continue;
        };
        if let Some(before) = last_at.insert(region, d.at_unix_ms) {
            let gap = d.at_unix_ms.saturating_sub(before) as f64;
            assert!(
                gap >= cooldown_ms * 0.95,
                "region {region} was proposed again {gap} ms after its last decision (cooldown \
                 {cooldown_ms} ms): {:?}",
                report
                    .decisions
                    .iter()
                    .map(|d| (&d.proposal.action, d.at_unix_ms))
                    .collect::<Vec<_>>()
            );
        }
    }
}

const CLUSTER: u64 = 0;
const INTERVAL: Duration = Duration::from_millis(100);

async fn json(server: &TestServer, method: &str, path: &str) -> (u16, Value) {
    let (code, body) = http_request(server.http_addr, method, path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code, value)
}

/// Where each region of the table leads now, by the nodes' own view.
fn leaders(nodes: &[SimDatanode]) -> BTreeMap<u64, u64> {
    nodes
        .iter()
        .flat_map(|n| {
            n.regions()
                .into_iter()
                .filter(|(_, role)| *role == metasrv::stats::RegionRole::Leader)
                .map(move |(region, _)| (region, n.node_id()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_mode_executes_exactly_the_approved_decision_and_the_stream_shows_each_change() {
    let (_fixture, store) = embedded();
    let config = Config {
        cluster_id: CLUSTER,
        heartbeat_interval: INTERVAL,
        region_history: 5,
        failure_detector: FailureDetectorConfig {
            acceptable_heartbeat_pause: Duration::from_secs(1),
            min_std_deviation: Duration::from_millis(20),
            ..FailureDetectorConfig::default()
        },
        cns: CnsConfig {
            mode: Mode::Approve,
            // Rounds only on demand (POST /v1/autoadmin/plan).
            interval: Duration::from_secs(3600),
            settle: Duration::ZERO,
            ..CnsConfig::default()
        },
        ..Config::default()
    };
    let server = TestServer::start(store, config).await;
    let channel = server.channel().await;
    let model = Arc::new(LoadModel::default());
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let config = SimDatanodeConfig {
            interval: INTERVAL,
            workload: Some(model.clone()),
            ..SimDatanodeConfig::new(CLUSTER, id)
        };
        nodes.push(
            SimDatanode::start_serving(channel.clone(), config)
                .await
                .expect("datanode starts"),
        );
    }
    let addr = server.grpc_addr.to_string();
    let meta = MetaClient::connect(std::slice::from_ref(&addr), CLUSTER, 0)
        .await
        .expect("client");
    let table = TableName::new("greptime", "public", "cpu");
    let (_, route) = meta
        .create_table(host_table(CLUSTER, &table, 6, 1))
        .await
        .expect("created");
    // Node 1's regions turn hot; the others stay cool.
    let cool = RegionDemand {
        rcus: 10.0,
        wcus: 10.0,
        cpu_ms: 10.0,
        scanned_bytes: 0.0,
    };
    model.set_table(route.route.table_id, cool);
    for region in route.route.regions.iter().filter(|r| r.leader.id == 1) {
        model.set_region(region.region_id, cool.scaled(20.0));
    }
    let mut watch = AutoadminClient::new(channel.clone())
        .watch_decisions(pb::WatchDecisionsRequest {
            header: header(CLUSTER, 0),
            after_seq: 0,
        })
        .await
        .expect("the stream opens")
        .into_inner();

    // A round on demand proposes; nothing moves while it waits.
    let deadline = Instant::now() + Duration::from_secs(20);
    let proposed: Vec<Value> = loop {
        let (code, body) = json(&server, "POST", "/v1/autoadmin/plan").await;
        assert_eq!(code, 200, "{body}");
        let proposed: Vec<Value> = body["decisions"]
            .as_array()
            .expect("decisions")
            .iter()
            .filter(|d| d["status"] == "proposed")
            .cloned()
            .collect();
        if !proposed.is_empty() {
            break proposed;
        }
        assert!(
            Instant::now() < deadline,
            "no move proposed for a node at 20x the others' load: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let before = leaders(&nodes);
    tokio::time::sleep(INTERVAL * 5).await;
    assert_eq!(leaders(&nodes), before, "a proposal waits for approval");

    // Approve the first; reject the second (over gRPC) if there is one.
    let approved = &proposed[0];
    let approved_id = approved["id"].as_u64().expect("id");
    let region = approved["action"]["region_id"].as_u64().expect("a move");
    let target = approved["action"]["to"].as_u64().expect("a target");
    let (code, body) = json(
        &server,
        "POST",
        &format!("/v1/decisions/{approved_id}/approve"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, again) = json(
        &server,
        "POST",
        &format!("/v1/decisions/{approved_id}/approve"),
    )
    .await;
    assert_eq!(code, 409, "approved twice: {again}");
    let rejected = proposed.get(1).map(|d| d["id"].as_u64().expect("id"));
    if let Some(id) = rejected {
        let answer = AutoadminClient::new(channel.clone())
            .reject_decision(pb::DecisionRequest {
                header: header(CLUSTER, 0),
                id,
                reason: "not now".into(),
            })
            .await
            .expect("rejected")
            .into_inner();
        let decision = answer.decision.expect("decision");
        assert_eq!(
            (decision.status.as_str(), decision.outcome.as_str()),
            ("rejected", "not now")
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = json(&server, "GET", &format!("/v1/decisions/{approved_id}")).await;
        let status = body["decision"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == "succeeded" {
            assert!(body["decision"]["procedure_id"].is_string(), "{body}");
            break;
        }
        assert!(
            status == "executing" && Instant::now() < deadline,
            "the approved move must succeed in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Exactly that region moved, to that node.
    let mut expected = before.clone();
    expected.insert(region, target);
    let deadline = Instant::now() + Duration::from_secs(5);
    while leaders(&nodes) != expected {
        assert!(
            Instant::now() < deadline,
            "only region {region} may move, to node {target}: {:?} vs {expected:?}",
            leaders(&nodes)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Why did the region move? The log says, by region.
    let (_, why) = json(&server, "GET", &format!("/v1/decisions?region={region}")).await;
    assert_eq!(
        why["decisions"][0]["id"].as_u64(),
        Some(approved_id),
        "{why}"
    );
    assert_eq!(why["mode"], "approve");

    // The stream saw the approved decision go proposed -> executing -> succeeded, in order.
    let mut statuses = Vec::new();
    let mut last_seq = 0;
    while statuses.last().map(String::as_str) != Some("succeeded") {
        let event = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("an event in time")
            .expect("the stream stays open")
            .expect("an event");
        assert!(event.seq > last_seq, "sequence numbers increase");
        last_seq = event.seq;
        let decision = event.decision.expect("decision");
        if decision.id == approved_id {
            statuses.push(decision.status);
        }
    }
    statuses.dedup();
    assert_eq!(statuses, ["proposed", "executing", "succeeded"]);
    // Resuming from a sequence number gives what came after it.
    let (_, events) = json(
        &server,
        "GET",
        &format!("/v1/decisions/events?after_seq={}", last_seq - 1),
    )
    .await;
    assert_eq!(
        events["events"][0]["seq"].as_u64(),
        Some(last_seq),
        "{events}"
    );

    // Modes: a bad one is refused; dry-run is kept and answered.
    let (code, _) = json(&server, "PUT", "/v1/autoadmin?mode=sometimes").await;
    assert_eq!(code, 400);
    let (code, body) = json(&server, "PUT", "/v1/autoadmin?mode=dry-run").await;
    assert_eq!((code, body["mode"].as_str()), (200, Some("dry-run")));
    let (_, body) = http_get(server.http_addr, "/v1/autoadmin").await;
    assert!(body.contains("\"dry-run\""), "{body}");
    let (code, body) = json(&server, "GET", "/v1/decisions/999999").await;
    assert_eq!(code, 404, "{body}");
}
