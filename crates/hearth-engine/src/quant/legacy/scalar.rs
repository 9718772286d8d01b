//! Portable kernels: the reference the SIMD kernels are tested against.
//!
//! Each block's integer dot product is exact; it is scaled in f32 and summed block by block in
//! the order ggml's scalar code uses.

use super::blocks::*;

/// Dot product of one weight row with one activation row, `nb` blocks (or values) long.
type RowDot = fn(w: &[u8], a: &[u8], nb: usize) -> f32;

#[allow(clippy::too_many_arguments)]
fn matmul_with(
    dot: RowDot,
    w_bytes: usize,
    a_bytes: usize,
    per: usize,
    n: usize,
    w: &[u8],
    rows: usize,
    act: &[u8],
    tokens: usize,
    out: &mut [f32],
) {
    let nb = n / per;
    let (wrow, arow) = (nb * w_bytes, nb * a_bytes);
    debug_assert!(w.len() >= rows * wrow && act.len() >= tokens * arow);
    debug_assert!(out.len() >= rows * tokens);
    for r in 0..rows {
        let wr = &w[r * wrow..(r + 1) * wrow];
        for t in 0..tokens {
            out[r * tokens + t] = dot(wr, &act[t * arow..(t + 1) * arow], nb);
        }
    }
}

fn dot_q4_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut sum = 0.0f32;
    for b in 0..nb {
        let (wb, ab) = (&w[b * Q4_0_BYTES..], &a[b * Q8_0_BYTES..]);
        let sumi: i32 = (0..QK)
            .map(|j| (nibble(&wb[2..], j) - 8) * ab[2 + j] as i8 as i32)
            .sum();
        sum += sumi as f32 * (rd_f16(wb, 0) * rd_f16(ab, 0));
    }
    sum
}

fn dot_q4_1(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut sum = 0.0f32;
    for b in 0..nb {
        let (wb, ab) = (&w[b * Q4_1_BYTES..], &a[b * Q8_1_BYTES..]);
        let sumi: i32 = (0..QK)
            .map(|j| nibble(&wb[4..], j) * ab[4 + j] as i8 as i32)
            .sum();
        sum += (rd_f16(wb, 0) * rd_f16(ab, 0)) * sumi as f32 + rd_f16(wb, 2) * rd_f16(ab, 2);
    }
    sum
}

fn dot_q5_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut sum = 0.0f32;
    for b in 0..nb {
        let (wb, ab) = (&w[b * Q5_0_BYTES..], &a[b * Q8_0_BYTES..]);
        let qh = rd_u32(wb, 2);
        let sumi: i32 = (0..QK)
            .map(|j| ((nibble(&wb[6..], j) | fifth_bit(qh, j)) - 16) * ab[2 + j] as i8 as i32)
            .sum();
        sum += sumi as f32 * (rd_f16(wb, 0) * rd_f16(ab, 0));
    }
    sum
}

fn dot_q5_1(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut sum = 0.0f32;
    for b in 0..nb {
        let (wb, ab) = (&w[b * Q5_1_BYTES..], &a[b * Q8_1_BYTES..]);
        let qh = rd_u32(wb, 4);
        let sumi: i32 = (0..QK)
            .map(|j| (nibble(&wb[8..], j) | fifth_bit(qh, j)) * ab[4 + j] as i8 as i32)
            .sum();
        sum += (rd_f16(wb, 0) * rd_f16(ab, 0)) * sumi as f32 + rd_f16(wb, 2) * rd_f16(ab, 2);
    }
    sum
}

fn dot_q8_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
    let mut sum = 0.0f32;
    for b in 0..nb {
        let (wb, ab) = (&w[b * Q8_0_BYTES..], &a[b * Q8_0_BYTES..]);
        let sumi: i32 = wb[2..Q8_0_BYTES]
            .iter()
            .zip(&ab[2..Q8_0_BYTES])
            .map(|(&x, &y)| x as i8 as i32 * y as i8 as i32)
            .sum();
        sum += sumi as f32 * (rd_f16(wb, 0) * rd_f16(ab, 0));
    }
    sum
}

fn dot_f32(w: &[u8], a: &[u8], n: usize) -> f32 {
    let f = |b: &[u8], i: usize| {
        f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    };
    (0..n).map(|i| f(w, i) * f(a, i)).sum()
}

/// ggml sums the f16 products in double in its scalar code.
fn dot_f16(w: &[u8], a: &[u8], n: usize) -> f32 {
    (0..n)
        .map(|i| (rd_f16(w, 2 * i) * rd_f16(a, 2 * i)) as f64)
        .sum::<f64>() as f32
}

fn rd_bf16(b: &[u8], off: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[off], b[off + 1]]) as u32) << 16)
}

fn dot_bf16(w: &[u8], a: &[u8], n: usize) -> f32 {
    (0..n)
        .map(|i| (rd_bf16(w, 2 * i) * rd_bf16(a, 2 * i)) as f64)
        .sum::<f64>() as f32
}

macro_rules! matmul_fn {
    ($name:ident, $dot:ident, $w:expr, $a:expr, $per:expr) => {
        pub fn $name(n: usize, w: &[u8], rows: usize, act: &[u8], tokens: usize, out: &mut [f32]) {
            matmul_with($dot, $w, $a, $per, n, w, rows, act, tokens, out)
        }
    };
}

matmul_fn!(matmul_q4_0, dot_q4_0, Q4_0_BYTES, Q8_0_BYTES, QK);
matmul_fn!(matmul_q4_1, dot_q4_1, Q4_1_BYTES, Q8_1_BYTES, QK);
matmul_fn!(matmul_q5_0, dot_q5_0, Q5_0_BYTES, Q8_0_BYTES, QK);
matmul_fn!(matmul_q5_1, dot_q5_1, Q5_1_BYTES, Q8_1_BYTES, QK);
matmul_fn!(matmul_q8_0, dot_q8_0, Q8_0_BYTES, Q8_0_BYTES, QK);
matmul_fn!(matmul_f32, dot_f32, 4, 4, 1);
matmul_fn!(matmul_f16, dot_f16, 2, 2, 1);
matmul_fn!(matmul_bf16, dot_bf16, 2, 2, 1);
