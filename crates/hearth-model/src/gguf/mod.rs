//! GGUF v2/v3 reading over a memory map, with strict validation, and a writer for building
//! model files (synthetic test models, re-packed shards).

mod error;
mod file;
mod ggml_type;
mod parse;
mod value;
mod write;

pub use error::GgufError;
pub use file::GgufFile;
pub use ggml_type::{GgmlType, QK_K};
pub use parse::{parse_header, parse_header_prefix, GgufHeader};
pub use value::{MetaValue, Metadata};
pub use write::GgufWriter;

/// GGUF allows at most four dimensions per tensor.
pub const MAX_DIMS: usize = 4;

/// Where one tensor lives in the file and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (row length) first, as GGUF stores them.
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub bytes: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Values per row (the first dimension).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of the other dimensions).
    pub fn rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }
}
