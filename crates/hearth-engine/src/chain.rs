//! Several shards run one after another in one process: the whole model when there is one
//! shard, or a local stand-in for a pipeline across nodes (same arithmetic, same output).

use crate::error::EngineError;
use crate::pool::ThreadPool;
use crate::sample::Sampler;
use crate::shard::{LogitRows, SequenceId, Shard, ShardInput, ShardOptions, ShardOutput};
use hearth_model::config::ModelConfig;
use hearth_model::gguf::GgufFile;
use std::ops::Range;
use std::sync::Arc;

/// Shards covering consecutive layer ranges from 0 to the last layer.
pub struct ShardChain {
    shards: Vec<Shard>,
    hidden: Vec<f32>,
}

impl ShardChain {
    /// Loads the model split at the given ranges, which must be consecutive and cover every
    /// layer. All shards share one thread pool.
    pub fn load(
        file: Arc<GgufFile>,
        ranges: &[Range<usize>],
        options: ShardOptions,
    ) -> Result<ShardChain, EngineError> {
        let config = ModelConfig::from_gguf(&file)?;
        let n_layers = config.n_layers;
        let whole = 0..n_layers;
        let ranges: &[Range<usize>] = if ranges.is_empty() {
            std::slice::from_ref(&whole)
        } else {
            ranges
        };
        let mut expected_start = 0;
        for r in ranges {
            if r.start != expected_start || r.end <= r.start || r.end > n_layers {
                return Err(EngineError::BadLayerRange {
                    start: r.start,
                    end: r.end,
                    n_layers,
                });
            }
            expected_start = r.end;
        }
        if expected_start != n_layers {
            return Err(EngineError::BadLayerRange {
                start: expected_start,
                end: n_layers,
                n_layers,
            });
        }
        let pool = options.pool.clone().unwrap_or_else(|| {
            Arc::new(ThreadPool::for_options(
                options.threads,
                options.pin_threads,
            ))
        });
        let options = ShardOptions {
            pool: Some(pool),
            ..options
        };
        let shards = ranges
            .iter()
            .map(|r| {
                Shard::load_with_config(
                    Arc::clone(&file),
                    config.clone(),
                    r.clone(),
                    options.clone(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardChain {
            shards,
            hidden: Vec::new(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        self.shards[0].config()
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn context(&self) -> usize {
        self.shards[0].context()
    }

    /// Starts a sequence in every shard under the same id.
    pub fn new_sequence(&mut self) -> Result<SequenceId, EngineError> {
        let id = self.shards[0].new_sequence()?;
        for shard in &mut self.shards[1..] {
            if let Err(e) = shard.insert_sequence(id) {
                self.drop_sequence(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    pub fn drop_sequence(&mut self, id: SequenceId) {
        for shard in &mut self.shards {
            shard.drop_sequence(id);
        }
    }

    /// Forgets the sequence's positions from `len` on, in every shard.
    pub fn truncate_sequence(&mut self, id: SequenceId, len: usize) -> Result<(), EngineError> {
        for shard in &mut self.shards {
            shard.truncate_sequence(id, len)?;
        }
        Ok(())
    }

    /// Feeds tokens through every shard; returns the logits the last shard computed.
    pub fn forward(
        &mut self,
        id: SequenceId,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<&[f32], EngineError> {
        let count = self.shards.len();
        for i in 0..count {
            let input = if i == 0 {
                ShardInput::Tokens(tokens)
            } else {
                ShardInput::Hidden(&self.hidden)
            };
            match self.shards[i].forward(id, input, rows)? {
                ShardOutput::Hidden(h) => {
                    self.hidden.clear();
                    self.hidden.extend_from_slice(h);
                }
                ShardOutput::Logits(_) => break,
            }
        }
        match self.shards[count - 1].last_logits() {
            Some(l) => Ok(l),
            None => Err(EngineError::WrongInput {
                expected: "a chain ending with the last layer",
            }),
        }
    }

    /// Generates up to `max_tokens` after `prompt`, calling `on_token` for each new token until
    /// it returns `false` or `stop` says the token ends generation (that token is not passed on).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        sampler: &mut Sampler,
        stop: impl Fn(u32) -> bool,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<GenerationStats, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        if prompt.len() > self.context() {
            return Err(EngineError::ContextFull {
                needed: prompt.len(),
                capacity: self.context(),
            });
        }
        let id = self.new_sequence()?;
        let result = (|| {
            let started = std::time::Instant::now();
            for &t in prompt {
                sampler.accept(t);
            }
            let mut stats = GenerationStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            };
            let logits = self.forward(id, prompt, LogitRows::Last)?;
            let mut next = sampler.sample(logits);
            stats.prefill_seconds = started.elapsed().as_secs_f64();
            let decode_start = std::time::Instant::now();
            while stats.generated_tokens < max_tokens {
                if stop(next) {
                    stats.stopped = true;
                    break;
                }
                stats.generated_tokens += 1;
                if !on_token(next) {
                    break;
                }
                sampler.accept(next);
                if stats.generated_tokens == max_tokens {
                    break;
                }
                if prompt.len() + stats.generated_tokens >= self.context() {
                    stats.context_full = true;
                    break;
                }
                let logits = self.forward(id, &[next], LogitRows::Last)?;
                next = sampler.sample(logits);
            }
            stats.decode_seconds = decode_start.elapsed().as_secs_f64();
            Ok(stats)
        })();
        self.drop_sequence(id);
        result
    }
}

/// What a generation did and how long it took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt processing plus sampling the first token.
    pub prefill_seconds: f64,
    /// Everything after the first token.
    pub decode_seconds: f64,
    /// Generation ended on a stop token.
    pub stopped: bool,
    /// Generation ended because the context is full.
    pub context_full: bool,
}
