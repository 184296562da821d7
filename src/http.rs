//! The HTTP endpoints for operators: `/health` (is the store reachable?) and `/metrics`
//! (Prometheus text format).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::State;
use axum::extract::{Path, Query};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::actors::cluster_view::{ClusterView, ListNodes};
use crate::actors::scheduler::OperationRequest;
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
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(nodes))
        .route("/v1/leader", get(leader))
        .route("/v1/procedures", get(procedures))
        .route("/v1/procedures/{id}", get(procedure))
        .route("/v1/regions/{region_id}/migrate", post(migrate_region))
        .route(
            "/v1/regions/{region_id}/transfer-leader",
            post(transfer_leader),
        )
        .route("/v1/nodes/{node_id}/drain", post(drain_node))
        .route("/v1/maintenance", get(maintenance).put(set_maintenance))
        .route("/v1/members", get(members))
        .layer(axum::middleware::from_fn_with_state(
            state.authenticator.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// Resolves the caller (client certificate names, bearer token) and refuses, as JSON with a
/// message, what its roles may not do (`security::authorize_http`).
async fn authenticate(
    State(authenticator): State<Arc<crate::security::Authenticator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !authenticator.enabled() {
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
async fn nodes(State(state): State<HttpState>) -> Response {
    match state.cluster_view.send(ListNodes).await {
        Ok(nodes) => Json(json!({ "nodes": nodes })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("cluster view unavailable: {e}") })),
        )
            .into_response(),
    }
}

/// Who leads, as this member sees it.
async fn leader(State(state): State<HttpState>) -> Response {
    let leadership = state.leadership.state();
    Json(json!({
        "leader": leadership.leader,
        "me": state.leadership.me(),
        "is_leader": leadership.serving,
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

/// Failover procedures, running and finished, oldest first.
async fn procedures(State(state): State<HttpState>) -> Response {
    match crate::procedure::ProcedureStore::new(state.store.clone())
        .list()
        .await
    {
        Ok(procedures) => Json(json!({ "procedures": procedures })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
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
    axum::extract::Query(query): axum::extract::Query<MaintenanceQuery>,
) -> Response {
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

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// The JSON error for a refused operation (a gRPC status from the admin layer).
fn status_response(status: tonic::Status) -> Response {
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

/// One procedure: this leader's live progress if it runs it, else the record.
async fn procedure(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    let procedures = crate::procedure::ProcedureStore::new(state.store.clone());
    match crate::grpc::admin::find_procedure(&state.scheduler, &procedures, &id).await {
        Ok(Some(procedure)) => Json(json!({ "procedure": procedure })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no procedure {id:?}")),
        Err(status) => status_response(status),
    }
}

#[derive(serde::Deserialize)]
struct OperationQuery {
    /// The target node (migrations and transfers).
    to: Option<u64>,
    /// Answer once the procedure has finished.
    #[serde(default)]
    wait: bool,
}

/// Starts an operation; answers 202 with the procedure (200 with the finished one if `wait`).
async fn start(state: &HttpState, request: OperationRequest, wait: bool) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let progress = match crate::grpc::admin::start_operation(&state.scheduler, request).await {
        Ok(progress) => progress,
        Err(e) => return status_response(crate::grpc::admin::operation_status(e)),
    };
    if !wait {
        let procedure = progress.borrow().clone();
        return (
            StatusCode::ACCEPTED,
            Json(json!({ "procedure": procedure })),
        )
            .into_response();
    }
    match crate::grpc::admin::wait_until_finished(progress).await {
        Ok(procedure) => Json(json!({ "procedure": procedure })).into_response(),
        Err(status) => status_response(status),
    }
}

type IdPath = Result<Path<u64>, PathRejection>;
type OperationParams = Result<Query<OperationQuery>, QueryRejection>;

/// The id in the path and the query of an operation, or why either is bad (a 400).
fn id_and_query(path: IdPath, query: OperationParams) -> Result<(u64, OperationQuery), String> {
    let Path(id) = path.map_err(|e| e.body_text())?;
    let Query(query) = query.map_err(|e| e.body_text())?;
    Ok((id, query))
}

/// `POST /v1/regions/{region_id}/migrate?to=N[&wait=true]`
async fn migrate_region(
    State(state): State<HttpState>,
    path: IdPath,
    query: OperationParams,
) -> Response {
    match id_and_query(path, query) {
        Ok((region_id, query)) => {
            move_region(&state, query, |to| OperationRequest::MigrateRegion {
                region_id,
                to,
            })
            .await
        }
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}

/// `POST /v1/regions/{region_id}/transfer-leader?to=N[&wait=true]`
async fn transfer_leader(
    State(state): State<HttpState>,
    path: IdPath,
    query: OperationParams,
) -> Response {
    match id_and_query(path, query) {
        Ok((region_id, query)) => {
            move_region(&state, query, |to| OperationRequest::TransferLeader {
                region_id,
                to,
            })
            .await
        }
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}

/// Starts the region move `request` makes for the query's target node.
async fn move_region(
    state: &HttpState,
    query: OperationQuery,
    request: impl FnOnce(u64) -> OperationRequest,
) -> Response {
    let Some(to) = query.to else {
        return error(
            StatusCode::BAD_REQUEST,
            "the target node is missing: ?to=<node id>",
        );
    };
    start(state, request(to), query.wait).await
}

/// `POST /v1/nodes/{node_id}/drain[?wait=true]`
async fn drain_node(
    State(state): State<HttpState>,
    path: IdPath,
    query: OperationParams,
) -> Response {
    match id_and_query(path, query) {
        Ok((node_id, query)) => {
            start(&state, OperationRequest::DrainNode { node_id }, query.wait).await
        }
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}
