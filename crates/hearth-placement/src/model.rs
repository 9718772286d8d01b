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
