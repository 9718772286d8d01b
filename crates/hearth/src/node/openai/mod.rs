//! The OpenAI-compatible API for a model running on this node.
//!
//! [`handlers`] parse and check requests and shape answers ([`types`]); [`engine`] runs the
//! model on its own thread behind the `Generator` trait; [`text`] turns tokens into the text a
//! client sees (whole characters, stop strings removed).

pub mod engine;
pub mod handlers;
pub mod text;
pub mod types;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use engine::{EngineHandle, Generator};
use hearth_model::chat::ChatTemplate;
use hearth_model::tokenizer::Tokenizer;
use std::sync::Arc;

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

/// A loaded model and the engine thread that runs it.
pub struct Serving {
    pub model: ServedModel,
    pub engine: EngineHandle,
}

impl Serving {
    /// Starts the engine thread for `generator`, with room for `queue` waiting requests.
    pub fn start(
        mut model: ServedModel,
        generator: impl Generator,
        queue: usize,
    ) -> std::io::Result<Serving> {
        model.context = generator.context();
        let engine = engine::start(generator, Arc::clone(&model.tokenizer), queue)?;
        Ok(Serving { model, engine })
    }
}

/// The router's state: the served model, if any, and the limits.
#[derive(Clone)]
pub struct OpenAi {
    pub serving: Option<Arc<Serving>>,
    pub max_body: usize,
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
