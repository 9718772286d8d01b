//! AVX2 kernels: one weight row against up to four activation rows at a time, so each
//! super-block's weights are unpacked once and reused for every token of the tile.
//!
//! Products are formed with `maddubs` (unsigned weight levels times signed activation quants,
//! pairs summed into i16: at most 2 * 63 * 127, so no saturation), widened and weighted by the
//! sub-block scales with `madd`, and summed exactly in i32 lanes per super-block; only then is a
//! super-block's sum scaled and accumulated in f32, as ggml does.
//!
//! Every function here requires AVX2, FMA and F16C; callers must have checked them
//! ([`crate::quant::Isa::detect`]) and pass pointers valid for the sizes documented on
//! [`super::TileFn`].

use std::arch::x86_64::*;

use super::blocks::*;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The two consecutive f16 values at `p`, as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_one(p: *const u8) -> f32 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32));
    _mm_cvtss_f32(v)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// A `vpshufb` mask that broadcasts i16 word `k` of each 128-bit lane across that lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn word_splat(k: i16) -> __m256i {
    _mm256_set1_epi16(0x0100 + 0x0202 * k)
}

/// As [`word_splat`], but word `lo` in the low lane and word `hi` in the high lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn word_splat2(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(
        _mm_set1_epi16(0x0100 + 0x0202 * hi),
        _mm_set1_epi16(0x0100 + 0x0202 * lo),
    )
}

/// The unpacked Q4_K/Q5_K scales (as i16, in both 128-bit lanes) and mins (as i16).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales_mins(p: *const u8) -> (__m256i, __m128i) {
    let s = unpack_scales_mins(std::slice::from_raw_parts(p, 12));
    let packed = _mm_set_epi32(s[3] as i32, s[2] as i32, s[1] as i32, s[0] as i32);
    let wide = _mm256_cvtepu8_epi16(packed);
    let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(wide));
    (scales, _mm256_extracti128_si256(wide, 1))
}

