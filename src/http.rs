//! The HTTP endpoints for operators: `/health` (is the store reachable?) and `/metrics`
//! (Prometheus text format).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::actors::cluster_view::{ClusterView, ListNodes};
use crate::metrics::Metrics;
use crate::store::{KeyRange, KvBackend, RangeRequest};

/// How long `/health` waits for the store before it reports it unreachable.
const HEALTH_STORE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<dyn KvBackend>,
    pub cluster_view: actix::Addr<ClusterView>,
    pub metrics: Arc<Metrics>,
    pub member_id: u64,
    pub member_name: String,
    pub cluster_id: u64,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/nodes", get(nodes))
        .with_state(state)
}

/// 200 when the metadata store answers a read in time, 503 with the reason otherwise.
async fn health(State(state): State<HttpState>) -> Response {
    let probe = state.store.range(RangeRequest {
        range: KeyRange::single(b"__meta/health".to_vec()),
        limit: 1,
        keys_only: true,
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
    });
    let code = if store_error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
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
