//! GGUF v2/v3 reading.

mod ggml_type;

pub use ggml_type::{GgmlType, QK_K};
