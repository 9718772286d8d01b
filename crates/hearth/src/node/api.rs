//! The node's HTTP server: cluster and model admin endpoints, alerts, Prometheus metrics, the
//! OpenAI-compatible API and the dashboard.

use super::admin::{self, Admin};
use super::dashboard::{self, Dashboard};
use super::metrics;
use super::openai::{self, handlers, OpenAi};
use super::security::auth::{self, Auth};
use super::view::SharedView;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use serde_json::json;

/// Every route, the fallbacks included, sits behind the auth layer.
pub fn router(view: SharedView, api: OpenAi, admin: Admin, auth: Auth) -> Router {
    let instruments = api.metrics.clone();
    let registry = instruments.registry(view.clone());
    let dashboard = Dashboard {
        view: view.clone(),
        node_loop: admin.facts.clone(),
    };
    Router::new()
        .route("/health", get(health))
        .route("/api/cluster", get(cluster))
        .route("/api/cluster/log", get(cluster_log))
        .route("/api/alerts", get(alerts))
        .with_state(view)
        .merge(admin::router(admin))
        .merge(dashboard::router(dashboard))
        .merge(openai::router(api))
        .merge(metrics::router(registry))
        // Unknown routes answer in OpenAI's error shape, since OpenAI clients read them.
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(auth, auth::middleware))
        // Outermost, so every response is counted, fallbacks and refusals included.
        .layer(middleware::from_fn_with_state(
            instruments,
            metrics::track_http,
        ))
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

async fn alerts(State(view): State<SharedView>) -> Response {
    match view.read().map(|v| v.alerts.clone()) {
        Ok(alerts) => Json(alerts.json()).into_response(),
        Err(_) => unavailable(),
    }
}

async fn cluster_log(State(view): State<SharedView>) -> Response {
    match view.read() {
        Ok(v) => Json(v.log_json()).into_response(),
        Err(_) => unavailable(),
    }
}
