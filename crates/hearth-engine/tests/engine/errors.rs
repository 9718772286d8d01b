//! Every misuse and every limit is reported as its own error, never a panic, and leaves the
//! shard usable.

use crate::model::{build, Spec};
use crate::{assert_bits_eq, batched, feed, load, options, prompt};
use hearth_engine::{EngineError, LogitRows, Shard, ShardChain, ShardInput, ShardOptions};
use hearth_model::GgmlType;

#[test]
fn a_full_context_is_refused_and_the_sequence_stays_usable() {
    let model = build(&Spec::llama(GgmlType::Q8_0));
    let tokens = prompt(&model, 8, 12);
    let mut shard = load(
        &model,
        ShardOptions {
            context: 8,
            ..options()
        },
    );
    assert_eq!(shard.context(), 8);
    let id = shard.new_sequence().unwrap();
    feed(&mut shard, id, &tokens[..6]);
    let err = shard
        .forward(id, ShardInput::Tokens(&tokens[..3]), LogitRows::Last)
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
    assert_eq!(shard.sequence_len(id), Some(6));
    let last = feed(&mut shard, id, &tokens[6..]);
    shard.drop_sequence(id);
    let expected = batched(&mut shard, &tokens);
    assert_bits_eq(
        &last,
        &expected[6 * model.spec.vocab..],
        "after a refused feed",
    );

    let id = shard.new_sequence().unwrap();
    let too_long = prompt(&model, 9, 13);
    assert!(matches!(
        shard.forward(id, ShardInput::Tokens(&too_long), LogitRows::Last),
        Err(EngineError::ContextFull {
            needed: 9,
            capacity: 8
        })
    ));
    assert_eq!(shard.sequence_len(id), Some(0));
}

