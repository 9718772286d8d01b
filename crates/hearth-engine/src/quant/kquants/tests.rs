use hearth_model::GgmlType;

use super::blocks::*;
use super::*;

const KTYPES: [GgmlType; 3] = [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly normal (sum of four uniforms).
    fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }

    /// Values whose magnitude varies from one 32-value sub-block to the next, with a random
    /// offset, so scales, mins and their 6-bit packing are all exercised.
    fn weights(&mut self, len: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len / 32 {
            let scale = 0.02 + 2.0 * self.uniform().abs();
            let offset = 0.5 * scale * self.uniform();
            v.extend((0..32).map(|_| scale * self.normal() + offset));
        }
        v
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

fn block_bytes(t: GgmlType) -> usize {
    t.block_bytes()
}

fn quantize(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / QK * block_bytes(t)];
    assert!(quantize_row(t, x, &mut out));
    out
}

fn dequantize(t: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    match t {
        GgmlType::Q8_K => dequantize_q8k(q, &mut out),
        _ => (weight_kernel(t, Isa::Scalar).unwrap().dequantize)(q, &mut out),
    }
    out
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    let norm: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn layouts_match_ggml_type() {
    assert_eq!(GgmlType::Q4_K.block_bytes(), Q4K_BYTES);
    assert_eq!(GgmlType::Q5_K.block_bytes(), Q5K_BYTES);
    assert_eq!(GgmlType::Q6_K.block_bytes(), Q6K_BYTES);
    assert_eq!(GgmlType::Q8_K.block_bytes(), Q8K_BYTES);
    assert!(!quantize_row(GgmlType::Q8_0, &[0.0; 32], &mut [0u8; 34]));
    assert!(weight_kernel(GgmlType::Q8_K, Isa::Scalar).is_none());
    assert!(weight_kernel(GgmlType::Q3_K, Isa::Scalar).is_none());
}

/// The 6-bit scale/min unpacking against a literal reading of the format: sub-blocks 0..4 in
/// the low 6 bits of bytes j and j+4, sub-blocks 4..8 split between the nibbles of byte j+4
/// and the top 2 bits of bytes j-4 (scale) and j (min).
#[test]
fn scale_unpacking_matches_format() {
    let mut rng = Rng(7);
    for _ in 0..1000 {
        let q = rng.bytes(12);
        let sm = scales_mins_bytes(&q);
        for j in 0..8 {
            let (d, m) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            assert_eq!((sm[j], sm[8 + j]), (d, m), "sub-block {j} of {q:?}");
        }
    }
}

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Random blocks (valid f16 scales, arbitrary bits elsewhere) dequantized against a
/// value-by-value reading of the layouts, independent of the production loops.
#[test]
fn dequantize_matches_format_reading() {
    let mut rng = Rng(11);
    for t in KTYPES {
        for _ in 0..50 {
            let mut b = rng.bytes(block_bytes(t));
            let (d, dmin) = (rng.uniform(), rng.uniform().abs());
            let mut want = [0f32; QK];
            match t {
                GgmlType::Q4_K | GgmlType::Q5_K => {
                    b[0..2].copy_from_slice(&f16_bytes(d));
                    b[2..4].copy_from_slice(&f16_bytes(dmin));
                    let got = dequantize(t, &b, QK);
                    let d = f16_at(&b, 0);
                    let dmin = f16_at(&b, 2);
                    let sc = &b[4..16];
                    for (i, w) in want.iter_mut().enumerate() {
                        let sub = i / 32;
                        let (s, m) = if sub < 4 {
                            (sc[sub] & 63, sc[sub + 4] & 63)
                        } else {
                            (
                                (sc[sub + 4] & 0x0f) | ((sc[sub - 4] >> 6) << 4),
                                (sc[sub + 4] >> 4) | ((sc[sub] >> 6) << 4),
                            )
                        };
                        // Value i lives in byte 32*(i/64) + i%32, low nibble for the first 32
                        // of each 64 and high nibble for the second.
                        let (qs_off, qh) = if t == GgmlType::Q4_K {
                            (16, None)
                        } else {
                            (48, Some(&b[16..48]))
                        };
                        let byte = b[qs_off + 32 * (i / 64) + i % 32];
                        let mut q = if (i / 32) % 2 == 0 {
                            byte & 0x0f
                        } else {
                            byte >> 4
                        };
                        if let Some(qh) = qh {
                            q |= ((qh[i % 32] >> sub) & 1) << 4;
                        }
                        *w = d * s as f32 * q as f32 - dmin * m as f32;
                    }
                    assert_eq!(got, want, "{t}");
                }
                _ => {
                    b[208..210].copy_from_slice(&f16_bytes(d));
                    let got = dequantize(t, &b, QK);
                    let d = f16_at(&b, 208);
                    for (i, w) in want.iter_mut().enumerate() {
                        let (h, r) = (i / 128, i % 128);
                        // Within a 128-value half: ql bytes 64h..64h+64 give the low nibbles of
                        // values r (r < 64, low nibble) and r - 64 (high nibble); qh byte
                        // 32h + r%32 gives 2 bits at position 2*(r/32).
                        let ql = b[64 * h + r % 64];
                        let lo = if r < 64 { ql & 0x0f } else { ql >> 4 };
                        let hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
                        let q = (lo | (hi << 4)) as i32 - 32;
                        let s = b[192 + i / 16] as i8;
                        *w = d * s as f32 * q as f32;
                    }
                    assert_eq!(got, want, "{t}");
                }
            }
        }
    }
}

#[test]
fn q8k_matches_reference_rules() {
    let mut rng = Rng(3);
    let n = 1024;
    let mut x: Vec<f32> = (0..n).map(|_| rng.normal() * 3.0).collect();
    x[300] = 20.0; // positive extreme in block 1
    x[600] = -25.0; // negative extreme in block 2
    x[768..1024].fill(0.0); // all-zero block 3
    let q = quantize(GgmlType::Q8_K, &x);
    for (b, (blk, xb)) in q
        .chunks_exact(Q8K_BYTES)
        .zip(x.chunks_exact(QK))
        .enumerate()
    {
        let d = f32_at(blk, 0);
        let qs: Vec<i8> = blk[4..260].iter().map(|&v| v as i8).collect();
        if b == 3 {
            assert_eq!(d, 0.0);
            assert!(blk.iter().all(|&v| v == 0));
            continue;
        }
        // The extreme maps to -127 whatever its sign, so d has the opposite sign to it.
        let (imax, &max) = xb
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        assert_eq!(qs[imax], -127);
        assert_eq!(d, 1.0 / (-127.0 / max));
        for (g, chunk) in qs.chunks_exact(16).enumerate() {
            let sum: i32 = chunk.iter().map(|&v| v as i32).sum();
            assert_eq!(
                i16_at(blk, Q8K_BSUMS + 2 * g) as i32,
                sum,
                "bsum {g} of block {b}"
            );
        }
        for (&v, &qv) in xb.iter().zip(&qs) {
            assert!(
                (v - d * qv as f32).abs() <= d.abs() * 0.5001,
                "{v} vs {}",
                d * qv as f32
            );
        }
    }
    // Ties round to even, as ggml's nearest_int does.
    assert_eq!(nearest_int(2.5), 2);
    assert_eq!(nearest_int(3.5), 4);
    assert_eq!(nearest_int(-2.5), -2);
    assert_eq!(nearest_int(-0.4), 0);
}

#[test]
fn round_trip_error_is_bounded() {
    let mut rng = Rng(5);
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    // Expected relative RMS errors for normal data: about step/sqrt(12) over the value range.
    for (t, bound) in [
        (GgmlType::Q4_K, 0.11),
        (GgmlType::Q5_K, 0.055),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q8_K, 0.01),
    ] {
        let y = dequantize(t, &quantize(t, &x), n);
        let e = rel_rmse(&x, &y);
        assert!(e < bound, "{t}: relative RMS error {e}");
    }
    // Varying sub-block magnitudes and offsets.
    let x = rng.weights(n);
    for (t, bound) in [
        (GgmlType::Q4_K, 0.11),
        (GgmlType::Q5_K, 0.055),
        (GgmlType::Q6_K, 0.03),
    ] {
        let e = rel_rmse(&x, &dequantize(t, &quantize(t, &x), n));
        assert!(e < bound, "{t} (varied): relative RMS error {e}");
    }
    // Zeros and constants survive.
    for t in KTYPES {
        let zeros = vec![0f32; 512];
        assert_eq!(dequantize(t, &quantize(t, &zeros), 512), zeros, "{t}");
        let ones = vec![1f32; 256];
        let y = dequantize(t, &quantize(t, &ones), 256);
        assert!(
            y.iter().all(|&v| (v - 1.0).abs() < 0.02),
            "{t}: {:?}",
            &y[..4]
        );
    }
}

