//! Byte layouts of the k-quant super-blocks, scale unpacking, and the scalar quantizers and
//! dequantizers.
//!
//! Blocks are read straight out of the mmap, so everything works on byte offsets rather than
//! `#[repr(C)]` structs: nothing here may assume alignment. Multi-byte fields are little-endian.

use half::f16;

/// Values per super-block.
pub(super) const QK: usize = 256;

/// Q8_K: `f32 d`, `i8 qs[256]`, `i16 bsums[16]` (each the sum of 16 consecutive quants).
pub(super) const Q8K_BYTES: usize = 292;
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;

/// Q4_K: `f16 d`, `f16 dmin`, `u8 scales[12]` (6-bit scales and mins of 8 sub-blocks of 32),
/// `u8 qs[128]`.
pub(super) const Q4K_BYTES: usize = 144;
pub(super) const Q4K_SCALES: usize = 4;
pub(super) const Q4K_QS: usize = 16;

/// Q5_K: as Q4_K with `u8 qh[32]` (the fifth bits) between the scales and `qs`.
pub(super) const Q5K_BYTES: usize = 176;
pub(super) const Q5K_SCALES: usize = 4;
pub(super) const Q5K_QH: usize = 16;
pub(super) const Q5K_QS: usize = 48;

/// Q6_K: `u8 ql[128]` (low 4 bits), `u8 qh[64]` (high 2 bits), `i8 scales[16]` (one per 16
/// values), `f16 d`.
pub(super) const Q6K_BYTES: usize = 210;
pub(super) const Q6K_QL: usize = 0;
pub(super) const Q6K_QH: usize = 128;
pub(super) const Q6K_SCALES: usize = 192;
pub(super) const Q6K_D: usize = 208;

#[inline(always)]
pub(super) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

#[inline(always)]
pub(super) fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline(always)]
pub(super) fn i16_at(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes([b[off], b[off + 1]])
}

