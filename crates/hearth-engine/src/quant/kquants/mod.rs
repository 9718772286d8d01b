//! Kernels for the k-quant weight formats Q4_K, Q5_K and Q6_K, with activations in Q8_K.
//!
//! The numerics follow ggml's CPU backend so logits agree with llama.cpp: activations are
//! quantized to Q8_K exactly as ggml's reference does, each super-block's weight-times-activation
//! products are summed exactly in integers, and only those per-super-block sums are scaled by
//! `d_weight * d_activation` and accumulated in f32. What may differ from llama.cpp (and between
//! our instruction sets) is only the order of those f32 additions.

use hearth_model::GgmlType;

use super::{Isa, WeightKernel};

mod blocks;
mod scalar;

/// Safe-to-name entry points over a tile kernel generic in its token count: `$name(nb, w, act,
/// act_stride, nt, out)` runs `$tile::<nt>` for `nt` in 1..=4. Defined once here so every
/// instruction-set module shapes its tiles the same way.
macro_rules! tile_dispatch {
    ($name:ident, $tile:ident) => {
        /// # Safety
        /// The CPU must have the features the calling module's kernels are compiled for; see
        /// [`crate::quant::kquants::TileFn`] for the pointers.
        pub(in crate::quant::kquants) unsafe fn $name(
            nb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            nt: usize,
            out: *mut f32,
        ) {
            match nt {
                1 => $tile::<1>(nb, w, act, act_stride, out),
                2 => $tile::<2>(nb, w, act, act_stride, out),
                3 => $tile::<3>(nb, w, act, act_stride, out),
                _ => $tile::<4>(nb, w, act, act_stride, out),
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod tests;

use blocks::{Q4K_BYTES, Q5K_BYTES, Q6K_BYTES, Q8K_BYTES, QK};

/// The kernels for k-quant weights of type `t`, or `None` for other types.
///
/// The returned SIMD kernels execute AVX2/AVX-512/NEON instructions without checking for them:
/// `isa` must be one that [`Isa::detect`] allowed on this CPU (any of [`Isa::available`]).
pub(super) fn weight_kernel(t: GgmlType, isa: Isa) -> Option<WeightKernel> {
    let matmul: super::MatmulFn = match (t, isa) {
        #[cfg(target_arch = "x86_64")]
        (GgmlType::Q4_K, Isa::Avx512) => matmul_q4k_avx512,
        #[cfg(target_arch = "x86_64")]
        (GgmlType::Q5_K, Isa::Avx512) => matmul_q5k_avx512,
        #[cfg(target_arch = "x86_64")]
        (GgmlType::Q6_K, Isa::Avx512) => matmul_q6k_avx512,
        #[cfg(target_arch = "x86_64")]
        (GgmlType::Q4_K, Isa::Avx2) => matmul_q4k_avx2,
        #[cfg(target_arch = "x86_64")]
        (GgmlType::Q5_K, Isa::Avx2) => matmul_q5k_avx2,
        #[cfg(target_arch = "x86_64")]
        (GgmlType::Q6_K, Isa::Avx2) => matmul_q6k_avx2,
        #[cfg(target_arch = "aarch64")]
        (GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K, Isa::Neon) => neon_matmul(t),
        (GgmlType::Q4_K, _) => matmul_q4k_scalar,
        (GgmlType::Q5_K, _) => matmul_q5k_scalar,
        (GgmlType::Q6_K, _) => matmul_q6k_scalar,
        _ => return None,
    };
    let dequantize: super::DequantizeFn = match t {
        GgmlType::Q4_K => blocks::dequantize_q4k,
        GgmlType::Q5_K => blocks::dequantize_q5k,
        _ => blocks::dequantize_q6k,
    };
    Some(WeightKernel {
        weight: t,
        activation: GgmlType::Q8_K,
        quantize_activation: blocks::quantize_q8k,
        dequantize,
        matmul,
    })
}

/// Quantizes one row of `x` into `out` (exactly `t.row_bytes(x.len())` bytes) for the k-quant
/// types Q4_K, Q5_K, Q6_K and Q8_K; returns false, writing nothing, for any other type.
///
/// The weight quantizers fit each sub-block by its min/max rather than ggml's iterative search:
/// good enough for synthetic models and tests, slightly less accurate than llama.cpp's files.
pub(super) fn quantize_row(t: GgmlType, x: &[f32], out: &mut [u8]) -> bool {
    match t {
        GgmlType::Q4_K => blocks::quantize_q4k(x, out),
        GgmlType::Q5_K => blocks::quantize_q5k(x, out),
        GgmlType::Q6_K => blocks::quantize_q6k(x, out),
        GgmlType::Q8_K => blocks::quantize_q8k(x, out),
        _ => return false,
    }
    true
}

/// Checks the shapes of a matmul call and returns the number of super-blocks per row.
///
/// The SIMD kernels read through raw pointers, so these checks are what keeps them in bounds.
fn check_matmul(
    n: usize,
    w: &[u8],
    rows: usize,
    block_bytes: usize,
    act: &[u8],
    tokens: usize,
    out: &[f32],
) -> usize {
    assert_eq!(
        n % QK,
        0,
        "k-quant row length {n} is not a multiple of {QK}"
    );
    let nb = n / QK;
    assert!(
        w.len() >= rows * nb * block_bytes,
        "weights hold fewer than {rows} rows"
    );
    assert!(
        act.len() >= tokens * nb * Q8K_BYTES,
        "activations hold fewer than {tokens} rows"
    );
    assert!(
        out.len() >= rows * tokens,
        "output holds fewer than rows * tokens values"
    );
    nb
}

/// A micro-kernel: `out[t] = dot(weight row, activation row t)` for `t < nt` (1 to 4), with
/// `nb` super-blocks per row.
///
/// # Safety
/// `w` must be valid for reading one weight row (`nb` blocks), `act` for `nt` activation rows
/// `act_stride` bytes apart (each `nb` Q8_K blocks), and `out` for writing `nt` values; the CPU
/// must support the kernel's instruction set.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type TileFn =
    unsafe fn(nb: usize, w: *const u8, act: *const u8, act_stride: usize, nt: usize, out: *mut f32);

/// Weight bytes kept hot (in L2) while every tile of tokens sweeps over them.
///
/// Within a chunk of rows, a 4-token tile of activations (18 KB at n = 4096) stays in L1 while
/// each row's weights are unpacked once for the four tokens; the chunk's weights are then
/// re-read from L2 for the next tile rather than from memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ROW_CHUNK_BYTES: usize = 192 * 1024;

/// Tiles a matmul into 1-row x (up to) 4-token micro-kernel calls.
///
/// # Safety
/// The CPU must support the instruction set `tile` was compiled for.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tiled(
    tile: TileFn,
    block_bytes: usize,
    n: usize,
    w: &[u8],
    rows: usize,
    act: &[u8],
    tokens: usize,
    out: &mut [f32],
) {
    let nb = check_matmul(n, w, rows, block_bytes, act, tokens, out);
    let (wrow, arow) = (nb * block_bytes, nb * Q8K_BYTES);
    let row_chunk = (ROW_CHUNK_BYTES / wrow.max(1)).max(1);
    let (w, act, out) = (w.as_ptr(), act.as_ptr(), out.as_mut_ptr());
    let mut r0 = 0;
    while r0 < rows {
        let r_end = rows.min(r0 + row_chunk);
        let mut t = 0;
        while t < tokens {
            let nt = (tokens - t).min(4);
            for r in r0..r_end {
                tile(
                    nb,
                    w.add(r * wrow),
                    act.add(t * arow),
                    arow,
                    nt,
                    out.add(r * tokens + t),
                );
            }
            t += nt;
        }
        r0 = r_end;
    }
}

macro_rules! simd_matmul {
    ($name:ident, $tile:path, $block_bytes:expr) => {
        simd_matmul!("x86_64", $name, $tile, $block_bytes);
    };
    ($arch:literal, $name:ident, $tile:path, $block_bytes:expr) => {
        #[cfg(target_arch = $arch)]
        fn $name(n: usize, w: &[u8], rows: usize, act: &[u8], tokens: usize, out: &mut [f32]) {
            // SAFETY: `weight_kernel` hands this out only for an instruction set the caller
            // got from `Isa::detect`; `tiled` checks every slice length before reading.
            unsafe { tiled($tile, $block_bytes, n, w, rows, act, tokens, out) }
        }
    };
}

simd_matmul!(matmul_q4k_avx2, avx2::q4k, Q4K_BYTES);
simd_matmul!(matmul_q5k_avx2, avx2::q5k, Q5K_BYTES);
simd_matmul!(matmul_q6k_avx2, avx2::q6k, Q6K_BYTES);
simd_matmul!(matmul_q4k_avx512, avx512::q4k, Q4K_BYTES);
simd_matmul!(matmul_q5k_avx512, avx512::q5k, Q5K_BYTES);
simd_matmul!(matmul_q6k_avx512, avx512::q6k, Q6K_BYTES);
simd_matmul!("aarch64", matmul_q4k_neon_dot, neon::dot::q4k, Q4K_BYTES);
simd_matmul!("aarch64", matmul_q5k_neon_dot, neon::dot::q5k, Q5K_BYTES);
simd_matmul!("aarch64", matmul_q6k_neon_dot, neon::dot::q6k, Q6K_BYTES);
simd_matmul!(
    "aarch64",
    matmul_q4k_neon_plain,
    neon::plain::q4k,
    Q4K_BYTES
);
simd_matmul!(
    "aarch64",
    matmul_q5k_neon_plain,
    neon::plain::q5k,
    Q5K_BYTES
);
simd_matmul!(
    "aarch64",
    matmul_q6k_neon_plain,
    neon::plain::q6k,
    Q6K_BYTES
);

/// The NEON kernels for `t`: the build with `sdot` where the CPU has the dot-product extension.
#[cfg(target_arch = "aarch64")]
fn neon_matmul(t: GgmlType) -> super::MatmulFn {
    let dot = std::arch::is_aarch64_feature_detected!("dotprod");
    match (t, dot) {
        (GgmlType::Q4_K, true) => matmul_q4k_neon_dot,
        (GgmlType::Q5_K, true) => matmul_q5k_neon_dot,
        (GgmlType::Q6_K, true) => matmul_q6k_neon_dot,
        (GgmlType::Q4_K, false) => matmul_q4k_neon_plain,
        (GgmlType::Q5_K, false) => matmul_q5k_neon_plain,
        _ => matmul_q6k_neon_plain,
    }
}

fn matmul_q4k_scalar(n: usize, w: &[u8], rows: usize, act: &[u8], tokens: usize, out: &mut [f32]) {
    scalar::matmul(scalar::dot_q4k, Q4K_BYTES, n, w, rows, act, tokens, out)
}

fn matmul_q5k_scalar(n: usize, w: &[u8], rows: usize, act: &[u8], tokens: usize, out: &mut [f32]) {
    scalar::matmul(scalar::dot_q5k, Q5K_BYTES, n, w, rows, act, tokens, out)
}

fn matmul_q6k_scalar(n: usize, w: &[u8], rows: usize, act: &[u8], tokens: usize, out: &mut [f32]) {
    scalar::matmul(scalar::dot_q6k, Q6K_BYTES, n, w, rows, act, tokens, out)
}
