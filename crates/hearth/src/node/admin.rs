//! Admin endpoints for models: `GET /api/instances` (what the cluster is asked to serve and
//! where it runs), `POST /api/instances` (serve a model: a catalog name or a path on this
//! node's machine), `DELETE /api/instances/{model}` (stop serving it), `POST /api/plan` (where
//! a model would be placed, without loading it).

use super::driver::LocalFact;
use super::instances::files::LocalModels;
use super::instances::models::{self, Placement};
use super::instances::plan::{propose, Proposal, ServePolicy};
use super::view::SharedView;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hearth_cluster::{Event, NodeId, WantedModel};
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
        .route("/api/plan", post(plan))
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
                    let mut v = stage_json(state, s);
                    v["status"] = json!(s.status);
                    v
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

/// A request to serve (or preview) a model, checked.
struct Asked {
    model: String,
    placement: Placement,
    context: Option<usize>,
}

/// The request, or why it is a bad one (a 400).
fn parse_request(body: &[u8]) -> Result<Asked, String> {
    let req: LoadRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let placement = match req.placement.as_deref() {
        None | Some("planner") => Placement::Planner,
        Some("proportional") => Placement::Proportional,
        Some(other) => {
            return Err(format!(
                "unknown placement `{other}` (planner or proportional)"
            ))
        }
    };
    if req.context == Some(0) {
        return Err("context must be at least 1".into());
    }
    Ok(Asked {
        model: req.model,
        placement,
        context: req.context,
    })
}

/// What the cluster is asked to serve for `asked`: the model resolved on this node (a catalog
/// name, pulled if needed, or a path here), hashed and profiled. Blocking.
fn describe(admin: &Admin, asked: Asked) -> anyhow::Result<WantedModel> {
    let path = crate::cli::model::resolve_or_pull(&asked.model)?;
    let context = match asked.context {
        Some(c) => c,
        None => crate::cli::load::training_context(&path)?.min(4096),
    };
    models::wanted(
        &asked.model,
        &path,
        &admin.files,
        &admin.me,
        asked.placement,
        context,
    )
}

/// The body of `POST /api/instances` or `/api/plan`, described as [`describe`] does, or the
/// error response.
async fn described(admin: &Admin, body: &[u8]) -> Result<WantedModel, Response> {
    let asked = parse_request(body).map_err(|why| error(StatusCode::BAD_REQUEST, why))?;
    let a = admin.clone();
    // Resolving may download a catalog model and hashing reads the whole file: off the
    // async workers.
    match tokio::task::spawn_blocking(move || describe(&a, asked)).await {
        Ok(Ok(w)) => Ok(w),
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("{e:#}"))),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "describing the model failed",
        )),
    }
}

async fn load(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let wanted = match described(&admin, &body).await {
        Ok(w) => w,
        Err(response) => return response,
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

/// `POST /api/plan` (same body as `POST /api/instances`): the stages the coordinator would
/// place the model on now and its predicted speed, without loading anything. It runs the
/// coordinator's own planning (`plan::propose`) on this node's copy of the state with the
/// default serving policy, so KV cache is counted for the default `--parallel`.
async fn plan(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let wanted = match described(&admin, &body).await {
        Ok(w) => w,
        Err(response) => return response,
    };
    // The state as it is now: describing may have taken minutes (a pull).
    let Ok(state) = admin.view.read().map(|v| v.state.clone()) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node state unavailable");
    };
    // The planner's search takes a while on a large fleet: off the async workers too.
    let planned = tokio::task::spawn_blocking(move || {
        let proposal = propose(&state, &wanted, &ServePolicy::default());
        (state, wanted, proposal)
    })
    .await;
    let Ok((state, wanted, proposal)) = planned else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "planning failed");
    };
    match proposal {
        Ok(p) => Json(plan_json(&state, &wanted, &p)).into_response(),
        Err(reason) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "`{}` cannot be placed on the cluster now: {reason}",
                wanted.name
            ),
        ),
    }
}

/// Where a stage runs and which layers, with the node's name for people.
fn stage_json(state: &hearth_cluster::ClusterState, s: &hearth_cluster::Stage) -> Value {
    json!({
        "node": s.node.as_str(),
        "node_name": state.members.get(&s.node).map(|m| m.name.as_str()),
        "device": s.device,
        "first_layer": s.first_layer,
        "end_layer": s.end_layer,
    })
}

/// `POST /api/plan`'s answer: stages in the shape of `/api/instances`'.
fn plan_json(state: &hearth_cluster::ClusterState, wanted: &WantedModel, p: &Proposal) -> Value {
    let stages: Vec<Value> = p.stages.iter().map(|s| stage_json(state, s)).collect();
    json!({
        "model": wanted.name,
        "sha256": wanted.sha256,
        "size_bytes": wanted.size_bytes,
        "placement": wanted.placement,
        "context": wanted.context,
        "layers": p.stages.last().map_or(0, |s| s.end_layer),
        "predicted_tokens_per_s": p.predicted_tokens_per_s,
        "stages": stages,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::view::View;
    use axum::body::{to_bytes, Body};
    use std::sync::RwLock;
    use tower::ServiceExt;

    use crate::test_dir::TestDir as Dir;

    /// The admin routes of a node whose network listens on loopback only.
    async fn routes(dir: &Dir) -> (Router, mpsc::Receiver<LocalFact>) {
        let mut cfg = hearth_net::NetConfig::new(&dir.0, hearth_net::ClusterKey::generate());
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        cfg.mdns = false;
        let (net, _events) = hearth_net::start(cfg).await.unwrap();
        let me = NodeId(net.local_id().to_string());
        let files = Arc::new(LocalModels::new(
            dir.0.clone(),
            net,
            me.clone(),
            tokio::runtime::Handle::current(),
        ));
        let (facts, rx) = mpsc::channel(4);
        let admin = Admin {
            view: Arc::new(RwLock::new(View::default())),
            me,
            facts,
            files,
        };
        (router(admin), rx)
    }

    async fn post(router: &Router, path: &str, body: &str) -> (StatusCode, Value) {
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_plan_for_a_model_that_is_not_there_is_a_clear_400() {
        let dir = Dir::new("admin-plan");
        let (router, mut facts) = routes(&dir).await;
        let missing = dir.0.join("missing.gguf");
        let missing = missing.to_str().unwrap();
        let cases = [
            (format!(r#"{{"model": "{missing}"}}"#), missing.to_string()),
            (
                r#"{"model": "no-such-model-anywhere"}"#.to_string(),
                "no-such-model-anywhere".to_string(),
            ),
            (
                r#"{"model": "x", "placement": "random"}"#.to_string(),
                "unknown placement `random`".to_string(),
            ),
            (
                r#"{"model": "x", "context": 0}"#.to_string(),
                "context".to_string(),
            ),
            (
                r#"{"model": 3}"#.to_string(),
                "invalid request body".to_string(),
            ),
            (
                r#"{"model": "x", "layers": 3}"#.to_string(),
                "unknown field".to_string(),
            ),
            ("not json".to_string(), "invalid request body".to_string()),
        ];
        for (body, says) in cases {
            let (status, v) = post(&router, "/api/plan", &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(&says), "{body}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        }
        // A preview proposes nothing to the cluster.
        assert!(facts.try_recv().is_err());
    }
}
