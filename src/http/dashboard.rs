//! The dashboard (`/dashboard`: a hand-written page, built into the binary, that polls the
//! JSON API) and the API's OpenAPI description (`/v1/openapi.json`, `docs/openapi.json`).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error;

const OPENAPI: &str = include_str!("../../docs/openapi.json");
const PAGE: &str = include_str!("assets/index.html");
/// Every asset the page loads, by name: content type and body.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
];

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub(super) async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

pub(super) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(asset, _, _)| *asset == name) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type)], *body).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no such dashboard asset: {name}"),
        ),
    }
}
