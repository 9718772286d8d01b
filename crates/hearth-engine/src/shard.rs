//! A shard: layers `[start, end)` of a model, loaded from the mapped file and run on the CPU.
//! The first shard also embeds tokens; the last also applies the final norm and output head.

use crate::cpu::attention::{attention, AttentionScratch, AttentionShape};
use crate::cpu::matmul::{matmul, Activations, MatmulJob, MatmulScratch};
use crate::cpu::ops;
use crate::cpu::weights::{load_matrix, load_vector, LayerWeights, Matrix};
use crate::error::EngineError;
use crate::kv_cache::SequenceCache;
use crate::pool::ThreadPool;
use crate::quant::Isa;
use hearth_model::config::{ModelConfig, ModelSizes};
use hearth_model::gguf::GgufFile;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Identifies one sequence's KV cache within a shard.
pub type SequenceId = u64;

/// How a shard is loaded.
#[derive(Clone)]
pub struct ShardOptions {
    /// Positions each sequence can hold (prompt plus generated tokens).
    pub context: usize,
    /// Sequences whose caches may exist at once; their memory is reserved at load.
    pub max_sequences: usize,
    /// Tokens processed per internal batch of a long prompt.
    pub max_batch: usize,
    /// Refuse to load when weights + caches + scratch would exceed this many bytes.
    pub memory_limit: Option<u64>,
    /// Threads of compute; ignored when `pool` is given.
    pub threads: usize,
    /// A pool to share with other shards in the same process.
    pub pool: Option<Arc<ThreadPool>>,
    /// Pin the threads of a pool made here, one per core ([`ThreadPool::pinned`]).
    pub pin_threads: bool,
    /// Instruction set; `None` picks the best this CPU has.
    pub isa: Option<Isa>,
    /// Share of full speed to run at, `0 < s ≤ 1`: after each forward pass that took `t` the
    /// shard idles `t·(1 − s)/s`, so a declared slower device really is slower. 1 runs flat out.
    pub compute_share: f64,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            context: 4096,
            max_sequences: 1,
            max_batch: 256,
            memory_limit: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pool: None,
            pin_threads: false,
            isa: None,
            compute_share: 1.0,
        }
    }
}

/// What a forward pass consumes.
#[derive(Debug, Clone, Copy)]
pub enum ShardInput<'a> {
    /// Token ids: only the first shard takes these.
    Tokens(&'a [u32]),
    /// Hidden states from the previous shard, `n_embd` values per token.
    Hidden(&'a [f32]),
}

/// Which positions the last shard computes logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    Last,
    /// Every input position (scoring a text); holds `tokens × vocab_size` floats, outside the
    /// memory budget, so callers should bound the tokens they pass at once.
    All,
}

/// What a forward pass produces: hidden states for the next shard, or logits from the last.
#[derive(Debug)]
pub enum ShardOutput<'a> {
    /// `n_embd` values per input token.
    Hidden(&'a [f32]),
    /// `vocab_size` values per requested row.
    Logits(&'a [f32]),
}

/// The weights only the first or last shard holds.
struct Ends {
    embedding: Option<Matrix>,
    head: Option<(Vec<f32>, Matrix)>,
}

/// Reusable buffers of the forward pass, grown to the largest batch seen.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
    cos_sin: Vec<(f32, f32)>,
}

fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

pub struct Shard {
    config: ModelConfig,
    layers: Range<usize>,
    weights: Vec<LayerWeights>,
    ends: Ends,
    options: ShardOptions,
    pool: Arc<ThreadPool>,
    rope: ops::RopeTable,
    sequences: HashMap<SequenceId, SequenceCache>,
    next_sequence: SequenceId,
    acts: Activations,
    matmul_scratch: MatmulScratch,
    attention_scratch: AttentionScratch,
    buffers: Buffers,
    mapped_bytes: u64,
    reserved_bytes: u64,
    last_logit_len: usize,
    // Declared last so the weights borrowed from it are gone before it is unmapped.
    _file: Arc<GgufFile>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("layers", &self.layers)
            .field("mapped_bytes", &self.mapped_bytes)
            .finish()
    }
}

