//! Portable dot products of k-quant weights with Q8_K activations: the reference the SIMD
//! kernels are tested against.
//!
//! Like ggml, each super-block's products are summed exactly in integers (per sub-block, then
//! weighted by the 6- or 8-bit sub-block scales); only the per-super-block results are scaled
//! by `d_weight * d_activation` and accumulated in f32. The Q4_K/Q5_K min term uses the
//! activation's precomputed 16-value sums, so it costs 8 multiplies per super-block.

use super::blocks::*;

#[inline(always)]
fn q8(a: &[u8], i: usize) -> i32 {
    a[Q8K_QS + i] as i8 as i32
}

/// `sum_j mins[j] * (sum of the activation quants of sub-block j)`.
#[inline(always)]
fn mins_dot(mins: &[u8], ab: &[u8]) -> i32 {
    (0..8)
        .map(|j| {
            let pair =
                i16_at(ab, Q8K_BSUMS + 4 * j) as i32 + i16_at(ab, Q8K_BSUMS + 4 * j + 2) as i32;
            mins[j] as i32 * pair
        })
        .sum()
}

pub(super) fn dot_q4k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (wb, ab) in w
        .chunks_exact(Q4K_BYTES)
        .zip(a.chunks_exact(Q8K_BYTES))
        .take(nb)
    {
        let sm = scales_mins_bytes(&wb[Q4K_SCALES..Q4K_SCALES + 12]);
        let qs = &wb[Q4K_QS..Q4K_QS + 128];
        let mut sumi = 0i32;
        for j in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * j + l];
                lo += (q & 0x0f) as i32 * q8(ab, 64 * j + l);
                hi += (q >> 4) as i32 * q8(ab, 64 * j + 32 + l);
            }
            sumi += sm[2 * j] as i32 * lo + sm[2 * j + 1] as i32 * hi;
        }
        let summ = mins_dot(&sm[8..], ab);
        let da = f32_at(ab, 0);
        acc += f16_at(wb, 0) * da * sumi as f32;
        acc_min += f16_at(wb, 2) * da * summ as f32;
    }
    acc - acc_min
}

pub(super) fn dot_q5k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (wb, ab) in w
        .chunks_exact(Q5K_BYTES)
        .zip(a.chunks_exact(Q8K_BYTES))
        .take(nb)
    {
        let sm = scales_mins_bytes(&wb[Q5K_SCALES..Q5K_SCALES + 12]);
        let qh = &wb[Q5K_QH..Q5K_QH + 32];
        let qs = &wb[Q5K_QS..Q5K_QS + 128];
        let mut sumi = 0i32;
        for j in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * j + l];
                let h_lo = ((qh[l] >> (2 * j)) & 1) << 4;
                let h_hi = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                lo += ((q & 0x0f) | h_lo) as i32 * q8(ab, 64 * j + l);
                hi += ((q >> 4) | h_hi) as i32 * q8(ab, 64 * j + 32 + l);
            }
            sumi += sm[2 * j] as i32 * lo + sm[2 * j + 1] as i32 * hi;
        }
        let summ = mins_dot(&sm[8..], ab);
        let da = f32_at(ab, 0);
        acc += f16_at(wb, 0) * da * sumi as f32;
        acc_min += f16_at(wb, 2) * da * summ as f32;
    }
    acc - acc_min
}

pub(super) fn dot_q6k(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    for (wb, ab) in w
        .chunks_exact(Q6K_BYTES)
        .zip(a.chunks_exact(Q8K_BYTES))
        .take(nb)
    {
        let scales = &wb[Q6K_SCALES..Q6K_SCALES + 16];
        // Levels are stored offset by +32; the offset's contribution is 32 * sum_g sc_g *
        // bsum_g, which the activation's group sums give directly.
        let mut sums = [0i32; 16];
        for h in 0..2 {
            let ql = &wb[Q6K_QL + 64 * h..Q6K_QL + 64 * h + 64];
            let qh = &wb[Q6K_QH + 32 * h..Q6K_QH + 32 * h + 32];
            let base = 128 * h;
            for l in 0..32 {
                let g = 8 * h + l / 16;
                let q1 = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                let q2 = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                let q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                let q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                sums[g] += q1 as i32 * q8(ab, base + l);
                sums[g + 2] += q2 as i32 * q8(ab, base + 32 + l);
                sums[g + 4] += q3 as i32 * q8(ab, base + 64 + l);
                sums[g + 6] += q4 as i32 * q8(ab, base + 96 + l);
            }
        }
        let mut sumi = 0i32;
        for (g, &s) in sums.iter().enumerate() {
            let bsum = i16_at(ab, Q8K_BSUMS + 2 * g) as i32;
            sumi += scales[g] as i8 as i32 * (s - 32 * bsum);
        }
        acc += f16_at(wb, Q6K_D) * f32_at(ab, 0) * sumi as f32;
    }
    acc
}

/// Runs `dot` over every (row, token) pair; the scalar kernels favour clarity over tiling.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dot: fn(usize, &[u8], &[u8]) -> f32,
    block_bytes: usize,
    n: usize,
    w: &[u8],
    rows: usize,
    act: &[u8],
    tokens: usize,
    out: &mut [f32],
) {
    let nb = super::check_matmul(n, w, rows, block_bytes, act, tokens, out);
    let (wrow, arow) = (nb * block_bytes, nb * Q8K_BYTES);
    for r in 0..rows {
        let wr = &w[r * wrow..(r + 1) * wrow];
        for t in 0..tokens {
            out[r * tokens + t] = dot(nb, wr, &act[t * arow..(t + 1) * arow]);
        }
    }
}
