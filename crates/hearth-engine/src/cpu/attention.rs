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

/// Per-thread scratch: scores for a head group over the whole context plus converted rows.
pub struct AttentionScratch {
    per_thread: usize,
    buf: Vec<f32>,
}

impl AttentionScratch {
    pub fn new(threads: usize, shape: AttentionShape, capacity: usize) -> AttentionScratch {
        let group = shape.n_head / shape.n_head_kv;
        let per_thread = group * capacity + group * shape.head_dim + shape.head_dim;
        AttentionScratch {
            per_thread,
            buf: vec![0.0; threads * per_thread],
        }
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
    let counter = ChunkCounter::new(tokens * n_head_kv, 1);
    pool.run(&|thread, _| {
        // SAFETY: each thread uses only its own scratch slice.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(scratch_ptr.ptr().add(thread * per_thread), per_thread)
        };
        let (scores_all, rest) = mine.split_at_mut(per_thread - group * head_dim - head_dim);
        let (q_rounded, row) = rest.split_at_mut(group * head_dim);
        while let Some(range) = counter.next_chunk() {
            let unit = range.start;
            let (t, kvh) = (unit / n_head_kv, unit % n_head_kv);
            let n_ctx = start + t + 1;
            let scores = &mut scores_all[..group * n_ctx];
            // Queries are rounded to f16 as llama.cpp does before its f16 K·Q product.
            for g in 0..group {
                let h = kvh * group + g;
                let src = &q[t * q_dim + h * head_dim..][..head_dim];
                for (d, &s) in q_rounded[g * head_dim..][..head_dim].iter_mut().zip(src) {
                    *d = f16::from_f32(s).to_f32();
                }
            }
            for j in 0..n_ctx {
                keys[j * kv_dim + kvh * head_dim..][..head_dim].convert_to_f32_slice(row);
                for g in 0..group {
                    let qg = &q_rounded[g * head_dim..][..head_dim];
                    scores[g * n_ctx + j] = dot(qg, row) * scale;
                }
            }
            for g in 0..group {
                super::ops::softmax(&mut scores[g * n_ctx..][..n_ctx]);
            }
            // SAFETY: (token, head group) output ranges are disjoint between units.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    out_ptr.ptr().add(t * q_dim + kvh * group * head_dim),
                    group * head_dim,
                )
            };
            dst.fill(0.0);
            for j in 0..n_ctx {
                values[j * kv_dim + kvh * head_dim..][..head_dim].convert_to_f32_slice(row);
                for g in 0..group {
                    let p = scores[g * n_ctx + j];
                    for (o, &v) in dst[g * head_dim..][..head_dim].iter_mut().zip(row.iter()) {
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