/// `sum_j mins[j] * (activation sum of sub-block j)` in four i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mins_dot(mins: __m128i, ab: *const u8) -> __m256i {
    let bs = load256(ab.add(Q8K_BSUMS));
    // Pairs of 16-value sums give the 32-value sub-block sums (|sum| <= 4064, fits i16).
    let sub = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    _mm256_zextsi128_si256(_mm_madd_epi16(mins, sub))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_tile<const NT: usize>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); NT];
    for b in 0..nb {
        let wb = w.add(b * Q4K_BYTES);
        let (dw, dminw) = f16_pair(wb);
        let (scales, mins) = scales_mins(wb.add(Q4K_SCALES));
        let mut sumi = [_mm256_setzero_si256(); NT];
        for j in 0..4 {
            let qv = load256(wb.add(Q4K_QS + 32 * j));
            let lo = _mm256_and_si256(qv, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            let sc_lo = _mm256_shuffle_epi8(scales, word_splat(2 * j as i16));
            let sc_hi = _mm256_shuffle_epi8(scales, word_splat(2 * j as i16 + 1));
            for (t, s) in sumi.iter_mut().enumerate() {
                let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 64 * j);
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(q8)), sc_lo);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(q8.add(32))), sc_hi);
                *s = _mm256_add_epi32(*s, _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let ab = act.add(t * act_stride + b * Q8K_BYTES);
            let da = (ab as *const f32).read_unaligned();
            let m = mins_dot(mins, ab);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(sumi[t]), *a);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(-dminw * da), _mm256_cvtepi32_ps(m), *a);
        }
    }
    for (t, a) in acc.iter().enumerate() {
        *out.add(t) = hsum256(*a);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5k_tile<const NT: usize>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    let m4 = _mm256_set1_epi8(0x0f);
    let m16 = _mm256_set1_epi8(0x10);
    let mut acc = [_mm256_setzero_ps(); NT];
    for b in 0..nb {
        let wb = w.add(b * Q5K_BYTES);
        let (dw, dminw) = f16_pair(wb);
        let (scales, mins) = scales_mins(wb.add(Q5K_SCALES));
        // Bits 2j and 2j+1 of each qh byte are the fifth bits of sub-blocks 2j and 2j+1; shifting
        // the whole vector right by 2 per pair brings them to bits 0 and 1 (16-bit shifts pull
        // the neighbouring byte's bits only into bits 6..7, which are never read).
        let mut qh = load256(wb.add(Q5K_QH));
        let mut sumi = [_mm256_setzero_si256(); NT];
        for j in 0..4 {
            let qv = load256(wb.add(Q5K_QS + 32 * j));
            let lo = _mm256_or_si256(
                _mm256_and_si256(qv, m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 4), m16),
            );
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4),
                _mm256_and_si256(_mm256_slli_epi16(qh, 3), m16),
            );
            qh = _mm256_srli_epi16(qh, 2);
            let sc_lo = _mm256_shuffle_epi8(scales, word_splat(2 * j as i16));
            let sc_hi = _mm256_shuffle_epi8(scales, word_splat(2 * j as i16 + 1));
            for (t, s) in sumi.iter_mut().enumerate() {
                let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 64 * j);
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(q8)), sc_lo);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(q8.add(32))), sc_hi);
                *s = _mm256_add_epi32(*s, _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let ab = act.add(t * act_stride + b * Q8K_BYTES);
            let da = (ab as *const f32).read_unaligned();
            let m = mins_dot(mins, ab);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(sumi[t]), *a);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(-dminw * da), _mm256_cvtepi32_ps(m), *a);
        }
    }
    for (t, a) in acc.iter().enumerate() {
        *out.add(t) = hsum256(*a);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_tile<const NT: usize>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); NT];
    for b in 0..nb {
        let wb = w.add(b * Q6K_BYTES);
        let d = f16_one(wb.add(Q6K_D));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(Q6K_SCALES) as *const __m128i));
        let mut sumi = [_mm256_setzero_si256(); NT];
        for h in 0..2 {
            // Scales of this half (groups 8h..8h+8) as i16 in both lanes, so one shuffle puts
            // group 2g's scale in the low lane and 2g+1's in the high lane.
            let half = if h == 0 {
                _mm256_castsi256_si128(sc16)
            } else {
                _mm256_extracti128_si256(sc16, 1)
            };
            let scales = _mm256_broadcastsi128_si256(half);
            let qla = load256(wb.add(Q6K_QL + 64 * h));
            let qlb = load256(wb.add(Q6K_QL + 64 * h + 32));
            let qh = load256(wb.add(Q6K_QH + 32 * h));
            // 16-bit shifts move bits across the byte boundary only outside the 0x30 mask.
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(qla, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(qlb, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(qla, 4), m4),
                    _mm256_and_si256(qh, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(qlb, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                ),
            ];
            for (g, qg) in q.iter().enumerate() {
                let sc = _mm256_shuffle_epi8(scales, word_splat2(2 * g as i16, 2 * g as i16 + 1));
                for (t, s) in sumi.iter_mut().enumerate() {
                    let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 128 * h + 32 * g);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*qg, load256(q8)), sc);
                    *s = _mm256_add_epi32(*s, p);
                }
            }
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let ab = act.add(t * act_stride + b * Q8K_BYTES);
            let da = (ab as *const f32).read_unaligned();
            // Remove the +32 level offset: 32 * sum_g sc_g * bsum_g.
            let offset = _mm256_madd_epi16(load256(ab.add(Q8K_BSUMS)), sc16);
            let s = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(offset, 5));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(s), *a);
        }
    }
    for (t, a) in acc.iter().enumerate() {
        *out.add(t) = hsum256(*a);
    }
}

tile_dispatch!(q4k, q4k_tile);
tile_dispatch!(q5k, q5k_tile);
tile_dispatch!(q6k, q6k_tile);
