//! Parallel matrix multiplication of mapped weights with a batch of activation rows.
//!
//! Activations are quantized once per activation format and shared by every matrix that reads
//! them. Work is handed out in row chunks (and, for long batches, token chunks so a chunk's
//! activations stay in cache); each chunk is computed by one thread, so the numbers never
//! depend on the thread count.

use super::weights::Matrix;
use crate::pool::{ChunkCounter, ThreadPool};
use hearth_model::GgmlType;

/// Tokens per work unit in batched (prefill) matmuls.
const TOKEN_CHUNK: usize = 64;
/// Floats of per-thread scratch for one work unit's output.
const UNIT_SCRATCH: usize = 64 * TOKEN_CHUNK;
/// Row chunks per thread in a decode matmul: few, so each thread streams long runs of
/// consecutive rows (many small chunks cost more in lost prefetching and contention than they
/// win in balance), but more than one, so a descheduled thread's work can move.
const DECODE_CHUNKS_PER_THREAD: usize = 4;
/// Most matrices one group multiplies with the same activations (q, k, v).
const MAX_JOBS: usize = 4;

/// A raw pointer that threads may share because each writes a disjoint range.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Read through a method so closures capture the whole (shareable) wrapper.
    pub fn ptr(self) -> *mut T {
        self.0
    }
}

/// Input rows quantized to each activation format in use.
#[derive(Default)]
pub struct Activations {
    buffers: Vec<(GgmlType, Vec<u8>)>,
    tokens: usize,
    cols: usize,
}

impl Activations {
    /// Quantizes `tokens` rows of `x` (each `cols` wide) for every matrix in `matrices`.
    pub fn prepare(&mut self, pool: &ThreadPool, x: &[f32], cols: usize, matrices: &[&Matrix]) {
        let tokens = x.len() / cols;
        self.tokens = tokens;
        self.cols = cols;
        for (i, m) in matrices.iter().enumerate() {
            let kernel = m.kernel;
            let ty = kernel.activation;
            // Matrices that share an activation format share one quantized copy.
            if matrices[..i]
                .iter()
                .any(|other| other.kernel.activation == ty)
            {
                continue;
            }
            let row_bytes = ty.row_bytes(cols as u64).unwrap_or(0) as usize;
            let index = match self.buffers.iter().position(|(t, _)| *t == ty) {
                Some(i) => i,
                None => {
                    self.buffers.push((ty, Vec::new()));
                    self.buffers.len() - 1
                }
            };
            let buf = &mut self.buffers[index].1;
            if buf.len() < tokens * row_bytes {
                buf.resize(tokens * row_bytes, 0);
            }
            let quantize = kernel.quantize_activation;
            if tokens == 1 {
                quantize(x, &mut buf[..row_bytes]);
                continue;
            }
            let out = SharedMut(buf.as_mut_ptr());
            let counter = ChunkCounter::new(tokens, 4);
            pool.run(&|_, _| {
                while let Some(range) = counter.next_chunk() {
                    for t in range {
                        // SAFETY: each token's row is written by exactly one thread.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(out.ptr().add(t * row_bytes), row_bytes)
                        };
                        quantize(&x[t * cols..(t + 1) * cols], row);
                    }
                }
            });
        }
    }

    fn get(&self, ty: GgmlType) -> &[u8] {
        let row_bytes = ty.row_bytes(self.cols as u64).unwrap_or(0) as usize;
        self.buffers
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, b)| &b[..self.tokens * row_bytes])
            .unwrap_or(&[])
    }
}

/// One matrix product in a group: `out[t * rows + r] = dot(matrix row r, activation t)`.
pub struct MatmulJob<'a> {
    pub matrix: &'a Matrix,
    pub out: &'a mut [f32],
}

/// Per-thread output scratch for batched matmuls.
pub struct MatmulScratch {
    buf: Vec<f32>,
}

impl MatmulScratch {
    /// Floats of scratch per thread.
    pub const FLOATS: usize = UNIT_SCRATCH;

    pub fn new(threads: usize) -> MatmulScratch {
        MatmulScratch {
            buf: vec![0.0; threads * UNIT_SCRATCH],
        }
    }
}

/// Runs every job of the group in one parallel region.
pub fn matmul(
    pool: &ThreadPool,
    scratch: &mut MatmulScratch,
    acts: &Activations,
    jobs: &mut [MatmulJob<'_>],
) {
    let tokens = acts.tokens;
    let total_rows: usize = jobs.iter().map(|j| j.matrix.rows).sum();
    let threads = pool.threads();
    let row_chunk = if tokens == 1 {
        (total_rows / (threads * DECODE_CHUNKS_PER_THREAD)).max(8)
    } else {
        (UNIT_SCRATCH / TOKEN_CHUNK).min(total_rows.div_ceil(threads * 4).max(4))
    };
    let row_chunk = row_chunk.next_multiple_of(4);
    let token_chunks = tokens.div_ceil(TOKEN_CHUNK);
    // Units are numbered job-major, then row chunk, then token chunk.
    assert!(
        jobs.len() <= MAX_JOBS,
        "at most {MAX_JOBS} matrices per group"
    );
    let mut unit_starts = [usize::MAX; MAX_JOBS + 1];
    let mut outs = [SharedMut(std::ptr::null_mut::<f32>()); MAX_JOBS];
    let mut units = 0;
    for (i, job) in jobs.iter_mut().enumerate() {
        unit_starts[i] = units;
        units += job.matrix.rows.div_ceil(row_chunk) * token_chunks;
        outs[i] = SharedMut(job.out.as_mut_ptr());
    }
    unit_starts[jobs.len()] = units;
    let unit_starts = &unit_starts[..=jobs.len()];
    let jobs = &*jobs;
    let scratch_ptr = SharedMut(scratch.buf.as_mut_ptr());
    let counter = ChunkCounter::new(units, 1);
    pool.run(&|thread, _| {
        while let Some(range) = counter.next_chunk() {
            let unit = range.start;
            let j = unit_starts.partition_point(|&s| s <= unit) - 1;
            let job = &jobs[j];
            let m = job.matrix;
            let local = unit - unit_starts[j];
            let (row_block, token_block) = (local / token_chunks, local % token_chunks);
            let r0 = row_block * row_chunk;
            let r1 = (r0 + row_chunk).min(m.rows);
            let t0 = token_block * TOKEN_CHUNK;
            let t1 = (t0 + TOKEN_CHUNK).min(tokens);
            let act_all = acts.get(m.kernel.activation);
            let act_row = act_all.len() / tokens;
            let act = &act_all[t0 * act_row..t1 * act_row];
            let w = m.rows_data(r0..r1);
            let out = outs[j];
            if tokens == 1 {
                // SAFETY: rows r0..r1 of this job's output belong to this unit alone.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(r0), r1 - r0) };
                (m.kernel.matmul)(m.cols, w, r1 - r0, act, 1, dst);
            } else {
                let (nr, nt) = (r1 - r0, t1 - t0);
                // SAFETY: each thread uses only its own scratch slice.
                let tmp = unsafe {
                    std::slice::from_raw_parts_mut(
                        scratch_ptr.ptr().add(thread * UNIT_SCRATCH),
                        nr * nt,
                    )
                };
                (m.kernel.matmul)(m.cols, w, nr, act, nt, tmp);
                for t in 0..nt {
                    for r in 0..nr {
                        // SAFETY: (token, row) pairs of this unit are written by it alone.
                        unsafe {
                            *out.ptr().add((t0 + t) * m.rows + r0 + r) = tmp[r * nt + t];
                        }
                    }
                }
            }
        }
    });
}
