//! Deterministic mutation testing of the GGUF loading chain (header → config → tokenizer): a few
//! thousand seeded corruptions of small valid files, run on every `cargo test`. The same seed
//! files drive the `cargo fuzz` target in `fuzz/`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use hearth_model::config::ModelConfig;
use hearth_model::gguf::{parse_header, parse_header_prefix, GgmlType, GgufWriter, MetaValue};
use hearth_model::tokenizer::Tokenizer;

use crate::gguf::sample_file;

/// The chain the fuzz target runs; errors must describe themselves.
fn load(bytes: &[u8]) {
    let header = match parse_header(bytes) {
        Ok(header) => header,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "empty message for {e:?}");
            return;
        }
    };
    let tensor = |name: &str| header.tensors.iter().find(|t| t.name == name);
    if let Err(e) = ModelConfig::from_metadata(&header.metadata, tensor) {
        assert!(!e.to_string().is_empty(), "empty message for {e:?}");
    }
    if let Err(e) = Tokenizer::from_metadata(&header.metadata) {
        assert!(!e.to_string().is_empty(), "empty message for {e:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Seed files: small, valid, and reaching as deep into the chain as possible.

fn s(v: &str) -> MetaValue {
    MetaValue::String(v.to_string())
}

fn strings(items: &[&str]) -> MetaValue {
    MetaValue::Array(items.iter().map(|t| s(t)).collect())
}

fn zeros(shape: &[u64], ty: GgmlType) -> Vec<u8> {
    let rows: u64 = shape[1..].iter().product();
    vec![0; (ty.row_bytes(shape[0]).unwrap() * rows) as usize]
}

/// A llama model with a SentencePiece vocabulary (byte fallback, control and unknown tokens).
fn llama_spm() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let tokens = [
        "<unk>", "<s>", "</s>", "<0x0A>", "<0x20>", "▁", "a", "b", "▁a", "▁b", "ab", "▁ab",
    ];
    let types = [2, 3, 3, 6, 6, 1, 1, 1, 1, 1, 1, 1];
    w.metadata("general.architecture", s("llama"))
        .metadata("general.name", s("seed"))
        .metadata("llama.block_count", MetaValue::U32(1))
        .metadata("llama.context_length", MetaValue::U32(128))
        .metadata("llama.embedding_length", MetaValue::U32(32))
        .metadata("llama.feed_forward_length", MetaValue::U32(64))
        .metadata("llama.attention.head_count", MetaValue::U32(4))
        .metadata("llama.attention.head_count_kv", MetaValue::U32(2))
        .metadata("llama.rope.dimension_count", MetaValue::U32(8))
        .metadata("llama.rope.freq_base", MetaValue::F32(10_000.0))
        .metadata(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .metadata("tokenizer.ggml.model", s("llama"))
        .metadata("tokenizer.ggml.tokens", strings(&tokens))
        .metadata(
            "tokenizer.ggml.scores",
            MetaValue::Array(
                (0..tokens.len())
                    .map(|i| MetaValue::F32(-(i as f32)))
                    .collect(),
            ),
        )
        .metadata(
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
        )
        .metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .metadata("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
        .metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
    let embd = [32, tokens.len() as u64];
    w.tensor(
        "token_embd.weight",
        &embd,
        GgmlType::F16,
        zeros(&embd, GgmlType::F16),
    )
    .tensor(
        "output_norm.weight",
        &[32],
        GgmlType::F32,
        zeros(&[32], GgmlType::F32),
    )
    .tensor(
        "blk.0.attn_k.weight",
        &[32, 8],
        GgmlType::Q8_0,
        zeros(&[32, 8], GgmlType::Q8_0),
    );
    w.to_bytes()
}

/// A qwen2 model with a byte-level BPE vocabulary, merges and chat special tokens.
fn qwen2_bpe() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let tokens = [
        "a",
        "b",
        "c",
        "Ġ",
        "Ċ",
        "ab",
        "Ġa",
        "Ġab",
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
    ];
    let types = [1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3];
    w.metadata("general.architecture", s("qwen2"))
        .metadata("qwen2.block_count", MetaValue::U32(1))
        .metadata("qwen2.context_length", MetaValue::U32(256))
        .metadata("qwen2.embedding_length", MetaValue::U32(32))
        .metadata("qwen2.feed_forward_length", MetaValue::U32(64))
        .metadata("qwen2.attention.head_count", MetaValue::U32(2))
        .metadata("qwen2.attention.head_count_kv", MetaValue::U32(1))
        .metadata("qwen2.rope.freq_base", MetaValue::F32(1_000_000.0))
        .metadata("qwen2.rope.scaling.type", s("linear"))
        .metadata("qwen2.rope.scaling.factor", MetaValue::F32(2.0))
        .metadata("tokenizer.ggml.model", s("gpt2"))
        .metadata("tokenizer.ggml.pre", s("qwen2"))
        .metadata("tokenizer.ggml.tokens", strings(&tokens))
        .metadata(
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
        )
        .metadata("tokenizer.ggml.merges", strings(&["a b", "Ġ a", "Ġa b"]))
        .metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(10))
        .metadata("tokenizer.ggml.padding_token_id", MetaValue::U32(8))
        .metadata("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
    let embd = [32, tokens.len() as u64];
    w.tensor(
        "token_embd.weight",
        &embd,
        GgmlType::F32,
        zeros(&embd, GgmlType::F32),
    )
    .tensor(
        "blk.0.attn_q.bias",
        &[32],
        GgmlType::F32,
        zeros(&[32], GgmlType::F32),
    );
    w.to_bytes()
}

/// The seed files, by name.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("llama-spm.gguf", llama_spm()),
        ("qwen2-bpe.gguf", qwen2_bpe()),
        ("all-value-types.gguf", sample_file()),
    ]
}

