//! Profiles of well-known models as llama.cpp's `Q4_K_M` quantization lays them out, for
//! placing models whose files are too big to fetch and measure.
//!
//! Sizes are derived, not copied: each tensor's shape comes from the model's published
//! architecture and its type from llama.cpp's `Q4_K_M` mixing rules (`llama_tensor_get_type`
//! in `src/llama-quant.cpp`), so per-layer sizes carry the same unevenness a real file has
//! (some layers keep `attn_v`/`ffn_down` at 6 bits). The totals are checked in the tests
//! against the sizes of published files.

use std::collections::BTreeSet;

use crate::model::ModelProfile;

/// The GGML tensor types a `Q4_K_M` mix can produce for dense llama-style models, including
/// the fallbacks taken when a row length does not fit a type's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum GgmlType {
    F32,
    F16,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Values per block; a row must be a whole number of blocks.
    fn block_len(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block, from ggml's block structs (scales included).
    fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    fn bytes(self, elements: u64) -> u64 {
        debug_assert!(elements.is_multiple_of(self.block_len()));
        elements / self.block_len() * self.block_bytes()
    }
}

/// llama.cpp cannot store a row that is not a whole number of blocks, so it swaps in a
/// 32-wide type of similar precision, and F16 when even that does not fit.
fn fit_to_row(wanted: GgmlType, row_len: usize) -> GgmlType {
    let row_len = row_len as u64;
    if row_len.is_multiple_of(wanted.block_len()) {
        return wanted;
    }
    let fallback = match wanted {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    if row_len.is_multiple_of(fallback.block_len()) {
        fallback
    } else {
        GgmlType::F16
    }
}

/// The layers `Q4_K_M` gives 6-bit `attn_v` and `ffn_down`: the first and last eighth, and
/// every third layer in between, where quantization error hurts most.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let (i, n) = (layer as i64, n_layers as i64);
    // `i < n / 8` is tested first, so the remainder below never sees a negative operand.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Architecture facts (from each model's `config.json`) that decide tensor shapes and types.
struct Arch {
    name: &'static str,
    n_layers: usize,
    hidden: usize,
    ffn: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    /// `tie_word_embeddings`: the file has no `output.weight`.
    tied: bool,
    /// Qwen2 attention carries biases on its q, k and v projections.
    qkv_bias: bool,
    /// llama.cpp classes the model as `LLM_TYPE_70B` (80 layers with grouped KV heads) and
    /// then lifts 4-bit `attn_v` to `Q5_K`, since that tensor is 8x smaller than `attn_q`.
    class_70b: bool,
}

const ARCHS: &[Arch] = &[
    Arch {
        name: "llama-3.2-3b-q4_k_m",
        n_layers: 28,
        hidden: 3072,
        ffn: 8192,
        n_heads: 24,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 128_256,
        tied: true,
        qkv_bias: false,
        class_70b: false,
    },
    Arch {
        name: "llama-3.1-8b-q4_k_m",
        n_layers: 32,
        hidden: 4096,
        ffn: 14_336,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 128_256,
        tied: false,
        qkv_bias: false,
        class_70b: false,
    },
    Arch {
        name: "llama-3.1-70b-q4_k_m",
        n_layers: 80,
        hidden: 8192,
        ffn: 28_672,
        n_heads: 64,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 128_256,
        tied: false,
        qkv_bias: false,
        class_70b: true,
    },
    Arch {
        name: "llama-3.1-405b-q4_k_m",
        n_layers: 126,
        hidden: 16_384,
        ffn: 53_248,
        n_heads: 128,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 128_256,
        tied: false,
        qkv_bias: false,
        class_70b: false,
    },
    Arch {
        name: "qwen2.5-7b-q4_k_m",
        n_layers: 28,
        hidden: 3584,
        ffn: 18_944,
        n_heads: 28,
        n_kv_heads: 4,
        head_dim: 128,
        vocab: 152_064,
        tied: false,
        qkv_bias: true,
        class_70b: false,
    },
    Arch {
        name: "qwen2.5-32b-q4_k_m",
        n_layers: 64,
        hidden: 5120,
        ffn: 27_648,
        n_heads: 40,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 152_064,
        tied: false,
        qkv_bias: true,
        class_70b: false,
    },
    Arch {
        name: "mistral-7b-v0.3-q4_k_m",
        n_layers: 32,
        hidden: 4096,
        ffn: 14_336,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 32_768,
        tied: false,
        qkv_bias: false,
        class_70b: false,
    },
];

const NAMES: &[&str] = &[
    "llama-3.2-3b-q4_k_m",
    "llama-3.1-8b-q4_k_m",
    "llama-3.1-70b-q4_k_m",
    "llama-3.1-405b-q4_k_m",
    "qwen2.5-7b-q4_k_m",
    "qwen2.5-32b-q4_k_m",
    "mistral-7b-v0.3-q4_k_m",
];

/// Names `catalog_profile` knows, lowercase.
pub fn catalog_names() -> &'static [&'static str] {
    NAMES
}

