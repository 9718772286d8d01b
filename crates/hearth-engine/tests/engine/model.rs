//! Small synthetic llama-family models written to temporary GGUF files, together with the
//! dequantized weights the reference forward pass uses.

use hearth_engine::quant::{quantize_weights, weight_kernel, Isa};
use hearth_model::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// SplitMix64: enough randomness for weights, and the same numbers on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    pub fn rope_base(self) -> f32 {
        match self {
            Arch::Llama => 10_000.0,
            Arch::Qwen2 => 1_000_000.0,
        }
    }
}

pub const RMS_EPS: f32 = 1e-5;

#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: Arch,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_layers: usize,
    pub vocab: usize,
    /// No `output.weight`: the head reuses the token embedding.
    pub tied: bool,
    /// Type of every matrix (embedding, projections, head); norms and biases stay F32.
    pub weight_type: GgmlType,
    pub seed: u64,
    /// One tensor written in another type, with zeroed data of the right size.
    pub odd_tensor: Option<(String, GgmlType)>,
}

impl Spec {
    /// A llama model for `t`, sized so every row is a whole number of `t`'s blocks: k-quant
    /// rows (n_embd for most matrices, n_ff for the down projection) must hold 256 values.
    pub fn llama(t: GgmlType) -> Spec {
        let n_embd = if t.block_len() == 256 { 256 } else { 64 };
        Spec {
            arch: Arch::Llama,
            n_embd,
            n_ff: 2 * n_embd,
            n_head: 4,
            n_head_kv: 2,
            n_layers: 3,
            vocab: 300,
            tied: false,
            weight_type: t,
            seed: 0x5eed ^ t.id() as u64,
            odd_tensor: None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim()
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim()
    }
}

/// A dequantized weight matrix: `rows` rows of `cols` values (GGUF shape `[cols, rows]`).
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// `W x`, accumulated in f64 so the reference adds no rounding of its own worth measuring.
    pub fn mul_vec(&self, x: &[f32]) -> Vec<f32> {
        assert_eq!(x.len(), self.cols);
        (0..self.rows)
            .map(|r| {
                self.row(r)
                    .iter()
                    .zip(x)
                    .map(|(&w, &v)| w as f64 * v as f64)
                    .sum::<f64>() as f32
            })
            .collect()
    }
}

pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub biases: Option<[Vec<f32>; 3]>,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

pub struct Weights {
    pub embedding: Matrix,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// `None` when tied to the embedding.
    pub output: Option<Matrix>,
}

impl Weights {
    pub fn head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embedding)
    }
}

/// A model on disk; the file is removed when this is dropped (open maps stay valid on Unix).
pub struct TestModel {
    pub spec: Spec,
    pub weights: Weights,
    pub file: Arc<GgufFile>,
    path: PathBuf,
}

impl Drop for TestModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Builder<'a> {
    spec: &'a Spec,
    rng: Rng,
    writer: GgufWriter,
}

impl Builder<'_> {
    /// Random `rows x cols` weights with a standard deviation of `1/sqrt(cols)` (so each
    /// projection keeps activations near unit scale), stored as the spec's type and read back.
    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Matrix {
        let t = match &self.spec.odd_tensor {
            Some((odd, t)) if odd == name => {
                let bytes = t.row_bytes(cols as u64).unwrap() as usize * rows;
                self.writer
                    .tensor(name, &[cols as u64, rows as u64], *t, vec![0; bytes]);
                return Matrix {
                    rows,
                    cols,
                    data: vec![0.0; rows * cols],
                };
            }
            _ => self.spec.weight_type,
        };
        let scale = (3.0 / cols as f32).sqrt();
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| self.rng.uniform() * scale)
            .collect();
        let row_bytes = t.row_bytes(cols as u64).expect("row is whole blocks") as usize;
        let mut bytes = vec![0u8; rows * row_bytes];
        let kernel = weight_kernel(t, Isa::Scalar).expect("a supported type");
        let mut data = vec![0f32; rows * cols];
        for ((src, dst), out) in values
            .chunks_exact(cols)
            .zip(bytes.chunks_exact_mut(row_bytes))
            .zip(data.chunks_exact_mut(cols))
        {
            assert!(quantize_weights(t, src, dst), "cannot write {t}");
            (kernel.dequantize)(dst, out);
        }
        self.writer
            .tensor(name, &[cols as u64, rows as u64], t, bytes);
        Matrix { rows, cols, data }
    }

    fn vector(&mut self, name: &str, len: usize, center: f32, spread: f32) -> Vec<f32> {
        let v: Vec<f32> = (0..len)
            .map(|_| center + spread * self.rng.uniform())
            .collect();
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.writer
            .tensor(name, &[len as u64], GgmlType::F32, bytes);
        v
    }
}

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

