//! The API's half of serving: which models this node answers for, and the generator that runs
//! a request through the instance currently serving its model. Any node serves every model
//! that has a ready instance, whether or not it runs a stage of it; it needs the model's
//! tokenizer and chat template, which it reads from its own copy of the file.

use super::files::LocalModels;
use crate::node::openai::engine::{Ending, Generator};
use crate::node::openai::{ServedModel, ServedModels, Serving};
use crate::node::view::SharedView;
use hearth_cluster::{ClusterState, Instance, InstanceStatus, WantedModel};
use hearth_engine::SamplerConfig;
use hearth_model::chat::ChatTemplate;
use hearth_model::gguf::GgufFile;
use hearth_model::tokenizer::Tokenizer;
use hearth_pipeline::{Owner, Patience, Request, Route, Routes};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The sequence number an instance was placed at: ids end in it, and a larger one is newer.
fn placed_at(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The instances of one model, read from the node's view of the state.
pub struct ModelRoutes {
    pub model: String,
    pub view: SharedView,
}

/// The newest ready instance of `model` in `state`.
pub fn ready_route(state: &ClusterState, model: &str) -> Option<Route> {
    state
        .instances
        .iter()
        .filter(|(_, i)| i.model == model && i.status == InstanceStatus::Ready)
        .max_by_key(|(id, _)| placed_at(id))
        .and_then(|(id, i)| {
            Some(Route {
                instance: id.clone(),
                first: i.stages.first()?.node.to_string(),
            })
        })
}

/// An instance can carry on a sequence while it is ready or draining and all its stages'
/// nodes are members.
fn serves(state: &ClusterState, inst: &Instance) -> bool {
    matches!(
        inst.status,
        InstanceStatus::Ready | InstanceStatus::Draining
    ) && inst
        .stages
        .iter()
        .all(|s| state.members.contains_key(&s.node))
}

impl Routes for ModelRoutes {
    fn route(&self, timeout: Duration) -> Option<Route> {
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .view
                .read()
                .ok()
                .and_then(|v| ready_route(&v.state, &self.model))
            {
                return Some(r);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&self, route: &Route) -> bool {
        self.view.read().is_ok_and(|v| {
            v.state
                .instances
                .get(&route.instance)
                .is_some_and(|i| serves(&v.state, i))
        })
    }
}

/// Generates through whichever instance serves the model, resuming on a new one if it is lost.
#[derive(Clone)]
pub struct PipelineGenerator {
    pub owner: Arc<Owner>,
    pub routes: Arc<ModelRoutes>,
    pub end_ids: Arc<HashSet<u32>>,
    pub context: usize,
    pub batch: usize,
    pub patience: Patience,
}

impl Generator for PipelineGenerator {
    fn context(&self) -> usize {
        self.context
    }

    fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: SamplerConfig,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Ending, String> {
        let request = Request {
            prompt,
            max_tokens,
            sampling,
            end_ids: &self.end_ids,
            context: self.context,
            batch: self.batch,
        };
        let outcome = hearth_pipeline::generate(
            &self.owner,
            self.routes.as_ref(),
            &request,
            &self.patience,
            on_token,
        )
        .map_err(|e| e.to_string())?;
        if outcome.resumes > 0 {
            tracing::info!(
                resumes = outcome.resumes,
                "a request moved to a new placement and finished there"
            );
        }
        Ok(outcome.ending)
    }
}

/// Keeps [`ServedModels`] in step with the state: a model is served once it has a ready
/// instance and this node has read its tokenizer; it stops being served when unwanted.
pub struct ServingSync {
    pub view: SharedView,
    pub models: ServedModels,
    pub owner: Arc<Owner>,
    pub files: Arc<LocalModels>,
    /// Requests generated at once per model.
    pub workers: usize,
    pub queue: usize,
    pub batch: usize,
}

impl ServingSync {
    pub async fn run(self, mut states: watch::Receiver<Arc<ClusterState>>) {
        let this = Arc::new(self);
        // Models whose file this node could not read, so the warning is said once per model.
        let mut unreadable: HashSet<String> = HashSet::new();
        loop {
            let state = states.borrow_and_update().clone();
            for served in this.models.list() {
                if !state.wanted.contains_key(&served.model.id) {
                    tracing::info!(model = %served.model.id, "no longer serving the model");
                    this.models.remove(&served.model.id);
                }
            }
            for model in state.wanted.values() {
                let served = this.models.list().iter().any(|s| s.model.id == model.name);
                if served || ready_route(&state, &model.name).is_none() {
                    continue;
                }
                let this2 = Arc::clone(&this);
                let m = model.clone();
                let s = Arc::clone(&state);
                let result = tokio::task::spawn_blocking(move || this2.serve(&m, &s)).await;
                match result {
                    Ok(Ok(())) => {
                        unreadable.remove(&model.name);
                    }
                    Ok(Err(e)) => {
                        if unreadable.insert(model.name.clone()) {
                            tracing::warn!(model = %model.name, error = %e, "cannot serve the model from this node");
                        }
                    }
                    Err(_) => tracing::warn!(model = %model.name, "reading the model failed"),
                }
            }
            if states.changed().await.is_err() {
                break;
            }
        }
    }

    fn serve(&self, model: &WantedModel, state: &ClusterState) -> Result<(), String> {
        // The header (tokenizer, chat template) is all this node needs when it runs no stage.
        let path = self.files.obtain(model, None, state, &|_| {})?;
        let (tokenizer, template) = read_tokenizer(&path)?;
        let tokenizer = Arc::new(tokenizer);
        let generator = PipelineGenerator {
            owner: Arc::clone(&self.owner),
            routes: Arc::new(ModelRoutes {
                model: model.name.clone(),
                view: self.view.clone(),
            }),
            end_ids: Arc::new(tokenizer.end_of_generation_ids().collect()),
            context: model.context as usize,
            batch: self.batch,
            patience: Patience::default(),
        };
        let served = ServedModel {
            id: model.name.clone(),
            aliases: vec![model.source.clone()],
            created: crate::node::driver::now_ms() / 1000,
            tokenizer,
            template,
            context: 0,
        };
        let serving = Serving::start(served, generator, self.workers, self.queue)
            .map_err(|e| format!("cannot start the engine workers: {e}"))?;
        tracing::info!(model = %model.name, "serving the model");
        self.models.insert(Arc::new(serving));
        Ok(())
    }
}

/// The tokenizer and chat template in a GGUF file's metadata.
pub fn read_tokenizer(path: &Path) -> Result<(Tokenizer, ChatTemplate), String> {
    let file = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tokenizer =
        Tokenizer::from_metadata(file.metadata()).map_err(|e| format!("tokenizer: {e}"))?;
    let template =
        crate::cli::load::chat_template(&file, &tokenizer).map_err(|e| format!("{e:#}"))?;
    Ok((tokenizer, template))
}