#[test]
fn a_memory_limit_too_small_is_refused_with_the_numbers() {
    let model = build(&Spec::llama(GgmlType::Q4_0));
    let n = model.spec.n_layers;
    let fits = Shard::load(model.file.clone(), 0..n, options()).unwrap();
    let needed = fits.reserved_bytes();
    assert!(Shard::load(
        model.file.clone(),
        0..n,
        ShardOptions {
            memory_limit: Some(needed),
            ..options()
        }
    )
    .is_ok());
    let limit = needed - 1;
    let err = Shard::load(
        model.file.clone(),
        0..n,
        ShardOptions {
            memory_limit: Some(limit),
            ..options()
        },
    )
    .unwrap_err();
    match &err {
        EngineError::MemoryLimit {
            needed: n,
            limit: l,
            ..
        } => assert_eq!((*n, *l), (needed, limit)),
        other => panic!("expected MemoryLimit, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&needed.to_string()) && message.contains(&limit.to_string()),
        "{message}"
    );
    let err = ShardChain::load(
        model.file.clone(),
        &[0..1, 1..3],
        ShardOptions {
            memory_limit: Some(1000),
            ..options()
        },
    );
    assert!(matches!(
        err,
        Err(EngineError::MemoryLimit { limit: 1000, .. })
    ));
}

#[test]
// Deliberately malformed: reversed ranges and one-range chains.
#[allow(clippy::reversed_empty_ranges, clippy::single_range_in_vec_init)]
fn bad_layer_ranges_are_refused() {
    let model = build(&Spec::llama(GgmlType::F32));
    let f = || model.file.clone();
    for range in [1..1, 2..1, 0..4, 3..4] {
        let err = Shard::load(f(), range.clone(), options()).unwrap_err();
        assert!(
            matches!(err, EngineError::BadLayerRange { n_layers: 3, .. }),
            "{range:?}: {err}"
        );
    }
    for ranges in [
        vec![0..1, 2..3],       // gap
        vec![0..2, 1..3],       // overlap
        vec![1..3],             // does not start at 0
        vec![0..1, 1..2],       // does not reach the last layer
        vec![0..1, 1..1, 1..3], // empty middle
        vec![0..2, 2..4],       // beyond the model
    ] {
        let err = ShardChain::load(f(), &ranges, options())
            .err()
            .expect("refused");
        assert!(
            matches!(err, EngineError::BadLayerRange { n_layers: 3, .. }),
            "{ranges:?}: {err}"
        );
    }
}

#[test]
fn malformed_inputs_are_refused() {
    let model = build(&Spec::llama(GgmlType::F16));
    let e = model.spec.n_embd;
    let mut first = Shard::load(model.file.clone(), 0..1, options()).unwrap();
    let mut middle = Shard::load(model.file.clone(), 1..2, options()).unwrap();
    let mut last = Shard::load(model.file.clone(), 2..3, options()).unwrap();
    let (a, b, c) = (
        first.new_sequence().unwrap(),
        middle.new_sequence().unwrap(),
        last.new_sequence().unwrap(),
    );
    let hidden = vec![0.5f32; 2 * e];

    let err = first
        .forward(a, ShardInput::Tokens(&[1, 300]), LogitRows::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::TokenOutOfRange {
                token: 300,
                vocab: 300
            }
        ),
        "{err}"
    );
    let err = first
        .forward(a, ShardInput::Hidden(&hidden), LogitRows::Last)
        .unwrap_err();
    assert!(matches!(err, EngineError::WrongInput { .. }), "{err}");
    let err = middle
        .forward(b, ShardInput::Tokens(&[1]), LogitRows::Last)
        .unwrap_err();
    assert!(matches!(err, EngineError::WrongInput { .. }), "{err}");
    let err = last
        .forward(c, ShardInput::Tokens(&[1]), LogitRows::Last)
        .unwrap_err();
    assert!(matches!(err, EngineError::WrongInput { .. }), "{err}");
    let err = middle
        .forward(b, ShardInput::Hidden(&hidden[..e + 3]), LogitRows::Last)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::BadHiddenState { got, width } if got == e + 3 && width == e),
        "{err}"
    );
    let err = first
        .forward(a, ShardInput::Tokens(&[]), LogitRows::Last)
        .unwrap_err();
    assert!(matches!(err, EngineError::EmptyInput), "{err}");
    let err = middle
        .forward(b, ShardInput::Hidden(&[]), LogitRows::Last)
        .unwrap_err();
    assert!(matches!(err, EngineError::EmptyInput), "{err}");
    for (shard, id) in [(&first, a), (&middle, b), (&last, c)] {
        assert_eq!(
            shard.sequence_len(id),
            Some(0),
            "a refused input must not advance the sequence"
        );
    }
    // Still usable afterwards.
    assert!(middle
        .forward(b, ShardInput::Hidden(&hidden), LogitRows::Last)
        .is_ok());
    assert_eq!(middle.sequence_len(b), Some(2));

    let mut chain = ShardChain::load(model.file.clone(), &[], options()).unwrap();
    let id = chain.new_sequence().unwrap();
    assert!(matches!(
        chain.forward(id, &[], LogitRows::Last),
        Err(EngineError::EmptyInput)
    ));
    assert!(matches!(
        chain.forward(id, &[299, 300], LogitRows::Last),
        Err(EngineError::TokenOutOfRange { token: 300, .. })
    ));
}

#[test]
fn a_tensor_type_without_kernels_is_refused_by_name() {
    let odd = GgmlType::Q2_K;
    assert!(
        !hearth_engine::quant::SUPPORTED_WEIGHT_TYPES.contains(&odd)
            && hearth_engine::quant::weight_kernel(odd, hearth_engine::quant::Isa::Scalar)
                .is_none(),
        "pick a type the engine has no kernels for"
    );
    let spec = Spec {
        odd_tensor: Some(("blk.1.ffn_up.weight".into(), odd)),
        ..Spec::llama(GgmlType::Q4_K)
    };
    let model = build(&spec);
    let err = Shard::load(model.file.clone(), 0..3, options()).unwrap_err();
    match &err {
        EngineError::UnsupportedType {
            tensor, ggml_type, ..
        } => {
            assert_eq!((tensor.as_str(), *ggml_type), ("blk.1.ffn_up.weight", odd));
        }
        other => panic!("expected UnsupportedType, got {other}"),
    }
    assert!(err.to_string().contains("blk.1.ffn_up.weight"), "{err}");
    // Shards that do not hold that layer load and run.
    let mut first = Shard::load(model.file.clone(), 0..1, options()).unwrap();
    let id = first.new_sequence().unwrap();
    assert!(first
        .forward(id, ShardInput::Tokens(&[1, 2]), LogitRows::Last)
        .is_ok());
    assert!(Shard::load(model.file.clone(), 2..3, options()).is_ok());
    assert!(matches!(
        ShardChain::load(model.file.clone(), &[0..1, 1..3], options()),
        Err(EngineError::UnsupportedType { .. })
    ));
}