pub fn build(spec: &Spec) -> TestModel {
    let s = spec;
    let mut b = Builder {
        spec,
        rng: Rng::new(spec.seed),
        writer: GgufWriter::new(),
    };
    let arch = s.arch.name();
    let u32_key = |b: &mut Builder, k: &str, v: usize| {
        b.writer
            .metadata(format!("{arch}.{k}"), MetaValue::U32(v as u32));
    };
    b.writer
        .metadata("general.architecture", MetaValue::String(arch.into()));
    u32_key(&mut b, "block_count", s.n_layers);
    u32_key(&mut b, "embedding_length", s.n_embd);
    u32_key(&mut b, "feed_forward_length", s.n_ff);
    u32_key(&mut b, "attention.head_count", s.n_head);
    u32_key(&mut b, "attention.head_count_kv", s.n_head_kv);
    u32_key(&mut b, "context_length", 512);
    b.writer.metadata(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(RMS_EPS),
    );
    b.writer.metadata(
        format!("{arch}.rope.freq_base"),
        MetaValue::F32(s.arch.rope_base()),
    );

    let embedding = b.matrix("token_embd.weight", s.vocab, s.n_embd);
    let output_norm = b.vector("output_norm.weight", s.n_embd, 1.0, 0.2);
    let output = (!s.tied).then(|| b.matrix("output.weight", s.vocab, s.n_embd));
    let layers = (0..s.n_layers)
        .map(|l| {
            let n = |x: &str| format!("blk.{l}.{x}");
            let (e, q, kv, ff) = (s.n_embd, s.q_dim(), s.kv_dim(), s.n_ff);
            let attn_norm = b.vector(&n("attn_norm.weight"), e, 1.0, 0.2);
            let wq = b.matrix(&n("attn_q.weight"), q, e);
            let wk = b.matrix(&n("attn_k.weight"), kv, e);
            let wv = b.matrix(&n("attn_v.weight"), kv, e);
            let biases = (s.arch == Arch::Qwen2).then(|| {
                [
                    b.vector(&n("attn_q.bias"), q, 0.0, 0.5),
                    b.vector(&n("attn_k.bias"), kv, 0.0, 0.5),
                    b.vector(&n("attn_v.bias"), kv, 0.0, 0.5),
                ]
            });
            let wo = b.matrix(&n("attn_output.weight"), e, q);
            let ffn_norm = b.vector(&n("ffn_norm.weight"), e, 1.0, 0.2);
            let w_gate = b.matrix(&n("ffn_gate.weight"), ff, e);
            let w_up = b.matrix(&n("ffn_up.weight"), ff, e);
            let w_down = b.matrix(&n("ffn_down.weight"), e, ff);
            Layer {
                attn_norm,
                wq,
                wk,
                wv,
                biases,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
            }
        })
        .collect();

    let path = std::env::temp_dir().join(format!(
        "hearth-engine-test-{}-{}.gguf",
        std::process::id(),
        NEXT_FILE.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, b.writer.to_bytes()).expect("write test model");
    let file = match GgufFile::open(&path) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            panic!("test model does not parse: {e}");
        }
    };
    TestModel {
        spec: spec.clone(),
        weights: Weights {
            embedding,
            layers,
            output_norm,
            output,
        },
        file,
        path,
    }
}
