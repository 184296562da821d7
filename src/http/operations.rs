//! Procedures and the operations that start them: `GET /v1/procedures[/{id}]`, region
//! migration, leader transfer and node drain (each answers with its procedure).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

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

/// `POST /v1/regions/{region_id}/transfer-leader?to=N[&wait=true]`
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
    start(state, request(to), query.wait).await
}

/// `POST /v1/nodes/{node_id}/drain[?wait=true]`
pub(super) async fn drain_node(
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
