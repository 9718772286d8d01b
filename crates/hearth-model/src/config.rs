//! The llama-family model configuration read from GGUF metadata, and the sizes the planner
//! needs (per-layer bytes and parameters, KV-cache bytes per token).

use crate::gguf::{GgmlType, GgufFile, Metadata, TensorInfo};

/// How rotary position embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama.
    Interleaved,
    /// Halves `(i, i + d/2)`: qwen2 and NeoX-style models.
    Halves,
}

/// Architectures the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `llama`: Llama 2/3, SmolLM, Mistral and most GGUF conversions of their relatives.
    Llama,
    /// `qwen2`: llama with biases on q/k/v and NeoX RoPE.
    Qwen2,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("model metadata has no general.architecture")]
    NoArchitecture,
    #[error("unsupported architecture {0:?} (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("model metadata is missing {0:?}")]
    MissingKey(String),
    #[error("model metadata {key:?} is invalid: {reason}")]
    BadValue { key: String, reason: String },
    #[error("model is missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {shape:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        shape: Vec<u64>,
        expected: Vec<u64>,
    },
}

/// Hyper-parameters of a llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (the rest pass through).
    pub rope_dims: usize,
    pub rope_freq_base: f32,
    /// Linear position scaling (`rope.scaling.factor` when the type is `linear`), 1.0 otherwise.
    pub rope_freq_scale: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    /// Context length the model was trained for.
    pub context_length: usize,
    pub vocab_size: usize,
    /// The output head reuses the token embedding.
    pub tied_embeddings: bool,
    pub name: Option<String>,
}

