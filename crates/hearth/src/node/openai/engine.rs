//! The engine workers: threads that take requests from a bounded queue, each running one
//! generation at a time; each request's text goes back through its own bounded channel, so a
//! slow reader slows its own generation instead of growing a buffer, and a reader that goes
//! away stops it.
//!
//! What produces tokens sits behind [`Generator`]: the node's is the pipeline across the
//! instance's stages, tests may plug in anything.

use super::super::metrics::{Outcome, RequestTrack};
use super::text::{Detokenizer, StopMatcher};
use hearth_engine::SamplerConfig;
use hearth_model::tokenizer::Tokenizer;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Why a generation ended, as the generator sees it (the pipeline's own reasons).
pub use hearth_pipeline::Ending;

/// Something that turns a prompt into tokens.
pub trait Generator: Send + 'static {
    /// Positions (prompt plus generated tokens) one sequence may use.
    fn context(&self) -> usize;

    /// Generates up to `max_tokens` after `prompt`, passing each token to `on_token` until it
    /// returns `false`. End-of-generation tokens end it and are not passed on.
    fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        sampling: SamplerConfig,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Ending, String>;
}

/// OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine sends back for one request.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done {
        finish: Finish,
        completion_tokens: usize,
    },
    Failed(String),
}

/// One request, tokenized and checked against the context.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    pub events: mpsc::Sender<Event>,
    /// Timing, tokens and outcome, recorded where they happen.
    pub track: RequestTrack,
}

/// Text chunks in flight per request: enough to keep the engine busy while the writer catches
/// up, small enough that a stalled client holds almost nothing.
pub const EVENTS_PER_REQUEST: usize = 16;

/// Why a job was not queued.
pub enum Refused {
    QueueFull,
    Stopped,
}

/// The API's side of the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
}

impl EngineHandle {
    /// Queues a job without waiting: a full queue is the client's cue to retry later.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::QueueFull,
            mpsc::error::TrySendError::Closed(_) => Refused::Stopped,
        })
    }
}

/// Starts `workers` threads, each generating with its own clone of `generator`, with room for
/// `queue` waiting requests.
pub fn start<G: Generator + Clone>(
    generator: G,
    workers: usize,
    tokenizer: Arc<Tokenizer>,
    queue: usize,
) -> std::io::Result<EngineHandle> {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let jobs = Arc::new(Mutex::new(rx));
    for i in 0..workers.max(1) {
        let generator = generator.clone();
        let tokenizer = Arc::clone(&tokenizer);
        let jobs = Arc::clone(&jobs);
        std::thread::Builder::new()
            .name(format!("hearth-engine-{i}"))
            .spawn(move || engine_loop(generator, &tokenizer, &jobs))?;
    }
    Ok(EngineHandle { jobs: tx })
}

/// The next job; the lock is held only by the one idle worker that waits for it.
fn next_job(jobs: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    jobs.lock()
        .unwrap_or_else(|e| e.into_inner())
        .blocking_recv()
}

fn engine_loop(mut generator: impl Generator, tok: &Tokenizer, jobs: &Mutex<mpsc::Receiver<Job>>) {
    while let Some(job) = next_job(jobs) {
        if job.events.is_closed() {
            // The client left while the request waited.
            continue;
        }
        job.track.started(job.prompt.len());
        let events = job.events.clone();
        let track = job.track.clone();
        // A panic in the engine must not take the node down, only this request.
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| run_job(&mut generator, tok, job)));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => "the engine failed on this request".to_string(),
        };
        tracing::warn!(error = %failure, "generation failed");
        track.finish(Outcome::Error);
        let _ = events.blocking_send(Event::Failed(failure));
    }
}

fn run_job(generator: &mut impl Generator, tok: &Tokenizer, job: Job) -> Result<(), String> {
    let Job {
        prompt,
        max_tokens,
        sampling,
        stop,
        events,
        track,
    } = job;
    let mut detok = Detokenizer::new();
    let mut stops = StopMatcher::new(stop);
    let mut count = 0usize;
    let mut hit_stop = false;
    let mut gone = false;
    let ending = generator.generate(&prompt, max_tokens, sampling, &mut |t| {
        track.token();
        count += 1;
        let (text, hit) = stops.push(&detok.push(tok, t));
        if !text.is_empty() && events.blocking_send(Event::Text(text)).is_err() {
            gone = true;
            return false;
        }
        hit_stop = hit;
        !hit
    })?;
    if gone {
        tracing::info!(generated = count, "client went away; generation cancelled");
        return Ok(());
    }
    if !hit_stop {
        let (mut text, hit) = stops.push(&detok.finish(tok));
        hit_stop = hit;
        if !hit {
            text += &stops.finish();
        }
        if !text.is_empty() && events.blocking_send(Event::Text(text)).is_err() {
            return Ok(());
        }
    }
    let finish = match ending {
        _ if hit_stop => Finish::Stop,
        Ending::EndOfGeneration | Ending::Cancelled => Finish::Stop,
        Ending::MaxTokens | Ending::ContextFull => Finish::Length,
    };
    track.finish(Outcome::Ok);
    let _ = events.blocking_send(Event::Done {
        finish,
        completion_tokens: count,
    });
    Ok(())
}