#[inline(always)]
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// ggml's rounding for quantization: adding 1.5 * 2^23 leaves the integer part in the low
/// mantissa bits, rounded half to even. Only valid for |v| <= 2^22, which every caller
/// guarantees; reproducing it (rather than `f32::round`) keeps our quants bit-identical to
/// ggml's on ties.
#[inline(always)]
pub(super) fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits();
    (bits & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Unpacks the 12 packed bytes of Q4_K/Q5_K into `[scale0..scale7, min0..min7]` (6 bits each).
///
/// Sub-blocks 0..4 keep their scale and min in the low 6 bits of bytes 0..4 and 4..8; sub-blocks
/// 4..8 keep the low 4 bits in the nibbles of bytes 8..12 and the high 2 bits in the top bits
/// of bytes 0..8. Working on 32-bit words unpacks four sub-blocks per operation.
#[inline(always)]
pub(super) fn unpack_scales_mins(s: &[u8]) -> [u32; 4] {
    let w0 = u32_at(s, 0);
    let w1 = u32_at(s, 4);
    let w2 = u32_at(s, 8);
    let scales_lo = w0 & 0x3f3f_3f3f;
    let scales_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mins_lo = w1 & 0x3f3f_3f3f;
    let mins_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    [scales_lo, scales_hi, mins_lo, mins_hi]
}

/// The unpacked scales and mins as bytes: `[0..8]` scales, `[8..16]` mins.
#[inline(always)]
pub(super) fn scales_mins_bytes(s: &[u8]) -> [u8; 16] {
    let w = unpack_scales_mins(s);
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(w) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Inverse of [`unpack_scales_mins`] for values already clamped to 0..=63.
fn pack_scales_mins(scales: &[u8; 8], mins: &[u8; 8], out: &mut [u8]) {
    out[..12].fill(0);
    for j in 0..8 {
        let (ls, lm) = (scales[j], mins[j]);
        if j < 4 {
            out[j] = ls;
            out[j + 4] = lm;
        } else {
            out[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            out[j - 4] |= (ls >> 4) << 6;
            out[j] |= (lm >> 4) << 6;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_K

/// Quantizes to Q8_K exactly as ggml's reference does (llama.cpp's CPU backend uses the
/// reference on x86), so activations are bit-identical: the value of largest magnitude maps to
/// -127, and `d` is the reciprocal of the scale actually used.
pub(super) fn quantize_q8k(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len() % QK, 0, "row length must be a multiple of {QK}");
    let nb = x.len() / QK;
    assert_eq!(
        out.len(),
        nb * Q8K_BYTES,
        "output must hold exactly {nb} Q8_K blocks"
    );
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8K_BYTES)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let a = v.abs();
            if a > amax {
                amax = a;
                max = v;
            }
        }
        if amax == 0.0 {
            ob.fill(0);
            continue;
        }
        let iscale = -127.0f32 / max;
        let (head, rest) = ob.split_at_mut(Q8K_QS);
        let (qs, bsums) = rest.split_at_mut(QK);
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for (g, bs) in qs.chunks_exact(16).zip(bsums.chunks_exact_mut(2)) {
            let sum: i32 = g.iter().map(|&q| q as i8 as i32).sum();
            bs.copy_from_slice(&(sum as i16).to_le_bytes());
        }
        head.copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
    }
}

#[cfg(test)]
pub(super) fn dequantize_q8k(src: &[u8], out: &mut [f32]) {
    check_dequant(src, out, Q8K_BYTES);
    for (b, y) in src.chunks_exact(Q8K_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f32_at(b, 0);
        for (v, &q) in y.iter_mut().zip(&b[Q8K_QS..Q8K_QS + QK]) {
            *v = d * q as i8 as f32;
        }
    }
}

fn check_dequant(src: &[u8], out: &[f32], block_bytes: usize) {
    assert_eq!(out.len() % QK, 0, "row length must be a multiple of {QK}");
    assert!(
        src.len() >= out.len() / QK * block_bytes,
        "source holds fewer blocks than the output needs"
    );
}

// ---------------------------------------------------------------------------------------------
// Q4_K / Q5_K

/// Chooses 6-bit sub-block scales and mins for an asymmetric `nmax`-level quantization, writing
/// `d` and `dmin` at offset 0 and the packed scales at offset 4 of `block`, and the levels of
/// all 256 values into `levels`.
///
/// A plain min/max fit per sub-block (ggml searches iteratively; files written by llama.cpp are
/// read the same way either way): the sub-block's range is split into `nmax` steps, with the
/// minimum clamped to at most 0 as the format stores it as a non-negative offset.
fn quantize_asym_superblock(x: &[f32], nmax: u8, block: &mut [u8], levels: &mut [u8; QK]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
        let hi = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scales[j] = ((hi - lo) / nmax as f32).max(0.0);
        mins[j] = -lo;
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        if df > 0.0 {
            ls[j] = nearest_int(scales[j] / df).clamp(0, 63) as u8;
        }
        if dminf > 0.0 {
            lm[j] = nearest_int(mins[j] / dminf).clamp(0, 63) as u8;
        }
    }
    block[0..2].copy_from_slice(&d.to_le_bytes());
    block[2..4].copy_from_slice(&dmin.to_le_bytes());
    pack_scales_mins(&ls, &lm, &mut block[4..16]);
    for (j, (sub, lv)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        // The same products the dequantizer forms, so levels are chosen against the values
        // that will actually be reconstructed. Clamping before rounding keeps `nearest_int`
        // in its valid range when a tiny step meets a large offset.
        let step = df * ls[j] as f32;
        let offset = dminf * lm[j] as f32;
        for (l, &v) in lv.iter_mut().zip(sub) {
            *l = if step > 0.0 {
                nearest_int(((v + offset) / step).clamp(0.0, nmax as f32)) as u8
            } else {
                0
            };
        }
    }
}

pub(super) fn quantize_q4k(x: &[f32], out: &mut [u8]) {
    check_quant(x, out, Q4K_BYTES);
    let mut levels = [0u8; QK];
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4K_BYTES)) {
        quantize_asym_superblock(xb, 15, ob, &mut levels);
        let qs = &mut ob[Q4K_QS..];
        for (j, lv) in levels.chunks_exact(64).enumerate() {
            for l in 0..32 {
                qs[32 * j + l] = lv[l] | (lv[l + 32] << 4);
            }
        }
    }
}

pub(super) fn quantize_q5k(x: &[f32], out: &mut [u8]) {
    check_quant(x, out, Q5K_BYTES);
    let mut levels = [0u8; QK];
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5K_BYTES)) {
        quantize_asym_superblock(xb, 31, ob, &mut levels);
        let (qh, qs) = ob[Q5K_QH..].split_at_mut(32);
        qh.fill(0);
        for (j, lv) in levels.chunks_exact(64).enumerate() {
            for l in 0..32 {
                let (a, b) = (lv[l], lv[l + 32]);
                qs[32 * j + l] = (a & 0x0f) | ((b & 0x0f) << 4);
                qh[l] |= ((a >> 4) << (2 * j)) | ((b >> 4) << (2 * j + 1));
            }
        }
    }
}

fn check_quant(x: &[f32], out: &[u8], block_bytes: usize) {
    assert_eq!(x.len() % QK, 0, "row length must be a multiple of {QK}");
    assert_eq!(
        out.len(),
        x.len() / QK * block_bytes,
        "output must hold exactly the row's blocks"
    );
}

