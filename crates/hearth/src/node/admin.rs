//! Admin endpoints for models: `GET /api/instances` (what the cluster is asked to serve and
//! where it runs), `POST /api/instances` (serve a model: a catalog name or a path on this
//! node's machine), `DELETE /api/instances/{model}` (stop serving it).

use super::driver::LocalFact;
use super::instances::files::LocalModels;
use super::instances::models::{self, Placement};
use super::view::SharedView;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_cluster::{Event, NodeId};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Admin {
    pub view: SharedView,
    pub me: NodeId,
    pub facts: mpsc::Sender<LocalFact>,
    pub files: Arc<LocalModels>,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/api/instances", get(list).post(load))
        .route("/api/instances/{model}", delete(unload))
        .with_state(admin)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    (
        status,
        Json(json!({"error": {"message": message.into(), "type": kind}})),
    )
        .into_response()
}

/// `GET /api/instances`.
pub fn instances_json(
    state: &hearth_cluster::ClusterState,
    placement_errors: &std::collections::BTreeMap<String, String>,
) -> Value {
    let models: Vec<Value> = state
        .wanted
        .values()
        .map(|w| {
            json!({
                "name": w.name,
                "sha256": w.sha256,
                "size_bytes": w.size_bytes,
                "source": w.source,
                "requested_by": w.requested_by.as_str(),
                "placement": w.placement,
                "context": w.context,
            })
        })
        .collect();
    let instances: Vec<Value> = state
        .instances
        .iter()
        .map(|(id, i)| {
            let stages: Vec<Value> = i
                .stages
                .iter()
                .map(|s| {
                    json!({
                        "node": s.node.as_str(),
                        "node_name": state.members.get(&s.node).map(|m| m.name.as_str()),
                        "device": s.device,
                        "first_layer": s.first_layer,
                        "end_layer": s.end_layer,
                        "status": s.status,
                    })
                })
                .collect();
            json!({
                "id": id,
                "model": i.model,
                "status": i.status,
                "predicted_tokens_per_s": i.predicted_tokens_per_s,
                "stages": stages,
            })
        })
        .collect();
    json!({
        "models": models,
        "instances": instances,
        // Known to the coordinator only: ask it for why a model is not placed.
        "placement_errors": placement_errors,
    })
}

async fn list(State(admin): State<Admin>) -> Response {
    match admin.view.read() {
        Ok(v) => Json(instances_json(&v.state, &v.placement_errors)).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "node state unavailable"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    model: String,
    #[serde(default)]
    placement: Option<String>,
    #[serde(default)]
    context: Option<usize>,
}

async fn load(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let req: LoadRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            )
        }
    };
    let placement = match req.placement.as_deref() {
        None | Some("planner") => Placement::Planner,
        Some("proportional") => Placement::Proportional,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown placement `{other}` (planner or proportional)"),
            )
        }
    };
    if req.context == Some(0) {
        return error(StatusCode::BAD_REQUEST, "context must be at least 1");
    }
    let a = admin.clone();
    // Resolving may download a catalog model and hashing reads the whole file: off the
    // async workers.
    let described = tokio::task::spawn_blocking(move || {
        let path = crate::cli::model::resolve_or_pull(&req.model)?;
        let context = match req.context {
            Some(c) => c,
            None => crate::cli::load::training_context(&path)?.min(4096),
        };
        models::wanted(&req.model, &path, &a.files, &a.me, placement, context)
    })
    .await;
    let wanted = match described {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "describing the model failed",
            )
        }
    };
    let body = json!({
        "model": wanted.name,
        "sha256": wanted.sha256,
        "size_bytes": wanted.size_bytes,
        "placement": wanted.placement,
        "context": wanted.context,
    });
    let event = Event::ModelWanted { model: wanted };
    if admin.facts.send(LocalFact::Propose(event)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn unload(State(admin): State<Admin>, Path(model): Path<String>) -> Response {
    let known = admin
        .view
        .read()
        .is_ok_and(|v| v.state.wanted.contains_key(&model));
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("the cluster serves no model named `{model}`"),
        );
    }
    let event = Event::ModelUnwanted {
        name: model.clone(),
        requested_by: admin.me.clone(),
    };
    if admin.facts.send(LocalFact::Propose(event)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping");
    }
    (StatusCode::ACCEPTED, Json(json!({"model": model}))).into_response()
}
