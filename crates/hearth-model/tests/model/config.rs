//! `ModelConfig` and `ModelSizes` on synthetic models (every rejection is a typed error) and on
//! the real test model.

use hearth_model::config::{Architecture, ConfigError, ModelConfig, ModelSizes, RopeStyle};
use hearth_model::gguf::{parse_header, GgmlType, GgufFile, GgufHeader, GgufWriter, MetaValue};

use crate::gguf::{peak_heap, TempFile};
use crate::model_path;

/// Hyper-parameters of a synthetic llama model.
#[derive(Clone, Copy)]
struct Dims {
    layers: u64,
    embd: u64,
    ff: u64,
    heads: u64,
    heads_kv: u64,
    vocab: u64,
}

const SMALL: Dims = Dims {
    layers: 2,
    embd: 64,
    ff: 96,
    heads: 4,
    heads_kv: 2,
    vocab: 16,
};

impl Dims {
    fn head_dim(self) -> u64 {
        self.embd / self.heads
    }
    fn kv_dim(self) -> u64 {
        self.heads_kv * self.head_dim()
    }
}

fn llama_metadata(d: Dims) -> Vec<(String, MetaValue)> {
    let u32 = |v: u64| MetaValue::U32(v as u32);
    vec![
        (
            "general.architecture".into(),
            MetaValue::String("llama".into()),
        ),
        ("general.name".into(), MetaValue::String("tiny".into())),
        ("llama.block_count".into(), u32(d.layers)),
        ("llama.embedding_length".into(), u32(d.embd)),
        ("llama.feed_forward_length".into(), u32(d.ff)),
        ("llama.attention.head_count".into(), u32(d.heads)),
        ("llama.attention.head_count_kv".into(), u32(d.heads_kv)),
        ("llama.context_length".into(), MetaValue::U64(512)),
        ("llama.rope.freq_base".into(), MetaValue::F32(100_000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            MetaValue::F32(1e-6),
        ),
    ]
}

/// Every tensor of the model, in several types: norms F32, attention Q8_0, feed-forward F16.
fn llama_tensors(d: Dims) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (e, f, q, kv, v) = (d.embd, d.ff, d.embd, d.kv_dim(), d.vocab);
    let mut out = vec![
        ("token_embd.weight".to_string(), vec![e, v], GgmlType::F32),
        ("output_norm.weight".to_string(), vec![e], GgmlType::F32),
    ];
    for l in 0..d.layers {
        let t = |n: &str| format!("blk.{l}.{n}");
        out.extend([
            (t("attn_norm.weight"), vec![e], GgmlType::F32),
            (t("attn_q.weight"), vec![e, q], GgmlType::Q8_0),
            (t("attn_k.weight"), vec![e, kv], GgmlType::Q8_0),
            (t("attn_v.weight"), vec![e, kv], GgmlType::Q8_0),
            (t("attn_output.weight"), vec![q, e], GgmlType::Q8_0),
            // Trailing unit dimensions are tolerated.
            (t("ffn_norm.weight"), vec![e, 1], GgmlType::F32),
            (t("ffn_gate.weight"), vec![e, f], GgmlType::F16),
            (t("ffn_up.weight"), vec![e, f], GgmlType::F16),
            (t("ffn_down.weight"), vec![f, e], GgmlType::F16),
        ]);
    }
    out
}

fn tensor_bytes(shape: &[u64], ty: GgmlType) -> u64 {
    ty.row_bytes(shape[0]).unwrap() * shape[1..].iter().product::<u64>()
}

fn build(metadata: &[(String, MetaValue)], tensors: &[(String, Vec<u64>, GgmlType)]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in metadata {
        w.metadata(k.clone(), v.clone());
    }
    for (name, shape, ty) in tensors {
        w.tensor(
            name.clone(),
            shape,
            *ty,
            vec![0; tensor_bytes(shape, *ty) as usize],
        );
    }
    w.to_bytes()
}

fn small_header() -> GgufHeader {
    parse_header(&build(&llama_metadata(SMALL), &llama_tensors(SMALL))).expect("valid model")
}

