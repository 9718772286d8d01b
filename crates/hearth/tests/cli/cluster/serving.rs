//! One model served by a cluster on loopback: split across nodes by memory limits, answering
//! exactly as one node does, surviving a killed stage, and moving to a better node that joins.

use super::harness::{
    loopback_args, measured_home, post_json, ready_instance, token, wait_for_model, wait_until,
    Node, Placed, TempDir,
};
use crate::{hearth_json, model_path};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Each node offers this much; the model (98 MB) plus KV cache for 4 sequences of 512
/// positions needs three of them.
const LIMIT: &str = "60MiB";

fn node_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    loopback_args(&[&["--timeout-ms", "3000", "--threads", "1"][..], extra].concat())
}

/// `n` nodes offering `LIMIT` each; the first asks for the test model.
fn start(dir: &TempDir, home: &TempDir, n: usize, first_extra: &[&str]) -> Vec<Node> {
    let model = model_path(MODEL);
    let model = model.to_str().unwrap();
    let mut first = vec![
        "--model",
        model,
        "--context",
        "512",
        "--memory-limit",
        LIMIT,
    ];
    first.extend_from_slice(first_extra);
    let n1 = Node::start("node-1", &dir.0.join("node-1"), &home.0, &node_args(&first));
    let seed = n1.listen_addr("/tcp/");
    let mut nodes = vec![n1];
    for i in 2..=n {
        let name = format!("node-{i}");
        nodes.push(Node::start(
            &name,
            &dir.0.join(&name),
            &home.0,
            &node_args(&["--peer", &seed, "--memory-limit", LIMIT]),
        ));
    }
    nodes
}

/// Waits until every node sees one ready instance meeting `ok`, and serves the model.
fn wait_ready(nodes: &[&Node], what: &str, ok: impl Fn(&[(String, u64, u64)]) -> bool) -> Placed {
    wait_until(nodes, Duration::from_secs(60), what, |views| {
        let first = ready_instance(&views[0]);
        first.as_ref().is_some_and(|(_, s)| ok(s))
            && views.iter().all(|v| ready_instance(v) == first)
    });
    // Every API has read the model's tokenizer once it lists the model.
    for n in nodes {
        wait_for_model(n, Duration::from_secs(30));
    }
    ready_instance(&nodes[0].cluster().unwrap()).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// `hearth run` on one node, greedy: the answer the cluster must reproduce.
fn run_locally(messages: &[Value], max_tokens: usize) -> Value {
    let model = model_path(MODEL);
    let max = max_tokens.to_string();
    let mut args = vec![
        "run",
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        &max,
        "--threads",
        "1",
        "--json",
    ];
    let system = messages
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str());
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .expect("a user message");
    args.extend(["--chat", user]);
    if let Some(s) = system {
        args.extend(["--system", s]);
    }
    hearth_json(&args)
}

fn chat(messages: &[Value], max_tokens: usize, stream: bool) -> Value {
    serde_json::json!({
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { Value::Null },
    })
}

/// The text and completion tokens of a streamed answer, or the error event it ended with.
fn read_stream(
    api: &str,
    body: &Value,
    mut each: impl FnMut(usize),
) -> Result<(String, u64), String> {
    let mut resp = agent()
        .post(format!("http://{api}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("stream starts");
    assert_eq!(resp.status().as_u16(), 200);
    let reader = BufReader::new(resp.body_mut().as_reader());
    let (mut text, mut tokens, mut chunks) = (String::new(), 0, 0);
    for line in reader.lines() {
        let line = line.map_err(|e| format!("stream broke: {e}"))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return Ok((text, tokens));
        }
        let v: Value = serde_json::from_str(data).expect("JSON chunk");
        if let Some(e) = v.get("error") {
            return Err(e["message"].as_str().unwrap_or("error").to_string());
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text += t;
            chunks += 1;
            each(chunks);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    }
    Err("the stream ended without [DONE]".into())
}

fn reference_chats() -> Vec<(Vec<Value>, usize)> {
    let reference = crate::reference("reference/smollm2-135m-q4_1.llamacpp.json");
    reference["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["messages"].as_array().unwrap().clone(),
                c["generated_tokens"].as_array().unwrap().len(),
            )
        })
        .collect()
}

