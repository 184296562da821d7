//! `metasrv ctl` against real members: every subcommand, as tables and as JSON, following the
//! leader from a list that starts with a follower; its errors say what to do.

use std::time::Duration;

use clap::Parser;
use metasrv::ctl::{run, CtlArgs, CtlError};
use serde_json::Value;

use crate::election::pair_with_table;
use crate::harness::wait_for;
use crate::router::CLUSTER;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: CtlArgs,
}

/// Runs `metasrv ctl <args>` in-process: stdout, and the progress output.
async fn ctl(endpoints: &[String], args: &[&str]) -> Result<(String, String), CtlError> {
    let cluster = CLUSTER.to_string();
    let joined = endpoints.join(",");
    let mut argv = vec![
        "ctl",
        "--endpoints",
        joined.as_str(),
        "--cluster-id",
        cluster.as_str(),
    ];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let (mut out, mut progress) = (Vec::new(), Vec::new());
    run(cli.args, &mut out, &mut progress).await?;
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    Ok((text(out), text(progress)))
}

async fn ok(endpoints: &[String], args: &[&str]) -> String {
    match ctl(endpoints, args).await {
        Ok((out, _)) => out,
        Err(e) => panic!("metasrv ctl {args:?} failed: {e}"),
    }
}

async fn json(endpoints: &[String], args: &[&str]) -> Value {
    let mut with_json = vec!["--output", "json"];
    with_json.extend_from_slice(args);
    let out = ok(endpoints, &with_json).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// The leader of region `number` of the table, from `route --output json`.
async fn region_leader(endpoints: &[String], number: u64) -> (u64, u64) {
    let route = json(endpoints, &["route", "ctl"]).await;
    let region = route["table"]["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["region_number"] == number)
        .expect("the region")
        .clone();
    (
        region["region_id"].as_u64().expect("id"),
        region["leader"]["id"].as_u64().expect("leader"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_works_against_a_two_member_cluster() {
    let pair = pair_with_table(&[], "ctl").await;
    let follower = 1 - pair.leader;
    // The follower first: every command must find the leader by itself.
    let endpoints = vec![
        pair.members[follower].http_addr.to_string(),
        pair.members[pair.leader].http_addr.to_string(),
    ];
    let leader_id = pair.leader as u64 + 1;

    // status
    let status = ok(&endpoints, &["status"]).await;
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines[0].starts_with("MEMBER  NAME"), "{status}");
    assert_eq!(lines.len(), 3, "a header and two members: {status}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" leader ")).count(),
        1,
        "{status}"
    );
    assert!(
        status.contains(&format!("follower (leader: {leader_id})")),
        "{status}"
    );
    let status = json(&endpoints, &["status"]).await;
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 2, "{status}");
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{status}"
    );
    assert!(members
        .iter()
        .all(|m| m["backend"] == "etcd" && m["health"] == "serving"));

    // nodes
    let nodes = ok(&endpoints, &["nodes"]).await;
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" alive ")).count(),
        3,
        "{nodes}"
    );
    let nodes = json(&endpoints, &["nodes"]).await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(3), "{nodes}");

    // tables and route
    let tables = ok(&endpoints, &["tables"]).await;
    assert!(tables.contains("greptime.public.ctl  6"), "{tables}");
    let tables = json(&endpoints, &["tables"]).await;
    assert_eq!(tables["tables"][0]["regions"], 6, "{tables}");
    let route = ok(&endpoints, &["route", "greptime.public.ctl"]).await;
    assert!(
        route.starts_with("table greptime.public.ctl (id "),
        "{route}"
    );
    assert_eq!(
        route.lines().count(),
        2 + 6,
        "a title, a header, 6 regions: {route}"
    );
    let missing = ctl(&endpoints, &["route", "nope"])
        .await
        .expect_err("no such table");
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    // maintenance
    assert!(ok(&endpoints, &["maintenance", "on"])
        .await
        .starts_with("maintenance on"));
    assert_eq!(json(&endpoints, &["maintenance"]).await["enabled"], true);
    assert!(ok(&endpoints, &["maintenance", "off"])
        .await
        .starts_with("maintenance off"));
    assert_eq!(json(&endpoints, &["maintenance"]).await["enabled"], false);

    // decisions: the mode (on the leader, whichever member is asked), a planning round, the
    // listing, and a refusal with the reason
    assert_eq!(
        ok(&endpoints, &["decisions", "mode", "approve"])
            .await
            .trim(),
        "autoadmin mode approve"
    );
    assert_eq!(
        json(&endpoints, &["decisions", "mode"]).await["mode"],
        "approve"
    );
    ok(&endpoints, &["decisions", "plan"]).await;
    let listed = json(&endpoints, &["decisions", "list", "--status", "succeeded"]).await;
    assert_eq!(
        listed["decisions"],
        serde_json::json!([]),
        "nothing ran: {listed}"
    );
    let missing = ctl(&endpoints, &["decisions", "approve", "424242"])
        .await
        .expect_err("no such decision");
    assert!(
        missing.to_string().contains("no decision 424242"),
        "{missing}"
    );
    ok(&endpoints, &["decisions", "mode", "dry-run"]).await;

    // kv, in the user key space
    ok(&endpoints, &["kv", "put", "user/a", "1"]).await;
    ok(&endpoints, &["kv", "put", "user/b", "2"]).await;
    assert_eq!(
        ok(&endpoints, &["kv", "get", "user/a"]).await,
        "KEY     VALUE\nuser/a  1\n"
    );
    let range = json(&endpoints, &["kv", "range", "user/", "--prefix"]).await;
    assert_eq!(range["kvs"].as_array().map(Vec::len), Some(2), "{range}");
    let deleted = json(&endpoints, &["kv", "delete", "user/", "--prefix"]).await;
    assert_eq!(deleted["deleted"], 2, "{deleted}");
    let internal = ctl(&endpoints, &["kv", "put", "__meta/x", "1"])
        .await
        .expect_err("internal");
    assert!(
        internal.to_string().contains("PermissionDenied"),
        "{internal}"
    );

    // migrate-region and transfer-leader, followed to the end
    let (region, from) = region_leader(&endpoints, 0).await;
    let to = (from % 3) + 1;
    let (out, _) = ctl(
        &endpoints,
        &[
            "migrate-region",
            &region.to_string(),
            "--to",
            &to.to_string(),
        ],
    )
    .await
    .expect("migrate");
    assert!(
        out.contains("migrate_region") && out.contains("done"),
        "{out}"
    );
    assert_eq!(region_leader(&endpoints, 0).await, (region, to));

    // transfer-leader, on a table with two copies per region
    let copies = crate::router::cpu_table("ctl2");
    pair.meta
        .create_table(crate::router::create_request(&copies, 2, 2))
        .await
        .expect("a table with two copies");
    let route = json(&endpoints, &["route", "ctl2"]).await;
    let region = &route["table"]["regions"][0];
    let (region_id, follower_id) = (
        region["region_id"].as_u64().expect("id"),
        region["followers"][0]["id"].as_u64().expect("a follower"),
    );
    let transferred = json(
        &endpoints,
        &[
            "transfer-leader",
            &region_id.to_string(),
            "--to",
            &follower_id.to_string(),
        ],
    )
    .await;
    assert_eq!(transferred["procedure"]["state"], "done", "{transferred}");
    let route = json(&endpoints, &["route", "ctl2"]).await;
    assert_eq!(
        route["table"]["regions"][0]["leader"]["id"], follower_id,
        "{route}"
    );

    // drain-node, with its progress bar
    let drained = (to % 3) + 1;
    let (out, progress) = ctl(&endpoints, &["drain-node", &drained.to_string()])
        .await
        .expect("drain");
    assert!(out.contains("drain_node") && out.contains("done"), "{out}");
    assert!(progress.contains("moved, 0 failed"), "{progress}");
    let route = json(&endpoints, &["route", "ctl"]).await;
    assert!(
        route["table"]["regions"]
            .as_array()
            .expect("regions")
            .iter()
            .all(|r| r["leader"]["id"] != drained),
        "node {drained} drained: {route}"
    );
    // The drained node stays cordoned (shown by `nodes`) until uncordoned.
    let nodes = ok(&endpoints, &["nodes"]).await;
    assert!(nodes.contains("(cordoned)"), "{nodes}");
    let uncordoned = ok(&endpoints, &["uncordon-node", &drained.to_string()]).await;
    assert!(uncordoned.contains("uncordoned"), "{uncordoned}");
    let cordoned = ok(
        &endpoints,
        &[
            "cordon-node",
            &drained.to_string(),
            "--reason",
            "new disk & fans",
        ],
    )
    .await;
    assert!(cordoned.contains("(new disk & fans)"), "{cordoned}");
    let listed = json(&endpoints, &["nodes"]).await;
    let node = listed["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == drained)
        .cloned()
        .expect("the drained node is listed");
    assert_eq!(node["cordoned"], "new disk & fans", "{listed}");
    ok(&endpoints, &["uncordon-node", &drained.to_string()]).await;

    // procedures: both operations, done
    let procedures = ok(&endpoints, &["procedures"]).await;
    assert!(procedures.contains("migrate_region"), "{procedures}");
    assert!(procedures.contains("drain_node"), "{procedures}");
    let procedures = json(&endpoints, &["procedures"]).await;
    assert!(procedures["procedures"]
        .as_array()
        .expect("procedures")
        .iter()
        .all(|p| p["state"] == "done"));

    // leader resign: the other member takes over, and the CLI follows
    let shown = json(&endpoints, &["leader", "show"]).await;
    assert_eq!(shown["leader"]["id"], leader_id);
    let resigned = ok(&endpoints, &["leader", "resign"]).await;
    assert!(resigned.contains("resigned"), "{resigned}");
    let new_leader = wait_for("the other member leads", Duration::from_secs(15), || {
        let endpoints = endpoints.clone();
        async move {
            let shown = ctl(&endpoints, &["--output", "json", "leader", "show"])
                .await
                .ok()?;
            let id = serde_json::from_str::<Value>(&shown.0).ok()?["leader"]["id"].as_u64()?;
            (id != leader_id).then_some(id)
        }
    })
    .await;
    assert_eq!(new_leader, follower as u64 + 1);
    drop(pair);
}

