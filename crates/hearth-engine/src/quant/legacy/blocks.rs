//! Block layouts of the legacy formats, and their scalar quantizers and dequantizers.
//!
//! The quantizers are plain round-to-nearest, like ggml's reference ones, so files written from
//! them hold what llama.cpp's own tools would write. Every block stores its scale as f16 and
//! the quants are computed from the f32 scale before rounding it, as ggml does.

use half::{bf16, f16};

/// Values per block in every legacy format.
pub const QK: usize = 32;

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;
pub const Q8_1_BYTES: usize = 36;

#[inline]
pub fn rd_f16(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

#[inline]
fn wr_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

#[inline]
pub fn rd_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn abs_max(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// The value of largest magnitude, keeping its sign (the first one on ties).
fn signed_max(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Quantizers. `x.len()` is a multiple of 32 and `out` holds exactly the blocks.

pub fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
        let d = signed_max(xb) / -8.0;
        let id = inv(d);
        wr_f16(ob, 0, d);
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            ob[2 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
        }
    }
}

pub fn quantize_q4_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = inv(d);
        wr_f16(ob, 0, d);
        wr_f16(ob, 2, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
        for j in 0..16 {
            ob[4 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
        }
    }
}

pub fn quantize_q5_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5_0_BYTES)) {
        let d = signed_max(xb) / -16.0;
        let id = inv(d);
        wr_f16(ob, 0, d);
        let q = |v: f32| ((v * id + 16.5) as i32).clamp(0, 31) as u32;
        let mut qh = 0u32;
        for j in 0..16 {
            let (lo, hi) = (q(xb[j]), q(xb[j + 16]));
            ob[6 + j] = ((lo & 15) | ((hi & 15) << 4)) as u8;
            qh |= ((lo >> 4) << j) | ((hi >> 4) << (j + 16));
        }
        ob[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

pub fn quantize_q5_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = inv(d);
        wr_f16(ob, 0, d);
        wr_f16(ob, 2, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 31) as u32;
        let mut qh = 0u32;
        for j in 0..16 {
            let (lo, hi) = (q(xb[j]), q(xb[j + 16]));
            ob[8 + j] = ((lo & 15) | ((hi & 15) << 4)) as u8;
            qh |= ((lo >> 4) << j) | ((hi >> 4) << (j + 16));
        }
        ob[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Returns the sum of the quants, which Q8_1 also stores.
///
/// Follows llama.cpp's x86 activation quantizer rather than its portable reference: the
/// inverse scale is `127 / amax` and halves round to even. Matching it bit for bit keeps the
/// 8-bit activations, and so the logits, the same as llama.cpp's on the same input.
fn quantize_q8_block(xb: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = abs_max(xb);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(xb) {
        let v = ((v * id).round_ties_even() as i32).clamp(-128, 127);
        sum += v;
        *q = v as i8 as u8;
    }
    (d, sum)
}

pub fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let (d, _) = quantize_q8_block(xb, &mut ob[2..]);
        wr_f16(ob, 0, d);
    }
}

pub fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_1_BYTES)) {
        let (d, sum) = quantize_q8_block(xb, &mut ob[4..]);
        wr_f16(ob, 0, d);
        wr_f16(ob, 2, d * sum as f32);
    }
}

pub fn quantize_f32(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn quantize_f16(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

pub fn quantize_bf16(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantizers. `out.len()` values are expanded from the front of `src`.

/// Element `j` of a block's 4-bit quants: low nibbles hold the first half, high the second.
#[inline]
pub fn nibble(qs: &[u8], j: usize) -> i32 {
    if j < 16 {
        (qs[j] & 15) as i32
    } else {
        (qs[j - 16] >> 4) as i32
    }
}

#[inline]
pub fn fifth_bit(qh: u32, j: usize) -> i32 {
    (((qh >> j) & 1) << 4) as i32
}

pub fn dequantize_q4_0(src: &[u8], out: &mut [f32]) {
    for (b, ob) in src.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for (j, o) in ob.iter_mut().enumerate() {
            *o = (nibble(&b[2..], j) - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(src: &[u8], out: &mut [f32]) {
    for (b, ob) in src.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
        for (j, o) in ob.iter_mut().enumerate() {
            *o = nibble(&b[4..], j) as f32 * d + m;
        }
    }
}

pub fn dequantize_q5_0(src: &[u8], out: &mut [f32]) {
    for (b, ob) in src.chunks_exact(Q5_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        let qh = rd_u32(b, 2);
        for (j, o) in ob.iter_mut().enumerate() {
            *o = ((nibble(&b[6..], j) | fifth_bit(qh, j)) - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(src: &[u8], out: &mut [f32]) {
    for (b, ob) in src.chunks_exact(Q5_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
        let qh = rd_u32(b, 4);
        for (j, o) in ob.iter_mut().enumerate() {
            *o = (nibble(&b[8..], j) | fifth_bit(qh, j)) as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(src: &[u8], out: &mut [f32]) {
    for (b, ob) in src.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for (o, &q) in ob.iter_mut().zip(&b[2..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

/// Activations are never expanded by the engine; the tests read them back.
#[cfg(test)]
pub fn dequantize_q8_1(src: &[u8], out: &mut [f32]) {
    for (b, ob) in src.chunks_exact(Q8_1_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for (o, &q) in ob.iter_mut().zip(&b[4..]) {
            *o = q as i8 as f32 * d;
        }
    }
}

pub fn dequantize_f32(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

pub fn dequantize_f16(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

pub fn dequantize_bf16(src: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}