/// `f64` dot of the dequantized rows, and the sum of absolute products: the scale against
/// which f32 rounding of a dot product is judged (relative to |dot| alone would be meaningless
/// under cancellation).
fn reference_dot(w: &[f32], a: &[f32]) -> (f64, f64) {
    let dot = w.iter().zip(a).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mag = w
        .iter()
        .zip(a)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum();
    (dot, mag)
}

#[test]
fn matmul_matches_scalar_and_dequantized_dot() {
    let mut rng = Rng(42);
    for t in KTYPES {
        let scalar = weight_kernel(t, Isa::Scalar).unwrap();
        for n in [256, 512, 1536] {
            let wb = t.row_bytes(n as u64).unwrap() as usize;
            let ab = GgmlType::Q8_K.row_bytes(n as u64).unwrap() as usize;
            for rows in [1, 2, 5] {
                let wf = rng.weights(rows * n);
                let mut w = vec![0u8; rows * wb];
                for (x, q) in wf.chunks_exact(n).zip(w.chunks_exact_mut(wb)) {
                    assert!(quantize_row(t, x, q));
                }
                let wd: Vec<Vec<f32>> = w.chunks_exact(wb).map(|q| dequantize(t, q, n)).collect();
                for tokens in [1, 3, 4, 5, 9] {
                    let af: Vec<f32> = (0..tokens * n).map(|_| rng.normal() * 2.0).collect();
                    let mut act = vec![0u8; tokens * ab];
                    for (x, q) in af.chunks_exact(n).zip(act.chunks_exact_mut(ab)) {
                        (scalar.quantize_activation)(x, q);
                    }
                    let ad: Vec<Vec<f32>> = act
                        .chunks_exact(ab)
                        .map(|q| dequantize(GgmlType::Q8_K, q, n))
                        .collect();
                    let mut want = vec![f32::NAN; rows * tokens];
                    (scalar.matmul)(n, &w, rows, &act, tokens, &mut want);
                    for r in 0..rows {
                        for tk in 0..tokens {
                            let (dot, mag) = reference_dot(&wd[r], &ad[tk]);
                            let got = want[r * tokens + tk] as f64;
                            assert!(
                                (got - dot).abs() <= 1e-5 * mag,
                                "{t} scalar n={n} r={r} t={tk}: {got} vs {dot} (mag {mag})"
                            );
                        }
                    }
                    for isa in Isa::available() {
                        let k = weight_kernel(t, isa).unwrap();
                        assert_eq!(k.activation, GgmlType::Q8_K);
                        let mut got = vec![f32::NAN; rows * tokens];
                        (k.matmul)(n, &w, rows, &act, tokens, &mut got);
                        for (r, wr) in wd.iter().enumerate() {
                            for (tk, at) in ad.iter().enumerate() {
                                let i = r * tokens + tk;
                                let (_, mag) = reference_dot(wr, at);
                                assert!(
                                    ((got[i] - want[i]) as f64).abs() <= 1e-5 * mag,
                                    "{t} {} n={n} rows={rows} tokens={tokens} r={r} t={tk}: \
                                     {} vs scalar {}",
                                    isa.name(),
                                    got[i],
                                    want[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Extreme but valid blocks: maximal levels and scales against activations at +-127, where
/// the i16 pair sums inside the SIMD kernels are largest, plus negative Q6_K scales.
#[test]
fn extreme_blocks_agree() {
    let mut rng = Rng(9);
    let n = 512;
    for t in KTYPES {
        let wb = t.row_bytes(n as u64).unwrap() as usize;
        let mut w = vec![0xffu8; 2 * wb];
        let bb = block_bytes(t);
        for blk in w.chunks_exact_mut(bb) {
            match t {
                GgmlType::Q6_K => {
                    blk[208..210].copy_from_slice(&f16_bytes(0.01));
                    for s in &mut blk[192..208] {
                        *s = if rng.uniform() < 0.0 { 0x80 } else { 0x7f };
                    }
                }
                _ => {
                    blk[0..2].copy_from_slice(&f16_bytes(0.01));
                    blk[2..4].copy_from_slice(&f16_bytes(0.02));
                }
            }
        }
        // Second row random bits, to mix levels.
        let r2 = rng.bytes(wb);
        for (dst, (i, &v)) in w[wb..].iter_mut().zip(r2.iter().enumerate()) {
            let in_block = i % bb;
            let is_scale_field = match t {
                GgmlType::Q6_K => in_block >= 208,
                _ => in_block < 4,
            };
            if !is_scale_field {
                *dst = v;
            }
        }
        let ab = GgmlType::Q8_K.row_bytes(n as u64).unwrap() as usize;
        let mut act = vec![0u8; 3 * ab];
        let sign_patterns: [fn(usize) -> f32; 3] =
            [|_| 1.0, |_| -1.0, |i| if i % 3 == 0 { 1.0 } else { -1.0 }];
        for (q, f) in act.chunks_exact_mut(ab).zip(sign_patterns) {
            let x: Vec<f32> = (0..n).map(f).collect();
            quantize_q8k(&x, q);
        }
        let mut want = vec![0f32; 6];
        (weight_kernel(t, Isa::Scalar).unwrap().matmul)(n, &w, 2, &act, 3, &mut want);
        for r in 0..2 {
            let wd = dequantize(t, &w[r * wb..(r + 1) * wb], n);
            for tk in 0..3 {
                let ad = dequantize(GgmlType::Q8_K, &act[tk * ab..(tk + 1) * ab], n);
                let (dot, mag) = reference_dot(&wd, &ad);
                let got = want[r * 3 + tk] as f64;
                assert!(
                    (got - dot).abs() <= 1e-5 * mag,
                    "{t} scalar: {got} vs {dot}"
                );
            }
        }
        for isa in Isa::available() {
            let mut got = vec![0f32; 6];
            (weight_kernel(t, isa).unwrap().matmul)(n, &w, 2, &act, 3, &mut got);
            for (g, s) in got.iter().zip(&want) {
                assert!(
                    (g - s).abs() <= 1e-5 * s.abs().max(1.0),
                    "{t} {}: {g} vs {s}",
                    isa.name()
                );
            }
        }
    }
}

/// Outputs beyond `rows * tokens` are left alone, and rows are laid out `r * tokens + t`.
#[test]
fn output_layout() {
    let mut rng = Rng(1);
    let n = 256;
    for t in KTYPES {
        let w = quantize(t, &rng.weights(3 * n));
        let a: Vec<f32> = (0..2 * n).map(|_| rng.normal()).collect();
        let act = quantize(GgmlType::Q8_K, &a);
        for isa in Isa::available() {
            let k = weight_kernel(t, isa).unwrap();
            let mut all = vec![7.0f32; 7];
            (k.matmul)(n, &w, 3, &act, 2, &mut all);
            assert_eq!(all[6], 7.0);
            let wb = t.row_bytes(n as u64).unwrap() as usize;
            for r in 0..3 {
                for tk in 0..2 {
                    let mut one = [0f32];
                    (k.matmul)(n, &w[r * wb..], 1, &act[tk * 292..], 1, &mut one);
                    assert_eq!(one[0], all[r * 2 + tk], "{t} {}", isa.name());
                }
            }
        }
    }
}

/// Single-threaded throughput; run with
/// `cargo test -p hearth-engine --release kquants::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_matvec() {
    let mut rng = Rng(99);
    for (rows, n) in [(2048usize, 2048usize), (8192, 4096)] {
        for t in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            let wb = t.row_bytes(n as u64).unwrap() as usize;
            let mut w = vec![0u8; rows * wb];
            let row: Vec<f32> = rng.weights(n);
            for q in w.chunks_exact_mut(wb) {
                assert!(quantize_row(t, &row, q));
            }
            // Distinct rows are not needed for bandwidth; perturb the bytes a little anyway.
            for (i, v) in w.iter_mut().enumerate().step_by(97) {
                *v ^= i as u8;
            }
            let max_tokens = 64;
            let a: Vec<f32> = (0..max_tokens * n).map(|_| rng.normal()).collect();
            let act = quantize(GgmlType::Q8_K, &a);
            for isa in Isa::available() {
                let k = weight_kernel(t, isa).unwrap();
                for tokens in [1usize, 4, 64] {
                    if isa == Isa::Scalar && tokens > 1 {
                        continue;
                    }
                    let mut out = vec![0f32; rows * tokens];
                    (k.matmul)(n, &w, rows, &act, tokens, &mut out);
                    // Best of several runs: the machine may be shared, and the minimum is the
                    // least disturbed measurement.
                    let iters = if tokens == 1 { 40 } else { 8 };
                    let mut secs = f64::INFINITY;
                    for _ in 0..iters {
                        let start = std::time::Instant::now();
                        (k.matmul)(n, &w, rows, &act, tokens, &mut out);
                        secs = secs.min(start.elapsed().as_secs_f64());
                    }
                    let gbs = w.len() as f64 / secs / 1e9;
                    let gmacs = (rows * n * tokens) as f64 / secs / 1e9;
                    println!(
                        "{t} {rows}x{n} ({:.1} MB) {:>6} tokens={tokens:>2}: {:8.3} ms  \
                         {gbs:6.2} GB/s of weights  {gmacs:7.2} GMAC/s",
                        w.len() as f64 / 1e6,
                        isa.name(),
                        secs * 1e3
                    );
                }
            }
        }
    }
}
