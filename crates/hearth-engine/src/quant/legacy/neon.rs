//! aarch64 NEON kernels.
//!
//! Integer formats: per block, the weight quants are expanded to 32 signed bytes (Q4_0/Q5_0
//! with their offset already subtracted, so no correction term is needed), multiplied with the
//! activation's 32 signed bytes into an exact i32 sum, converted to f32 and scaled by
//! `d_w * d_a`; Q4_1/Q5_1 add `m_w * s_a`. That f32 part repeats the scalar kernel's operations
//! in its order, so results are bit-identical to it whichever CPU runs them.
//! Decode streams one weight row at a time; prefill multiplies each expanded weight block with
//! a tile of 4 tokens.
//!
//! The integer kernels are built twice by `neon_int_kernels!`: with the dot-product extension
//! (`sdot`, ARMv8.2+: Apple Silicon, Cortex-A55/A76 and later) and without it (widening
//! `smull` plus pairwise accumulation, for Cortex-A53/A72 such as the Raspberry Pi 3 and 4).
//! `legacy::weight_kernel` picks the build at run time. `sdot` is emitted through inline
//! assembly because its intrinsic is not stable Rust yet.
//!
//! Float formats need nothing beyond base NEON: f16 is widened with `fcvtl` (also assembly, as
//! Rust's f16 vector types are unstable), bf16 by a shift.

use std::arch::aarch64::*;
use std::arch::asm;

/// `acc + ` the four 4-byte dot products of `a` and `b`, with `sdot`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(in crate::quant) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The same i32 total as [`sdot`] (spread differently over the lanes) with base NEON: byte
/// products are at most 2^14 in magnitude, so each fits i16 and is widened before any sum.
#[inline(always)]
pub(in crate::quant) unsafe fn smull_dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Four f16 values (as bits) to f32.
#[inline(always)]
pub(in crate::quant) unsafe fn f16x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!(
        "fcvtl {r:v}.4s, {h:v}.4h",
        r = out(vreg) r,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// The f16 at `p` (unaligned), as f32.
#[inline(always)]
pub(in crate::quant) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    vgetq_lane_f32::<0>(f16x4(vdup_n_u16(bits)))
}

#[inline(always)]
unsafe fn rd32(p: *const u8) -> u32 {
    (p as *const u32).read_unaligned()
}