/// An in-process metasrv on a fresh embedded store (the directory lives as long as the server).
async fn server_with(
    security: metasrv::security::SecurityConfig,
) -> (tempfile::TempDir, crate::harness::TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(
        metasrv::store::embedded::EmbeddedStore::open(dir.path()).expect("store"),
    );
    let config = metasrv::Config {
        cluster_id: CLUSTER,
        security,
        ..metasrv::Config::default()
    };
    (dir, crate::harness::TestServer::start(store, config).await)
}

/// The binary itself: a failure is exit status 1 with a message that says what to do.
#[test]
fn the_binary_says_what_to_do_when_no_member_answers() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_metasrv"))
        .args(["ctl", "--endpoints", "127.0.0.1:1", "nodes"])
        .env_remove("METASRV_ENDPOINTS")
        .env_remove("METASRV_TOKEN")
        .output()
        .expect("run metasrv ctl");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("check --endpoints"), "{stderr}");
}

/// With tokens configured: no token is refused with what to pass; a frontend token reads but
/// may not act; an operator's token may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_asked_for_and_roles_respected() {
    use metasrv::security::{hash_token, Role, SecurityConfig, TokenEntry};
    let token = |name: &str, role: Role| TokenEntry {
        name: name.into(),
        sha256: hash_token(&format!("{name}-secret")),
        roles: vec![role],
    };
    let (_dir, server) = server_with(SecurityConfig {
        tokens: vec![token("fe", Role::Frontend), token("ops", Role::Operator)],
        ..SecurityConfig::default()
    })
    .await;
    let endpoints = vec![server.http_addr.to_string()];
    let anonymous = ctl(&endpoints, &["maintenance"])
        .await
        .expect_err("no token");
    assert!(
        anonymous.to_string().contains("pass --token"),
        "{anonymous}"
    );
    let frontend = ctl(&endpoints, &["--token", "fe-secret", "maintenance"]).await;
    assert!(frontend.is_ok(), "a frontend reads: {frontend:?}");
    let denied = ctl(&endpoints, &["--token", "fe-secret", "maintenance", "on"])
        .await
        .expect_err("a frontend may not act");
    assert!(denied.to_string().contains("operator"), "{denied}");
    let (out, _) = ctl(&endpoints, &["--token", "ops-secret", "maintenance", "on"])
        .await
        .expect("an operator acts");
    assert!(out.starts_with("maintenance on"), "{out}");
    // The dashboard's page is open (a browser cannot send a token with a page load).
    let (code, page) = crate::harness::http_get(server.http_addr, "/dashboard").await;
    assert_eq!(code, 200, "{page}");
    server.stop().await;
}