/// The profile of a catalogued model, looked up without regard to case.
pub fn catalog_profile(name: &str) -> Option<ModelProfile> {
    ARCHS
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
        .map(build)
}

#[derive(Debug, Clone, Copy)]
struct Tensor {
    elements: u64,
    ty: GgmlType,
}

impl Tensor {
    fn f32(len: usize) -> Tensor {
        Tensor {
            elements: len as u64,
            ty: GgmlType::F32,
        }
    }

    /// A weight matrix; `row_len` is ggml's `ne[0]`, the input width, which is what must
    /// divide into blocks.
    fn matrix(row_len: usize, rows: usize, wanted: GgmlType) -> Tensor {
        Tensor {
            elements: (row_len * rows) as u64,
            ty: fit_to_row(wanted, row_len),
        }
    }

    fn bytes(&self) -> u64 {
        self.ty.bytes(self.elements)
    }
}

/// `output.weight`, and the shared embedding of a tied model: 6-bit unless the row does not
/// fit a 256-wide block, in which case llama.cpp goes straight to `Q8_0`.
fn output_type(hidden: usize) -> GgmlType {
    if !(hidden as u64).is_multiple_of(GgmlType::Q4K.block_len()) {
        GgmlType::Q8_0
    } else {
        GgmlType::Q6K
    }
}

fn layer_tensors(a: &Arch, layer: usize) -> Vec<Tensor> {
    let q_dim = a.n_heads * a.head_dim;
    let kv_dim = a.n_kv_heads * a.head_dim;
    let more_bits = use_more_bits(layer, a.n_layers);

    let mut attn_v = if more_bits {
        GgmlType::Q6K
    } else {
        GgmlType::Q4K
    };
    if a.class_70b && attn_v == GgmlType::Q4K {
        attn_v = GgmlType::Q5K;
    }
    let ffn_down = if more_bits {
        GgmlType::Q6K
    } else {
        GgmlType::Q4K
    };

    let mut t = vec![
        Tensor::f32(a.hidden),                           // attn_norm.weight
        Tensor::matrix(a.hidden, q_dim, GgmlType::Q4K),  // attn_q.weight
        Tensor::matrix(a.hidden, kv_dim, GgmlType::Q4K), // attn_k.weight
        Tensor::matrix(a.hidden, kv_dim, attn_v),        // attn_v.weight
        Tensor::matrix(q_dim, a.hidden, GgmlType::Q4K),  // attn_output.weight
        Tensor::f32(a.hidden),                           // ffn_norm.weight
        Tensor::matrix(a.hidden, a.ffn, GgmlType::Q4K),  // ffn_gate.weight
        Tensor::matrix(a.hidden, a.ffn, GgmlType::Q4K),  // ffn_up.weight
        Tensor::matrix(a.ffn, a.hidden, ffn_down),       // ffn_down.weight
    ];
    if a.qkv_bias {
        // One-dimensional, so never quantized.
        t.push(Tensor::f32(q_dim)); // attn_q.bias
        t.push(Tensor::f32(kv_dim)); // attn_k.bias
        t.push(Tensor::f32(kv_dim)); // attn_v.bias
    }
    t
}

