//! The pipeline in one process: stages on their own threads, connected by channels instead of
//! the network, running the real test model. Results must match the local engine bit for bit.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use hearth_engine::{Sampler, SamplerConfig, Shard, ShardChain, ShardOptions};
use hearth_model::gguf::GgufFile;
use hearth_pipeline::{
    generate, spawn, ActDtype, Ending, GenerateError, Header, Hidden, Message, Outbox, Owner,
    Patience, ProtocolError, Request, Route, Routes, StageConfig, StageHandle, StageWorker,
};

const TEST_MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const OWNER: &str = "owner";
const BATCH: usize = 256;

fn model() -> Arc<GgufFile> {
    static FILE: OnceLock<Arc<GgufFile>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::var_os("HEARTH_TEST_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
        let path = dir.join(TEST_MODEL);
        assert!(
            path.is_file(),
            "test model {} not found; run `scripts/fetch-test-models`",
            path.display()
        );
        Arc::new(GgufFile::open(&path).expect("open the test model"))
    })
    .clone()
}

fn options() -> ShardOptions {
    ShardOptions {
        context: 256,
        max_sequences: 4,
        max_batch: BATCH,
        threads: 1,
        ..ShardOptions::default()
    }
}

/// Delivers to stage threads by node name and to the owner; a removed node drops its mail.
#[derive(Default)]
struct Switchboard {
    nodes: RwLock<HashMap<String, StageHandle>>,
    owner: OnceLock<Weak<Owner>>,
}

impl Outbox for Switchboard {
    fn send(&self, to: &str, msg: Message) {
        if to == OWNER {
            if let Some(owner) = self.owner.get().and_then(Weak::upgrade) {
                owner.deliver(msg);
            }
            return;
        }
        let handle = self.nodes.read().unwrap().get(to).cloned();
        if let Some(h) = handle {
            h.blocking_send(msg);
        }
    }
}

/// A placement of the model over named nodes.
struct Placement {
    instance: String,
    nodes: Vec<String>,
}

fn place(board: &Arc<Switchboard>, instance: &str, splits: &[usize]) -> Placement {
    let file = model();
    let n_layers = 30;
    let mut bounds = vec![0];
    bounds.extend_from_slice(splits);
    bounds.push(n_layers);
    let nodes: Vec<String> = (0..bounds.len() - 1)
        .map(|i| format!("{instance}-node{i}"))
        .collect();
    for i in 0..nodes.len() {
        let shard = Shard::load(file.clone(), bounds[i]..bounds[i + 1], options()).expect("load");
        let worker = StageWorker::new(
            shard,
            StageConfig {
                instance: instance.to_string(),
                next: nodes.get(i + 1).cloned(),
                act_dtype: ActDtype::F32,
                idle_timeout: Duration::from_secs(60),
            },
        );
        let out: Arc<dyn Outbox> = board.clone();
        let handle = spawn(worker, out, 8).expect("stage thread");
        board
            .nodes
            .write()
            .unwrap()
            .insert(nodes[i].clone(), handle);
    }
    Placement {
        instance: instance.to_string(),
        nodes,
    }
}

fn owner(board: &Arc<Switchboard>) -> Arc<Owner> {
    let out: Arc<dyn Outbox> = board.clone();
    let owner = Owner::new(OWNER.to_string(), out, 0x5eed);
    let _ = board.owner.set(Arc::downgrade(&owner));
    owner
}

/// Routes to whichever placement is current; a placement is alive while all its nodes are.
struct Current {
    board: Arc<Switchboard>,
    routes: Mutex<Vec<Placement>>,
}

