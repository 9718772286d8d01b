//! Agreement with llama.cpp on the same GGUF files.
//!
//! The bounds are calibrated on llama.cpp itself: the same llama.cpp commit that made the
//! reference, built for this machine (AVX-512), scored against its own reference gives a mean
//! |Δ logprob| of 0.032 (Q4_1) and 0.042 (Q4_K_M), a worst step of 0.34 and 0.65, and a
//! different top-1 where the reference's top-1/top-2 gap was up to 0.49. These models are so
//! small that rounding the 8-bit activations differently anywhere moves log-probabilities by
//! that much, so the bounds below sit just above what llama.cpp achieves against itself; a real
//! bug (a wrong RoPE, a mis-decoded block) moves them by whole units. docs/ARCHITECTURE.md
//! records the measurements.

use super::*;

const MEAN_ABS_LOGPROB: f64 = 0.07;
const MAX_ABS_LOGPROB: f64 = 0.75;
/// Top-1 must agree wherever llama.cpp's top-1 led its top-2 by at least this much.
const CLEAR_LEAD: f64 = 0.75;
/// Free-running greedy output must match until the first step whose lead is below this.
const FREE_RUNNING_LEAD: f64 = 0.3;

fn generations(reference: &Value) -> Vec<&Value> {
    let mut all: Vec<&Value> = reference["completions"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    all.extend(reference["chats"].as_array().unwrap());
    all
}

fn lead(step: &Value) -> f64 {
    let top = step["top"].as_array().unwrap();
    top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap()
}

#[test]
fn teacher_forced_logprobs_agree_with_llama_cpp() {
    for (model, rel) in MODELS {
        let path = model_path(model);
        let path = path.to_str().unwrap();
        let reference = reference(rel);
        let (mut sum, mut count) = (0.0, 0);
        for generation in generations(&reference) {
            let prompt = ids(&generation["prompt_tokens"]);
            let generated = ids(&generation["generated_tokens"]);
            let out = hearth_json(&[
                "logprobs",
                "-m",
                path,
                "--prompt-tokens",
                &join(&prompt),
                "--continuation",
                &join(&generated),
                "--top",
                "5",
                "--json",
            ]);
            let steps = out["steps"].as_array().unwrap();
            let ref_steps = generation["steps"].as_array().unwrap();
            assert_eq!(steps.len(), ref_steps.len());
            for (i, (ours, theirs)) in steps.iter().zip(ref_steps).enumerate() {
                assert_eq!(ours["token"], theirs["token"]);
                let diff =
                    (ours["logprob"].as_f64().unwrap() - theirs["logprob"].as_f64().unwrap()).abs();
                assert!(
                    diff <= MAX_ABS_LOGPROB,
                    "{model} step {i} of {:?}: logprob differs by {diff}",
                    generation["prompt"]
                );
                sum += diff;
                count += 1;
                if lead(theirs) >= CLEAR_LEAD {
                    assert_eq!(
                        ours["top"][0][0],
                        theirs["top"][0][0],
                        "{model} step {i}: top-1 differs where llama.cpp led by {}",
                        lead(theirs)
                    );
                }
            }
        }
        let mean = sum / count as f64;
        assert!(
            mean <= MEAN_ABS_LOGPROB,
            "{model}: mean |Δ logprob| {mean} over {count} steps"
        );
    }
}

#[test]
fn greedy_generation_follows_llama_cpp_until_a_close_call() {
    for (model, rel) in MODELS {
        let path = model_path(model);
        let reference = reference(rel);
        for completion in reference["completions"].as_array().unwrap() {
            let expected = ids(&completion["generated_tokens"]);
            let out = hearth_json(&[
                "run",
                "-m",
                path.to_str().unwrap(),
                "--prompt",
                completion["prompt"].as_str().unwrap(),
                "--temperature",
                "0",
                "--max-tokens",
                &expected.len().to_string(),
                "--json",
            ]);
            assert_eq!(
                ids(&out["prompt_tokens"]),
                ids(&completion["prompt_tokens"])
            );
            let got = ids(&out["tokens"]);
            let steps = completion["steps"].as_array().unwrap();
            let must_match = steps
                .iter()
                .position(|s| lead(s) < FREE_RUNNING_LEAD)
                .unwrap_or(steps.len());
            assert!(
                got.len() >= must_match && got[..must_match] == expected[..must_match],
                "{model} {:?}: expected {:?}, got {:?} (must match {} tokens)",
                completion["prompt"],
                &expected[..must_match],
                got,
                must_match
            );
        }
    }
}

#[test]
fn chat_prompts_render_and_tokenize_like_llama_cpp() {
    let (model, rel) = MODELS[0];
    let path = model_path(model);
    let reference = reference(rel);
    for chat in reference["chats"].as_array().unwrap() {
        let messages = chat["messages"].as_array().unwrap();
        let user = messages.iter().find(|m| m["role"] == "user").unwrap();
        let mut args = vec![
            "run",
            "-m",
            path.to_str().unwrap(),
            "--chat",
            user["content"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "1",
            "--json",
        ];
        if let Some(system) = messages.iter().find(|m| m["role"] == "system") {
            args.extend(["--system", system["content"].as_str().unwrap()]);
        }
        let out = hearth_json(&args);
        assert_eq!(ids(&out["prompt_tokens"]), ids(&chat["prompt_tokens"]));
    }
}

#[test]
fn tokenize_command_matches_llama_cpp() {
    let (model, rel) = MODELS[0];
    let path = model_path(model);
    for case in reference(rel)["tokenization"].as_array().unwrap() {
        let out = hearth_json(&[
            "tokenize",
            "-m",
            path.to_str().unwrap(),
            case["text"].as_str().unwrap(),
            "--json",
        ]);
        assert_eq!(
            ids(&out["tokens"]),
            ids(&case["tokens"]),
            "{:?}",
            case["text"]
        );
    }
}

#[test]
fn peak_memory_stays_within_the_file_plus_kv_cache() {
    let (model, _) = MODELS[0];
    let path = model_path(model);
    let file_size = std::fs::metadata(&path).unwrap().len() as f64;
    let context = 1024u64;
    let out = hearth_json(&[
        "run",
        "-m",
        path.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "32",
        "--context",
        &context.to_string(),
        "--json",
    ]);
    // 30 layers x (K + V) x 192 values x 2 bytes per position.
    let kv = (context * 30 * 2 * 192 * 2) as f64;
    let rss = out["peak_rss_bytes"]
        .as_f64()
        .expect("run --json reports peak RSS");
    // Beyond the mapped weights and the KV cache: the binary, the tokenizer's tables, the
    // forward pass's scratch and the allocator's slack, a fixed amount whatever the model.
    let overhead = 32.0 * 1024.0 * 1024.0;
    assert!(
        rss <= file_size + kv + overhead,
        "peak RSS {rss} exceeds {file_size} + {kv} + {overhead}"
    );
}
