//! Micro-benchmarks of this CPU with the engine's own kernels: how fast a quantized mat-vec
//! streams weights (decode), what a plain streaming read reaches on the same buffer (the
//! sanity check: the mat-vec should come close), and dense matmul throughput (prefill).

use hearth_engine::quant::{quantize_weights, weight_kernel, Isa, WeightKernel};
use hearth_model::GgmlType;
use serde::{Deserialize, Serialize};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BenchError {
    #[error("the engine has no kernel for {0}")]
    NoKernel(&'static str),
    #[error("benchmark setting out of range: {0}")]
    BadConfig(&'static str),
    #[error("a benchmark thread panicked")]
    ThreadPanicked,
}

/// What was measured, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Weight bytes per second read by the Q4_0 mat-vec, in GB/s (10⁹ bytes).
    pub bandwidth_gbs: f64,
    /// A plain all-threads streaming read of the same buffer, in GB/s.
    pub read_baseline_gbs: f64,
    /// Dense Q8_0 matmul throughput at prefill batch sizes, in TFLOP/s (2·rows·cols·tokens).
    pub tflops: f64,
    pub threads: u32,
    /// Unix seconds.
    pub measured_at: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Size of the streamed weight matrix; must be well above the last-level cache to measure
    /// memory rather than cache.
    pub buffer_bytes: usize,
    pub threads: usize,
    /// Best of this many timed runs for each figure.
    pub runs: usize,
    /// Activation rows in the prefill matmul.
    pub prefill_tokens: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            buffer_bytes: 256 << 20,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            runs: 10,
            prefill_tokens: 64,
        }
    }
}

/// Row length of the benchmark matrices: a typical hidden size.
const COLS: usize = 4096;
/// Rows of the prefill matrix: small enough to stay in cache, so compute is what is timed.
const PREFILL_ROWS: usize = 1024;

fn kernel(t: GgmlType) -> Result<WeightKernel, BenchError> {
    weight_kernel(t, Isa::detect()).ok_or(BenchError::NoKernel(t.name()))
}

/// Deterministic values in [-1, 1) so runs are comparable.
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `rows` weight rows of type `t`; a handful of distinct quantized rows repeated, because
/// quantizing hundreds of MiB would cost more than the benchmark itself.
fn weights(t: GgmlType, rows: usize) -> Result<(Vec<u8>, usize), BenchError> {
    let row_bytes = t
        .row_bytes(COLS as u64)
        .ok_or(BenchError::NoKernel(t.name()))? as usize;
    const DISTINCT: usize = 16;
    let mut pattern = vec![0u8; row_bytes * DISTINCT];
    let x = pseudo_random(COLS * DISTINCT, 0x5eed);
    if !quantize_weights(t, &x, &mut pattern) {
        return Err(BenchError::NoKernel(t.name()));
    }
    let mut w = Vec::with_capacity(row_bytes * rows);
    while w.len() < row_bytes * rows {
        let take = (row_bytes * rows - w.len()).min(pattern.len());
        w.extend_from_slice(&pattern[..take]);
    }
    Ok((w, row_bytes))
}

fn activations(k: &WeightKernel, tokens: usize) -> Result<Vec<u8>, BenchError> {
    let act_row = k
        .activation
        .row_bytes(COLS as u64)
        .ok_or(BenchError::NoKernel(k.activation.name()))? as usize;
    let x = pseudo_random(COLS * tokens, 0xac7);
    let mut act = vec![0u8; act_row * tokens];
    for (xr, ar) in x.chunks_exact(COLS).zip(act.chunks_exact_mut(act_row)) {
        (k.quantize_activation)(xr, ar);
    }
    Ok(act)
}