fn embedding_tensor(a: &Arch) -> Tensor {
    // With tied weights the embedding doubles as the output head, so llama.cpp gives it the
    // output tensor's type rather than the default.
    let wanted = if a.tied {
        output_type(a.hidden)
    } else {
        GgmlType::Q4K
    };
    // token_embd.weight
    Tensor::matrix(a.hidden, a.vocab, wanted)
}

fn head_tensors(a: &Arch) -> Vec<Tensor> {
    let mut t = vec![Tensor::f32(a.hidden)]; // output_norm.weight
    if !a.tied {
        // output.weight
        t.push(Tensor::matrix(a.hidden, a.vocab, output_type(a.hidden)));
    }
    t
}

// Llama 3.1 files also hold `rope_freqs.weight` (head_dim / 2 floats, 256 bytes); it belongs
// to no layer and to neither end, and is too small to matter for placement, so it is left out.
fn build(a: &Arch) -> ModelProfile {
    let mut types = BTreeSet::new();
    let mut sum = |ts: &[Tensor]| -> (u64, u64) {
        let mut bytes = 0;
        let mut params = 0;
        for t in ts {
            types.insert(t.ty);
            bytes += t.bytes();
            params += t.elements;
        }
        (bytes, params)
    };

    let mut layer_bytes = Vec::with_capacity(a.n_layers);
    let mut layer_params = Vec::with_capacity(a.n_layers);
    for i in 0..a.n_layers {
        let (b, p) = sum(&layer_tensors(a, i));
        layer_bytes.push(b);
        layer_params.push(p);
    }
    let (embedding_bytes, embedding_params) = sum(&[embedding_tensor(a)]);
    let (head_bytes, head_params) = sum(&head_tensors(a));

    ModelProfile {
        name: a.name.to_string(),
        hidden_size: a.hidden,
        n_kv_heads: a.n_kv_heads,
        head_dim: a.head_dim,
        layer_bytes,
        layer_params,
        embedding_bytes,
        embedding_params,
        head_bytes,
        head_params,
        tied_embeddings: a.tied,
        tensor_types: types.into_iter().map(|t| t.name().to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> ModelProfile {
        catalog_profile(name).unwrap_or_else(|| panic!("{name} missing from the catalog"))
    }

    fn total_bytes(p: &ModelProfile) -> u64 {
        p.layer_bytes.iter().sum::<u64>() + p.embedding_bytes + p.head_bytes
    }

    fn total_params(p: &ModelProfile) -> u64 {
        p.layer_params.iter().sum::<u64>() + p.embedding_params + p.head_params
    }

    /// Sizes of published `Q4_K_M` GGUF files. A file also holds metadata (the tokenizer
    /// alone is several MB) and alignment padding, so it is a little larger than the tensors.
    /// The 8B figure is an exact byte count of bartowski's Meta-Llama-3.1-8B-Instruct
    /// conversion; the 70B figure is the 42.52 GB listed for bartowski's
    /// Llama-3.1-70B-Q4_K_M.gguf (quoted at
    /// https://ozeki.chat/p_8590-understanding-ai-model-files.html); the rest are the
    /// rounded GB (10^9) figures shown on the usual Hugging Face repositories and are
    /// approximate. No reliable figure for the 405B file was found, so it is not listed.
    const PUBLISHED: &[(&str, u64)] = &[
        ("llama-3.2-3b-q4_k_m", 2_020_000_000),
        ("llama-3.1-8b-q4_k_m", 4_920_739_232),
        ("llama-3.1-70b-q4_k_m", 42_520_000_000),
        ("qwen2.5-7b-q4_k_m", 4_680_000_000),
        ("qwen2.5-32b-q4_k_m", 19_850_000_000),
        ("mistral-7b-v0.3-q4_k_m", 4_370_000_000),
    ];

    /// Parameter counts of the original checkpoints (Hugging Face safetensors totals).
    const PARAMS: &[(&str, u64)] = &[
        ("llama-3.2-3b-q4_k_m", 3_212_749_824),
        ("llama-3.1-8b-q4_k_m", 8_030_261_248),
        ("llama-3.1-70b-q4_k_m", 70_553_706_496),
        ("llama-3.1-405b-q4_k_m", 405_853_388_800),
        ("qwen2.5-7b-q4_k_m", 7_615_616_512),
        ("qwen2.5-32b-q4_k_m", 32_763_876_352),
        ("mistral-7b-v0.3-q4_k_m", 7_248_023_552),
    ];

    #[test]
    fn names_and_table_agree() {
        assert_eq!(catalog_names().len(), ARCHS.len());
        for (name, arch) in catalog_names().iter().zip(ARCHS) {
            assert_eq!(*name, arch.name);
            assert_eq!(profile(name).name, *name);
        }
    }

    #[test]
    fn lookup_ignores_case_and_rejects_unknown_names() {
        assert_eq!(
            profile("Llama-3.1-8B-Q4_K_M"),
            profile("llama-3.1-8b-q4_k_m")
        );
        assert_eq!(profile("QWEN2.5-32B-Q4_K_M").name, "qwen2.5-32b-q4_k_m");
        assert!(catalog_profile("llama-3.1-8b").is_none());
        assert!(catalog_profile("").is_none());
    }

    #[test]
    fn totals_match_published_files() {
        for &(name, published) in PUBLISHED {
            let total = total_bytes(&profile(name));
            let off = (total as f64 - published as f64).abs() / published as f64;
            assert!(
                off < 0.015,
                "{name}: {total} bytes vs published {published} ({:.2}% off)",
                off * 100.0
            );
        }
    }

    #[test]
    fn llama_8b_is_exact_to_the_file_less_its_metadata() {
        let p = profile("llama-3.1-8b-q4_k_m");
        let total = total_bytes(&p);
        // Tensor data alone; the published file adds about 7.8 MB of metadata and padding.
        assert_eq!(total, 4_912_898_048);
        let metadata = 4_920_739_232 - total;
        assert!(metadata < 10_000_000, "{metadata}");
    }

    #[test]
    fn params_match_the_checkpoints() {
        for &(name, params) in PARAMS {
            assert_eq!(total_params(&profile(name)), params, "{name}");
        }
    }

    #[test]
    fn layer_counts() {
        for (name, n) in [
            ("llama-3.2-3b-q4_k_m", 28),
            ("llama-3.1-8b-q4_k_m", 32),
            ("llama-3.1-70b-q4_k_m", 80),
            ("llama-3.1-405b-q4_k_m", 126),
            ("qwen2.5-7b-q4_k_m", 28),
            ("qwen2.5-32b-q4_k_m", 64),
            ("mistral-7b-v0.3-q4_k_m", 32),
        ] {
            let p = profile(name);
            assert_eq!(p.n_layers(), n, "{name}");
            assert_eq!(p.layer_params.len(), n, "{name}");
        }
    }

    #[test]
    fn more_bits_layers_follow_llama_cpp() {
        let picked: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            picked,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        let picked: Vec<usize> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
    }

    #[test]
    fn six_bit_layers_are_larger_and_the_rest_uniform() {
        for name in catalog_names() {
            let p = profile(name);
            let n = p.n_layers();
            let big: BTreeSet<u64> = (0..n)
                .filter(|&i| use_more_bits(i, n))
                .map(|i| p.layer_bytes[i])
                .collect();
            let small: BTreeSet<u64> = (0..n)
                .filter(|&i| !use_more_bits(i, n))
                .map(|i| p.layer_bytes[i])
                .collect();
            assert_eq!(big.len(), 1, "{name}");
            assert_eq!(small.len(), 1, "{name}");
            assert!(big.first() > small.first(), "{name}");
            // Types change bytes, never parameters.
            assert!(p.layer_params.iter().all(|&x| x == p.layer_params[0]));
        }
    }

    #[test]
    fn llama_8b_layer_sizes_by_hand() {
        let p = profile("llama-3.1-8b-q4_k_m");
        // q, o: 4096x4096; k, v: 4096x1024; gate, up, down: 4096x14336; two f32 norms.
        let q4 = |n: u64| n / 256 * 144;
        let q6 = |n: u64| n / 256 * 210;
        let (qo, kv, ff) = (4096 * 4096, 4096 * 1024, 4096 * 14_336);
        let norms = 2 * 4096 * 4;
        let plain = 2 * q4(qo) + 2 * q4(kv) + 3 * q4(ff) + norms;
        let rich = 2 * q4(qo) + q4(kv) + q6(kv) + 2 * q4(ff) + q6(ff) + norms;
        assert_eq!(p.layer_bytes[0], rich);
        assert_eq!(p.layer_bytes[4], plain);
        assert_eq!(p.layer_bytes[6], rich);
        assert_eq!(p.layer_bytes[31], rich);
        assert_eq!(p.layer_params[0], 218_112_000);
        assert_eq!(p.embedding_bytes, q4(128_256 * 4096));
        assert_eq!(p.head_bytes, q6(128_256 * 4096) + 4096 * 4);
        assert_eq!(p.head_params, 128_256 * 4096 + 4096);
    }

    #[test]
    fn kv_bytes_per_token_per_layer() {
        assert_eq!(
            profile("llama-3.1-8b-q4_k_m").kv_bytes_per_token_per_layer(),
            2 * 8 * 128 * 2
        );
        assert_eq!(
            profile("qwen2.5-7b-q4_k_m").kv_bytes_per_token_per_layer(),
            2 * 4 * 128 * 2
        );
        assert_eq!(
            profile("llama-3.1-70b-q4_k_m").kv_bytes_per_token_per_layer(),
            4096
        );
    }

    #[test]
    fn tied_model_has_a_six_bit_embedding_and_a_norm_only_head() {
        let p = profile("llama-3.2-3b-q4_k_m");
        assert!(p.tied_embeddings);
        assert_eq!(p.head_bytes, 3072 * 4);
        assert_eq!(p.head_params, 3072);
        assert_eq!(p.embedding_bytes, 128_256 * 3072 / 256 * 210);
    }

    #[test]
    fn tensor_types() {
        let types = |name: &str| profile(name).tensor_types;
        assert_eq!(types("llama-3.1-8b-q4_k_m"), ["F32", "Q4_K", "Q6_K"]);
        assert_eq!(types("qwen2.5-32b-q4_k_m"), ["F32", "Q4_K", "Q6_K"]);
        // The 70B class keeps its non-6-bit attn_v at 5 bits.
        assert_eq!(
            types("llama-3.1-70b-q4_k_m"),
            ["F32", "Q4_K", "Q5_K", "Q6_K"]
        );
    }

    #[test]
    fn qwen_biases_are_counted() {
        let p = profile("qwen2.5-7b-q4_k_m");
        let a = &ARCHS[4];
        assert_eq!(a.name, p.name);
        let bias_params = (28 * 128 + 2 * 4 * 128) as u64;
        let no_bias = Arch {
            qkv_bias: false,
            ..*a
        };
        assert_eq!(
            p.layer_params[0],
            build(&no_bias).layer_params[0] + bias_params
        );
        assert_eq!(
            p.layer_bytes[0],
            build(&no_bias).layer_bytes[0] + bias_params * 4
        );
    }

    #[test]
    fn rows_that_do_not_fit_a_block_fall_back() {
        assert_eq!(fit_to_row(GgmlType::Q4K, 4096), GgmlType::Q4K);
        assert_eq!(fit_to_row(GgmlType::Q4K, 4160), GgmlType::Q5_0);
        assert_eq!(fit_to_row(GgmlType::Q6K, 4160), GgmlType::Q8_0);
        assert_eq!(fit_to_row(GgmlType::Q5K, 4160), GgmlType::Q5_1);
        assert_eq!(fit_to_row(GgmlType::Q4K, 4100), GgmlType::F16);
        assert_eq!(output_type(4160), GgmlType::Q8_0);
    }

    #[test]
    fn bits_per_weight_in_the_q4_k_m_band() {
        for name in catalog_names() {
            let p = profile(name);
            let bpw = total_bytes(&p) as f64 * 8.0 / total_params(&p) as f64;
            assert!(
                (4.7..5.2).contains(&bpw),
                "{name}: {bpw:.3} bits per weight"
            );
        }
    }
}
