//! Splitting the model into shards must not change a single bit of the logits: the hidden
//! state passes between shards as f32 and every shard runs the same kernels in the same order.

use crate::model::{build, Spec, TestModel};
use crate::{assert_bits_eq, batched, load, logits, options, prompt, stepwise};
use hearth_engine::{LogitRows, Shard, ShardChain, ShardInput, ShardOptions, ShardOutput};
use hearth_model::GgmlType;

const PROMPT: usize = 7;

fn chain_logits(
    model: &TestModel,
    ranges: &[std::ops::Range<usize>],
    tokens: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let mut chain = ShardChain::load(model.file.clone(), ranges, options()).unwrap();
    assert_eq!(chain.shards().len(), ranges.len().max(1));
    let id = chain.new_sequence().unwrap();
    let all = chain.forward(id, tokens, LogitRows::All).unwrap().to_vec();
    chain.drop_sequence(id);
    let id = chain.new_sequence().unwrap();
    let mut steps = chain
        .forward(id, &tokens[..3], LogitRows::All)
        .unwrap()
        .to_vec();
    for &t in &tokens[3..] {
        steps.extend_from_slice(chain.forward(id, &[t], LogitRows::Last).unwrap());
    }
    (all, steps)
}

#[test]
// A chain of one range (and of none) is a case under test.
#[allow(clippy::single_range_in_vec_init)]
fn chains_of_shards_give_bit_identical_logits() {
    for t in [GgmlType::F32, GgmlType::Q4_0, GgmlType::Q6_K] {
        let model = build(&Spec::llama(t));
        let tokens = prompt(&model, PROMPT, 4);
        let mut whole = load(&model, options());
        let all = batched(&mut whole, &tokens);
        let steps = stepwise(&mut whole, &tokens, 3);
        for ranges in [
            vec![],
            vec![0..3],
            vec![0..1, 1..3],
            vec![0..2, 2..3],
            vec![0..1, 1..2, 2..3],
        ] {
            let (chain_all, chain_steps) = chain_logits(&model, &ranges, &tokens);
            assert_bits_eq(&chain_all, &all, &format!("{t} {ranges:?} batched"));
            assert_bits_eq(
                &chain_steps,
                &steps,
                &format!("{t} {ranges:?} step by step"),
            );
        }
    }
}

#[test]
fn thread_count_does_not_change_a_bit() {
    for t in [GgmlType::F16, GgmlType::Q5_0, GgmlType::Q4_K] {
        let model = build(&Spec::llama(t));
        let tokens = prompt(&model, PROMPT, 5);
        let mut one = load(&model, options());
        let mut three = load(
            &model,
            ShardOptions {
                threads: 3,
                ..options()
            },
        );
        assert_bits_eq(
            &batched(&mut three, &tokens),
            &batched(&mut one, &tokens),
            &format!("{t} batched"),
        );
        assert_bits_eq(
            &stepwise(&mut three, &tokens, 2),
            &stepwise(&mut one, &tokens, 2),
            &format!("{t} step by step"),
        );
    }
}

#[test]
fn manual_chaining_through_hidden_states_is_bit_identical() {
    let model = build(&Spec::llama(GgmlType::Q8_0));
    let tokens = prompt(&model, PROMPT, 6);
    let expected = batched(&mut load(&model, options()), &tokens);
    let mut shards: Vec<Shard> = [0..1, 1..2, 2..3]
        .into_iter()
        .map(|r| Shard::load(model.file.clone(), r, options()).unwrap())
        .collect();
    assert!(shards[0].is_first() && !shards[0].is_last());
    assert!(!shards[1].is_first() && !shards[1].is_last());
    assert!(!shards[2].is_first() && shards[2].is_last());
    let ids: Vec<u64> = shards
        .iter_mut()
        .map(|s| s.new_sequence().unwrap())
        .collect();
    let mut hidden = match shards[0]
        .forward(ids[0], ShardInput::Tokens(&tokens), LogitRows::All)
        .unwrap()
    {
        ShardOutput::Hidden(h) => h.to_vec(),
        ShardOutput::Logits(_) => panic!("the first of three shards returns hidden states"),
    };
    assert_eq!(hidden.len(), PROMPT * model.spec.n_embd);
    hidden = match shards[1]
        .forward(ids[1], ShardInput::Hidden(&hidden), LogitRows::All)
        .unwrap()
    {
        ShardOutput::Hidden(h) => h.to_vec(),
        ShardOutput::Logits(_) => panic!("a middle shard returns hidden states"),
    };
    let out = logits(
        shards[2]
            .forward(ids[2], ShardInput::Hidden(&hidden), LogitRows::All)
            .unwrap(),
    );
    assert_bits_eq(&out, &expected, "manual chain");
}
