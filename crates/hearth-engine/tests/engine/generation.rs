//! `ShardChain::generate`: reproducible for a given sampler and seed, and it stops where told.

use crate::model::{build, Spec, TestModel};
use crate::{options, prompt};
use hearth_engine::sample::argmax_logits;
use hearth_engine::{EngineError, LogitRows, Sampler, SamplerConfig, ShardChain, ShardOptions};
use hearth_model::GgmlType;

fn generate(
    model: &TestModel,
    config: &SamplerConfig,
    max: usize,
    stop: Option<u32>,
) -> (Vec<u32>, hearth_engine::GenerationStats) {
    let mut chain = ShardChain::load(model.file.clone(), &[0..2, 2..3], options()).unwrap();
    let mut sampler = Sampler::new(config.clone());
    let mut out = Vec::new();
    let stats = chain
        .generate(
            &prompt(model, 5, 14),
            max,
            &mut sampler,
            |t| Some(t) == stop,
            |t| {
                out.push(t);
                true
            },
        )
        .unwrap();
    assert_eq!(stats.generated_tokens, out.len());
    assert_eq!(stats.prompt_tokens, 5);
    (out, stats)
}

#[test]
fn greedy_generation_is_deterministic_and_follows_the_logits() {
    let model = build(&Spec::llama(GgmlType::Q8_0));
    let greedy = SamplerConfig::default();
    let (tokens, stats) = generate(&model, &greedy, 12, None);
    assert_eq!(tokens.len(), 12);
    assert!(!stats.stopped && !stats.context_full);
    assert_eq!(generate(&model, &greedy, 12, None).0, tokens);

    // The same tokens by hand: feed the prompt, then each argmax.
    let mut chain = ShardChain::load(model.file.clone(), &[], options()).unwrap();
    let id = chain.new_sequence().unwrap();
    let mut next = argmax_logits(
        chain
            .forward(id, &prompt(&model, 5, 14), LogitRows::Last)
            .unwrap(),
    );
    let mut by_hand = vec![next];
    while by_hand.len() < 12 {
        next = argmax_logits(chain.forward(id, &[next], LogitRows::Last).unwrap());
        by_hand.push(next);
    }
    assert_eq!(tokens, by_hand);
}

#[test]
fn sampling_is_deterministic_per_seed() {
    let model = build(&Spec::llama(GgmlType::Q4_K));
    let config = |seed| SamplerConfig {
        temperature: 1.0,
        top_k: 40,
        seed,
        ..SamplerConfig::default()
    };
    let (a, _) = generate(&model, &config(1), 16, None);
    assert_eq!(generate(&model, &config(1), 16, None).0, a);
    let (b, _) = generate(&model, &config(2), 16, None);
    assert_eq!(generate(&model, &config(2), 16, None).0, b);
    assert_ne!(
        a, b,
        "different seeds should sample differently over 16 tokens"
    );
}

#[test]
fn generation_stops_on_a_stop_token_and_at_the_limits() {
    let model = build(&Spec::llama(GgmlType::F16));
    let greedy = SamplerConfig::default();
    let (tokens, _) = generate(&model, &greedy, 10, None);
    // The first token that did not occur before it: generation must end just before it.
    let cut = (1..tokens.len())
        .find(|&i| !tokens[..i].contains(&tokens[i]))
        .expect("random logits give more than one distinct token");
    let (stopped, stats) = generate(&model, &greedy, 10, Some(tokens[cut]));
    assert_eq!(stopped, tokens[..cut]);
    assert!(stats.stopped);

    let (short, stats) = generate(&model, &greedy, 3, None);
    assert_eq!(short, tokens[..3]);
    assert!(!stats.stopped && !stats.context_full);
    assert_eq!(generate(&model, &greedy, 0, None).0, Vec::<u32>::new());

    // on_token returning false ends generation after that token.
    let mut chain = ShardChain::load(model.file.clone(), &[], options()).unwrap();
    let mut seen = Vec::new();
    let stats = chain
        .generate(
            &prompt(&model, 5, 14),
            10,
            &mut Sampler::new(greedy.clone()),
            |_| false,
            |t| {
                seen.push(t);
                seen.len() < 4
            },
        )
        .unwrap();
    assert_eq!((seen.as_slice(), stats.generated_tokens), (&tokens[..4], 4));

    // A small context ends generation early without an error, the sequence's total
    // (prompt plus generated tokens) filling it.
    let mut small = ShardChain::load(
        model.file.clone(),
        &[],
        ShardOptions {
            context: 8,
            ..options()
        },
    )
    .unwrap();
    let stats = small
        .generate(
            &prompt(&model, 5, 14),
            10,
            &mut Sampler::new(greedy.clone()),
            |_| false,
            |_| true,
        )
        .unwrap();
    assert!(stats.context_full);
    assert_eq!(stats.generated_tokens, 3);
    let err = small
        .generate(
            &prompt(&model, 9, 14),
            10,
            &mut Sampler::new(greedy.clone()),
            |_| false,
            |_| true,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::ContextFull {
                needed: 9,
                capacity: 8
            }
        ),
        "{err}"
    );
    assert!(matches!(
        small.generate(&[], 10, &mut Sampler::new(greedy), |_| false, |_| true),
        Err(EngineError::EmptyInput)
    ));
}
