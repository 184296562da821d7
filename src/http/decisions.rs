//! The Autoadmin over HTTP: `GET /v1/decisions` (newest first, filtered by region or status),
//! `GET /v1/decisions/events?after_seq=` (every status change after a sequence number, to
//! follow the stream by polling), `GET /v1/decisions/{id}`, `POST /v1/decisions/{id}/approve`
//! and `/reject`, `GET` and `PUT /v1/autoadmin` (the mode), `POST /v1/autoadmin/plan` (a
//! planning round now). The log lives on the leader: a follower answers 503 naming it.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{error, status_response, HttpState};
use crate::actors::autoadmin::{
    ApproveDecision, Autoadmin, AutoadminError, PlanNow, RejectDecision, SetMode, PLAN_NOW_TIMEOUT,
};
use crate::cns::decisions::{DecisionStatus, Mode};
use crate::grpc::autoadmin::ask;

/// The most decisions or events in one answer.
const MAX_PAGE: usize = 1000;

/// A paged read of the leader's log (a follower's is stale: 503 naming the leader): `read`
/// answers from the query and its page size, once both are good.
fn read_page<T>(
    state: &HttpState,
    query: Result<Query<T>, QueryRejection>,
    limit: impl FnOnce(&T) -> Option<usize>,
    read: impl FnOnce(T, usize) -> Response,
) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match page_limit(limit(&query)) {
        Ok(limit) => read(query, limit),
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}

/// The answer to a message for the Autoadmin: `answer` of its reply, or its refusal.
async fn reply<M, T>(
    state: &HttpState,
    message: M,
    answer: impl FnOnce(T) -> serde_json::Value,
) -> Response
where
    M: actix::Message<Result = Result<T, AutoadminError>> + Send + 'static,
    T: Send + 'static,
    Autoadmin: actix::Handler<M>,
{
    match ask(&state.autoadmin.actor, message, &state.leadership).await {
        Ok(value) => Json(answer(value)).into_response(),
        Err(status) => status_response(status),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    /// Decisions with ids below this (the next page of a newest-first listing).
    before: Option<u64>,
    limit: Option<usize>,
    /// Only decisions that move this region ("why did region R move?").
    region: Option<u64>,
    /// Only decisions in this status (`proposed`, `executing`, `succeeded`, ...).
    status: Option<String>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, String> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(format!("limit={n} must be between 1 and {MAX_PAGE}")),
    }
}

/// `GET /v1/decisions[?before=ID&limit=N&region=R&status=S]`
pub(super) async fn list(
    State(state): State<HttpState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    read_page(
        &state,
        query,
        |q| q.limit,
        |query, limit| decisions_page(&state, query, limit),
    )
}

/// Up to `limit` decisions that match the query's filters, newest first.
fn decisions_page(state: &HttpState, query: ListQuery, limit: usize) -> Response {
    // An unknown status matches nothing.
    let status = query
        .status
        .map(|s| serde_json::from_value::<DecisionStatus>(serde_json::Value::String(s)).ok());
    let decisions = state
        .autoadmin
        .log
        .lock()
        .list_where(query.before, limit, |d| {
            query
                .region
                .is_none_or(|r| d.proposal.action.region_id() == Some(r))
                && status.is_none_or(|wanted| wanted == Some(d.status))
        });
    let next_before = (decisions.len() == limit)
        .then(|| decisions.last().map(|d| d.id))
        .flatten();
    Json(json!({
        "mode": state.autoadmin.mode.read().name(),
        "decisions": decisions,
        "next_before": next_before,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after_seq: u64,
    limit: Option<usize>,
}

/// `GET /v1/decisions/events?after_seq=N[&limit=N]`: status changes after `after_seq`, oldest
/// first; `truncated` says the log no longer holds some of them.
pub(super) async fn events(
    State(state): State<HttpState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    read_page(
        &state,
        query,
        |q| q.limit,
        |query, limit| {
            let page = state
                .autoadmin
                .log
                .lock()
                .events_after(query.after_seq, limit);
            Json(page).into_response()
        },
    )
}

type IdPath = Result<Path<u64>, PathRejection>;

/// `GET /v1/decisions/{id}`
pub(super) async fn one(State(state): State<HttpState>, path: IdPath) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let Path(id) = match path {
        Ok(path) => path,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    match state.autoadmin.log.lock().get(id) {
        Some(decision) => Json(json!({ "decision": decision })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no decision {id} (the log keeps the newest only)"),
        ),
    }
}

/// `POST /v1/decisions/{id}/approve`
pub(super) async fn approve(State(state): State<HttpState>, path: IdPath) -> Response {
    let Path(id) = match path {
        Ok(path) => path,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    reply(
        &state,
        ApproveDecision { id },
        |decision| json!({ "decision": decision }),
    )
    .await
}

#[derive(serde::Deserialize)]
pub(super) struct RejectQuery {
    reason: Option<String>,
}

/// `POST /v1/decisions/{id}/reject[?reason=...]`
pub(super) async fn reject(
    State(state): State<HttpState>,
    path: IdPath,
    query: Result<Query<RejectQuery>, QueryRejection>,
) -> Response {
    let (Path(id), Query(query)) = match (path, query) {
        (Ok(path), Ok(query)) => (path, query),
        (Err(e), _) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let reason = query.reason.map(|r| r.chars().take(500).collect());
    reply(
        &state,
        RejectDecision { id, reason },
        |decision| json!({ "decision": decision }),
    )
    .await
}

/// `GET /v1/autoadmin`: the mode, and how many decisions are open (the leader's: a follower's
/// memory of them is stale).
pub(super) async fn mode(State(state): State<HttpState>) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let log = state.autoadmin.log.lock();
    let open = log.open().count();
    Json(json!({
        "mode": state.autoadmin.mode.read().name(),
        "open_decisions": open,
        "is_leader": state.leadership.is_serving_leader(),
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
pub(super) struct ModeQuery {
    mode: String,
}

/// `PUT /v1/autoadmin?mode=auto|dry-run|approve`
pub(super) async fn set_mode(
    State(state): State<HttpState>,
    query: Result<Query<ModeQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(mode) = Mode::parse(&query.mode) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("mode={:?}: expected auto, dry-run or approve", query.mode),
        );
    };
    reply(
        &state,
        SetMode { mode },
        |mode: Mode| json!({ "mode": mode.name() }),
    )
    .await
}

/// `POST /v1/autoadmin/plan`: a planning round now (even before the term has settled); answers
/// with its decisions.
pub(super) async fn plan_now(State(state): State<HttpState>) -> Response {
    let round = reply(
        &state,
        PlanNow,
        |decisions: Vec<crate::cns::decisions::Decision>| json!({ "decisions": decisions }),
    );
    match tokio::time::timeout(PLAN_NOW_TIMEOUT, round).await {
        Ok(answer) => answer,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the planning round took over {PLAN_NOW_TIMEOUT:?}"),
        ),
    }
}
