//! `hearth up --model`: the OpenAI-compatible API of a model run on the node, over real HTTP.

use super::*;
use crate::cluster::harness::{admin_token, get, measured_home, wait_for_model, Node, TempDir};
use std::io::{BufRead, BufReader};
use std::time::Duration;

pub(crate) const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SYSTEM: &str = "You are a concise assistant.";
const USER: &str = "Name three colours of the rainbow.";

pub(crate) struct Served {
    pub(crate) node: Node,
    _home: TempDir,
    _dir: TempDir,
}

/// Starts `hearth up` on loopback serving the test model, plus `extra` flags.
pub(crate) fn serve(tag: &str, extra: &[&str]) -> Served {
    let home = measured_home();
    let dir = TempDir::new(tag);
    let model = model_path(MODEL);
    let mut args = vec![
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
    ];
    let model_arg;
    if !extra.contains(&"--no-model") {
        model_arg = model.to_string_lossy().into_owned();
        args.extend(["--model", model_arg.as_str(), "--threads", "2"]);
    }
    args.extend(extra.iter().filter(|a| **a != "--no-model"));
    let mut node = Node::start(tag, &dir.0.join("node"), &home.0, &args);
    if extra.contains(&"--require-token") {
        node.token = Some(admin_token(&node.data_dir));
    }
    if !extra.contains(&"--no-model") {
        // The coordinator (this node) places the model once its device is known; the API
        // serves it once the stage reports ready.
        wait_for_model(&node, Duration::from_secs(60));
    }
    Served {
        node,
        _home: home,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// POSTs a body; returns the status and the body parsed as JSON (or as a string when it is not).
fn post(api: &str, path: &str, body: &str) -> (u16, Value) {
    let mut resp = agent()
        .post(format!("http://{api}{path}"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A streamed answer: the `data:` payloads in order, `[DONE]` included.
fn post_stream(api: &str, path: &str, body: &str) -> Vec<String> {
    let (status, v) = post(api, path, body);
    assert_eq!(status, 200, "{v}");
    let text = v.as_str().expect("an event stream, not JSON").to_string();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {e:?}"))
                .to_string()
        })
        .collect()
}

fn chat_body(extra: &str) -> String {
    let messages = json_messages();
    format!(r#"{{"messages":{messages},"temperature":0{extra}}}"#)
}

fn json_messages() -> String {
    serde_json::json!([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER},
    ])
    .to_string()
}

/// OpenAI's error shape with the expected status, type and (when given) code.
fn assert_error(got: (u16, Value), status: u16, code: Option<&str>) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
}

#[test]
fn serve_greedy_chat_matches_hearth_run_streamed_or_not() {
    let served = serve("serve-chat", &[]);
    let api = &served.node.api;
    let model = model_path(MODEL);
    let model = model.to_str().unwrap();

    let models = get(api, "/v1/models").expect("/v1/models answers");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");

    let run = hearth_json(&[
        "run",
        "--model",
        model,
        "--system",
        SYSTEM,
        "--chat",
        USER,
        "--temperature",
        "0",
        "--max-tokens",
        "48",
        "--threads",
        "2",
        "--json",
    ]);
    let run_tokens = ids(&run["tokens"]);
    let (status, v) = post(
        api,
        "/v1/chat/completions",
        &chat_body(r#","max_tokens":48"#),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().is_some());
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(text, run["text"].as_str().unwrap());
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], run_tokens.len() as u64);
    let finish = if run_tokens.len() == 48 {
        "length"
    } else {
        "stop"
    };
    assert_eq!(choice["finish_reason"], finish);

    // Usage counts the templated prompt exactly as the tokenizer does.
    let templated = format!(
        "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    let tokenized = hearth_json(&["tokenize", "--model", model, "--json", &templated]);
    let prompt_len = ids(&tokenized["tokens"]).len() as u64;
    assert_eq!(usage["prompt_tokens"], prompt_len);
    assert_eq!(prompt_len, ids(&run["prompt_tokens"]).len() as u64);
    assert_eq!(usage["total_tokens"], prompt_len + run_tokens.len() as u64);

    // Content as a list of text parts is the same conversation.
    let parts = serde_json::json!([
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": "Name three colours"},
                                     {"type": "text", "text": " of the rainbow."}]},
    ]);
    let (status, p) = post(
        api,
        "/v1/chat/completions",
        &format!(r#"{{"messages":{parts},"temperature":0,"max_completion_tokens":48}}"#),
    );
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["choices"][0]["message"]["content"], text.as_str());

    // Streamed: the same text, role first, finish_reason last, then usage and [DONE].
    let events = post_stream(
        api,
        "/v1/chat/completions",
        &chat_body(r#","max_tokens":48,"stream":true,"stream_options":{"include_usage":true}"#),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage_chunk["usage"], *usage);
    let (last, body) = rest.split_last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    let mut streamed = String::new();
    for c in body {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert!(c["choices"][0]["finish_reason"].is_null());
        streamed += c["choices"][0]["delta"]["content"].as_str().unwrap_or("");
    }
    assert_eq!(streamed, text);

    // max_tokens cuts the answer: finish_reason "length".
    let (_, v) = post(
        api,
        "/v1/chat/completions",
        &chat_body(r#","max_tokens":3"#),
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(text.starts_with(v["choices"][0]["message"]["content"].as_str().unwrap()));

    // A stop string ends the answer before it and is not included, across token boundaries.
    let stop = text
        .trim_start()
        .chars()
        .skip(5)
        .take(4)
        .collect::<String>();
    let cut = &text[..text.find(&stop).unwrap()];
    let body = chat_body(&format!(
        r#","max_tokens":48,"stop":[{}]"#,
        serde_json::to_string(&stop).unwrap()
    ));
    let (_, v) = post(api, "/v1/chat/completions", &body);
    assert_eq!(v["choices"][0]["message"]["content"], cut, "stop {stop:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let streamed: String = post_stream(
        api,
        "/v1/chat/completions",
        &body.replace(r#""temperature":0"#, r#""temperature":0,"stream":true"#),
    )
    .iter()
    .filter_map(|e| serde_json::from_str::<Value>(e).ok())
    .filter_map(|c| {
        c["choices"][0]["delta"]["content"]
            .as_str()
            .map(String::from)
    })
    .collect();
    assert_eq!(streamed, cut);

    // /v1/completions continues a plain prompt, as `hearth run --prompt` does.
    let run = hearth_json(&[
        "run",
        "--model",
        model,
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--threads",
        "2",
        "--json",
    ]);
    let (status, v) = post(
        api,
        "/v1/completions",
        r#"{"prompt":"The capital of France is","temperature":0,"max_tokens":12}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], run["text"]);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        ids(&run["prompt_tokens"]).len() as u64
    );
    let streamed: String = post_stream(
        api,
        "/v1/completions",
        r#"{"prompt":"The capital of France is","temperature":0,"max_tokens":12,"stream":true}"#,
    )
    .iter()
    .filter_map(|e| serde_json::from_str::<Value>(e).ok())
    .filter_map(|c| c["choices"][0]["text"].as_str().map(String::from))
    .collect();
    assert_eq!(streamed, run["text"].as_str().unwrap());

    // Seeded sampling repeats itself.
    let body =
        r#"{"prompt":"Once upon a time","temperature":0.9,"top_p":0.9,"seed":7,"max_tokens":16}"#;
    let (_, a) = post(api, "/v1/completions", body);
    let (_, b) = post(api, "/v1/completions", body);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

#[test]
fn serve_refuses_bad_requests_in_openai_shape_and_keeps_serving() {
    let served = serve("serve-bad", &["--context", "256", "--max-body", "64KiB"]);
    let api = &served.node.api;
    let chat = "/v1/chat/completions";
    let bad = 400;
    for body in [
        "{\"messages\": [",
        "not json",
        "[]",
        "{}",
        r#"{"model":"SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"{"messages":"hello"}"#,
        r#"{"messages":[]}"#,
        r#"{"messages":[{"role":"user"}],"temperature":"hot"}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"temperature":3}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"top_p":-0.5}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-3}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"stop":7}"#,
        r#"{"messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#,
        r#"{"messages":[{"role":"tool","content":"hi"}]}"#,
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        r#"{"messages":[{"role":"user","content":42}]}"#,
    ] {
        let got = post(api, chat, body);
        assert_eq!(got.1["error"]["type"], "invalid_request_error", "{body}");
        assert_error(got, bad, None);
    }
    assert_error(post(api, "/v1/completions", r#"{"prompt":5}"#), bad, None);
    assert_error(
        post(
            api,
            chat,
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        404,
        Some("model_not_found"),
    );
    assert_error(post(api, "/v1/nothing-here", "{}"), 404, None);

    let long = "word ".repeat(400);
    let body = serde_json::json!({"messages": [{"role": "user", "content": long}]}).to_string();
    assert_error(post(api, chat, &body), bad, Some("context_length_exceeded"));
    assert_error(
        post(
            api,
            chat,
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":300}"#,
        ),
        bad,
        Some("context_length_exceeded"),
    );
    let huge = serde_json::json!({"messages": [{"role": "user", "content": "x".repeat(100_000)}]})
        .to_string();
    assert_error(post(api, chat, &huge), 413, Some("request_too_large"));

    // Still serving, and within the context when max_tokens is left out.
    let (status, v) = post(
        api,
        chat,
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() <= 256, "{v}");
    assert!(get(api, "/health").is_some());
    assert!(!served.node.log().contains("panicked"));
}

#[test]
fn serve_queue_is_bounded_and_a_client_that_leaves_stops_its_generation() {
    // One request generates at a time, one may wait.
    let served = serve("serve-queue", &["--max-queue", "1", "--parallel", "1"]);
    let api = served.node.api.clone();
    // Counting goes on for as long as it is allowed to.
    let long = r#"{"prompt":"1, 2, 3, 4, 5,","temperature":0,"max_tokens":3000,"stream":true}"#;
    let resp = agent()
        .post(format!("http://{api}/v1/completions"))
        .header("content-type", "application/json")
        .send(long)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: {"), "{line:?}");

    // The one worker is busy: one request may wait, the next is refused.
    let waiting = {
        let api = api.clone();
        std::thread::spawn(move || {
            post(
                &api,
                "/v1/completions",
                r#"{"prompt":"Hello","temperature":0,"max_tokens":4}"#,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_error(
        post(&api, "/v1/completions", r#"{"prompt":"Hi","max_tokens":2}"#),
        429,
        Some("rate_limit_exceeded"),
    );

    // Hanging up stops the long generation, so the waiting request is answered.
    drop(reader);
    let (status, v) = waiting.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let log = served.node.log();
    assert!(log.contains("client went away"), "{log}");
}

#[test]
fn serve_without_a_model_lists_none_and_answers_503() {
    let served = serve("serve-none", &["--no-model"]);
    let api = &served.node.api;
    let models = get(api, "/v1/models").expect("/v1/models answers");
    assert_eq!(models["data"].as_array().map(Vec::len), Some(0), "{models}");
    assert_error(
        post(
            api,
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        503,
        Some("model_not_loaded"),
    );
    assert!(get(api, "/health").is_some());
}
