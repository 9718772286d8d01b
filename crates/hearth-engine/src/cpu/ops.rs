//! Element-wise and row-wise operations of the transformer block, written to follow ggml's
//! arithmetic (f64 sums where ggml uses them) so results stay close to llama.cpp's.

use hearth_model::config::RopeStyle;

/// `out = x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// Cosines and sines for one position, `rope_dims / 2` pairs, in ggml's order of evaluation
/// (the angle advanced by repeated multiplication, in f32).
pub struct RopeTable {
    theta_scale: f32,
    freq_scale: f32,
    pairs: usize,
    /// Per-pair divisors of the angle (Llama 3.1's `rope_freqs`), when the model has them.
    freq_factors: Option<Vec<f32>>,
}

impl RopeTable {
    pub fn new(rope_dims: usize, freq_base: f32, freq_scale: f32) -> RopeTable {
        RopeTable {
            theta_scale: freq_base.powf(-2.0 / rope_dims as f32),
            freq_scale,
            pairs: rope_dims / 2,
            freq_factors: None,
        }
    }

    /// Divides each pair's angle by its factor (`rope_dims / 2` values).
    pub fn with_freq_factors(mut self, factors: Vec<f32>) -> RopeTable {
        self.freq_factors = Some(factors);
        self
    }

    /// Fills `cos_sin` with `(cos, sin)` for each pair at `position`.
    pub fn fill(&self, position: usize, cos_sin: &mut [(f32, f32)]) {
        let mut theta = position as f32;
        for (i, cs) in cos_sin.iter_mut().take(self.pairs).enumerate() {
            let factor = self.freq_factors.as_ref().map_or(1.0, |f| f[i]);
            let angle = theta / factor * self.freq_scale;
            *cs = (angle.cos(), angle.sin());
            theta *= self.theta_scale;
        }
    }
}

/// Rotates each head of `x` (`heads * head_dim` values) in place.
pub fn rope(x: &mut [f32], head_dim: usize, style: RopeStyle, cos_sin: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Interleaved => {
                for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cos_sin) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = a * s + b * c;
                }
            }
            RopeStyle::Halves => {
                let half = cos_sin.len();
                for (i, &(c, s)) in cos_sin.iter().enumerate() {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * c - b * s;
                    head[i + half] = a * s + b * c;
                }
            }
        }
    }
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let v = *g;
        *g = v / (1.0 + (-v).exp()) * u;
    }
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Softmax in place; sums in f64 as ggml does.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Log-softmax of `logits` into `out`, computed in f64 for stable log-probabilities.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    for (o, &v) in out.iter_mut().zip(logits) {
        *o = (v as f64 - log_sum) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_makes_unit_rms() {
        let x = [1.0, -2.0, 3.0, -4.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        let rms = (out.iter().map(|v| v * v).sum::<f32>() / 4.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_preserves_norm_and_position_zero_is_identity() {
        let table = RopeTable::new(8, 10000.0, 1.0);
        let mut cs = vec![(0.0, 0.0); 4];
        table.fill(0, &mut cs);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.3 - 2.0).collect();
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            let mut x = orig.clone();
            rope(&mut x, 8, style, &cs);
            assert_eq!(x, orig);
            table.fill(17, &mut cs);
            rope(&mut x, 8, style, &cs);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3 * n0);
            table.fill(0, &mut cs);
        }
    }

    #[test]
    fn frequency_factors_divide_the_angle() {
        let plain = RopeTable::new(4, 10000.0, 1.0);
        let scaled = RopeTable::new(4, 10000.0, 1.0).with_freq_factors(vec![1.0, 4.0]);
        let (mut a, mut b) = (vec![(0.0, 0.0); 2], vec![(0.0, 0.0); 2]);
        plain.fill(8, &mut a);
        scaled.fill(8, &mut b);
        assert_eq!(a[0], b[0]);
        let angle = 8.0f32 * 10000f32.powf(-0.5) / 4.0;
        assert!((b[1].0 - angle.cos()).abs() < 1e-6 && (b[1].1 - angle.sin()).abs() < 1e-6);
    }

    #[test]
    fn interleaved_rope_rotates_adjacent_pairs() {
        let table = RopeTable::new(2, 10000.0, 1.0);
        let mut cs = vec![(0.0, 0.0); 1];
        table.fill(1, &mut cs);
        let mut x = [1.0, 0.0];
        rope(&mut x, 2, RopeStyle::Interleaved, &cs);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn softmax_and_log_softmax_agree() {
        let logits = [1.0f32, 2.0, 3.0, -1.0];
        let mut p = logits;
        softmax(&mut p);
        let mut lp = [0.0; 4];
        log_softmax(&logits, &mut lp);
        for (a, b) in p.iter().zip(lp) {
            assert!((a.ln() - b).abs() < 1e-5);
        }
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