/// `ModelConfig::from_metadata` on the small model's metadata after `edit`.
fn config_with(
    edit: impl FnOnce(&mut Vec<(String, MetaValue)>),
) -> Result<ModelConfig, ConfigError> {
    let header = small_header();
    let mut md: Vec<(String, MetaValue)> = header
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    edit(&mut md);
    let md = hearth_model::gguf::Metadata::from_entries(md);
    ModelConfig::from_metadata(&md, |name| header.tensors.iter().find(|t| t.name == name))
}

fn set(md: &mut Vec<(String, MetaValue)>, key: &str, value: MetaValue) {
    md.retain(|(k, _)| k != key);
    md.push((key.to_string(), value));
}

fn remove(md: &mut Vec<(String, MetaValue)>, key: &str) {
    md.retain(|(k, _)| k != key);
}

/// Asserts a `BadValue` for `key` whose message mentions `needle`.
fn assert_bad_value(result: Result<ModelConfig, ConfigError>, key: &str, needle: &str) {
    let err = result.expect_err("config must be rejected");
    assert!(
        matches!(&err, ConfigError::BadValue { key: k, .. } if k == key),
        "{key}: unexpected error {err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(key) && msg.contains(needle), "{msg:?}");
}

#[test]
fn valid_synthetic_config() {
    let c = config_with(|_| {}).expect("valid");
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(c.rope_style, RopeStyle::Interleaved);
    assert_eq!(
        (c.n_layers, c.n_embd, c.n_ff, c.n_head, c.n_head_kv),
        (2, 64, 96, 4, 2)
    );
    assert_eq!((c.head_dim, c.rope_dims, c.kv_dim()), (16, 16, 32));
    assert_eq!((c.context_length, c.vocab_size), (512, 16));
    assert_eq!((c.rope_freq_base, c.rope_freq_scale), (100_000.0, 1.0));
    assert_eq!(c.rms_eps, 1e-6);
    assert!(c.tied_embeddings);
    assert_eq!(c.name.as_deref(), Some("tiny"));

    let c = config_with(|md| {
        set(
            md,
            "llama.rope.scaling.type",
            MetaValue::String("linear".into()),
        );
        set(md, "llama.rope.scaling.factor", MetaValue::F32(4.0));
        remove(md, "llama.context_length");
        remove(md, "llama.attention.head_count_kv");
    })
    .expect("valid");
    assert_eq!(c.rope_freq_scale, 0.25);
    assert_eq!(c.context_length, 2048);
    assert_eq!(c.n_head_kv, 4);
}

#[test]
fn missing_or_unsupported_architecture() {
    let err = config_with(|md| remove(md, "general.architecture")).unwrap_err();
    assert!(matches!(err, ConfigError::NoArchitecture), "{err:?}");
    assert!(err.to_string().contains("general.architecture"));

    let err = config_with(|md| set(md, "general.architecture", MetaValue::U32(1))).unwrap_err();
    assert!(matches!(err, ConfigError::NoArchitecture), "{err:?}");

    let err = config_with(|md| set(md, "general.architecture", MetaValue::String("gpt2".into())))
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnsupportedArchitecture(a) if a == "gpt2"),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"gpt2\""));
}

#[test]
fn missing_key() {
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
    ] {
        let err = config_with(|md| remove(md, key)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::MissingKey(k) if k == key),
            "{key}: {err:?}"
        );
        assert!(err.to_string().contains(key));
    }
    // Keys of another architecture do not count.
    let err = config_with(|md| {
        set(
            md,
            "general.architecture",
            MetaValue::String("qwen2".into()),
        )
    })
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::MissingKey(k) if k == "qwen2.block_count"),
        "{err:?}"
    );
}

#[test]
fn zero_huge_and_mistyped_values() {
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.context_length",
    ] {
        for value in [
            MetaValue::U32(0),
            MetaValue::U64(1 << 40),
            MetaValue::U64(u64::MAX),
        ] {
            assert_bad_value(config_with(|md| set(md, key, value)), key, "out of range");
        }
        for value in [
            MetaValue::I32(-4),
            MetaValue::String("4".into()),
            MetaValue::F32(4.0),
            MetaValue::Array(vec![]),
        ] {
            assert_bad_value(
                config_with(|md| set(md, key, value)),
                key,
                "expected an unsigned integer",
            );
        }
    }
}

