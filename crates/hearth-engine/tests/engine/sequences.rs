//! Several sequences share a shard without seeing each other's caches, and a truncated
//! sequence continues as if the forgotten positions had never been fed.

use crate::model::{build, Spec};
use crate::{assert_bits_eq, batched, feed, load, options, prompt, stepwise};
use hearth_engine::{EngineError, LogitRows, ShardChain, ShardInput, ShardOptions};
use hearth_model::GgmlType;

#[test]
fn interleaved_sequences_match_each_run_alone() {
    let model = build(&Spec::llama(GgmlType::Q4_1));
    let a = prompt(&model, 6, 7);
    let b = prompt(&model, 6, 8);
    let alone_a = stepwise(&mut load(&model, options()), &a, 2);
    let alone_b = stepwise(&mut load(&model, options()), &b, 3);

    let mut shard = load(&model, options());
    let (ia, ib) = (shard.new_sequence().unwrap(), shard.new_sequence().unwrap());
    let mut got_a = feed(&mut shard, ia, &a[..2]);
    let mut got_b = feed(&mut shard, ib, &b[..3]);
    for i in 0..4 {
        if let Some(&t) = a.get(2 + i) {
            got_a.extend(feed(&mut shard, ia, &[t]));
        }
        if let Some(&t) = b.get(3 + i) {
            got_b.extend(feed(&mut shard, ib, &[t]));
        }
    }
    assert_eq!(shard.sequence_len(ia), Some(6));
    assert_bits_eq(&got_a, &alone_a, "sequence a");
    assert_bits_eq(&got_b, &alone_b, "sequence b");
}

#[test]
fn truncating_then_refeeding_reproduces_the_logits() {
    let model = build(&Spec::llama(GgmlType::Q5_K));
    let tokens = prompt(&model, 7, 9);
    let other = prompt(&model, 2, 10);
    let vocab = model.spec.vocab;
    let mut shard = load(&model, options());

    // Reference runs: the prefix, then the continuation, in a fresh sequence each.
    let id = shard.new_sequence().unwrap();
    feed(&mut shard, id, &tokens[..4]);
    let rest = feed(&mut shard, id, &tokens[4..]);
    shard.drop_sequence(id);
    let id = shard.new_sequence().unwrap();
    feed(&mut shard, id, &tokens[..4]);
    let diverted = feed(&mut shard, id, &other);
    shard.drop_sequence(id);

    let id = shard.new_sequence().unwrap();
    let full = feed(&mut shard, id, &tokens);
    shard.truncate_sequence(id, 4).unwrap();
    assert_eq!(shard.sequence_len(id), Some(4));
    assert_bits_eq(
        &feed(&mut shard, id, &tokens[4..]),
        &rest,
        "re-fed continuation",
    );
    // The stale positions beyond the truncation point must not leak into a new continuation.
    shard.truncate_sequence(id, 4).unwrap();
    assert_bits_eq(
        &feed(&mut shard, id, &other),
        &diverted,
        "different continuation",
    );
    // Truncating beyond the end changes nothing.
    shard.truncate_sequence(id, 100).unwrap();
    assert_eq!(shard.sequence_len(id), Some(6));
    assert_eq!(rest.len(), 3 * vocab);
    assert!(full.len() == 7 * vocab);
}

#[test]
fn sequence_slots_are_limited_and_ids_checked() {
    let model = build(&Spec::llama(GgmlType::F16));
    let mut shard = load(
        &model,
        ShardOptions {
            max_sequences: 2,
            ..options()
        },
    );
    let a = shard.new_sequence().unwrap();
    let _b = shard.new_sequence().unwrap();
    assert!(matches!(
        shard.new_sequence(),
        Err(EngineError::TooManySequences(2))
    ));
    shard.drop_sequence(a);
    let c = shard.new_sequence().unwrap();
    assert_ne!(a, c, "ids are not reused");

    let unknown = 999;
    assert!(matches!(
        shard.forward(unknown, ShardInput::Tokens(&[1]), LogitRows::Last),
        Err(EngineError::UnknownSequence(999))
    ));
    assert!(
        matches!(shard.truncate_sequence(a, 0), Err(EngineError::UnknownSequence(id)) if id == a)
    );
    assert_eq!(shard.sequence_len(unknown), None);

    let mut chain = ShardChain::load(
        model.file.clone(),
        &[0..1, 1..3],
        ShardOptions {
            max_sequences: 1,
            ..options()
        },
    )
    .unwrap();
    let id = chain.new_sequence().unwrap();
    assert!(matches!(
        chain.new_sequence(),
        Err(EngineError::TooManySequences(1))
    ));
    assert!(matches!(
        chain.forward(id + 1, &[1], LogitRows::Last),
        Err(EngineError::UnknownSequence(_))
    ));
    let tokens = prompt(&model, 5, 11);
    assert_bits_eq(
        chain.forward(id, &tokens, LogitRows::All).unwrap(),
        &batched(&mut load(&model, options()), &tokens),
        "chain after refused sequence",
    );
}
