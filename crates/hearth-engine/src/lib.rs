//! Runs layers `[start, end)` of a model on one compute backend: kernels, KV cache, sampling.
//!
//! The entry point is [`Shard`]: load a layer range of a GGUF model, then call
//! [`Shard::forward`] with token ids (first shard) or hidden states (the others) to get hidden
//! states or, from the last shard, logits. [`Sampler`] turns logits into tokens.

mod chain;
pub mod cpu;
mod error;
pub mod kv_cache;
pub mod pool;
pub mod quant;
pub mod sample;
mod shard;

pub use chain::{GenerationStats, ShardChain};
pub use error::EngineError;
pub use sample::{Sampler, SamplerConfig};
pub use shard::{LogitRows, SequenceId, Shard, ShardInput, ShardOptions, ShardOutput};
