//! What the planner knows of a model: sizes per layer and of the ends, nothing about weights.

/// Sizes of a decoder-only model as the cost model needs them (`../shared/fleets/README.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProfile {
    pub name: String,
    /// Width of the hidden state passed between stages.
    pub hidden_size: usize,
    /// Key/value heads and their size: KV cache bytes per token per layer are
    /// `2 * n_kv_heads * head_dim * 2` (keys and values in f16).
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Bytes and parameters of each layer (`blk.N.*`, norms included), in order.
    pub layer_bytes: Vec<u64>,
    pub layer_params: Vec<u64>,
    /// `token_embd.weight`.
    pub embedding_bytes: u64,
    pub embedding_params: u64,
    /// `output.weight` + `output_norm.weight`; when `tied`, only `output_norm.weight` (the
    /// embedding serves as the head).
    pub head_bytes: u64,
    pub head_params: u64,
    pub tied_embeddings: bool,
    /// GGUF tensor type names present (e.g. "Q4_K", "Q6_K", "F32"), for backend checks.
    pub tensor_types: Vec<String>,
}

impl ModelProfile {
    pub fn n_layers(&self) -> usize {
        self.layer_bytes.len()
    }

    pub fn kv_bytes_per_token_per_layer(&self) -> u64 {
        2 * self.n_kv_heads as u64 * self.head_dim as u64 * 2
    }
}

impl ModelProfile {
    /// Checks the sizes the cost model divides and sums by.
    pub fn validate(&self) -> Result<(), crate::error::ProfileError> {
        let bad = |field: &'static str, problem: String| crate::error::ProfileError::Invalid {
            model: self.name.clone(),
            field,
            problem,
        };
        if self.layer_bytes.is_empty() {
            return Err(bad(
                "layer_bytes",
                "is empty: the model has no layers".into(),
            ));
        }
        if self.layer_params.len() != self.layer_bytes.len() {
            return Err(bad(
                "layer_params",
                format!(
                    "has {} entries but layer_bytes has {}",
                    self.layer_params.len(),
                    self.layer_bytes.len()
                ),
            ));
        }
        if self.layer_bytes.len() > u16::MAX as usize {
            return Err(bad("layer_bytes", "has more than 65535 layers".into()));
        }
        if let Some(i) = self.layer_bytes.iter().position(|&b| b == 0) {
            return Err(bad("layer_bytes", format!("[{i}] is 0")));
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(bad(field, "is 0".into()));
            }
        }
        Ok(())
    }

    /// Bytes of all weights, the embedding counted once.
    pub fn total_bytes(&self) -> u64 {
        self.layer_bytes.iter().sum::<u64>() + self.embedding_bytes + self.head_bytes
    }
}
