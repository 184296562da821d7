//! The HTTP API for operators and the dashboard: `/health` (is the store reachable?),
//! `/metrics` (Prometheus text format), the cluster (`/v1/nodes`, `/v1/members`, `/v1/tables`,
//! `/v1/load`, ...), operations (`operations.rs`), the dashboard and its OpenAPI description
//! (`dashboard.rs`, `docs/openapi.json`). Every error is JSON: `{"error": ..., "leader": ...}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::actors::cluster_view::{ClusterView, GetNode, ListNodes, NodePage};
use crate::metrics::Metrics;
use crate::store::{KeyRange, KvBackend, RangeRequest};

/// How long `/health` waits for the store before it reports it unreachable.
const HEALTH_STORE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HttpState {
    /// Starts migrations, leader transfers and drains.
    pub scheduler: actix::Addr<crate::actors::scheduler::Scheduler>,
    /// Maintenance mode (shared with the Scheduler).
    pub maintenance: Arc<std::sync::atomic::AtomicBool>,
    pub store: Arc<dyn KvBackend>,
    pub leadership: Arc<crate::election::Leadership>,
    pub cluster_view: actix::Addr<ClusterView>,
    pub metrics: Arc<Metrics>,
    /// Metadata records the catalog load set aside (named in `/health`).
    pub quarantine: Arc<crate::catalog::quarantine::Quarantine>,
    pub member_id: u64,
    pub member_name: String,
    pub cluster_id: u64,
    /// Who may call what (open when no identity is configured).
    pub authenticator: Arc<crate::security::Authenticator>,
    /// The catalog (`/v1/tables`).
    pub tables: Arc<crate::catalog::TableManager>,
    /// Hands leadership over (`POST /v1/leader/resign`).
    pub election: actix::Addr<crate::actors::election::ElectionActor>,
    /// The decision log, the mode, and the actor that approves (`/v1/decisions`).
    pub autoadmin: crate::actors::autoadmin::AutoadminHandle,
}

mod cluster;
mod dashboard;
mod decisions;
mod operations;

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{node_id}", get(node))
        .route("/v1/leader", get(leader))
        .route("/v1/procedures", get(operations::procedures))
        .route("/v1/procedures/{id}", get(operations::procedure))
        .route(
            "/v1/regions/{region_id}/migrate",
            post(operations::migrate_region),
        )
        .route(
            "/v1/regions/{region_id}/transfer-leader",
            post(operations::transfer_leader),
        )
        .route("/v1/nodes/{node_id}/drain", post(operations::drain_node))
        .route("/v1/nodes/{node_id}/cordon", post(operations::cordon_node))
        .route(
            "/v1/nodes/{node_id}/uncordon",
            post(operations::uncordon_node),
        )
        .route("/v1/maintenance", get(maintenance).put(set_maintenance))
        .route("/v1/members", get(members))
        .route("/v1/leader/resign", post(cluster::resign))
        .route("/v1/tables", get(cluster::tables))
        .route("/v1/tables/{catalog}/{schema}/{table}", get(cluster::table))
        .route("/v1/load", get(cluster::load))
        .route("/v1/decisions", get(decisions::list))
        .route("/v1/decisions/events", get(decisions::events))
        .route("/v1/decisions/{id}", get(decisions::one))
        .route("/v1/decisions/{id}/approve", post(decisions::approve))
        .route("/v1/decisions/{id}/reject", post(decisions::reject))
        .route(
            "/v1/autoadmin",
            get(decisions::mode).put(decisions::set_mode),
        )
        .route("/v1/autoadmin/plan", post(decisions::plan_now))
        .route("/v1/openapi.json", get(dashboard::openapi))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/{asset}", get(dashboard::asset))
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.authenticator.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// Every unknown path: a JSON error like every other.
async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Resolves the caller (client certificate names, bearer token) and refuses, as JSON with a
/// message, what its roles may not do (`security::authorize_http`).
async fn authenticate(
    State(authenticator): State<Arc<crate::security::Authenticator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Open paths are served whatever the caller sends (a probe with a stale token included).
    if !authenticator.enabled()
        || crate::security::is_open_http_path(request.method(), request.uri().path())
    {
        return next.run(request).await;
    }
    let names = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::security::tls::PeerNames>>()
        .map(|peer| peer.0 .0.clone())
        .unwrap_or_default();
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let allowed = authenticator
        .identify(&names, authorization)
        .and_then(|identity| {
            crate::security::authorize_http(request.method(), request.uri().path(), &identity)
        });
    match allowed {
        Ok(()) => next.run(request).await,
        Err(status) => status_response(status),
    }
}

/// 200 when the metadata store answers a read in time, 503 with the reason otherwise.
async fn health(State(state): State<HttpState>) -> Response {
    let probe = state.store.range(RangeRequest {
        range: KeyRange::single(b"__meta/health".to_vec()),
        limit: 1,
        keys_only: true,
        revision: 0,
    });
    let store_error = match tokio::time::timeout(HEALTH_STORE_TIMEOUT, probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the store did not answer within {HEALTH_STORE_TIMEOUT:?}"
        )),
    };
    let body = json!({
        "status": if store_error.is_none() { "serving" } else { "not_serving" },
        "cluster_id": state.cluster_id,
        "member_id": state.member_id,
        "member_name": state.member_name,
        "backend": state.store.name(),
        "error": store_error,
        // Records this member could not read when it loaded the catalog: their tables are
        // not served until the records are repaired (the member itself works).
        "quarantined": state.quarantine.records(),
        // How this member's catalog was loaded when it last became leader: from its standby
        // copy, or read from the store (and how long that took).
        "catalog_load": state.tables.last_load(),
    });
    let code = if store_error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let leadership = state.leadership.state();
    state
        .metrics
        .is_leader
        .set(i64::from(state.leadership.is_serving_leader()));
    state.metrics.leader_term.set(leadership.term as i64);
    state
        .metrics
        .quarantined_records
        .set(state.quarantine.len() as i64);
    state.metrics.maintenance.set(i64::from(
        state.maintenance.load(std::sync::atomic::Ordering::Relaxed),
    ));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Every known datanode: address, status, last heartbeat, current phi and latest stats.
