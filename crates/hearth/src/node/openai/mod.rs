//! The OpenAI-compatible API for a model running on this node.
//!
//! [`handlers`] parse and check requests and shape answers ([`types`]); [`engine`] runs the
//! model on its own thread behind the `Generator` trait; [`text`] turns tokens into the text a
//! client sees (whole characters, stop strings removed).

pub mod engine;
pub mod handlers;
pub mod text;
pub mod types;

use super::metrics::Metrics;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use engine::{EngineHandle, Generator};
use hearth_model::chat::ChatTemplate;
use hearth_model::tokenizer::Tokenizer;
use std::sync::{Arc, RwLock};

/// Default number of requests that may wait for the engine.
pub const DEFAULT_QUEUE: usize = 8;

/// The model this node serves and what is needed to turn requests into its tokens.
pub struct ServedModel {
    /// The name `/v1/models` lists.
    pub id: String,
    /// Other names a request may use for it (the name or path it was started with).
    pub aliases: Vec<String>,
    /// When it was loaded, seconds since the epoch.
    pub created: u64,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    /// Positions one request may use: prompt plus generated tokens.
    pub context: usize,
}

impl ServedModel {
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name)
    }
}

/// A served model and the engine workers that generate with it.
pub struct Serving {
    pub model: ServedModel,
    pub engine: EngineHandle,
}

impl Serving {
    /// Starts `workers` engine threads for `generator` (requests generated at once), with room
    /// for `queue` waiting requests.
    pub fn start<G: Generator + Clone>(
        mut model: ServedModel,
        generator: G,
        workers: usize,
        queue: usize,
    ) -> std::io::Result<Serving> {
        model.context = generator.context();
        let engine = engine::start(generator, workers, Arc::clone(&model.tokenizer), queue)?;
        Ok(Serving { model, engine })
    }
}

/// The models this node serves right now; the node adds and removes them as instances become
/// ready or are unloaded.
#[derive(Clone, Default)]
pub struct ServedModels(Arc<RwLock<Vec<Arc<Serving>>>>);

impl ServedModels {
    pub fn list(&self) -> Vec<Arc<Serving>> {
        self.0.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// The model a request names, or the only one when it names none.
    pub fn find(&self, name: Option<&str>) -> Option<Arc<Serving>> {
        let models = self.0.read().ok()?;
        match name {
            Some(n) => models.iter().find(|s| s.model.answers_to(n)).cloned(),
            None if models.len() == 1 => models.first().cloned(),
            None => None,
        }
    }

    pub fn insert(&self, serving: Arc<Serving>) {
        if let Ok(mut m) = self.0.write() {
            m.retain(|s| s.model.id != serving.model.id);
            m.push(serving);
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.0.write() {
            m.retain(|s| s.model.id != id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.read().map_or(true, |m| m.is_empty())
    }
}

/// The router's state: the served models, the limits, and the node's metrics.
#[derive(Clone)]
pub struct OpenAi {
    pub models: ServedModels,
    pub max_body: usize,
    pub metrics: Metrics,
    /// Longest prompt a request may send, in tokens; the context bounds it in any case.
    pub max_prompt_tokens: Option<usize>,
}

pub fn router(api: OpenAi) -> Router {
    let limit = api.max_body;
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/v1/models/{id}", get(handlers::model))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}
