use super::blocks::*;
use super::*;
use half::f16;

/// Expands `out.len()` values of type `t` from `src`; `false` if `t` is not a legacy format.
fn dequantize_row(t: GgmlType, src: &[u8], out: &mut [f32]) -> bool {
    use GgmlType as G;
    let f: DequantizeFn = match t {
        G::F32 => blocks::dequantize_f32,
        G::F16 => blocks::dequantize_f16,
        G::BF16 => blocks::dequantize_bf16,
        G::Q4_0 => blocks::dequantize_q4_0,
        G::Q4_1 => blocks::dequantize_q4_1,
        G::Q5_0 => blocks::dequantize_q5_0,
        G::Q5_1 => blocks::dequantize_q5_1,
        G::Q8_0 => blocks::dequantize_q8_0,
        G::Q8_1 => blocks::dequantize_q8_1,
        _ => return false,
    };
    f(src, out);
    true
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

const TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

fn row_bytes(t: GgmlType, n: usize) -> usize {
    t.row_bytes(n as u64).expect("whole blocks") as usize
}

/// Random weight rows: every quant bit pattern, scales kept finite and small.
fn random_weights(rng: &mut Rng, t: GgmlType, n: usize, rows: usize) -> Vec<u8> {
    let mut w = vec![0u8; rows * row_bytes(t, n)];
    let put_f16 =
        |b: &mut [u8], v: f32| b.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
    match t {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let x: Vec<f32> = (0..rows * n).map(|_| rng.unit()).collect();
            assert!(quantize_row(t, &x, &mut w));
        }
        _ => {
            w.iter_mut().for_each(|b| *b = rng.byte());
            let header = match t {
                GgmlType::Q4_1 | GgmlType::Q5_1 => 2,
                _ => 1,
            };
            for b in w.chunks_exact_mut(t.block_bytes()) {
                for h in 0..header {
                    put_f16(&mut b[2 * h..2 * h + 2], rng.unit() * 0.05);
                }
            }
        }
    }
    w
}

fn random_acts(rng: &mut Rng, k: &WeightKernel, n: usize, tokens: usize) -> Vec<u8> {
    let ar = row_bytes(k.activation, n);
    let mut a = vec![0u8; tokens * ar];
    for t in 0..tokens {
        // Vary the scale per token so blocks do not all look alike.
        let s = 0.1 + (t % 5) as f32;
        let x: Vec<f32> = (0..n).map(|_| rng.unit() * s).collect();
        (k.quantize_activation)(&x, &mut a[t * ar..(t + 1) * ar]);
    }
    a
}

/// Sum of |w a| over a row pair: the scale the rounding tolerances are relative to.
fn magnitude(k: &WeightKernel, n: usize, w: &[u8], a: &[u8]) -> (f64, f64) {
    let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
    (k.dequantize)(w, &mut wf);
    assert!(dequantize_row(k.activation, a, &mut af));
    let dot = wf.iter().zip(&af).map(|(&x, &y)| x as f64 * y as f64).sum();
    let mag = wf
        .iter()
        .zip(&af)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum();
    (dot, mag)
}