#[test]
fn head_counts_must_divide() {
    assert_bad_value(
        config_with(|md| set(md, "llama.attention.head_count_kv", MetaValue::U32(3))),
        "llama.attention.head_count_kv",
        "does not divide",
    );
    assert_bad_value(
        config_with(|md| set(md, "llama.embedding_length", MetaValue::U32(66))),
        "llama.attention.head_count",
        "do not divide",
    );
    // An explicit key length makes the embedding's divisibility irrelevant.
    let c = config_with(|md| {
        set(md, "llama.embedding_length", MetaValue::U32(66));
        set(md, "llama.attention.key_length", MetaValue::U32(8));
    })
    .expect("valid");
    assert_eq!(c.head_dim, 8);
    assert_bad_value(
        config_with(|md| set(md, "llama.attention.value_length", MetaValue::U32(8))),
        "llama.attention.value_length",
        "differs",
    );
}

#[test]
fn bad_rope_and_norm_values() {
    for dims in [15, 18, 1 << 20] {
        assert_bad_value(
            config_with(|md| set(md, "llama.rope.dimension_count", MetaValue::U32(dims))),
            "llama.rope.dimension_count",
            "even",
        );
    }
    for value in [
        MetaValue::F32(f32::NAN),
        MetaValue::F32(f32::INFINITY),
        MetaValue::F64(1e300),
        MetaValue::String("1e4".into()),
    ] {
        assert_bad_value(
            config_with(|md| set(md, "llama.rope.freq_base", value)),
            "llama.rope.freq_base",
            "finite",
        );
    }
    assert_bad_value(
        config_with(|md| {
            set(
                md,
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::Bool(true),
            )
        }),
        "llama.attention.layer_norm_rms_epsilon",
        "finite",
    );
    assert_bad_value(
        config_with(|md| {
            set(
                md,
                "llama.rope.scaling.type",
                MetaValue::String("yarn".into()),
            )
        }),
        "llama.rope.scaling.type",
        "not supported",
    );
    for factor in [0.0, -2.0] {
        assert_bad_value(
            config_with(|md| {
                set(
                    md,
                    "llama.rope.scaling.type",
                    MetaValue::String("linear".into()),
                );
                set(md, "llama.rope.scaling.factor", MetaValue::F32(factor));
            }),
            "llama.rope.scaling.factor",
            "positive",
        );
    }
}

/// Writes the small model with `edit` applied to its tensor list and runs `from_gguf`.
fn from_gguf_with(
    tag: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<u64>, GgmlType)>),
) -> Result<ModelConfig, ConfigError> {
    let mut tensors = llama_tensors(SMALL);
    edit(&mut tensors);
    let tmp = TempFile::new(tag, &build(&llama_metadata(SMALL), &tensors));
    let file = GgufFile::open(&tmp.0).expect("valid GGUF");
    ModelConfig::from_gguf(&file)
}

#[test]
fn missing_tensor() {
    for name in [
        "token_embd.weight",
        "blk.1.ffn_down.weight",
        "output_norm.weight",
    ] {
        let err =
            from_gguf_with("missing-tensor", |t| t.retain(|(n, _, _)| n != name)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::MissingTensor(n) if n == name),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(name));
    }
}

#[test]
fn huge_block_count_fails_without_listing_every_layer() {
    let mut metadata = llama_metadata(SMALL);
    set(&mut metadata, "llama.block_count", MetaValue::U32(1 << 24));
    let tmp = TempFile::new("huge-blocks", &build(&metadata, &llama_tensors(SMALL)));
    let file = GgufFile::open(&tmp.0).expect("valid GGUF");
    let (result, peak) = peak_heap(|| ModelConfig::from_gguf(&file));
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ConfigError::MissingTensor(n) if n == "blk.16777215.attn_norm.weight"),
        "{err:?}"
    );
    assert!(peak < 1 << 20, "peak heap {peak} bytes");
}

