//! Procedures and the operations that start them: `GET /v1/procedures[/{id}]`, region
//! migration, leader transfer and node drain (each answers with its procedure); cordoning a
//! node (no procedure: one persisted record).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

use super::{error, status_response, HttpState};
use crate::actors::scheduler::OperationRequest;

/// Failover procedures, running and finished, oldest first.
pub(super) async fn procedures(State(state): State<HttpState>) -> Response {
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

/// One procedure: this leader's live progress if it runs it, else the record.
pub(super) async fn procedure(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    let procedures = crate::procedure::ProcedureStore::new(state.store.clone());
    match crate::grpc::admin::find_procedure(&state.scheduler, &procedures, &id).await {
        Ok(Some(procedure)) => Json(json!({ "procedure": procedure })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no procedure {id:?}")),
        Err(status) => status_response(status),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct OperationQuery {
    /// The target node (migrations and transfers).
    to: Option<u64>,
    /// Answer once the procedure has finished.
    #[serde(default)]
    wait: bool,
    /// How long `wait` waits (default [`DEFAULT_WAIT`], at most [`MAX_WAIT`]).
    timeout_ms: Option<u64>,
}

/// How long `wait=true` waits for the procedure by default: a drain of thousands of regions
/// can take minutes, and a proxy between the operator and metasrv would cut a request that
/// hangs that long with no word on the procedure.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest `timeout_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(600);

impl OperationQuery {
    /// How long to wait for the procedure to finish, if at all.
    fn wait_for(&self) -> Option<Duration> {
        self.wait.then(|| {
            self.timeout_ms
                .map_or(DEFAULT_WAIT, Duration::from_millis)
                .min(MAX_WAIT)
        })
    }
}

/// Starts an operation; answers 202 with the procedure, or 200 with the finished one if told
/// to `wait` and it finishes in time (else 202 with it running).
async fn start(state: &HttpState, request: OperationRequest, wait: Option<Duration>) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let progress = match crate::grpc::admin::start_operation(&state.scheduler, request).await {
        Ok(progress) => progress,
        Err(e) => return status_response(crate::grpc::admin::operation_status(e)),
    };
    let answer = |code: StatusCode, procedure: crate::procedure::Procedure| {
        (code, Json(json!({ "procedure": procedure }))).into_response()
    };
    let Some(wait) = wait else {
        let procedure = progress.borrow().clone();
        return answer(StatusCode::ACCEPTED, procedure);
    };
    let watched = progress.clone();
    match tokio::time::timeout(wait, crate::grpc::admin::wait_until_finished(watched)).await {
        Ok(Ok(procedure)) => answer(StatusCode::OK, procedure),
        Ok(Err(status)) => status_response(status),
        Err(_) => {
            // It may have finished just as the wait ran out.
            let procedure = progress.borrow().clone();
            let code = if procedure.is_running() {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            answer(code, procedure)
        }
    }
}

type IdPath = Result<Path<u64>, PathRejection>;
type OperationParams = Result<Query<OperationQuery>, QueryRejection>;

/// The id in the path and the query, or why either is bad (a 400).
fn id_and_query<Q>(
    path: IdPath,
    query: Result<Query<Q>, QueryRejection>,
) -> Result<(u64, Q), String> {
    let Path(id) = path.map_err(|e| e.body_text())?;
    let Query(query) = query.map_err(|e| e.body_text())?;
    Ok((id, query))
}

/// `POST /v1/regions/{region_id}/migrate?to=N[&wait=true[&timeout_ms=M]]`
pub(super) async fn migrate_region(
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

/// `POST /v1/regions/{region_id}/transfer-leader?to=N[&wait=true[&timeout_ms=M]]`
pub(super) async fn transfer_leader(
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
    start(state, request(to), query.wait_for()).await
}

/// `POST /v1/nodes/{node_id}/drain[?wait=true[&timeout_ms=M]]`
pub(super) async fn drain_node(
    State(state): State<HttpState>,
    path: IdPath,
    query: OperationParams,
) -> Response {
    match id_and_query(path, query) {
        Ok((node_id, query)) => {
            start(
                &state,
                OperationRequest::DrainNode { node_id },
                query.wait_for(),
            )
            .await
        }
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct CordonQuery {
    /// Why (shown in `/v1/nodes`). Default: "cordoned by an operator".
    reason: Option<String>,
}

/// The longest cordon reason kept.
const MAX_REASON_BYTES: usize = 256;

/// `POST /v1/nodes/{node_id}/cordon[?reason=...]`: the node takes no new region (placement,
/// failover targets, migrations, the CNS) until uncordoned; its own regions stay. Survives
/// leader changes. A drain cordons its node and leaves it cordoned.
pub(super) async fn cordon_node(
    State(state): State<HttpState>,
    path: IdPath,
    query: Result<Query<CordonQuery>, QueryRejection>,
) -> Response {
    let (node_id, query) = match id_and_query(path, query) {
        Ok(parsed) => parsed,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let reason = query
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "cordoned by an operator".into());
    if reason.len() > MAX_REASON_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the reason is over {MAX_REASON_BYTES} bytes"),
        );
    }
    set_cordon(&state, node_id, Some(reason)).await
}

/// `POST /v1/nodes/{node_id}/uncordon`: the node may take new regions again.
pub(super) async fn uncordon_node(State(state): State<HttpState>, path: IdPath) -> Response {
    match path {
        Ok(Path(node_id)) => set_cordon(&state, node_id, None).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

async fn set_cordon(state: &HttpState, node_id: u64, reason: Option<String>) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    // A cordon for a node that never registered is a typo more often than not; an uncordon
    // is allowed whatever it names (a stale record of a node long gone).
    if reason.is_some() {
        let registered = state
            .store
            .batch_get(vec![crate::actors::cluster_view::node_key(node_id)])
            .await;
        match registered {
            Ok(found) if !found.is_empty() => {}
            Ok(_) => return error(StatusCode::NOT_FOUND, format!("no datanode {node_id}")),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
    let cordon = reason.is_some();
    match crate::actors::cluster_view::set_cordon(
        state.store.as_ref(),
        &state.cluster_view,
        node_id,
        reason.clone(),
    )
    .await
    {
        Ok(was) => {
            tracing::warn!(
                node_id,
                cordon,
                reason = reason.as_deref().unwrap_or(""),
                "node cordon changed"
            );
            Json(json!({
                "node_id": node_id,
                "cordoned": cordon,
                "reason": reason,
                "was_cordoned": was,
            }))
            .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
