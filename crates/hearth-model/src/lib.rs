//! Everything hearth knows about a model file before any compute happens: GGUF parsing with
//! strict validation, the model configuration, the tokenizer, the chat template and the catalog.

pub mod catalog;
pub mod chat;
pub mod config;
pub mod gguf;
pub mod tokenizer;

pub use gguf::GgmlType;