#[test]
fn wrong_tensor_shape() {
    let err = from_gguf_with("wrong-shape", |t| {
        let k = t
            .iter_mut()
            .find(|(n, _, _)| n == "blk.0.attn_k.weight")
            .unwrap();
        k.1 = vec![64, 64];
    })
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::TensorShape { name, shape, expected }
            if name == "blk.0.attn_k.weight" && shape == &[64, 64] && expected == &[64, 32]),
        "{err:?}"
    );
    assert!(err.to_string().contains("blk.0.attn_k.weight"));

    // An untied output head is checked too.
    let err = from_gguf_with("wrong-output", |t| {
        t.push(("output.weight".into(), vec![64, 15], GgmlType::F32))
    })
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::TensorShape { name, .. } if name == "output.weight"),
        "{err:?}"
    );
}

#[test]
fn synthetic_model_sizes() {
    let d = SMALL;
    let tensors = llama_tensors(d);
    let tmp = TempFile::new("sizes", &build(&llama_metadata(d), &tensors));
    let file = GgufFile::open(&tmp.0).expect("valid");
    let config = ModelConfig::from_gguf(&file).expect("valid config");
    let sizes = ModelSizes::from_gguf(&file, &config);

    let (e, f, kv) = (d.embd, d.ff, d.kv_dim());
    let q8 = |shape: &[u64]| tensor_bytes(shape, GgmlType::Q8_0);
    let layer_bytes = 2 * e * 4 + q8(&[e, e]) + 2 * q8(&[e, kv]) + q8(&[e, e]) + 3 * (e * f * 2);
    let layer_params = 2 * e + 2 * e * e + 2 * e * kv + 3 * e * f;
    assert_eq!(sizes.layers.len(), 2);
    for layer in &sizes.layers {
        assert_eq!((layer.bytes, layer.params), (layer_bytes, layer_params));
    }
    assert_eq!(
        (sizes.embedding.bytes, sizes.embedding.params),
        (e * d.vocab * 4, e * d.vocab)
    );
    // Tied embeddings: the head is only the final norm.
    assert_eq!((sizes.head.bytes, sizes.head.params), (e * 4, e));
    assert_eq!(sizes.kv_bytes_per_token_per_layer, 2 * kv * 2);
    let mut types = sizes.tensor_types.clone();
    types.sort_by_key(|t| t.id());
    assert_eq!(types, [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0]);
    let all: u64 = file.tensors().iter().map(|t| t.bytes).sum();
    assert_eq!(sizes.total_bytes(), all);
}

#[test]
fn real_model_sizes() {
    let path = model_path();
    let file = GgufFile::open(&path).expect("test model opens");
    let config = ModelConfig::from_gguf(&file).expect("test model config");
    let sizes = ModelSizes::from_gguf(&file, &config);

    assert_eq!(config.n_layers, 30);
    assert_eq!(sizes.layers.len(), 30);
    let first = sizes.layers[0];
    assert!(first.bytes > 0);
    for (i, layer) in sizes.layers.iter().enumerate() {
        assert_eq!(*layer, first, "layer {i} differs from layer 0");
    }
    let (e, q, kv, f) = (
        config.n_embd as u64,
        config.q_dim() as u64,
        config.kv_dim() as u64,
        config.n_ff as u64,
    );
    assert_eq!(first.params, 2 * e + 2 * e * q + 2 * e * kv + 3 * e * f);
    assert_eq!(config.kv_dim(), 192);
    assert_eq!(sizes.kv_bytes_per_token_per_layer, 2 * 192 * 2);

    // Every tensor is counted once, and the rest of the file is header and padding.
    let all: u64 = file.tensors().iter().map(|t| t.bytes).sum();
    assert_eq!(sizes.total_bytes(), all);
    let bytes = std::fs::read(&path).expect("test model reads");
    let header = parse_header(&bytes).expect("test model parses");
    let data_len = file.file_size() - header.data_offset;
    let padding = data_len - sizes.total_bytes();
    assert!(
        padding < header.alignment * file.tensors().len() as u64,
        "{padding} bytes of the data section are not tensor data"
    );
}