fn seed_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds"))
}

#[test]
fn seeds_load_fully() {
    for (name, bytes) in seeds() {
        assert!(bytes.len() < 4096, "{name} is {} bytes", bytes.len());
        let header = parse_header(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "all-value-types.gguf" {
            continue;
        }
        let tensor = |n: &str| header.tensors.iter().find(|t| t.name == n);
        ModelConfig::from_metadata(&header.metadata, tensor)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tok =
            Tokenizer::from_metadata(&header.metadata).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(tok.warnings().is_empty(), "{name}: {:?}", tok.warnings());
        assert!(!tok.encode("ab a\nb", true).is_empty());
    }
}

/// The committed fuzz seeds must be what the builders above produce.
#[test]
fn committed_fuzz_seeds_are_current() {
    for (name, bytes) in seeds() {
        let path = seed_dir().join(name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with `write_fuzz_seeds`",
                path.display()
            )
        });
        assert!(
            committed == bytes,
            "{} is stale; regenerate with `cargo test -p hearth-model --test model -- --ignored write_fuzz_seeds`",
            path.display()
        );
    }
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand after changing the seed builders"]
fn write_fuzz_seeds() {
    std::fs::create_dir_all(seed_dir()).expect("seed dir");
    for (name, bytes) in seeds() {
        std::fs::write(seed_dir().join(name), bytes).expect("seed written");
    }
}

// ---------------------------------------------------------------------------------------------
// Mutation.

/// SplitMix64: tiny, and every seed gives a different well-mixed stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Offsets holding a small little-endian u64: almost always a count, a length, a dimension or
/// an offset, the fields where a hostile value does the most damage.
fn field_positions(bytes: &[u8]) -> Vec<usize> {
    (0..bytes.len().saturating_sub(7))
        .filter(|&i| {
            let v = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
            v > 0 && v < 1 << 16
        })
        .collect()
}

fn mutate(base: &[u8], fields: &[usize], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        let at = rng.below(len);
        match rng.below(8) {
            0 => {
                if len > 0 {
                    b[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                if len > 0 {
                    b[at] = rng.next() as u8;
                }
            }
            2 | 3 => {
                let v = match rng.below(4) {
                    0 => rng.pick(&[
                        0,
                        1,
                        2,
                        3,
                        4,
                        5,
                        8,
                        9,
                        12,
                        13,
                        31,
                        32,
                        33,
                        255,
                        256,
                        u32::MAX as u64,
                        1 << 32,
                        1 << 62,
                        1 << 63,
                        u64::MAX,
                        u64::MAX - 1,
                        len as u64,
                    ]),
                    1 => rng.next(),
                    2 => rng.next() >> rng.below(64),
                    _ => (len as u64)
                        .wrapping_add(rng.below(64) as u64)
                        .wrapping_sub(32),
                };
                let at = if fields.is_empty() || rng.below(4) == 0 {
                    at
                } else {
                    rng.pick(fields)
                };
                let width = if rng.below(3) == 0 { 4 } else { 8 };
                for (i, byte) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(slot) = b.get_mut(at + i) {
                        *slot = *byte;
                    }
                }
            }
            4 => b.truncate(at),
            5 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, bytes);
            }
            6 => {
                let end = (at + 1 + rng.below(16)).min(len);
                b.drain(at..end);
            }
            _ => {
                // Duplicate a span: repeated keys, tensor infos and array items.
                let end = (at + 1 + rng.below(64)).min(len);
                let span = b[at..end].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, span);
            }
        }
    }
    b
}

const MASTER_SEED: u64 = 0x6767_7566_2d6c_6974;
const CASES: u64 = 4000;

/// One case, fully determined by its seed.
fn case(seed: u64, bases: &[(Vec<u8>, Vec<usize>)]) -> Vec<u8> {
    let mut rng = Rng(seed);
    let (base, fields) = &bases[rng.below(bases.len())];
    mutate(base, fields, &mut rng)
}

/// A prefix of the file, parsed as one that is still arriving, either waits, fails as the whole
/// file does, or gives the whole file's header.
fn prefix_agrees(bytes: &[u8], seed: u64) {
    let whole = parse_header(bytes);
    let cut = (seed as usize >> 7) % (bytes.len() + 1);
    match parse_header_prefix(&bytes[..cut], bytes.len() as u64) {
        Ok(None) => assert!(cut < bytes.len()),
        Ok(Some(h)) => assert_eq!(Some(&h.tensors), whole.as_ref().ok().map(|w| &w.tensors)),
        Err(e) => assert_eq!(Some(e.to_string()), whole.err().map(|w| w.to_string())),
    }
}

#[test]
fn mutated_files_never_panic() {
    let bases: Vec<(Vec<u8>, Vec<usize>)> = seeds()
        .into_iter()
        .map(|(_, bytes)| {
            let fields = field_positions(&bytes);
            (bytes, fields)
        })
        .collect();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for i in 0..CASES {
        let seed = MASTER_SEED ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let bytes = case(seed, &bases);
        if parse_header(&bytes).is_ok() {
            accepted += 1;
        }
        if catch_unwind(AssertUnwindSafe(|| {
            load(&bytes);
            prefix_agrees(&bytes, seed)
        }))
        .is_err()
        {
            let path = std::env::temp_dir().join(format!("hearth-gguf-crash-{seed:016x}.gguf"));
            let _ = std::fs::write(&path, &bytes);
            failures.push(format!(
                "seed {seed:#018x} (input saved to {})",
                path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CASES} mutated files panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Mutations that keep the file valid (metadata values, tensor data) reach the config and
    // tokenizer loaders; make sure that path is not starved.
    assert!(
        accepted > CASES / 20,
        "only {accepted} mutated files parsed"
    );
}
