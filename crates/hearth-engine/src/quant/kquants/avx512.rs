//! AVX-512 (F/BW/VL) kernels, structured like the AVX2 ones but with 64 values per vector.
//!
//! The 4-bit formats store sub-blocks 2j and 2j+1 as the low and high nibbles of the same 32
//! bytes; broadcasting those bytes to both 256-bit halves and shifting the upper half by 4
//! (per-lane variable shift) yields the 64 levels in value order, so they line up with one
//! 64-byte load of activation quants. Q6_K's 64-byte `ql` rows likewise give 64 consecutive
//! values per vector.
//!
//! Every function here requires AVX-512 F/BW/VL plus AVX2, FMA and F16C; callers must have
//! checked them ([`crate::quant::Isa::detect`]) and pass pointers valid for the sizes documented
//! on [`super::TileFn`].

use std::arch::x86_64::*;

use super::blocks::*;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load512(p: *const u8) -> __m512i {
    _mm512_loadu_si512(p as *const _)
}

/// The 32 bytes at `p` in both 256-bit halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn load256x2(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i))
}

/// `lo` in the 16-bit lanes of the lower 256 bits, `hi` in the upper.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn halves_epi16(lo: i16, hi: i16) -> __m512i {
    _mm512_inserti64x4(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi), 1)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn f16_one(p: *const u8) -> f32 {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32));
    _mm_cvtss_f32(v)
}

/// The unpacked Q4_K/Q5_K scales (as i16, in all four 128-bit lanes) and mins (as i16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn scales_mins(p: *const u8) -> (__m512i, __m128i) {
    let s = unpack_scales_mins(std::slice::from_raw_parts(p, 12));
    let packed = _mm_set_epi32(s[3] as i32, s[2] as i32, s[1] as i32, s[0] as i32);
    let wide = _mm256_cvtepu8_epi16(packed);
    let scales = _mm512_broadcast_i32x4(_mm256_castsi256_si128(wide));
    (scales, _mm256_extracti128_si256(wide, 1))
}

/// A `vpshufb` mask putting word `lo` of each 128-bit lane across the lower 256 bits and word
/// `hi` across the upper.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn word_splat2(lo: i16, hi: i16) -> __m512i {
    halves_epi16(0x0100 + 0x0202 * lo, 0x0100 + 0x0202 * hi)
}

