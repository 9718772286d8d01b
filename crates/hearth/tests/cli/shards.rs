//! A model run as a chain of shards gives exactly the whole model's output.

use super::*;

#[test]
fn sharded_logprobs_are_bit_identical_to_the_whole_model() {
    for (model, rel) in MODELS {
        let path = model_path(model);
        let path = path.to_str().unwrap();
        let completion = &reference(rel)["completions"][0];
        let prompt = join(&ids(&completion["prompt_tokens"]));
        let continuation = join(&ids(&completion["generated_tokens"]));
        let run = |extra: &[&str]| {
            let mut args = vec![
                "logprobs",
                "-m",
                path,
                "--prompt-tokens",
                &prompt,
                "--continuation",
                &continuation,
                "--top",
                "8",
                "--json",
            ];
            args.extend_from_slice(extra);
            hearth_json(&args)
        };
        let whole = run(&[]);
        for split in ["0..10,10..20,20..30", "0..1,1..29,29..30", "0..15,15..30"] {
            assert_eq!(run(&["--layers", split]), whole, "{model} split {split}");
        }
        assert_eq!(run(&["--threads", "1"]), whole, "{model} with one thread");
    }
}

#[test]
fn sharded_generation_is_identical() {
    let (model, _) = MODELS[0];
    let path = model_path(model);
    let args = |layers: Option<&'static str>| {
        let mut a = vec![
            "run".to_string(),
            "-m".into(),
            path.to_str().unwrap().into(),
            "--prompt".into(),
            "Once upon a time".into(),
            "--temperature".into(),
            "0.9".into(),
            "--seed".into(),
            "7".into(),
            "--max-tokens".into(),
            "24".into(),
            "--json".into(),
        ];
        if let Some(l) = layers {
            a.extend(["--layers".into(), l.into()]);
        }
        a
    };
    let run = |layers| {
        let a = args(layers);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut out = hearth_json(&refs);
        out.as_object_mut().unwrap().remove("peak_rss_bytes");
        out
    };
    assert_eq!(run(Some("0..10,10..20,20..30")), run(None));
}
