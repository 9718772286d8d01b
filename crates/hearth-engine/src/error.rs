use hearth_model::config::ConfigError;
use hearth_model::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("tensor {tensor:?} has type {ggml_type}, which the CPU backend does not compute with (supported: {supported})")]
    UnsupportedType {
        tensor: String,
        ggml_type: GgmlType,
        supported: String,
    },
    #[error("tensor {tensor:?} has an unexpected shape {shape:?}")]
    BadTensor { tensor: String, shape: Vec<u64> },
    #[error("layer range {start}..{end} is invalid for a model with {n_layers} layers")]
    BadLayerRange {
        start: usize,
        end: usize,
        n_layers: usize,
    },
    #[error(
        "shard needs {needed} bytes ({detail}) but the memory limit is {limit} bytes; \
         lower the context or the number of sequences, or raise --memory-limit"
    )]
    MemoryLimit {
        needed: u64,
        limit: u64,
        detail: String,
    },
    #[error("sequence needs {needed} positions but its context holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("no sequence with id {0}")]
    UnknownSequence(u64),
    #[error("all {0} sequence slots are in use")]
    TooManySequences(usize),
    #[error("token id {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("this shard takes {expected} as input")]
    WrongInput { expected: &'static str },
    #[error("hidden state has {got} values, expected a multiple of {width}")]
    BadHiddenState { got: usize, width: usize },
    #[error("empty input")]
    EmptyInput,
    #[error("compute share must be within 0 < s <= 1, got {0}")]
    BadComputeShare(f64),
}