#[test]
fn simd_kernels_match_scalar_and_scalar_matches_dequantized() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for t in TYPES {
        let n = if t.block_len() == 1 { 83 } else { 256 };
        let reference = weight_kernel(t, Isa::Scalar).expect("scalar kernel");
        for rows in [1, 2, 7] {
            for tokens in [1, 3, 4, 5, 17] {
                let w = random_weights(&mut rng, t, n, rows);
                let a = random_acts(&mut rng, &reference, n, tokens);
                let (wr, ar) = (row_bytes(t, n), row_bytes(reference.activation, n));
                let mut want = vec![0f32; rows * tokens];
                (reference.matmul)(n, &w, rows, &a, tokens, &mut want);
                for r in 0..rows {
                    for tk in 0..tokens {
                        let (dot, mag) =
                            magnitude(&reference, n, &w[r * wr..], &a[tk * ar..(tk + 1) * ar]);
                        let got = want[r * tokens + tk] as f64;
                        assert!(
                            (got - dot).abs() <= 1e-3 * mag + 1e-6,
                            "{t} scalar vs dequantized: {got} vs {dot} (magnitude {mag})"
                        );
                    }
                }
                for isa in Isa::available() {
                    let k = weight_kernel(t, isa).expect("kernel");
                    assert_eq!(k.activation, reference.activation);
                    let mut got = vec![f32::NAN; rows * tokens];
                    (k.matmul)(n, &w, rows, &a, tokens, &mut got);
                    for r in 0..rows {
                        for tk in 0..tokens {
                            let (_, mag) =
                                magnitude(&k, n, &w[r * wr..], &a[tk * ar..(tk + 1) * ar]);
                            let (g, e) = (got[r * tokens + tk], want[r * tokens + tk]);
                            assert!(
                                ((g - e) as f64).abs() <= 1e-5 * mag + 1e-7,
                                "{t} {} rows {rows} tokens {tokens} ({r},{tk}): {g} vs {e}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn extreme_quants_are_exact() {
    // All quants at their extremes: Q8_0 weights of -128 and activations of +-127 must not
    // overflow the 16-bit pair sums.
    for isa in Isa::available() {
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let k = weight_kernel(t, isa).expect("kernel");
            let n = 64;
            let mut w = vec![0xFFu8; row_bytes(t, n)];
            for b in w.chunks_exact_mut(t.block_bytes()) {
                b[..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
                if matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    b[2..4].copy_from_slice(&[0, 0]);
                }
                if t == GgmlType::Q8_0 {
                    b[2..].iter_mut().for_each(|q| *q = 0x80);
                }
            }
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; n];
                let mut a = vec![0u8; row_bytes(k.activation, n)];
                (k.quantize_activation)(&x, &mut a);
                let mut out = [0f32];
                (k.matmul)(n, &w, 1, &a, 1, &mut out);
                let q = match t {
                    GgmlType::Q4_0 => 7.0,
                    GgmlType::Q4_1 => 15.0,
                    GgmlType::Q5_0 => 15.0,
                    GgmlType::Q5_1 => 31.0,
                    _ => -128.0,
                };
                // Each activation is +-127 with d = 1/127.
                let d_a = f16::from_f32(1.0 / 127.0).to_f32();
                let want = q * 127.0 * sign * d_a * n as f32;
                assert!(
                    (out[0] - want).abs() <= 1e-4 * want.abs(),
                    "{t} {}: {} vs {want}",
                    isa.name(),
                    out[0]
                );
            }
        }
    }
}

#[test]
fn block_layouts_follow_ggml() {
    let half = f16::from_f32(0.5).to_bits().to_le_bytes();
    let mut out = [0f32; 32];

    let mut q4_0 = [0u8; 18];
    q4_0[..2].copy_from_slice(&half);
    q4_0[2] = 0x2F;
    dequantize_q4_0(&q4_0, &mut out);
    assert_eq!((out[0], out[16], out[1]), (3.5, -3.0, -4.0));

    let mut q4_1 = [0u8; 20];
    q4_1[..2].copy_from_slice(&half);
    q4_1[2..4].copy_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
    q4_1[4] = 0x2F;
    dequantize_q4_1(&q4_1, &mut out);
    assert_eq!((out[0], out[16], out[1]), (6.5, 0.0, -1.0));

    let mut q5_0 = [0u8; 22];
    q5_0[..2].copy_from_slice(&half);
    q5_0[2..6].copy_from_slice(&(1u32 | 1 << 16).to_le_bytes());
    q5_0[6] = 0x2F;
    dequantize_q5_0(&q5_0, &mut out);
    assert_eq!((out[0], out[16], out[1]), (7.5, 1.0, -8.0));

    let mut q8_0 = [0u8; 34];
    q8_0[..2].copy_from_slice(&half);
    q8_0[2] = 0xFE;
    q8_0[33] = 7;
    dequantize_q8_0(&q8_0, &mut out);
    assert_eq!((out[0], out[31]), (-1.0, 3.5));
}

#[test]
fn quantize_dequantize_round_trips() {
    let mut rng = Rng(42);
    let n = 32 * 40;
    let x: Vec<f32> = (0..n)
        .map(|i| rng.unit() * (1.0 + (i / 32) as f32))
        .collect();
    for t in TYPES.into_iter().chain([GgmlType::Q8_1]) {
        let mut q = vec![0u8; row_bytes(t, n)];
        assert!(quantize_row(t, &x, &mut q));
        let mut y = vec![0f32; n];
        assert!(dequantize_row(t, &q, &mut y));
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (lo, hi) = xb
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            // Half a quantization step (a whole one for Q4_0/Q5_0, whose largest positive level
            // is one step short of the negative one), plus the f16 rounding of scale and minimum.
            let bound = match t {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => amax / 2048.0,
                GgmlType::BF16 => amax / 256.0,
                GgmlType::Q4_0 => amax / 8.0 + amax / 1024.0,
                GgmlType::Q5_0 => amax / 16.0 + amax / 1024.0,
                GgmlType::Q4_1 => (hi - lo) / 30.0 + (hi - lo + lo.abs()) / 1024.0,
                GgmlType::Q5_1 => (hi - lo) / 62.0 + (hi - lo + lo.abs()) / 1024.0,
                _ => amax / 254.0 + amax / 1024.0,
            };
            for (a, b) in xb.iter().zip(yb) {
                assert!(
                    (a - b).abs() <= bound * 1.0001,
                    "{t}: {a} -> {b} (bound {bound})"
                );
            }
        }
    }
    assert!(!quantize_row(GgmlType::Q4_K, &x, &mut [0u8; 16]));
}

#[test]
fn q8_1_stores_scaled_sum() {
    let mut rng = Rng(7);
    let x: Vec<f32> = (0..64).map(|_| rng.unit()).collect();
    let mut q = vec![0u8; 72];
    quantize_q8_1(&x, &mut q);
    for b in q.chunks_exact(36) {
        let sum: i32 = b[4..].iter().map(|&v| v as i8 as i32).sum();
        // ggml scales the sum by the f32 scale, before that is rounded to f16.
        let (d, s) = (rd_f16(b, 0), rd_f16(b, 2));
        let want = d * sum as f32;
        assert!((s - want).abs() <= want.abs() / 1000.0, "{s} vs {want}");
    }
}

/// `cargo test -p hearth-engine --release quant::legacy::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench() {
    use std::time::Instant;
    let mut rng = Rng(99);
    let cases = [
        (GgmlType::Q4_1, 1536, 576, 1),
        (GgmlType::Q4_1, 576, 1536, 1),
        (GgmlType::Q8_0, 49152, 576, 1),
        (GgmlType::Q4_0, 1536, 576, 1),
        (GgmlType::Q5_0, 1536, 576, 1),
        (GgmlType::F16, 1536, 576, 1),
        (GgmlType::Q4_1, 1536, 576, 128),
        (GgmlType::Q8_0, 1536, 576, 128),
        (GgmlType::Q4_0, 1536, 576, 128),
    ];
    for (t, rows, n, tokens) in cases {
        let w = random_weights(&mut rng, t, n, rows);
        for isa in Isa::available() {
            let k = weight_kernel(t, isa).expect("kernel");
            let a = random_acts(&mut rng, &k, n, tokens);
            let mut out = vec![0f32; rows * tokens];
            let iters = ((2e9 / (rows * n * tokens) as f64) as usize).clamp(2, 2000);
            let iters = if isa == Isa::Scalar {
                iters / 20 + 1
            } else {
                iters
            };
            (k.matmul)(n, &w, rows, &a, tokens, &mut out);
            let start = Instant::now();
            for _ in 0..iters {
                (k.matmul)(n, &w, rows, &a, tokens, &mut out);
                std::hint::black_box(&mut out);
            }
            let s = start.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{t} {rows}x{n} tokens {tokens:>3} {:>6}: {:8.1} us  {:6.2} GB/s weights  {:7.1} GMAC/s",
                isa.name(),
                s * 1e6,
                w.len() as f64 / s / 1e9,
                (rows * n * tokens) as f64 / s / 1e9
            );
        }
    }
}

#[test]
fn simd_activation_quantizers_match_scalar() {
    let mut rng = Rng(3);
    let n = 32 * 12;
    let mut x: Vec<f32> = (0..n).map(|i| rng.unit() * (i / 32) as f32).collect();
    // A block whose values land exactly on halves (amax 127 makes the scale 1), and a zero one.
    for (j, v) in x[32..64].iter_mut().enumerate() {
        *v = if j == 0 { 127.0 } else { j as f32 - 15.5 };
    }
    for t in [GgmlType::Q8_0, GgmlType::Q8_1] {
        let mut want = vec![0u8; row_bytes(t, n)];
        assert!(quantize_row(t, &x, &mut want));
        for isa in Isa::available() {
            let weight = if t == GgmlType::Q8_0 {
                GgmlType::Q4_0
            } else {
                GgmlType::Q4_1
            };
            let k = weight_kernel(weight, isa).expect("kernel");
            let mut got = vec![0u8; want.len()];
            (k.quantize_activation)(&x, &mut got);
            assert_eq!(got, want, "{t} {}", isa.name());
        }
    }
}