/// The HTTP API describes itself (every route the server has), and every error is JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_described_and_its_errors_are_json() {
    let (_dir, server) = server_with(Default::default()).await;
    let (code, body) = crate::harness::http_get(server.http_addr, "/v1/openapi.json").await;
    assert_eq!(code, 200);
    let spec: Value = serde_json::from_str(&body).expect("the description is JSON");
    assert_eq!(spec["openapi"], "3.0.3");
    // The routes of src/http/mod.rs, as axum spells them.
    let source = include_str!("../../src/http/mod.rs");
    let routes: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(routes.len() >= 15, "found the routes: {routes:?}");
    for route in routes {
        let described = spec["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .any(|path| {
                path == route || (route == "/dashboard/{asset}" && path.starts_with("/dashboard/"))
            });
        assert!(described, "{route} is not in docs/openapi.json");
    }
    for (method, path, expected) in [
        ("GET", "/no/such/thing", 404),
        ("DELETE", "/v1/nodes", 405),
        ("PUT", "/v1/maintenance?enabled=maybe", 400),
        ("POST", "/v1/regions/x/migrate?to=2", 400),
        ("GET", "/v1/load?samples=0", 400),
        ("GET", "/v1/tables/greptime/public/none", 404),
        ("GET", "/dashboard/none.js", 404),
        ("POST", "/v1/leader/resign", 409),
    ] {
        let (code, body) = crate::harness::http_request(server.http_addr, method, path).await;
        assert_eq!(code, expected, "{method} {path}: {body}");
        let error: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path} answered no JSON ({e}): {body}"));
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {body}"
        );
    }
    server.stop().await;
}