impl Shard {
    /// Loads layers `layers` of the model in `file`.
    pub fn load(
        file: Arc<GgufFile>,
        layers: Range<usize>,
        options: ShardOptions,
    ) -> Result<Shard, EngineError> {
        let config = ModelConfig::from_gguf(&file)?;
        Shard::load_with_config(file, config, layers, options)
    }

    pub fn load_with_config(
        file: Arc<GgufFile>,
        config: ModelConfig,
        layers: Range<usize>,
        options: ShardOptions,
    ) -> Result<Shard, EngineError> {
        if layers.start >= layers.end || layers.end > config.n_layers {
            return Err(EngineError::BadLayerRange {
                start: layers.start,
                end: layers.end,
                n_layers: config.n_layers,
            });
        }
        let share = options.compute_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(EngineError::BadComputeShare(share));
        }
        let isa = options.isa.unwrap_or_else(Isa::detect);
        let context = options.context.max(1);
        let max_batch = options.max_batch.clamp(1, context);
        let max_sequences = options.max_sequences.max(1);
        let threads = options
            .pool
            .as_ref()
            .map_or(options.threads.max(1), |p| p.threads());

        // Check the budget before touching any weight page.
        let sizes = ModelSizes::from_gguf(&file, &config);
        let first = layers.start == 0;
        let last = layers.end == config.n_layers;
        let mut mapped: u64 = sizes.layers[layers.clone()].iter().map(|l| l.bytes).sum();
        if first {
            mapped += sizes.embedding.bytes;
        }
        if last {
            mapped += sizes.head.bytes;
            if config.tied_embeddings && !first {
                mapped += sizes.embedding.bytes;
            }
        }
        let n_local = layers.len();
        let kv_per_sequence = SequenceCache::bytes_for(n_local, config.kv_dim(), context);
        let kv = kv_per_sequence * max_sequences as u64;
        let shape = AttentionShape {
            n_head: config.n_head,
            n_head_kv: config.n_head_kv,
            head_dim: config.head_dim,
        };
        let floats = max_batch
            * (3 * config.n_embd + 2 * config.q_dim() + 2 * config.kv_dim() + 2 * config.n_ff)
            + if last {
                max_batch * config.vocab_size
            } else {
                0
            }
            + threads
                * (AttentionScratch::floats_per_thread(shape, context) + MatmulScratch::FLOATS);
        let scratch = 4 * floats as u64 + 2 * max_batch as u64 * config.n_ff as u64;
        let needed = mapped + kv + scratch;
        if let Some(limit) = options.memory_limit {
            if needed > limit {
                return Err(EngineError::MemoryLimit {
                    needed,
                    limit,
                    detail: format!(
                        "weights {mapped} + KV cache {kv} for {max_sequences} x {context} \
                         positions + scratch {scratch}"
                    ),
                });
            }
        }

