//! The compute share: a shard told to run at a fraction of full speed idles in proportion to
//! its own work, gives the same numbers, and refuses shares outside `0 < s ≤ 1`.

use crate::model::{build, Spec};
use crate::{assert_bits_eq, feed, load, options, prompt};
use hearth_engine::{EngineError, Shard, ShardOptions};
use hearth_model::GgmlType;
use std::time::{Duration, Instant};

fn fastest_of(runs: usize, mut pass: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| pass()).min().unwrap_or_default()
}

#[test]
fn a_shard_at_a_tenth_share_takes_at_least_several_times_as_long_with_the_same_output() {
    let model = build(&Spec::llama(GgmlType::Q8_0));
    let tokens = prompt(&model, 24, 3);
    let mut full = load(&model, options());
    let mut tenth = load(
        &model,
        ShardOptions {
            compute_share: 0.1,
            ..options()
        },
    );
    let timed = |shard: &mut Shard| {
        let id = shard.new_sequence().unwrap();
        let start = Instant::now();
        let logits = feed(shard, id, &tokens);
        let took = start.elapsed();
        shard.drop_sequence(id);
        (took, logits)
    };
    let (_, want) = timed(&mut full);
    let (paced, got) = timed(&mut tenth);
    assert_bits_eq(&want, &got, "logits at a 0.1 share");
    // The paced pass idles nine times its own work, and its work cannot be faster than the
    // fastest full-speed pass by much: a bound that holds however loaded the machine is.
    let fastest = fastest_of(5, || timed(&mut full).0);
    assert!(
        paced >= fastest * 5,
        "a 0.1 share took {paced:?}, the fastest full-speed pass {fastest:?}"
    );
}

#[test]
fn shares_outside_zero_to_one_are_refused() {
    let model = build(&Spec::llama(GgmlType::Q8_0));
    for share in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let err = Shard::load(
            model.file.clone(),
            0..model.spec.n_layers,
            ShardOptions {
                compute_share: share,
                ..options()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, EngineError::BadComputeShare(s) if s.to_bits() == share.to_bits()),
            "{share}: {err}"
        );
    }
}
