//! The x86 kernels, written once and compiled once per instruction set by `x86_kernels!`: the
//! AVX2 build multiplies 8-bit quants with `maddubs`/`madd`, the AVX-512 build (which also
//! requires VNNI) with `dpbusd` and uses mask registers and the larger register file.
//!
//! Integer formats: per block, the weight quants are expanded to 32 bytes, multiplied with the
//! activation's 32 signed bytes into 8 i32 partial sums, converted to f32 and scaled by
//! `d_w * d_a`; Q4_1/Q5_1 add `m_w * s_a`. A tile of `R` weight rows by `T` tokens shares each
//! expanded weight block across tokens and each activation block across rows.

macro_rules! x86_kernels {
    (features: $feat:literal, avx512: $avx512:literal, decode_rows: $rd:literal, prefill_rows: $rp:literal) => {
        use super::blocks::QK;
        use std::arch::x86_64::*;

        const AVX512: bool = $avx512;

        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Kind {
            Q4_0,
            Q4_1,
            Q5_0,
            Q5_1,
            Q8_0,
        }

        impl Kind {
            const fn bytes(self) -> usize {
                match self {
                    Kind::Q4_0 => 18,
                    Kind::Q4_1 => 20,
                    Kind::Q5_0 => 22,
                    Kind::Q5_1 => 24,
                    Kind::Q8_0 => 34,
                }
            }

            /// Q4_1/Q5_1 carry a minimum and pair with Q8_1 activations.
            const fn affine(self) -> bool {
                matches!(self, Kind::Q4_1 | Kind::Q5_1)
            }

            const fn act_bytes(self) -> usize {
                if self.affine() {
                    36
                } else {
                    34
                }
            }

            /// The bias the unsigned weight quants carry: `sum((q - o) y) = sum(q y) - o sum(y)`.
            /// Q8_0 is biased by 128 only where `dpbusd` can take the full u8 range.
            const fn offset(self) -> u8 {
                match self {
                    Kind::Q4_0 => 8,
                    Kind::Q5_0 => 16,
                    Kind::Q8_0 if AVX512 => 128,
                    _ => 0,
                }
            }
        }

        trait Fmt {
            const KIND: Kind;
        }
        struct Q40;
        struct Q41;
        struct Q50;
        struct Q51;
        struct Q80;
        impl Fmt for Q40 {
            const KIND: Kind = Kind::Q4_0;
        }
        impl Fmt for Q41 {
            const KIND: Kind = Kind::Q4_1;
        }
        impl Fmt for Q50 {
            const KIND: Kind = Kind::Q5_0;
        }
        impl Fmt for Q51 {
            const KIND: Kind = Kind::Q5_1;
        }
        impl Fmt for Q80 {
            const KIND: Kind = Kind::Q8_0;
        }

        #[inline(always)]
        unsafe fn rd32(p: *const u8) -> i32 {
            (p as *const i32).read_unaligned()
        }

        /// Sum of the 8 lanes, in the order ggml's `hsum_float_8` adds them.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        /// 16 bytes of packed nibbles to 32 bytes: low nibbles first, then high ones.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            let x = _mm_loadu_si128(p as *const __m128i);
            let v = _mm256_set_m128i(_mm_srli_epi16::<4>(x), x);
            _mm256_and_si256(v, _mm256_set1_epi8(15))
        }

        /// Adds 16 to byte `j` where bit `j` of `qh` is set.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn add_fifth_bits(q: __m256i, qh: u32) -> __m256i {
            if AVX512 {
                _mm256_mask_add_epi8(q, qh, q, _mm256_set1_epi8(16))
            } else {
                #[rustfmt::skip]
                                                let spread = _mm256_setr_epi8(
                                                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                    2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
                                                );
                let v = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
                // Byte k of each 8 keeps only bit k clear, so it is all ones iff that bit is set.
                let v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
                let v = _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
                _mm256_or_si256(q, _mm256_and_si256(v, _mm256_set1_epi8(16)))
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn weight_quants<F: Fmt>(p: *const u8) -> __m256i {
            match F::KIND {
                Kind::Q4_0 => nibbles(p.add(2)),
                Kind::Q4_1 => nibbles(p.add(4)),
                Kind::Q5_0 => add_fifth_bits(nibbles(p.add(6)), rd32(p.add(2)) as u32),
                Kind::Q5_1 => add_fifth_bits(nibbles(p.add(8)), rd32(p.add(4)) as u32),
                Kind::Q8_0 => {
                    let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
                    if AVX512 {
                        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
                    } else {
                        q
                    }
                }
            }
        }

        /// The per-token correction for the weights' offset: with `dpbusd`, `-o sum(y)` as i32
        /// lanes to start the accumulation from; otherwise `o y` pair sums as i16.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn offset_term<F: Fmt>(y: __m256i) -> __m256i {
            let off = _mm256_set1_epi8(F::KIND.offset() as i8);
            if AVX512 {
                let zero = _mm256_setzero_si256();
                _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, off, y))
            } else {
                _mm256_maddubs_epi16(off, y)
            }
        }

        /// 8 i32 partial sums of one weight block times one activation block.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn block_dot<F: Fmt>(q: __m256i, y: __m256i, corr: __m256i) -> __m256i {
            if AVX512 {
                _mm256_dpbusd_epi32(corr, q, y)
            } else {
                let p = match F::KIND {
                    // Signed by signed: move the sign onto the activation. Pair sums stay
                    // within i16 because activations are at least -127.
                    Kind::Q8_0 => {
                        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q))
                    }
                    Kind::Q4_1 | Kind::Q5_1 => _mm256_maddubs_epi16(q, y),
                    Kind::Q4_0 | Kind::Q5_0 => _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), corr),
                };
                _mm256_madd_epi16(p, _mm256_set1_epi16(1))
            }
        }

        /// Lane `t` of each 128-bit half of `v`, everywhere.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn lane(v: __m256, t: usize) -> __m256 {
            match t {
                0 => _mm256_permute_ps::<0x00>(v),
                1 => _mm256_permute_ps::<0x55>(v),
                2 => _mm256_permute_ps::<0xAA>(v),
                _ => _mm256_permute_ps::<0xFF>(v),
            }
        }

        /// `R` weight rows (`wrow` bytes apart) by `T <= 4` tokens (`arow` bytes apart);
        /// result `(r, t)` goes to `out[r * ostride + t]`.
        #[target_feature(enable = $feat)]
        unsafe fn int_tile<F: Fmt, const R: usize, const T: usize>(
            nb: usize,
            w: *const u8,
            wrow: usize,
            a: *const u8,
            arow: usize,
            out: *mut f32,
            ostride: usize,
        ) {
            let k = F::KIND;
            let (wb, ab) = (k.bytes(), k.act_bytes());
            let qo = ab - QK;
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            let mut ms = [_mm_setzero_ps(); R];
            for b in 0..nb {
                // Activation scales (and Q8_1 sums) of the T tokens, converted together.
                let mut hdr = [0i32; 4];
                for (t, h) in hdr.iter_mut().enumerate().take(T) {
                    *h = rd32(a.add(t * arow + b * ab));
                }
                let h = _mm256_cvtph_ps(_mm_setr_epi32(hdr[0], hdr[1], hdr[2], hdr[3]));
                let dvec = if T == 1 {
                    _mm256_broadcastss_ps(_mm256_castps256_ps128(h))
                } else {
                    _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6))
                };
                let svec = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(
                    h,
                    _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7),
                ));
                let mut ys = [_mm256_setzero_si256(); T];
                let mut corr = [_mm256_setzero_si256(); T];
                for t in 0..T {
                    ys[t] = _mm256_loadu_si256(a.add(t * arow + b * ab + qo) as *const __m256i);
                    if k.offset() != 0 {
                        corr[t] = offset_term::<F>(ys[t]);
                    }
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wp = w.add(r * wrow + b * wb);
                    let q = weight_quants::<F>(wp);
                    // d (and m) of the weight block.
                    let wh = _mm_cvtph_ps(_mm_cvtsi32_si128(rd32(wp)));
                    let dd = _mm256_mul_ps(_mm256_broadcastss_ps(wh), dvec);
                    if k.affine() {
                        ms[r] = _mm_fmadd_ps(_mm_permute_ps::<0x55>(wh), svec, ms[r]);
                    }
                    for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                        let p = block_dot::<F>(q, ys[t], corr[t]);
                        let s = if T == 1 { dd } else { lane(dd, t) };
                        *acc_rt = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, *acc_rt);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let m: [f32; 4] = std::mem::transmute(ms[r]);
                for (t, acc_rt) in acc_r.iter().enumerate() {
                    *out.add(r * ostride + t) = hsum(*acc_rt) + m[t];
                }
            }
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn int_tokens<F: Fmt, const R: usize>(
            nb: usize,
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
                int_tile::<F, R, 4>(nb, w, wrow, a.add(t * arow), arow, out.add(t), ostride);
                t += 4;
            }
            let (a, out) = (a.add(t * arow), out.add(t));
            match tokens - t {
                1 => int_tile::<F, R, 1>(nb, w, wrow, a, arow, out, ostride),
                2 => int_tile::<F, R, 2>(nb, w, wrow, a, arow, out, ostride),
                3 => int_tile::<F, R, 3>(nb, w, wrow, a, arow, out, ostride),
                _ => {}
            }
        }

        /// Activations of this many bytes stay in L2 while every row tile streams past them.
        const ACT_CHUNK_BYTES: usize = 256 << 10;

        // The row tile `$rd` may be 1, where `r + $rd <= rows` reads as an off-by-one.
        #[allow(clippy::int_plus_one)]
        #[target_feature(enable = $feat)]
        unsafe fn int_matmul<F: Fmt>(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            let k = F::KIND;
            let nb = n / QK;
            let (wrow, arow) = (nb * k.bytes(), nb * k.act_bytes());
            assert!(w.len() >= rows * wrow && act.len() >= tokens * arow);
            assert!(out.len() >= rows * tokens);
            let (wp, ap, op) = (w.as_ptr(), act.as_ptr(), out.as_mut_ptr());
            if tokens == 1 {
                let mut r = 0;
                while r + $rd <= rows {
                    int_tile::<F, $rd, 1>(nb, wp.add(r * wrow), wrow, ap, arow, op.add(r), 1);
                    r += $rd;
                }
                while r < rows {
                    int_tile::<F, 1, 1>(nb, wp.add(r * wrow), wrow, ap, arow, op.add(r), 1);
                    r += 1;
                }
                return;
            }
            let chunk = (ACT_CHUNK_BYTES / arow.max(1)).max(4) / 4 * 4;
            let mut t0 = 0;
            while t0 < tokens {
                let tn = chunk.min(tokens - t0);
                let a = ap.add(t0 * arow);
                let mut r = 0;
                while r + $rp <= rows {
                    let o = op.add(r * tokens + t0);
                    int_tokens::<F, $rp>(nb, wp.add(r * wrow), wrow, a, arow, tn, o, tokens);
                    r += $rp;
                }
                while r < rows {
                    let o = op.add(r * tokens + t0);
                    int_tokens::<F, 1>(nb, wp.add(r * wrow), wrow, a, arow, tn, o, tokens);
                    r += 1;
                }
                t0 += tn;
            }
        }

        // ---- Safe entry points. ---------------------------------------------------------------
        //
        // SAFETY (all of them): these are handed out only by `legacy::weight_kernel` for the
        // `Isa` this module is built for, and callers only ask for an `Isa` that `Isa::detect`
        // found on this CPU; `int_matmul` checks the slice lengths before any
        // pointer is read.

        pub(super) fn matmul_q4_0(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q40>(n, w, rows, act, tokens, out) }
        }
        pub(super) fn matmul_q4_1(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q41>(n, w, rows, act, tokens, out) }
        }
        pub(super) fn matmul_q5_0(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q50>(n, w, rows, act, tokens, out) }
        }
        pub(super) fn matmul_q5_1(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q51>(n, w, rows, act, tokens, out) }
        }
        pub(super) fn matmul_q8_0(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q80>(n, w, rows, act, tokens, out) }
        }
    };
}
