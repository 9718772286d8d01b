//! The engine's logits against the reference forward pass, for every weight type, every
//! instruction set and both ways of feeding a prompt.

use crate::model::{build, Arch, Spec, TestModel};
use crate::{batched, load, max_abs_diff, options, prompt, reference, std_dev, stepwise};
use hearth_engine::quant::{Isa, SUPPORTED_WEIGHT_TYPES};
use hearth_engine::sample::argmax_logits;
use hearth_engine::{LogitRows, ShardInput, ShardOptions};
use hearth_model::GgmlType;

const PROMPT: usize = 7;

/// Largest error allowed, as a fraction of the reference logits' standard deviation.
///
/// The reference uses exactly the weights the engine reads (dequantized), so what is left is
/// the engine's own rounding, which follows llama.cpp: keys and values are cached as f16 and
/// queries rounded to f16 for the attention product, F16 weights multiply activations rounded
/// to f16, and every quantized type multiplies activations quantized to 8 bits (Q8_0/Q8_1 blocks
/// of 32, or Q8_K blocks of 256 for the k-quants). An 8-bit block with scale `amax/127` carries a
/// relative error of roughly 0.5% per matrix product; over three layers of seven products and
/// the head this lands at 1-2.5% rms and up to ~9.5% at the worst of 2100 logits. BF16 weights
/// multiply activations rounded to bf16 (8-bit mantissa), which lands in between (2% max).
/// F32 and F16 only see f16 rounding (about 5e-4 relative per step): measured up to 1.1e-3 and
/// 3.7e-3 of the logit spread. The bounds leave roughly 1.5x headroom over those measurements;
/// a wrong scale, shift or RoPE pairing moves logits by a large fraction of their spread.
fn tolerance(t: GgmlType) -> f32 {
    match t {
        GgmlType::F32 | GgmlType::F16 => 6e-3,
        // BF16 and every quantized type: 8-bit (or bf16) activations.
        _ => 0.12,
    }
}

struct Comparison {
    /// Max abs difference over the logit std.
    error: f32,
    /// Root-mean-square difference over the logit std.
    rms: f32,
    /// Positions whose top token differs.
    argmax_mismatches: usize,
}

/// Compares engine logits with the reference's; a differing top token must be a near tie in the
/// reference (within twice the allowed error), since the engine's rounding can only flip those.
fn compare(model: &TestModel, engine: &[f32], reference: &[f32], tolerance: f32) -> Comparison {
    let vocab = model.spec.vocab;
    let scale = std_dev(reference);
    let error = max_abs_diff(engine, reference) / scale;
    let rms = std_dev(
        &engine
            .iter()
            .zip(reference)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
    ) / scale;
    let mut argmax_mismatches = 0;
    for (pos, (e, r)) in engine
        .chunks_exact(vocab)
        .zip(reference.chunks_exact(vocab))
        .enumerate()
    {
        let (ea, ra) = (argmax_logits(e) as usize, argmax_logits(r) as usize);
        if ea != ra {
            argmax_mismatches += 1;
            assert!(
                r[ra] - r[ea] <= 2.0 * tolerance * scale,
                "{:?} position {pos}: engine picks {ea}, reference {ra} by a margin of {}",
                model.spec.weight_type,
                (r[ra] - r[ea]) / scale
            );
        }
    }
    Comparison {
        error,
        rms,
        argmax_mismatches,
    }
}

fn check_against_reference(spec: &Spec) -> Comparison {
    let model = build(spec);
    let tokens = prompt(&model, PROMPT, 1);
    let mut shard = load(&model, options());
    let engine = batched(&mut shard, &tokens);
    let expected = reference::forward(&model, &tokens);
    let t = spec.weight_type;
    let c = compare(&model, &engine, &expected, tolerance(t));
    eprintln!(
        "{:?} {t}: |engine - reference| max {:.2e}, rms {:.2e} x logit std; {} of {PROMPT} top tokens differ",
        spec.arch, c.error, c.rms, c.argmax_mismatches
    );
    assert!(
        c.rms < tolerance(t) / 4.0,
        "{:?} {t}: rms error {} x logit std exceeds {}",
        spec.arch,
        c.rms,
        tolerance(t) / 4.0
    );
    assert!(
        c.error < tolerance(t),
        "{:?} {t}: error {} x logit std exceeds {}",
        spec.arch,
        c.error,
        tolerance(t)
    );
    c
}

