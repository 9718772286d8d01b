//! AVX2 + FMA + F16C kernels. The float formats live only here: AVX-512 did not beat them.

x86_kernels!(features: "avx2,fma,f16c", avx512: false, decode_rows: 1, prefill_rows: 2);

// Float formats: weights and activations share the element type.

trait FloatFmt {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn get(p: *const u8, i: usize) -> f32;
}
struct F32;
struct F16;
struct Bf16;
impl FloatFmt for F32 {
    const BYTES: usize = 4;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        (p as *const f32).add(i).read_unaligned()
    }
}
impl FloatFmt for F16 {
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        half::f16::from_bits((p as *const u16).add(i).read_unaligned()).to_f32()
    }
}
impl FloatFmt for Bf16 {
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u8) -> __m256 {
        let x = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(x))
    }
    #[inline]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        f32::from_bits(((p as *const u16).add(i).read_unaligned() as u32) << 16)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_tile<W: FloatFmt, const R: usize, const T: usize>(
    n: usize,
    w: *const u8,
    wrow: usize,
    a: *const u8,
    arow: usize,
    out: *mut f32,
    ostride: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let n8 = n / 8 * 8;
    let mut i = 0;
    while i < n8 {
        let mut xs = [_mm256_setzero_ps(); T];
        for (t, x) in xs.iter_mut().enumerate() {
            *x = W::load8(a.add(t * arow + i * W::BYTES));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wv = W::load8(w.add(r * wrow + i * W::BYTES));
            for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                *acc_rt = _mm256_fmadd_ps(wv, xs[t], *acc_rt);
            }
        }
        i += 8;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (t, acc_rt) in acc_r.iter().enumerate() {
            let mut s = hsum(*acc_rt);
            for i in n8..n {
                s += W::get(w.add(r * wrow), i) * W::get(a.add(t * arow), i);
            }
            *out.add(r * ostride + t) = s;
        }
    }
}

float_matmuls!("avx2,fma,f16c");

// Activation quantizers: the same numbers as the scalar ones (inverse scale `127 / amax`,
// halves rounded to even), 8 lanes at a time.

/// Quantizes one block of 32 values into `qs` and returns `(d, sum of quants)`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block(x: *const f32, qs: *mut u8) -> (f32, i32) {
    let sign = _mm256_set1_ps(-0.0);
    let v = [
        _mm256_loadu_ps(x),
        _mm256_loadu_ps(x.add(8)),
        _mm256_loadu_ps(x.add(16)),
        _mm256_loadu_ps(x.add(24)),
    ];
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    let m = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for (qi, &vi) in q.iter_mut().zip(&v) {
        let s = _mm256_mul_ps(vi, id);
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(s);
        *qi = _mm256_cvttps_epi32(r);
    }
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s = _mm_add_epi32(
        _mm256_extracti128_si256::<1>(sum),
        _mm256_castsi256_si128(sum),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4E>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0xB1>(s));
    // packs works within 128-bit halves; the permute puts the 32 bytes back in order.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs as *mut __m256i, p);
    (d, _mm_cvtsi128_si32(s))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8(x: &[f32], out: &mut [u8], with_sum: bool) {
    let bytes = if with_sum { 36 } else { 34 };
    let nb = x.len() / QK;
    assert!(out.len() >= nb * bytes);
    for b in 0..nb {
        let o = out.as_mut_ptr().add(b * bytes);
        let (d, sum) = q8_block(x.as_ptr().add(b * QK), o.add(bytes - QK));
        let dh = half::f16::from_f32(d).to_bits().to_le_bytes();
        *o = dh[0];
        *o.add(1) = dh[1];
        if with_sum {
            let sh = half::f16::from_f32(d * sum as f32).to_bits().to_le_bytes();
            *o.add(2) = sh[0];
            *o.add(3) = sh[1];
        }
    }
}

// SAFETY: handed out only for an `Isa` with AVX2, like the matmuls; lengths are checked.

pub(super) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    unsafe { quantize_q8(x, out, false) }
}

pub(super) fn quantize_q8_1(x: &[f32], out: &mut [u8]) {
    unsafe { quantize_q8(x, out, true) }
}
