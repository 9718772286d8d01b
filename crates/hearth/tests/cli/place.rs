//! `hearth place` on the shared fleets: JSON shape, the table, errors.

use super::{hearth, hearth_json, model_path};
use std::path::PathBuf;

fn fleet(name: &str) -> String {
    let dir = std::env::var_os("HEARTH_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    dir.join("fleets").join(name).to_string_lossy().into_owned()
}

#[test]
fn json_has_the_plan_fields() {
    let f = fleet("home-mixed.toml");
    let v = hearth_json(&[
        "place",
        "--model",
        "qwen2.5-32b-q4_k_m",
        "--fleet",
        &f,
        "--json",
    ]);
    let stages = v["stages"].as_array().expect("stages");
    assert!(!stages.is_empty());
    assert_eq!(stages[0]["layers"][0], 0);
    assert_eq!(stages.last().unwrap()["layers"][1], 64);
    for s in stages {
        assert!(s["device"].is_string() && s["bytes"].is_u64() && s["memory_bytes"].is_u64());
    }
    assert!(v["act_dtype"] == "f16" || v["act_dtype"] == "f32");
    assert!(v["predicted_decode_tok_s"].as_f64().unwrap() > 0.0);
    assert!(v["predicted_prefill_512_s"].as_f64().unwrap() > 0.0);
    assert!(v["solve_ms"].is_f64());
    assert_eq!(v["optimal"], true);
    for u in v["unused"].as_array().unwrap() {
        assert!(u["device"].is_string() && !u["reason"].as_str().unwrap().is_empty());
    }
}

#[test]
fn gguf_models_and_battery_policy() {
    let f = fleet("phones-and-laptop.toml");
    let m = model_path("smollm2-135m-q4_k_m.gguf");
    let v = hearth_json(&[
        "place",
        "--model",
        m.to_str().unwrap(),
        "--fleet",
        &f,
        "--json",
    ]);
    assert_eq!(
        v["stages"].as_array().unwrap().last().unwrap()["layers"][1],
        30
    );
    let battery = v["unused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["device"] == "phone-b")
        .expect("phone-b unused");
    assert_eq!(battery["reason"], "on battery");
    let v = hearth_json(&[
        "place",
        "--model",
        m.to_str().unwrap(),
        "--fleet",
        &f,
        "--json",
        "--allow-battery",
        "--min-headroom",
        "0",
        "--objective",
        "throughput",
    ]);
    assert_eq!(v["optimal"], true);
}

#[test]
fn table_lists_stages_and_reasons() {
    let f = fleet("home-mixed.toml");
    let out = hearth(&["place", "--model", "llama-3.1-8b-q4_k_m", "--fleet", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("desk-3080") && text.contains("tok/s"),
        "{text}"
    );
    assert!(
        text.contains("unused:") && text.contains("old-linux-box"),
        "{text}"
    );
}

#[test]
fn a_model_too_big_for_the_fleet_is_an_error_with_the_shortfall() {
    let f = fleet("phones-and-laptop.toml");
    let out = hearth(&["place", "--model", "llama-3.1-70b-q4_k_m", "--fleet", &f]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not fit") && err.contains("short"),
        "{err}"
    );
    let out = hearth(&["place", "--model", "no-such-model", "--fleet", &f]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model"));
}
