//! Everything hearth knows about a model file before any compute happens: GGUF parsing with
//! strict validation, the model configuration, the tokenizer, the chat template and the catalog.

pub mod gguf;

pub use gguf::GgmlType;
