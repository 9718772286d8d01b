//! The node's HTTP server: cluster admin endpoints and the OpenAI-compatible API.

use super::openai::{self, handlers, OpenAi};
use super::security::auth::{self, Auth};
use super::view::SharedView;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// Every route, the fallbacks included, sits behind the auth layer.
pub fn router(view: SharedView, api: OpenAi, auth: Auth) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/cluster", get(cluster))
        .route("/api/cluster/log", get(cluster_log))
        .with_state(view)
        .merge(openai::router(api))
        // Unknown routes answer in OpenAI's error shape, since OpenAI clients read them.
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(auth, auth::middleware))
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"message": "node state unavailable", "type": "server_error"}})),
    )
        .into_response()
}

async fn health(State(view): State<SharedView>) -> Response {
    match view.read() {
        Ok(v) => Json(json!({"status": "ok", "node": v.node_id})).into_response(),
        Err(_) => unavailable(),
    }
}

async fn cluster(State(view): State<SharedView>) -> Response {
    match view.read() {
        Ok(v) => Json(v.cluster_json()).into_response(),
        Err(_) => unavailable(),
    }
}

async fn cluster_log(State(view): State<SharedView>) -> Response {
    match view.read() {
        Ok(v) => Json(v.log_json()).into_response(),
        Err(_) => unavailable(),
    }
}
