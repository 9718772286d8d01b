//! Bad input of every kind ends in one clear line on stderr and a non-zero exit, never a panic.

use super::*;
use hearth_model::gguf::{GgufWriter, MetaValue};
use hearth_model::GgmlType;
use std::path::Path;

fn expect_clean_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "got: {stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in: {stderr}"
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn run_on(path: &Path) -> Output {
    hearth(&[
        "run",
        "-m",
        path.to_str().unwrap(),
        "--prompt",
        "hi",
        "--json",
    ])
}

#[test]
fn truncated_model_file() {
    let real = std::fs::read(model_path(MODELS[0].0)).unwrap();
    let path = temp_file("truncated.gguf", &real[..real.len() / 2]);
    expect_clean_error(&run_on(&path), "outside the file");
    let path = temp_file("header-only.gguf", &real[..1000]);
    expect_clean_error(&run_on(&path), "cannot fit");
}

#[test]
fn not_a_gguf_file() {
    let path = temp_file("noise.gguf", b"this is not a model file at all");
    expect_clean_error(&run_on(&path), "not a GGUF file");
}

#[test]
fn corrupt_header_counts() {
    let mut real = std::fs::read(model_path(MODELS[0].0)).unwrap();
    // The metadata count lives at bytes 16..24.
    real[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = temp_file("huge-count.gguf", &real[..4096]);
    expect_clean_error(&run_on(&path), "cannot fit");
}

fn tiny_model(arch: &str, weight_type: GgmlType) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", MetaValue::String(arch.into()));
    for (k, v) in [
        ("block_count", 1u32),
        ("embedding_length", 256),
        ("feed_forward_length", 256),
        ("attention.head_count", 2),
    ] {
        w.metadata(format!("{arch}.{k}"), MetaValue::U32(v));
    }
    w.metadata("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    let tokens: Vec<MetaValue> = (0..4).map(|i| MetaValue::String(format!("t{i}"))).collect();
    w.metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens));
    w.metadata("tokenizer.ggml.merges", MetaValue::Array(vec![]));
    let matrix = |t: GgmlType, rows: u64| vec![0u8; (t.row_bytes(256).unwrap() * rows) as usize];
    w.tensor(
        "token_embd.weight",
        &[256, 4],
        weight_type,
        matrix(weight_type, 4),
    );
    w.tensor("output_norm.weight", &[256], GgmlType::F32, vec![0; 1024]);
    for name in ["attn_norm", "ffn_norm"] {
        w.tensor(
            format!("blk.0.{name}.weight"),
            &[256],
            GgmlType::F32,
            vec![0; 1024],
        );
    }
    for name in [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ] {
        w.tensor(
            format!("blk.0.{name}.weight"),
            &[256, 256],
            weight_type,
            matrix(weight_type, 256),
        );
    }
    w.to_bytes()
}

#[test]
fn unsupported_architecture() {
    let path = temp_file("gptj.gguf", &tiny_model("gptj", GgmlType::F32));
    expect_clean_error(&run_on(&path), "unsupported architecture \"gptj\"");
}

#[test]
fn unsupported_quant_type() {
    // Q2_K is a valid GGUF type the CPU backend does not compute with.
    let path = temp_file("q2_k.gguf", &tiny_model("llama", GgmlType::Q2_K));
    let out = run_on(&path);
    expect_clean_error(&out, "Q2_K");
}

#[test]
fn prompt_longer_than_the_context() {
    let path = model_path(MODELS[0].0);
    let long = "word ".repeat(100);
    let out = hearth(&[
        "run",
        "-m",
        path.to_str().unwrap(),
        "--prompt",
        &long,
        "--context",
        "32",
    ]);
    expect_clean_error(&out, "context holds 32");
}

#[test]
fn unknown_model_name() {
    let out = hearth(&["run", "-m", "no-such-model", "--prompt", "hi"]);
    expect_clean_error(&out, "no-such-model");
}

#[test]
fn memory_limit_too_small() {
    let path = model_path(MODELS[0].0);
    let out = hearth(&[
        "run",
        "-m",
        path.to_str().unwrap(),
        "--prompt",
        "hi",
        "--memory-limit",
        "50MiB",
    ]);
    expect_clean_error(&out, "memory limit");
}

#[test]
fn bad_token_ids_and_layer_ranges() {
    let path = model_path(MODELS[0].0);
    let path = path.to_str().unwrap();
    let out = hearth(&[
        "logprobs",
        "-m",
        path,
        "--prompt-tokens",
        "1,x",
        "--continuation",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let out = hearth(&[
        "logprobs",
        "-m",
        path,
        "--prompt-tokens",
        "1,99999999",
        "--continuation",
        "2",
    ]);
    expect_clean_error(&out, "outside the vocabulary");
    let out = hearth(&[
        "run",
        "-m",
        path,
        "--prompt",
        "hi",
        "--layers",
        "0..10,12..30",
    ]);
    expect_clean_error(&out, "layer range");
}