#[test]
fn every_weight_type_matches_the_reference() {
    let mut mismatches = 0;
    for (i, &t) in SUPPORTED_WEIGHT_TYPES.iter().enumerate() {
        // Alternate a separate output head and one tied to the embedding.
        let spec = Spec {
            tied: i % 2 == 1,
            ..Spec::llama(t)
        };
        let c = check_against_reference(&spec);
        if matches!(t, GgmlType::F32 | GgmlType::F16) {
            assert_eq!(c.argmax_mismatches, 0, "{t}: top tokens must agree");
        }
        mismatches += c.argmax_mismatches;
    }
    // Near ties are rare on random logits: at most a couple over all types and positions.
    assert!(mismatches <= 2, "{mismatches} top tokens differ");
}

#[test]
fn qwen2_with_biases_and_halves_rope_matches_the_reference() {
    for t in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_K] {
        let spec = Spec {
            arch: Arch::Qwen2,
            tied: t == GgmlType::Q8_0,
            ..Spec::llama(t)
        };
        check_against_reference(&spec);
    }
}

/// Differences between ways of computing the same thing with the same kernels come only from
/// the order of floating-point sums (batched vs single-row matrix products), so they stay
/// within a few f32 ulps of the logits' size.
const SAME_KERNELS: f32 = 1e-5;
/// Between instruction sets the 8-bit activations may differ by one step where a value rounds
/// at exactly half (vectorized vs scalar rounding of the scale), which moves a logit by far
/// less than the quantization error itself.
const ACROSS_ISAS: f32 = 1e-3;

#[test]
fn decoding_step_by_step_matches_the_batched_pass_on_every_isa() {
    for &t in SUPPORTED_WEIGHT_TYPES {
        let model = build(&Spec::llama(t));
        let tokens = prompt(&model, PROMPT, 2);
        let mut scalar = None;
        for isa in Isa::available() {
            let mut shard = load(
                &model,
                ShardOptions {
                    isa: Some(isa),
                    ..options()
                },
            );
            let all = batched(&mut shard, &tokens);
            let steps = stepwise(&mut shard, &tokens, 3);
            let scale = std_dev(&all);
            let step_error = max_abs_diff(&all, &steps) / scale;
            let scalar_all = scalar.get_or_insert_with(|| all.clone());
            let isa_error = max_abs_diff(&all, scalar_all) / scale;
            eprintln!(
                "{t} {}: step-by-step vs batched {step_error:.1e}, vs scalar {isa_error:.1e}",
                isa.name()
            );
            assert!(
                step_error < SAME_KERNELS,
                "{t} {}: step-by-step decoding differs from the batched pass by {step_error}",
                isa.name()
            );
            assert!(
                isa_error < ACROSS_ISAS,
                "{t} {}: differs from the scalar kernels by {isa_error}",
                isa.name()
            );
        }
    }
}

#[test]
fn last_row_and_small_internal_batches_match_the_full_pass() {
    for t in [GgmlType::F16, GgmlType::Q4_1, GgmlType::Q5_K] {
        let model = build(&Spec::llama(t));
        let tokens = prompt(&model, PROMPT, 3);
        let vocab = model.spec.vocab;
        let mut shard = load(&model, options());
        let all = batched(&mut shard, &tokens);
        let scale = std_dev(&all);

        let id = shard.new_sequence().unwrap();
        let last = crate::logits(
            shard
                .forward(id, ShardInput::Tokens(&tokens), LogitRows::Last)
                .unwrap(),
        );
        assert_eq!(last.len(), vocab);
        let error = max_abs_diff(&last, &all[(PROMPT - 1) * vocab..]) / scale;
        assert!(error < SAME_KERNELS, "{t}: last row differs by {error}");
        assert_eq!(shard.last_logits(), Some(&last[..]));
        shard.drop_sequence(id);

        // A prompt longer than max_batch runs in several internal batches.
        let mut small = load(
            &model,
            ShardOptions {
                max_batch: 3,
                ..options()
            },
        );
        let split = batched(&mut small, &tokens);
        let error = max_abs_diff(&split, &all) / scale;
        assert!(error < SAME_KERNELS, "{t}: batches of 3 differ by {error}");
    }
}