#[test]
fn a_model_split_over_three_nodes_answers_token_for_token_like_one_node() {
    let home = measured_home();
    let dir = TempDir::new("serve-split");
    // The first node keeps to the peer connection: messages to and from it take data
    // streams, those between the other two take lanes, and the answers stay exact on both.
    let nodes = start(&dir, &home, 3, &["--no-lanes"]);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (_, stages) = wait_ready(&refs, "a 3-stage instance", |s| s.len() == 3);
    let ids: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    for n in &nodes {
        assert!(ids.contains(&n.id.as_str()), "every node runs a stage");
    }
    assert_eq!(stages[0].1, 0);
    assert_eq!(stages[2].2, 30);
    assert!(stages.windows(2).all(|w| w[0].2 == w[1].1));

    for (i, (messages, n)) in reference_chats().into_iter().enumerate() {
        let local = run_locally(&messages, n);
        let local_tokens = local["tokens"].as_array().map_or(0, Vec::len) as u64;
        // Ask a different node each time: whichever node takes the request drives it.
        let api = &nodes[i % 3].api;
        let (status, v) = post_json(api, "/v1/chat/completions", &chat(&messages, n, false));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], local["text"]);
        assert_eq!(v["usage"]["completion_tokens"], local_tokens);
        let streamed = read_stream(&nodes[(i + 1) % 3].api, &chat(&messages, n, true), |_| {})
            .expect("streamed answer");
        assert_eq!(streamed.0, local["text"].as_str().unwrap());
        assert_eq!(streamed.1, local_tokens);
    }
    assert!(nodes[0].log().contains("lanes are off on this node"));
    assert!(
        nodes[1..]
            .iter()
            .any(|n| n.log().contains("pipeline messages take a lane")),
        "no pipeline message took a lane"
    );
}

/// The store file a node fetched into, if any: `<data dir>/models/<sha256>.gguf[.part]`.
fn fetched_file(node: &Node) -> Option<std::path::PathBuf> {
    std::fs::read_dir(node.data_dir.join("models"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".gguf") || n.ends_with(".gguf.part")
        })
}

#[test]
fn nodes_without_the_file_fetch_their_layers_and_refetch_a_corrupted_chunk() {
    use std::os::unix::fs::MetadataExt;
    let home = measured_home();
    let dir = TempDir::new("serve-fetch");
    let mut nodes = start(&dir, &home, 3, &[]);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_ready(&refs, "a 3-stage instance", |s| s.len() == 3);
    // Nodes 2 and 3 had no copy: each fetched what its stage reads from node 1, into a sparse
    // file holding less than the whole model.
    let whole = std::fs::metadata(model_path(MODEL)).unwrap().len();
    for n in &nodes[1..] {
        let part = fetched_file(n).unwrap_or_else(|| panic!("{} fetched nothing", n.name));
        let meta = std::fs::metadata(&part).unwrap();
        assert_eq!(meta.len(), whole, "sized like the model");
        assert!(
            meta.blocks() * 512 < whole,
            "{} holds {} of {whole} bytes: more than its layers",
            n.name,
            meta.blocks() * 512
        );
        assert!(
            n.log().contains("model file fetched from peers"),
            "{}",
            n.log()
        );
    }

    // Corrupt node 2's copy while it is down (the header's chunk: every fetch re-checks it).
    let mut second = nodes.remove(1);
    second.kill();
    let part = fetched_file(&second).unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&part, &bytes).unwrap();
    let seed = nodes[0].listen_addr("/tcp/");
    let restarted = Node::start(
        "node-2",
        &second.data_dir,
        &home.0,
        &node_args(&["--peer", &seed, "--memory-limit", LIMIT]),
    );
    nodes.insert(1, restarted);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_ready(&refs, "the instance re-placed with node 2 back", |s| {
        s.len() == 3 && s.iter().any(|st| st.0 == nodes[1].id)
    });
    let log = nodes[1].log();
    assert!(
        log.contains("a chunk failed verification; fetching it again"),
        "node 2 never noticed its corrupted chunk:\n{log}"
    );
    // And the cluster still answers exactly.
    let (messages, n) = reference_chats().remove(1);
    let local = run_locally(&messages, n);
    let (status, v) = post_json(
        &nodes[2].api,
        "/v1/chat/completions",
        &chat(&messages, n, false),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], local["text"]);
}