/// `sum_j mins[j] * (activation sum of sub-block j)` in four i32 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn mins_dot(mins: __m128i, ab: *const u8) -> __m128i {
    let bs = _mm256_loadu_si256(ab.add(Q8K_BSUMS) as *const __m256i);
    let sub = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    _mm_madd_epi16(mins, sub)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn finish(acc: &[__m512], acc_min: &[__m128], out: *mut f32) {
    for (t, (a, m)) in acc.iter().zip(acc_min).enumerate() {
        let m = _mm_add_ps(*m, _mm_movehl_ps(*m, *m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        *out.add(t) = _mm512_reduce_add_ps(*a) + _mm_cvtss_f32(m);
    }
}

/// Shared body of Q4_K and Q5_K: `HIGH` adds the fifth bit from `qh`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn q45k_tile<const NT: usize, const HIGH: bool>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    let (block_bytes, qs_off) = if HIGH {
        (Q5K_BYTES, Q5K_QS)
    } else {
        (Q4K_BYTES, Q4K_QS)
    };
    let m4 = _mm512_set1_epi8(0x0f);
    let m16 = _mm512_set1_epi8(0x10);
    let nibble_shift = halves_epi16(0, 4);
    // The fifth bit of sub-block 2j is bit 2j of qh, of 2j+1 bit 2j+1: after shifting qh right
    // by 2j, move bit 0 (lower half) or bit 1 (upper half) to bit 4.
    let high_shift = halves_epi16(4, 3);
    let mut acc = [_mm512_setzero_ps(); NT];
    let mut acc_min = [_mm_setzero_ps(); NT];
    for b in 0..nb {
        let wb = w.add(b * block_bytes);
        let (dw, dminw) = f16_pair(wb);
        let (scales, mins) = scales_mins(wb.add(4));
        let mut qh = if HIGH {
            load256x2(wb.add(Q5K_QH))
        } else {
            _mm512_setzero_si512()
        };
        let mut sumi = [_mm512_setzero_si512(); NT];
        for j in 0..4 {
            let qv = load256x2(wb.add(qs_off + 32 * j));
            let mut q = _mm512_and_si512(_mm512_srlv_epi16(qv, nibble_shift), m4);
            if HIGH {
                let h = _mm512_and_si512(_mm512_sllv_epi16(qh, high_shift), m16);
                q = _mm512_or_si512(q, h);
                qh = _mm512_srli_epi16(qh, 2);
            }
            let sc = _mm512_shuffle_epi8(scales, word_splat2(2 * j as i16, 2 * j as i16 + 1));
            for (t, s) in sumi.iter_mut().enumerate() {
                let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 64 * j);
                let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q, load512(q8)), sc);
                *s = _mm512_add_epi32(*s, p);
            }
        }
        for t in 0..NT {
            let ab = act.add(t * act_stride + b * Q8K_BYTES);
            let da = (ab as *const f32).read_unaligned();
            let m = mins_dot(mins, ab);
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dw * da), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
            acc_min[t] = _mm_fmadd_ps(_mm_set1_ps(-dminw * da), _mm_cvtepi32_ps(m), acc_min[t]);
        }
    }
    finish(&acc, &acc_min, out);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q4k_tile<const NT: usize>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    q45k_tile::<NT, false>(nb, w, act, act_stride, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q5k_tile<const NT: usize>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    q45k_tile::<NT, true>(nb, w, act, act_stride, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q6k_tile<const NT: usize>(
    nb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    out: *mut f32,
) {
    let m4 = _mm512_set1_epi8(0x0f);
    let m30 = _mm512_set1_epi8(0x30);
    // Lower half: levels 0..32 of the 128-value half (high bits 0..1 of qh) then 32..64 (bits
    // 2..3); the nibble-high vector holds 64..96 (bits 4..5) and 96..128 (bits 6..7).
    let shl_a = halves_epi16(4, 2);
    let shr_b = halves_epi16(0, 2);
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        let wb = w.add(b * Q6K_BYTES);
        let d = f16_one(wb.add(Q6K_D));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(Q6K_SCALES) as *const __m128i));
        let sc512 = _mm512_castsi256_si512(sc16);
        let mut sumi = [_mm512_setzero_si512(); NT];
        for h in 0..2 {
            let ql = load512(wb.add(Q6K_QL + 64 * h));
            let qh = load256x2(wb.add(Q6K_QH + 32 * h));
            let q = [
                _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, shl_a), m30),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, shr_b), m30),
                ),
            ];
            for (k, qk) in q.iter().enumerate() {
                // 128-bit lane i covers group 8h + 4k + i.
                let g = (8 * h + 4 * k) as i16;
                let idx = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_set_m128i(
                        _mm_set1_epi16(g + 1),
                        _mm_set1_epi16(g),
                    )),
                    _mm256_set_m128i(_mm_set1_epi16(g + 3), _mm_set1_epi16(g + 2)),
                    1,
                );
                let sc = _mm512_permutexvar_epi16(idx, sc512);
                for (t, s) in sumi.iter_mut().enumerate() {
                    let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 128 * h + 64 * k);
                    let p = _mm512_madd_epi16(_mm512_maddubs_epi16(*qk, load512(q8)), sc);
                    *s = _mm512_add_epi32(*s, p);
                }
            }
        }
        for t in 0..NT {
            let ab = act.add(t * act_stride + b * Q8K_BYTES);
            let da = (ab as *const f32).read_unaligned();
            let bs = _mm256_loadu_si256(ab.add(Q8K_BSUMS) as *const __m256i);
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            let offset = _mm512_inserti64x4(_mm512_setzero_si512(), offset, 0);
            let s = _mm512_sub_epi32(sumi[t], offset);
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * da), _mm512_cvtepi32_ps(s), acc[t]);
        }
    }
    for (t, a) in acc.iter().enumerate() {
        *out.add(t) = _mm512_reduce_add_ps(*a);
    }
}

tile_dispatch!(q4k, q4k_tile);
tile_dispatch!(q5k, q5k_tile);
tile_dispatch!(q6k, q6k_tile);