        let weights = layers
            .clone()
            .map(|l| {
                LayerWeights::load(
                    &file,
                    l,
                    config.n_embd,
                    config.q_dim(),
                    config.kv_dim(),
                    isa,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let embedding = if first {
            Some(load_matrix(&file, "token_embd.weight", isa)?)
        } else {
            None
        };
        let head = if last {
            let norm = load_vector(&file, "output_norm.weight", config.n_embd)?;
            let name = if config.tied_embeddings {
                "token_embd.weight"
            } else {
                "output.weight"
            };
            Some((norm, load_matrix(&file, name, isa)?))
        } else {
            None
        };
        let pool = options
            .pool
            .clone()
            .unwrap_or_else(|| Arc::new(ThreadPool::for_options(threads, options.pin_threads)));
        let mut rope = ops::RopeTable::new(
            config.rope_dims,
            config.rope_freq_base,
            config.rope_freq_scale,
        );
        if file.tensor("rope_freqs.weight").is_some() {
            rope = rope.with_freq_factors(load_vector(
                &file,
                "rope_freqs.weight",
                config.rope_dims / 2,
            )?);
        }
        Ok(Shard {
            rope,
            attention_scratch: AttentionScratch::new(threads, shape, context),
            matmul_scratch: MatmulScratch::new(threads),
            acts: Activations::default(),
            buffers: Buffers::default(),
            sequences: HashMap::new(),
            next_sequence: 0,
            config,
            layers,
            weights,
            ends: Ends { embedding, head },
            options: ShardOptions {
                context,
                max_batch,
                max_sequences,
                ..options
            },
            pool,
            mapped_bytes: mapped,
            reserved_bytes: needed,
            last_logit_len: 0,
            _file: file,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    pub fn is_first(&self) -> bool {
        self.ends.embedding.is_some()
    }

    pub fn is_last(&self) -> bool {
        self.ends.head.is_some()
    }

    /// Positions each sequence can hold.
    pub fn context(&self) -> usize {
        self.options.context
    }

    /// Bytes of weights this shard maps.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
    }

    /// Bytes counted against the memory limit (weights, caches and scratch).
    pub fn reserved_bytes(&self) -> u64 {
        self.reserved_bytes
    }

    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }

    /// Starts a sequence with an empty cache.
    pub fn new_sequence(&mut self) -> Result<SequenceId, EngineError> {
        if self.sequences.len() >= self.options.max_sequences {
            return Err(EngineError::TooManySequences(self.options.max_sequences));
        }
        let id = self.next_sequence;
        self.next_sequence += 1;
        self.sequences.insert(
            id,
            SequenceCache::new(
                self.layers.len(),
                self.config.kv_dim(),
                self.options.context,
            ),
        );
        Ok(id)
    }

    /// Starts a sequence with a chosen id (used when shards in a chain must agree on ids).
    pub fn insert_sequence(&mut self, id: SequenceId) -> Result<(), EngineError> {
        if !self.sequences.contains_key(&id) && self.sequences.len() >= self.options.max_sequences {
            return Err(EngineError::TooManySequences(self.options.max_sequences));
        }
        self.sequences.insert(
            id,
            SequenceCache::new(
                self.layers.len(),
                self.config.kv_dim(),
                self.options.context,
            ),
        );
        self.next_sequence = self.next_sequence.max(id + 1);
        Ok(())
    }

    pub fn drop_sequence(&mut self, id: SequenceId) {
        self.sequences.remove(&id);
    }

    /// Positions the sequence has filled.
    pub fn sequence_len(&self, id: SequenceId) -> Option<usize> {
        self.sequences.get(&id).map(SequenceCache::len)
    }

    /// Forgets the sequence's positions from `len` on.
    pub fn truncate_sequence(&mut self, id: SequenceId, len: usize) -> Result<(), EngineError> {
        self.sequences
            .get_mut(&id)
            .ok_or(EngineError::UnknownSequence(id))?
            .truncate(len);
        Ok(())
    }

    /// The logits of the last forward pass (last shard only).
    pub fn last_logits(&self) -> Option<&[f32]> {
        self.is_last()
            .then(|| &self.buffers.logits[..self.last_logit_len])
    }

    /// Runs the shard's layers over new tokens of sequence `id`, appending them to its cache.
    pub fn forward(
        &mut self,
        id: SequenceId,
        input: ShardInput<'_>,
        rows: LogitRows,
    ) -> Result<ShardOutput<'_>, EngineError> {
        let share = self.options.compute_share;
        let pool = Arc::clone(&self.pool);
        let start = Instant::now();
        let out = self.forward_at_full_speed(id, input, rows);
        if share < 1.0 {
            // The rest of the cycle is held, not slept: a core left idle goes cold (on a
            // virtual machine the host takes it back), and the next pass would pay for that,
            // which a slower device does not. Workers park, and the holding thread yields, so
            // other processes' threads on these cores still run at once.
            pool.rest();
            let until = Instant::now() + start.elapsed().mul_f64((1.0 - share) / share);
            while Instant::now() < until {
                std::thread::yield_now();
            }
        }
        out
    }

    fn forward_at_full_speed(
        &mut self,
        id: SequenceId,
        input: ShardInput<'_>,
        rows: LogitRows,
    ) -> Result<ShardOutput<'_>, EngineError> {
        let e = self.config.n_embd;
        let tokens = match (input, self.is_first()) {
            (ShardInput::Tokens(t), true) => t.len(),
            (ShardInput::Hidden(h), false) => {
                if h.len() % e != 0 {
                    return Err(EngineError::BadHiddenState {
                        got: h.len(),
                        width: e,
                    });
                }
                h.len() / e
            }
            (_, true) => {
                return Err(EngineError::WrongInput {
                    expected: "token ids",
                })
            }
            (_, false) => {
                return Err(EngineError::WrongInput {
                    expected: "hidden states",
                })
            }
        };
        if tokens == 0 {
            return Err(EngineError::EmptyInput);
        }
        if let ShardInput::Tokens(ids) = input {
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(EngineError::TokenOutOfRange {
                    token: bad,
                    vocab: self.config.vocab_size,
                });
            }
        }
        let mut cache = self
            .sequences
            .remove(&id)
            .ok_or(EngineError::UnknownSequence(id))?;
        let start = cache.len();
        if start + tokens > cache.capacity() {
            let capacity = cache.capacity();
            self.sequences.insert(id, cache);
            return Err(EngineError::ContextFull {
                needed: start + tokens,
                capacity,
            });
        }
        let vocab = self.config.vocab_size;
        let logit_rows = match rows {
            LogitRows::Last => 1,
            LogitRows::All => tokens,
        };
        if self.is_last() {
            grow(&mut self.buffers.logits, logit_rows * vocab);
        }
        grow(&mut self.buffers.x, tokens * e);
        let mut done = 0;
        while done < tokens {
            let n = (tokens - done).min(self.options.max_batch);
            let batch_input = match input {
                ShardInput::Tokens(ids) => ShardInput::Tokens(&ids[done..done + n]),
                ShardInput::Hidden(h) => ShardInput::Hidden(&h[done * e..(done + n) * e]),
            };
            self.forward_batch(&mut cache, batch_input, done, n);
            if self.is_last() {
                let wanted = match rows {
                    LogitRows::Last if done + n == tokens => Some((n - 1..n, 0)),
                    LogitRows::Last => None,
                    LogitRows::All => Some((0..n, done)),
                };
                if let Some((range, out_row)) = wanted {
                    self.head(done, range, out_row);
                }
            }
            done += n;
        }
        cache.set_len(start + tokens);
        self.sequences.insert(id, cache);
        self.last_logit_len = if self.is_last() {
            logit_rows * vocab
        } else {
            0
        };
        Ok(if self.is_last() {
            ShardOutput::Logits(&self.buffers.logits[..logit_rows * vocab])
        } else {
            ShardOutput::Hidden(&self.buffers.x[..tokens * e])
        })
    }