/// Against a TLS-only cluster that verifies client certificates: with the CA, a trusted
/// certificate and the operator token, ctl reads (HTTPS) and writes keys (gRPC over TLS);
/// without a certificate it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reaches_a_tls_cluster_with_a_client_certificate() {
    let pki = crate::security::pki::Pki::new();
    let (_fixture, store) = crate::store_conformance::embedded();
    let config = metasrv::Config {
        cluster_id: CLUSTER,
        ..crate::security::secure_config(&pki)
    };
    let server = crate::harness::TestServer::start(store, config).await;
    let endpoints = vec![server.http_addr.to_string()];
    let (cert, key) = pki.client("tool-1", true);
    let ca = pki.path("ca.pem").display().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls = [
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
        "--domain",
        "localhost",
        "--token",
        crate::security::OPS_TOKEN,
    ];
    let with = |args: &[&'static str]| -> Vec<&str> {
        tls.iter().copied().chain(args.iter().copied()).collect()
    };
    let status = ok(&endpoints, &with(&["status"])).await;
    assert!(status.contains(" leader "), "{status}");
    ok(&endpoints, &with(&["kv", "put", "user/tls", "1"])).await;
    assert_eq!(
        ok(&endpoints, &with(&["kv", "get", "user/tls"])).await,
        "KEY       VALUE\nuser/tls  1\n"
    );
    let no_certificate = ctl(
        &endpoints,
        &["--ca", ca.as_str(), "--domain", "localhost", "nodes"],
    )
    .await
    .expect_err("a client certificate is required");
    assert!(
        matches!(no_certificate, CtlError::Unreachable(_)),
        "{no_certificate}"
    );
    server.stop().await;
}
