use std::path::PathBuf;

/// Why a GGUF file was rejected. Every variant names what was wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated: {what} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what} count {count} at byte {offset} cannot fit in the {available} bytes left")]
    CountOutOfRange {
        what: &'static str,
        count: u64,
        offset: u64,
        available: u64,
    },
    #[error("metadata key at byte {offset} has unknown value type {value_type}")]
    UnknownValueType { offset: u64, value_type: u32 },
    #[error("metadata arrays nested deeper than {max} levels at byte {offset}")]
    NestingTooDeep { offset: u64, max: usize },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("metadata {key:?} has the wrong type: expected {expected}")]
    WrongMetadataType { key: String, expected: &'static str },
    #[error("tensor {name:?} has unknown element type {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("tensor {name:?} has {n_dims} dimensions (at most {max} allowed)")]
    TooManyDimensions {
        name: String,
        n_dims: u32,
        max: usize,
    },
    #[error("tensor {name:?} has invalid shape {shape:?}: {reason}")]
    BadShape {
        name: String,
        shape: Vec<u64>,
        reason: &'static str,
    },
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("alignment {0} is invalid (must be a non-zero power of two)")]
    BadAlignment(u64),
    #[error("tensor {name:?} at offset {offset} is not aligned to {alignment} bytes")]
    Misaligned {
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "tensor {name:?} data [{start}, {end}) lies outside the file's data section of {data_len} bytes"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        data_len: u64,
    },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    TensorsOverlap { first: String, second: String },
}