#[test]
fn a_killed_stage_node_is_replaced_and_the_answer_resumes_or_ends_clearly() {
    let home = measured_home();
    let dir = TempDir::new("serve-kill");
    let mut nodes = start(&dir, &home, 4, &[]);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (first_id, stages) = wait_ready(&refs, "an instance", |s| s.len() >= 2);
    let messages = vec![
        serde_json::json!({"role": "user", "content": "Write a short story about a lighthouse keeper."}),
    ];
    let max = 120;
    let (status, whole) = post_json(
        &nodes[0].api,
        "/v1/chat/completions",
        &chat(&messages, max, false),
    );
    assert_eq!(status, 200, "{whole}");
    let expected = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    // Kill a stage that is not the node taking the request, a few tokens into the answer.
    let victim = nodes
        .iter()
        .position(|n| n.id != nodes[0].id && stages.iter().any(|s| s.0 == n.id))
        .expect("a stage on another node");
    let mut victim_node = nodes.remove(victim);
    let mut killed_at: Option<Instant> = None;
    let mut last_chunk = Instant::now();
    let mut longest_stall = Duration::ZERO;
    let outcome = read_stream(&nodes[0].api, &chat(&messages, max, true), |chunks| {
        if killed_at.is_some() {
            longest_stall = longest_stall.max(last_chunk.elapsed());
        }
        last_chunk = Instant::now();
        if chunks == 5 && killed_at.is_none() {
            victim_node.kill();
            killed_at = Some(Instant::now());
        }
    });
    let killed_at = killed_at.expect("the answer was long enough to kill mid-stream");
    // The answer went on (or ended) within 10 s of losing the stage: it never hangs.
    longest_stall = longest_stall.max(last_chunk.elapsed().min(killed_at.elapsed()));
    assert!(
        longest_stall < Duration::from_secs(10),
        "the stream stalled {longest_stall:?} after the kill"
    );
    match &outcome {
        // Resumed on the new placement: the same greedy answer, whole.
        Ok((text, _)) => assert_eq!(text, &expected),
        Err(e) => assert!(!e.is_empty(), "a clear error"),
    }
    // The survivors agree on a new instance without the dead node, and serve from it.
    let refs: Vec<&Node> = nodes.iter().collect();
    let (second_id, new_stages) = wait_ready(&refs, "a re-placed instance", |s| {
        s.iter().all(|st| st.0 != victim_node.id)
    });
    assert_ne!(first_id, second_id);
    assert!(new_stages.iter().all(|s| s.0 != victim_node.id));
    let (status, again) = post_json(
        &nodes[1].api,
        "/v1/chat/completions",
        &chat(&messages, max, false),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["choices"][0]["message"]["content"], expected.as_str());
    eprintln!(
        "kill mid-stream: {}; re-placed {first_id} → {second_id}",
        if outcome.is_ok() {
            "resumed"
        } else {
            "ended with an error event"
        }
    );
}

#[test]
fn a_faster_node_joining_takes_over_make_before_break_without_failing_a_request() {
    let home = measured_home();
    let dir = TempDir::new("serve-join");
    // Three slow declared devices (a fifth of this machine's speed) must split the model.
    let profile = dir.0.join("slow.toml");
    std::fs::write(
        &profile,
        "name = \"slow-board\"\nbackend = \"cpu\"\nmemory_gib = 0.06\nbandwidth_gbs = 1.0\n\
         tflops = 0.05\nprecisions = [\"f32\"]\ncompute_share = 0.25\n",
    )
    .unwrap();
    let p = profile.to_str().unwrap();
    let model = model_path(MODEL);
    let model = model.to_str().unwrap();
    let n1 = Node::start(
        "node-1",
        &dir.0.join("node-1"),
        &home.0,
        &node_args(&["--model", model, "--context", "512", "--device-profile", p]),
    );
    let seed = n1.listen_addr("/tcp/");
    let mut nodes = vec![n1];
    for i in 2..=3 {
        let name = format!("node-{i}");
        nodes.push(Node::start(
            &name,
            &dir.0.join(&name),
            &home.0,
            &node_args(&["--peer", &seed, "--device-profile", p]),
        ));
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let (old_id, _) = wait_ready(&refs, "a split over the slow nodes", |s| s.len() == 3);

    // A request loop runs across the join and the switch.
    let api = nodes[0].api.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let looper = std::thread::spawn(move || {
        let messages = vec![serde_json::json!({"role": "user", "content": "Say hello."})];
        let mut results = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let (status, v) = post_json(&api, "/v1/chat/completions", &chat(&messages, 8, false));
            results.push((status, v));
        }
        results
    });
    std::thread::sleep(Duration::from_secs(2));
    let fast = Node::start(
        "node-4",
        &dir.0.join("node-4"),
        &home.0,
        &node_args(&["--peer", &seed, "--memory-limit", "1GiB"]),
    );
    let fast_id = fast.id.clone();
    nodes.push(fast);
    let refs: Vec<&Node> = nodes.iter().collect();
    let (new_id, stages) = wait_ready(&refs, "the model moved to the fast node", |s| {
        s.len() == 1 && s[0].0 == fast_id
    });
    assert_ne!(old_id, new_id);
    // Keep requesting through the old instance's drain and removal.
    wait_until(
        &refs,
        Duration::from_secs(40),
        "the old instance removed",
        |views| views.iter().all(|v| v["instances"].get(&old_id).is_none()),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = looper.join().unwrap();
    assert!(results.len() >= 3, "only {} requests ran", results.len());
    for (status, v) in &results {
        assert_eq!(*status, 200, "a request failed during the switch: {v}");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    assert_eq!(stages[0].1, 0);
    eprintln!("{} requests across the switch, all answered", results.len());
}

#[test]
fn the_openai_python_client_chats_with_a_model_split_over_three_nodes() {
    let home = measured_home();
    let dir = TempDir::new("serve-openai");
    let nodes = start(&dir, &home, 3, &[]);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_ready(&refs, "a 3-stage instance", |s| s.len() == 3);
    // Through the third node, which did not ask for the model and runs only its last layers.
    let node = &nodes[2];
    let token = token(&node.data_dir, "user", "openai-client");
    let ran = crate::openai_client::run_openai_client(&format!("http://{}/v1", node.api), &token);
    if ran {
        for n in &nodes {
            assert!(!n.log().contains("panicked"), "{}", n.log());
        }
    }
}