    /// Runs `n` tokens (rows `offset..offset + n` of the whole input) through every layer,
    /// leaving their hidden states in `buffers.x[offset * e..]`.
    fn forward_batch(
        &mut self,
        cache: &mut SequenceCache,
        input: ShardInput<'_>,
        offset: usize,
        n: usize,
    ) {
        let cfg = &self.config;
        let (e, qd, kvd, ff, hd) = (
            cfg.n_embd,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.n_ff,
            cfg.head_dim,
        );
        let pos0 = cache.len() + offset;
        let pool = &*self.pool;
        let b = &mut self.buffers;
        let x = &mut grow(&mut b.x, (offset + n) * e)[offset * e..];
        match input {
            ShardInput::Tokens(ids) => {
                let emb = self
                    .ends
                    .embedding
                    .as_ref()
                    .expect("first shard has embeddings");
                for (row, &id) in x.chunks_exact_mut(e).zip(ids) {
                    let src = emb.rows_data(id as usize..id as usize + 1);
                    (emb.kernel.dequantize)(src, row);
                }
            }
            ShardInput::Hidden(h) => x.copy_from_slice(h),
        }
        let xn = grow(&mut b.xn, n * e);
        let q = grow(&mut b.q, n * qd);
        let k = grow(&mut b.k, n * kvd);
        let v = grow(&mut b.v, n * kvd);
        let attn = grow(&mut b.attn, n * qd);
        let proj = grow(&mut b.proj, n * e);
        let gate = grow(&mut b.gate, n * ff);
        let up = grow(&mut b.up, n * ff);
        if b.cos_sin.len() < cfg.rope_dims / 2 {
            b.cos_sin.resize(cfg.rope_dims / 2, (0.0, 0.0));
        }
        let cos_sin = &mut b.cos_sin[..cfg.rope_dims / 2];
        let shape = AttentionShape {
            n_head: cfg.n_head,
            n_head_kv: cfg.n_head_kv,
            head_dim: hd,
        };

        for (local, w) in self.weights.iter().enumerate() {
            for (src, dst) in x.chunks_exact(e).zip(xn.chunks_exact_mut(e)) {
                ops::rms_norm(src, &w.attn_norm, cfg.rms_eps, dst);
            }
            self.acts.prepare(pool, xn, e, &[&w.wq, &w.wk, &w.wv]);
            matmul(
                pool,
                &mut self.matmul_scratch,
                &self.acts,
                &mut [
                    MatmulJob {
                        matrix: &w.wq,
                        out: q,
                    },
                    MatmulJob {
                        matrix: &w.wk,
                        out: k,
                    },
                    MatmulJob {
                        matrix: &w.wv,
                        out: v,
                    },
                ],
            );
            for (bias, out, width) in [
                (&w.q_bias, &mut *q, qd),
                (&w.k_bias, &mut *k, kvd),
                (&w.v_bias, &mut *v, kvd),
            ] {
                if let Some(bias) = bias {
                    for row in out.chunks_exact_mut(width) {
                        ops::add_assign(row, bias);
                    }
                }
            }
            for t in 0..n {
                self.rope.fill(pos0 + t, cos_sin);
                // Heads wider than the rotated part keep their tail as is.
                for head in q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                    ops::rope(
                        &mut head[..cfg.rope_dims],
                        cfg.rope_dims,
                        cfg.rope_style,
                        cos_sin,
                    );
                }
                for head in k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    ops::rope(
                        &mut head[..cfg.rope_dims],
                        cfg.rope_dims,
                        cfg.rope_style,
                        cos_sin,
                    );
                }
                cache.store(
                    local,
                    pos0 + t,
                    &k[t * kvd..(t + 1) * kvd],
                    &v[t * kvd..(t + 1) * kvd],
                );
            }
            attention(
                pool,
                &mut self.attention_scratch,
                shape,
                cache,
                local,
                pos0,
                q,
                attn,
            );
            self.acts.prepare(pool, attn, qd, &[&w.wo]);
            matmul(
                pool,
                &mut self.matmul_scratch,
                &self.acts,
                &mut [MatmulJob {
                    matrix: &w.wo,
                    out: proj,
                }],
            );
            ops::add_assign(x, proj);

