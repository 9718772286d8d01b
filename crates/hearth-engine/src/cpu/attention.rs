//! Causal grouped-query attention of new tokens over a sequence's KV cache.

use super::matmul::SharedMut;
use crate::kv_cache::SequenceCache;
use crate::pool::{ChunkCounter, ThreadPool};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// Shape of the attention computation.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// Query tokens one work unit handles: each key and value row converted from f16 serves all of
/// them (and every head of the group), which is what makes long prompts cheap.
pub const TOKEN_BLOCK: usize = 16;

/// Per-thread scratch: scores for a block of tokens × a head group over the whole context, the
/// f16-rounded queries, and one converted cache row.
pub struct AttentionScratch {
    per_thread: usize,
    buf: Vec<f32>,
}

impl AttentionScratch {
    pub fn new(threads: usize, shape: AttentionShape, capacity: usize) -> AttentionScratch {
        let per_thread = AttentionScratch::floats_per_thread(shape, capacity);
        AttentionScratch {
            per_thread,
            buf: vec![0.0; threads * per_thread],
        }
    }

    /// Scratch floats one thread needs, for memory budgets.
    pub fn floats_per_thread(shape: AttentionShape, capacity: usize) -> usize {
        let lanes = TOKEN_BLOCK * (shape.n_head / shape.n_head_kv);
        lanes * capacity + lanes * shape.head_dim + shape.head_dim
    }
}

/// `out[t]` = attention of query row `t` (at position `start + t`) over cache positions
/// `0..=start + t` of `layer`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    scratch: &mut AttentionScratch,
    shape: AttentionShape,
    cache: &SequenceCache,
    layer: usize,
    start: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let AttentionShape {
        n_head,
        n_head_kv,
        head_dim,
    } = shape;
    let group = n_head / n_head_kv;
    let q_dim = n_head * head_dim;
    let kv_dim = n_head_kv * head_dim;
    let tokens = q.len() / q_dim;
    let positions = start + tokens;
    let keys = cache.keys(layer, positions);
    let values = cache.values(layer, positions);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out_ptr = SharedMut(out.as_mut_ptr());
    let scratch_ptr = SharedMut(scratch.buf.as_mut_ptr());
    let per_thread = scratch.per_thread;
    let blocks = tokens.div_ceil(TOKEN_BLOCK);
    let counter = ChunkCounter::new(blocks * n_head_kv, 1);
    pool.run(&|thread, _| {
        // SAFETY: each thread uses only its own scratch slice.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(scratch_ptr.ptr().add(thread * per_thread), per_thread)
        };
        let lanes_max = TOKEN_BLOCK * group;
        let (scores_all, rest) = mine.split_at_mut(per_thread - lanes_max * head_dim - head_dim);
        let (q_rounded, row) = rest.split_at_mut(lanes_max * head_dim);
        while let Some(range) = counter.next_chunk() {
            let (block, kvh) = (range.start / n_head_kv, range.start % n_head_kv);
            let t0 = block * TOKEN_BLOCK;
            let t1 = (t0 + TOKEN_BLOCK).min(tokens);
            // Lane `(t - t0) * group + g` is query head `kvh * group + g` of token `t`; its row
            // of scores spans the positions the block's last token sees.
            let span = start + t1;
            let lanes = (t1 - t0) * group;
            // Queries are rounded to f16 as llama.cpp does before its f16 K·Q product.
            for t in t0..t1 {
                for g in 0..group {
                    let h = kvh * group + g;
                    let src = &q[t * q_dim + h * head_dim..][..head_dim];
                    let lane = (t - t0) * group + g;
                    for (d, &s) in q_rounded[lane * head_dim..][..head_dim].iter_mut().zip(src) {
                        *d = f16::from_f32(s).to_f32();
                    }
                }
            }
            let scores = &mut scores_all[..lanes * span];
            for j in 0..span {
                keys[j * kv_dim + kvh * head_dim..][..head_dim].convert_to_f32_slice(row);
                // Token t sees positions up to start + t: skip the lanes j is in the future of.
                let first = j.saturating_sub(start).max(t0) - t0;
                for lane in first * group..lanes {
                    let qg = &q_rounded[lane * head_dim..][..head_dim];
                    scores[lane * span + j] = dot(qg, row) * scale;
                }
            }
            for lane in 0..lanes {
                let seen = start + t0 + lane / group + 1;
                super::ops::softmax(&mut scores[lane * span..][..seen]);
            }
            for t in t0..t1 {
                // SAFETY: (token, head group) output ranges are disjoint between units.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.ptr().add(t * q_dim + kvh * group * head_dim),
                        group * head_dim,
                    )
                };
                dst.fill(0.0);
            }
            for j in 0..span {
                values[j * kv_dim + kvh * head_dim..][..head_dim].convert_to_f32_slice(row);
                let first = j.saturating_sub(start).max(t0) - t0;
                for lane in first * group..lanes {
                    let (t, g) = (t0 + lane / group, lane % group);
                    let p = scores[lane * span + j];
                    // SAFETY: as above; this unit owns token t's head group outputs.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.ptr().add(t * q_dim + (kvh * group + g) * head_dim),
                            head_dim,
                        )
                    };
                    for (o, &v) in dst.iter_mut().zip(row.iter()) {
                        *o += p * v;
                    }
                }
            }
        }
    });
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorize without reassociating.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for k in 0..8 {
            acc[k] += a[i * 8 + k] * b[i * 8 + k];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}
