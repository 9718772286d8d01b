//! End-to-end tests of the engine on small synthetic models the tests write themselves: the
//! whole forward pass against a plain f32 reference for every supported weight type, sharding,
//! sequences, errors and generation.

mod model;
mod reference;

mod accuracy;
mod duty;
mod errors;
mod generation;
mod sequences;
mod shards;

use hearth_engine::{LogitRows, SequenceId, Shard, ShardInput, ShardOptions, ShardOutput};
use model::{Rng, TestModel};

/// Small enough that many tests can run side by side on a couple of cores: one thread means
/// no spinning workers, and the context is all any test needs.
pub fn options() -> ShardOptions {
    ShardOptions {
        context: 32,
        max_sequences: 2,
        threads: 1,
        ..ShardOptions::default()
    }
}

pub fn load(model: &TestModel, options: ShardOptions) -> Shard {
    let n = model.spec.n_layers;
    Shard::load(model.file.clone(), 0..n, options).expect("load the whole model")
}

/// A prompt of `len` in-vocabulary tokens.
pub fn prompt(model: &TestModel, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| rng.below(model.spec.vocab as u32))
        .collect()
}

pub fn logits(out: ShardOutput<'_>) -> Vec<f32> {
    match out {
        ShardOutput::Logits(l) => l.to_vec(),
        ShardOutput::Hidden(_) => panic!("expected logits from the last shard"),
    }
}

/// Feeds `tokens` to sequence `id` in one call and returns the logits of every position.
pub fn feed(shard: &mut Shard, id: SequenceId, tokens: &[u32]) -> Vec<f32> {
    logits(
        shard
            .forward(id, ShardInput::Tokens(tokens), LogitRows::All)
            .expect("forward"),
    )
}

/// Logits of every position of `tokens` from one batched pass over a fresh sequence.
pub fn batched(shard: &mut Shard, tokens: &[u32]) -> Vec<f32> {
    let id = shard.new_sequence().unwrap();
    let out = feed(shard, id, tokens);
    shard.drop_sequence(id);
    out
}

/// The same logits, but the first `prefix` tokens batched and the rest fed one at a time.
pub fn stepwise(shard: &mut Shard, tokens: &[u32], prefix: usize) -> Vec<f32> {
    let id = shard.new_sequence().unwrap();
    let mut out = feed(shard, id, &tokens[..prefix]);
    for &t in &tokens[prefix..] {
        let step = shard
            .forward(id, ShardInput::Tokens(&[t]), LogitRows::Last)
            .expect("decode step");
        out.extend(logits(step));
    }
    shard.drop_sequence(id);
    out
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Standard deviation over all values: the scale errors are measured against.
pub fn std_dev(x: &[f32]) -> f32 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt() as f32
}

pub fn assert_bits_eq(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!(
            "{what}: value {i} differs ({} vs {}), max abs diff {}",
            a[i],
            b[i],
            max_abs_diff(a, b)
        );
    }
}