pub(super) fn dequantize_q4k(src: &[u8], out: &mut [f32]) {
    check_dequant(src, out, Q4K_BYTES);
    for (b, y) in src.chunks_exact(Q4K_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let sm = scales_mins_bytes(&b[Q4K_SCALES..Q4K_SCALES + 12]);
        let qs = &b[Q4K_QS..Q4K_QS + 128];
        for j in 0..4 {
            let (d1, m1) = (d * sm[2 * j] as f32, dmin * sm[8 + 2 * j] as f32);
            let (d2, m2) = (d * sm[2 * j + 1] as f32, dmin * sm[9 + 2 * j] as f32);
            let q = &qs[32 * j..32 * j + 32];
            let (lo, hi) = y[64 * j..64 * j + 64].split_at_mut(32);
            for l in 0..32 {
                lo[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                hi[l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub(super) fn dequantize_q5k(src: &[u8], out: &mut [f32]) {
    check_dequant(src, out, Q5K_BYTES);
    for (b, y) in src.chunks_exact(Q5K_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let sm = scales_mins_bytes(&b[Q5K_SCALES..Q5K_SCALES + 12]);
        let qh = &b[Q5K_QH..Q5K_QH + 32];
        let qs = &b[Q5K_QS..Q5K_QS + 128];
        for j in 0..4 {
            let (d1, m1) = (d * sm[2 * j] as f32, dmin * sm[8 + 2 * j] as f32);
            let (d2, m2) = (d * sm[2 * j + 1] as f32, dmin * sm[9 + 2 * j] as f32);
            let q = &qs[32 * j..32 * j + 32];
            let (lo, hi) = y[64 * j..64 * j + 64].split_at_mut(32);
            for l in 0..32 {
                let h_lo = ((qh[l] >> (2 * j)) & 1) << 4;
                let h_hi = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                lo[l] = d1 * ((q[l] & 0x0f) | h_lo) as f32 - m1;
                hi[l] = d2 * ((q[l] >> 4) | h_hi) as f32 - m2;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K

/// Symmetric 6-bit quantization: each group of 16 gets a scale mapping its largest-magnitude
/// value to -32 (the one level without a positive twin), and the 16 group scales are themselves
/// quantized to i8 the same way against the largest of them, as ggml does.
pub(super) fn quantize_q6k(x: &[f32], out: &mut [u8]) {
    check_quant(x, out, Q6K_BYTES);
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q6K_BYTES)) {
        let mut group_scales = [0f32; 16];
        for (s, g) in group_scales.iter_mut().zip(xb.chunks_exact(16)) {
            let mut max = 0.0f32;
            let mut amax = 0.0f32;
            for &v in g {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            *s = if amax > 0.0 { max / -32.0 } else { 0.0 };
        }
        let mut max_scale = 0.0f32;
        let mut max_abs = 0.0f32;
        for &s in &group_scales {
            if s.abs() > max_abs {
                max_abs = s.abs();
                max_scale = s;
            }
        }
        let mut sc = [0i8; 16];
        let mut levels = [32u8; QK];
        let d = if max_abs > 0.0 {
            let iscale = -128.0f32 / max_scale;
            for (q, &s) in sc.iter_mut().zip(&group_scales) {
                *q = nearest_int(iscale * s).clamp(-128, 127) as i8;
            }
            f16::from_f32(1.0 / iscale)
        } else {
            f16::ZERO
        };
        let df = d.to_f32();
        for (g, (xs, lv)) in xb
            .chunks_exact(16)
            .zip(levels.chunks_exact_mut(16))
            .enumerate()
        {
            let step = df * sc[g] as f32;
            if step == 0.0 {
                continue;
            }
            for (l, &v) in lv.iter_mut().zip(xs) {
                *l = (nearest_int((v / step).clamp(-32.0, 31.0)) + 32) as u8;
            }
        }
        let (ql, rest) = ob.split_at_mut(Q6K_QH);
        let (qh, rest) = rest.split_at_mut(64);
        let (scales, dbytes) = rest.split_at_mut(16);
        for (s, &v) in scales.iter_mut().zip(&sc) {
            *s = v as u8;
        }
        dbytes.copy_from_slice(&d.to_le_bytes());
        for h in 0..2 {
            let lv = &levels[128 * h..128 * h + 128];
            let ql = &mut ql[64 * h..64 * h + 64];
            let qh = &mut qh[32 * h..32 * h + 32];
            for l in 0..32 {
                let (a, b, c, e) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
                ql[l] = (a & 0x0f) | ((c & 0x0f) << 4);
                ql[l + 32] = (b & 0x0f) | ((e & 0x0f) << 4);
                qh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
            }
        }
    }
}

pub(super) fn dequantize_q6k(src: &[u8], out: &mut [f32]) {
    check_dequant(src, out, Q6K_BYTES);
    for (b, y) in src.chunks_exact(Q6K_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, Q6K_D);
        let scales = &b[Q6K_SCALES..Q6K_SCALES + 16];
        for h in 0..2 {
            let ql = &b[Q6K_QL + 64 * h..Q6K_QL + 64 * h + 64];
            let qh = &b[Q6K_QH + 32 * h..Q6K_QH + 32 * h + 32];
            let sc = &scales[8 * h..8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
    }
}