impl ModelConfig {
    /// Reads and checks the configuration against the file's tensors.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ConfigError> {
        let config = ModelConfig::from_metadata(file.metadata(), |name| file.tensor(name))?;
        // The block count is only bounded by 2^24; listing every expected tensor of a count the
        // file cannot back would take gigabytes before the first lookup fails.
        let last = format!("blk.{}.attn_norm.weight", config.n_layers - 1);
        if file.tensor(&last).is_none() {
            return Err(ConfigError::MissingTensor(last));
        }
        config.check_tensors(|name| file.tensor(name))?;
        Ok(config)
    }

    pub fn from_metadata<'a>(
        md: &Metadata,
        tensor: impl Fn(&str) -> Option<&'a TensorInfo>,
    ) -> Result<ModelConfig, ConfigError> {
        let arch_name = md
            .get_str("general.architecture")
            .ok_or(ConfigError::NoArchitecture)?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => return Err(ConfigError::UnsupportedArchitecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize, ConfigError> {
            let full = key(k);
            let v = md
                .get(&full)
                .ok_or_else(|| ConfigError::MissingKey(full.clone()))?;
            let n = v.as_u64().ok_or_else(|| ConfigError::BadValue {
                key: full.clone(),
                reason: format!("expected an unsigned integer, found {}", v.type_name()),
            })?;
            positive(&full, n)
        };
        let opt = |k: &str| -> Result<Option<usize>, ConfigError> {
            let full = key(k);
            match md.get(&full) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) => positive(&full, n).map(Some),
                    None => Err(ConfigError::BadValue {
                        key: full,
                        reason: format!("expected an unsigned integer, found {}", v.type_name()),
                    }),
                },
            }
        };
        let n_layers = req("block_count")?;
        let n_embd = req("embedding_length")?;
        let n_ff = req("feed_forward_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = opt("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            return Err(ConfigError::BadValue {
                key: key("attention.head_count_kv"),
                reason: format!("{n_head_kv} does not divide the head count {n_head}"),
            });
        }
        let head_dim = match opt("attention.key_length")? {
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(ConfigError::BadValue {
                    key: key("attention.head_count"),
                    reason: format!("{n_head} heads do not divide the embedding {n_embd}"),
                })
            }
        };
        if let Some(v) = opt("attention.value_length")? {
            if v != head_dim {
                return Err(ConfigError::BadValue {
                    key: key("attention.value_length"),
                    reason: format!("{v} differs from the key length {head_dim}"),
                });
            }
        }
        let rope_dims = opt("rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(ConfigError::BadValue {
                key: key("rope.dimension_count"),
                reason: format!("{rope_dims} must be even and at most the head size {head_dim}"),
            });
        }
        let float = |k: &str, default: f32| -> Result<f32, ConfigError> {
            let full = key(k);
            match md.get(&full) {
                None => Ok(default),
                Some(v) => match v.as_f32() {
                    Some(x) if x.is_finite() => Ok(x),
                    _ => Err(ConfigError::BadValue {
                        key: full,
                        reason: "expected a finite number".into(),
                    }),
                },
            }
        };
        let rope_freq_base = float("rope.freq_base", 10_000.0)?;
        let rope_freq_scale = match md.get_str(&key("rope.scaling.type")) {
            Some("linear") => {
                let factor = float("rope.scaling.factor", 1.0)?;
                if factor <= 0.0 {
                    return Err(ConfigError::BadValue {
                        key: key("rope.scaling.factor"),
                        reason: format!("{factor} must be positive"),
                    });
                }
                1.0 / factor
            }
            None | Some("none") => 1.0,
            Some(other) => {
                return Err(ConfigError::BadValue {
                    key: key("rope.scaling.type"),
                    reason: format!("RoPE scaling {other:?} is not supported"),
                })
            }
        };
        let rms_eps = float("attention.layer_norm_rms_epsilon", 1e-5)?;
        let context_length = opt("context_length")?.unwrap_or(2048);

        let embd = tensor("token_embd.weight")
            .ok_or_else(|| ConfigError::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = embd.rows() as usize;
        let tied_embeddings = tensor("output.weight").is_none();
        Ok(ModelConfig {
            architecture,
            n_layers,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rope_dims,
            rope_freq_base,
            rope_freq_scale,
            rope_style: match architecture {
                Architecture::Llama => RopeStyle::Interleaved,
                Architecture::Qwen2 => RopeStyle::Halves,
            },
            rms_eps,
            context_length,
            vocab_size,
            tied_embeddings,
            name: md.get_str("general.name").map(str::to_string),
        })
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of each of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Shapes every tensor of the model must have, innermost dimension first.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (e, f, q, kv, v) = (
            self.n_embd as u64,
            self.n_ff as u64,
            self.q_dim() as u64,
            self.kv_dim() as u64,
            self.vocab_size as u64,
        );
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![e, v]),
            ("output_norm.weight".to_string(), vec![e]),
        ];
        if !self.tied_embeddings {
            out.push(("output.weight".to_string(), vec![e, v]));
        }
        for l in 0..self.n_layers {
            let t = |n: &str| format!("blk.{l}.{n}");
            out.extend([
                (t("attn_norm.weight"), vec![e]),
                (t("attn_q.weight"), vec![e, q]),
                (t("attn_k.weight"), vec![e, kv]),
                (t("attn_v.weight"), vec![e, kv]),
                (t("attn_output.weight"), vec![q, e]),
                (t("ffn_norm.weight"), vec![e]),
                (t("ffn_gate.weight"), vec![e, f]),
                (t("ffn_up.weight"), vec![e, f]),
                (t("ffn_down.weight"), vec![f, e]),
            ]);
            if self.architecture == Architecture::Qwen2 {
                out.extend([
                    (t("attn_q.bias"), vec![q]),
                    (t("attn_k.bias"), vec![kv]),
                    (t("attn_v.bias"), vec![kv]),
                ]);
            }
        }
        out
    }

    fn check_tensors<'a>(
        &self,
        tensor: impl Fn(&str) -> Option<&'a TensorInfo>,
    ) -> Result<(), ConfigError> {
        for (name, expected) in self.expected_tensors() {
            let info = tensor(&name).ok_or_else(|| ConfigError::MissingTensor(name.clone()))?;
            // GGUF drops trailing unit dimensions inconsistently; compare without them.
            let trimmed: Vec<u64> = {
                let mut s = info.shape.clone();
                while s.len() > 1 && s.last() == Some(&1) {
                    s.pop();
                }
                s
            };
            if trimmed != expected {
                return Err(ConfigError::TensorShape {
                    name,
                    shape: info.shape.clone(),
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Bytes of K and V cache one token occupies in one layer, with elements of `elem_bytes`.
    pub fn kv_bytes_per_token_per_layer(&self, elem_bytes: usize) -> u64 {
        2 * self.kv_dim() as u64 * elem_bytes as u64
    }
}

fn positive(key: &str, n: u64) -> Result<usize, ConfigError> {
    match usize::try_from(n) {
        Ok(v) if v > 0 && v <= 1 << 24 => Ok(v),
        _ => Err(ConfigError::BadValue {
            key: key.to_string(),
            reason: format!("{n} is out of range"),
        }),
    }
}

/// Bytes and parameter counts of one part of the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartSize {
    pub bytes: u64,
    pub params: u64,
}

/// Sizes the planner needs: each layer, the embedding, the output head and final norm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSizes {
    pub layers: Vec<PartSize>,
    pub embedding: PartSize,
    /// Output head plus final norm; zero bytes for the head when it is tied to the embedding.
    pub head: PartSize,
    /// KV cache per token per layer, at the engine's cache precision (f16).
    pub kv_bytes_per_token_per_layer: u64,
    /// Tensor types present, for checking a backend can run them.
    pub tensor_types: Vec<GgmlType>,
}

impl ModelSizes {
    pub fn from_gguf(file: &GgufFile, config: &ModelConfig) -> ModelSizes {
        let mut layers = vec![PartSize::default(); config.n_layers];
        let mut embedding = PartSize::default();
        let mut head = PartSize::default();
        let mut tensor_types = Vec::new();
        for t in file.tensors() {
            let part = if let Some(rest) = t.name.strip_prefix("blk.") {
                let layer = rest.split('.').next().and_then(|n| n.parse::<usize>().ok());
                match layer.and_then(|l| layers.get_mut(l)) {
                    Some(p) => p,
                    None => continue,
                }
            } else if t.name == "token_embd.weight" {
                &mut embedding
            } else if t.name == "output.weight" || t.name == "output_norm.weight" {
                &mut head
            } else {
                continue;
            };
            part.bytes += t.bytes;
            part.params += t.elements();
            if !tensor_types.contains(&t.ggml_type) {
                tensor_types.push(t.ggml_type);
            }
        }
        ModelSizes {
            layers,
            embedding,
            head,
            kv_bytes_per_token_per_layer: config.kv_bytes_per_token_per_layer(2),
            tensor_types,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes).sum::<u64>() + self.embedding.bytes + self.head.bytes
    }
}