macro_rules! neon_int_kernels {
    (features: $feat:literal, dotprod: $dot:literal) => {
        use super::*;
        use crate::quant::legacy::blocks::QK;

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
        unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
            if $dot {
                sdot(acc, a, b)
            } else {
                smull_dot(acc, a, b)
            }
        }

        /// 16 bytes of packed nibbles: the low nibbles (values 0..16), then the high ones.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
            let x = vld1q_u8(p);
            (vandq_u8(x, vdupq_n_u8(15)), vshrq_n_u8::<4>(x))
        }

        /// 16 where bit `j` of `qh` is set, else 0, for `j` in 0..16 and 16..32.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn fifth_bits(qh: u32) -> (uint8x16_t, uint8x16_t) {
            // Byte k of each 8-byte half selects bit k of the qh byte broadcast over that half.
            let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
            let sixteen = vdupq_n_u8(16);
            let spread = |a: u32, b: u32| vcombine_u8(vdup_n_u8(a as u8), vdup_n_u8(b as u8));
            let lo = vtstq_u8(spread(qh, qh >> 8), bit);
            let hi = vtstq_u8(spread(qh >> 16, qh >> 24), bit);
            (vandq_u8(lo, sixteen), vandq_u8(hi, sixteen))
        }

        /// The block's 32 weights as signed bytes, offsets removed.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn weight_quants<F: Fmt>(p: *const u8) -> (int8x16_t, int8x16_t) {
            let s = vreinterpretq_s8_u8;
            match F::KIND {
                Kind::Q4_0 => {
                    let (lo, hi) = nibbles(p.add(2));
                    let o = vdupq_n_s8(8);
                    (vsubq_s8(s(lo), o), vsubq_s8(s(hi), o))
                }
                Kind::Q4_1 => {
                    let (lo, hi) = nibbles(p.add(4));
                    (s(lo), s(hi))
                }
                Kind::Q5_0 => {
                    let (lo, hi) = nibbles(p.add(6));
                    let (bl, bh) = fifth_bits(rd32(p.add(2)));
                    let o = vdupq_n_s8(16);
                    (
                        vsubq_s8(s(vorrq_u8(lo, bl)), o),
                        vsubq_s8(s(vorrq_u8(hi, bh)), o),
                    )
                }
                Kind::Q5_1 => {
                    let (lo, hi) = nibbles(p.add(8));
                    let (bl, bh) = fifth_bits(rd32(p.add(4)));
                    (s(vorrq_u8(lo, bl)), s(vorrq_u8(hi, bh)))
                }
                Kind::Q8_0 => (
                    vld1q_s8(p.add(2) as *const i8),
                    vld1q_s8(p.add(18) as *const i8),
                ),
            }
        }

        /// One weight row by `T <= 4` tokens (`arow` bytes apart); result `t` goes to `out[t]`.
        #[target_feature(enable = $feat)]
        unsafe fn int_tile<F: Fmt, const T: usize>(
            nb: usize,
            w: *const u8,
            a: *const u8,
            arow: usize,
            out: *mut f32,
        ) {
            let k = F::KIND;
            let (wb, ab) = (k.bytes(), k.act_bytes());
            let qo = ab - QK;
            let mut sum = [0f32; T];
            for b in 0..nb {
                let wp = w.add(b * wb);
                let (q0, q1) = weight_quants::<F>(wp);
                let dw = f16_at(wp);
                for (t, sum_t) in sum.iter_mut().enumerate() {
                    let ap = a.add(t * arow + b * ab);
                    let y = ap.add(qo) as *const i8;
                    let p = dot16(vdupq_n_s32(0), q0, vld1q_s8(y));
                    let sumi = vaddvq_s32(dot16(p, q1, vld1q_s8(y.add(16))));
                    let da = f16_at(ap);
                    if k.affine() {
                        *sum_t += (dw * da) * sumi as f32 + f16_at(wp.add(2)) * f16_at(ap.add(2));
                    } else {
                        *sum_t += sumi as f32 * (dw * da);
                    }
                }
            }
            for (t, s) in sum.iter().enumerate() {
                *out.add(t) = *s;
            }
        }

        /// Activations of this many bytes stay in L2 while every weight row streams past them.
        const ACT_CHUNK_BYTES: usize = 256 << 10;

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
                for r in 0..rows {
                    int_tile::<F, 1>(nb, wp.add(r * wrow), ap, arow, op.add(r));
                }
                return;
            }
            let chunk = (ACT_CHUNK_BYTES / arow.max(1)).max(4) / 4 * 4;
            let mut t0 = 0;
            while t0 < tokens {
                let tn = chunk.min(tokens - t0);
                for r in 0..rows {
                    let wr = wp.add(r * wrow);
                    let mut t = t0;
                    while t + 4 <= t0 + tn {
                        int_tile::<F, 4>(nb, wr, ap.add(t * arow), arow, op.add(r * tokens + t));
                        t += 4;
                    }
                    let (a, o) = (ap.add(t * arow), op.add(r * tokens + t));
                    match t0 + tn - t {
                        1 => int_tile::<F, 1>(nb, wr, a, arow, o),
                        2 => int_tile::<F, 2>(nb, wr, a, arow, o),
                        3 => int_tile::<F, 3>(nb, wr, a, arow, o),
                        _ => {}
                    }
                }
                t0 += tn;
            }
        }

        // SAFETY (all entry points): handed out only by `legacy::weight_kernel` for
        // `Isa::Neon`, and this build only where the CPU reported the features it was compiled
        // for; `int_matmul` checks the slice lengths before any pointer is read.

        pub(in crate::quant::legacy) fn matmul_q4_0(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q40>(n, w, rows, act, tokens, out) }
        }
        pub(in crate::quant::legacy) fn matmul_q4_1(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q41>(n, w, rows, act, tokens, out) }
        }
        pub(in crate::quant::legacy) fn matmul_q5_0(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q50>(n, w, rows, act, tokens, out) }
        }
        pub(in crate::quant::legacy) fn matmul_q5_1(
            n: usize,
            w: &[u8],
            rows: usize,
            act: &[u8],
            tokens: usize,
            out: &mut [f32],
        ) {
            unsafe { int_matmul::<Q51>(n, w, rows, act, tokens, out) }
        }
        pub(in crate::quant::legacy) fn matmul_q8_0(
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

/// With the dot-product extension.
pub(super) mod dot {
    neon_int_kernels!(features: "neon,dotprod", dotprod: true);
}

/// Base NEON, for CPUs without the dot-product extension.
pub(super) mod plain {
    neon_int_kernels!(features: "neon", dotprod: false);
}

// ---- Float formats: weights and activations share the element type. ---------------------------

trait FloatFmt {
    const BYTES: usize;
    unsafe fn load4(p: *const u8) -> float32x4_t;
    unsafe fn get(p: *const u8, i: usize) -> f32;
}
struct F32;
struct F16;
struct Bf16;
impl FloatFmt for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        vld1q_f32(p as *const f32)
    }
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        (p as *const f32).add(i).read_unaligned()
    }
}
impl FloatFmt for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        f16x4(vld1_u16(p as *const u16))
    }
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        f16_at(p.add(2 * i))
    }
}
impl FloatFmt for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16)))
    }
    #[inline(always)]
    unsafe fn get(p: *const u8, i: usize) -> f32 {
        f32::from_bits(((p as *const u16).add(i).read_unaligned() as u32) << 16)
    }
}

/// `R` weight rows (`wrow` bytes apart) by `T` tokens (`arow` bytes apart); result `(r, t)`
/// goes to `out[r * ostride + t]`.
#[target_feature(enable = "neon")]
unsafe fn float_tile<W: FloatFmt, const R: usize, const T: usize>(
    n: usize,
    w: *const u8,
    wrow: usize,
    a: *const u8,
    arow: usize,
    out: *mut f32,
    ostride: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); T]; R];
    let n4 = n / 4 * 4;
    let mut i = 0;
    while i < n4 {
        let mut xs = [vdupq_n_f32(0.0); T];
        for (t, x) in xs.iter_mut().enumerate() {
            *x = W::load4(a.add(t * arow + i * W::BYTES));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wv = W::load4(w.add(r * wrow + i * W::BYTES));
            for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                *acc_rt = vfmaq_f32(*acc_rt, wv, xs[t]);
            }
        }
        i += 4;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (t, acc_rt) in acc_r.iter().enumerate() {
            let mut s = vaddvq_f32(*acc_rt);
            for i in n4..n {
                s += W::get(w.add(r * wrow), i) * W::get(a.add(t * arow), i);
            }
            *out.add(r * ostride + t) = s;
        }
    }
}

float_matmuls!("neon");
