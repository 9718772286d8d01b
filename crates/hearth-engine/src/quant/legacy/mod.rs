//! The legacy GGUF formats: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Q4_0, Q5_0 and Q8_0 weights multiply Q8_0 activations, Q4_1 and Q5_1 multiply Q8_1 ones (which
//! carry `d * sum(q)` for the weights' minimum), and float weights multiply activations rounded
//! to their own type, all as ggml does so that logits agree with llama.cpp.
//!
//! The SIMD kernels are safe functions that assume their instruction set: `weight_kernel` hands
//! one out only for the `Isa` it was asked for, and callers must only ask for an `Isa` that
//! [`Isa::detect`] reported (or one listed by [`Isa::available`]).

use super::*;

pub mod blocks;
mod scalar;

/// The row/token tiling around a float kernel `float_tile::<W, R, T>` and the safe
/// `matmul_f32`/`matmul_f16`/`matmul_bf16` entry points, for one instruction set (`$feat`): the
/// calling module supplies `float_tile`, `FloatFmt` and the `F32`/`F16`/`Bf16` formats.
///
/// SAFETY of the generated entry points: they are handed out only for the `Isa` the calling
/// module is built for, and `float_matmul` checks the slice lengths before reading.
macro_rules! float_matmuls {
    ($feat:literal) => {
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        unsafe fn float_tokens<W: FloatFmt, const R: usize>(
            n: usize,
            w: *const u8,
            wrow: usize,
            a: *const u8,
            arow: usize,
            tokens: usize,
            out: *mut f32,
            ostride: usize,
        ) {
            let mut t = 0;
            while t + 4 <= tokens {
                float_tile::<W, R, 4>(n, w, wrow, a.add(t * arow), arow, out.add(t), ostride);
                t += 4;
            }
            while t < tokens {
                float_tile::<W, R, 1>(n, w, wrow, a.add(t * arow), arow, out.add(t), ostride);
                t += 1;
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn float_matmul<W: FloatFmt>(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            let row = n * W::BYTES;
            assert!(w.len() >= rows * row && act.len() >= tokens * row);
            assert!(out.len() >= rows * tokens);
            let (wp, ap, op) = (w.as_ptr(), act.as_ptr(), out.as_mut_ptr());
            let mut r = 0;
            if tokens == 1 {
                // Four rows give four independent FMA chains to hide the FMA latency.
                while r + 4 <= rows {
                    float_tile::<W, 4, 1>(n, wp.add(r * row), row, ap, row, op.add(r), 1);
                    r += 4;
                }
            } else {
                while r + 2 <= rows {
                    let o = op.add(r * tokens);
                    float_tokens::<W, 2>(n, wp.add(r * row), row, ap, row, tokens, o, tokens);
                    r += 2;
                }
            }
            while r < rows {
                let o = op.add(r * tokens);
                float_tokens::<W, 1>(n, wp.add(r * row), row, ap, row, tokens, o, tokens);
                r += 1;
            }
        }

        pub(super) fn matmul_f32(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { float_matmul::<F32>(n, w, rows, act, tokens, out) }
        }

        pub(super) fn matmul_f16(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { float_matmul::<F16>(n, w, rows, act, tokens, out) }
        }

        pub(super) fn matmul_bf16(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { float_matmul::<Bf16>(n, w, rows, act, tokens, out) }
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[macro_use]
mod simd;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
pub(super) mod neon;

#[cfg(test)]
mod tests;

/// The kernels of the instruction set `isa` for `t`, falling back to slower ones where `isa` has
/// none of its own.
pub(super) fn weight_kernel(t: GgmlType, isa: Isa) -> Option<WeightKernel> {
    use GgmlType as G;
    let (activation, dequantize): (GgmlType, DequantizeFn) = match t {
        G::F32 => (G::F32, blocks::dequantize_f32),
        G::F16 => (G::F16, blocks::dequantize_f16),
        G::BF16 => (G::BF16, blocks::dequantize_bf16),
        G::Q4_0 => (G::Q8_0, blocks::dequantize_q4_0),
        G::Q4_1 => (G::Q8_1, blocks::dequantize_q4_1),
        G::Q5_0 => (G::Q8_0, blocks::dequantize_q5_0),
        G::Q5_1 => (G::Q8_1, blocks::dequantize_q5_1),
        G::Q8_0 => (G::Q8_0, blocks::dequantize_q8_0),
        _ => return None,
    };
    let quantize_activation = activation_quantizer(activation, isa)?;
    Some(WeightKernel {
        weight: t,
        activation,
        quantize_activation,
        dequantize,
        matmul: matmul_fn(t, isa)?,
    })
}

fn activation_quantizer(t: GgmlType, isa: Isa) -> Option<QuantizeFn> {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) {
        match t {
            GgmlType::Q8_0 => return Some(avx2::quantize_q8_0),
            GgmlType::Q8_1 => return Some(avx2::quantize_q8_1),
            _ => {}
        }
    }
    let _ = isa;
    quantizer(t)
}

fn quantizer(t: GgmlType) -> Option<QuantizeFn> {
    use GgmlType as G;
    Some(match t {
        G::F32 => blocks::quantize_f32,
        G::F16 => blocks::quantize_f16,
        G::BF16 => blocks::quantize_bf16,
        G::Q4_0 => blocks::quantize_q4_0,
        G::Q4_1 => blocks::quantize_q4_1,
        G::Q5_0 => blocks::quantize_q5_0,
        G::Q5_1 => blocks::quantize_q5_1,
        G::Q8_0 => blocks::quantize_q8_0,
        G::Q8_1 => blocks::quantize_q8_1,
        _ => return None,
    })
}

fn matmul_fn(t: GgmlType, isa: Isa) -> Option<MatmulFn> {
    #[cfg(target_arch = "x86_64")]
    {
        // The AVX-512 kernels use VNNI as well; without it the AVX2 ones are as good.
        if isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni") {
            return avx512_matmul(t);
        }
        if matches!(isa, Isa::Avx2 | Isa::Avx512) {
            return avx2_matmul(t);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        return neon_matmul(t);
    }
    let _ = isa;
    scalar_matmul(t)
}

macro_rules! matmul_table {
    ($name:ident, $m:ident) => {
        fn $name(t: GgmlType) -> Option<MatmulFn> {
            use GgmlType as G;
            Some(match t {
                G::F32 => $m::matmul_f32,
                G::F16 => $m::matmul_f16,
                G::BF16 => $m::matmul_bf16,
                G::Q4_0 => $m::matmul_q4_0,
                G::Q4_1 => $m::matmul_q4_1,
                G::Q5_0 => $m::matmul_q5_0,
                G::Q5_1 => $m::matmul_q5_1,
                G::Q8_0 => $m::matmul_q8_0,
                _ => return None,
            })
        }
    };
}

matmul_table!(scalar_matmul, scalar);
#[cfg(target_arch = "x86_64")]
matmul_table!(avx2_matmul, avx2);
#[cfg(target_arch = "x86_64")]
fn avx512_matmul(t: GgmlType) -> Option<MatmulFn> {
    use GgmlType as G;
    Some(match t {
        G::Q4_0 => avx512::matmul_q4_0,
        G::Q4_1 => avx512::matmul_q4_1,
        G::Q5_0 => avx512::matmul_q5_0,
        G::Q5_1 => avx512::matmul_q5_1,
        G::Q8_0 => avx512::matmul_q8_0,
        _ => return avx2_matmul(t),
    })
}

#[cfg(target_arch = "aarch64")]
fn neon_matmul(t: GgmlType) -> Option<MatmulFn> {
    use GgmlType as G;
    // The integer kernels come in a build with `sdot` and one for CPUs without it.
    let dot = std::arch::is_aarch64_feature_detected!("dotprod");
    Some(match (t, dot) {
        (G::F32, _) => neon::matmul_f32,
        (G::F16, _) => neon::matmul_f16,
        (G::BF16, _) => neon::matmul_bf16,
        (G::Q4_0, true) => neon::dot::matmul_q4_0,
        (G::Q4_1, true) => neon::dot::matmul_q4_1,
        (G::Q5_0, true) => neon::dot::matmul_q5_0,
        (G::Q5_1, true) => neon::dot::matmul_q5_1,
        (G::Q8_0, true) => neon::dot::matmul_q8_0,
        (G::Q4_0, false) => neon::plain::matmul_q4_0,
        (G::Q4_1, false) => neon::plain::matmul_q4_1,
        (G::Q5_0, false) => neon::plain::matmul_q5_0,
        (G::Q5_1, false) => neon::plain::matmul_q5_1,
        (G::Q8_0, false) => neon::plain::matmul_q8_0,
        _ => return None,
    })
}

/// Quantizes `x` (a whole number of blocks) into `out` (exactly `t.row_bytes(x.len())` bytes)
/// with ggml's round-to-nearest reference quantizer; `false` if `t` is not a legacy format.
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
    match quantizer(t) {
        Some(q) => {
            q(x, out);
            true
        }
        None => false,
    }
}