/// Runs `matmul` over `rows` weight rows split evenly across `threads`; seconds taken.
fn timed_matmul(
    k: &WeightKernel,
    w: &[u8],
    row_bytes: usize,
    act: &[u8],
    tokens: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<f64, BenchError> {
    let rows = w.len() / row_bytes;
    let per = rows.div_ceil(threads);
    let start = Instant::now();
    let ok = std::thread::scope(|s| {
        let handles: Vec<_> = w
            .chunks(per * row_bytes)
            .zip(out.chunks_mut(per * tokens))
            .map(|(wc, oc)| {
                let n = wc.len() / row_bytes;
                s.spawn(move || (k.matmul)(COLS, wc, n, act, tokens, oc))
            })
            .collect();
        handles.into_iter().all(|h| h.join().is_ok())
    });
    let secs = start.elapsed().as_secs_f64();
    if !ok {
        return Err(BenchError::ThreadPanicked);
    }
    std::hint::black_box(&out);
    Ok(secs)
}

fn sum_words(bytes: &[u8]) -> u64 {
    // Eight independent accumulators keep the loop limited by loads, not by one add chain.
    let mut acc = [0u64; 8];
    let mut chunks = bytes.chunks_exact(64);
    for c in &mut chunks {
        for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            *a = a.wrapping_add(u64::from_ne_bytes(word));
        }
    }
    let tail: u64 = chunks.remainder().iter().map(|&b| b as u64).sum();
    acc.iter().fold(tail, |s, &a| s.wrapping_add(a))
}

fn timed_read(buf: &[u8], threads: usize) -> Result<f64, BenchError> {
    let per = buf.len().div_ceil(threads);
    let start = Instant::now();
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = buf
            .chunks(per)
            .map(|c| s.spawn(move || sum_words(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join())
            .try_fold(0u64, |acc, r| r.map(|v| acc.wrapping_add(v)))
    });
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(total.map_err(|_| BenchError::ThreadPanicked)?);
    Ok(secs)
}

fn best<F: FnMut() -> Result<f64, BenchError>>(runs: usize, mut f: F) -> Result<f64, BenchError> {
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        best = best.min(f()?);
    }
    Ok(best)
}

/// Runs the three benchmarks; with the default configuration this takes well under five
/// seconds, most of it filling the buffer.
pub fn measure(cfg: &BenchConfig) -> Result<Measurement, BenchError> {
    if cfg.threads == 0 || cfg.runs == 0 || cfg.prefill_tokens == 0 {
        return Err(BenchError::BadConfig(
            "threads, runs and prefill_tokens must be > 0",
        ));
    }

    // Decode: one activation row against a matrix larger than any cache.
    let q4 = kernel(GgmlType::Q4_0)?;
    let row_bytes = GgmlType::Q4_0
        .row_bytes(COLS as u64)
        .ok_or(BenchError::NoKernel("Q4_0"))? as usize;
    let rows = (cfg.buffer_bytes / row_bytes).max(cfg.threads);
    let (w, row_bytes) = weights(GgmlType::Q4_0, rows)?;
    let act = activations(&q4, 1)?;
    let mut out = vec![0f32; rows];
    // One untimed pass faults in every page of `out` and warms the thread start-up path.
    timed_matmul(&q4, &w, row_bytes, &act, 1, &mut out, cfg.threads)?;
    // The two are interleaved, in alternating order, so that whatever else the machine is doing
    // weighs on both alike: their ratio is the figure that must mean something.
    let (mut mv, mut read) = (f64::INFINITY, f64::INFINITY);
    for run in 0..cfg.runs {
        let mut matvec = || timed_matmul(&q4, &w, row_bytes, &act, 1, &mut out, cfg.threads);
        if run % 2 == 0 {
            mv = mv.min(matvec()?);
            read = read.min(timed_read(&w, cfg.threads)?);
        } else {
            read = read.min(timed_read(&w, cfg.threads)?);
            mv = mv.min(matvec()?);
        }
    }
    let bytes = w.len() as f64;
    drop(w);

    // Prefill: many activation rows against a cache-resident matrix.
    let q8 = kernel(GgmlType::Q8_0)?;
    let (w8, row8) = weights(GgmlType::Q8_0, PREFILL_ROWS)?;
    let act8 = activations(&q8, cfg.prefill_tokens)?;
    let mut out8 = vec![0f32; PREFILL_ROWS * cfg.prefill_tokens];
    timed_matmul(
        &q8,
        &w8,
        row8,
        &act8,
        cfg.prefill_tokens,
        &mut out8,
        cfg.threads,
    )?;
    let mm = best(cfg.runs, || {
        timed_matmul(
            &q8,
            &w8,
            row8,
            &act8,
            cfg.prefill_tokens,
            &mut out8,
            cfg.threads,
        )
    })?;
    let flops = 2.0 * PREFILL_ROWS as f64 * COLS as f64 * cfg.prefill_tokens as f64;

    Ok(Measurement {
        bandwidth_gbs: bytes / mv / 1e9,
        read_baseline_gbs: bytes / read / 1e9,
        tflops: flops / mm / 1e12,
        threads: cfg.threads as u32,
        measured_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}
