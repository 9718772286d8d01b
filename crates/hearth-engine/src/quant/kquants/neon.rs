//! aarch64 NEON kernels: one weight row against up to four activation rows at a time, so each
//! super-block's weights are unpacked once and reused for every token of the tile.
//!
//! Weight levels are expanded to bytes (Q6_K's shifted down by 32 to signed, which removes the
//! need for its offset correction), multiplied with 16 activation quants at a time into exact
//! i32 lanes (`sdot`, or widening multiplies without the dot-product extension; see
//! [`crate::quant::legacy::neon`]), weighted by the sub-block scales in i32 and summed per
//! super-block; only then is a super-block's sum scaled and accumulated in f32, as ggml does.
//!
//! The f32 part repeats the scalar kernel's operations in its order, so results are
//! bit-identical to it: a rounding difference in one logit can otherwise flip an 8-bit
//! activation downstream, and tiny models amplify that well past the kernels' own error.
//!
//! Built twice by `neon_kq_kernels!`, like the legacy kernels: `dot` needs the dot-product
//! extension, `plain` only NEON. Callers pass pointers valid for the sizes documented on
//! [`super::TileFn`].

macro_rules! neon_kq_kernels {
    (features: $feat:literal, dotprod: $dot:literal) => {
        use std::arch::aarch64::*;

        use crate::quant::kquants::blocks::*;
        use crate::quant::legacy::neon::{f16_at, sdot, smull_dot};

        #[inline(always)]
        unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
            if $dot {
                sdot(acc, a, b)
            } else {
                smull_dot(acc, a, b)
            }
        }

        /// 32 weight levels (`lo`, `hi`: values 0..16 and 16..32 of a sub-block) times the 32
        /// activation quants at `q8`, as four i32 lanes.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn dot32(lo: uint8x16_t, hi: uint8x16_t, q8: *const u8) -> int32x4_t {
            let q8 = q8 as *const i8;
            let p = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(lo), vld1q_s8(q8));
            dot16(p, vreinterpretq_s8_u8(hi), vld1q_s8(q8.add(16)))
        }

        /// `sum_j mins[j] * (activation sum of sub-block j)`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn mins_dot(mins: int16x8_t, ab: *const u8) -> i32 {
            let bs = ab.add(Q8K_BSUMS) as *const i16;
            // Pairs of 16-value sums give the 32-value sub-block sums (|sum| <= 4096, fits i16).
            let sub = vpaddq_s16(vld1q_s16(bs), vld1q_s16(bs.add(8)));
            let m = vmull_s16(vget_low_s16(mins), vget_low_s16(sub));
            vaddvq_s32(vmlal_high_s16(m, mins, sub))
        }

        /// Unpacked Q4_K/Q5_K scales (as i32) and mins (as i16).
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn scales_mins(p: *const u8) -> ([i32; 8], int16x8_t) {
            let sm = scales_mins_bytes(std::slice::from_raw_parts(p, 12));
            let scales = std::array::from_fn(|j| sm[j] as i32);
            let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(sm.as_ptr().add(8))));
            (scales, mins)
        }

        #[target_feature(enable = $feat)]
        unsafe fn q4k_tile<const NT: usize>(
            nb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            out: *mut f32,
        ) {
            let m4 = vdupq_n_u8(0x0f);
            let mut acc = [0f32; NT];
            let mut acc_min = [0f32; NT];
            for b in 0..nb {
                let wb = w.add(b * Q4K_BYTES);
                let (dw, dminw) = (f16_at(wb), f16_at(wb.add(2)));
                let (sc, mins) = scales_mins(wb.add(Q4K_SCALES));
                let mut sumi = [vdupq_n_s32(0); NT];
                for j in 0..4 {
                    let q0 = vld1q_u8(wb.add(Q4K_QS + 32 * j));
                    let q1 = vld1q_u8(wb.add(Q4K_QS + 32 * j + 16));
                    let (lo0, lo1) = (vandq_u8(q0, m4), vandq_u8(q1, m4));
                    let (hi0, hi1) = (vshrq_n_u8::<4>(q0), vshrq_n_u8::<4>(q1));
                    for (t, s) in sumi.iter_mut().enumerate() {
                        let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 64 * j);
                        *s = vmlaq_n_s32(*s, dot32(lo0, lo1, q8), sc[2 * j]);
                        *s = vmlaq_n_s32(*s, dot32(hi0, hi1, q8.add(32)), sc[2 * j + 1]);
                    }
                }
                for t in 0..NT {
                    let ab = act.add(t * act_stride + b * Q8K_BYTES);
                    let da = (ab as *const f32).read_unaligned();
                    acc[t] += dw * da * vaddvq_s32(sumi[t]) as f32;
                    acc_min[t] += dminw * da * mins_dot(mins, ab) as f32;
                }
            }
            for t in 0..NT {
                *out.add(t) = acc[t] - acc_min[t];
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn q5k_tile<const NT: usize>(
            nb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            out: *mut f32,
        ) {
            let m4 = vdupq_n_u8(0x0f);
            let m16 = vdupq_n_u8(0x10);
            let mut acc = [0f32; NT];
            let mut acc_min = [0f32; NT];
            for b in 0..nb {
                let wb = w.add(b * Q5K_BYTES);
                let (dw, dminw) = (f16_at(wb), f16_at(wb.add(2)));
                let (sc, mins) = scales_mins(wb.add(Q5K_SCALES));
                // Bits 2j and 2j+1 of each qh byte are the fifth bits of sub-blocks 2j and
                // 2j+1; shifting right by 2 per pair brings the next ones to bits 0 and 1.
                let mut qh0 = vld1q_u8(wb.add(Q5K_QH));
                let mut qh1 = vld1q_u8(wb.add(Q5K_QH + 16));
                let mut sumi = [vdupq_n_s32(0); NT];
                for j in 0..4 {
                    let q0 = vld1q_u8(wb.add(Q5K_QS + 32 * j));
                    let q1 = vld1q_u8(wb.add(Q5K_QS + 32 * j + 16));
                    let lo = |q, h| vorrq_u8(vandq_u8(q, m4), vandq_u8(vshlq_n_u8::<4>(h), m16));
                    let hi = |q, h| vorrq_u8(vshrq_n_u8::<4>(q), vandq_u8(vshlq_n_u8::<3>(h), m16));
                    let (lo0, lo1) = (lo(q0, qh0), lo(q1, qh1));
                    let (hi0, hi1) = (hi(q0, qh0), hi(q1, qh1));
                    qh0 = vshrq_n_u8::<2>(qh0);
                    qh1 = vshrq_n_u8::<2>(qh1);
                    for (t, s) in sumi.iter_mut().enumerate() {
                        let q8 = act.add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 64 * j);
                        *s = vmlaq_n_s32(*s, dot32(lo0, lo1, q8), sc[2 * j]);
                        *s = vmlaq_n_s32(*s, dot32(hi0, hi1, q8.add(32)), sc[2 * j + 1]);
                    }
                }
                for t in 0..NT {
                    let ab = act.add(t * act_stride + b * Q8K_BYTES);
                    let da = (ab as *const f32).read_unaligned();
                    acc[t] += dw * da * vaddvq_s32(sumi[t]) as f32;
                    acc_min[t] += dminw * da * mins_dot(mins, ab) as f32;
                }
            }
            for t in 0..NT {
                *out.add(t) = acc[t] - acc_min[t];
            }
        }

        #[target_feature(enable = $feat)]
        unsafe fn q6k_tile<const NT: usize>(
            nb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            out: *mut f32,
        ) {
            let m4 = vdupq_n_u8(0x0f);
            let m3 = vdupq_n_u8(0x03);
            let m30 = vdupq_n_u8(0x30);
            let m32 = vdupq_n_s8(32);
            let mut acc = [0f32; NT];
            for b in 0..nb {
                let wb = w.add(b * Q6K_BYTES);
                let d = f16_at(wb.add(Q6K_D));
                let sc: [i32; 16] = std::array::from_fn(|g| *wb.add(Q6K_SCALES + g) as i8 as i32);
                let mut sumi = [vdupq_n_s32(0); NT];
                for h in 0..2 {
                    let ql = wb.add(Q6K_QL + 64 * h);
                    let qh = wb.add(Q6K_QH + 32 * h);
                    // Four 32-value groups, each as two 16-byte halves with their own scale.
                    let mut q = [[vdupq_n_s8(0); 2]; 4];
                    for (i, half) in [0, 16].into_iter().enumerate() {
                        let qla = vld1q_u8(ql.add(half));
                        let qlb = vld1q_u8(ql.add(32 + half));
                        let qhv = vld1q_u8(qh.add(half));
                        let levels = [
                            vorrq_u8(vandq_u8(qla, m4), vshlq_n_u8::<4>(vandq_u8(qhv, m3))),
                            vorrq_u8(vandq_u8(qlb, m4), vandq_u8(vshlq_n_u8::<2>(qhv), m30)),
                            vorrq_u8(vshrq_n_u8::<4>(qla), vandq_u8(qhv, m30)),
                            vorrq_u8(
                                vshrq_n_u8::<4>(qlb),
                                vshrq_n_u8::<2>(vandq_u8(qhv, vdupq_n_u8(0xc0))),
                            ),
                        ];
                        for (qg, l) in q.iter_mut().zip(levels) {
                            qg[i] = vsubq_s8(vreinterpretq_s8_u8(l), m32);
                        }
                    }
                    for (g, qg) in q.iter().enumerate() {
                        let (s0, s1) = (sc[8 * h + 2 * g], sc[8 * h + 2 * g + 1]);
                        for (t, s) in sumi.iter_mut().enumerate() {
                            let q8 = act
                                .add(t * act_stride + b * Q8K_BYTES + Q8K_QS + 128 * h + 32 * g)
                                as *const i8;
                            let p0 = dot16(vdupq_n_s32(0), qg[0], vld1q_s8(q8));
                            let p1 = dot16(vdupq_n_s32(0), qg[1], vld1q_s8(q8.add(16)));
                            *s = vmlaq_n_s32(vmlaq_n_s32(*s, p0, s0), p1, s1);
                        }
                    }
                }
                for t in 0..NT {
                    let ab = act.add(t * act_stride + b * Q8K_BYTES);
                    let da = (ab as *const f32).read_unaligned();
                    acc[t] += d * da * vaddvq_s32(sumi[t]) as f32;
                }
            }
            for t in 0..NT {
                *out.add(t) = acc[t];
            }
        }

        tile_dispatch!(q4k, q4k_tile);
        tile_dispatch!(q5k, q5k_tile);
        tile_dispatch!(q6k, q6k_tile);
    };
}

/// With the dot-product extension.
pub(super) mod dot {
    neon_kq_kernels!(features: "neon,dotprod", dotprod: true);
}

/// Base NEON, for CPUs without the dot-product extension.
pub(super) mod plain {
    neon_kq_kernels!(features: "neon", dotprod: false);
}
