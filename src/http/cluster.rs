//! The cluster as operators and the dashboard read it: tables and their placement, recent load
//! per node, and handing leadership over.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{error, node_page, status_response, HttpState, NodePageQuery};
use crate::actors::cluster_view::GetLoadHistory;
use crate::actors::election::HandOver;
use crate::catalog::manager::TableEntry;
use crate::catalog::model::TableName;

/// Samples `/v1/load` gives per node unless asked, and at most.
const DEFAULT_LOAD_SAMPLES: usize = 30;
const MAX_LOAD_SAMPLES: usize = 120;

/// One table in `/v1/tables`: how many regions it has and where their copies are (counts per
/// node, not the regions themselves: a table may have thousands).
fn summary(entry: &TableEntry) -> serde_json::Value {
    let mut leaders: BTreeMap<u64, u32> = BTreeMap::new();
    let mut followers: BTreeMap<u64, u32> = BTreeMap::new();
    for region in &entry.route.regions {
        *leaders.entry(region.leader.id).or_default() += 1;
        for follower in &region.followers {
            *followers.entry(follower.id).or_default() += 1;
        }
    }
    json!({
        "id": entry.info.id,
        "name": entry.info.name,
        "version": entry.route.version,
        "replicas": entry.info.replicas,
        "regions": entry.route.regions.len(),
        "leaders_by_node": leaders,
        "followers_by_node": followers,
    })
}

/// `GET /v1/tables`: every table the leader serves, by name.
pub(super) async fn tables(State(state): State<HttpState>) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let mut entries = state.tables.tables();
    entries.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    let tables: Vec<_> = entries.iter().map(|entry| summary(entry)).collect();
    Json(json!({ "tables": tables })).into_response()
}

/// `GET /v1/tables/{catalog}/{schema}/{table}`: one table with its whole route.
pub(super) async fn table(
    State(state): State<HttpState>,
    Path((catalog, schema, table)): Path<(String, String, String)>,
) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    let name = TableName::new(&catalog, &schema, &table);
    match state.tables.routes(std::slice::from_ref(&name)) {
        Ok(entries) => match entries.first() {
            Some(entry) => Json(json!({
                "table": {
                    "id": entry.info.id,
                    "name": entry.info.name,
                    "version": entry.route.version,
                    "replicas": entry.info.replicas,
                    "schema": entry.info.schema,
                    "partition": entry.info.partition,
                    "regions": entry.route.regions,
                }
            }))
            .into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                format!("table {name} does not exist"),
            ),
        },
        Err(e) => status_response(e.into()),
    }
}

/// `GET /v1/load?samples=N[&after=ID][&limit=N]`: each node's last N stats samples (the
/// dashboard's heatmap), a page of nodes at a time as `/v1/nodes`.
pub(super) async fn load(
    State(state): State<HttpState>,
    query: Result<Query<NodePageQuery>, QueryRejection>,
) -> Response {
    let (page, samples) = match node_page(query) {
        Ok(asked) => asked,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let samples = samples.unwrap_or(DEFAULT_LOAD_SAMPLES);
    if samples == 0 || samples > MAX_LOAD_SAMPLES {
        return error(
            StatusCode::BAD_REQUEST,
            format!("samples must be 1 to {MAX_LOAD_SAMPLES}"),
        );
    }
    match state
        .cluster_view
        .send(GetLoadHistory { samples, page })
        .await
    {
        Ok(listing) => Json(listing).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cluster view unavailable: {e}"),
        ),
    }
}

/// `POST /v1/leader/resign`: the leader steps down; another member takes over if one is
/// campaigning (this one campaigns again behind it).
pub(super) async fn resign(State(state): State<HttpState>) -> Response {
    if let Err(status) = state.leadership.require_leader() {
        return status_response(status);
    }
    match state.election.send(HandOver).await {
        Ok(Ok(())) => Json(json!({
            "resigned": true,
            "member": state.leadership.me(),
        }))
        .into_response(),
        Ok(Err(reason)) => error(StatusCode::CONFLICT, reason),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("election unavailable: {e}"),
        ),
    }
}
