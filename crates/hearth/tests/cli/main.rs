//! End-to-end tests of the `hearth` binary against the real test models and llama.cpp's
//! reference outputs in `../shared/reference/`.
//!
//! Models come from `HEARTH_TEST_MODEL_DIR` (default `<workspace>/models`, filled by
//! `scripts/fetch-test-models`); references from `HEARTH_SHARED_DIR` (default
//! `<workspace>/../shared`). A missing file is a failure, never a skip.

mod bad_input;
mod cluster;
mod dashboard;
mod devices;
mod observe;
mod openai_client;
mod place;
mod reference;
mod security;
mod serve;
mod shards;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The two reference model files and their llama.cpp outputs.
pub const MODELS: [(&str, &str); 2] = [
    (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "reference/smollm2-135m-q4_1.llamacpp.json",
    ),
    (
        "smollm2-135m-q4_k_m.gguf",
        "reference/smollm2-135m-q4_k_m.llamacpp.json",
    ),
];

pub fn model_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("HEARTH_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "test model {} not found; run `scripts/fetch-test-models`",
        path.display()
    );
    path
}

pub fn reference(rel: &str) -> Value {
    let dir = std::env::var_os("HEARTH_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reference {} unreadable ({e})", path.display()));
    serde_json::from_str(&text).expect("reference JSON parses")
}

pub fn hearth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        // Keep catalog look-ups away from the user's cache.
        .env(
            "HEARTH_MODELS_DIR",
            std::env::temp_dir().join("hearth-test-no-models"),
        )
        .output()
        .expect("the hearth binary runs")
}

/// Runs hearth, expects success, and parses its stdout as JSON.
pub fn hearth_json(args: &[&str]) -> Value {
    let out = hearth(args);
    assert!(
        out.status.success(),
        "hearth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hearth {args:?} printed non-JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id"))
        .collect()
}

pub fn join(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}
