//! Integration tests against the real test model and the llama.cpp reference outputs.
//!
//! The model is looked up in `HEARTH_TEST_MODEL_DIR` (default: `<workspace>/models`) and the
//! reference outputs in `HEARTH_SHARED_DIR` (default: `<workspace>/../shared`). A missing model is
//! a failure, not a skip: run `scripts/fetch-test-models` first.

use std::path::PathBuf;

mod config;
mod fuzz_lite;
mod gguf;
mod tokenizer;

pub const TEST_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const REFERENCE: &str = "reference/smollm2-135m-q4_1.llamacpp.json";

pub fn model_path() -> PathBuf {
    let dir = std::env::var_os("HEARTH_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
    let path = dir.join(TEST_MODEL);
    assert!(
        path.is_file(),
        "test model {} not found; run `scripts/fetch-test-models` (or set HEARTH_TEST_MODEL_DIR)",
        path.display()
    );
    path
}

pub fn reference() -> serde_json::Value {
    let dir = std::env::var_os("HEARTH_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let path = dir.join(REFERENCE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reference outputs {} unreadable ({e}); set HEARTH_SHARED_DIR",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference JSON parses")
}