impl Routes for Current {
    fn route(&self, timeout: Duration) -> Option<Route> {
        let start = std::time::Instant::now();
        loop {
            if let Some(p) = self.routes.lock().unwrap().iter().find(|p| self.up(p)) {
                return Some(Route {
                    instance: p.instance.clone(),
                    first: p.nodes[0].clone(),
                });
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(&self, route: &Route) -> bool {
        self.routes
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.instance == route.instance && self.up(p))
    }
}

impl Current {
    fn up(&self, p: &Placement) -> bool {
        let nodes = self.board.nodes.read().unwrap();
        p.nodes.iter().all(|n| nodes.contains_key(n))
    }
}

fn prompt() -> Vec<u32> {
    // Any in-vocabulary ids; a real chat prompt is tested end to end in the binary's tests.
    (0..40u32).map(|i| 100 + i * 37).collect()
}

fn end_ids() -> HashSet<u32> {
    [2u32].into_iter().collect()
}

fn local(prompt: &[u32], max_tokens: usize, sampling: SamplerConfig) -> Vec<u32> {
    let mut chain = ShardChain::load(model(), &[], options()).expect("whole model");
    let mut sampler = Sampler::new(sampling);
    let ends = end_ids();
    let mut out = Vec::new();
    chain
        .generate(
            prompt,
            max_tokens,
            &mut sampler,
            |t| ends.contains(&t),
            |t| {
                out.push(t);
                true
            },
        )
        .expect("local generation");
    out
}

fn patience() -> Patience {
    Patience {
        token_timeout: Duration::from_secs(20),
        placement_wait: Duration::from_secs(5),
        max_resumes: 2,
    }
}

fn run(
    owner: &Arc<Owner>,
    routes: &dyn Routes,
    prompt: &[u32],
    max_tokens: usize,
    sampling: SamplerConfig,
    mut each: impl FnMut(usize),
) -> Result<(Vec<u32>, u32), GenerateError> {
    let ends = end_ids();
    let request = Request {
        prompt,
        max_tokens,
        sampling,
        end_ids: &ends,
        context: 256,
        batch: BATCH,
    };
    let mut tokens = Vec::new();
    let outcome = generate(owner, routes, &request, &patience(), &mut |t| {
        tokens.push(t);
        each(tokens.len());
        true
    })?;
    assert_eq!(outcome.generated, tokens.len());
    assert!(matches!(
        outcome.ending,
        Ending::MaxTokens | Ending::EndOfGeneration
    ));
    Ok((tokens, outcome.resumes))
}

#[test]
fn three_stages_match_the_local_engine_bit_for_bit() {
    let board = Arc::new(Switchboard::default());
    let owner = owner(&board);
    let placement = place(&board, "exact", &[7, 19]);
    let routes = Current {
        board: board.clone(),
        routes: Mutex::new(vec![placement]),
    };
    let expected = local(&prompt(), 24, SamplerConfig::default());
    let (got, resumes) = run(
        &owner,
        &routes,
        &prompt(),
        24,
        SamplerConfig::default(),
        |_| {},
    )
    .expect("pipeline generation");
    assert_eq!(got, expected);
    assert_eq!(resumes, 0);
    let seeded = SamplerConfig {
        temperature: 0.8,
        top_p: 0.9,
        seed: 11,
        ..SamplerConfig::default()
    };
    let (got, _) =
        run(&owner, &routes, &prompt(), 24, seeded.clone(), |_| {}).expect("seeded generation");
    assert_eq!(got, local(&prompt(), 24, seeded));
    assert_eq!(owner.open_sessions(), 0, "every session closed");
}

#[test]
fn a_lost_stage_resumes_on_the_new_placement_with_the_same_answer() {
    let board = Arc::new(Switchboard::default());
    let owner = owner(&board);
    let first = place(&board, "old", &[15]);
    let second = place(&board, "new", &[5, 25]);
    let victim = first.nodes[1].clone();
    let routes = Current {
        board: board.clone(),
        routes: Mutex::new(vec![first, second]),
    };
    for sampling in [
        SamplerConfig::default(),
        SamplerConfig {
            temperature: 1.0,
            seed: 3,
            ..SamplerConfig::default()
        },
    ] {
        let expected = local(&prompt(), 20, sampling.clone());
        let kill = |n: usize| {
            if n == 6 {
                board.nodes.write().unwrap().remove(&victim);
            }
        };
        let (got, resumes) =
            run(&owner, &routes, &prompt(), 20, sampling, kill).expect("resumed generation");
        assert_eq!(got, expected);
        // The first run moved; the second starts on the surviving placement.
        assert!(resumes <= 1);
    }
}

#[test]
fn concurrent_sequences_interleave_without_mixing() {
    let board = Arc::new(Switchboard::default());
    let owner = owner(&board);
    let placement = place(&board, "busy", &[10, 20]);
    let routes = Arc::new(Current {
        board: board.clone(),
        routes: Mutex::new(vec![placement]),
    });
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|k| (0..20u32).map(|i| 50 + k * 1000 + i * 13).collect())
        .collect();
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| local(p, 12, SamplerConfig::default()))
        .collect();
    let got: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let owner = owner.clone();
                let routes = routes.clone();
                s.spawn(move || {
                    run(
                        &owner,
                        routes.as_ref(),
                        p,
                        12,
                        SamplerConfig::default(),
                        |_| {},
                    )
                    .expect("concurrent generation")
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, expected);
}

#[test]
fn a_stage_error_reaches_the_owner_as_a_failure() {
    let board = Arc::new(Switchboard::default());
    let owner = owner(&board);
    let placement = place(&board, "err", &[15]);
    let routes = Current {
        board: board.clone(),
        routes: Mutex::new(vec![placement]),
    };
    // A token past the vocabulary is refused by the first stage.
    let err = run(
        &owner,
        &routes,
        &[1, 2, u32::MAX],
        4,
        SamplerConfig::default(),
        |_| {},
    )
    .expect_err("out-of-range token");
    match err {
        GenerateError::Interrupted { error, generated } => {
            assert_eq!(generated, 0);
            assert!(error.to_string().contains("vocab") || error.to_string().contains("range"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let no_route = Current {
        board: board.clone(),
        routes: Mutex::new(vec![]),
    };
    let owner2 = owner.clone();
    let err = generate(
        &owner2,
        &no_route,
        &Request {
            prompt: &[1, 2],
            max_tokens: 2,
            sampling: SamplerConfig::default(),
            end_ids: &end_ids(),
            context: 256,
            batch: BATCH,
        },
        &Patience {
            placement_wait: Duration::from_millis(50),
            ..patience()
        },
        &mut |_| true,
    )
    .expect_err("nothing placed");
    assert!(matches!(err, GenerateError::NoPlacement(_)));
}

fn header() -> Header {
    Header {
        instance: "inst-1".into(),
        sequence: 0xfeed_beef,
        owner: "12D3KooWowner".into(),
    }
}

fn samples() -> Vec<Message> {
    vec![
        Message::Open {
            header: header(),
            sampling: SamplerConfig {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.05,
                repeat_penalty: 1.1,
                repeat_last_n: 64,
                seed: 42,
            },
            draws: 17,
        },
        Message::Forward {
            header: header(),
            tokens: vec![1, 2, 3],
            hidden: Hidden::None,
            sample: true,
        },
        Message::Forward {
            header: header(),
            tokens: vec![9],
            hidden: ActDtype::F32.encode(&[0.5, -1.25, 3.0]),
            sample: false,
        },
        Message::Forward {
            header: header(),
            tokens: vec![9, 10],
            hidden: ActDtype::F16.encode(&[0.5, -1.25, 3.0, 7.0]),
            sample: true,
        },
        Message::Close { header: header() },
        Message::Token {
            sequence: 7,
            token: 49_151,
        },
        Message::Failed {
            sequence: 7,
            reason: "context full — 2048 positions".into(),
        },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        assert_eq!(Message::decode(&m.encode()).expect("decode"), m);
    }
}

#[test]
fn malformed_messages_are_refused_with_a_reason() {
    let open = samples()[0].encode();
    let mut wrong_version = open.clone();
    wrong_version[0] = 9;
    assert_eq!(
        Message::decode(&wrong_version),
        Err(ProtocolError::Version(9))
    );
    assert_eq!(
        Message::decode(&[1, 77]),
        Err(ProtocolError::UnknownTag(77))
    );
    assert_eq!(Message::decode(&[]), Err(ProtocolError::Truncated));
    assert_eq!(
        Message::decode(&open[..open.len() - 1]),
        Err(ProtocolError::Truncated)
    );
    let mut trailing = open.clone();
    trailing.push(0);
    assert_eq!(Message::decode(&trailing), Err(ProtocolError::Trailing(1)));
    // A forward claiming more tokens than allowed is refused before anything is allocated.
    let mut huge = vec![1u8, 2];
    huge.extend(0u16.to_le_bytes());
    huge.extend(0u64.to_le_bytes());
    huge.extend(0u16.to_le_bytes());
    huge.push(1);
    huge.extend(u32::MAX.to_le_bytes());
    assert!(matches!(
        Message::decode(&huge),
        Err(ProtocolError::TooMany { .. })
    ));
}

#[test]
fn mutated_messages_never_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let originals: Vec<Vec<u8>> = samples().iter().map(Message::encode).collect();
    let mut refused = 0;
    for i in 0..20_000 {
        let mut bytes = originals[i % originals.len()].clone();
        match next() % 3 {
            0 => {
                let at = (next() as usize) % bytes.len();
                bytes[at] ^= 1 << (next() % 8);
            }
            1 => {
                let at = (next() as usize) % bytes.len();
                bytes.truncate(at);
            }
            _ => {
                let at = (next() as usize) % (bytes.len() + 1);
                bytes.insert(at, next() as u8);
            }
        }
        if let Ok(m) = Message::decode(&bytes) {
            // Whatever decodes must encode back to the same bytes: no silent reinterpretation.
            assert_eq!(m.encode(), bytes);
        } else {
            refused += 1;
        }
    }
    assert!(refused > 5_000, "only {refused} of 20000 mutations refused");
}
