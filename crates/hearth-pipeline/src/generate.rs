//! A whole generation over the pipeline, surviving a change of placement: when the instance
//! under a sequence goes away, the sequence is reopened on the new placement and the prompt plus
//! every token generated so far is replayed into the new stages' caches, so the client sees one
//! uninterrupted answer (identical for greedy decoding and for seeded sampling, whose random
//! stream is advanced past the draws already made).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hearth_engine::SamplerConfig;

use crate::error::SessionError;
use crate::session::{Owner, Route, Wait};

/// Where to find the instance serving a model right now.
pub trait Routes: Send + Sync {
    /// A ready route, waiting up to `timeout` for one to appear.
    fn route(&self, timeout: Duration) -> Option<Route>;
    /// Whether `route` still serves (all its stages' nodes are members and it is not failed).
    fn alive(&self, route: &Route) -> bool;
}

/// One generation's input.
pub struct Request<'a> {
    pub prompt: &'a [u32],
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    /// Tokens that end the generation; they are not passed on.
    pub end_ids: &'a HashSet<u32>,
    /// Positions a sequence may use.
    pub context: usize,
    /// Prompt tokens per forward message (the shards' batch size).
    pub batch: usize,
}

/// How long to wait and how often to try again.
#[derive(Debug, Clone)]
pub struct Patience {
    /// For one token (the prompt's first token included) before giving up on a placement.
    pub token_timeout: Duration,
    /// For a ready placement, at the start and after one was lost.
    pub placement_wait: Duration,
    /// Placements a generation may move to after the first.
    pub max_resumes: u32,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            token_timeout: Duration::from_secs(30),
            placement_wait: Duration::from_secs(15),
            max_resumes: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    EndOfGeneration,
    MaxTokens,
    ContextFull,
    /// `on_token` asked to stop.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ending: Ending,
    pub generated: usize,
    /// Placements the generation moved to after its first.
    pub resumes: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; the context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("no ready instance of the model within {0:?}")]
    NoPlacement(Duration),
    #[error("generation stopped after {generated} tokens: {error}")]
    Interrupted {
        generated: usize,
        error: SessionError,
    },
}

/// Runs `request` to its end, passing each new token to `on_token` until it returns `false`.
pub fn generate(
    owner: &Arc<Owner>,
    routes: &dyn Routes,
    request: &Request<'_>,
    patience: &Patience,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Outcome, GenerateError> {
    if request.prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if request.prompt.len() > request.context {
        return Err(GenerateError::PromptTooLong {
            prompt: request.prompt.len(),
            context: request.context,
        });
    }
    let mut generated: Vec<u32> = Vec::new();
    let mut resumes = 0u32;
    loop {
        let route = routes
            .route(patience.placement_wait)
            .ok_or(GenerateError::NoPlacement(patience.placement_wait))?;
        match run_on(
            owner,
            routes,
            &route,
            request,
            patience,
            &mut generated,
            on_token,
        ) {
            Ok(ending) => {
                return Ok(Outcome {
                    ending,
                    generated: generated.len(),
                    resumes,
                })
            }
            Err(error) => {
                let movable = matches!(
                    error,
                    SessionError::InstanceGone | SessionError::TimedOut(_)
                ) || (matches!(error, SessionError::StageFailed(_))
                    && !routes.alive(&route));
                if !movable || resumes >= patience.max_resumes {
                    return Err(GenerateError::Interrupted {
                        generated: generated.len(),
                        error,
                    });
                }
                resumes += 1;
                tracing::info!(
                    instance = %route.instance,
                    generated = generated.len(),
                    %error,
                    "placement lost mid-sequence; resuming on the next one"
                );
            }
        }
    }
}

/// Generates on one placement, appending to `generated`; returns how it ended or why this
/// placement could not go on.
fn run_on(
    owner: &Arc<Owner>,
    routes: &dyn Routes,
    route: &Route,
    request: &Request<'_>,
    patience: &Patience,
    generated: &mut Vec<u32>,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Ending, SessionError> {
    let alive = || routes.alive(route);
    let wait = Wait {
        timeout: patience.token_timeout,
        alive: &alive,
    };
    let sampling_draws = generated.len() as u64;
    let mut session = owner.open(route.clone(), request.sampling.clone(), sampling_draws);
    let mut replay = request.prompt.to_vec();
    replay.extend_from_slice(generated);
    let mut next = session.feed(&replay, request.batch, &wait)?;
    loop {
        if generated.len() >= request.max_tokens {
            return Ok(Ending::MaxTokens);
        }
        if request.end_ids.contains(&next) {
            return Ok(Ending::EndOfGeneration);
        }
        generated.push(next);
        if !on_token(next) {
            return Ok(Ending::Cancelled);
        }
        if generated.len() == request.max_tokens {
            return Ok(Ending::MaxTokens);
        }
        if request.prompt.len() + generated.len() >= request.context {
            return Ok(Ending::ContextFull);
        }
        next = session.feed(&[next], request.batch, &wait)?;
    }
}