/// Nodes a listing gives per page unless asked, and at most: at 10,000 nodes a listing is
/// read a page at a time (`next_after` says where the next one starts).
const DEFAULT_NODE_PAGE: usize = 1000;
const MAX_NODE_PAGE: usize = 1000;

#[derive(serde::Deserialize)]
pub(super) struct NodePageQuery {
    after: Option<u64>,
    limit: Option<usize>,
    /// `/v1/load` only.
    samples: Option<usize>,
}

/// The page a listing asked for (and `samples`, for `/v1/load`), or why it is bad (a 400).
pub(super) fn node_page(
    query: Result<Query<NodePageQuery>, QueryRejection>,
) -> Result<(NodePage, Option<usize>), String> {
    let Query(query) = query.map_err(|e| e.body_text())?;
    let limit = query.limit.unwrap_or(DEFAULT_NODE_PAGE);
    if limit == 0 || limit > MAX_NODE_PAGE {
        return Err(format!("limit must be 1 to {MAX_NODE_PAGE}"));
    }
    let page = NodePage {
        after: query.after,
        limit,
    };
    Ok((page, query.samples))
}

/// `GET /v1/nodes[?after=ID][&limit=N]`: known nodes in id order, with their status, latest
/// stats and how many regions they lead and follow (`/v1/nodes/{id}` lists the regions).
async fn nodes(
    State(state): State<HttpState>,
    query: Result<Query<NodePageQuery>, QueryRejection>,
) -> Response {
    let page = match node_page(query) {
        Ok((page, _)) => page,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    match state.cluster_view.send(ListNodes { page }).await {
        Ok(listing) => Json(listing).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cluster view unavailable: {e}"),
        ),
    }
}

/// `GET /v1/nodes/{node_id}`: one node with every region of its last report.
async fn node(State(state): State<HttpState>, path: Result<Path<u64>, PathRejection>) -> Response {
    let node_id = match path {
        Ok(Path(node_id)) => node_id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match state.cluster_view.send(GetNode { node_id }).await {
        Ok(Some(node)) => Json(json!({ "node": node })).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("node {node_id} is not known"),
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cluster view unavailable: {e}"),
        ),
    }
}

/// Who leads, as this member sees it.
async fn leader(State(state): State<HttpState>) -> Response {
    let leadership = state.leadership.state();
    Json(json!({
        "leader": leadership.leader,
        "me": state.leadership.me(),
        "is_leader": state.leadership.is_serving_leader(),
        "term": leadership.term,
    }))
    .into_response()
}

/// Every member campaigning for leadership (on etcd: each holds a key under the election
/// name; on the embedded store: this member alone), with the leader marked.
async fn members(State(state): State<HttpState>) -> Response {
    let leader = state.leadership.leader();
    let candidates: Vec<crate::election::MemberInfo> = if state.store.as_etcd().is_some() {
        let mut prefix = crate::actors::election::ELECTION_NAME.to_vec();
        prefix.push(b'/');
        match state
            .store
            .range(RangeRequest {
                range: KeyRange::prefix(prefix),
                limit: 0,
                keys_only: false,
                revision: 0,
            })
            .await
        {
            Ok(response) => response
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect(),
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({ "error": e.to_string() })),
                )
                    .into_response()
            }
        }
    } else {
        vec![state.leadership.me().clone()]
    };
    let members: Vec<_> = candidates
        .into_iter()
        .map(|m| {
            let is_leader = leader.as_ref().is_some_and(|l| l.id == m.id);
            json!({ "member": m, "leader": is_leader })
        })
        .collect();
    Json(json!({ "members": members })).into_response()
}

async fn maintenance(State(state): State<HttpState>) -> Response {
    let enabled = state.maintenance.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({ "enabled": enabled })).into_response()
}

#[derive(serde::Deserialize)]
struct MaintenanceQuery {
    enabled: bool,
}

/// `PUT /v1/maintenance?enabled=true|false` on the leader: while enabled, dead nodes are not
/// failed over. Persisted, so it survives leader changes.
async fn set_maintenance(
    State(state): State<HttpState>,
    query: Result<axum::extract::Query<MaintenanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(axum::extract::Query(query)) => query,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if let Err(status) = state.leadership.require_leader() {
        let leader = crate::election::redirect_target(&status);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": status.message(), "leader": leader })),
        )
            .into_response();
    }
    match crate::procedure::save_maintenance(state.store.as_ref(), query.enabled).await {
        Ok(()) => {
            state
                .maintenance
                .store(query.enabled, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(enabled = query.enabled, "maintenance mode changed");
            Json(json!({ "enabled": query.enabled })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// The JSON error for a refused operation (a gRPC status from the admin layer).
pub(super) fn status_response(status: tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let leader = crate::election::redirect_target(&status);
    (
        code,
        Json(json!({ "error": status.message(), "leader": leader })),
    )
        .into_response()
}