            for (src, dst) in x.chunks_exact(e).zip(xn.chunks_exact_mut(e)) {
                ops::rms_norm(src, &w.ffn_norm, cfg.rms_eps, dst);
            }
            self.acts.prepare(pool, xn, e, &[&w.w_gate, &w.w_up]);
            matmul(
                pool,
                &mut self.matmul_scratch,
                &self.acts,
                &mut [
                    MatmulJob {
                        matrix: &w.w_gate,
                        out: gate,
                    },
                    MatmulJob {
                        matrix: &w.w_up,
                        out: up,
                    },
                ],
            );
            ops::silu_mul(gate, up);
            self.acts.prepare(pool, gate, ff, &[&w.w_down]);
            matmul(
                pool,
                &mut self.matmul_scratch,
                &self.acts,
                &mut [MatmulJob {
                    matrix: &w.w_down,
                    out: proj,
                }],
            );
            ops::add_assign(x, proj);
        }
    }

    /// Logits for rows `rows` of the batch starting at `offset`, written from logits row
    /// `out_row` on.
    fn head(&mut self, offset: usize, rows: Range<usize>, out_row: usize) {
        let (norm, head) = self.ends.head.as_ref().expect("last shard has a head");
        let e = self.config.n_embd;
        let vocab = self.config.vocab_size;
        let n = rows.len();
        let b = &mut self.buffers;
        let xn = grow(&mut b.xn, n * e);
        let x = &b.x[(offset + rows.start) * e..(offset + rows.end) * e];
        for (src, dst) in x.chunks_exact(e).zip(xn.chunks_exact_mut(e)) {
            ops::rms_norm(src, norm, self.config.rms_eps, dst);
        }
        self.acts.prepare(&self.pool, xn, e, &[head]);
        let out = &mut b.logits[out_row * vocab..(out_row + n) * vocab];
        matmul(
            &self.pool,
            &mut self.matmul_scratch,
            &self.acts,
            &mut [MatmulJob { matrix: head, out }],
        );
    }
}
